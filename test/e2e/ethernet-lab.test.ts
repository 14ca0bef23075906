/**
 * `qnat lab up examples/seed-ethernet.yaml` end to end (root only; the config's namespaces renamed
 * X-<tag>, linked to nothing, `qnat lab down` afterwards even on failure): qnat's TAP wire legs in
 * br-int and br-ex, 10.0.0.2 in qnat-tenant and a second VM, 10.0.0.3, in a namespace of its own
 * on the same br-int, both reaching the router and the outside through it; `lab down` leaves
 * nothing.
 *
 * Until qnat's router has TAP legs it opens a tap port's wire leg as a TUN device, which no
 * bridge takes, so `lab up` fails saying so: then these tests are skipped with that reason (and
 * any other failure of `lab up` fails them).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { LAB_HOST_DEVICE, namespacesOf, tapPortsWithoutTapLegs } from "../../src/control/host-setup.js";
import { destroyKernelTwin, randomTag, retagConfigText } from "../../src/control/twin.js";
import { ip, isRoot, netnsExists } from "../../src/io/netns.js";

const ROOT = resolve(import.meta.dirname, "../..");
const CLI = join(ROOT, "dist/src/cli/main.js");
const SEED_ETHERNET = join(ROOT, "examples/seed-ethernet.yaml");
const root = isRoot();
if (!root) console.warn("test/e2e/ethernet-lab.test.ts: not root, so qnat lab up of seed-ethernet.yaml is skipped");

/** A command, bounded; resolves with its exit code and output (stdout, then stderr). */
function run(command: string, args: readonly string[], limitMs = 60_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (err += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), limitMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolvePromise({ code, out: out + err });
    });
  });
}

describe.skipIf(!root)("qnat lab up examples/seed-ethernet.yaml", () => {
  const tag = randomTag("el");
  const text = retagConfigText(readFileSync(SEED_ETHERNET, "utf8"), SEED_ETHERNET, tag);
  const config = parseConfig(text, SEED_ETHERNET);
  const ns = (name: string): string => `${name}-${tag}`;
  const dir = mkdtempSync(join(tmpdir(), "qnat-ethernet-lab-"));
  const path = join(dir, "seed-ethernet.yaml");

  beforeAll(async () => {
    writeFileSync(path, text);
    const up = await run(process.execPath, [CLI, "lab", "up", path]);
    if (up.code === 0) return;
    const tunLegs = tapPortsWithoutTapLegs(config);
    await run(process.execPath, [CLI, "lab", "down", path]);
    const why = tunLegs.length === 0 ? "" : ` (its tap ports' wire legs are TUN devices: ${tunLegs.join(", ")})`;
    throw new Error(`qnat lab up failed (${up.code})${why}: ${up.out.trim()}`);
  }, 90_000);
  afterAll(async () => {
    await run(process.execPath, [CLI, "lab", "down", path]);
    destroyKernelTwin(config);
    rmSync(dir, { recursive: true, force: true });
  }, 90_000);

  it("has qnat's TAP wire leg tap694450d6-f6 in br-int beside both VMs' veths", () => {
    const links = JSON.parse(ip(ns("qnat-tenant"), "-j", "-d", "link", "show")) as Array<{ ifname: string; master?: string; link_type?: string }>;
    expect(links.find((l) => l.ifname === "tap694450d6-f6")).toMatchObject({ master: "br-int", link_type: "ether" });
    expect(links.filter((l) => l.master === "br-int")).toHaveLength(3);
  });

  it("lets 10.0.0.3, a second VM in qnat-vm2 on the same br-int, reach the router at 10.0.0.1 and the outside at 203.0.113.10", async () => {
    const router = await run("ip", ["netns", "exec", ns("qnat-vm2"), "ping", "-c", "1", "-W", "3", "10.0.0.1"], 10_000);
    const outside = await run("ip", ["netns", "exec", ns("qnat-vm2"), "ping", "-c", "1", "-W", "3", "203.0.113.10"], 10_000);
    expect([router.code, outside.code]).toEqual([0, 0]);
    const arping = await run("ip", ["netns", "exec", ns("qnat-vm2"), "arping", "-c", "1", "-w", "3", "-I", LAB_HOST_DEVICE, "10.0.0.1"], 10_000);
    expect(arping.out).toMatch(/Unicast reply from 10\.0\.0\.1 \[FA:16:3E:5D:18:10\]/);
  });

  it("a wire leg deleted under the router comes back in br-int: the router re-creates the TAP and puts it in its bridge", async () => {
    ip(ns("qnat-tenant"), "link", "del", "dev", "tap694450d6-f6");
    type Link = { ifname: string; master?: string };
    const legOf = (): Link | undefined => (JSON.parse(ip(ns("qnat-tenant"), "-j", "link", "show")) as Link[]).find((l) => l.ifname === "tap694450d6-f6");
    const deadline = Date.now() + 15_000;
    while (legOf()?.master !== "br-int" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(legOf()).toMatchObject({ master: "br-int" });
    const ping = await run("ip", ["netns", "exec", ns("qnat-vm2"), "ping", "-c", "1", "-W", "3", "203.0.113.10"], 10_000);
    expect(ping.code).toBe(0);
  }, 30_000);

  it("qnat lab down removes the lab, the second VM's namespace and the bridges with it", async () => {
    const down = await run(process.execPath, [CLI, "lab", "down", path]);
    expect(down.code).toBe(0);
    expect(namespacesOf(config).filter((name) => netnsExists(name))).toEqual([]);
  });
});
