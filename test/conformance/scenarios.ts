/**
 * The scenarios, derived from a config so any qnat config can be checked: who is inside (lab
 * hosts behind the non-gateway ports), who is outside (the lab host behind the port of the
 * default route), the floating IPs (1:1 DNAT rules), the REDIRECT rules (metadata), the
 * addresses the OUTPUT chain DNATs, and the ports' MTUs. Each scenario is a Plan (harness.ts):
 * the same programs on both routers. Source ports, server ports and ICMP ids are chosen here, so
 * the only ports normalised away are the ones a router picked.
 */
import { formatIpv4 } from "../../src/core/addr.js";
import type { RouterConfig } from "../../src/config/config.js";
import { chainsReachableFrom, floatingIpsOf, outputDnatLocalAddresses, parseConfigRules } from "../../src/control/host-setup.js";
import { TargetKind } from "../../src/nat/rules/model.js";
import type { ClientAction, CtEntry, Plan } from "./harness.js";

export const UDP_SERVER = 7001;
export const TCP_SERVER = 7002;
export const CLOSED_PORT = 7009;
/** TEST-NET-2 (RFC 5737): "beyond the outside host", for errors that come from past the router. */
export const BEYOND = "198.51.100.7";

export interface Host {
  ns: string;
  addr: string;
}

export interface Topology {
  router: string;
  outsideNs: string;
  /** The outside host's address on its wire (a client for DNAT). */
  outsideClient: string;
  /** The address servers outside are reached at (first loopback, else the wire address). */
  outsideServer: string;
  inside: Host[];
  floating: Array<{ fixed: Host; floating: string }>;
  redirects: Array<{ dst: string; dport: number }>;
  outputDnat: string[];
  gatewayMtu: number;
  insideMtu: number;
  gatewayAddress: string;
  /** The router's primary address on the port of the first inside host. */
  insideGateway: string;
}

export function topologyOf(config: RouterConfig): Topology {
  const defaultRoute = config.routes.find((r) => /^default\b/.test(r.value.trim()));
  const gatewayName = defaultRoute ? /\bdev\s+(\S+)/.exec(defaultRoute.value)?.[1] : undefined;
  const gateway = config.ports.find((p) => p.name === gatewayName) ?? config.ports.find((p) => config.lab.some((h) => h.namespace === p.wire.namespace && h.loopback.length > 0));
  if (gateway === undefined) throw new Error("cannot tell the gateway port (no default route, no lab host with a loopback address)");
  const outside = config.lab.find((h) => h.namespace === gateway.wire.namespace);
  if (outside === undefined) throw new Error(`no lab host in ${gateway.wire.namespace}`);
  const inside: Host[] = [];
  for (const host of config.lab) {
    if (host.namespace === outside.namespace) continue;
    for (const cidr of host.addresses) inside.push({ ns: host.namespace, addr: formatIpv4(cidr.addr) });
  }
  const rules = parseConfigRules(config);
  const floating = [...floatingIpsOf(rules)].flatMap(([fixed, floatingIp]) => {
    const host = inside.find((h) => h.addr === fixed);
    return host ? [{ fixed: host, floating: floatingIp }] : [];
  });
  const redirects: Topology["redirects"] = [];
  for (const name of chainsReachableFrom(rules, "PREROUTING")) {
    for (const rule of rules.chains.get(name)?.rules ?? []) {
      if (rule.target.kind !== TargetKind.Redirect || rule.dst.mask !== 0xffffffff || rule.dst.invert) continue;
      const ports = rule.matches.find((m) => m.kind === "tcp");
      const dport = ports !== undefined && "dport" in ports ? ports.dport?.min : undefined;
      if (rule.protocol === 6 && dport !== undefined) redirects.push({ dst: formatIpv4(rule.dst.addr), dport });
    }
  }
  const insidePorts = config.ports.filter((p) => p !== gateway);
  return {
    router: config.namespace,
    outsideNs: outside.namespace,
    outsideClient: formatIpv4(outside.addresses[0]!.addr),
    outsideServer: formatIpv4((outside.loopback[0] ?? outside.addresses[0])!.addr),
    inside,
    floating,
    redirects,
    outputDnat: outputDnatLocalAddresses(config, rules).map((c) => formatIpv4(c.addr)),
    gatewayMtu: gateway.mtu,
    insideMtu: Math.min(...insidePorts.map((p) => p.mtu)),
    gatewayAddress: formatIpv4(gateway.addresses[0]!.addr),
    insideGateway: formatIpv4(config.ports.find((p) => p.wire.namespace === inside[0]?.ns)?.addresses[0]?.addr ?? 0),
  };
}

function byPorts(ports: readonly number[]): (entry: CtEntry) => boolean {
  const set = new Set(ports);
  return (entry) =>
    (entry.original.sport !== undefined && set.has(entry.original.sport)) || (entry.original.dport !== undefined && entry.protocol !== "icmp" && set.has(entry.original.dport));
}

const udp = (src: string, sport: number, dst: string, dport: number, extra: Record<string, unknown> = {}): ClientAction => ({ kind: "udp", src, sport, dst, dport, size: 100, wait: 1, ...extra });
const tcp = (src: string, sport: number, dst: string, dport: number, extra: Record<string, unknown> = {}): ClientAction => ({ kind: "tcp", src, sport, dst, dport, size: 1000, close: "fin", wait: 3, ...extra });

/** Every scenario that applies to the config, in a fixed order. */
export function plansFor(config: RouterConfig): Plan[] {
  const t = topologyOf(config);
  const plans: Plan[] = [];
  const out = t.outsideServer;
  const servers = { [t.outsideNs]: { udp: [UDP_SERVER], tcp: [TCP_SERVER] } };
  const insideNs = [...new Set(t.inside.map((h) => h.ns))];
  /** One client per inside address, each with its own actions. */
  const fromEachInside = (make: (h: Host, i: number) => ClientAction[]) => t.inside.map((h, i) => ({ ns: h.ns, actions: make(h, i) }));
  const sports = (base: number) => t.inside.map((_, i) => base + i);

  plans.push({
    name: "UDP request/reply from every inside host (SNAT)",
    agents: servers,
    steps: [fromEachInside((h, i) => [udp(h.addr, 40100 + i, out, UDP_SERVER)])],
    knownPorts: [...sports(40100), UDP_SERVER],
    conntrack: byPorts(sports(40100)),
  });
  plans.push({
    name: "TCP open, 1000 bytes, close with FIN from every inside host (TIME_WAIT)",
    agents: servers,
    steps: [fromEachInside((h, i) => [tcp(h.addr, 40200 + i, out, TCP_SERVER)])],
    knownPorts: [...sports(40200), TCP_SERVER],
    conntrack: byPorts(sports(40200)),
    settleMs: 500,
  });
  const first = t.inside[0]!;
  plans.push({
    name: "TCP closed with RST by the server (CLOSE)",
    agents: servers,
    steps: [[{ ns: first.ns, actions: [tcp(first.addr, 40300, out, TCP_SERVER, { close: "rst" })] }]],
    knownPorts: [40300, TCP_SERVER],
    conntrack: byPorts([40300]),
    settleMs: 500,
  });
  plans.push({
    name: "TCP and UDP to a closed port outside: RST, and ICMP port unreachable through SNAT",
    agents: servers,
    steps: [[{ ns: first.ns, actions: [tcp(first.addr, 40400, out, CLOSED_PORT), udp(first.addr, 40401, out, CLOSED_PORT)] }]],
    knownPorts: [40400, 40401, CLOSED_PORT],
    conntrack: byPorts([40400, 40401]),
  });
  plans.push({
    name: "ICMP echo (crafted ids) from every inside host",
    steps: [
      fromEachInside((h, i) => [
        { kind: "raw", packets: [{ src: h.addr, dst: out, icmp: { type: 8, code: 0, id: 0x4400 + i, seq: 1 } }] },
        { kind: "sleep", seconds: 0.3 },
      ]),
    ],
    knownPorts: sports(0x4400),
    conntrack: (e) => e.protocol === "icmp" && sports(0x4400).includes(e.original.sport ?? -1),
  });
  plans.push({
    name: "the same source port from every inside host to the same server, UDP and TCP at once",
    agents: servers,
    steps: [t.inside.map((h) => ({ ns: h.ns, actions: [udp(h.addr, 40500, out, UDP_SERVER), tcp(h.addr, 40501, out, TCP_SERVER)] }))],
    knownPorts: [40500, 40501, UDP_SERVER, TCP_SERVER],
    conntrack: byPorts([40500, 40501]),
    settleMs: 500,
    racing: true,
    teardownTiming: true,
  });
  plans.push({
    name: "the router's own socket holds a source port a tenant then uses (port remapped)",
    agents: servers,
    steps: [
      [{ ns: t.router, actions: [udp(t.gatewayAddress, 40600, out, UDP_SERVER)] }],
      fromEachInside((h) => [udp(h.addr, 40600, out, UDP_SERVER)]),
    ],
    knownPorts: [40600, UDP_SERVER],
    conntrack: byPorts([40600]),
  });
  const MANY = 24;
  const manyUdp = Array.from({ length: MANY }, (_, i) => 41000 + i);
  const manyTcp = Array.from({ length: 8 }, (_, i) => 41100 + i);
  plans.push({
    name: `many connections at once: ${MANY} UDP + 8 TCP from every inside host, clashing source ports`,
    agents: servers,
    steps: [fromEachInside((h) => [...manyUdp.map((p) => udp(h.addr, p, out, UDP_SERVER)), ...manyTcp.map((p) => tcp(h.addr, p, out, TCP_SERVER, { size: 200 }))])],
    knownPorts: [...manyUdp, ...manyTcp, UDP_SERVER, TCP_SERVER],
    conntrack: byPorts([...manyUdp, ...manyTcp]),
    settleMs: 600,
    racing: true,
    teardownTiming: true,
  });

  for (const [n, f] of t.floating.entries()) {
    const base = 42000 + n * 100;
    plans.push({
      name: `DNAT: outside -> floating IP ${f.floating} reaches ${f.fixed.addr}, UDP and TCP`,
      agents: { [f.fixed.ns]: { udp: [UDP_SERVER], tcp: [TCP_SERVER] } },
      steps: [[{ ns: t.outsideNs, actions: [udp(t.outsideClient, base, f.floating, UDP_SERVER), tcp(t.outsideClient, base + 1, f.floating, TCP_SERVER)] }]],
      knownPorts: [base, base + 1, UDP_SERVER, TCP_SERVER],
      conntrack: byPorts([base, base + 1]),
      settleMs: 500,
    });
    const others = t.inside.filter((h) => h.addr !== f.fixed.addr);
    if (others.length > 0) {
      plans.push({
        name: `hairpin: inside hosts -> floating IP ${f.floating} (DNAT to ${f.fixed.addr}, then SNAT)`,
        agents: { [f.fixed.ns]: { udp: [UDP_SERVER], tcp: [TCP_SERVER] } },
        steps: [others.map((h, i) => ({ ns: h.ns, actions: [udp(h.addr, base + 10 + i, f.floating, UDP_SERVER), tcp(h.addr, base + 30 + i, f.floating, TCP_SERVER)] }))],
        knownPorts: [...others.map((_, i) => base + 10 + i), ...others.map((_, i) => base + 30 + i), UDP_SERVER, TCP_SERVER],
        conntrack: byPorts([...others.map((_, i) => base + 10 + i), ...others.map((_, i) => base + 30 + i)]),
        settleMs: 500,
      });
    }
    plans.push({
      name: `ICMP errors through DNAT: port unreachable from ${f.fixed.addr} and a RST reach the outside as from ${f.floating}`,
      agents: { [f.fixed.ns]: { udp: [UDP_SERVER] } },
      steps: [[{ ns: t.outsideNs, actions: [udp(t.outsideClient, base + 50, f.floating, CLOSED_PORT), tcp(t.outsideClient, base + 52, f.floating, CLOSED_PORT)] }]],
      knownPorts: [base + 50, base + 52, UDP_SERVER, CLOSED_PORT],
      conntrack: byPorts([base + 50, base + 52]),
    });
    plans.push({
      name: `ICMP time exceeded at the router for a packet to the floating IP ${f.floating} (DNATed, TTL 1)`,
      agents: { [f.fixed.ns]: { udp: [UDP_SERVER] } },
      steps: [[{ ns: t.outsideNs, actions: [udp(t.outsideClient, base + 51, f.floating, UDP_SERVER, { ttl: 1 })] }]],
      knownPorts: [base + 51, UDP_SERVER],
      conntrack: byPorts([base + 51]),
    });
  }

  // TCP window tracking (tcp_in_window): a real transfer with window scaling, and a crafted
  // connection through the floating IP that the outside then hits with segments out of the window.
  const scaledFloating = t.floating[0];
  plans.push({
    name: "TCP transfers of 60000 bytes with window scaling, through SNAT and through the floating IP",
    agents: { ...servers, ...(scaledFloating ? { [scaledFloating.fixed.ns]: { tcp: [TCP_SERVER] } } : {}) },
    steps: [[
      { ns: first.ns, actions: [tcp(first.addr, 43630, out, TCP_SERVER, { size: 60000 })] },
      ...(scaledFloating ? [{ ns: t.outsideNs, actions: [tcp(t.outsideClient, 43631, scaledFloating.floating, TCP_SERVER, { size: 60000 })] }] : []),
    ]],
    knownPorts: [43630, 43631, TCP_SERVER],
    conntrack: byPorts([43630, 43631]),
    settleMs: 500,
    documented: Object.fromEntries(
      [t.outsideNs, ...insideNs].map((ns) => [
        `wire into ${ns}`,
        "the senders' TSO/GSO super-packets cross qnat whole (TUN offload) and the kernel twin's veth path as MTU-sized segments: same bytes, other segment sizes (docs/differences.md, Forwarding)",
      ]),
    ),
  });
  if (scaledFloating) {
    const fixed = scaledFloating.fixed;
    const client = { src: t.outsideClient, dst: scaledFloating.floating };
    const server = { src: fixed.addr, dst: t.outsideClient };
    const fromClient = (flags: string, seq: number, ack: number, extra: Record<string, unknown> = {}) => ({ ...client, tcp: { sport: 43610, dport: 7110, flags, seq, ack, win: 502, ...extra } });
    const fromServer = (flags: string, seq: number, ack: number, extra: Record<string, unknown> = {}) => ({ ...server, tcp: { sport: 7110, dport: 43610, flags, seq, ack, win: 509, ...extra } });
    // MSS 1460, SACK permitted, NOP, window scale 7
    const synOptions = "020405b4040201030307";
    plans.push({
      name: `crafted: TCP with window scale through the floating IP ${scaledFloating.floating}: out-of-window data, an old RST and a blind RST from outside`,
      // No sockets hold this connection: the endpoints' kernels would answer every segment with a
      // RST, so their RSTs for these two ports are dropped (filter table only, no conntrack). The
      // kernel sends them with TTL 64; the crafted RSTs below have TTL 60 and pass.
      setup: [
        { ns: t.outsideNs, argv: ["iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", "43610", "--tcp-flags", "RST", "RST", "-m", "ttl", "--ttl-eq", "64", "-j", "DROP"] },
        { ns: fixed.ns, argv: ["iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", "7110", "--tcp-flags", "RST", "RST", "-m", "ttl", "--ttl-eq", "64", "-j", "DROP"] },
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
      knownPorts: [43610, 7110],
      conntrack: byPorts([43610]),
    });
  }

  if (insideNs.length >= 2) {
    const a = t.inside.find((h) => h.ns === insideNs[0])!;
    const b = t.inside.find((h) => h.ns === insideNs[1])!;
    plans.push({
      name: `between inside subnets without NAT: ${a.addr} <-> ${b.addr}`,
      agents: { [a.ns]: { udp: [UDP_SERVER], tcp: [TCP_SERVER] }, [b.ns]: { udp: [UDP_SERVER], tcp: [TCP_SERVER] } },
      steps: [[
        { ns: a.ns, actions: [udp(a.addr, 43000, b.addr, UDP_SERVER), tcp(a.addr, 43001, b.addr, TCP_SERVER)] },
        { ns: b.ns, actions: [udp(b.addr, 43002, a.addr, UDP_SERVER), tcp(b.addr, 43003, a.addr, TCP_SERVER)] },
      ]],
      knownPorts: [43000, 43001, 43002, 43003, UDP_SERVER, TCP_SERVER],
      conntrack: byPorts([43000, 43001, 43002, 43003]),
      settleMs: 500,
    });
  }

  plans.push({
    name: "traceroute through SNAT: TTL 1 expires at the router, TTL 2 beyond the outside host, then host unreachable",
    setup: [
      { ns: t.outsideNs, argv: ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"] },
      { ns: t.outsideNs, argv: ["ip", "route", "replace", "unreachable", "198.51.100.0/24"] },
    ],
    steps: [[{ ns: first.ns, actions: [udp(first.addr, 43100, BEYOND, 33434, { ttl: 1 }), udp(first.addr, 43101, BEYOND, 33435, { ttl: 2 }), udp(first.addr, 43102, BEYOND, 33436, { ttl: 5 })] }]],
    knownPorts: [43100, 43101, 43102, 33434, 33435, 33436],
    conntrack: byPorts([43100, 43101, 43102]),
  });

  for (const [n, r] of t.redirects.entries()) {
    const base = 43200 + n * 50;
    plans.push({
      name: `REDIRECT ${r.dst}:${r.dport} to the router's local server (metadata proxy)`,
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
      steps: [[
        { ns: first.ns, actions: [{ kind: "tcp", src: first.addr, sport: 43300, dst: insideGateway, dport: port, size: 16, close: "fin", wait: 1.5 }] },
        { ns: t.outsideNs, actions: [{ kind: "tcp", src: t.outsideClient, sport: 43301, dst: t.gatewayAddress, dport: port, size: 16, close: "fin", wait: 1.5 }] },
      ]],
      knownPorts: [43300, 43301, port],
      conntrack: byPorts([43300, 43301]),
    });
  }

  for (const [n, address] of t.outputDnat.entries()) {
    const f = t.floating.find((x) => x.floating === address);
    if (f === undefined) continue;
    const base = 43400 + n * 10;
    plans.push({
      name: `OUTPUT DNAT: the router's own host -> ${address} reaches ${f.fixed.addr}`,
      agents: { [f.fixed.ns]: { udp: [UDP_SERVER], tcp: [TCP_SERVER] } },
      steps: [[{ ns: t.router, actions: [udp("0.0.0.0", base, address, UDP_SERVER), tcp("0.0.0.0", base + 1, address, TCP_SERVER)] }]],
      knownPorts: [base, base + 1, UDP_SERVER, TCP_SERVER],
      conntrack: byPorts([base, base + 1]),
      settleMs: 500,
    });
  }

  // Crafted packets.
  plans.push({
    name: "crafted: TTL 1 (UDP, TCP SYN, ICMP echo) from inside",
    steps: [[{ ns: first.ns, actions: [{ kind: "raw", gap: 0.05, packets: [
      { src: first.addr, dst: out, ttl: 1, udp: { sport: 43500, dport: UDP_SERVER, data_len: 20 } },
      { src: first.addr, dst: out, ttl: 1, tcp: { sport: 43501, dport: TCP_SERVER, flags: "S" } },
      { src: first.addr, dst: out, ttl: 1, icmp: { type: 8, code: 0, id: 43502, seq: 1 } },
    ] }, { kind: "sleep", seconds: 0.3 }] }]],
    knownPorts: [43500, 43501, 43502, UDP_SERVER, TCP_SERVER],
    conntrack: byPorts([43500, 43501, 43502]),
  });
  plans.push({
    name: "crafted: TCP out of state (no connection): bare ACK, FIN, RST, SYN-ACK from inside",
    steps: [[{ ns: first.ns, actions: [{ kind: "raw", gap: 0.05, packets: [
      { src: first.addr, dst: out, tcp: { sport: 43600, dport: 7100, flags: "A", seq: 5000, ack: 7000 } },
      { src: first.addr, dst: out, tcp: { sport: 43601, dport: 7100, flags: "FA", seq: 5000, ack: 7000 } },
      { src: first.addr, dst: out, tcp: { sport: 43602, dport: 7100, flags: "R", seq: 5000 } },
      { src: first.addr, dst: out, tcp: { sport: 43603, dport: 7100, flags: "SA", seq: 5000, ack: 7000 } },
    ] }, { kind: "sleep", seconds: 0.3 }] }]],
    knownPorts: [43600, 43601, 43602, 43603, 7100],
    conntrack: byPorts([43600, 43601, 43602, 43603]),
  });
  plans.push({
    name: "crafted: GRE and SCTP INIT from inside (address-only NAT)",
    steps: [[{ ns: first.ns, actions: [{ kind: "raw", gap: 0.05, packets: [
      { src: first.addr, dst: out, proto: 47, payload_hex: "00000800" + "45".repeat(20) },
      { src: first.addr, dst: out, sctp: { sport: 43700, dport: 7200 } },
    ] }, { kind: "sleep", seconds: 0.3 }] }]],
    knownPorts: [43700, 7200],
    conntrack: (e) => (e.protocol === "gre" || e.protocol === "sctp" || e.protocol === "unknown") && e.original.src === first.addr,
    documented: { conntrack: "SCTP is tracked by address pair only, no ports or SCTP state; GRE without keys (docs/differences.md)" },
  });
  // rp_filter (the config's, strict by default; the twin sets the same sysctls): a source that
  // belongs behind another port, from the outside to a floating IP (checked after the DNAT) and
  // from inside toward the outside; each next to the same packet from a valid source.
  const spoofedInside = first.addr.replace(/\.\d+$/, ".77");
  const spoofTarget = t.floating[0];
  plans.push({
    name: `crafted: spoofed sources (rp_filter ${config.rpFilter}): ${spoofedInside} from the outside${spoofTarget ? ` to ${spoofTarget.floating}` : ""}, 203.0.113.99 from inside`,
    agents: {
      [t.outsideNs]: { udp: [UDP_SERVER] },
      ...(spoofTarget ? { [spoofTarget.fixed.ns]: { udp: [UDP_SERVER] } } : {}),
    },
    steps: [[
      ...(spoofTarget
        ? [{ ns: t.outsideNs, actions: [{ kind: "raw", gap: 0.05, packets: [
            { src: spoofedInside, dst: spoofTarget.floating, udp: { sport: 44000, dport: UDP_SERVER, data_len: 20 } },
            { src: t.outsideClient, dst: spoofTarget.floating, udp: { sport: 44001, dport: UDP_SERVER, data_len: 20 } },
          ] } as ClientAction, { kind: "sleep", seconds: 0.3 } as ClientAction] }]
        : []),
      { ns: first.ns, actions: [{ kind: "raw", gap: 0.05, packets: [
        { src: "203.0.113.99", dst: out, udp: { sport: 44002, dport: UDP_SERVER, data_len: 20 } },
        { src: first.addr, dst: out, udp: { sport: 44003, dport: UDP_SERVER, data_len: 20 } },
      ] }, { kind: "sleep", seconds: 0.3 }] },
    ]],
    knownPorts: [44000, 44001, 44002, 44003, UDP_SERVER],
    conntrack: byPorts([44000, 44001, 44002, 44003]),
  });
  // nf_conntrack_checksum=1 (Linux's default; qnat's too): a bad L4 checksum makes the packet
  // INVALID, so it is not tracked and leaves without NAT, its checksum as bad as it came.
  plans.push({
    name: "crafted: bad UDP, TCP and ICMP checksums from inside are INVALID (not tracked, not NATed)",
    agents: servers,
    steps: [[{ ns: first.ns, actions: [{ kind: "raw", gap: 0.05, packets: [
      { src: first.addr, dst: out, bad_csum: true, udp: { sport: 44100, dport: UDP_SERVER, data_len: 20 } },
      { src: first.addr, dst: out, bad_csum: true, tcp: { sport: 44101, dport: TCP_SERVER, flags: "S" } },
      { src: first.addr, dst: out, bad_csum: true, icmp: { type: 8, code: 0, id: 44102, seq: 1 } },
      { src: first.addr, dst: out, udp: { sport: 44103, dport: UDP_SERVER, data_len: 20 } },
    ] }, { kind: "sleep", seconds: 0.3 }] }]],
    knownPorts: [44100, 44101, 44102, 44103, UDP_SERVER, TCP_SERVER],
    conntrack: (e) => byPorts([44100, 44101, 44103])(e) || (e.protocol === "icmp" && e.original.sport === 44102),
  });
  const datagram = (sport: number, id: number) => ({ src: first.addr, dst: out, id, udp: { sport, dport: UDP_SERVER, data_len: 1200 } });
  const fragment = (of: object, offset: number, length: number) => ({ src: first.addr, dst: out, fragment: { of, offset, length } });
  const inOrder = datagram(43800, 0x5101);
  const reversed = datagram(43801, 0x5102);
  const overlapping = datagram(43802, 0x5103);
  plans.push({
    name: "fragmented UDP across the NAT: in order, out of order, overlapping",
    agents: { [t.outsideNs]: { udp: [UDP_SERVER] } },
    steps: [[{ ns: first.ns, actions: [
      { kind: "raw", gap: 0.02, packets: [fragment(inOrder, 0, 512), fragment(inOrder, 512, 512), fragment(inOrder, 1024, 184)] },
      { kind: "sleep", seconds: 0.2 },
      { kind: "raw", gap: 0.02, packets: [fragment(reversed, 1024, 184), fragment(reversed, 512, 512), fragment(reversed, 0, 512)] },
      { kind: "sleep", seconds: 0.2 },
      { kind: "raw", gap: 0.02, packets: [fragment(overlapping, 0, 512), fragment(overlapping, 504, 520), fragment(overlapping, 1024, 184)] },
      { kind: "sleep", seconds: 0.3 },
    ] }]],
    knownPorts: [43800, 43801, 43802, UDP_SERVER],
    conntrack: byPorts([43800, 43801, 43802]),
    documented: {
      conntrack: "Linux drops the overlapping datagram in defragmentation (ip_frag_queue), before conntrack: no entry; qnat tracks its first fragment and forwards the fragments, which the receiver then drops",
      [`wire into ${t.outsideNs}`]: "Linux reassembles before conntrack and sends the datagram on as it re-fragments it (in order, one frag size); qnat translates each fragment as it comes (virtual reassembly)",
    },
  });
  if (t.gatewayMtu < t.insideMtu) {
    const size = t.gatewayMtu - 28 + 100;
    plans.push({
      name: `DF and oversize: ${size + 28} bytes toward the gateway port's MTU ${t.gatewayMtu}`,
      agents: servers,
      steps: [[{ ns: first.ns, actions: [udp(first.addr, 43901, out, UDP_SERVER, { size, df: false }), udp(first.addr, 43900, out, UDP_SERVER, { size, df: true })] }]],
      knownPorts: [43900, 43901, UDP_SERVER],
      conntrack: byPorts([43900, 43901]),
    });
  }
  // Fragmentation on output (ip_fragment): a datagram as large as the gateway's MTU, from the
  // outside to a floating IP whose fixed host sits behind a smaller MTU (VXLAN's 1450). Crafted,
  // so its IP id is known and the fragments' ids, sizes, offsets and MF compare on the tenant wire.
  const overlay = t.floating.find((f) => (config.ports.find((p) => p.wire.namespace === f.fixed.ns)?.mtu ?? t.gatewayMtu) < t.gatewayMtu);
  if (overlay !== undefined) {
    const mtu = config.ports.find((p) => p.wire.namespace === overlay.fixed.ns)!.mtu;
    const whole = (sport: number, id: number, df: boolean) => ({ src: t.outsideClient, dst: overlay.floating, id, df, udp: { sport, dport: UDP_SERVER, data_len: t.gatewayMtu - 28 } });
    plans.push({
      name: `fragmentation on output: ${t.gatewayMtu} bytes without DF from the outside to ${overlay.floating} reach ${overlay.fixed.addr} as fragments for MTU ${mtu}; with DF, fragmentation needed`,
      agents: { [overlay.fixed.ns]: { udp: [UDP_SERVER] } },
      steps: [[{ ns: t.outsideNs, actions: [{ kind: "raw", gap: 0.1, packets: [whole(44200, 0x1450, false), whole(44201, 0x1451, true)] }, { kind: "sleep", seconds: 0.3 }] }]],
      knownPorts: [44200, 44201, UDP_SERVER],
      conntrack: byPorts([44200, 44201]),
      fragmentIds: true,
    });
  }
  return plans;
}
