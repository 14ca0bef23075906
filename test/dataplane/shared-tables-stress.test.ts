/**
 * Two worker threads and the main thread on one shared table set, everything at once for a couple
 * of seconds (docs/multi-core.md "Shared tables"): both workers forward the same 200 established
 * flows of tenants behind 9.186.100.2 (from different points of the list, so that they meet on
 * the same connections) and each opens a new connection in every batch (the table fills, so early
 * drop evicts); the main thread meanwhile deletes connections (`conntrack -D`), runs traces,
 * sweeps, and moves the clock the workers read, a second at a time and now and then by minutes, so
 * that every connection expires under them and is re-made — by either worker, the clash check
 * under the lock keeping one. Each worker checks every packet it forwarded: it leaves as
 * 9.186.100.2 with its own source port toward its own server — never another connection's
 * translation. Afterwards the tables are whole: the entry count is the live entries, every
 * confirmed entry is in both its chains and in no other, no chain holds a freed entry, no sequence
 * word is left odd, the NAT's by-source index matches the table, and no two connections share a
 * tuple.
 *
 * (No server replies here: a reply whose connection was just deleted opens an inbound connection
 * to 9.186.100.2:port, which rightly makes the tenant's next connection take another port, and a
 * packet could no longer be checked against its flow alone. test/dataplane/lock-free-path.test.ts
 * and shared-tables-workers.test.ts cover the reply direction.)
 *
 * The workers run the built JavaScript (dist/; `npm test` builds it first):
 * test/support/stress-dataplane-worker.mjs.
 */
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { Worker } from "node:worker_threads";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Clock } from "../../src/core/clock.js";
import { XorShift32 } from "../../src/core/rng.js";
import { parseConfig } from "../../src/config/config.js";
import { buildDataplane, sharedTablesOf, type SharedTables } from "../../src/dataplane/from-config.js";
import type { Dataplane } from "../../src/dataplane/pipeline.js";
import { formatIpv4 } from "../../src/core/addr.js";
import { NetfilterNat } from "../../src/dataplane/netfilter-nat.js";
import { runTrace } from "../../src/control/trace.js";
import { ConntrackWork } from "../../src/control/conntrack-command.js";
import { PacketBatch } from "../../src/core/batch.js";
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";
import { LEG_WIRE } from "../../src/dataplane/port.js";
import { IPPROTO_UDP } from "../../src/wire/packet-info.js";
import { SHARED_TENANT, sharedSnatConfig } from "../support/shared-snat-config.js";

const TENANT = SHARED_TENANT;
const CONFIG = sharedSnatConfig(1024);
/** How long the three threads race (wall clock; a bound, not a measurement). */
const RUN_MS = 2500;

/** The clock of all three threads: whole seconds in a shared word, moved by the main thread. */
class SharedSeconds implements Clock {
  readonly words = new Int32Array(new SharedArrayBuffer(4));
  constructor(start: number) {
    Atomics.store(this.words, 0, start);
  }
  now(): number {
    return Atomics.load(this.words, 0);
  }
  advance(seconds: number): void {
    Atomics.add(this.words, 0, seconds);
  }
}

interface Ran {
  packets: number;
  forwarded: number;
  lockFree: number;
  wrong: unknown[];
  counters: { expired: number; earlyDrop: number; removed: number; created: number };
}

class StressWorker {
  private readonly worker: Worker;
  private readonly failed: Error[] = [];
  readonly ready: Promise<void>;

  constructor(shared: SharedTables, clock: SharedSeconds, seed: number) {
    this.worker = new Worker(resolve("test/support/stress-dataplane-worker.mjs"), {
      workerData: { dist: resolve("dist"), configText: CONFIG, shared, clock: clock.words.buffer, seed },
    });
    this.ready = new Promise((done) => this.worker.once("message", () => done()));
    this.worker.on("error", (error) => this.failed.push(error));
  }

  async run(message: object): Promise<Ran> {
    const answer = new Promise<Ran>((done) => this.worker.once("message", (m: Ran) => done(m)));
    this.worker.postMessage(message);
    const result = await answer;
    if (this.failed.length > 0) throw this.failed[0]!;
    return result;
  }

  stop(): Promise<number> {
    return this.worker.terminate();
  }
}

// 200 flows with distinct (server, source port), the ports inside the SNAT range: SNAT keeps the
// port, so flow i's only right translation is 9.186.100.2:sport(i), however often it is re-made.
const flows = Array.from({ length: 200 }, (_, i) => ({ src: `10.0.0.${2 + i}`, sport: 1024 + (i % 77), dst: `203.0.113.${10 + Math.floor(i / 77)}` }));
const outbound = flows.map((f): PacketSpec => ({ protocol: "udp", src: f.src, dst: f.dst, sport: f.sport, dport: 53 }));

const clock = new SharedSeconds(1_000_000);
let owner: Dataplane;
let a: StressWorker;
let b: StressWorker;

beforeAll(async () => {
  expect(existsSync(resolve("dist/src/dataplane/from-config.js")), "the build (npm run build) is needed for this test").toBe(true);
  owner = buildDataplane(parseConfig(CONFIG, "shared-tables.yaml"), { clock, rng: new XorShift32(1), sharable: true });
  a = new StressWorker(sharedTablesOf(owner), clock, 2);
  b = new StressWorker(sharedTablesOf(owner), clock, 3);
  await Promise.all([a.ready, b.ready]);
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

/** `specs` through the main thread's dataplane, as they would arrive on `port`. */
function sendOnMain(port: string, specs: readonly PacketSpec[]): void {
  const ingress = owner.ports.findIndex((p) => p.name === port);
  const rx = new PacketBatch(specs.length, 2048);
  for (const spec of specs) rx.push(buildPacket(spec));
  const generated = new PacketBatch(specs.length * 2, 2048);
  owner.processBatch(rx, ingress, LEG_WIRE, new Int32Array(specs.length), generated, new Int32Array(specs.length * 2));
}

/** What is wrong with the shared tables, looked at under their lock (empty: nothing). */
function tableProblems(): string[] {
  const table = owner.conntrack;
  const nat = owner.nat instanceof NetfilterNat ? owner.nat.engine : null;
  return table.locked(() => {
    const problems = [...table.structureProblems(), ...(nat?.bySourceProblems() ?? [])];
    const originals = new Set<string>();
    const repliesSeen = new Set<string>();
    for (const id of table.entries()) {
      if (!table.isConfirmed(id)) continue;
      const original = `${table.protocol(id)} ${formatIpv4(table.origSrc(id))}:${table.origSport(id)} > ${formatIpv4(table.origDst(id))}:${table.origDport(id)}`;
      const reply = `${table.protocol(id)} ${formatIpv4(table.replySrc(id))}:${table.replySport(id)} > ${formatIpv4(table.replyDst(id))}:${table.replyDport(id)}`;
      if (originals.has(original)) problems.push(`two connections for ${original}`);
      if (repliesSeen.has(reply)) problems.push(`two connections share the reply tuple ${reply}`);
      originals.add(original);
      repliesSeen.add(reply);
    }
    return problems;
  });
}

describe("two workers and the main thread on one shared table set, all at once", () => {
  it("every forwarded packet carries its own connection's translation, and the tables stay whole", async () => {
    sendOnMain(TENANT, outbound);
    expect(tableProblems()).toEqual([]);
    expect(owner.conntrack.count).toBe(200);

    const stop = new Int32Array(new SharedArrayBuffer(4));
    // New connections go to other servers (198.51.100.0/24) than the flows': they never take a flow's port.
    const ranA = a.run({ port: TENANT, established: outbound, start: 0, fresh: { protocol: "udp", src: "10.0.0.250", servers: "198.51.100", sport: 20000, dport: 53 }, batch: 32, rounds: 200_000, stop });
    const ranB = b.run({ port: TENANT, established: outbound, start: 100, fresh: { protocol: "udp", src: "10.0.0.251", servers: "198.51.100", sport: 20000, dport: 53 }, batch: 32, rounds: 200_000, stop });
    let running = true;
    const both = Promise.all([ranA, ranB]).finally(() => (running = false));

    const table = owner.conntrack;
    const rng = new XorShift32(11);
    const started = Date.now();
    let deleted = 0;
    let traces = 0;
    let turns = 0;
    while (running) {
      turns++;
      if (Date.now() - started > RUN_MS) Atomics.store(stop, 0, 1);
      const turn = rng.next() % 16;
      if (turn < 6) {
        // conntrack -D -p udp --orig-port-src P: up to three flows (one per server) and whatever else has it.
        const work = new ConntrackWork(table, "delete", { protocol: IPPROTO_UDP, origSport: 1024 + (rng.next() % 77) });
        work.drain();
        deleted += work.count;
      } else if (turn < 9) {
        // (Toward a server none of the flows use: their own server's 77 ports may all be taken.)
        const trace = runTrace(owner, `${TENANT} udp 10.0.0.4:5000 > 203.0.113.99:53`);
        expect(trace.verdict, trace.reason ?? "").toBe("forward");
        traces++;
      } else if (turn < 11) {
        owner.housekeeping();
      } else if (turn < 15) {
        clock.advance(1);
      } else {
        // Minutes: every connection expires under the workers, who re-make them.
        clock.advance(200);
      }
      await new Promise((r) => setImmediate(r));
    }
    const [resultA, resultB] = await both;
    console.log(
      `stress: worker A ${resultA.packets} packets (${resultA.lockFree} lock-free), worker B ${resultB.packets} (${resultB.lockFree} lock-free); ` +
        `main: ${turns} turns, ${deleted} deleted, ${traces} traces; expired A ${resultA.counters.expired} B ${resultB.counters.expired}, early drops A ${resultA.counters.earlyDrop} B ${resultB.counters.earlyDrop}`,
    );
    expect(resultA.wrong).toEqual([]);
    expect(resultB.wrong).toEqual([]);
    // What the run was to mix happened: lock-free packets on both workers, deletions, traces, expiry.
    expect(resultA.lockFree).toBeGreaterThan(0);
    expect(resultB.lockFree).toBeGreaterThan(0);
    expect(resultA.forwarded).toBeGreaterThan(0);
    expect(deleted).toBeGreaterThan(0);
    expect(traces).toBeGreaterThan(0);
    expect(resultA.counters.expired + resultB.counters.expired + table.counters.expired).toBeGreaterThan(0);
    expect(tableProblems()).toEqual([]);
    expect(table.tableLock!.held).toBe(false);
  });
});
