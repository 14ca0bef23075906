/**
 * The packet loop's own figures (io/loop-stats.ts) and how a router with `workers: N` adds up its
 * threads' loops for the metrics: a snapshot is plain data, and adding one adds every bucket, the
 * sum and the count, as if one loop had seen every batch.
 */
import { describe, expect, it } from "vitest";
import { LoopStats } from "../../src/io/loop-stats.js";

describe("the loop's batch sizes and busy time, over two threads", () => {
  it("the main thread's batches of 1 and 64 and a worker's batch of 3 read as one loop's three batches", () => {
    const main = new LoopStats();
    main.batchSizes.record(1);
    main.batchSizes.record(64);
    main.busySeconds.record(20e-6);
    const worker = new LoopStats();
    worker.batchSizes.record(3);
    worker.busySeconds.record(2e-3);
    const router = new LoopStats();
    router.add(main.snapshot());
    router.add(structuredClone(worker.snapshot()));
    // Buckets 1, 2, 4 ... 64: one batch in (0, 1], one in (2, 4], one in (32, 64].
    expect([...router.batchSizes.counts]).toEqual([1, 0, 1, 0, 0, 0, 1, 0]);
    expect(router.batchSizes.sum).toBe(68);
    expect(router.batchSizes.count).toBe(3);
    expect(router.busySeconds.count).toBe(2);
    expect(router.busySeconds.sum).toBeCloseTo(2.02e-3, 12);
    // The threads' own figures are untouched.
    expect(main.batchSizes.count).toBe(2);
    expect(worker.batchSizes.count).toBe(1);
  });
});
