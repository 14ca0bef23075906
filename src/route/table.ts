/**
 * The router's main routing table with Linux semantics (net/ipv4/fib_frontend.c, fib_semantics.c,
 * fib_trie.c) and iproute2's `ip route` text (ip/iproute.c, iproute2-6.1 as on the lab hosts).
 *
 * Control plane: `addConnected` (what the kernel adds for an interface address), `addRoute` /
 * `deleteRoute` (`ip route add|del` text), `format` / `routes` / `toJSON` (`ip route`, `ip -j route`).
 * Hot path: `lookup(dst)` returns a route id (-1 = no route) and the `route*` accessors read
 * typed arrays indexed by that id; none of them allocates.
 *
 * Limits: at most MAX_ROUTES routes (route ids are LPM values, see lpm.ts: 16.7M, so a full Internet
 * table of about 1M prefixes fits) and at most LPM_MAX_TBL8_GROUPS /24s holding routes longer than
 * /24 (a full table has about 20,000); only the main table,
 * no multipath, no tos, no nexthop objects; iproute2's abbreviated addresses ("10.0.0") are refused.
 */
import { formatIpv4, parseCidr, parseIpv4, prefixMask } from "../core/addr.js";
import { Lpm4, LpmError, LPM_MAX_VALUE } from "./lpm.js";

/** Route types: the kernel's RTN_* numbers (include/uapi/linux/rtnetlink.h). */
export enum RouteType {
  Unicast = 1,
  Blackhole = 6,   // dropped silently (`ip route get`: EINVAL)
  Unreachable = 7, // ICMP host unreachable (EHOSTUNREACH)
  Prohibit = 8,    // ICMP communication administratively prohibited (EACCES)
}

/** Route scopes: RT_SCOPE_* (include/uapi/linux/rtnetlink.h). */
export enum RouteScope {
  Universe = 0,
  Site = 200,
  Link = 253,
  Host = 254,
  Nowhere = 255,
}

/** Route protocols iproute2 names (/etc/iproute2/rt_protos, include/uapi/linux/rtnetlink.h). */
export const RouteProtocol = { Kernel: 2, Boot: 3, Static: 4 } as const;

const PROTOCOL_NAMES = new Map<number, string>([
  [0, "unspec"], [1, "redirect"], [2, "kernel"], [3, "boot"], [4, "static"], [8, "gated"],
  [9, "ra"], [10, "mrt"], [11, "zebra"], [12, "bird"], [13, "dnrouted"], [14, "xorp"],
  [15, "ntk"], [16, "dhcp"], [18, "keepalived"], [42, "babel"], [99, "openr"], [186, "bgp"],
  [187, "isis"], [188, "ospf"], [189, "rip"], [192, "eigrp"],
]);
const PROTOCOL_NUMBERS = new Map([...PROTOCOL_NAMES].map(([number, name]) => [name, number]));

/** iproute2 lib/rt_names.c: scope names ("global" for 0 is never printed by `ip route`). */
const SCOPE_NAMES = new Map<number, string>([
  [0, "global"], [200, "site"], [253, "link"], [254, "host"], [255, "nowhere"],
]);
const SCOPE_NUMBERS = new Map<string, number>([
  ["global", 0], ["universe", 0], ["site", 200], ["link", 253], ["host", 254], ["nowhere", 255],
]);

const TYPE_NAMES = new Map<RouteType, string>([
  [RouteType.Unicast, "unicast"], [RouteType.Blackhole, "blackhole"],
  [RouteType.Unreachable, "unreachable"], [RouteType.Prohibit, "prohibit"],
]);
const TYPE_NUMBERS = new Map([...TYPE_NAMES].map(([type, name]) => [name, type]));

/** Route ids are LPM values. */
export const MAX_ROUTES = LPM_MAX_VALUE + 1;
/** Next hop ids the fast path's route cache can hold in 8 bits (0xff and 0 are taken: 0 = none, ids + 1 stored). */
export const MAX_NEXTHOP_IDS = 254;

/** RoutingTable's per-route flags column. */
const ROUTE_ONLINK = 1;
/** The `via` gateway is used on the wire (nexthop scope link), see routeGateway. */
const ROUTE_GATEWAY_ON_LINK = 2;

/** A refused route or address, with a one-line message worded like iproute2's. */
export class RouteError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RouteError";
  }
}

export interface RouteEntry {
  readonly id: number;
  readonly type: RouteType;
  readonly prefix: number;
  readonly prefixLength: number;
  /** Configured gateway (`via`); 0 = none. */
  readonly gateway: number;
  /** Port index; -1 for blackhole/unreachable/prohibit. */
  readonly port: number;
  readonly protocol: number;
  readonly scope: number;
  /** Configured preferred source (`src`); 0 = none. */
  readonly prefSrc: number;
  readonly metric: number;
  readonly onlink: boolean;
}

/** One route as `ip -j route` prints it. */
export interface RouteJson {
  type?: string;
  dst: string;
  gateway?: string;
  dev?: string;
  protocol?: string;
  scope?: string;
  prefsrc?: string;
  metric?: number;
  flags: string[];
}

export interface PortAddress {
  readonly addr: number;
  readonly prefixLength: number;
  /** Same subnet as an earlier address of the port (Linux IFA_F_SECONDARY): adds no route. */
  readonly secondary: boolean;
}

export interface FormatOptions {
  /** iproute2 up to 6.1 (this project's lab hosts) ends every route line with a space. */
  readonly trailingSpace?: boolean;
}

interface MutableRoute extends RouteEntry {
  /** Whether a `via` gateway is used on the wire (nexthop scope link), see routeGateway. */
  gatewayOnLink: boolean;
}

type ResolvedRoute = Omit<ParsedRoute, "scope" | "metric"> & { scope: number; metric: number };

interface ParsedRoute {
  type: RouteType;
  prefix: number;
  prefixLength: number;
  gateway: number;
  port: number;
  protocol: number;
  scope: number | undefined;
  prefSrc: number;
  metric: number | undefined;
  onlink: boolean;
}

export class RoutingTable {
  private readonly lpm = new Lpm4();
  /** Route ids handed out so far (free ones included, see freeIds); a free id has type 0. */
  private idCount = 0;
  private readonly freeIds: number[] = [];
  private readonly addresses: PortAddress[][];
  private readonly portsByName = new Map<string, number>();

  // Hot-path columns, indexed by route id.
  private types = new Uint8Array(16);
  private ports = new Int32Array(16);
  private gateways = new Uint32Array(16);
  private sources = new Uint32Array(16);
  /** The addressGeneration each `sources` entry was computed in (0: none), see routePrefSrc. */
  private sourceGenerations = new Uint32Array(16);
  /** The route's next hop id (see `routeNexthop`), -1 beyond MAX_NEXTHOP_IDS. */
  private nexthops = new Int16Array(16);
  /** The next route id of the same prefix's chain (see chainOf), -1 at its end. */
  private chainNext = new Int32Array(16);
  // Control-plane columns: the rest of each route as configured (`ip route` text, traces, deletes,
  // gateway checks). Columns rather than an object per route, so a full table's million routes are
  // a few typed arrays, not a million objects for the garbage collector to mark.
  private prefixes = new Uint32Array(16);
  private prefixLengths = new Uint8Array(16);
  /** The configured gateway (`via`), 0 = none; `gateways` holds the on-wire one. */
  private configGateways = new Uint32Array(16);
  private protocols = new Uint8Array(16);
  private scopes = new Uint8Array(16);
  private prefSrcs = new Uint32Array(16);
  private metrics = new Uint32Array(16);
  /** ROUTE_ONLINK | ROUTE_GATEWAY_ON_LINK. */
  private flags = new Uint8Array(16);
  /**
   * Next hops: the distinct (port, on-wire gateway) pairs of the routes ever inserted, numbered
   * from 0 in order of appearance and never renumbered (append-only, so an id always means the
   * same pair). The route cache of the fast path (dataplane/fast-path.ts) keeps an id in 8 bits.
   */
  private readonly nexthopIds = new Map<string, number>();
  /**
   * Next hop id -> its port, and its on-wire gateway as int32 bits (0: a connected route); the
   * same arrays for the table's life. Read directly by the fast path's route cache hit, so that
   * it is a load wherever V8 compiles it: an accessor method there is inlined only when the branch
   * was frequent when the function was optimised, which a router that starts with many new flows
   * (every route cache empty) is not (docs/performance.md, round 9).
   */
  readonly nexthopPorts = new Int32Array(MAX_NEXTHOP_IDS);
  readonly nexthopGateways = new Int32Array(MAX_NEXTHOP_IDS);

  /**
   * Bumped by every change of the lookup result for any address (a route added or deleted):
   * whoever caches lookups (the conntrack route cache of dataplane/pipeline.ts) compares it.
   */
  private generation = 1;
  /** Bumped by every change of an address (Linux's dev_addr_genid): see routePrefSrc. */
  private addressGeneration = 1;
  /** While `edit` runs: how to undo each change made so far, in order. */
  private undoLog: (() => void)[] | undefined;

  constructor(readonly portNames: readonly string[]) {
    portNames.forEach((name, index) => {
      if (this.portsByName.has(name)) throw new RouteError(`duplicate port name "${name}"`);
      this.portsByName.set(name, index);
    });
    this.addresses = portNames.map(() => []);
  }

  /** Port index for a name, or -1. */
  portIndex(name: string): number {
    return this.portsByName.get(name) ?? -1;
  }

  /** The addresses of a port, in the kernel's order (primaries first, then secondaries). */
  portAddresses(port: number): readonly PortAddress[] {
    return [...this.addresses[port]!].sort((a, b) => Number(a.secondary) - Number(b.secondary));
  }

  // ---------------------------------------------------------------- hot path

  /** Changes whenever a lookup may give another answer than before (see `generation`). */
  get version(): number {
    return this.generation;
  }

  /**
   * This table, built to replace `previous` (a live change), numbers its versions after it: a
   * route cached in a connection entry under one table's version is never taken for the other's.
   * With worker threads the entries are shared and each thread checks its own table's version
   * (docs/multi-core.md), so every thread builds its successor by the same steps and calls this:
   * their versions stay equal, and differ from the tables they replace.
   */
  continueVersionsFrom(previous: RoutingTable): void {
    this.generation += previous.generation;
  }

  /** The route for dst (longest prefix, then lowest metric), or -1. No allocation. */
  lookup(dst: number): number {
    return this.lpm.lookup(dst);
  }

  /** Egress port index; -1 for blackhole/unreachable/prohibit. */
  routePort(id: number): number {
    return this.ports[id]!;
  }

  /** Next hop to resolve on the wire; 0 = directly connected (the next hop is dst itself). */
  routeGateway(id: number): number {
    return this.gateways[id]!;
  }

  /**
   * The route's next hop id: its (port, on-wire gateway) pair as a small number that the fast
   * path's route cache holds, -1 when there are more than MAX_NEXTHOP_IDS distinct pairs.
   */
  routeNexthop(id: number): number {
    return this.nexthops[id]!;
  }

  routeType(id: number): RouteType {
    return this.types[id]!;
  }

  /**
   * The source address Linux uses for packets the router itself sends on this route
   * (FIB_RES_PREFSRC, include/net/ip_fib.h): the configured `src`, otherwise the port's first
   * primary address in the gateway's subnet, otherwise its first primary address
   * (inet_select_addr, net/ipv4/devinet.c); 0 if none. As int32 bits (`>>> 0` gives the uint32):
   * the ICMP errors the router sends read it per packet, and a uint32 of 128.0.0.0 or more
   * returned from a call is a heap number in V8. Stored when the route is added and valid until
   * an address changes, as Linux's (fib_info_update_nhc_saddr, net/ipv4/fib_semantics.c: the
   * nexthop's nh_saddr_genid against dev_addr_genid); after that computed when asked for (a walk
   * of the port's few addresses), so an address added to a port that carries a full table costs
   * nothing per route at the change. Reading it changes nothing (a trace leaves the table as it
   * was); no allocation.
   */
  routePrefSrc(id: number): number {
    return (this.sourceGenerations[id] === this.addressGeneration ? this.sources[id]! : this.sourceOf(id)) | 0;
  }

  /** The port that holds dst as one of its addresses, or -1 (the router's own addresses). */
  localAddressPort(dst: number): number {
    for (let port = 0; port < this.addresses.length; port++) {
      const list = this.addresses[port]!;
      for (let i = 0; i < list.length; i++) if (list[i]!.addr === dst) return port;
    }
    return -1;
  }

  // ---------------------------------------------------------------- control plane

  /**
   * An interface address, as `ip addr add ADDR/LEN dev PORT` makes the kernel do
   * (fib_add_ifaddr, net/ipv4/fib_frontend.c): a primary address that is not a /32 adds
   * `PREFIX dev PORT proto kernel scope link src ADDR`; a second address in the same subnet
   * on the same port is secondary and adds nothing.
   */
  addConnected(port: number, addr: number, prefixLength: number): void {
    if (!Number.isInteger(port) || port < 0 || port >= this.portNames.length) {
      throw new RouteError(`Cannot find device with index ${port}`);
    }
    if (!Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > 32) {
      throw new RouteError(`Error: invalid prefix length ${prefixLength}.`);
    }
    addr >>>= 0;
    const list = this.addresses[port]!;
    if (list.some((a) => a.addr === addr && a.prefixLength === prefixLength)) {
      throw new RouteError("RTNETLINK answers: File exists");
    }
    const mask = prefixMask(prefixLength);
    const prefix = (addr & mask) >>> 0;
    const secondary = list.some(
      (a) => !a.secondary && a.prefixLength === prefixLength && ((a.addr & mask) >>> 0) === prefix,
    );
    const added: PortAddress = { addr, prefixLength, secondary };
    list.push(added);
    this.undoLog?.push(() => void list.splice(list.indexOf(added), 1));
    // fib_add_ifaddr: no prefix route for a /32 (prefix == addr) nor for 0.0.0.0/8.
    if (!secondary && prefixLength < 32 && prefix >>> 24 !== 0) {
      this.insertRoute(
        {
          type: RouteType.Unicast, prefix, prefixLength, gateway: 0, port,
          protocol: RouteProtocol.Kernel, scope: RouteScope.Link, prefSrc: addr, metric: 0, onlink: false,
        },
        false,
        true,
      );
    }
    this.refreshSources();
    this.generation++; // localAddressPort and the routes' sources may have changed
  }

  /**
   * `ip addr del ADDR/LEN dev PORT` for an address that is no primary of a secondary
   * (fib_del_ifaddr, net/ipv4/fib_frontend.c): its connected route goes with it. Removing a
   * primary that has secondaries (Linux promotes one, net.ipv4.conf.*.promote_secondaries) is
   * refused: build the table anew for that.
   */
  removeAddress(port: number, addr: number, prefixLength: number): void {
    addr >>>= 0;
    const list = this.addresses[port];
    const at = list === undefined ? -1 : list.findIndex((a) => a.addr === addr && a.prefixLength === prefixLength);
    if (at < 0) throw new RouteError("RTNETLINK answers: Cannot assign requested address");
    const removed = list![at]!;
    const mask = prefixMask(prefixLength);
    const prefix = (addr & mask) >>> 0;
    if (!removed.secondary && list!.some((a) => a.secondary && a.prefixLength === prefixLength && ((a.addr & mask) >>> 0) === prefix)) {
      throw new RouteError("Error: removing a primary address with secondaries is not supported in place.");
    }
    list!.splice(at, 1);
    this.undoLog?.push(() => void list!.splice(at, 0, removed));
    const key = chainKey(prefix, prefixLength);
    const connected = removed.secondary
      ? undefined
      : this.chainOf(key).find(
          (id) => this.protocols[id] === RouteProtocol.Kernel && this.ports[id] === port && this.prefSrcs[id] === addr && this.configGateways[id] === 0,
        );
    if (connected !== undefined) this.removeFromChain(key, connected);
    this.refreshSources();
    this.generation++;
  }

  /**
   * `ip route add` text (without the `ip route add`): returns the new route's id.
   * Throws RouteError with iproute2's or the kernel's message when Linux would refuse it.
   */
  addRoute(text: string): number {
    const parsed = this.parseRouteText(text);
    if (parsed.prefixLength !== 32 && ((parsed.prefix & ~prefixMask(parsed.prefixLength)) >>> 0) !== 0) {
      throw new RouteError("Error: Invalid prefix for given prefix length."); // fib_valid_key_len
    }
    // iproute2 (ip/iproute.c): unicast without a gateway defaults to scope link, else universe.
    const scope =
      parsed.scope ?? (parsed.type === RouteType.Unicast && parsed.gateway === 0 ? RouteScope.Link : RouteScope.Universe);
    const route: ResolvedRoute = { ...parsed, scope, metric: parsed.metric ?? 0 };
    let gatewayOnLink = false;
    if (route.type !== RouteType.Unicast) {
      // fib_create_info: error routes carry no nexthop.
      if (route.gateway !== 0 || route.port >= 0) {
        throw new RouteError("Error: Gateway, device and multipath can not be specified for this route type.");
      }
    } else {
      if (scope > RouteScope.Host) throw new RouteError("Error: Invalid scope.");
      if (scope === RouteScope.Host) {
        if (route.gateway !== 0) throw new RouteError("Error: Route with host scope can not have a gateway.");
        if (route.port < 0) throw new RouteError("RTNETLINK answers: No such device");
      } else if (route.gateway !== 0) {
        const resolved = this.checkGateway(route.gateway, route.port, scope, route.onlink);
        route.port = resolved.port;
        gatewayOnLink = resolved.onLink;
      } else {
        // fib_check_nh_v4 without a gateway.
        if (route.onlink) {
          throw new RouteError("Error: Invalid flags for nexthop - PERVASIVE and ONLINK can not be set.");
        }
        if (route.port < 0) throw new RouteError("RTNETLINK answers: No such device");
      }
    }
    if (route.prefSrc !== 0 && this.localAddressPort(route.prefSrc) < 0) {
      throw new RouteError("Error: Invalid prefsrc address."); // fib_valid_prefsrc
    }
    const id = this.insertRoute(route, true, gatewayOnLink);
    this.sources[id] = this.sourceOf(id);
    this.sourceGenerations[id] = this.addressGeneration;
    return id;
  }

  /**
   * `ip route del` text: removes the first route of the prefix that matches every attribute given
   * (fib_table_delete, net/ipv4/fib_trie.c); the covering shorter route takes over its addresses.
   */
  deleteRoute(text: string): void {
    this.deleteMatching(text, false);
  }

  /**
   * Removes the route `addRoute(text)` made (a config's route line that a live change drops):
   * unlike `ip route del`, a metric not given means metric 0 and a protocol not given means
   * boot, so of routes that share a prefix exactly that one goes.
   */
  deleteAdded(text: string): void {
    this.deleteMatching(text, true);
  }

  private deleteMatching(text: string, asAdded: boolean): void {
    const parsed = this.parseRouteText(text);
    if (asAdded) parsed.metric ??= 0;
    const chain = this.chainOf(chainKey(parsed.prefix, parsed.prefixLength));
    const typeGiven = /\b(blackhole|unreachable|prohibit|unicast)\b/.test(text);
    const id = chain.find((candidate) => {
      const r = this.entryOf(candidate)!;
      return (
        (!typeGiven || r.type === parsed.type) &&
        (parsed.metric === undefined || r.metric === parsed.metric) &&
        (parsed.scope === undefined || r.scope === parsed.scope) &&
        (parsed.gateway === 0 || r.gateway === parsed.gateway) &&
        (parsed.port < 0 || r.port === parsed.port) &&
        (parsed.prefSrc === 0 || r.prefSrc === parsed.prefSrc) &&
        ((!asAdded && !/\bproto(col)?\b/.test(text)) || r.protocol === parsed.protocol)
      );
    });
    if (id === undefined) throw new RouteError("RTNETLINK answers: No such process");
    this.removeFromChain(chainKey(parsed.prefix, parsed.prefixLength), id);
  }

  /** Removes route id from its prefix's chain; the next of the chain, or the covering prefix, takes over. */
  private removeFromChain(key: number, id: number): void {
    const chain = this.chainOf(key);
    const at = chain.indexOf(id);
    const entry = this.entryOf(id)!;
    const gateway = this.gateways[id]!;
    this.undoLog?.push(() => this.restoreRoute(key, at, entry, gateway));
    this.setChain(key, chain.filter((candidate) => candidate !== id));
    this.generation++;
    this.types[id] = 0;
    this.ports[id] = -1;
    this.gateways[id] = 0;
    this.sources[id] = 0;
    this.sourceGenerations[id] = 0;
    this.freeIds.push(id);
  }

  /** Undoes removeFromChain: the route back at its place in its chain, with its id. */
  private restoreRoute(key: number, at: number, entry: MutableRoute, gateway: number): void {
    const id = entry.id;
    this.freeIds.splice(this.freeIds.lastIndexOf(id), 1);
    this.writeEntry(entry);
    this.gateways[id] = gateway;
    const chain = this.chainOf(key);
    chain.splice(at, 0, id);
    this.setChain(key, chain);
    this.generation++;
  }

  /**
   * Changes the table in place as one unit (a live change, control/live-apply.ts): if `change`
   * throws, everything it did is undone and the error rethrown; with `dryRun` everything is undone
   * in any case (whether the changes apply, checked without the packet loop seeing them).
   * Lookups between the changes see each step; callers run this between two batches.
   */
  edit(change: () => void, options: { readonly dryRun?: boolean } = {}): void {
    if (this.undoLog !== undefined) throw new Error("RoutingTable.edit does not nest");
    const undo: (() => void)[] = [];
    this.undoLog = undo;
    let failed = true;
    try {
      change();
      failed = false;
    } finally {
      this.undoLog = undefined;
      if (failed || options.dryRun === true) {
        for (let i = undo.length - 1; i >= 0; i--) undo[i]!();
        this.refreshSources();
        this.generation++;
      }
    }
  }

  /**
   * For a table being built in pieces (table-build.ts): the LPM leaves repaints of more than a
   * /8's worth of tbl24 (a default route's is 16M entries) to `paintPending`, so no single route
   * costs more than a fraction of a piece. Routes added meanwhile stay exact (addRoute finishes
   * the painting before it resolves a gateway); lookups are exact once paintPending returns true.
   */
  deferLargeFills(): void {
    this.lpm.deferLargeFills();
  }

  /**
   * Makes room for `routes` more routes, `perLength[L]` of them with prefixes of length L (a hint,
   * table-build.ts): no column copy nor prefix-store rehash of a full table's size happens later
   * in one step.
   */
  reserve(routes: number, perLength: ArrayLike<number>): void {
    this.lpm.reservePrefixes(perLength);
    let capacity = this.types.length;
    while (capacity < this.idCount + routes && capacity < MAX_ROUTES) capacity = Math.min(MAX_ROUTES, capacity * 2);
    if (capacity !== this.types.length) this.growColumns(capacity);
  }

  /** Paints up to `maxEntries` tbl24 entries of the deferred repaints; true when none is left. */
  paintPending(maxEntries: number): boolean {
    return this.lpm.paintPending(maxEntries);
  }

  /** Ends deferLargeFills: what is pending is painted now, later repaints at once. */
  stopDeferringFills(): void {
    this.lpm.stopDeferringFills();
  }

  /** The route with this id (control plane), or undefined. */
  route(id: number): RouteEntry | undefined {
    const r = this.entryOf(id);
    return r === undefined ? undefined : publicEntry(r);
  }

  /** All routes in the kernel's dump order: by prefix value, longer first, then metric. */
  routes(): RouteEntry[] {
    const prefixes = this.lpm.prefixes().sort((a, b) => a.prefix !== b.prefix ? a.prefix - b.prefix : b.prefixLength - a.prefixLength);
    const out: RouteEntry[] = [];
    for (const p of prefixes) {
      for (let id = p.value; id >= 0; id = this.chainNext[id]!) out.push(publicEntry(this.entryOf(id)!));
    }
    return out;
  }

  /** The table as `ip route` prints it (iproute2-6.1 byte for byte by default). */
  format(options: FormatOptions = {}): string {
    const trailing = options.trailingSpace ?? true ? " " : "";
    return this.routes()
      .map((r) => this.formatWords(r).join(" ") + trailing + "\n")
      .join("");
  }

  /** One route as `ip route` prints it, without the trailing space (traces). */
  describeRoute(id: number): string {
    const r = this.entryOf(id);
    return r === undefined ? `route ${id} (deleted)` : this.formatWords(publicEntry(r)).join(" ");
  }

  /** The table as `ip -j route` prints it (parsed; JSON.stringify gives iproute2's bytes). */
  toJSON(): RouteJson[] {
    return this.routes().map((r) => this.routeJson(r));
  }

  /** The routes of one prefix in the kernel's alias order (a listing in pieces, route-listing.ts). */
  routesOf(prefix: number, prefixLength: number): RouteEntry[] {
    const out: RouteEntry[] = [];
    for (let id = this.lpm.get(prefix, prefixLength); id >= 0; id = this.chainNext[id]!) out.push(publicEntry(this.entryOf(id)!));
    return out;
  }

  /** The store of prefixes the routes are chained from (route-listing.ts walks it in pieces). */
  get prefixStore(): Pick<Lpm4, "prefixSlotCount" | "prefixesInSlots"> {
    return this.lpm;
  }

  /** One route as `ip route` prints it, without the trailing space. */
  formatRoute(r: RouteEntry): string {
    return this.formatWords(r).join(" ");
  }

  /** One route as `ip -j route` prints it. */
  routeJson(r: RouteEntry): RouteJson {
    const out = {} as RouteJson; // keys in iproute2's order
    if (r.type !== RouteType.Unicast) out.type = TYPE_NAMES.get(r.type)!;
    out.dst = formatDestination(r);
    if (r.gateway !== 0) out.gateway = formatIpv4(r.gateway);
    if (r.port >= 0) out.dev = this.portNames[r.port]!;
    if (r.protocol !== RouteProtocol.Boot) out.protocol = protocolName(r.protocol);
    if (r.scope !== RouteScope.Universe) out.scope = scopeName(r.scope);
    if (r.prefSrc !== 0) out.prefsrc = formatIpv4(r.prefSrc);
    if (r.metric !== 0) out.metric = r.metric;
    out.flags = r.onlink ? ["onlink"] : [];
    return out;
  }

  // ---------------------------------------------------------------- internals

  private formatWords(r: RouteEntry): string[] {
    const words: string[] = [];
    if (r.type !== RouteType.Unicast) words.push(TYPE_NAMES.get(r.type)!);
    words.push(formatDestination(r));
    if (r.gateway !== 0) words.push("via", formatIpv4(r.gateway));
    if (r.port >= 0) words.push("dev", this.portNames[r.port]!);
    if (r.protocol !== RouteProtocol.Boot) words.push("proto", protocolName(r.protocol));
    if (r.scope !== RouteScope.Universe) words.push("scope", scopeName(r.scope));
    if (r.prefSrc !== 0) words.push("src", formatIpv4(r.prefSrc));
    if (r.metric !== 0) words.push("metric", String(r.metric));
    if (r.onlink) words.push("onlink");
    return words;
  }

  /**
   * fib_check_nh_v4_gw (net/ipv4/fib_semantics.c): an `onlink` gateway needs a device and must
   * be a unicast address; otherwise the gateway must be reachable through a route of scope link
   * or narrower (a connected route, or one of the router's own addresses in the local table),
   * on the given device if one was given. Returns the nexthop's port and whether the gateway
   * is used on the wire (nexthop scope link) rather than being one of the router's addresses.
   */
  private checkGateway(gateway: number, port: number, scope: number, onlink: boolean): { port: number; onLink: boolean } {
    if (onlink) {
      if (scope >= RouteScope.Link) throw new RouteError("Error: Nexthop has invalid scope.");
      if (port < 0) throw new RouteError("Error: Nexthop device required for onlink.");
      // inet_addr_type_dev_table must say RTN_UNICAST: not ours, not 0/8, broadcast or multicast.
      if (this.localAddressPort(gateway) >= 0 || this.isBroadcastAddress(gateway) || gateway >>> 28 === 0xe) {
        throw new RouteError("Error: Nexthop has invalid gateway.");
      }
      return { port, onLink: true };
    }
    const wantedScope = Math.max(scope + 1, RouteScope.Link);
    // The local table first (fib_lookup goes through the local rule before main).
    const localPort = this.localAddressPort(gateway);
    if (localPort >= 0 && (port < 0 || port === localPort)) {
      return { port: localPort, onLink: false }; // RTN_LOCAL: nexthop scope host
    }
    if (wantedScope <= RouteScope.Link && this.broadcastPort(gateway, port) >= 0) {
      throw new RouteError("Error: Nexthop has invalid gateway."); // RTN_BROADCAST
    }
    // The main table (fib_table_lookup): the longest prefix holding a route whose scope is wide
    // enough (and on the device, if given); an error route found that way fails the lookup.
    // Prefix lengths from /32 down, one chain lookup each (a full table holds a million chains).
    // The LPM's answer is the head of the longest matching prefix's chain: when it qualifies, it is
    // what the walk below finds first (one lookup instead of 33 for each route of a full table).
    this.lpm.paintPending(Infinity); // a table built in pieces (deferLargeFills): exact lookups
    const qualifies = (id: number): boolean => this.scopes[id]! >= wantedScope && (port < 0 || this.ports[id] === port);
    const head = this.lpm.lookup(gateway);
    let best = head >= 0 && qualifies(head) ? head : -1;
    for (let length = 32; length >= 0 && best < 0; length--) {
      const chain = this.chainOf(chainKey((gateway & prefixMask(length)) >>> 0, length));
      best = chain.find(qualifies) ?? -1;
    }
    if (best < 0 || this.types[best] !== RouteType.Unicast || this.ports[best]! < 0) {
      throw new RouteError("Error: Nexthop has invalid gateway.");
    }
    return { port: this.ports[best]!, onLink: this.scopes[best] === RouteScope.Link };
  }

  private isBroadcastAddress(addr: number): boolean {
    return addr === 0xffffffff || addr >>> 24 === 0 || this.broadcastPort(addr, -1) >= 0;
  }

  /** The port whose primary address's subnet broadcast is addr (fib_add_ifaddr adds it for < /31). */
  private broadcastPort(addr: number, onlyPort: number): number {
    for (let port = 0; port < this.addresses.length; port++) {
      if (onlyPort >= 0 && port !== onlyPort) continue;
      for (const a of this.addresses[port]!) {
        if (a.secondary || a.prefixLength >= 31) continue;
        if (((a.addr | ~prefixMask(a.prefixLength)) >>> 0) === addr) return port;
      }
    }
    return -1;
  }

  private insertRoute(
    route: ResolvedRoute,
    exclusive: boolean,
    gatewayOnLink: boolean,
  ): number {
    const key = chainKey(route.prefix, route.prefixLength);
    const chain = this.chainOf(key);
    // fib_table_insert: same prefix, tos and priority exists -> EEXIST for `ip route add`
    // (NLM_F_EXCL); the kernel's own connected routes are appended (NLM_F_APPEND).
    if (exclusive && chain.some((id) => this.metrics[id] === route.metric)) {
      throw new RouteError("RTNETLINK answers: File exists");
    }
    const id = this.allocateId();
    if (chain.length === 0) {
      // A new prefix longer than /24 may need a tbl8 group, the one thing the LPM can run out of.
      try {
        this.lpm.insert(route.prefix, route.prefixLength, id);
      } catch (error) {
        this.freeIds.push(id);
        if (error instanceof LpmError) throw new RouteError(`Error: the routing table is full: ${error.message}.`);
        throw error;
      }
    }
    this.writeEntry({
      id, type: route.type, prefix: route.prefix, prefixLength: route.prefixLength,
      gateway: route.gateway, port: route.port, protocol: route.protocol, scope: route.scope,
      prefSrc: route.prefSrc, metric: route.metric, onlink: route.onlink, gatewayOnLink,
    });
    this.gateways[id] = route.gateway !== 0 && gatewayOnLink ? route.gateway : 0;
    this.nexthops[id] = this.nexthopIdOf(route.port, this.gateways[id]!);
    let at = chain.length;
    while (at > 0 && this.metrics[chain[at - 1]!]! > route.metric) at--;
    chain.splice(at, 0, id);
    this.setChain(key, chain);
    this.generation++;
    this.undoLog?.push(() => this.removeFromChain(key, id));
    return id;
  }

  /**
   * The route ids of a prefix in the kernel's alias order (metric, then insertion): the LPM holds
   * the first (the one lookups find), `chainNext` links the others. No per-prefix object, so a
   * full table's million prefixes cost the LPM's prefix store and one Int32 per route.
   */
  private chainOf(key: number): number[] {
    const [prefix, prefixLength] = splitChainKey(key);
    const ids: number[] = [];
    for (let id = this.lpm.get(prefix, prefixLength); id >= 0; id = this.chainNext[id]!) ids.push(id);
    return ids;
  }

  /** Makes `ids` the chain of the prefix (empty: the prefix leaves the LPM). */
  private setChain(key: number, ids: readonly number[]): void {
    const [prefix, prefixLength] = splitChainKey(key);
    for (let i = 0; i < ids.length; i++) this.chainNext[ids[i]!] = i + 1 < ids.length ? ids[i + 1]! : -1;
    if (ids.length === 0) this.lpm.delete(prefix, prefixLength);
    else if (this.lpm.get(prefix, prefixLength) !== ids[0]) this.lpm.insert(prefix, prefixLength, ids[0]!);
  }

  /** The id of the (port, gateway) pair, made on first sight; -1 when the ids are used up. */
  private nexthopIdOf(port: number, gateway: number): number {
    const key = `${port}/${gateway}`;
    let id = this.nexthopIds.get(key);
    if (id === undefined) {
      if (this.nexthopIds.size >= MAX_NEXTHOP_IDS) return -1;
      id = this.nexthopIds.size;
      this.nexthopIds.set(key, id);
      this.nexthopPorts[id] = port;
      this.nexthopGateways[id] = gateway | 0;
    }
    return id;
  }

  private allocateId(): number {
    const free = this.freeIds.pop();
    if (free !== undefined) return free;
    const id = this.idCount;
    if (id >= MAX_ROUTES) throw new RouteError(`Error: the routing table is full (${MAX_ROUTES} routes).`);
    if (id >= this.types.length) this.growColumns(Math.min(MAX_ROUTES, this.types.length * 2));
    this.idCount++;
    return id;
  }

  private growColumns(capacity: number): void {
    this.types = grow(this.types, new Uint8Array(capacity));
    this.ports = grow(this.ports, new Int32Array(capacity));
    this.gateways = grow(this.gateways, new Uint32Array(capacity));
    this.sources = grow(this.sources, new Uint32Array(capacity));
    this.sourceGenerations = grow(this.sourceGenerations, new Uint32Array(capacity));
    this.nexthops = grow(this.nexthops, new Int16Array(capacity));
    this.chainNext = grow(this.chainNext, new Int32Array(capacity));
    this.prefixes = grow(this.prefixes, new Uint32Array(capacity));
    this.prefixLengths = grow(this.prefixLengths, new Uint8Array(capacity));
    this.configGateways = grow(this.configGateways, new Uint32Array(capacity));
    this.protocols = grow(this.protocols, new Uint8Array(capacity));
    this.scopes = grow(this.scopes, new Uint8Array(capacity));
    this.prefSrcs = grow(this.prefSrcs, new Uint32Array(capacity));
    this.metrics = grow(this.metrics, new Uint32Array(capacity));
    this.flags = grow(this.flags, new Uint8Array(capacity));
  }

  /** The route with this id, from the columns (control plane), or undefined for a free id. */
  private entryOf(id: number): MutableRoute | undefined {
    if (!(id >= 0 && id < this.idCount) || this.types[id] === 0) return undefined;
    const flags = this.flags[id]!;
    return {
      id, type: this.types[id]!, prefix: this.prefixes[id]!, prefixLength: this.prefixLengths[id]!,
      gateway: this.configGateways[id]!, port: this.ports[id]!, protocol: this.protocols[id]!, scope: this.scopes[id]!,
      prefSrc: this.prefSrcs[id]!, metric: this.metrics[id]!, onlink: (flags & ROUTE_ONLINK) !== 0,
      gatewayOnLink: (flags & ROUTE_GATEWAY_ON_LINK) !== 0,
    };
  }

  /** Writes a route's columns (all but the on-wire gateway and the derived ones). */
  private writeEntry(r: MutableRoute): void {
    const id = r.id;
    this.types[id] = r.type;
    this.ports[id] = r.port;
    this.prefixes[id] = r.prefix;
    this.prefixLengths[id] = r.prefixLength;
    this.configGateways[id] = r.gateway;
    this.protocols[id] = r.protocol;
    this.scopes[id] = r.scope;
    this.prefSrcs[id] = r.prefSrc;
    this.metrics[id] = r.metric;
    this.flags[id] = (r.onlink ? ROUTE_ONLINK : 0) | (r.gatewayOnLink ? ROUTE_GATEWAY_ON_LINK : 0);
  }

  /** An address changed: every stored FIB_RES_PREFSRC is stale, routePrefSrc computes it (dev_addr_genid). */
  private refreshSources(): void {
    if (this.addressGeneration === 0xffffffff) {
      this.sourceGenerations.fill(0);
      this.addressGeneration = 1;
    } else {
      this.addressGeneration++;
    }
  }

  private sourceOf(id: number): number {
    const prefSrc = this.prefSrcs[id]!;
    const port = this.ports[id]!;
    return prefSrc !== 0 ? prefSrc : port < 0 ? 0 : this.selectAddress(port, this.configGateways[id]!);
  }

  /** inet_select_addr (net/ipv4/devinet.c) for addresses of scope global. */
  private selectAddress(port: number, destination: number): number {
    // Indexed loops: routePrefSrc runs this for ICMP errors the router sends (no allocation).
    let first = 0;
    const own = this.addresses[port]!;
    for (let i = 0; i < own.length; i++) {
      const a = own[i]!;
      if (a.secondary) continue;
      const mask = prefixMask(a.prefixLength);
      if (destination === 0 || ((destination & mask) >>> 0) === ((a.addr & mask) >>> 0)) return a.addr;
      if (first === 0) first = a.addr;
    }
    if (first !== 0) return first;
    // No address on the device: the first primary address of any other device.
    for (let p = 0; p < this.addresses.length; p++) {
      const list = this.addresses[p]!;
      for (let i = 0; i < list.length; i++) if (!list[i]!.secondary) return list[i]!.addr;
    }
    return 0;
  }

  /** Parses `ip route add|del` arguments the way iproute2's iproute_modify does. */
  private parseRouteText(text: string): ParsedRoute {
    const words = text.trim().split(/\s+/).filter((w) => w.length > 0);
    let type = RouteType.Unicast;
    let destination: { prefix: number; prefixLength: number } | undefined;
    let gateway: number | undefined;
    let deviceName: string | undefined;
    let protocol: number = RouteProtocol.Boot;
    let scope: number | undefined;
    let prefSrc = 0;
    let metric: number | undefined;
    let onlink = false;
    const next = (i: number): string => {
      const word = words[i + 1];
      if (word === undefined) throw new RouteError('Command line is not complete. Try option "help"');
      return word;
    };
    const address = (word: string): number => {
      const addr = parseIpv4(word);
      if (addr < 0) throw new RouteError(`Error: inet address is expected rather than "${word}".`);
      return addr;
    };
    for (let i = 0; i < words.length; i++) {
      const word = words[i]!;
      switch (word) {
        case "via": {
          const value = next(i++);
          if (gateway !== undefined) {
            throw new RouteError('Error: argument "via" is wrong: use nexthop syntax to specify multiple via');
          }
          gateway = address(value);
          break;
        }
        case "dev":
        case "oif":
          deviceName = next(i++);
          break;
        case "proto":
        case "protocol": {
          const value = next(i++);
          const number = PROTOCOL_NUMBERS.get(value) ?? parseUint(value, 255);
          if (number === undefined) throw new RouteError(`Error: argument "${value}" is wrong: "protocol" value is invalid`);
          protocol = number;
          break;
        }
        case "scope": {
          const value = next(i++);
          const number = SCOPE_NUMBERS.get(value) ?? parseUint(value, 255);
          if (number === undefined) throw new RouteError(`Error: argument "${value}" is wrong: invalid "scope" value`);
          scope = number;
          break;
        }
        case "src":
          prefSrc = address(next(i++));
          break;
        case "metric":
        case "priority":
        case "preference": {
          const value = next(i++);
          const number = parseUint(value, 0xffffffff);
          if (number === undefined) throw new RouteError(`Error: argument "${value}" is wrong: "metric" value is invalid`);
          metric = number;
          break;
        }
        case "onlink":
          onlink = true;
          break;
        case "table":
        case "tos":
        case "dsfield":
        case "nexthop":
        case "nhid":
        case "mtu":
        case "encap":
          throw new RouteError(`Error: "${word}" is not supported by qnat's routing table.`);
        default: {
          let prefixWord = word;
          if (word === "to") {
            prefixWord = next(i++);
          }
          const typeNumber = TYPE_NUMBERS.get(prefixWord);
          if (typeNumber !== undefined) {
            type = typeNumber;
            prefixWord = next(i++);
          }
          if (destination !== undefined) {
            throw new RouteError(`Error: either "to" is duplicate, or "${prefixWord}" is a garbage.`);
          }
          destination = parseDestination(prefixWord);
        }
      }
    }
    let port = -1;
    if (deviceName !== undefined) {
      port = this.portIndex(deviceName);
      if (port < 0) throw new RouteError(`Cannot find device "${deviceName}"`);
    }
    if (destination === undefined) {
      throw new RouteError(`Error: a destination prefix or "default" is required.`);
    }
    return {
      type, prefix: destination.prefix, prefixLength: destination.prefixLength, gateway: gateway ?? 0,
      port, protocol, scope, prefSrc, metric, onlink,
    };
  }
}

function parseDestination(word: string): { prefix: number; prefixLength: number } {
  if (word === "default" || word === "all" || word === "any") return { prefix: 0, prefixLength: 0 };
  const parsed = parseCidr(word);
  if (parsed === undefined) throw new RouteError(`Error: any valid prefix is expected rather than "${word}".`);
  return { prefix: parsed.addr, prefixLength: parsed.prefixLength };
}

function parseUint(text: string, max: number): number | undefined {
  if (!/^(0x[0-9a-f]+|\d+)$/i.test(text)) return undefined;
  const value = Number(text);
  return value <= max ? value : undefined;
}

function protocolName(protocol: number): string {
  return PROTOCOL_NAMES.get(protocol) ?? String(protocol);
}

function scopeName(scope: number): string {
  return SCOPE_NAMES.get(scope) ?? String(scope);
}

function formatDestination(r: RouteEntry): string {
  if (r.prefixLength === 0) return "default";
  if (r.prefixLength === 32) return formatIpv4(r.prefix);
  return `${formatIpv4(r.prefix)}/${r.prefixLength}`;
}

/** A prefix as one number: prefix * 64 + length (exact in a double). */
function chainKey(prefix: number, prefixLength: number): number {
  return prefix * 64 + prefixLength;
}

function splitChainKey(key: number): [number, number] {
  const prefixLength = key % 64;
  return [(key - prefixLength) / 64, prefixLength];
}

function publicEntry(r: MutableRoute): RouteEntry {
  return {
    id: r.id, type: r.type, prefix: r.prefix, prefixLength: r.prefixLength, gateway: r.gateway,
    port: r.port, protocol: r.protocol, scope: r.scope, prefSrc: r.prefSrc, metric: r.metric, onlink: r.onlink,
  };
}

function grow<T extends Uint8Array | Int16Array | Int32Array | Uint32Array>(old: T, fresh: T): T {
  fresh.set(old);
  return fresh;
}
