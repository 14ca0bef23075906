import { describe, expect, it } from "vitest";
import { ChecksumLanes } from "../../src/core/checksum-lanes.js";
import { PacketBatch } from "../../src/core/batch.js";
import { XorShift32 } from "../../src/core/rng.js";
import { onesComplementSum } from "../../src/wire/checksum.js";

/** The kernel sums little-endian words: its result, byte-swapped, is RFC 1071's (big-endian) sum. */
function swapped(sum: number): number {
  return ((sum & 0xff) << 8) | (sum >>> 8);
}

function lanesOf(dataBytes: number, capacity: number): ChecksumLanes {
  const lanes = ChecksumLanes.create(dataBytes, capacity);
  // Node 20's V8 has WebAssembly SIMD: no memory or no SIMD here would be a broken runtime.
  expect(lanes).not.toBeNull();
  return lanes!;
}

describe("ChecksumLanes: a batch's L4 sums in WebAssembly SIMD", () => {
  it("equals RFC 1071's sum for every length 0-200 at every alignment, and for random segments up to 64 KiB", () => {
    const lanes = lanesOf(128 * 1024, 256);
    const data = lanes.data;
    const rng = new XorShift32(99);
    for (let i = 0; i < data.length; i++) data[i] = rng.next() & 0xff;
    let k = 0;
    const check = (): void => {
      lanes.sum(k);
      for (let j = 0; j < k; j++) {
        const start = lanes.ranges[2 * j]!;
        const end = lanes.ranges[2 * j + 1]!;
        expect(swapped(lanes.sums[j]!), `bytes ${start}-${end}`).toBe(onesComplementSum(data, start, end - start));
      }
      k = 0;
    };
    for (let length = 0; length <= 200; length++) {
      for (let align = 0; align < 16; align++) {
        const start = 1000 + length * 300 + align;
        lanes.ranges[2 * k] = start;
        lanes.ranges[2 * k + 1] = start + length;
        if (++k === 256) check();
      }
    }
    check();
    for (let trial = 0; trial < 512; trial++) {
      const length = rng.next() % 65_536;
      const start = rng.next() % (data.length - length);
      lanes.ranges[2 * k] = start;
      lanes.ranges[2 * k + 1] = start + length;
      if (++k === 256) check();
    }
    check();
  });

  it("a segment ending at the data's last byte reads nothing past it into the sum; 64 KiB of 0xff does not overflow a lane", () => {
    const lanes = lanesOf(65_536 + 8, 4);
    lanes.data.fill(0xff);
    lanes.ranges.set([0, 65_536, 65_536 + 1, 65_536 + 8, 65_536 + 8, 65_536 + 8, 3, 3 + 65_535]);
    lanes.sum(4);
    expect(Array.from(lanes.sums, swapped)).toEqual([
      onesComplementSum(lanes.data, 0, 65_536),
      onesComplementSum(lanes.data, 65_537, 7),
      0,
      onesComplementSum(lanes.data, 3, 65_535),
    ]);
    expect(lanes.sums[0]).toBe(0xffff);
    // all zero is 0, not 0xffff (the two differ for a checksum: RFC 1624)
    lanes.data.fill(0);
    lanes.sum(2);
    expect(Array.from(lanes.sums.subarray(0, 2))).toEqual([0, 0]);
  });

  it("a PacketBatch keeps its packets in the kernel's memory only when asked to", () => {
    const asked = new PacketBatch(8, 256, 10, { checksumLanes: true });
    expect(asked.checksumLanes).not.toBeNull();
    expect(asked.data).toBe(asked.checksumLanes!.data);
    expect(asked.data.length).toBe(8 * 256);
    expect(asked.data.buffer).toBeInstanceOf(ArrayBuffer);
    expect(new PacketBatch(8, 256, 10).checksumLanes).toBeNull();
  });
});
