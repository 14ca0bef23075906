/**
 * Moves batches between a dataplane and its legs: read one batch from a leg, run it through the
 * pipeline, write each packet to the leg its verdict names, then the fragments of those too big
 * for their egress MTU, the held fragments the batch released and the router's own ICMP errors.
 * The same loop drives TUN devices and in-memory legs. Buffers are allocated once. A leg whose
 * read or write throws is taken out (`slots`, io/leg.ts); the others go on.
 */
import { PacketBatch } from "../core/batch.js";
import type { Dataplane } from "../dataplane/pipeline.js";
import type { CaptureTap } from "./capture.js";
import { LegSlots, legBit, type Leg } from "./leg.js";
import { TunLeg } from "./tun-leg.js";

/**
 * A verdict of a packet steered to another queue of its leg's device: `leg + (queue + 1) *
 * STEERED` (legs are numbered far below it).
 */
const STEERED = 1 << 16;

export class Forwarder {
  /** The receive batch (read by tests: its packets live in the checksum kernel's memory). */
  readonly rx: PacketBatch;
  private readonly verdicts: Int32Array;
  private readonly generated: PacketBatch;
  private readonly generatedVerdicts: Int32Array;
  /**
   * `legBit(leg)` is set when a batch was written to that leg (cleared by whoever reads it): the
   * peer's kernel often answers inside that write() (a ping reply, an ACK), so the router's loop
   * reads those legs next instead of waiting for another wake-up.
   */
  written = 0;
  /** The legs, a failed one replaced by a DownLeg until the router re-creates it. */
  readonly slots: LegSlots;
  /** The running captures (io/capture.ts), null when there are none: then a batch costs nothing more. */
  private capture: CaptureTap | null = null;
  /** `workers: N`: the queue of every device this forwarder reads, and N (useQueues). */
  private queue = 0;
  private queueCount = 1;
  /** Packets written through another queue than this forwarder's, and those whose write failed. */
  steeredPackets = 0;
  steerErrors = 0;

  /**
   * `legs[port * 2 + leg]`: the wire leg and the mirror of every port (see dataplane/port.ts).
   * `headroom`: bytes before each packet in a slot, the legs' virtio_net_hdr length (TUN legs
   * with offloads: 10, with `slotSize` GSO_SLOT_SIZE for 64 KiB super-packets); the router's
   * own ICMP errors get the same headroom, left zero (a plain packet), in small slots.
   */
  constructor(
    /** Replaced between two batches by a live change (control/live-apply.ts). */
    public dataplane: Dataplane,
    legs: readonly Leg[],
    batchSize = 64,
    slotSize = 2048,
    headroom = 0,
  ) {
    this.slots = new LegSlots(legs);
    // the packets in a WebAssembly memory, for the fast path's batch checksum kernel
    this.rx = new PacketBatch(batchSize, slotSize, headroom, { lanes: true });
    this.verdicts = new Int32Array(batchSize);
    this.generated = new PacketBatch(batchSize, Math.min(slotSize, 2048 + headroom), headroom);
    this.generatedVerdicts = new Int32Array(batchSize);
  }

  /** Packets one pump reads at most: a pump that read fewer found the leg empty (EAGAIN). */
  get batchCapacity(): number {
    return this.rx.capacity;
  }

  /**
   * `workers: N`: this forwarder reads queue `queue` of every device of `count`. A packet of a
   * connection is then written through its owner queue (the queue its first packet was read
   * from, conntrack/table.ts `ownerQueue`) of its egress device, whichever thread forwarded it:
   * the TUN driver steers a flow to the queue that last wrote it (tun_flow_update /
   * tun_automq_select_queue), so both directions of a connection settle on the queue its first
   * packet came by, hence one thread, and its packets are no longer forwarded by two threads at
   * once (which reorders a TCP stream) nor moved from thread to thread as each writes
   * (docs/multi-core.md "Queues and threads").
   */
  useQueues(queue: number, count: number): void {
    this.queue = queue;
    this.queueCount = count;
    this.dataplane.conntrack.ownQueue = queue;
  }

  /** Starts (a tap with sessions) or stops (null) capturing, between two batches. */
  setCapture(capture: CaptureTap | null): void {
    this.capture = capture;
    this.dataplane.decisions = capture !== null ? capture.decisions : null;
  }

  /** Reads and forwards one batch from leg `index`; returns how many packets it read. */
  pump(index: number): number {
    const count = this.slots.read(index, this.rx);
    if (count === 0) return 0;
    const capture = this.capture;
    const dataplane = this.dataplane;
    if (capture !== null) {
      // A dataplane swapped in by a live change fills the capture's decisions too.
      dataplane.decisions = capture.decisions;
      capture.ingress(this.rx, index);
    }
    this.generated.clear();
    dataplane.processBatch(this.rx, index >> 1, index & 1, this.verdicts, this.generated, this.generatedVerdicts);
    if (capture !== null) capture.decided(this.verdicts, this.rx.count);
    const steered = this.queueCount > 1 && this.steerToOwners(dataplane, this.rx, this.verdicts);
    this.flush(this.rx, this.verdicts);
    if (steered) this.flushSteered(this.rx, this.verdicts);
    // Packets too big for their egress MTU left as fragments (dataplane/fragment-output.ts).
    const fragments = dataplane.fragmentOutput;
    if (fragments.batch.count > 0) this.flush(fragments.batch, fragments.verdicts);
    const released = dataplane.released;
    if (released.count > 0) this.flush(released, dataplane.releasedVerdicts);
    if (this.generated.count > 0) this.flush(this.generated, this.generatedVerdicts);
    if (capture !== null) {
      capture.egress(dataplane, this.rx, this.verdicts, index, released, dataplane.releasedVerdicts, this.generated, this.generatedVerdicts, fragments.batch, fragments.verdicts);
    }
    dataplane.housekeeping();
    return count;
  }

  /**
   * A packet whose neighbour failed to resolve (an Ethernet port, io/ethernet-leg.ts): the
   * dataplane answers it with ICMP host unreachable, written out at once.
   */
  hostUnreachable(buf: Uint8Array, off: number, length: number, port: number): number {
    this.generated.clear();
    this.dataplane.hostUnreachable(buf, off, length, port, this.generated, this.generatedVerdicts);
    let sent = 0;
    for (let i = 0; i < this.generated.count; i++) if (this.generatedVerdicts[i]! >= 0) sent++;
    if (this.generated.count > 0) this.flush(this.generated, this.generatedVerdicts);
    return sent;
  }

  private flush(batch: PacketBatch, verdicts: Int32Array): void {
    const slots = this.slots;
    // Few ports: one selective pass per leg that has something to send.
    for (let leg = 0; leg < slots.length; leg++) {
      for (let i = 0; i < batch.count; i++) {
        if (verdicts[i] === leg) {
          slots.write(leg, batch, verdicts, leg);
          this.written |= legBit(leg);
          break;
        }
      }
    }
  }

  /**
   * Marks the packets whose connection's owner queue is not this forwarder's with
   * `STEERED` verdicts; true when there is any. A dataplane not yet asked for its packets'
   * connections (the first batch, or the first after a live change) is asked now.
   */
  private steerToOwners(dataplane: Dataplane, batch: PacketBatch, verdicts: Int32Array): boolean {
    const connections = dataplane.connections;
    if (connections === null) {
      dataplane.connections = new Int32Array(batch.capacity).fill(-1);
      return false;
    }
    const count = this.queueCount;
    const own = this.queue;
    const legs = this.slots.legs;
    const table = dataplane.conntrack;
    let steered = false;
    for (let i = 0; i < batch.count; i++) {
      const verdict = verdicts[i]!;
      const connection = connections[i]!;
      if (verdict < 0 || connection < 0) continue;
      const queue = table.ownerQueue(connection);
      if (queue === own || queue >= count) continue;
      const leg = legs[verdict];
      if (!(leg instanceof TunLeg) || leg.queueFds === null || leg.queueFds.length !== count) continue;
      verdicts[i] = verdict + (queue + 1) * STEERED;
      steered = true;
    }
    return steered;
  }

  /** Writes the packets `steerToOwners` marked, each through its connection's owner queue of its leg. */
  private flushSteered(batch: PacketBatch, verdicts: Int32Array): void {
    for (let i = 0; i < batch.count; i++) {
      const want = verdicts[i]!;
      if (want < STEERED) continue;
      const legIndex = want & (STEERED - 1);
      const leg = this.slots.legs[legIndex] as TunLeg;
      try {
        this.steeredPackets += leg.writeSelectedToQueue((want >>> 16) - 1, batch, verdicts, want);
      } catch {
        // The queue's device failed: the main thread's supervisor retires the leg; these are lost.
        this.steerErrors++;
      }
      for (let j = i; j < batch.count; j++) if (verdicts[j] === want) verdicts[j] = legIndex;
    }
  }

  /** Pumps every leg until none has anything left (in-memory legs); returns packets moved. */
  drain(maxRounds = 10_000): number {
    let total = 0;
    for (let round = 0; round < maxRounds; round++) {
      let moved = 0;
      for (let index = 0; index < this.slots.length; index++) moved += this.pump(index);
      if (moved === 0) break;
      total += moved;
    }
    return total;
  }
}
