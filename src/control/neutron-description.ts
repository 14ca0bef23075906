/**
 * Neutron's own view of a router, as its L3 agent receives it from the server (the router with
 * its `gw_port`, `_interfaces` and `_floatingips`), reduced to what the agent's nat table depends
 * on, read from a small YAML file (`examples/seed-router.neutron.yaml`):
 *
 *   agent: neutron-vpn-agent            # the agent's binary name: its chains' prefix
 *   router: { id: ..., enable_snat: true }
 *   gateway: { name: qg-e76de35e-90, addresses: [9.186.100.2/24] }
 *   interfaces:
 *     - { name: qr-694450d6-f6, addresses: [10.0.0.1/24] }
 *   floating_ips:
 *     - { fixed: 10.0.0.2, floating: 9.186.100.129 }
 *   metadata: { enabled: true, port: 9697 }
 *
 * A mistake is a ConfigError, printed as one line `FILE:LINE: what is wrong` (exit 2).
 */
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node as YamlNode, type YAMLMap } from "yaml";
import { formatCidr, formatIpv4, inPrefix, parseCidr, parseIpv4, type Cidr } from "../core/addr.js";
import { ConfigError, MAX_INTERFACE_NAME } from "../config/config.js";

/** Neutron's device name prefixes (neutron/agent/l3/namespaces.py INTERNAL_DEV_PREFIX, EXTERNAL_DEV_PREFIX). */
export const INTERNAL_DEV_PREFIX = "qr-";
export const EXTERNAL_DEV_PREFIX = "qg-";

/** The metadata proxy's port when the description gives none (the L3 agent's `metadata_port` default). */
export const DEFAULT_METADATA_PORT = 9697;

export interface NeutronPort {
  readonly name: string;
  /** The port's fixed IPs with their subnets' prefix lengths (`10.0.0.1/24`). */
  readonly addresses: readonly Cidr[];
}

export interface NeutronFloatingIp {
  readonly fixed: number;
  readonly floating: number;
}

export interface NeutronRouterDescription {
  /** The agent's binary name as given (`neutron-vpn-agent`, or a path to it). */
  readonly agent: string;
  readonly routerId: string;
  readonly enableSnat: boolean;
  /** Absent for a router without an external gateway. */
  readonly gateway: NeutronPort | undefined;
  readonly interfaces: readonly NeutronPort[];
  readonly floatingIps: readonly NeutronFloatingIp[];
  /** The metadata proxy's port (default 9697), or undefined when `metadata: { enabled: false }`. */
  readonly metadataPort: number | undefined;
}

const TOP_KEYS = ["agent", "router", "gateway", "interfaces", "floating_ips", "metadata"];
const NAME_PATTERN = /^[A-Za-z0-9_.:-]+$/;

export function parseNeutronDescription(text: string, file: string): NeutronRouterDescription {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const lineOf = (node: YamlNode | null | undefined): number => (node?.range ? lines.linePos(node.range[0]).line : 1);
  const fail = (node: YamlNode | null | undefined, message: string): never => {
    throw new ConfigError(file, lineOf(node), message);
  };
  if (doc.errors.length > 0) {
    const first = doc.errors[0]!;
    throw new ConfigError(file, first.linePos?.[0]?.line ?? 1, `invalid YAML: ${first.message.split("\n")[0]}`);
  }
  const root = doc.contents;
  if (!isMap(root)) return fail(root, "the description must be a mapping with agent, router, gateway, interfaces, floating_ips and metadata");
  const get = (map: YAMLMap, key: string): YamlNode | undefined => map.get(key, true) as YamlNode | undefined;
  const onlyKeys = (map: YAMLMap, keys: readonly string[], where: string): void => {
    for (const pair of map.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : "";
      if (!keys.includes(key)) fail(pair.key as YamlNode, `unknown key "${key}" in ${where} (expected one of ${keys.join(", ")})`);
    }
  };
  const scalar = (node: YamlNode | undefined, what: string, parent: YamlNode): string => {
    if (node === undefined) return fail(parent, `missing ${what}`);
    if (!isScalar(node) || (typeof node.value !== "string" && typeof node.value !== "number")) return fail(node, `${what} must be a string`);
    return String(node.value);
  };
  const mapping = (node: YamlNode | undefined, what: string, parent: YamlNode): YAMLMap => {
    if (node === undefined) return fail(parent, `missing ${what}`);
    if (!isMap(node)) return fail(node, `${what} must be a mapping`);
    return node;
  };
  const boolean = (node: YamlNode | undefined, what: string, fallback: boolean): boolean => {
    if (node === undefined) return fallback;
    if (!isScalar(node) || typeof node.value !== "boolean") return fail(node, `${what} must be true or false`);
    return node.value;
  };
  const address = (node: YamlNode | undefined, what: string, parent: YamlNode): number => {
    const value = parseIpv4(scalar(node, what, parent));
    if (value < 0) fail(node, `${what} "${scalar(node, what, parent)}" is not an IPv4 address`);
    return value;
  };
  const port = (node: YamlNode, what: string, prefix: string): NeutronPort => {
    const map = mapping(node, what, node);
    onlyKeys(map, ["name", "addresses"], what);
    const nameNode = get(map, "name");
    const name = scalar(nameNode, `${what} name`, map);
    if (name.length > MAX_INTERFACE_NAME || !NAME_PATTERN.test(name))
      fail(nameNode, `${what} name "${name}" is not a Linux interface name (at most ${MAX_INTERFACE_NAME} characters)`);
    if (!name.startsWith(prefix)) fail(nameNode, `${what} name "${name}" must start with "${prefix}", as the L3 agent names its devices`);
    const list = get(map, "addresses");
    if (!isSeq(list) || list.items.length === 0) return fail(list ?? map, `${what} addresses must be a non-empty list of A.B.C.D/N`);
    const addresses = (list.items as YamlNode[]).map((item) => {
      const text = scalar(item, `${what} address`, list);
      const cidr = parseCidr(text);
      if (cidr === undefined || !text.includes("/")) return fail(item, `${what} address "${text}" must be A.B.C.D/N (the fixed IP with its subnet's prefix length)`);
      return cidr;
    });
    return { name, addresses };
  };

  onlyKeys(root, TOP_KEYS, "the description");

  const agentNode = get(root, "agent");
  const agent = scalar(agentNode, "agent (the L3 agent's binary name, e.g. neutron-l3-agent)", root);
  if (agent.trim() === "" || agent.endsWith("/")) fail(agentNode, `agent "${agent}" is not a program name`);

  const routerNode = mapping(get(root, "router"), "router: { id: ... }", root);
  onlyKeys(routerNode, ["id", "enable_snat"], "router");
  const routerId = scalar(get(routerNode, "id"), "router.id", routerNode);
  const enableSnat = boolean(get(routerNode, "enable_snat"), "router.enable_snat", true);

  const gatewayNode = get(root, "gateway");
  const gateway = gatewayNode === undefined || (isScalar(gatewayNode) && gatewayNode.value === null)
    ? undefined
    : port(gatewayNode, "gateway", EXTERNAL_DEV_PREFIX);

  const interfacesNode = get(root, "interfaces");
  if (interfacesNode !== undefined && !isSeq(interfacesNode)) fail(interfacesNode, "interfaces must be a list of { name, addresses }");
  const interfaces: NeutronPort[] = [];
  for (const item of (isSeq(interfacesNode) ? interfacesNode.items : []) as YamlNode[]) {
    const internal = port(item, "interface", INTERNAL_DEV_PREFIX);
    if (interfaces.some((p) => p.name === internal.name) || gateway?.name === internal.name)
      fail(item, `interface "${internal.name}" is given twice`);
    interfaces.push(internal);
  }

  const fipsNode = get(root, "floating_ips");
  if (fipsNode !== undefined && !isSeq(fipsNode)) fail(fipsNode, "floating_ips must be a list of { fixed, floating }");
  const floatingIps: NeutronFloatingIp[] = [];
  for (const item of (isSeq(fipsNode) ? fipsNode.items : []) as YamlNode[]) {
    const map = mapping(item, "floating IP", item);
    onlyKeys(map, ["fixed", "floating"], "floating IP");
    const fixed = address(get(map, "fixed"), "floating IP fixed", map);
    const floating = address(get(map, "floating"), "floating IP floating", map);
    if (gateway === undefined) fail(item, "a floating IP needs the router's gateway");
    // Neutron associates a floating IP only with a fixed IP on a subnet the router is attached to.
    if (!interfaces.some((p) => p.addresses.some((cidr) => inPrefix(fixed, cidr.addr, cidr.prefixLength))))
      fail(get(map, "fixed"), `fixed IP ${formatIpv4(fixed)} is on none of the router's interfaces' subnets (${interfaces.flatMap((p) => p.addresses.map(formatCidr)).join(", ") || "none"})`);
    if (floatingIps.some((f) => f.floating === floating)) fail(get(map, "floating"), `floating IP ${formatIpv4(floating)} is given twice`);
    if (floatingIps.some((f) => f.fixed === fixed)) fail(get(map, "fixed"), `fixed IP ${formatIpv4(fixed)} already has a floating IP`);
    floatingIps.push({ fixed, floating });
  }

  const metadataNode = get(root, "metadata");
  // The L3 agent's enable_metadata_proxy is true by default: no metadata key, a proxy on 9697.
  let metadataPort: number | undefined = DEFAULT_METADATA_PORT;
  if (metadataNode !== undefined) {
    const map = mapping(metadataNode, "metadata", root);
    onlyKeys(map, ["enabled", "port"], "metadata");
    const portNode = get(map, "port");
    const portNumber = portNode === undefined ? DEFAULT_METADATA_PORT : Number(scalar(portNode, "metadata.port", map));
    if (!Number.isInteger(portNumber) || portNumber < 1 || portNumber > 65535) fail(portNode, "metadata.port must be a TCP port number (1-65535)");
    metadataPort = boolean(get(map, "enabled"), "metadata.enabled", true) ? portNumber : undefined;
  }

  return { agent, routerId, enableSnat, gateway, interfaces, floatingIps, metadataPort };
}
