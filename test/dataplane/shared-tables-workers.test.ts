/**
 * Two worker threads, each with its own Dataplane, over ONE shared conntrack table and NAT state
 * (docs/multi-core.md "Shared tables"), as `workers: 2` runs them: tenants behind one SNAT
 * address with a port range of 77 ports open flows from the same source port on both workers at
 * once, so that the workers' port searches clash. Afterwards no two connections share a
 * translated tuple, every packet left as its entry says, what found no port was dropped and
 * counted, and the table counts exactly its live entries. And a connection opened on one worker
 * is translated back on the other when its reply arrives there (NAT changes the tuple the
 * kernel's queue hash sees).
 *
 * The workers run the built JavaScript (dist/; `npm test` builds it first):
 * test/support/shared-dataplane-worker.mjs.
 */
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { Worker } from "node:worker_threads";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ManualClock } from "../../src/core/clock.js";
import { XorShift32 } from "../../src/core/rng.js";
import { parseConfig } from "../../src/config/config.js";
import { buildDataplane, sharedTablesOf, type SharedTables } from "../../src/dataplane/from-config.js";
import type { Dataplane } from "../../src/dataplane/pipeline.js";
import { formatIpv4, parseIpv4 } from "../../src/core/addr.js";
import type { DecodedPacket, PacketSpec } from "../../src/wire/build.js";
import { IPPROTO_UDP } from "../../src/wire/packet-info.js";
import { runTrace } from "../../src/control/trace.js";
import { ConntrackWork } from "../../src/control/conntrack-command.js";
import { SHARED_GATEWAY, SHARED_SNAT_PORTS, SHARED_TENANT, sharedSnatConfig } from "../support/shared-snat-config.js";

const TENANT = SHARED_TENANT;
const GATEWAY = SHARED_GATEWAY;
const NOW = 1_000_000;
const CONFIG = sharedSnatConfig(4096);
const RANGE_PORTS = SHARED_SNAT_PORTS;

interface Sent {
  out: ({ port: string; leg: number; packet: DecodedPacket } | null)[];
  drops: Record<string, number>;
  /** Packets the worker forwarded without the tables' lock. */
  lockFree: number;
}

class DataplaneWorker {
  private readonly worker: Worker;
  readonly ready: Promise<void>;

  constructor(shared: SharedTables, seed: number) {
    this.worker = new Worker(resolve("test/support/shared-dataplane-worker.mjs"), {
      workerData: { dist: resolve("dist"), configText: CONFIG, shared, seed, now: NOW },
    });
    this.ready = new Promise((done) => this.worker.once("message", () => done()));
    // A worker that fails fails the test that waits on it.
    this.worker.on("error", (error) => this.failed.push(error));
  }

  private readonly failed: Error[] = [];

  async send(port: string, packets: PacketSpec[], batch: number, gate?: Int32Array, more: { rounds?: number; lockFree?: boolean } = {}): Promise<Sent> {
    const answer = new Promise<Sent>((done) => this.worker.once("message", (m: Sent) => done(m)));
    this.worker.postMessage({ port, packets, batch, gate, ...more });
    const result = await answer;
    if (this.failed.length > 0) throw this.failed[0]!;
    return result;
  }

  stop(): Promise<number> {
    return this.worker.terminate();
  }
}

let owner: Dataplane;
let a: DataplaneWorker;
let b: DataplaneWorker;

beforeAll(async () => {
  expect(existsSync(resolve("dist/src/dataplane/from-config.js")), "the build (npm run build) is needed for this test").toBe(true);
  // The main thread makes the tables (as the router's control plane will) and keeps a dataplane
  // over them to look at them; the two workers attach.
  owner = buildDataplane(parseConfig(CONFIG, "shared-tables.yaml"), { clock: new ManualClock(NOW), rng: new XorShift32(1), sharable: true });
  const shared = sharedTablesOf(owner);
  a = new DataplaneWorker(shared, 2);
  b = new DataplaneWorker(shared, 3);
  await Promise.all([a.ready, b.ready]);
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

/** Every live connection's tuples, checked against each other; returns them by original source. */
function liveConnections(dataplane: Dataplane): Map<string, { replyDst: string; replyDport: number }> {
  const table = dataplane.conntrack;
  const byOriginal = new Map<string, { replyDst: string; replyDport: number }>();
  const replies = new Set<string>();
  table.locked(() => {
    for (const id of table.entries()) {
      const original = `${table.protocol(id)} ${formatIpv4(table.origSrc(id))}:${table.origSport(id)} > ${formatIpv4(table.origDst(id))}:${table.origDport(id)}`;
      const reply = `${table.protocol(id)} ${formatIpv4(table.replySrc(id))}:${table.replySport(id)} > ${formatIpv4(table.replyDst(id))}:${table.replyDport(id)}`;
      expect(byOriginal.has(original), `two connections for ${original}`).toBe(false);
      expect(replies.has(reply), `two connections share the reply tuple ${reply}`).toBe(false);
      byOriginal.set(original, { replyDst: formatIpv4(table.replyDst(id)), replyDport: table.replyDport(id) });
      replies.add(reply);
    }
  });
  return byOriginal;
}

describe("two workers over one shared table set", () => {
  it("tenants behind 9.186.100.2:1024-1100 open clashing flows on both workers at once: every port is handed out once", async () => {
    const scenario = fc.record({
      // Flows each worker opens, toward `servers` servers, all from source port 5000.
      perWorker: fc.integer({ min: 20, max: 110 }),
      servers: fc.integer({ min: 1, max: 3 }),
      batch: fc.constantFrom(1, 8, 32),
    });
    await fc.assert(
      fc.asyncProperty(scenario, async ({ perWorker, servers, batch }) => {
        owner.conntrack.locked(() => owner.conntrack.flush());
        // Worker A's tenants are 10.0.0.2.., B's 10.0.0.130..: different sources, same port.
        const flows = (first: number): PacketSpec[] =>
          Array.from({ length: perWorker }, (_, i) => ({
            protocol: "udp" as const,
            src: `10.0.0.${first + i}`,
            dst: `203.0.113.${10 + (i % servers)}`,
            sport: 5000,
            dport: 53,
          }));
        const gate = new Int32Array(new SharedArrayBuffer(4));
        const sentA = a.send(TENANT, flows(2), batch, gate);
        const sentB = b.send(TENANT, flows(130), batch, gate);
        Atomics.store(gate, 0, 1);
        Atomics.notify(gate, 0);
        const results = await Promise.all([sentA, sentB]);
        const live = liveConnections(owner);
        let forwarded = 0;
        let refused = 0;
        results.forEach((result, w) => {
          const sentFlows = flows(w === 0 ? 2 : 130);
          result.out.forEach((left, i) => {
            const flow = sentFlows[i]!;
            const key = `${IPPROTO_UDP} ${flow.src}:${flow.sport} > ${flow.dst}:${flow.dport}`;
            if (left === null) {
              refused++;
              expect(live.has(key), `${key} was dropped but has a connection`).toBe(false);
              return;
            }
            forwarded++;
            // It left as its entry says: from 9.186.100.2, a port of the range, the reply tuple's.
            expect(left.port).toBe(GATEWAY);
            const entry = live.get(key);
            expect(entry, `${key} left but has no connection`).toBeDefined();
            expect(left.packet.src).toBe("9.186.100.2");
            expect(left.packet.src).toBe(entry!.replyDst);
            expect(left.packet.sport).toBe(entry!.replyDport);
            expect(left.packet.sport).toBeGreaterThanOrEqual(1024);
            expect(left.packet.sport).toBeLessThanOrEqual(1100);
            expect(left.packet.dst).toBe(flow.dst);
          });
          const dropped = Object.values(result.drops).reduce((x, y) => x + y, 0);
          expect(dropped).toBe(result.out.filter((o) => o === null).length);
          // What was refused found no free port (never a half-written or clashing binding).
          expect(Object.keys(result.drops).filter((name) => name !== "nat-no-free-tuple")).toEqual([]);
        });
        // Per server, the flows that got through are min(sent, the range's 77 ports).
        const perServer = new Map<string, number>();
        for (const result of [flows(2), flows(130)]) for (const flow of result) perServer.set(flow.dst, (perServer.get(flow.dst) ?? 0) + 1);
        let expected = 0;
        for (const n of perServer.values()) expected += Math.min(n, RANGE_PORTS);
        expect(forwarded).toBe(expected);
        expect(forwarded + refused).toBe(2 * perWorker);
        expect(live.size).toBe(forwarded);
        expect(owner.conntrack.count).toBe(live.size);
      }),
      { numRuns: 12, seed: 0x5eed },
    );
  });

  it("10.0.0.3's connection opened on worker A is translated back on worker B when the reply arrives there", async () => {
    owner.conntrack.locked(() => owner.conntrack.flush());
    const out = await a.send(TENANT, [{ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53 }], 1);
    const left = out.out[0]!;
    expect(left.port).toBe(GATEWAY);
    expect(left.packet.src).toBe("9.186.100.2");
    const port = left.packet.sport!;
    const reply = await b.send(GATEWAY, [{ protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: port }], 1);
    const back = reply.out[0];
    expect(back, `the reply was dropped: ${JSON.stringify(reply.drops)}`).not.toBeNull();
    expect(back!.port).toBe(TENANT);
    expect(back!.packet).toMatchObject({ src: "203.0.113.10", sport: 53, dst: "10.0.0.3", dport: 5000 });
    // The reply marked the connection as seen in both directions, for every worker.
    const table = owner.conntrack;
    const node = table.locked(() => table.lookup(IPPROTO_UDP, 0x0a000003, 0xcb00710a, 5000, 53));
    expect(node).toBeGreaterThanOrEqual(0);
    expect(table.status(node >> 1) & 2).toBe(2); // IPS_SEEN_REPLY
  });

  it("a trace and conntrack -D on the main thread work on the shared table under its lock, and the workers go on", async () => {
    owner.conntrack.locked(() => owner.conntrack.flush());
    const opened = await a.send(TENANT, [{ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53 }], 1);
    const port = opened.out[0]!.packet.sport!;
    const before = [...liveConnections(owner)];
    // The trace runs its packet through the live shared table and puts everything back.
    const trace = runTrace(owner, `${TENANT} udp 10.0.0.4:5000 > 203.0.113.10:53`);
    expect(trace.verdict).toBe("forward");
    expect(trace.out!.packet).toMatch(/^udp 9\.186\.100\.2:\d+ > 203\.0\.113\.10:53$/);
    expect([...liveConnections(owner)]).toEqual(before);
    expect(owner.conntrack.tableLock!.held).toBe(false);
    // A worker still forwards: the reply of the first connection comes back through worker B.
    const reply = await b.send(GATEWAY, [{ protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: port }], 1);
    expect(reply.out[0]?.packet).toMatchObject({ dst: "10.0.0.3", dport: 5000 });
    // conntrack -D removes it for every worker: its next reply finds no connection.
    const deleted = new ConntrackWork(owner.conntrack, "delete", {}).drain();
    expect(deleted).toMatch(/src=10\.0\.0\.3 dst=203\.0\.113\.10 sport=5000 dport=53/);
    expect(owner.conntrack.count).toBe(0);
    const late = await b.send(GATEWAY, [{ protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: port }], 1);
    expect(late.out[0]?.packet.dst ?? "dropped").not.toBe("10.0.0.3");
  });
});

describe("the lock-free established path, while connections are deleted and their slots reused", () => {
  it("every packet leaves with its own connection's translation, never another's", async () => {
    const table = owner.conntrack;
    table.locked(() => table.flush());
    // 200 flows, each with its own (server, source port) inside the SNAT range: SNAT keeps the
    // port, so the one right translation of flow i is 9.186.100.2:sport(i), whatever happens.
    const flows = Array.from({ length: 200 }, (_, i) => ({ src: `10.0.0.${2 + i}`, sport: 1024 + (i % 77), dst: `203.0.113.${10 + Math.floor(i / 77)}`, dport: 53 }));
    const out = (f: (typeof flows)[number]): PacketSpec => ({ protocol: "udp", src: f.src, dst: f.dst, sport: f.sport, dport: 53 });
    const back = (f: (typeof flows)[number]): PacketSpec => ({ protocol: "udp", src: f.dst, dst: "9.186.100.2", sport: 53, dport: f.sport });
    // Flows 0-99 are answered (and never deleted); flows 100-199 the main thread deletes over and
    // over while worker A's packets re-create them, so their slots are freed and handed to others.
    const answered = flows.slice(0, 100);
    const churned = flows.slice(100);
    const opened = await a.send(TENANT, flows.map(out), 32);
    expect(opened.out.every((o) => o !== null)).toBe(true);
    await b.send(GATEWAY, answered.map(back), 32);

    const gate = new Int32Array(new SharedArrayBuffer(4));
    const sentA = a.send(TENANT, flows.map(out), 32, gate, { rounds: 60 });
    const sentB = b.send(GATEWAY, answered.map(back), 32, gate, { rounds: 120 });
    Atomics.store(gate, 0, 1);
    Atomics.notify(gate, 0);
    let deleted = 0;
    let running = true;
    const both = Promise.all([sentA, sentB]).finally(() => (running = false));
    const rng = new XorShift32(9);
    while (running) {
      table.locked(() => {
        for (let k = 0; k < 8; k++) {
          const f = churned[rng.next() % churned.length]!;
          const node = table.lookup(IPPROTO_UDP, parseIpv4(f.src), parseIpv4(f.dst), f.sport, 53);
          if (node >= 0) {
            table.remove(node >> 1);
            deleted++;
          }
        }
      });
      await new Promise((r) => setImmediate(r));
    }
    const [resultA, resultB] = await both;
    resultA.out.forEach((left, k) => {
      const f = flows[k % flows.length]!;
      expect(left, `${f.src}:${f.sport} was dropped`).not.toBeNull();
      expect(left!.packet, `${f.src}:${f.sport} > ${f.dst}`).toMatchObject({ src: "9.186.100.2", sport: f.sport, dst: f.dst, dport: 53 });
    });
    resultB.out.forEach((left, k) => {
      const f = answered[k % answered.length]!;
      expect(left?.port, `the reply to ${f.src}:${f.sport}`).toBe(TENANT);
      expect(left!.packet).toMatchObject({ src: f.dst, sport: 53, dst: f.src, dport: f.sport });
    });
    // Both workers forwarded without the lock, while connections were deleted and re-made.
    expect(resultA.lockFree).toBeGreaterThan(0);
    expect(resultB.lockFree).toBeGreaterThan(0);
    expect(deleted).toBeGreaterThan(0);
    console.log(
      `lock-free: worker A ${resultA.lockFree} of ${resultA.out.length}, worker B ${resultB.lockFree} of ${resultB.out.length} packets; ${deleted} connections deleted meanwhile`,
    );
    // The table is whole: every live connection once, counted exactly.
    const live = liveConnections(owner);
    expect(table.count).toBe(live.size);
  });
});
