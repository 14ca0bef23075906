/**
 * The router's configuration file (YAML; contract in DESIGN.md, `examples/seed.yaml` is the
 * seed's router). Loading validates everything a user can get wrong and reports the first
 * problem as one line, `FILE:LINE: what is wrong` (a ConfigError), never a stack trace.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { readFile } from "node:fs/promises";
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node as YamlNode, type YAMLMap } from "yaml";
import { dirname, resolve } from "node:path";
import { type Cidr, formatCidr, parseCidr, parseIpv4 } from "../core/addr.js";
import { inPieces, type PieceOptions } from "../core/pieces.js";
import { MAX_CONNTRACK_CAPACITY } from "../conntrack/table.js";

/** Linux IFNAMSIZ is 16 including the terminating NUL (include/uapi/linux/if.h). */
export const MAX_INTERFACE_NAME = 15;

/** How a port's two legs carry packets: `tun` (IPv4 only, as before) or `tap` (Ethernet frames). */
export const WIRE_MODES = ["tun", "tap"] as const;
export type WireMode = (typeof WIRE_MODES)[number];

export interface WireConfig {
  readonly namespace: string;
  readonly device: string;
  /** `tun` unless the config says `tap`: both legs (wire and mirror) are then Ethernet devices. */
  readonly mode: WireMode;
  /** A Linux bridge in the wire namespace that the wire leg joins (tap only; created if missing). */
  readonly bridge?: string;
}

/**
 * Reverse-path filtering (Linux net.ipv4.conf.*.rp_filter): off (0), strict (1), loose (2).
 * The value Linux applies on a device is the larger of conf/all and conf/DEV (IN_DEV_MAXCONF).
 */
export const RP_FILTER_MODES = ["off", "strict", "loose"] as const;
export type RpFilterMode = (typeof RP_FILTER_MODES)[number];

/**
 * ARP behaviour of a tap port (Linux net.ipv4.conf.*.arp_ignore / arp_announce,
 * Documentation/networking/ip-sysctl.rst; net/ipv4/arp.c arp_ignore() and arp_solicit()). Linux
 * applies the larger of conf/all and conf/DEV to each (IN_DEV_MAXCONF), as for rp_filter.
 *   arp_ignore 0: answer for any local address (the router's, on any port);
 *              1: only for the incoming port's own addresses;
 *              2: as 1, and the sender must be on the subnet of one of the port's addresses;
 *              3: not for scope host addresses: qnat's addresses are all scope global, so as 0;
 *              8: answer no request at all.
 *   (4-7 are reserved: Linux answers as with 0; refused here so a config means what it says.)
 *   arp_announce 0: a request's sender address is the waiting packet's source if it is local;
 *                1: only if that address is on the target's subnet of this port;
 *                2: always the port's address on the target's subnet (inet_select_addr).
 */
export const ARP_IGNORE_VALUES = [0, 1, 2, 3, 8] as const;
export const ARP_ANNOUNCE_VALUES = [0, 1, 2] as const;

export interface PortConfig {
  readonly name: string;
  /** First address is the primary one (REDIRECT and ICMP errors use it). */
  readonly addresses: readonly Cidr[];
  readonly wire: WireConfig;
  readonly mtu: number;
  /**
   * The port's Ethernet address as `ip link` prints it (lower case, colon separated): the config's
   * `mac:`, or `defaultMacOf(name)`. Used by tap ports (their mirror carries it, ARP answers with it).
   */
  readonly mac: string;
  /** The port's own `rp_filter` (conf/DEV); "off" when not given, so the router-wide one applies. */
  readonly rpFilter: RpFilterMode;
  /** The port's own arp_ignore / arp_announce (conf/DEV), 0 when not given; tap ports only. */
  readonly arpIgnore: number;
  readonly arpAnnounce: number;
  readonly line: number;
}

export interface Located<T> {
  readonly value: T;
  readonly line: number;
  /** The file the line is in when it is not the config file (a `routes_file:`). */
  readonly file?: string;
}

export interface MetadataInstance {
  readonly fields: Readonly<Record<string, string>>;
}

export interface MetadataConfig {
  readonly port: number;
  /** Keyed by the instance's fixed IPv4 address (text). */
  readonly instances: ReadonlyMap<string, Readonly<Record<string, string>>>;
}

export interface LabHostConfig {
  readonly namespace: string;
  readonly addresses: readonly Cidr[];
  readonly routes: readonly string[];
  readonly loopback: readonly Cidr[];
  /**
   * A host in a namespace of its own, plugged into a port's bridge (lab `bridge: BRIDGE` or
   * `bridge: NAMESPACE/BRIDGE`): the wire namespace and the bridge there. Absent for a host in a
   * wire namespace, which uses that port (through its bridge when the port has one).
   */
  readonly bridge?: { readonly namespace: string; readonly name: string };
}

/**
 * The `conntrack:` block. `max`: the connection table's size (Linux sysctl
 * net.netfilter.nf_conntrack_max). Linux derives its default from the host's memory; qnat's is
 * 262144 entries (16 MiB of 64-byte records).
 */
export interface ConntrackConfig {
  readonly max: number;
  /** Linux nf_conntrack_tcp_be_liberal (default false). */
  readonly tcpBeLiberal: boolean;
  /** Drop INVALID packets (Linux: a filter rule `-m conntrack --ctstate INVALID -j DROP`); default false. */
  readonly dropInvalid: boolean;
}

export const DEFAULT_CONNTRACK_MAX = 262_144;

/**
 * `state: { file: PATH, interval: SECONDS }`: where the router keeps its connections across
 * restarts (src/control/state-file.ts), saved every `interval` seconds and when it stops.
 */
export interface StateConfig {
  /** Absolute (a relative path is taken from the config file's directory). */
  readonly file: string;
  readonly interval: number;
  readonly line: number;
}

export const DEFAULT_STATE_INTERVAL = 1;
/** The longest save interval accepted: a day. */
export const MAX_STATE_INTERVAL = 86_400;

/**
 * `metrics: { listen: ADDR:PORT }`: the Prometheus endpoint (control/metrics.ts), served by the
 * router process in the router namespace. Absent: no endpoint (the default).
 */
export interface MetricsConfig {
  /** An IPv4 address of the router namespace, or 0.0.0.0 for all of them. */
  readonly host: string;
  readonly port: number;
  readonly line: number;
}

/**
 * Linux's limit on a multi-queue TUN device's queues (drivers/net/tun.c MAX_TAP_QUEUES, 256):
 * each worker reads its own queue of every leg, so no router has more workers than that.
 */
export const MAX_WORKERS = 256;

/**
 * `workers: N|auto`: threads that forward (control/workers.ts), each reading queue i of every
 * leg; `auto` is one per core (os.availableParallelism()), at most MAX_WORKERS. Absent: 1, the
 * main thread alone, as before the key existed.
 */
export interface WorkersConfig {
  readonly count: number;
  /** Whether the config said `auto` (count is then this machine's cores). */
  readonly auto: boolean;
  readonly line: number;
}

/** The legs a capture takes (io/capture.ts CaptureLegs). */
export const CAPTURE_LEG_CHOICES = ["wire", "mirror", "both"] as const;

/**
 * `capture: { file: PATH, ports: [NAME...], leg: wire|mirror|both, count: N, rotate: SECONDS }`:
 * a pcapng capture the router writes from its start (docs/capture.md), as `qnat capture` does.
 */
export interface CaptureConfig {
  /** Absolute (a relative path is taken from the config file's directory); may hold strftime %-fields when `rotate` is set. */
  readonly file: string;
  /** Port names; all the router's ports when the config gives none. */
  readonly ports: readonly string[];
  readonly leg: (typeof CAPTURE_LEG_CHOICES)[number];
  /** Stop after this many packets (0: no limit). */
  readonly count: number;
  /** Start a new file every this many seconds (0: one file), as tcpdump -G. */
  readonly rotate: number;
  readonly line: number;
}

export interface RouterConfig {
  readonly file: string;
  readonly id: string;
  /** `qrouter-<id>` unless `router.namespace` says otherwise. */
  readonly namespace: string;
  readonly ports: readonly PortConfig[];
  readonly routes: readonly Located<string>[];
  /** iptables nat text; `firstLine` is the config line of its first line. */
  readonly nat: { readonly text: string; readonly firstLine: number; readonly file: string };
  readonly metadata: MetadataConfig | undefined;
  readonly lab: readonly LabHostConfig[];
  readonly conntrack: ConntrackConfig;
  /** Router-wide `rp_filter` (conf/all), default strict. */
  readonly rpFilter: RpFilterMode;
  /** Router-wide arp_ignore / arp_announce (conf/all), 0 unless the config says otherwise. */
  readonly arpIgnore: number;
  readonly arpAnnounce: number;
  /** Absent: connections are not kept across restarts. */
  readonly state?: StateConfig;
  /** Absent: no Prometheus endpoint. */
  readonly metrics?: MetricsConfig;
  /** Absent: the router captures nothing until `qnat capture` asks. */
  readonly capture?: CaptureConfig;
  /** Absent: one worker, the main thread (workersOf). */
  readonly workers?: WorkersConfig;
}

/** How many threads forward for `config` (1 unless it says `workers:`). */
export function workersOf(config: RouterConfig): number {
  return config.workers?.count ?? 1;
}

/**
 * `qnat run` with `QNAT_WORKERS=N|auto` in its environment: the workers of a config that has no
 * `workers:` line (its own line wins). Unset or empty: the config as it is. A value that is not
 * a whole number 1..MAX_WORKERS or `auto` is a ConfigError at the config's line 0.
 */
export function withWorkersFromEnvironment(config: RouterConfig, value: string | undefined): RouterConfig {
  if (value === undefined || value === "" || config.workers !== undefined) return config;
  if (value === "auto") return { ...config, workers: { count: Math.min(availableParallelism(), MAX_WORKERS), auto: true, line: 0 } };
  const count = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!(count >= 1 && count <= MAX_WORKERS)) throw new ConfigError(config.file, 0, `QNAT_WORKERS=${value}: give a whole number of threads 1..${MAX_WORKERS} or auto`);
  return { ...config, workers: { count, auto: false, line: 0 } };
}

/** The rp_filter Linux applies on a port: the larger of conf/all and conf/DEV (off < strict < loose). */
export function effectiveRpFilter(config: RouterConfig, port: PortConfig): RpFilterMode {
  return RP_FILTER_MODES[Math.max(RP_FILTER_MODES.indexOf(config.rpFilter), RP_FILTER_MODES.indexOf(port.rpFilter))]!;
}

/** The arp_ignore Linux applies on a port: the larger of conf/all and conf/DEV. */
export function effectiveArpIgnore(config: RouterConfig, port: PortConfig): number {
  return Math.max(config.arpIgnore, port.arpIgnore);
}

/** The arp_announce Linux applies on a port: the larger of conf/all and conf/DEV. */
export function effectiveArpAnnounce(config: RouterConfig, port: PortConfig): number {
  return Math.max(config.arpAnnounce, port.arpAnnounce);
}

/** A user's mistake in a config or rules file: printed as `FILE:LINE: message`. */
export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    readonly detail: string,
  ) {
    super(`${file}:${line}: ${detail}`);
    this.name = "ConfigError";
  }
}

const NAME_PATTERN = /^[A-Za-z0-9_.:-]+$/;
const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/**
 * A port's Ethernet address when the config gives none: Neutron's prefix fa:16:3e (its
 * base_mac) and three bytes of the SHA-256 of the port name, so a port keeps its MAC across
 * restarts and two ports of a router differ.
 */
export function defaultMacOf(portName: string): string {
  const digest = createHash("sha256").update(portName).digest();
  const tail = [digest[0]!, digest[1]!, digest[2]!].map((b) => b.toString(16).padStart(2, "0"));
  return ["fa", "16", "3e", ...tail].join(":");
}

/** The keys of the `conntrack:` block, one a line. */
const CONNTRACK_KEYS = [
  "max",
  "tcp_be_liberal",
  "drop_invalid",
];

export function loadConfig(path: string): RouterConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "error";
    throw new ConfigError(path, 0, `cannot read config (${code})`);
  }
  return parseConfig(text, path);
}

/**
 * The lines of a routes file: one `ip route add` line per line (an `ip route` dump works as it
 * is), `#` comments and blank lines skipped; each route keeps its file and line for errors. One
 * line per call of the returned step, which answers true once the file is done (parseConfig runs
 * the steps at once, parseConfigInPieces in pieces).
 */
function routeLineReader(bytes: Buffer, file: string, into: Located<string>[]): () => boolean {
  let next = 0; // the byte offset of the next chunk
  let chunk = ""; // whole lines, decoded ROUTES_CHUNK_BYTES at a time (a 40 MB file at once: 25-60 ms)
  let at = 0;
  let line = 0;
  return () => {
    if (at >= chunk.length) {
      if (next >= bytes.length) return true;
      const newline = bytes.indexOf(10, Math.min(bytes.length, next + ROUTES_CHUNK_BYTES));
      const end = newline < 0 ? bytes.length : newline + 1;
      chunk = bytes.toString("utf8", next, end);
      next = end;
      at = 0;
    }
    let end = chunk.indexOf("\n", at);
    if (end < 0) end = chunk.length;
    line++;
    const raw = chunk.slice(at, end);
    const hash = raw.indexOf("#");
    const value = (hash >= 0 ? raw.slice(0, hash) : raw).trim();
    if (value.length > 0) into.push({ value, line, file });
    at = end + 1;
    return false;
  };
}

/** Bytes of a routes file decoded at once (then cut at the next line's end). */
const ROUTES_CHUNK_BYTES = 1 << 16;

/**
 * parseConfig without holding the event loop for the routes file: the config is parsed as
 * parseConfig does, but a `routes_file:` is read asynchronously and split into its lines in pieces
 * of about a millisecond (core/pieces.ts), so a full Internet table's million lines (~0.2-0.5 s at
 * once) never stop the packet loop that shares the thread (`qnat apply`, SIGHUP). Same result and
 * errors as parseConfig.
 */
export async function parseConfigInPieces(text: string, file: string, options: PieceOptions = {}): Promise<RouterConfig> {
  let pending: { path: string; line: number; into: Located<string>[] } | undefined;
  const config = parseConfigWith(text, file, (path, line, into) => void (pending = { path, line, into }));
  if (pending === undefined) return config;
  const { path, line, into } = pending;
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch {
    throw new ConfigError(file, line, `cannot read routes file ${path}`);
  }
  await inPieces(routeLineReader(bytes, path, into), options);
  return config;
}

export function parseConfig(text: string, file: string): RouterConfig {
  return parseConfigWith(text, file, (path, line, into) => {
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
    } catch {
      throw new ConfigError(file, line, `cannot read routes file ${path}`);
    }
    const step = routeLineReader(bytes, path, into);
    while (!step());
  });
}

/** parseConfig, the `routes_file:` (its path and config line) read by `readRoutesFile` into `into`. */
function parseConfigWith(
  text: string,
  file: string,
  readRoutesFile: (path: string, line: number, into: Located<string>[]) => void,
): RouterConfig {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const lineOf = (node: YamlNode | null | undefined): number =>
    node?.range ? lines.linePos(node.range[0]).line : 1;
  const fail = (node: YamlNode | null | undefined, message: string): never => {
    throw new ConfigError(file, lineOf(node), message);
  };
  if (doc.errors.length > 0) {
    const first = doc.errors[0]!;
    const line = first.linePos?.[0]?.line ?? 1;
    throw new ConfigError(file, line, `invalid YAML: ${first.message.split("\n")[0]}`);
  }
  const root = doc.contents;
  if (!isMap(root)) fail(root, "the config must be a mapping with router, ports, routes and nat");
  const top = root as YAMLMap;
  const known = new Set(["router", "ports", "routes", "routes_file", "nat", "metadata", "lab", "conntrack", "rp_filter", "arp_ignore", "arp_announce", "state", "metrics", "capture", "workers"]);
  for (const pair of top.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : "";
    if (!known.has(key)) fail(pair.key as YamlNode, `unknown key "${key}" (expected one of ${[...known].join(", ")})`);
  }

  const get = (map: YAMLMap, key: string): YamlNode | undefined => map.get(key, true) as YamlNode | undefined;
  const str = (node: YamlNode | undefined, what: string, parent: YamlNode): string => {
    if (node === undefined) return fail(parent, `missing ${what}`);
    if (!isScalar(node) || (typeof node.value !== "string" && typeof node.value !== "number"))
      return fail(node, `${what} must be a string`);
    return String(node.value);
  };
  const cidrList = (node: YamlNode | undefined, what: string, parent: YamlNode, allowEmpty = false): Cidr[] => {
    if (node === undefined) {
      if (allowEmpty) return [];
      return fail(parent, `missing ${what}`);
    }
    if (!isSeq(node)) return fail(node, `${what} must be a list of A.B.C.D/N`);
    const out: Cidr[] = [];
    for (const item of node.items as YamlNode[]) {
      const text = str(item, what, node);
      const cidr = parseCidr(text);
      if (cidr === undefined) fail(item, `${what}: "${text}" is not an IPv4 address with prefix length`);
      out.push(cidr!);
    }
    if (!allowEmpty && out.length === 0) fail(node, `${what} must not be empty`);
    return out;
  };
  const interfaceName = (node: YamlNode | undefined, what: string, parent: YamlNode): string => {
    const name = str(node, what, parent);
    if (name.length > MAX_INTERFACE_NAME)
      fail(node, `${what} "${name}" is ${name.length} characters; Linux interface names have at most ${MAX_INTERFACE_NAME}`);
    if (!NAME_PATTERN.test(name) || name === "." || name === "..") fail(node, `${what} "${name}" is not a valid interface name`);
    return name;
  };
  const rpFilterOf = (node: YamlNode | undefined, what: string): RpFilterMode | undefined => {
    if (node === undefined) return undefined;
    const value = isScalar(node) ? String(node.value) : "";
    if (!(RP_FILTER_MODES as readonly string[]).includes(value)) fail(node, `${what} must be strict, loose or off`);
    return value as RpFilterMode;
  };

  /** arp_ignore / arp_announce values (see ARP_IGNORE_VALUES): an integer Linux has and a router port can use. */
  const arpSettingOf = (node: YamlNode | undefined, what: string, key: "arp_ignore" | "arp_announce"): number | undefined => {
    if (node === undefined) return undefined;
    const value = isScalar(node) && typeof node.value === "number" && Number.isInteger(node.value) ? node.value : NaN;
    if (key === "arp_ignore") {
      if (value >= 4 && value <= 7) fail(node, `${what} ${value} is reserved in Linux (it answers as 0 there); use 0, 1, 2, 3 or 8`);
      if (!(ARP_IGNORE_VALUES as readonly number[]).includes(value)) fail(node, `${what} must be 0, 1, 2, 3 or 8 (Linux's arp_ignore values)`);
    } else if (!(ARP_ANNOUNCE_VALUES as readonly number[]).includes(value)) {
      fail(node, `${what} must be 0, 1 or 2 (Linux's arp_announce values)`);
    }
    return value;
  };
  const arpIgnoreNode = get(top, "arp_ignore");
  const arpIgnore = arpSettingOf(arpIgnoreNode, "arp_ignore", "arp_ignore") ?? 0;
  const arpAnnounceNode = get(top, "arp_announce");
  const arpAnnounce = arpSettingOf(arpAnnounceNode, "arp_announce", "arp_announce") ?? 0;

  // rp_filter (router-wide, Linux conf/all): strict unless the config says otherwise.
  const rpFilterNode = get(top, "rp_filter");
  const rpFilter = rpFilterOf(rpFilterNode, "rp_filter") ?? "strict";

  // router
  const routerNode = get(top, "router");
  if (!isMap(routerNode)) return fail(routerNode ?? root, "missing router: { id: ... }");
  const id = str(get(routerNode, "id"), "router.id", routerNode);
  if (!NAME_PATTERN.test(id)) fail(get(routerNode, "id"), `router.id "${id}" may only contain letters, digits, '-', '_', '.'`);
  const nsNode = get(routerNode, "namespace");
  const namespace = nsNode === undefined ? `qrouter-${id}` : str(nsNode, "router.namespace", routerNode);
  if (!NAME_PATTERN.test(namespace)) fail(nsNode ?? routerNode, `namespace "${namespace}" is not a valid name`);

  // ports
  const portsNode = get(top, "ports");
  if (!isSeq(portsNode) || portsNode.items.length === 0) return fail(portsNode ?? root, "ports must be a non-empty list");
  const ports: PortConfig[] = [];
  const seenAddresses = new Map<number, string>();
  for (const item of portsNode.items as YamlNode[]) {
    if (!isMap(item)) fail(item, "each port must be a mapping with name, addresses and wire");
    const port = item as YAMLMap;
    for (const pair of port.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : "";
      if (!["name", "addresses", "wire", "mtu", "mac", "rp_filter", "arp_ignore", "arp_announce"].includes(key)) fail(pair.key as YamlNode, `unknown port key "${key}"`);
    }
    const name = interfaceName(get(port, "name"), "port name", port);
    if (ports.some((p) => p.name === name)) fail(get(port, "name"), `port "${name}" is defined twice`);
    const addresses = cidrList(get(port, "addresses"), `port ${name} addresses`, port);
    for (const [i, cidr] of addresses.entries()) {
      const owner = seenAddresses.get(cidr.addr);
      if (owner !== undefined) fail((get(port, "addresses") as unknown as { items: YamlNode[] }).items[i], `address ${formatCidr(cidr)} is already on port ${owner}`);
      seenAddresses.set(cidr.addr, name);
    }
    const wireNode = get(port, "wire");
    if (!isMap(wireNode)) return fail(wireNode ?? port, `port ${name}: missing wire: { namespace: NS, device: DEV }`);
    const wireNamespace = str(get(wireNode, "namespace"), `port ${name} wire.namespace`, wireNode);
    if (!NAME_PATTERN.test(wireNamespace)) fail(get(wireNode, "namespace"), `wire namespace "${wireNamespace}" is not a valid name`);
    if (wireNamespace === namespace) fail(get(wireNode, "namespace"), `port ${name}: the wire leg must be in another namespace than the router's`);
    for (const pair of (wireNode as YAMLMap).items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : "";
      if (!["namespace", "device", "mode", "bridge"].includes(key)) fail(pair.key as YamlNode, `unknown wire key "${key}" (expected namespace, device, mode, bridge)`);
    }
    const device = interfaceName(get(wireNode, "device"), `port ${name} wire.device`, wireNode);
    const modeNode = get(wireNode, "mode");
    const mode = modeNode === undefined ? "tun" : str(modeNode, `port ${name} wire.mode`, wireNode);
    if (!(WIRE_MODES as readonly string[]).includes(mode)) fail(modeNode, `port ${name}: wire.mode must be tun or tap, not "${mode}"`);
    const bridgeNode = get(wireNode, "bridge");
    let bridge: string | undefined;
    if (bridgeNode !== undefined) {
      bridge = interfaceName(bridgeNode, `port ${name} wire.bridge`, wireNode);
      // A bridge forwards Ethernet frames; a TUN device has none (Linux refuses to enslave it).
      if (mode !== "tap") fail(bridgeNode, `port ${name}: wire.bridge needs wire.mode: tap (a TUN device carries no Ethernet frames)`);
      if (bridge === device) fail(bridgeNode, `port ${name}: wire.bridge ${bridge} is the wire device itself`);
      if (LAB_DEVICE_PATTERN.test(bridge)) fail(bridgeNode, `port ${name}: wire.bridge ${bridge} is a name qnat lab up gives a lab host's veth`);
      if (LAB_DEVICE_PATTERN.test(device)) fail(get(wireNode, "device"), `port ${name}: wire.device ${device} is a name qnat lab up gives a lab host's veth on a bridge`);
    }
    const macNode = get(port, "mac");
    let mac = defaultMacOf(name);
    if (macNode !== undefined) {
      const text = str(macNode, `port ${name} mac`, port).toLowerCase();
      if (!MAC_PATTERN.test(text)) fail(macNode, `port ${name}: mac "${text}" is not an Ethernet address like fa:16:3e:5d:18:10`);
      // The group bit (I/G, the low bit of the first byte) marks multicast; a port needs a unicast address.
      if ((parseInt(text.slice(0, 2), 16) & 1) === 1) fail(macNode, `port ${name}: mac ${text} is a multicast address`);
      if (text === "00:00:00:00:00:00") fail(macNode, `port ${name}: mac ${text} is not a usable address`);
      if (mode !== "tap") fail(macNode, `port ${name}: mac needs wire.mode: tap (a TUN port has no Ethernet address)`);
      mac = text;
    }
    const mtuNode = get(port, "mtu");
    let mtu = 1500;
    if (mtuNode !== undefined) {
      if (!isScalar(mtuNode) || typeof mtuNode.value !== "number" || !Number.isInteger(mtuNode.value))
        fail(mtuNode, "mtu must be an integer");
      mtu = (mtuNode as { value: number }).value;
      // IPv4 needs 68 (RFC 791); qnat's packet slots hold at most 65535.
      if (mtu < 68 || mtu > 65535) fail(mtuNode, `mtu ${mtu} is outside 68..65535`);
    }
    const portRpNode = get(port, "rp_filter");
    const portRpFilter = rpFilterOf(portRpNode, `port ${name} rp_filter`) ?? "off";
    // Linux applies max(conf/all, conf/DEV): a port value below the router-wide one does nothing.
    if (portRpNode !== undefined && RP_FILTER_MODES.indexOf(portRpFilter) < RP_FILTER_MODES.indexOf(rpFilter)) {
      fail(
        portRpNode,
        `port ${name} rp_filter ${portRpFilter} has no effect under the router-wide rp_filter ${rpFilter}: ` +
          `a port gets the larger of the two (off < strict < loose), as Linux's conf/all and conf/${name}`,
      );
    }
    // arp_ignore / arp_announce (conf/DEV): ARP is a tap port's; max(conf/all, conf/DEV) applies.
    const arpSettings = { arp_ignore: arpIgnore, arp_announce: arpAnnounce };
    const portArp = (key: "arp_ignore" | "arp_announce"): number => {
      const node = get(port, key);
      const value = arpSettingOf(node, `port ${name} ${key}`, key);
      if (value === undefined) return 0;
      if (mode !== "tap") fail(node, `port ${name}: ${key} needs wire.mode: tap (a TUN port has no ARP)`);
      if (value < arpSettings[key]) {
        fail(node, `port ${name} ${key} ${value} has no effect under the router-wide ${key} ${arpSettings[key]}: a port gets the larger of the two, as Linux's conf/all and conf/${name}`);
      }
      return value;
    };
    const portArpIgnore = portArp("arp_ignore");
    const portArpAnnounce = portArp("arp_announce");
    ports.push({
      name, addresses, wire: { namespace: wireNamespace, device, mode: mode as WireMode, ...(bridge === undefined ? {} : { bridge }) }, mtu, mac,
      rpFilter: portRpFilter, arpIgnore: portArpIgnore, arpAnnounce: portArpAnnounce, line: lineOf(item),
    });
  }
  // A router-wide ARP setting applies to tap ports only: without one it would silently do nothing.
  for (const [key, node] of [["arp_ignore", arpIgnoreNode], ["arp_announce", arpAnnounceNode]] as const) {
    if (node !== undefined && !ports.some((p) => p.wire.mode === "tap")) fail(node, `${key} needs a port with wire.mode: tap (TUN ports have no ARP)`);
  }
  const wires = new Set<string>();
  for (const port of ports) {
    const key = `${port.wire.namespace}/${port.wire.device}`;
    if (wires.has(key)) throw new ConfigError(file, port.line, `port ${port.name}: wire ${key} is used by another port`);
    wires.add(key);
  }

  // routes
  const routesNode = get(top, "routes");
  const routes: Located<string>[] = [];
  if (routesNode !== undefined) {
    if (!isSeq(routesNode)) fail(routesNode, "routes must be a list of `ip route add` lines");
    for (const item of (routesNode as { items: YamlNode[] }).items) routes.push({ value: str(item, "route", routesNode!), line: lineOf(item) });
  }
  // routes_file: a full table's `ip route` lines, after the `routes:` lines (see docs/config.md).
  const routesFileNode = get(top, "routes_file");
  if (routesFileNode !== undefined) {
    readRoutesFile(resolve(dirname(file), str(routesFileNode, "routes_file", top)), lineOf(routesFileNode), routes);
  }

  // nat
  const natNode = get(top, "nat");
  let nat = { text: "", firstLine: 1, file };
  if (natNode !== undefined) {
    if (isScalar(natNode) && typeof natNode.value === "string") {
      const start = lineOf(natNode);
      const block = natNode.type === "BLOCK_LITERAL" || natNode.type === "BLOCK_FOLDED";
      nat = { text: natNode.value, firstLine: block ? start + 1 : start, file };
    } else if (isMap(natNode) && get(natNode, "file") !== undefined) {
      const rel = str(get(natNode, "file"), "nat.file", natNode);
      const path = resolve(dirname(file), rel);
      try {
        nat = { text: readFileSync(path, "utf8"), firstLine: 1, file: path };
      } catch {
        fail(get(natNode, "file"), `cannot read nat rules file ${path}`);
      }
    } else fail(natNode, "nat must be iptables text (`nat: |`) or { file: PATH }");
  }

  // metadata
  const metaNode = get(top, "metadata");
  let metadata: MetadataConfig | undefined;
  if (metaNode !== undefined) {
    if (!isMap(metaNode)) return fail(metaNode, "metadata must be a mapping with port and instances");
    const portNode = get(metaNode, "port");
    const port = portNode === undefined ? 9697 : Number(str(portNode, "metadata.port", metaNode));
    if (!Number.isInteger(port) || port < 1 || port > 65535) fail(portNode, "metadata.port must be 1..65535");
    const instances = new Map<string, Record<string, string>>();
    const instNode = get(metaNode, "instances");
    if (instNode !== undefined) {
      if (!isMap(instNode)) fail(instNode, "metadata.instances must map fixed IPs to { instance-id, hostname }");
      for (const pair of (instNode as YAMLMap).items) {
        const addrText = isScalar(pair.key) ? String(pair.key.value) : "";
        if (parseIpv4(addrText) < 0) fail(pair.key as YamlNode, `metadata instance key "${addrText}" is not an IPv4 address`);
        if (!isMap(pair.value)) fail((pair.value ?? pair.key) as YamlNode, `metadata for ${addrText} must be a mapping`);
        const fields: Record<string, string> = {};
        for (const field of (pair.value as YAMLMap).items) {
          const k = isScalar(field.key) ? String(field.key.value) : "";
          fields[k] = str(field.value as YamlNode, `metadata ${addrText} ${k}`, pair.value as YamlNode);
        }
        if (fields["instance-id"] === undefined) fail(pair.value as YamlNode, `metadata for ${addrText} needs an instance-id`);
        instances.set(addrText, fields);
      }
    }
    metadata = { port, instances };
  }

  // lab
  const lab: LabHostConfig[] = [];
  const labNode = get(top, "lab");
  if (labNode !== undefined) {
    if (!isMap(labNode)) fail(labNode, "lab must map namespace names to { addresses, routes, loopback, bridge }");
    for (const pair of (labNode as YAMLMap).items) {
      const ns = isScalar(pair.key) ? String(pair.key.value) : "";
      if (!NAME_PATTERN.test(ns)) fail(pair.key as YamlNode, `lab namespace "${ns}" is not a valid name`);
      if (ns === namespace) fail(pair.key as YamlNode, `lab namespace "${ns}" is the router's namespace`);
      const host = pair.value as YamlNode;
      if (!isMap(host)) fail(host ?? (pair.key as YamlNode), `lab ${ns} must be a mapping`);
      for (const field of (host as YAMLMap).items) {
        const k = isScalar(field.key) ? String(field.key.value) : "";
        if (!["addresses", "routes", "loopback", "bridge"].includes(k)) fail(field.key as YamlNode, `unknown lab key "${k}"`);
      }
      const bridge = labBridgeOf(get(host as YAMLMap, "bridge"), ns, pair.key as YamlNode, ports, fail);
      const hostRoutes: string[] = [];
      const r = get(host as YAMLMap, "routes");
      if (r !== undefined) {
        if (!isSeq(r)) fail(r, "lab routes must be a list");
        for (const item of (r as { items: YamlNode[] }).items) hostRoutes.push(str(item, "lab route", r!));
      }
      lab.push({
        namespace: ns,
        addresses: cidrList(get(host as YAMLMap, "addresses"), `lab ${ns} addresses`, host),
        routes: hostRoutes,
        loopback: cidrList(get(host as YAMLMap, "loopback"), `lab ${ns} loopback`, host, true),
        ...(bridge === undefined ? {} : { bridge }),
      });
    }
  }
  // conntrack
  const conntrackNode = get(top, "conntrack");
  let conntrackMax = DEFAULT_CONNTRACK_MAX;
  let tcpBeLiberal = false;
  let dropInvalid = false;
  const conntrackFlag = (block: YAMLMap, key: string): boolean | undefined => {
    const node = get(block, key);
    if (node === undefined) return undefined;
    if (!isScalar(node) || typeof node.value !== "boolean") return fail(node, `conntrack.${key} must be true or false`);
    return node.value;
  };
  if (conntrackNode !== undefined) {
    if (!isMap(conntrackNode)) return fail(conntrackNode, "conntrack must be a mapping, e.g. { max: 65536 }");
    for (const pair of conntrackNode.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : "";
      if (!CONNTRACK_KEYS.includes(key)) fail(pair.key as YamlNode, `unknown conntrack key "${key}"`);
    }
    const maxNode = get(conntrackNode, "max");
    if (maxNode !== undefined) {
      if (!isScalar(maxNode) || typeof maxNode.value !== "number" || !Number.isInteger(maxNode.value))
        fail(maxNode, "conntrack.max must be a whole number of entries");
      conntrackMax = (maxNode as { value: number }).value;
      if (conntrackMax < 1 || conntrackMax > MAX_CONNTRACK_CAPACITY)
        fail(maxNode, `conntrack.max ${conntrackMax} is outside 1..${MAX_CONNTRACK_CAPACITY}`);
    }
    tcpBeLiberal = conntrackFlag(conntrackNode, "tcp_be_liberal") ?? false;
    dropInvalid = conntrackFlag(conntrackNode, "drop_invalid") ?? false;
  }
  const state = parseStateConfig(get(top, "state"), file, fail, lineOf);
  const metrics = parseMetricsConfig(get(top, "metrics"), fail, lineOf);
  const capture = parseCaptureConfig(get(top, "capture"), file, ports, fail, lineOf);
  const workersNode = get(top, "workers");
  const workers = parseWorkersConfig(workersNode, fail, lineOf);
  return {
    file, id, namespace, ports, routes, nat, metadata, lab, conntrack: { max: conntrackMax, tcpBeLiberal, dropInvalid }, rpFilter, arpIgnore, arpAnnounce,
    ...(state ? { state } : {}),
    ...(metrics ? { metrics } : {}),
    ...(capture ? { capture } : {}),
    ...(workers ? { workers } : {}),
  };
}

/** `workers: N|auto`: a whole number 1..MAX_WORKERS, or `auto` (one per core, at most MAX_WORKERS). */
function parseWorkersConfig(
  node: YamlNode | undefined,
  fail: (node: YamlNode | null | undefined, message: string) => never,
  lineOf: (node: YamlNode) => number,
): WorkersConfig | undefined {
  if (node === undefined) return undefined;
  const value = isScalar(node) ? node.value : undefined;
  if (value === "auto") return { count: Math.min(availableParallelism(), MAX_WORKERS), auto: true, line: lineOf(node) };
  if (typeof value !== "number" || !Number.isInteger(value)) return fail(node, `workers must be a whole number of threads or auto, not ${describeScalar(node)}`);
  if (value < 1 || value > MAX_WORKERS) fail(node, `workers ${value} is outside 1..${MAX_WORKERS} (a TUN device has at most ${MAX_WORKERS} queues)`);
  return { count: value, auto: false, line: lineOf(node) };
}

/** A YAML value as a user wrote it, for an error line. */
function describeScalar(node: YamlNode): string {
  if (!isScalar(node)) return isMap(node) ? "a mapping" : isSeq(node) ? "a list" : "that";
  return typeof node.value === "string" ? `"${node.value}"` : String(node.value);
}

/** The `capture:` mapping: `file` (required), `ports`, `leg`, `count`, `rotate`. */
function parseCaptureConfig(
  node: YamlNode | undefined,
  configFile: string,
  ports: readonly PortConfig[],
  fail: (node: YamlNode | null | undefined, message: string) => never,
  lineOf: (node: YamlNode) => number,
): CaptureConfig | undefined {
  if (node === undefined) return undefined;
  if (!isMap(node)) return fail(node, "capture must be a mapping, e.g. { file: /var/tmp/qnat.pcapng, ports: [qg-e76de35e-90], leg: wire }");
  const keys = ["file", "ports", "leg", "count", "rotate"];
  for (const pair of node.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : "";
    if (!keys.includes(key)) fail(pair.key as YamlNode, `unknown capture key "${key}" (expected ${keys.join(", ")})`);
  }
  const fileNode = node.get("file", true) as YamlNode | undefined;
  if (fileNode === undefined) return fail(node, "capture needs a file: PATH");
  if (!isScalar(fileNode) || typeof fileNode.value !== "string" || fileNode.value.trim() === "") return fail(fileNode, "capture.file must be a path");
  const path = fileNode.value;
  if (path.endsWith("/")) fail(fileNode, `capture.file "${path}" must name a file, not a directory`);
  const portsNode = node.get("ports", true) as YamlNode | undefined;
  let names = ports.map((p) => p.name);
  if (portsNode !== undefined) {
    if (!isSeq(portsNode) || portsNode.items.length === 0) fail(portsNode, "capture.ports must be a list of port names, e.g. [qr-694450d6-f6, qg-e76de35e-90]");
    names = [];
    for (const item of (portsNode as { items: YamlNode[] }).items) {
      if (!isScalar(item) || typeof item.value !== "string") fail(item, "capture.ports must be a list of port names");
      const name = (item as { value: string }).value;
      if (!ports.some((p) => p.name === name)) fail(item, `capture.ports: no port ${name} in this config`);
      if (names.includes(name)) fail(item, `capture.ports: ${name} is listed twice`);
      names.push(name);
    }
  }
  const legNode = node.get("leg", true) as YamlNode | undefined;
  const leg = legNode === undefined ? "wire" : String(isScalar(legNode) ? legNode.value : "");
  if (!(CAPTURE_LEG_CHOICES as readonly string[]).includes(leg)) fail(legNode, `capture.leg must be wire, mirror or both, not "${leg}"`);
  const whole = (key: string, max: number): number => {
    const valueNode = node.get(key, true) as YamlNode | undefined;
    if (valueNode === undefined) return 0;
    if (!isScalar(valueNode) || typeof valueNode.value !== "number" || !Number.isInteger(valueNode.value) || valueNode.value < 0 || valueNode.value > max)
      fail(valueNode, `capture.${key} must be a whole number in 0..${max}`);
    return (valueNode as { value: number }).value;
  };
  const count = whole("count", 2 ** 32);
  const rotate = whole("rotate", MAX_STATE_INTERVAL);
  return { file: resolve(dirname(configFile), path), ports: names, leg: leg as CaptureConfig["leg"], count, rotate, line: lineOf(fileNode) };
}

/** The names `qnat lab up` gives a lab host's veth pair on a bridge (host-setup.ts): not for ports' devices. */
export const LAB_DEVICE_PATTERN = /^lab(0|-[0-9a-f]{8})$/;

/**
 * A lab entry's `bridge:`, for a host in a namespace of its own: `NAMESPACE/BRIDGE`, or `BRIDGE`
 * when one wire namespace alone has a bridge of that name. A host in a wire namespace has none:
 * it is on that port's segment already (plugged into its bridge when the port has one).
 */
function labBridgeOf(
  node: YamlNode | undefined,
  ns: string,
  keyNode: YamlNode,
  ports: readonly PortConfig[],
  fail: (node: YamlNode | null | undefined, message: string) => never,
): LabHostConfig["bridge"] {
  const wirePort = ports.find((p) => p.wire.namespace === ns);
  if (node === undefined) {
    if (wirePort !== undefined) return undefined;
    return fail(keyNode, `lab namespace "${ns}" is not the wire namespace of any port (a host of its own namespace needs bridge: BRIDGE of a tap port)`);
  }
  if (wirePort !== undefined) {
    return fail(node, `lab ${ns}: bridge is for a host in a namespace of its own; ${ns} is the wire namespace of port ${wirePort.name}`);
  }
  const text = isScalar(node) ? String(node.value) : "";
  const slash = text.indexOf("/");
  const [wantNs, wantBridge] = slash < 0 ? [undefined, text] : [text.slice(0, slash), text.slice(slash + 1)];
  const bridged = ports.filter((p) => p.wire.bridge === wantBridge && (wantNs === undefined || p.wire.namespace === wantNs));
  const namespaces = [...new Set(bridged.map((p) => p.wire.namespace))];
  if (namespaces.length === 0) {
    const known = ports.filter((p) => p.wire.bridge !== undefined).map((p) => `${p.wire.namespace}/${p.wire.bridge}`);
    return fail(node, `lab ${ns}: bridge "${text}" is not the wire.bridge of any port (${known.length > 0 ? `bridges: ${known.join(", ")}` : "no port has wire.bridge"})`);
  }
  if (namespaces.length > 1) {
    return fail(node, `lab ${ns}: bridge "${text}" is in several wire namespaces (${namespaces.join(", ")}); write NAMESPACE/${wantBridge}`);
  }
  return { namespace: namespaces[0]!, name: wantBridge };
}

/** The `state:` mapping: `file` (required) and `interval` (seconds, default 1). */
function parseStateConfig(
  node: YamlNode | undefined,
  configFile: string,
  fail: (node: YamlNode | null | undefined, message: string) => never,
  lineOf: (node: YamlNode) => number,
): StateConfig | undefined {
  if (node === undefined) return undefined;
  if (!isMap(node)) return fail(node, "state must be a mapping, e.g. { file: /var/lib/qnat/router.state, interval: 1 }");
  for (const pair of node.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : "";
    if (key !== "file" && key !== "interval") fail(pair.key as YamlNode, `unknown state key "${key}" (expected file, interval)`);
  }
  const fileNode = node.get("file", true) as YamlNode | undefined;
  if (fileNode === undefined) return fail(node, "state needs a file: PATH");
  if (!isScalar(fileNode) || typeof fileNode.value !== "string" || fileNode.value.trim() === "") return fail(fileNode, "state.file must be a path");
  const path = fileNode.value;
  if (path.endsWith("/")) fail(fileNode, `state.file "${path}" must name a file, not a directory`);
  const intervalNode = node.get("interval", true) as YamlNode | undefined;
  let interval = DEFAULT_STATE_INTERVAL;
  if (intervalNode !== undefined) {
    if (!isScalar(intervalNode) || typeof intervalNode.value !== "number" || !Number.isFinite(intervalNode.value))
      fail(intervalNode, "state.interval must be a number of seconds");
    interval = (intervalNode as { value: number }).value;
    if (!(interval >= 0.1 && interval <= MAX_STATE_INTERVAL)) fail(intervalNode, `state.interval ${interval} is outside 0.1..${MAX_STATE_INTERVAL} seconds`);
  }
  return { file: resolve(dirname(configFile), path), interval, line: lineOf(fileNode) };
}

/** The `metrics:` mapping: `listen: ADDR:PORT`, an IPv4 address (0.0.0.0: all) and a TCP port. */
function parseMetricsConfig(
  node: YamlNode | undefined,
  fail: (node: YamlNode | null | undefined, message: string) => never,
  lineOf: (node: YamlNode) => number,
): MetricsConfig | undefined {
  if (node === undefined) return undefined;
  if (!isMap(node)) return fail(node, "metrics must be a mapping, e.g. { listen: 0.0.0.0:9100 }");
  for (const pair of node.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : "";
    if (key !== "listen") fail(pair.key as YamlNode, `unknown metrics key "${key}" (expected listen)`);
  }
  const listenNode = node.get("listen", true) as YamlNode | undefined;
  if (listenNode === undefined) return fail(node, "metrics needs listen: ADDR:PORT, e.g. 0.0.0.0:9100");
  if (!isScalar(listenNode) || typeof listenNode.value !== "string") return fail(listenNode, "metrics.listen must be ADDR:PORT, e.g. 0.0.0.0:9100");
  const text = listenNode.value.trim();
  const colon = text.lastIndexOf(":");
  if (colon < 0) return fail(listenNode, `metrics.listen "${text}" needs a port: ADDR:PORT, e.g. 0.0.0.0:9100`);
  const host = text.slice(0, colon);
  const portText = text.slice(colon + 1);
  if (parseIpv4(host) < 0) return fail(listenNode, `metrics.listen "${text}": "${host}" is not an IPv4 address`);
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= 1 && port <= 65535)) return fail(listenNode, `metrics.listen "${text}": port "${portText}" is not 1..65535`);
  return { host, port, line: lineOf(listenNode) };
}
