import { describe, expect, it } from "vitest";
import { hash2, hash3, hash4, hashKeyFrom, hsiphash, hsiphash4Batch } from "../../src/core/hash.js";
import { XorShift32 } from "../../src/core/rng.js";

/**
 * The reference HalfSipHash, written from the paper's description rather than from hash.ts: any
 * byte length, any number of compression (c) and finalisation (d) rounds, 32-bit output.
 * Slow and plain on purpose.
 */
function referenceHalfSipHash(key: Uint8Array, message: Uint8Array, c: number, d: number): number {
  const le32 = (bytes: Uint8Array, at: number): number => (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
  const rotl = (x: number, b: number): number => ((x << b) | (x >>> (32 - b))) >>> 0;
  const add = (x: number, y: number): number => (x + y) >>> 0;
  const k0 = le32(key, 0);
  const k1 = le32(key, 4);
  const v = [k0, k1, (0x6c796765 ^ k0) >>> 0, (0x74656462 ^ k1) >>> 0];
  const sipRound = (): void => {
    v[0] = add(v[0]!, v[1]!);
    v[1] = rotl(v[1]!, 5);
    v[1] = (v[1]! ^ v[0]!) >>> 0;
    v[0] = rotl(v[0]!, 16);
    v[2] = add(v[2]!, v[3]!);
    v[3] = rotl(v[3]!, 8);
    v[3] = (v[3]! ^ v[2]!) >>> 0;
    v[0] = add(v[0]!, v[3]!);
    v[3] = rotl(v[3]!, 7);
    v[3] = (v[3]! ^ v[0]!) >>> 0;
    v[2] = add(v[2]!, v[1]!);
    v[1] = rotl(v[1]!, 13);
    v[1] = (v[1]! ^ v[2]!) >>> 0;
    v[2] = rotl(v[2]!, 16);
  };
  const compress = (m: number): void => {
    v[3] = (v[3]! ^ m) >>> 0;
    for (let i = 0; i < c; i++) sipRound();
    v[0] = (v[0]! ^ m) >>> 0;
  };
  const whole = message.length - (message.length % 4);
  for (let at = 0; at < whole; at += 4) compress(le32(message, at));
  // last block: the remaining bytes, the length's low byte on top
  let last = (message.length & 0xff) << 24;
  for (let i = 0; i < message.length % 4; i++) last |= message[whole + i]! << (8 * i);
  compress(last >>> 0);
  v[2] = (v[2]! ^ 0xff) >>> 0;
  for (let i = 0; i < d; i++) sipRound();
  return (v[1]! ^ v[3]!) >>> 0;
}

/** Bytes 0, 1, ..., n-1: the message of the published vectors. */
const counting = (n: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => i);
const KEY_BYTES = counting(8); // key 00 01 .. 07: k0 = 0x03020100, k1 = 0x07060504

/** Linux lib/siphash_kunit.c, test_vectors_hsiphash for BITS_PER_LONG == 32: HalfSipHash-1-3. */
const HSIPHASH_1_3 = [
  0x5814c896, 0xe7e864ca, 0xbc4b0e30, 0x01539939, 0x7e059ea6, 0x88e3d89b, 0xa0080b65, 0x9d38d9d6, 0x577999b1, 0xc839caed, 0xe4fa32cf, 0x959246ee,
  0x6b28096c, 0x66dd9cd6, 0x16658a7c, 0xd0257b04, 0x8b31d501, 0x2b1cd04b, 0x06712339, 0x522aca67, 0x911bb605, 0x90a65f0e, 0xf826ef7b, 0x62512deb,
  0x57150ad7, 0x5d473507, 0x1ec47442, 0xab64afd3, 0x0a4100d0, 0x6d2ce652, 0x2331b6a3, 0x08d8791a, 0xbc6dda8d, 0xe0f6c934, 0xb0652033, 0x9b9851cc,
  0x7c46fb7f, 0x732ba8cb, 0xf142997a, 0xfcc9aa1b, 0x05327eb2, 0xe110131c, 0xf9e5e7c0, 0xa7d708a6, 0x11795ab1, 0x65671619, 0x9f5fff91, 0xd89c5267,
  0x007783eb, 0x95766243, 0xab639262, 0x9c7e1390, 0xc368dda6, 0x38ddc455, 0xfa13d379, 0x979ea4e8, 0x53ecd77e, 0x2ee80657, 0x33dbb66a, 0xae3f0577,
  0x88b4c4cc, 0x3e7f480b, 0x74c1ebf8, 0x87178304,
];

/** The reference implementation's vectors_hsip32 (github.com/veorq/SipHash): HalfSipHash-2-4, read little-endian. */
const HALFSIPHASH_2_4 = [
  0x5b9f35a9, 0xb85a4727, 0x03a662fa, 0x04e7fe8a, 0x89466e2a, 0x69b6fac5, 0x23fc6358, 0xc563cf8b, 0x8f84b8d0, 0x79e706f8, 0x3479b094, 0x50300808,
  0x2f87f057, 0xff63e677, 0x7cf8ffd6, 0x972bfe74, 0x84acb5d9, 0x5b6474c4, 0x9b8d5b46, 0x87e3ef7b, 0x45104de3, 0xb3623f61, 0xfe67f370, 0xbdb8ade6,
  0x630c4027, 0x75787826, 0x5f7b564f, 0x69e6b03a, 0x004064b0, 0xb40f67ff, 0x8b339e50, 0x1a9f585d, 0x1221e7fe, 0x59327533, 0x8c4f436a, 0x29b728fe,
  0xecc65ce7, 0x548d7e69, 0x0f8b6863, 0xb4620b65, 0x4018bcb6, 0x0545075d, 0x2efd4224, 0x3a86b77b, 0x48d50577, 0xb10852d7, 0xc899d4b6, 0x2e209208,
  0xe32ce169, 0xe580b58d, 0xc6649736, 0x04026e01, 0xd4f3853b, 0xbe66dbfe, 0x3a2a691e, 0xc08489c6, 0x40b9c5a5, 0x8ce8e99b, 0x4081bc7d, 0xc58e077c,
  0x736ce7d4, 0xb9cb8f42, 0x7a9983bd, 0x744aea59,
];

describe("the reference HalfSipHash (checked first, so it can judge the fast one)", () => {
  it("gives the reference implementation's 64 HalfSipHash-2-4 vectors", () => {
    expect(HALFSIPHASH_2_4.map((_, n) => referenceHalfSipHash(KEY_BYTES, counting(n), 2, 4))).toEqual(HALFSIPHASH_2_4);
  });

  it("gives Linux's 64 hsiphash vectors (HalfSipHash-1-3, 32-bit machines)", () => {
    expect(HSIPHASH_1_3.map((_, n) => referenceHalfSipHash(KEY_BYTES, counting(n), 1, 3))).toEqual(HSIPHASH_1_3);
  });
});

describe("hsiphash: HalfSipHash-1-3 over 32-bit words, as Linux hsiphash_Nu32", () => {
  const k0 = 0x03020100;
  const k1 = 0x07060504;

  it("matches siphash_kunit.c's hsiphash_1u32 .. hsiphash_4u32 checks (and the empty message)", () => {
    expect(hsiphash(k0, k1, 0, 0, 0, 0, 0)).toBe(HSIPHASH_1_3[0]);
    expect(hsiphash(k0, k1, 1, 0x03020100, 0, 0, 0)).toBe(HSIPHASH_1_3[4]);
    expect(hsiphash(k0, k1, 2, 0x03020100, 0x07060504, 0, 0)).toBe(HSIPHASH_1_3[8]);
    expect(hash2({ k0, k1 }, 0x03020100, 0x07060504)).toBe(HSIPHASH_1_3[8]);
    expect(hash3({ k0, k1 }, 0x03020100, 0x07060504, 0x0b0a0908)).toBe(HSIPHASH_1_3[12]);
    expect(hash4({ k0, k1 }, 0x03020100, 0x07060504, 0x0b0a0908, 0x0f0e0d0c)).toBe(HSIPHASH_1_3[16]);
  });

  it("equals the reference on 20,000 random keys and messages of 1 to 4 words", () => {
    const rng = new XorShift32(0x51a5);
    const key = new Uint8Array(8);
    const keyWords = new DataView(key.buffer);
    const message = new Uint8Array(16);
    const messageWords = new DataView(message.buffer);
    for (let i = 0; i < 20_000; i++) {
      const words = 1 + (i % 4);
      // Every word also comes as a signed int32 and as a uint32: the fast code must not care.
      const w = [rng.next(), rng.next() | 0, rng.next(), rng.next() | 0];
      const a = rng.next() | 0;
      const b = rng.next();
      keyWords.setUint32(0, a >>> 0, true);
      keyWords.setUint32(4, b, true);
      for (let j = 0; j < 4; j++) messageWords.setUint32(4 * j, w[j]! >>> 0, true);
      const fast = hsiphash(a, b, words, w[0]!, w[1]!, w[2]!, w[3]!);
      const reference = referenceHalfSipHash(key, message.subarray(0, 4 * words), 1, 3);
      if (fast !== reference) expect({ i, words, fast }).toEqual({ i, words, fast: reference });
    }
  });

  it("ignores the words beyond `words`, and depends on the key", () => {
    expect(hsiphash(1, 2, 2, 10, 20, 30, 40)).toBe(hsiphash(1, 2, 2, 10, 20, 0, 0));
    expect(hsiphash(1, 2, 2, 10, 20, 0, 0)).not.toBe(hsiphash(1, 3, 2, 10, 20, 0, 0));
    expect(hsiphash(1, 2, 2, 10, 20, 0, 0)).not.toBe(hsiphash(2, 2, 2, 10, 20, 0, 0));
  });
});

describe("hsiphash4Batch: a batch of four-word tuples, two hashes interleaved", () => {
  it("gives hsiphash's value of every tuple, masked, for odd and even counts and random keys", () => {
    const rng = new XorShift32(0xba7c);
    for (const count of [0, 1, 2, 3, 7, 256]) {
      const k0 = rng.next() | 0;
      const k1 = rng.next();
      const tuples = Int32Array.from({ length: count * 4 }, () => rng.next() | 0);
      const out = new Int32Array(count + 1).fill(-7);
      const mask = count === 7 ? -1 : 0xffff;
      hsiphash4Batch(k0, k1, tuples, count, out, mask);
      const expected = Array.from({ length: count }, (_, k) => hsiphash(k0, k1, 4, tuples[4 * k]!, tuples[4 * k + 1]!, tuples[4 * k + 2]!, tuples[4 * k + 3]!) & mask);
      expect([...out.subarray(0, count)]).toEqual(expected);
      // nothing past `count` is written
      expect(out[count]).toBe(-7);
    }
  });

  it("is Linux's hsiphash_4u32 on siphash_kunit.c's 16-byte vector", () => {
    const out = new Int32Array(2);
    hsiphash4Batch(0x03020100, 0x07060504, Int32Array.of(0x03020100, 0x07060504, 0x0b0a0908, 0x0f0e0d0c, 0x03020100, 0x07060504, 0x0b0a0908, 0x0f0e0d0c), 2, out, -1);
    expect([out[0]! >>> 0, out[1]! >>> 0]).toEqual([HSIPHASH_1_3[16], HSIPHASH_1_3[16]]);
  });
});

describe("hashKeyFrom", () => {
  it("takes two draws of the Rng: a seeded one gives the same key every time", () => {
    expect(hashKeyFrom(new XorShift32(7))).toEqual(hashKeyFrom(new XorShift32(7)));
    const rng = new XorShift32(7);
    const first = rng.next() | 0;
    const second = rng.next() | 0;
    expect(hashKeyFrom(new XorShift32(7))).toEqual({ k0: first, k1: second });
  });
});
