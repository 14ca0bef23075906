/**
 * The router as an operator meets it over weeks, in real namespaces (root only; the seed's router
 * under fresh names qnt-<tag>-*, linked to nothing, removed afterwards even on failure):
 *   - the tenant's wire namespace is deleted under the running router: the router stays up, the
 *     outside still reaches it, `show ports` says which leg is down and why; `qnat lab up` makes
 *     the namespace anew and the router re-creates the leg by itself — traffic flows again;
 *   - SIGHUP: the config file is applied again (nothing differs, one log line), and it keeps running;
 *   - SIGTERM: it exits 0 promptly, its control socket, pid file and mirrors gone.
 * Every ping is bounded (one packet, one second).
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deleteNetns, ip, isRoot as runningAsRoot } from "../../src/io/netns.js";
import { controlRequest, controlSocketPath, pidPathFor } from "../../src/control/socket.js";
import { labUp, pingUntil } from "../../src/control/lab.js";
import type { PortView } from "../../src/control/show.js";
import { retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/fault-containment.test.ts: not root, so the leg failure and signal tests are skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const WAIT_MS = 10_000;

/** Pings until one answer, for at most WAIT_MS. */
function pingsWithin(netns: string, destination: string, source?: string): Promise<boolean> {
  return pingUntil(netns, destination, WAIT_MS, source);
}

async function until(condition: () => Promise<boolean> | boolean, limitMs = WAIT_MS): Promise<boolean> {
  const started = Date.now();
  while (Date.now() - started < limitMs) {
    if (await condition()) return true;
    await sleep(100);
  }
  return false;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(!isRoot)("a broken leg is one leg down, and signals stop the router cleanly", () => {
  let lab: Lab | undefined;
  const { text, config } = retagForRun(SEED, runTag());
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;
  const socket = controlSocketPath(config.namespace);
  const dir = mkdtempSync(join(tmpdir(), "qnat-faults-"));
  const configFile = join(dir, "router.yaml");
  writeFileSync(configFile, text);

  async function ports(): Promise<PortView[]> {
    const response = await controlRequest(socket, { cmd: "show", what: "ports", json: true });
    if (!response.ok) throw new Error(`qnat show ports: ${response.error}`);
    return response.data as PortView[];
  }

  beforeAll(async () => {
    lab = await startQnatLab(text, config);
  });
  afterAll(async () => {
    try {
      await lab?.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("before anything breaks, 10.0.0.3 reaches 203.0.113.10 through the router", async () => {
    expect(await pingsWithin(tenant, "203.0.113.10", "10.0.0.3")).toBe(true);
  });

  it("ip netns del of the tenant's namespace: the router lives, 9.186.100.1 still reaches 9.186.100.2, show ports says the wire leg is down", async () => {
    deleteNetns(tenant);
    expect(await until(async () => (await ports())[0]!.legs?.wire.state === "down")).toBe(true);
    expect(alive(lab!.pid!)).toBe(true);
    const [port] = await ports();
    expect(port!.legs!.wire).toMatchObject({ state: "down", error: "ENOENT", reason: `namespace ${tenant} was deleted`, failures: 1 });
    expect(Date.parse(port!.legs!.wire.since!)).toBeGreaterThan(Date.now() - 60_000);
    expect(port!.legs!.mirror.state).toBe("up");
    // The other port's mirror: the outside still reaches the router's own address.
    expect(await pingsWithin(external, "9.186.100.2")).toBe(true);
    const textView = await controlRequest(socket, { cmd: "show", what: "ports" });
    expect(textView.ok && textView.text).toMatch(new RegExp(`wire leg DOWN since \\S+: ENOENT \\(namespace ${tenant} was deleted\\)`));
    expect(lab!.output!()).toContain(`leg eth0 in ${tenant} is down (ENOENT: namespace ${tenant} was deleted)`);
  });

  it("qnat lab up makes the namespace anew; the router re-creates the leg and 10.0.0.3 reaches 203.0.113.10 again", async () => {
    let printed = "";
    expect(await labUp(configFile, (line) => (printed += line))).toBe(0);
    expect(printed).toContain(`made ${tenant} anew`);
    const [port] = await ports();
    expect(port!.legs!.wire).toMatchObject({ state: "up", failures: 1, recoveries: 1 });
    expect(await pingsWithin(tenant, "203.0.113.10", "10.0.0.3")).toBe(true);
    expect(lab!.output!()).toMatch(new RegExp(`leg eth0 in ${tenant} is back`));
  });

  it("ip link del of the outside's eth0: that leg goes down (its fd reports EBADF), comes back by itself, and lab up gives the host its addresses again", async () => {
    ip(external, "link", "del", "eth0");
    expect(await until(async () => (await ports())[1]!.legs?.wire.failures === 1)).toBe(true);
    expect(await until(async () => (await ports())[1]!.legs?.wire.state === "up")).toBe(true);
    expect(lab!.output!()).toMatch(new RegExp(`leg eth0 in ${external} is down \\(EBADFD?: `));
    expect(await labUp(configFile, () => undefined)).toBe(0);
    expect(await pingsWithin(tenant, "203.0.113.10", "10.0.0.3")).toBe(true);
  });

  it("SIGHUP: the unchanged config is applied again (nothing differs), and the router keeps forwarding", async () => {
    process.kill(lab!.pid!, "SIGHUP");
    expect(await until(() => /SIGHUP: \S+: nothing differs/.test(lab!.output!()))).toBe(true);
    expect(alive(lab!.pid!)).toBe(true);
    expect(await pingsWithin(tenant, "203.0.113.10", "10.0.0.3")).toBe(true);
  });

  it("SIGTERM: exit 0 promptly, and the control socket, pid file and mirrors are gone", async () => {
    const mirror = config.ports[0]!.name;
    expect(ip(config.namespace, "link", "show", mirror)).toContain(mirror);
    const started = Date.now();
    process.kill(lab!.pid!, "SIGTERM");
    const code = await Promise.race([lab!.exited!, sleep(WAIT_MS).then(() => "still running")]);
    const elapsed = Date.now() - started;
    expect(code, lab!.output!()).toBe(0);
    // The contract is one second; the bound is generous for a loaded 2-core machine.
    expect(elapsed).toBeLessThan(3000);
    expect(existsSync(socket)).toBe(false);
    expect(existsSync(pidPathFor(socket))).toBe(false);
    expect(() => ip(config.namespace, "link", "show", mirror)).toThrow();
    expect(lab!.output!()).toContain("SIGTERM: stopping");
  });
});
