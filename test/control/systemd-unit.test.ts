/**
 * contrib/qnat@.service, the systemd unit of a router instance (`qnat@seed.service` runs
 * `qnat run /etc/qnat/seed.yaml`): checked by `systemd-analyze verify` where systemd's tools are
 * installed (scripts/host-packages.sh installs them as root), and its promises read from the file.
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const UNIT = resolve(import.meta.dirname, "../../contrib/qnat@.service");
const analyze = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" });
const haveAnalyze = analyze.status === 0;
if (!haveAnalyze) console.warn("test/control/systemd-unit.test.ts: systemd-analyze is not installed, so the unit is not verified by systemd");

/** The unit's `Key=value` settings (last one wins, as systemd reads them). */
function settings(): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync(UNIT, "utf8").split("\n")) {
    const match = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (match) out.set(match[1]!, match[2]!);
  }
  return out;
}

describe("the systemd unit qnat@.service", () => {
  it.skipIf(!haveAnalyze)("systemd-analyze verify finds nothing to say about qnat@seed.service", () => {
    const dir = mkdtempSync(join(tmpdir(), "qnat-unit-"));
    try {
      const instance = join(dir, "qnat@seed.service");
      copyFileSync(UNIT, instance);
      const result = spawnSync("systemd-analyze", ["verify", "--man=no", instance], { encoding: "utf8", timeout: 30_000 });
      expect(`${result.stdout}${result.stderr}`.trim()).toBe("");
      expect(result.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("runs the instance's config, restarts on failure, stops with SIGTERM within a bound, keeps a state directory", () => {
    const unit = settings();
    expect(unit.get("ExecStart")).toBe("/usr/bin/env qnat run /etc/qnat/%i.yaml");
    expect(unit.get("Restart")).toBe("on-failure");
    expect(unit.get("KillSignal")).toBe("SIGTERM");
    expect(Number(unit.get("TimeoutStopSec"))).toBeGreaterThan(1);
    expect(unit.get("StateDirectory")).toBe("qnat");
    expect(unit.get("User")).toBe("root");
    expect(unit.get("CapabilityBoundingSet")!.split(" ")).toEqual(expect.arrayContaining(["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]));
  });
});
