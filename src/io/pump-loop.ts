/**
 * The packet loop of one forwarding thread: each leg's fd is polled with libuv, and a wake-up
 * pumps that leg a bounded number of batches (PUMP_BUDGET), so no leg starves the others, then
 * reads again the legs it wrote to (`sweep`) or busy-polls every leg for a short window
 * (`spinPoll`, QNAT_SPIN_US). The router's main thread runs one (control/router-process.ts) and
 * so does every worker thread (control/dataplane-worker.ts), each over its own queue of every leg.
 *
 * The last line of defence: the pipeline contains a packet's exception and the legs their own
 * (io/leg.ts LegSlots), so nothing should reach the loop; if something does, it is logged at most
 * once a second and the loop goes on.
 */
import { RateLimitedLog } from "../core/log-limit.js";
import type { Forwarder } from "./forwarder.js";
import { LEGS_BEYOND_MASK, legBit } from "./leg.js";
import type { LoopStats } from "./loop-stats.js";
import type { PassthroughForwarder } from "./passthrough.js";
import type { TunDevice, TunError } from "./tun.js";

/** Batches one wake-up of a leg may pump before yielding to the others (uv_poll is level-triggered). */
export const PUMP_BUDGET = 16;
/** Default busy-poll window after a wake-up, in microseconds (QNAT_SPIN_US overrides; 0: off). */
export const SPIN_MICROSECONDS = 0;
/** At most this long spinning per wake-up. */
const SPIN_LIMIT_MS = 2;

export interface PumpLoopOptions {
  /** Busy-poll window after each wake-up, in microseconds (0: sweep the written legs instead). */
  readonly spinMicroseconds: number;
  /** Batch sizes and busy time, for the metrics (io/loop-stats.ts). */
  readonly loopStats: LoopStats;
  readonly log: (line: string) => void;
  /** Leg `index`'s readiness watcher failed (the device is gone): the owner retires the leg. */
  readonly legFailed: (index: number, error: TunError) => void;
}

export class PumpLoop {
  /** Logs the loop's own internal errors (and the owner's timers'), at most once a second. */
  readonly errors: RateLimitedLog;
  private forwarderNow: Forwarder | PassthroughForwarder;
  /** Bits of the mirror legs (odd indexes): see `sweep`. */
  private mirrorBits: number;
  private readonly spinLimitMs: number;

  constructor(
    forwarder: Forwarder | PassthroughForwarder,
    private readonly options: PumpLoopOptions,
  ) {
    this.forwarderNow = forwarder;
    this.mirrorBits = mirrorBitsOf(forwarder.slots.length);
    this.errors = new RateLimitedLog(options.log, () => performance.now() / 1000);
    this.spinLimitMs = Math.max(SPIN_LIMIT_MS, options.spinMicroseconds / 1000);
  }

  get forwarder(): Forwarder | PassthroughForwarder {
    return this.forwarderNow;
  }

  /** A live change that linked the legs anew gives the loop its new forwarder, between two wake-ups. */
  set forwarder(forwarder: Forwarder | PassthroughForwarder) {
    this.forwarderNow = forwarder;
    this.mirrorBits = mirrorBitsOf(forwarder.slots.length);
  }

  /** Polls leg `index`'s device: every wake-up drains it, then sweeps or spins. */
  watch(index: number, device: TunDevice): void {
    device.onReadable((error?: TunError) => {
      if (error !== undefined) {
        this.options.legFailed(index, error);
        return;
      }
      const started = performance.now();
      try {
        this.forwarderNow.written = 0;
        this.drain(index);
        if (this.options.spinMicroseconds > 0) this.spinPoll();
        else this.sweep();
      } catch (failure) {
        this.errors.offer(() => `qnat: internal error in the packet loop (it goes on): ${failure instanceof Error ? failure.stack : String(failure)}`);
      }
      this.options.loopStats.wakeUpDone(started);
    });
  }

  /** Pumps leg `index` until a read finds it empty (fewer packets than a batch) or the budget is spent. */
  private drain(index: number): void {
    const forwarder = this.forwarderNow;
    const capacity = forwarder.batchCapacity;
    const stats = this.options.loopStats;
    for (let round = 0; round < PUMP_BUDGET; round++) if (stats.pump(forwarder, index) < capacity) return;
  }

  /**
   * Latency: what this wake-up wrote often comes back at once (the peer's kernel answers inside
   * our write()), so before going back to epoll every leg is polled without sleeping until none
   * had anything for `spinMicroseconds` (bounded per wake-up, so the control socket and timers
   * still run). A wake-up from epoll costs far more than that on a VM.
   */
  private spinPoll(): void {
    const forwarder = this.forwarderNow;
    const stats = this.options.loopStats;
    const spinMicroseconds = this.options.spinMicroseconds;
    const started = performance.now();
    let lastMoved = started;
    for (;;) {
      let moved = 0;
      for (let leg = 0; leg < forwarder.slots.length; leg++) moved += stats.pump(forwarder, leg);
      const now = performance.now();
      if (moved > 0) lastMoved = now;
      else if ((now - lastMoved) * 1000 >= spinMicroseconds) break;
      if (now - started >= this.spinLimitMs) break;
    }
  }

  /**
   * Without a spin window: the legs this wake-up wrote to are read again before going back to
   * epoll, as long as that brings more — a reply the peer's kernel produced inside our write() (a
   * ping answered, an ACK) leaves now instead of after another wake-up. Only those legs: a read
   * that finds nothing is a syscall (about 2 us here) for nothing. Level-triggered polling still
   * catches whatever arrives anywhere else. The router namespace's kernel may answer a packet
   * written to one mirror through another (its own routing decides), so mirrors are swept together.
   */
  private sweep(): void {
    const forwarder = this.forwarderNow;
    for (let round = 0; round < PUMP_BUDGET; round++) {
      let pending = forwarder.written;
      if (pending === 0) return;
      if ((pending & this.mirrorBits) !== 0) pending |= this.mirrorBits;
      forwarder.written = 0;
      // Legs past the mask's 31 bits (16 ports and more) are covered by reading every leg.
      const every = (pending & LEGS_BEYOND_MASK) !== 0;
      for (let index = 0; index < forwarder.slots.length; index++) if (every || (pending & legBit(index)) !== 0) this.drain(index);
    }
  }
}

/** The bits of the mirror legs (odd indexes) among `count` legs. */
function mirrorBitsOf(count: number): number {
  let bits = 0;
  for (let index = 1; index < count; index += 2) bits |= legBit(index);
  return bits;
}
