/**
 * What the router's packet loop measures about itself, for the Prometheus endpoint
 * (control/metrics.ts): how many packets each batch read from a leg carried, and how long each
 * wake-up of the loop kept the thread busy. Both are recorded once per batch or per wake-up,
 * never per packet, into fixed buckets in typed arrays (no allocation), the way a Prometheus
 * histogram counts: `counts[i]` is the number of observations in (bounds[i - 1], bounds[i]], the
 * last slot those above every bound; `sum` and `count` as the histogram's _sum and _count.
 */
import type { Forwarder } from "./forwarder.js";

/** BucketCounts as plain data. */
export interface BucketSnapshot {
  readonly counts: Float64Array;
  readonly sum: number;
  readonly count: number;
}

/** LoopStats as plain data. */
export interface LoopSnapshot {
  readonly batchSizes: BucketSnapshot;
  readonly busySeconds: BucketSnapshot;
}

export class BucketCounts {
  /** Observations per bucket (not cumulative: the exposition adds them up), plus one for +Inf. */
  readonly counts: Float64Array;
  /** [0]: sum of the observed values, [1]: observations. */
  private readonly totals = new Float64Array(2);

  constructor(
    /** Upper bounds, ascending. */
    readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  record(value: number): void {
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i]! += 1;
    this.totals[0]! += value;
    this.totals[1]! += 1;
  }

  get sum(): number {
    return this.totals[0]!;
  }

  /** A copy (plain data: another thread's buckets travel this way, control/workers.ts). */
  snapshot(): BucketSnapshot {
    return { counts: this.counts.slice(), sum: this.totals[0]!, count: this.totals[1]! };
  }

  /** Adds another thread's buckets of the same bounds. */
  add(other: BucketSnapshot): void {
    for (let i = 0; i < this.counts.length && i < other.counts.length; i++) this.counts[i]! += other.counts[i]!;
    this.totals[0]! += other.sum;
    this.totals[1]! += other.count;
  }

  get count(): number {
    return this.totals[1]!;
  }
}

/** Batch sizes: powers of two up to the loop's batch of 64 packets (router-process.ts BATCH_SIZE). */
export const BATCH_SIZE_BOUNDS: readonly number[] = [1, 2, 4, 8, 16, 32, 64];

/** Busy time of one wake-up, in seconds: 5 us to 50 ms. */
export const LOOP_BUSY_BOUNDS: readonly number[] = [5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3];

export class LoopStats {
  /** Packets per batch that carried any (a read that found the leg empty is not a batch). */
  readonly batchSizes = new BucketCounts(BATCH_SIZE_BOUNDS);
  /** Seconds the loop was busy per wake-up (from the readable event to going back to epoll). */
  readonly busySeconds = new BucketCounts(LOOP_BUSY_BOUNDS);

  /** One batch of leg `index` through `forwarder`, recorded; returns the packets it read. */
  pump(forwarder: Pick<Forwarder, "pump">, index: number): number {
    const count = forwarder.pump(index);
    if (count > 0) this.batchSizes.record(count);
    return count;
  }

  /** A copy, for another thread to add up. */
  snapshot(): LoopSnapshot {
    return { batchSizes: this.batchSizes.snapshot(), busySeconds: this.busySeconds.snapshot() };
  }

  /** Adds another loop's figures (one router's loops: every worker thread's). */
  add(other: LoopSnapshot): void {
    this.batchSizes.add(other.batchSizes);
    this.busySeconds.add(other.busySeconds);
  }

  /** A wake-up that started at `startedMs` (performance.now()) ends now. */
  wakeUpDone(startedMs: number): void {
    this.busySeconds.record((performance.now() - startedMs) / 1000);
  }
}
