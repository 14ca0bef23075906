/**
 * The conformance harness: one config, two routers built from it side by side — the kernel twin
 * (src/control/twin.ts: veths, ip_forward=1, the nat rules in iptables) and qnat's lab (`qnat lab
 * up` of the same config) — each with its namespaces renamed X -> X-<tag> so they never collide.
 * A scenario (a Plan) runs the same programs in both (probe.py: servers, a sniffer on each wire
 * device, clients, crafted packets) and compares what the endpoints observed and the connection
 * tables, normalised for what may legitimately differ (timers, ports the kernel picks at random,
 * router-generated IP ids). A difference fails the scenario with both sides printed side by side.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseDocument } from "yaml";
import { parseConfig, type RouterConfig, type WireMode } from "../../src/config/config.js";
import { labDeviceOf, tapPortsWithoutTapLegs } from "../../src/control/host-setup.js";
import { buildKernelTwin, natRestoreText, randomTag, retagConfigText, tapVariantText, type KernelTwin } from "../../src/control/twin.js";
import { isRoot as runningAsRoot } from "../../src/io/netns.js";
import { setTimeout as sleep } from "node:timers/promises";
import { withWorkersText } from "../../bench/e2e-lab.js";

export const ROOT = resolve(import.meta.dirname, "../..");
export const CLI = join(ROOT, "dist/src/cli/main.js");
export const PROBE = join(import.meta.dirname, "probe.py");
export const isRoot = runningAsRoot();
const COMMAND_LIMIT_MS = 30_000;

export type SideName = "kernel" | "qnat";

/**
 * Which version of the config both routers run: `tun` (the config as written) or `tap` (its
 * Ethernet version, tapVariantText: every port a TAP leg on a Linux bridge, the kernel twin the
 * same bridges and MACs on veths), where ARP, neighbours and host unreachable are compared too.
 */
export type HarnessMode = WireMode;

/** The config text both sides of `mode` start from (before renaming). */
export function configTextFor(configPath: string, mode: HarnessMode): string {
  const text = readFileSync(configPath, "utf8");
  return mode === "tap" ? tapVariantText(text, configPath) : text;
}

/**
 * qnat cannot run the TAP version here: its router opened a tap port's wire leg as a TUN device
 * (link/none), so this build has no TAP datapath. The TAP suite reports it and skips, saying why;
 * any other failure to start fails the suite.
 */
export class TapDatapathMissing extends Error {}

/** One router built from the config: its renamed namespaces and how to read its conntrack table. */
export interface Side {
  readonly name: SideName;
  readonly tag: string;
  /** The renamed config. */
  readonly config: RouterConfig;
  /** The original namespace name -> this side's. */
  ns(original: string): string;
  conntrack(): Promise<CtEntry[]>;
  /** Empties the router's connection table (`conntrack -F`, `qnat conntrack -F`). */
  flushConntrack(): Promise<void>;
  /** Replaces the router's nat rules while it runs: `iptables-restore` on the twin, `qnat apply` on qnat. */
  setNat(text: string): Promise<void>;
  teardown(): Promise<void>;
}

export interface CtTuple {
  src: string;
  dst: string;
  sport?: number;
  dport?: number;
}

export interface CtEntry {
  protocol: string;
  state?: string;
  original: CtTuple;
  reply: CtTuple;
  unreplied: boolean;
  assured: boolean;
  timeout: number;
}

export function run(command: string, args: readonly string[], options: { input?: string; timeoutMs?: number } = {}): { code: number | null; stdout: string; stderr: string } {
  const result = spawnSync(command, args, { encoding: "utf8", input: options.input, timeout: options.timeoutMs ?? COMMAND_LIMIT_MS });
  return { code: result.status, stdout: result.stdout ?? "", stderr: result.stderr ?? "" };
}

function runAsync(command: string, args: readonly string[], timeoutMs = COMMAND_LIMIT_MS): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** `conntrack -L` text (libnetfilter_conntrack's default format) -> entries. */
export function parseConntrackText(text: string): CtEntry[] {
  const entries: CtEntry[] = [];
  for (const line of text.split("\n")) {
    const words = line.trim().split(/\s+/);
    if (words.length < 4 || !/^\d+$/.test(words[1] ?? "")) continue;
    const protocol = words[0]!;
    const timeout = Number(words[2]);
    let i = 3;
    let state: string | undefined;
    if (!words[i]!.includes("=")) state = words[i++];
    const tuples: CtTuple[] = [];
    let current: Record<string, string> = {};
    let unreplied = false;
    let assured = false;
    const flush = (): void => {
      if (current.src === undefined) return;
      const tuple: CtTuple = { src: current.src, dst: current.dst ?? "" };
      const sport = current.sport ?? current.id ?? current.srckey;
      const dport = current.dport ?? (current.type !== undefined ? String((Number(current.type) << 8) | Number(current.code ?? 0)) : current.dstkey);
      if (sport !== undefined && current.srckey === undefined) tuple.sport = Number(sport);
      if (dport !== undefined && current.dstkey === undefined) tuple.dport = Number(dport);
      tuples.push(tuple);
      current = {};
    };
    for (; i < words.length; i++) {
      const word = words[i]!;
      if (word === "[UNREPLIED]") unreplied = true;
      else if (word === "[ASSURED]") assured = true;
      else if (word.startsWith("mark=") || word.startsWith("use=") || word.startsWith("zone=")) continue;
      else if (word.includes("=")) {
        const [key, value] = word.split("=") as [string, string];
        if (key === "src" && current.src !== undefined) flush();
        current[key] = value;
      }
    }
    flush();
    if (tuples.length < 2) continue;
    entries.push({ protocol, state, original: tuples[0]!, reply: tuples[1]!, unreplied, assured, timeout });
  }
  return entries;
}

interface QnatJsonEntry {
  protocol: string;
  state?: string;
  timeout: number;
  original: { src: string; dst: string; sport?: number; dport?: number; type?: number; code?: number; id?: number };
  reply: { src: string; dst: string; sport?: number; dport?: number; type?: number; code?: number; id?: number };
  status: string[];
}

function fromQnatTuple(t: QnatJsonEntry["original"]): CtTuple {
  if (t.type !== undefined) return { src: t.src, dst: t.dst, sport: t.id, dport: (t.type << 8) | (t.code ?? 0) };
  const tuple: CtTuple = { src: t.src, dst: t.dst };
  if (t.sport !== undefined) tuple.sport = t.sport;
  if (t.dport !== undefined) tuple.dport = t.dport;
  return tuple;
}

/** `qnat show conntrack --json` -> entries. */
export function parseQnatConntrack(json: string): CtEntry[] {
  const parsed = JSON.parse(json) as QnatJsonEntry[] | { entries: QnatJsonEntry[] };
  const list = Array.isArray(parsed) ? parsed : parsed.entries;
  return list.map((e) => ({
    protocol: e.protocol,
    state: e.state,
    original: fromQnatTuple(e.original),
    reply: fromQnatTuple(e.reply),
    unreplied: !e.status.includes("SEEN_REPLY"),
    assured: e.status.includes("ASSURED"),
    timeout: e.timeout,
  }));
}

function renamer(config: RouterConfig, tag: string): (name: string) => string {
  const known = new Set([config.namespace, ...config.ports.map((p) => p.wire.namespace), ...config.lab.map((h) => h.namespace)]);
  return (name: string) => {
    if (!known.has(name)) throw new Error(`namespace ${name} is not in the config`);
    return `${name}-${tag}`;
  };
}

/** The kernel twin of CONFIG, renamed with a fresh tag, checksum offload off so the sniffers see real checksums. */
export async function startKernelSide(configPath: string, original: RouterConfig, mode: HarnessMode = "tun"): Promise<Side> {
  const tag = randomTag("k");
  const text = retagConfigText(configTextFor(configPath, mode), configPath, tag);
  const config = parseConfig(text, configPath);
  let twin: KernelTwin | undefined;
  twin = await buildKernelTwin(config);
  for (const port of config.ports) {
    run("ip", ["netns", "exec", config.namespace, "python3", PROBE, "txcsum-off", port.name]);
    run("ip", ["netns", "exec", port.wire.namespace, "python3", PROBE, "txcsum-off", port.wire.device]);
  }
  // On a bridged port the hosts send from their veth into the bridge, not from the wire device.
  for (const host of config.lab) run("ip", ["netns", "exec", host.namespace, "python3", PROBE, "txcsum-off", labDeviceOf(config, host)]);
  const rename = renamer(original, tag);
  return {
    name: "kernel",
    tag,
    config,
    ns: rename,
    async conntrack() {
      const out = await runAsync("ip", ["netns", "exec", config.namespace, "conntrack", "-L"]);
      return parseConntrackText(out.stdout);
    },
    async flushConntrack() {
      const out = await runAsync("ip", ["netns", "exec", config.namespace, "conntrack", "-F"]);
      if (out.code !== 0) throw new Error(`conntrack -F in ${config.namespace}: ${out.stderr.trim()}`);
    },
    async setNat(nat: string) {
      const out = run("ip", ["netns", "exec", config.namespace, "iptables-restore"], { input: natRestoreText(nat) });
      if (out.code !== 0) throw new Error(`iptables-restore in ${config.namespace}: ${out.stderr.trim()}`);
    },
    async teardown() {
      twin?.destroy();
      twin = undefined;
    },
  };
}

/**
 * qnat's lab of CONFIG (`qnat lab up` of a renamed copy in a temp directory); with `workers`, the
 * copy says `workers: N` (bench/e2e-lab.ts withWorkersText), its nat changes (`qnat apply`) too.
 */
export async function startQnatSide(configPath: string, original: RouterConfig, mode: HarnessMode = "tun", workers?: number): Promise<Side> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  const tag = randomTag("q");
  const retagged = retagConfigText(configTextFor(configPath, mode), configPath, tag);
  const text = workers === undefined ? retagged : withWorkersText(retagged, workers);
  const config = parseConfig(text, configPath);
  const dir = mkdtempSync(join(tmpdir(), "qnat-conformance-"));
  const path = join(dir, "config.yaml");
  writeFileSync(path, text);
  const down = async (): Promise<void> => {
    await runAsync(process.execPath, [CLI, "lab", "down", path], 60_000);
    rmSync(dir, { recursive: true, force: true });
  };
  const up = await runAsync(process.execPath, [CLI, "lab", "up", path], 60_000);
  if (up.code !== 0) {
    const withoutTap = mode === "tap" ? tapPortsWithoutTapLegs(config) : [];
    await down();
    const why = up.stderr.trim() || up.stdout.trim();
    if (withoutTap.length > 0) {
      throw new TapDatapathMissing(`qnat's router opened the wire legs of tap ports as TUN devices (${withoutTap.join(", ")}): this build has no TAP datapath (issue 12); lab up said: ${why}`);
    }
    throw new Error(`qnat lab up failed (${up.code}): ${why}`);
  }
  return {
    name: "qnat",
    tag,
    config,
    ns: renamer(original, tag),
    async conntrack() {
      const out = await runAsync(process.execPath, [CLI, "show", "conntrack", "--json", "--router", config.namespace]);
      if (out.code !== 0) throw new Error(`qnat show conntrack: ${out.stderr.trim()}`);
      return parseQnatConntrack(out.stdout);
    },
    async flushConntrack() {
      const out = await runAsync(process.execPath, [CLI, "conntrack", "-F", "--router", config.namespace]);
      if (out.code !== 0) throw new Error(`qnat conntrack -F: ${out.stderr.trim()}`);
    },
    async setNat(nat: string) {
      const document = parseDocument(text);
      document.set("nat", nat);
      const changed = join(dir, "changed.yaml");
      writeFileSync(changed, document.toString());
      const out = await runAsync(process.execPath, [CLI, "apply", changed, "--router", config.namespace]);
      if (out.code !== 0) throw new Error(`qnat apply: ${out.stderr.trim() || out.stdout.trim()}`);
    },
    teardown: down,
  };
}

// ------------------------------------------------------------------------------------ plans

export interface AgentSpec {
  udp?: number[];
  tcp?: number[];
  /** Sniff incoming IPv4 on this namespace's wire device (default true for wire namespaces). */
  sniff?: boolean;
}

export type ClientAction = Record<string, unknown> & { kind: "udp" | "tcp" | "raw" | "sleep" | "http" };

export interface Observation {
  /** Per original namespace: what its agent recorded. */
  agents: Record<string, { events: Array<Record<string, unknown>>; packets: Array<Record<string, unknown>> }>;
  /** Per client (in plan order): the results of its actions. */
  clients: Array<Array<Record<string, unknown>>>;
  /** Per client (in plan order): the actions it ran, one per result. */
  actions: ClientAction[][];
  conntrack: CtEntry[];
  /** What plan.invariants read from the router after the steps. */
  invariants?: string[];
  /**
   * Packets that arrived at the router's own host on the ports of plan.sniffRouterHost: evidence
   * for the timing comparison and the timelines only, never compared (the kernel twin's ports
   * also carry forwarded packets, qnat's mirrors only the router host's).
   */
  routerHost?: Array<Record<string, unknown>>;
}

export interface ClientRun {
  /** Original namespace name (the router's namespace for router-originated traffic). */
  ns: string;
  actions: ClientAction[] | ((seen: Observation) => ClientAction[]);
}

/** One compared record of a section, as an allowance's predicate sees it (before normalising). */
export type ComparedRecord =
  | { readonly kind: "client"; readonly result: Record<string, unknown>; readonly action: ClientAction | undefined }
  | { readonly kind: "server"; readonly event: Record<string, unknown> }
  | { readonly kind: "packet"; readonly packet: Record<string, unknown> }
  | { readonly kind: "conntrack"; readonly entry: CtEntry }
  | { readonly kind: "fact"; readonly fact: string };

/**
 * A documented difference: the records of one section that may differ, and why. Only records for
 * which `allows` is true may be on one side only (or differ); the rest of the section is still
 * compared line by line, so an unrelated difference in an allowed section fails the scenario.
 */
export interface Allowance {
  /** A section's name (`wire into qnat-external`) or a kind of section (`clients`, `servers`, `wire`, `conntrack`). */
  readonly section: string;
  /** Why these records differ: what docs/differences.md says. */
  readonly reason: string;
  readonly allows: (record: ComparedRecord) => boolean;
}

/** Predicates for allowances, one per kind of record (each is false for the other kinds). */
export const allowing = {
  clients: (test: (result: Record<string, unknown>, action: ClientAction | undefined) => boolean) => (r: ComparedRecord) => r.kind === "client" && test(r.result, r.action),
  events: (test: (event: Record<string, unknown>) => boolean) => (r: ComparedRecord) => r.kind === "server" && test(r.event),
  packets: (test: (packet: Record<string, unknown>) => boolean) => (r: ComparedRecord) => r.kind === "packet" && test(r.packet),
  entries: (test: (entry: CtEntry) => boolean) => (r: ComparedRecord) => r.kind === "conntrack" && test(r.entry),
};

/** A step that replaces the router's nat rules with `nat` (iptables -S or iptables-save text) from then on; the config's own rules come back after the scenario. */
export interface NatChange {
  nat: string;
}

export interface Plan {
  name: string;
  /** Original namespace -> what runs there. Wire namespaces without an entry still get a sniffer. */
  agents?: Record<string, AgentSpec>;
  /** Steps run one after the other; the clients of one step run at the same time (after the step's nat change, if any). */
  steps: Array<Array<ClientRun | NatChange>>;
  /** Shell commands run in a namespace (original name) before the agents start, on both sides. */
  setup?: Array<{ ns: string; argv: string[] }>;
  /** Which conntrack entries belong to the scenario. */
  conntrack?: (entry: CtEntry) => boolean;
  /** Port numbers the scenario chose (client source ports, server ports, ICMP ids): others are the kernel's pick and normalised. */
  knownPorts: number[];
  /**
   * IP ids the scenario chose for crafted datagrams: a sniffed packet carrying one shows it
   * (`id N`), so the fragments of two datagrams with the same sizes are told apart. Other ids are
   * the sending stack's or a router's pick and are left out.
   */
  knownIpIds?: number[];
  /** How long to let packets settle after the last step, ms (default 300). */
  settleMs?: number;
  /**
   * Clients race for the same translated ports (several hosts SNATed to one address at once):
   * which of them keeps a port is first come, first served on both routers, so client results
   * are compared without saying which client saw them, and conntrack without the original source.
   */
  racing?: boolean;
  /**
   * Many TCP connections close at once: whether a server's FIN is retransmitted (and the late
   * ACK then answered with a RST, leaving the entry in CLOSE instead of TIME_WAIT) depends on
   * whether the client's last ACK crossed the router within the server's RTO (200 ms minimum).
   * Under load a userspace router can miss that; it is timing, not NAT semantics, so these
   * scenarios compare TIME_WAIT and CLOSE as one state and leave RSTs out of the wire view.
   */
  teardownTiming?: boolean;
  /**
   * Ports (names) on which the router's own host is sniffed, when it is an endpoint of TCP
   * connections (OUTPUT DNAT, the metadata proxy): a FIN it got twice is then seen, so a teardown
   * decided by a retransmission (a tail-loss probe fires after ~10 ms) is compared as timing.
   */
  sniffRouterHost?: string[];
  /** Left out of the random-config property (fastPlansFor): long, or about packets rather than the config. */
  slow?: boolean;
  /** A qnat bug this scenario shows (reported): the test expects the difference until it is fixed. */
  knownBug?: string;
  /**
   * Deliberate differences (docs/differences.md), each naming the exact records it lets differ:
   * those are printed and do not fail; every other record of the section is still compared.
   */
  documented?: Allowance[];
  /** Facts read from each router after the steps (e.g. its whole connection table), compared as the section "invariants". */
  invariants?: (side: Side) => Promise<string[]>;
  /**
   * The scenario crafts its datagrams' IP ids, so the ids of the fragments on the wires are
   * compared too (otherwise an id is each sender's kernel's pick and left out).
   */
  fragmentIds?: boolean;
}

async function startAgent(netns: string, spec: object, limitSeconds: number): Promise<() => Promise<Observation["agents"][string]>> {
  const child = spawn("ip", ["netns", "exec", netns, "python3", PROBE, "agent", JSON.stringify({ ...spec, seconds: limitSeconds })], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  const closed = new Promise<void>((resolvePromise) => child.on("close", () => resolvePromise()));
  await new Promise<void>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent in ${netns} did not start: ${stderr}`)), 10_000);
    child.stdout.on("data", (c: Buffer) => {
      stdout += c.toString();
      if (stdout.startsWith("ready\n")) {
        clearTimeout(timer);
        resolvePromise();
      }
    });
    child.on("close", () => {
      clearTimeout(timer);
      reject(new Error(`agent in ${netns} exited: ${stderr.trim()}`));
    });
  });
  return async () => {
    child.stdin.end();
    const timer = setTimeout(() => child.kill("SIGKILL"), (limitSeconds + 5) * 1000);
    await closed;
    clearTimeout(timer);
    const json = stdout.slice("ready\n".length).trim();
    if (json === "") throw new Error(`agent in ${netns} printed nothing: ${stderr.trim()}`);
    return JSON.parse(json) as Observation["agents"][string];
  };
}

/** Runs a plan on one side and returns what it observed. */
export async function observe(side: Side, original: RouterConfig, plan: Plan): Promise<Observation> {
  for (const step of plan.setup ?? []) {
    const result = run("ip", ["netns", "exec", side.ns(step.ns), ...step.argv]);
    if (result.code !== 0) throw new Error(`${side.name}: setup ${step.argv.join(" ")} in ${step.ns}: ${result.stderr.trim()}`);
  }
  const agentNs = new Map<string, AgentSpec>();
  for (const port of original.ports) agentNs.set(port.wire.namespace, { sniff: true });
  // A host in a namespace of its own on a port's bridge (lab `bridge:`) is sniffed too.
  for (const host of original.lab) agentNs.set(host.namespace, { sniff: true });
  for (const [ns, spec] of Object.entries(plan.agents ?? {})) agentNs.set(ns, { sniff: agentNs.has(ns), ...spec });
  const stops = new Map<string, () => Promise<Observation["agents"][string]>>();
  const hostSniffers = new Map<string, () => Promise<Observation["agents"][string]>>();
  let natChanged = false;
  try {
    for (const [ns, spec] of agentNs) {
      // What the host there receives: its device (the wire device, or its veth into the bridge).
      const host = original.lab.find((h) => h.namespace === ns);
      const device = host !== undefined ? labDeviceOf(original, host) : original.ports.find((p) => p.wire.namespace === ns)?.wire.device;
      stops.set(ns, await startAgent(side.ns(ns), { udp: spec.udp ?? [], tcp: spec.tcp ?? [], sniff: spec.sniff && device ? device : null }, 40));
    }
    for (const port of plan.sniffRouterHost ?? []) hostSniffers.set(port, await startAgent(side.ns(original.namespace), { udp: [], tcp: [], sniff: port }, 40));
    const observation: Observation = { agents: {}, clients: [], actions: [], conntrack: [] };
    for (const step of plan.steps) {
      for (const change of step) {
        if (!("nat" in change)) continue;
        natChanged = true;
        await side.setNat(change.nat);
      }
      const clients = step.filter((c): c is ClientRun => !("nat" in c));
      const results = await Promise.all(
        clients.map(async (client) => {
          const actions = typeof client.actions === "function" ? client.actions(observation) : client.actions;
          const out = await runAsync("ip", ["netns", "exec", side.ns(client.ns), "python3", PROBE, "client", JSON.stringify(actions)], 60_000);
          if (out.code !== 0) throw new Error(`${side.name}: client in ${client.ns} failed: ${out.stderr.trim()}`);
          return { actions, results: JSON.parse(out.stdout) as Array<Record<string, unknown>> };
        }),
      );
      observation.clients.push(...results.map((r) => r.results));
      observation.actions.push(...results.map((r) => r.actions));
    }
    await sleep(plan.settleMs ?? 300);
    for (const [ns, stop] of stops) observation.agents[ns] = await stop();
    stops.clear();
    if (hostSniffers.size > 0) {
      observation.routerHost = [];
      for (const stop of hostSniffers.values()) observation.routerHost.push(...(await stop()).packets);
      hostSniffers.clear();
    }
    observation.conntrack = (await side.conntrack()).filter(plan.conntrack ?? (() => true));
    if (plan.invariants) observation.invariants = await plan.invariants(side);
    return observation;
  } finally {
    for (const stop of [...stops.values(), ...hostSniffers.values()]) await stop().catch(() => undefined);
    if (natChanged) await side.setNat(side.config.nat.text);
  }
}

// ------------------------------------------------------------------------------- normalising

function protocolName(protocol: unknown): string {
  if (protocol === 6 || protocol === "tcp" || protocol === "http") return "tcp";
  if (protocol === 17 || protocol === "udp") return "udp";
  if (protocol === 1 || protocol === "icmp") return "icmp";
  return String(protocol);
}

function endpointKey(protocol: unknown, address: unknown, port: unknown): string {
  return `${protocolName(protocol)} ${String(address)}:${String(port)}`;
}

/**
 * The endpoints (protocol, address, port) whose port a router picked, from that side's own
 * connection table: a reply tuple whose port differs from the original's (SNAT/MASQUERADE
 * remapped a source port or ICMP id, DNAT chose a port of a range).
 */
export function pickedEndpoints(entries: readonly CtEntry[]): Set<string> {
  const picked = new Set<string>();
  for (const e of entries) {
    if (e.reply.dport !== undefined && e.original.sport !== undefined) {
      if (e.protocol === "icmp") {
        // ICMP: sport is the echo id in both tuples; dport is type << 8 | code.
        if (e.reply.sport !== e.original.sport) picked.add(endpointKey("icmp", e.reply.dst, e.reply.sport));
        continue;
      }
      if (e.reply.dport !== e.original.sport) picked.add(endpointKey(e.protocol, e.reply.dst, e.reply.dport));
      if (e.reply.sport !== undefined && e.original.dport !== undefined && e.reply.sport !== e.original.dport) picked.add(endpointKey(e.protocol, e.reply.src, e.reply.sport));
    }
  }
  return picked;
}

/**
 * A port the scenario chose stays; one a router picked is "~" (the kernel picks at random):
 * picked when that side's connection table says a router chose it for this endpoint, or when
 * the scenario did not choose the number. The table decides first, so a random pick that happens
 * to equal a port the scenario chose elsewhere (likely with --random-fully) is still "~".
 */
function port(value: unknown, known: ReadonlySet<number>, picked?: ReadonlySet<string>, protocol?: unknown, ...addresses: unknown[]): string {
  if (value === undefined) return "";
  if (picked !== undefined && addresses.some((address) => picked.has(endpointKey(protocol, address, value)))) return "~";
  return known.has(Number(value)) ? String(value) : "~";
}

/** A compared line and the record it was made from. */
export interface Line {
  readonly text: string;
  readonly record: ComparedRecord;
}

const byText = (a: Line, b: Line): number => (a.text < b.text ? -1 : a.text > b.text ? 1 : 0);

/** Client results: replies "seen IP:PORT N" keep the port only when it is the client's own (kept). */
export function clientLines(observation: Observation, plan: Plan): Line[] {
  const known = new Set(plan.knownPorts);
  const picked = pickedEndpoints(observation.conntrack);
  const lines: Line[] = [];
  for (const [index, results] of observation.clients.entries()) {
    for (const [n, result] of results.entries()) {
      const reply = typeof result.reply === "string" ? result.reply.replace(/(\d+\.\d+\.\d+\.\d+):(\d+)/g, (_, a: string, p: string) => `${a}:${port(Number(p), known, picked, result.kind, a)}`) : undefined;
      const parts = [plan.racing ? String(result.kind) : `#${index} ${String(result.kind)}`];
      if (reply !== undefined) parts.push(`reply "${reply.replace(/\r?\n/g, "\\n").slice(0, 160)}"`);
      if (result.error !== undefined) {
        const e = result.error as Record<string, unknown>;
        parts.push(`error ${String(e.errno)}${e.type !== undefined ? ` icmp ${String(e.type)}/${String(e.code)} from ${String(e.from)}${e.info ? ` info ${String(e.info)}` : ""}` : ""}`);
      }
      if (result.sent !== undefined) parts.push(`sent ${String(result.sent)}`);
      if (result.errors !== undefined) parts.push(`send errors ${JSON.stringify(result.errors)}`);
      lines.push({ text: parts.join(" "), record: { kind: "client", result, action: observation.actions[index]?.[n] } });
    }
  }
  return plan.racing ? lines.sort(byText) : lines;
}

export function normaliseClients(observation: Observation, plan: Plan): string[] {
  return clientLines(observation, plan).map((l) => l.text);
}

/** Server events: protocol, server port (a router-picked one, e.g. a DNAT range's, as "~"), the peer's address (its port as kept/picked), bytes. */
export function eventLines(observation: Observation, plan: Plan, ns: string): Line[] {
  const known = new Set(plan.knownPorts);
  const picked = pickedEndpoints(observation.conntrack);
  return (observation.agents[ns]?.events ?? [])
    .map((event) => {
      const [address, p] = String(event.peer).split(":");
      const text = `${String(event.proto)} ${String(event.to)}:${port(event.port, known, picked, event.proto, event.to)} from ${address}:${port(p, known, picked, event.proto, address)} ${String(event.bytes)} bytes`;
      return { text, record: { kind: "server", event } as const };
    })
    .sort(byText);
}

export function normaliseEvents(observation: Observation, plan: Plan, ns: string): string[] {
  return eventLines(observation, plan, ns).map((l) => l.text);
}

/** One sniffed packet as text, without what legitimately differs (arrival time, router-chosen ids and ports). */
export function packetText(p: Record<string, unknown>, known: ReadonlySet<number>, keepIpId = false, knownIpIds: ReadonlySet<number> = new Set(), picked: ReadonlySet<string> = new Set()): string {
  // A bare ACK's length is its TCP options (SACK blocks, timestamps): the stacks' timing, not the router's.
  const bareAck = p.proto === 6 && p.flags === "A";
  const parts = [`${String(p.src)} > ${String(p.dst)}`, `p${String(p.proto)}`, `ttl ${String(p.ttl)}`, bareAck ? "len *" : `len ${String(p.len)}`];
  if (keepIpId || knownIpIds.has(Number(p.id))) parts.push(`id ${String(p.id)}`);
  if (p.df) parts.push("DF");
  if (p.mf) parts.push("MF");
  if (p.offset) parts.push(`off ${String(p.offset)}`);
  if (p.sport !== undefined) parts.push(`${port(p.sport, known, picked, p.proto, p.src)} > ${port(p.dport, known, picked, p.proto, p.dst)}`);
  if (p.flags !== undefined) parts.push(`[${String(p.flags)}]`);
  if (p.type !== undefined) parts.push(`icmp ${String(p.type)}/${String(p.code)}`);
  if (p.icmpid !== undefined) parts.push(`id ${port(p.icmpid, known, picked, "icmp", p.src, p.dst)} seq ${String(p.seq)}`);
  if (p.mtu !== undefined) parts.push(`mtu ${String(p.mtu)}`);
  if (p.ipcsum !== undefined && p.ipcsum !== "ok") parts.push(`ipcsum ${String(p.ipcsum)}`);
  if (p.l4csum !== undefined && p.l4csum !== "ok") parts.push(`l4csum ${String(p.l4csum)}`);
  if (p.inner !== undefined) parts.push(`{ ${packetText(p.inner as Record<string, unknown>, known, false, knownIpIds, picked)} }`);
  return parts.join(" ");
}

/**
 * The distinct packets that arrived, sorted. Distinct, not counted: how many pure ACKs or
 * retransmissions two TCP stacks exchange depends on timing (delayed ACK, RTO under load), not on
 * the router; every distinct translated form of a packet still has to appear on both sides.
 */
export function packetLines(observation: Observation, plan: Plan, ns: string): Line[] {
  const known = new Set(plan.knownPorts);
  const ids = new Set(plan.knownIpIds ?? []);
  const picked = pickedEndpoints(observation.conntrack);
  const distinct = new Map<string, Line>();
  for (const packet of observation.agents[ns]?.packets ?? []) {
    if (plan.teardownTiming && packet.proto === 6 && packet.flags === "R") continue;
    const fragment = packet.mf === true || Number(packet.offset ?? 0) > 0;
    const text = packetText(packet, known, plan.fragmentIds === true && fragment, ids, picked);
    if (!distinct.has(text)) distinct.set(text, { text, record: { kind: "packet", packet } });
  }
  return [...distinct.values()].sort(byText);
}

export function normalisePackets(observation: Observation, plan: Plan, ns: string): string[] {
  return packetLines(observation, plan, ns).map((l) => l.text);
}

export function conntrackText(entry: CtEntry, known: ReadonlySet<number>): string {
  const picked = pickedEndpoints([entry]);
  const tuple = (t: CtTuple): string => {
    if (t.sport === undefined) return `${t.src} > ${t.dst}`;
    // ICMP: sport is the echo id, dport type << 8 | code (src/conntrack/tuple.ts).
    if (entry.protocol === "icmp") return `${t.src} > ${t.dst} type ${(t.dport ?? 0) >> 8}/${(t.dport ?? 0) & 0xff} id ${port(t.sport, known, picked, "icmp", t.src, t.dst)}`;
    return `${t.src}:${port(t.sport, known, picked, entry.protocol, t.src)} > ${t.dst}:${port(t.dport, known, picked, entry.protocol, t.dst)}`;
  };
  const parts = [entry.protocol];
  if (entry.state !== undefined) parts.push(entry.state);
  parts.push(tuple(entry.original), "|", tuple(entry.reply));
  if (entry.unreplied) parts.push("[UNREPLIED]");
  if (entry.assured) parts.push("[ASSURED]");
  return parts.join(" ");
}

export function conntrackLines(observation: Observation, plan: Plan): Line[] {
  const known = new Set(plan.knownPorts);
  return observation.conntrack
    .map((entry) => {
      const shown = plan.teardownTiming && (entry.state === "TIME_WAIT" || entry.state === "CLOSE") ? { ...entry, state: "TIME_WAIT|CLOSE" } : entry;
      const text = conntrackText(plan.racing ? { ...shown, original: { ...shown.original, src: "*" } } : shown, known);
      return { text, record: { kind: "conntrack", entry } as const };
    })
    .sort(byText);
}

export function normaliseConntrack(observation: Observation, plan: Plan): string[] {
  return conntrackLines(observation, plan).map((l) => l.text);
}

// ------------------------------------------------------------------------------- comparing

export interface SectionResult {
  section: string;
  kernel: string[];
  qnat: string[];
  equal: boolean;
  /** Why a difference is expected (docs/differences.md): set when every differing line is allowed. */
  documented?: string;
  /** The lines (either side) an allowance of the plan covers: shown with `~`, not compared. */
  allowed: string[];
}

export interface ScenarioResult {
  name: string;
  sections: SectionResult[];
  /** True when every section is equal or documented. */
  agree: boolean;
  ms: number;
  knownBug?: string;
  /** What the comparison inferred and allowed for (timing), printed under the verdict. */
  notes: string[];
  /** When the scenario differs or a timing allowance applied: each side's packets in arrival order (timeline()). */
  timelines?: { kernel: string[]; qnat: string[] };
  /** Which run of the scenario this was (1 = first; a retry is 2 or 3). */
  attempt: number;
}

/**
 * Two columns, `|` between equal lines, `!` where they differ. Both lists are sorted multisets,
 * so they are aligned by merging: a line only one side has stands alone on its side.
 * With `onlyDifferences`, equal lines are counted instead of printed.
 */
export function sideBySide(
  title: string,
  left: readonly string[],
  right: readonly string[],
  onlyDifferences = false,
  leftName = "kernel (Linux)",
  rightName = "qnat",
  allowed: ReadonlySet<string> = new Set(),
): string {
  const rows: Array<[string, string]> = [];
  let i = 0;
  let j = 0;
  while (i < left.length || j < right.length) {
    const a = left[i];
    const b = right[j];
    if (a !== undefined && b !== undefined && a === b) rows.push([a, b]), i++, j++;
    else if (b === undefined || (a !== undefined && a < b)) rows.push([a!, ""]), i++;
    else rows.push(["", b]), j++;
  }
  const shown = onlyDifferences ? rows.filter(([a, b]) => a !== b) : rows;
  const width = Math.min(100, Math.max(leftName.length, ...shown.map(([a]) => a.length)));
  const fit = (text: string): string => (text.length > width ? text.slice(0, width - 1) + "…" : text.padEnd(width));
  const lines = [`--- ${title}`, `  ${fit(leftName)}   ${rightName}`];
  const mark = (a: string, b: string): string => (a === b ? " " : allowed.has(a || b) ? "~" : "!");
  for (const [a, b] of shown) lines.push(`${mark(a, b)} ${fit(a)} ${a === b ? "|" : mark(a, b)} ${b}`);
  if (onlyDifferences && shown.length < rows.length) lines.push(`  (${rows.length - shown.length} equal lines not shown)`);
  if (rows.length === 0) lines.push("  (nothing on either side)");
  return lines.join("\n");
}

/** At most this many packets of each side in a differing scenario's timeline. */
const TIMELINE_LINES = 60;

/**
 * Every sniffed packet of one side in arrival order, with milliseconds since the first and the
 * TCP sequence number: when a scenario differs, this shows retransmissions and late packets.
 */
export function timeline(observation: Observation, plan: Plan): string[] {
  const known = new Set(plan.knownPorts);
  const all = [
    ...Object.entries(observation.agents).flatMap(([ns, agent]) => (agent?.packets ?? []).map((p) => ({ ns, p, t: Number(p.t ?? 0) }))),
    ...(observation.routerHost ?? []).map((p) => ({ ns: "the router's own host", p, t: Number(p.t ?? 0) })),
  ];
  all.sort((a, b) => a.t - b.t);
  const start = all[0]?.t ?? 0;
  const lines = all.map(({ ns, p, t }) => `${((t - start) * 1000).toFixed(1).padStart(8)} ms  into ${ns}: ${packetText(p, known)}${p.tcpseq !== undefined ? ` seq ${String(p.tcpseq)}` : ""}`);
  return lines.length > TIMELINE_LINES ? [...lines.slice(0, TIMELINE_LINES), `(${lines.length - TIMELINE_LINES} more)`] : lines;
}

/**
 * Whether a TCP FIN crossed into a host twice (same addresses, ports and sequence number): the
 * sender's retransmission timer fired before the round trip through the router completed. The
 * late original and the retransmission then both get answered, and the second answer meets a
 * socket that is already gone: a RST, and conntrack in CLOSE instead of TIME_WAIT. That is
 * scheduling (a userspace router descheduled for longer than the sender's tail-loss probe,
 * about 10 ms at these round trips, or its 200 ms minimum RTO on a loaded machine), not NAT, so
 * such a scenario compares teardown as plan.teardownTiming does. The router's own host counts as
 * a host when the plan sniffs it (sniffRouterHost).
 */
export function finRetransmitted(observation: Observation): boolean {
  // Per place a sniffer listened: a packet forwarded without NAT may pass two of them once each.
  for (const packets of [...Object.values(observation.agents).map((agent) => agent?.packets ?? []), observation.routerHost ?? []]) {
    const seen = new Set<string>();
    for (const p of packets) {
      if (p.proto !== 6 || typeof p.flags !== "string" || !p.flags.includes("F") || p.tcpseq === undefined) continue;
      const key = `${String(p.src)}:${String(p.sport)}>${String(p.dst)}:${String(p.dport)}#${String(p.tcpseq)}`;
      if (seen.has(key)) return true;
      seen.add(key);
    }
  }
  return false;
}

/** The plan's allowances for a section: those naming it, or its kind (the section name's first word). */
function allowancesFor(plan: Plan, section: string): Allowance[] {
  return (plan.documented ?? []).filter((a) => a.section === section || a.section === section.split(" ")[0]);
}

/**
 * One section: equal when both sides have the same lines; otherwise the lines an allowance covers
 * are set aside and the rest must still be equal, line for line, for the difference to be documented.
 */
export function compareSection(plan: Plan, section: string, kernel: readonly Line[], qnat: readonly Line[]): SectionResult {
  const k = kernel.map((l) => l.text);
  const q = qnat.map((l) => l.text);
  const same = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && a.every((line, i) => line === b[i]);
  const result: SectionResult = { section, kernel: k, qnat: q, equal: same(k, q), allowed: [] };
  if (result.equal) return result;
  const allowances = allowancesFor(plan, section);
  const allowedBy = (line: Line): Allowance | undefined => allowances.find((a) => a.allows(line.record));
  const used = new Set<Allowance>();
  const compared = (lines: readonly Line[]): string[] =>
    lines.flatMap((line) => {
      const allowance = allowedBy(line);
      if (allowance === undefined) return [line.text];
      used.add(allowance);
      result.allowed.push(line.text);
      return [];
    });
  const kc = compared(kernel);
  const qc = compared(qnat);
  if (same(kc, qc) && used.size > 0) result.documented = [...used].map((a) => a.reason).join("; ");
  return result;
}

export function compareObservations(original: Plan, kernel: Observation, qnat: Observation, ms: number, attempt = 1): ScenarioResult {
  const retransmitted = [finRetransmitted(kernel) ? "kernel" : "", finRetransmitted(qnat) ? "qnat" : ""].filter((side) => side !== "");
  const plan: Plan = retransmitted.length > 0 ? { ...original, teardownTiming: true } : original;
  const notes =
    retransmitted.length > 0 && original.teardownTiming !== true
      ? [`a TCP FIN was retransmitted on the ${retransmitted.join(" and ")} side (a round trip outlasted the sender's RTO): RSTs and TIME_WAIT/CLOSE compared as timing`]
      : [];
  const sections: SectionResult[] = [];
  const add = (section: string, k: Line[], q: Line[]): void => {
    sections.push(compareSection(plan, section, k, q));
  };
  add("clients", clientLines(kernel, plan), clientLines(qnat, plan));
  const namespaces = [...new Set([...Object.keys(kernel.agents), ...Object.keys(qnat.agents)])].sort();
  for (const ns of namespaces) {
    const k = eventLines(kernel, plan, ns);
    const q = eventLines(qnat, plan, ns);
    if (k.length > 0 || q.length > 0) add(`servers in ${ns}`, k, q);
  }
  for (const ns of namespaces) {
    const k = packetLines(kernel, plan, ns);
    const q = packetLines(qnat, plan, ns);
    if (k.length > 0 || q.length > 0) add(`wire into ${ns}`, k, q);
  }
  add("conntrack", conntrackLines(kernel, plan), conntrackLines(qnat, plan));
  if (kernel.invariants || qnat.invariants) {
    const facts = (o: Observation): Line[] => (o.invariants ?? []).map((fact) => ({ text: fact, record: { kind: "fact", fact } }));
    add("invariants", facts(kernel), facts(qnat));
  }
  const agree = sections.every((s) => s.equal || s.documented !== undefined);
  // Shown when the scenario differs, and when a timing allowance was applied (the evidence).
  const timelines = agree && notes.length === 0 ? undefined : { kernel: timeline(kernel, plan), qnat: timeline(qnat, plan) };
  return { name: plan.name, sections, agree, ms, knownBug: plan.knownBug, notes, timelines, attempt };
}

export function formatScenario(result: ScenarioResult, verbose = false): string {
  const verdict = !result.agree ? "DIFFER" : result.attempt > 1 ? "FLAKY " : "AGREE ";
  const attempt = result.attempt > 1 ? `, attempt ${result.attempt}${result.agree ? ": the earlier attempts differed" : ""}` : "";
  const head = `${verdict} ${result.name} (${(result.ms / 1000).toFixed(1)} s${attempt})${result.knownBug && !result.agree ? `\n       known qnat bug: ${result.knownBug}` : ""}`;
  const parts = [head, ...result.notes.map((note) => `       note: ${note}`)];
  for (const section of result.sections) {
    if (section.equal && !verbose) continue;
    const label = section.equal ? section.section : section.documented !== undefined ? `${section.section} — differs as documented: ${section.documented}` : `${section.section} — DIFFERS`;
    parts.push(sideBySide(label, section.kernel, section.qnat, !verbose && !section.equal && section.kernel.length + section.qnat.length > 24, undefined, undefined, new Set(section.allowed)));
  }
  if (result.timelines !== undefined) {
    for (const side of ["kernel", "qnat"] as const) parts.push([`--- timeline, ${side}`, ...result.timelines[side].map((line) => `  ${line}`)].join("\n"));
  }
  return parts.join("\n");
}

/** Both routers of one config, up side by side. */
export class ConformancePair {
  /** Every run of every scenario, retries included, in order. */
  readonly results: ScenarioResult[] = [];
  private readonly runs = new Map<string, number>();
  private constructor(
    readonly configPath: string,
    readonly original: RouterConfig,
    readonly kernel: Side,
    readonly qnat: Side,
  ) {}

  /** `workers`: qnat runs with `workers: N` (withWorkersText); absent, the config as written. */
  static async start(configPath: string, mode: HarnessMode = "tun", workers?: number): Promise<ConformancePair> {
    const original = parseConfig(configTextFor(configPath, mode), configPath);
    const [kernel, qnat] = await Promise.allSettled([startKernelSide(configPath, original, mode), startQnatSide(configPath, original, mode, workers)]);
    if (kernel.status === "rejected" || qnat.status === "rejected") {
      if (kernel.status === "fulfilled") await kernel.value.teardown();
      if (qnat.status === "fulfilled") await qnat.value.teardown();
      throw kernel.status === "rejected" ? kernel.reason : (qnat as PromiseRejectedResult).reason;
    }
    return new ConformancePair(configPath, original, kernel.value, qnat.value);
  }

  /**
   * Runs the plan on both routers at once and compares; a second run of the same plan is a retry
   * (attempt 2). Both connection tables are emptied first, so a scenario (a retry too: it reuses
   * its ports) never meets the entries an earlier one left.
   */
  async run(plan: Plan): Promise<ScenarioResult> {
    const attempt = (this.runs.get(plan.name) ?? 0) + 1;
    this.runs.set(plan.name, attempt);
    await Promise.all([this.kernel.flushConntrack(), this.qnat.flushConntrack()]);
    const started = Date.now();
    const [k, q] = await Promise.all([observe(this.kernel, this.original, plan), observe(this.qnat, this.original, plan)]);
    const result = compareObservations(plan, k, q, Date.now() - started, attempt);
    this.results.push(result);
    return result;
  }

  /** The scenarios that agreed only on a retry: flaky, to be fixed, not retried away. */
  flaky(): ScenarioResult[] {
    return this.results.filter((r) => r.agree && r.attempt > 1);
  }

  /** The report of every run: each scenario's verdict (retries and flaky ones marked) and a summary line. */
  report(verbose: boolean, seconds: number): string[] {
    const last = new Map(this.results.map((r) => [r.name, r]));
    const final = [...last.values()];
    const flaky = this.flaky();
    return [
      ...this.results.map((r) => (last.get(r.name) === r ? "" : "(retried) ") + formatScenario(r, verbose) + "\n"),
      `${final.filter((r) => r.agree).length}/${final.length} scenarios agree` +
        ` (${final.filter((r) => r.agree && r.sections.some((x) => !x.equal)).length} of them with documented differences);` +
        ` ${flaky.length} flaky (agreed only on a retry${flaky.length > 0 ? `: ${flaky.map((r) => r.name).join("; ")}` : ""});` +
        ` ${final.filter((r) => !r.agree && r.knownBug !== undefined).length} differ by known qnat bugs,` +
        ` ${final.filter((r) => !r.agree && r.knownBug === undefined).length} differ otherwise; ${seconds.toFixed(1)} s`,
    ];
  }

  async stop(): Promise<void> {
    await Promise.allSettled([this.kernel.teardown(), this.qnat.teardown()]);
  }
}

/** Throws with the side-by-side picture when the scenario disagrees (a vitest failure). */
export function assertAgree(result: ScenarioResult): void {
  if (!result.agree) throw new Error(`kernel and qnat differ:\n${formatScenario(result)}`);
}
