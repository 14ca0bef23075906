/**
 * bench:e2e's workers comparison (`npm run bench:e2e -- --only workers` runs it alone): the seed's
 * lab with qnat on one worker and on two (`workers: N`: N threads, each reading one queue of every
 * multi-queue TUN leg, one shared connection table), beside the kernel's own NAT on the same
 * topology (src/control/twin.ts), in one run:
 *   - UDP: 64-byte payloads, unlimited rate, four flows (`iperf3 -u -P 4`: the kernel picks a TUN
 *     queue per flow, so one flow would keep one worker busy and the other idle), packets/s that
 *     arrived;
 *   - TCP: four streams (`iperf3 -P 4`), Gbit/s received.
 * While each qnat test runs, the router process's CPU time is read per thread from /proc (utime +
 * stime of /proc/PID/task/TID/stat): the nanoseconds of router CPU per delivered packet tell
 * whether a second worker costs more per packet (a lock, shared cache lines) or the same, which is
 * what a projection to more cores needs. Every figure is stated with the machine's core count
 * (os.availableParallelism()) and the load average around the run.
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { availableParallelism, loadavg } from "node:os";
import { controlRequest, controlSocketPath } from "../src/control/socket.js";
import type { StatsView } from "../src/control/show.js";
import { retagForRun, runTag, startKernelLab, startQnatLab, type Lab } from "./e2e-lab.js";
import { iperf3, udpReceivedPerSecond, type IperfPath } from "./lib/iperf.js";

const SERVER = "203.0.113.10"; // the outside host's loopback (qnat-external in the seed)
const CLIENT = "10.0.0.3"; // a tenant VM without floating IP: SNAT to 9.186.100.2
const UDP_PAYLOAD = 64;
/** Parallel flows in both tests (`iperf3 -P`). */
export const STREAMS = 4;
/** A thread counts as forwarding when it used at least this share of one core during a test. */
const BUSY_THREAD_SHARE = 0.1;
/** A second worker may cost this much more CPU per packet than one and still be called flat. */
const FLAT_COST_SLACK = 1.15;
/** The core counts a projection is given for, when the measurement supports one. */
const PROJECTED_CORES = [8, 16] as const;

/** What one path delivered, and for qnat what it cost in router CPU. */
export interface WorkersFigures {
  udpPacketsPerSecond: number;
  udpSentPacketsPerSecond: number;
  udpLossPercent: number;
  tcpBitsPerSecond: number;
  tcpRetransmits: number;
  /** The whole machine's busy CPU during each test, in cores (of `machine.cores`): routers, traffic generators and all else. */
  machineBusyCores: { udp: number; tcp: number };
  /** qnat only: the router process during the UDP test. */
  udpRouterCpu?: RouterCpu;
  /** qnat only: the router process during the TCP test. */
  tcpRouterCpu?: RouterCpu;
}

export interface RouterCpu {
  /** The whole process's CPU over the test, in cores (1.0 = one core busy all the time). */
  cores: number;
  /** Per thread that did work, busiest first, in cores. */
  threads: number[];
  /** Threads that used at least BUSY_THREAD_SHARE of a core. */
  busyThreads: number;
  /** Router CPU per delivered packet (UDP) or per delivered kilobyte (TCP), nanoseconds. */
  nsPerUnit: number;
  /**
   * Each worker's share of the packets the router received during the test (`show stats`'
   * per-thread figures; worker 0 is the main thread): how the kernel spread the flows over the queues.
   */
  workerShares: number[];
}

export interface WorkersProjection {
  /** Whether the measurement supports a projection (flat per-packet cost, both workers busy). */
  justified: boolean;
  /** Why, in one sentence. */
  reason: string;
  /** UDP 64-byte packets/s for 8 and 16 workers, each on a core of its own (only when justified). */
  udpPacketsPerSecond?: Record<string, number>;
}

export interface E2eWorkersResult {
  date: string;
  machine: { host: string; cpu: string; cores: number; kernel: string; node: string; iperf3: string };
  /** 1-minute load average when the comparison started and when it ended. */
  loadAverage: { start: number; end: number };
  settings: { udpSeconds: number; tcpSeconds: number; udpPayloadBytes: number; streams: number };
  topology: string;
  /** Each path's median: the UDP figures of its round with the median UDP rate, the TCP ones of its median TCP round. */
  runs: WorkersRound;
  /** Every round, in the order run (each round: the build before worker threads if given, qnat 1 worker, 2 workers, the kernel). */
  rounds: WorkersRound[];
  /** The build before worker threads that ran as `before` (QNAT_BENCH_BEFORE), by its commit. */
  before?: { root: string; commit: string };
  ratios: {
    udpTwoOverOneWorker: number;
    tcpTwoOverOneWorker: number;
    udpOneWorkerOverKernel: number;
    udpTwoWorkersOverKernel: number;
    tcpOneWorkerOverKernel: number;
    tcpTwoWorkersOverKernel: number;
    /** One worker against the build before worker threads, same run (absent without QNAT_BENCH_BEFORE). */
    udpOneWorkerOverBefore?: number;
    tcpOneWorkerOverBefore?: number;
  };
  /** The issue's target: two workers >= 1.4x one worker on 64-byte UDP. */
  target: { udpTwoOverOneAtLeast: number; met: boolean };
  projection: WorkersProjection;
}

/** One round's paths: qnat with 1 and 2 workers, the kernel, and the build before worker threads when given. */
export interface WorkersRound {
  qnat1: WorkersFigures;
  qnat2: WorkersFigures;
  kernel: WorkersFigures;
  before?: WorkersFigures;
}

/**
 * QNAT_BENCH_BEFORE=DIR: a built qnat tree from before worker threads (for this repository,
 * `git worktree add DIR d1ada0c && cd DIR && npm ci && npm run build`), run with one thread in
 * every round beside this one: "one worker is no slower than before", in the same run.
 */
export const BEFORE_ROOT = process.env.QNAT_BENCH_BEFORE;

export interface WorkersHooks {
  /** A new step of the run (the progress line). */
  step(label: string): void;
  log(line: string): void;
}

/**
 * Rounds of the three paths (QNAT_BENCH_WORKERS_ROUNDS, default 3): on a machine whose cores the
 * traffic generators share, one 5-second test moves by a quarter from run to run, so each path's
 * figure is its median round's.
 */
export const WORKERS_ROUNDS = Number(process.env.QNAT_BENCH_WORKERS_ROUNDS ?? 3);

/** The steps measureWorkers reports: per round and path, its lab, UDP and TCP. */
export const WORKERS_STEPS = WORKERS_ROUNDS * (BEFORE_ROOT === undefined ? 3 : 4) * 3;

// ---- router CPU from /proc ---------------------------------------------------------------------

/** Clock ticks per second of /proc's utime and stime (USER_HZ, 100 on Linux). */
const USER_HZ = 100;

/** utime + stime per thread of `pid`, in seconds; threads that ended in between are gone. */
function threadCpuSeconds(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      // Fields after the command (which may hold spaces) in its parentheses: state is field 3,
      // utime 14 and stime 15 (proc(5)).
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out.set(Number(tid), (Number(fields[11]) + Number(fields[12])) / USER_HZ);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

/** The machine's busy and total CPU time so far, in USER_HZ ticks (/proc/stat's first line: all but idle and iowait are busy). */
function machineTicks(): { busy: number; total: number } {
  const fields = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  return { busy: total - fields[3]! - fields[4]!, total };
}

/** Packets each forwarding thread received so far (one figure for a router with one worker). */
async function packetsPerWorker(lab: Lab): Promise<number[]> {
  const response = await controlRequest(controlSocketPath(lab.config.namespace), { cmd: "show", what: "stats", json: true }, 10_000);
  if (!response.ok) throw new Error(`qnat show stats: ${response.error}`);
  const stats = response.data as StatsView;
  return stats.workers?.map((w) => w.rxPackets) ?? [stats.ports.reduce((sum, p) => sum + p.wire.rxPackets + p.mirror.rxPackets, 0)];
}

interface RouterSample {
  cores: number;
  threads: number[];
  workerPackets: number[];
}

/**
 * Runs `test` while reading the machine's busy cores and, for qnat labs, the router's CPU per
 * thread and packets per worker, before and after.
 */
async function withRouterCpu<T>(lab: Lab, test: () => Promise<T>): Promise<{ value: T; machineBusyCores: number; sample?: RouterSample }> {
  const pid = lab.pid;
  const packetsBefore = pid === undefined ? [] : await packetsPerWorker(lab);
  const before = pid === undefined ? new Map<number, number>() : threadCpuSeconds(pid);
  const machineBefore = machineTicks();
  const started = performance.now();
  const value = await test();
  const machineAfter = machineTicks();
  const machineBusyCores = (availableParallelism() * (machineAfter.busy - machineBefore.busy)) / Math.max(1, machineAfter.total - machineBefore.total);
  const seconds = (performance.now() - started) / 1000;
  if (pid === undefined) return { value, machineBusyCores };
  const after = threadCpuSeconds(pid);
  const packetsAfter = await packetsPerWorker(lab);
  const threads = [...after.entries()]
    .map(([tid, cpu]) => (cpu - (before.get(tid) ?? 0)) / seconds)
    .filter((share) => share > 0)
    .sort((a, b) => b - a);
  return { value, machineBusyCores, sample: { cores: threads.reduce((a, b) => a + b, 0), threads, workerPackets: packetsAfter.map((n, i) => n - (packetsBefore[i] ?? 0)) } };
}

function routerCpu(sample: RouterSample, seconds: number, units: number): RouterCpu {
  const received = sample.workerPackets.reduce((a, b) => a + b, 0);
  return {
    cores: sample.cores,
    threads: sample.threads.filter((share) => share >= 0.01),
    busyThreads: sample.threads.filter((share) => share >= BUSY_THREAD_SHARE).length,
    nsPerUnit: units > 0 ? (sample.cores * seconds * 1e9) / units : NaN,
    workerShares: sample.workerPackets.map((n) => (received > 0 ? Math.round((1000 * n) / received) / 1000 : 0)),
  };
}

// ---- the measurement ---------------------------------------------------------------------------

function seedPath(lab: Lab): IperfPath {
  return { serverNs: lab.config.ports[1]!.wire.namespace, serverAddress: SERVER, clientNs: lab.config.ports[0]!.wire.namespace, clientAddress: CLIENT };
}

async function measurePath(lab: Lab, label: string, portBase: number, seconds: { udp: number; tcp: number }, hooks: WorkersHooks): Promise<WorkersFigures> {
  hooks.step(`${label}: iperf3 UDP ${UDP_PAYLOAD}-byte -P ${STREAMS}, ${seconds.udp} s`);
  hooks.log(`  iperf3 UDP ${UDP_PAYLOAD}-byte -P ${STREAMS}, ${seconds.udp} s`);
  const udp = await withRouterCpu(lab, () => iperf3(seedPath(lab), portBase, ["-u", "-l", String(UDP_PAYLOAD), "-b", "0", "-P", String(STREAMS)], seconds.udp));
  hooks.step(`${label}: iperf3 TCP -P ${STREAMS}, ${seconds.tcp} s`);
  hooks.log(`  iperf3 TCP -P ${STREAMS}, ${seconds.tcp} s`);
  const tcp = await withRouterCpu(lab, () => iperf3(seedPath(lab), portBase + 1, ["-P", String(STREAMS)], seconds.tcp));
  const sum = udp.value.end.sum!;
  const delivered = udpReceivedPerSecond(udp.value);
  const tcpBits = tcp.value.end.sum_received!.bits_per_second;
  const figures: WorkersFigures = {
    udpPacketsPerSecond: delivered,
    udpSentPacketsPerSecond: sum.packets / sum.seconds,
    udpLossPercent: sum.lost_percent,
    tcpBitsPerSecond: tcpBits,
    tcpRetransmits: tcp.value.end.sum_sent!.retransmits ?? 0,
    machineBusyCores: { udp: udp.machineBusyCores, tcp: tcp.machineBusyCores },
  };
  if (udp.sample !== undefined) figures.udpRouterCpu = routerCpu(udp.sample, seconds.udp, delivered * seconds.udp);
  if (tcp.sample !== undefined) figures.tcpRouterCpu = routerCpu(tcp.sample, seconds.tcp, (tcpBits / 8 / 1000) * seconds.tcp);
  return figures;
}

/** A path: qnat with N workers, the kernel's NAT, or the build at `before` (its config has no workers line). */
type WorkersPath = number | "kernel" | { before: string };

async function withWorkersLab<T>(seed: string, workers: WorkersPath, hooks: WorkersHooks, use: (lab: Lab) => Promise<T>): Promise<T> {
  const tag = runTag();
  const label = workers === "kernel" ? "kernel NAT" : typeof workers === "number" ? `qnat workers: ${workers}` : "qnat before worker threads";
  hooks.step(`${label}: starting the lab`);
  hooks.log(`${label}: namespaces qnt-${tag}-*`);
  const { text, config } = retagForRun(seed, tag, "tun", typeof workers === "number" ? workers : undefined);
  const lab =
    workers === "kernel" ? await startKernelLab(config) : typeof workers === "number" ? await startQnatLab(text, config) : await startQnatLab(text, config, { root: workers.before });
  try {
    return await use(lab);
  } finally {
    await lab.stop();
  }
}

function ratio(a: number, b: number): number {
  return Math.round((a / b) * 1000) / 1000;
}

/**
 * What the in-memory bench says about a second worker on the path these UDP flows take (the
 * lock-free established path, docs/multi-core.md): `npm run bench:workers`' packets per CPU-second
 * of two workers over one (bench/results/latest.json `workersHotpath`).
 */
export interface InMemoryScaling {
  twoOverOnePerCpuSecond: number;
  /** Where the figure comes from (the run's date). */
  source: string;
}

/** The in-memory scaling from latest.json's `workersHotpath` key, if `npm run bench:workers` has written it. */
export function inMemoryScalingFrom(latest: unknown): InMemoryScaling | undefined {
  const hotpath = (latest as { workersHotpath?: { date?: string; perCpuSecond?: { lockFree?: { twoOverOne?: number } } } } | undefined)?.workersHotpath;
  const ratio = hotpath?.perCpuSecond?.lockFree?.twoOverOne;
  if (ratio === undefined || !(ratio > 0)) return undefined;
  return { twoOverOnePerCpuSecond: ratio, source: `npm run bench:workers of ${hotpath?.date ?? "unknown date"}, lock-free established path, packets per CPU-second of 2 workers / 1: ${ratio.toFixed(2)}` };
}

/**
 * A projection to 8 and 16 cores is given only when the measurement supports one: both workers
 * forwarded (each thread busy), two workers cost no more router CPU per packet than one end to
 * end (within FLAT_COST_SLACK), and in memory two workers do as much per CPU-second as one on the
 * same path (bench:workers, lock-free established UDP: no lock every packet waits for). It is
 * an upper bound: N workers, each on a core of its own with the traffic generators and the
 * kernel's side of the TUN queues on other cores, forward at most N / (CPU per packet of one).
 * Nothing here measures more than two threads sharing the tables. Otherwise it says why not.
 */
export function projectWorkers(one: WorkersFigures, two: WorkersFigures, inMemory: InMemoryScaling | undefined): WorkersProjection {
  const a = one.udpRouterCpu;
  const b = two.udpRouterCpu;
  if (a === undefined || b === undefined || !Number.isFinite(a.nsPerUnit) || !Number.isFinite(b.nsPerUnit)) {
    return { justified: false, reason: "the router's CPU time was not measured, so its cost per packet is unknown" };
  }
  if (b.busyThreads < 2) {
    return { justified: false, reason: `with two workers only ${b.busyThreads} thread of the router was busy (the flows did not spread over both queues, or the load generator left no core), so this run does not show what a second worker adds` };
  }
  const growth = b.nsPerUnit / a.nsPerUnit;
  if (growth > FLAT_COST_SLACK) {
    return {
      justified: false,
      reason: `two workers cost ${growth.toFixed(2)}x the router CPU per packet of one (${b.nsPerUnit.toFixed(0)} ns against ${a.nsPerUnit.toFixed(0)} ns): the cost is not flat, so more workers cannot be extrapolated from two`,
    };
  }
  if (inMemory === undefined) {
    return { justified: false, reason: "how two workers share the tables in memory is not measured (run npm run bench:workers first), so the end-to-end figure alone cannot be extrapolated" };
  }
  if (inMemory.twoOverOnePerCpuSecond < 1 / FLAT_COST_SLACK) {
    return { justified: false, reason: `in memory two workers do ${inMemory.twoOverOnePerCpuSecond.toFixed(2)}x one's packets per CPU-second (${inMemory.source}): sharing the tables costs, so more workers cannot be extrapolated from two` };
  }
  const perWorker = 1e9 / b.nsPerUnit;
  return {
    justified: true,
    reason:
      `an upper bound, not what 8 or 16 cores will give: two workers cost ${growth.toFixed(2)}x the router CPU per packet of one end to end (${b.nsPerUnit.toFixed(0)} ns against ${a.nsPerUnit.toFixed(0)} ns, both threads busy) ` +
      `and the same per CPU-second in memory (${inMemory.source}), so N workers, each on a core of its own with the traffic generators and the kernel's side of the TUN queues on other cores, forward at most N x ${(perWorker / 1000).toFixed(0)} kpps; ` +
      `nothing here measures more than two threads sharing the tables`,
    udpPacketsPerSecond: Object.fromEntries(PROJECTED_CORES.map((cores) => [String(cores), Math.round(cores * perWorker)])),
  };
}

/**
 * A path's figures over its rounds: UDP from the round with the median UDP rate, TCP from the round
 * with the median TCP rate (the lower median of an even count), each with that round's CPU figures.
 */
export function medianFigures(rounds: readonly WorkersFigures[]): WorkersFigures {
  const pick = (rate: (f: WorkersFigures) => number): WorkersFigures => [...rounds].sort((a, b) => rate(a) - rate(b))[(rounds.length - 1) >> 1]!;
  const udp = pick((f) => f.udpPacketsPerSecond);
  const tcp = pick((f) => f.tcpBitsPerSecond);
  return {
    udpPacketsPerSecond: udp.udpPacketsPerSecond,
    udpSentPacketsPerSecond: udp.udpSentPacketsPerSecond,
    udpLossPercent: udp.udpLossPercent,
    tcpBitsPerSecond: tcp.tcpBitsPerSecond,
    tcpRetransmits: tcp.tcpRetransmits,
    machineBusyCores: { udp: udp.machineBusyCores.udp, tcp: tcp.machineBusyCores.tcp },
    ...(udp.udpRouterCpu === undefined ? {} : { udpRouterCpu: udp.udpRouterCpu }),
    ...(tcp.tcpRouterCpu === undefined ? {} : { tcpRouterCpu: tcp.tcpRouterCpu }),
  };
}

/** qnat with one worker, with two, and the kernel's NAT, on fresh seed labs one after the other, WORKERS_ROUNDS times. */
export async function measureWorkers(
  seed: string,
  /** The machine; its `cores` is replaced by os.availableParallelism() (the cores this process may use). */
  machine: E2eWorkersResult["machine"],
  seconds: { udp: number; tcp: number },
  hooks: WorkersHooks,
  inMemory: InMemoryScaling | undefined,
): Promise<E2eWorkersResult> {
  const start = loadavg()[0]!;
  const rounds: WorkersRound[] = [];
  for (let round = 1; round <= WORKERS_ROUNDS; round++) {
    const tag = WORKERS_ROUNDS > 1 ? ` (round ${round} of ${WORKERS_ROUNDS})` : "";
    const before = BEFORE_ROOT === undefined ? undefined : await withWorkersLab(seed, { before: BEFORE_ROOT }, hooks, (lab) => measurePath(lab, `qnat before worker threads${tag}`, 5531, seconds, hooks));
    const measured: WorkersRound = {
      qnat1: await withWorkersLab(seed, 1, hooks, (lab) => measurePath(lab, `qnat workers: 1${tag}`, 5501, seconds, hooks)),
      qnat2: await withWorkersLab(seed, 2, hooks, (lab) => measurePath(lab, `qnat workers: 2${tag}`, 5511, seconds, hooks)),
      kernel: await withWorkersLab(seed, "kernel", hooks, (lab) => measurePath(lab, `kernel NAT${tag}`, 5521, seconds, hooks)),
      ...(before === undefined ? {} : { before }),
    };
    for (const [name, f] of [["qnat before worker threads", measured.before], ["qnat workers: 1", measured.qnat1], ["qnat workers: 2", measured.qnat2], ["kernel NAT", measured.kernel]] as const) {
      if (f !== undefined) hooks.log(`  ${name}${tag}: UDP ${(f.udpPacketsPerSecond / 1000).toFixed(0)} kpps, TCP -P ${STREAMS} ${(f.tcpBitsPerSecond / 1e9).toFixed(2)} Gbit/s`);
    }
    rounds.push(measured);
  }
  const qnat1 = medianFigures(rounds.map((r) => r.qnat1));
  const qnat2 = medianFigures(rounds.map((r) => r.qnat2));
  const kernel = medianFigures(rounds.map((r) => r.kernel));
  const before = BEFORE_ROOT === undefined ? undefined : medianFigures(rounds.map((r) => r.before!));
  const udpTwoOverOneWorker = ratio(qnat2.udpPacketsPerSecond, qnat1.udpPacketsPerSecond);
  return {
    date: new Date().toISOString(),
    machine: { ...machine, cores: availableParallelism() },
    loadAverage: { start, end: loadavg()[0]! },
    settings: { udpSeconds: seconds.udp, tcpSeconds: seconds.tcp, udpPayloadBytes: UDP_PAYLOAD, streams: STREAMS },
    topology: `the seed's router (examples/seed.yaml) in fresh namespaces, TUN ports; ${CLIENT} -> ${SERVER} (SNAT to 9.186.100.2)`,
    runs: { qnat1, qnat2, kernel, ...(before === undefined ? {} : { before }) },
    rounds,
    ...(BEFORE_ROOT === undefined ? {} : { before: { root: BEFORE_ROOT, commit: commitOf(BEFORE_ROOT) } }),
    ratios: {
      udpTwoOverOneWorker,
      tcpTwoOverOneWorker: ratio(qnat2.tcpBitsPerSecond, qnat1.tcpBitsPerSecond),
      udpOneWorkerOverKernel: ratio(qnat1.udpPacketsPerSecond, kernel.udpPacketsPerSecond),
      udpTwoWorkersOverKernel: ratio(qnat2.udpPacketsPerSecond, kernel.udpPacketsPerSecond),
      tcpOneWorkerOverKernel: ratio(qnat1.tcpBitsPerSecond, kernel.tcpBitsPerSecond),
      tcpTwoWorkersOverKernel: ratio(qnat2.tcpBitsPerSecond, kernel.tcpBitsPerSecond),
      ...(before === undefined
        ? {}
        : { udpOneWorkerOverBefore: ratio(qnat1.udpPacketsPerSecond, before.udpPacketsPerSecond), tcpOneWorkerOverBefore: ratio(qnat1.tcpBitsPerSecond, before.tcpBitsPerSecond) }),
    },
    target: { udpTwoOverOneAtLeast: 1.4, met: udpTwoOverOneWorker >= 1.4 },
    projection: projectWorkers(qnat1, qnat2, inMemory),
  };
}

// ---- the report --------------------------------------------------------------------------------

function cpuText(cpu: RouterCpu | undefined, unit: string): string {
  if (cpu === undefined) return "";
  const shares = cpu.workerShares.length > 1 ? `; packets per worker ${cpu.workerShares.map((s) => `${Math.round(s * 100)}%`).join(" / ")}` : "";
  return `${cpu.cores.toFixed(2)} (${cpu.threads.map((t) => t.toFixed(2)).join(" + ")}); ${cpu.nsPerUnit.toFixed(0)} ns/${unit}${shares}`;
}

const ROW_NAMES = { before: "qnat before worker threads", qnat1: "qnat, workers: 1", qnat2: "qnat, workers: 2", kernel: "kernel NAT (twin)" } as const;

/** The commit a tree has checked out (short), or "?" when git cannot say. */
function commitOf(root: string): string {
  try {
    return execFileSync("git", ["-C", root, "rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
  } catch {
    return "?";
  }
}

/** bench/results/e2e-workers.md. */
export function workersTable(result: E2eWorkersResult): string {
  const r = result.runs;
  const m = result.machine;
  const cores = `${m.cores} cores`;
  const beforeName = result.before === undefined ? ROW_NAMES.before : `${ROW_NAMES.before} (${result.before.commit}, one thread)`;
  const rows: [string, WorkersFigures][] = [
    ...(r.before === undefined ? [] : ([[beforeName, r.before]] as [string, WorkersFigures][])),
    [ROW_NAMES.qnat1, r.qnat1],
    [ROW_NAMES.qnat2, r.qnat2],
    [ROW_NAMES.kernel, r.kernel],
  ];
  const paths = (["before", "qnat1", "qnat2", "kernel"] as const).filter((k) => r[k] !== undefined);
  const p = result.projection;
  const lines = [
    `# qnat end to end with workers (\`npm run bench:e2e -- --only workers\`)`,
    ``,
    `Run ${result.date} on ${m.host}: ${m.cpu}, **${cores}** (os.availableParallelism()), Linux ${m.kernel}, Node ${m.node}, ${m.iperf3}; ` +
      `load average ${result.loadAverage.start.toFixed(2)} when it started, ${result.loadAverage.end.toFixed(2)} when it ended.`,
    `Topology: ${result.topology}. The traffic generators (iperf3 client and server) run on the same ${cores} as the router.`,
    `Each path ran ${result.rounds.length} time(s), one after the other in rounds (${r.before === undefined ? "" : "the build before worker threads, "}qnat with 1 worker, with 2, the kernel); the table gives each path's median round (UDP and TCP each). ` +
      `Every round, UDP kpps / TCP Gbit/s: ${paths
        .map((k) => `${ROW_NAMES[k]} ${result.rounds.map((round) => `${(round[k]!.udpPacketsPerSecond / 1000).toFixed(0)} / ${(round[k]!.tcpBitsPerSecond / 1e9).toFixed(2)}`).join(", ")}`)
        .join("; ")}.`,
    `UDP: ${result.settings.udpPayloadBytes}-byte payloads, unlimited rate, ${STREAMS} flows (\`iperf3 -u -P ${STREAMS}\`), ${result.settings.udpSeconds} s, packets/s that arrived. ` +
      `TCP: \`iperf3 -P ${STREAMS}\`, ${result.settings.tcpSeconds} s.`,
    `Machine busy: all ${m.cores} cores' busy time during each test (/proc/stat), routers, traffic generators and everything else together. Router CPU: the qnat process's CPU time (/proc, all threads) over each test, in cores (per thread in parentheses), per delivered packet (UDP) or kilobyte (TCP), and with two workers each one's share of the packets received (\`show stats\`; the kernel spreads flows over the queues by hash).`,
    ``,
    `| path (${cores}) | UDP 64 B kpps received | UDP kpps sent | UDP loss % | TCP -P ${STREAMS} Gbit/s | TCP retransmits | machine busy, UDP / TCP (cores) | router CPU, UDP | router CPU, TCP |`,
    `| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |`,
    ...rows.map(
      ([name, f]) =>
        `| ${name} | ${(f.udpPacketsPerSecond / 1000).toFixed(0)} | ${(f.udpSentPacketsPerSecond / 1000).toFixed(0)} | ${f.udpLossPercent.toFixed(1)} | ${(f.tcpBitsPerSecond / 1e9).toFixed(2)} | ${f.tcpRetransmits} | ${f.machineBusyCores.udp.toFixed(2)} / ${f.machineBusyCores.tcp.toFixed(2)} | ${cpuText(f.udpRouterCpu, "packet")} | ${cpuText(f.tcpRouterCpu, "KB")} |`,
    ),
    ``,
    `| headline (${cores}) | measured | target | met |`,
    `| --- | ---: | ---: | :---: |`,
    `| UDP 64 B, 2 workers / 1 worker | ${result.ratios.udpTwoOverOneWorker.toFixed(2)} | >= ${result.target.udpTwoOverOneAtLeast} | ${result.target.met ? "yes" : "no"} |`,
    `| TCP -P ${STREAMS}, 2 workers / 1 worker | ${result.ratios.tcpTwoOverOneWorker.toFixed(2)} | | |`,
    `| UDP 64 B, qnat 1 worker / kernel | ${result.ratios.udpOneWorkerOverKernel.toFixed(2)} | | |`,
    `| UDP 64 B, qnat 2 workers / kernel | ${result.ratios.udpTwoWorkersOverKernel.toFixed(2)} | | |`,
    `| TCP -P ${STREAMS}, qnat 1 worker / kernel | ${result.ratios.tcpOneWorkerOverKernel.toFixed(2)} | | |`,
    `| TCP -P ${STREAMS}, qnat 2 workers / kernel | ${result.ratios.tcpTwoWorkersOverKernel.toFixed(2)} | | |`,
    ...(result.ratios.udpOneWorkerOverBefore === undefined
      ? []
      : [
          `| UDP 64 B, 1 worker / before worker threads | ${result.ratios.udpOneWorkerOverBefore.toFixed(2)} | >= 1 (no slower) | ${result.ratios.udpOneWorkerOverBefore >= 1 ? "yes" : "no"} |`,
          `| TCP -P ${STREAMS}, 1 worker / before worker threads | ${result.ratios.tcpOneWorkerOverBefore!.toFixed(2)} | >= 1 (no slower) | ${result.ratios.tcpOneWorkerOverBefore! >= 1 ? "yes" : "no"} |`,
        ]),
    ``,
  ];
  if (p.justified && p.udpPacketsPerSecond !== undefined) {
    lines.push(
      `**PROJECTION (an upper bound), not a measurement:** UDP 64 B with ${Object.entries(p.udpPacketsPerSecond)
        .map(([n, pps]) => `${n} workers on ${n} cores: ${(pps / 1e6).toFixed(2)} Mpps`)
        .join("; ")}. Basis: ${p.reason}.`,
      ``,
    );
  } else {
    lines.push(`8 or 16 cores: cannot be projected from this run: ${p.reason}.`, ``);
  }
  return lines.join("\n");
}
