/**
 * Addresses around 128.0.0.0, where a uint32 and its int32 bits part (2^31 and up are negative as
 * int32): the NAT engine, the conntrack table and the routing table keep them as int32 bits on the
 * hot path (V8 allocates a heap number for a uint32 of 2^31 or more held in a field or passed to
 * a call) and convert to uint32 only where order matters. Order comparisons (a SNAT range that
 * crosses 128.0.0.0), longest-prefix match and the hashes must give what they gave for uint32.
 */
import { getHeapSpaceStatistics } from "node:v8";
import { describe, expect, it } from "vitest";
import { hsiphash, hsiphashBits } from "../../../src/core/hash.js";
import { XorShift32 } from "../../../src/core/rng.js";
import { Lpm4 } from "../../../src/route/lpm.js";
import { Manip, natRange } from "../../../src/nat/range.js";
import { IPPROTO_TCP, IPPROTO_UDP } from "../../../src/wire/packet-info.js";
import { ip, makeFixture, snat, translatedSource } from "./setup.js";

const BOUNDARY = ["0.0.0.1", "127.255.255.255", "128.0.0.0", "128.0.0.1", "255.255.255.254"];

function newSpace(): number {
  return getHeapSpaceStatistics().find((s) => s.space_name === "new_space")!.space_used_size;
}

/**
 * Young-heap bytes per call of `step` (after a warm-up; chunks with a scavenge are left out). The
 * measurement itself allocates about 2 KB a chunk: 5,000 calls a chunk or more make that 0.4 B a call at most.
 */
function bytesPerCall(step: (i: number) => void, calls = 200_000): number {
  for (let i = 0; i < calls; i++) step(i);
  let grown = 0;
  let counted = 0;
  for (let chunk = 0; chunk < 20; chunk++) {
    const before = newSpace();
    for (let i = 0; i < calls / 20; i++) step(i);
    const after = newSpace();
    if (after >= before) {
      grown += after - before;
      counted += calls / 20;
    }
  }
  expect(counted).toBeGreaterThan(0);
  return grown / counted;
}

describe("SNAT ranges across 128.0.0.0", () => {
  it("every address chosen from 127.255.255.254-128.0.0.1 lies in the range, and all four are used", () => {
    const f = makeFixture(8192);
    const range = natRange(ip("127.255.255.254"), ip("128.0.0.1"));
    const seen = new Set<string>();
    for (let i = 0; i < 400; i++) {
      const id = snat(f, IPPROTO_UDP, `172.16.${i >> 8}.${i & 255}`, 5000, `203.0.113.${i & 127}`, 53, range);
      expect(id).toBeGreaterThanOrEqual(0);
      const translated = translatedSource(f, id).split(":")[0]!;
      seen.add(translated);
      const addr = ip(translated);
      expect(addr >= ip("127.255.255.254") && addr <= ip("128.0.0.1")).toBe(true);
    }
    expect([...seen].sort()).toEqual(["127.255.255.254", "127.255.255.255", "128.0.0.0", "128.0.0.1"]);
  });

  it("a source already in the range is kept (in_range), one just outside it is moved into it", () => {
    const f = makeFixture();
    const range = natRange(ip("127.255.255.255"), ip("128.0.0.1"));
    for (const src of ["127.255.255.255", "128.0.0.0", "128.0.0.1"]) {
      expect(translatedSource(f, snat(f, IPPROTO_TCP, src, 4000, "203.0.113.9", 443, range))).toBe(`${src}:4000`);
    }
    for (const src of ["127.255.255.254", "128.0.0.2", "255.255.255.254", "0.0.0.1"]) {
      const [addr] = translatedSource(f, snat(f, IPPROTO_TCP, src, 4000, "203.0.113.9", 443, range)).split(":");
      expect(["127.255.255.255", "128.0.0.0", "128.0.0.1"]).toContain(addr);
    }
  });

  it("a second connection from the same source reuses its mapping (find_appropriate_src) at 255.255.255.254", () => {
    const f = makeFixture();
    const range = natRange(ip("198.51.100.2"), ip("198.51.100.9"));
    const first = translatedSource(f, snat(f, IPPROTO_UDP, "255.255.255.254", 6000, "203.0.113.1", 53, range));
    const second = translatedSource(f, snat(f, IPPROTO_UDP, "255.255.255.254", 6000, "203.0.113.2", 53, range));
    expect(second).toBe(first);
    expect(f.nat.counters.sourceMapReused).toBe(1);
  });

  it("when 198.51.100.2:1024-1026 are taken, the port search finds the one left and then refuses", () => {
    const f = makeFixture();
    const range = natRange(ip("198.51.100.2"), ip("198.51.100.2"), 1024, 1026);
    const ports = [0, 1, 2].map((i) => translatedSource(f, snat(f, IPPROTO_UDP, `172.16.0.${3 + i}`, 5000, "203.0.113.10", 53, range)));
    expect(ports.sort()).toEqual(["198.51.100.2:1024", "198.51.100.2:1025", "198.51.100.2:1026"]);
    expect(snat(f, IPPROTO_UDP, "172.16.0.9", 5000, "203.0.113.10", 53, range)).toBe(-1);
  });
});

describe("no allocation with addresses of 128.0.0.0 and up", () => {
  it("conntrack lookups and inserts, SNAT with a port search, at 172.16/12 -> 203.0.113/24", () => {
    const f = makeFixture(1 << 12);
    const { table, nat, clock } = f;
    // A tenant 172.16.0.3 behind 198.51.100.2, all of whose ports 1024-1088 are taken but one at a time.
    const range = natRange(ip("198.51.100.2"), ip("198.51.100.2"), 1024, 1088);
    const src = ip("172.16.0.3") | 0;
    const dst = ip("203.0.113.10") | 0;
    const outside = ip("198.51.100.2") | 0;
    let found = 0;
    const perCall = bytesPerCall((i) => {
      const sport = 1024 + (i & 63);
      // The reply of an earlier connection, then a new connection from the same port.
      if (table.lookup(IPPROTO_UDP, dst, outside, 53, sport) >= 0) found++;
      const id = table.create(IPPROTO_UDP, src, dst, sport, 53);
      if (id < 0) return;
      table.refresh(id, 30, clock.now());
      if (!nat.setupNat(id, Manip.Src, range) || !table.confirm(id)) table.release(id);
      if ((i & 1023) === 1023) {
        clock.advance(60);
        table.gc(4096);
      }
    }, 100_000);
    expect(found).toBeGreaterThan(0);
    expect(nat.counters.searches).toBeGreaterThan(0);
    // A heap number is 16 bytes; one per call would show as 16.
    expect(perCall).toBeLessThan(1);
  });

  it("route lookups of addresses above 128.0.0.0 in a table of 128.0.0.0/1, 198.51.100.0/24 and 255.255.255.254/31", () => {
    const lpm = new Lpm4();
    lpm.insert(0, 1, 1);
    lpm.insert(ip("128.0.0.0"), 1, 2);
    lpm.insert(ip("198.51.100.0"), 24, 3);
    lpm.insert(ip("255.255.255.254"), 31, 4);
    const addrs = Int32Array.from(BOUNDARY.concat(["198.51.100.77", "198.51.101.0"]), (a) => ip(a) | 0);
    let sum = 0;
    const perCall = bytesPerCall((i) => {
      sum += lpm.lookup(addrs[i % addrs.length]!);
    });
    expect(sum).toBeGreaterThan(0);
    expect(perCall).toBeLessThan(1);
  });
});

describe("longest-prefix match and hashes give the same answer for an address's int32 bits", () => {
  it("0.0.0.1 and 127.255.255.255 fall in 0.0.0.0/1; 128.0.0.0 and 128.0.0.1 in 128.0.0.0/1; 255.255.255.254 in its /31", () => {
    const lpm = new Lpm4();
    lpm.insert(0, 1, 1);
    lpm.insert(ip("128.0.0.0"), 1, 2);
    lpm.insert(ip("255.255.255.254"), 31, 4);
    const expected = [1, 1, 2, 2, 4];
    expect(BOUNDARY.map((a) => lpm.lookup(ip(a)))).toEqual(expected);
    expect(BOUNDARY.map((a) => lpm.lookup(ip(a) | 0))).toEqual(expected);
  });

  it("hsiphashBits is hsiphash as int32, and the words may be given either way", () => {
    const rng = new XorShift32(5);
    for (let i = 0; i < 1000; i++) {
      const [k0, k1, a, b] = [rng.next(), rng.next(), ip(BOUNDARY[i % 5]!) ^ (i & 1), rng.next()];
      const h = hsiphash(k0, k1, 3, a >>> 0, b >>> 0, 17, 0);
      expect(hsiphashBits(k0, k1, 3, a | 0, b | 0, 17, 0)).toBe(h | 0);
      expect(hsiphashBits(k0 | 0, k1 | 0, 3, a >>> 0, b, 17, 0) >>> 0).toBe(h);
    }
  });

  it("conntrack finds a connection between 255.255.255.254 and 0.0.0.1 in both directions, given uint32s or int32 bits", () => {
    const f = makeFixture();
    const id = f.table.create(IPPROTO_UDP, ip("255.255.255.254"), ip("0.0.0.1"), 7, 9);
    f.table.refresh(id, 30, f.clock.now());
    expect(f.table.confirm(id)).toBe(true);
    expect(f.table.lookup(IPPROTO_UDP, ip("255.255.255.254"), ip("0.0.0.1"), 7, 9)).toBe(id << 1);
    expect(f.table.lookup(IPPROTO_UDP, -2, 1, 7, 9)).toBe(id << 1);
    expect(f.table.lookup(IPPROTO_UDP, 1, ip("255.255.255.254"), 9, 7)).toBe((id << 1) | 1);
    expect([f.table.origSrc(id), f.table.tupleSrcBits(id, 0)]).toEqual([0xfffffffe, -2]);
  });
});
