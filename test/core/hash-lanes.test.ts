import { describe, expect, it } from "vitest";
import { HashLanes } from "../../src/core/hash-lanes.js";
import { hsiphash } from "../../src/core/hash.js";
import { XorShift32 } from "../../src/core/rng.js";

/** Linux lib/siphash_kunit.c test_vectors_hsiphash[16] (BITS_PER_LONG == 32, HalfSipHash-1-3): bytes 0..15, key bytes 0..7. */
const HSIPHASH_16_BYTES = 0x8b31d501;

function expected(lanes: HashLanes, k0: number, k1: number, count: number, mask: number): number[] {
  const t = lanes.tuples;
  return Array.from({ length: count }, (_, k) => hsiphash(k0, k1, 4, t[4 * k]!, t[4 * k + 1]!, t[4 * k + 2]!, t[4 * k + 3]!) & mask);
}

describe("HashLanes: a batch of four-word tuples hashed eight at a time in WebAssembly SIMD lanes", () => {
  it("runs the SIMD module on this Node (WebAssembly SIMD is there since Node 16)", () => {
    expect(new HashLanes(256).simd).toBe(true);
    expect(new HashLanes(256, { simd: false }).simd).toBe(false);
  });

  for (const simd of [true, false]) {
    it(`gives hsiphash's value of every tuple, masked, for every count up to a full batch (${simd ? "SIMD" : "JavaScript"})`, () => {
      const rng = new XorShift32(simd ? 0x1a4e : 0x2b5f);
      const lanes = new HashLanes(256, { simd });
      for (let count = 0; count <= 256; count += count < 20 ? 1 : 29) {
        const k0 = rng.next() | 0;
        const k1 = rng.next() | 0;
        const mask = count % 3 === 0 ? -1 : 0x3ffff;
        for (let i = 0; i < count * 4; i++) lanes.tuples[i] = rng.next() | 0;
        lanes.hash(k0, k1, count, mask);
        expect([...lanes.hashes.subarray(0, count)]).toEqual(expected(lanes, k0, k1, count, mask));
      }
    });
  }

  it("is Linux's HalfSipHash-1-3 on siphash_kunit.c's 16-byte vector in every lane", () => {
    const lanes = new HashLanes(8);
    for (let k = 0; k < 8; k++) lanes.tuples.set([0x03020100, 0x07060504, 0x0b0a0908, 0x0f0e0d0c], 4 * k);
    lanes.hash(0x03020100, 0x07060504, 8, -1);
    expect([...lanes.hashes.subarray(0, 8)].map((h) => h >>> 0)).toEqual(new Array(8).fill(HSIPHASH_16_BYTES));
  });

  it("holds at least the capacity asked for, in whole turns of eight", () => {
    for (const capacity of [1, 8, 9, 256, 1000]) {
      const lanes = new HashLanes(capacity);
      expect(lanes.tuples.length).toBeGreaterThanOrEqual(capacity * 4);
      expect(lanes.tuples.length % 32).toBe(0);
      expect(lanes.hashes.length).toBe(lanes.tuples.length / 4);
    }
  });
});

describe("HashLanes when WebAssembly memory runs out", () => {
  it("falls back to the JavaScript hash, same values, and stops asking for memory", () => {
    // V8 reserves several GiB of address space per WebAssembly.Memory: hold lanes until it refuses
    const held: HashLanes[] = [];
    let lanes = new HashLanes(256);
    for (let i = 0; i < 40_000 && lanes.simd; i++) {
      held.push(lanes);
      lanes = new HashLanes(256);
    }
    expect(lanes.simd).toBe(false);
    expect(held.length).toBeGreaterThan(100);
    held.length = 0;
    // refused once: later lanes do not try again (each refusal costs a full garbage collection)
    expect(new HashLanes(256).simd).toBe(false);
    const rng = new XorShift32(0x51ed);
    for (let i = 0; i < 40; i++) lanes.tuples[i] = rng.next() | 0;
    lanes.hash(0x1234, 0x5678, 10, 0xffff);
    expect([...lanes.hashes.subarray(0, 10)]).toEqual(expected(lanes, 0x1234, 0x5678, 10, 0xffff));
  });
});
