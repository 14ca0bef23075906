/**
 * `npm run bench:e2e` (root): qnat end to end on the seed's lab topology, in one run, against
 *   (a) qnat with the seed's rules (TUN legs, offloads on),
 *   (b) the kernel's own NAT with the same rules on the same topology (src/control/twin.ts:
 *       veth ports, ip_forward=1, the rules loaded verbatim with iptables-restore),
 *   (c) qnat's pass-through mode (the same TUN legs and I/O loop, no processing: the I/O floor).
 * Each gets: iperf3 TCP, one stream, 10.0.0.3 -> 203.0.113.10 (SNAT); iperf3 UDP with 64-byte
 * payloads (packets/s that arrive); ping RTT (median of many). Then the router is profiled
 * (`node --cpu-prof`) under the same TCP and UDP load.
 *
 * TAP mode, beside it: the seed's Ethernet version (twin.ts tapVariantText: TAP legs on br-int
 * and br-ex, the hosts on veths into the bridges, ARP) with the same figures for
 *   (a) qnat with TAP legs, against (b) the kernel twin on the same bridges (veths).
 * When this qnat build has no TAP legs (its router opens a tap port's wire leg as a TUN device),
 * (a) is reported as unavailable with the reason and only (b) is measured.
 * Workers, beside them (bench/e2e-workers.ts): qnat with `workers: 1` and `workers: 2` and the
 * kernel's NAT on the seed's TUN topology, UDP 64-byte packets/s and TCP with `iperf3 -P 4`, the
 * router's CPU per packet, the machine's core count with every figure; QNAT_BENCH_WORKERS_ROUNDS
 * rounds of the three (default 3), each path's median round reported.
 * `npm run bench:e2e -- --only tun|tap|workers` (a comma list) runs those parts alone;
 * QNAT_BENCH_MODES=tun,tap,workers (default all three) is the same choice from the environment.
 *
 * Every topology is built under fresh names (qnt-<tag>-*), linked to nothing, and removed at the
 * end even on failure. Every iperf3/ping has a duration and a timeout.
 * Writes bench/results/latest.json (keys `e2e`, `e2eTap` and `e2eWorkers`, other keys kept),
 * bench/results/e2e.md, bench/results/e2e.svg, bench/results/e2e-tap.md and e2e-workers.md.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, hostname, loadavg, release, tmpdir } from "node:os";
import { join } from "node:path";
import { isRoot } from "../src/io/netns.js";
import { WireLegNotEthernetError } from "../src/control/host-setup.js";
import { packageRoot, retagForRun, runTag, startKernelLab, startQnatLab, type Lab, type LabKind } from "./e2e-lab.js";
import { escapeXml, mergeResults } from "./lib/report.js";
import { ProgressLine } from "./lib/progress.js";
import { inNs, iperf3, SLACK_MS, udpReceivedPerSecond, type IperfPath } from "./lib/iperf.js";
import { measureWorkers, inMemoryScalingFrom, WORKERS_STEPS, workersTable } from "./e2e-workers.js";

const TCP_SECONDS = Number(process.env.QNAT_BENCH_TCP_SECONDS ?? 5);
const UDP_SECONDS = Number(process.env.QNAT_BENCH_UDP_SECONDS ?? 5);
const PING_COUNT = Number(process.env.QNAT_BENCH_PING_COUNT ?? 200);
const PING_INTERVAL_S = 0.01;
const UDP_PAYLOAD = 64;

const SERVER = "203.0.113.10"; // the outside host's loopback (qnat-external in the seed)
const CLIENT = "10.0.0.3"; // a tenant VM without floating IP: SNAT to 9.186.100.2

interface Figures {
  tcpBitsPerSecond: number;
  tcpRetransmits: number;
  udpPacketsPerSecond: number;
  udpSentPacketsPerSecond: number;
  udpLossPercent: number;
  pingMedianUs: number;
  pingMeanUs: number;
  pingP90Us: number;
}

/** The parts of the run: TUN mode, TAP mode and the workers comparison. */
const PARTS = ["tun", "tap", "workers"] as const;

/** `--only tun,workers` on the command line, else QNAT_BENCH_MODES, else every part. */
function chosenParts(argv: readonly string[]): string[] {
  const at = argv.findIndex((a) => a === "--only" || a.startsWith("--only="));
  const list = at < 0 ? (process.env.QNAT_BENCH_MODES ?? PARTS.join(",")) : argv[at]!.startsWith("--only=") ? argv[at]!.slice("--only=".length) : (argv[at + 1] ?? "");
  return list.split(",").map((m) => m.trim());
}
const MODES = chosenParts(process.argv.slice(2));
/**
 * Steps: per path, its lab and three measurements (TUN mode three paths, then two profiled runs
 * unless QNAT_BENCH_PROFILE=0; TAP mode two paths); the workers comparison's own (WORKERS_STEPS).
 */
const PROFILING = process.env.QNAT_BENCH_PROFILE !== "0";
const progress = new ProgressLine(
  "bench:e2e",
  (MODES.includes("tun") ? 3 * 4 + (PROFILING ? 2 : 0) : 0) + (MODES.includes("tap") ? 2 * 4 : 0) + (MODES.includes("workers") ? WORKERS_STEPS : 0),
);

function log(line: string): void {
  progress.print(() => process.stderr.write(`${line}\n`));
}

/** The seed's TUN path of `lab`: tenant 10.0.0.3 -> the outside host's 203.0.113.10. */
function seedPath(lab: Lab): IperfPath {
  return { serverNs: lab.config.ports[1]!.wire.namespace, serverAddress: SERVER, clientNs: lab.config.ports[0]!.wire.namespace, clientAddress: CLIENT };
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const at = (sorted.length - 1) * q;
  const lo = Math.floor(at);
  const hi = Math.ceil(at);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (at - lo);
}

async function measure(lab: Lab, portBase: number): Promise<Figures> {
  const tenant = lab.config.ports[0]!.wire.namespace;
  // TCP and UDP first: they also warm up the router's JIT (a cold V8 pipeline adds ~50 us per
  // packet), so the ping that follows measures the steady state on every path.
  progress.step(`${lab.kind}: iperf3 TCP ${TCP_SECONDS} s`);
  log(`  iperf3 TCP ${TCP_SECONDS} s`);
  const tcp = await iperf3(seedPath(lab), portBase, [], TCP_SECONDS);
  progress.step(`${lab.kind}: iperf3 UDP ${UDP_PAYLOAD}-byte ${UDP_SECONDS} s`);
  log(`  iperf3 UDP ${UDP_PAYLOAD}-byte ${UDP_SECONDS} s`);
  const udp = await iperf3(seedPath(lab), portBase + 1, ["-u", "-l", String(UDP_PAYLOAD), "-b", "0"], UDP_SECONDS);

  progress.step(`${lab.kind}: ping x${PING_COUNT}`);
  log(`  ping x${PING_COUNT}`);
  await inNs(tenant, "ping", ["-c", "20", "-i", "0.01", "-W", "1", "-I", CLIENT, SERVER], 10_000);
  const pingOut = await inNs(tenant, "ping", ["-c", String(PING_COUNT), "-i", String(PING_INTERVAL_S), "-W", "1", "-I", CLIENT, SERVER], PING_COUNT * PING_INTERVAL_S * 1000 + SLACK_MS);
  const rtts = [...pingOut.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]) * 1000).sort((a, b) => a - b);
  if (rtts.length < PING_COUNT / 2) throw new Error(`ping: only ${rtts.length} of ${PING_COUNT} answers`);
  const sum = udp.end.sum!;
  return {
    tcpBitsPerSecond: tcp.end.sum_received!.bits_per_second,
    tcpRetransmits: tcp.end.sum_sent!.retransmits ?? 0,
    udpPacketsPerSecond: udpReceivedPerSecond(udp),
    udpSentPacketsPerSecond: sum.packets / sum.seconds,
    udpLossPercent: sum.lost_percent,
    pingMedianUs: quantile(rtts, 0.5),
    pingMeanUs: rtts.reduce((a, b) => a + b, 0) / rtts.length,
    pingP90Us: quantile(rtts, 0.9),
  };
}

async function withLab<T>(kind: LabKind, seed: string, use: (lab: Lab) => Promise<T>, cpuProfDir?: string, mode: "tun" | "tap" = "tun"): Promise<T> {
  const tag = runTag();
  const { text, config } = retagForRun(seed, tag, mode);
  const label = `${kind}${mode === "tap" ? " (TAP mode)" : ""}`;
  if (cpuProfDir === undefined) progress.step(`${label}: starting the lab`);
  log(`${label}: namespaces qnt-${tag}-*`);
  const lab =
    kind === "kernel"
      ? await startKernelLab(config)
      : await startQnatLab(text, config, { passthrough: kind === "passthrough", ...(cpuProfDir === undefined ? {} : { cpuProfDir }) });
  try {
    return await use(lab);
  } finally {
    await lab.stop();
  }
}

// ---- the profile ------------------------------------------------------------------------------

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: CpuProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileEntry {
  function: string;
  where: string;
  selfPercent: number;
}

/** Self time per function (summed over call sites), the top entries, as % of all samples. */
function summarizeProfile(path: string, top = 18): ProfileEntry[] {
  const profile = JSON.parse(readFileSync(path, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    const node = byId.get(id);
    if (node === undefined) return;
    const frame = node.callFrame;
    const file = frame.url.replace(/^file:\/\//, "").replace(packageRoot() + "/", "");
    const key = `${frame.functionName || "(anonymous)"}\t${file ? `${file}:${frame.lineNumber + 1}` : ""}`;
    self.set(key, (self.get(key) ?? 0) + dt);
    total += dt;
  });
  return [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([key, us]) => {
      const [fn, where] = key.split("\t");
      return { function: fn!, where: where!, selfPercent: Math.round((1000 * us) / total) / 10 };
    });
}

async function profileRouter(seed: string): Promise<{ tcp: ProfileEntry[]; udp: ProfileEntry[] }> {
  const result: { tcp: ProfileEntry[]; udp: ProfileEntry[] } = { tcp: [], udp: [] };
  for (const load of ["tcp", "udp"] as const) {
    const dir = mkdtempSync(join(tmpdir(), "qnat-prof-"));
    try {
      await withLab(
        "qnat",
        seed,
        async (lab) => {
          progress.step(`qnat: profiling under iperf3 ${load.toUpperCase()}`);
          log(`  profiling under iperf3 ${load.toUpperCase()}`);
          await iperf3(seedPath(lab), 5301, load === "tcp" ? [] : ["-u", "-l", String(UDP_PAYLOAD), "-b", "0"], load === "tcp" ? TCP_SECONDS : UDP_SECONDS);
        },
        dir,
      );
      const file = readdirSync(dir).find((f) => f.endsWith(".cpuprofile"));
      if (file !== undefined) {
        result[load] = summarizeProfile(join(dir, file));
        const keep = join(packageRoot(), "bench", "results", `e2e-router-${load}.cpuprofile`);
        writeFileSync(keep, readFileSync(join(dir, file)));
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return result;
}

// ---- output -----------------------------------------------------------------------------------

function gbit(bps: number): string {
  return (bps / 1e9).toFixed(2);
}
function kpps(pps: number): string {
  return (pps / 1000).toFixed(0);
}

function ratio(a: number, b: number): number {
  return Math.round((a / b) * 1000) / 1000;
}

interface E2eResult {
  date: string;
  machine: { host: string; cpu: string; cores: number; kernel: string; node: string; iperf3: string };
  settings: { tcpSeconds: number; udpSeconds: number; udpPayloadBytes: number; pingCount: number; pingIntervalS: number; offloads: string };
  runs: Record<LabKind, Figures>;
  ratios: { tcpQnatOverKernel: number; udpQnatOverPassthrough: number; udpQnatOverKernel: number; tcpQnatOverPassthrough: number };
  addedRttUs: { qnatOverKernelMedian: number; passthroughOverKernelMedian: number };
  targets: { tcpAtLeastHalfKernel: boolean; udpAtLeast80PercentOfFloor: boolean; addedRttAtMost50us: boolean };
  profile?: { tcp: ProfileEntry[]; udp: ProfileEntry[] };
}

function table(result: E2eResult): string {
  const r = result.runs;
  const rows: [string, Figures][] = [
    ["(a) qnat, seed rules", r.qnat],
    ["(b) kernel NAT (twin)", r.kernel],
    ["(c) qnat pass-through", r.passthrough],
  ];
  const lines = [
    `# qnat end to end (\`npm run bench:e2e\`)`,
    ``,
    `Run ${result.date} on ${result.machine.host}: ${result.machine.cpu}, ${result.machine.cores} cores, Linux ${result.machine.kernel}, Node ${result.machine.node}, ${result.machine.iperf3}.`,
    `Topology: the seed's router (examples/seed.yaml) in fresh namespaces; traffic ${CLIENT} -> ${SERVER} (SNAT to 9.186.100.2 through (a) and (b)).`,
    `iperf3 TCP: one stream, ${result.settings.tcpSeconds} s. UDP: ${UDP_PAYLOAD}-byte payloads, unlimited rate, ${result.settings.udpSeconds} s, packets/s that arrived. ping: ${result.settings.pingCount} echoes every ${result.settings.pingIntervalS * 1000} ms. qnat offloads: ${result.settings.offloads}.`,
    ``,
    `| path | TCP Gbit/s | TCP retransmits | UDP 64 B kpps received | UDP kpps sent | UDP loss % | ping median us | ping p90 us |`,
    `| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`,
    ...rows.map(
      ([name, f]) =>
        `| ${name} | ${gbit(f.tcpBitsPerSecond)} | ${f.tcpRetransmits} | ${kpps(f.udpPacketsPerSecond)} | ${kpps(f.udpSentPacketsPerSecond)} | ${f.udpLossPercent.toFixed(1)} | ${f.pingMedianUs.toFixed(0)} | ${f.pingP90Us.toFixed(0)} |`,
    ),
    ``,
    `| headline | measured | target | met |`,
    `| --- | ---: | ---: | :---: |`,
    `| TCP qnat / kernel (a/b) | ${result.ratios.tcpQnatOverKernel.toFixed(2)} | >= 0.5 | ${result.targets.tcpAtLeastHalfKernel ? "yes" : "no"} |`,
    `| UDP 64 B qnat / pass-through (a/c) | ${result.ratios.udpQnatOverPassthrough.toFixed(2)} | >= 0.8 | ${result.targets.udpAtLeast80PercentOfFloor ? "yes" : "no"} |`,
    `| median RTT added over the kernel path | ${result.addedRttUs.qnatOverKernelMedian.toFixed(0)} us | <= 50 us | ${result.targets.addedRttAtMost50us ? "yes" : "no"} |`,
    `| TCP qnat / pass-through (a/c) | ${result.ratios.tcpQnatOverPassthrough.toFixed(2)} | | |`,
    `| UDP 64 B qnat / kernel (a/b) | ${result.ratios.udpQnatOverKernel.toFixed(2)} | | |`,
    ``,
    `![qnat end to end](e2e.svg)`,
    ``,
  ];
  if (result.profile !== undefined) {
    for (const load of ["tcp", "udp"] as const) {
      lines.push(`Router self time under iperf3 ${load.toUpperCase()} (\`node --cpu-prof\`, bench/results/e2e-router-${load}.cpuprofile):`, ``);
      lines.push(`| function | where | self % |`, `| --- | --- | ---: |`);
      for (const e of result.profile[load]) lines.push(`| ${e.function} | ${e.where} | ${e.selfPercent.toFixed(1)} |`);
      lines.push(``);
    }
  }
  return lines.join("\n");
}

/** A hand-written grouped bar chart: each metric normalised to the best of the three paths. */
function svg(result: E2eResult): string {
  const kinds: [LabKind, string, string][] = [
    ["qnat", "qnat", "#2f6fb0"],
    ["kernel", "kernel NAT", "#9a9a9a"],
    ["passthrough", "qnat pass-through", "#6bb36b"],
  ];
  const metrics: { title: string; value: (f: Figures) => number; text: (v: number) => string; lowerIsBetter?: boolean }[] = [
    { title: "TCP, Gbit/s", value: (f) => f.tcpBitsPerSecond, text: (v) => gbit(v) },
    { title: "UDP 64 B, kpps received", value: (f) => f.udpPacketsPerSecond, text: (v) => kpps(v) },
    { title: "ping median, us (lower is better)", value: (f) => f.pingMedianUs, text: (v) => v.toFixed(0), lowerIsBetter: true },
  ];
  const width = 760;
  const groupWidth = 240;
  const barWidth = 56;
  const top = 70;
  const chartHeight = 220;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${top + chartHeight + 90}" viewBox="0 0 ${width} ${top + chartHeight + 90}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="100%" height="100%" fill="white"/>`);
  parts.push(`<text x="20" y="24" font-size="16" font-weight="bold">qnat end to end: seed router, ${escapeXml(result.machine.cpu)}, ${result.machine.cores} cores</text>`);
  parts.push(`<text x="20" y="44" fill="#555">${escapeXml(result.date)}, Linux ${escapeXml(result.machine.kernel)}; bars scaled to the largest of each group</text>`);
  metrics.forEach((metric, g) => {
    const x0 = 20 + g * groupWidth;
    const values = kinds.map(([kind]) => metric.value(result.runs[kind]));
    const max = Math.max(...values);
    kinds.forEach(([, , color], k) => {
      const v = values[k]!;
      const h = max > 0 ? (v / max) * chartHeight : 0;
      const x = x0 + 20 + k * (barWidth + 12);
      const y = top + chartHeight - h;
      parts.push(`<rect x="${x}" y="${y.toFixed(1)}" width="${barWidth}" height="${h.toFixed(1)}" fill="${color}"/>`);
      parts.push(`<text x="${x + barWidth / 2}" y="${(y - 4).toFixed(1)}" text-anchor="middle">${metric.text(v)}</text>`);
    });
    parts.push(`<text x="${x0 + groupWidth / 2 - 10}" y="${top + chartHeight + 20}" text-anchor="middle" font-weight="bold">${escapeXml(metric.title)}</text>`);
  });
  parts.push(`<line x1="20" y1="${top + chartHeight}" x2="${width - 20}" y2="${top + chartHeight}" stroke="#333"/>`);
  kinds.forEach(([, name, color], k) => {
    const x = 20 + k * 200;
    const y = top + chartHeight + 50;
    parts.push(`<rect x="${x}" y="${y - 10}" width="12" height="12" fill="${color}"/><text x="${x + 18}" y="${y}">${escapeXml(name)}</text>`);
  });
  parts.push(`<text x="20" y="${top + chartHeight + 78}" fill="#555">TCP a/b ${result.ratios.tcpQnatOverKernel.toFixed(2)} (target 0.5), UDP a/c ${result.ratios.udpQnatOverPassthrough.toFixed(2)} (target 0.8), added median RTT ${result.addedRttUs.qnatOverKernelMedian.toFixed(0)} us (target 50)</text>`);
  parts.push(`</svg>`);
  return parts.join("\n") + "\n";
}

// ---- TAP mode ---------------------------------------------------------------------------------

interface E2eTapResult {
  date: string;
  machine: E2eResult["machine"];
  settings: Omit<E2eResult["settings"], "offloads">;
  topology: string;
  /** The 1-minute load average when the run started: other work on the machine skews every figure. */
  loadAverage: number;
  runs: { qnat?: Figures; kernel: Figures };
  /** Why (a) was not measured: this build's router has no TAP legs. */
  qnatUnavailable?: string;
  ratios?: { tcpQnatOverKernel: number; udpQnatOverKernel: number };
  addedRttUs?: { qnatOverKernelMedian: number };
}

/** qnat and the kernel twin on the seed's Ethernet version; qnat's figures only when its router has TAP legs. */
async function measureTap(seed: string, portBase: number): Promise<Pick<E2eTapResult, "runs" | "qnatUnavailable">> {
  let qnat: Figures | undefined;
  let qnatUnavailable: string | undefined;
  try {
    qnat = await withLab("qnat", seed, (lab) => measure(lab, portBase), undefined, "tap");
  } catch (error) {
    if (!(error instanceof WireLegNotEthernetError)) throw error;
    qnatUnavailable = `this qnat build opens a tap port's wire leg as a TUN device, so it has no TAP datapath to measure (${error.message})`;
    log(`  qnat (TAP mode): not measured: ${qnatUnavailable}`);
  }
  const kernel = await withLab("kernel", seed, (lab) => measure(lab, portBase + 10), undefined, "tap");
  for (const [kind, f] of [["qnat", qnat], ["kernel", kernel]] as const) {
    if (f !== undefined) log(`  ${kind} (TAP mode): TCP ${gbit(f.tcpBitsPerSecond)} Gbit/s (${f.tcpRetransmits} retr), UDP ${kpps(f.udpPacketsPerSecond)} kpps, ping median ${f.pingMedianUs.toFixed(0)} us`);
  }
  return { runs: { ...(qnat === undefined ? {} : { qnat }), kernel }, ...(qnatUnavailable === undefined ? {} : { qnatUnavailable }) };
}

function tapTable(result: E2eTapResult): string {
  const rows: [string, Figures | undefined][] = [
    ["(a) qnat, TAP legs on the bridges", result.runs.qnat],
    ["(b) kernel NAT (twin, veths on the bridges)", result.runs.kernel],
  ];
  const lines = [
    `# qnat end to end, TAP mode (\`npm run bench:e2e\`)`,
    ``,
    `Run ${result.date} on ${result.machine.host}: ${result.machine.cpu}, ${result.machine.cores} cores, Linux ${result.machine.kernel}, Node ${result.machine.node}, ${result.machine.iperf3}; load average ${result.loadAverage.toFixed(1)} when it started.`,
    `Topology: ${result.topology}; traffic ${CLIENT} -> ${SERVER} (SNAT to 9.186.100.2).`,
    `iperf3 TCP: one stream, ${result.settings.tcpSeconds} s. UDP: ${UDP_PAYLOAD}-byte payloads, unlimited rate, ${result.settings.udpSeconds} s, packets/s that arrived. ping: ${result.settings.pingCount} echoes every ${result.settings.pingIntervalS * 1000} ms.`,
    ``,
    `| path | TCP Gbit/s | TCP retransmits | UDP 64 B kpps received | UDP kpps sent | UDP loss % | ping median us | ping p90 us |`,
    `| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`,
    ...rows.map(([name, f]) =>
      f === undefined
        ? `| ${name} | not measured | | | | | | |`
        : `| ${name} | ${gbit(f.tcpBitsPerSecond)} | ${f.tcpRetransmits} | ${kpps(f.udpPacketsPerSecond)} | ${kpps(f.udpSentPacketsPerSecond)} | ${f.udpLossPercent.toFixed(1)} | ${f.pingMedianUs.toFixed(0)} | ${f.pingP90Us.toFixed(0)} |`,
    ),
    ``,
  ];
  if (result.qnatUnavailable !== undefined) lines.push(`(a) not measured: ${result.qnatUnavailable}.`, ``);
  if (result.ratios !== undefined && result.addedRttUs !== undefined) {
    lines.push(
      `| headline | measured |`,
      `| --- | ---: |`,
      `| TCP qnat / kernel (a/b) | ${result.ratios.tcpQnatOverKernel.toFixed(2)} |`,
      `| UDP 64 B qnat / kernel (a/b) | ${result.ratios.udpQnatOverKernel.toFixed(2)} |`,
      `| median RTT added over the kernel path | ${result.addedRttUs.qnatOverKernelMedian.toFixed(0)} us |`,
      ``,
    );
  }
  return lines.join("\n");
}

function iperfVersion(): Promise<string> {
  return new Promise((resolve) => {
    const child = spawn("iperf3", ["--version"], { stdio: ["ignore", "pipe", "ignore"] });
    let out = "";
    child.stdout!.on("data", (c: Buffer) => (out += c.toString()));
    child.once("exit", () => resolve(out.split("\n")[0]!.replace(/\s*\(.*$/, "").trim()));
    child.once("error", () => resolve("iperf3 missing"));
  });
}

async function main(): Promise<number> {
  if (!isRoot()) {
    process.stderr.write("bench:e2e needs root (network namespaces, TUN devices): run it as root\n");
    return 1;
  }
  const root = packageRoot();
  const seed = join(root, "examples", "seed.yaml");
  const iperf = await iperfVersion();
  if (iperf === "iperf3 missing") {
    process.stderr.write("bench:e2e needs iperf3 (apt-get install iperf3)\n");
    return 1;
  }
  if (MODES.length === 0 || MODES.some((m) => !(PARTS as readonly string[]).includes(m))) {
    process.stderr.write(`bench:e2e: --only (or QNAT_BENCH_MODES) is a comma list of ${PARTS.join(", ")}, not "${MODES.join(",")}"\n`);
    return 2;
  }
  const cpu = cpus();
  const machine = { host: hostname(), cpu: cpu[0]?.model.trim() ?? "unknown", cores: cpu.length, kernel: release(), node: process.version, iperf3: iperf };
  const dir = join(root, "bench", "results");
  mkdirSync(dir, { recursive: true });
  const latestPath = join(dir, "latest.json");
  if (MODES.includes("tun")) await runTunMode(seed, machine, dir, latestPath);
  if (MODES.includes("tap")) {
    const loadAverage = loadavg()[0]!;
    const measured = await measureTap(seed, 5401);
    if (!MODES.includes("workers")) progress.done();
    const { qnat, kernel } = measured.runs;
    const result: E2eTapResult = {
      date: new Date().toISOString(),
      machine,
      settings: { tcpSeconds: TCP_SECONDS, udpSeconds: UDP_SECONDS, udpPayloadBytes: UDP_PAYLOAD, pingCount: PING_COUNT, pingIntervalS: PING_INTERVAL_S },
      loadAverage,
      topology: "the seed's router with Ethernet ports (examples/seed.yaml's TAP version: qr- on br-int, qg- on br-ex, the hosts on veths into the bridges), fresh namespaces",
      ...measured,
      ...(qnat === undefined
        ? {}
        : {
            ratios: { tcpQnatOverKernel: ratio(qnat.tcpBitsPerSecond, kernel.tcpBitsPerSecond), udpQnatOverKernel: ratio(qnat.udpPacketsPerSecond, kernel.udpPacketsPerSecond) },
            addedRttUs: { qnatOverKernelMedian: qnat.pingMedianUs - kernel.pingMedianUs },
          }),
    };
    mergeResults(latestPath, "e2eTap", result);
    writeFileSync(join(dir, "e2e-tap.md"), tapTable(result));
    process.stdout.write(tapTable(result));
  }
  if (MODES.includes("workers")) {
    const latest: unknown = existsSync(latestPath) ? JSON.parse(readFileSync(latestPath, "utf8")) : undefined;
    const result = await measureWorkers(seed, machine, { udp: UDP_SECONDS, tcp: TCP_SECONDS }, { step: (label) => progress.step(label), log }, inMemoryScalingFrom(latest));
    progress.done();
    mergeResults(latestPath, "e2eWorkers", result);
    writeFileSync(join(dir, "e2e-workers.md"), workersTable(result));
    process.stdout.write(workersTable(result));
  }
  return 0;
}

/** TUN mode: (a) qnat, (b) the kernel twin, (c) pass-through, then the profile; writes `e2e`, e2e.md and e2e.svg. */
async function runTunMode(seed: string, machine: E2eResult["machine"], dir: string, latestPath: string): Promise<void> {
  const runs = {} as Record<LabKind, Figures>;
  let port = 5201;
  for (const kind of ["qnat", "kernel", "passthrough"] as const) {
    runs[kind] = await withLab(kind, seed, (lab) => measure(lab, port));
    port += 10;
    const f = runs[kind];
    log(`  ${kind}: TCP ${gbit(f.tcpBitsPerSecond)} Gbit/s (${f.tcpRetransmits} retr), UDP ${kpps(f.udpPacketsPerSecond)} kpps, ping median ${f.pingMedianUs.toFixed(0)} us`);
  }
  const profile = PROFILING ? await profileRouter(seed) : undefined;
  if (!MODES.includes("tap") && !MODES.includes("workers")) progress.done();

  const result: E2eResult = {
    date: new Date().toISOString(),
    machine,
    settings: {
      tcpSeconds: TCP_SECONDS,
      udpSeconds: UDP_SECONDS,
      udpPayloadBytes: UDP_PAYLOAD,
      pingCount: PING_COUNT,
      pingIntervalS: PING_INTERVAL_S,
      offloads: "IFF_VNET_HDR + TUNSETOFFLOAD (CSUM, TSO4/6, USO4/6) on every TUN leg",
    },
    runs,
    ratios: {
      tcpQnatOverKernel: ratio(runs.qnat.tcpBitsPerSecond, runs.kernel.tcpBitsPerSecond),
      udpQnatOverPassthrough: ratio(runs.qnat.udpPacketsPerSecond, runs.passthrough.udpPacketsPerSecond),
      udpQnatOverKernel: ratio(runs.qnat.udpPacketsPerSecond, runs.kernel.udpPacketsPerSecond),
      tcpQnatOverPassthrough: ratio(runs.qnat.tcpBitsPerSecond, runs.passthrough.tcpBitsPerSecond),
    },
    addedRttUs: {
      qnatOverKernelMedian: runs.qnat.pingMedianUs - runs.kernel.pingMedianUs,
      passthroughOverKernelMedian: runs.passthrough.pingMedianUs - runs.kernel.pingMedianUs,
    },
    targets: { tcpAtLeastHalfKernel: false, udpAtLeast80PercentOfFloor: false, addedRttAtMost50us: false },
    ...(profile === undefined ? {} : { profile }),
  };
  result.targets = {
    tcpAtLeastHalfKernel: result.ratios.tcpQnatOverKernel >= 0.5,
    udpAtLeast80PercentOfFloor: result.ratios.udpQnatOverPassthrough >= 0.8,
    addedRttAtMost50us: result.addedRttUs.qnatOverKernelMedian <= 50,
  };

  mergeResults(latestPath, "e2e", result); // the hot-path bench writes its own key beside it
  writeFileSync(join(dir, "e2e.md"), table(result));
  writeFileSync(join(dir, "e2e.svg"), svg(result));
  process.stdout.write(table(result));
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    progress.done();
    process.stderr.write(`bench:e2e failed: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  },
);
