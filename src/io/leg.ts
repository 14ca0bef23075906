/**
 * One leg of a router port as the forwarding loop sees it: something packets are read from in
 * batches and written to selectively (only the packets whose verdict names this leg), so a
 * processed batch is written out without copying it into per-port batches.
 */
import type { PacketBatch } from "../core/batch.js";

export interface Leg {
  /** Fills `batch` (from slot 0) with waiting packets; returns how many. */
  readInto(batch: PacketBatch): number;
  /** Writes the packets i of `batch` with `verdicts[i] === want`; returns how many were written. */
  writeSelected(batch: PacketBatch, verdicts: Int32Array, want: number): number;
}

/**
 * The bit of leg `index` in a "written to" mask (Forwarder.written): legs 0-30 have their own
 * bit; any higher leg sets LEGS_BEYOND_MASK, which tells the reader to consider every leg.
 */
export const LEGS_BEYOND_MASK = 1 << 31;

export function legBit(index: number): number {
  return index < 31 ? 1 << index : LEGS_BEYOND_MASK;
}
