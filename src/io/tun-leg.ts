/**
 * A router leg over a TUN device (src/io/leg.ts): batches are read with one addon call and the
 * packets of a processed batch whose verdict names this leg are written with one more
 * (`writeSelected`), straight from the batch's slots, without copying.
 *
 * A packet the kernel refuses (EINVAL for a malformed one, drivers/net/tun.c tun_get_user) is
 * skipped and counted; any other error (EBADFD once the device is gone, EIO, EFAULT...) means
 * the leg itself is broken, and is thrown for the loop to take the leg out (io/leg.ts LegSlots); on EAGAIN the rest of the batch is dropped for this leg and counted, as
 * a full device queue drops on Linux (tun_net_xmit) rather than blocking the forwarding loop.
 *
 * A batch whose headroom is not this device's virtio_net_hdr length (the pipeline's released
 * fragments, headroom 0, going to an IFF_VNET_HDR leg) is copied, packet by packet, into a
 * staging batch with a zeroed header (a plain packet). The router opens every leg the same way
 * (offloads on all of them or on none), so a GSO super-packet never meets a leg that cannot
 * take it and nothing needs segmenting in userspace.
 */
import { PacketBatch } from "../core/batch.js";
import type { Leg } from "./leg.js";
import { loadTunAddon, type TunDevice, type TunError } from "./tun.js";
import type { TunNative } from "./tun-native.js";

export class TunLeg implements Leg {
  /** Packets the kernel refused on write. */
  writeErrors = 0;
  /** Packets not written because the device's queue was full (EAGAIN). */
  writeDropped = 0;
  lastWriteError: TunError | undefined;
  /**
   * A multi-queue device (`workers: N`): the fd of every queue of it, queue q at q (queue 0 the
   * main thread's), so a packet can leave through its connection's queue (io/forwarder.ts). The
   * main thread owns them all; null on a one-queue device.
   */
  queueFds: readonly number[] | null = null;

  private readonly addon: TunNative;
  private staging: PacketBatch | undefined;
  private stagingVerdicts: Int32Array | undefined;

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
    if (!this.device.acceptsHeadroom(batch.headroom)) return this.writeRestaged(batch, verdicts, want);
    return this.writeSelectedTo(this.device.fd, batch, verdicts, want);
  }

  /**
   * `writeSelected` through queue `queue` of this device (`queueFds`), which another thread
   * reads: the TUN driver then steers the flow's later packets to that queue.
   */
  writeSelectedToQueue(queue: number, batch: PacketBatch, verdicts: Int32Array, want: number): number {
    return this.writeSelectedTo(this.queueFds![queue]!, batch, verdicts, want);
  }

  private writeSelectedTo(fd: number, batch: PacketBatch, verdicts: Int32Array, want: number): number {
    const count = batch.count;
    const headroom = batch.headroom;
    const vnet = this.device.vnetHeaderLength;
    const link = this.device.linkHeaderLength;
    let next = 0;
    let refused = 0;
    while (next < count) {
      let reached: number;
      try {
        reached =
          next === 0
            ? this.addon.writeSelected(fd, batch.data, batch.slotSize, batch.lengths, verdicts, count, want, headroom, vnet, link)
            : // Rare path (after EAGAIN or a refused packet): resume where the last call stopped.
              this.addon.writeSelected(
                fd,
                batch.data.subarray(next * batch.slotSize),
                batch.slotSize,
                batch.lengths.subarray(next),
                verdicts.subarray(next),
                count - next,
                want,
                headroom,
                vnet,
                link,
              );
      } catch (error) {
        // The kernel refused the first selected packet at or after `next` (a call throws for it).
        this.writeErrors++;
        this.lastWriteError = error as TunError;
        if (!isPacketRefusal(error as TunError)) throw error;
        refused++;
        while (next < count && verdicts[next] !== want) next++;
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

  /** Rare path: copies the selected packets behind this device's header length, then writes them. */
  private writeRestaged(batch: PacketBatch, verdicts: Int32Array, want: number): number {
    if (this.staging === undefined) {
      const headroom = this.device.vnetHeaderLength + this.device.linkHeaderLength;
      this.staging = new PacketBatch(64, 2048 + headroom, headroom);
      this.stagingVerdicts = new Int32Array(64);
    }
    const staging = this.staging;
    let written = 0;
    let i = 0;
    while (i < batch.count) {
      i = staging.takeSelected(batch, verdicts, want, i);
      this.writeErrors += staging.refused;
      if (staging.count > 0) written += this.writeSelected(staging, this.stagingVerdicts!.fill(want), want);
    }
    return written;
  }

  /** Stops polling and closes the device (which removes it). Idempotent. */
  close(): void {
    this.device.close();
  }
}

/**
 * Errors about one packet, after which the device still works: tun_get_user() refuses a
 * malformed packet or virtio_net_hdr with EINVAL, one too big with EMSGSIZE, and may lack memory
 * for one (ENOMEM, ENOBUFS). Anything else is the leg's.
 */
export function isPacketRefusal(error: TunError): boolean {
  const code = error?.code;
  return code === "EINVAL" || code === "EMSGSIZE" || code === "ENOMEM" || code === "ENOBUFS";
}

/** How many of verdicts[start..end) equal `want`. */
function countSelected(verdicts: Int32Array, start: number, end: number, want: number): number {
  let selected = 0;
  for (let i = start; i < end; i++) if (verdicts[i] === want) selected++;
  return selected;
}
