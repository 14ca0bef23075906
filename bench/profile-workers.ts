/**
 * Where a second worker's CPU goes end to end (`npm run bench:profile-workers`): the seed's lab
 * with qnat on one worker and on two, each under the same iperf3 load as bench:e2e's workers
 * comparison (64-byte UDP, four flows, unlimited rate), the router run under `node --cpu-prof`
 * (every thread writes its own profile). For each run it reads from the router's Prometheus
 * endpoint how the loop worked — packets per batch read from a leg, wake-ups per second, busy time
 * per wake-up — and sorts each thread's profile samples into what they were spent on:
 *   - waiting (the profiler's "(idle)": the thread blocked in epoll, nothing to do),
 *   - the TUN system calls (the native addon's batched reads and writes, with the kernel's work
 *     inside them: a packet written to a TUN device is received by the kernel in that call),
 *   - the dataplane (parsing, conntrack, NAT, routing, rewriting: src/dataplane, src/conntrack,
 *     src/nat, src/route, src/wire, src/core),
 *   - the loop and the rest of the I/O layer (src/io), the garbage collector, and everything else.
 * So a run says whether two workers pay more per packet in the dataplane (shared cache lines,
 * atomics) or in the per-wake-up costs that smaller batches pay more often.
 * Writes bench/results/e2e-workers-profile.md (and .json).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { isRoot } from "../src/io/netns.js";
import { packageRoot, retagForRun, runTag, startQnatLab } from "./e2e-lab.js";
import { inNs, iperf3, udpReceivedPerSecond } from "./lib/iperf.js";

const SERVER = "203.0.113.10";
const CLIENT = "10.0.0.3";
const METRICS_PORT = 9477;
const UDP_SECONDS = Number(process.env.QNAT_BENCH_PROFILE_SECONDS ?? 8);
const STREAMS = 4;

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const CATEGORIES = ["waiting", "TUN system calls", "dataplane", "loop and I/O layer", "garbage collector", "other"] as const;
type Category = (typeof CATEGORIES)[number];

/** The category of one sampled frame (its own function, not its callers). */
function categoryOf(frame: ProfileNode["callFrame"]): Category {
  const name = frame.functionName;
  if (name === "(idle)") return "waiting";
  if (name === "(garbage collector)") return "garbage collector";
  const url = frame.url;
  // The profiler has no frames for the addon's native code: the batched read and write system
  // calls (and the kernel's work inside them) count as self time of the TunDevice methods that
  // call them, which do nothing else.
  if ((/\/dist\/src\/io\/tun\.js$/.test(url) && /^(readInto|write)$/.test(name)) || (/\/dist\/src\/io\/tun-leg\.js$/.test(url) && name === "writeSelectedTo")) return "TUN system calls";
  if (/\/dist\/src\/(dataplane|conntrack|nat|route|wire|core)\//.test(url)) return "dataplane";
  if (/\/dist\/src\/io\//.test(url)) return "loop and I/O layer";
  return "other";
}

export interface ThreadProfile {
  /** The profile's file name (Node's CPU.<date>.<time>.<pid>.<thread id>.<n>.cpuprofile). */
  file: string;
  /** Seconds of samples. */
  seconds: number;
  /** Share of the thread's sampled time per category, in percent. */
  shares: Record<Category, number>;
  /** Its busiest non-idle functions, self time in percent of the thread's busy (non-waiting) time. */
  top: Array<{ function: string; where: string; percent: number }>;
}

function readProfile(path: string): ThreadProfile {
  const profile = JSON.parse(readFileSync(path, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const perCategory = new Map<Category, number>(CATEGORIES.map((c) => [c, 0]));
  const perFunction = new Map<string, number>();
  let total = 0;
  let busy = 0;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    const node = byId.get(id);
    if (node === undefined) return;
    const category = categoryOf(node.callFrame);
    perCategory.set(category, perCategory.get(category)! + dt);
    total += dt;
    if (category === "waiting") return;
    busy += dt;
    const file = node.callFrame.url.replace(/^file:\/\//, "").replace(`${packageRoot()}/`, "");
    const key = `${node.callFrame.functionName || "(anonymous)"}\t${file ? `${file}:${node.callFrame.lineNumber + 1}` : ""}`;
    perFunction.set(key, (perFunction.get(key) ?? 0) + dt);
  });
  const percent = (part: number, of: number): number => (of > 0 ? Math.round((1000 * part) / of) / 10 : 0);
  return {
    file: path.split("/").pop()!,
    seconds: total / 1e6,
    shares: Object.fromEntries(CATEGORIES.map((c) => [c, percent(perCategory.get(c)!, total)])) as Record<Category, number>,
    top: [...perFunction.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 8)
      .map(([key, us]) => {
        const [fn, where] = key.split("\t");
        return { function: fn!, where: where!, percent: percent(us, busy) };
      }),
  };
}

/** The sum and count of a Prometheus histogram in an exposition text. */
function histogram(text: string, name: string): { sum: number; count: number } {
  const value = (suffix: string): number => {
    const line = text.split("\n").find((l) => l.startsWith(`${name}_${suffix} `));
    if (line === undefined) throw new Error(`the router's metrics have no ${name}_${suffix}`);
    return Number(line.split(" ")[1]);
  };
  return { sum: value("sum"), count: value("count") };
}

export interface LoopFigures {
  packetsPerBatch: number;
  batchesPerSecond: number;
  wakeUpsPerSecond: number;
  busyMicrosecondsPerWakeUp: number;
}

export interface ProfiledRun {
  workers: number;
  udpPacketsPerSecond: number;
  loop: LoopFigures;
  threads: ThreadProfile[];
}

async function profiledRun(workers: number): Promise<ProfiledRun> {
  const tag = runTag();
  const { text, config } = retagForRun(join(packageRoot(), "examples", "seed.yaml"), tag, "tun", workers);
  const dir = mkdtempSync(join(tmpdir(), "qnat-prof-workers-"));
  try {
    const lab = await startQnatLab(`${text}metrics: { listen: "127.0.0.1:${METRICS_PORT}" }\n`, config, { cpuProfDir: dir });
    let udpPacketsPerSecond = 0;
    let loop: LoopFigures;
    try {
      const scrape = async (): Promise<string> => inNs(config.namespace, "curl", ["-s", "-m", "5", `http://127.0.0.1:${METRICS_PORT}/metrics`], 10_000);
      const before = await scrape();
      const started = performance.now();
      const udp = await iperf3(
        { serverNs: config.ports[1]!.wire.namespace, serverAddress: SERVER, clientNs: config.ports[0]!.wire.namespace, clientAddress: CLIENT },
        5401,
        ["-u", "-l", "64", "-b", "0", "-P", String(STREAMS)],
        UDP_SECONDS,
      );
      const seconds = (performance.now() - started) / 1000;
      const after = await scrape();
      udpPacketsPerSecond = udpReceivedPerSecond(udp);
      const batches = { before: histogram(before, "qnat_batch_packets"), after: histogram(after, "qnat_batch_packets") };
      const wakeUps = { before: histogram(before, "qnat_loop_busy_seconds"), after: histogram(after, "qnat_loop_busy_seconds") };
      const batchCount = batches.after.count - batches.before.count;
      const wakeUpCount = wakeUps.after.count - wakeUps.before.count;
      loop = {
        packetsPerBatch: batchCount > 0 ? (batches.after.sum - batches.before.sum) / batchCount : 0,
        batchesPerSecond: batchCount / seconds,
        wakeUpsPerSecond: wakeUpCount / seconds,
        busyMicrosecondsPerWakeUp: wakeUpCount > 0 ? (1e6 * (wakeUps.after.sum - wakeUps.before.sum)) / wakeUpCount : 0,
      };
    } finally {
      await lab.stop();
    }
    const threads = readdirSync(dir)
      .filter((f) => f.endsWith(".cpuprofile"))
      .sort()
      .map((f) => readProfile(join(dir, f)));
    return { workers, udpPacketsPerSecond, loop, threads };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function report(runs: ProfiledRun[], when: string, load: { start: number[]; end: number[] }): string {
  const cores = availableParallelism();
  const lines = [
    "# Where a second worker's CPU goes (`npm run bench:profile-workers`)",
    "",
    `Run ${when} on ${cpus()[0]?.model.trim() ?? "?"}, **${cores} cores**, Node ${process.version}; load average ${load.start.map((l) => l.toFixed(2)).join(", ")} when it started, ${load.end.map((l) => l.toFixed(2)).join(", ")} when it ended.`,
    `The seed's lab (TUN ports), iperf3 UDP 64-byte payloads, -P ${STREAMS}, unlimited rate, ${UDP_SECONDS} s, 10.0.0.3 -> 203.0.113.10 (SNAT), the router under \`node --cpu-prof\` (which slows it: the rates are for comparing the two runs, not figures of qnat's speed). The iperf3 client and server share the ${cores} cores with the router.`,
    "",
    "| workers | UDP kpps received | packets per batch | batches/s | wake-ups/s | busy us per wake-up |",
    "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ...runs.map(
      (r) =>
        `| ${r.workers} | ${(r.udpPacketsPerSecond / 1000).toFixed(0)} | ${r.loop.packetsPerBatch.toFixed(1)} | ${r.loop.batchesPerSecond.toFixed(0)} | ${r.loop.wakeUpsPerSecond.toFixed(0)} | ${r.loop.busyMicrosecondsPerWakeUp.toFixed(1)} |`,
    ),
    "",
    "Each thread's sampled time, in percent of the thread's time (a thread that forwards nothing is not listed):",
    "",
    `| workers | thread | seconds sampled | ${CATEGORIES.join(" | ")} |`,
    `| ---: | --- | ---: | ${CATEGORIES.map(() => "---:").join(" | ")} |`,
  ];
  for (const run of runs) {
    for (const thread of run.threads) {
      if (thread.shares.waiting >= 99.5) continue;
      lines.push(`| ${run.workers} | ${thread.file} | ${thread.seconds.toFixed(1)} | ${CATEGORIES.map((c) => thread.shares[c].toFixed(1)).join(" | ")} |`);
    }
  }
  lines.push("", "The busiest functions of each forwarding thread, self time in percent of its busy (not waiting) time:", "");
  for (const run of runs) {
    for (const thread of run.threads) {
      if (thread.shares.waiting >= 99.5) continue;
      lines.push(`- workers: ${run.workers}, ${thread.file}: ${thread.top.map((t) => `${t.function} ${t.percent}%`).join(", ")}`);
    }
  }
  lines.push("");
  return lines.join("\n");
}

async function main(): Promise<void> {
  if (!isRoot()) {
    console.error("bench:profile-workers needs root (it builds network namespaces and TUN devices)");
    process.exit(1);
  }
  const when = new Date().toISOString();
  const start = loadavg();
  const runs: ProfiledRun[] = [];
  for (const workers of [1, 2]) {
    console.log(`qnat workers: ${workers}: UDP ${UDP_SECONDS} s under --cpu-prof`);
    runs.push(await profiledRun(workers));
  }
  const text = report(runs, when, { start, end: loadavg() });
  const results = join(packageRoot(), "bench", "results");
  writeFileSync(join(results, "e2e-workers-profile.md"), text);
  writeFileSync(join(results, "e2e-workers-profile.json"), `${JSON.stringify({ date: when, cores: availableParallelism(), runs }, null, 2)}\n`);
  console.log(text);
}

main().catch((error: unknown) => {
  console.error(`bench:profile-workers: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
