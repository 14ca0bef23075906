/**
 * Builds a dataplane from a router config: ports, connected and configured routes, a conntrack
 * table, a fragment table and the NAT stage compiled from the config's iptables text. Problems
 * are reported as ConfigError (`FILE:LINE: ...`).
 *
 * Every hash key (conntrack, NAT, fragments) and the NAT's `--random` draws come from one Rng.
 * By default that is a CryptoRng, so a router gets fresh unpredictable keys and port choices
 * each time it starts (Linux: get_random_once for its hash keys); tests, `qnat trace` from a
 * config and the benchmarks pass a seeded XorShift32 and get the same results every run.
 */
import type { Clock } from "../core/clock.js";
import { systemClock } from "../core/clock.js";
import { hashKeyFrom } from "../core/hash.js";
import { CryptoRng, type Rng } from "../core/rng.js";
import { ConfigError, effectiveRpFilter, workersOf, type RouterConfig } from "../config/config.js";
import { type ConntrackSharedMemory, ConntrackTable } from "../conntrack/table.js";
import { RouteError, RoutingTable } from "../route/table.js";
import { NatEngine, type NatSharedMemory } from "../nat/binding.js";
import { FragmentTable } from "../nat/fragments.js";
import { compile, type CompiledRules } from "../nat/rules/evaluate.js";
import { parseRules } from "../nat/rules/parse.js";
import { NetfilterNat } from "./netfilter-nat.js";
import { Dataplane } from "./pipeline.js";
import { rpFilterValue } from "./reverse-path.js";

export interface BuildOptions {
  readonly clock?: Clock;
  /**
   * Source of every hash key and of the NAT's random port offsets. Default: a CryptoRng (a
   * running router). Give a seeded XorShift32 for reproducible results (tests, traces, benches).
   */
  readonly rng?: Rng;
  /** Maximum concurrent connections (Linux nf_conntrack_max); default: the config's `conntrack.max`. */
  readonly conntrackCapacity?: number;
  /** Leave NAT out (plain router). */
  readonly withoutNat?: boolean;
  /**
   * A live change (`qnat apply`, control/live-apply.ts): the new dataplane takes over this
   * running one's connection table, NAT engine (its by-source index), fragment table and clock,
   * so every connection keeps its binding (Linux: the bindings live in conntrack, not in the
   * rules) and only ports, addresses, routes and the compiled rules are new.
   */
  readonly successorOf?: Dataplane;
  /**
   * A routing table for this config's ports, addresses and routes instead of one built anew: the
   * running one of a live change, as it is or changed in place at the swap (control/live-apply.ts
   * inPlaceRouting).
   */
  readonly routes?: RoutingTable;
  /**
   * Make the conntrack table and the NAT engine's state sharable (SharedArrayBuffers), for the
   * dataplanes of other worker threads to attach to (`sharedTablesOf`, docs/multi-core.md
   * "Shared tables"). Every user of the tables then takes their lock.
   */
  readonly sharable?: boolean;
  /**
   * A sharable table's free lists, one per queue (conntrack/table.ts `queues`): the config's
   * `workers` unless given (a benchmark that runs one and two workers over one table gives 2).
   */
  readonly queues?: number;
  /**
   * Attach to the tables of another thread's sharable dataplane (`sharedTablesOf` of it, sent
   * with postMessage): one connection table and one NAT binding state for all workers. The
   * config must be the same (capacity, NAT or not); fragments stay this dataplane's own.
   */
  readonly shared?: SharedTables;
}

/**
 * The shared memory of a dataplane's connection table and NAT state (plain SharedArrayBuffers:
 * postMessage-able). `nat` is null for a dataplane without NAT.
 */
export interface SharedTables {
  readonly conntrack: ConntrackSharedMemory;
  readonly nat: NatSharedMemory | null;
}

/** The shared tables of a dataplane built `sharable` (or attached), for other threads to attach to. */
export function sharedTablesOf(dataplane: Dataplane): SharedTables {
  const nat = dataplane.nat instanceof NetfilterNat ? dataplane.nat.engine.sharedMemory() : null;
  return { conntrack: dataplane.conntrack.sharedMemory(), nat };
}

export function buildRoutingTable(config: RouterConfig): RoutingTable {
  const routes = new RoutingTable(config.ports.map((p) => p.name));
  config.ports.forEach((port, index) => {
    for (const cidr of port.addresses) routes.addConnected(index, cidr.addr, cidr.prefixLength);
  });
  for (const route of config.routes) {
    try {
      routes.addRoute(route.value);
    } catch (error) {
      if (error instanceof RouteError) throw new ConfigError(route.file ?? config.file, route.line, `route "${route.value}": ${error.message}`);
      throw error;
    }
  }
  return routes;
}

export function buildDataplane(config: RouterConfig, options: BuildOptions = {}): Dataplane {
  const previous = options.successorOf;
  const clock = previous?.clock ?? options.clock ?? systemClock;
  const rng = options.rng ?? new CryptoRng();
  const routes = options.routes ?? buildRoutingTable(config);
  const rules = compileRules(config);
  let engine: NatEngine | undefined = previous?.nat instanceof NetfilterNat ? previous.nat.engine : undefined;
  const shared = options.shared;
  const sharable = options.sharable === true || shared !== undefined;
  if (shared !== undefined && shared.nat === null && !options.withoutNat) {
    throw new Error("the shared tables have no NAT state: build with withoutNat, as the dataplane that made them");
  }
  const conntrack = previous?.conntrack ?? new ConntrackTable({
    capacity: options.conntrackCapacity ?? config.conntrack.max,
    clock,
    key: hashKeyFrom(rng),
    sharable,
    shared: shared?.conntrack,
    queues: sharable ? (options.queues ?? workersOf(config)) : 1,
    // nf_nat_cleanup_conntrack: a freed connection leaves the NAT by-source index.
    onRemove: (id) => engine?.forget(id),
    tcpBeLiberal: config.conntrack.tcpBeLiberal,
  });
  if (previous === undefined) engine = options.withoutNat ? undefined : new NatEngine(conntrack, rng, { sharable, shared: shared?.nat ?? undefined });
  const nat = engine === undefined ? undefined : new NetfilterNat(conntrack, rules, config.ports.map((p) => p.addresses[0]!.addr), engine);
  return new Dataplane({
    ports: config.ports.map((p) => ({ name: p.name, addresses: p.addresses, mtu: p.mtu })),
    routes,
    conntrack,
    clock,
    nat,
    fragments: previous?.fragments ?? new FragmentTable({ clock, key: hashKeyFrom(rng) }),
    rpFilter: config.ports.map((p) => rpFilterValue(effectiveRpFilter(config, p))),
    metadataPort: config.metadata?.port ?? 0,
    dropInvalid: config.conntrack.dropInvalid,
  });
}

/** Parses and compiles the config's nat rules; the first problem becomes a ConfigError at its config line. */
export function compileRules(config: RouterConfig): CompiledRules {
  const { table, errors } = parseRules(config.nat.text);
  const first = errors[0];
  if (first !== undefined) throw new ConfigError(config.nat.file, config.nat.firstLine + first.line - 1, first.message);
  return compile(table, config.ports.map((p) => p.name));
}
