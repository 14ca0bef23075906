/**
 * `qnat trace`: one packet through the router, explained hop by hop — the conntrack verdict,
 * every chain and rule visited, the route, the NAT binding and its port search, and the packet
 * as it leaves. It runs the real pipeline, in dry-run mode (a new connection is released instead
 * of confirmed, and the trace says what would be confirmed), on the live dataplane, and then puts
 * back everything reachable from the dataplane — conntrack entries and their timers, counters,
 * the ICMP rate limiter's tokens, the ICMP errors' IP id, NAT port-search state — as it was
 * (state-snapshot.ts), so tracing against a live router changes nothing.
 *
 * Packet spec: `PORT PROTO SRC[:SPORT] > DST[:DPORT] [FLAGS]`
 *   PORT   a port name (the packet arrives on its wire), or `host` for a packet the router's
 *          own host sends (the OUTPUT path);
 *   PROTO  tcp, udp, icmp, or an IP protocol number;
 *   FLAGS  syn ack fin rst psh urg, seq=N ack=N win=N (TCP sequence, acknowledgment, window),
 *          ttl=N, len=N (total length), df, id=N (ICMP identifier),
 *          type=N code=N or N/N (ICMP; default 8/0, echo request).
 *
 * A TCP segment without seq= or ack= that belongs to a connection the table holds (not a SYN)
 * gets them from the connection's window state, so that it is judged in window (Linux
 * tcp_in_window): seq = td_end of its direction (the next byte that side sends), ack = td_end of
 * the other (all it has sent); a step says so. Without a connection they stay 0.
 */
import { parseIpv4 } from "../core/addr.js";
import { PacketBatch } from "../core/batch.js";
import type { Dataplane } from "../dataplane/pipeline.js";
import type { NatTraceSink, NetfilterNat } from "../dataplane/netfilter-nat.js";
import { LEG_MIRROR, LEG_WIRE, VERDICT_DROP, VERDICT_FRAGMENTED } from "../dataplane/port.js";
import { BUILTIN_CHAIN_NAMES, type Hook } from "../nat/rules/model.js";
import { RuleTrace } from "../nat/rules/evaluate.js";
import { buildPacket, describePacket, type PacketSpec } from "../wire/build.js";
import { icmpIsQuery } from "../wire/icmp.js";
import type { ConntrackTable } from "../conntrack/table.js";
import { tcpWindowState } from "../conntrack/tcp.js";
import { IPPROTO_TCP, PacketInfo, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG } from "../wire/packet-info.js";
import { parsePacket } from "../wire/validate.js";
import { snapshotState } from "./state-snapshot.js";

export class TraceSpecError extends Error {}

export interface TraceStep {
  /** validate, conntrack, PREROUTING/INPUT/OUTPUT/POSTROUTING, route, forward, icmp, confirm, drop... */
  readonly stage: string;
  readonly text: string;
  /** For rule steps: the chain, rule number and whether it matched. */
  readonly chain?: string;
  readonly rule?: number;
  readonly matched?: boolean;
}

export interface TraceResult {
  readonly verdict: "forward" | "local" | "drop";
  readonly reason: string | null;
  readonly in: { readonly port: string; readonly packet: string };
  readonly out: { readonly port: string; readonly packet: string } | null;
  readonly steps: TraceStep[];
  /** Packets the router itself sends in response (ICMP errors), as they leave. */
  readonly responses: { readonly port: string; readonly packet: string }[];
}

export interface ParsedTraceSpec {
  /** Port name, or "host". */
  readonly port: string;
  readonly packet: PacketSpec;
}

/** TCP flags the spec gives (`seq=`, `ack=`, `win=`): 2^32 - 1 and 65535 at most. */
const MAX_SEQ = 0xffffffff;

const TCP_FLAG_WORDS: Record<string, number> = { syn: TCP_SYN, ack: TCP_ACK, fin: TCP_FIN, rst: TCP_RST, psh: TCP_PSH, urg: TCP_URG };

/** Parses the packet spec; throws TraceSpecError with a one-line message. */
export function parseTraceSpec(spec: string): ParsedTraceSpec {
  const tokens = spec.trim().split(/\s+/).filter((t) => t.length > 0);
  const usage = "expected 'PORT PROTO SRC[:SPORT] > DST[:DPORT] [FLAGS]'";
  if (tokens.length < 5 || tokens[3] !== ">") throw new TraceSpecError(`bad packet spec "${spec}": ${usage}`);
  const [port, protoText, srcText, , dstText, ...flags] = tokens as [string, string, string, string, string, ...string[]];
  let protocol: PacketSpec["protocol"];
  if (protoText === "tcp" || protoText === "udp" || protoText === "icmp") protocol = protoText;
  else if (/^\d{1,3}$/.test(protoText) && Number(protoText) < 256) protocol = Number(protoText);
  else throw new TraceSpecError(`unknown protocol "${protoText}" (tcp, udp, icmp or a number)`);
  const withPorts = protocol === "tcp" || protocol === "udp";
  const endpoint = (text: string, what: string): { addr: string; port?: number } => {
    const colon = text.indexOf(":");
    const addr = colon < 0 ? text : text.slice(0, colon);
    if (parseIpv4(addr) < 0) throw new TraceSpecError(`${what} "${addr}" is not an IPv4 address`);
    if (colon < 0) return { addr };
    if (!withPorts) throw new TraceSpecError(`${what} "${text}": only tcp and udp have ports`);
    const port = Number(text.slice(colon + 1));
    if (!/^\d+$/.test(text.slice(colon + 1)) || port > 65535) throw new TraceSpecError(`${what} port "${text.slice(colon + 1)}" is not 0..65535`);
    return { addr, port };
  };
  const src = endpoint(srcText, "source");
  const dst = endpoint(dstText, "destination");
  const packet: PacketSpec = { protocol, src: src.addr, dst: dst.addr };
  if (withPorts) {
    packet.sport = src.port ?? 40000;
    packet.dport = dst.port ?? 80;
  }
  let tcpFlags = 0;
  for (const flag of flags) {
    const lower = flag.toLowerCase();
    const [key, value] = lower.split("=", 2) as [string, string | undefined];
    const number = (max: number): number => {
      const n = Number(value);
      if (value === undefined || !/^\d+$/.test(value) || n > max) throw new TraceSpecError(`flag "${flag}": expected ${key}=0..${max}`);
      return n;
    };
    if (TCP_FLAG_WORDS[lower] !== undefined) {
      if (protocol !== "tcp") throw new TraceSpecError(`flag "${flag}" is for tcp packets`);
      tcpFlags |= TCP_FLAG_WORDS[lower]!;
    } else if (key === "seq" || key === "ack" || key === "win") {
      if (protocol !== "tcp") throw new TraceSpecError(`flag "${flag}" is for tcp packets`);
      if (key === "seq") packet.seq = number(MAX_SEQ);
      else if (key === "ack") packet.ack = number(MAX_SEQ);
      else packet.window = number(65535);
    } else if (lower === "df") packet.df = true;
    else if (key === "ttl") packet.ttl = number(255);
    else if (key === "len") packet.length = number(65535);
    else if (key === "id") packet.icmpId = number(65535);
    else if (key === "type") packet.icmpType = number(255);
    else if (key === "code") packet.icmpCode = number(255);
    else if (/^\d+\/\d+$/.test(lower)) {
      const [type, code] = lower.split("/").map(Number) as [number, number];
      packet.icmpType = type;
      packet.icmpCode = code;
    } else throw new TraceSpecError(`unknown flag "${flag}" (syn ack fin rst psh urg seq=N ack=N win=N ttl=N len=N df id=N type=N code=N)`);
  }
  if (protocol === "tcp") packet.tcpFlags = tcpFlags === 0 ? TCP_SYN : tcpFlags;
  if (protocol === "icmp") {
    packet.icmpType ??= 8;
    packet.icmpCode ??= 0;
    if (icmpIsQuery(packet.icmpType)) packet.icmpId ??= 1;
  }
  return { port, packet };
}

/** What a trace's saving and restoring cost (for tests and benchmarks; see `holdState`). */
export interface TraceCost {
  /** Bytes of typed arrays the snapshot copied. */
  copiedBytes: number;
  /** Words the undo journal saved. */
  journaledWords: number;
}

/**
 * Runs one packet through `dataplane` without changing its state; returns every step. `cost`,
 * when given, receives what saving and restoring the state cost.
 */
export function runTrace(dataplane: Dataplane, spec: string, cost?: TraceCost): TraceResult {
  const parsed = parseTraceSpec(spec);
  const fromHost = parsed.port === "host";
  const ingress = fromHost ? 0 : dataplane.ports.findIndex((p) => p.name === parsed.port);
  if (ingress < 0) {
    throw new TraceSpecError(`no port "${parsed.port}" (ports: ${dataplane.ports.map((p) => p.name).join(", ")}, or host)`);
  }
  const steps: TraceStep[] = [];
  // The whole trace holds the shared tables' lock (docs/multi-core.md "Shared tables"): its packet
  // writes the live table and the undo journal takes it back; no worker may see either half.
  const table = dataplane.conntrack;
  table.lock();
  // Its writes and their undo show in no entry's sequence word: other workers' lock-free
  // established path must not read through them.
  table.excludeLockFree();
  try {
    return traceHeld(dataplane, parsed, ingress, fromHost, steps, cost);
  } finally {
    table.admitLockFree();
    table.unlock();
  }
}

function traceHeld(dataplane: Dataplane, parsed: ParsedTraceSpec, ingress: number, fromHost: boolean, steps: TraceStep[], cost: TraceCost | undefined): TraceResult {
  const restore = holdState(dataplane);
  let bytes: Uint8Array;
  try {
    // Inside the hold: the lookup may count a hit or remove an expired entry.
    if (parsed.packet.protocol === "tcp") fillInWindow(dataplane.conntrack, parsed.packet, steps);
    try {
      bytes = buildPacket(parsed.packet);
    } catch (error) {
      throw new TraceSpecError(`cannot build that packet: ${(error as Error).message}`);
    }
  } catch (error) {
    restore.restore();
    throw error;
  }
  const inInfo = new PacketInfo();
  parsePacket(bytes, 0, bytes.length, inInfo);

  const nat = dataplane.nat as NetfilterNat | undefined;
  const hasNatTracer = nat !== undefined && "tracer" in nat;
  dataplane.tracer = { step: (stage, text) => steps.push({ stage, text }) };
  dataplane.dryRun = true;
  if (hasNatTracer) nat.tracer = natSink(steps);

  const rx = new PacketBatch(1, Math.max(2048, bytes.length));
  rx.push(bytes);
  const verdicts = new Int32Array(1);
  const generated = new PacketBatch(4, 2048);
  const generatedVerdicts = new Int32Array(4);
  try {
    dataplane.processBatch(rx, ingress, fromHost ? LEG_MIRROR : LEG_WIRE, verdicts, generated, generatedVerdicts);
    // A packet too big for its egress MTU left as fragments: they say where (the hold puts the
    // fragment output back as it was).
    if (verdicts[0] === VERDICT_FRAGMENTED) verdicts[0] = dataplane.fragmentOutput.verdicts[0]!;
  } finally {
    dataplane.tracer = null;
    dataplane.dryRun = false;
    if (hasNatTracer) nat.tracer = null;
    restore.restore();
  }
  if (cost) {
    cost.copiedBytes = restore.copiedBytes;
    cost.journaledWords = restore.journaledWords;
  }

  const describe = (batch: PacketBatch, i: number): string => {
    const info = new PacketInfo();
    parsePacket(batch.data, i * batch.slotSize, batch.lengths[i]!, info);
    return describePacket(info);
  };
  const verdict = verdicts[0]!;
  const responses: { port: string; packet: string }[] = [];
  for (let i = 0; i < generated.count; i++) {
    const v = generatedVerdicts[i]!;
    if (v >= 0) responses.push({ port: dataplane.ports[v >> 1]!.name, packet: describe(generated, i) });
  }
  const inDesc = { port: parsed.port, packet: describePacket(inInfo) };
  if (verdict === VERDICT_DROP || verdict < 0) {
    const dropStep = [...steps].reverse().find((s) => s.stage === "drop");
    return { verdict: "drop", reason: dropStep ? dropStep.text.replace(/^dropped: /, "") : "dropped", in: inDesc, out: null, steps, responses };
  }
  const out = { port: dataplane.ports[verdict >> 1]!.name, packet: describe(rx, 0) };
  return { verdict: (verdict & 1) === LEG_MIRROR ? "local" : "forward", reason: null, in: inDesc, out, steps, responses };
}

/**
 * A TCP segment without seq= or ack= (other than a SYN) that belongs to a connection in `table`:
 * takes an in-window seq and ack from the connection's window state (Linux ip_ct_tcp seen[]),
 * so that tracing an ACK of a live connection does not show it as out of window only because the
 * spec had no numbers. seq = td_end of the packet's direction, ack = td_end of the other.
 */
function fillInWindow(table: ConntrackTable, packet: PacketSpec, steps: TraceStep[]): void {
  if ((packet.tcpFlags ?? 0) & TCP_SYN || (packet.seq !== undefined && packet.ack !== undefined)) return;
  const node = table.lookup(IPPROTO_TCP, parseIpv4(packet.src), parseIpv4(packet.dst), packet.sport ?? 0, packet.dport ?? 0);
  if (node < 0) return;
  const id = node >> 1;
  const dir = node & 1;
  const own = tcpWindowState(table, id, dir);
  const other = tcpWindowState(table, id, dir ^ 1);
  const taken: string[] = [];
  if (packet.seq === undefined) {
    packet.seq = own.end;
    taken.push(`seq ${own.end} (td_end of the ${dir === 0 ? "original" : "reply"} direction)`);
  }
  if (packet.ack === undefined) {
    packet.ack = other.end;
    taken.push(`ack ${other.end} (td_end of the ${dir === 0 ? "reply" : "original"} direction)`);
  }
  steps.push({ stage: "packet", text: `${taken.join(", ")} taken from the connection's window: in window` });
}

/** What `holdState` saved: `restore` puts it back; the figures say what the saving cost. */
export interface HeldState {
  restore(): void;
  /** Bytes of typed arrays copied by the snapshot (state-snapshot.ts). */
  readonly copiedBytes: number;
  /** Words the undo journal saved (src/core/undo-log.ts); set by `restore`. */
  readonly journaledWords: number;
}

/**
 * Saves everything a traced packet could change, for `restore` to put back. Two parts:
 *  - the conntrack table's arrays and the NAT's by-source index (136 bytes per entry of capacity,
 *    tens of MiB on a big table) are covered by their undo journal, which saves each word the
 *    packet writes before it is written: O(what the packet touches);
 *  - everything else reachable from the dataplane (counters, cursors, the ICMP rate limiter, the
 *    fragment table: small) is copied by snapshotState, which needs no one to name what it
 *    covers (state-snapshot.ts explains why this, and not a dry-run test at each mutation).
 * The routing table is left out of both: packets only read it (routes change from the control
 * plane). A write to a journaled array that bypasses the journal would show in
 * test/control/trace-random.test.ts, which fingerprints the whole dataplane around random traces.
 */
export function holdState(dataplane: Dataplane): HeldState {
  const journal = dataplane.conntrack.undoLog;
  // The journal object itself is part of the snapshot (its recording flag and buffer come back
  // as they were); the arrays it covers are not.
  // The fragment output's slots are scratch (every batch writes them before the forwarder reads
  // them): half a MiB that a trace need not copy back.
  // The shared tables' lock and sequence words are not state: the trace holds the lock while other
  // threads mark it (a sleeper: src/core/table-lock.ts) and hold sequence words (a lock-free
  // commit); putting them back would lose a wake-up or free an entry under a commit.
  const sync = dataplane.conntrack.synchronization;
  const restoreRest = snapshotState(dataplane, [dataplane.routes, ...journal.covered, dataplane.fragmentOutput.batch.data, ...sync]);
  journal.begin();
  const held = {
    restore(): void {
      held.journaledWords = journal.savedWords;
      journal.undo();
      restoreRest();
    },
    copiedBytes: restoreRest.copiedBytes,
    journaledWords: 0,
  };
  return held;
}

function natSink(steps: TraceStep[]): NatTraceSink {
  return {
    ruleTrace: () => new RuleTrace(),
    rules(hook: Hook, trace: RuleTrace) {
      const stage = BUILTIN_CHAIN_NAMES[hook]!;
      for (const s of trace.steps) {
        const text = s.kind === "rule" ? `${s.text}  ${s.matched ? `=> ${s.action}` : "(no match)"}` : `${s.text} => ${s.action}`;
        steps.push({ stage, text, chain: s.chain, rule: s.ruleNumber, matched: s.matched });
      }
      if (trace.steps.length === 0) steps.push({ stage, text: `${stage} is empty: policy ACCEPT` });
    },
    binding(hook: Hook, lines: string[]) {
      const stage = BUILTIN_CHAIN_NAMES[hook]!;
      for (const line of lines) steps.push({ stage, text: line });
    },
    translated(hook: Hook, what: string) {
      steps.push({ stage: BUILTIN_CHAIN_NAMES[hook]!, text: what });
    },
  };
}

/** The trace as text: one line per step, then the verdict. */
export function formatTrace(result: TraceResult): string {
  const lines = [`trace: ${result.in.packet} arriving ${result.in.port === "host" ? "from the router's own host (OUTPUT)" : `on ${result.in.port}`}`];
  let previous = "";
  for (const step of result.steps) {
    const stage = step.stage === previous ? "" : step.stage;
    previous = step.stage;
    lines.push(`  ${stage.padEnd(12)} ${step.text}`);
  }
  for (const response of result.responses) lines.push(`  ${"response".padEnd(12)} ${response.packet} leaves on ${response.port}`);
  if (result.verdict === "drop") lines.push(`verdict: drop (${result.reason})`);
  else if (result.verdict === "local") lines.push(`verdict: local — delivered to the router's own host through the ${result.out!.port} mirror as ${result.out!.packet}`);
  else lines.push(`verdict: forward — leaves on ${result.out!.port} as ${result.out!.packet}`);
  return lines.join("\n") + "\n";
}
