/**
 * The keyed hash every table uses: HalfSipHash-1-3 (Aumasson and Bernstein's SipHash family,
 * 32-bit words, 64-bit key, 32-bit output), bit for bit the kernel's `hsiphash_Nu32` on 32-bit
 * machines (include/linux/siphash.h, lib/siphash.c, tested against lib/siphash_kunit.c's vectors).
 *
 * Why keyed, and why not a seeded MurmurHash: a table whose hash anyone can compute can be filled
 * with tuples that all land in one bucket, turning every lookup into a walk of that chain. A random
 * seed does not save MurmurHash3: it has seed-independent multicollisions (Aumasson, Bernstein,
 * Boßlet, "Hash-flooding DoS reloaded", 2012), which is why SipHash exists and why Linux keys its
 * conntrack hash (nf_conntrack_core.c hash_conntrack_raw), NAT by-source hash and port offsets
 * (nf_nat_core.c) with siphash and a random boot-time key. HalfSipHash-1-3 is what Linux calls
 * hsiphash: a PRF strong enough for hash tables, not a MAC.
 *
 * Cost, measured by CPU time on the bench machine (AMD EPYC, Node 20): ~12 ns per conntrack tuple
 * (4 words) against ~4 ns for the seeded murmur mix it replaced; SipHash-1-3 on 64-bit lanes,
 * emulated with int32 pairs, costs about 3.6 times HalfSipHash-1-3, and a fully unrolled
 * HalfSipHash was slower than this loop. It runs once per packet (the conntrack bucket), for a
 * whole batch at once in the dataplane's prefetch (core/hash-lanes.ts: eight tuples in
 * WebAssembly SIMD lanes, ~4 ns a tuple; `hsiphash4Batch` below where that is missing);
 * int32 arithmetic only, no allocation.
 *
 * Keys are drawn when a router starts (`hashKeyFrom` a CryptoRng, see rng.ts and
 * dataplane/from-config.ts); tests and offline traces derive them from a seeded Rng so their
 * results are reproducible.
 */
import type { Rng } from "./rng.js";

/** A 64-bit HalfSipHash key as two int32 words (Linux hsiphash_key_t on 32-bit machines). */
export interface HashKey {
  readonly k0: number;
  readonly k1: number;
}

/** The key a seeded Rng gives (tests, traces) or a CryptoRng (a running router): two draws. */
export function hashKeyFrom(rng: Rng): HashKey {
  return { k0: rng.next() | 0, k1: rng.next() | 0 };
}

/**
 * HalfSipHash-1-3 of `words` (0 to 4) little-endian 32-bit words `a, b, c, d` (unused ones
 * ignored), i.e. of the 4 * `words` bytes they hold: Linux hsiphash_{1,2,3,4}u32. Returns a uint32.
 *
 * One loop of 4 + `words` SipRounds: one per message word (v3 ^= m; round; v0 ^= m), one for the
 * final block (the byte length in the top byte), then, after v2 ^= 0xff, the three finalisation
 * rounds. Written once rather than unrolled: V8 compiles the loop to code as fast as the unrolled
 * form and much smaller.
 */
export function hsiphash(k0: number, k1: number, words: number, a: number, b: number, c: number, d: number): number {
  return hsiphashBits(k0, k1, words, a, b, c, d) >>> 0;
}

/**
 * `hsiphash` as int32 bits, for per-packet callers: a uint32 of 2^31 or more returned from a call
 * that is not inlined is a heap number in V8 (allocated), an int32 never is. `& mask` and the
 * other bit operations give the same result on either form. Words may be int32 or uint32.
 */
export function hsiphashBits(k0: number, k1: number, words: number, a: number, b: number, c: number, d: number): number {
  let v0 = k0 | 0;
  let v1 = k1 | 0;
  let v2 = 0x6c796765 ^ k0; // "lyge", HalfSipHash's initial v2 and v3 ("tedb")
  let v3 = 0x74656462 ^ k1;
  const last = words + 3;
  for (let i = 0; i <= last; i++) {
    // message word i, then the final block (length in bytes << 24), then nothing
    const m = i < words ? (i === 0 ? a : i === 1 ? b : i === 2 ? c : d) : i === words ? words << 26 : 0;
    v3 ^= m;
    // HSIPROUND (lib/siphash.c)
    v0 = (v0 + v1) | 0;
    v1 = (v1 << 5) | (v1 >>> 27);
    v1 ^= v0;
    v0 = (v0 << 16) | (v0 >>> 16);
    v2 = (v2 + v3) | 0;
    v3 = (v3 << 8) | (v3 >>> 24);
    v3 ^= v2;
    v0 = (v0 + v3) | 0;
    v3 = (v3 << 7) | (v3 >>> 25);
    v3 ^= v0;
    v2 = (v2 + v1) | 0;
    v1 = (v1 << 13) | (v1 >>> 19);
    v1 ^= v2;
    v2 = (v2 << 16) | (v2 >>> 16);
    v0 ^= m;
    if (i === words) v2 ^= 0xff;
  }
  return v1 ^ v3;
}

/** Keyed hash of two words (Linux hsiphash_2u32). uint32. */
export function hash2(key: HashKey, a: number, b: number): number {
  return hsiphash(key.k0, key.k1, 2, a, b, 0, 0);
}

/** Keyed hash of three words (Linux hsiphash_3u32). uint32. */
export function hash3(key: HashKey, a: number, b: number, c: number): number {
  return hsiphash(key.k0, key.k1, 3, a, b, c, 0);
}

/** Keyed hash of four words (Linux hsiphash_4u32). uint32. */
export function hash4(key: HashKey, a: number, b: number, c: number, d: number): number {
  return hsiphash(key.k0, key.k1, 4, a, b, c, d);
}

/**
 * `hsiphash(k0, k1, 4, ...) & mask` of `count` tuples of four words each, `tuples[4k .. 4k+3]`,
 * into `out[k]`: the same values, two messages at a time with their rounds interleaved. One
 * HalfSipHash is a chain of dependent additions, rotations and xors (~100 instructions, each
 * waiting for the one before); two independent chains side by side keep more of the CPU's ALUs
 * busy, so a batch of tuples costs less than one call per tuple (~11 ns a tuple). The prefetch's
 * HashLanes runs it where WebAssembly SIMD is missing. int32 arithmetic only, no allocation.
 */
export function hsiphash4Batch(k0: number, k1: number, tuples: Int32Array, count: number, out: Int32Array, mask: number): void {
  k0 |= 0;
  k1 |= 0;
  let k = 0;
  for (; k + 1 < count; k += 2) {
    const at = k << 2;
    let v0 = k0;
    let v1 = k1;
    let v2 = 0x6c796765 ^ k0;
    let v3 = 0x74656462 ^ k1;
    let u0 = k0;
    let u1 = k1;
    let u2 = v2;
    let u3 = v3;
    for (let i = 0; i <= 7; i++) {
      // message word i of each tuple, then the final block (16 bytes: 16 << 24), then nothing
      const m = i < 4 ? tuples[at + i]! : i === 4 ? 16 << 24 : 0;
      const n = i < 4 ? tuples[at + 4 + i]! : m;
      v3 ^= m;
      u3 ^= n;
      v0 = (v0 + v1) | 0;
      u0 = (u0 + u1) | 0;
      v1 = (v1 << 5) | (v1 >>> 27);
      u1 = (u1 << 5) | (u1 >>> 27);
      v1 ^= v0;
      u1 ^= u0;
      v0 = (v0 << 16) | (v0 >>> 16);
      u0 = (u0 << 16) | (u0 >>> 16);
      v2 = (v2 + v3) | 0;
      u2 = (u2 + u3) | 0;
      v3 = (v3 << 8) | (v3 >>> 24);
      u3 = (u3 << 8) | (u3 >>> 24);
      v3 ^= v2;
      u3 ^= u2;
      v0 = (v0 + v3) | 0;
      u0 = (u0 + u3) | 0;
      v3 = (v3 << 7) | (v3 >>> 25);
      u3 = (u3 << 7) | (u3 >>> 25);
      v3 ^= v0;
      u3 ^= u0;
      v2 = (v2 + v1) | 0;
      u2 = (u2 + u1) | 0;
      v1 = (v1 << 13) | (v1 >>> 19);
      u1 = (u1 << 13) | (u1 >>> 19);
      v1 ^= v2;
      u1 ^= u2;
      v2 = (v2 << 16) | (v2 >>> 16);
      u2 = (u2 << 16) | (u2 >>> 16);
      v0 ^= m;
      u0 ^= n;
      if (i === 4) {
        v2 ^= 0xff;
        u2 ^= 0xff;
      }
    }
    out[k] = (v1 ^ v3) & mask;
    out[k + 1] = (u1 ^ u3) & mask;
  }
  if (k < count) {
    const at = k << 2;
    out[k] = hsiphashBits(k0, k1, 4, tuples[at]!, tuples[at + 1]!, tuples[at + 2]!, tuples[at + 3]!) & mask;
  }
}
