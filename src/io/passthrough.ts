/**
 * qnat's I/O floor: the same legs, batches and event loop as the Forwarder, but no processing —
 * every packet read from a port's wire leg is written, as it is, to the other port's wire leg
 * (a two-port router: the lab's tenant and gateway ports). No validation, conntrack, routing,
 * NAT or TTL. What the router's own host sends through a mirror is read and dropped.
 * `qnat run` uses it with QNAT_PASSTHROUGH=1; the end-to-end benchmark measures it as the
 * ceiling qnat's processing is compared with.
 */
import { PacketBatch } from "../core/batch.js";
import { LegSlots, legBit, type Leg } from "./leg.js";

export class PassthroughForwarder {
  private readonly rx: PacketBatch;
  private readonly verdicts: Int32Array;
  /** Packets read from mirrors and dropped. */
  mirrorDropped = 0;
  /** `legBit(leg)` set when a batch was written to that leg (as Forwarder.written). */
  written = 0;
  /** The legs, a failed one replaced by a DownLeg (as the Forwarder's). */
  readonly slots: LegSlots;

  /** `legs[port * 2 + leg]` as for the Forwarder; exactly two ports. */
  constructor(
    legs: readonly Leg[],
    batchSize = 64,
    slotSize = 2048,
    headroom = 0,
  ) {
    if (legs.length !== 4) throw new Error(`pass-through needs exactly two ports, not ${legs.length / 2}`);
    this.slots = new LegSlots(legs);
    this.rx = new PacketBatch(batchSize, slotSize, headroom);
    this.verdicts = new Int32Array(batchSize);
  }

  /** Packets one pump reads at most: a pump that read fewer found the leg empty (EAGAIN). */
  get batchCapacity(): number {
    return this.rx.capacity;
  }

  /** Reads one batch from leg `index` and writes it to the other port's wire leg; returns how many were read. */
  pump(index: number): number {
    const count = this.slots.read(index, this.rx);
    if (count === 0) return 0;
    if ((index & 1) !== 0) {
      this.mirrorDropped += count;
      return count;
    }
    const target = ((index >> 1) ^ 1) << 1;
    const verdicts = this.verdicts;
    for (let i = 0; i < count; i++) verdicts[i] = target;
    this.slots.write(target, this.rx, verdicts, target);
    this.written |= legBit(target);
    return count;
  }
}
