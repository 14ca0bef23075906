import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { ManualClock } from "../../src/core/clock.js";
import { hashKeyFrom } from "../../src/core/hash.js";
import { XorShift32 } from "../../src/core/rng.js";
import { ConntrackTable } from "../../src/conntrack/table.js";
import { IPPROTO_TCP } from "../../src/wire/packet-info.js";

const SERVER = parseIpv4("203.0.113.10");
const TENANT_NET = parseIpv4("10.0.0.0");
const CAPACITY = 4096; // 4096 buckets
const AIMED = 64;

interface Tuple {
  src: number;
  sport: number;
}

/**
 * What an attacker who knows the key would do: search tenant addresses and source ports for TCP
 * tuples to 203.0.113.10:80 that all hash to one bucket of `table`.
 */
function tuplesInOneBucket(table: ConntrackTable, count: number): Tuple[] {
  const target = table.bucketOf(IPPROTO_TCP, TENANT_NET + 2, SERVER, 1024, 80);
  const found: Tuple[] = [];
  for (let host = 2; found.length < count; host++) {
    const src = (TENANT_NET + host) >>> 0;
    for (let sport = 1024; sport < 65536 && found.length < count; sport++) {
      if (table.bucketOf(IPPROTO_TCP, src, SERVER, sport, 80) === target) found.push({ src, sport });
    }
  }
  return found;
}

function insert(table: ConntrackTable, clock: ManualClock, tuples: readonly Tuple[]): void {
  for (const t of tuples) {
    const id = table.create(IPPROTO_TCP, t.src, SERVER, t.sport, 80);
    table.setExpiresAt(id, clock.now() + 120);
    expect(table.confirm(id)).toBe(true);
  }
}

/** Looks every tuple up; returns the nodes walked per lookup, from the chain statistics. */
function walkPerLookup(table: ConntrackTable, tuples: readonly Tuple[]): number {
  const before = table.chainStats;
  for (const t of tuples) expect(table.lookup(IPPROTO_TCP, t.src, SERVER, t.sport, 80)).toBeGreaterThanOrEqual(0);
  const after = table.chainStats;
  expect(after.lookups - before.lookups).toBe(tuples.length);
  return (after.nodesWalked - before.nodesWalked) / tuples.length;
}

describe("conntrack hash-chain statistics", () => {
  it("count every lookup and the nodes it walks", () => {
    const clock = new ManualClock();
    const table = new ConntrackTable({ capacity: 16, clock, seed: 5 });
    expect(table.chainStats).toEqual({ lookups: 0, nodesWalked: 0, longestWalk: 0 });
    expect(table.lookup(IPPROTO_TCP, TENANT_NET + 3, SERVER, 40000, 80)).toBe(-1);
    expect(table.chainStats).toEqual({ lookups: 1, nodesWalked: 0, longestWalk: 0 });

    insert(table, clock, [{ src: TENANT_NET + 3, sport: 40000 }]); // confirm probes both tuples: 2 lookups
    expect(table.chainStats.lookups).toBe(3);
    const walked = table.chainStats.nodesWalked;
    expect(table.lookup(IPPROTO_TCP, TENANT_NET + 3, SERVER, 40000, 80)).toBeGreaterThanOrEqual(0);
    expect(table.isTupleTaken(IPPROTO_TCP, SERVER, TENANT_NET + 3, 80, 40000)).toBe(true);
    // Each found its node; the reply node may share the bucket with the original one (16 buckets).
    const stats = table.chainStats;
    expect(stats.lookups).toBe(5);
    expect(stats.nodesWalked - walked).toBeGreaterThanOrEqual(2);
    expect(stats.nodesWalked - walked).toBeLessThanOrEqual(4);
  });

  it("show a flood aimed at one bucket under a known key, which another key spreads out", () => {
    const clock = new ManualClock();
    const known = new ConntrackTable({ capacity: CAPACITY, clock, key: hashKeyFrom(new XorShift32(1)) });
    const aimed = tuplesInOneBucket(known, AIMED);
    expect(aimed).toHaveLength(AIMED);

    insert(known, clock, aimed);
    // The last confirm walked the 63 original nodes before it; looking the tuples up walks
    // 32.5 nodes on average (the chain is 64 long, each tuple at its own depth), and the first
    // one inserted, at the end of the chain, all 64.
    expect(known.chainStats.longestWalk).toBeGreaterThanOrEqual(AIMED - 1);
    expect(walkPerLookup(known, aimed)).toBeGreaterThanOrEqual(AIMED / 2);
    expect(known.chainStats.longestWalk).toBeGreaterThanOrEqual(AIMED);

    // The same tuples under another key: 128 nodes in 4096 buckets, chains of one or two.
    const other = new ConntrackTable({ capacity: CAPACITY, clock, key: hashKeyFrom(new XorShift32(2)) });
    insert(other, clock, aimed);
    expect(walkPerLookup(other, aimed)).toBeLessThan(1.5);
    expect(other.chainStats.longestWalk).toBeLessThanOrEqual(4);
  });
});
