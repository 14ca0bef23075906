/**
 * The seeded 32-bit hash the tables use (MurmurHash3's word mix and finaliser). Linux keys its
 * conntrack, NAT and fragment hashes with random boot-time seeds (siphash, jhash); qnat takes the
 * seed from its injected Rng so runs are reproducible. Allocation-free, int32 arithmetic only.
 */

/** Mixes one 32-bit word into the running hash `h`. */
export function hashMix(h: number, word: number): number {
  let k = Math.imul(word, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** The final avalanche; returns a uint32. */
export function hashFinal(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
