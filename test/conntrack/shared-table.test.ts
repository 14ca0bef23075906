/**
 * A sharable conntrack table and the objects attached to it (docs/multi-core.md "Shared
 * tables"): one set of entries, private counters, and a lock that is re-entrant for its holder
 * and excludes every other thread (worker_threads, over the built JavaScript in dist/).
 */
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { Worker } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { ManualClock } from "../../src/core/clock.js";
import { TABLE_LOCK_WORDS, TableLock } from "../../src/core/table-lock.js";
import { ConntrackTable, CtStatus } from "../../src/conntrack/table.js";
import { NatEngine } from "../../src/nat/binding.js";
import { Manip, natRange } from "../../src/nat/range.js";
import { XorShift32 } from "../../src/core/rng.js";
import { IPPROTO_UDP } from "../../src/wire/packet-info.js";
import { parseIpv4 } from "../../src/core/addr.js";

const ip = (text: string): number => parseIpv4(text);
const DIST = resolve("dist");

function pair(capacity = 64): { owner: ConntrackTable; attached: ConntrackTable; clock: ManualClock } {
  const clock = new ManualClock(1000);
  const owner = new ConntrackTable({ capacity, clock, seed: 7, sharable: true });
  const attached = new ConntrackTable({ capacity, clock, shared: owner.sharedMemory() });
  return { owner, attached, clock };
}

function openUdp(table: ConntrackTable, src: string, sport: number): number {
  const id = table.create(IPPROTO_UDP, ip(src), ip("203.0.113.10"), sport, 53);
  table.refresh(id, 30, table.now());
  expect(table.confirm(id)).toBe(true);
  return id;
}

describe("a sharable table and a table attached to its memory", () => {
  it("see each other's connections: 10.0.0.3:5000 opened on one is found on the other, and removed from both", () => {
    const { owner, attached } = pair();
    const id = openUdp(owner, "10.0.0.3", 5000);
    expect(attached.lookup(IPPROTO_UDP, ip("10.0.0.3"), ip("203.0.113.10"), 5000, 53)).toBe(id << 1);
    expect(attached.lookup(IPPROTO_UDP, ip("203.0.113.10"), ip("10.0.0.3"), 53, 5000)).toBe((id << 1) | 1);
    const other = openUdp(attached, "10.0.0.4", 5000);
    expect(other).not.toBe(id);
    expect(owner.lookup(IPPROTO_UDP, ip("10.0.0.4"), ip("203.0.113.10"), 5000, 53)).toBe(other << 1);
    expect(owner.count).toBe(2);
    expect(attached.count).toBe(2);
    attached.remove(id);
    expect(owner.lookup(IPPROTO_UDP, ip("10.0.0.3"), ip("203.0.113.10"), 5000, 53)).toBe(-1);
    expect(owner.entries()).toEqual([other]);
  });

  it("share one free list and gc cursor: ids handed out by either are distinct, a full table is full for both", () => {
    const { owner, attached } = pair(16);
    const ids = new Set<number>();
    for (let i = 0; i < 16; i++) ids.add(openUdp(i % 2 === 0 ? owner : attached, `10.0.0.${10 + i}`, 4000));
    expect(ids.size).toBe(16);
    // Every entry is ASSURED and live: early drop has nothing to evict.
    for (const id of ids) owner.setStatus(id, CtStatus.Assured);
    expect(attached.create(IPPROTO_UDP, ip("10.0.0.99"), ip("203.0.113.10"), 4000, 53)).toBe(-1);
    expect(attached.counters.dropFull).toBe(1);
    expect(owner.counters.dropFull).toBe(0);
  });

  it("keep their counters, chain statistics and pinned time each to itself", () => {
    const { owner, attached } = pair();
    openUdp(owner, "10.0.0.3", 5000);
    expect(owner.counters.created).toBe(1);
    expect(attached.counters.created).toBe(0);
    attached.lookup(IPPROTO_UDP, ip("10.0.0.3"), ip("203.0.113.10"), 5000, 53);
    expect(attached.counters.found).toBe(1);
    expect(owner.counters.found).toBe(0);
    expect(attached.chainStats.lookups).toBe(1);
    owner.pinTime(5000);
    expect(owner.now()).toBe(5000);
    expect(attached.now()).toBe(1000);
  });

  it("use the same hash key (a tuple lands in one bucket whichever object hashes it)", () => {
    const { owner, attached } = pair();
    for (let i = 0; i < 50; i++) {
      expect(attached.bucketOf(IPPROTO_UDP, ip("10.0.0.3") + i, ip("203.0.113.10"), 1000 + i, 53)).toBe(owner.bucketOf(IPPROTO_UDP, ip("10.0.0.3") + i, ip("203.0.113.10"), 1000 + i, 53));
    }
  });

  it("refuse an attach with another capacity, and a table that is not sharable has no memory to share", () => {
    const { owner } = pair(64);
    expect(() => new ConntrackTable({ capacity: 128, clock: new ManualClock(), shared: owner.sharedMemory() })).toThrow(/capacity 128/);
    const plain = new ConntrackTable({ capacity: 64, clock: new ManualClock() });
    expect(() => plain.sharedMemory()).toThrow(/not sharable/);
    expect(plain.tableLock).toBeNull();
    // lock/unlock on a table that is not shared do nothing (and never block).
    plain.lock();
    plain.lock();
    plain.unlock();
    plain.unlock();
  });

  it("NAT engines over the two share the by-source index: 10.0.0.3:5000 keeps its mapping across engines", () => {
    const { owner, attached } = pair();
    const natOwner = new NatEngine(owner, new XorShift32(1), { sharable: true });
    const natAttached = new NatEngine(attached, new XorShift32(2), { shared: natOwner.sharedMemory() });
    const range = natRange(ip("9.186.100.2"), ip("9.186.100.2"), 1024, 1100);
    const first = owner.create(IPPROTO_UDP, ip("10.0.0.3"), ip("203.0.113.10"), 5000, 53);
    expect(natOwner.setupNat(first, Manip.Src, range)).toBe(true);
    owner.refresh(first, 30, owner.now());
    expect(owner.confirm(first)).toBe(true);
    const port = owner.replyDport(first);
    // The same source toward another server: find_appropriate_src on the other engine finds the
    // first connection through the shared index and reuses its port.
    const second = attached.create(IPPROTO_UDP, ip("10.0.0.3"), ip("203.0.113.11"), 5000, 53);
    const explain: string[] = [];
    expect(natAttached.setupNat(second, Manip.Src, range, explain)).toBe(true);
    expect(attached.replyDport(second)).toBe(port);
    expect(natAttached.counters.sourceMapReused).toBe(1);
    expect(natOwner.counters.sourceMapReused).toBe(0);
  });
});

describe("free lists per queue and a connection's owner queue (workers: 2)", () => {
  function queuePair(capacity: number): { owner: ConntrackTable; attached: ConntrackTable } {
    const clock = new ManualClock(1000);
    const owner = new ConntrackTable({ capacity, clock, seed: 7, sharable: true, queues: 2 });
    const attached = new ConntrackTable({ capacity, clock, shared: owner.sharedMemory() });
    attached.ownQueue = 1;
    return { owner, attached };
  }

  it("record the queue whose thread opened the connection, out of its status bits, and hand each thread ids from its own runs of 16", () => {
    const { owner, attached } = queuePair(64);
    for (let i = 0; i < 12; i++) {
      const mine = openUdp(owner, `10.0.0.${10 + i}`, 4000);
      const theirs = openUdp(attached, `10.0.0.${10 + i}`, 4001);
      expect([(mine >> 4) % 2, owner.ownerQueue(mine), attached.ownerQueue(mine)]).toEqual([0, 0, 0]);
      expect([(theirs >> 4) % 2, owner.ownerQueue(theirs), attached.ownerQueue(theirs)]).toEqual([1, 1, 1]);
      // The owner queue is not a status bit: Linux's IPS_* bits only, as `conntrack -L` shows them.
      expect(owner.status(theirs)).toBe(CtStatus.Confirmed);
    }
    owner.setStatus(0, 0xff000000);
    expect(owner.ownerQueue(0)).toBe(0);
    expect(owner.structureProblems()).toEqual([]);
  });

  it("let a thread whose list is empty take another's slot (owned by it all the same), and a create released at once leaves the lists as they were", () => {
    const { owner, attached } = queuePair(32);
    const ids: number[] = [];
    for (let i = 0; i < 20; i++) ids.push(openUdp(attached, `10.0.0.${10 + i}`, 4000));
    expect(ids.slice(0, 16)).toEqual(Array.from({ length: 16 }, (_, i) => 16 + i));
    expect(ids.slice(16)).toEqual([0, 1, 2, 3]);
    for (const id of ids) expect(owner.ownerQueue(id)).toBe(1);
    // `qnat trace` creates and releases: the next create gets the same slot.
    const traced = owner.create(IPPROTO_UDP, ip("10.0.0.99"), ip("203.0.113.10"), 4000, 53);
    owner.release(traced);
    expect(owner.create(IPPROTO_UDP, ip("10.0.0.98"), ip("203.0.113.10"), 4000, 53)).toBe(traced);
    // A freed slot goes back to its own run's list, whoever frees it.
    owner.remove(ids[0]!);
    expect(openUdp(attached, "10.0.0.97", 4000)).toBe(ids[0]);
    expect(owner.structureProblems()).toEqual([]);
  });

  it("stay well formed through 2,000 random opens and removals by both threads, and a full table is full for both", () => {
    const { owner, attached } = queuePair(48);
    const rng = new XorShift32(11);
    const open: number[] = [];
    for (let step = 0; step < 2000; step++) {
      const table = rng.next() % 2 === 0 ? owner : attached;
      if (open.length > 0 && (open.length === 48 || rng.next() % 3 === 0)) {
        table.remove(open.splice(rng.next() % open.length, 1)[0]!);
      } else {
        open.push(openUdp(table, `10.${step >> 8}.${step & 255}.1`, 4000));
      }
    }
    expect(owner.structureProblems()).toEqual([]);
    while (open.length < 48) open.push(openUdp(owner, `10.9.${open.length}.1`, 4000));
    for (const id of open) owner.setStatus(id, CtStatus.Assured);
    expect(attached.create(IPPROTO_UDP, ip("10.0.0.99"), ip("203.0.113.10"), 4000, 53)).toBe(-1);
    expect(owner.create(IPPROTO_UDP, ip("10.0.0.99"), ip("203.0.113.10"), 4000, 53)).toBe(-1);
  });
});

describe("the table lock", () => {
  it("is re-entrant for the thread that holds it", () => {
    const { owner, attached } = pair();
    owner.lock();
    attached.lock(); // the same lock words, the same thread: taken again
    expect(owner.tableLock!.held).toBe(true);
    attached.unlock();
    expect(owner.tableLock!.held).toBe(true);
    owner.unlock();
    expect(owner.tableLock!.held).toBe(false);
  });

  it("excludes another thread: a worker waits while the main thread holds it, and takes it once released", async () => {
    expect(existsSync(`${DIST}/src/core/table-lock.js`), "the build (npm run build) is needed for this test").toBe(true);
    const words = new Int32Array(new SharedArrayBuffer(TABLE_LOCK_WORDS * 4));
    const holds = new Int32Array(new SharedArrayBuffer(4)); // 1 while the worker holds the lock
    const lock = new TableLock(words);
    lock.acquire();
    const worker = new Worker(
      `const { workerData, parentPort } = require("node:worker_threads");
       import(workerData.module).then(({ TableLock }) => {
         const lock = new TableLock(workerData.words);
         parentPort.postMessage("locking");
         lock.acquire();
         Atomics.store(workerData.holds, 0, 1);
         parentPort.postMessage("holds");
         lock.release();
       });`,
      { eval: true, workerData: { module: `${DIST}/src/core/table-lock.js`, words, holds } },
    );
    const messages: string[] = [];
    const next = (): Promise<string> => new Promise((r) => worker.once("message", (m: string) => r(m)));
    try {
      messages.push(await next());
      // The worker is at (or in) its acquire; give it every chance to get past it wrongly.
      await new Promise((r) => setTimeout(r, 50));
      expect(Atomics.load(holds, 0)).toBe(0);
      expect(lock.held).toBe(true);
      const holding = next();
      lock.release();
      messages.push(await holding);
      expect(messages).toEqual(["locking", "holds"]);
      expect(Atomics.load(holds, 0)).toBe(1);
    } finally {
      await worker.terminate();
    }
  });

  it("makes two threads' increments of a plain shared word exact (100,000 each)", async () => {
    const words = new Int32Array(new SharedArrayBuffer(TABLE_LOCK_WORDS * 4));
    const counter = new Int32Array(new SharedArrayBuffer(4));
    const run = (): Promise<void> =>
      new Promise((done, fail) => {
        const worker = new Worker(
          `const { workerData, parentPort } = require("node:worker_threads");
           import(workerData.module).then(({ TableLock }) => {
             const lock = new TableLock(workerData.words);
             const c = workerData.counter;
             for (let i = 0; i < 100000; i++) {
               lock.acquire();
               lock.acquire(); // re-entrant inside
               c[0] = c[0] + 1; // a plain read-modify-write: only the lock makes it exact
               lock.release();
               lock.release();
             }
             parentPort.postMessage("done");
           });`,
          { eval: true, workerData: { module: `${DIST}/src/core/table-lock.js`, words, counter } },
        );
        worker.once("message", () => void worker.terminate().then(() => done()));
        worker.once("error", fail);
      });
    await Promise.all([run(), run()]);
    expect(counter[0]).toBe(200_000);
    expect(Atomics.load(words, 0)).toBe(0);
  });
});

describe("the lock-free lookup and commit (seqcount per entry)", () => {
  const tuple = (table: ConntrackTable, src: string): [number, number, number, number, number] => {
    const ports = (5000 << 16) | 53;
    return [table.bucketOf(IPPROTO_UDP, ip(src), ip("203.0.113.10"), 5000, 53), IPPROTO_UDP, ip(src) | 0, ip("203.0.113.10") | 0, ports];
  };

  it("finds a live confirmed connection, and its commit succeeds when nothing changed it", () => {
    const { owner, attached } = pair();
    const id = openUdp(owner, "10.0.0.3", 5000);
    expect(attached.findStableInBucket(...tuple(attached, "10.0.0.3"))).toBe(id << 1);
    expect(attached.beginLockFreeCommit(id)).toBe(true);
    // While the commit holds the entry, another lock-free reader does not use it.
    expect(owner.findStableInBucket(...tuple(owner, "10.0.0.3"))).toBe(-1);
    attached.endLockFreeCommit(id);
    expect(owner.findStableInBucket(...tuple(owner, "10.0.0.3"))).toBe(id << 1);
    expect(attached.findStableInBucket(...tuple(attached, "10.0.0.9"))).toBe(-1);
  });

  it("refuses a reader whose connection was deleted and its slot given to 10.0.0.4 in between", () => {
    const { owner, attached } = pair();
    const id = openUdp(owner, "10.0.0.3", 5000);
    expect(attached.findStableInBucket(...tuple(attached, "10.0.0.3"))).toBe(id << 1);
    // Another thread, holding the lock: deletes it, and the next connection takes its slot.
    owner.remove(id);
    expect(openUdp(owner, "10.0.0.4", 5000)).toBe(id);
    // What the reader read of the entry is no longer one state of its connection: no commit.
    expect(attached.beginLockFreeCommit(id)).toBe(false);
  });

  it("refuses a reader during a trace (the trace's writes and undo move no sequence word)", () => {
    const { owner, attached } = pair();
    const id = openUdp(owner, "10.0.0.3", 5000);
    expect(attached.findStableInBucket(...tuple(attached, "10.0.0.3"))).toBe(id << 1);
    owner.excludeLockFree();
    expect(attached.findStableInBucket(...tuple(attached, "10.0.0.3"))).toBe(-1);
    expect(attached.beginLockFreeCommit(id)).toBe(false);
    owner.admitLockFree();
    // A read that started before the trace stays refused after it; a new one goes on.
    expect(attached.beginLockFreeCommit(id)).toBe(false);
    expect(attached.findStableInBucket(...tuple(attached, "10.0.0.3"))).toBe(id << 1);
    expect(attached.beginLockFreeCommit(id)).toBe(true);
    attached.endLockFreeCommit(id);
  });

  it("misses an expired or killed connection without removing it (the locked path does)", () => {
    const { owner, attached, clock } = pair();
    const id = openUdp(owner, "10.0.0.3", 5000);
    owner.kill(id);
    expect(attached.findStableInBucket(...tuple(attached, "10.0.0.3"))).toBe(-1);
    expect(owner.count).toBe(1);
    const other = openUdp(owner, "10.0.0.4", 5000);
    clock.advance(31);
    expect(attached.findStableInBucket(...tuple(attached, "10.0.0.4"))).toBe(-1);
    expect(owner.isAllocated(other)).toBe(true);
  });
});
