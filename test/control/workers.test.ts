/**
 * ForwardingWorkers, the main thread's side of `workers: N` (control/workers.ts), against
 * stand-in worker threads (no TUN device, no root): counters of every worker are asked for and
 * added up, a worker that throws is logged in one line and started again with its counters
 * carried over, one that fails too often is left stopped and says so, and stop ends them all.
 */
import { Worker } from "node:worker_threads";
import { afterEach, describe, expect, it } from "vitest";
import { ForwardingWorkers, RESTART_LIMIT, type WorkerBase } from "../../src/control/workers.js";
import type { WorkerSetup } from "../../src/io/worker-protocol.js";

/**
 * A stand-in worker: ready at once; answers `counters` with 7 received packets on port 0's wire
 * leg (PortCounter.RxPackets) — unless workerData.crashOnCounters says to throw instead (the
 * crashes-th request onwards) — and `stop` with `stopped`.
 */
const STAND_IN = `
const { parentPort, workerData } = require("node:worker_threads");
let asked = 0;
parentPort.on("message", (message) => {
  if (message.type === "counters") {
    asked++;
    if (workerData.crashAfter >= 0 && asked > workerData.crashAfter) throw new Error("boom in worker " + workerData.setup.worker);
    const portCounters = new Float64Array(18);
    portCounters[0] = 7;
    parentPort.postMessage({ type: "counters", id: message.id, counters: {
      portCounters, drops: new Float64Array(4), conntrack: { found: 1 },
      chains: { lookups: 2, nodesWalked: 2, longestWalk: 1 }, fragments: {}, fragmentation: {}, rules: null, nat: {},
    } });
  } else if (message.type === "stop") {
    parentPort.postMessage({ type: "stopped" });
    parentPort.close();
  }
});
parentPort.postMessage({ type: "ready", warmUpMs: 1 });`;

const BASE = {
  config: {}, vnetHdr: false, batchSize: 64, slotSize: 2048, headroom: 0,
  spinMicroseconds: 0, warmUp: false, tables: { conntrack: {}, nat: null },
} as unknown as WorkerBase;

let running: ForwardingWorkers | undefined;
afterEach(async () => {
  await running?.stop();
  await running?.end();
  running = undefined;
});

function standIns(workers: number, crashAfter: (worker: number) => number, log: string[]): ForwardingWorkers {
  const queues = Array.from({ length: workers - 1 }, () => [{ fd: 99, name: "eth0", netns: "x", queues: [] }]);
  running = new ForwardingWorkers(BASE, queues, (line) => log.push(line), () => undefined, {
    spawnThread: (setup: WorkerSetup) => new Worker(STAND_IN, { eval: true, workerData: { setup, crashAfter: crashAfter(setup.worker) } }),
    // A loaded machine may start a thread slowly: the tests wait for every answer.
    countersTimeoutMs: 10_000,
  });
  return running;
}

const received = (counters: { portCounters: Float64Array }[]): number[] => counters.map((c) => c.portCounters[0]!);

describe("the forwarding workers of a router with workers: N", () => {
  it("three workers beside the main thread: each answers its counters, and stop ends them all", async () => {
    const log: string[] = [];
    const workers = standIns(4, () => -1, log);
    expect(workers.count).toBe(4);
    expect(await workers.start()).toEqual([1, 1, 1]);
    expect(received(await workers.counters())).toEqual([7, 7, 7]);
    const own = (await workers.counters())[0]!;
    expect(workers.perWorker(own, await workers.counters()).map((w) => [w.worker, w.rxPackets, w.running])).toEqual([
      [0, 7, true], [1, 7, true], [2, 7, true], [3, 7, true],
    ]);
    expect(await workers.stop()).toEqual([]);
    await workers.end();
    expect(await workers.counters()).toEqual([
      expect.objectContaining({ portCounters: expect.any(Float64Array) }),
      expect.objectContaining({ portCounters: expect.any(Float64Array) }),
      expect.objectContaining({ portCounters: expect.any(Float64Array) }),
    ]);
    expect(log).toEqual([]);
  });

  it("a worker that throws is logged in one line and started again; what it counted before is carried over", async () => {
    const log: string[] = [];
    // Worker 1 answers once, then throws at every later request (each run of it anew).
    const workers = standIns(2, () => 1, log);
    await workers.start();
    expect(received(await workers.counters())).toEqual([7]);
    // The request that makes it throw: answered with what it said last.
    expect(received(await workers.counters())).toEqual([7]);
    await until(() => log.length === 1);
    expect(log).toEqual(["qnat: worker 1 failed (Error: boom in worker 1); started again on its queues"]);
    // Its second run counts on top of the first's 7.
    expect(received(await workers.counters())).toEqual([14]);
  });

  it(`a worker that fails ${RESTART_LIMIT} times within a minute is left stopped, says so, and shows as stopped`, async () => {
    const log: string[] = [];
    const workers = standIns(2, () => 0, log);
    await workers.start();
    for (let i = 0; i < RESTART_LIMIT && !log.some((line) => line.includes("left stopped")); i++) {
      await workers.counters();
      await until(() => log.length > i);
    }
    expect(log.filter((line) => line.endsWith("started again on its queues"))).toHaveLength(RESTART_LIMIT - 1);
    expect(log.at(-1)).toBe(
      `qnat: worker 1 failed (Error: boom in worker 1), ${RESTART_LIMIT} times in 60 s: left stopped; its queues are not read until a restart`,
    );
    const own = { portCounters: new Float64Array(18), drops: new Float64Array(4), conntrack: {}, chains: { lookups: 0, nodesWalked: 0, longestWalk: 0 }, fragments: {}, fragmentation: {}, rules: null, nat: {} };
    expect(workers.perWorker(own, await workers.counters()).map((w) => w.running)).toEqual([true, false]);
    expect(workers.stoppedWorkers).toEqual([1]);
  });
});

async function until(condition: () => boolean, limitMs = 5000): Promise<void> {
  const started = Date.now();
  while (!condition()) {
    if (Date.now() - started > limitMs) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
