/**
 * Randomness, injected: `XorShift32` (seeded, reproducible) for tests, offline traces and
 * benchmarks; `CryptoRng` (the operating system's CSPRNG through crypto.getRandomValues) for a
 * running router, whose hash keys (hash.ts) and NAT port choices must not be predictable from the
 * source (Linux: get_random_once for nf_conntrack_hash_rnd, get_random_u16 for NAT port offsets).
 */
import { getRandomValues } from "node:crypto";

export interface Rng {
  /** Uniform uint32. */
  next(): number;
}

/** A seeded xorshift32 generator: port searches and tests are reproducible. */
export class XorShift32 implements Rng {
  private state: number;
  constructor(seed = 0x9e3779b9) {
    this.state = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }
}

/**
 * Uniform uint32s from crypto.getRandomValues, drawn 256 at a time into a buffer it owns (no
 * allocation per call; `--random` port searches call it once per NEW connection).
 */
export class CryptoRng implements Rng {
  private readonly buffer = new Uint32Array(256);
  private used = this.buffer.length;

  next(): number {
    if (this.used === this.buffer.length) {
      getRandomValues(this.buffer);
      this.used = 0;
    }
    return this.buffer[this.used++]!;
  }
}
