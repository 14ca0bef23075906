/**
 * The main thread's side of a capture with workers (control/worker-capture.ts RemoteCapture):
 * the workers' Enhanced Packet Blocks join the main thread's in time order, the count holds for
 * them all, a chunk past the bound is counted lost for its worker, and the statistics add up.
 */
import { describe, expect, it } from "vitest";
import { BLOCK_ENHANCED_PACKET, LINKTYPE_IPV4, enhancedPacketBlock } from "../../src/io/pcapng.js";
import { MAX_QUEUED_BYTES, RemoteCapture, STALE_MS } from "../../src/control/worker-capture.js";
import { readPcapng } from "../support/pcapng-reader.js";
import { captureHeader } from "../../src/control/capture.js";

/** A run of Enhanced Packet Blocks: one per [interface, microseconds, first byte]. */
function run(packets: readonly (readonly [number, number, number])[]): Buffer {
  return Buffer.concat(packets.map(([iface, time, byte]) => enhancedPacketBlock(iface, time, Uint8Array.of(byte, 0, 0, 0), 0, 4, `packet ${byte}`)));
}

function chunk(blocks: Buffer, last = false, seen = [0, 0], lost = [0, 0], through = Infinity) {
  const copy = new ArrayBuffer(blocks.length);
  new Uint8Array(copy).set(blocks);
  return { type: "capture-chunk" as const, id: 7, blocks: copy, seen, lost, last, through };
}

const header = captureHeader([
  { legIndex: 0, port: "qr", leg: "wire", name: "qr", description: "qr", linkType: LINKTYPE_IPV4 },
  { legIndex: 2, port: "qg", leg: "wire", name: "qg", description: "qg", linkType: LINKTYPE_IPV4 },
]);

/** The packets of merged blocks as [interface, time, first byte, comment]. */
function packetsOf(blocks: readonly { bytes: Buffer }[]) {
  const read = readPcapng(Buffer.concat([...header.map((b) => b.bytes), ...blocks.map((b) => b.bytes)]));
  return read.packets.map((p) => [p.interfaceId, Number(p.timestamp), p.data[0], p.comments[0]]);
}

describe("RemoteCapture: the workers' packets in the one file", () => {
  it("merges the main thread's packets and worker 1's in time order, with their interfaces and comments", () => {
    const remote = new RemoteCapture(7, [1], 2);
    remote.received(1, chunk(run([[1, 150, 2], [0, 300, 4]])));
    const merged = remote.merge([{ type: BLOCK_ENHANCED_PACKET, bytes: run([[0, 100, 1], [1, 200, 3]]) }], Infinity);
    expect(merged.packets).toBe(4);
    expect(merged.fromWorkers).toBe(2);
    expect(packetsOf(merged.blocks)).toEqual([
      [0, 100, 1, "packet 1"],
      [1, 150, 2, "packet 2"],
      [1, 200, 3, "packet 3"],
      [0, 300, 4, "packet 4"],
    ]);
    expect(remote.captured).toBe(2);
    expect(remote.complete).toBe(false);
  });

  it("a count of 3 keeps the 3 oldest of every thread's packets", () => {
    const remote = new RemoteCapture(7, [1], 2);
    remote.received(1, chunk(run([[0, 10, 1], [0, 40, 4]])));
    const merged = remote.merge([{ type: BLOCK_ENHANCED_PACKET, bytes: run([[1, 20, 2], [1, 30, 3]]) }], 3);
    expect(packetsOf(merged.blocks).map((p) => p[2])).toEqual([1, 2, 3]);
    expect(merged.packets).toBe(3);
  });

  it("a reply the main thread forwarded waits for the request a worker forwarded before it: written once the worker has sent everything older", () => {
    let now = 0;
    const remote = new RemoteCapture(7, [1], 2, () => now);
    remote.received(1, chunk(Buffer.alloc(0), false, [0, 0], [0, 0], 50));
    // The main thread drained everything up to 120, the reply at 100; worker 1 has only said "up to 50".
    const early = remote.merge([{ type: BLOCK_ENHANCED_PACKET, bytes: run([[0, 100, 2]]) }], Infinity, { drainedAt: 120, caughtUp: true });
    expect(early.packets).toBe(0);
    now = 10;
    remote.received(1, chunk(run([[1, 80, 1]]), false, [1, 0], [0, 0], 130));
    const merged = remote.merge([], Infinity, { drainedAt: 140, caughtUp: true });
    expect(packetsOf(merged.blocks).map((p) => [p[1], p[2]])).toEqual([
      [80, 1],
      [100, 2],
    ]);
  });

  it("-c 1 keeps the oldest packet of all threads, not the first to reach the main thread", () => {
    const remote = new RemoteCapture(7, [1], 2, () => 0);
    remote.received(1, chunk(Buffer.alloc(0), false, [0, 0], [0, 0], 50));
    expect(remote.merge([{ type: BLOCK_ENHANCED_PACKET, bytes: run([[0, 100, 2]]) }], 1, { drainedAt: 120, caughtUp: true }).packets).toBe(0);
    remote.received(1, chunk(run([[1, 80, 1]]), false, [1, 0], [0, 0], 130));
    expect(packetsOf(remote.merge([], 1, { drainedAt: 140, caughtUp: true }).blocks).map((p) => p[2])).toEqual([1]);
  });

  it("the main thread's own bound: its newest drained packet while its ring still holds more, the drain's start once empty", () => {
    const remote = new RemoteCapture(7, [1], 2, () => 0);
    remote.received(1, chunk(run([[1, 150, 3]]), false, [1, 0], [0, 0], 1000));
    // Not caught up: the main thread's ring may still hold packets after 100, so 150 waits.
    const partial = remote.merge([{ type: BLOCK_ENHANCED_PACKET, bytes: run([[0, 90, 1], [0, 100, 2]]) }], Infinity, { drainedAt: 500, caughtUp: false });
    expect(packetsOf(partial.blocks).map((p) => p[2])).toEqual([1, 2]);
    expect(packetsOf(remote.merge([], Infinity, { drainedAt: 500, caughtUp: true }).blocks).map((p) => p[2])).toEqual([3]);
  });

  it(`a worker silent for ${STALE_MS} ms no longer holds the merge back; the capture's end writes everything held`, () => {
    let now = 0;
    const remote = new RemoteCapture(7, [1, 2], 2, () => now);
    remote.received(1, chunk(Buffer.alloc(0), false, [0, 0], [0, 0], 1000));
    remote.received(2, chunk(run([[1, 60, 1]]), false, [1, 0], [0, 0], 70));
    expect(packetsOf(remote.merge([{ type: BLOCK_ENHANCED_PACKET, bytes: run([[0, 100, 2]]) }], Infinity, { drainedAt: 200, caughtUp: true }).blocks).map((p) => p[2])).toEqual([1]);
    now = STALE_MS + 1;
    remote.received(1, chunk(Buffer.alloc(0), false, [0, 0], [0, 0], 2000));
    // Worker 2 said nothing since 0 ms: the reply at 100 goes out.
    expect(packetsOf(remote.merge([{ type: BLOCK_ENHANCED_PACKET, bytes: run([[0, 300, 3]]) }], Infinity, { drainedAt: 5000, caughtUp: true }).blocks).map((p) => p[2])).toEqual([2, 3]);
    remote.received(1, chunk(run([[1, 4000, 4]]), false, [0, 0], [0, 0], 1500));
    expect(remote.merge([], Infinity, { drainedAt: 5000, caughtUp: true }, true).packets).toBe(1);
  });

  it("a chunk past the bound is lost for its worker and interfaces; each worker's last chunk completes it", () => {
    const remote = new RemoteCapture(7, [1, 2], 2);
    const big = Buffer.alloc(MAX_QUEUED_BYTES + 32);
    big.writeUInt32LE(BLOCK_ENHANCED_PACKET, 0);
    big.writeUInt32LE(big.length, 4);
    remote.received(1, chunk(big, false, [1, 0], [0, 0]));
    remote.received(2, chunk(run([[1, 5, 9], [0, 6, 8]]), true, [1, 1], [0, 2]));
    expect(remote.lost()).toEqual(Float64Array.of(1, 2));
    expect(remote.lostTotal).toBe(3);
    expect(remote.seen()).toEqual(Float64Array.of(2, 1));
    expect(remote.complete).toBe(false);
    remote.received(1, chunk(Buffer.alloc(0), true, [1, 0], [0, 0]));
    expect(remote.complete).toBe(true);
    // The chunk in the bound is still merged (the lost one is not).
    expect(packetsOf(remote.merge([], Infinity).blocks).map((p) => p[2])).toEqual([9, 8]);
  });
});
