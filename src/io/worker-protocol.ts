/**
 * What the router's main thread and its worker threads (`workers: N`, control/dataplane-worker.ts,
 * control/workers.ts) tell each other over a worker's MessagePort: plain data only (the structured
 * clone of postMessage), typed here once for both sides.
 *
 * Counters: every worker's dataplane counts its own packets (its own typed arrays, written by
 * its thread alone, never a shared cache line on the packet path); `show`, `top` and the metrics
 * ask each worker for a copy when they are asked (`countersOf`) and add them up
 * (`addDataplaneCounters`), so they show one router. A copy is a few kilobytes per worker.
 */
import type { RouterConfig } from "../config/config.js";
import type { SharedTables } from "../dataplane/from-config.js";
import { NetfilterNat } from "../dataplane/netfilter-nat.js";
import type { Dataplane } from "../dataplane/pipeline.js";
import type { CaptureInterface } from "./capture.js";
import type { CompiledRules } from "../nat/rules/evaluate.js";
import type { NeighbourView } from "../neigh/table.js";
import type { EthernetStage, NeighbourNews } from "./ethernet-leg.js";
import { LoopStats, type LoopSnapshot } from "./loop-stats.js";

/** A leg's queue for worker i: queue i of the device (fds are process-wide). */
export interface WorkerLegSetup {
  readonly fd: number;
  /** The fd of every queue of the device, queue q at q (io/tun-leg.ts queueFds). */
  readonly queues: readonly number[];
  /** The device's name and namespace (for log lines and errors). */
  readonly name: string;
  readonly netns: string;
}

/** What a worker thread starts with (its workerData). */
export interface WorkerSetup {
  /** 1..N-1 (the main thread forwards queue 0 as worker 0). */
  readonly worker: number;
  /** The config as the router runs it (a RouterConfig is plain data: structured clone copies it). */
  readonly config: RouterConfig;
  /** The worker's queue of every leg, `port * 2 + leg` as the Forwarder's legs. */
  readonly legs: readonly WorkerLegSetup[];
  /** The main thread's connection table and NAT state, which the worker's dataplane attaches to. */
  readonly tables: SharedTables;
  /** Every leg opened with IFF_VNET_HDR. */
  readonly vnetHdr: boolean;
  readonly batchSize: number;
  readonly slotSize: number;
  readonly headroom: number;
  readonly spinMicroseconds: number;
  readonly warmUp: boolean;
}

/** The counters one dataplane keeps for itself, as plain data. */
export interface DataplaneCounters {
  /** Dataplane.portCounters and .drops, copied. */
  readonly portCounters: Float64Array;
  readonly drops: Float64Array;
  readonly conntrack: Record<string, number>;
  readonly chains: { lookups: number; nodesWalked: number; longestWalk: number };
  readonly fragments: Record<string, number>;
  readonly fragmentation: Record<string, number>;
  /** The compiled nat rules' counters (`iptables -v`), null without NAT. */
  readonly rules: RuleCounters | null;
  /** The NAT engine's counters (port searches...). */
  readonly nat: Record<string, number>;
  /** A worker thread's packet loop (io/loop-stats.ts); absent for a dataplane alone. */
  readonly loop?: LoopSnapshot;
  /** The thread's Ethernet stage (tap ports): absent without tap ports. */
  readonly ethernet?: EthernetCounters;
}

/** One thread's Ethernet stage and neighbour table (io/ethernet-leg.ts, neigh/table.ts), as plain data. */
export interface EthernetCounters {
  /** EthernetStage.counters, copied (`[port * EthCounter.Count + field]`). */
  readonly ports: Float64Array;
  /** The neighbour table's counters (NeighbourCounters) and its `entries`. */
  readonly neighbours: Record<string, number>;
  /**
   * The thread's neighbour entries (`show neigh`). Not added up: each thread has its own table, and
   * a sum holds the entries of its last part (a worker started again: its new table's).
   */
  readonly entries: readonly NeighbourView[];
}

/** A copy of `stage`'s counters and neighbour entries (control plane: allocates). */
export function ethernetCountersOf(stage: EthernetStage): EthernetCounters {
  return { ports: stage.counters.slice(), neighbours: { entries: stage.table.size, ...stage.table.counters }, entries: stage.table.view() };
}

/** CompiledRules' counters (nat/rules/evaluate.ts), per rule and per chain. */
export interface RuleCounters {
  readonly packets: Float64Array;
  readonly bytes: Float64Array;
  readonly allocationFailures: Float64Array;
  readonly policyPackets: Float64Array;
  readonly policyBytes: Float64Array;
}

/** From the main thread. */
export type ToWorker =
  | { readonly type: "counters"; readonly id: number }
  /** Stop reading, let the batch in progress end, answer `stopped`. */
  | { readonly type: "stop" }
  /** Leg `index` is down (its device gone): stop using its fd and answer `released` (the main thread then closes it). */
  | { readonly type: "leg-down"; readonly index: number }
  /** Leg `index` was re-created: this worker's queue of it. */
  | { readonly type: "leg-up"; readonly index: number; readonly leg: WorkerLegSetup }
  /** A live change (same ports): build the successor dataplane of `config` and swap it in between two batches. */
  | { readonly type: "apply"; readonly id: number; readonly config: RouterConfig }
  /**
   * A live change that adds or removes ports: build the successor dataplane of `config` and, in
   * the same step between two batches, forward over `legs` (this worker's queue of every leg of
   * `config`, `port * 2 + leg`) instead of the legs it had (`ports[p]`: where its port p went, -1:
   * removed); answer `relinked`, after which it uses no fd of the legs it had that `legs` does not
   * name (the main thread then closes them).
   */
  | { readonly type: "relink"; readonly id: number; readonly config: RouterConfig; readonly legs: readonly WorkerLegSetup[]; readonly ports: readonly number[] }
  /** Capture `id` starts: a tap of the same interfaces (io/capture.ts), put on the forwarder between two batches. */
  | { readonly type: "capture-start"; readonly id: number; readonly interfaces: readonly CaptureInterface[]; readonly legCount: number; readonly ringBytes?: number }
  /** Capture `id` ends: its tap comes off, what its ring holds is sent with `last`. */
  | { readonly type: "capture-stop"; readonly id: number }
  /** An ARP frame another thread received on tap port `port`'s wire: learnt here (EthernetStage.learnRelayed). */
  | { readonly type: "arp"; readonly port: number; readonly frame: Uint8Array }
  /** Another thread's neighbour table started resolving a neighbour, or completed one: learnt here (EthernetStage.learnNews). */
  | { readonly type: "neigh"; readonly news: NeighbourNews };

/** From a worker. */
export type FromWorker =
  | { readonly type: "ready"; readonly warmUpMs: number }
  | { readonly type: "log"; readonly line: string }
  | { readonly type: "counters"; readonly id: number; readonly counters: DataplaneCounters }
  /** A read or write of leg `index` failed in this worker (the main thread's supervisor decides). */
  | { readonly type: "leg-failed"; readonly index: number; readonly code: string; readonly message: string }
  | { readonly type: "released"; readonly index: number; readonly fd: number }
  /** The live change `id` is in place (or `error`: nothing changed in this worker). */
  | { readonly type: "applied"; readonly id: number; readonly error?: string }
  /**
   * The ports of change `id` are in place; or `error`: the successor could not be built, and this
   * worker stopped reading every leg (it holds none of their fds any more) and waits to be
   * started again with the new config.
   */
  | { readonly type: "relinked"; readonly id: number; readonly error?: string }
  | { readonly type: "stopped" }
  /**
   * Packets of capture `id` as pcapng Enhanced Packet Blocks one after the other (their
   * timestamps, interface ids and comments in them), transferred; `seen` and `lost` per interface
   * are the worker's totals so far. `last`: the capture ended in this worker.
   */
  /**
   * A capture's packets from a worker; `through` (microseconds, the packets' clock): every packet
   * this worker captured at an earlier time is in this chunk or an earlier one (0: no such claim).
   */
  | { readonly type: "capture-chunk"; readonly id: number; readonly blocks: ArrayBuffer; readonly seen: readonly number[]; readonly lost: readonly number[]; readonly last: boolean; readonly through: number }
  /** An ARP frame this worker received on tap port `port`'s wire and answered: for the other threads' neighbour tables. */
  | { readonly type: "arp"; readonly port: number; readonly frame: Uint8Array }
  /** This worker's neighbour table started resolving a neighbour, or completed one: for the other threads' tables. */
  | { readonly type: "neigh"; readonly news: NeighbourNews };

/** A copy of `dataplane`'s own counters (control plane: allocates). */
export function countersOf(dataplane: Dataplane): DataplaneCounters {
  const chains = dataplane.conntrack.chainStats;
  const nat = dataplane.nat instanceof NetfilterNat ? dataplane.nat : undefined;
  return {
    portCounters: dataplane.portCounters.slice(),
    drops: dataplane.drops.slice(),
    conntrack: { ...dataplane.conntrack.counters },
    chains: { lookups: chains.lookups, nodesWalked: chains.nodesWalked, longestWalk: chains.longestWalk },
    fragments: { ...dataplane.fragments.counters },
    fragmentation: { ...dataplane.fragmentOutput.counters },
    rules: nat === undefined ? null : ruleCountersOf(nat.rules),
    nat: nat === undefined ? {} : { ...nat.engine.counters },
  };
}

function ruleCountersOf(rules: CompiledRules): RuleCounters {
  return {
    packets: rules.packets.slice(),
    bytes: rules.bytes.slice(),
    allocationFailures: rules.allocationFailures.slice(),
    policyPackets: rules.policyPackets.slice(),
    policyBytes: rules.policyBytes.slice(),
  };
}

/**
 * Writes `counters` (every worker's sum) into the rules' model, as CompiledRules.copyCountersToModel
 * writes one dataplane's: what `show rules -v` and `rules save -c` print.
 */
export function copyRuleCountersToModel(compiled: CompiledRules, counters: RuleCounters): void {
  compiled.rules.forEach((rule, r) => {
    rule.packets = counters.packets[r] ?? 0;
    rule.bytes = counters.bytes[r] ?? 0;
  });
  compiled.chains.forEach((chain, c) => {
    chain.packets = counters.policyPackets[c] ?? 0;
    chain.bytes = counters.policyBytes[c] ?? 0;
  });
}

/** `base` plus every one of `others`, one router's counters (the longest walk is the longest of all). */
export function addDataplaneCounters(base: DataplaneCounters, others: readonly DataplaneCounters[]): DataplaneCounters {
  let portCounters: Float64Array = base.portCounters.slice();
  let drops: Float64Array = base.drops.slice();
  const conntrack = { ...base.conntrack };
  const chains = { ...base.chains };
  const fragments = { ...base.fragments };
  const fragmentation = { ...base.fragmentation };
  let rules: RuleCounters | null = base.rules;
  const nat = { ...base.nat };
  let loop: LoopStats | undefined;
  if (base.loop !== undefined) (loop = new LoopStats()).add(base.loop);
  let ethernet = base.ethernet;
  for (const other of others) {
    portCounters = added(portCounters, other.portCounters);
    drops = added(drops, other.drops);
    addFields(conntrack, other.conntrack);
    chains.lookups += other.chains.lookups;
    chains.nodesWalked += other.chains.nodesWalked;
    chains.longestWalk = Math.max(chains.longestWalk, other.chains.longestWalk);
    addFields(fragments, other.fragments);
    addFields(fragmentation, other.fragmentation);
    addFields(nat, other.nat);
    if (other.loop !== undefined) (loop ??= new LoopStats()).add(other.loop);
    if (other.ethernet !== undefined) ethernet = addEthernetCounters(ethernet, other.ethernet);
    if (other.rules !== null) {
      // Copies at first (`added` writes into its first argument when it is long enough).
      const into = rules ?? NO_RULE_COUNTERS;
      rules = {
        packets: added(into.packets.slice(), other.rules.packets),
        bytes: added(into.bytes.slice(), other.rules.bytes),
        allocationFailures: added(into.allocationFailures.slice(), other.rules.allocationFailures),
        policyPackets: added(into.policyPackets.slice(), other.rules.policyPackets),
        policyBytes: added(into.policyBytes.slice(), other.rules.policyBytes),
      };
    }
  }
  return {
    portCounters, drops, conntrack, chains, fragments, fragmentation, rules, nat,
    ...(loop !== undefined ? { loop: loop.snapshot() } : {}),
    ...(ethernet !== undefined ? { ethernet } : {}),
  };
}

/** Two Ethernet stages' counters added (the entries are `from`'s: see EthernetCounters.entries). */
function addEthernetCounters(into: EthernetCounters | undefined, from: EthernetCounters): EthernetCounters {
  if (into === undefined) return from;
  const neighbours = { ...into.neighbours };
  addFields(neighbours, from.neighbours);
  return { ports: added(into.ports.slice(), from.ports), neighbours, entries: from.entries };
}

/**
 * `counters` of a dataplane whose ports were renumbered by a live change: port `p`'s counters
 * (per-port counters and drops) move to port `ports[p]` (-1: the port was removed, its counters
 * go), among `portCount` ports; the other counters stay. What a worker counted before it swapped
 * (its last answer, the runs before it failed) adds up with what its successor counts.
 */
export function renumberPortCounters(counters: DataplaneCounters, ports: readonly number[], portCount: number): DataplaneCounters {
  const perPort = (values: Float64Array): Float64Array => {
    if (values.length === 0 || ports.length === 0 || values.length % ports.length !== 0) return values;
    const stride = values.length / ports.length;
    const out = new Float64Array(stride * portCount);
    ports.forEach((to, from) => {
      if (to >= 0 && to < portCount) out.set(values.subarray(from * stride, (from + 1) * stride), to * stride);
    });
    return out;
  };
  return { ...counters, portCounters: perPort(counters.portCounters), drops: perPort(counters.drops) };
}

const NO_RULE_COUNTERS: RuleCounters = {
  packets: new Float64Array(0),
  bytes: new Float64Array(0),
  allocationFailures: new Float64Array(0),
  policyPackets: new Float64Array(0),
  policyBytes: new Float64Array(0),
};

/** `into` plus `from`, element by element (a longer `from` makes the sum as long). */
function added(into: Float64Array, from: Float64Array): Float64Array {
  const sum = from.length > into.length ? Float64Array.from({ length: from.length }, (_, i) => into[i] ?? 0) : into;
  for (let i = 0; i < from.length; i++) sum[i]! += from[i]!;
  return sum;
}

function addFields(into: Record<string, number>, from: Readonly<Record<string, number>>): void {
  for (const [key, value] of Object.entries(from)) if (typeof value === "number") into[key] = (into[key] ?? 0) + value;
}
