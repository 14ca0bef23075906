/**
 * What a conformance scenario uses beyond the config's own hosts — an address past the outside
 * host, a source that belongs outside, an unused address on every connected subnet, and the port
 * numbers it chooses — derived from the config and checked against all of it: the ports' subnets
 * and addresses, the routes (the router's and the lab hosts'), every address and port the nat
 * rules name, the metadata instances and the lab hosts. Nothing is hard-coded that a config could
 * collide with: a config whose external subnet is 198.51.100.0/24 gets its "beyond" address from
 * another range. A config that leaves no room gets one line saying what is missing (NoRoomError).
 */
import { type Cidr, formatCidr, formatIpv4, parseCidr, parseIpv4, prefixMask } from "../../src/core/addr.js";
import type { RouterConfig } from "../../src/config/config.js";
import { parseConfigRules } from "../../src/control/host-setup.js";
import { NatRangeFlag, type PortRange } from "../../src/nat/rules/model.js";

/** The config leaves no room for something a scenario needs: one line, `FILE: what is missing`. */
export class NoRoomError extends Error {
  override readonly name = "NoRoomError";
}

/**
 * Where "beyond the outside host" and spoofed outside sources come from, in this order: the
 * documentation ranges (RFC 5737 TEST-NET-2, -3, -1), then the benchmarking range 198.18.0.0/15
 * (RFC 2544), one /24 at a time. None is ever routed on the Internet, and nothing here leaves the
 * lab's namespaces anyway.
 */
export function beyondCandidates(): Cidr[] {
  const list = ["198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24"].map((text) => parseCidr(text)!);
  const benchmark = parseIpv4("198.18.0.0");
  for (let i = 0; i < 512; i++) list.push({ addr: (benchmark + i * 256) >>> 0, prefixLength: 24 });
  return list;
}

/** Default blocks of the ports scenarios choose (scenarios.ts writes them as `t.port(40100)`). */
export const PORT_BLOCKS = [
  /** Servers outside and inside (UDP 7001, TCP 7002, a closed port 7009, crafted flows 71xx, 72xx). */
  { name: "server", min: 7000, size: 300, candidates: [7000, 6000, 5000, 4000, 3000, 2000, 11000, 12000, 13000] },
  /** traceroute's destination ports (33434 upward). */
  { name: "traceroute", min: 33430, size: 10, candidates: [33430, 33530, 33630, 34430, 35430, 36430] },
  /** Client source ports and crafted ICMP ids (40100 upward, one range per scenario). */
  { name: "client", min: 40000, size: 5000, candidates: [40000, 45000, 50000, 55000, 60000, 25000, 20000, 15000] },
] as const;

/** The prefix length of a netmask that iptables stored (contiguous). */
function maskLength(mask: number): number {
  let length = 0;
  for (let m = mask >>> 0; m & 0x80000000; m = (m << 1) >>> 0) length++;
  return length;
}

function overlaps(a: Cidr, b: Cidr): boolean {
  const mask = prefixMask(Math.min(a.prefixLength, b.prefixLength));
  return ((a.addr & mask) >>> 0) === ((b.addr & mask) >>> 0);
}

function rangesOverlap(a: PortRange, b: PortRange): boolean {
  return a.min <= b.max && b.min <= a.max;
}

/** `default via A dev X`, `A.B.C.D/N via G`, `unreachable A/N`: the destination (not default) and the gateway. */
function routeAddresses(route: string): Cidr[] {
  const found: Cidr[] = [];
  for (const word of route.trim().split(/\s+/)) {
    const cidr = /^\d+\.\d+\.\d+\.\d+(\/\d+)?$/.test(word) ? parseCidr(word) : undefined;
    if (cidr !== undefined && cidr.prefixLength > 0) found.push(cidr);
  }
  return found;
}

/** Everything address-like the config holds: subnets, addresses, routes, rule addresses, metadata instances. */
export function occupiedPrefixes(config: RouterConfig): Cidr[] {
  const occupied: Cidr[] = [];
  for (const port of config.ports) occupied.push(...port.addresses);
  for (const route of config.routes) occupied.push(...routeAddresses(route.value));
  for (const host of config.lab) {
    occupied.push(...host.addresses, ...host.loopback);
    for (const route of host.routes) occupied.push(...routeAddresses(route));
  }
  for (const chain of parseConfigRules(config).chains.values()) {
    for (const rule of chain.rules) {
      for (const match of [rule.src, rule.dst]) if (match.mask !== 0) occupied.push({ addr: match.addr, prefixLength: maskLength(match.mask) });
      const target = rule.target;
      if ("range" in target && (target.range.flags & NatRangeFlag.MapIps) !== 0) {
        // An address range: every address of it (a range is short in any real config).
        for (let a = target.range.minAddr; a <= target.range.maxAddr && a - target.range.minAddr < 4096; a++) occupied.push({ addr: a >>> 0, prefixLength: 32 });
      }
    }
  }
  for (const address of config.metadata?.instances.keys() ?? []) occupied.push({ addr: parseIpv4(address), prefixLength: 32 });
  return occupied;
}

/** Every port number and range the nat rules name (matches, NAT ranges), and the metadata proxy's port. */
export function reservedPorts(config: RouterConfig): PortRange[] {
  const reserved: PortRange[] = [];
  for (const chain of parseConfigRules(config).chains.values()) {
    for (const rule of chain.rules) {
      for (const match of rule.matches) {
        if (match.kind === "tcp" || match.kind === "udp") {
          if (match.sport) reserved.push(match.sport);
          if (match.dport) reserved.push(match.dport);
        } else if (match.kind === "multiport") reserved.push(...match.ranges);
      }
      const target = rule.target;
      if ("range" in target && (target.range.flags & NatRangeFlag.ProtoSpecified) !== 0) {
        reserved.push({ min: target.range.minPort, max: target.range.maxPort });
      }
    }
  }
  if (config.metadata !== undefined) reserved.push({ min: config.metadata.port, max: config.metadata.port });
  return reserved;
}

/**
 * An address on SUBNET that nothing holds (not the network or broadcast address, no port, lab
 * host, rule or metadata address), searched from host number `from` upward, wrapping around.
 */
export function unusedAddressOn(config: RouterConfig, subnet: Cidr, from: number, what: string, occupied = occupiedPrefixes(config)): string {
  const hostBits = 32 - subnet.prefixLength;
  const size = 2 ** hostBits;
  const network = (subnet.addr & prefixMask(subnet.prefixLength)) >>> 0;
  const taken = new Set(occupied.filter((c) => c.prefixLength === 32).map((c) => c.addr >>> 0));
  for (const port of config.ports) for (const a of port.addresses) taken.add(a.addr >>> 0);
  for (const host of config.lab) for (const a of host.addresses) taken.add(a.addr >>> 0);
  if (size >= 4) {
    for (let i = 0; i < size - 2; i++) {
      const candidate = (network + 1 + ((from - 1 + i) % (size - 2))) >>> 0;
      if (!taken.has(candidate)) return formatIpv4(candidate);
    }
  }
  throw new NoRoomError(`${config.file}: no unused address on ${formatCidr({ addr: network, prefixLength: subnet.prefixLength })} for ${what}: every host address of it is the router's, a lab host's or named by a rule`);
}

/** What a config's scenarios may use beyond its own hosts (see the file comment). */
export interface Room {
  /** A /24 that overlaps nothing of the config: the outside host routes it as unreachable. */
  readonly beyondNet: string;
  /** An address in it, "beyond the outside host" (traceroute's target). */
  readonly beyond: string;
  /** Another address in it: a source that belongs outside, spoofed from inside. */
  readonly spoofedOutside: string;
  /** Per port name: an address on the port's first subnet that no one holds. */
  readonly unused: ReadonlyMap<string, string>;
  /** A scenario's default port (a block of PORT_BLOCKS) -> the port it uses on this config. */
  port(defaultPort: number): number;
}

export function roomOf(config: RouterConfig): Room {
  const occupied = occupiedPrefixes(config);
  const net = beyondCandidates().find((candidate) => !occupied.some((c) => overlaps(c, candidate)));
  if (net === undefined) {
    throw new NoRoomError(`${config.file}: no /24 outside every subnet, route and rule address of the config (tried 198.51.100.0/24, 203.0.113.0/24, 192.0.2.0/24 and 198.18.0.0/15) for an address beyond the outside host`);
  }
  const unused = new Map<string, string>();
  for (const port of config.ports) {
    const subnet = port.addresses.find((a) => a.prefixLength < 31);
    if (subnet !== undefined) unused.set(port.name, unusedAddressOn(config, subnet, 77, `an unused address behind ${port.name}`, occupied));
  }
  const reserved = reservedPorts(config);
  const placed = PORT_BLOCKS.map((block) => {
    const base = block.candidates.find((start) => !reserved.some((r) => rangesOverlap(r, { min: start, max: start + block.size - 1 })));
    if (base === undefined) {
      throw new NoRoomError(`${config.file}: the nat rules' ports cover every range tried for the scenarios' ${block.name} ports (${block.candidates.map((c) => `${c}-${c + block.size - 1}`).join(", ")})`);
    }
    return { ...block, base };
  });
  return {
    beyondNet: formatCidr(net),
    beyond: formatIpv4(net.addr + 7),
    spoofedOutside: formatIpv4(net.addr + 99),
    unused,
    port(defaultPort: number): number {
      const block = placed.find((b) => defaultPort >= b.min && defaultPort < b.min + b.size);
      if (block === undefined) throw new Error(`port ${defaultPort} is in no block of PORT_BLOCKS (test/conformance/addresses.ts)`);
      return block.base + (defaultPort - block.min);
    },
  };
}
