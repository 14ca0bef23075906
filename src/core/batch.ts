/**
 * A batch of packets in fixed-size slots of one buffer that the TypeScript side owns.
 * Packet i lives at `data[i * slotSize .. i * slotSize + lengths[i])`. The TUN addon reads
 * into and writes from batches in one call; in-memory ports queue them.
 */
export class PacketBatch {
  readonly data: Uint8Array;
  readonly lengths: Uint32Array;
  count = 0;

  constructor(
    readonly capacity: number,
    readonly slotSize = 2048,
  ) {
    this.data = new Uint8Array(capacity * slotSize);
    this.lengths = new Uint32Array(capacity);
  }

  offsetOf(index: number): number {
    return index * this.slotSize;
  }

  /** Copies a packet into the next free slot; returns false when the batch is full or it does not fit. */
  push(packet: Uint8Array, start = 0, length = packet.length - start): boolean {
    if (this.count >= this.capacity || length > this.slotSize) return false;
    const at = this.count * this.slotSize;
    this.data.set(packet.subarray(start, start + length), at);
    this.lengths[this.count] = length;
    this.count++;
    return true;
  }

  /** A copy of packet i (tests and control plane only). */
  copyOut(index: number): Uint8Array {
    const at = index * this.slotSize;
    return this.data.slice(at, at + this.lengths[index]!);
  }

  clear(): void {
    this.count = 0;
  }
}
