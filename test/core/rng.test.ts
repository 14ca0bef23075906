import { describe, expect, it } from "vitest";
import { CryptoRng, XorShift32 } from "../../src/core/rng.js";

describe("XorShift32", () => {
  it("repeats its sequence for a seed (tests and traces are reproducible)", () => {
    const a = new XorShift32(42);
    const b = new XorShift32(42);
    const first = Array.from({ length: 10 }, () => a.next());
    expect(Array.from({ length: 10 }, () => b.next())).toEqual(first);
    expect(new Set(first).size).toBe(10);
  });
});

describe("CryptoRng", () => {
  it("gives uint32s past its 256-value buffer, different for two generators", () => {
    const a = new CryptoRng();
    const b = new CryptoRng();
    const fromA = Array.from({ length: 1000 }, () => a.next());
    const fromB = Array.from({ length: 1000 }, () => b.next());
    for (const x of fromA) expect(Number.isInteger(x) && x >= 0 && x <= 0xffffffff).toBe(true);
    // 1000 draws from 2^32 values: equal sequences have probability 2^-32000; 10 or more
    // repeated values (expected: 0.0001) below 10^-40.
    expect(fromA).not.toEqual(fromB);
    expect(new Set(fromA).size).toBeGreaterThan(990);
  });

  it("sets every bit about half the time (4096 draws: each count within 12 standard deviations)", () => {
    const rng = new CryptoRng();
    const ones = new Array<number>(32).fill(0);
    for (let i = 0; i < 4096; i++) {
      const x = rng.next();
      for (let bit = 0; bit < 32; bit++) ones[bit]! += (x >>> bit) & 1;
    }
    // mean 2048, standard deviation 32: outside 1664..2432 by chance with probability < 10^-32
    for (const count of ones) {
      expect(count).toBeGreaterThan(1664);
      expect(count).toBeLessThan(2432);
    }
  });
});
