/**
 * Live changes of a running router (`qnat apply CONFIG`, SIGHUP to `qnat run`, `qnat rules
 * restore`): what differs between the config a router runs and a new one, and how the new one
 * takes over without losing a packet of the connections it does not touch.
 *
 * How a change is applied (router-process.ts `applyConfig`), and why this way:
 *   1. The new config is checked completely first (YAML, ports, routes, the nat rules compiled):
 *      any error is one `FILE:LINE: ...` and nothing has changed.
 *   2. A new Dataplane is built from the new config that takes over the running one's connection
 *      table, NAT engine and fragment table (from-config.ts `successorOf`). Ports and the
 *      compiled rules are read-only once built, so building anew is simpler and safer than
 *      patching them in place, and it is how iptables-restore replaces a table: a whole new
 *      blob, swapped in at once (net/ipv4/netfilter/ip_tables.c do_replace -> xt_replace_table).
 *      The routing table is built anew too, but in pieces of about a millisecond while the
 *      running one forwards (routingForChange, route/table-build.ts: a full Internet table is
 *      seconds of work), or, for a small change with the same ports, the running one is changed
 *      in place at the swap (inPlaceRouting: addresses and their connected routes, up to
 *      IN_PLACE_ROUTES_MAX route lines), as the kernel's FIB is by `ip addr` / `ip route`; either
 *      way the result equals a table built at once from the new config. The route lines are
 *      compared in pieces too (diffConfigsInPieces). A second change asked for meanwhile waits
 *      its turn (router-process.ts applyConfig). The bindings live in conntrack, not in the
 *      rules, so an existing connection keeps the NAT it was given (a new floating IP applies to its VM's new
 *      connections; connections SNATed to the gateway address go on until they end).
 *   3. The kernel side is changed in two halves around the swap: what is added (mirror addresses,
 *      routes, OUTPUT-DNAT policy routing) before it, what is removed after it, so neither the
 *      old nor the new dataplane ever routes toward something the router namespace lacks.
 *   4. The swap itself is synchronous JavaScript between two batches (the packet loop runs on the
 *      same thread): no packet ever sees half a rule set. Counters carry over — per port by name,
 *      per rule for the rules that did not change (same chain and text, same occurrence), policy
 *      counters per built-in chain — and every connection's cached route (ConntrackTable's
 *      route cache, which holds port indexes) is forgotten, so the next packet of each looks its
 *      route up in the new table.
 *
 * Ports added or removed: the legs of the added ports are opened before the swap (their wire
 * namespaces made where missing, the lab's hosts there configured), and at the swap the loop's
 * legs are linked anew in the new port order, the legs of unchanged ports staying open; the
 * removed ports' legs close (router-process.ts relinkLegs). With `workers: N` the added legs are
 * opened with a queue per thread, every worker thread links its queues anew in the same step as
 * it swaps in its successor, and the removed legs' queues close once every thread let them go
 * (router-process.ts relinkWorkers, control/workers.ts relink; docs/multi-core.md).
 *
 * What cannot change live is refused with one line, nothing changed: the router's namespace
 * (that is another router), and `conntrack.max` (the table is allocated once; a restart with
 * `state:` keeps the connections).
 */
import { formatCidr, inPrefix, parseIpv4, prefixMask, type Cidr } from "../core/addr.js";
import { inPieces, type PieceOptions } from "../core/pieces.js";
import { ConfigError, type Located, type PortConfig, type RouterConfig, workersOf } from "../config/config.js";
import { buildRoutingTable, compileRules } from "../dataplane/from-config.js";
import { formatRule } from "../nat/rules/format.js";
import { chainsInOrder, rulesInOrder, type NatTable } from "../nat/rules/model.js";
import { ipAsync, ipBatchAsync } from "../io/netns.js";
import { buildTableInPieces, RouteLineError } from "../route/table-build.js";
import { RouteError, type RoutingTable } from "../route/table.js";
import { OperationalError } from "./errors.js";
import { OUTPUT_DNAT_RULE_PREF, OUTPUT_DNAT_TABLE, broadcastOf, outputDnatRoutingCommands, parseConfigRules } from "./host-setup.js";

/** Everything the config check of `qnat apply` and `qnat run` refuses, without touching anything. */
export function checkConfig(config: RouterConfig): NatTable {
  const rules = parseConfigRules(config);
  buildRoutingTable(config);
  compileRules(config);
  return rules;
}

/** One address of one port. */
export interface PortAddress {
  readonly port: string;
  readonly cidr: Cidr;
}

/** What differs between the running config and a new one, in the order it is printed. */
export interface ConfigDifference {
  readonly portsAdded: readonly PortConfig[];
  readonly portsRemoved: readonly PortConfig[];
  readonly addressesAdded: readonly PortAddress[];
  readonly addressesRemoved: readonly PortAddress[];
  readonly mtus: ReadonlyArray<{ readonly port: string; readonly from: number; readonly to: number }>;
  /** `ip route` lines, whitespace-normalised. */
  readonly routesAdded: readonly string[];
  readonly routesRemoved: readonly string[];
  /** `-N CHAIN` and `-A ...` lines as `iptables -t nat -S` prints them. */
  readonly rulesAdded: readonly string[];
  readonly rulesRemoved: readonly string[];
  readonly metadataChanged: boolean;
  /** Router settings the new dataplane takes (`~ rp_filter strict -> loose`, `~ conntrack drop_invalid ...`). */
  readonly settings: readonly string[];
}

/** True when nothing differs (apply prints nothing and changes nothing). */
export function isEmptyDifference(difference: ConfigDifference): boolean {
  return (
    difference.portsAdded.length +
      difference.portsRemoved.length +
      difference.addressesAdded.length +
      difference.addressesRemoved.length +
      difference.mtus.length +
      difference.routesAdded.length +
      difference.routesRemoved.length +
      difference.rulesAdded.length +
      difference.rulesRemoved.length +
      difference.settings.length ===
      0 && !difference.metadataChanged
  );
}

/** A port's identity: its name and where its wire leg is (a port whose wire moved is a new port). */
export function portKey(port: PortConfig): string {
  return `${port.name} ${port.wire.namespace} ${port.wire.device}`;
}

/** Whitespace other than single spaces between words. */
const NOT_NORMALISED = /^\s|\s$|\s\s|[^\S ]/;

function normaliseRoute(route: string): string {
  return NOT_NORMALISED.test(route) ? route.trim().split(/\s+/).join(" ") : route;
}

/** Items of `a` not in `b`, counting repeats (a multiset difference), in `a`'s order. */
function without(a: readonly string[], b: readonly string[]): string[] {
  const left = new Map<string, number>();
  for (const item of b) left.set(item, (left.get(item) ?? 0) + 1);
  const out: string[] = [];
  for (const item of a) {
    const count = left.get(item) ?? 0;
    if (count > 0) left.set(item, count - 1);
    else out.push(item);
  }
  return out;
}

/** The table's `-N` and `-A` lines (the `-P` lines are always ACCEPT in nat). */
function ruleLines(table: NatTable): string[] {
  const lines: string[] = [];
  for (const chain of chainsInOrder(table)) if (chain.hook === undefined) lines.push(`-N ${chain.name}`);
  for (const rule of rulesInOrder(table)) lines.push(formatRule(rule));
  return lines;
}

function metadataKey(config: RouterConfig): string {
  if (config.metadata === undefined) return "";
  return JSON.stringify([config.metadata.port, [...config.metadata.instances.entries()]]);
}

/**
 * Refuses what cannot change on a running router (one line, exit 1): the namespace and the
 * connection table's size.
 */
export function checkChangeable(running: RouterConfig, next: RouterConfig): void {
  if (next.namespace !== running.namespace) {
    throw new OperationalError(`${next.file}: router namespace ${next.namespace} is not the running router's (${running.namespace})`, 2);
  }
  if (next.conntrack.tcpBeLiberal !== running.conntrack.tcpBeLiberal) {
    throw new OperationalError(`${next.file}: conntrack.tcp_be_liberal differs from the running router's; the connection table takes it only at a restart`, 2);
  }
  if (next.state?.file !== running.state?.file || next.state?.interval !== running.state?.interval) {
    throw new OperationalError(`${next.file}: state differs from the running router's; the state file and its interval are taken only at a restart`, 2);
  }
  if (workersOf(next) !== workersOf(running)) {
    throw new OperationalError(`${next.file}: workers ${workersOf(next)} differs from the running router's ${workersOf(running)}; the forwarding threads change only with a restart`, 2);
  }
  if (next.conntrack.max !== running.conntrack.max) {
    throw new OperationalError(
      `${next.file}: conntrack.max ${next.conntrack.max} differs from the running router's ${running.conntrack.max}; the table's size changes only with a restart`,
      2,
    );
  }
}

/**
 * The route lines added and removed between two configs (whitespace-normalised, repeats counted:
 * `without` both ways), one line per step, so a full table's million lines can be compared in
 * pieces (diffConfigsInPieces) while the packet loop runs.
 */
class RouteChanges {
  readonly added: string[] = [];
  readonly removed: string[] = [];
  private readonly before: string[] = [];
  private readonly after: string[] = [];
  private counts = new Map<string, number>();
  private phase = 0;
  private at = 0;

  constructor(
    private readonly running: readonly Located<string>[],
    private readonly next: readonly Located<string>[],
  ) {}

  /** One line of work; true when the difference is complete. */
  step(): boolean {
    const at = this.at++;
    if (this.phase === 0 && at < this.next.length) {
      this.count(this.after, normaliseRoute(this.next[at]!.value)); // the new config's lines, counted
    } else if (this.phase === 1 && at < this.running.length) {
      this.match(this.before, normaliseRoute(this.running[at]!.value), this.removed); // unmatched: removed
    } else if (this.phase === 2 && at < this.before.length) {
      this.count(undefined, this.before[at]!); // the running lines, counted
    } else if (this.phase === 3 && at < this.after.length) {
      this.match(undefined, this.after[at]!, this.added); // unmatched: added
    } else if (this.phase === 3) {
      return true;
    } else {
      if (this.phase === 1) this.counts = new Map();
      this.phase++;
      this.at = 0;
    }
    return false;
  }

  private count(into: string[] | undefined, line: string): void {
    into?.push(line);
    this.counts.set(line, (this.counts.get(line) ?? 0) + 1);
  }

  private match(into: string[] | undefined, line: string, unmatched: string[]): void {
    into?.push(line);
    const left = this.counts.get(line) ?? 0;
    if (left > 0) this.counts.set(line, left - 1);
    else unmatched.push(line);
  }
}

export function diffConfigs(running: RouterConfig, runningRules: NatTable, next: RouterConfig, nextRules: NatTable): ConfigDifference {
  const routes = new RouteChanges(running.routes, next.routes);
  while (!routes.step());
  return differenceWith(running, runningRules, next, nextRules, routes);
}

/**
 * diffConfigs with the route lines compared in pieces of about a millisecond (core/pieces.ts): a
 * new full Internet table is a million lines each side, seconds of work at once.
 */
export async function diffConfigsInPieces(
  running: RouterConfig,
  runningRules: NatTable,
  next: RouterConfig,
  nextRules: NatTable,
  options: PieceOptions = {},
): Promise<ConfigDifference> {
  const routes = new RouteChanges(running.routes, next.routes);
  await inPieces(() => routes.step(), options);
  return differenceWith(running, runningRules, next, nextRules, routes);
}

function differenceWith(running: RouterConfig, runningRules: NatTable, next: RouterConfig, nextRules: NatTable, routes: RouteChanges): ConfigDifference {
  const runningPorts = new Map(running.ports.map((p) => [portKey(p), p]));
  const nextPorts = new Map(next.ports.map((p) => [portKey(p), p]));
  const portsAdded = next.ports.filter((p) => !runningPorts.has(portKey(p)));
  const portsRemoved = running.ports.filter((p) => !nextPorts.has(portKey(p)));
  const addressesAdded: PortAddress[] = [];
  const addressesRemoved: PortAddress[] = [];
  const mtus: Array<{ port: string; from: number; to: number }> = [];
  const addressesOf = (port: PortConfig | undefined): string[] => (port === undefined ? [] : port.addresses.map(formatCidr));
  const cidrOf = (port: PortConfig, text: string): Cidr => port.addresses.find((c) => formatCidr(c) === text)!;
  for (const port of next.ports) {
    const before = runningPorts.get(portKey(port));
    for (const text of without(addressesOf(port), addressesOf(before))) addressesAdded.push({ port: port.name, cidr: cidrOf(port, text) });
    if (before !== undefined && before.mtu !== port.mtu) mtus.push({ port: port.name, from: before.mtu, to: port.mtu });
  }
  for (const port of running.ports) {
    const after = nextPorts.get(portKey(port));
    for (const text of without(addressesOf(port), addressesOf(after))) addressesRemoved.push({ port: port.name, cidr: cidrOf(port, text) });
  }
  const runningRuleLines = ruleLines(runningRules);
  const nextRuleLines = ruleLines(nextRules);
  return {
    portsAdded,
    portsRemoved,
    addressesAdded,
    addressesRemoved,
    mtus,
    routesAdded: routes.added,
    routesRemoved: routes.removed,
    rulesAdded: without(nextRuleLines, runningRuleLines),
    rulesRemoved: without(runningRuleLines, nextRuleLines),
    metadataChanged: metadataKey(running) !== metadataKey(next),
    settings: settingChanges(running, next),
  };
}

/** rp_filter, arp_ignore and arp_announce (router-wide and per kept port), conntrack drop_invalid and the metrics endpoint: the router's settings. */
function settingChanges(running: RouterConfig, next: RouterConfig): string[] {
  const lines: string[] = [];
  if (running.rpFilter !== next.rpFilter) lines.push(`~ rp_filter ${running.rpFilter} -> ${next.rpFilter}`);
  for (const port of next.ports) {
    const before = running.ports.find((p) => portKey(p) === portKey(port));
    if (before !== undefined && before.rpFilter !== port.rpFilter) lines.push(`~ rp_filter ${before.rpFilter} -> ${port.rpFilter} on ${port.name}`);
    // arp_ignore / arp_announce of a tap port: the Ethernet stage takes them with the new ports.
    if (before !== undefined && before.arpIgnore !== port.arpIgnore) lines.push(`~ arp_ignore ${before.arpIgnore} -> ${port.arpIgnore} on ${port.name}`);
    if (before !== undefined && before.arpAnnounce !== port.arpAnnounce) lines.push(`~ arp_announce ${before.arpAnnounce} -> ${port.arpAnnounce} on ${port.name}`);
  }
  if (running.arpIgnore !== next.arpIgnore) lines.push(`~ arp_ignore ${running.arpIgnore} -> ${next.arpIgnore}`);
  if (running.arpAnnounce !== next.arpAnnounce) lines.push(`~ arp_announce ${running.arpAnnounce} -> ${next.arpAnnounce}`);
  if (running.conntrack.dropInvalid !== next.conntrack.dropInvalid) {
    lines.push(`~ conntrack drop_invalid ${running.conntrack.dropInvalid} -> ${next.conntrack.dropInvalid}`);
  }
  // The Prometheus endpoint (metrics.ts): the router starts, stops or moves it.
  const listen = (c: RouterConfig): string => (c.metrics === undefined ? "off" : `${c.metrics.host}:${c.metrics.port}`);
  if (listen(running) !== listen(next)) lines.push(`~ metrics ${listen(running)} -> ${listen(next)}`);
  return lines;
}

/** Route lines `qnat apply` prints one by one; beyond, it prints how many were removed and added. */
const ROUTE_LINES_LISTED = 1000;

/**
 * What `qnat apply` prints: one line per change, `-` before `+` in each kind (route changes of
 * more than ROUTE_LINES_LISTED lines as two counts).
 */
export function formatDifference(difference: ConfigDifference, next: RouterConfig): string[] {
  const lines: string[] = [];
  const describePort = (p: PortConfig): string => `${p.name} ${p.addresses.map(formatCidr).join(" ")} mtu ${p.mtu} <-> ${p.wire.namespace}/${p.wire.device}`;
  for (const port of difference.portsRemoved) lines.push(`- port ${describePort(port)}`);
  for (const port of difference.portsAdded) lines.push(`+ port ${describePort(port)}`);
  for (const a of difference.addressesRemoved) lines.push(`- address ${formatCidr(a.cidr)} on ${a.port}`);
  for (const a of difference.addressesAdded) lines.push(`+ address ${formatCidr(a.cidr)} on ${a.port}`);
  for (const m of difference.mtus) lines.push(`~ mtu ${m.from} -> ${m.to} on ${m.port}`);
  if (difference.routesRemoved.length + difference.routesAdded.length <= ROUTE_LINES_LISTED) {
    for (const route of difference.routesRemoved) lines.push(`- route ${route}`);
    for (const route of difference.routesAdded) lines.push(`+ route ${route}`);
  } else {
    // A new full table: a count, not a million lines on the terminal (or in the log, for SIGHUP).
    const listed = `not listed: more than ${ROUTE_LINES_LISTED} route lines changed`;
    if (difference.routesRemoved.length > 0) lines.push(`- ${difference.routesRemoved.length} routes (${listed})`);
    if (difference.routesAdded.length > 0) lines.push(`+ ${difference.routesAdded.length} routes (${listed})`);
  }
  for (const rule of difference.rulesRemoved) lines.push(rule.startsWith("-N ") ? `- chain ${rule.slice(3)}` : `- rule ${rule}`);
  for (const rule of difference.rulesAdded) lines.push(rule.startsWith("-N ") ? `+ chain ${rule.slice(3)}` : `+ rule ${rule}`);
  lines.push(...difference.settings);
  if (difference.metadataChanged) {
    const count = next.metadata?.instances.size ?? 0;
    lines.push(next.metadata === undefined ? "- metadata proxy" : `~ metadata: ${count} instance${count === 1 ? "" : "s"} on port ${next.metadata.port}`);
  }
  return lines;
}

// A successor dataplane's inherited counters, and the rules' model as a table, live with the
// dataplane (a worker thread swaps its own dataplane too): re-exported for this module's users.
export { carryOverCounters, tableOf } from "../dataplane/successor.js";

/**
 * The running config with its nat rules replaced by an iptables-restore text (`qnat rules
 * restore`): errors in it are reported at the text's own FILE:LINE.
 */
export function withRules(running: RouterConfig, text: string, file: string): RouterConfig {
  return { ...running, nat: { text, firstLine: 1, file } };
}

/** Cidrs of `a` whose address is not in `b`. */
function addressesNotIn(a: readonly Cidr[], b: readonly Cidr[]): Cidr[] {
  return a.filter((x) => !b.some((y) => y.addr === x.addr));
}

/** Route lines per `ip -batch` process: making one batch's text is well under a millisecond. */
const KERNEL_BATCH_LINES = 4096;

/** `ip -batch` inputs for route lines, KERNEL_BATCH_LINES at a time (a new full table is a million). */
function* kernelBatches(routes: readonly string[], command: string): Generator<string[]> {
  for (let at = 0; at < routes.length; at += KERNEL_BATCH_LINES) {
    yield routes.slice(at, at + KERNEL_BATCH_LINES).map((route) => `${command} ${route}`);
  }
}

/**
 * The router namespace's half of a change that must exist before the new dataplane runs: the
 * added mirror addresses, the added routes (`ip route replace`, as `qnat run` installs them) and
 * the OUTPUT-DNAT policy routing of newly DNATed local addresses (host-setup.ts).
 */
export async function addKernelSide(
  next: RouterConfig,
  difference: ConfigDifference,
  outputDnatBefore: readonly Cidr[],
  outputDnatAfter: readonly Cidr[],
): Promise<void> {
  const ns = next.namespace;
  for (const { port, cidr } of difference.addressesAdded) {
    await ipAsync(ns, "addr", "replace", formatCidr(cidr), "brd", broadcastOf(cidr), "dev", port);
  }
  for (const lines of kernelBatches(difference.routesAdded, "route replace")) await ipBatchAsync(ns, lines);
  const added = addressesNotIn(outputDnatAfter, outputDnatBefore);
  if (added.length === 0) return;
  const rules = await ipAsync(ns, "-4", "rule", "show");
  for (const args of outputDnatRoutingCommands(next, added, rules)) await ipAsync(ns, ...args);
}

/**
 * The other half, once the new dataplane runs: removed routes, addresses and OUTPUT-DNAT policy
 * routing. Best effort: what is already gone (a route the kernel dropped with its address) is
 * fine; anything else is logged and the router goes on with the new config.
 */
export async function removeKernelSide(
  running: RouterConfig,
  difference: ConfigDifference,
  outputDnatBefore: readonly Cidr[],
  outputDnatAfter: readonly Cidr[],
  log: (line: string) => void,
): Promise<void> {
  const ns = running.namespace;
  const attempt = async (...args: string[]): Promise<void> => {
    try {
      await ipAsync(ns, ...args);
    } catch (error) {
      const message = error instanceof Error ? error.message.split("\n")[0]! : String(error);
      if (!/No such process|Cannot assign requested address|No such file or directory|does not exist|Cannot find device/.test(message)) {
        log(`qnat: apply: ip ${args.join(" ")}: ${message}`);
      }
    }
  };
  // One forced batch (every line tried; a route the kernel already dropped fails alone).
  for (const lines of kernelBatches(difference.routesRemoved, "route del")) {
    try {
      await ipBatchAsync(ns, lines, true);
    } catch (error) {
      const message = error instanceof Error ? error.message.split("\n")[0]! : String(error);
      if (!/No such process|Cannot find device/.test(message)) log(`qnat: apply: ip -batch route del: ${message}`);
    }
  }
  // A removed port's mirror is gone, and its addresses and routes with it.
  const gone = new Set(difference.portsRemoved.map((p) => p.name));
  for (const { port, cidr } of difference.addressesRemoved) if (!gone.has(port)) await attempt("addr", "del", formatCidr(cidr), "dev", port);
  for (const cidr of addressesNotIn(outputDnatBefore, outputDnatAfter)) {
    const to = formatCidr(cidr);
    await attempt("-4", "rule", "del", "pref", String(OUTPUT_DNAT_RULE_PREF), "iif", "lo", "to", to, "lookup", String(OUTPUT_DNAT_TABLE));
    await attempt("route", "del", to, "table", String(OUTPUT_DNAT_TABLE));
  }
}

/**
 * Most route lines a change makes in place at the swap (~10 us each: a dry run before, the change
 * at the swap, so ~2.5 ms at most of the packet loop). More, and the table is built anew in pieces
 * (routingForChange): a longer wall time, no longer wait for the loop.
 */
const IN_PLACE_ROUTES_MAX = 256;

/**
 * How the running routing table becomes `next`'s in place, between two batches, instead of being
 * built anew (a new tbl24 of 64 MiB painted, ~65 ms the packet loop waits): the change a floating
 * IP makes (a /32 added to or removed from the qg- port), other addresses and `ip route` lines
 * added or dropped. Returns the change to run at the swap, or undefined when the table must be
 * built anew: other ports or another port order, an address or route moved within its list,
 * or a change whose result could differ from a table built from `next` (then the change is not
 * made in place):
 *   - the table built from a config adds every address first, then the routes in order, and a
 *     route's gateway is resolved against what is there at that moment (fib_check_nh_v4_gw);
 *     so every route line that stays must not depend on a changed address (gateway in its subnet,
 *     `src` that address), a dropped line must not be one that resolves other gateways (scope
 *     link or host: one without `via`, or with `scope`), and added lines come last, in order;
 *   - connected routes of one prefix on two ports are ordered by port (fib_add_ifaddr at each
 *     port's address), and a secondary address's subnet is its primary's: an added or removed
 *     address shares its subnet with no other address.
 * The change is tried once here and undone (RoutingTable.edit dry run): what would fail is left
 * to the table built anew, which reports it at its config line. A change of more than
 * IN_PLACE_ROUTES_MAX route lines (a new full-table routes file) is built anew too, in pieces.
 * `difference` (diffConfigs of the two) spares comparing the route lines again.
 */
export function inPlaceRouting(
  running: RouterConfig,
  next: RouterConfig,
  routes: RoutingTable,
  difference?: Pick<ConfigDifference, "routesAdded" | "routesRemoved">,
): (() => void) | undefined {
  const check = new InPlaceCheck(running, next, routes, difference);
  while (!check.step());
  return check.result;
}

/**
 * inPlaceRouting's check, one route line per step: on a router holding a full table, a floating
 * IP's change is decided by walking a million lines, in pieces (routingForChange).
 */
class InPlaceCheck {
  /** Once step() returned true: the change to make at the swap, or undefined (build anew). */
  result: (() => void) | undefined;
  private done = false;
  private readonly changes: { port: number; removed: Cidr[]; added: Cidr[] }[] = [];
  private readonly changed: Cidr[] = [];
  /** The added addresses' subnets, as route lines name them. */
  private readonly subnets = new Set<string>();
  private routeChanges: RouteChanges | undefined;
  private routesAdded: readonly string[] = [];
  private routesRemoved: readonly string[] = [];
  /** Per removed line, how many of its first occurrences in the running lines are still to skip. */
  private readonly removedLeft = new Map<string, number>();
  /** The next running line to look at, and how many of them were kept so far. */
  private at = 0;
  private kept = 0;

  constructor(
    private readonly running: RouterConfig,
    private readonly next: RouterConfig,
    private readonly routes: RoutingTable,
    difference: Pick<ConfigDifference, "routesAdded" | "routesRemoved"> | undefined,
  ) {
    if (!this.addressesChangeable()) {
      this.done = true;
      return;
    }
    if (difference === undefined) this.routeChanges = new RouteChanges(running.routes, next.routes);
    else this.takeRouteChanges(difference.routesAdded, difference.routesRemoved);
  }

  step(): boolean {
    if (this.done) return true;
    if (this.routeChanges !== undefined) {
      if (this.routeChanges.step()) this.takeRouteChanges(this.routeChanges.added, this.routeChanges.removed);
      return false;
    }
    if (this.at < this.running.routes.length) {
      if (!this.keptLineChangeable(normaliseRoute(this.running.routes[this.at++]!.value))) this.done = true;
      return this.done;
    }
    this.result = this.finish();
    this.done = true;
    return true;
  }

  /**
   * The ports' names and order stay, every port's kept addresses stay in order with the added
   * ones after them, and no changed address shares its subnet with another.
   */
  private addressesChangeable(): boolean {
    const { running, next } = this;
    const names = (config: RouterConfig): string => JSON.stringify(config.ports.map((p) => p.name));
    if (names(running) !== names(next)) return false;
    for (const [port, after] of next.ports.entries()) {
      const before = running.ports[port]!;
      const beforeText = before.addresses.map(formatCidr);
      const afterText = after.addresses.map(formatCidr);
      const removed = before.addresses.filter((c) => !afterText.includes(formatCidr(c)));
      const added = after.addresses.filter((c) => !beforeText.includes(formatCidr(c)));
      const kept = beforeText.filter((text) => afterText.includes(text));
      if (JSON.stringify([...kept, ...added.map(formatCidr)]) !== JSON.stringify(afterText)) return false;
      if (removed.length + added.length > 0) this.changes.push({ port, removed, added });
    }
    this.changed.push(...this.changes.flatMap((c) => [...c.removed, ...c.added]));
    const sharesSubnet = (cidr: Cidr, config: RouterConfig): boolean =>
      config.ports.some((p) => p.addresses.some((other) => other !== cidr && other.prefixLength === cidr.prefixLength && inPrefix(other.addr, cidr.addr, cidr.prefixLength)));
    for (const { removed, added } of this.changes) {
      if (removed.some((c) => sharesSubnet(c, running)) || added.some((c) => sharesSubnet(c, next))) return false;
    }
    for (const c of this.changes.flatMap((change) => change.added)) {
      this.subnets.add(formatCidr({ addr: (c.addr & prefixMask(c.prefixLength)) >>> 0, prefixLength: c.prefixLength }));
    }
    return true;
  }

  private takeRouteChanges(added: readonly string[], removed: readonly string[]): void {
    this.routeChanges = undefined;
    this.routesAdded = added;
    this.routesRemoved = removed;
    if (added.length + removed.length > IN_PLACE_ROUTES_MAX) {
      this.done = true;
      return;
    }
    for (const route of removed) {
      // A dropped line must not be one that resolves other gateways (scope link or host).
      const words = route.split(" ");
      const errorRoute = ["blackhole", "unreachable", "prohibit"].includes(words[0]!);
      if (words.includes("scope") || !(words.includes("via") || errorRoute)) {
        this.done = true;
        return;
      }
      this.removedLeft.set(route, (this.removedLeft.get(route) ?? 0) + 1);
    }
  }

  /**
   * One running line: a removed one is skipped (its first occurrences), a kept one must be the
   * new config's next line (added lines come last, in order), must not name an added address's
   * subnet (built anew, the connected route comes first), and must not depend on a changed
   * address (a gateway in its subnet, a `src` that address).
   */
  private keptLineChangeable(route: string): boolean {
    const left = this.removedLeft.get(route) ?? 0;
    if (left > 0) {
      this.removedLeft.set(route, left - 1);
      return true;
    }
    const after = this.next.routes[this.kept++];
    if (after === undefined || normaliseRoute(after.value) !== route || this.namesAddedSubnet(route)) return false;
    if (this.changed.length === 0) return true;
    const words = route.split(" ");
    const addressAfter = (word: string): number => (words.includes(word) ? parseIpv4(words[words.indexOf(word) + 1] ?? "") : -1);
    const gateway = addressAfter("via");
    const source = addressAfter("src");
    return !this.changed.some((c) => (gateway >= 0 && inPrefix(gateway, c.addr, c.prefixLength)) || source === c.addr);
  }

  private namesAddedSubnet(route: string): boolean {
    return this.subnets.size > 0 && route.split(" ").some((word) => this.subnets.has(word));
  }

  /** After the running lines: the added lines end the new config; then the dry run. */
  private finish(): (() => void) | undefined {
    const { next, routes, changes, routesAdded, routesRemoved } = this;
    if (next.routes.length !== this.kept + routesAdded.length) return undefined;
    for (const [i, route] of routesAdded.entries()) {
      if (normaliseRoute(next.routes[this.kept + i]!.value) !== route || this.namesAddedSubnet(route)) return undefined;
    }
    if (changes.length === 0 && routesRemoved.length === 0 && routesAdded.length === 0) return () => undefined;
    const change = (): void => {
      for (const route of routesRemoved) routes.deleteAdded(route);
      for (const { port, removed } of changes) for (const c of removed) routes.removeAddress(port, c.addr, c.prefixLength);
      for (const { port, added } of changes) for (const c of added) routes.addConnected(port, c.addr, c.prefixLength);
      for (const route of routesAdded) routes.addRoute(route);
    };
    try {
      routes.edit(change, { dryRun: true });
    } catch (error) {
      if (error instanceof RouteError) return undefined;
      throw error;
    }
    return () => routes.edit(change);
  }
}

/** The routing table a live change's new dataplane runs with (routingForChange). */
export interface NextRouting {
  /** The running table (changed in place at the swap) or one built anew. */
  readonly routes: RoutingTable;
  /** For the running table: the change to make at the swap, between two batches. */
  readonly change?: () => void;
}

/**
 * The routing table for `next`, made without holding the packet loop for more than a piece: the
 * running table with a small change to make in place at the swap (inPlaceRouting), or a table
 * built anew in pieces of about a millisecond while the running one forwards
 * (route/table-build.ts; a new full Internet table: seconds of wall time, no packet waits on it).
 * A route line the new table refuses is the config's error at its FILE:LINE, as `qnat run` reports
 * it; the running table is untouched then.
 */
export async function routingForChange(
  running: RouterConfig,
  next: RouterConfig,
  table: RoutingTable,
  difference: ConfigDifference,
  options: PieceOptions & { inPlace?: boolean } = {},
): Promise<NextRouting> {
  // With workers every thread builds its successor's table anew, so their route versions agree
  // (docs/multi-core.md): `inPlace: false` then.
  if (options.inPlace !== false) {
    const check = new InPlaceCheck(running, next, table, difference);
    await inPieces(() => check.step(), options);
    if (check.result !== undefined) return { routes: table, change: check.result };
  }
  return { routes: await routingTableInPieces(next, options) };
}

/**
 * The routing table of `next` built anew in pieces of about a millisecond, the thread's loop
 * running between them (a worker thread's successor, too: control/dataplane-worker.ts); a route
 * line's mistake is a ConfigError at its line.
 */
export async function routingTableInPieces(next: RouterConfig, options: PieceOptions = {}): Promise<RoutingTable> {
  const source = {
    portNames: next.ports.map((p) => p.name),
    addresses: next.ports.flatMap((p, port) => p.addresses.map((cidr) => ({ port, addr: cidr.addr, prefixLength: cidr.prefixLength }))),
    routes: next.routes,
  };
  try {
    return await buildTableInPieces(source, options);
  } catch (error) {
    if (!(error instanceof RouteLineError)) throw error;
    const route = next.routes[error.index]!;
    throw new ConfigError(route.file ?? next.file, route.line, `route "${route.value}": ${error.message}`);
  }
}
