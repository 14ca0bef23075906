/**
 * `npm run soak -- --minutes N` (root): the seed's router under fresh names (qnt-<tag>-*, linked
 * to nothing), brought up with `qnat lab up` as an operator does, then N minutes of
 *
 *   traffic   three TCP conversations that carry data all along (10.0.0.3 -> 203.0.113.10 SNATed
 *             as 9.186.100.2, 10.0.0.2 -> 203.0.113.10 SNATed as the floating IP, and
 *             203.0.113.10 -> 9.186.100.129 DNATed to 10.0.0.2), new TCP connections every
 *             second, UDP request/reply, metadata fetches from 10.0.0.2 to 169.254.169.254, pings;
 *   actions   in turn, after a warm-up: a short bounded hping3 SYN flood from spoofed sources at the
 *             floating IP; the tenant's or the outside's wire device deleted (the router retires
 *             the leg and re-creates it by itself; `qnat lab up` gives the hosts their addresses
 *             again); the router killed with SIGKILL and started again by `qnat lab up` (with the
 *             state file, when the config knows `state:`, its connections are restored);
 *
 * sampling `qnat show stats --json` every few seconds. It prints the memory curve (RSS and V8 heap
 * over time), the connections lost and the drops by reason, and fails (one line) on
 *   - growing memory: for each router process that lived long enough, the median RSS of its last
 *     quarter of samples against the median of its first quarter (after a warm-up), beyond an
 *     allowance; the same for the heap in use;
 *   - a lost conversation that the state file should have kept (the router has a state file);
 *   - an unexplained drop: a drop reason outside the set explained by what the soak itself was
 *     doing when it was counted (background traffic explains none).
 *
 * Every traffic generator is bounded in count and in time and killed in `finally`; `qnat lab down`
 * removes everything at exit, also on failure and on Ctrl-C.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseConfig, type RouterConfig } from "../src/config/config.js";
import type { StatsView } from "../src/control/show.js";
import type { ConntrackEntryJson } from "../src/conntrack/format.js";
import { controlRequest, controlSocketPath, pidPathFor } from "../src/control/socket.js";
import { ip, isRoot } from "../src/io/netns.js";
import { median } from "./lib/report.js";
import { namespacesOf } from "../src/control/host-setup.js";
import { packageRoot, retagForRun, runTag } from "./e2e-lab.js";

const MiB = 1024 * 1024;

export interface SoakOptions {
  readonly minutes: number;
  /** Where progress lines go (default: the console). */
  readonly log?: (line: string) => void;
  /** Aborts the run early (Ctrl-C); cleanup still happens. */
  readonly signal?: AbortSignal;
}

export interface MemorySample {
  /** Seconds since the traffic started. */
  readonly t: number;
  readonly pid: number;
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
  readonly conntrackEntries: number;
}

export type ActionKind = "flood" | "tenant-leg" | "outside-leg" | "kill-restart";

export interface ActionRecord {
  readonly kind: ActionKind;
  readonly startedAt: number;
  readonly endedAt: number;
  readonly detail: string;
}

export interface RestartRecord {
  readonly at: number;
  /** The conversations whose connection-table entry had the same reply tuple (the same translated ports) after the restart. */
  readonly kept: number;
  readonly of: number;
  /** What the new router found in its state file (entries restored), when it has one. */
  readonly restored?: number;
  readonly changed: readonly string[];
}

export interface ConversationResult {
  readonly name: string;
  readonly rounds: number;
  readonly broken: string | null;
  /** Seconds since its last echoed round when it was stopped. */
  readonly stalledFor: number;
}

export interface SoakResult {
  readonly minutes: number;
  /** The namespaces the lab used (all removed by the time the result is returned). */
  readonly namespaces: readonly string[];
  readonly stateFile: boolean;
  readonly samples: readonly MemorySample[];
  readonly actions: readonly ActionRecord[];
  readonly conversations: readonly ConversationResult[];
  readonly churn: Record<string, { ok: number; failed: number }>;
  readonly pings: { transmitted: number; received: number };
  /** Per restart: the conversations whose translation (reply tuple) was the same after it, of all. */
  readonly restarts: readonly RestartRecord[];
  /** Drops by reason over the whole run (every router process summed). */
  readonly drops: Record<string, number>;
  /** Drop reasons counted outside what the soak's actions explain, with where they were seen. */
  readonly unexplained: readonly string[];
  /** Why the soak failed, one line; null when it passed. */
  readonly failure: string | null;
}

// ---- what each action explains --------------------------------------------------------------

/**
 * The drop reasons each of the soak's own actions explains while it runs and for SETTLE_MS after.
 * Background traffic (the conversations, churn, pings, metadata fetches) explains none.
 */
export const EXPLAINED_DROPS: Readonly<Record<ActionKind, readonly string[]>> = {
  // hping3 --rand-source: sources in 0/8, 127/8, multicast are martians (ip_route_input_slow);
  // the table may fill and refuse; the burst may overrun the egress queue or the ICMP rate limit.
  flood: ["martian-source", "conntrack-full", "conntrack-insert-failed", "egress-queue-full", "icmp-rate-limited"],
  // A leg down: packets routed to it find no queue; retransmissions meet a stale window.
  "tenant-leg": ["egress-queue-full", "conntrack-invalid", "icmp-rate-limited", "no-route"],
  "outside-leg": ["egress-queue-full", "conntrack-invalid", "icmp-rate-limited", "no-route"],
  // A restart: mid-stream segments meet a table that lost (or aged) their entries; an in-flight
  // metadata fetch's segments are no longer REDIRECTed by an entry.
  "kill-restart": ["conntrack-invalid", "metadata-not-redirected", "egress-queue-full", "icmp-rate-limited"],
};
/** How long after an action ends its drops are still explained by it. */
const SETTLE_MS = 5000;

/** Drops of one reason seen at one sample (`at`, ms since the epoch): the delta since the previous. */
export interface DropEvent {
  readonly at: number;
  readonly reason: string;
  readonly count: number;
}

/**
 * The drops no action explains, one line per reason with the times (s after `t0`) they were seen:
 * a drop is explained when it was sampled while an action ran or within its settle time (plus the
 * time a sample takes), and its reason is in that action's EXPLAINED_DROPS.
 */
export function unexplainedDrops(events: readonly DropEvent[], actions: readonly ActionRecord[], t0: number): string[] {
  const unexplained = new Map<string, { count: number; at: number[] }>();
  for (const event of events) {
    const explained = actions.some(
      (a) => event.at >= a.startedAt && event.at <= a.endedAt + SETTLE_MS + 5000 && EXPLAINED_DROPS[a.kind].includes(event.reason),
    );
    if (explained) continue;
    const entry = unexplained.get(event.reason) ?? { count: 0, at: [] };
    entry.count += event.count;
    entry.at.push(Math.round((event.at - t0) / 1000));
    unexplained.set(event.reason, entry);
  }
  return [...unexplained].map(([reason, e]) => `${reason} ${e.count} (near t=${e.at.join(",")} s)`);
}

// ---- helper processes in the lab's namespaces --------------------------------------------------

/** TCP echo server. */
const TCP_ECHO = `
const [host, port] = process.argv.slice(1);
require("net").createServer((s) => { s.on("error", () => {}); s.pipe(s); })
  .listen({ host, port: Number(port), backlog: 256 }, () => console.log("ready"));`;

/** UDP echo server. */
const UDP_ECHO = `
const [host, port] = process.argv.slice(1);
const s = require("dgram").createSocket("udp4");
s.on("message", (m, peer) => s.send(m, peer.port, peer.address));
s.bind(Number(port), host, () => console.log("ready"));`;

/**
 * A TCP conversation: a 1 KiB line, its echo, 100 ms, the next line. Prints "ready PORT" (its
 * own source port) after 5 rounds; on SIGTERM prints {"rounds","broken","stalledFor"} and exits.
 */
const CONVERSATION = `
const net = require("net");
const [bind, host, port] = process.argv.slice(1);
let rounds = 0, broken = null, received = "", last = Date.now();
const line = () => ("round " + rounds + " ").padEnd(1023, "x") + "\\n";
const socket = net.connect({ host, port: Number(port), localAddress: bind }, () => socket.write(line()));
socket.setEncoding("utf8");
socket.on("data", (data) => {
  received += data;
  if (received.length < 1024) return;
  if (received !== line()) { broken = broken ?? "corrupt"; socket.destroy(); return; }
  received = ""; rounds++; last = Date.now();
  if (rounds === 5) console.log("ready " + socket.localPort);
  setTimeout(() => socket.write(line()), 100);
});
socket.on("error", (error) => (broken = broken ?? error.code));
socket.on("close", () => (broken = broken ?? "closed"));
process.on("SIGTERM", () => { console.log(JSON.stringify({ rounds, broken, stalledFor: (Date.now() - last) / 1000 })); process.exit(0); });`;

/**
 * Churn from the tenant, once a second until SIGTERM: NEW TCP connections from 10.0.0.3 (a line
 * and its echo, then closed), UDP requests on new sockets from 10.0.0.3 (each wants its reply), one
 * metadata fetch from 10.0.0.2 (HTTP GET instance-id). Every exchange has a 2 s deadline.
 * On SIGTERM prints {"tcp":{ok,failed},"udp":{...},"metadata":{...}}.
 */
const CHURN = `
const net = require("net"), dgram = require("dgram"), http = require("http");
const [tcpHost, tcpPort, udpPort, perSecond] = process.argv.slice(1);
const counts = { tcp: { ok: 0, failed: 0 }, udp: { ok: 0, failed: 0 }, metadata: { ok: 0, failed: 0 } };
function settle(kind, timer) { let done = false; return (ok) => { if (done) return; done = true; clearTimeout(timer.t); counts[kind][ok ? "ok" : "failed"]++; }; }
function tcp() {
  const timer = {}; const end = settle("tcp", timer);
  const s = net.connect({ host: tcpHost, port: Number(tcpPort), localAddress: "10.0.0.3" }, () => s.write("hello\\n"));
  timer.t = setTimeout(() => { end(false); s.destroy(); }, 2000);
  s.on("data", () => { end(true); s.end(); });
  s.on("error", () => end(false));
}
function udp() {
  const timer = {}; const end = settle("udp", timer);
  const s = dgram.createSocket("udp4");
  timer.t = setTimeout(() => { end(false); s.close(); }, 2000);
  s.on("message", () => { end(true); s.close(); });
  s.on("error", () => { end(false); s.close(); });
  s.bind(0, "10.0.0.3", () => s.send("ping", Number(udpPort), tcpHost));
}
function metadata() {
  const timer = {}; const end = settle("metadata", timer);
  const req = http.get({ host: "169.254.169.254", path: "/latest/meta-data/instance-id", localAddress: "10.0.0.2", agent: false }, (res) => {
    let body = ""; res.on("data", (d) => (body += d)); res.on("end", () => end(res.statusCode === 200 && body === "i-00000001"));
  });
  timer.t = setTimeout(() => { end(false); req.destroy(); }, 2000);
  req.on("error", () => end(false));
}
setInterval(() => { for (let i = 0; i < Number(perSecond); i++) { tcp(); udp(); } metadata(); }, 1000);
console.log("ready");
process.on("SIGTERM", () => { console.log(JSON.stringify(counts)); process.exit(0); });`;

/** A process in a namespace, SIGKILLed after `limitMs` at the latest. */
interface Helper {
  readonly name: string;
  readonly child: ChildProcess;
  readonly ready: Promise<void>;
  readonly output: Promise<string>;
  /** What it printed so far. */
  text(): string;
  kill(signal?: NodeJS.Signals): void;
}

function startIn(name: string, netns: string, command: string, args: readonly string[], limitMs: number): Helper {
  const child = spawn("ip", ["netns", "exec", netns, command, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  const timer = setTimeout(() => child.kill("SIGKILL"), limitMs);
  let out = "";
  let markReady: () => void = () => undefined;
  const ready = new Promise<void>((done) => (markReady = done));
  child.stdout!.on("data", (chunk: Buffer) => {
    out += chunk.toString();
    if (out.includes("ready")) markReady();
  });
  child.stderr!.on("data", (chunk: Buffer) => (out += chunk.toString()));
  const output = new Promise<string>((done) =>
    child.once("exit", () => {
      clearTimeout(timer);
      markReady();
      done(out);
    }),
  );
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  return { name, child, ready, output, text: () => out, kill: (signal = "SIGKILL") => void (running() && child.kill(signal)) };
}

function nodeIn(name: string, netns: string, script: string, args: readonly (string | number)[], limitMs: number): Helper {
  return startIn(name, netns, process.execPath, ["-e", script, ...args.map(String)], limitMs);
}

/** The last line of a helper's output as JSON, after SIGTERM (null when it printed none). */
async function finalReport<T>(helper: Helper, limitMs = 3000): Promise<T | null> {
  helper.kill("SIGTERM");
  const out = await Promise.race([helper.output, sleep(limitMs).then(() => null)]);
  helper.kill();
  const last = out?.trim().split("\n").pop();
  try {
    return last === undefined ? null : (JSON.parse(last) as T);
  } catch {
    return null;
  }
}

// ---- the router, as an operator drives it -------------------------------------------------------

/** `qnat ARGS...` of this build, bounded; resolves with its exit code and output. */
function qnat(args: readonly string[], limitMs = 90_000): Promise<{ code: number | null; output: string }> {
  const main = join(packageRoot(), "dist", "src", "cli", "main.js");
  const child = spawn(process.execPath, [main, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), limitMs);
  return new Promise((done) =>
    child.once("exit", (code) => {
      clearTimeout(timer);
      done({ code, output });
    }),
  );
}

async function labUpOrFail(configFile: string): Promise<void> {
  const { code, output } = await qnat(["lab", "up", configFile]);
  if (code !== 0) throw new Error(`qnat lab up exited ${code}: ${output.trim().split("\n").slice(-2).join(" | ")}`);
}

function routerPid(config: RouterConfig): number | undefined {
  const path = pidPathFor(controlSocketPath(config.namespace));
  if (!existsSync(path)) return undefined;
  const pid = Number.parseInt(readFileSync(path, "utf8").trim(), 10);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

async function stats(config: RouterConfig): Promise<StatsView | null> {
  try {
    const response = await controlRequest(controlSocketPath(config.namespace), { cmd: "show", what: "stats", json: true }, 5000);
    return response.ok ? (response.data as StatsView) : null;
  } catch {
    return null;
  }
}

/** The connection table as `show conntrack --json` lists it (empty when the router does not answer). */
async function conntrackEntries(config: RouterConfig): Promise<ConntrackEntryJson[]> {
  try {
    const response = await controlRequest(controlSocketPath(config.namespace), { cmd: "show", what: "conntrack", json: true }, 10_000);
    return response.ok ? (JSON.parse(response.text ?? "[]") as ConntrackEntryJson[]) : [];
  } catch {
    return [];
  }
}

/** A conversation's flow: its source address and port, and where it goes. */
interface Flow {
  readonly name: string;
  readonly src: string;
  readonly sport: number;
  readonly dst: string;
  readonly dport: number;
}

/** The reply tuple of each flow's entry ("" when the table has none). */
function translations(entries: readonly ConntrackEntryJson[], flows: readonly Flow[]): string[] {
  return flows.map((flow) => {
    const entry = entries.find(
      (e) => e.protocol === "tcp" && e.original.src === flow.src && e.original.sport === flow.sport && e.original.dst === flow.dst && e.original.dport === flow.dport,
    );
    return entry === undefined ? "" : `${entry.reply.src}:${entry.reply.sport} -> ${entry.reply.dst}:${entry.reply.dport}`;
  });
}

/** Drops by reason summed over the ports. */
function dropsOf(view: StatsView): Map<string, number> {
  const out = new Map<string, number>();
  for (const port of view.ports) for (const [reason, n] of Object.entries(port.drops)) out.set(reason, (out.get(reason) ?? 0) + n);
  return out;
}

/** The config text with a state file, when this qnat's config knows `state:` (else null). */
function withStateFile(text: string, path: string, file: string): string | null {
  const candidate = `${text.trimEnd()}\nstate: { file: ${file}, interval: 1 }\n`;
  try {
    const parsed = parseConfig(candidate, path) as RouterConfig & { state?: unknown };
    return parsed.state === undefined ? null : candidate;
  } catch {
    return null;
  }
}

// ---- the figures ---------------------------------------------------------------------------------

/** Growth allowances: RSS may end 25% + 16 MiB above its start, the heap 50% + 16 MiB. */
export const RSS_ALLOWANCE = { ratio: 1.25, bytes: 16 * MiB };
export const HEAP_ALLOWANCE = { ratio: 1.5, bytes: 16 * MiB };
/** Samples of a process's life before its memory counts (start-up, JIT, first connections). */
const WARMUP_SAMPLES = 2;
/** A process needs this many samples after warm-up for its quarters to mean something. */
const MIN_SAMPLES = 8;

/**
 * Growing memory, as one line, or null: for each router process with at least MIN_SAMPLES samples
 * after warm-up, the median of its last quarter against the median of its first quarter.
 */
export function memoryGrowth(samples: readonly MemorySample[]): string | null {
  const byPid = new Map<number, MemorySample[]>();
  for (const s of samples) byPid.set(s.pid, [...(byPid.get(s.pid) ?? []), s]);
  for (const [pid, all] of byPid) {
    const life = all.slice(WARMUP_SAMPLES);
    if (life.length < MIN_SAMPLES) continue;
    const quarter = Math.max(2, Math.floor(life.length / 4));
    const first = life.slice(0, quarter);
    const last = life.slice(-quarter);
    for (const [what, pick, allowance] of [
      ["RSS", (s: MemorySample) => s.rssBytes, RSS_ALLOWANCE],
      ["heap", (s: MemorySample) => s.heapUsedBytes, HEAP_ALLOWANCE],
    ] as const) {
      const before = median(first.map(pick));
      const after = median(last.map(pick));
      if (after > before * allowance.ratio + allowance.bytes) {
        return `router pid ${pid}: ${what} grew from ${(before / MiB).toFixed(1)} MiB (median, t=${first[0]!.t}-${first.at(-1)!.t} s) to ${(after / MiB).toFixed(1)} MiB (t=${last[0]!.t}-${last.at(-1)!.t} s)`;
      }
    }
  }
  return null;
}

/** The memory curve as a small table: at most `rows` rows, evenly spread. */
export function memoryTable(samples: readonly MemorySample[], rows = 12): string {
  const step = Math.max(1, Math.ceil(samples.length / rows));
  const picked = samples.filter((_, i) => i % step === 0 || i === samples.length - 1);
  const lines = ["     t   pid      RSS MiB  heap MiB  conntrack"];
  for (const s of picked) {
    lines.push(
      `${String(Math.round(s.t)).padStart(5)} s ${String(s.pid).padStart(6)} ${(s.rssBytes / MiB).toFixed(1).padStart(9)} ${(s.heapUsedBytes / MiB).toFixed(1).padStart(9)} ${String(s.conntrackEntries).padStart(10)}`,
    );
  }
  return lines.join("\n");
}

export function formatResult(result: SoakResult): string {
  const lines = [
    `soak: ${result.minutes} min, state file ${result.stateFile ? "on" : "off (this qnat has no state: key)"}, ${result.actions.length} actions: ${summarizeActions(result.actions)}`,
    "memory (router RSS and V8 heap in use):",
    memoryTable(result.samples),
    "connections:",
    ...result.conversations.map((c) => `  ${c.name.padEnd(52)} ${String(c.rounds).padStart(6)} rounds, ${c.broken === null && c.stalledFor < STALL_S ? "kept" : `LOST (${c.broken ?? `stalled ${c.stalledFor.toFixed(0)} s`})`}`),
    `  new connections and requests: ${Object.entries(result.churn).map(([k, v]) => `${k} ${v.ok} ok / ${v.failed} failed`).join(", ")}`,
    `  pings: ${result.pings.received}/${result.pings.transmitted}`,
    ...result.restarts.map((r) => `  restart at ${r.at} s: ${r.kept}/${r.of} conversations kept their translated ports${r.restored === undefined ? "" : ` (${r.restored} entries restored from the state file)`}`),
    `drops by reason: ${Object.keys(result.drops).length === 0 ? "none" : Object.entries(result.drops).map(([k, v]) => `${k} ${v}`).join(", ")}`,
    ...(result.unexplained.length > 0 ? [`unexplained drops: ${result.unexplained.join("; ")}`] : []),
    result.failure === null ? "soak: PASS" : `soak: FAIL: ${result.failure}`,
  ];
  return lines.join("\n");
}

function summarizeActions(actions: readonly ActionRecord[]): string {
  const counts = new Map<string, number>();
  for (const a of actions) counts.set(a.kind, (counts.get(a.kind) ?? 0) + 1);
  return [...counts].map(([k, n]) => `${n} ${k}`).join(", ") || "none";
}

/** A conversation with no echoed round for this long when stopped is lost. */
const STALL_S = 20;

// ---- the run ----------------------------------------------------------------------------------------

const SEED = resolve(packageRoot(), "examples", "seed.yaml");
const ACTION_ORDER: readonly ActionKind[] = ["flood", "kill-restart", "tenant-leg", "outside-leg"];
/** The SYN flood: at most this many packets, for at most FLOOD_MS. */
const FLOOD_PACKETS = 20_000;
const FLOOD_MS = 4000;

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  if (!isRoot()) throw new Error("the soak needs root (network namespaces, TUN devices)");
  const log = options.log ?? ((line: string) => console.log(line));
  const durationMs = Math.round(options.minutes * 60_000);
  const { text: seedText, config } = retagForRun(SEED, runTag());
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;
  const dir = mkdtempSync(join(tmpdir(), "qnat-soak-"));
  const configFile = join(dir, "router.yaml");
  const stated = withStateFile(seedText, configFile, join(dir, "conntrack.state"));
  writeFileSync(configFile, stated ?? seedText);

  const helpers: Helper[] = [];
  const samples: MemorySample[] = [];
  const actions: ActionRecord[] = [];
  const restarts: RestartRecord[] = [];
  let flows: Flow[] = [];
  /** The drops seen in each sampling interval, with when it ended. */
  const dropEvents: DropEvent[] = [];
  const totals = new Map<string, number>();
  let lastPid: number | undefined;
  let lastDrops = new Map<string, number>();
  let t0 = Date.now();
  const since = (): number => (Date.now() - t0) / 1000;
  const aborted = (): boolean => options.signal?.aborted === true;
  const limitMs = durationMs + 120_000;

  /** One sample: memory, and the drops counted since the previous one (per router process). */
  async function sample(): Promise<void> {
    const view = await stats(config);
    const pid = routerPid(config);
    if (view === null || pid === undefined) return;
    const drops = dropsOf(view);
    const previous = pid === lastPid ? lastDrops : new Map<string, number>();
    for (const [reason, n] of drops) {
      const delta = n - (previous.get(reason) ?? 0);
      if (delta > 0) {
        dropEvents.push({ at: Date.now(), reason, count: delta });
        totals.set(reason, (totals.get(reason) ?? 0) + delta);
      }
    }
    lastPid = pid;
    lastDrops = drops;
    const memory = view.process;
    const rssBytes = memory?.rssBytes ?? rssFromProc(pid);
    samples.push({ t: Math.round(since()), pid, rssBytes, heapUsedBytes: memory?.heapUsedBytes ?? 0, conntrackEntries: view.conntrack.count });
  }

  async function act(kind: ActionKind): Promise<void> {
    await sample(); // drops before the action are not its own
    const startedAt = Date.now();
    let detail = "";
    switch (kind) {
      case "flood": {
        const flood = startIn("hping3", external, "hping3", ["-S", "-p", "7000", "--rand-source", "-i", "u200", "-c", String(FLOOD_PACKETS), "-q", "9.186.100.129"], FLOOD_MS);
        helpers.push(flood);
        await flood.output;
        detail = `SYN flood at 9.186.100.129:7000 for ${FLOOD_MS / 1000} s`;
        break;
      }
      case "tenant-leg":
      case "outside-leg": {
        const netns = kind === "tenant-leg" ? tenant : external;
        ip(netns, "link", "del", "eth0");
        await sleep(1500);
        await labUpOrFail(configFile); // waits for the router's new leg, then the hosts' addresses
        detail = `eth0 in ${netns} deleted; leg re-created`;
        break;
      }
      case "kill-restart": {
        const before = translations(await conntrackEntries(config), flows);
        // Let the state file catch up with the table as it is now (one interval).
        if (stated !== null) await sleep(1500);
        const pid = routerPid(config);
        if (pid !== undefined) process.kill(pid, "SIGKILL");
        await sleep(500);
        await labUpOrFail(configFile);
        const view = await stats(config);
        await sleep(2000); // the conversations' next rounds cross the new router
        const after = translations(await conntrackEntries(config), flows);
        const changed = flows.flatMap((f, i) => (before[i] !== "" && after[i] === before[i] ? [] : [`${f.name}: ${before[i] || "(none)"} became ${after[i] || "(none)"}`]));
        const restored = view?.state?.restore.restored;
        restarts.push({ at: Math.round(since()), kept: flows.length - changed.length, of: flows.length, ...(restored === undefined ? {} : { restored }), changed });
        detail = `router pid ${pid} killed (SIGKILL), started again as pid ${routerPid(config)}` +
          `${restored === undefined ? "" : ` with ${restored} entries restored`}; ${flows.length - changed.length}/${flows.length} conversations kept their translation`;
        break;
      }
    }
    const endedAt = Date.now();
    actions.push({ kind, startedAt, endedAt, detail });
    log(`  ${since().toFixed(0).padStart(4)} s  ${kind}: ${detail}`);
    await sleep(SETTLE_MS);
    await sample(); // what the action and its aftermath cost, stamped inside its window
  }

  let conversations: ConversationResult[] = [];
  let churn: SoakResult["churn"] = {};
  let pings = { transmitted: 0, received: 0 };
  try {
    log(`soak: ${options.minutes} min of the seed's router as ${config.namespace} (state file ${stated === null ? "off: this qnat has no state: key" : "on"})`);
    await labUpOrFail(configFile);
    const servers = [
      nodeIn("tcp echo", external, TCP_ECHO, ["203.0.113.10", 7001], limitMs),
      nodeIn("udp echo", external, UDP_ECHO, ["203.0.113.10", 7002], limitMs),
      nodeIn("tcp echo (floating IP)", tenant, TCP_ECHO, ["10.0.0.2", 7000], limitMs),
    ];
    helpers.push(...servers);
    await Promise.all(servers.map((s) => s.ready));
    const talks = [
      nodeIn("10.0.0.3 -> 203.0.113.10:7001 (SNAT 9.186.100.2)", tenant, CONVERSATION, ["10.0.0.3", "203.0.113.10", 7001], limitMs),
      nodeIn("10.0.0.2 -> 203.0.113.10:7001 (SNAT 9.186.100.129)", tenant, CONVERSATION, ["10.0.0.2", "203.0.113.10", 7001], limitMs),
      nodeIn("203.0.113.10 -> 9.186.100.129:7000 (DNAT 10.0.0.2)", external, CONVERSATION, ["203.0.113.10", "9.186.100.129", 7000], limitMs),
    ];
    helpers.push(...talks);
    await Promise.race([Promise.all(talks.map((t) => t.ready)), sleep(15_000)]);
    const ends: [string, string, number][] = [["10.0.0.3", "203.0.113.10", 7001], ["10.0.0.2", "203.0.113.10", 7001], ["203.0.113.10", "9.186.100.129", 7000]];
    flows = await Promise.all(
      talks.map(async (talk, i) => {
        await talk.ready;
        const sport = Number(/ready (\d+)/.exec(talk.text())?.[1] ?? 0);
        return { name: talk.name, src: ends[i]![0], sport, dst: ends[i]![1], dport: ends[i]![2] };
      }),
    );
    const churner = nodeIn("churn", tenant, CHURN, ["203.0.113.10", 7001, 7002, 5], limitMs);
    const pingCount = Math.ceil(durationMs / 200);
    const pinger = startIn("ping", tenant, "ping", ["-I", "10.0.0.3", "-i", "0.2", "-c", String(pingCount), "-w", String(Math.ceil(durationMs / 1000) + 5), "-W", "1", "-q", "203.0.113.10"], limitMs);
    helpers.push(churner, pinger);

    t0 = Date.now();
    const sampleEveryMs = Math.max(2000, Math.min(10_000, durationMs / 40));
    const warmupMs = Math.min(30_000, durationMs / 6);
    const actionEveryMs = Math.max(5000, (durationMs - warmupMs) / 10);
    let nextSample = 0;
    let nextAction = warmupMs;
    let turn = 0;
    while (!aborted() && Date.now() - t0 < durationMs) {
      const elapsed = Date.now() - t0;
      if (elapsed >= nextSample) {
        await sample();
        nextSample = elapsed + sampleEveryMs;
      }
      // An action only when the next one would still end (and settle) inside the run.
      if (elapsed >= nextAction && elapsed + 15_000 < durationMs) {
        await act(ACTION_ORDER[turn++ % ACTION_ORDER.length]!);
        nextAction = Date.now() - t0 + actionEveryMs;
      }
      await sleep(200);
    }
    await sleep(Math.min(SETTLE_MS, 2000));
    await sample();

    conversations = await Promise.all(
      talks.map(async (talk) => {
        const report = await finalReport<{ rounds: number; broken: string | null; stalledFor: number }>(talk);
        return { name: talk.name, rounds: report?.rounds ?? 0, broken: report === null ? "no report" : report.broken, stalledFor: report?.stalledFor ?? Infinity };
      }),
    );
    churn = (await finalReport<SoakResult["churn"]>(churner)) ?? {};
    pinger.kill("SIGINT"); // ping prints its summary on SIGINT
    const pingOut = await Promise.race([pinger.output, sleep(3000).then(() => "")]);
    const summary = /(\d+) packets transmitted, (\d+) received/.exec(pingOut);
    if (summary !== null) pings = { transmitted: Number(summary[1]), received: Number(summary[2]) };
  } finally {
    for (const helper of helpers) helper.kill();
    const down = await qnat(["lab", "down", configFile], 30_000);
    if (down.code !== 0) log(`soak: qnat lab down exited ${down.code}: ${down.output.trim()}`);
    rmSync(dir, { recursive: true, force: true });
  }

  const unexplainedLines = unexplainedDrops(dropEvents, actions, t0);
  const lost = conversations.filter((c) => c.broken !== null || c.stalledFor >= STALL_S);

  let failure: string | null = null;
  if (aborted()) failure = "interrupted";
  else if (conversations.length === 0) failure = "the conversations never reported";
  else if (stated !== null && restarts.some((r) => r.changed.length > 0)) failure = `a restart changed what the state file should have kept: ${restarts.flatMap((r) => r.changed.map((c) => `t=${r.at} s ${c}`)).join("; ")}`;
  else if (stated !== null && lost.length > 0) failure = `lost ${lost.length} connection(s) the state file should have kept: ${lost.map((c) => `${c.name} (${c.broken ?? "stalled"})`).join("; ")}`;
  else if (unexplainedLines.length > 0) failure = `unexplained drops: ${unexplainedLines.join("; ")}`;
  else failure = memoryGrowth(samples);

  const drops = Object.fromEntries([...totals].sort((a, b) => b[1] - a[1]));
  return { minutes: options.minutes, namespaces: namespacesOf(config), stateFile: stated !== null, samples, actions, conversations, churn, pings, restarts, drops, unexplained: unexplainedLines, failure };
}

function rssFromProc(pid: number): number {
  try {
    const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match === null ? 0 : Number(match[1]) * 1024;
  } catch {
    return 0;
  }
}

// ---- command line ---------------------------------------------------------------------------------

function parseMinutes(argv: readonly string[]): number {
  const at = argv.indexOf("--minutes");
  const value = at >= 0 ? Number(argv[at + 1]) : 5;
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--minutes wants a positive number, not ${argv[at + 1]}`);
  return value;
}

async function main(): Promise<void> {
  const controller = new AbortController();
  const stop = (): void => {
    console.log("soak: interrupted; removing the lab");
    controller.abort();
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  try {
    const result = await runSoak({ minutes: parseMinutes(process.argv.slice(2)), signal: controller.signal });
    console.log(formatResult(result));
    process.exitCode = result.failure === null ? 0 : 1;
  } catch (error) {
    console.log(`soak: FAIL: ${(error as Error).message}`);
    process.exitCode = 1;
  }
}

if (import.meta.url === `file://${process.argv[1]}`) void main();
