/**
 * `qnat show ports` and `qnat show stats`: plain data views of the running router and their
 * text, where `ip -s link` (one block per interface, counters under a header row) meets
 * `ovs-appctl dpctl/show` (datapath totals, then the ports). `--json` prints the same views as
 * JSON (`formatJson`). Routes, rules and conntrack have their own printers
 * (RoutingTable.format, src/nat/rules/format.ts, src/conntrack/format.ts).
 *
 * `collectPorts` / `collectStats` build the views from a Dataplane; the formatters only see
 * plain objects, so tests and the control socket use them without a router.
 */
import { formatCidr } from "../core/addr.js";
import { DROP_REASON_COUNT, dropReasonName } from "../core/drop-reason.js";
import type { ConntrackChainStats, ConntrackCounters } from "../conntrack/table.js";
import type { FragmentCounters } from "../nat/fragments.js";
import type { FragmentOutputCounters } from "../dataplane/fragment-output.js";
import { type Dataplane, PortCounter } from "../dataplane/pipeline.js";
import type { LegHealth } from "../io/leg-supervisor.js";
import { ETH_COUNTER_NAMES, type EthernetStage } from "../io/ethernet-leg.js";
import type { DataplaneCounters, EthernetCounters } from "../io/worker-protocol.js";
import { formatStateStats, type StateStatsView } from "./state-keeper.js";
import type { CaptureStatsView } from "./capture.js";

/** Packet and byte counts of one leg (wire or mirror) of a port, as the dataplane counts them. */
export interface LegCounters {
  readonly rxPackets: number;
  readonly rxBytes: number;
  readonly txPackets: number;
  readonly txBytes: number;
}

export interface WireLeg {
  /** The namespace of the network the port faces (e.g. `qnat-tenant`). */
  readonly namespace: string;
  readonly device: string;
}

/** Whether a leg is up, and if not, why and since when (io/leg-supervisor.ts). */
export interface LegStateView {
  readonly state: "up" | "down";
  /** While down: the errno name (ENOENT, EBADFD, EIO...), what failed, since when (ISO 8601). */
  readonly error?: string;
  readonly reason?: string;
  readonly since?: string;
  /** Times the leg went down and was re-created since the router started. */
  readonly failures: number;
  readonly recoveries: number;
  /** Packets sent toward the leg while it was down. */
  readonly droppedWhileDown: number;
}

export interface PortView {
  readonly index: number;
  readonly name: string;
  /** CIDR text, primary first: `10.0.0.1/24`. */
  readonly addresses: readonly string[];
  readonly mtu: number;
  readonly wire: WireLeg;
  readonly counters: { readonly wire: LegCounters; readonly mirror: LegCounters };
  /** Present from a running router: the state of each leg. */
  readonly legs?: { readonly wire: LegStateView; readonly mirror: LegStateView };
}

export interface PortStatsView {
  readonly index: number;
  readonly name: string;
  readonly wire: LegCounters;
  readonly mirror: LegCounters;
  /** ICMP errors the router sent about packets that came in on this port. */
  readonly icmpErrorsSent: number;
  /** Drops counted against this port (the ingress), by DropReason name; non-zero only. */
  readonly drops: Readonly<Record<string, number>>;
}

export interface ConntrackStatsView {
  /** Entries allocated (Linux nf_conntrack_count). */
  readonly count: number;
  /** Maximum entries (Linux nf_conntrack_max). */
  readonly capacity: number;
  readonly memoryBytes?: number;
  readonly counters: Readonly<ConntrackCounters>;
  /** Hash-chain walks: a collision attack on the table shows as a long walk here. */
  readonly chains?: Readonly<ConntrackChainStats>;
}

/** The fragment table (src/nat/fragments.ts): datagrams tracked and fragments held, with their bounds. */
export interface FragmentStatsView {
  readonly datagrams: number;
  readonly maxDatagrams: number;
  /** Fragments held waiting for their first fragment, and the pool's slots. */
  readonly held: number;
  readonly maxHeld: number;
  readonly heldBytes: number;
  readonly counters: Readonly<FragmentCounters>;
}

export interface MetadataStatsView {
  readonly served: number;
  readonly notFound: number;
  readonly methodNotAllowed: number;
}

export interface StatsView {
  readonly ports: readonly PortStatsView[];
  readonly conntrack: ConntrackStatsView;
  readonly fragments?: FragmentStatsView;
  /** Packets fragmented on output (dataplane/fragment-output.ts; Linux Ip: FragOKs, FragCreates, FragFails). */
  readonly fragmentation?: Readonly<FragmentOutputCounters>;
  /** Present when the router serves instance metadata. */
  readonly metadata?: MetadataStatsView;
  /** Present when the router keeps its connections in a state file (config `state:`). */
  readonly state?: StateStatsView;
  /** Present once the router has run a capture: packets written out and lost (the ring was full). */
  readonly capture?: CaptureStatsView;
  /** The router process's memory (Node's process.memoryUsage()), for soak runs and operators. */
  readonly process?: ProcessMemoryView;
  /** With `workers: N` (N > 1): the packets of each forwarding thread (the figures above are their sum). */
  readonly workers?: readonly WorkerStatsView[];
}

/** One forwarding thread's packets (worker 0 is the main thread). */
export interface WorkerStatsView {
  readonly worker: number;
  readonly rxPackets: number;
  readonly txPackets: number;
  readonly drops: number;
  /** false for a worker that failed too often and is left stopped (control/workers.ts). */
  readonly running: boolean;
}

export interface ProcessMemoryView {
  /** Resident set size (VmRSS). */
  readonly rssBytes: number;
  /** V8's heap: in use by live and not yet collected objects, and reserved. */
  readonly heapUsedBytes: number;
  readonly heapTotalBytes: number;
  /** Memory outside V8's heap held by JS objects (the packet buffers, typed arrays). */
  readonly externalBytes: number;
}

function processMemory(): ProcessMemoryView {
  const usage = process.memoryUsage();
  return { rssBytes: usage.rss, heapUsedBytes: usage.heapUsed, heapTotalBytes: usage.heapTotal, externalBytes: usage.external };
}

// ---- collecting from a dataplane (control plane: reads the counters, allocates freely) ------

const PORT_COUNTERS = PortCounter.Count as number;

function legCounters(counters: Float64Array, port: number, first: PortCounter): LegCounters {
  const at = port * PORT_COUNTERS + first;
  return { rxPackets: counters[at]!, rxBytes: counters[at + 1]!, txPackets: counters[at + 2]!, txBytes: counters[at + 3]! };
}

/** Drops of one port by reason name, non-zero only, in DropReason order. */
export function portDrops(drops: Float64Array, port: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (let reason = 1; reason < DROP_REASON_COUNT; reason++) {
    const n = drops[port * DROP_REASON_COUNT + reason]!;
    if (n > 0) out[dropReasonName(reason)] = n;
  }
  return out;
}

function legState(health: LegHealth): LegStateView {
  const counts = { failures: health.failures, recoveries: health.recoveries, droppedWhileDown: health.droppedWhileDown };
  if (health.fault === null) return { state: "up", ...counts };
  const fault = health.fault;
  return { state: "down", error: fault.code, reason: fault.message, since: new Date(fault.since).toISOString(), ...counts };
}

/**
 * `wires[i]` is port i's wire leg (from the config: `ports[i].wire`); `health(port * 2 + leg)`,
 * from a running router, the state of each leg.
 */
export function collectPorts(
  dataplane: Dataplane,
  wires: readonly WireLeg[],
  health?: (index: number) => LegHealth | undefined,
  /** A router with several workers: the sum of every worker's counters (io/worker-protocol.ts). */
  summed?: DataplaneCounters,
): PortView[] {
  const counters = summed?.portCounters ?? dataplane.portCounters;
  return dataplane.ports.map((port) => {
    const view: PortView = {
      index: port.index,
      name: port.name,
      addresses: port.cidrs.map(formatCidr),
      mtu: port.mtu,
      wire: { namespace: wires[port.index]?.namespace ?? "?", device: wires[port.index]?.device ?? "?" },
      counters: {
        wire: legCounters(counters, port.index, PortCounter.RxPackets),
        mirror: legCounters(counters, port.index, PortCounter.MirrorRxPackets),
      },
    };
    const wire = health?.(port.index * 2);
    const mirror = health?.(port.index * 2 + 1);
    return wire === undefined || mirror === undefined ? view : { ...view, legs: { wire: legState(wire), mirror: legState(mirror) } };
  });
}

/**
 * `summed`: a router with several workers gives the sum of every worker's own counters
 * (io/worker-protocol.ts addDataplaneCounters); the tables' sizes are the shared ones'.
 */
export function collectStats(dataplane: Dataplane, metadata?: MetadataStatsView, summed?: DataplaneCounters): StatsView {
  const counters = summed?.portCounters ?? dataplane.portCounters;
  const drops = summed?.drops ?? dataplane.drops;
  const table = dataplane.conntrack;
  const fragments = dataplane.fragments;
  const stats: StatsView = {
    ports: dataplane.ports.map((port) => ({
      index: port.index,
      name: port.name,
      wire: legCounters(counters, port.index, PortCounter.RxPackets),
      mirror: legCounters(counters, port.index, PortCounter.MirrorRxPackets),
      icmpErrorsSent: counters[port.index * PORT_COUNTERS + PortCounter.IcmpErrorsSent]!,
      drops: portDrops(drops, port.index),
    })),
    conntrack: {
      count: table.count,
      capacity: table.capacity,
      memoryBytes: table.memoryBytes,
      counters: { ...((summed?.conntrack as ConntrackCounters | undefined) ?? table.counters) },
      chains: summed?.chains ?? table.chainStats,
    },
    fragments: {
      datagrams: fragments.size,
      maxDatagrams: fragments.maxDatagrams,
      held: fragments.heldFragments,
      maxHeld: fragments.maxHeldFragments,
      heldBytes: fragments.heldBytes,
      counters: { ...((summed?.fragments as FragmentCounters | undefined) ?? fragments.counters) },
    },
    fragmentation: { ...((summed?.fragmentation as FragmentOutputCounters | undefined) ?? dataplane.fragmentOutput.counters) },
    process: processMemory(),
  };
  return metadata === undefined ? stats : { ...stats, metadata: { ...metadata } };
}

// ---- text -------------------------------------------------------------------------------------

const INDENT = "    ";
const COUNTER_HEADER = ["", "RX packets", "RX bytes", "TX packets", "TX bytes"];

/** Rows of cells as aligned text: first column left-justified, the others right-justified. */
function alignRows(rows: readonly (readonly string[])[], widths: readonly number[]): string[] {
  return rows.map((row) =>
    row
      .map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!)))
      .join("  ")
      .trimEnd(),
  );
}

function columnWidths(rows: readonly (readonly string[])[]): number[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, column) => (widths[column] = Math.max(widths[column] ?? 0, cell.length)));
  return widths;
}

function counterRows(wire: LegCounters, mirror: LegCounters): string[][] {
  const row = (leg: string, c: LegCounters): string[] => [leg, `${c.rxPackets}`, `${c.rxBytes}`, `${c.txPackets}`, `${c.txBytes}`];
  return [row("wire", wire), row("mirror", mirror)];
}

/** The counter table of every port, aligned the same across ports (one width per column). */
function counterTables(legs: readonly { wire: LegCounters; mirror: LegCounters }[]): string[][] {
  const tables = legs.map((l) => [COUNTER_HEADER, ...counterRows(l.wire, l.mirror)]);
  const widths = columnWidths(tables.flat());
  return tables.map((rows) => alignRows(rows, widths).map((line) => INDENT + line));
}

/**
 * `qnat show ports`:
 *   0: qr-694450d6-f6: mtu 1500
 *       inet 10.0.0.1/24
 *       wire eth0 in qnat-tenant, mirror qr-694450d6-f6 in the router namespace
 *       wire leg DOWN since 2026-11-30T04:40:00.000Z: ENOENT (namespace qnat-tenant was deleted), 3 packets dropped
 *               RX packets  RX bytes  TX packets  TX bytes
 *       wire            12      1234          10      1000
 *       mirror           0         0           0         0
 */
export function formatPorts(ports: readonly PortView[]): string {
  const tables = counterTables(ports.map((p) => p.counters));
  const lines: string[] = [];
  ports.forEach((port, i) => {
    lines.push(`${port.index}: ${port.name}: mtu ${port.mtu}`);
    for (const address of port.addresses) lines.push(`${INDENT}inet ${address}`);
    lines.push(`${INDENT}wire ${port.wire.device} in ${port.wire.namespace}, mirror ${port.name} in the router namespace`);
    if (port.legs !== undefined) {
      for (const [leg, state] of [["wire", port.legs.wire], ["mirror", port.legs.mirror]] as const) {
        const line = describeLegState(leg, state);
        if (line !== undefined) lines.push(`${INDENT}${line}`);
      }
    }
    lines.push(...tables[i]!);
  });
  return lines.join("\n");
}

/** A line about a leg that is down, or that was and came back; nothing for a leg that never failed. */
function describeLegState(leg: string, state: LegStateView): string | undefined {
  const times = (n: number): string => `${n} ${n === 1 ? "time" : "times"}`;
  if (state.state === "down") {
    return `${leg} leg DOWN since ${state.since}: ${state.error} (${state.reason}), ${state.droppedWhileDown} packets dropped`;
  }
  if (state.failures === 0) return undefined;
  return `${leg} leg up: went down ${times(state.failures)}, re-created ${times(state.recoveries)}`;
}

/** conntrack -S names (conntrack-tools src/conntrack.c): snake_case of the counter. */
function snakeCase(name: string): string {
  return name.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase();
}

/** `name=value` of every counter, names as `conntrack -S` prints them. */
function counterPairs(counters: object): string[] {
  return Object.entries(counters).map(([name, value]) => `${snakeCase(name)}=${value}`);
}

function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** `key=value` pairs, wrapped before `width` columns. */
function wrapPairs(pairs: readonly string[], indent: string, width = 80): string[] {
  const lines: string[] = [];
  let line = indent;
  for (const pair of pairs) {
    if (line.length > indent.length && line.length + 1 + pair.length > width) {
      lines.push(line);
      line = indent;
    }
    line += (line.length > indent.length ? " " : "") + pair;
  }
  if (line.length > indent.length) lines.push(line);
  return lines;
}

/**
 * `qnat show stats`:
 *   packets: received 14, sent 11, dropped 4, icmp errors sent 1
 *   conntrack: 3 entries, max 262144 (0.0%), 20.0 MiB
 *       found=10 invalid=0 ignore=0 created=3 inserted=3 insert_failed=0 ...
 *       hash chains: 25 lookups walked 13 nodes (0.52 per lookup), longest walk 2
 *   fragments: 1 datagram, max 1024; 2 held, max 256 (2.9 KiB)
 *       datagrams=1 translated=0 held=2 released=0 expired_held=0 table_full=0
 *       completed=0
 *   fragmentation: 2 datagrams too big for their egress MTU left as 4 fragments, 0 failed
 *   port 0: qr-694450d6-f6
 *               RX packets  RX bytes  TX packets  TX bytes
 *       wire            12      1234          10      1000
 *       mirror           0         0           0         0
 *       icmp errors sent: 1
 *       drops: 4
 *           no-route      3
 *           ttl-exceeded  1
 *   metadata: served 2, not found 1, method not allowed 0
 *   process: rss 80.2 MiB, heap 21.0 MiB used of 34.5 MiB, external 9.1 MiB
 */
export function formatStats(stats: StatsView): string {
  const lines: string[] = [];
  // The datapath's totals first, as `ovs-appctl dpctl/show` starts with its lookups line.
  const sum = (pick: (p: PortStatsView) => number): number => stats.ports.reduce((total, p) => total + pick(p), 0);
  const received = sum((p) => p.wire.rxPackets + p.mirror.rxPackets);
  const sent = sum((p) => p.wire.txPackets + p.mirror.txPackets);
  const dropped = sum((p) => Object.values(p.drops).reduce((total, n) => total + n, 0));
  lines.push(`packets: received ${received}, sent ${sent}, dropped ${dropped}, icmp errors sent ${sum((p) => p.icmpErrorsSent)}`);
  if (stats.workers !== undefined) {
    // Each forwarding thread's share: the kernel spreads flows over the TUN queues by hash.
    lines.push(`workers: ${stats.workers.length}`);
    for (const w of stats.workers) {
      const name = w.worker === 0 ? "0 (main thread)" : `${w.worker}`;
      lines.push(`${INDENT}${name}: received ${w.rxPackets}, sent ${w.txPackets}, dropped ${w.drops}${w.running ? "" : " (STOPPED: failed too often)"}`);
    }
  }
  const ct = stats.conntrack;
  const usage = ct.capacity > 0 ? ` (${((100 * ct.count) / ct.capacity).toFixed(1)}%)` : "";
  const memory = ct.memoryBytes !== undefined ? `, ${formatBytes(ct.memoryBytes)}` : "";
  lines.push(`conntrack: ${ct.count} ${ct.count === 1 ? "entry" : "entries"}, max ${ct.capacity}${usage}${memory}`);
  lines.push(...wrapPairs(counterPairs(ct.counters), INDENT));
  const chains = ct.chains;
  if (chains !== undefined) {
    const perLookup = chains.lookups > 0 ? (chains.nodesWalked / chains.lookups).toFixed(2) : "0.00";
    lines.push(
      `${INDENT}hash chains: ${chains.lookups} lookups walked ${chains.nodesWalked} nodes (${perLookup} per lookup), longest walk ${chains.longestWalk}`,
    );
  }
  const fr = stats.fragments;
  if (fr !== undefined) {
    const datagrams = `${fr.datagrams} ${fr.datagrams === 1 ? "datagram" : "datagrams"}, max ${fr.maxDatagrams}`;
    lines.push(`fragments: ${datagrams}; ${fr.held} held, max ${fr.maxHeld} (${formatBytes(fr.heldBytes)})`);
    lines.push(...wrapPairs(counterPairs(fr.counters), INDENT));
  }
  const out = stats.fragmentation;
  if (out !== undefined) {
    const datagrams = `${out.datagrams} ${out.datagrams === 1 ? "datagram" : "datagrams"}`;
    lines.push(`fragmentation: ${datagrams} too big for their egress MTU left as ${out.fragments} fragments, ${out.failed} failed`);
  }

  const tables = counterTables(stats.ports);
  const reasonWidth = Math.max(0, ...stats.ports.flatMap((p) => Object.keys(p.drops).map((name) => name.length)));
  stats.ports.forEach((port, i) => {
    lines.push(`port ${port.index}: ${port.name}`);
    lines.push(...tables[i]!);
    lines.push(`${INDENT}icmp errors sent: ${port.icmpErrorsSent}`);
    const drops = Object.entries(port.drops).filter(([, n]) => n > 0);
    const total = drops.reduce((sum, [, n]) => sum + n, 0);
    lines.push(`${INDENT}drops: ${total === 0 ? "none" : total}`);
    for (const [name, n] of drops) lines.push(`${INDENT}${INDENT}${name.padEnd(reasonWidth)}  ${n}`);
  });

  const md = stats.metadata;
  if (md !== undefined) {
    lines.push(`metadata: served ${md.served}, not found ${md.notFound}, method not allowed ${md.methodNotAllowed}`);
  }
  if (stats.state !== undefined) lines.push(...formatStateStats(stats.state));
  const capture = stats.capture;
  if (capture !== undefined) {
    lines.push(`capture: ${capture.running} running; ${capture.captured} packets captured, ${capture.lost} lost (ring full)`);
  }
  const own = stats.process;
  if (own !== undefined) {
    lines.push(
      `process: rss ${formatBytes(own.rssBytes)}, heap ${formatBytes(own.heapUsedBytes)} used of ${formatBytes(own.heapTotalBytes)}, external ${formatBytes(own.externalBytes)}`,
    );
  }
  return lines.join("\n");
}

/** `--json`: the view itself, indented, as the CLI prints it. */
export function formatJson(view: unknown): string {
  return JSON.stringify(view, null, 2);
}

/** `show stats`'s Ethernet part: per tap port its ARP and frame counters, and the neighbour table's. */
export interface EthernetStatsView {
  readonly ports: Record<string, Record<string, number>>;
  readonly neighbours: Record<string, number>;
}

/** `summed`: with workers, every thread's stage added up (io/worker-protocol.ts); else `stage`'s own. */
export function collectEthernetStats(stage: EthernetStage, portNames: readonly string[], summed?: EthernetCounters): EthernetStatsView {
  const ports: Record<string, Record<string, number>> = {};
  portNames.forEach((name, port) => {
    if (stage.macOf(port) === null) return;
    const row: Record<string, number> = {};
    ETH_COUNTER_NAMES.forEach((counter, field) => (row[counter] = summed === undefined ? stage.counter(port, field) : (summed.ports[port * ETH_COUNTER_NAMES.length + field] ?? 0)));
    ports[name] = row;
  });
  return { ports, neighbours: summed?.neighbours ?? { entries: stage.table.size, ...stage.table.counters } };
}

/** The Ethernet part as text, after `formatStats` (lines joined as it joins them): the neighbour counters, one block per tap port. */
export function formatEthernetStats(view: EthernetStatsView): string {
  const lines = [`neighbours: ${view.neighbours["entries"]} ${view.neighbours["entries"] === 1 ? "entry" : "entries"}`];
  const { entries: _entries, ...counters } = view.neighbours;
  lines.push(...wrapPairs(counterPairs(counters), INDENT));
  for (const [name, row] of Object.entries(view.ports)) {
    lines.push(`ethernet ${name}:`);
    lines.push(...wrapPairs(counterPairs(row), INDENT));
  }
  return lines.join("\n");
}
