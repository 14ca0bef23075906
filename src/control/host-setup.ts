/**
 * What `qnat run` and `qnat lab up` configure in the kernel, through iproute2 (control plane
 * only): the router namespace (its host mirrors' addresses, the configured routes, sysctls and
 * the policy routing that makes OUTPUT DNAT work), the wire namespaces with the Linux bridges
 * tap ports join (`wire.bridge`), and the lab's hosts (on the wire device, or on a veth into the
 * port's bridge, also from a namespace of their own).
 *
 * The router namespace's kernel is only the router's own host (DESIGN.md "Topology"): it has
 * `ip_forward=0`; what it sends leaves through a mirror into qnat's OUTPUT path, and what qnat
 * delivers locally arrives through the mirror of the port it came in on.
 */
import { createHash } from "node:crypto";
import { formatCidr, formatIpv4, prefixMask, type Cidr } from "../core/addr.js";
import { ConfigError, type LabHostConfig, type PortConfig, type RouterConfig } from "../config/config.js";
import { TargetKind, type NatTable } from "../nat/rules/model.js";
import { parseRules } from "../nat/rules/parse.js";
import { sideMacOf } from "../io/ethernet-leg.js";
import { ensureNetns, ip, ipBatch, netnsExec, netnsExists } from "../io/netns.js";
import { formatMac, parseMac } from "../wire/ethernet.js";
import { OperationalError } from "./errors.js";

/**
 * The routing table that sends the router host's own packets for OUTPUT-DNATed local addresses
 * to a mirror (any id from 1 to 252 that is not local/main/default; rt_tables(5)).
 */
export const OUTPUT_DNAT_TABLE = 200;
/** Preference of the rule for those packets: ahead of the local table's. */
export const OUTPUT_DNAT_RULE_PREF = 50;
/** Where the local table's rule moves from 0 (fib_default_rules_init, net/ipv4/fib_rules.c). */
export const LOCAL_RULE_PREF = 100;

/** Parses the config's nat text; every error becomes the ConfigError of its config line. */
export function parseConfigRules(config: RouterConfig): NatTable {
  const result = parseRules(config.nat.text);
  const first = result.errors[0];
  if (first !== undefined) {
    const inline = config.nat.file === config.file;
    const line = inline ? config.nat.firstLine + first.line - 1 : first.line;
    throw new ConfigError(config.nat.file, line, first.message);
  }
  return result.table;
}

/** Names of the chains reachable from a built-in chain by -j/-g (itself included). */
export function chainsReachableFrom(table: NatTable, builtin: string): Set<string> {
  const seen = new Set<string>();
  const pending = [builtin];
  while (pending.length > 0) {
    const name = pending.pop()!;
    if (seen.has(name)) continue;
    seen.add(name);
    for (const rule of table.chains.get(name)?.rules ?? []) {
      const target = rule.target;
      if (target.kind === TargetKind.Jump || target.kind === TargetKind.Goto) pending.push(target.chain);
    }
  }
  return seen;
}

/**
 * The router's own addresses that a DNAT rule reachable from OUTPUT may translate: the router
 * host's kernel would deliver its packets to them to itself (they are in its local table), so
 * they get policy routing toward a mirror. Only DNAT rules that name a destination (`-d`, not
 * negated) count; a rule without `-d` would make every local address leave through qnat.
 */
export function outputDnatLocalAddresses(config: RouterConfig, table: NatTable): Cidr[] {
  const reachable = chainsReachableFrom(table, "OUTPUT");
  const found = new Map<number, Cidr>();
  for (const name of reachable) {
    for (const rule of table.chains.get(name)?.rules ?? []) {
      if (rule.target.kind !== TargetKind.Dnat) continue;
      if (rule.dst.mask === 0 || rule.dst.invert) continue;
      for (const port of config.ports) {
        for (const cidr of port.addresses) {
          if (((cidr.addr & rule.dst.mask) >>> 0) === rule.dst.addr >>> 0) found.set(cidr.addr, { addr: cidr.addr, prefixLength: 32 });
        }
      }
    }
  }
  return [...found.values()];
}

/**
 * Fixed IP -> floating IP from the 1:1 DNAT rules reachable from PREROUTING
 * (`-d FLOATING/32 -j DNAT --to-destination FIXED`), for the metadata proxy's `public-ipv4`.
 */
export function floatingIpsOf(table: NatTable): Map<string, string> {
  const map = new Map<string, string>();
  for (const name of chainsReachableFrom(table, "PREROUTING")) {
    for (const rule of table.chains.get(name)?.rules ?? []) {
      const target = rule.target;
      if (target.kind !== TargetKind.Dnat) continue;
      if (rule.dst.mask !== 0xffffffff || rule.dst.invert) continue;
      if (target.range.minAddr !== target.range.maxAddr || target.range.minAddr === 0) continue;
      map.set(formatIpv4(target.range.minAddr), formatIpv4(rule.dst.addr));
    }
  }
  return map;
}

/** `A.B.C.D/N brd +` as iproute2 takes it: the broadcast address as Linux computes it. */
export function broadcastOf(cidr: Cidr): string {
  return formatIpv4((cidr.addr | ~prefixMask(cidr.prefixLength)) >>> 0);
}

/**
 * Writes sysctls in a namespace with one shell started there (/proc/sys/net is per namespace).
 * Keys that do not exist (a kernel without IPv6) are skipped.
 */
export function setSysctls(netns: string, entries: ReadonlyArray<readonly [string, string | number]>): void {
  const script = entries
    .map(([key, value]) => {
      if (!/^[A-Za-z0-9_.-]+$/.test(key)) throw new Error(`not a sysctl key: ${key}`);
      const path = `/proc/sys/${key.replaceAll(".", "/")}`;
      return `[ -e ${path} ] && echo ${String(value).replace(/[^0-9A-Za-z]/g, "")} > ${path}`;
    })
    .join("; ");
  netnsExec(netns, "sh", ["-c", `${script}; true`]);
}

/** The namespaces a config names: the router's, then each wire namespace once. */
export function namespacesOf(config: RouterConfig): string[] {
  const names = [config.namespace];
  for (const port of config.ports) if (!names.includes(port.wire.namespace)) names.push(port.wire.namespace);
  for (const host of config.lab) if (!names.includes(host.namespace)) names.push(host.namespace);
  return names;
}

/**
 * Creates the router namespace and every wire namespace that is missing, with IPv6 off (the
 * dataplane is IPv4; devices created afterwards inherit `default`); returns those it created.
 */
export function ensureNamespaces(config: RouterConfig): string[] {
  const created: string[] = [];
  for (const name of namespacesOf(config)) {
    if (ensureNetns(name)) created.push(name);
    setSysctls(name, [
      ["net.ipv6.conf.all.disable_ipv6", 1],
      ["net.ipv6.conf.default.disable_ipv6", 1],
    ]);
    ip(name, "link", "set", "lo", "up");
  }
  return created;
}

/**
 * The router namespace's kernel, once its mirrors exist and are up: the router's host, not a
 * router. Sysctls: no forwarding; no reverse-path filter and local sources accepted on the
 * mirrors (replies to the router's own OUTPUT-DNATed connections come back from one of its own
 * addresses, which fib_validate_source, net/ipv4/fib_frontend.c, refuses without accept_local).
 */
export function configureRouterNamespace(config: RouterConfig, outputDnat: readonly Cidr[]): void {
  const ns = config.namespace;
  const sysctls: Array<[string, number]> = [
    ["net.ipv4.ip_forward", 0],
    ["net.ipv4.conf.all.rp_filter", 0],
    ["net.ipv4.conf.default.rp_filter", 0],
    ["net.ipv4.conf.all.accept_local", 1],
    ["net.ipv4.conf.default.accept_local", 1],
  ];
  for (const port of config.ports) {
    sysctls.push([`net.ipv4.conf.${port.name}.rp_filter`, 0], [`net.ipv4.conf.${port.name}.accept_local`, 1]);
  }
  setSysctls(ns, sysctls);
  ip(ns, "link", "set", "lo", "up");
  for (const port of config.ports) {
    for (const cidr of port.addresses) {
      ip(ns, "addr", "replace", formatCidr(cidr), "brd", broadcastOf(cidr), "dev", port.name);
    }
  }
  // One process for all routes (a routes_file may hold a full Internet table).
  if (config.routes.length > 0) ipBatch(ns, config.routes.map((route) => `route replace ${route.value.trim()}`));
  installOutputDnatRouting(config, outputDnat);
}

/**
 * Policy routing for OUTPUT DNAT (DESIGN.md): the router host's own packets (`iif lo`) to an
 * address that OUTPUT DNATs are looked up in OUTPUT_DNAT_TABLE, which routes them out of the
 * mirror of the port that owns the address, ahead of the local table (whose rule moves from
 * preference 0 to LOCAL_RULE_PREF). Idempotent.
 */
export function installOutputDnatRouting(config: RouterConfig, addresses: readonly Cidr[]): void {
  if (addresses.length === 0) return;
  const ns = config.namespace;
  for (const args of outputDnatRoutingCommands(config, addresses, ip(ns, "-4", "rule", "show"))) ip(ns, ...args);
}

/**
 * The `ip` commands (arguments after `ip -n NS`) that installOutputDnatRouting runs, given what
 * `ip -4 rule show` lists now; a live change (live-apply.ts) runs them without blocking the loop.
 */
export function outputDnatRoutingCommands(config: RouterConfig, addresses: readonly Cidr[], rules: string): string[][] {
  const commands: string[][] = [];
  if (!new RegExp(`^${LOCAL_RULE_PREF}:\\s+from all lookup local`, "m").test(rules)) {
    commands.push(["-4", "rule", "add", "pref", String(LOCAL_RULE_PREF), "lookup", "local"]);
  }
  if (/^0:\s+from all lookup local/m.test(rules)) commands.push(["-4", "rule", "del", "pref", "0", "lookup", "local"]);
  for (const cidr of addresses) {
    const owner = config.ports.find((p) => p.addresses.some((a) => a.addr === cidr.addr));
    if (owner === undefined) continue;
    const to = formatCidr(cidr);
    const rule = new RegExp(`^${OUTPUT_DNAT_RULE_PREF}:\\s+from all to ${to.replace("/32", "")} iif lo lookup ${OUTPUT_DNAT_TABLE}`, "m");
    if (!rule.test(rules)) {
      commands.push(["-4", "rule", "add", "pref", String(OUTPUT_DNAT_RULE_PREF), "iif", "lo", "to", to, "lookup", String(OUTPUT_DNAT_TABLE)]);
    }
    // `src` = the address itself, as the local table's route for it has: Linux picks a local
    // destination's own address as the source of the router's packets to it.
    commands.push(["route", "replace", to, "dev", owner.name, "src", to.replace("/32", ""), "table", String(OUTPUT_DNAT_TABLE)]);
    // A tap port's mirror is Ethernet: before sending, the router host's kernel asks ARP for the
    // address itself there, which qnat leaves unanswered (a port's own address, and the request
    // comes from that same address: io/ethernet-leg.ts arpFromMirror). So the address gets a
    // permanent neighbour entry at the port's side MAC, where qnat takes the mirror's frames.
    if (owner.wire.mode === "tap") {
      commands.push(["neigh", "replace", to.replace("/32", ""), "lladdr", formatMac(sideMacOf(parseMac(owner.mac))), "dev", owner.name, "nud", "permanent"]);
    }
  }
  return commands;
}

/** The device that carries a lab host's addresses when the host is plugged into a bridge (one host per namespace). */
export const LAB_HOST_DEVICE = "lab0";

/**
 * The bridge end of a lab host's veth pair, in the bridge's namespace: `lab-` and 8 hex digits of
 * the host namespace's SHA-256, so several hosts plug into one bridge and the name stays the same
 * whichever subset of the lab is configured (a live change configures only the added hosts).
 */
export function labBridgeEndOf(host: LabHostConfig): string {
  return `lab-${createHash("sha256").update(host.namespace).digest("hex").slice(0, 8)}`;
}

/** A Linux bridge in a wire namespace, as a port's `wire.bridge` names it. */
export interface BridgeSegment {
  readonly namespace: string;
  readonly bridge: string;
  /** The MTU of the port(s) on that bridge: the lab hosts' veths get it too. */
  readonly mtu: number;
}

/** The bridge a lab host plugs into: its `bridge:`, else the bridge of the port facing its namespace; none for a host on a bridgeless port. */
export function labSegmentOf(config: RouterConfig, host: LabHostConfig): BridgeSegment | undefined {
  const onBridge = (namespace: string, bridge: string): PortConfig[] =>
    config.ports.filter((p) => p.wire.namespace === namespace && p.wire.bridge === bridge);
  if (host.bridge !== undefined) {
    const ports = onBridge(host.bridge.namespace, host.bridge.name);
    return { namespace: host.bridge.namespace, bridge: host.bridge.name, mtu: Math.min(...ports.map((p) => p.mtu)) };
  }
  const port = config.ports.find((p) => p.wire.namespace === host.namespace);
  if (port?.wire.bridge === undefined) return undefined;
  return { namespace: port.wire.namespace, bridge: port.wire.bridge, mtu: Math.min(...onBridge(port.wire.namespace, port.wire.bridge).map((p) => p.mtu)) };
}

/** The port whose segment a lab host is on: the one its `bridge:` names, else the one facing its namespace. */
export function labPortOf(config: RouterConfig, host: LabHostConfig): PortConfig {
  const port = host.bridge === undefined
    ? config.ports.find((p) => p.wire.namespace === host.namespace)
    : config.ports.find((p) => p.wire.namespace === host.bridge!.namespace && p.wire.bridge === host.bridge!.name);
  if (port === undefined) throw new ConfigError(config.file, 1, `lab namespace ${host.namespace} is on no port's segment`);
  return port;
}

/**
 * The device that carries a lab host's addresses: LAB_HOST_DEVICE when the host is plugged into a
 * bridge, else the wire device of the port facing its namespace (a TUN or bridgeless TAP leg).
 */
export function labDeviceOf(config: RouterConfig, host: LabHostConfig): string {
  return labSegmentOf(config, host) !== undefined ? LAB_HOST_DEVICE : labPortOf(config, host).wire.device;
}

/** Whether device `name` exists in `netns`. */
function linkExists(netns: string, name: string): boolean {
  try {
    ip(netns, "link", "show", "dev", name);
    return true;
  } catch {
    return false;
  }
}

/**
 * Creates the bridge in its namespace when missing and sets it up: STP off (as `ip link add type
 * bridge` makes it: a port forwards at once) and no multicast snooping, as OVS's br-int has by
 * default; snooping would also make the bridge device join 224.0.0.106 (all-snoopers, RFC 4286)
 * and send IGMP reports to every host on the segment. A bridge that exists is left as it is.
 */
export function ensureBridge(segment: Pick<BridgeSegment, "namespace" | "bridge">): void {
  if (!linkExists(segment.namespace, segment.bridge)) ip(segment.namespace, "link", "add", "name", segment.bridge, "type", "bridge", "mcast_snooping", "0");
  ip(segment.namespace, "link", "set", segment.bridge, "up");
}

/** `ip -j link show dev DEVICE` in `netns`: its link type (`ether`, `none` for a TUN device) and bridge. */
function linkOf(netns: string, device: string): { link_type?: string; master?: string } {
  const [link] = JSON.parse(ip(netns, "-j", "link", "show", "dev", device)) as Array<{ link_type?: string; master?: string }>;
  return link ?? {};
}

/**
 * The wire legs of the config's tap ports that exist but are no Ethernet device, as
 * `NS/DEV link/TYPE`: what a router without TAP legs leaves (it opens them as TUN devices).
 */
export function tapPortsWithoutTapLegs(config: RouterConfig): string[] {
  const found: string[] = [];
  for (const port of config.ports) {
    if (port.wire.mode !== "tap" || !linkExists(port.wire.namespace, port.wire.device)) continue;
    const type = linkOf(port.wire.namespace, port.wire.device).link_type;
    if (type !== "ether") found.push(`${port.wire.namespace}/${port.wire.device} link/${type ?? "?"}`);
  }
  return found;
}

/** A tap port's wire leg is not an Ethernet device (the router opened a TUN leg): it cannot join its bridge. */
export class WireLegNotEthernetError extends OperationalError {}

/**
 * Puts the wire device of every port with `wire.bridge` (of `ports`, default all) into that bridge,
 * creating the bridge when missing; idempotent. The device must exist: qnat's router creates its
 * TAP wire leg when it opens it, so the router calls this once its legs are open (and again for a
 * wire leg it re-created), `qnat lab up` before it plugs the hosts in, the kernel twin for its veths.
 */
export function joinWireBridges(config: RouterConfig, ports: readonly PortConfig[] = config.ports): void {
  for (const port of ports) {
    const bridge = port.wire.bridge;
    if (bridge === undefined) continue;
    const { namespace, device } = port.wire;
    ensureBridge({ namespace, bridge });
    // A bridge takes only Ethernet devices (br_add_if, net/bridge/br_if.c); a TUN leg is link/none.
    const link = linkOf(namespace, device);
    if (link.link_type !== "ether") {
      throw new WireLegNotEthernetError(
        `port ${port.name}: the wire device ${namespace}/${device} is link/${link.link_type ?? "unknown"}, not Ethernet, so it cannot join bridge ${bridge} (wire.mode: tap needs qnat's TAP legs)`,
      );
    }
    if (link.master !== bridge) ip(namespace, "link", "set", "dev", device, "master", bridge);
    ip(namespace, "link", "set", "dev", device, "up");
  }
}

/**
 * Plugs a lab host into its bridge with a veth pair, unless its end is there already: the bridge
 * end (labBridgeEndOf) in the bridge's namespace, the host end LAB_HOST_DEVICE in the host's
 * (the same namespace for the host of a wire namespace). Deleting either namespace deletes the pair.
 */
function plugLabHost(host: LabHostConfig, segment: BridgeSegment): void {
  ensureBridge(segment);
  const peer = labBridgeEndOf(host);
  if (!linkExists(host.namespace, LAB_HOST_DEVICE)) {
    if (linkExists(segment.namespace, peer)) ip(segment.namespace, "link", "del", "dev", peer);
    const mtu = String(segment.mtu);
    const elsewhere = host.namespace === segment.namespace ? [] : ["netns", host.namespace];
    ip(segment.namespace, "link", "add", peer, "mtu", mtu, "type", "veth", "peer", "name", LAB_HOST_DEVICE, "mtu", mtu, ...elsewhere);
  }
  ip(segment.namespace, "link", "set", "dev", peer, "master", segment.bridge);
  ip(segment.namespace, "link", "set", "dev", peer, "up");
  // A host in the bridge's own namespace: that kernel would also answer ARP for the host's
  // addresses through the bridge device (arp_ignore=0 answers for any local address), with the
  // bridge's MAC, and whichever reply comes last wins. NOARP on the bridge device makes arp_rcv
  // drop what reaches it (net/ipv4/arp.c), so only the host's own device answers.
  if (host.namespace === segment.namespace) ip(segment.namespace, "link", "set", "dev", segment.bridge, "arp", "off");
}

/**
 * Gives the lab's hosts their addresses and routes on their device (labDeviceOf: the wire device
 * while the router holds it open, or a veth into the port's bridge), loopback addresses on lo.
 * Idempotent (`replace`), so `lab up` re-applies it after a router restart, which re-creates the
 * wire devices without addresses.
 */
export function configureLabHosts(config: RouterConfig): void {
  for (const host of config.lab) {
    const segment = labSegmentOf(config, host);
    if (segment !== undefined) plugLabHost(host, segment);
    const device = labDeviceOf(config, host);
    const ns = host.namespace;
    ip(ns, "link", "set", "lo", "up");
    ip(ns, "link", "set", device, "up");
    for (const cidr of host.addresses) ip(ns, "addr", "replace", formatCidr(cidr), "brd", broadcastOf(cidr), "dev", device);
    for (const cidr of host.loopback) ip(ns, "addr", "replace", formatCidr(cidr), "dev", "lo");
    for (const route of host.routes) ip(ns, "route", "replace", ...route.trim().split(/\s+/));
  }
}

/** The namespaces of the config that exist now. */
export function existingNamespaces(config: RouterConfig): string[] {
  return namespacesOf(config).filter((name) => netnsExists(name));
}
