/**
 * With `workers: 2` a connection's reply comes in on the other worker's queue, and is still
 * translated right. Root only: the seed's router under fresh names (qnt-<tag>-*), linked to
 * nothing, removed afterwards; every wait is bounded.
 *
 * How the reply is made to cross, through real TUN queues: worker i reads queue i of every
 * multi-queue leg (src/io/tun.ts openQueues opens queue 0 first). Linux's tun driver
 * (drivers/net/tun.c tun_automq_select_queue) sends a flow to the queue that last wrote a packet
 * of it (tun_flow_update, the symmetric flow hash, learned once the written packet was delivered),
 * else to the queue its hash picks. So an application's reply follows the worker that wrote the
 * original out; but the driver forgets a flow 3 s after its last write (TUN_FLOW_EXPIRE,
 * tun_flow_cleanup), and a reply that comes later goes where the hash of the *translated* tuple
 * picks: for each connection, a coin toss against the queue the original tuple's hash picked. 16 connections (8 SNAT, 8 DNAT) answered after the
 * driver forgot them: all 16 staying on their worker has probability 2^-16.
 *
 * Which queue each packet took is read outside qnat: a multi-queue TUN device has the `mq` qdisc
 * with one child per queue, and `tc -s qdisc` counts what the namespace's host sent through each
 * (the queue the worker reads). One packet at a time, so each count names one packet's queue.
 *
 *   10.0.0.3:4000x -> 203.0.113.10:7000        SNAT to 9.186.100.2 (the server answers with the peer it saw)
 *   9.186.100.1:4100x -> 9.186.100.129:7001    DNAT to the floating IP's 10.0.0.2 (same)
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRoot as runningAsRoot, netnsExecAsync } from "../../src/io/netns.js";
import { controlRequest, controlSocketPath } from "../../src/control/socket.js";
import type { StatsView } from "../../src/control/show.js";
import { retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";
import { parseQnatConntrack, type CtEntry } from "../conformance/harness.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/workers-cross-queue.test.ts: not root, so the cross-queue reply test is skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const WORKERS = 2;
/** Connections of each kind (SNAT out, DNAT in). */
const PER_KIND = 8;
/**
 * How long the driver needs to forget a flow: TUN_FLOW_EXPIRE (3 s) after its last write, at the
 * next run of tun_flow_cleanup, whose timer is rounded up to a whole second (round_jiffies_up).
 */
const FORGET_MS = 5_500;
const EVENT_LIMIT_MS = 5_000;
/** How long a client waits for its reply before it counts as lost (the router's round trip is well under a millisecond). */
const REPLY_LIMIT_MS = 1_000;

/**
 * A UDP agent run in a namespace: JSON commands on stdin (`bind` a socket, `send` from one),
 * JSON events on stdout (`bound`, `recv` with the peer and the text). Exits when stdin closes,
 * or after 60 s at the latest.
 */
const AGENT = `
const dgram = require("node:dgram");
const sockets = new Map();
const say = (event) => process.stdout.write(JSON.stringify(event) + "\\n");
let buffered = "";
process.stdin.on("data", (chunk) => {
  buffered += chunk;
  let at;
  while ((at = buffered.indexOf("\\n")) >= 0) {
    const command = JSON.parse(buffered.slice(0, at));
    buffered = buffered.slice(at + 1);
    if (command.op === "bind") {
      const socket = dgram.createSocket("udp4");
      socket.on("message", (message, from) => say({ op: "recv", id: command.id, from: from.address + ":" + from.port, text: message.toString() }));
      socket.bind(command.port, command.address, () => say({ op: "bound", id: command.id }));
      sockets.set(command.id, socket);
    } else if (command.op === "send") {
      sockets.get(command.id).send(command.text, command.port, command.address);
    }
  }
});
process.stdin.on("end", () => process.exit(0));
setTimeout(() => process.exit(3), 60000).unref();
`;

interface AgentEvent {
  op: "bound" | "recv";
  id: string;
  from?: string;
  text?: string;
}

/** One agent process: commands in, events out, waiting for an event bounded in time. */
class UdpAgent {
  private readonly events: AgentEvent[] = [];
  private readonly waiters: Array<() => void> = [];
  private readonly child: ChildProcessWithoutNullStreams;
  private stderr = "";

  constructor(readonly netns: string) {
    this.child = spawn("ip", ["netns", "exec", netns, process.execPath, "-e", AGENT]);
    let out = "";
    this.child.stdout.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      let at;
      while ((at = out.indexOf("\n")) >= 0) {
        this.events.push(JSON.parse(out.slice(0, at)) as AgentEvent);
        out = out.slice(at + 1);
        for (const wake of this.waiters.splice(0)) wake();
      }
    });
    this.child.stderr.on("data", (chunk: Buffer) => (this.stderr += chunk.toString()));
  }

  command(command: Record<string, unknown>): void {
    this.child.stdin.write(JSON.stringify(command) + "\n");
  }

  /** The first event (not taken before) that `match` accepts, or undefined after `limitMs`. */
  async within(match: (event: AgentEvent) => boolean, limitMs: number): Promise<AgentEvent | undefined> {
    const deadline = Date.now() + limitMs;
    for (;;) {
      const at = this.events.findIndex(match);
      if (at >= 0) return this.events.splice(at, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await Promise.race([new Promise<void>((wake) => this.waiters.push(wake)), sleep(left)]);
    }
  }

  /** As `within` EVENT_LIMIT_MS, but a missing event fails the test, naming `what`. */
  async next(match: (event: AgentEvent) => boolean, what: string): Promise<AgentEvent> {
    const event = await this.within(match, EVENT_LIMIT_MS);
    if (event === undefined) throw new Error(`${this.netns}: no ${what} within ${EVENT_LIMIT_MS} ms${this.stderr ? ` (agent: ${this.stderr.trim()})` : ""}`);
    return event;
  }

  async bind(id: string, address: string, port: number): Promise<void> {
    this.command({ op: "bind", id, address, port });
    await this.next((e) => e.op === "bound" && e.id === id, `bind of ${id} on ${address}:${port}`);
  }

  stop(): void {
    this.child.stdin.end();
    setTimeout(() => this.child.kill("SIGKILL"), 2000).unref();
  }
}

/** Bulk TCP transfers of the settling test: sequential connections, bytes each, to a server outside. */
const TCP_CONNECTIONS = 4;
const TCP_BYTES = 8 << 20;
const TCP_SERVER = `
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("203.0.113.10", 7100))
s.listen(8)
s.settimeout(30)
for _ in range(${TCP_CONNECTIONS}):
    c, _ = s.accept()
    c.settimeout(20)
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    c.sendall(("ok %d" % n).encode())
    c.close()
`;
const TCP_CLIENT = `
import socket
c = socket.create_connection(("203.0.113.10", 7100), timeout=20)
block = b"x" * 65536
for _ in range(${TCP_BYTES} // 65536):
    c.sendall(block)
c.shutdown(socket.SHUT_WR)
print(c.recv(100).decode())
`;

/** Packets the namespace's host has sent through each queue of `device` (`tc -s qdisc`: the mq qdisc's children, parent :1 is queue 0). */
async function queueCounts(netns: string, device: string): Promise<Map<number, number>> {
  const text = await netnsExecAsync(netns, "tc", ["-s", "qdisc", "show", "dev", device]);
  const counts = new Map<number, number>();
  let queue: number | undefined;
  for (const line of text.split("\n")) {
    const child = /^qdisc \S+ \S+ parent :([0-9a-f]+)/.exec(line);
    if (child) queue = parseInt(child[1]!, 16) - 1;
    else if (line.startsWith("qdisc ")) queue = undefined;
    const sent = /^\s*Sent \d+ bytes (\d+) pkt/.exec(line);
    if (sent && queue !== undefined) counts.set(queue, Number(sent[1]));
  }
  return counts;
}

/** The one queue whose count grew between two readings, or undefined when not exactly one did (other traffic). */
function queueTaken(before: Map<number, number>, after: Map<number, number>): number | undefined {
  const grown = [...after.entries()].filter(([queue, n]) => n > (before.get(queue) ?? 0)).map(([queue]) => queue);
  return grown.length === 1 ? grown[0] : undefined;
}

interface Connection {
  kind: "SNAT" | "DNAT";
  /** The client's socket id (its source port). */
  id: string;
  clientPort: number;
  /** The queue (= worker) that read the original, and the one that read the reply. */
  originalQueue?: number;
  replyQueue?: number;
  /** The peer the server saw (after NAT), and what the client got back (text, and from where). */
  peerSeen?: string;
  replyText?: string;
  replyFrom?: string;
}

describe.skipIf(!isRoot)(`workers: ${WORKERS}: replies that come in on the other worker's queue are translated right`, () => {
  let lab: Lab | undefined;
  const { text, config } = retagForRun(SEED, runTag(), "tun", WORKERS);
  const tenant = config.ports[0]!.wire;
  const external = config.ports[1]!.wire;
  const agents: UdpAgent[] = [];
  const socket = controlSocketPath(config.namespace);

  async function show<T>(what: "stats" | "conntrack"): Promise<T> {
    const response = await controlRequest(socket, { cmd: "show", what, json: true }, 10_000);
    if (!response.ok) throw new Error(`qnat show ${what}: ${response.error}`);
    // `show conntrack` streams its answer: its pieces, joined, are the JSON text.
    return (what === "conntrack" ? parseQnatConntrack(response.text ?? "") : response.data) as T;
  }

  /** Per queue, the packets the hosts and the router's own host sent into qnat through every leg (wire and mirror). */
  async function packetsPerQueue(): Promise<number[]> {
    const totals = Array.from({ length: WORKERS }, () => 0);
    for (const port of config.ports) {
      for (const [netns, device] of [[port.wire.namespace, port.wire.device], [config.namespace, port.name]] as const) {
        for (const [queue, n] of await queueCounts(netns, device)) totals[queue] = (totals[queue] ?? 0) + n;
      }
    }
    return totals;
  }

  beforeAll(async () => {
    lab = await startQnatLab(text, config);
  }, 60_000);
  afterAll(async () => {
    for (const agent of agents) agent.stop();
    await lab?.stop();
  }, 60_000);

  it(`${PER_KIND} SNAT and ${PER_KIND} DNAT connections answered after the TUN driver forgot their flows: at least one reply crosses to the other worker, every one is translated`, async () => {
    const inside = new UdpAgent(tenant.namespace);
    const outside = new UdpAgent(external.namespace);
    agents.push(inside, outside);
    // The servers: 203.0.113.10:7000 outside (SNAT'd clients), 10.0.0.2:7001 inside (behind the floating IP).
    await outside.bind("server", "203.0.113.10", 7000);
    await inside.bind("server", "10.0.0.2", 7001);
    const connections: Connection[] = [];
    for (let i = 0; i < PER_KIND; i++) {
      connections.push({ kind: "SNAT", id: `snat${i}`, clientPort: 40001 + i });
      connections.push({ kind: "DNAT", id: `dnat${i}`, clientPort: 41001 + i });
    }
    for (const c of connections) {
      if (c.kind === "SNAT") await inside.bind(c.id, "10.0.0.3", c.clientPort);
      else await outside.bind(c.id, "9.186.100.1", c.clientPort);
    }

    // Originals, one at a time: the client's host sends into its TUN leg, on the queue the flow hash picks.
    for (const c of connections) {
      const [client, server, leg, target] =
        c.kind === "SNAT" ? [inside, outside, tenant, { address: "203.0.113.10", port: 7000 }] : [outside, inside, external, { address: "9.186.100.129", port: 7001 }];
      const before = await queueCounts(leg.namespace, leg.device);
      client.command({ op: "send", id: c.id, ...target, text: `hello from ${c.id}` });
      const got = await server.next((e) => e.op === "recv" && e.id === "server" && e.text === `hello from ${c.id}`, `original of ${c.id}`);
      c.originalQueue = queueTaken(before, await queueCounts(leg.namespace, leg.device));
      c.peerSeen = got.from;
    }

    await sleep(FORGET_MS);

    // Replies, one at a time, through the other leg: each server answers with the peer it saw.
    for (const c of connections) {
      const [client, server, leg] = c.kind === "SNAT" ? [inside, outside, external] : [outside, inside, tenant];
      const [address, port] = c.peerSeen!.split(":") as [string, string];
      const before = await queueCounts(leg.namespace, leg.device);
      server.command({ op: "send", id: "server", address, port: Number(port), text: `you are ${c.peerSeen}` });
      // A reply that never arrives is recorded, not thrown: the table below shows on which queue it went missing.
      const got = await client.within((e) => e.op === "recv" && e.id === c.id, REPLY_LIMIT_MS);
      c.replyQueue = queueTaken(before, await queueCounts(leg.namespace, leg.device));
      c.replyText = got?.text;
      c.replyFrom = got?.from;
    }

    const table = connections.map(
      (c) => `${c.kind} ${c.id}: peer seen ${c.peerSeen}, original on queue ${c.originalQueue ?? "?"}, reply on queue ${c.replyQueue ?? "?"}: ${c.replyText === undefined ? "NO REPLY" : `"${c.replyText}" from ${c.replyFrom}`}`,
    );
    const story = table.join("\n");
    // Every connection translated right, whichever worker read its reply (soft: every wrong one is listed).
    for (const c of connections) {
      if (c.kind === "SNAT") {
        // 10.0.0.3 reaches the outside as 9.186.100.2, and the answer comes back from the server.
        expect.soft(c.peerSeen, story).toMatch(/^9\.186\.100\.2:\d+$/);
        expect.soft(c.replyFrom, story).toBe("203.0.113.10:7000");
      } else {
        // 9.186.100.1 reaches 10.0.0.2 through the floating IP, unchanged, and hears back from 9.186.100.129.
        expect.soft(c.peerSeen, story).toBe(`9.186.100.1:${c.clientPort}`);
        expect.soft(c.replyFrom, story).toBe("9.186.100.129:7001");
      }
      expect.soft(c.replyText, story).toBe(`you are ${c.peerSeen}`);
    }
    // The SNAT'd source ports are distinct: no two connections share a translated tuple.
    const snatPeers = connections.filter((c) => c.kind === "SNAT").map((c) => c.peerSeen);
    expect(new Set(snatPeers).size, story).toBe(PER_KIND);
    // Each packet's queue was read (only the test's packets crossed the legs), on both queues of the workers.
    const attributed = connections.filter((c) => c.originalQueue !== undefined && c.replyQueue !== undefined);
    expect(attributed.length, story).toBe(connections.length);
    for (const c of attributed) {
      expect(c.originalQueue).toBeLessThan(WORKERS);
      expect(c.replyQueue).toBeLessThan(WORKERS);
    }
    // Queue i is worker i's: what each worker received is what was sent through its queue of every leg.
    const stats = await show<StatsView>("stats");
    expect(stats.workers?.map((w) => w.rxPackets), story).toEqual(await packetsPerQueue());
    // One connection each in qnat's table, replied, and no reply that became a connection of its own
    // (a worker without the entry would take 10.0.0.2:7001's answer as new, and SNAT it like the floating IP's un-DNAT).
    const entries = (await show<CtEntry[]>("conntrack")).filter((e) => e.protocol === "udp");
    const line = (e: CtEntry): string => `${e.original.src}:${e.original.sport} > ${e.original.dst}:${e.original.dport} | ${e.reply.src}:${e.reply.sport} > ${e.reply.dst}:${e.reply.dport}${e.unreplied ? " [UNREPLIED]" : ""}`;
    const expected = connections.map((c) => {
      const [address, port] = c.peerSeen!.split(":") as [string, string];
      return c.kind === "SNAT"
        ? `10.0.0.3:${c.clientPort} > 203.0.113.10:7000 | 203.0.113.10:7000 > ${address}:${port}`
        : `9.186.100.1:${c.clientPort} > 9.186.100.129:7001 | 10.0.0.2:7001 > 9.186.100.1:${c.clientPort}`;
    });
    expect(entries.map(line).sort(), story).toEqual(expected.sort());
    const crossed = attributed.filter((c) => c.originalQueue !== c.replyQueue);
    console.log(`workers-cross-queue: ${crossed.length} of ${attributed.length} replies came in on the other worker's queue\n${story}`);
    expect(crossed.length, story).toBeGreaterThan(0);
  }, 60_000);

  it(`TCP connections stay on the queue their SYN came by: every packet from the client and all but the SYN-ACK from the server go through that one queue, the same on both legs`, async () => {
    // qnat writes every packet of a connection through its owner queue — the queue its first
    // packet was read from (conntrack/table.ts ownerQueue) — of its egress device, whichever worker
    // forwarded it (io/forwarder.ts useQueues), and the TUN driver steers a flow to the queue that
    // last wrote it. The client's SYN comes by its hash's queue; the client's ACK of the SYN-ACK,
    // made by its kernel inside qnat's write, still goes by the hash: the same queue, as everything
    // after it. Only the server's SYN-ACK, made inside the write of the SYN, goes by the hash of the
    // translated tuple. A pin to any other queue (the entry id's, before) sends the client's first
    // ACK and its data to two workers, which forward them in either order.
    const server = spawn("ip", ["netns", "exec", external.namespace, "python3", "-c", TCP_SERVER], { stdio: ["ignore", "pipe", "pipe"] });
    try {
      await sleep(300);
      const spreads: string[] = [];
      for (let n = 0; n < TCP_CONNECTIONS; n++) {
        const before = [await queueCounts(tenant.namespace, tenant.device), await queueCounts(external.namespace, external.device)];
        const answer = await netnsExecAsync(tenant.namespace, "python3", ["-c", TCP_CLIENT]);
        expect(answer.trim()).toBe(`ok ${TCP_BYTES}`);
        const after = [await queueCounts(tenant.namespace, tenant.device), await queueCounts(external.namespace, external.device)];
        const perQueue = before.map((b, leg) => Array.from({ length: WORKERS }, (_, q) => (after[leg]!.get(q) ?? 0) - (b.get(q) ?? 0)));
        spreads.push(`connection ${n}: into qnat from the tenant per queue ${perQueue[0]!.join("/")}, from the outside ${perQueue[1]!.join("/")}`);
        const dominant = perQueue.map((counts) => counts.indexOf(Math.max(...counts)));
        const elsewhere = perQueue.map((counts, leg) => counts.reduce((a, b) => a + b, 0) - counts[dominant[leg]!]!);
        const story = spreads.join("\n");
        expect(elsewhere[0], `packets from the client on another queue than its SYN's\n${story}`).toBe(0);
        expect(elsewhere[1], `packets from the server on another queue than the client's SYN's, beyond the SYN-ACK\n${story}`).toBeLessThanOrEqual(1);
        expect(dominant[0], story).toBe(dominant[1]);
      }
      console.log(`workers-cross-queue: ${spreads.join("; ")}`);
    } finally {
      server.kill();
    }
  }, 60_000);
});
