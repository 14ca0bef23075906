/**
 * The kernel twin of a qnat config: the same router built from Linux itself, to compare qnat
 * against (`test/conformance/`, `npm run conformance`) or to benchmark the kernel's NAT on the
 * same topology (`bench:e2e`).
 *
 * What it builds, for a config (docs/conformance.md has the picture):
 *   - the router namespace and every wire namespace, IPv6 off, `lo` up;
 *   - per port a veth pair created inside the namespaces (never in the host's): the router end
 *     named as the port (`qr-694450d6-f6`) with the port's addresses and MTU, the peer named as
 *     the port's wire device (`eth0`) in its wire namespace, same MTU;
 *   - in the router namespace `net.ipv4.ip_forward=1`, the config's routes, and the config's nat
 *     rules loaded verbatim with `iptables-restore` (so `iptables -t nat -S` prints them back),
 *     `send_redirects=0` (qnat never sends ICMP redirects; docs/differences.md), and the config's
 *     `rp_filter`: router-wide as `conf.all.rp_filter`, per port as `conf.<port>.rp_filter` (Linux
 *     applies the larger of the two, as qnat does);
 *   - tap ports (`wire.mode: tap`): the router end of the veth carries the port's MAC (`mac:`), and
 *     with `wire.bridge` the wire end joins that Linux bridge in the wire namespace, as qnat's TAP
 *     leg does (host-setup.ts joinWireBridges): the same Ethernet segment, where the kernel's ARP
 *     and neighbour table answer and resolve (a TUN config's twin is veths too, without those);
 *   - the lab hosts (`lab:`), as `qnat lab up` configures them (host-setup.ts configureLabHosts):
 *     on a bridged port each host is a veth into the bridge;
 *   - when the config has `metadata:`, qnat's own metadata proxy (metadata.ts) listening on its
 *     port in the router namespace, so the REDIRECT to 9697 has the same server behind it, and
 *     Neutron's rules that keep that port private (metadataFilterText).
 *
 * Namespace names: the twin and qnat's lab of the same config must be able to exist side by side,
 * so callers rename every namespace with `retagConfigText` (X -> X-<tag>, the router's too) and
 * give the twin and qnat different tags. Everything the twin made goes with `destroy()`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { isMap, isScalar, isSeq, parseDocument, type YAMLMap } from "yaml";
import { formatCidr, prefixMask, formatIpv4, type Cidr } from "../core/addr.js";
import { parseConfig, type RouterConfig } from "../config/config.js";
import { deleteNetns, ensureNetns, ip, isRoot, netnsExec, netnsExists } from "../io/netns.js";
import { rpFilterValue } from "../dataplane/reverse-path.js";
import { configureLabHosts, floatingIpsOf, joinWireBridges, namespacesOf, parseConfigRules, setSysctls } from "./host-setup.js";

/** `X` -> `X-<tag>`: the namespace names of a tagged copy of a config. */
export function tagNamespace(name: string, tag: string): string {
  return `${name}-${tag}`;
}

/** A short random tag for namespace names (`qnt` + 6 hex digits), unique per run. */
export function randomTag(prefix = "qnt"): string {
  return `${prefix}${Math.floor(Math.random() * 0x1000000).toString(16).padStart(6, "0")}`;
}

/**
 * The config text with every namespace renamed by `rename` (default: X -> X-<tag>): the
 * router's (`router.namespace` is set, from `qrouter-<id>` when absent), each port's wire
 * namespace, and the `lab:` keys. A `nat: { file: }` path becomes absolute, so the copy may be
 * written anywhere. Device names stay: they live inside the namespaces.
 */
export function retagConfigText(text: string, file: string, tag: string, rename = (name: string) => tagNamespace(name, tag)): string {
  const original = parseConfig(text, file);
  const doc = parseDocument(text);
  const router = doc.get("router", true) as YAMLMap;
  router.set("namespace", rename(original.namespace));
  const ports = doc.get("ports", true);
  if (isSeq(ports)) {
    for (const port of ports.items) {
      if (!isMap(port)) continue;
      const wire = port.get("wire", true);
      if (isMap(wire)) wire.set("namespace", rename(String(wire.get("namespace"))));
    }
  }
  const lab = doc.get("lab", true);
  if (isMap(lab)) {
    for (const pair of lab.items) {
      if (isScalar(pair.key)) pair.key.value = rename(String(pair.key.value));
      // `bridge: NAMESPACE/BRIDGE` names a wire namespace too.
      const bridge = isMap(pair.value) ? pair.value.get("bridge") : undefined;
      if (typeof bridge === "string" && bridge.includes("/")) {
        const slash = bridge.indexOf("/");
        (pair.value as YAMLMap).set("bridge", `${rename(bridge.slice(0, slash))}${bridge.slice(slash)}`);
      }
    }
  }
  const nat = doc.get("nat", true);
  if (isMap(nat) && nat.get("file") !== undefined) nat.set("file", resolve(dirname(file), String(nat.get("file"))));
  return doc.toString();
}

/**
 * The Ethernet version of a config (the conformance harness's and bench:e2e's TAP mode): every
 * port `wire.mode: tap`, and on a Linux bridge in its wire namespace: the one it names, else
 * `br-ex` for the port of the default route and `br-int` for the others, as Neutron's bridges
 * (`br-int2`, `br-int3`... when one wire namespace faces several ports). MACs stay as the config
 * gives them (else each port's default, config.ts defaultMacOf); the lab hosts plug into the bridges.
 */
export function tapVariantText(text: string, file: string): string {
  const original = parseConfig(text, file);
  const gateway = /\bdev\s+(\S+)/.exec(original.routes.find((r) => /^default\b/.test(r.value.trim()))?.value ?? "")?.[1];
  const taken = new Map<string, Set<string>>();
  for (const port of original.ports) {
    if (port.wire.bridge !== undefined) taken.set(port.wire.namespace, (taken.get(port.wire.namespace) ?? new Set()).add(port.wire.bridge));
  }
  const doc = parseDocument(text);
  const ports = doc.get("ports", true);
  if (isSeq(ports)) {
    for (const [index, item] of ports.items.entries()) {
      const port = original.ports[index]!;
      const wire = isMap(item) ? item.get("wire", true) : undefined;
      if (!isMap(wire)) continue;
      wire.set("mode", "tap");
      if (port.wire.bridge !== undefined) continue;
      const names = taken.get(port.wire.namespace) ?? new Set<string>();
      const base = port.name === gateway ? "br-ex" : "br-int";
      let bridge = base;
      for (let n = 2; names.has(bridge); n++) bridge = `${base}${n}`;
      names.add(bridge);
      taken.set(port.wire.namespace, names);
      wire.set("bridge", bridge);
    }
  }
  return doc.toString();
}

/** Loads CONFIG and returns its text renamed by `retagConfigText`. */
export function retagConfigFile(path: string, tag: string): string {
  return retagConfigText(readFileSync(path, "utf8"), path, tag);
}

/**
 * The config's nat text as `iptables-restore` input. iptables-save text (`*nat` ... `COMMIT`) is
 * passed as it is; `iptables -t nat -S` text is wrapped: `-P CHAIN POLICY` becomes
 * `:CHAIN POLICY [0:0]`, `-N CHAIN` becomes `:CHAIN - [0:0]` (iptables-save's chain lines,
 * iptables/iptables-save.c), `-A` lines stay, inside `*nat` ... `COMMIT`.
 */
export function natRestoreText(natText: string): string {
  const lines = natText.split("\n").map((line) => line.trim());
  if (lines.some((line) => line === "*nat")) return lines.join("\n") + "\n";
  const chains: string[] = [];
  const rules: string[] = [];
  for (const line of lines) {
    if (line === "" || line.startsWith("#")) continue;
    const policy = /^-P\s+(\S+)\s+(\S+)$/.exec(line);
    const chain = /^-N\s+(\S+)$/.exec(line);
    if (policy) chains.push(`:${policy[1]} ${policy[2]} [0:0]`);
    else if (chain) chains.push(`:${chain[1]} - [0:0]`);
    else rules.push(line);
  }
  return ["*nat", ...chains, ...rules, "COMMIT", ""].join("\n");
}

/**
 * Neutron's L3 agent rules around the metadata proxy (neutron/agent/l3 and its metadata driver):
 * requests to 169.254.169.254:80 from a `qr-` port are marked in mangle PREROUTING (before the
 * nat REDIRECT), the filter INPUT accepts the mark and drops any other TCP to the proxy's port.
 * qnat does the same in its pipeline (DropReason.MetadataNotRedirected).
 */
export function metadataFilterText(port: number): string {
  return [
    "*mangle",
    "-A PREROUTING -d 169.254.169.254/32 -i qr-+ -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x1/0xffff",
    "COMMIT",
    "*filter",
    "-A INPUT -m mark --mark 0x1/0xffff -j ACCEPT",
    `-A INPUT -p tcp -m tcp --dport ${port} -j DROP`,
    "COMMIT",
    "",
  ].join("\n");
}

/** `conntrack.drop_invalid` as Linux needs it: the filter rules qnat applies at FORWARD and INPUT. */
const DROP_INVALID_TEXT = ["*filter", "-A FORWARD -m conntrack --ctstate INVALID -j DROP", "-A INPUT -m conntrack --ctstate INVALID -j DROP", "COMMIT", ""].join("\n");

function broadcastOf(cidr: Cidr): string {
  return formatIpv4((cidr.addr | ~prefixMask(cidr.prefixLength)) >>> 0);
}

export interface KernelTwinOptions {
  /** Start qnat's metadata proxy in the router namespace when the config has `metadata:` (default true). */
  readonly metadata?: boolean;
  /** Progress lines. */
  readonly log?: (line: string) => void;
}

export interface KernelTwin {
  readonly config: RouterConfig;
  /** The namespaces it created (router first). */
  readonly namespaces: readonly string[];
  /** Removes everything the twin made (processes in its namespaces, then the namespaces). Idempotent. */
  destroy(): void;
}

/** The compiled metadata module (the twin starts it in a child node process inside the router namespace). */
function metadataModulePath(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith(".js")) return join(dirname(here), "metadata.js");
  // Running from source (vitest): the package's compiled copy.
  return resolve(dirname(here), "../../dist/src/control/metadata.js");
}

const METADATA_CHILD = `
const [modulePath, port, instances, floating] = process.argv.slice(1);
import(modulePath).then((m) => m.startMetadataServer({
  port: Number(port),
  instances: new Map(Object.entries(JSON.parse(instances))),
  floatingIps: new Map(Object.entries(JSON.parse(floating))),
})).then(() => console.log("ready"), (e) => { console.error(String(e.message ?? e)); process.exit(1); });`;

function startMetadataChild(config: RouterConfig, limitMs = 10_000): Promise<ChildProcess> {
  const metadata = config.metadata!;
  const modulePath = metadataModulePath();
  if (!existsSync(modulePath)) return Promise.reject(new Error(`${modulePath} is missing: run npm run build`));
  const instances = Object.fromEntries(metadata.instances);
  const floating = Object.fromEntries(floatingIpsOf(parseConfigRules(config)));
  const child = spawn(
    "ip",
    ["netns", "exec", config.namespace, process.execPath, "-e", METADATA_CHILD, modulePath, String(metadata.port), JSON.stringify(instances), JSON.stringify(floating)],
    { stdio: ["ignore", "pipe", "pipe"], detached: false },
  );
  return new Promise((resolvePromise, reject) => {
    let stderr = "";
    const timer = setTimeout(() => reject(new Error(`the twin's metadata proxy did not start within ${limitMs} ms`)), limitMs);
    child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout!.once("data", () => {
      clearTimeout(timer);
      resolvePromise(child);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the twin's metadata proxy exited (${code}): ${stderr.trim()}`));
    });
  });
}

/** `ip netns pids NS`. */
function pidsIn(namespace: string): number[] {
  try {
    return ip(null, "netns", "pids", namespace)
      .split("\n")
      .map((line) => Number.parseInt(line.trim(), 10))
      .filter((pid) => Number.isInteger(pid) && pid > 0 && pid !== process.pid);
  } catch {
    return [];
  }
}

/** Kills what runs in the config's namespaces and deletes them (the twin's teardown; also after a crash). */
export function destroyKernelTwin(config: RouterConfig): string[] {
  const removed: string[] = [];
  for (const name of namespacesOf(config)) {
    if (!netnsExists(name)) continue;
    for (const pid of pidsIn(name)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone already
      }
    }
    try {
      deleteNetns(name);
      removed.push(name);
    } catch {
      // retried by the caller's next destroy
    }
  }
  return removed;
}

/**
 * Builds the kernel twin of `config` (already renamed so nothing of it exists). Fails, removing
 * what it made, when a namespace of the config already exists (the twin never adopts one).
 */
export async function buildKernelTwin(config: RouterConfig, options: KernelTwinOptions = {}): Promise<KernelTwin> {
  if (!isRoot()) throw new Error("the kernel twin needs root (network namespaces)");
  const log = options.log ?? (() => undefined);
  const names = namespacesOf(config);
  const present = names.filter((name) => netnsExists(name));
  if (present.length > 0) throw new Error(`namespaces ${present.join(", ")} already exist; the twin builds only new ones`);
  const rules = natRestoreText(config.nat.text);
  let metadataChild: ChildProcess | undefined;
  const destroy = (): void => {
    metadataChild?.kill("SIGKILL");
    destroyKernelTwin(config);
  };
  try {
    for (const name of names) {
      ensureNetns(name);
      setSysctls(name, [
        ["net.ipv6.conf.all.disable_ipv6", 1],
        ["net.ipv6.conf.default.disable_ipv6", 1],
      ]);
      ip(name, "link", "set", "lo", "up");
    }
    const router = config.namespace;
    // ip_forward first: it resets the per-device forwarding flags, which the veths then inherit.
    setSysctls(router, [
      ["net.ipv4.ip_forward", 1],
      ["net.ipv4.conf.all.send_redirects", 0],
      ["net.ipv4.conf.default.send_redirects", 0],
      ["net.ipv4.conf.all.rp_filter", rpFilterValue(config.rpFilter)],
      ["net.ipv4.conf.default.rp_filter", 0],
    ]);
    for (const port of config.ports) {
      // Created in the router namespace, the peer moved straight into the wire namespace; a tap
      // port's router end has the port's MAC, as qnat's TAP mirror and ARP answers do.
      const mac = port.wire.mode === "tap" ? ["address", port.mac] : [];
      ip(router, "link", "add", port.name, ...mac, "mtu", String(port.mtu), "type", "veth", "peer", "name", port.wire.device, "mtu", String(port.mtu), "netns", port.wire.namespace);
      for (const cidr of port.addresses) ip(router, "addr", "add", formatCidr(cidr), "brd", broadcastOf(cidr), "dev", port.name);
      setSysctls(router, [[`net.ipv4.conf.${port.name}.rp_filter`, rpFilterValue(port.rpFilter)]]);
      ip(router, "link", "set", port.name, "up");
      ip(port.wire.namespace, "link", "set", port.wire.device, "up");
    }
    for (const route of config.routes) ip(router, "route", "replace", ...route.value.trim().split(/\s+/));
    netnsExec(router, "iptables-restore", ["-w"], { input: rules });
    // conntrack.drop_invalid is a filter rule on Linux; tcp_be_liberal a per-namespace sysctl.
    if (config.conntrack.dropInvalid) netnsExec(router, "iptables-restore", ["-w", "--noflush"], { input: DROP_INVALID_TEXT });
    if (config.conntrack.tcpBeLiberal) setSysctls(router, [["net.netfilter.nf_conntrack_tcp_be_liberal", 1]]);
    if (config.metadata !== undefined) netnsExec(router, "iptables-restore", ["-w", "--noflush"], { input: metadataFilterText(config.metadata.port) });
    joinWireBridges(config);
    configureLabHosts(config);
    if (options.metadata !== false && config.metadata !== undefined) {
      metadataChild = await startMetadataChild(config);
      log(`twin: metadata proxy on ${config.namespace}:${config.metadata.port}`);
    }
    log(`twin: ${names.join(", ")}`);
    return { config, namespaces: names, destroy };
  } catch (error) {
    destroy();
    throw error;
  }
}

/** Loads and renames CONFIG, then builds its twin. */
export async function buildKernelTwinFromFile(path: string, tag: string, options: KernelTwinOptions = {}): Promise<KernelTwin> {
  const config = parseConfig(retagConfigFile(path, tag), path);
  return buildKernelTwin(config, options);
}

/** For `loadConfig` users: the config of PATH renamed with TAG. */
export function loadRetaggedConfig(path: string, tag: string): RouterConfig {
  return parseConfig(retagConfigFile(path, tag), path);
}

