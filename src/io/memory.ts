/**
 * In-memory ports: a pair of queues per leg, for tests and benchmarks. What "the network" sends
 * toward the router is queued with `inject`; what the router sends is collected by `take`.
 */
import type { PacketBatch } from "../core/batch.js";
import type { Leg } from "./leg.js";

export class MemoryLeg implements Leg {
  private inbound: Uint8Array[] = [];
  private outbound: Uint8Array[] = [];

  /** Queues a packet as if it arrived on this leg. */
  inject(packet: Uint8Array): void {
    this.inbound.push(packet);
  }

  /** Everything the router wrote to this leg since the last call. */
  take(): Uint8Array[] {
    const out = this.outbound;
    this.outbound = [];
    return out;
  }

  get pending(): number {
    return this.inbound.length;
  }

  readInto(batch: PacketBatch): number {
    batch.clear();
    let taken = 0;
    while (taken < this.inbound.length && batch.push(this.inbound[taken]!)) taken++;
    this.inbound.splice(0, taken);
    return batch.count;
  }

  writeSelected(batch: PacketBatch, verdicts: Int32Array, want: number): number {
    let written = 0;
    for (let i = 0; i < batch.count; i++) {
      if (verdicts[i] !== want) continue;
      this.outbound.push(batch.copyOut(i));
      written++;
    }
    return written;
  }
}
