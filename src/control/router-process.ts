/**
 * `qnat run CONFIG`: the router in the foreground (DESIGN.md "Topology").
 *
 * Order, so that a mistake leaves nothing behind:
 *   1. root check; load the config and build the whole dataplane (rules compiled, routes
 *      checked) and load the TUN addon: any error here touches nothing;
 *   2. take the control socket `/run/qnat/<namespace>.sock` (it doubles as the router's lock:
 *      a second `qnat run` of the same router stops here with one line);
 *   3. create the namespaces that are missing, open every leg (the host mirror named as the
 *      port in the router namespace, the wire device in the port's wire namespace), MTU, up,
 *      addresses and routes, sysctls, policy routing for OUTPUT DNAT; on failure undo what
 *      this run created;
 *   4. move this process's main thread into the router namespace (so the metadata proxy
 *      listens there), start the proxy, and forward: each leg's fd is polled with libuv and
 *      pumped a bounded number of batches per wake-up, so no leg starves the others.
 *
 * Offloads (on unless `offloads: false` or QNAT_OFFLOAD=0): every leg, wire legs and mirrors
 * alike, is opened with IFF_VNET_HDR and gets the same TUNSETOFFLOAD (CSUM, TSO4/6, USO4/6 where
 * the kernel has it), as wireguard-go's tun/tun_linux.go does, so TCP moves as 64 KiB GSO
 * super-packets instead of 1500-byte ones. Because every leg negotiated the same offloads, a
 * super-packet can be written to whichever leg the pipeline picks and never needs segmenting in
 * userspace (the kernel segments it, if at all, where it goes next). If one leg refuses them,
 * they are turned off on all.
 *
 * Pass-through (`passthrough: true` or QNAT_PASSTHROUGH=1): the same legs and loop, but each
 * packet from a wire leg is written as it is to the other port's wire leg (io/passthrough.ts):
 * the I/O floor the end-to-end benchmark compares qnat with. No NAT, no routing, no TTL.
 * Workers (`workers: N`, N > 1; control/workers.ts): every leg is opened with N queues
 * (IFF_MULTI_QUEUE); this thread forwards queue 0 with the same loop as before (io/pump-loop.ts)
 * and keeps the whole control plane, N - 1 worker threads forward the others, each with its own
 * dataplane attached to this one's connection table and NAT state (SharedArrayBuffers); show,
 * top, metrics and rules counters add every thread's counters up; a capture runs a tap on every
 * thread and merges their packets into one file (control/worker-capture.ts). Tap ports have an
 * Ethernet stage and neighbour table on every thread, kept in step by relaying ARP
 * (control/ethernet-threads.ts). Ports added or removed live are given to every thread: each
 * links its queues of the new legs in the same step as its successor dataplane, and a removed
 * leg's queues close once every thread let them go (relinkWorkers). Pass-through needs one worker
 * and is refused in one line.
 *
 * Faults stay where they happen: a packet that makes the pipeline throw is one DropReason.Internal
 * drop; a leg that fails (its device deleted, its namespace deleted or replaced, an I/O error) is
 * retired and re-created by itself when it can be (io/leg-supervisor.ts), the other legs
 * forwarding meanwhile; `show ports` says which leg is down, why and since when.
 *
 * SIGINT/SIGTERM stop it within a second: reading stops, the stop hooks run (state saving), legs
 * close (their devices, the mirrors among them, vanish with them), sockets close, the socket and
 * pid files are removed; the namespaces stay (the lab's to remove). SIGHUP applies the config
 * file again, live, as `qnat apply` does (live-apply.ts).
 */
import { readFileSync } from "node:fs";
import { formatCidr } from "../core/addr.js";
import { CryptoRng } from "../core/rng.js";
import { type RouterConfig, loadConfig, parseConfigInPieces, withWorkersFromEnvironment, workersOf } from "../config/config.js";
import { ConntrackCursor } from "../conntrack/format.js";
import { buildDataplane, sharedTablesOf } from "../dataplane/from-config.js";
import { NetfilterNat } from "../dataplane/netfilter-nat.js";
import type { Dataplane } from "../dataplane/pipeline.js";
import { Forwarder } from "../io/forwarder.js";
import { RouterCaptures } from "./capture.js";
import { PassthroughForwarder } from "../io/passthrough.js";
import { deleteNetns, isRoot, netnsPath } from "../io/netns.js";
import { ETH_HLEN, VIRTIO_NET_HDR_LEN } from "../core/batch.js";
import { EthernetLeg } from "../io/ethernet-leg.js";
import { warmUp, type WarmUpReport } from "../dataplane/warmup.js";
import { GSO_SLOT_SIZE, loadTunAddon, TunDevice, type TunError, type TunOffloads } from "../io/tun.js";
import { TunLeg } from "../io/tun-leg.js";
import { LegSupervisor, TICK_MS, openLeg, openLegQueues, type LegSpec } from "../io/leg-supervisor.js";
import { addDataplaneCounters, copyRuleCountersToModel, countersOf, ethernetCountersOf, type DataplaneCounters } from "../io/worker-protocol.js";
import type { CompiledRules } from "../nat/rules/evaluate.js";
import { ForwardingWorkers, MultiQueueLeg, isWorkerQueued, type WorkerQueued } from "./workers.js";
import {
  MultiQueueEthernetLeg, NEIGHBOUR_TICK_MS, buildEthernetStage, distinctNeighbours, ethernetPortsOf, formatThreadNeighbours, neighboursOfThreads, relayArpBetweenThreads,
} from "./ethernet-threads.js";
import { PumpLoop, SPIN_MICROSECONDS } from "../io/pump-loop.js";
import { formatRules, formatSaveDocument } from "../nat/rules/format.js";
import type { NatTable } from "../nat/rules/model.js";
import { PrivilegeError, OperationalError } from "./errors.js";
import {
  configureLabHosts,
  joinWireBridges,
  configureRouterNamespace,
  ensureNamespaces,
  floatingIpsOf,
  outputDnatLocalAddresses,
  parseConfigRules,
  setSysctls,
} from "./host-setup.js";
import { ConntrackWork } from "./conntrack-command.js";
import { startMetadataServer, type MetadataServer } from "./metadata.js";
import { MetricsExporter, startMetricsServer, type MetricsServer } from "./metrics.js";
import { ConntrackCensus } from "./census.js";
import { collectTop } from "./top-view.js";
import { LoopStats } from "../io/loop-stats.js";
import { collectEthernetStats, collectPorts, collectStats, formatEthernetStats, formatJson, formatPorts, formatStats, type WorkerStatsView } from "./show.js";
import { controlSocketPath, serveControl, type ControlAnswer, type ControlRequest, type ControlServer, type LiveChangeRequest } from "./socket.js";
import { StateKeeper } from "./state-keeper.js";
import { formatTrace, runTrace } from "./trace.js";
import { RouteListing } from "../route/route-listing.js";
import {
  addKernelSide,
  carryOverCounters,
  checkChangeable,
  diffConfigsInPieces,
  formatDifference,
  isEmptyDifference,
  portKey,
  removeKernelSide,
  routingForChange,
  tableOf,
  withRules,
} from "./live-apply.js";

export { PUMP_BUDGET, SPIN_MICROSECONDS } from "../io/pump-loop.js";
/** Conntrack expiry also runs when no packet arrives. */
const HOUSEKEEPING_INTERVAL_MS = 1000;

export { ethernetPortsOf };

/**
 * Where each port of `running` is in `next` (-1: removed), matched as the legs are (live-apply.ts
 * portKey: name and wire): a port whose wire changed is a new device, as in Linux.
 */
export function portRenumbering(running: RouterConfig, next: RouterConfig): number[] {
  return running.ports.map((port) => next.ports.findIndex((p) => portKey(p) === portKey(port)));
}

/** Packets per batch read from a leg. */
export const BATCH_SIZE = 64;

export interface RouterOptions {
  /** Where progress lines go (stdout by default). */
  readonly log?: (line: string) => void;
  /** TUN offloads on every leg (default: on unless the environment says QNAT_OFFLOAD=0). */
  readonly offloads?: boolean;
  /** Pass-through mode, qnat's I/O floor (default: QNAT_PASSTHROUGH=1 in the environment). */
  readonly passthrough?: boolean;
  /** Busy-poll window after each wake-up (default QNAT_SPIN_US or SPIN_MICROSECONDS). */
  readonly spinMicroseconds?: number;
  /** JIT warm-up before going live (dataplane/warmup.ts; default: on unless QNAT_WARMUP=0). */
  readonly warmUp?: boolean;
}

/** An on/off switch from the environment: unset is `fallback`, "0" off, "1" on, anything else refused. */
export function envSwitch(name: string, fallback: boolean, env: NodeJS.ProcessEnv = process.env): boolean {
  const value = env[name];
  if (value === undefined || value === "") return fallback;
  if (value === "0" || value === "1") return value === "1";
  throw new OperationalError(`${name} must be 0 or 1, not '${value}'`, 2);
}

/** A number of microseconds from the environment (0 to 1 000 000), `fallback` when unset. */
export function envMicroseconds(name: string, fallback: number, env: NodeJS.ProcessEnv = process.env): number {
  const value = env[name];
  if (value === undefined || value === "") return fallback;
  const number = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(number <= 1_000_000)) throw new OperationalError(`${name} must be a number of microseconds from 0 to 1000000, not '${value}'`, 2);
  return number;
}

/** The checks of `qnat run` that touch nothing: returns what the router needs. */
export function prepareRouter(configPath: string): { config: RouterConfig; dataplane: Dataplane; rules: NatTable } {
  const config = withWorkersFromEnvironment(loadConfig(configPath), process.env.QNAT_WORKERS);
  const rules = parseConfigRules(config);
  // Fresh random hash keys and NAT randomness for every start (crypto.getRandomValues), so
  // nobody can aim tuples at one conntrack bucket or predict the ports NAT hands out.
  // With workers: N > 1 the connection table and NAT state live in SharedArrayBuffers that the
  // worker threads' dataplanes attach to (from-config.ts sharedTablesOf): one table for all.
  const dataplane = buildDataplane(config, { rng: new CryptoRng(), ...(workersOf(config) > 1 ? { sharable: true } : {}) });
  loadTunAddon();
  return { config, dataplane, rules };
}

/** A running router: its legs, servers and a way to stop it. */
export interface RunningRouter {
  readonly config: RouterConfig;
  readonly dataplane: Dataplane;
  /**
   * Adds work to do when the router stops, after it stopped reading and before its legs and
   * control socket close: where the conntrack state is saved on SIGTERM (issue 10, "Restarts
   * that keep connections"). Hooks run in order; one that throws is logged and the stop goes on.
   */
  onStop(hook: () => void | Promise<void>): void;
  /**
   * Applies a config text live (`qnat apply`, SIGHUP; control/live-apply.ts); resolves with the
   * lines that say what changed (none when nothing differs). A ConfigError changes nothing.
   */
  apply(text: string, file: string): Promise<string[]>;
  /** Resolves once stopped. */
  stop(): Promise<void>;
}

/** How long a stop may take before the process exits anyway (the contract: within a second). */
export const STOP_LIMIT_MS = 900;

/**
 * Runs `qnat run CONFIG` until SIGINT/SIGTERM; resolves with the exit code (0 after a clean
 * stop). Throws PrivilegeError, ConfigError, ControlError or OperationalError before anything
 * runs. SIGHUP re-reads CONFIG and applies what differs, live (live-apply.ts).
 */
export async function runRouterCommand(configPath: string, options: RouterOptions = {}): Promise<number> {
  const log = options.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const router = await startRouter(configPath, { ...options, log });
  // SIGHUP: `qnat apply` of the file the router was started with (control/live-apply.ts).
  const onHangup = (): void => {
    let text: string;
    try {
      text = readFileSync(configPath, "utf8");
    } catch (error) {
      log(`qnat: SIGHUP: ${configPath}: cannot read config (${(error as NodeJS.ErrnoException).code ?? "error"}); nothing changed`);
      return;
    }
    router.apply(text, configPath).then(
      (lines) => log(lines.length === 0 ? `qnat: SIGHUP: ${configPath}: nothing differs` : `qnat: SIGHUP: ${configPath} applied:\n${lines.join("\n")}`),
      (error: unknown) => log(`qnat: SIGHUP: ${error instanceof Error ? error.message.split("\n")[0] : String(error)}; nothing changed`),
    );
  };
  process.on("SIGHUP", onHangup);
  await new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      process.off("SIGHUP", onHangup);
      log(`qnat: ${signal}: stopping`);
      // Whatever a stop waits for (a client that does not hang up), the process ends in time.
      setTimeout(() => {
        log(`qnat: stopping took more than ${STOP_LIMIT_MS} ms; exiting now`);
        process.exit(0);
      }, STOP_LIMIT_MS).unref();
      void router.stop().then(resolve);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  });
  return 0;
}

export async function startRouter(configPath: string, options: RouterOptions = {}): Promise<RunningRouter> {
  const log = options.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const wantOffloads = options.offloads ?? envSwitch("QNAT_OFFLOAD", true);
  const passthrough = options.passthrough ?? envSwitch("QNAT_PASSTHROUGH", false);
  const spinMicroseconds = options.spinMicroseconds ?? envMicroseconds("QNAT_SPIN_US", SPIN_MICROSECONDS);
  const wantWarmUp = options.warmUp ?? envSwitch("QNAT_WARMUP", true);
  if (!isRoot()) throw new PrivilegeError("run");
  // `let`: a live change (applyConfig below) replaces all three between two batches.
  let { config, dataplane, rules } = prepareRouter(configPath);
  // `workers: N` (N > 1): the main thread forwards queue 0 of every leg, N - 1 worker threads
  // the others, each with its own dataplane on the shared tables (control/workers.ts).
  const workerCount = workersOf(config);
  if (passthrough && workerCount > 1) throw new OperationalError(`pass-through mode runs on one thread; ${config.file} says workers: ${workerCount}`, 2);
  let workers: ForwardingWorkers | undefined;
  /** The rules' counters into their model, for `show rules -v` and `rules save -c`: every worker's added up. */
  const countRules = async (compiled: CompiledRules): Promise<void> => {
    if (workers === undefined) {
      compiled.copyCountersToModel();
      return;
    }
    const { summed } = await workerCounters(workers);
    if (summed.rules !== null) copyRuleCountersToModel(compiled, summed.rules);
  };
  /** Every worker's counters added to the main thread's, for show, top and metrics (one router), and each thread's share. */
  const workerCounters = async (running: ForwardingWorkers): Promise<{ summed: DataplaneCounters; perWorker: WorkerStatsView[] }> => {
    const own = { ...countersOf(dataplane), ...(ethernet !== undefined ? { ethernet: ethernetCountersOf(ethernet) } : {}) };
    const others = await running.counters();
    const summed = addDataplaneCounters(own, others);
    const neighbours = summed.ethernet?.neighbours;
    if (neighbours !== undefined) {
      // One router: a neighbour in two threads' tables is one entry (the other counters add up).
      neighbours["entries"] = distinctNeighbours([own, ...others].map((c) => c.ethernet?.entries ?? []));
    }
    return { summed, perWorker: running.perWorker(own, others) };
  };
  const addon = loadTunAddon();
  dataplane.log = log;
  // Connections kept across restarts (config `state:`): read back before the first packet,
  // saved every interval and by a stop hook (state-keeper.ts).
  const state = config.state === undefined ? undefined : new StateKeeper(config.state, () => dataplane, { log });

  let ready = false;
  // Packet captures (`qnat capture`, config `capture:`): a tap on the forwarder (control/capture.ts).
  const captures = new RouterCaptures(BATCH_SIZE, () => config, () => dataplane, log);
  let metadata: MetadataServer | undefined;
  let metrics: MetricsServer | undefined;
  // The loop's batch sizes and busy time, and the census of the connection table: read by the
  // Prometheus endpoint (metrics.ts) and `qnat top` (top-view.ts), never by the packet path.
  const loopStats = new LoopStats();
  const census = new ConntrackCensus(() => dataplane.conntrack);
  const exporter = new MetricsExporter({
    dataplane: () => dataplane, loop: loopStats, census, ethernet: () => ethernet,
    workers: () => (workers === undefined ? undefined : workerCounters(workers)),
  });
  let supervisor: LegSupervisor | undefined;
  const handler = (request: ControlRequest): ControlAnswer | Promise<ControlAnswer> => {
    if (!ready) return { ok: false, error: `router ${config.namespace} is starting` };
    const natRules = dataplane.nat instanceof NetfilterNat ? dataplane.nat.rules : undefined;
    const wires = config.ports.map((p) => p.wire);
    if (request.cmd === "apply" || request.cmd === "rules") return liveRequest(request);
    if (request.cmd === "capture") {
      return captures.answer(request);
    }
    if (request.cmd === "trace") {
      const result = runTrace(dataplane, request.packet);
      return request.json ? { ok: true, text: JSON.stringify(result), data: result } : { ok: true, text: formatTrace(result) };
    }
    if (request.cmd === "top") {
      // Counters now and a census of the table (in ~1 ms pieces, at most one a second: census.ts).
      const summed = workers === undefined ? undefined : workerCounters(workers).then((counted) => counted.summed);
      return collectTop(dataplane, census, request.connections, undefined, summed).then((view) => ({ ok: true, data: view }));
    }
    if (request.cmd === "conntrack") {
      // conntrack -L/-D/-F: ~1 ms of work per turn of the event loop (conntrack-command.ts).
      return { ok: true, pieces: new ConntrackWork(dataplane.conntrack, request.op, request.filter) };
    }
    if (request.cmd !== "show") return { ok: false, error: "unknown command" };
    switch (request.what) {
      case "neigh": {
        const names = config.ports.map((p) => p.name);
        if (workers !== undefined && ethernet !== undefined) {
          // Every thread's table (control/ethernet-threads.ts), each line saying whose.
          const json = request.json;
          return workers.counters().then((others) => {
            const rows = neighboursOfThreads([ethernet.table.view(), ...others.map((c) => c.ethernet?.entries ?? [])], names);
            return { ok: true, text: json ? JSON.stringify(rows) + "\n" : formatThreadNeighbours(rows), data: rows };
          });
        }
        const view = (ethernet?.table.view() ?? []).map((row) => ({ ...row, dev: names[row.port] ?? `port${row.port}` }));
        return { ok: true, text: request.json ? JSON.stringify(view) + "\n" : (ethernet?.format(names) ?? ""), data: view };
      }
      case "ports": {
        const json = request.json;
        const answer = (summed?: DataplaneCounters): ControlAnswer => {
          const view = collectPorts(dataplane, wires, (index) => supervisor?.health(index), summed);
          return { ok: true, text: json ? formatJson(view) : formatPorts(view), data: view };
        };
        return workers === undefined ? answer() : workerCounters(workers).then((counted) => answer(counted.summed));
      }
      case "stats": {
        const json = request.json;
        const answer = (summed?: DataplaneCounters, perWorker?: WorkerStatsView[]): ControlAnswer => {
          const capture = captures.stats();
          const view = {
            ...collectStats(dataplane, metadata?.counters, summed),
            ...(perWorker !== undefined ? { workers: perWorker } : {}),
            ...(state !== undefined ? { state: state.view() } : {}),
            ...(ethernet !== undefined ? { ethernet: collectEthernetStats(ethernet, config.ports.map((p) => p.name), summed?.ethernet) } : {}),
            ...(capture.running > 0 || capture.captured > 0 || capture.lost > 0 ? { capture } : {}),
          };
          const text = formatStats(view) + (view.ethernet !== undefined ? `\n${formatEthernetStats(view.ethernet)}` : "");
          return { ok: true, text: json ? formatJson(view) : text, data: view };
        };
        if (workers === undefined) return answer();
        // One router: every worker's counters added up, and each thread's share beside them.
        return workerCounters(workers).then((counted) => answer(counted.summed, counted.perWorker));
      }
      case "routes":
        // In pieces (route-listing.ts): a full Internet table is a million lines.
        return { ok: true, pieces: new RouteListing(dataplane.routes, request.json ? "json" : "text") };
      case "rules": {
        const json = request.json;
        const verbose = request.verbose === true;
        const answer = (): ControlAnswer => {
          const table: NatTable = natRules !== undefined ? { chains: new Map(natRules.chains.map((c) => [c.name, c])) } : rules;
          const text = formatRules(table, { counters: verbose });
          return { ok: true, text: json ? JSON.stringify({ rules: text.trimEnd().split("\n") }) + "\n" : text };
        };
        if (natRules === undefined || !verbose) return answer();
        return countRules(natRules).then(answer);
      }
      case "conntrack":
        // Streamed from the live table, about 1 ms of formatting per turn of the event loop, so
        // the legs are served between pieces (socket.ts); a snapshot for a worker thread would
        // first copy the whole table on this thread (64 MiB for 1M entries) and could not
        // match a live dump's freshness anyway. Consistency as `conntrack -L`: ConntrackCursor.
        return { ok: true, pieces: new ConntrackCursor(dataplane.conntrack, request.json ? "json" : "text") };
    }
    return { ok: false, error: "unknown show" };
  };

  // 2. the control socket is the lock: a second router of this namespace stops here.
  const control: ControlServer = await serveControl(controlSocketPath(config.namespace), handler);

  // 3. the kernel side.
  // Ethernet (tap) ports: every batch leaves room for an Ethernet header (core/batch.ts), and
  // the Ethernet stage with the neighbour table sits between their TAP legs and the dataplane.
  const hasTap = config.ports.some((p) => p.wire.mode === "tap");
  const vnetLength = wantOffloads ? VIRTIO_NET_HDR_LEN : 0;
  const headroom = vnetLength + (hasTap ? ETH_HLEN : 0);
  const wantSlotSize = wantOffloads ? GSO_SLOT_SIZE + (hasTap ? 16 : 0) : 2048 + headroom;
  const ethernet = buildEthernetStage(config, { headroom, ...(wantOffloads ? { superSlotSize: wantSlotSize } : {}) }, dataplane);
  const legs: TunLeg[] = [];
  /**
   * Leg `index` over queue 0 of its device; with more queues (the workers'), a MultiQueueLeg that
   * has the workers let theirs go before it closes them (control/workers.ts).
   */
  const queueLeg = (device: TunDevice, workerQueues: readonly TunDevice[], index: number, tap: boolean): TunLeg => {
    // The workers are told the leg's index when it closes: the one it has then (relinkLegs renumbers).
    let leg: TunLeg | undefined;
    const release = (): Promise<void> => {
      const at = multiQueueIndexes.get(leg!);
      multiQueueIndexes.delete(leg!);
      return at === undefined ? Promise.resolve() : (workers?.releaseLeg(at) ?? Promise.resolve());
    };
    if (ethernet !== undefined && tap) {
      // A tap port's leg passes the Ethernet stage; with workers it holds their queues too.
      const ethernetLeg = workerQueues.length === 0
        ? new EthernetLeg(device, ethernet, index >> 1, index & 1)
        : new MultiQueueEthernetLeg(device, ethernet, index >> 1, index & 1, workerQueues, release);
      ethernet.attach(ethernetLeg);
      leg = ethernetLeg;
    } else {
      leg = workerQueues.length === 0 ? new TunLeg(device) : new MultiQueueLeg(device, workerQueues, release);
    }
    if (workerQueues.length > 0) multiQueueIndexes.set(leg, index);
    return leg;
  };
  /** Each open multi-queue leg's index in the loop (`port * 2 + leg`), which a live change of ports renumbers. */
  const multiQueueIndexes = new Map<TunLeg, number>();
  /** Closes a leg no worker holds (never given to one, or let go by all): every queue at once. */
  const closeUnshared = (leg: TunLeg): void => {
    multiQueueIndexes.delete(leg);
    if (isWorkerQueued(leg)) leg.closeQueues();
    else leg.close();
  };
  /** A leg of a port added live, or re-created by the supervisor: with workers, one queue for each. */
  const openPortLeg = (spec: LegSpec, index: number): TunLeg => {
    if (workerCount === 1) return openLeg(spec);
    const [device, ...workerQueues] = openLegQueues(spec, workerCount);
    return queueLeg(device!, workerQueues, index, spec.ethernet !== undefined);
  };
  let created: string[] = [];
  let housekeeping: NodeJS.Timeout | undefined;
  const closeLegs = (): void => {
    for (const leg of supervisor?.openLegs ?? legs) {
      try {
        leg.device.stopReadable();
        leg.close();
      } catch {
        // closing is best effort: the fd goes with the process anyway
      }
    }
  };
  let offloads: TunOffloads | undefined;
  let warmed: WarmUpReport | undefined;
  try {
    if (passthrough && config.ports.length !== 2) throw new OperationalError("pass-through mode needs a router with exactly two ports");
    if (passthrough && hasTap) throw new OperationalError("pass-through mode needs TUN ports (it copies packets between wire legs, without Ethernet)");
    // Before any device exists: the per-packet code compiled on a scratch dataplane, in the slot
    // geometry the legs will most likely have (offloads on: a header and 64 KiB slots).
    if (wantWarmUp && !passthrough) {
      warmed = warmUp(config, { headroom, slotSize: wantSlotSize });
    }
    created = ensureNamespaces(config);
    for (const [index, port] of config.ports.entries()) {
      const tap = port.wire.mode === "tap";
      // One queue per worker (IFF_MULTI_QUEUE with workers: N > 1; a plain device with one).
      const [wire, ...wireQueues] = TunDevice.openQueues(port.wire.device, { netns: port.wire.namespace, vnetHdr: wantOffloads, tap }, workerCount);
      legs.push(queueLeg(wire!, wireQueues, index * 2, tap));
      const [mirror, ...mirrorQueues] = TunDevice.openQueues(port.name, { netns: config.namespace, vnetHdr: wantOffloads, tap }, workerCount);
      legs.push(queueLeg(mirror!, mirrorQueues, index * 2 + 1, tap));
      // The mirror shows the port's MAC in the router namespace (`ip addr`: link/ether MAC).
      if (tap) mirror.setMac(port.mac);
    }
    if (wantOffloads) offloads = enableOffloadsOnAll(legs.map((leg) => leg.device), log);
    for (const [index, leg] of legs.entries()) {
      leg.device.setMtu(config.ports[index >> 1]!.mtu);
      leg.device.setUp();
    }
    configureRouterNamespace(config, outputDnatLocalAddresses(config, rules));
    // A tap port's wire leg joins its `wire.bridge` (br-int, br-ex), as `qnat lab up` would.
    joinWireBridges(config);
    // 4. this process's sockets from now on belong to the router namespace.
    addon.enterNetns(netnsPath(config.namespace));
    if (config.metadata !== undefined) {
      metadata = await startMetadataServer({
        port: config.metadata.port,
        instances: config.metadata.instances,
        floatingIps: floatingIpsOf(rules),
      });
    }
    if (config.metrics !== undefined) metrics = await startMetricsServer(config.metrics.host, config.metrics.port, exporter);
  } catch (error) {
    closeLegs();
    if (metadata !== undefined) await metadata.close();
    if (metrics !== undefined) await metrics.close();
    for (const name of created.reverse()) {
      try {
        deleteNetns(name);
      } catch {
        // reported below with the original error
      }
    }
    await control.close();
    throw startError(error);
  }

  state?.start();

  // With IFF_VNET_HDR every slot starts with the virtio_net_hdr (the headroom), then the room
  // for an Ethernet header in a router with tap ports; with offloads the slots hold 64 KiB
  // super-packets.
  const slotSize = offloads !== undefined ? GSO_SLOT_SIZE + (hasTap ? 16 : 0) : 2048 + headroom;
  // `let`: a live change that adds or removes ports links the legs anew (relinkLegs below).
  let forwarder: Forwarder | PassthroughForwarder = passthrough
    ? new PassthroughForwarder(legs, BATCH_SIZE, slotSize, headroom)
    : new Forwarder(dataplane, legs, BATCH_SIZE, slotSize, headroom);
  if (forwarder instanceof Forwarder) forwarder.useQueues(0, workerCount);
  captures.attach(forwarder instanceof Forwarder ? forwarder : undefined);
  // Ethernet ports: a packet whose neighbour failed is answered by the dataplane (host
  // unreachable); the neighbour timers run; each address is announced (gratuitous ARP).
  let neighbourTicks: NodeJS.Timeout | undefined;
  if (ethernet !== undefined) {
    ethernet.onUnreachable = (buf, off, length, port) => {
      return forwarder instanceof Forwarder ? forwarder.hostUnreachable(buf, off, length, port) : 0;
    };
    // A capture sees the packets that waited for ARP when they leave (control/capture.ts).
    ethernet.onQueuedSent = (pool, verdicts, legIndex) => captures.tap.deferred(pool, verdicts, legIndex);
    neighbourTicks = setInterval(() => {
      try {
        ethernet.tick();
      } catch (failure) {
        loop.errors.offer(() => `qnat: internal error in the neighbour timers (it goes on): ${failure instanceof Error ? failure.stack : String(failure)}`);
      }
    }, NEIGHBOUR_TICK_MS);
    neighbourTicks.unref();
    for (const [index, port] of config.ports.entries()) if (port.wire.mode === "tap") ethernet.announce(index);
  }
  // The packet loop (io/pump-loop.ts), the same one every worker thread runs over its queues.
  const loop = new PumpLoop(forwarder, { spinMicroseconds, loopStats, log, legFailed: (index, error) => supervisor!.fail(index, error) });
  const watch = (index: number, leg: TunLeg): void => loop.watch(index, leg.device);
  // A leg that fails is retired and re-created when it can be (io/leg-supervisor.ts).
  const c = addon.constants;
  const offloadFlags = offloads === undefined ? 0 : c.TUN_F_CSUM | c.TUN_F_TSO4 | c.TUN_F_TSO6 | (offloads.udpSegmentation ? c.TUN_F_USO4 | c.TUN_F_USO6 : 0);
  /** How leg `index` of `ports` is opened: the wire device in its namespace, the mirror in the router's. */
  const legSpec = (ports: RouterConfig["ports"], index: number): LegSpec => {
    const port = ports[index >> 1]!;
    const wire = (index & 1) === 0;
    return {
      device: wire ? port.wire.device : port.name,
      netns: wire ? port.wire.namespace : config.namespace,
      vnetHdr: wantOffloads,
      offloadFlags,
      mtu: port.mtu,
      ...(port.wire.mode === "tap" && ethernet !== undefined
        ? { ethernet: { stage: ethernet, port: index >> 1, role: index & 1, ...(wire ? {} : { mac: port.mac }) } }
        : {}),
    };
  };
  const superviseLegs = (ports: RouterConfig["ports"], legsNow: readonly TunLeg[]): LegSupervisor => {
    const specs = legsNow.map((_, index) => legSpec(ports, index));
    return new LegSupervisor(forwarder.slots, specs, legsNow, {
      log,
      // With workers, a leg is re-created with a queue for each of them, sent to them at once.
      open: (spec) => openPortLeg(spec, specs.indexOf(spec)),
      reopened: (index, leg) => {
        if (isWorkerQueued(leg) && workers !== undefined) {
          workers.legUp(index, Array.from({ length: workerCount - 1 }, (_, i) => leg.queueFor(i + 1)));
        }
        watch(index, leg);
        // A wire leg made anew is a new device, outside the bridge its predecessor was in.
        if ((index & 1) === 0) {
          try {
            joinWireBridges(config, [config.ports[index >> 1]!]);
          } catch (error) {
            log(`qnat: ${leg.name}: joining its bridge failed: ${error instanceof Error ? error.message : String(error)}`);
          }
        }
        // A mirror made anew has lost its addresses, and the router namespace the routes through it.
        if ((index & 1) === 1) {
          try {
            configureRouterNamespace(config, outputDnatLocalAddresses(config, rules));
          } catch (error) {
            log(`qnat: ${leg.name}: re-configuring the router namespace failed: ${error instanceof Error ? error.message : String(error)}`);
          }
        }
      },
    });
  };
  supervisor = superviseLegs(config.ports, legs);
  legs.forEach((leg, index) => watch(index, leg));
  const legTicks = setInterval(() => supervisor!.tick(), TICK_MS);
  legTicks.unref();
  housekeeping = setInterval(() => {
    try {
      dataplane.housekeeping();
    } catch (failure) {
      loop.errors.offer(() => `qnat: internal error in housekeeping (it goes on): ${failure instanceof Error ? failure.stack : String(failure)}`);
    }
  }, HOUSEKEEPING_INTERVAL_MS);
  housekeeping.unref();

  // Live changes (control/live-apply.ts), one at a time in the order they were asked for; `next`
  // is read when its turn comes, so a rules restore replaces the rules of the config as it is then.
  let changing: Promise<unknown> = Promise.resolve();
  const applyConfig = (next: () => RouterConfig | Promise<RouterConfig>): Promise<string[]> => {
    const run = changing.then(async () => applyNow(await next()));
    changing = run.catch(() => undefined);
    return run;
  };
  const applyText = (text: string, file: string): Promise<string[]> => applyConfig(async () => withWorkersFromEnvironment(await parseConfigInPieces(text, file), process.env.QNAT_WORKERS));
  const applyNow = async (next: RouterConfig): Promise<string[]> => {
    // Checked completely before anything changes: the rules parsed here, the routes and the
    // compiled rules by buildDataplane below (each failure a ConfigError at its FILE:LINE).
    const nextRules = parseConfigRules(next);
    checkChangeable(config, next);
    const difference = await diffConfigsInPieces(config, rules, next, nextRules);
    if (isEmptyDifference(difference)) return [];
    if (passthrough) throw new OperationalError("a pass-through router takes no live changes; restart it");
    if (ethernet === undefined && next.ports.some((p) => p.wire.mode === "tap")) {
      throw new OperationalError("a router started without tap ports takes none live (its slots have no room for Ethernet headers); restart it");
    }
    // Routing: a small change made in place at the swap (a floating IP's /32), else a table built
    // anew in pieces while this one forwards (live-apply.ts routingForChange). With workers every
    // thread builds its successor's table anew, so their route versions agree (docs/multi-core.md).
    const { routes: nextRoutes, change: changeRoutes } = await routingForChange(config, next, dataplane.routes, difference, { inPlace: workers === undefined });
    const successor = buildDataplane(next, { successorOf: dataplane, routes: nextRoutes });
    if (workers !== undefined) successor.routes.continueVersionsFrom(dataplane.routes);
    const dnatBefore = outputDnatLocalAddresses(config, rules);
    const dnatAfter = outputDnatLocalAddresses(next, nextRules);
    const opened = openAddedPorts(next, difference.portsAdded);
    try {
      await addKernelSide(next, difference, dnatBefore, dnatAfter);
    } catch (error) {
      for (const leg of opened.values()) closeUnshared(leg);
      throw error;
    }
    // The swap: synchronous, between two batches (this thread runs the packet loop).
    const running = config;
    changeRoutes?.();
    carryOverCounters(dataplane, successor);
    successor.log = log;
    successor.conntrack.locked(() => successor.conntrack.clearRouteCaches());
    const relinked = opened.size > 0 || difference.portsRemoved.length > 0;
    const removedLegs = relinked ? relinkLegs(running, next, successor, opened) : [];
    if (!relinked) (forwarder as Forwarder).dataplane = successor;
    dataplane = successor;
    if (ethernet !== undefined) ethernet.sources = successor;
    config = next;
    rules = nextRules;
    if (workers !== undefined) {
      // Every worker swaps in its successor too (between two of its batches); until the last
      // has, a new connection may still meet the old rules on another thread. The route caches
      // are cleared again once all run the new routes (a worker may have cached an old route).
      if (relinked) await relinkWorkers(workers, running, next, removedLegs);
      else {
        const late = await workers.apply(next);
        if (late.length > 0) log(`qnat: apply: worker ${late.join(", ")} has not taken the change yet (it is still building its dataplane); it forwards by the previous config until it has`);
      }
      dataplane.conntrack.locked(() => dataplane.conntrack.clearRouteCaches());
    }
    for (const { port, to } of difference.mtus) setPortMtu(config.ports.findIndex((p) => p.name === port), to);
    if (ethernet !== undefined) {
      // The Ethernet stage follows the ports and addresses; an added address of a tap port is
      // announced (gratuitous ARP, as Neutron does for a new floating IP).
      ethernet.setPorts(config.ports.length, ethernetPortsOf(config));
      ethernet.addOwnAddresses(config.ports.flatMap((p) => p.addresses.map((a) => a.addr)));
      for (const { port, cidr } of difference.addressesAdded) {
        const index = config.ports.findIndex((p) => p.name === port);
        if (index >= 0 && config.ports[index]!.wire.mode === "tap") ethernet.announce(index, [cidr.addr]);
      }
    }
    // A leg re-created later gets the new MTU (the supervisor's specs), unless one is down now:
    // then it comes back with the old one until the next change.
    if (difference.mtus.length > 0 && supervisor!.openLegs.length === forwarder.slots.length) {
      supervisor!.stop();
      supervisor = superviseLegs(config.ports, forwarder.slots.legs as TunLeg[]);
    }
    if (difference.metadataChanged || difference.rulesAdded.length + difference.rulesRemoved.length > 0) await changeMetadata();
    await changeMetrics(running);
    await removeKernelSide(running, difference, dnatBefore, dnatAfter, log);
    return formatDifference(difference, next);
  };
  /**
   * The legs of the ports a live change adds, opened before the swap (their namespaces made
   * where missing, the lab's hosts there configured, the mirrors' sysctls as configureRouterNamespace
   * sets them), keyed `name/wire` and `name/mirror`; the loop does not read them until relinkLegs.
   */
  const openAddedPorts = (next: RouterConfig, added: RouterConfig["ports"]): Map<string, TunLeg> => {
    const opened = new Map<string, TunLeg>();
    if (added.length === 0) return opened;
    if (passthrough) throw new OperationalError("a pass-through router takes no live changes; restart it");
    const down = supervisor!.openLegs.length < forwarder.slots.length;
    if (down) throw new OperationalError("a leg of this router is down: ports are added or removed once every leg is up again");
    const wireNamespaces = new Set(added.map((p) => p.wire.namespace));
    const labHosts = next.lab.filter((host) => wireNamespaces.has(host.namespace));
    try {
      ensureNamespaces({ ...next, ports: added, lab: labHosts });
      for (const port of added) {
        const index = next.ports.indexOf(port) * 2;
        opened.set(`${port.name}/wire`, openPortLeg(legSpec(next.ports, index), index));
        opened.set(`${port.name}/mirror`, openPortLeg(legSpec(next.ports, index + 1), index + 1));
      }
      setSysctls(
        next.namespace,
        added.flatMap((p) => [[`net.ipv4.conf.${p.name}.rp_filter`, 0] as const, [`net.ipv4.conf.${p.name}.accept_local`, 1] as const]),
      );
      joinWireBridges(next, added);
      if (labHosts.length > 0) configureLabHosts({ ...next, lab: labHosts });
    } catch (error) {
      // No worker was given these legs: their queues close at once.
      for (const leg of opened.values()) closeUnshared(leg);
      throw error;
    }
    return opened;
  };
  /**
   * Ports added or removed: the loop's legs are linked anew in the new config's port order
   * (`port * 2 + leg`), the legs of unchanged ports staying open and reused, the added ones
   * watched for the first time, the removed ones closed (their devices vanish with them).
   * The forwarder and the leg supervisor are made anew for the new indexes (a leg's
   * failure history starts again).
   */
  const relinkLegs = (running: RouterConfig, next: RouterConfig, successor: Dataplane, opened: ReadonlyMap<string, TunLeg>): TunLeg[] => {
    const current = forwarder.slots.legs as TunLeg[];
    const linked: TunLeg[] = [];
    for (const port of next.ports) {
      const before = running.ports.findIndex((p) => portKey(p) === portKey(port));
      if (before >= 0) linked.push(current[before * 2]!, current[before * 2 + 1]!);
      else linked.push(opened.get(`${port.name}/wire`)!, opened.get(`${port.name}/mirror`)!);
    }
    // A removed port's leg that is down was closed when it went down (io/leg-supervisor.ts).
    const removed = current.filter((leg) => !linked.includes(leg) && leg instanceof TunLeg);
    for (const leg of removed) {
      leg.device.stopReadable();
      // With workers the removed legs close once every worker let them go (relinkWorkers).
      if (workers === undefined) leg.close();
      multiQueueIndexes.delete(leg);
    }
    linked.forEach((leg, index) => isWorkerQueued(leg) && multiQueueIndexes.set(leg, index));
    supervisor!.stop();
    if (ethernet !== undefined) {
      // Port indexes change: the tap legs learn theirs; the neighbours and counters of the ports
      // that stay follow them (as Linux keeps the neighbours of devices that stay), those of
      // removed ports go.
      ethernet.renumberPorts(portRenumbering(running, next), next.ports.length);
      ethernet.setPorts(next.ports.length, ethernetPortsOf(next));
      linked.forEach((leg, index) => {
        if (!(leg instanceof EthernetLeg)) return;
        leg.port = index >> 1;
        ethernet.attach(leg);
      });
    }
    forwarder = new Forwarder(successor, linked, BATCH_SIZE, slotSize, headroom);
    captures.attach(forwarder);
    loop.forwarder = forwarder;
    supervisor = superviseLegs(next.ports, linked);
    linked.forEach((leg, index) => watch(index, leg));
    return removed;
  };
  /**
   * Ports added or removed with workers, once this thread runs the new legs (relinkLegs): every
   * worker is given its queue of each leg in the new order and swaps its successor in with them
   * (control/workers.ts relink); the removed legs' queues close once every worker let them go,
   * never before (a worker writes through every queue of a device: io/forwarder.ts useQueues).
   * Posted before this turn of the event loop ends, so the workers get it before any later
   * `leg-down` or `leg-up` of the new numbering. Waits at most CHANGE_TIMEOUT_MS; a worker still
   * building its successor then (a full routing table) is named in one line and follows later.
   */
  const relinkWorkers = async (running: ForwardingWorkers, before: RouterConfig, next: RouterConfig, removed: readonly TunLeg[]): Promise<void> => {
    const linked = forwarder.slots.legs as TunLeg[];
    // A leg that went down meanwhile has no queues: the workers wait for its `leg-up`.
    const queues = Array.from({ length: workerCount - 1 }, (_, i) =>
      linked.map((leg) => (isWorkerQueued(leg) ? leg.queueFor(i + 1) : { fd: -1, queues: [], name: "", netns: "" })),
    );
    const late = await running.relink(next, queues, portRenumbering(before, next), () => {
      for (const leg of removed) {
        try {
          closeUnshared(leg);
        } catch (error) {
          log(`qnat: apply: closing ${leg.name} failed (${error instanceof Error ? error.message : String(error)}); its fds go with the process`);
        }
      }
    });
    if (late.length > 0) {
      log(`qnat: apply: worker ${late.join(", ")} has not taken the new ports yet (it is still building its dataplane); the removed ports' devices close once it has`);
    }
  };
  const setPortMtu = (port: number, mtu: number): void => {
    for (const index of [port * 2, port * 2 + 1]) {
      const leg = forwarder.slots.legs[index];
      if (leg instanceof TunLeg) leg.device.setMtu(mtu);
    }
  };
  /** The Prometheus endpoint follows the config: started, stopped, or moved to the new address. */
  const changeMetrics = async (running: RouterConfig): Promise<void> => {
    const before = running.metrics;
    const wanted = config.metrics;
    if (before?.host === wanted?.host && before?.port === wanted?.port) return;
    if (metrics !== undefined) {
      await metrics.close();
      metrics = undefined;
    }
    if (wanted !== undefined) metrics = await startMetricsServer(wanted.host, wanted.port, exporter);
  };
  /** The metadata proxy follows the config: started, stopped, or given the new instances. */
  const changeMetadata = async (): Promise<void> => {
    const wanted = config.metadata;
    if (metadata !== undefined && (wanted === undefined || metadata.address.port !== wanted.port)) {
      await metadata.close();
      metadata = undefined;
    }
    if (wanted === undefined) return;
    if (metadata === undefined) {
      metadata = await startMetadataServer({ port: wanted.port, instances: wanted.instances, floatingIps: floatingIpsOf(rules) });
    } else {
      metadata.update(wanted.instances, floatingIpsOf(rules));
    }
  };
  const liveRequest = async (request: LiveChangeRequest): Promise<ControlAnswer> => {
    try {
      if (request.cmd === "rules" && request.action === "save") {
        const compiled = dataplane.nat instanceof NetfilterNat ? dataplane.nat.rules : undefined;
        if (compiled !== undefined) await countRules(compiled);
        const table = compiled !== undefined ? tableOf(compiled) : rules;
        return { ok: true, text: formatSaveDocument(table, "qnat rules save", new Date(), { counters: request.counters }) };
      }
      const lines =
        request.cmd === "apply"
          ? await applyText(request.text, request.file)
          : await applyConfig(() => withRules(config, request.text, request.file));
      return { ok: true, text: lines.map((line) => `${line}\n`).join("") };
    } catch (error) {
      return { ok: false, error: error instanceof Error ? error.message.split("\n")[0]! : String(error) };
    }
  };
  // The other workers (workers: N > 1), each on queue i of every leg, their dataplanes on the
  // main thread's tables; the router is ready once every one forwards (after its JIT warm-up).
  let workerWarmUps: number[] = [];
  if (workerCount > 1) {
    const running = new ForwardingWorkers(
      {
        config,
        vnetHdr: wantOffloads,
        batchSize: BATCH_SIZE,
        slotSize,
        headroom,
        spinMicroseconds,
        warmUp: wantWarmUp,
        tables: sharedTablesOf(dataplane),
      },
      Array.from({ length: workerCount - 1 }, (_, i) => legs.map((leg) => (leg as TunLeg & WorkerQueued).queueFor(i + 1))),
      log,
      (index, code, message) => supervisor!.fail(index, Object.assign(new Error(message), { code })),
    );
    workers = running;
    // Tap ports: every thread's neighbour table learns from every ARP packet (control/ethernet-threads.ts).
    if (ethernet !== undefined) relayArpBetweenThreads(ethernet, running);
    // Every capture runs a tap on each worker too (control/worker-capture.ts).
    captures.useWorkers(running);
    try {
      workerWarmUps = await running.start();
    } catch (error) {
      await running.stop();
      await running.end();
      workers = undefined;
      captures.useWorkers(undefined);
      supervisor!.stop();
      clearInterval(legTicks);
      if (housekeeping !== undefined) clearInterval(housekeeping);
      if (neighbourTicks !== undefined) clearInterval(neighbourTicks);
      await state?.stop();
      closeLegs();
      if (metadata !== undefined) await metadata.close();
      if (metrics !== undefined) await metrics.close();
      await control.close();
      throw startError(error);
    }
  }
  ready = true;

  log(`qnat: router ${config.namespace} running (pid ${process.pid}), control socket ${control.path}`);
  log(`qnat:   offloads: ${describeOffloads(offloads)}${passthrough ? "; PASS-THROUGH mode (no processing: qnat's I/O floor)" : ""}`);
  log(
    warmed !== undefined
      ? `qnat:   JIT warm-up: ${warmed.packets} synthetic packets through a scratch dataplane in ${warmed.ms.toFixed(0)} ms`
      : "qnat:   JIT warm-up: off",
  );
  if (workers !== undefined) {
    const warmUps = workerWarmUps.map((ms) => `${ms.toFixed(0)} ms`).join(", ");
    const others = workers.count === 2 ? "queue 1 on a worker thread" : `queues 1-${workers.count - 1} on ${workers.count - 1} worker threads`;
    log(`qnat:   workers: ${workers.count} (queue 0 on the main thread, ${others}, one connection table; JIT warm-ups ${warmUps})`);
  }
  for (const port of config.ports) {
    log(
      `qnat:   ${port.name} ${port.addresses.map(formatCidr).join(" ")} mtu ${port.mtu}` +
        ` <-> ${port.wire.namespace}/${port.wire.device}`,
    );
  }
  if (metadata !== undefined) log(`qnat:   metadata proxy on 0.0.0.0:${metadata.address.port} in ${config.namespace}`);
  if (metrics !== undefined) log(`qnat:   metrics on http://${metrics.address.host}:${metrics.address.port}/metrics in ${config.namespace}`);

  let stopping: Promise<void> | undefined;
  const stopHooks: Array<() => void | Promise<void>> = state === undefined ? [] : [() => state.stop()];
  // Running captures end with their statistics blocks before the control socket closes.
  stopHooks.push(() => captures.stopAll());
  if (config.capture !== undefined) captures.startFromConfig(config.capture);
  return {
    get config() {
      return config;
    },
    get dataplane() {
      return dataplane;
    },
    apply: (text, file) => applyText(text, file),
    onStop: (hook) => {
      stopHooks.push(hook);
    },
    stop: () => {
      stopping ??= (async () => {
        ready = false;
        if (housekeeping !== undefined) clearInterval(housekeeping);
        if (neighbourTicks !== undefined) clearInterval(neighbourTicks);
        clearInterval(legTicks);
        supervisor!.stop();
        // 1. Stop reading: no wake-up runs the loop again. 2. Flush: nothing to do — every
        // batch is written with write(2) before its wake-up returns, so qnat holds no packet.
        for (const leg of supervisor!.openLegs) leg.device.stopReadable();
        // The workers stop reading too and end their batches (control/workers.ts).
        const unanswered = workers === undefined ? [] : await workers.stop();
        if (unanswered.length > 0) log(`qnat: worker ${unanswered.join(", ")} did not stop reading in time; it is ended once the state is saved`);
        // 3. What must outlive the process (the conntrack state) is saved by the hooks.
        for (const hook of stopHooks) {
          try {
            await hook();
          } catch (error) {
            log(`qnat: while stopping: ${error instanceof Error ? error.message : String(error)}`);
          }
        }
        // 4. The workers end, the legs close (the mirrors vanish with their fds), then the servers and the socket.
        await workers?.end();
        closeLegs();
        if (metadata !== undefined) await metadata.close();
        if (metrics !== undefined) await metrics.close();
        await control.close();
        log(`qnat: router ${config.namespace} stopped`);
      })();
      return stopping;
    },
  };
}

/**
 * TUNSETOFFLOAD on every device, or on none: a leg that refuses them turns them off on the others
 * (flags 0), so all legs agree and a super-packet never meets a leg that cannot take it. The
 * devices keep IFF_VNET_HDR either way (a zero header is a plain packet).
 */
function enableOffloadsOnAll(devices: readonly TunDevice[], log: (line: string) => void): TunOffloads | undefined {
  let common: TunOffloads | undefined;
  try {
    for (const device of devices) {
      const got = device.enableOffloads();
      common ??= got;
      // All legs run the same kernel, so they agree; if they did not, none gets offloads.
      if (got.udpSegmentation !== common.udpSegmentation) throw new Error(`${device.name}: USO differs between legs`);
    }
    return common;
  } catch (error) {
    log(`qnat: offloads refused (${error instanceof Error ? error.message : String(error)}); running without`);
    for (const device of devices) {
      try {
        device.setOffload(0);
      } catch {
        // a device that refuses TUNSETOFFLOAD has none on
      }
    }
    return undefined;
  }
}

function describeOffloads(offloads: TunOffloads | undefined): string {
  if (offloads === undefined) return "off (1500-byte packets, full checksums)";
  return `checksum, TSO4/TSO6${offloads.udpSegmentation ? ", USO4/USO6" : ""} on every leg (GSO super-packets up to 64 KiB)`;
}

/** A failure while building the kernel side, as one line. */
function startError(error: unknown): Error {
  if (error instanceof Error && "exitCode" in error) return error;
  const tunError = error as TunError;
  if (tunError?.code === "EBUSY") {
    return new OperationalError(`${tunError.message}: another process holds this TUN device (is another router running?)`);
  }
  if (tunError?.code === "EPERM" || tunError?.code === "EACCES") {
    return new OperationalError(`${tunError.message}: qnat run needs root (CAP_NET_ADMIN)`);
  }
  if (error instanceof Error) return new OperationalError(error.message.split("\n")[0]!);
  return new OperationalError(String(error));
}
