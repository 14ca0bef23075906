import { describe, expect, it } from "vitest";
import { BATCH_LANES_TCP, BatchLanes } from "../../src/core/batch-lanes.js";
import { PacketBatch } from "../../src/core/batch.js";
import { hsiphash4Batch } from "../../src/core/hash.js";
import { XorShift32 } from "../../src/core/rng.js";
import { buildPacket } from "../../src/wire/build.js";
import { onesComplementSum } from "../../src/wire/checksum.js";

/** The kernel sums little-endian words: its result, byte-swapped, is RFC 1071's (big-endian) sum. */
function swapped(sum: number): number {
  return ((sum & 0xff) << 8) | (sum >>> 8);
}

function word(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) | 0;
}

/** A random packet, often broken: options, lies in the total length or version, truncation. */
function randomPacket(rng: XorShift32, room: number): { bytes: Uint8Array; length: number } {
  const protocol = (["udp", "tcp", "icmp"] as const)[rng.next() % 3]!;
  const payload = new Uint8Array(rng.next() % 4 === 0 ? rng.next() % 1500 : rng.next() % 80);
  for (let i = 0; i < payload.length; i++) payload[i] = rng.next() & 0xff;
  const options = rng.next() % 8 === 0 ? new Uint8Array([1, 1, 1, 1]) : undefined;
  const bytes = buildPacket({ protocol, src: "10.0.0.3", dst: `203.0.113.${rng.next() & 0xff}`, sport: rng.next() & 0xffff, dport: rng.next() & 0xffff, payload, options });
  const r = rng.next() % 10;
  if (r === 0) bytes[0] = 0x46; // version 4, IHL 6 without the option bytes
  if (r === 1) bytes[0] = 0x65;
  if (r === 2) bytes.set([rng.next() & 0xff, rng.next() & 0xff], 2); // any total length
  if (r === 3) bytes.set([0, rng.next() % 20], 2); // below the header
  let length = Math.min(bytes.length, room);
  if (r === 4) length = rng.next() % (length + 1); // cut short (the total length stays)
  return { bytes, length };
}

describe("BatchLanes: a receive batch's L4 sums, tuples and buckets in WebAssembly SIMD", () => {
  it.each([
    [0, 2048],
    [10, 2048],
    [24, 2048],
    [14, 128],
  ])("headroom %i, %i-byte slots: every sum, tuple and bucket equals the JavaScript reference", (headroom, slotSize) => {
    const capacity = 64;
    const batch = new PacketBatch(capacity, slotSize, headroom, { lanes: true });
    const lanes = batch.lanes;
    // Node 20's V8 has WebAssembly SIMD: no lanes here would be a broken runtime.
    expect(lanes).not.toBeNull();
    expect(batch.data).toBe(lanes!.data);
    const data = batch.data;
    const end = data.length;
    const rng = new XorShift32(7 + headroom + slotSize);
    for (let round = 0; round < 60; round++) {
      // stale bytes of earlier rounds stay in the slots past each packet, as in a real batch
      const count = 2 + (rng.next() % (capacity - 1));
      for (let i = 0; i < count; i++) {
        const off = batch.offsetOf(i);
        const { bytes, length } = randomPacket(rng, slotSize - headroom);
        data.set(bytes.subarray(0, length), off);
      }
      const n = lanes!.prepare(count, slotSize, headroom);
      const wantTuples: number[] = [];
      const wantSlots: number[] = [];
      for (let i = 0; i < count; i++) {
        const off = batch.offsetOf(i);
        const fits = off + 24 <= end && data[off] === 0x45;
        const total = (data[off + 2]! << 8) | data[off + 3]!;
        const summed = fits && total >= 20 && off + total <= end;
        expect(lanes!.sums[i], `round ${round} packet ${i}`).toBe(summed ? swapped(onesComplementSum(data, off + 20, total - 20)) : -1);
        const protocol = data[off + 9]!;
        if (fits && (protocol === 6 || protocol === 17)) {
          wantTuples.push(protocol, word(data, off + 12), word(data, off + 16), word(data, off + 20));
          wantSlots.push(protocol === 6 ? i | BATCH_LANES_TCP : i);
        }
      }
      expect(n).toBe(wantSlots.length);
      expect(Array.from(lanes!.tuples.subarray(0, 4 * n))).toEqual(wantTuples);
      expect(Array.from(lanes!.slots.subarray(0, n))).toEqual(wantSlots);
      const k0 = rng.next() | 0;
      const k1 = rng.next() | 0;
      const mask = (1 << (1 + (rng.next() % 20))) - 1;
      lanes!.hash(k0, k1, n, mask);
      const want = new Int32Array(n);
      hsiphash4Batch(k0, k1, lanes!.tuples, n, want, mask);
      expect(Array.from(lanes!.hashes.subarray(0, n))).toEqual(Array.from(want));
    }
  });

  it("sums a 64 KiB segment of 0xff without overflowing a lane, and all zeros as 0, not 0xffff", () => {
    const slot = 65_536 + 16;
    const lanes = BatchLanes.create(2 * slot, 2)!;
    expect(lanes).not.toBeNull();
    const data = lanes.data;
    data.fill(0xff);
    for (const off of [0, slot]) data.set([0x45, 0, 0xff, 0xff], off); // total 65535
    expect(lanes.prepare(2, slot, 0)).toBe(0); // protocol 0xff: no tuple
    expect(Array.from(lanes.sums.subarray(0, 2), swapped)).toEqual([onesComplementSum(data, 20, 65_515), onesComplementSum(data, slot + 20, 65_515)]);
    data.fill(0);
    for (const off of [0, slot]) data.set([0x45, 0, 0, 20 + 33], off);
    lanes.prepare(2, slot, 0);
    expect(Array.from(lanes.sums.subarray(0, 2))).toEqual([0, 0]);
  });

  it("a PacketBatch keeps its packets in the kernels' memory only when asked to", () => {
    expect(new PacketBatch(8, 256, 10).lanes).toBeNull();
    const asked = new PacketBatch(8, 256, 10, { lanes: true });
    expect(asked.data.length).toBe(8 * 256);
    expect(asked.data.byteOffset).toBe(0);
  });
});
