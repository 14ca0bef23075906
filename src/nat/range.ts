/**
 * A NAT range: what a SNAT/DNAT/MASQUERADE/REDIRECT target asks the NAT engine for, as Linux
 * `struct nf_nat_range2` (include/uapi/linux/netfilter/nf_nat.h) restricted to IPv4.
 *
 * Addresses are uint32 (host order), ports 0..65535 (the ICMP identifier for ICMP queries). The
 * flag bits have the same values as Linux NF_NAT_RANGE_* so traces and tests can be compared with
 * `conntrack -L` / kernel sources. Ranges are control-plane objects: the dataplane builds one per
 * rule (or per port address for MASQUERADE/REDIRECT) and reuses it; `setupNat` only reads it.
 */
import { formatIpv4 } from "../core/addr.js";

/** NF_NAT_RANGE_MAP_IPS: the address is to be mapped into [minAddr, maxAddr]. */
export const NF_NAT_RANGE_MAP_IPS = 1 << 0;
/** NF_NAT_RANGE_PROTO_SPECIFIED: ports given (`--to-source A:P1-P2`, `--to-ports`). */
export const NF_NAT_RANGE_PROTO_SPECIFIED = 1 << 1;
/** NF_NAT_RANGE_PROTO_RANDOM: `--random` (port offset from the random source, not the tuple hash). */
export const NF_NAT_RANGE_PROTO_RANDOM = 1 << 2;
/** NF_NAT_RANGE_PERSISTENT: `--persistent` (address choice ignores the other side's address). */
export const NF_NAT_RANGE_PERSISTENT = 1 << 3;
/** NF_NAT_RANGE_PROTO_RANDOM_FULLY: `--random-fully` (always remap, random offset). */
export const NF_NAT_RANGE_PROTO_RANDOM_FULLY = 1 << 4;
/** NF_NAT_RANGE_PROTO_RANDOM_ALL = RANDOM | RANDOM_FULLY (nf_nat.h). */
export const NF_NAT_RANGE_PROTO_RANDOM_ALL = NF_NAT_RANGE_PROTO_RANDOM | NF_NAT_RANGE_PROTO_RANDOM_FULLY;

export interface NatRange {
  minAddr: number;
  maxAddr: number;
  minPort: number;
  maxPort: number;
  /** NF_NAT_RANGE_* bits. */
  flags: number;
}

/** Which side of the tuple a binding changes (Linux `enum nf_nat_manip_type`). */
export enum Manip {
  /** SNAT, MASQUERADE: at POSTROUTING and INPUT. */
  Src = 0,
  /** DNAT, REDIRECT: at PREROUTING and OUTPUT. */
  Dst = 1,
}

export function natRange(minAddr: number, maxAddr = minAddr, minPort = 0, maxPort = minPort, flags = 0): NatRange {
  let f = flags | NF_NAT_RANGE_MAP_IPS;
  if (minPort !== 0 || maxPort !== 0) f |= NF_NAT_RANGE_PROTO_SPECIFIED;
  return { minAddr: minAddr >>> 0, maxAddr: maxAddr >>> 0, minPort, maxPort, flags: f };
}

/**
 * MASQUERADE (net/netfilter/nf_nat_masquerade.c, nf_nat_masquerade_ipv4): SNAT to the egress
 * port's primary address (inet_select_addr), keeping the rule's ports and random flags.
 * `rule` may be undefined when the rule gives no `--to-ports`.
 */
export function masqueradeRange(egressAddr: number, rule?: NatRange): NatRange {
  return oneAddressRange(egressAddr, rule);
}

/**
 * REDIRECT (net/netfilter/nf_nat_redirect.c, nf_nat_redirect_ipv4): DNAT to the ingress port's
 * primary address (127.0.0.1 for locally generated packets at OUTPUT — the caller passes it),
 * keeping the rule's `--to-ports` and random flags.
 */
export function redirectRange(localAddr: number, rule?: NatRange): NatRange {
  return oneAddressRange(localAddr, rule);
}

/** `addr` alone, with the rule's ports and flags (what MASQUERADE and REDIRECT both build). */
function oneAddressRange(addr: number, rule: NatRange | undefined): NatRange {
  return {
    minAddr: addr >>> 0,
    maxAddr: addr >>> 0,
    minPort: rule?.minPort ?? 0,
    maxPort: rule?.maxPort ?? 0,
    flags: (rule?.flags ?? 0) | NF_NAT_RANGE_MAP_IPS,
  };
}

/** `9.186.100.2:1024-65535 random persistent` (traces). */
export function formatNatRange(range: NatRange): string {
  let text =
    range.flags & NF_NAT_RANGE_MAP_IPS
      ? range.minAddr === range.maxAddr
        ? formatIpv4(range.minAddr)
        : `${formatIpv4(range.minAddr)}-${formatIpv4(range.maxAddr)}`
      : "";
  if (range.flags & NF_NAT_RANGE_PROTO_SPECIFIED) {
    text += range.minPort === range.maxPort ? `:${range.minPort}` : `:${range.minPort}-${range.maxPort}`;
  }
  if (range.flags & NF_NAT_RANGE_PROTO_RANDOM) text += " random";
  if (range.flags & NF_NAT_RANGE_PROTO_RANDOM_FULLY) text += " random-fully";
  if (range.flags & NF_NAT_RANGE_PERSISTENT) text += " persistent";
  return text;
}
