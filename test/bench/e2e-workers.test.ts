/**
 * bench:e2e's workers comparison (bench/e2e-workers.ts) is careful with what it claims: a
 * projection to 8 or 16 cores only when the run shows two workers costing what one does per packet
 * with both busy, and marked as a projection; otherwise the report says why none can be made.
 * Every figure states the machine's cores. Also: the config the comparison runs says `workers: N`.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseConfig, workersOf } from "../../src/config/config.js";
import { withWorkersText } from "../../bench/e2e-lab.js";
import { inMemoryScalingFrom, medianFigures, projectWorkers, workersTable, type E2eWorkersResult, type InMemoryScaling, type RouterCpu, type WorkersFigures } from "../../bench/e2e-workers.js";

function figures(kpps: number, cpu?: RouterCpu): WorkersFigures {
  return {
    udpPacketsPerSecond: kpps * 1000,
    udpSentPacketsPerSecond: kpps * 2000,
    udpLossPercent: 50,
    tcpBitsPerSecond: 10e9,
    tcpRetransmits: 0,
    machineBusyCores: { udp: 1.95, tcp: 1.9 },
    ...(cpu === undefined ? {} : { udpRouterCpu: cpu, tcpRouterCpu: { ...cpu, nsPerUnit: 100 } }),
  };
}

/** In memory, two workers on the lock-free established path do 0.99x one's packets per CPU-second. */
const inMemory: InMemoryScaling = { twoOverOnePerCpuSecond: 0.99, source: "npm run bench:workers of 2026-11-30T10:33:57.321Z, lock-free established path, packets per CPU-second of 2 workers / 1: 0.99" };

const oneWorker = figures(140, { cores: 0.98, threads: [0.95, 0.03], busyThreads: 1, nsPerUnit: 7000, workerShares: [1] });

function result(two: WorkersFigures, cores = 2): E2eWorkersResult {
  return {
    date: "2026-11-30T11:55:00.000Z",
    machine: { host: "vm", cpu: "AMD EPYC", cores, kernel: "6.18", node: "v20", iperf3: "iperf 3.12" },
    loadAverage: { start: 0.4, end: 1.1 },
    settings: { udpSeconds: 5, tcpSeconds: 5, udpPayloadBytes: 64, streams: 4 },
    topology: "the seed's router",
    runs: { qnat1: oneWorker, qnat2: two, kernel: figures(180) },
    rounds: [{ qnat1: oneWorker, qnat2: two, kernel: figures(180) }],
    ratios: { udpTwoOverOneWorker: 1.2, tcpTwoOverOneWorker: 1, udpOneWorkerOverKernel: 0.78, udpTwoWorkersOverKernel: 0.9, tcpOneWorkerOverKernel: 1, tcpTwoWorkersOverKernel: 1 },
    target: { udpTwoOverOneAtLeast: 1.4, met: false },
    projection: projectWorkers(oneWorker, two, inMemory),
  };
}

describe("the workers comparison's projection to more cores", () => {
  it("two busy workers at the same cost per packet as one, end to end and in memory: an upper bound per worker core, marked as a projection", () => {
    const two = figures(240, { cores: 1.7, threads: [0.82, 0.8, 0.08], busyThreads: 2, nsPerUnit: 7300, workerShares: [0.52, 0.48] });
    const projection = projectWorkers(oneWorker, two, inMemory);
    expect(projection.justified).toBe(true);
    // 1e9 / 7300 ns = 136,986 packets/s per worker core.
    expect(projection.udpPacketsPerSecond).toEqual({ "8": 1095890, "16": 2191781 });
    const table = workersTable(result(two));
    expect(table).toContain("**PROJECTION (an upper bound), not a measurement:** UDP 64 B with 8 workers on 8 cores: 1.10 Mpps; 16 workers on 16 cores: 2.19 Mpps");
    expect(table).toContain("nothing here measures more than two threads sharing the tables");
    expect(table).toContain("**2 cores** (os.availableParallelism())");
    expect(table).toContain("| qnat, workers: 2 | 240 | 480 | 50.0 | 10.00 | 0 | 1.95 / 1.90 | 1.70 (0.82 + 0.80 + 0.08); 7300 ns/packet; packets per worker 52% / 48% |");
  });

  it("two workers that do less per CPU-second in memory, or no in-memory figure at all: no projection, and the report says why", () => {
    const two = figures(240, { cores: 1.7, threads: [0.82, 0.8], busyThreads: 2, nsPerUnit: 7300, workerShares: [0.52, 0.48] });
    expect(projectWorkers(oneWorker, two, { twoOverOnePerCpuSecond: 0.6, source: "a contended table" }).reason).toBe(
      "in memory two workers do 0.60x one's packets per CPU-second (a contended table): sharing the tables costs, so more workers cannot be extrapolated from two",
    );
    expect(projectWorkers(oneWorker, two, undefined)).toMatchObject({ justified: false });
    expect(inMemoryScalingFrom({ e2e: {} })).toBeUndefined();
    expect(inMemoryScalingFrom({ workersHotpath: { date: "2026-11-30T10:33:57.321Z", perCpuSecond: { lockFree: { twoOverOne: 0.99 } } } })).toEqual(inMemory);
  });

  it("a second worker that costs more per packet than one: no projection, and the report says why", () => {
    const two = figures(150, { cores: 1.9, threads: [0.95, 0.9], busyThreads: 2, nsPerUnit: 12600, workerShares: [0.5, 0.5] });
    const projection = projectWorkers(oneWorker, two, inMemory);
    expect(projection).toEqual({
      justified: false,
      reason: "two workers cost 1.80x the router CPU per packet of one (12600 ns against 7000 ns): the cost is not flat, so more workers cannot be extrapolated from two",
    });
    const table = workersTable(result(two));
    expect(table).toContain("8 or 16 cores: cannot be projected from this run: two workers cost 1.80x");
    expect(table).not.toContain("PROJECTION");
  });

  it("flows that kept one worker busy and the other idle show nothing about a second worker: no projection", () => {
    const two = figures(141, { cores: 1.0, threads: [0.96, 0.04], busyThreads: 1, nsPerUnit: 7100, workerShares: [0.97, 0.03] });
    expect(projectWorkers(oneWorker, two, inMemory)).toMatchObject({ justified: false });
    expect(projectWorkers(oneWorker, two, inMemory).reason).toMatch(/^with two workers only 1 thread of the router was busy/);
  });

  it("the build before worker threads, run beside in every round: its row first, and one worker now against it, no slower or not", () => {
    const two = figures(150, { cores: 1.9, threads: [0.95, 0.9], busyThreads: 2, nsPerUnit: 12600, workerShares: [0.5, 0.5] });
    const before = figures(143);
    const withBefore: E2eWorkersResult = {
      ...result(two),
      runs: { qnat1: oneWorker, qnat2: two, kernel: figures(180), before },
      rounds: [{ qnat1: oneWorker, qnat2: two, kernel: figures(180), before }],
      before: { root: "/tmp/old", commit: "d1ada0c" },
      ratios: { ...result(two).ratios, udpOneWorkerOverBefore: 0.979, tcpOneWorkerOverBefore: 1.02 },
    };
    const table = workersTable(withBefore);
    const rows = table.split("\n").filter((line) => line.startsWith("| qnat") || line.startsWith("| kernel"));
    expect(rows[0]).toMatch(/^\| qnat before worker threads \(d1ada0c, one thread\) \| 143 \|/);
    expect(rows.slice(1).map((row) => row.split(" | ")[0])).toEqual(["| qnat, workers: 1", "| qnat, workers: 2", "| kernel NAT (twin)"]);
    expect(table).toContain("Every round, UDP kpps / TCP Gbit/s: qnat before worker threads 143 / 10.00; qnat, workers: 1 140 / 10.00");
    expect(table).toContain("| UDP 64 B, 1 worker / before worker threads | 0.98 | >= 1 (no slower) | no |");
    expect(table).toContain("| TCP -P 4, 1 worker / before worker threads | 1.02 | >= 1 (no slower) | yes |");
    expect(workersTable(result(two))).not.toContain("before worker threads");
  });

  it("every figure's table states the machine's cores", () => {
    const table = workersTable(result(figures(150, { cores: 1.9, threads: [0.95, 0.9], busyThreads: 2, nsPerUnit: 12600, workerShares: [0.5, 0.5] }), 16));
    expect(table).toContain("| path (16 cores) |");
    expect(table).toContain("| headline (16 cores) |");
  });
});

describe("each path's figure over its rounds", () => {
  it("is its median round's, UDP and TCP each with their own round's CPU", () => {
    const round = (kpps: number, gbit: number, ns: number): WorkersFigures => ({
      ...figures(kpps, { cores: 1, threads: [1], busyThreads: 1, nsPerUnit: ns, workerShares: [1] }),
      tcpBitsPerSecond: gbit * 1e9,
      tcpRouterCpu: { cores: 1, threads: [1], busyThreads: 1, nsPerUnit: ns / 10, workerShares: [1] },
    });
    const median = medianFigures([round(150, 9, 3000), round(110, 14, 4000), round(130, 12, 5000)]);
    expect(median.udpPacketsPerSecond).toBe(130_000);
    expect(median.udpRouterCpu?.nsPerUnit).toBe(5000);
    expect(median.tcpBitsPerSecond).toBe(12e9);
    expect(median.tcpRouterCpu?.nsPerUnit).toBe(500);
    // Two rounds: the lower one, a figure that was measured.
    expect(medianFigures([round(150, 9, 3000), round(110, 14, 4000)]).udpPacketsPerSecond).toBe(110_000);
  });
});

describe("the config each comparison runs", () => {
  it("the seed's router with workers: 2 added forwards on two workers, the rest unchanged", () => {
    const seed = readFileSync("examples/seed.yaml", "utf8");
    const text = withWorkersText(seed, 2);
    expect(workersOf(parseConfig(text, "seed.yaml"))).toBe(2);
    expect({ ...parseConfig(text, "seed.yaml"), workers: undefined }).toEqual({ ...parseConfig(seed, "seed.yaml"), workers: undefined });
  });

  it("a config that says workers already gets the number asked for", () => {
    const seed = readFileSync("examples/seed.yaml", "utf8");
    expect(workersOf(parseConfig(withWorkersText(withWorkersText(seed, 4), 2), "seed.yaml"))).toBe(2);
  });
});
