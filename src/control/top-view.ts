/**
 * `qnat top`: what the router answers to a `top` request (`collectTop`: the port counters, the
 * conntrack table's usage and its busiest connections) and the screen the CLI draws from two
 * such answers a second apart (`renderTop`: rates are differences of counters over the time
 * between the answers, as `top` and `ifstat` compute theirs). Plain data in, lines of text out,
 * so the screen is tested without a terminal.
 *
 * Busiest connections: qnat's conntrack keeps no per-connection packet or byte counters (see
 * census.ts), so "busiest" is by recent activity: the connections that carried packets in the
 * most one-second samples in a row, with their original and reply tuples (the NAT is the
 * difference between the two).
 */
import type { Dataplane } from "../dataplane/pipeline.js";
import type { ConntrackEntryJson, ConntrackTupleJson } from "../conntrack/format.js";
import type { DataplaneCounters } from "../io/worker-protocol.js";
import type { ConntrackCensus } from "./census.js";
import { collectStats, type LegCounters } from "./show.js";

/** A census this young answers a `top` request: every client refreshing each second shares one. */
const TOP_CENSUS_MAX_AGE_MS = 900;

export interface TopPortView {
  readonly name: string;
  readonly wire: LegCounters;
  readonly mirror: LegCounters;
  /** Drops counted against the port (its ingress), all reasons. */
  readonly drops: number;
}

export interface TopView {
  /** When the counters were read (Date.now()). */
  readonly at: number;
  readonly ports: readonly TopPortView[];
  readonly conntrack: {
    readonly entries: number;
    readonly capacity: number;
    readonly byState: ReadonlyArray<{ readonly protocol: string; readonly state: string; readonly count: number }>;
    readonly snat: number;
    readonly dnat: number;
  };
  readonly busiest: ReadonlyArray<{ readonly entry: ConntrackEntryJson; readonly activeSamples: number }>;
}

/** The router's answer to `{"cmd":"top"}`: bounded work (the census walks in ~1 ms pieces). */
export async function collectTop(
  dataplane: Dataplane,
  census: ConntrackCensus,
  connections: number,
  censusMaxAgeMs = TOP_CENSUS_MAX_AGE_MS,
  /** A router with several workers: the sum of their counters (control/workers.ts), asked while the census runs. */
  summed?: Promise<DataplaneCounters>,
): Promise<TopView> {
  const counted = await census.latest(censusMaxAgeMs, true);
  const stats = collectStats(dataplane, undefined, await summed);
  return {
    at: Date.now(),
    ports: stats.ports.map((port) => ({
      name: port.name,
      wire: port.wire,
      mirror: port.mirror,
      drops: Object.values(port.drops).reduce((sum, n) => sum + n, 0),
    })),
    conntrack: {
      entries: counted.entries,
      capacity: stats.conntrack.capacity,
      byState: counted.byProtocolState,
      snat: counted.snat,
      dnat: counted.dnat,
    },
    busiest: counted.busiest.slice(0, connections),
  };
}

// ---- the screen -------------------------------------------------------------------------------

/** 1234567 -> "1.23 M"; SI prefixes, three significant digits. */
export function formatRate(value: number, unit: string): string {
  const prefixes = ["", "k", "M", "G", "T"];
  let scaled = value;
  let at = 0;
  while (Math.abs(scaled) >= 1000 && at < prefixes.length - 1) {
    scaled /= 1000;
    at++;
  }
  const digits = scaled >= 100 || at === 0 ? 0 : scaled >= 10 ? 1 : 2;
  return `${scaled.toFixed(digits)} ${prefixes[at]}${unit}`;
}

function tupleText(protocol: string, t: ConntrackTupleJson): string {
  if (t.sport !== undefined) return `${t.src}:${t.sport} > ${t.dst}:${t.dport}`;
  if (protocol === "icmp") return `${t.src} > ${t.dst} id ${t.id}`;
  return `${t.src} > ${t.dst}`;
}

/** What NAT did to a connection, from its status bits. */
function natWord(entry: ConntrackEntryJson): string {
  const snat = entry.status.includes("SRC_NAT");
  const dnat = entry.status.includes("DST_NAT");
  return snat && dnat ? "SNAT+DNAT" : snat ? "SNAT" : dnat ? "DNAT" : "-";
}

function table(rows: readonly (readonly string[])[], rightAligned: ReadonlySet<number>): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (rightAligned.has(i) ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!))).join("  ").trimEnd());
}

export interface TopScreen {
  readonly namespace: string;
  readonly now: TopView;
  /** The previous answer: rates need two. Absent on the first screen (rates shown as "-"). */
  readonly previous?: TopView;
  /** A line about the router not answering (the last good answer stays on screen). */
  readonly problem?: string;
  /** The terminal's size: lines are cut to `columns`, the connection list to what fits in `rows`. */
  readonly columns?: number;
  readonly rows?: number;
  /** The footer's key help (a snapshot has none). */
  readonly keys?: boolean;
}

/** The screen as lines of plain text. */
export function renderTop(screen: TopScreen): string[] {
  const { now, previous } = screen;
  const seconds = previous !== undefined ? (now.at - previous.at) / 1000 : 0;
  const lines: string[] = [];
  const time = new Date(now.at).toISOString().replace("T", " ").slice(0, 19);
  lines.push(`qnat top - ${screen.namespace} - ${time} UTC${screen.keys === true ? "   (q quits)" : ""}`);
  lines.push(screen.problem ?? "");

  const rows: string[][] = [["PORT", "LEG", "RX pps", "RX bit/s", "TX pps", "TX bit/s", "drops/s"]];
  for (const port of now.ports) {
    const before = previous?.ports.find((p) => p.name === port.name);
    const rate = (pick: (p: TopPortView) => number, scale = 1): number | undefined =>
      before !== undefined && seconds > 0 ? (Math.max(0, pick(port) - pick(before)) * scale) / seconds : undefined;
    const text = (value: number | undefined, unit: string): string => (value === undefined ? "-" : formatRate(value, unit));
    for (const leg of ["wire", "mirror"] as const) {
      rows.push([
        leg === "wire" ? port.name : "",
        leg,
        text(rate((p) => p[leg].rxPackets), "pps"),
        text(rate((p) => p[leg].rxBytes, 8), "bit/s"),
        text(rate((p) => p[leg].txPackets), "pps"),
        text(rate((p) => p[leg].txBytes, 8), "bit/s"),
        leg === "wire" ? text(rate((p) => p.drops), "/s") : "",
      ]);
    }
  }
  lines.push(...table(rows, new Set([2, 3, 4, 5, 6])));
  lines.push("");

  const ct = now.conntrack;
  const usage = ct.capacity > 0 ? ((100 * ct.entries) / ct.capacity).toFixed(1) : "0.0";
  lines.push(`conntrack: ${ct.entries} of ${ct.capacity} entries (${usage}%), ${ct.snat} SNAT, ${ct.dnat} DNAT`);
  const states = ct.byState.map((b) => `${b.protocol} ${b.state} ${b.count}`);
  lines.push(states.length === 0 ? "  (empty)" : `  ${states.join(", ")}`);
  lines.push("");

  lines.push("busiest connections (seconds in a row with packets; conntrack keeps no per-connection counters)");
  const connections: string[][] = [["ACTIVE", "PROTO", "STATE", "ORIGINAL", "REPLY", "NAT"]];
  const room = screen.rows === undefined ? now.busiest.length : Math.max(0, screen.rows - lines.length - 1);
  for (const { entry, activeSamples } of now.busiest.slice(0, room)) {
    connections.push([
      `${activeSamples}s`,
      entry.protocol,
      entry.state ?? "",
      tupleText(entry.protocol, entry.original),
      tupleText(entry.protocol, entry.reply),
      natWord(entry),
    ]);
  }
  if (connections.length === 1) lines.push("  (none active since the last sample)");
  else lines.push(...table(connections, new Set([0])));
  const columns = screen.columns;
  return columns === undefined ? lines : lines.map((line) => (line.length > columns ? line.slice(0, columns) : line));
}
