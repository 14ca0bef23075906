import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { describe, expect, it } from "vitest";
import { parseCidr, parseIpv4, prefixMask } from "../../src/core/addr.js";
import { XorShift32 } from "../../src/core/rng.js";
import { Lpm4, LpmError, LPM_MAX_VALUE } from "../../src/route/lpm.js";
import { syntheticInternetTable, type SyntheticPrefix } from "../../src/route/synthetic-table.js";

const MiB = 1024 * 1024;

/**
 * Full garbage collections, with a turn of the event loop between them so that the backing
 * stores of dead ArrayBuffers are released: memory figures then count live data only.
 */
async function collectGarbage(): Promise<void> {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function cidr(text: string): [number, number] {
  const parsed = parseCidr(text)!;
  return [parsed.addr, parsed.prefixLength];
}

/** The obviously-correct reference: scan every prefix, keep the longest that matches. */
class LinearReference {
  readonly entries = new Map<string, SyntheticPrefix>();
  insert(prefix: number, prefixLength: number, value: number): void {
    this.entries.set(`${prefix}/${prefixLength}`, { prefix, prefixLength, value });
  }
  delete(prefix: number, prefixLength: number): boolean {
    return this.entries.delete(`${prefix}/${prefixLength}`);
  }
  lookup(dst: number): number {
    let best = -1;
    let bestLength = -1;
    for (const entry of this.entries.values()) {
      const mask = prefixMask(entry.prefixLength);
      if (((dst & mask) >>> 0) === entry.prefix && entry.prefixLength > bestLength) {
        best = entry.value;
        bestLength = entry.prefixLength;
      }
    }
    return best;
  }
}

/** A reference for big tables: per length, an exact-match map; try /32 down to /0. */
function perLengthReference(prefixes: readonly SyntheticPrefix[]): (dst: number) => number {
  const byLength: Map<number, number>[] = [];
  for (let length = 0; length <= 32; length++) byLength.push(new Map());
  for (const p of prefixes) byLength[p.prefixLength]!.set(p.prefix, p.value);
  return (dst) => {
    for (let length = 32; length >= 0; length--) {
      const value = byLength[length]!.get((dst & prefixMask(length)) >>> 0);
      if (value !== undefined) return value;
    }
    return -1;
  };
}

/** Prefixes nested inside one /12 so that inserts and deletes overlap a lot. */
function randomNestedPrefix(rng: XorShift32): [number, number] {
  const base = parseIpv4("10.16.0.0");
  const roll = rng.next() % 100;
  const prefixLength = roll < 5 ? 8 + (rng.next() % 5) : roll < 45 ? 13 + (rng.next() % 12) : 25 + (rng.next() % 8);
  const addr = (base | (rng.next() & 0x000fffff)) >>> 0;
  return [(addr & prefixMask(prefixLength)) >>> 0, prefixLength];
}

/** Addresses that fall inside the nested region, near its prefixes' edges, and elsewhere. */
function randomProbe(rng: XorShift32, reference: LinearReference): number {
  const roll = rng.next() % 10;
  if (roll < 6 && reference.entries.size > 0) {
    const entries = [...reference.entries.values()];
    const entry = entries[rng.next() % entries.length]!;
    const span = 2 ** (32 - entry.prefixLength);
    const edge = rng.next() % 3;
    const offset = edge === 0 ? 0 : edge === 1 ? span - 1 : rng.next() % span;
    return (entry.prefix + offset) >>> 0;
  }
  if (roll < 9) return (parseIpv4("10.16.0.0") | (rng.next() & 0x000fffff)) >>> 0;
  return rng.next();
}

describe("longest-prefix match (DIR-24-8)", () => {
  it("routes the seed's destinations to the most specific prefix", () => {
    const lpm = new Lpm4();
    lpm.insert(...cidr("0.0.0.0/0"), 0); // default via 9.186.100.1
    lpm.insert(...cidr("9.186.100.0/24"), 1);
    lpm.insert(...cidr("10.0.0.0/24"), 2);
    lpm.insert(...cidr("9.186.100.129/32"), 3);
    expect(lpm.lookup(parseIpv4("10.0.0.3"))).toBe(2);
    expect(lpm.lookup(parseIpv4("9.186.100.1"))).toBe(1);
    expect(lpm.lookup(parseIpv4("9.186.100.129"))).toBe(3);
    expect(lpm.lookup(parseIpv4("9.186.100.130"))).toBe(1);
    expect(lpm.lookup(parseIpv4("203.0.113.10"))).toBe(0);
    expect(lpm.size).toBe(4);
  });

  it("gives -1 when nothing matches, also for the top and bottom of the address space", () => {
    const lpm = new Lpm4();
    expect(lpm.lookup(0)).toBe(-1);
    expect(lpm.lookup(0xffffffff)).toBe(-1);
    lpm.insert(...cidr("255.255.255.255/32"), 7);
    lpm.insert(...cidr("0.0.0.0/32"), 8);
    expect(lpm.lookup(0xffffffff)).toBe(7);
    expect(lpm.lookup(-1)).toBe(7); // the same bits as an int32
    expect(lpm.lookup(0)).toBe(8);
    expect(lpm.lookup(1)).toBe(-1);
  });

  it("brings the covering shorter prefix back when a longer one is deleted", () => {
    const lpm = new Lpm4();
    lpm.insert(...cidr("10.0.0.0/8"), 1);
    lpm.insert(...cidr("10.1.0.0/16"), 2);
    lpm.insert(...cidr("10.1.2.0/24"), 3);
    lpm.insert(...cidr("10.1.2.128/25"), 4);
    lpm.insert(...cidr("10.1.2.130/32"), 5);
    expect(lpm.lookup(parseIpv4("10.1.2.130"))).toBe(5);
    expect(lpm.delete(...cidr("10.1.2.130/32"))).toBe(true);
    expect(lpm.lookup(parseIpv4("10.1.2.130"))).toBe(4);
    expect(lpm.delete(...cidr("10.1.2.128/25"))).toBe(true);
    expect(lpm.lookup(parseIpv4("10.1.2.130"))).toBe(3);
    expect(lpm.tbl8GroupsInUse).toBe(0);
    expect(lpm.delete(...cidr("10.1.2.0/24"))).toBe(true);
    expect(lpm.lookup(parseIpv4("10.1.2.130"))).toBe(2);
    expect(lpm.delete(...cidr("10.1.0.0/16"))).toBe(true);
    expect(lpm.lookup(parseIpv4("10.1.2.130"))).toBe(1);
    expect(lpm.delete(...cidr("10.1.0.0/16"))).toBe(false);
    expect(lpm.delete(...cidr("10.0.0.0/8"))).toBe(true);
    expect(lpm.lookup(parseIpv4("10.1.2.130"))).toBe(-1);
    expect(lpm.size).toBe(0);
  });

  it("keeps a /25 when a shorter prefix over it is added or removed later", () => {
    const lpm = new Lpm4();
    lpm.insert(...cidr("192.0.2.128/25"), 9);
    lpm.insert(...cidr("192.0.0.0/16"), 1);
    expect(lpm.lookup(parseIpv4("192.0.2.200"))).toBe(9);
    expect(lpm.lookup(parseIpv4("192.0.2.100"))).toBe(1);
    lpm.insert(...cidr("192.0.2.0/24"), 2);
    expect(lpm.lookup(parseIpv4("192.0.2.100"))).toBe(2);
    lpm.delete(...cidr("192.0.0.0/16"));
    lpm.delete(...cidr("192.0.2.0/24"));
    expect(lpm.lookup(parseIpv4("192.0.2.100"))).toBe(-1);
    expect(lpm.lookup(parseIpv4("192.0.2.200"))).toBe(9);
  });

  it("replaces the value of an existing prefix", () => {
    const lpm = new Lpm4();
    lpm.insert(...cidr("10.0.0.0/24"), 1);
    lpm.insert(...cidr("10.0.0.0/24"), 2);
    lpm.insert(...cidr("10.0.0.4/30"), 3);
    lpm.insert(...cidr("10.0.0.4/30"), 4);
    expect(lpm.size).toBe(2);
    expect(lpm.get(...cidr("10.0.0.0/24"))).toBe(2);
    expect(lpm.lookup(parseIpv4("10.0.0.5"))).toBe(4);
    expect(lpm.lookup(parseIpv4("10.0.0.8"))).toBe(2);
  });

  it("refuses malformed prefixes, values out of range and a full tbl8 with a clear error", () => {
    const lpm = new Lpm4({ maxTbl8Groups: 2 });
    expect(() => lpm.insert(parseIpv4("10.0.0.1"), 24, 1)).toThrow(/host bits set beyond \/24/);
    expect(() => lpm.insert(0, 33, 1)).toThrow(/prefix length 33 out of range/);
    expect(() => lpm.insert(0, 0, LPM_MAX_VALUE + 1)).toThrow(/value 16777215 out of range 0\.\.16777214/);
    expect(() => lpm.insert(0, 0, -1)).toThrow(LpmError);
    lpm.insert(...cidr("10.0.0.0/25"), 1);
    lpm.insert(...cidr("10.0.1.0/25"), 1);
    lpm.insert(...cidr("10.0.1.128/25"), 1); // same /24: no new group
    expect(() => lpm.insert(...cidr("10.0.2.0/25"), 1)).toThrow(/tbl8 is full: 2 \/24s/);
    expect(lpm.get(...cidr("10.0.2.0/25"))).toBe(-1); // the refused prefix left no trace
    expect(lpm.lookup(parseIpv4("10.0.2.1"))).toBe(-1);
    lpm.delete(...cidr("10.0.0.0/25"));
    lpm.insert(...cidr("10.0.2.0/25"), 1); // a freed group is reused
    expect(lpm.lookup(parseIpv4("10.0.2.1"))).toBe(1);
  });

  it("agrees with a linear scan over seeded random insert/delete sequences", () => {
    const rng = new XorShift32(0x1f2e3d4c);
    let lookups = 0;
    for (let round = 0; round < 40; round++) {
      const lpm = new Lpm4({ maxTbl8Groups: 4096 });
      const reference = new LinearReference();
      const operations = 20 + (rng.next() % 400);
      for (let op = 0; op < operations; op++) {
        const deleting = reference.entries.size > 0 && rng.next() % 3 === 0;
        if (deleting) {
          // Delete an existing prefix most of the time, a random (maybe absent) one otherwise.
          const entries = [...reference.entries.values()];
          const [prefix, prefixLength] =
            rng.next() % 4 !== 0
              ? [entries[rng.next() % entries.length]!.prefix, entries[rng.next() % entries.length]!.prefixLength]
              : randomNestedPrefix(rng);
          const masked = (prefix & prefixMask(prefixLength)) >>> 0;
          expect(lpm.delete(masked, prefixLength)).toBe(reference.delete(masked, prefixLength));
        } else {
          const [prefix, prefixLength] = randomNestedPrefix(rng);
          const value = rng.next() % 1000;
          lpm.insert(prefix, prefixLength, value);
          reference.insert(prefix, prefixLength, value);
        }
        if (op % 10 === 9) {
          for (let probe = 0; probe < 50; probe++) {
            const dst = randomProbe(rng, reference);
            expect(lpm.lookup(dst), `lookup ${dst.toString(16)} round ${round} op ${op}`).toBe(reference.lookup(dst));
            lookups++;
          }
        }
      }
      expect(lpm.size).toBe(reference.entries.size);
      // A bulk load of the same prefixes answers the same.
      const bulk = new Lpm4({ maxTbl8Groups: 4096 });
      bulk.insertAll([...reference.entries.values()]);
      for (let probe = 0; probe < 200; probe++) {
        const dst = randomProbe(rng, reference);
        expect(bulk.lookup(dst)).toBe(lpm.lookup(dst));
      }
      const stored = lpm.prefixes().map((p) => `${p.prefix}/${p.prefixLength}=${p.value}`).sort();
      const expected = [...reference.entries.values()].map((p) => `${p.prefix}/${p.prefixLength}=${p.value}`).sort();
      expect(stored).toEqual(expected);
      // Deleting everything leaves an empty table and no tbl8 group behind.
      for (const entry of reference.entries.values()) lpm.delete(entry.prefix, entry.prefixLength);
      expect(lpm.tbl8GroupsInUse).toBe(0);
      for (let probe = 0; probe < 20; probe++) expect(lpm.lookup(randomProbe(rng, reference))).toBe(-1);
    }
    expect(lookups).toBeGreaterThan(10_000);
  });

  it("holds a full Internet table: 1,000,000 prefixes, under 112 MiB, exact lookups", async () => {
    const rng = new XorShift32(20240601);
    const prefixes = syntheticInternetTable(1_000_000, rng);
    const longer = prefixes.filter((p) => p.prefixLength > 24).length;
    await collectGarbage();
    const arrayBuffersBefore = process.memoryUsage().arrayBuffers;
    const heapBefore = process.memoryUsage().heapUsed;

    const started = performance.now();
    const lpm = new Lpm4();
    lpm.insertAll(prefixes);
    const buildMs = performance.now() - started;

    await collectGarbage();
    const arrayBufferBytes = process.memoryUsage().arrayBuffers - arrayBuffersBefore;
    const heapBytes = process.memoryUsage().heapUsed - heapBefore;
    expect(lpm.size).toBe(1_000_000);
    // 64 MiB of it is tbl24: 32-bit entries, so a value can be a route id of a full table.
    expect(lpm.byteLength()).toBeLessThan(112 * MiB);
    expect(arrayBufferBytes).toBeLessThan(112 * MiB);

    // Lookups: random addresses plus addresses inside random prefixes, against a per-length reference.
    const reference = perLengthReference(prefixes);
    const probes = new Uint32Array(1 << 20);
    for (let i = 0; i < probes.length; i++) {
      if (i % 2 === 0) {
        probes[i] = rng.next();
      } else {
        const p = prefixes[rng.next() % prefixes.length]!;
        probes[i] = (p.prefix + (rng.next() % 2 ** (32 - p.prefixLength))) >>> 0;
      }
    }
    for (let i = 0; i < 50_000; i++) expect(lpm.lookup(probes[i]!)).toBe(reference(probes[i]!));

    let checksum = 0;
    const rounds = 20;
    const lookupStarted = performance.now();
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < probes.length; i++) checksum += lpm.lookup(probes[i]!);
    }
    const lookupSeconds = (performance.now() - lookupStarted) / 1000;
    const lookupsPerSecond = (rounds * probes.length) / lookupSeconds;
    expect(checksum).not.toBe(0);

    // Deleting a tenth of the table keeps it exact.
    const deleteStarted = performance.now();
    for (let i = 0; i < prefixes.length; i += 10) lpm.delete(prefixes[i]!.prefix, prefixes[i]!.prefixLength);
    const deleteMs = performance.now() - deleteStarted;
    const remaining = prefixes.filter((_, i) => i % 10 !== 0);
    const referenceAfter = perLengthReference(remaining);
    for (let i = 0; i < 50_000; i++) expect(lpm.lookup(probes[i]!)).toBe(referenceAfter(probes[i]!));

    console.log(
      `LPM 1M prefixes (${longer} longer than /24, ${lpm.tbl8GroupsInUse} tbl8 groups): ` +
        `build (insertAll) ${buildMs.toFixed(0)} ms; tables ${(lpm.byteLength() / MiB).toFixed(1)} MiB ` +
        `(arrayBuffers +${(arrayBufferBytes / MiB).toFixed(1)} MiB, heap +${(heapBytes / MiB).toFixed(1)} MiB); ` +
        `${(lookupsPerSecond / 1e6).toFixed(1)} M lookups/s (half random, half inside prefixes); ` +
        `100k deletes ${deleteMs.toFixed(0)} ms`,
    );
  });
});
