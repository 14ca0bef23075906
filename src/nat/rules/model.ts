/**
 * The typed model of an iptables `nat` table, as `iptables -t nat -S` / `iptables-save` describe it.
 *
 * Everything a rule tests is numeric (addresses uint32 with a mask, protocol number, port ranges,
 * conntrack state bitmask) so the evaluator (evaluate.ts) can compile it into flat typed arrays;
 * the source tokens and line are kept for messages and traces. The printer (format.ts) regenerates
 * canonical iptables text from the numeric fields, so `-s 10.0.0.2` prints as `-s 10.0.0.2/32`.
 *
 * Linux references: include/uapi/linux/netfilter_ipv4/ip_tables.h (struct ipt_ip),
 * include/uapi/linux/netfilter/nf_nat.h (NF_NAT_RANGE_*), xt_conntrack.h (state bits),
 * net/netfilter/xt_nat.c and xt_MASQUERADE.c / xt_REDIRECT.c (which hooks each target may use).
 */

/**
 * The netfilter hooks the nat table is attached to. Consecutive numbers (Linux numbers them
 * NF_INET_PRE_ROUTING 0, LOCAL_IN 1, FORWARD 2, LOCAL_OUT 3, POST_ROUTING 4; nat has no FORWARD).
 */
export enum Hook {
  Prerouting = 0,
  Input = 1,
  Output = 2,
  Postrouting = 3,
}

export const HOOK_COUNT = 4;

/** Built-in chain names, indexed by Hook; also the order `iptables -S` prints them in. */
export const BUILTIN_CHAIN_NAMES: readonly string[] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];

export function hookOfChainName(name: string): Hook | undefined {
  const index = BUILTIN_CHAIN_NAMES.indexOf(name);
  return index < 0 ? undefined : (index as Hook);
}

/**
 * Conntrack state bits as `-m conntrack --ctstate` tests them (xt_conntrack.c). The numeric values
 * are qnat's own; the order is the order libxt_conntrack prints them in (print_state).
 * SNAT/DNAT: the connection's reply tuple differs from the inverted original in its destination /
 * source (Linux IPS_SRC_NAT / IPS_DST_NAT); the NAT engine supplies these bits.
 */
export enum CtState {
  Invalid = 1 << 0,
  New = 1 << 1,
  Related = 1 << 2,
  Established = 1 << 3,
  Untracked = 1 << 4,
  Snat = 1 << 5,
  Dnat = 1 << 6,
}

/** `--ctstate` names in libxt_conntrack print order. */
export const CT_STATE_NAMES: ReadonlyArray<readonly [string, CtState]> = [
  ["INVALID", CtState.Invalid],
  ["NEW", CtState.New],
  ["RELATED", CtState.Related],
  ["ESTABLISHED", CtState.Established],
  ["UNTRACKED", CtState.Untracked],
  ["SNAT", CtState.Snat],
  ["DNAT", CtState.Dnat],
];

/** States `-m state --state` knows (libxt_state: no SNAT/DNAT). */
export const STATE_MATCH_MASK =
  CtState.Invalid | CtState.New | CtState.Related | CtState.Established | CtState.Untracked;

/** An address test: `(packet & mask) == addr`, addr already masked as iptables stores it. */
export interface AddressMatch {
  readonly addr: number;
  readonly mask: number;
  readonly invert: boolean;
}

/** Matches any address (mask 0): not printed. */
export const ANY_ADDRESS: AddressMatch = { addr: 0, mask: 0, invert: false };

/** `-i NAME` / `-o NAME`; a trailing `+` matches every name with that prefix (`+` alone: any). */
export interface InterfaceMatch {
  readonly name: string;
  readonly invert: boolean;
}

export interface PortRange {
  readonly min: number;
  readonly max: number;
}

export interface TcpFlagsMatch {
  readonly mask: number;
  readonly comp: number;
  readonly invert: boolean;
}

/** `-m tcp` / `-m udp` (libxt_tcp.c, libxt_udp.c); `tcpFlags` only for tcp. */
export interface PortsMatch {
  readonly kind: "tcp" | "udp";
  sport: PortRange | undefined;
  sportInvert: boolean;
  dport: PortRange | undefined;
  dportInvert: boolean;
  tcpFlags: TcpFlagsMatch | undefined;
}

export type MultiportDirection = "sports" | "dports" | "ports";

/** `-m multiport` (libxt_multiport.c, revision 1: ranges allowed, at most 15 ports). */
export interface MultiportMatch {
  readonly kind: "multiport";
  direction: MultiportDirection | undefined;
  ranges: PortRange[];
  invert: boolean;
}

/** `-m icmp --icmp-type` (libipt_icmp.c): type 255 = any; code range. */
export interface IcmpMatch {
  readonly kind: "icmp";
  type: number;
  codeMin: number;
  codeMax: number;
  invert: boolean;
}

/** `-m conntrack --ctstate` or `-m state --state`: a CtState bitmask. */
export interface StateMatch {
  readonly kind: "conntrack" | "state";
  stateMask: number;
  invert: boolean;
  /** True once the state option was given (both modules require it). */
  given: boolean;
}

export interface CommentMatch {
  readonly kind: "comment";
  text: string | undefined;
}

export type RuleMatch = PortsMatch | MultiportMatch | IcmpMatch | StateMatch | CommentMatch;

export enum TargetKind {
  /** No `-j`: the rule only counts. */
  None = 0,
  Accept,
  Return,
  Jump,
  Goto,
  Dnat,
  Snat,
  Redirect,
  Masquerade,
}

/** NF_NAT_RANGE_* flags (include/uapi/linux/netfilter/nf_nat.h). */
export enum NatRangeFlag {
  MapIps = 1 << 0,
  ProtoSpecified = 1 << 1,
  ProtoRandom = 1 << 2,
  Persistent = 1 << 3,
  ProtoRandomFully = 1 << 4,
}

/** The range a NAT target maps to (struct nf_nat_range). Ports only with ProtoSpecified. */
export interface NatRange {
  flags: number;
  minAddr: number;
  maxAddr: number;
  minPort: number;
  maxPort: number;
}

export type RuleTarget =
  | { readonly kind: TargetKind.None | TargetKind.Accept | TargetKind.Return }
  | { readonly kind: TargetKind.Jump | TargetKind.Goto; readonly chain: string }
  | {
      readonly kind: TargetKind.Dnat | TargetKind.Snat | TargetKind.Redirect | TargetKind.Masquerade;
      readonly range: NatRange;
    };

export interface NatRule {
  readonly chain: string;
  /** 1-based line of the source text. */
  readonly line: number;
  /** The source tokens of the rule (after `-A CHAIN`), as written. */
  readonly tokens: readonly string[];
  readonly src: AddressMatch;
  readonly dst: AddressMatch;
  readonly inInterface: InterfaceMatch | undefined;
  readonly outInterface: InterfaceMatch | undefined;
  /** IP protocol number; 0 = all. */
  readonly protocol: number;
  readonly protocolInvert: boolean;
  /** Match extensions in the order iptables loaded them (and prints them). */
  readonly matches: readonly RuleMatch[];
  readonly target: RuleTarget;
  packets: number;
  bytes: number;
}

export interface NatChain {
  readonly name: string;
  /** The hook of a built-in chain, undefined for a user chain. */
  readonly hook: Hook | undefined;
  /** "ACCEPT" for built-in chains (the only policy qnat's nat table allows); undefined for user chains. */
  policy: string | undefined;
  /** Policy counters of a built-in chain (`-P CHAIN ACCEPT -c P B`). */
  packets: number;
  bytes: number;
  /** Line that created the chain (`-N`, `:CHAIN`), 0 for built-ins never declared. */
  line: number;
  readonly rules: NatRule[];
}

export interface NatTable {
  /** Every chain by name, built-ins included. */
  readonly chains: Map<string, NatChain>;
}

export function createNatTable(): NatTable {
  const chains = new Map<string, NatChain>();
  BUILTIN_CHAIN_NAMES.forEach((name, hook) => {
    chains.set(name, { name, hook: hook as Hook, policy: "ACCEPT", packets: 0, bytes: 0, line: 0, rules: [] });
  });
  return { chains };
}

/** Byte-wise name order, as libiptc keeps user chains (strcmp). */
export function compareChainNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Chains in `iptables -S` order: built-ins in hook order, then user chains sorted by name. */
export function chainsInOrder(table: NatTable): NatChain[] {
  const builtins: NatChain[] = [];
  const user: NatChain[] = [];
  for (const chain of table.chains.values()) (chain.hook === undefined ? user : builtins).push(chain);
  builtins.sort((a, b) => (a.hook as number) - (b.hook as number));
  user.sort((a, b) => compareChainNames(a.name, b.name));
  return builtins.concat(user);
}

/** Every rule of the table in print order (the evaluator's rule indices follow this order). */
export function rulesInOrder(table: NatTable): NatRule[] {
  const rules: NatRule[] = [];
  for (const chain of chainsInOrder(table)) rules.push(...chain.rules);
  return rules;
}

/**
 * IP protocol names as getprotobynumber(3) gives them from netbase's /etc/protocols, which is what
 * iptables prints (print_proto in iptables.c); numbers without a name print as numbers.
 */
export const PROTOCOL_NAMES: ReadonlyMap<number, string> = new Map([
  [1, "icmp"],
  [2, "igmp"],
  [4, "ipencap"],
  [6, "tcp"],
  [8, "egp"],
  [17, "udp"],
  [33, "dccp"],
  [41, "ipv6"],
  [47, "gre"],
  [50, "esp"],
  [51, "ah"],
  [58, "ipv6-icmp"],
  [89, "ospf"],
  [94, "ipip"],
  [103, "pim"],
  [112, "vrrp"],
  [115, "l2tp"],
  [132, "sctp"],
  [136, "udplite"],
]);

export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_DCCP = 33;
export const PROTO_SCTP = 132;
export const PROTO_UDPLITE = 136;
