/**
 * `npm run bench:workers`: established UDP flows with SNAT (the seed's rules, 64k flows, batches
 * of 256 pre-built 64-byte packets, as `npm run bench`'s "established UDP with SNAT, 64k flows")
 * through 1 and 2 worker threads, each with its own Dataplane over ONE shared conntrack table and
 * NAT state (docs/multi-core.md "Shared tables"), in one run. The main thread makes the tables
 * and establishes the flows, each as the thread of queue (i >> 4) % 2 (the queue its first packet
 * came by, whose thread forwards the connection in a router with two workers); each worker attaches,
 * takes its share of the flows (as the router steers each connection to its owner queue, whose slots
 * come from that queue's free list) and forwards them as fast as it can for the
 * same wall-clock window, started together through a shared gate. Aggregate packets/s is the sum.
 *
 * Also measured, for what the lock costs: one worker over a table of its own (not shared: the lock
 * is one never-taken branch). And new connections (first packets of distinct UDP flows, SNAT,
 * confirm; the pool replayed with the worker's clock 31 s on, so each round meets the last one's
 * expired entries, as `npm run bench`'s "new connections") with 1 and 2 workers over one empty
 * shared table: every batch of them takes the tables' lock. Writes bench/results/workers.md and the `workersHotpath` key of
 * bench/results/latest.json. `BENCH_QUICK=1` shortens the windows. The figures depend on the
 * cores the machine has free: the report states the machine.
 */
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { sharedTablesOf, type SharedTables } from "../src/dataplane/from-config.js";
import { BATCH, Driver, PacketTemplate, TENANT_PORT, establishTenantFlows, seedRouter, shuffled, tenantFlows, udpPacket, type FlowSet } from "./lib/scenario.js";
import { machine, mergeResults } from "./lib/report.js";

const FLOWS = 65_536;
const CAPACITY = 262_144;
const FLOW_SEED = 0xc0ffee;
const QUICK = process.env.BENCH_QUICK === "1";
const SECONDS = QUICK ? 2 : 8;
const WARMUP_BATCHES = QUICK ? 1000 : 3000;
/** New connections: distinct flows in the pool all workers share out (as bench/hotpath.ts's 131,072). */
const NEW_POOL = 131_072;
const NEW_FLOW_SEED = 0xabcd;

interface WorkerJob {
  /** The tables to attach to; null: a table of the worker's own, flows established by it. */
  shared: SharedTables | null;
  /** The lock-free established path (Dataplane.lockFreeFastPath); off: every batch takes the lock. */
  lockFree: boolean;
  /**
   * This worker's share: flows i with (i >> 4) % of === index — the flows whose owner queue is this
   * worker's (io/forwarder.ts steerToOwners; the main thread established flow i as queue (i >> 4) % 2).
   */
  index: number;
  of: number;
  gate: Int32Array;
  seconds: number;
  /** Established flows (the default), or first packets of new ones. */
  workload: "established" | "new";
}

interface WorkerResult {
  packets: number;
  wallSeconds: number;
  cpuSeconds: number;
  /** Times this worker found the lock held by the other. */
  contended: number;
  /** Packets not forwarded (must be 0). */
  dropped: number;
  /** Of `packets`: forwarded without the lock. */
  lockFreePackets: number;
}

/**
 * The CPU time of the calling thread, in seconds: utime + stime of /proc/thread-self/stat, in
 * clock ticks of 1/100 s (USER_HZ). Not `process.cpuUsage()`, which in a worker thread is the
 * whole process's (both workers' and the main thread's).
 */
function threadCpuSeconds(): number {
  const stat = readFileSync("/proc/thread-self/stat", "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // After the command: state is field 3, utime field 14 and stime field 15 (proc(5)).
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** A worker: attaches, builds its share's batches, warms up, waits at the gate, runs for `seconds`. */
function runWorker(job: WorkerJob): WorkerResult {
  const fresh = job.workload === "new";
  const flows = tenantFlows(fresh ? NEW_POOL : FLOWS, fresh ? NEW_FLOW_SEED : FLOW_SEED);
  const router = seedRouter(CAPACITY, false, job.shared === null ? {} : { shared: job.shared });
  // A new connection's slot comes from this worker's queue's free list, as in a router.
  router.dataplane.conntrack.ownQueue = job.index;
  let packets: Uint8Array[] = [];
  if (job.shared === null && !fresh) packets = establishTenantFlows(router, flows);
  else for (let i = 0; i < flows.count; i++) packets.push(udpPacket(flows.src[i]!, flows.dst[i]!, flows.sport[i]!, flows.dport[i]!));
  const mine: Uint8Array[] = packets.filter((_, i) => (i >> 4) % job.of === job.index);
  const template = new PacketTemplate(mine, shuffled(mine.length, 0x5eed + job.index));
  const driver = new Driver(router.dataplane);
  router.dataplane.lockFreeFastPath = job.lockFree;
  let next = 0;
  let dropped = 0;
  const clock = router.clock;
  const step = fresh ? 31 : 0;
  const one = (): void => {
    driver.run(template.views[next]!, TENANT_PORT);
    if (++next === template.batches) {
      next = 0;
      // New connections: the next round's first packets meet this round's entries expired.
      clock.offset += step;
    }
  };
  for (let i = 0; i < WARMUP_BATCHES; i++) one();
  for (let i = 0; i < BATCH; i++) if (driver.verdicts[i]! < 0) dropped++;
  const lock = router.dataplane.conntrack.tableLock;
  const contendedBefore = lock?.contended ?? 0;
  Atomics.add(job.gate, 1, 1);
  Atomics.notify(job.gate, 1);
  while (Atomics.load(job.gate, 0) === 0) Atomics.wait(job.gate, 0, 0);
  const lockFreeBefore = router.dataplane.lockFreePackets;
  const cpu = threadCpuSeconds();
  const start = performance.now();
  const end = start + job.seconds * 1000;
  let batches = 0;
  while (performance.now() < end) {
    for (let i = 0; i < 16; i++) one();
    batches += 16;
  }
  const wall = (performance.now() - start) / 1000;
  const used = threadCpuSeconds() - cpu;
  for (let i = 0; i < BATCH; i++) if (driver.verdicts[i]! < 0) dropped++;
  return {
    packets: batches * BATCH,
    wallSeconds: wall,
    cpuSeconds: used,
    contended: (lock?.contended ?? 0) - contendedBefore,
    dropped,
    lockFreePackets: router.dataplane.lockFreePackets - lockFreeBefore,
  };
}

if (!isMainThread) {
  parentPort!.postMessage(runWorker(workerData as WorkerJob));
} else {
  await main();
}

/** Runs `count` workers together (over `shared`, or each over a table of its own) and sums them. */
async function runWorkers(
  count: number,
  shared: SharedTables | null,
  lockFree: boolean,
  workload: WorkerJob["workload"] = "established",
): Promise<{ mpps: number; cpuMpps: number; results: WorkerResult[] }> {
  const gate = new Int32Array(new SharedArrayBuffer(8)); // [0] go, [1] workers ready
  const results = Array.from({ length: count }, (_, index) => {
    const worker = new Worker(new URL(import.meta.url), { workerData: { shared, lockFree, index, of: count, gate, seconds: SECONDS, workload } satisfies WorkerJob });
    return new Promise<WorkerResult>((done, fail) => {
      worker.once("message", (r: WorkerResult) => void worker.terminate().then(() => done(r)));
      worker.once("error", fail);
    });
  });
  // All warmed up, then all go.
  while (Atomics.load(gate, 1) < count) await new Promise((r) => setTimeout(r, 20));
  Atomics.store(gate, 0, 1);
  Atomics.notify(gate, 0);
  const all = await Promise.all(results);
  const mpps = all.reduce((sum, r) => sum + r.packets / r.wallSeconds, 0) / 1e6;
  // Per CPU-second: what the workers would do each with a core of its own (a shared machine
  // deschedules them; this figure does not count the time they did not run).
  const cpuMpps = all.reduce((sum, r) => sum + r.packets / r.cpuSeconds, 0) / 1e6;
  return { mpps, cpuMpps, results: all };
}

/** The flows of `flows` whose index `keep` accepts, in order. */
function flowSubset(flows: FlowSet, keep: (index: number) => boolean): FlowSet {
  const picked = Array.from({ length: flows.count }, (_, i) => i).filter(keep);
  return {
    count: picked.length,
    src: Uint32Array.from(picked, (i) => flows.src[i]!),
    dst: Uint32Array.from(picked, (i) => flows.dst[i]!),
    sport: Uint16Array.from(picked, (i) => flows.sport[i]!),
    dport: Uint16Array.from(picked, (i) => flows.dport[i]!),
  };
}

async function main(): Promise<void> {
  const owner = seedRouter(CAPACITY, false, { sharable: true, queues: 2 });
  const flows = tenantFlows(FLOWS, FLOW_SEED);
  for (const queue of [0, 1]) {
    owner.dataplane.conntrack.ownQueue = queue;
    establishTenantFlows(owner, flowSubset(flows, (i) => (i >> 4) % 2 === queue));
  }
  const shared = sharedTablesOf(owner.dataplane);
  process.stdout.write(`bench:workers: ${FLOWS} established UDP flows with SNAT, ${SECONDS} s per run\n`);
  const line = (what: string, r: { mpps: number; cpuMpps: number }): string => `  ${what.padEnd(40)} ${r.mpps.toFixed(2)} M packets/s, ${r.cpuMpps.toFixed(2)} M per CPU-second`;
  const privateTable = await runWorkers(1, null, false);
  process.stdout.write(`${line("1 worker, its own table:", privateTable)}\n`);
  // The ceiling: two workers sharing nothing (each a table of its own), what the machine's two
  // cores give to two independent loops at that moment.
  const privateTwo = await runWorkers(2, null, false);
  process.stdout.write(`${line("2 workers, each its own table:", privateTwo)} (${(privateTwo.mpps / privateTable.mpps).toFixed(2)}x; per CPU-second ${(privateTwo.cpuMpps / privateTable.cpuMpps).toFixed(2)}x)\n`);
  const one = await runWorkers(1, shared, false);
  process.stdout.write(`${line("1 worker, shared table, coarse lock:", one)}\n`);
  const two = await runWorkers(2, shared, false);
  process.stdout.write(`${line("2 workers, shared table, coarse lock:", two)} (${(two.mpps / one.mpps).toFixed(2)}x; per CPU-second ${(two.cpuMpps / one.cpuMpps).toFixed(2)}x)\n`);
  const oneFree = await runWorkers(1, shared, true);
  process.stdout.write(`${line("1 worker, shared table, lock-free path:", oneFree)}\n`);
  const twoFree = await runWorkers(2, shared, true);
  process.stdout.write(`${line("2 workers, shared table, lock-free path:", twoFree)} (${(twoFree.mpps / oneFree.mpps).toFixed(2)}x; per CPU-second ${(twoFree.cpuMpps / oneFree.cpuMpps).toFixed(2)}x)\n`);
  // New connections: each run over a fresh empty shared table (or the worker's own).
  const newShared = (): SharedTables => sharedTablesOf(seedRouter(CAPACITY, false, { sharable: true, queues: 2 }).dataplane);
  const newOwn = await runWorkers(1, null, true, "new");
  const kcps = (r: { mpps: number; cpuMpps: number }): string => `${(r.mpps * 1000).toFixed(0)} k connections/s, ${(r.cpuMpps * 1000).toFixed(0)} k per CPU-second`;
  process.stdout.write(`  ${"new connections, 1 worker, its own table:".padEnd(40)} ${kcps(newOwn)}\n`);
  const newOne = await runWorkers(1, newShared(), true, "new");
  process.stdout.write(`  ${"new connections, 1 worker, shared table:".padEnd(40)} ${kcps(newOne)}\n`);
  const newTwo = await runWorkers(2, newShared(), true, "new");
  process.stdout.write(`  ${"new connections, 2 workers, shared table:".padEnd(40)} ${kcps(newTwo)} (${(newTwo.mpps / newOne.mpps).toFixed(2)}x; per CPU-second ${(newTwo.cpuMpps / newOne.cpuMpps).toFixed(2)}x)\n`);
  const all = [...privateTable.results, ...privateTwo.results, ...one.results, ...two.results, ...oneFree.results, ...twoFree.results, ...newOwn.results, ...newOne.results, ...newTwo.results];
  const dropped = all.reduce((n, r) => n + r.dropped, 0);
  if (dropped > 0) throw new Error(`bench:workers: ${dropped} packets of established flows were dropped`);

  const m = machine();
  const date = new Date().toISOString();
  const perWorker = (r: WorkerResult): string =>
    `${(r.packets / r.wallSeconds / 1e6).toFixed(2)} M/s, CPU ${((100 * r.cpuSeconds) / r.wallSeconds).toFixed(0)}%, lock found held ${r.contended} times, ` +
    `${((100 * r.lockFreePackets) / r.packets).toFixed(0)}% without the lock`;
  const results = {
    date,
    machine: m,
    flows: FLOWS,
    seconds: SECONDS,
    oneWorkerPrivateTableMpps: privateTable.mpps,
    twoWorkersPrivateTablesMpps: privateTwo.mpps,
    coarseLock: { oneWorkerMpps: one.mpps, twoWorkersMpps: two.mpps, twoOverOne: two.mpps / one.mpps },
    lockFree: { oneWorkerMpps: oneFree.mpps, twoWorkersMpps: twoFree.mpps, twoOverOne: twoFree.mpps / oneFree.mpps },
    newConnections: {
      oneWorkerOwnTablePerSecond: newOwn.mpps * 1e6,
      oneWorkerPerSecond: newOne.mpps * 1e6,
      twoWorkersPerSecond: newTwo.mpps * 1e6,
      twoOverOne: newTwo.mpps / newOne.mpps,
      perCpuSecond: { oneWorkerOwnTable: newOwn.cpuMpps * 1e6, oneWorker: newOne.cpuMpps * 1e6, twoWorkers: newTwo.cpuMpps * 1e6, twoOverOne: newTwo.cpuMpps / newOne.cpuMpps },
    },
    perCpuSecond: {
      oneWorkerPrivateTableMpps: privateTable.cpuMpps,
      twoWorkersPrivateTablesMpps: privateTwo.cpuMpps,
      coarseLock: { oneWorkerMpps: one.cpuMpps, twoWorkersMpps: two.cpuMpps, twoOverOne: two.cpuMpps / one.cpuMpps },
      lockFree: { oneWorkerMpps: oneFree.cpuMpps, twoWorkersMpps: twoFree.cpuMpps, twoOverOne: twoFree.cpuMpps / oneFree.cpuMpps },
    },
    perWorker: { coarseOne: one.results, coarseTwo: two.results, lockFreeOne: oneFree.results, lockFreeTwo: twoFree.results, newOne: newOne.results, newTwo: newTwo.results },
  };
  mergeResults("bench/results/latest.json", "workersHotpath", results);
  const md = [
    "# qnat hot path with worker threads — `npm run bench:workers`",
    "",
    `Run ${date} on ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, Node ${m.node}, ${m.platform}.`,
    `${FLOWS} established UDP flows with SNAT (the seed's rules), batches of 256 pre-built 64-byte packets, in memory;`,
    `each worker thread has its own Dataplane and forwards its share of the flows for ${SECONDS} s, all started together.`,
    "The conntrack table and NAT state are one shared table set (docs/multi-core.md \"Shared tables\"): under one coarse lock, every batch holding it,",
    "or with the lock-free established path (established UDP and ICMP without the lock; the rest of a batch under it from its first other packet).",
    "",
    "| run | packets/s (sum) | packets per CPU-second (sum) | per worker |",
    "|---|---:|---:|---|",
    `| 1 worker, its own table (lock: one never-taken branch) | ${privateTable.mpps.toFixed(2)} M | ${privateTable.cpuMpps.toFixed(2)} M | ${privateTable.results.map(perWorker).join("; ")} |`,
    `| 2 workers, each its own table (sharing nothing: the machine's ceiling) | ${privateTwo.mpps.toFixed(2)} M | ${privateTwo.cpuMpps.toFixed(2)} M | ${privateTwo.results.map(perWorker).join("; ")} |`,
    `| 1 worker, shared table, coarse lock | ${one.mpps.toFixed(2)} M | ${one.cpuMpps.toFixed(2)} M | ${one.results.map(perWorker).join("; ")} |`,
    `| 2 workers, one shared table, coarse lock | ${two.mpps.toFixed(2)} M | ${two.cpuMpps.toFixed(2)} M | ${two.results.map(perWorker).join("; ")} |`,
    `| 1 worker, shared table, lock-free path | ${oneFree.mpps.toFixed(2)} M | ${oneFree.cpuMpps.toFixed(2)} M | ${oneFree.results.map(perWorker).join("; ")} |`,
    `| 2 workers, one shared table, lock-free path | ${twoFree.mpps.toFixed(2)} M | ${twoFree.cpuMpps.toFixed(2)} M | ${twoFree.results.map(perWorker).join("; ")} |`,
    "",
    `2 workers / 1 worker, coarse lock: **${(two.mpps / one.mpps).toFixed(2)}x** by wall clock, ${(two.cpuMpps / one.cpuMpps).toFixed(2)}x per CPU-second;`,
    `lock-free path: **${(twoFree.mpps / oneFree.mpps).toFixed(2)}x** by wall clock, ${(twoFree.cpuMpps / oneFree.cpuMpps).toFixed(2)}x per CPU-second;`,
    `two workers sharing nothing: ${(privateTwo.mpps / privateTable.mpps).toFixed(2)}x by wall clock, ${(privateTwo.cpuMpps / privateTable.cpuMpps).toFixed(2)}x per CPU-second (the most this machine gave two loops then)`,
    `(issue 15's target: >= 1.8x). Load average when it ended: ${loadavg().map((l) => l.toFixed(1)).join(", ")} on ${m.cores} cores: on a machine`,
    "shared with other work the wall-clock figure also measures how much CPU the workers got; the per-CPU-second figure does not.",
    "",
    `New connections (first packets of ${NEW_POOL} distinct UDP flows, SNAT to 9.186.100.2, confirm; each worker replays its share with its clock 31 s on, so every round also frees the last one's expired entries; every such batch takes the tables' lock):`,
    "",
    "| run | connections/s (sum) | per CPU-second (sum) | per worker |",
    "|---|---:|---:|---|",
    `| 1 worker, its own table | ${kcps(newOwn).split(", ")[0]} | ${(newOwn.cpuMpps * 1000).toFixed(0)} k | ${newOwn.results.map(perWorker).join("; ")} |`,
    `| 1 worker, shared table | ${kcps(newOne).split(", ")[0]} | ${(newOne.cpuMpps * 1000).toFixed(0)} k | ${newOne.results.map(perWorker).join("; ")} |`,
    `| 2 workers, one shared table | ${kcps(newTwo).split(", ")[0]} | ${(newTwo.cpuMpps * 1000).toFixed(0)} k | ${newTwo.results.map(perWorker).join("; ")} |`,
    "",
    `New connections, 2 workers / 1 worker over the shared table: **${(newTwo.mpps / newOne.mpps).toFixed(2)}x** by wall clock, ${(newTwo.cpuMpps / newOne.cpuMpps).toFixed(2)}x per CPU-second. A new connection changes the table (its entry, both chains, the NAT binding) under the one lock, which a batch holds from its first new connection to its end; what the other worker does meanwhile (parsing, hashing, building its next batch) overlaps.`,
    "",
  ].join("\n");
  writeFileSync("bench/results/workers.md", md);
}
