/**
 * Floods and exhaustion through the real lab: examples/floods.yaml (the seed's router with a
 * 2048-entry connection table and two 64-port SNAT ranges) under fresh names (qnt-<tag>-*),
 * linked to nothing and removed afterwards, even on failure. Root only. Every flood and every
 * helper process is bounded in count and in time, and killed in `finally`.
 *
 *   SNAT exhaustion   10.0.0.4 and 10.0.0.5 open 100 UDP flows each to 203.0.113.10 through
 *                     64-port ranges: 64 get a port, 36 are dropped as nat-no-free-tuple, the 64
 *                     keep talking; with --random-fully the ports come in no predictable order.
 *   fragment flood    3000 middle fragments from spoofed sources that never complete: the
 *                     fragment table holds at most its pool and refuses the rest, counted.
 *   SYN flood         hping3 --rand-source at the floating IP 9.186.100.129:7000: the table
 *                     fills, early drop evicts unassured entries, while an established connection
 *                     to the same server and pings from 10.0.0.3 go on; memory stays flat.
 *
 * Figures go to the console (docs/floods.md quotes them).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ConntrackEntryJson } from "../../src/conntrack/format.js";
import { routerAnswers } from "../../src/control/lab.js";
import type { StatsView } from "../../src/control/show.js";
import { controlRequest, controlSocketPath } from "../../src/control/socket.js";
import { isRoot as runningAsRoot } from "../../src/io/netns.js";
import { retagForRun, runTag, type Lab, startQnatLab } from "../../bench/e2e-lab.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/floods.test.ts: not root, so the flood and exhaustion tests are skipped");

const FLOODS = resolve(import.meta.dirname, "../../examples/floods.yaml");
/** The flows each SNAT test opens beyond its range's 64 ports. */
const RANGE_PORTS = 64;
const EXTRA_FLOWS = 36;
/** The SYN flood: at most this many packets, for at most FLOOD_MS. */
const SYN_FLOOD_PACKETS = 60_000;
const FLOOD_MS = 12_000;
const FRAGMENT_FLOOD_PACKETS = 3000;

/** A UDP server that answers every datagram with the source port it saw. */
const PORT_ECHO = `
const dgram = require("dgram");
const [host, port] = process.argv.slice(1);
const socket = dgram.createSocket("udp4");
socket.on("message", (_, peer) => socket.send(String(peer.port), peer.port, peer.address));
socket.bind(Number(port), host, () => console.log("ready"));`;

/** A TCP echo server (the web server behind the floating IP). */
const TCP_ECHO = `
const [host, port] = process.argv.slice(1);
require("net").createServer((socket) => { socket.on("error", () => {}); socket.pipe(socket); })
  .listen({ host, port: Number(port), backlog: 128 }, () => console.log("ready"));`;

/**
 * UDP flows from BIND: COUNT sockets on ports FIRST.. each say hello until answered (the answer
 * is the port the outside saw), then EXTRA sockets on ephemeral ports say hello once, then the
 * first COUNT say hello again. Prints {"first":[port|null...],"extra":[...],"again":[...]}.
 */
const UDP_FLOWS = `
const dgram = require("dgram");
const [bind, first, count, extra, host, port] = process.argv.slice(1);
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const open = (p) => new Promise((done) => { const s = dgram.createSocket("udp4"); s.bind(p, bind, () => done(s)); });
async function exchange(sockets, resend, waitMs) {
  const seen = sockets.map(() => null);
  sockets.forEach((s, i) => { s.removeAllListeners("message"); s.on("message", (m) => (seen[i] = Number(String(m)))); });
  const send = () => sockets.forEach((s, i) => { if (seen[i] === null) s.send("hello", Number(port), host); });
  send();
  for (let waited = 0; waited < waitMs && (!resend || seen.includes(null)); waited += 100) {
    await sleep(100);
    if (resend && waited % 500 === 400) send();
  }
  return seen;
}
(async () => {
  const mine = await Promise.all(Array.from({ length: Number(count) }, (_, i) => open(Number(first) + i)));
  const others = await Promise.all(Array.from({ length: Number(extra) }, () => open(0)));
  const result = { first: await exchange(mine, true, 3000) };
  result.extra = await exchange(others, false, 500);
  result.again = await exchange(mine, true, 3000);
  console.log(JSON.stringify(result));
  for (const s of [...mine, ...others]) s.close();
})();`;

/**
 * A TCP client that keeps a conversation going: one line, its echo, 100 ms, the next line.
 * Prints "ready" after 5 rounds; on SIGTERM prints {"rounds":N,"broken":null|"ECONNRESET"|...}.
 */
const CONVERSATION = `
const net = require("net");
const [bind, host, port] = process.argv.slice(1);
let rounds = 0, broken = null, received = "";
const line = () => "round " + rounds + "\\n";
const socket = net.connect({ host, port: Number(port), localAddress: bind }, () => socket.write(line()));
socket.setEncoding("utf8");
socket.on("data", (data) => {
  received += data;
  if (received !== line()) return;
  received = "";
  rounds++;
  if (rounds === 5) console.log("ready");
  setTimeout(() => socket.write(line()), 100);
});
socket.on("error", (error) => (broken = error.code));
socket.on("close", () => (broken = broken ?? "closed"));
process.on("SIGTERM", () => { console.log(JSON.stringify({ rounds, broken })); process.exit(0); });`;

/** A process in a namespace, killed after `limitMs` at the latest. */
interface Helper {
  readonly child: ChildProcess;
  /** Resolves when the process printed "ready" (or exited). */
  readonly ready: Promise<void>;
  /** Everything it printed, once it exited. */
  readonly output: Promise<string>;
  kill(): void;
}

function startIn(netns: string, command: string, args: readonly string[], limitMs: number): Helper {
  const child = spawn("ip", ["netns", "exec", netns, command, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  const timer = setTimeout(() => child.kill("SIGKILL"), limitMs);
  let out = "";
  let markReady: () => void = () => undefined;
  const ready = new Promise<void>((done) => (markReady = done));
  child.stdout!.on("data", (chunk: Buffer) => {
    out += chunk.toString();
    if (out.includes("ready")) markReady();
  });
  child.stderr!.on("data", (chunk: Buffer) => (out += chunk.toString()));
  const output = new Promise<string>((done) =>
    child.once("exit", () => {
      clearTimeout(timer);
      markReady();
      done(out);
    }),
  );
  return { child, ready, output, kill: () => child.exitCode === null && child.signalCode === null && child.kill("SIGKILL") };
}

function node(netns: string, script: string, args: readonly (string | number)[], limitMs: number): Helper {
  return startIn(netns, process.execPath, ["-e", script, ...args.map(String)], limitMs);
}

/** Resident memory of a process, from /proc/PID/status (VmRSS, kB). */
function rssBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (match === null) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]) * 1024;
}

/** "N packets transmitted, M received" of ping's summary. */
function pingSummary(output: string): { transmitted: number; received: number } {
  const match = /(\d+) packets transmitted, (\d+) received/.exec(output);
  if (match === null) throw new Error(`no ping summary in: ${output}`);
  return { transmitted: Number(match[1]), received: Number(match[2]) };
}

const MiB = 1024 * 1024;

describe.skipIf(!isRoot)("floods and exhaustion through qnat in namespaces", () => {
  let lab: Lab | undefined;
  const helpers: Helper[] = [];
  const { text, config } = retagForRun(FLOODS, runTag());
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;
  const socket = controlSocketPath(config.namespace);

  async function stats(): Promise<StatsView> {
    const response = await controlRequest(socket, { cmd: "show", what: "stats", json: true }, 10_000);
    if (!response.ok) throw new Error(`qnat show stats: ${response.error}`);
    return response.data as StatsView;
  }
  async function conntrack(): Promise<ConntrackEntryJson[]> {
    const response = await controlRequest(socket, { cmd: "show", what: "conntrack", json: true }, 10_000);
    if (!response.ok) throw new Error(`qnat show conntrack: ${response.error}`);
    // A streamed answer: its pieces, joined, are the JSON text.
    return JSON.parse(response.text ?? "") as ConntrackEntryJson[];
  }
  const drops = (view: StatsView, port: number, reason: string): number => view.ports[port]!.drops[reason] ?? 0;
  function started(helper: Helper): Helper {
    helpers.push(helper);
    return helper;
  }

  beforeAll(async () => {
    lab = await startQnatLab(text, config);
    const servers = [
      started(node(external, PORT_ECHO, ["203.0.113.10", 7002], 120_000)),
      started(node(tenant, TCP_ECHO, ["10.0.0.2", 7000], 120_000)),
    ];
    await Promise.all(servers.map((s) => s.ready));
  }, 60_000);

  afterAll(async () => {
    for (const helper of helpers) helper.kill();
    await lab?.stop();
  }, 30_000);

  /** 100 UDP flows from `bind` (64 on the range's own ports from `first`), with the drops they cost. */
  async function exhaust(bind: string, first: number): Promise<{ first: (number | null)[]; extra: (number | null)[]; again: (number | null)[]; dropped: number }> {
    const before = drops(await stats(), 0, "nat-no-free-tuple");
    const flows = started(node(tenant, UDP_FLOWS, [bind, first, RANGE_PORTS, EXTRA_FLOWS, "203.0.113.10", 7002], 20_000));
    const output = await flows.output;
    const result = JSON.parse(output.trim().split("\n").pop()!) as { first: (number | null)[]; extra: (number | null)[]; again: (number | null)[] };
    return { ...result, dropped: drops(await stats(), 0, "nat-no-free-tuple") - before };
  }
  const rangeOf = (first: number): number[] => Array.from({ length: RANGE_PORTS }, (_, i) => first + i);

  it("10.0.0.4's 64 flows to 203.0.113.10 fill its 64-port SNAT range, each as 9.186.100.2 on its own port; 36 more are dropped as nat-no-free-tuple and the 64 keep talking", async () => {
    const { first, extra, again, dropped } = await exhaust("10.0.0.4", 20000);
    // A free source port inside the range is kept (nf_nat_l4proto_unique_tuple): predictable.
    expect(first).toEqual(rangeOf(20000));
    expect(extra).toEqual(Array(EXTRA_FLOWS).fill(null));
    expect(dropped).toBe(EXTRA_FLOWS);
    expect(again).toEqual(first);
    console.log(`snat exhaustion: ${RANGE_PORTS} flows bound, ${EXTRA_FLOWS} refused (nat-no-free-tuple +${dropped})`);
  }, 30_000);

  it("with --random-fully, 10.0.0.5's 64 flows get the range's 64 ports in no predictable order; exhaustion is still counted", async () => {
    const { first, extra, again, dropped } = await exhaust("10.0.0.5", 20100);
    const ports = first as number[];
    expect([...ports].sort((a, b) => a - b)).toEqual(rangeOf(20100));
    // Always remapped from a random offset (NF_NAT_RANGE_PROTO_RANDOM_FULLY): a flow keeps its
    // own port only by chance (about 1 in 64 each), and the ports do not follow the flows' order.
    const kept = ports.filter((port, i) => port === 20100 + i).length;
    const ascending = ports.filter((port, i) => i > 0 && port === ports[i - 1]! + 1).length;
    expect(kept).toBeLessThan(16);
    expect(ascending).toBeLessThan(RANGE_PORTS / 2);
    expect(extra).toEqual(Array(EXTRA_FLOWS).fill(null));
    expect(dropped).toBe(EXTRA_FLOWS);
    expect(again).toEqual(first);
    console.log(`snat --random-fully: ${kept} of ${RANGE_PORTS} flows kept their own port, ${ascending} ports follow their predecessor; ${dropped} refused`);
  }, 30_000);

  it("3000 fragments from spoofed sources that never complete stay within the fragment pool; the rest are refused and counted", async () => {
    const before = await stats();
    const rssBefore = rssBytes(lab!.pid!);
    // Middle fragments (offset 1480, MF set) of UDP datagrams to the floating IP, each from a random source.
    const hping = started(
      startIn(external, "hping3", ["--udp", "-p", "7003", "-x", "-g", "1480", "-d", "200", "--rand-source", "-i", "u200", "-c", String(FRAGMENT_FLOOD_PACKETS), "-q", "9.186.100.129"], 15_000),
    );
    await hping.output;
    const after = await stats();
    const fragments = after.fragments!;
    const arrived = after.ports[1]!.wire.rxPackets - before.ports[1]!.wire.rxPackets;
    const martians = drops(after, 1, "martian-source") - drops(before, 1, "martian-source");
    const refused = drops(after, 1, "fragment-table-full") - drops(before, 1, "fragment-table-full");
    const dropped = Object.values(after.ports[1]!.drops).reduce((a, b) => a + b, 0) - Object.values(before.ports[1]!.drops).reduce((a, b) => a + b, 0);
    const held = fragments.counters.held - before.fragments!.counters.held;

    expect(fragments.held).toBeLessThanOrEqual(fragments.maxHeld);
    expect(fragments.datagrams).toBeLessThanOrEqual(fragments.maxDatagrams);
    expect(fragments.heldBytes).toBeLessThanOrEqual(fragments.maxHeld * 2048);
    expect(fragments.held).toBe(fragments.maxHeld); // the pool filled...
    expect(refused).toBeGreaterThan(0); // ...and the rest were refused, by reason
    expect(held + dropped).toBe(arrived); // every fragment is held or dropped by a named reason
    expect(after.conntrack.counters.created).toBe(before.conntrack.counters.created); // none reached conntrack
    expect(await routerAnswers(config, 5000)).toBe(true);
    const rssAfter = rssBytes(lab!.pid!);
    console.log(
      `fragment flood: ${arrived} arrived, ${held} held (pool ${fragments.maxHeld}, ${fragments.heldBytes} bytes), ${refused} fragment-table-full, ${martians} martian-source; ` +
        `RSS ${(rssBefore / MiB).toFixed(1)} -> ${(rssAfter / MiB).toFixed(1)} MiB`,
    );
  }, 30_000);

  it("a SYN flood from spoofed sources at 9.186.100.129:7000 fills the table; early drop evicts only unassured entries, so a conversation with that server and pings from 10.0.0.3 go on", async () => {
    // The conversation: 203.0.113.10 -> 9.186.100.129:7000 (DNAT to 10.0.0.2), ASSURED before the flood.
    const conversation = started(node(external, CONVERSATION, ["203.0.113.10", "9.186.100.129", 7000], 40_000));
    await conversation.ready;
    const isConversation = (e: ConntrackEntryJson): boolean => e.protocol === "tcp" && e.original.src === "203.0.113.10" && e.original.dst === "9.186.100.129" && e.original.dport === 7000;
    const entriesBefore = await conntrack();
    const entryBefore = entriesBefore.find(isConversation);
    expect(entryBefore?.status).toContain("ASSURED");
    // Every assured connection (the conversation, the SNAT tests' UDP flows that talked twice).
    const assuredBefore = entriesBefore.filter((e) => e.status.includes("ASSURED"));
    const before = await stats();
    const rssBefore = rssBytes(lab!.pid!);
    const capacity = before.conntrack.capacity;

    const ping = started(startIn(tenant, "ping", ["-I", "10.0.0.3", "-i", "0.2", "-c", "50", "-W", "1", "-q", "203.0.113.10"], 20_000));
    const floodStart = Date.now();
    const hping = started(
      startIn(external, "hping3", ["-S", "-p", "7000", "--rand-source", "-i", "u100", "-c", String(SYN_FLOOD_PACKETS), "-q", "9.186.100.129"], FLOOD_MS),
    );
    let flooding = true;
    void hping.output.then(() => (flooding = false));
    let filledAfterMs: number | undefined;
    let largest = 0;
    while (flooding) {
      const now = await stats();
      largest = Math.max(largest, now.conntrack.count);
      if (filledAfterMs === undefined && now.conntrack.count === capacity) filledAfterMs = Date.now() - floodStart;
      await sleep(250);
    }
    const floodMs = Date.now() - floodStart;
    const pings = pingSummary(await ping.output);
    const rssAfter = rssBytes(lab!.pid!); // before the control plane builds 2048 entries' JSON
    const after = await stats();
    const entriesAfter = await conntrack();
    const entryAfter = entriesAfter.find(isConversation);
    const sameEntry = (a: ConntrackEntryJson, b: ConntrackEntryJson): boolean => a.id === b.id && JSON.stringify(a.original) === JSON.stringify(b.original);
    const assuredEvicted = assuredBefore.filter((e) => !entriesAfter.some((f) => sameEntry(e, f)));
    conversation.child.kill("SIGTERM");
    const talk = JSON.parse((await conversation.output).trim().split("\n").pop()!) as { rounds: number; broken: string | null };

    const synsArrived = after.ports[1]!.wire.rxPackets - before.ports[1]!.wire.rxPackets;
    const earlyDrops = after.conntrack.counters.earlyDrop - before.conntrack.counters.earlyDrop;
    const full = after.conntrack.counters.dropFull - before.conntrack.counters.dropFull;
    const martians = drops(after, 1, "martian-source") - drops(before, 1, "martian-source");

    // The table filled and stayed within its bound; show stats explains how room was made.
    expect(filledAfterMs).toBeDefined();
    expect(largest).toBe(capacity);
    expect(after.conntrack.count).toBeLessThanOrEqual(capacity);
    expect(earlyDrops).toBeGreaterThan(0);
    // Early drop looks at 8 buckets only (Linux NF_CT_EVICTION_RANGE): about once in 10^5-10^6
    // new connections they are all empty and the SYN is refused, as on Linux, by reason.
    expect(full).toBeLessThan(earlyDrops / 1000);
    const refusedFull = (view: StatsView): number => drops(view, 0, "conntrack-full") + drops(view, 1, "conntrack-full");
    expect(refusedFull(after) - refusedFull(before)).toBe(full);
    expect(after.conntrack.memoryBytes).toBe(before.conntrack.memoryBytes);
    // The assured connection was never evicted: the same entry, still ASSURED and ESTABLISHED.
    expect(entryAfter).toEqual({ ...entryBefore!, timeout: entryAfter!.timeout });
    expect(entryAfter!.state).toBe("ESTABLISHED");
    expect(assuredEvicted).toEqual([]);
    expect(talk.broken).toBeNull();
    expect(talk.rounds).toBeGreaterThan(10);
    // Pings from 10.0.0.3 still get through (each needs a new or evicted-and-recreated entry).
    expect(pings.received).toBeGreaterThanOrEqual(pings.transmitted * 0.8);
    // The router stays up and its memory flat (the table is allocated up front).
    expect(lab!.pid).toBeDefined();
    expect(await routerAnswers(config, 5000)).toBe(true);
    expect(rssAfter - rssBefore).toBeLessThan(64 * MiB);

    console.log(
      `syn flood: ${synsArrived} packets arrived in ${(floodMs / 1000).toFixed(1)} s; table of ${capacity} full after ${filledAfterMs} ms; ` +
        `early_drop +${earlyDrops}, drop_full +${full}, martian-source +${martians}; ${assuredBefore.length} assured entries all kept; conversation ${talk.rounds} rounds, unbroken; ` +
        `pings ${pings.received}/${pings.transmitted}; RSS ${(rssBefore / MiB).toFixed(1)} -> ${(rssAfter / MiB).toFixed(1)} MiB`,
    );
  }, 60_000);
});
