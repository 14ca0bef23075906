/**
 * A router leg over a TUN device (src/io/leg.ts): batches are read with one addon call and the
 * packets of a processed batch whose verdict names this leg are written with one more
 * (`writeSelected`), straight from the batch's slots, without copying.
 *
 * A packet the kernel refuses (EINVAL for a malformed one, drivers/net/tun.c tun_get_user) is
 * skipped and counted; on EAGAIN the rest of the batch is dropped for this leg and counted, as
 * a full device queue drops on Linux (tun_net_xmit) rather than blocking the forwarding loop.
 */
import type { PacketBatch } from "../core/batch.js";
import type { Leg } from "./leg.js";
import { loadTunAddon, type TunDevice, type TunError } from "./tun.js";
import type { TunNative } from "./tun-native.js";

export class TunLeg implements Leg {
  /** Packets the kernel refused on write. */
  writeErrors = 0;
  /** Packets not written because the device's queue was full (EAGAIN). */
  writeDropped = 0;
  lastWriteError: TunError | undefined;

  private readonly addon: TunNative;

  constructor(readonly device: TunDevice) {
    this.addon = loadTunAddon();
  }

  get name(): string {
    return this.device.name;
  }

  readInto(batch: PacketBatch): number {
    return this.device.readInto(batch);
  }

  writeSelected(batch: PacketBatch, verdicts: Int32Array, want: number): number {
    const count = batch.count;
    const fd = this.device.fd;
    let next = this.addon.writeSelected(fd, batch.data, batch.slotSize, batch.lengths, verdicts, count, want);
    if (next === count) return countSelected(verdicts, 0, count, want);
    // Rare path: EAGAIN, or a packet the kernel refused (a call started at it throws).
    let refused = 0;
    while (next < count) {
      let reached: number;
      try {
        reached = this.addon.writeSelected(
          fd,
          batch.data.subarray(next * batch.slotSize),
          batch.slotSize,
          batch.lengths.subarray(next),
          verdicts.subarray(next),
          count - next,
          want,
        );
      } catch (error) {
        this.writeErrors++;
        this.lastWriteError = error as TunError;
        refused++;
        next++;
        continue;
      }
      if (reached === 0) {
        // EAGAIN at packet `next`: what is left for this leg is dropped.
        this.writeDropped += countSelected(verdicts, next, count, want);
        break;
      }
      next += reached;
    }
    return countSelected(verdicts, 0, next, want) - refused;
  }

  /** Stops polling and closes the device (which removes it). Idempotent. */
  close(): void {
    this.device.close();
  }
}

/** How many of verdicts[start..end) equal `want`. */
function countSelected(verdicts: Int32Array, start: number, end: number, want: number): number {
  let selected = 0;
  for (let i = start; i < end; i++) if (verdicts[i] === want) selected++;
  return selected;
}
