/**
 * Ports added or removed live with `workers: N` (control/workers.ts `relink`), against stand-in
 * worker threads (no TUN device, no root): every worker is given its queue of each leg in the new
 * order, and the main thread may close the removed legs' fds only once every worker answered
 * (or is gone); a worker that cannot follow is started again on the new legs; one that is slow
 * is named after the wait, and the fds wait for it; what a worker says in the ports it had (a leg
 * that failed, its counters) is read in the main thread's new ports.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Worker } from "node:worker_threads";
import { afterEach, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { WorkerCaptures } from "../../src/control/worker-capture.js";
import { ForwardingWorkers, type WorkerBase } from "../../src/control/workers.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import type { CaptureTap } from "../../src/io/capture.js";
import type { Forwarder } from "../../src/io/forwarder.js";
import { LINKTYPE_IPV4 } from "../../src/io/pcapng.js";
import { renumberPortCounters, type DataplaneCounters, type FromWorker, type WorkerLegSetup, type WorkerSetup } from "../../src/io/worker-protocol.js";

/**
 * A stand-in worker. `relink`: logs the fds it was given ("worker W relinked to FD,FD,..."),
 * reports the legs named in workerData.failLegs as failed (in the legs it had), then answers
 * `relinked` — with an error when workerData.relink is "fail", only when next asked for its
 * counters when "late", never when "silent". `apply` (a change with the same ports): logs "worker
 * W applied N ports" and answers `applied`, the same four ways. `counters`: 7 packets received on
 * its port 0's wire leg, in the ports it runs.
 */
const STAND_IN = `
const { parentPort, workerData } = require("node:worker_threads");
const { setup, relink, failLegs } = workerData;
let held = null;
const answer = (message) => {
  const type = message.type === "apply" ? "applied" : "relinked";
  parentPort.postMessage({ type: "log", line: message.type === "apply"
    ? "worker " + setup.worker + " applied " + message.config.ports.length + " ports"
    : "worker " + setup.worker + " relinked to " + message.legs.map((l) => l.fd).join(",") });
  parentPort.postMessage(relink === "fail" ? { type, id: message.id, error: "out of memory" } : { type, id: message.id });
};
parentPort.on("message", (message) => {
  if (message.type === "counters") {
    if (held !== null) answer(held);
    held = null;
    const portCounters = new Float64Array(9 * (setup.legs.length / 2));
    portCounters[0] = 7;
    parentPort.postMessage({ type: "counters", id: message.id, counters: {
      portCounters, drops: new Float64Array(2 * (setup.legs.length / 2)), conntrack: {},
      chains: { lookups: 0, nodesWalked: 0, longestWalk: 0 }, fragments: {}, fragmentation: {}, rules: null, nat: {},
    } });
  } else if (message.type === "relink" || message.type === "apply") {
    if (message.type === "relink") for (const index of failLegs) parentPort.postMessage({ type: "leg-failed", index, code: "EIO", message: "read failed" });
    if (relink === "late") held = message;
    else if (relink !== "silent") answer(message);
  } else if (message.type === "stop") {
    parentPort.postMessage({ type: "stopped" });
    parentPort.close();
  }
});
parentPort.postMessage({ type: "ready", warmUpMs: 1 });
parentPort.postMessage({ type: "log", line: "worker " + setup.worker + " started on " + setup.legs.map((l) => l.fd).join(",") + " with " + setup.config.ports.length + " ports" });`;

interface StandIn {
  readonly relink?: "answer" | "fail" | "late" | "silent";
  readonly failLegs?: readonly number[];
}

/** A leg's queue for worker w: fd 100 * (leg + 1) + w, every queue's fd beside it. */
function queue(leg: number, worker: number, workers: number): WorkerLegSetup {
  return { fd: 100 * (leg + 1) + worker, queues: Array.from({ length: workers }, (_, q) => 100 * (leg + 1) + q), name: `leg${leg}`, netns: "x" };
}

/** `ports` ports, the legs of port p numbered from `first`. */
function queuesOf(legs: readonly number[], workers: number): WorkerLegSetup[][] {
  return Array.from({ length: workers - 1 }, (_, i) => legs.map((leg) => queue(leg, i + 1, workers)));
}

const config = (ports: number): WorkerBase["config"] => ({ ports: Array.from({ length: ports }, (_, p) => ({ name: `p${p}` })) }) as unknown as WorkerBase["config"];

let running: ForwardingWorkers | undefined;
afterEach(async () => {
  await running?.stop();
  await running?.end();
  running = undefined;
});

function standIns(workers: number, behaviour: (worker: number, run: number) => StandIn, log: string[], failed: number[] = [], changeTimeoutMs = 10_000): ForwardingWorkers {
  const base = {
    config: config(2), vnetHdr: false, batchSize: 64, slotSize: 2048, headroom: 0,
    spinMicroseconds: 0, warmUp: false, tables: { conntrack: {}, nat: null },
  } as unknown as WorkerBase;
  const runs = new Map<number, number>();
  running = new ForwardingWorkers(base, queuesOf([0, 1, 2, 3], workers), (line) => log.push(line), (index) => failed.push(index), {
    spawnThread: (setup: WorkerSetup) => {
      const run = (runs.get(setup.worker) ?? 0) + 1;
      runs.set(setup.worker, run);
      const { relink = "answer", failLegs = [] } = behaviour(setup.worker, run);
      return new Worker(STAND_IN, { eval: true, workerData: { setup, relink, failLegs } });
    },
    countersTimeoutMs: 10_000,
    changeTimeoutMs,
  });
  return running;
}

describe("ports added or removed live on a router with workers: N", () => {
  it("a port added after the two: each worker is given its queue of the six legs, and the old legs are let go only once both answered", async () => {
    const log: string[] = [];
    const workers = standIns(3, () => ({}), log);
    await workers.start();
    let releasedWith: string[] | undefined;
    const late = await workers.relink(config(3), queuesOf([0, 1, 2, 3, 4, 5], 3), [0, 1], () => (releasedWith = [...log]));
    expect(late).toEqual([]);
    // Both workers had answered (their lines came before their answers) when the fds were let go.
    expect(releasedWith).toEqual(expect.arrayContaining(["worker 1 relinked to 101,201,301,401,501,601", "worker 2 relinked to 102,202,302,402,502,602"]));
  });

  it("the first of two ports removed: a leg a worker reports failed in its old ports is the main thread's leg of that port now, and one of the removed port is nobody's", async () => {
    const log: string[] = [];
    const failed: number[] = [];
    // Worker 1 reports old leg 3 (port 1's mirror) and old leg 0 (port 0's wire) failing before it swaps.
    const workers = standIns(2, () => ({ failLegs: [3, 0] }), log, failed);
    await workers.start();
    let released = 0;
    expect(await workers.relink(config(1), queuesOf([2, 3], 2), [-1, 0], () => released++)).toEqual([]);
    expect(released).toBe(1);
    expect(failed).toEqual([1]);
  });

  it("a worker that cannot build its successor lets its legs go, is logged in one line and started again on the new legs and config", async () => {
    const log: string[] = [];
    const workers = standIns(2, (_, run) => ({ relink: run === 1 ? "fail" : "answer" }), log);
    await workers.start();
    let released = 0;
    expect(await workers.relink(config(3), queuesOf([0, 1, 2, 3, 4, 5], 2), [0, 1], () => released++)).toEqual([]);
    expect(released).toBe(1);
    await until(() => log.some((line) => line.includes("started on 101,201,301,401,501,601")));
    expect(log).toContain("qnat: worker 1 failed (the live change failed there: out of memory); started again on its queues");
    expect(log).toContain("worker 1 started on 101,201,301,401,501,601 with 3 ports");
  });

  it("a worker slower than the wait is named; the removed legs' fds wait for its answer", async () => {
    const log: string[] = [];
    const workers = standIns(3, (worker) => (worker === 2 ? { relink: "late" } : {}), log, [], 300);
    await workers.start();
    let released = 0;
    expect(await workers.relink(config(1), queuesOf([0, 1], 3), [0, -1], () => released++)).toContain(2);
    expect(released).toBe(0);
    // Asked for its counters, worker 2 gets to the change at last.
    await workers.counters();
    await until(() => released === 1);
    expect(log).toEqual(expect.arrayContaining(["worker 1 relinked to 101,201", "worker 2 relinked to 102,202"]));
  });

  it("a worker that never answers lets its legs go when it ends", async () => {
    const log: string[] = [];
    const workers = standIns(2, () => ({ relink: "silent" }), log, [], 50);
    await workers.start();
    let released = 0;
    expect(await workers.relink(config(1), queuesOf([0, 1], 2), [0, -1], () => released++)).toEqual([1]);
    expect(released).toBe(0);
    await workers.stop();
    await workers.end();
    await until(() => released === 1);
  });

  it("counters a worker sends before it swapped are read in the new ports: port 0's 7 packets become port 1's when a port is added before it", async () => {
    const log: string[] = [];
    const workers = standIns(2, () => ({ relink: "silent" }), log, [], 50);
    await workers.start();
    const before = (await workers.counters())[0]!;
    expect(Array.from(before.portCounters.subarray(0, 1))).toEqual([7]);
    expect(await workers.relink(config(3), queuesOf([0, 1, 2, 3, 4, 5], 2), [1, 2], () => undefined)).toEqual([1]);
    // Still the old dataplane's answer (port 0 = 7), in the three ports the router has now.
    const after = (await workers.counters())[0]!;
    expect(after.portCounters).toHaveLength(27);
    expect(after.portCounters[0]).toBe(0);
    expect(after.portCounters[9]).toBe(7);
  });
});

describe("a change with the same ports on a router with workers: N", () => {
  it("every worker applies it and the apply names nobody", async () => {
    const log: string[] = [];
    const workers = standIns(3, () => ({}), log);
    await workers.start();
    expect(await workers.apply(config(2))).toEqual([]);
    expect(log).toEqual(expect.arrayContaining(["worker 1 applied 2 ports", "worker 2 applied 2 ports"]));
  });

  it("a worker slower than the wait is named and applies the change when it gets to it; one that never answers is named too, and the apply returns all the same", async () => {
    const log: string[] = [];
    const workers = standIns(3, (worker) => ({ relink: worker === 1 ? "late" : "silent" }), log, [], 100);
    await workers.start();
    // Worker 2 never answers: only the wait's end can return this.
    expect(await workers.apply(config(2))).toEqual([1, 2]);
    expect(log.some((line) => line.includes("applied"))).toBe(false);
    // Asked for its counters, worker 1 gets to the change at last.
    await workers.counters();
    await until(() => log.includes("worker 1 applied 2 ports"));
  });

  it("a worker that cannot build its successor is logged in one line and started again with the new config", async () => {
    const log: string[] = [];
    const workers = standIns(2, (_, run) => ({ relink: run === 1 ? "fail" : "answer" }), log);
    await workers.start();
    expect(await workers.apply(config(3))).toEqual([]);
    await until(() => log.includes("worker 1 started on 101,201,301,401 with 3 ports"));
    expect(log).toContain("qnat: worker 1 failed (the live change failed there: out of memory); started again on its queues");
  });
});

describe("a worker's captures when its ports change", () => {
  /** A forwarder as WorkerCaptures sees it: what it was last given to tap with. */
  const forwarder = (): Forwarder & { tapped: CaptureTap | null } => {
    const fake = { tapped: null as CaptureTap | null, setCapture: (tap: CaptureTap | null) => (fake.tapped = tap) };
    return fake as unknown as Forwarder & { tapped: CaptureTap | null };
  };
  const seed = parseConfig(readFileSync(resolve(import.meta.dirname, "../../examples/seed.yaml"), "utf8"), "seed.yaml");
  const qr = { legIndex: 0, port: "qr", leg: "wire", name: "qr", description: "qr", linkType: LINKTYPE_IPV4 } as const;

  it("a running capture stops tapping the old legs, still ends once with its counts, and a capture started later taps the new forwarder", () => {
    const posted: Extract<FromWorker, { type: "capture-chunk" }>[] = [];
    const before = forwarder();
    const dataplane = buildDataplane(seed);
    const captures = new WorkerCaptures(64, before, () => dataplane, (message) => message.type === "capture-chunk" && posted.push(message));
    captures.start({ type: "capture-start", id: 1, interfaces: [qr], legCount: 4 });
    expect(before.tapped).not.toBeNull();
    const after = forwarder();
    captures.moveTo(after, [false, false]);
    expect(before.tapped).toBeNull();
    expect(after.tapped).toBeNull();
    // The main thread ends the capture (control/capture.ts attach): its last chunk, once, with its interface's counts.
    captures.stop(1);
    expect(posted.map((c) => [c.id, c.last, c.seen.length])).toEqual([[1, true, 1]]);
    captures.start({ type: "capture-start", id: 2, interfaces: [qr], legCount: 6 });
    expect(after.tapped).not.toBeNull();
    expect(before.tapped).toBeNull();
    captures.stopAll();
  });
});

describe("renumberPortCounters", () => {
  const counters = (portCounters: number[], drops: number[]): DataplaneCounters => ({
    portCounters: Float64Array.from(portCounters), drops: Float64Array.from(drops), conntrack: { found: 3 },
    chains: { lookups: 0, nodesWalked: 0, longestWalk: 0 }, fragments: {}, fragmentation: {}, rules: null, nat: {},
  });

  it("moves each port's counters and drops to its new index, drops a removed port's, leaves an added one at zero", () => {
    // Two ports of 2 counters and 1 drop reason each (strides from the lengths).
    const moved = renumberPortCounters(counters([1, 2, 3, 4], [5, 6]), [-1, 0], 2);
    expect(Array.from(moved.portCounters)).toEqual([3, 4, 0, 0]);
    expect(Array.from(moved.drops)).toEqual([6, 0]);
    expect(moved.conntrack).toEqual({ found: 3 });
  });

  it("leaves counters of nothing as they are", () => {
    const none = counters([], []);
    expect(renumberPortCounters(none, [1, 0], 2).portCounters).toHaveLength(0);
  });
});

async function until(condition: () => boolean, limitMs = 5000): Promise<void> {
  const started = Date.now();
  while (!condition()) {
    if (Date.now() - started > limitMs) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
