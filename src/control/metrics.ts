/**
 * The Prometheus endpoint (config `metrics: { listen: ADDR:PORT }`, off by default): an HTTP
 * server in the router namespace whose `GET /metrics` answers the text exposition format
 * (prom-client's registry). Every value is read at scrape time from the counters the dataplane
 * keeps anyway — the same views `qnat show stats` prints (show.ts collectStats), the compiled
 * rules' counters, the loop's batch and busy-time buckets (io/loop-stats.ts) — so metrics cost
 * the packet path nothing. Counts by conntrack state come from a census of the table in pieces
 * of about a millisecond (census.ts), at most one per second however often it is scraped.
 *
 * Names follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/): a `qnat_`
 * prefix, base units (bytes, seconds), `_total` on counters, and node_exporter's
 * receive/transmit words for interface counters. docs/metrics.md lists every metric.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { Counter, Gauge, Histogram, Registry, type LabelValues, type MetricType } from "prom-client";
import { DROP_REASON_COUNT, dropReasonName } from "../core/drop-reason.js";
import { NetfilterNat } from "../dataplane/netfilter-nat.js";
import type { Dataplane } from "../dataplane/pipeline.js";
import { EthCounter, type EthernetStage } from "../io/ethernet-leg.js";
import type { NeighbourCounters } from "../neigh/table.js";
import { LoopStats, type BucketCounts } from "../io/loop-stats.js";
import type { DataplaneCounters } from "../io/worker-protocol.js";
import { TargetKind } from "../nat/rules/model.js";
import type { CompiledRules } from "../nat/rules/evaluate.js";
import { type CensusResult, ConntrackCensus } from "./census.js";
import { collectStats, type LegCounters, type StatsView, type WorkerStatsView } from "./show.js";

/** A census younger than this answers a scrape (scrapes come every 15-60 s; `qnat top` every second). */
const CENSUS_MAX_AGE_MS = 1000;

export interface MetricsSource {
  /** The live dataplane (a live change replaces it). */
  readonly dataplane: () => Dataplane;
  /** The packet loop's own measurements; absent where no loop runs (an offline dataplane). */
  readonly loop?: LoopStats;
  /** Shared with `qnat top`, so the two never walk the table twice for the same second. */
  readonly census?: ConntrackCensus;
  /** The Ethernet stage of a router with tap ports (ARP and neighbour counters); absent or undefined otherwise. */
  readonly ethernet?: () => EthernetStage | undefined;
  /** How old a census may be to answer a scrape (default CENSUS_MAX_AGE_MS; tests: 0, always a new one). */
  readonly censusMaxAgeMs?: number;
  /**
   * A router with several workers: the sum of every worker's counters and each thread's packets
   * (control/workers.ts), read at each scrape; undefined with one thread.
   */
  readonly workers?: () => Promise<{ readonly summed: DataplaneCounters; readonly perWorker: readonly WorkerStatsView[] }> | undefined;
}

/** What one scrape reads, gathered once before the registry asks each metric. */
interface Snapshot {
  readonly dataplane: Dataplane;
  readonly stats: StatsView;
  readonly census: CensusResult;
  /** workers: N > 1: every thread's rule and NAT engine counters added up (else the dataplane's own are read). */
  readonly summed?: DataplaneCounters;
  /** workers: N > 1: every thread's packet loop added up (else the source's loop is read). */
  readonly loop?: LoopStats;
}

type Labels = LabelValues<string>;

/**
 * A histogram whose buckets are counted elsewhere (a BucketCounts the loop fills): prom-client's
 * Histogram counts its own observe() calls, so this one answers from the buckets instead.
 */
class BucketHistogram extends Histogram<string> {
  constructor(
    registry: Registry,
    private readonly metricName: string,
    private readonly metricHelp: string,
    private readonly buckets: () => BucketCounts | undefined,
  ) {
    super({ name: metricName, help: metricHelp, buckets: [], registers: [registry] });
  }

  override async get(): ReturnType<Histogram<string>["get"]> {
    return this.getForPromString();
  }

  /** What the registry's text exposition calls (prom-client's registry.js prefers it to get()). */
  async getForPromString(): ReturnType<Histogram<string>["get"]> {
    const counts = this.buckets();
    const name = this.metricName;
    const values: { value: number; labels: Labels; metricName: string }[] = [];
    if (counts !== undefined) {
      let cumulative = 0;
      counts.bounds.forEach((bound, i) => {
        cumulative += counts.counts[i]!;
        values.push({ value: cumulative, labels: { le: bound }, metricName: `${name}_bucket` });
      });
      values.push({ value: counts.count, labels: { le: "+Inf" }, metricName: `${name}_bucket` });
      values.push({ value: counts.sum, labels: {}, metricName: `${name}_sum` });
      values.push({ value: counts.count, labels: {}, metricName: `${name}_count` });
    }
    return { name, help: this.metricHelp, type: HISTOGRAM_TYPE, values, aggregator: "sum", collect() {} };
  }
}

/**
 * prom-client's index.d.ts declares MetricType as a numeric enum that its JavaScript never uses:
 * the registry writes `# TYPE` from the string each metric carries ("histogram").
 */
const HISTOGRAM_TYPE = "histogram" as unknown as MetricType;

/** The registry of one router's metrics, each read from the scrape's snapshot. */
export class MetricsExporter {
  readonly registry = new Registry();
  private snapshot: Snapshot | undefined;
  private readonly census: ConntrackCensus;

  constructor(private readonly source: MetricsSource) {
    this.census = source.census ?? new ConntrackCensus(() => source.dataplane().conntrack);
    this.definePorts();
    this.defineConntrack();
    this.defineNat();
    this.defineFragments();
    this.defineEthernet();
    this.defineLoop();
  }

  /**
   * The exposition text of every metric, read now. Scrapes run one after the other: each
   * metric's collect() reads the snapshot of the scrape in progress (prom-client calls them all
   * before its first await today; the queue keeps that true if a collect ever waits).
   */
  scrape(): Promise<string> {
    const run = this.scraping.then(() => this.scrapeNow());
    this.scraping = run.catch(() => undefined);
    return run;
  }

  private scraping: Promise<unknown> = Promise.resolve();

  private async scrapeNow(): Promise<string> {
    const census = await this.census.latest(this.source.censusMaxAgeMs ?? CENSUS_MAX_AGE_MS);
    const workers = await this.source.workers?.();
    const dataplane = this.source.dataplane();
    const stats = collectStats(dataplane, undefined, workers?.summed);
    if (workers === undefined) {
      this.snapshot = { dataplane, stats, census };
    } else {
      const loop = new LoopStats();
      if (this.source.loop !== undefined) loop.add(this.source.loop.snapshot());
      if (workers.summed.loop !== undefined) loop.add(workers.summed.loop);
      this.snapshot = { dataplane, stats: { ...stats, workers: workers.perWorker }, census, summed: workers.summed, loop };
    }
    try {
      return await this.registry.metrics();
    } finally {
      this.snapshot = undefined;
    }
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** A gauge whose values `read` gives as [labels, value] pairs at scrape time. */
  private gauge(name: string, help: string, labelNames: readonly string[], read: (s: Snapshot) => Iterable<[Labels, number]>): void {
    const fill = this.filler(read);
    new Gauge({ name, help, labelNames, registers: [this.registry], collect() { fill((labels, value) => { this.set(labels, value); }, this); } });
  }

  /** A counter read from the dataplane's own counter at scrape time (never incremented here). */
  private counter(name: string, help: string, labelNames: readonly string[], read: (s: Snapshot) => Iterable<[Labels, number]>): void {
    const fill = this.filler(read);
    new Counter({ name, help, labelNames, registers: [this.registry], collect() { fill((labels, value) => { this.inc(labels, value); }, this); } });
  }

  /** A metric's collect(): emptied, then given every [labels, value] `read` finds in this scrape's snapshot. */
  private filler(read: (s: Snapshot) => Iterable<[Labels, number]>): (put: (labels: Labels, value: number) => void, metric: { reset(): void }) => void {
    return (put, metric) => {
      metric.reset();
      const s = this.snapshot;
      if (s === undefined) return;
      for (const [labels, value] of read(s)) put(labels, value);
    };
  }

  private definePorts(): void {
    const legs = function* (s: Snapshot, pick: (c: LegCounters) => number): Iterable<[Labels, number]> {
      for (const port of s.stats.ports) {
        yield [{ port: port.name, leg: "wire" }, pick(port.wire)];
        yield [{ port: port.name, leg: "mirror" }, pick(port.mirror)];
      }
    };
    const labels = ["port", "leg"];
    this.counter("qnat_port_receive_packets_total", "Packets the router read from a port's leg (wire: the network it faces; mirror: the router's own host).", labels, (s) => legs(s, (c) => c.rxPackets));
    this.counter("qnat_port_receive_bytes_total", "Bytes of IPv4 packets the router read from a port's leg.", labels, (s) => legs(s, (c) => c.rxBytes));
    this.counter("qnat_port_transmit_packets_total", "Packets the router wrote to a port's leg.", labels, (s) => legs(s, (c) => c.txPackets));
    this.counter("qnat_port_transmit_bytes_total", "Bytes of IPv4 packets the router wrote to a port's leg.", labels, (s) => legs(s, (c) => c.txBytes));
    this.counter("qnat_port_drops_total", "Packets dropped, counted against the port they arrived on, by reason (qnat show stats).", ["port", "reason"], function* (s) {
      const drops = s.dataplane.drops;
      for (const port of s.dataplane.ports) {
        for (let reason = 1; reason < DROP_REASON_COUNT; reason++) {
          yield [{ port: port.name, reason: dropReasonName(reason) }, drops[port.index * DROP_REASON_COUNT + reason]!];
        }
      }
    });
    this.counter("qnat_port_icmp_errors_sent_total", "ICMP errors the router sent about packets that arrived on the port.", ["port"], function* (s) {
      for (const port of s.stats.ports) yield [{ port: port.name }, port.icmpErrorsSent];
    });
  }

  private defineConntrack(): void {
    this.gauge("qnat_conntrack_entries", "Live confirmed connections (what conntrack -L lists) by protocol and state (TCP state; UNREPLIED, REPLIED or ASSURED otherwise).", ["protocol", "state"], function* (s) {
      for (const bucket of s.census.byProtocolState) yield [{ protocol: bucket.protocol, state: bucket.state }, bucket.count];
    });
    this.gauge("qnat_conntrack_entries_allocated", "Entries allocated, unconfirmed ones included (Linux nf_conntrack_count).", [], (s) => [[{}, s.stats.conntrack.count]]);
    this.gauge("qnat_conntrack_entries_limit", "The table's size (config conntrack.max, Linux nf_conntrack_max).", [], (s) => [[{}, s.stats.conntrack.capacity]]);
    const counters = (s: Snapshot) => s.stats.conntrack.counters;
    this.counter("qnat_conntrack_inserts_total", "Connections confirmed into the table (conntrack -S insert).", [], (s) => [[{}, counters(s).inserted]]);
    this.counter("qnat_conntrack_insert_failures_total", "Confirms refused because a clashing connection was confirmed first (conntrack -S insert_failed).", [], (s) => [[{}, counters(s).insertFailed]]);
    this.counter("qnat_conntrack_deletes_total", "Connections removed from the table: their timeout passed (expired) or they were deleted (removed: qnat conntrack -D/-F, a TCP reopen).", ["cause"], (s) => [
      [{ cause: "expired" }, counters(s).expired],
      [{ cause: "removed" }, counters(s).removed],
    ]);
    this.counter("qnat_conntrack_early_drops_total", "Connections evicted to make room in a full table (conntrack -S early_drop).", [], (s) => [[{}, counters(s).earlyDrop]]);
    this.counter("qnat_conntrack_table_full_drops_total", "New connections refused: the table was full and nothing could be evicted (conntrack -S drop).", [], (s) => [[{}, counters(s).dropFull]]);
    this.counter("qnat_conntrack_invalid_total", "Packets conntrack found INVALID, by reason.", ["reason"], (s) => {
      const c = counters(s);
      const known = c.invalidChecksum + c.tcpInvalidFlags + c.tcpInvalidState + c.tcpOutOfWindow + c.tcpRstOutOfWindow;
      return [
        [{ reason: "checksum" }, c.invalidChecksum],
        [{ reason: "tcp-flags" }, c.tcpInvalidFlags],
        [{ reason: "tcp-state" }, c.tcpInvalidState],
        [{ reason: "tcp-out-of-window" }, c.tcpOutOfWindow],
        [{ reason: "tcp-rst-out-of-window" }, c.tcpRstOutOfWindow],
        [{ reason: "other" }, Math.max(0, c.invalid - known)],
      ];
    });
    this.counter("qnat_conntrack_hash_lookups_total", "Tuple lookups in the connection hash.", [], (s) => [[{}, s.stats.conntrack.chains?.lookups ?? 0]]);
    this.counter("qnat_conntrack_hash_nodes_walked_total", "Hash-chain nodes those lookups walked (a collision attack shows as a fast rise).", [], (s) => [[{}, s.stats.conntrack.chains?.nodesWalked ?? 0]]);
  }

  private defineNat(): void {
    const natOf = (s: Snapshot): NetfilterNat | undefined => (s.dataplane.nat instanceof NetfilterNat ? s.dataplane.nat : undefined);
    this.gauge("qnat_nat_bindings", "Live connections whose source (snat) or destination (dnat) is translated.", ["type"], (s) => [
      [{ type: "snat" }, s.census.snat],
      [{ type: "dnat" }, s.census.dnat],
    ]);
    this.counter("qnat_nat_rule_bindings_total", "NAT bindings set up by each nat rule (a connection's first packet matched it and got a tuple).", ["chain", "rule", "target"], function* (s) {
      const nat = natOf(s);
      if (nat === undefined) return;
      const counted = s.summed?.rules ?? nat.rules;
      for (const rule of natRules(nat.rules)) yield [rule.labels, counted.packets[rule.index]! - counted.allocationFailures[rule.index]!];
    });
    this.counter(
      "qnat_nat_rule_port_allocation_failures_total",
      "Connections dropped because the range a nat rule decided had no free tuple (drop reason nat-no-free-tuple); rule=\"policy\" for null bindings.",
      ["chain", "rule", "target"],
      function* (s) {
        const nat = natOf(s);
        if (nat === undefined) return;
        const failures = (s.summed?.rules ?? nat.rules).allocationFailures;
        for (const rule of natRules(nat.rules)) yield [rule.labels, failures[rule.index]!];
        yield [{ chain: "*", rule: "policy", target: "null" }, failures[failures.length - 1]!];
      },
    );
    this.counter("qnat_nat_port_searches_total", "Bindings whose port (or ICMP id) had to be searched because the original one was taken.", [], (s) => [[{}, s.summed?.nat.searches ?? natOf(s)?.engine.counters.searches ?? 0]]);
    this.counter("qnat_nat_port_search_tries_total", "Candidate tuples those searches tried.", [], (s) => [[{}, s.summed?.nat.searchTries ?? natOf(s)?.engine.counters.searchTries ?? 0]]);
  }

  private defineFragments(): void {
    this.gauge("qnat_fragments_held", "Non-first fragments held waiting for their first fragment.", [], (s) => [[{}, s.stats.fragments?.held ?? 0]]);
    this.gauge("qnat_fragments_held_bytes", "Bytes of the fragments held.", [], (s) => [[{}, s.stats.fragments?.heldBytes ?? 0]]);
    this.gauge("qnat_fragment_datagrams", "Fragmented datagrams tracked (virtual reassembly state).", [], (s) => [[{}, s.stats.fragments?.datagrams ?? 0]]);
    this.counter("qnat_fragments_expired_total", "Held fragments dropped because their first fragment never came.", [], (s) => [[{}, s.stats.fragments?.counters.expiredHeld ?? 0]]);
    this.counter("qnat_fragmented_datagrams_total", "Packets without DF too big for their egress MTU that left as fragments (Linux Ip: FragOKs).", [], (s) => [[{}, s.stats.fragmentation?.datagrams ?? 0]]);
    this.counter("qnat_fragments_created_total", "Fragments those packets were cut into (Linux Ip: FragCreates).", [], (s) => [[{}, s.stats.fragmentation?.fragments ?? 0]]);
    this.counter("qnat_fragmentation_failures_total", "Packets that needed fragmenting and were dropped: the batch's fragment output was full (Linux Ip: FragFails).", [], (s) => [[{}, s.stats.fragmentation?.failed ?? 0]]);
  }

  /** ARP, frame drops and the neighbour table of the tap ports (io/ethernet-leg.ts, neigh/table.ts); nothing without tap ports. */
  private defineEthernet(): void {
    const stageOf = (): EthernetStage | undefined => this.source.ethernet?.();
    /** [port name, counter] of each tap port for `field`, with `labels` added. */
    const perPort = function* (s: Snapshot, field: EthCounter, labels: Labels = {}): Iterable<[Labels, number]> {
      const stage = stageOf();
      if (stage === undefined) return;
      // workers: N > 1: every thread's stage added up (control/ethernet-threads.ts).
      const summed = s.summed?.ethernet;
      for (const port of s.dataplane.ports) {
        if (stage.macOf(port.index) === null) continue;
        const value = summed === undefined ? stage.counter(port.index, field) : (summed.ports[port.index * (EthCounter.Count as number) + field] ?? 0);
        yield [{ port: port.name, ...labels }, value];
      }
    };
    this.counter("qnat_arp_received_total", "Valid ARP packets a tap port's wire received, by operation (request, reply).", ["port", "op"], function* (s) {
      yield* perPort(s, EthCounter.ArpRequestsIn, { op: "request" });
      yield* perPort(s, EthCounter.ArpRepliesIn, { op: "reply" });
    });
    this.counter(
      "qnat_arp_sent_total",
      "ARP packets a tap port's wire sent, by kind: reply (to a request for a router address), request (resolving a neighbour), gratuitous (an address announced).",
      ["port", "kind"],
      function* (s) {
        yield* perPort(s, EthCounter.ArpReplies, { kind: "reply" });
        yield* perPort(s, EthCounter.ArpRequestsOut, { kind: "request" });
        yield* perPort(s, EthCounter.GratuitousOut, { kind: "gratuitous" });
      },
    );
    const dropReasons: [string, EthCounter][] = [
      ["other-host", EthCounter.OtherHost],
      ["other-ethertype", EthCounter.OtherEthertype],
      ["runt", EthCounter.Runt],
      ["arp-invalid", EthCounter.ArpInvalid],
      ["arp-not-for-us", EthCounter.ArpNotForUs],
      ["arp-ignored", EthCounter.ArpIgnored],
      ["arp-rp-filter", EthCounter.ArpRpFilter],
      ["tx-error", EthCounter.TxErrors],
    ];
    this.counter(
      "qnat_ethernet_drops_total",
      "Frames a tap port dropped before (or instead of) the IPv4 pipeline, by reason: another host's MAC, an EtherType qnat does not handle, a runt, malformed ARP, ARP not answered (not for a router address, arp_ignore, a sender failing rp_filter), a frame the leg could not write.",
      ["port", "reason"],
      function* (s) {
        for (const [reason, field] of dropReasons) yield* perPort(s, field, { reason });
      },
    );
    this.counter("qnat_host_unreachable_sent_total", "ICMP host unreachable sent for packets whose neighbour on the port failed to resolve.", ["port"], (s) => perPort(s, EthCounter.HostUnreachableSent));
    this.counter("qnat_arp_relay_limited_total", "With workers: ARP packets a thread received on a tap port's wire, or neighbour news of its table, that it did not pass on to the other threads' neighbour tables (over 64 of each per 100 ms: an ARP flood).", ["port"], (s) => perPort(s, EthCounter.ArpRelayLimited));
    const STATES = ["INCOMPLETE", "REACHABLE", "STALE", "DELAY", "PROBE", "FAILED"];
    this.gauge("qnat_neighbour_entries", "Neighbour table entries (ip neigh) by state.", ["state"], function* () {
      const stage = stageOf();
      if (stage === undefined) return;
      const counts = stage.table.countByState();
      for (const state of STATES) yield [{ state }, counts.get(state) ?? 0];
    });
    /** The neighbour counters (NeighbourCounters' fields): every thread's added up with workers. */
    const countersOf = (s: Snapshot, stage: EthernetStage): Readonly<Record<string, number>> =>
      s.summed?.ethernet?.neighbours ?? { ...stage.table.counters };
    const neighbour = (field: keyof NeighbourCounters) => (s: Snapshot): Iterable<[Labels, number]> => {
      const stage = stageOf();
      return stage === undefined ? [] : [[{}, countersOf(s, stage)[field] ?? 0]];
    };
    this.counter("qnat_neighbour_queued_total", "Packets queued while their neighbour was resolving (INCOMPLETE); GSO super-packets included.", [], neighbour("queued"));
    this.counter("qnat_neighbour_queue_drops_total", "Packets waiting for a neighbour that were dropped, by reason: overflow (over unres_qlen_bytes, the oldest first), pool-full (no queue slot free), unresolved (the neighbour failed; each answered with host unreachable if the rate limit allows).", ["reason"], function* (s) {
      const stage = stageOf();
      if (stage === undefined) return;
      const c = countersOf(s, stage);
      yield [{ reason: "overflow" }, c["unresDiscards"] ?? 0];
      yield [{ reason: "pool-full" }, c["queuePoolFull"] ?? 0];
      yield [{ reason: "unresolved" }, c["failedDrops"] ?? 0];
    });
    this.counter("qnat_neighbour_resolution_failures_total", "Neighbour resolutions that failed (FAILED after the probes went unanswered; Linux res_failed).", [], neighbour("resFailed"));
    this.counter("qnat_neighbour_table_full_total", "New neighbour entries refused: the table was full of entries in use (Linux table_fulls).", [], neighbour("tableFulls"));
  }

  private defineLoop(): void {
    const loop = this.source.loop;
    // With workers: N, every thread's loop added up (the scrape's snapshot).
    const loops = (): LoopStats | undefined => this.snapshot?.loop ?? loop;
    new BucketHistogram(this.registry, "qnat_batch_packets", "Packets per batch read from a leg (batches of up to 64; a read that found nothing is not counted).", () => loops()?.batchSizes);
    new BucketHistogram(this.registry, "qnat_loop_busy_seconds", "Time the packet loop was busy per wake-up (reading, forwarding and writing the batches of that wake-up).", () => loops()?.busySeconds);
    this.gauge("qnat_process_resident_memory_bytes", "The router process's resident set size.", [], (s) => [[{}, s.stats.process?.rssBytes ?? 0]]);
    this.gauge("qnat_process_heap_used_bytes", "V8 heap in use by the router process.", [], (s) => [[{}, s.stats.process?.heapUsedBytes ?? 0]]);
    // workers: N > 1: each forwarding thread's share (worker 0 is the main thread); absent with one.
    const perWorker = (pick: (w: WorkerStatsView) => number) => (s: Snapshot): Iterable<[Labels, number]> =>
      (s.stats.workers ?? []).map((w): [Labels, number] => [{ worker: String(w.worker) }, pick(w)]);
    this.counter("qnat_worker_receive_packets_total", "Packets a forwarding thread read from its queues of every leg (workers: N; worker 0 is the main thread).", ["worker"], perWorker((w) => w.rxPackets));
    this.counter("qnat_worker_transmit_packets_total", "Packets a forwarding thread wrote to the legs.", ["worker"], perWorker((w) => w.txPackets));
    this.counter("qnat_worker_drops_total", "Packets a forwarding thread dropped, all reasons.", ["worker"], perWorker((w) => w.drops));
  }
}

const NAT_TARGETS: ReadonlySet<TargetKind> = new Set([TargetKind.Dnat, TargetKind.Snat, TargetKind.Redirect, TargetKind.Masquerade]);

/** The compiled rules with a NAT target, with their labels: chain, 1-based number in it, target name. */
function natRules(rules: CompiledRules): { index: number; labels: Labels }[] {
  const out: { index: number; labels: Labels }[] = [];
  let index = 0;
  for (const chain of rules.chains) {
    chain.rules.forEach((rule, number) => {
      if (NAT_TARGETS.has(rule.target.kind)) {
        out.push({ index: index + number, labels: { chain: chain.name, rule: number + 1, target: TargetKind[rule.target.kind].toUpperCase() } });
      }
    });
    index += chain.rules.length;
  }
  return out;
}

/** The endpoint's server. */
export interface MetricsServer {
  readonly address: { readonly host: string; readonly port: number };
  close(): Promise<void>;
}

/** Concurrent connections the endpoint accepts (Prometheus scrapes one at a time per target). */
const MAX_METRICS_CONNECTIONS = 16;

/**
 * Serves `exporter` on host:port (in the namespace this thread is in: the router's): `GET
 * /metrics` the exposition, `GET /` a pointer to it, anything else 404/405. A scrape that fails
 * answers 500 with one line, and the router goes on.
 */
export function startMetricsServer(host: string, port: number, exporter: MetricsExporter): Promise<MetricsServer> {
  const server: Server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const path = (request.url ?? "/").split("?", 1)[0];
    if (request.method !== "GET" && request.method !== "HEAD") {
      response.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" }).end("method not allowed\n");
      return;
    }
    if (path === "/") {
      response.writeHead(200, { "content-type": "text/plain" }).end("qnat metrics: GET /metrics\n");
      return;
    }
    if (path !== "/metrics") {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found: GET /metrics\n");
      return;
    }
    exporter.scrape().then(
      (text) => response.writeHead(200, { "content-type": exporter.contentType }).end(request.method === "HEAD" ? undefined : text),
      (error: unknown) => response.writeHead(500, { "content-type": "text/plain" }).end(`scrape failed: ${error instanceof Error ? error.message.split("\n")[0] : String(error)}\n`),
    );
  });
  server.maxConnections = MAX_METRICS_CONNECTIONS;
  server.requestTimeout = 10_000;
  return new Promise<MetricsServer>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve({
        address: { host, port },
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}
