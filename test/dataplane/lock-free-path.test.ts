/**
 * The lock-free established path (docs/multi-core.md) when another worker changes the connection
 * under it, made deterministic: the other worker's work is done at the exact point the race would
 * hit — between the lock-free lookup and the check of what was read, or before the commit — by a
 * second dataplane over the same shared tables, in this thread. The packet must then leave with
 * the translation of the table as it is after the change, never with the binding of the
 * connection that took over the slot.
 */
import { describe, expect, it } from "vitest";
import { sharedTablesOf } from "../../src/dataplane/from-config.js";
import { parseIpv4 } from "../../src/core/addr.js";
import { IPPROTO_UDP } from "../../src/wire/packet-info.js";
import type { ConntrackTable } from "../../src/conntrack/table.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

function routers(): { worker: MemoryRouter; other: MemoryRouter } {
  const worker = MemoryRouter.fromFile("examples/seed.yaml", { sharable: true });
  const other = MemoryRouter.fromFile("examples/seed.yaml", { shared: sharedTablesOf(worker.dataplane) });
  return { worker, other };
}

/** 10.0.0.3:5000 > 203.0.113.10:53, answered: established, in the table, lock-free from now on. */
function establish(r: MemoryRouter): number {
  r.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53 });
  r.run();
  const out = r.received(QG)[0]!;
  r.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: out.sport! });
  r.run();
  expect(r.received(QR)).toHaveLength(1);
  const table = r.dataplane.conntrack;
  return table.lookup(IPPROTO_UDP, parseIpv4("10.0.0.3"), parseIpv4("203.0.113.10"), 5000, 53) >> 1;
}

/**
 * Runs `race` once, the first time `method` of `table` is called, before the method itself: what
 * another worker would have done at that moment. `routeCache`: after the lookup and the reads of
 * the entry's status and other tuple, before its route cache serves as an index; `beginLockFreeCommit`:
 * after every read, just before the commit.
 */
function raceAt(table: ConntrackTable, method: "routeCache" | "beginLockFreeCommit", race: () => void): void {
  const original = table[method].bind(table) as (id: number) => never;
  let done = false;
  table[method] = (id: number): never => {
    if (!done) {
      done = true;
      race();
    }
    return original(id);
  };
}

describe("the lock-free path when another worker changes the connection under it", () => {
  for (const method of ["routeCache", "beginLockFreeCommit"] as const) {
    it(`10.0.0.3's connection deleted and its slot taken by 10.0.0.4's (at ${method}): 10.0.0.3 leaves by its own new binding`, () => {
      const { worker, other } = routers();
      const id = establish(worker);
      const table = worker.dataplane.conntrack;
      const lockFreeBefore = worker.dataplane.lockFreePackets;
      raceAt(table, method, () => {
        // The other worker: conntrack -D of 10.0.0.3's connection, then 10.0.0.4 opens one,
        // which gets the freed slot, translated 9.186.100.2:6000 toward another server.
        table.locked(() => table.remove(id));
        other.send(QR, { protocol: "udp", src: "10.0.0.4", dst: "203.0.113.99", sport: 6000, dport: 80 });
        other.run();
        expect(other.received(QG)[0]).toMatchObject({ src: "9.186.100.2", sport: 6000, dst: "203.0.113.99" });
        expect(table.lookup(IPPROTO_UDP, parseIpv4("10.0.0.4"), parseIpv4("203.0.113.99"), 6000, 80) >> 1).toBe(id);
      });
      worker.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53 });
      worker.run();
      // Not 9.186.100.2:6000 (the slot's new connection): the packet took the locked path, found
      // no connection, and was NATed anew.
      expect(worker.received(QG)).toEqual([expect.objectContaining({ src: "9.186.100.2", sport: 5000, dst: "203.0.113.10", dport: 53 })]);
      expect(worker.dataplane.lockFreePackets).toBe(lockFreeBefore);
      const again = table.lookup(IPPROTO_UDP, parseIpv4("10.0.0.3"), parseIpv4("203.0.113.10"), 5000, 53);
      expect(again).toBeGreaterThanOrEqual(0);
      expect(again >> 1).not.toBe(id);
    });
  }

  it("10.0.0.3's packet refreshes its connection just as the other worker judged it expired: the reply still goes back by it", () => {
    const { worker, other } = routers();
    const id = establish(worker);
    const table = worker.dataplane.conntrack;
    // After two seconds the next packet makes the stream ASSURED (locked path); from then on its
    // packets refresh it to the stream timeout without the lock.
    worker.clock.advance(3);
    worker.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53 });
    worker.run();
    worker.received(QG);
    const expires = table.expiresAt(id);
    // The workers' clocks straddle the expiry: for this worker the connection lives one second
    // more, for the other it died one second ago (two threads read the clock at different times).
    worker.clock.advance(expires - 1 - worker.clock.now());
    other.clock.advance(expires + 1 - other.clock.now());
    const lockFreeBefore = worker.dataplane.lockFreePackets;
    // The race: the server's reply reaches the other worker, whose lookup (under the lock) has seen
    // the entry dead and is about to take its sequence word to free it (ConntrackTable's private
    // beginChange) when this worker's packet refreshes it.
    const changes = other.dataplane.conntrack as unknown as { beginChange(id: number): number };
    const beginChange = changes.beginChange.bind(changes);
    let raced = false;
    changes.beginChange = (at: number): number => {
      if (!raced && at === id) {
        raced = true;
        worker.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53 });
        worker.run();
      }
      return beginChange(at);
    };
    other.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: 5000 });
    other.run();
    expect(raced).toBe(true);
    // The reply found the connection live after all and went back to 10.0.0.3 (not dropped, nor a
    // new connection of its own).
    expect(other.received(QR)).toEqual([expect.objectContaining({ src: "203.0.113.10", dst: "10.0.0.3", dport: 5000 })]);
    // The packet went out by the connection's binding without the lock, and the connection it
    // refreshed is still there: its next packet finds it, no new connection is made.
    expect(worker.received(QG)).toEqual([expect.objectContaining({ src: "9.186.100.2", sport: 5000, dst: "203.0.113.10" })]);
    expect(worker.dataplane.lockFreePackets).toBe(lockFreeBefore + 1);
    expect(table.lookup(IPPROTO_UDP, parseIpv4("10.0.0.3"), parseIpv4("203.0.113.10"), 5000, 53) >> 1).toBe(id);
    expect(table.expiresAt(id)).toBeGreaterThan(other.clock.now());
    expect(table.counters.created + other.dataplane.conntrack.counters.created).toBe(1);
    expect(table.count).toBe(1);
    expect(table.structureProblems()).toEqual([]);
  });

  it("a lock-free walk led onto another chain misses 10.0.0.3's live connection: the packet takes the lock and finds it, no second connection is made", () => {
    // 64 entries, 64 buckets: tuples that share a bucket are easy to find.
    const worker = MemoryRouter.fromFile("examples/seed.yaml", { sharable: true, conntrackCapacity: 64 });
    const other = MemoryRouter.fromFile("examples/seed.yaml", { shared: sharedTablesOf(worker.dataplane), conntrackCapacity: 64 });
    const table = worker.dataplane.conntrack;
    const server = parseIpv4("203.0.113.10");
    const id = establish(worker);
    const bucket = table.bucketOf(IPPROTO_UDP, parseIpv4("10.0.0.3"), server, 5000, 53);
    // 10.0.0.4 opens a connection whose original tuple shares that bucket: linked after 10.0.0.3's,
    // it heads the chain, and a lookup of 10.0.0.3's tuple walks through it.
    let sport = 1024;
    while (table.bucketOf(IPPROTO_UDP, parseIpv4("10.0.0.4"), server, sport, 53) !== bucket) sport++;
    worker.send(QR, { protocol: "udp", src: "10.0.0.4", dst: "203.0.113.10", sport, dport: 53 });
    worker.run();
    worker.received(QG);
    const passed = table.lookup(IPPROTO_UDP, parseIpv4("10.0.0.4"), server, sport, 53);
    expect(table.bucketHeadAt(bucket)).toBe(passed);
    // And 10.0.0.5's next connection, toward another server, hashes elsewhere.
    let nextSport = 1024;
    while (table.bucketOf(IPPROTO_UDP, parseIpv4("10.0.0.5"), parseIpv4("203.0.113.99"), nextSport, 80) === bucket) nextSport++;

    // The race, in the middle of the lock-free walk: when it reads the link out of 10.0.0.4's node
    // (word 3 of the node's four, conntrack/table.ts's layout), the other worker has just deleted
    // 10.0.0.4's connection and 10.0.0.5 has taken its slot, so the link now leads into 10.0.0.5's
    // chain (Linux's hlist_nulls walk would see the wrong end marker and restart).
    const memory = table as unknown as { words: Int32Array };
    const words = memory.words;
    const link = String((passed >> 1) * 16 + (passed & 1) * 4 + 3);
    let raced = false;
    memory.words = new Proxy(words, {
      get(target, key) {
        if (key === link && !raced) {
          raced = true;
          table.locked(() => table.remove(passed >> 1));
          other.send(QR, { protocol: "udp", src: "10.0.0.5", dst: "203.0.113.99", sport: nextSport, dport: 80 });
          other.run();
          expect(other.received(QG)).toHaveLength(1);
          expect(table.lookup(IPPROTO_UDP, parseIpv4("10.0.0.5"), parseIpv4("203.0.113.99"), nextSport, 80) >> 1).toBe(passed >> 1);
        }
        const value: unknown = Reflect.get(target, key, target);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const findStable = table.findStableInBucket.bind(table);
    const found: number[] = [];
    table.findStableInBucket = (...args: Parameters<ConntrackTable["findStableInBucket"]>): number => {
      const node = findStable(...args);
      found.push(node);
      return node;
    };
    const lockFreeBefore = worker.dataplane.lockFreePackets;
    worker.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53 });
    worker.run();
    memory.words = words;
    expect(raced).toBe(true);
    // The walk missed (it never matches wrongly: it misses), and the packet took the lock...
    expect(found[0]).toBe(-1);
    expect(worker.dataplane.lockFreePackets).toBe(lockFreeBefore);
    // ...where the lookup found the live connection: it left by its binding, and no second
    // connection for 10.0.0.3's tuple was made.
    expect(worker.received(QG)).toEqual([expect.objectContaining({ src: "9.186.100.2", sport: 5000, dst: "203.0.113.10", dport: 53 })]);
    expect(table.lookup(IPPROTO_UDP, parseIpv4("10.0.0.3"), server, 5000, 53) >> 1).toBe(id);
    const mine = table.entries().filter((entry) => table.origSrc(entry) === parseIpv4("10.0.0.3") >>> 0);
    expect(mine).toEqual([id]);
    expect(table.count).toBe(2);
    expect(table.structureProblems()).toEqual([]);
  });

  it("with nothing changed, the same packet goes through without the lock", () => {
    const { worker } = routers();
    establish(worker);
    const lockFreeBefore = worker.dataplane.lockFreePackets;
    worker.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53 });
    worker.run();
    expect(worker.received(QG)).toEqual([expect.objectContaining({ src: "9.186.100.2", sport: 5000, dst: "203.0.113.10" })]);
    expect(worker.dataplane.lockFreePackets).toBe(lockFreeBefore + 1);
  });
});
