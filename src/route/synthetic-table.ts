/**
 * Synthetic "full Internet table" prefixes for tests and benchmarks: seeded, with prefix lengths
 * distributed roughly like the IPv4 default-free zone (about 60% /24, most of the rest /16-/23,
 * a few /8-/15) plus a share of /25-/32 like those a provider's FIB carries for its own links and
 * loopbacks (clustered into a limited set of /24s, as they are in practice).
 */
import type { Rng } from "../core/rng.js";

export interface SyntheticPrefix {
  readonly prefix: number;
  readonly prefixLength: number;
  readonly value: number;
}

/** Percent of prefixes per length (index = length). */
const LENGTH_WEIGHTS: ReadonlyArray<[number, number]> = [
  [8, 0.002], [9, 0.002], [10, 0.004], [11, 0.01], [12, 0.03], [13, 0.06], [14, 0.12],
  [15, 0.2], [16, 1.3], [17, 0.8], [18, 1.3], [19, 2.3], [20, 4.0], [21, 4.5], [22, 11.5],
  [23, 9.5], [24, 60.0],
  [25, 0.5], [26, 0.5], [27, 0.5], [28, 0.5], [29, 0.6], [30, 0.8], [31, 0.2], [32, 0.8],
];

/**
 * `count` distinct prefixes in 1.0.0.0-223.255.255.255, values uniform in 0..valueCount-1.
 * Longer-than-/24 prefixes fall into about count/50 distinct /24s.
 */
export function syntheticInternetTable(count: number, rng: Rng, valueCount = 256): SyntheticPrefix[] {
  const total = LENGTH_WEIGHTS.reduce((sum, [, weight]) => sum + weight, 0);
  const cumulative: number[] = [];
  let running = 0;
  for (const [, weight] of LENGTH_WEIGHTS) {
    running += weight / total;
    cumulative.push(running);
  }
  const denseCount = Math.max(1, Math.floor(count / 50));
  const dense24s = new Uint32Array(denseCount);
  for (let i = 0; i < denseCount; i++) dense24s[i] = randomUnicast(rng) >>> 8;

  const seen = new Set<number>();
  const out: SyntheticPrefix[] = [];
  while (out.length < count) {
    const pick = rng.next() / 0x100000000;
    let index = 0;
    while (index < cumulative.length - 1 && pick >= cumulative[index]!) index++;
    const prefixLength = LENGTH_WEIGHTS[index]![0];
    let addr: number;
    if (prefixLength > 24) {
      addr = ((dense24s[rng.next() % denseCount]! << 8) | (rng.next() & 0xff)) >>> 0;
    } else {
      addr = randomUnicast(rng);
    }
    const prefix = (addr & (0xffffffff << (32 - prefixLength))) >>> 0;
    const key = prefix * 64 + prefixLength;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ prefix, prefixLength, value: rng.next() % valueCount });
  }
  return out;
}

/** A random address in 1.0.0.0-223.255.255.255 (unicast, class A-C space). */
function randomUnicast(rng: Rng): number {
  return (0x01000000 + (rng.next() % (0xe0000000 - 0x01000000))) >>> 0;
}
