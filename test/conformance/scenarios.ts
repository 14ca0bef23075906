/**
 * The scenarios, derived from a config so any qnat config can be checked: who is inside (lab
 * hosts behind the non-gateway ports), who is outside (the lab host behind the port of the
 * default route), the floating IPs (1:1 DNAT rules), the REDIRECT rules (metadata), the
 * addresses the OUTPUT chain DNATs, and the ports' MTUs. Each scenario is a Plan (harness.ts):
 * the same programs on both routers. Source ports, server ports and ICMP ids are chosen here, so
 * the only ports normalised away are the ones a router picked.
 */
import { formatIpv4 } from "../../src/core/addr.js";
import type { PortConfig, RouterConfig } from "../../src/config/config.js";
import { chainsReachableFrom, labPortOf, outputDnatLocalAddresses, parseConfigRules } from "../../src/control/host-setup.js";
import { NatRangeFlag, TargetKind, type NatRule, type PortRange } from "../../src/nat/rules/model.js";
import { NoRoomError, roomOf, type Room } from "./addresses.js";
import { allowing, type ClientAction, type CtEntry, type Plan } from "./harness.js";

/**
 * The servers' default ports. A config whose rules name these ports moves them (Room.port):
 * scenarios use `t.port(UDP_SERVER)`, never the constant itself.
 */
export const UDP_SERVER = 7001;
export const TCP_SERVER = 7002;
export const CLOSED_PORT = 7009;

export interface Host {
  ns: string;
  addr: string;
}

/** A port-forwarding DNAT rule (Neutron's `-d FIP/32 -p P -m P --dport A:B -j DNAT --to-destination FIXED:C-D`). */
export interface PortForward {
  floating: string;
  fixed: Host;
  protocol: "tcp" | "udp";
  /** The ports the rule matches. */
  dport: PortRange;
  /** The ports it maps to (the same as dport when the rule names none). */
  to: PortRange;
  /** `--random` / `--random-fully`: the router picks the port even when the original one is in range. */
  random: boolean;
}

export interface Topology {
  router: string;
  outsideNs: string;
  /** The outside host's address on its wire (a client for DNAT). */
  outsideClient: string;
  /** The address servers outside are reached at (first loopback, else the wire address). */
  outsideServer: string;
  inside: Host[];
  /** 1:1 floating IPs: DNAT rules with a /32 destination, one address, no protocol or ports. */
  floating: Array<{ fixed: Host; floating: string }>;
  portForwards: PortForward[];
  redirects: Array<{ dst: string; dport: number }>;
  outputDnat: string[];
  gatewayMtu: number;
  insideMtu: number;
  gatewayAddress: string;
  /** The router's primary address on the port of the first inside host. */
  insideGateway: string;
  /** What scenarios use beyond the config's hosts, and where their ports are (addresses.ts). */
  room: Room;
  /** A scenario's default port -> the one it uses on this config (room.port). */
  port(defaultPort: number): number;
}

function portsMatchOf(rule: NatRule): PortRange | undefined {
  for (const match of rule.matches) if ((match.kind === "tcp" || match.kind === "udp") && !match.dportInvert) return match.dport;
  return undefined;
}

/**
 * The router's port the lab hosts of namespace `ns` are on: the one facing it, or for a host in a
 * namespace of its own (lab `bridge:`) the one whose bridge it plugs into.
 */
function portOfHost(config: RouterConfig, ns: string): PortConfig | undefined {
  const host = config.lab.find((h) => h.namespace === ns);
  return host === undefined ? undefined : labPortOf(config, host);
}

export function topologyOf(config: RouterConfig): Topology {
  const defaultRoute = config.routes.find((r) => /^default\b/.test(r.value.trim()));
  const gatewayName = defaultRoute ? /\bdev\s+(\S+)/.exec(defaultRoute.value)?.[1] : undefined;
  const gateway = config.ports.find((p) => p.name === gatewayName) ?? config.ports.find((p) => config.lab.some((h) => h.namespace === p.wire.namespace && h.loopback.length > 0));
  if (gateway === undefined) throw new NoRoomError(`${config.file}: cannot tell the gateway port (no default route, no lab host with a loopback address)`);
  const outside = config.lab.find((h) => h.namespace === gateway.wire.namespace);
  if (outside === undefined) throw new NoRoomError(`${config.file}: no lab host in ${gateway.wire.namespace}, the gateway port's wire namespace`);
  const inside: Host[] = [];
  for (const host of config.lab) {
    if (host.namespace === outside.namespace) continue;
    for (const cidr of host.addresses) inside.push({ ns: host.namespace, addr: formatIpv4(cidr.addr) });
  }
  if (inside.length === 0) throw new NoRoomError(`${config.file}: no lab host behind a port other than the gateway port ${gateway.name}`);
  if (inside.length > 20) throw new NoRoomError(`${config.file}: ${inside.length} inside lab addresses; the scenarios give each of at most 20 its own source ports`);
  const rules = parseConfigRules(config);
  const floating: Topology["floating"] = [];
  const portForwards: PortForward[] = [];
  const redirects: Topology["redirects"] = [];
  for (const name of chainsReachableFrom(rules, "PREROUTING")) {
    for (const rule of rules.chains.get(name)?.rules ?? []) {
      const target = rule.target;
      if (rule.dst.mask !== 0xffffffff || rule.dst.invert) continue;
      if (target.kind === TargetKind.Dnat && target.range.minAddr === target.range.maxAddr && target.range.minAddr !== 0 && rule.src.mask === 0) {
        const fixed = inside.find((h) => h.addr === formatIpv4(target.range.minAddr));
        if (fixed === undefined) continue;
        const dport = portsMatchOf(rule);
        if (rule.protocol === 0 && rule.matches.every((m) => m.kind === "comment") && (target.range.flags & NatRangeFlag.ProtoSpecified) === 0) {
          floating.push({ fixed, floating: formatIpv4(rule.dst.addr) });
        } else if ((rule.protocol === 6 || rule.protocol === 17) && dport !== undefined) {
          const specified = (target.range.flags & NatRangeFlag.ProtoSpecified) !== 0;
          portForwards.push({
            floating: formatIpv4(rule.dst.addr),
            fixed,
            protocol: rule.protocol === 6 ? "tcp" : "udp",
            dport,
            to: specified ? { min: target.range.minPort, max: target.range.maxPort } : dport,
            random: (target.range.flags & (NatRangeFlag.ProtoRandom | NatRangeFlag.ProtoRandomFully)) !== 0,
          });
        }
      } else if (target.kind === TargetKind.Redirect && rule.protocol === 6) {
        const dport = portsMatchOf(rule)?.min;
        if (dport !== undefined) redirects.push({ dst: formatIpv4(rule.dst.addr), dport });
      }
    }
  }
  const insidePorts = config.ports.filter((p) => p !== gateway);
  const room = roomOf(config);
  return {
    router: config.namespace,
    outsideNs: outside.namespace,
    outsideClient: formatIpv4(outside.addresses[0]!.addr),
    outsideServer: formatIpv4((outside.loopback[0] ?? outside.addresses[0])!.addr),
    inside,
    floating,
    portForwards,
    redirects,
    outputDnat: outputDnatLocalAddresses(config, rules).map((c) => formatIpv4(c.addr)),
    gatewayMtu: gateway.mtu,
    insideMtu: Math.min(...insidePorts.map((p) => p.mtu)),
    gatewayAddress: formatIpv4(gateway.addresses[0]!.addr),
    insideGateway: formatIpv4((inside[0] === undefined ? undefined : portOfHost(config, inside[0].ns))?.addresses[0]?.addr ?? 0),
    room,
    port: (defaultPort) => room.port(defaultPort),
  };
}

function byPorts(ports: readonly number[]): (entry: CtEntry) => boolean {
  const set = new Set(ports);
  return (entry) =>
    (entry.original.sport !== undefined && set.has(entry.original.sport)) || (entry.original.dport !== undefined && entry.protocol !== "icmp" && set.has(entry.original.dport));
}

const udp = (src: string, sport: number, dst: string, dport: number, extra: Record<string, unknown> = {}): ClientAction => ({ kind: "udp", src, sport, dst, dport, size: 100, wait: 1, ...extra });
const tcp = (src: string, sport: number, dst: string, dport: number, extra: Record<string, unknown> = {}): ClientAction => ({ kind: "tcp", src, sport, dst, dport, size: 1000, close: "fin", wait: 3, ...extra });

/**
 * The scenarios that depend most on the config's addresses and rules and take about a second
 * each: what the random-config property runs (plansFor without the ones marked `slow`).
 */
export function fastPlansFor(config: RouterConfig): Plan[] {
  return plansFor(config).filter((plan) => plan.slow !== true);
}

/** Every scenario that applies to the config, in a fixed order. */
export function plansFor(config: RouterConfig): Plan[] {
  const t = topologyOf(config);
  const P = t.port;
  const UDP = P(UDP_SERVER);
  const TCP = P(TCP_SERVER);
  const CLOSED = P(CLOSED_PORT);
  const plans: Plan[] = [];
  const out = t.outsideServer;
  const servers = { [t.outsideNs]: { udp: [UDP], tcp: [TCP] } };
  const insideNs = [...new Set(t.inside.map((h) => h.ns))];
  /** One client per inside address, each with its own actions. */
  const fromEachInside = (make: (h: Host, i: number) => ClientAction[]) => t.inside.map((h, i) => ({ ns: h.ns, actions: make(h, i) }));
  const sports = (base: number) => t.inside.map((_, i) => base + i);

  plans.push({
    name: "UDP request/reply from every inside host (SNAT)",
    agents: servers,
    steps: [fromEachInside((h, i) => [udp(h.addr, P(40100) + i, out, UDP)])],
    knownPorts: [...sports(P(40100)), UDP],
    conntrack: byPorts(sports(P(40100))),
  });
  plans.push({
    name: "TCP open, 1000 bytes, close with FIN from every inside host (TIME_WAIT)",
    agents: servers,
    steps: [fromEachInside((h, i) => [tcp(h.addr, P(40200) + i, out, TCP)])],
    knownPorts: [...sports(P(40200)), TCP],
    conntrack: byPorts(sports(P(40200))),
    settleMs: 500,
  });
  const first = t.inside[0]!;
  /** The router's port toward a wire namespace. */
  const portTo = (ns: string): string => portOfHost(config, ns)!.name;
  const firstPort = portOfHost(config, first.ns)!;
  plans.push({
    name: "TCP closed with RST by the server (CLOSE)",
    agents: servers,
    steps: [[{ ns: first.ns, actions: [tcp(first.addr, P(40300), out, TCP, { close: "rst" })] }]],
    knownPorts: [P(40300), TCP],
    conntrack: byPorts([P(40300)]),
    settleMs: 500,
  });
  plans.push({
    name: "TCP and UDP to a closed port outside: RST, and ICMP port unreachable through SNAT",
    agents: servers,
    steps: [[{ ns: first.ns, actions: [tcp(first.addr, P(40400), out, CLOSED), udp(first.addr, P(40401), out, CLOSED)] }]],
    knownPorts: [P(40400), P(40401), CLOSED],
    conntrack: byPorts([P(40400), P(40401)]),
  });
  plans.push({
    name: "ICMP echo (crafted ids) from every inside host",
    steps: [
      fromEachInside((h, i) => [
        { kind: "raw", packets: [{ src: h.addr, dst: out, icmp: { type: 8, code: 0, id: P(44800) + i, seq: 1 } }] },
        { kind: "sleep", seconds: 0.3 },
      ]),
    ],
    knownPorts: sports(P(44800)),
    conntrack: (e) => e.protocol === "icmp" && sports(P(44800)).includes(e.original.sport ?? -1),
  });
  plans.push({
    name: "the same source port from every inside host to the same server, UDP and TCP at once",
    agents: servers,
    steps: [t.inside.map((h) => ({ ns: h.ns, actions: [udp(h.addr, P(40500), out, UDP), tcp(h.addr, P(40501), out, TCP)] }))],
    knownPorts: [P(40500), P(40501), UDP, TCP],
    conntrack: byPorts([P(40500), P(40501)]),
    settleMs: 500,
    racing: true,
    teardownTiming: true,
  });
  plans.push({
    name: "the router's own socket holds a source port a tenant then uses (port remapped)",
    agents: servers,
    steps: [
      [{ ns: t.router, actions: [udp(t.gatewayAddress, P(40600), out, UDP)] }],
      fromEachInside((h) => [udp(h.addr, P(40600), out, UDP)]),
    ],
    knownPorts: [P(40600), UDP],
    conntrack: byPorts([P(40600)]),
  });
  const MANY = 24;
  const manyUdp = Array.from({ length: MANY }, (_, i) => P(41000) + i);
  const manyTcp = Array.from({ length: 8 }, (_, i) => P(41100) + i);
  plans.push({
    name: `many connections at once: ${MANY} UDP + 8 TCP from every inside host, clashing source ports`,
    slow: true,
    agents: servers,
    steps: [fromEachInside((h) => [...manyUdp.map((p) => udp(h.addr, p, out, UDP)), ...manyTcp.map((p) => tcp(h.addr, p, out, TCP, { size: 200 }))])],
    knownPorts: [...manyUdp, ...manyTcp, UDP, TCP],
    conntrack: byPorts([...manyUdp, ...manyTcp]),
    settleMs: 600,
    racing: true,
    teardownTiming: true,
  });

  for (const [n, f] of t.floating.entries()) {
    const base = P(42000) + n * 100;
    plans.push({
      name: `DNAT: outside -> floating IP ${f.floating} reaches ${f.fixed.addr}, UDP and TCP`,
      agents: { [f.fixed.ns]: { udp: [UDP], tcp: [TCP] } },
      steps: [[{ ns: t.outsideNs, actions: [udp(t.outsideClient, base, f.floating, UDP), tcp(t.outsideClient, base + 1, f.floating, TCP)] }]],
      knownPorts: [base, base + 1, UDP, TCP],
      conntrack: byPorts([base, base + 1]),
      settleMs: 500,
    });
    const others = t.inside.filter((h) => h.addr !== f.fixed.addr);
    if (others.length > 0) {
      plans.push({
        name: `hairpin: inside hosts -> floating IP ${f.floating} (DNAT to ${f.fixed.addr}, then SNAT)`,
        agents: { [f.fixed.ns]: { udp: [UDP], tcp: [TCP] } },
        steps: [others.map((h, i) => ({ ns: h.ns, actions: [udp(h.addr, base + 10 + i, f.floating, UDP), tcp(h.addr, base + 30 + i, f.floating, TCP)] }))],
        knownPorts: [...others.map((_, i) => base + 10 + i), ...others.map((_, i) => base + 30 + i), UDP, TCP],
        conntrack: byPorts([...others.map((_, i) => base + 10 + i), ...others.map((_, i) => base + 30 + i)]),
        settleMs: 500,
      });
    }
    plans.push({
      name: `ICMP errors through DNAT: port unreachable from ${f.fixed.addr} and a RST reach the outside as from ${f.floating}`,
      agents: { [f.fixed.ns]: { udp: [UDP] } },
      steps: [[{ ns: t.outsideNs, actions: [udp(t.outsideClient, base + 50, f.floating, CLOSED), tcp(t.outsideClient, base + 52, f.floating, CLOSED)] }]],
      knownPorts: [base + 50, base + 52, UDP, CLOSED],
      conntrack: byPorts([base + 50, base + 52]),
    });
    plans.push({
      name: `ICMP time exceeded at the router for a packet to the floating IP ${f.floating} (DNATed, TTL 1)`,
      agents: { [f.fixed.ns]: { udp: [UDP] } },
      steps: [[{ ns: t.outsideNs, actions: [udp(t.outsideClient, base + 51, f.floating, UDP, { ttl: 1 })] }]],
      knownPorts: [base + 51, UDP],
      conntrack: byPorts([base + 51]),
    });
  }

  // Port forwarding (Neutron's port_forwarding extension): DNAT of single ports and port ranges of
  // a floating IP. Servers listen on every port of the target range; a port the router picks
  // (a --random range, or a range the original port is outside of) is normalised through the
  // connection table. A range mapped without --random onto ports the original is not in is left
  // out: Linux then takes the range's first free port, qnat a hashed one (docs/differences.md).
  for (const [n, pf] of t.portForwards.entries()) {
    const inRange = pf.dport.min >= pf.to.min && pf.dport.max <= pf.to.max;
    if (!(pf.random || inRange || pf.to.min === pf.to.max) || pf.to.max - pf.to.min >= 64) continue;
    const base = P(44400) + n * 20;
    const targets = Array.from({ length: pf.to.max - pf.to.min + 1 }, (_, i) => pf.to.min + i);
    const dports = [...new Set([pf.dport.min, pf.dport.max])];
    const send = pf.protocol === "udp" ? udp : tcp;
    const other = t.inside.find((h) => h.addr !== pf.fixed.addr);
    const clients = dports.map((dport, i) => send(t.outsideClient, base + i, pf.floating, dport));
    // The router answers a port of the floating IP that is not forwarded itself (it is its address).
    const unforwarded = send(t.outsideClient, base + 5, pf.floating, CLOSED);
    const hairpin = other ? dports.map((dport, i) => send(other.addr, base + 10 + i, pf.floating, dport)) : [];
    const chosen = [...dports.map((_, i) => base + i), base + 5, ...hairpin.map((_, i) => base + 10 + i)];
    // A target port the router may pick is not a port the scenario chose (it is "~" when picked).
    const routerPicks = pf.random || !inRange;
    plans.push({
      name: `port forwarding: outside -> ${pf.protocol} ${pf.floating}:${pf.dport.min}${pf.dport.max > pf.dport.min ? `-${pf.dport.max}` : ""} reaches ${pf.fixed.addr}:${pf.to.min}${pf.to.max > pf.to.min ? `-${pf.to.max}` : ""}${pf.random ? " (--random)" : ""}${other ? `, and hairpin from ${other.addr}` : ""}`,
      agents: { [pf.fixed.ns]: { [pf.protocol]: targets } },
      steps: [[{ ns: t.outsideNs, actions: [...clients, unforwarded] }, ...(other ? [{ ns: other.ns, actions: hairpin }] : [])]],
      knownPorts: [...chosen, CLOSED, ...(routerPicks ? dports.filter((d) => d < pf.to.min || d > pf.to.max) : [...dports, ...targets])],
      conntrack: byPorts(chosen),
      settleMs: 500,
    });
  }

  // TCP window tracking (tcp_in_window): a real transfer with window scaling, and a crafted
  // connection through the floating IP that the outside then hits with segments out of the window.
  const scaledFloating = t.floating[0];
  plans.push({
    name: "TCP transfers of 60000 bytes with window scaling, through SNAT and through the floating IP",
    slow: true,
    agents: { ...servers, ...(scaledFloating ? { [scaledFloating.fixed.ns]: { tcp: [TCP] } } : {}) },
    steps: [[
      { ns: first.ns, actions: [tcp(first.addr, P(43630), out, TCP, { size: 60000 })] },
      ...(scaledFloating ? [{ ns: t.outsideNs, actions: [tcp(t.outsideClient, P(43631), scaledFloating.floating, TCP, { size: 60000 })] }] : []),
    ]],
    knownPorts: [P(43630), P(43631), TCP],
    conntrack: byPorts([P(43630), P(43631)]),
    settleMs: 500,
    // Only the segments toward the server that carry data or the FIN differ (sizes, and whether
    // the FIN rides on the last data segment); the handshake, the ACKs, everything the server
    // sends, the bytes it got and conntrack are compared.
    documented: [{
      section: "wire",
      reason: "the senders' TSO/GSO super-packets cross qnat whole (TUN offload) and the kernel twin's veth path as MTU-sized segments: same bytes, other segment sizes, the FIN on the last one or alone (docs/differences.md, Forwarding)",
      allows: allowing.packets((p) => p.proto === 6 && p.dport === TCP && typeof p.flags === "string" && !/[SR]/.test(p.flags) && (Number(p.len) > 64 || p.flags.includes("F"))),
    }],
  });
  if (scaledFloating) {
    const fixed = scaledFloating.fixed;
    const client = { src: t.outsideClient, dst: scaledFloating.floating };
    const server = { src: fixed.addr, dst: t.outsideClient };
    const fromClient = (flags: string, seq: number, ack: number, extra: Record<string, unknown> = {}) => ({ ...client, tcp: { sport: P(43610), dport: P(7110), flags, seq, ack, win: 502, ...extra } });
    const fromServer = (flags: string, seq: number, ack: number, extra: Record<string, unknown> = {}) => ({ ...server, tcp: { sport: P(7110), dport: P(43610), flags, seq, ack, win: 509, ...extra } });
    // MSS 1460, SACK permitted, NOP, window scale 7
    const synOptions = "020405b4040201030307";
    plans.push({
      name: `crafted: TCP with window scale through the floating IP ${scaledFloating.floating}: out-of-window data, an old RST and a blind RST from outside`,
      slow: true,
      // No sockets hold this connection: the endpoints' kernels would answer every segment with a
      // RST, so their RSTs for these two ports are dropped (filter table only, no conntrack). The
      // kernel sends them with TTL 64; the crafted RSTs below have TTL 60 and pass.
      setup: [
        { ns: t.outsideNs, argv: ["iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", String(P(43610)), "--tcp-flags", "RST", "RST", "-m", "ttl", "--ttl-eq", "64", "-j", "DROP"] },
        { ns: fixed.ns, argv: ["iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", String(P(7110)), "--tcp-flags", "RST", "RST", "-m", "ttl", "--ttl-eq", "64", "-j", "DROP"] },
      ],
      steps: [
        [{ ns: t.outsideNs, actions: [{ kind: "raw", packets: [fromClient("S", 1000, 0, { win: 64240, options_hex: synOptions })] }, { kind: "sleep", seconds: 0.2 }] }],
        [{ ns: fixed.ns, actions: [{ kind: "raw", packets: [fromServer("SA", 5000, 1001, { win: 65160, options_hex: synOptions })] }, { kind: "sleep", seconds: 0.2 }] }],
        [{ ns: t.outsideNs, actions: [{ kind: "raw", gap: 0.05, packets: [fromClient("A", 1001, 5001), fromClient("PA", 1001, 5001, { data_len: 100 })] }, { kind: "sleep", seconds: 0.2 }] }],
        [{ ns: fixed.ns, actions: [{ kind: "raw", packets: [fromServer("A", 5001, 1101)] }, { kind: "sleep", seconds: 0.2 }] }],
        [{ ns: t.outsideNs, actions: [{ kind: "raw", gap: 0.1, packets: [
          // data 10 MB beyond the window: INVALID, not NATed (reaches the router's own address)
          fromClient("PA", 1101 + 10_000_000, 5001, { data_len: 100 }),
          // an RST before what the server acknowledged (td_maxack): INVALID, the connection stays
          { ...fromClient("R", 601, 0), ttl: 60 },
          // a blind RST far from the window: INVALID
          { ...fromClient("R", 1101 + 0x40000000, 0), ttl: 60 },
          // in-window data: still ESTABLISHED, still DNATed
          fromClient("PA", 1101, 5001, { data_len: 50 }),
        ] }, { kind: "sleep", seconds: 0.3 }] }],
      ],
      knownPorts: [P(43610), P(7110)],
      conntrack: byPorts([P(43610)]),
    });
  }

  if (insideNs.length >= 2) {
    const a = t.inside.find((h) => h.ns === insideNs[0])!;
    const b = t.inside.find((h) => h.ns === insideNs[1])!;
    plans.push({
      name: `between inside subnets without NAT: ${a.addr} <-> ${b.addr}`,
      agents: { [a.ns]: { udp: [UDP], tcp: [TCP] }, [b.ns]: { udp: [UDP], tcp: [TCP] } },
      steps: [[
        { ns: a.ns, actions: [udp(a.addr, P(43000), b.addr, UDP), tcp(a.addr, P(43001), b.addr, TCP)] },
        { ns: b.ns, actions: [udp(b.addr, P(43002), a.addr, UDP), tcp(b.addr, P(43003), a.addr, TCP)] },
      ]],
      knownPorts: [P(43000), P(43001), P(43002), P(43003), UDP, TCP],
      conntrack: byPorts([P(43000), P(43001), P(43002), P(43003)]),
      settleMs: 500,
    });
  }

  plans.push({
    name: `traceroute through SNAT to ${t.room.beyond}: TTL 1 expires at the router, TTL 2 beyond the outside host, then host unreachable`,
    setup: [
      { ns: t.outsideNs, argv: ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"] },
      { ns: t.outsideNs, argv: ["ip", "route", "replace", "unreachable", t.room.beyondNet] },
    ],
    steps: [[{ ns: first.ns, actions: [udp(first.addr, P(43100), t.room.beyond, P(33434), { ttl: 1 }), udp(first.addr, P(43101), t.room.beyond, P(33435), { ttl: 2 }), udp(first.addr, P(43102), t.room.beyond, P(33436), { ttl: 5 })] }]],
    knownPorts: [P(43100), P(43101), P(43102), P(33434), P(33435), P(33436)],
    conntrack: byPorts([P(43100), P(43101), P(43102)]),
  });

  for (const [n, r] of t.redirects.entries()) {
    const base = P(43200) + n * 50;
    plans.push({
      name: `REDIRECT ${r.dst}:${r.dport} to the router's local server (metadata proxy)`,
      sniffRouterHost: insideNs.map(portTo),
      steps: [fromEachInside((h, i) => [{ kind: "http", src: h.addr, sport: base + i, dst: r.dst, dport: r.dport, path: "/latest/meta-data/instance-id", wait: 3 }])],
      knownPorts: [...t.inside.map((_, i) => base + i), r.dport],
      conntrack: byPorts(t.inside.map((_, i) => base + i)),
      settleMs: 500,
    });
  }

  if (config.metadata !== undefined) {
    // The proxy's port is private (Neutron's mark + `--dport 9697 -j DROP`; the twin loads them):
    // a direct connection to a router address on it gets no answer, from inside or outside.
    const port = config.metadata.port;
    const insideGateway = t.insideGateway;
    plans.push({
      name: `the metadata port ${port} is private: direct connections to ${insideGateway}:${port} from inside and ${t.gatewayAddress}:${port} from outside get no answer`,
      slow: true,
      steps: [[
        { ns: first.ns, actions: [{ kind: "tcp", src: first.addr, sport: P(43300), dst: insideGateway, dport: port, size: 16, close: "fin", wait: 1.5 }] },
        { ns: t.outsideNs, actions: [{ kind: "tcp", src: t.outsideClient, sport: P(43301), dst: t.gatewayAddress, dport: port, size: 16, close: "fin", wait: 1.5 }] },
      ]],
      knownPorts: [P(43300), P(43301), port],
      conntrack: byPorts([P(43300), P(43301)]),
    });
  }

  for (const [n, address] of t.outputDnat.entries()) {
    const f = t.floating.find((x) => x.floating === address);
    if (f === undefined) continue;
    const base = P(43400) + n * 10;
    plans.push({
      name: `OUTPUT DNAT: the router's own host -> ${address} reaches ${f.fixed.addr}`,
      sniffRouterHost: [portTo(f.fixed.ns)],
      agents: { [f.fixed.ns]: { udp: [UDP], tcp: [TCP] } },
      steps: [[{ ns: t.router, actions: [udp("0.0.0.0", base, address, UDP), tcp("0.0.0.0", base + 1, address, TCP)] }]],
      knownPorts: [base, base + 1, UDP, TCP],
      conntrack: byPorts([base, base + 1]),
      settleMs: 500,
    });
  }

  // Crafted packets.
  plans.push({
    name: "crafted: TTL 1 (UDP, TCP SYN, ICMP echo) from inside",
    slow: true,
    steps: [[{ ns: first.ns, actions: [{ kind: "raw", gap: 0.05, packets: [
      { src: first.addr, dst: out, ttl: 1, udp: { sport: P(43500), dport: UDP, data_len: 20 } },
      { src: first.addr, dst: out, ttl: 1, tcp: { sport: P(43501), dport: TCP, flags: "S" } },
      { src: first.addr, dst: out, ttl: 1, icmp: { type: 8, code: 0, id: P(43502), seq: 1 } },
    ] }, { kind: "sleep", seconds: 0.3 }] }]],
    knownPorts: [P(43500), P(43501), P(43502), UDP, TCP],
    conntrack: byPorts([P(43500), P(43501), P(43502)]),
  });
  plans.push({
    name: "crafted: TCP out of state (no connection): bare ACK, FIN, RST, SYN-ACK from inside",
    slow: true,
    steps: [[{ ns: first.ns, actions: [{ kind: "raw", gap: 0.05, packets: [
      { src: first.addr, dst: out, tcp: { sport: P(43600), dport: P(7100), flags: "A", seq: 5000, ack: 7000 } },
      { src: first.addr, dst: out, tcp: { sport: P(43601), dport: P(7100), flags: "FA", seq: 5000, ack: 7000 } },
      { src: first.addr, dst: out, tcp: { sport: P(43602), dport: P(7100), flags: "R", seq: 5000 } },
      { src: first.addr, dst: out, tcp: { sport: P(43603), dport: P(7100), flags: "SA", seq: 5000, ack: 7000 } },
    ] }, { kind: "sleep", seconds: 0.3 }] }]],
    knownPorts: [P(43600), P(43601), P(43602), P(43603), P(7100)],
    conntrack: byPorts([P(43600), P(43601), P(43602), P(43603)]),
  });
  plans.push({
    name: "crafted: GRE and SCTP INIT from inside (address-only NAT)",
    slow: true,
    steps: [[{ ns: first.ns, actions: [{ kind: "raw", gap: 0.05, packets: [
      { src: first.addr, dst: out, proto: 47, payload_hex: "00000800" + "45".repeat(20) },
      { src: first.addr, dst: out, sctp: { sport: P(43700), dport: P(7200) } },
    ] }, { kind: "sleep", seconds: 0.3 }] }]],
    knownPorts: [P(43700), P(7200)],
    conntrack: (e) => (e.protocol === "gre" || e.protocol === "sctp" || e.protocol === "unknown") && e.original.src === first.addr,
    documented: [{
      section: "conntrack",
      reason: "SCTP is tracked by address pair only, no ports or SCTP state (docs/differences.md)",
      allows: allowing.entries((e) => e.protocol === "sctp"),
    }],
  });
  // rp_filter (the config's, strict by default; the twin sets the same sysctls): a source that
  // belongs behind another port, from the outside to a floating IP (checked after the DNAT) and
  // from inside toward the outside; each next to the same packet from a valid source.
  const spoofedInside = t.room.unused.get(firstPort.name);
  if (spoofedInside === undefined) throw new NoRoomError(`${config.file}: ${firstPort.name} has no subnet larger than /31 for a spoofed inside source`);
  const spoofedOutside = t.room.spoofedOutside;
  const spoofTarget = t.floating[0];
  plans.push({
    name: `crafted: spoofed sources (rp_filter ${config.rpFilter}): ${spoofedInside} from the outside${spoofTarget ? ` to ${spoofTarget.floating}` : ""}, ${spoofedOutside} from inside`,
    agents: {
      [t.outsideNs]: { udp: [UDP] },
      ...(spoofTarget ? { [spoofTarget.fixed.ns]: { udp: [UDP] } } : {}),
    },
    steps: [[
      ...(spoofTarget
        ? [{ ns: t.outsideNs, actions: [{ kind: "raw", gap: 0.05, packets: [
            { src: spoofedInside, dst: spoofTarget.floating, udp: { sport: P(44000), dport: UDP, data_len: 20 } },
            { src: t.outsideClient, dst: spoofTarget.floating, udp: { sport: P(44001), dport: UDP, data_len: 20 } },
          ] } as ClientAction, { kind: "sleep", seconds: 0.3 } as ClientAction] }]
        : []),
      { ns: first.ns, actions: [{ kind: "raw", gap: 0.05, packets: [
        { src: spoofedOutside, dst: out, udp: { sport: P(44002), dport: UDP, data_len: 20 } },
        { src: first.addr, dst: out, udp: { sport: P(44003), dport: UDP, data_len: 20 } },
      ] }, { kind: "sleep", seconds: 0.3 }] },
    ]],
    knownPorts: [P(44000), P(44001), P(44002), P(44003), UDP],
    conntrack: byPorts([P(44000), P(44001), P(44002), P(44003)]),
  });
  // nf_conntrack_checksum=1 (Linux's default; qnat's too): a bad L4 checksum makes the packet
  // INVALID, so it is not tracked and leaves without NAT, its checksum as bad as it came.
  plans.push({
    name: "crafted: bad UDP, TCP and ICMP checksums from inside are INVALID (not tracked, not NATed)",
    slow: true,
    agents: servers,
    steps: [[{ ns: first.ns, actions: [{ kind: "raw", gap: 0.05, packets: [
      { src: first.addr, dst: out, bad_csum: true, udp: { sport: P(44100), dport: UDP, data_len: 20 } },
      { src: first.addr, dst: out, bad_csum: true, tcp: { sport: P(44101), dport: TCP, flags: "S" } },
      { src: first.addr, dst: out, bad_csum: true, icmp: { type: 8, code: 0, id: P(44102), seq: 1 } },
      { src: first.addr, dst: out, udp: { sport: P(44103), dport: UDP, data_len: 20 } },
    ] }, { kind: "sleep", seconds: 0.3 }] }]],
    knownPorts: [P(44100), P(44101), P(44102), P(44103), UDP, TCP],
    conntrack: (e) => byPorts([P(44100), P(44101), P(44103)])(e) || (e.protocol === "icmp" && e.original.sport === P(44102)),
  });
  const datagram = (sport: number, id: number) => ({ src: first.addr, dst: out, id, udp: { sport, dport: UDP, data_len: 1200 } });
  const fragment = (of: object, offset: number, length: number) => ({ src: first.addr, dst: out, fragment: { of, offset, length } });
  const inOrder = datagram(P(43800), 0x5101);
  const reversed = datagram(P(43801), 0x5102);
  const overlapping = datagram(P(43802), 0x5103);
  plans.push({
    name: "fragmented UDP across the NAT: in order, out of order, overlapping",
    slow: true,
    agents: { [t.outsideNs]: { udp: [UDP] } },
    steps: [[{ ns: first.ns, actions: [
      { kind: "raw", gap: 0.02, packets: [fragment(inOrder, 0, 512), fragment(inOrder, 512, 512), fragment(inOrder, 1024, 184)] },
      { kind: "sleep", seconds: 0.2 },
      { kind: "raw", gap: 0.02, packets: [fragment(reversed, 1024, 184), fragment(reversed, 512, 512), fragment(reversed, 0, 512)] },
      { kind: "sleep", seconds: 0.2 },
      { kind: "raw", gap: 0.02, packets: [fragment(overlapping, 0, 512), fragment(overlapping, 504, 520), fragment(overlapping, 1024, 184)] },
      { kind: "sleep", seconds: 0.3 },
    ] }]],
    knownPorts: [P(43800), P(43801), P(43802), UDP],
    // Each datagram's fragments carry its id, so the in-order and the reversed datagram are
    // compared fragment by fragment (Linux re-fragments both as they came in: 512, 512, 184).
    knownIpIds: [inOrder.id, reversed.id, overlapping.id],
    conntrack: byPorts([P(43800), P(43801), P(43802)]),
    documented: [
      {
        section: "conntrack",
        reason: "Linux drops the overlapping datagram in defragmentation (ip_frag_queue), before conntrack: no entry; qnat tracks its first fragment (docs/differences.md, Fragments)",
        allows: allowing.entries((e) => e.original.sport === overlapping.udp.sport),
      },
      {
        section: `wire into ${t.outsideNs}`,
        reason: "Linux drops the overlapping datagram before it leaves; qnat forwards its fragments translated, and the receiver drops them (docs/differences.md, Fragments)",
        allows: allowing.packets((p) => p.id === overlapping.id),
      },
    ],
  });
  if (t.gatewayMtu < t.insideMtu) {
    const size = t.gatewayMtu - 28 + 100;
    plans.push({
      name: `DF and oversize: ${size + 28} bytes toward the gateway port's MTU ${t.gatewayMtu}`,
      slow: true,
      agents: servers,
      steps: [[{ ns: first.ns, actions: [udp(first.addr, P(43901), out, UDP, { size, df: false }), udp(first.addr, P(43900), out, UDP, { size, df: true })] }]],
      knownPorts: [P(43900), P(43901), UDP],
      conntrack: byPorts([P(43900), P(43901)]),
    });
  }
  // Fragmentation on output (ip_fragment): a datagram as large as the gateway's MTU, from the
  // outside to a floating IP whose fixed host sits behind a smaller MTU (VXLAN's 1450). Crafted,
  // so its IP id is known and the fragments' ids, sizes, offsets and MF compare on the tenant wire.
  const overlay = t.floating.find((f) => (portOfHost(config, f.fixed.ns)?.mtu ?? t.gatewayMtu) < t.gatewayMtu);
  if (overlay !== undefined) {
    const mtu = portOfHost(config, overlay.fixed.ns)!.mtu;
    const whole = (sport: number, id: number, df: boolean) => ({ src: t.outsideClient, dst: overlay.floating, id, df, udp: { sport, dport: UDP, data_len: t.gatewayMtu - 28 } });
    plans.push({
      name: `fragmentation on output: ${t.gatewayMtu} bytes without DF from the outside to ${overlay.floating} reach ${overlay.fixed.addr} as fragments for MTU ${mtu}; with DF, fragmentation needed`,
      agents: { [overlay.fixed.ns]: { udp: [UDP] } },
      steps: [[{ ns: t.outsideNs, actions: [{ kind: "raw", gap: 0.1, packets: [whole(P(44200), 0x1450, false), whole(P(44201), 0x1451, true)] }, { kind: "sleep", seconds: 0.3 }] }]],
      knownPorts: [P(44200), P(44201), UDP],
      conntrack: byPorts([P(44200), P(44201)]),
      fragmentIds: true,
    });
  }
  return plans;
}

