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

/**
 * What stands in for a leg that failed (its device gone, its namespace deleted, an I/O error):
 * nothing to read, and what the pipeline sends to it is dropped and counted, until the leg is
 * re-created. One broken leg is one leg down; the loop and the other legs go on (STYLE.md
 * rule 12).
 */
export class DownLeg implements Leg {
  /** Packets the pipeline sent to this leg while it was down. */
  dropped = 0;

  readInto(batch: PacketBatch): number {
    batch.count = 0;
    return 0;
  }

  writeSelected(batch: PacketBatch, verdicts: Int32Array, want: number): number {
    for (let i = 0; i < batch.count; i++) if (verdicts[i] === want) this.dropped++;
    return 0;
  }
}

/**
 * The legs of a forwarding loop (`legs[port * 2 + leg]`) with their failures contained: a read
 * or write that throws puts a DownLeg in the failed leg's place and reports the error once to
 * `onFailure` (the router retires the device and re-creates it later, io/leg-supervisor.ts),
 * instead of unwinding the loop. A leg is put back with `replace`.
 */
export class LegSlots {
  readonly legs: Leg[];
  /** Told once per failure: which leg and the error it threw. */
  onFailure: ((index: number, error: unknown) => void) | null = null;

  constructor(legs: readonly Leg[]) {
    this.legs = [...legs];
  }

  get length(): number {
    return this.legs.length;
  }

  read(index: number, batch: PacketBatch): number {
    try {
      return this.legs[index]!.readInto(batch);
    } catch (error) {
      this.fail(index, error);
      batch.count = 0;
      return 0;
    }
  }

  write(index: number, batch: PacketBatch, verdicts: Int32Array, want: number): number {
    try {
      return this.legs[index]!.writeSelected(batch, verdicts, want);
    } catch (error) {
      this.fail(index, error);
      // The packets of this write are counted as the down leg's drops.
      return this.legs[index]!.writeSelected(batch, verdicts, want);
    }
  }

  /** Takes leg `index` out of the loop (it is down) and says why; a later failure of the same leg is not reported again. */
  fail(index: number, error: unknown): void {
    if (this.legs[index] instanceof DownLeg) return;
    this.legs[index] = new DownLeg();
    this.onFailure?.(index, error);
  }

  replace(index: number, leg: Leg): void {
    this.legs[index] = leg;
  }

  isDown(index: number): boolean {
    return this.legs[index] instanceof DownLeg;
  }

  /** Packets dropped toward leg `index` while it is down (0 when it is up). */
  droppedWhileDown(index: number): number {
    const leg = this.legs[index];
    return leg instanceof DownLeg ? leg.dropped : 0;
  }
}
