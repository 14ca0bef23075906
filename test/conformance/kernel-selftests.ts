/**
 * The Linux kernel's own netfilter NAT tests (tools/testing/selftests/net/netfilter/), the IPv4
 * iptables-nat cases, told again as conformance scenarios: the same situation is built on the
 * kernel twin and on qnat from one config, and what the hosts observed and the connection tables
 * are compared (harness.ts), instead of the selftests' "PASS when the counter reads N".
 *
 * Every address is derived from the config (topologyOf): the inside host that plays the
 * selftests' client, the outside host, the router's addresses, and for the places "beyond" the
 * outside host addresses of the /24 that overlaps nothing of the config (addresses.ts, roomOf). A
 * rule a case needs (a MASQUERADE, a DNAT, a REDIRECT) is added to the router's own rules for that
 * scenario only, while it runs — on the twin with iptables-restore, on qnat with `qnat apply` —
 * and the config's rules come back afterwards. Ports are the selftests' own where they chose them
 * (1405, 1234/4321, 5201-5203 and 10000, 80 -> 8080); client ports and ICMP ids of our choosing
 * come from the harness's client block (t.port).
 *
 * | kernel test | scenario below |
 * | nft_nat.sh test_port_shadowing | portShadowing (default, then the `--to-ports 1406-65535 --random` fix) |
 * | nft_nat.sh test_dnat_clash | dnatClash |
 * | nf_nat_edemux.sh | redirectClash, outputDnatClash |
 * | conntrack_icmp_related.sh | icmpRelatedMtu |
 * | conntrack_tcp_unreplied.sh | unrepliedThenRedirect |
 * | conntrack_resize.sh | tableLimit (configs with a small conntrack.max only) |
 * | nft_nat.sh test_masquerade (fully-random) | masqueradeRandomFully |
 */
import { readFileSync } from "node:fs";
import { formatIpv4, parseCidr } from "../../src/core/addr.js";
import { parseConfig, type RouterConfig } from "../../src/config/config.js";
import { labPortOf } from "../../src/control/host-setup.js";
import { CLI, run, type ClientAction, type CtEntry, type Plan, type Side } from "./harness.js";
import { plansFor, TCP_SERVER, topologyOf, UDP_SERVER, type Host, type Topology } from "./scenarios.js";

/**
 * conntrack_resize.sh's case needs a table the flood can fill: configs with conntrack.max up to
 * this run it (and only it); its flood, twice the table, takes client ports 44600 upward.
 */
export const TABLE_LIMIT_AT_MOST = 64;

/** True when the config's connection table is small enough for the table-limit case (the twin's cannot be made small). */
export function isSmallTable(config: RouterConfig): boolean {
  return config.conntrack.max <= TABLE_LIMIT_AT_MOST;
}

/**
 * The nat text with `rules` (iptables -S rule bodies, without `-A CHAIN`) put first in CHAIN, as
 * `iptables -t nat -I CHAIN 1` would; works on `-S` and on iptables-save text.
 */
export function insertRules(nat: string, chain: string, rules: readonly string[]): string {
  const lines = nat.split("\n");
  const added = rules.map((rule) => `-A ${chain} ${rule}`);
  let at = lines.findIndex((line) => line.trim().startsWith(`-A ${chain} `));
  if (at < 0) at = lines.findIndex((line) => line.trim() === "COMMIT");
  if (at < 0) at = lines.length;
  return [...lines.slice(0, at), ...added, ...lines.slice(at)].join("\n");
}

const udp = (src: string, sport: number, dst: string, dport: number, extra: Record<string, unknown> = {}): ClientAction => ({ kind: "udp", src, sport, dst, dport, size: 100, wait: 1, ...extra });
const tcp = (src: string, sport: number, dst: string, dport: number, extra: Record<string, unknown> = {}): ClientAction => ({ kind: "tcp", src, sport, dst, dport, size: 1000, close: "fin", wait: 3, ...extra });
const sleep = (seconds: number): ClientAction => ({ kind: "sleep", seconds });
const raw = (packets: object[], gap = 0.05): ClientAction => ({ kind: "raw", gap, packets });
const bySport = (ports: readonly number[]) => (e: CtEntry) => e.protocol !== "icmp" && ports.includes(e.original.sport ?? -1);
const byIcmpId = (ids: readonly number[]) => (e: CtEntry) => e.protocol === "icmp" && ids.includes(e.original.sport ?? -1);
/** A shell command that succeeds when run again (scenarios are retried; setup runs each time). */
const idempotent = (command: string) => ["sh", "-c", command];

/**
 * The scenarios of scenarios.ts and the kernel selftests' for the config at PATH, or the
 * table-limit one alone for a config whose table is small (the others would compete with its
 * flood for entries).
 */
export function plansWithKernelSelftests(path: string): Plan[] {
  const config = parseConfig(readFileSync(path, "utf8"), path);
  return isSmallTable(config) ? kernelSelftestPlans(config) : [...plansFor(config), ...kernelSelftestPlans(config)];
}

/** The kernel selftests' scenarios that apply to the config (the table-limit one only on small-table configs). */
export function kernelSelftestPlans(config: RouterConfig): Plan[] {
  if (isSmallTable(config)) return [tableLimit(config)];
  const plans = [portShadowing(config, false), portShadowing(config, true), dnatClash(config), redirectClash(config)];
  const outputDnat = outputDnatClash(config);
  if (outputDnat) plans.push(outputDnat);
  plans.push(icmpRelatedMtu(config), unrepliedThenRedirect(config), masqueradeRandomFully(config));
  return plans;
}

interface Roles {
  t: Topology;
  /** A port of the harness's blocks, moved where the config's rules leave room (addresses.ts). */
  P: (defaultPort: number) => number;
  /** The selftests' client: the first inside host. */
  client: Host;
  /** The gateway port's name (the MASQUERADE rules' -o). */
  gatewayPort: string;
  nat: string;
}

function rolesOf(config: RouterConfig): Roles {
  const t = topologyOf(config);
  const gatewayPort = labPortOf(config, config.lab.find((h) => h.namespace === t.outsideNs)!).name;
  return { t, P: t.port, client: t.inside[0]!, gatewayPort, nat: config.nat.text };
}

/** Host N of the /24 "beyond the outside host" that nothing of the config overlaps (room.beyondNet). */
export function beyondAddress(t: Topology, host: number): string {
  return formatIpv4(parseCidr(t.room.beyondNet)!.addr + host);
}

/**
 * nft_nat.sh test_port_shadowing: a masqueraded inside host sends from the port of a service the
 * router itself runs (1405) to the outside; the outside host then asks the router's service from
 * the port it was sent to, and its datagram matches the masqueraded connection's reply tuple, so it
 * reaches the inside host instead of the router (Linux: "CLIENT"). The mitigation of the selftest
 * (`masquerade to :1406-65535 random` for source ports up to 1405) remaps the inside host's port,
 * and the outside's datagram reaches the router's own service ("ROUTER").
 */
function portShadowing(config: RouterConfig, mitigated: boolean): Plan {
  const { t, P, client, gatewayPort, nat } = rolesOf(config);
  const SERVICE = 1405;
  const outsidePort = P(mitigated ? 41406 : 41404);
  const masquerade = `-s ${client.addr}/32 -o ${gatewayPort} -j MASQUERADE`;
  const rules = mitigated ? [`-s ${client.addr}/32 -o ${gatewayPort} -p udp -m udp --sport 1:${SERVICE} -j MASQUERADE --to-ports 1406-65535 --random`, masquerade] : [masquerade];
  return {
    name: mitigated
      ? `kernel nft_nat.sh port shadowing, mitigated: MASQUERADE --to-ports 1406-65535 --random for source ports up to ${SERVICE}, so ${t.outsideClient}:${outsidePort} -> ${t.gatewayAddress}:${SERVICE} reaches the router's own service`
      : `kernel nft_nat.sh port shadowing: ${client.addr}:${SERVICE}, masqueraded, shadows the router's own UDP service ${t.gatewayAddress}:${SERVICE} for ${t.outsideClient}:${outsidePort}`,
    agents: { [t.router]: { udp: [SERVICE] }, [client.ns]: { udp: [SERVICE] } },
    steps: [
      [{ nat: insertRules(nat, "POSTROUTING", rules) }],
      // The shadow entry: from the service port to the outside host's port (nothing listens there: port unreachable comes back, RELATED).
      [{ ns: client.ns, actions: [raw([{ src: client.addr, dst: t.outsideClient, udp: { sport: SERVICE, dport: outsidePort, data_len: 20 } }]), sleep(0.3)] }],
      [{ ns: t.outsideNs, actions: [udp(t.outsideClient, outsidePort, t.gatewayAddress, SERVICE)] }],
    ],
    knownPorts: [SERVICE, outsidePort],
    conntrack: (e) => e.protocol === "udp" && (e.original.dport === outsidePort || e.original.sport === outsidePort),
  };
}

/**
 * nft_nat.sh test_dnat_clash: the inside host sends from port 4321 to the router's gateway
 * address, port 1234, which a DNAT rule sends to the router's own address on the inside port;
 * then from the same port straight to that address. Both flows map onto one reply tuple, so
 * the second gets a null binding with another source port (nf_nat_alloc_null_binding at LOCAL_IN),
 * and both get their answer.
 */
function dnatClash(config: RouterConfig): Plan {
  const { t, client, nat } = rolesOf(config);
  const rule = `-d ${t.gatewayAddress}/32 -p udp -m udp --dport 1234 -j DNAT --to-destination ${t.insideGateway}:1234`;
  return {
    name: `kernel nft_nat.sh UDP DNAT clash: ${client.addr}:4321 -> ${t.gatewayAddress}:1234 (DNAT to ${t.insideGateway}:1234), then ${client.addr}:4321 -> ${t.insideGateway}:1234 directly`,
    agents: { [t.router]: { udp: [1234] } },
    steps: [
      [{ nat: insertRules(nat, "PREROUTING", [rule]) }],
      [{ ns: client.ns, actions: [udp(client.addr, 4321, t.gatewayAddress, 1234)] }],
      [{ ns: client.ns, actions: [udp(client.addr, 4321, t.insideGateway, 1234)] }],
    ],
    knownPorts: [4321, 1234],
    conntrack: bySport([4321]),
  };
}

/**
 * nf_nat_edemux.sh, its REDIRECT half: two REDIRECT rules shaped like Neutron's metadata one
 * (`-d 169.254.169.254/32 -p tcp --dport P -j REDIRECT --to-ports L`) send ports 5202 and 5203 to
 * the router's local server on 5201; one client port (10000) reaches both, so the second
 * connection's reply tuple clashes with the first's (still in TIME_WAIT) and its source port is
 * remapped, and both connections complete.
 */
function redirectClash(config: RouterConfig): Plan {
  const { t, client, nat } = rolesOf(config);
  const METADATA = "169.254.169.254";
  const rules = [5202, 5203].map((port) => `-d ${METADATA}/32 -p tcp -m tcp --dport ${port} -j REDIRECT --to-ports 5201`);
  return {
    name: `kernel nf_nat_edemux.sh REDIRECT clash: ${client.addr}:10000 -> ${METADATA}:5202 and then :5203, both REDIRECTed to the router's port 5201`,
    agents: { [t.router]: { tcp: [5201] } },
    steps: [
      [{ nat: insertRules(nat, "PREROUTING", rules) }],
      [{ ns: client.ns, actions: [tcp(client.addr, 10000, METADATA, 5202)] }],
      [{ ns: client.ns, actions: [tcp(client.addr, 10000, METADATA, 5203)] }],
    ],
    knownPorts: [10000, 5201, 5202, 5203],
    conntrack: bySport([10000]),
    settleMs: 500,
  };
}

/**
 * nf_nat_edemux.sh, its DNAT half: the router's own host holds a connection from port 10001 to an
 * inside server, then connects from the same port to the floating IP that its OUTPUT chain DNATs
 * to that server: the same tuple after DNAT, so the source port is remapped (only for configs
 * with OUTPUT DNAT).
 */
function outputDnatClash(config: RouterConfig): Plan | undefined {
  const { t, P } = rolesOf(config);
  const f = t.floating.find((x) => t.outputDnat.includes(x.floating));
  if (f === undefined) return undefined;
  const TCP = P(TCP_SERVER);
  // Both connections from one address, as the selftest's client has one: left to the kernel, the
  // second would leave from the floating IP itself; from an inside address, the tenant SNAT rules
  // would take the second (hairpin). The gateway address is in no rule's source range.
  const own = t.gatewayAddress;
  const toServer = labPortOf(config, config.lab.find((h) => h.namespace === f.fixed.ns)!).name;
  return {
    name: `kernel nf_nat_edemux.sh OUTPUT DNAT clash: the router's host, ${own}:10001, to ${f.fixed.addr}:${TCP} and then to ${f.floating}:${TCP} (DNAT to the same server)`,
    // The router's own host ends these connections: its FINs are sniffed on its port toward the
    // server, so a retransmitted one (a round trip that outlasted its RTO) is seen as timing.
    sniffRouterHost: [toServer],
    agents: { [f.fixed.ns]: { tcp: [TCP] } },
    steps: [
      [{ ns: t.router, actions: [tcp(own, 10001, f.fixed.addr, TCP)] }],
      [{ ns: t.router, actions: [tcp(own, 10001, f.floating, TCP)] }],
    ],
    knownPorts: [10001, TCP],
    conntrack: bySport([10001]),
    settleMs: 500,
  };
}

/**
 * conntrack_icmp_related.sh: the router masquerades ICMP out of the gateway port; beyond the
 * outside host a link has MTU 1280. An echo of 1000 bytes with DF gets its reply; one of 1300
 * bytes gets "fragmentation needed, MTU 1280" from the outside host, which reaches the inside
 * host translated back (outer and embedded header), and so does the one a UDP socket's datagram
 * gets (the socket reads EMSGSIZE with the MTU). Nothing untranslated and no new connection.
 */
function icmpRelatedMtu(config: RouterConfig): Plan {
  const { t, P, client, gatewayPort, nat } = rolesOf(config);
  const far = beyondAddress(t, 200);
  const [echoNear, echoFar, sport, dport] = [P(44570), P(44571), P(44572), P(44573)];
  // A link with MTU 1280 leading nowhere (a veth pair inside the outside host's namespace).
  const device = "qnatmtu0";
  const echo = (id: number, dst: string, total: number) => ({ src: client.addr, dst, df: true, icmp: { type: 8, code: 0, id, seq: 1, data_len: total - 28 } });
  return {
    name: `kernel conntrack_icmp_related.sh: fragmentation needed (MTU 1280 beyond ${t.outsideClient}) reaches ${client.addr} through MASQUERADE, RELATED, for ICMP echo and UDP`,
    setup: [
      { ns: t.outsideNs, argv: idempotent(`echo 1 > /proc/sys/net/ipv4/ip_forward; ip link show ${device} >/dev/null 2>&1 || ip link add ${device} type veth peer name ${device}p; ip link set ${device}p up; ip link set ${device} mtu 1280 up; ip route replace ${far}/32 dev ${device}`) },
      // The client's kernel remembers a path MTU it learnt (a retried scenario must send again).
      { ns: client.ns, argv: ["ip", "route", "flush", "cache"] },
    ],
    steps: [
      [{ nat: insertRules(nat, "POSTROUTING", [`-o ${gatewayPort} -p icmp -j MASQUERADE`]) }],
      [{ ns: client.ns, actions: [
        raw([echo(echoNear, t.outsideServer, 1000)]), sleep(0.3),
        raw([echo(echoFar, far, 1300)]), sleep(0.3),
        udp(client.addr, sport, far, dport, { size: 1300 - 28, df: true }),
      ] }],
    ],
    knownPorts: [echoNear, echoFar, sport, dport],
    conntrack: (e) => byIcmpId([echoNear, echoFar])(e) || bySport([sport])(e),
  };
}

/**
 * conntrack_tcp_unreplied.sh: SYNs to a virtual IP that nothing answers (the outside host
 * blackholes it) leave an UNREPLIED SYN_SENT entry; then a REDIRECT of that address's port 80 to
 * the router's port 8080 appears (`qnat apply` / iptables-restore). A retransmitted SYN of the old
 * connection keeps its entry and its SNAT (NAT runs only for a new connection), a new connection
 * is redirected and completes, and the unreplied entry still expires within SYN_SENT's 120 s.
 */
function unrepliedThenRedirect(config: RouterConfig): Plan {
  const { t, P, client, nat } = rolesOf(config);
  const vip = beyondAddress(t, 201);
  const [unreplied, redirected] = [P(44560), P(44561)];
  const syn = { src: client.addr, dst: vip, tcp: { sport: unreplied, dport: 80, flags: "S", seq: 1000 } };
  return {
    name: `kernel conntrack_tcp_unreplied.sh: unreplied SYNs to ${vip}:80, then a REDIRECT to the router's 8080 appears (qnat apply): the old entry keeps its NAT, a new connection is redirected`,
    setup: [{ ns: t.outsideNs, argv: ["ip", "route", "replace", "blackhole", `${vip}/32`] }],
    agents: { [t.router]: { tcp: [8080] } },
    steps: [
      [{ ns: client.ns, actions: [raw([syn, syn], 0.2), sleep(0.3)] }],
      [{ nat: insertRules(nat, "PREROUTING", [`-d ${vip}/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080`]) }],
      [{ ns: client.ns, actions: [raw([syn]), sleep(0.3), tcp(client.addr, redirected, vip, 80)] }],
    ],
    knownPorts: [unreplied, redirected, 80, 8080],
    conntrack: bySport([unreplied, redirected]),
    settleMs: 500,
    async invariants(side: Side) {
      const entry = (await side.conntrack()).find((e) => e.protocol === "tcp" && e.original.sport === unreplied);
      if (entry === undefined) return ["the unreplied connection has no entry"];
      return [`the unreplied ${entry.state ?? "?"} entry times out ${entry.timeout <= 120 ? "within" : "after"} 120 s (nf_conntrack_tcp_timeout_syn_sent)`];
    },
  };
}

/**
 * nft_nat.sh test_masquerade with fully-random: the inside host masqueraded with
 * `--random-fully` (NF_NAT_RANGE_PROTO_RANDOM_FULLY): its echo id and its UDP and TCP source
 * ports are replaced by random ones even though they are free, and replies come back.
 */
function masqueradeRandomFully(config: RouterConfig): Plan {
  const { t, P, client, gatewayPort, nat } = rolesOf(config);
  const out = t.outsideServer;
  const [UDP, TCP] = [P(UDP_SERVER), P(TCP_SERVER)];
  const [udpPort, tcpPort, echoId] = [P(44580), P(44581), P(44582)];
  const echo = (seq: number) => ({ src: client.addr, dst: out, icmp: { type: 8, code: 0, id: echoId, seq } });
  return {
    name: `kernel nft_nat.sh masquerade fully-random: ${client.addr} leaves as ${t.gatewayAddress} with random ports and echo id (MASQUERADE --random-fully)`,
    agents: { [t.outsideNs]: { udp: [UDP], tcp: [TCP] } },
    steps: [
      [{ nat: insertRules(nat, "POSTROUTING", [`-s ${client.addr}/32 -o ${gatewayPort} -j MASQUERADE --random-fully`]) }],
      [{ ns: client.ns, actions: [raw([echo(1), echo(2)], 0.2), sleep(0.3), udp(client.addr, udpPort, out, UDP), tcp(client.addr, tcpPort, out, TCP)] }],
    ],
    knownPorts: [udpPort, tcpPort, echoId, UDP, TCP],
    conntrack: (e) => bySport([udpPort, tcpPort])(e) || byIcmpId([echoId])(e),
    settleMs: 500,
  };
}

/** The whole table of one router: entries, the count it reports, its limit, and what a `-p udp` listing holds. */
async function tableFacts(side: Side): Promise<{ entries: CtEntry[]; count: number; limit: number; udpListed: number }> {
  const ns = side.config.namespace;
  const entries = await side.conntrack();
  if (side.name === "kernel") {
    const count = Number(run("ip", ["netns", "exec", ns, "conntrack", "-C"]).stdout.trim());
    const limit = Number(run("ip", ["netns", "exec", ns, "sysctl", "-n", "net.netfilter.nf_conntrack_max"]).stdout.trim());
    const udpListed = run("ip", ["netns", "exec", ns, "conntrack", "-L", "-p", "udp"]).stdout.split("\n").filter((l) => l.startsWith("udp")).length;
    return { entries, count, limit, udpListed };
  }
  const stats = JSON.parse(run(process.execPath, [CLI, "show", "stats", "--json", "--router", ns]).stdout) as { conntrack: { count: number; capacity: number } };
  const udpListed = run(process.execPath, [CLI, "conntrack", "-L", "-p", "udp", "--router", ns]).stdout.split("\n").filter((l) => l.startsWith("udp")).length;
  return { entries, count: stats.conntrack.count, limit: stats.conntrack.capacity, udpListed };
}

/**
 * conntrack_resize.sh (test_conntrack_max_limit, check_dump): a flood of new UDP connections,
 * twice the table's size, from the inside host; then one more request/reply. On qnat the table
 * is full (conntrack.max), early drop makes room for each new connection, and:
 *   - the count never exceeds the limit, equals the listing's length, and the listing names no
 *     connection twice; a `-p udp` listing holds exactly the listing's UDP entries;
 *   - every datagram of the flood crossed, translated (the outside's sniffer), and the last
 *     connection got its answer — on both routers.
 * What cannot be compared: the twin's table is not limited (net.netfilter.nf_conntrack_max is
 * read-only outside the host's first namespace, docs/conformance.md), so it holds the whole flood:
 * the flood's entries are left out of the conntrack section (the last connection's is in), and the
 * invariants are stated against each router's own limit. That qnat's table really was full is
 * checked on qnat alone (or the scenario tested nothing).
 */
function tableLimit(config: RouterConfig): Plan {
  const { t, P, client } = rolesOf(config);
  const max = config.conntrack.max;
  const [SILENT, UDP, last] = [P(7099), P(UDP_SERVER), P(44590)];
  const flood = Array.from({ length: 2 * max }, (_, i) => P(44600) + i);
  return {
    name: `kernel conntrack_resize.sh table limit: ${flood.length} new UDP connections through a table of ${max} (conntrack.max), then one more request/reply`,
    setup: [{ ns: t.outsideNs, argv: idempotent(`iptables -C INPUT -p udp --dport ${SILENT} -j DROP 2>/dev/null || iptables -A INPUT -p udp --dport ${SILENT} -j DROP`) }],
    agents: { [t.outsideNs]: { udp: [UDP] } },
    steps: [
      [{ ns: client.ns, actions: [raw(flood.map((sport) => ({ src: client.addr, dst: t.outsideServer, udp: { sport, dport: SILENT, data_len: 20 } })), 0.003), sleep(0.3)] }],
      [{ ns: client.ns, actions: [udp(client.addr, last, t.outsideServer, UDP)] }],
    ],
    knownPorts: [...flood, SILENT, last, UDP],
    conntrack: bySport([last]),
    async invariants(side: Side) {
      const facts = await tableFacts(side);
      const keys = facts.entries.map((e) => `${e.protocol} ${e.original.src}:${e.original.sport ?? ""} > ${e.original.dst}:${e.original.dport ?? ""}`);
      const twice = keys.length - new Set(keys).size;
      const udpEntries = facts.entries.filter((e) => e.protocol === "udp").length;
      if (side.name === "qnat" && (facts.count < max || facts.limit !== max)) {
        throw new Error(`qnat: the flood left the table at ${facts.count} of ${facts.limit} entries (conntrack.max ${max}): the table-limit scenario tested nothing`);
      }
      return [
        `the count is ${facts.count <= facts.limit ? "within" : "OVER"} the table's limit`,
        `the count ${facts.count === facts.entries.length ? "equals" : "differs from"} the listing's length`,
        twice === 0 ? "the listing names no connection twice" : `the listing names ${twice} connections twice`,
        `a -p udp listing holds ${facts.udpListed === udpEntries ? "exactly" : "other than"} the listing's UDP entries`,
      ];
    },
  };
}
