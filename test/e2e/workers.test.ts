/**
 * The seed's router with `workers: 2`, in real namespaces (root only; the seed's router under
 * fresh names qnt-<tag>-*, linked to nothing, removed afterwards even on failure): every leg is a
 * two-queue TUN device, the main thread forwards queue 0 and a worker thread queue 1, both on one
 * connection table. The seed's flows work as with one thread (10.0.0.3 leaves as 9.186.100.2,
 * the floating IP 9.186.100.129 reaches 10.0.0.2, ping, the metadata through REDIRECT); 32
 * parallel UDP flows, which the kernel spreads over both queues, are all translated and answered;
 * `show stats` is one router whose per-worker figures add up to its totals; a tenant network added
 * live (a qr- port and its host) forwards on both threads and, removed live, leaves no TUN queue
 * open; SIGTERM ends both threads and exits 0.
 * Every command is bounded in time and count.
 */
import { spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { deleteNetns, isRoot as runningAsRoot } from "../../src/io/netns.js";
import { controlRequest, controlSocketPath, pidPathFor } from "../../src/control/socket.js";
import { STATE_FLAG_AT_STOP } from "../../src/control/state-file.js";
import { labUp, pingUntil } from "../../src/control/lab.js";
import type { PortView, StatsView } from "../../src/control/show.js";
import { retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";
import { startIn, tunQueuesOf, UDP_FLOWS, UDP_WHO_AM_I } from "../support/workers-traffic.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/workers.test.ts: not root, so the two-worker router tests are skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const WAIT_MS = 10_000;
/** Parallel UDP flows from 10.0.0.3, and datagrams each (all bounded). */
const FLOWS = 32;
const PER_FLOW = 10;

/** An HTTP server that answers with the address it saw the client as. */
const WHO_AM_I = `
const [host, port] = process.argv.slice(1);
require("http").createServer((req, res) => res.end("seen " + req.socket.remoteAddress.replace(/^::ffff:/, "") + "\\n"))
  .listen(Number(port), host, () => console.log("ready"));
setTimeout(() => process.exit(0), 60000);`;

function inNs(netns: string, command: string, args: readonly string[]): { code: number | null; stdout: string } {
  const result = spawnSync("ip", ["netns", "exec", netns, command, ...args], { encoding: "utf8", timeout: 20_000 });
  return { code: result.status, stdout: result.stdout ?? "" };
}

describe.skipIf(!isRoot)("the seed's router with workers: 2", () => {
  let lab: Lab | undefined;
  const children: ChildProcess[] = [];
  const retagged = retagForRun(SEED, runTag());
  const dir = mkdtempSync(join(tmpdir(), "qnat-workers-"));
  const stateFile = join(dir, "router.state");
  // The main thread saves the one connection table every 0.2 s (control/state-keeper.ts).
  const text = `${retagged.text}workers: 2\nstate: { file: ${stateFile}, interval: 0.2 }\nmetrics: { listen: "127.0.0.1:9466" }\n`;
  const config = parseConfig(text, "router.yaml");
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;
  const socket = controlSocketPath(config.namespace);

  async function stats(): Promise<StatsView> {
    const response = await controlRequest(socket, { cmd: "show", what: "stats", json: true });
    if (!response.ok) throw new Error(`qnat show stats: ${response.error}`);
    return response.data as StatsView;
  }

  beforeAll(async () => {
    lab = await startQnatLab(text, config);
  }, 60_000);
  afterAll(async () => {
    for (const child of children) child.kill("SIGKILL");
    try {
      await lab?.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it("starts two forwarding threads, each on its queue of every leg", () => {
    expect(lab!.output!()).toMatch(/workers: 2 \(queue 0 on the main thread, queue 1 on a worker thread, one connection table; JIT warm-ups \d+ ms\)/);
    // Every leg is a multi-queue TUN device (ip -d link: "multi_queue").
    expect(inNs(config.namespace, "ip", ["-d", "link", "show", config.ports[0]!.name]).stdout).toContain("multi_queue");
    expect(inNs(tenant, "ip", ["-d", "link", "show", "eth0"]).stdout).toContain("multi_queue");
  });

  it("10.0.0.3 pings 203.0.113.10 through the router", async () => {
    expect(await pingUntil(tenant, "203.0.113.10", WAIT_MS, "10.0.0.3")).toBe(true);
  });

  it("10.0.0.3 reaches the outside as 9.186.100.2, and 10.0.0.2 as its floating IP 9.186.100.129", async () => {
    await startIn(external, WHO_AM_I, ["0.0.0.0", "8080"], children);
    expect(inNs(tenant, "curl", ["-s", "-m", "5", "--interface", "10.0.0.3", "http://203.0.113.10:8080/"]).stdout.trim()).toBe("seen 9.186.100.2");
    expect(inNs(tenant, "curl", ["-s", "-m", "5", "--interface", "10.0.0.2", "http://9.186.100.1:8080/"]).stdout.trim()).toBe("seen 9.186.100.129");
  });

  it("a client outside that connects to 9.186.100.129 is answered by 10.0.0.2", async () => {
    await startIn(tenant, WHO_AM_I, ["10.0.0.2", "8081"], children);
    expect(inNs(external, "curl", ["-s", "-m", "5", "http://9.186.100.129:8081/"]).stdout.trim()).toBe("seen 9.186.100.1");
  });

  it("10.0.0.2 fetches its instance id from 169.254.169.254 (REDIRECT to the metadata proxy)", () => {
    const id = inNs(tenant, "curl", ["-s", "-m", "5", "--interface", "10.0.0.2", "http://169.254.169.254/latest/meta-data/instance-id"]);
    expect(id.stdout.trim()).toBe("i-00000001");
  });

  /** Runs UDP_FLOWS from 10.0.0.3 to the outside's UDP server; checks every flow left as 9.186.100.2 on a port of its own. */
  function udpFlows(translated = "9.186.100.2", port = 7000, from = tenant, source = "10.0.0.3"): void {
    const client = spawnSync("ip", ["netns", "exec", from, process.execPath, "-e", UDP_FLOWS, String(FLOWS), String(PER_FLOW), source, "203.0.113.10", String(port)], {
      encoding: "utf8",
      timeout: 20_000,
    });
    const result = JSON.parse(client.stdout) as { sent: number; answered: number; seen: Record<string, string> };
    expect(result.sent).toBe(FLOWS * PER_FLOW);
    expect(result.answered).toBe(FLOWS * PER_FLOW);
    const seen = Object.values(result.seen);
    expect(seen).toHaveLength(FLOWS);
    for (const address of seen) expect(address).toMatch(new RegExp(`^${translated.replaceAll(".", "\\.")}:\\d+$`));
    // No two connections share a translated tuple.
    expect(new Set(seen).size).toBe(FLOWS);
  }

  /** The packets counter of the rule that SNATs the tenant to 9.186.100.2 (`show rules -v`: `-A ... -c PKTS BYTES -j SNAT ...`). */
  async function snatRuleCount(): Promise<number> {
    const response = await controlRequest(socket, { cmd: "show", what: "rules", verbose: true });
    const text = response.ok ? (response.text ?? "") : "";
    return Number(/ -c (\d+) \d+ -j SNAT --to-source 9\.186\.100\.2$/m.exec(text)?.[1] ?? NaN);
  }

  /** Packets each thread received between two `show stats`. */
  const shares = (before: StatsView, after: StatsView): number[] => after.workers!.map((w, i) => w.rxPackets - (before.workers![i]?.rxPackets ?? 0));

  it(`${FLOWS} parallel UDP flows from 10.0.0.3 all leave as 9.186.100.2 with distinct ports, every datagram answered, and both workers carried them`, async () => {
    await startIn(external, UDP_WHO_AM_I, ["203.0.113.10", "7000"], children);
    const before = await stats();
    const snatBefore = await snatRuleCount();
    udpFlows();
    const after = await stats();
    // show rules -v is one router too: the SNAT rule decided each of the flows' first packets, on whichever thread.
    expect((await snatRuleCount()) - snatBefore).toBe(FLOWS);
    // One router: each wire leg received and sent exactly the datagrams and their answers.
    expect(after.ports[0]!.wire.rxPackets - before.ports[0]!.wire.rxPackets).toBe(FLOWS * PER_FLOW);
    expect(after.ports[1]!.wire.txPackets - before.ports[1]!.wire.txPackets).toBe(FLOWS * PER_FLOW);
    expect(after.ports[1]!.wire.rxPackets - before.ports[1]!.wire.rxPackets).toBe(FLOWS * PER_FLOW);
    expect(after.ports[0]!.wire.txPackets - before.ports[0]!.wire.txPackets).toBe(FLOWS * PER_FLOW);
    // Both threads carried some of them (the kernel spreads flows over the queues by hash), and
    // their shares add up to the totals.
    expect(after.workers!.map((w) => w.worker)).toEqual([0, 1]);
    for (const share of shares(before, after)) expect(share).toBeGreaterThan(0);
    const received = after.ports.reduce((sum, p) => sum + p.wire.rxPackets + p.mirror.rxPackets, 0);
    expect(after.workers!.reduce((sum, w) => sum + w.rxPackets, 0)).toBe(received);
    const text = await controlRequest(socket, { cmd: "show", what: "stats" });
    expect(text.ok && text.text).toMatch(/\nworkers: 2\n {4}0 \(main thread\): received \d+, sent \d+, dropped \d+\n {4}1: received \d+/);
    // One connection table: the main thread's view of it holds every flow, whichever thread made it.
    expect(after.conntrack.count).toBeGreaterThanOrEqual(FLOWS);
    // The main thread's state saving sees one table: the worker's connections are in it too.
    const saved = async (): Promise<number> => (await stats()).state?.last?.entries ?? 0;
    const waited = Date.now();
    while ((await saved()) < FLOWS && Date.now() - waited < WAIT_MS) await sleep(100);
    expect(await saved()).toBeGreaterThanOrEqual(FLOWS);
    // The metrics and qnat top are the same one router, with each thread's share.
    const metrics = inNs(config.namespace, "curl", ["-s", "-m", "5", "http://127.0.0.1:9466/metrics"]).stdout;
    const metric = (pattern: RegExp): number => Number(pattern.exec(metrics)?.[1] ?? NaN);
    const tenantRx = metric(new RegExp(`qnat_port_receive_packets_total\\{port="${config.ports[0]!.name}",leg="wire"\\} (\\d+)`));
    expect(tenantRx).toBeGreaterThanOrEqual(after.ports[0]!.wire.rxPackets);
    expect(metric(/qnat_worker_receive_packets_total\{worker="0"\} (\d+)/)).toBeGreaterThan(0);
    expect(metric(/qnat_worker_receive_packets_total\{worker="1"\} (\d+)/)).toBeGreaterThan(0);
    // The loop histograms add every thread's batches up: they hold at least the packets all threads had read at `after`.
    const batches = metric(/qnat_batch_packets_count (\d+)/);
    const batchedPackets = metric(/qnat_batch_packets_sum (\d+)/);
    expect(batchedPackets).toBeGreaterThanOrEqual(after.workers!.reduce((sum, w) => sum + w.rxPackets, 0));
    expect(batches).toBeGreaterThan(0);
    const top = await controlRequest(socket, { cmd: "top", connections: 5 });
    expect(top.ok && (top.data as { ports: { wire: { rxPackets: number } }[] }).ports[0]!.wire.rxPackets).toBeGreaterThanOrEqual(after.ports[0]!.wire.rxPackets);
    // show ports is the same one router.
    const ports = await controlRequest(socket, { cmd: "show", what: "ports", json: true });
    expect(ports.ok && (ports.data as PortView[])[0]!.counters.wire.rxPackets).toBeGreaterThanOrEqual(after.ports[0]!.wire.rxPackets);
  }, 30_000);

  it("ip link del of the outside's eth0: the leg comes back with a queue for each worker, and the flows run on both again", async () => {
    inNs(external, "ip", ["link", "del", "eth0"]);
    const back = async (): Promise<boolean> => {
      const response = await controlRequest(socket, { cmd: "show", what: "ports", json: true });
      const wire = response.ok ? (response.data as PortView[])[1]!.legs?.wire : undefined;
      return wire?.state === "up" && wire.recoveries === 1;
    };
    const started = Date.now();
    while (!(await back()) && Date.now() - started < WAIT_MS) await sleep(100);
    expect(await back()).toBe(true);
    expect(inNs(external, "ip", ["-d", "link", "show", "eth0"]).stdout).toContain("multi_queue");
    // As qnat lab up would: the outside's host gets its address and route again.
    inNs(external, "ip", ["addr", "add", "9.186.100.1/24", "dev", "eth0"]);
    const before = await stats();
    udpFlows();
    const after = await stats();
    for (const share of shares(before, after)) expect(share).toBeGreaterThan(0);
    expect(lab!.output!()).not.toMatch(/worker \d+ failed/);
  }, 30_000);

  it("ip netns del of the tenant's namespace: its wire leg goes down, qnat lab up makes the namespace anew, and the leg comes back multi-queue with flows on both threads", async () => {
    const configFile = join(dir, "router.yaml");
    writeFileSync(configFile, text);
    const tenantWire = async (): Promise<PortView["legs"]> => {
      const response = await controlRequest(socket, { cmd: "show", what: "ports", json: true });
      return response.ok ? (response.data as PortView[])[0]!.legs : undefined;
    };
    deleteNetns(tenant);
    const started = Date.now();
    while ((await tenantWire())?.wire.state !== "down" && Date.now() - started < WAIT_MS) await sleep(100);
    expect((await tenantWire())?.wire).toMatchObject({ state: "down", error: "ENOENT" });
    expect(await labUp(configFile, () => undefined)).toBe(0);
    expect((await tenantWire())?.wire).toMatchObject({ state: "up", recoveries: 1 });
    expect(inNs(tenant, "ip", ["-d", "link", "show", "eth0"]).stdout).toContain("multi_queue");
    const before = await stats();
    udpFlows();
    for (const share of shares(before, await stats())) expect(share).toBeGreaterThan(0);
  }, 30_000);

  it("qnat apply reaches both threads: the tenant's SNAT address becomes 9.186.100.3, and new flows on either thread leave with it", async () => {
    const changed = text
      .replace("addresses: [9.186.100.2/24, 9.186.100.129/32]", "addresses: [9.186.100.2/24, 9.186.100.129/32, 9.186.100.3/32]")
      .replace("-j SNAT --to-source 9.186.100.2", "-j SNAT --to-source 9.186.100.3");
    expect(changed).toContain("--to-source 9.186.100.3");
    const apply = await controlRequest(socket, { cmd: "apply", file: "router.yaml", text: changed });
    expect(apply.ok && apply.text).toContain("+ rule -A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.3");
    // To a port of its own: a flow whose tuple an earlier run already made keeps its binding (as on Linux).
    await startIn(external, UDP_WHO_AM_I, ["203.0.113.10", "7001"], children);
    const before = await stats();
    udpFlows("9.186.100.3", 7001);
    for (const share of shares(before, await stats())) expect(share).toBeGreaterThan(0);
    expect(lab!.output!()).not.toMatch(/worker \d+ failed/);
  }, 30_000);

  /** The config the router runs after the change of the SNAT address above. */
  const running = text
    .replace("addresses: [9.186.100.2/24, 9.186.100.129/32]", "addresses: [9.186.100.2/24, 9.186.100.129/32, 9.186.100.3/32]")
    .replace("-j SNAT --to-source 9.186.100.2", "-j SNAT --to-source 9.186.100.3");
  /** With a tenant network added: qr-extra0001 10.9.0.1/24 before the qg- port, its host 10.9.0.5 in extraNs, SNATed as 9.186.100.2. */
  const extraPort = "qr-extra0001";
  const extraNs = config.namespace.replace(/-r$/, "-p9");
  const withExtraPort = running
    .replace("  - name: qg-", `  - name: ${extraPort}\n    addresses: [10.9.0.1/24]\n    wire: { namespace: ${extraNs}, device: eth0 }\n  - name: qg-`)
    .replace("-j SNAT --to-source 9.186.100.3\n", "-j SNAT --to-source 9.186.100.3\n  -A neutron-vpn-agen-snat -s 10.9.0.0/24 -j SNAT --to-source 9.186.100.2\n")
    .replace("lab:\n", `lab:\n  ${extraNs}: { addresses: [10.9.0.5/24], routes: [default via 10.9.0.1] }\n`);
  afterAll(() => {
    try {
      deleteNetns(extraNs);
    } catch {
      // removed by the test, or never made
    }
  });

  it("a tenant network added live, qr-extra0001 10.9.0.1/24 with its host 10.9.0.5: its legs open with a queue for each thread, and its flows leave as 9.186.100.2 through both threads", async () => {
    expect(withExtraPort).toContain(`name: ${extraPort}`);
    expect(withExtraPort).toContain("-s 10.9.0.0/24 -j SNAT --to-source 9.186.100.2");
    expect(withExtraPort).toContain(`${extraNs}: { addresses: [10.9.0.5/24]`);
    const pid = lab!.pid!;
    expect(tunQueuesOf(pid)).toBe(2 * 2 * 2);
    const added = await controlRequest(socket, { cmd: "apply", file: "router.yaml", text: withExtraPort });
    expect(added.ok && added.text?.split("\n").filter(Boolean)).toEqual([
      `+ port ${extraPort} 10.9.0.1/24 mtu 1500 <-> ${extraNs}/eth0`,
      `+ address 10.9.0.1/24 on ${extraPort}`,
      "+ rule -A neutron-vpn-agen-snat -s 10.9.0.0/24 -j SNAT --to-source 9.186.100.2",
    ]);
    // Both new legs are two-queue devices, every queue held by the router.
    expect(inNs(extraNs, "ip", ["-d", "link", "show", "eth0"]).stdout).toContain("multi_queue");
    expect(inNs(config.namespace, "ip", ["-d", "link", "show", extraPort]).stdout).toContain("multi_queue");
    expect(tunQueuesOf(pid)).toBe(3 * 2 * 2);
    await startIn(external, UDP_WHO_AM_I, ["203.0.113.10", "7002"], children);
    const before = await stats();
    udpFlows("9.186.100.2", 7002, extraNs, "10.9.0.5");
    const after = await stats();
    // The new port is port 1 now (the qg- port moved to 2): its wire leg took every datagram in and every answer out.
    expect(after.ports.map((p) => p.name)).toEqual([config.ports[0]!.name, extraPort, config.ports[1]!.name]);
    expect(after.ports[1]!.wire.rxPackets - (before.ports[1]?.name === extraPort ? before.ports[1].wire.rxPackets : 0)).toBe(FLOWS * PER_FLOW);
    expect(after.ports[1]!.wire.txPackets).toBe(FLOWS * PER_FLOW);
    // Both threads forwarded some of its flows (the kernel spread them over the new device's two queues).
    for (const share of shares(before, after)) expect(share).toBeGreaterThan(0);
    // The 10.0.0.0/24 tenant goes on beside it, through the qg- port's new index, as 9.186.100.3.
    udpFlows("9.186.100.3", 7002);
    expect(lab!.output!()).not.toMatch(/worker \d+ failed/);
  }, 30_000);

  it("with the new port before it, ip link del of the outside's eth0 (leg 4 now, 2 at the start): that leg comes back and both networks' flows run on both threads", async () => {
    inNs(external, "ip", ["link", "del", "eth0"]);
    const back = async (): Promise<boolean> => {
      const response = await controlRequest(socket, { cmd: "show", what: "ports", json: true });
      const wire = response.ok ? (response.data as PortView[])[2]?.legs?.wire : undefined;
      return wire?.state === "up" && wire.recoveries === 1;
    };
    const started = Date.now();
    while (!(await back()) && Date.now() - started < WAIT_MS) await sleep(100);
    expect(await back()).toBe(true);
    inNs(external, "ip", ["addr", "add", "9.186.100.1/24", "dev", "eth0"]);
    // The workers let go of the outside's leg, not of the leg that had its index before the change.
    const before = await stats();
    udpFlows("9.186.100.2", 7002, extraNs, "10.9.0.5");
    udpFlows("9.186.100.3", 7002);
    for (const share of shares(before, await stats())) expect(share).toBeGreaterThan(0);
    expect(tunQueuesOf(lab!.pid!)).toBe(3 * 2 * 2);
    expect(lab!.output!()).not.toMatch(/worker \d+ failed/);
  }, 30_000);

  it("removed live: every queue of its legs closes (no TUN fd left over), its host is cut off, and the ports that stay forward on both threads", async () => {
    const pid = lab!.pid!;
    const removed = await controlRequest(socket, { cmd: "apply", file: "router.yaml", text: running });
    expect(removed.ok && removed.text?.split("\n").filter(Boolean)).toEqual([
      `- port ${extraPort} 10.9.0.1/24 mtu 1500 <-> ${extraNs}/eth0`,
      `- address 10.9.0.1/24 on ${extraPort}`,
      "- rule -A neutron-vpn-agen-snat -s 10.9.0.0/24 -j SNAT --to-source 9.186.100.2",
    ]);
    expect(tunQueuesOf(pid)).toBe(2 * 2 * 2);
    // Its devices went with their last queue: the mirror in the router namespace, eth0 in its own.
    expect(inNs(config.namespace, "ip", ["-o", "link", "show"]).stdout).not.toContain(extraPort);
    expect(inNs(extraNs, "ip", ["link", "show", "eth0"]).code).not.toBe(0);
    expect(await pingUntil(extraNs, "203.0.113.10", 1, "10.9.0.5")).toBe(false);
    await startIn(external, UDP_WHO_AM_I, ["203.0.113.10", "7003"], children);
    const before = await stats();
    udpFlows("9.186.100.3", 7003);
    const after = await stats();
    for (const share of shares(before, after)) expect(share).toBeGreaterThan(0);
    // Still one router: each thread's share adds up to the ports' totals, the removed port's counters gone with it.
    expect(after.ports.map((p) => p.name)).toEqual(config.ports.map((p) => p.name));
    const received = after.ports.reduce((sum, p) => sum + p.wire.rxPackets + p.mirror.rxPackets, 0);
    expect(after.workers!.reduce((sum, w) => sum + w.rxPackets, 0)).toBe(received);
    expect(await pingUntil(external, "9.186.100.129", WAIT_MS)).toBe(true);
    expect(lab!.output!()).not.toMatch(/worker \d+ failed/);
    // The lab's namespace of the removed network goes too: nothing of it is left.
    deleteNetns(extraNs);
    expect(spawnSync("ip", ["netns", "list"], { encoding: "utf8" }).stdout).not.toContain(extraNs);
  }, 30_000);

  it("SIGTERM: both threads stop and the router exits 0, its control socket and mirrors gone", async () => {
    process.kill(lab!.pid!, "SIGTERM");
    const code = await Promise.race([lab!.exited!, sleep(WAIT_MS).then(() => "still running")]);
    expect(code, lab!.output!()).toBe(0);
    expect(existsSync(socket)).toBe(false);
    expect(existsSync(pidPathFor(socket))).toBe(false);
    expect(inNs(config.namespace, "ip", ["link", "show", config.ports[0]!.name]).code).not.toBe(0);
    expect(lab!.output!()).toContain("SIGTERM: stopping");
    // The state was saved at the stop (header flags, control/state-file.ts: STATE_FLAG_AT_STOP),
    // with every thread's connections: the 32 flows of each UDP run are in the one table.
    const saved = readFileSync(stateFile);
    expect(saved.readUInt32LE(32) & STATE_FLAG_AT_STOP).toBe(STATE_FLAG_AT_STOP);
    expect(saved.readUInt32LE(20)).toBeGreaterThanOrEqual(FLOWS);
    expect(lab!.output!()).not.toMatch(/worker \d+ failed/);
  });
});

describe.skipIf(!isRoot)("what a router with workers: 2 cannot be, refused before it touches anything", () => {
  const CLI = resolve(import.meta.dirname, "../../dist/src/cli/main.js");
  const dir = mkdtempSync(join(tmpdir(), "qnat-workers-refused-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function run(file: string, text: string, env: NodeJS.ProcessEnv = {}): { code: number | null; stderr: string } {
    writeFileSync(file, text);
    const result = spawnSync(process.execPath, [CLI, "run", file], { encoding: "utf8", timeout: 20_000, env: { ...process.env, ...env } });
    return { code: result.status, stderr: result.stderr };
  }

  it("pass-through mode (QNAT_PASSTHROUGH=1) runs on one thread: one line, exit 2", () => {
    const { text, config } = retagForRun(SEED, runTag());
    const file = join(dir, "passthrough.yaml");
    const result = run(file, `${text}workers: 2\n`, { QNAT_PASSTHROUGH: "1" });
    expect(result).toEqual({ code: 2, stderr: `qnat: pass-through mode runs on one thread; ${file} says workers: 2\n` });
    expect(existsSync(controlSocketPath(config.namespace))).toBe(false);
  });
});
