/**
 * Does `qnat show conntrack` stall forwarding? (issue 10, "a control plane that never stalls
 * forwarding"; figures in docs/performance.md). As root:
 *   npm run bench:control-stall -- [--entries N] [--baseline PACKAGE_ROOT [--baseline-label TEXT]]
 *
 * For each qnat build (this one, and the one at --baseline, e.g. a checkout of an older commit
 * built with `npx tsc`): a fresh copy of the seed's lab under unique namespace names
 * (randomTag/retagConfigText, never the seed's own names), linked to nothing and removed at the
 * end; the connection table filled with N UDP connections (default 220,000) by a bounded node
 * script in the tenant namespace that sends one datagram from 10.0.0.3's ports 20000-20003 to
 * 203.0.113.10's ports 1..N/4 (SNATed to 9.186.100.2; unreplied UDP lives 30 s, so the table
 * is refilled before every listing by sending the same datagrams again); then, per listing
 * (`show conntrack`, `show conntrack --json`), ping 10.0.0.3 -> 203.0.113.10 every 5 ms through
 * the router while the table is listed over the control socket (this build's client, which
 * takes both the old one-line answer and the streamed one), and the RTT of the pings sent during the listing:
 * median and max, against a 2 s baseline with no listing. No hook in the router: the table is
 * filled by real packets through the TUN legs.
 *
 * Writes bench/results/control-stall.json and control-stall.md.
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseConfig, type RouterConfig } from "../src/config/config.js";
import { isRoot } from "../src/io/netns.js";
import { controlRequest, controlSocketPath } from "../src/control/socket.js";
import { randomTag, retagConfigText } from "../src/control/twin.js";
import { packageRoot, startQnatLab, type Lab } from "./e2e-lab.js";
import { sendUdpFlows } from "./lib/udp-flows.js";

const SOURCE = "10.0.0.3";
const TARGET = "203.0.113.10";
const SOURCE_PORTS = [20000, 20001, 20002, 20003];
const PING_INTERVAL_S = 0.005;
const BASELINE_MS = 2000;
/** Every child process is bounded in time. */
const CHILD_LIMIT_MS = 120_000;

interface Options {
  readonly entries: number;
  readonly baseline: string | undefined;
  /** What to call the baseline build in the results (default: its git commit). */
  readonly baselineLabel: string | undefined;
}

function parseOptions(argv: readonly string[]): Options {
  let entries = 220_000;
  let baseline: string | undefined;
  let baselineLabel: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--entries") entries = Number(argv[++i]);
    else if (argv[i] === "--baseline") baseline = resolve(argv[++i] ?? "");
    else if (argv[i] === "--baseline-label") baselineLabel = argv[++i];
    else throw new Error(`control-stall: unknown argument ${argv[i]} (--entries N, --baseline PACKAGE_ROOT, --baseline-label TEXT)`);
  }
  // 4 source ports x 65535 destination ports, and under the table's 262,144 (no early drop).
  if (!(Number.isInteger(entries) && entries >= 1000 && entries <= 250_000)) throw new Error("--entries must be 1000..250000");
  return { entries, baseline, baselineLabel };
}

interface RttFigures {
  readonly samples: number;
  readonly lost: number;
  readonly medianMs: number;
  readonly maxMs: number;
}

interface ListingRun {
  readonly form: "text" | "json";
  readonly tableEntries: number;
  readonly listedLines: number;
  readonly listingBytes: number;
  readonly listingMs: number;
  readonly idle: RttFigures;
  readonly duringListing: RttFigures;
}

interface BuildRun {
  readonly label: string;
  readonly root: string;
  readonly commit: string;
  readonly runs: ListingRun[];
}

/** Runs a command to completion (bounded in time). */
function run(command: string, args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), CHILD_LIMIT_MS);
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", fail);
    child.on("exit", (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    });
  });
}

async function conntrackCount(cli: string, router: string): Promise<number> {
  const out = await run(process.execPath, [cli, "show", "stats", "--json", "--router", router]);
  if (out.code !== 0) throw new Error(`show stats: ${out.stderr.trim()}`);
  return (JSON.parse(out.stdout) as { conntrack: { count: number } }).conntrack.count;
}

/** Sends the filler's datagrams until the table holds `entries` (at most three passes). */
async function fill(config: RouterConfig, cli: string, entries: number): Promise<number> {
  const tenant = config.ports[0]!.wire.namespace;
  const perPort = Math.ceil(entries / SOURCE_PORTS.length);
  let count = 0;
  for (let pass = 0; pass < 3; pass++) {
    await sendUdpFlows(tenant, SOURCE, TARGET, perPort, SOURCE_PORTS);
    await sleep(300);
    count = await conntrackCount(cli, config.namespace);
    if (count >= entries * 0.93) return count; // a few datagrams are lost in the TUN queues
  }
  throw new Error(`the table holds ${count} entries after three passes, wanted ${entries}`);
}

/** ping -D every 5 ms from the tenant; `stop()` ends it and returns (send time s, rtt ms) per reply and the seqs sent. */
function startPing(config: RouterConfig): { stop: () => Promise<{ replies: { sentAt: number; rttMs: number; seq: number }[]; lastSeq: number }> } {
  const tenant = config.ports[0]!.wire.namespace;
  const child = spawn("ip", ["netns", "exec", tenant, "ping", "-D", "-n", "-i", String(PING_INTERVAL_S), "-I", SOURCE, "-w", "100", TARGET], {
    stdio: ["ignore", "pipe", "ignore"],
  });
  let text = "";
  child.stdout.on("data", (chunk: Buffer) => (text += chunk.toString()));
  const exited = new Promise<void>((done) => child.once("exit", () => done()));
  return {
    stop: async () => {
      child.kill("SIGINT");
      await Promise.race([exited, sleep(3000)]);
      const replies: { sentAt: number; rttMs: number; seq: number }[] = [];
      let lastSeq = 0;
      for (const match of text.matchAll(/^\[(\d+\.\d+)\] .*icmp_seq=(\d+) .*time=([\d.]+) ms/gm)) {
        const rttMs = Number(match[3]);
        const seq = Number(match[2]);
        replies.push({ sentAt: Number(match[1]) - rttMs / 1000, rttMs, seq });
        lastSeq = Math.max(lastSeq, seq);
      }
      return { replies, lastSeq };
    },
  };
}

function figures(replies: readonly { rttMs: number; seq: number }[], firstSeq: number, lastSeq: number): RttFigures {
  const rtts = replies.map((r) => r.rttMs).sort((a, b) => a - b);
  const seen = new Set(replies.map((r) => r.seq));
  let lost = 0;
  for (let seq = firstSeq; seq <= lastSeq; seq++) if (!seen.has(seq)) lost++;
  return { samples: rtts.length, lost, medianMs: rtts[rtts.length >> 1] ?? NaN, maxMs: rtts[rtts.length - 1] ?? NaN };
}

/**
 * `show conntrack` through the control socket, as `qnat show` asks it but with a long silence
 * limit: a router that formats the whole table before answering is silent for seconds, longer
 * than the CLI's 5 s. Pieces are counted as they arrive, as the CLI prints them.
 */
async function list(config: RouterConfig, form: "text" | "json"): Promise<{ bytes: number; newlines: number }> {
  let bytes = 0;
  let newlines = 0;
  const count = (text: string): void => {
    bytes += Buffer.byteLength(text);
    for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) newlines++;
  };
  const response = await controlRequest(controlSocketPath(config.namespace), { cmd: "show", what: "conntrack", json: form === "json" }, CHILD_LIMIT_MS, count);
  if (!response.ok) throw new Error(`show conntrack: ${response.error}`);
  count(response.text ?? "");
  return { bytes, newlines };
}

async function measureListing(config: RouterConfig, cli: string, form: "text" | "json", entries: number): Promise<ListingRun> {
  const tableEntries = await fill(config, cli, entries);
  const ping = startPing(config);
  await sleep(BASELINE_MS);
  const started = Date.now() / 1000;
  const listing = await list(config, form);
  const ended = Date.now() / 1000;
  await sleep(300);
  const { replies } = await ping.stop();
  const idle = replies.filter((r) => r.sentAt < started - 0.05);
  const during = replies.filter((r) => r.sentAt >= started && r.sentAt <= ended);
  const seqs = (list: typeof replies): [number, number] => [Math.min(...list.map((r) => r.seq)), Math.max(...list.map((r) => r.seq))];
  return {
    form,
    tableEntries,
    listedLines: listing.newlines,
    listingBytes: listing.bytes,
    listingMs: Math.round((ended - started) * 1000),
    idle: figures(idle, ...seqs(idle)),
    duringListing: figures(during, ...seqs(during)),
  };
}

async function measureBuild(label: string, root: string, entries: number, commitLabel?: string): Promise<BuildRun> {
  const seed = join(packageRoot(), "examples", "seed.yaml");
  const text = retagConfigText(readFileSync(seed, "utf8"), seed, randomTag());
  const config = parseConfig(text, seed);
  const cli = join(packageRoot(), "dist", "src", "cli", "main.js");
  const commit = commitLabel ?? ((await run("git", ["-C", root, "rev-parse", "--short", "HEAD"])).stdout.trim() || "unknown");
  process.stdout.write(`${label}: ${root} (${commit}), router ${config.namespace}\n`);
  let lab: Lab | undefined;
  try {
    lab = await startQnatLab(text, config, { root });
    const runs: ListingRun[] = [];
    for (const form of ["text", "json"] as const) {
      const result = await measureListing(config, cli, form, entries);
      process.stdout.write(
        `  show conntrack${form === "json" ? " --json" : ""}: ${result.tableEntries} entries, ${result.listedLines} lines in ${result.listingMs} ms; ` +
          `ping idle median ${result.idle.medianMs} ms max ${result.idle.maxMs} ms; during the listing median ${result.duringListing.medianMs} ms ` +
          `max ${result.duringListing.maxMs} ms (${result.duringListing.samples} replies, ${result.duringListing.lost} lost)\n`,
      );
      runs.push(result);
    }
    return { label, root, commit, runs };
  } finally {
    await lab?.stop();
  }
}

function markdown(builds: readonly BuildRun[], date: string): string {
  const lines = [
    "# `show conntrack` vs forwarding: ping RTT through the router while the table is listed",
    "",
    `Run of ${date} (\`npm run bench:control-stall\`; ${cpus().length} cores, Node ${process.version}). Seed lab under unique`,
    "namespace names; ping 10.0.0.3 -> 203.0.113.10 (SNAT) every 5 ms; the table filled with unreplied UDP",
    "connections by real packets. \"idle\": the 2 s before the listing; \"listing\": pings sent while the table was listed.",
    "",
    "| build | listing | table entries | lines | listing ms | idle median / max ms | listing median / max ms | lost |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
  ];
  for (const build of builds) {
    for (const r of build.runs) {
      lines.push(
        `| ${build.label} (${build.commit}) | ${r.form === "json" ? "--json" : "text"} | ${r.tableEntries} | ${r.listedLines} | ${r.listingMs} | ` +
          `${r.idle.medianMs} / ${r.idle.maxMs} | ${r.duringListing.medianMs} / ${r.duringListing.maxMs} | ${r.duringListing.lost} |`,
      );
    }
  }
  return lines.join("\n") + "\n";
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (!isRoot()) {
    process.stderr.write("control-stall: needs root (network namespaces and TUN devices)\n");
    process.exitCode = 1;
    return;
  }
  const builds: BuildRun[] = [];
  if (options.baseline !== undefined) builds.push(await measureBuild("before", options.baseline, options.entries, options.baselineLabel));
  builds.push(await measureBuild("after", packageRoot(), options.entries));
  const date = new Date().toISOString();
  const results = join(packageRoot(), "bench", "results");
  writeFileSync(join(results, "control-stall.json"), JSON.stringify({ date, node: process.version, pingIntervalS: PING_INTERVAL_S, builds }, null, 2) + "\n");
  writeFileSync(join(results, "control-stall.md"), markdown(builds, date));
  process.stdout.write(`wrote ${join(results, "control-stall.json")} and control-stall.md\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`control-stall: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
