/**
 * The seed's router with Ethernet (tap) ports and `workers: 2`, in real namespaces (root only; the
 * seed's router under fresh names qnt-<tag>-*, linked to nothing, removed afterwards even on
 * failure): every leg is a two-queue TAP device, the main thread forwards queue 0 and a worker
 * thread queue 1, each with its own neighbour table, kept in step by the ARP packets each relays
 * to the other and by the news of what each resolves (control/ethernet-threads.ts): the gateway is
 * asked for once, and its reply fills both tables. The seed's flows work as with one thread (ping,
 * 10.0.0.3 leaves as 9.186.100.2, the floating IP 9.186.100.129 reaches 10.0.0.2, TCP with curl);
 * 32 parallel UDP flows, which the kernel spreads over both queues, are all translated and
 * answered, both threads carry some, and each thread's table holds the tenant host and the
 * gateway with their MACs; a dead neighbour is answered with host unreachable; `show stats`, the
 * metrics and `show neigh` are one router; a capture holds every thread's frames whole; a live change's new address is answered for; a wire
 * leg deleted comes back with a queue per thread, and the outside's gratuitous ARP, which one
 * thread receives, moves the gateway to its new MAC in both tables; a tap port added live carries
 * flows on both threads, and removed live leaves no TAP queue open. Every command is bounded in
 * time and count.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { deleteNetns, isRoot as runningAsRoot } from "../../src/io/netns.js";
import { controlRequest, controlSocketPath } from "../../src/control/socket.js";
import { pingUntil } from "../../src/control/lab.js";
import type { EthernetStatsView, PortView, StatsView } from "../../src/control/show.js";
import { runCli } from "../../src/cli/main.js";
import type { ThreadNeighbourView } from "../../src/control/ethernet-threads.js";
import { retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";
import { startIn, tunQueuesOf, UDP_FLOWS, UDP_WHO_AM_I } from "../support/workers-traffic.js";
import { QG_MAC, QR_MAC, withTapPorts } from "../support/ethernet-router.js";
import { readPcapng } from "../support/pcapng-reader.js";
import { ETH_P_ARP, ETH_P_IP } from "../../src/wire/ethernet.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/workers-ethernet.test.ts: not root, so the two-worker tap router tests are skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const MAIN = resolve(import.meta.dirname, "../../dist/src/cli/main.js");
/** pcapng's link type of Ethernet frames (LINKTYPE_ETHERNET). */
const LINKTYPE_ETHERNET = 1;
const WAIT_MS = 10_000;
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
  return { code: result.status, stdout: (result.stdout ?? "") + (result.stderr ?? "") };
}

describe.skipIf(!isRoot)("the seed's router with tap ports and workers: 2", () => {
  let lab: Lab | undefined;
  const children: ChildProcess[] = [];
  const retagged = retagForRun(SEED, runTag());
  const text = `${withTapPorts(retagged.text)}workers: 2\nmetrics: { listen: "127.0.0.1:9467" }\n`;
  const config = parseConfig(text, "router.yaml");
  const [qr, qg] = config.ports.map((p) => p.name) as [string, string];
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;
  const socket = controlSocketPath(config.namespace);
  const dir = mkdtempSync(join(tmpdir(), "qnat-workers-ethernet-"));

  async function stats(): Promise<StatsView & { ethernet: EthernetStatsView }> {
    const response = await controlRequest(socket, { cmd: "show", what: "stats", json: true });
    if (!response.ok) throw new Error(`qnat show stats: ${response.error}`);
    return response.data as StatsView & { ethernet: EthernetStatsView };
  }

  async function neighbours(): Promise<ThreadNeighbourView[]> {
    const response = await controlRequest(socket, { cmd: "show", what: "neigh", json: true });
    if (!response.ok) throw new Error(`qnat show neigh: ${response.error}`);
    return response.data as ThreadNeighbourView[];
  }

  /** FLOWS UDP flows from 10.0.0.3 to a UDP echo of the peer on 203.0.113.10:`port`: every datagram answered, every flow as 9.186.100.2 on a port of its own. */
  function udpFlows(port: number, from = tenant, source = "10.0.0.3"): void {
    const client = spawnSync("ip", ["netns", "exec", from, process.execPath, "-e", UDP_FLOWS, String(FLOWS), String(PER_FLOW), source, "203.0.113.10", String(port)], {
      encoding: "utf8",
      timeout: 20_000,
    });
    const result = JSON.parse(client.stdout) as { sent: number; answered: number; seen: Record<string, string> };
    expect(result.sent).toBe(FLOWS * PER_FLOW);
    expect(result.answered).toBe(FLOWS * PER_FLOW);
    const seen = Object.values(result.seen);
    expect(seen).toHaveLength(FLOWS);
    for (const address of seen) expect(address).toMatch(/^9\.186\.100\.2:\d+$/);
    expect(new Set(seen).size).toBe(FLOWS);
  }

  beforeAll(async () => {
    lab = await startQnatLab(text, config);
    await startIn(external, UDP_WHO_AM_I, ["203.0.113.10", "7000"], children);
    await startIn(external, UDP_WHO_AM_I, ["203.0.113.10", "7001"], children);
    await startIn(external, UDP_WHO_AM_I, ["203.0.113.10", "7002"], children);
  }, 60_000);
  afterAll(async () => {
    for (const child of children) child.kill("SIGKILL");
    try {
      await lab?.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it("starts two forwarding threads; every leg is a multi-queue TAP device with the port's MAC on the mirror", () => {
    expect(lab!.output!()).toMatch(/workers: 2 \(queue 0 on the main thread, queue 1 on a worker thread/);
    const mirror = inNs(config.namespace, "ip", ["-d", "link", "show", qr]).stdout;
    expect(mirror).toContain(`link/ether ${QR_MAC}`);
    expect(mirror).toMatch(/tun type tap .*multi_queue/);
    expect(inNs(external, "ip", ["-d", "link", "show", "eth0"]).stdout).toMatch(/tun type tap .*multi_queue/);
  });

  it("10.0.0.3 pings 203.0.113.10 through the router: the gateway 9.186.100.1 is asked for once and is then in both threads' tables; the outside pings the floating IP 9.186.100.129", async () => {
    expect(await pingUntil(tenant, "203.0.113.10", WAIT_MS, "10.0.0.3")).toBe(true);
    // One thread forwarded the ping and resolved the gateway; its reply filled the other thread's
    // table too (the outside has not asked for a router address yet, which would also make it).
    expect((await stats()).ethernet.ports[qg]!["arp_requests_out"]).toBe(1);
    const gatewayMac = inNs(external, "ip", ["link", "show", "eth0"]).stdout.match(/link\/ether (\S+)/)![1]!;
    const rows = await neighbours();
    for (const thread of [0, 1]) expect(rows.find((r) => r.thread === thread && r.dst === "9.186.100.1" && r.dev === qg)?.lladdr).toBe(gatewayMac);
    expect(await pingUntil(external, "9.186.100.129", WAIT_MS)).toBe(true);
  });

  it("10.0.0.3 reaches the outside as 9.186.100.2 over TCP, and 10.0.0.2 as its floating IP 9.186.100.129", async () => {
    await startIn(external, WHO_AM_I, ["0.0.0.0", "8080"], children);
    expect(inNs(tenant, "curl", ["-s", "-m", "5", "--interface", "10.0.0.3", "http://203.0.113.10:8080/"]).stdout.trim()).toBe("seen 9.186.100.2");
    expect(inNs(tenant, "curl", ["-s", "-m", "5", "--interface", "10.0.0.2", "http://9.186.100.1:8080/"]).stdout.trim()).toBe("seen 9.186.100.129");
  });

  it(`${FLOWS} parallel UDP flows from 10.0.0.3 all leave as 9.186.100.2 with distinct ports, every datagram answered; both threads carried them and both know the neighbours`, async () => {
    const before = await stats();
    udpFlows(7000);
    const after = await stats();
    // One router: the tenant's wire received exactly the datagrams, the outside's sent them.
    expect(after.ports[0]!.wire.rxPackets - before.ports[0]!.wire.rxPackets).toBe(FLOWS * PER_FLOW);
    expect(after.ports[1]!.wire.txPackets - before.ports[1]!.wire.txPackets).toBe(FLOWS * PER_FLOW);
    // Both threads carried some (the kernel spreads the flows over the queues by hash).
    const shares = after.workers!.map((w, i) => w.rxPackets - (before.workers![i]?.rxPackets ?? 0));
    expect(shares).toHaveLength(2);
    for (const share of shares) expect(share).toBeGreaterThan(0);
    // Each thread wrote frames to the tenant and the gateway: each thread's table holds both with their MACs.
    const tenantMac = inNs(tenant, "ip", ["link", "show", "eth0"]).stdout.match(/link\/ether (\S+)/)![1]!;
    const rows = await neighbours();
    for (const thread of [0, 1]) {
      expect(rows.find((r) => r.thread === thread && r.dst === "10.0.0.3" && r.dev === qr)?.lladdr).toBe(tenantMac);
      expect(rows.find((r) => r.thread === thread && r.dst === "9.186.100.1" && r.dev === qg)?.lladdr).toMatch(/^[0-9a-f:]{17}$/);
    }
    const text = await controlRequest(socket, { cmd: "show", what: "neigh" });
    expect(text.ok && text.text).toMatch(new RegExp(`^10\\.0\\.0\\.3 dev ${qr} lladdr ${tenantMac} \\S+ thread 1$`, "m"));
    // `show stats` counts each neighbour once, though both threads' tables hold it.
    const distinct = new Set(rows.map((r) => `${r.dev} ${r.dst}`)).size;
    expect(rows.length).toBeGreaterThan(distinct);
    expect((await stats()).ethernet.neighbours["entries"]).toBe(distinct);
  }, 40_000);

  it("qnat capture -c 100 of both ports' wires while the flows cross both threads: 100 Ethernet frames, every one IPv4 or ARP with its header in place", async () => {
    const file = join(dir, "flows.pcapng");
    const capture = spawn(process.execPath, [MAIN, "capture", qr, qg, "-c", "100", "--router", config.namespace, "-w", file], { stdio: ["ignore", "ignore", "pipe"] });
    children.push(capture);
    let stderr = "";
    capture.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((done) => capture.once("exit", (code) => done(code)));
    const started = Date.now();
    while (!stderr.includes("capturing") && capture.exitCode === null && Date.now() - started < WAIT_MS) await sleep(20);
    expect(stderr).toContain("capturing");
    const before = await stats();
    udpFlows(7002);
    const after = await stats();
    for (const share of after.workers!.map((w, i) => w.rxPackets - before.workers![i]!.rxPackets)) expect(share).toBeGreaterThan(0);
    expect(await Promise.race([exited, sleep(WAIT_MS).then(() => "still running")]), stderr).toBe(0);
    const read = readPcapng(readFileSync(file));
    expect(read.interfaces.map((i) => [i.name, i.linkType])).toEqual([[qr, LINKTYPE_ETHERNET], [qg, LINKTYPE_ETHERNET]]);
    expect(read.packets).toHaveLength(100);
    // Every thread's tap writes whole frames: the EtherType where Ethernet puts it, the router's MAC on one side.
    const macs = [QR_MAC, QG_MAC].map((m) => m.replaceAll(":", ""));
    for (const packet of read.packets) {
      const type = (packet.data[12]! << 8) | packet.data[13]!;
      expect([ETH_P_IP, ETH_P_ARP]).toContain(type);
      const ends = [Buffer.from(packet.data.subarray(0, 6)).toString("hex"), Buffer.from(packet.data.subarray(6, 12)).toString("hex")];
      expect(ends.some((mac) => macs.includes(mac)) || ends[0] === "ffffffffffff").toBe(true);
    }
  }, 30_000);

  it("show stats and the metrics count each ARP packet once, every thread's added up", async () => {
    const seen = await stats();
    const ethernet = seen.ethernet;
    // Announced once, by the main thread: 9.186.100.2 and 9.186.100.129.
    expect(ethernet.ports[qg]!["gratuitous_out"]).toBe(2);
    expect(ethernet.ports[qr]!["arp_replies"]).toBeGreaterThan(0);
    expect(ethernet.ports[qr]!["arp_requests_in"]).toBeGreaterThanOrEqual(ethernet.ports[qr]!["arp_replies"]!);
    const metrics = inNs(config.namespace, "curl", ["-s", "-m", "5", "http://127.0.0.1:9467/metrics"]).stdout;
    const metric = (pattern: RegExp): number => Number(pattern.exec(metrics)?.[1] ?? NaN);
    expect(metric(new RegExp(`qnat_arp_sent_total\\{port="${qg}",kind="gratuitous"\\} (\\d+)`))).toBe(2);
    expect(metric(new RegExp(`qnat_arp_sent_total\\{port="${qr}",kind="reply"\\} (\\d+)`))).toBeGreaterThanOrEqual(ethernet.ports[qr]!["arp_replies"]!);
  });

  it("a dead neighbour (9.186.100.77) gives 10.0.0.3 ICMP host unreachable from 9.186.100.2", () => {
    const result = inNs(tenant, "ping", ["-n", "-c", "1", "-w", "8", "-I", "10.0.0.3", "9.186.100.77"]);
    expect(result.stdout).toMatch(/From 9\.186\.100\.2 icmp_seq=1 Destination Host Unreachable/);
  }, 20_000);

  it("qnat apply of a new floating IP's address 9.186.100.130 on qg- reaches both threads: the outside's arping for it is answered with qg-'s MAC", async () => {
    const file = join(dir, "with-fip.yaml");
    writeFileSync(file, text.replace("9.186.100.2/24, 9.186.100.129/32", "9.186.100.2/24, 9.186.100.129/32, 9.186.100.130/32"));
    let out = "";
    let err = "";
    expect(await runCli(["apply", file], { out: (t) => (out += t), err: (t) => (err += t) })).toBe(0);
    expect(err).toBe("");
    expect(out).toContain(`+ address 9.186.100.130/32 on ${qg}`);
    // The outside's ARP frames reach one queue (docs/multi-core.md): the thread there answers.
    const arping = inNs(external, "arping", ["-c", "2", "-w", "4", "-I", "eth0", "9.186.100.130"]).stdout;
    expect(arping.toLowerCase()).toContain(`reply from 9.186.100.130 [${QG_MAC}]`);
  }, 20_000);

  it("ip link del of the outside's eth0: the tap leg comes back with a queue for each thread; the outside's gratuitous ARP moves 9.186.100.1 to its new MAC in both threads' tables, and the flows run on both again", async () => {
    const oldMac = inNs(external, "ip", ["link", "show", "eth0"]).stdout.match(/link\/ether (\S+)/)![1]!;
    inNs(external, "ip", ["link", "del", "eth0"]);
    const back = async (): Promise<boolean> => {
      const response = await controlRequest(socket, { cmd: "show", what: "ports", json: true });
      const wire = response.ok ? (response.data as PortView[])[1]!.legs?.wire : undefined;
      return wire?.state === "up" && wire.recoveries === 1;
    };
    const started = Date.now();
    while (!(await back()) && Date.now() - started < WAIT_MS) await sleep(100);
    expect(await back()).toBe(true);
    const link = inNs(external, "ip", ["-d", "link", "show", "eth0"]).stdout;
    expect(link).toMatch(/tun type tap .*multi_queue/);
    const newMac = link.match(/link\/ether (\S+)/)![1]!;
    expect(newMac).not.toBe(oldMac);
    // As qnat lab up would: the outside's host gets its address again, and announces it.
    inNs(external, "ip", ["addr", "add", "9.186.100.1/24", "dev", "eth0"]);
    inNs(external, "arping", ["-U", "-c", "1", "-I", "eth0", "9.186.100.1"]);
    const gatewayMacs = async (): Promise<string[]> => (await neighbours()).filter((r) => r.dst === "9.186.100.1").map((r) => `${r.thread} ${r.lladdr}`);
    const waited = Date.now();
    while ((await gatewayMacs()).join() !== `0 ${newMac},1 ${newMac}` && Date.now() - waited < WAIT_MS) await sleep(100);
    expect(await gatewayMacs()).toEqual([`0 ${newMac}`, `1 ${newMac}`]);
    const before = await stats();
    udpFlows(7001);
    const after = await stats();
    for (const share of after.workers!.map((w, i) => w.rxPackets - before.workers![i]!.rxPackets)) expect(share).toBeGreaterThan(0);
  }, 40_000);

  /** The config the router runs (the floating IP's address of the test above), and with a tap tenant network qr-extra0001 10.9.0.1/24 added before qg-, its host 10.9.0.5. */
  const running = text.replace("9.186.100.2/24, 9.186.100.129/32", "9.186.100.2/24, 9.186.100.129/32, 9.186.100.130/32");
  const extraPort = "qr-extra0001";
  const extraMac = "fa:16:3e:00:09:01";
  const extraNs = config.namespace.replace(/-r$/, "-p9");
  const withExtraPort = running
    .replace(`  - name: ${qg}\n`, `  - name: ${extraPort}\n    mac: ${extraMac}\n    addresses: [10.9.0.1/24]\n    wire: { namespace: ${extraNs}, device: eth0, mode: tap }\n  - name: ${qg}\n`)
    .replace("-s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2\n", "-s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2\n  -A neutron-vpn-agen-snat -s 10.9.0.0/24 -j SNAT --to-source 9.186.100.2\n")
    .replace("lab:\n", `lab:\n  ${extraNs}: { addresses: [10.9.0.5/24], routes: [default via 10.9.0.1] }\n`);
  afterAll(() => {
    try {
      deleteNetns(extraNs);
    } catch {
      // removed by the test, or never made
    }
  });

  async function applyText(configText: string, name: string): Promise<string> {
    const file = join(dir, name);
    writeFileSync(file, configText);
    let out = "";
    let err = "";
    expect(await runCli(["apply", file], { out: (t) => (out += t), err: (t) => (err += t) })).toBe(0);
    expect(err).toBe("");
    return out;
  }

  it("a tap tenant network added live before qg- (qr-extra0001 10.9.0.1/24, its host 10.9.0.5): both threads resolve the host on it and forward its flows as 9.186.100.2; the gateway's entries follow qg- to its new index", async () => {
    expect(withExtraPort).toContain(`${extraNs}: { addresses: [10.9.0.5/24]`);
    expect(withExtraPort).toContain("-s 10.9.0.0/24 -j SNAT");
    expect(tunQueuesOf(lab!.pid!)).toBe(2 * 2 * 2);
    expect((await applyText(withExtraPort, "with-extra.yaml")).split("\n").filter(Boolean)).toEqual([
      `+ port ${extraPort} 10.9.0.1/24 mtu 1500 <-> ${extraNs}/eth0`,
      `+ address 10.9.0.1/24 on ${extraPort}`,
      "+ rule -A neutron-vpn-agen-snat -s 10.9.0.0/24 -j SNAT --to-source 9.186.100.2",
    ]);
    expect(inNs(extraNs, "ip", ["-d", "link", "show", "eth0"]).stdout).toMatch(/tun type tap .*multi_queue/);
    expect(tunQueuesOf(lab!.pid!)).toBe(3 * 2 * 2);
    const before = await stats();
    udpFlows(7000, extraNs, "10.9.0.5");
    const after = await stats();
    expect(after.ports.map((p) => p.name)).toEqual([qr, extraPort, qg]);
    expect(after.ports[1]!.wire.rxPackets).toBe(FLOWS * PER_FLOW);
    for (const share of after.workers!.map((w, i) => w.rxPackets - before.workers![i]!.rxPackets)) expect(share).toBeGreaterThan(0);
    // Each thread wrote frames to the new host, and kept the gateway's entry through the renumbering.
    const hostMac = inNs(extraNs, "ip", ["link", "show", "eth0"]).stdout.match(/link\/ether (\S+)/)![1]!;
    const rows = await neighbours();
    for (const thread of [0, 1]) {
      expect(rows.find((r) => r.thread === thread && r.dst === "10.9.0.5" && r.dev === extraPort)?.lladdr).toBe(hostMac);
      expect(rows.find((r) => r.thread === thread && r.dst === "9.186.100.1" && r.dev === qg)?.lladdr).toMatch(/^[0-9a-f:]{17}$/);
    }
    expect(lab!.output!()).not.toMatch(/worker \d+ failed|internal error/);
  }, 40_000);

  it("removed live: every queue of its legs closes, its neighbours go, and the tenant's flows run on both threads", async () => {
    expect((await applyText(running, "without-extra.yaml")).split("\n").filter(Boolean)).toEqual([
      `- port ${extraPort} 10.9.0.1/24 mtu 1500 <-> ${extraNs}/eth0`,
      `- address 10.9.0.1/24 on ${extraPort}`,
      "- rule -A neutron-vpn-agen-snat -s 10.9.0.0/24 -j SNAT --to-source 9.186.100.2",
    ]);
    expect(tunQueuesOf(lab!.pid!)).toBe(2 * 2 * 2);
    expect(inNs(config.namespace, "ip", ["-o", "link", "show"]).stdout).not.toContain(extraPort);
    expect((await neighbours()).filter((r) => r.dst === "10.9.0.5")).toEqual([]);
    const before = await stats();
    udpFlows(7000);
    const after = await stats();
    for (const share of after.workers!.map((w, i) => w.rxPackets - before.workers![i]!.rxPackets)) expect(share).toBeGreaterThan(0);
    expect(lab!.output!()).not.toMatch(/worker \d+ failed|internal error/);
    deleteNetns(extraNs);
    expect(spawnSync("ip", ["netns", "list"], { encoding: "utf8" }).stdout).not.toContain(extraNs);
  }, 40_000);

  it("SIGTERM: both threads stop and the router exits 0, its mirrors gone", async () => {
    process.kill(lab!.pid!, "SIGTERM");
    const code = await Promise.race([lab!.exited!, sleep(WAIT_MS).then(() => "still running")]);
    expect(code, lab!.output!()).toBe(0);
    expect(inNs(config.namespace, "ip", ["link", "show", qr]).code).not.toBe(0);
    expect(lab!.output!()).not.toMatch(/worker \d+ failed|internal error/);
  });
});
