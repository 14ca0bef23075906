/**
 * The conntrack tuple encoding shared by conntrack, NAT and the dataplane. A tuple is five numbers:
 * (protocol, src, dst, sport, dport), addresses as uint32.
 *
 *  - TCP, UDP: sport/dport are the ports.
 *  - ICMP query messages (as Linux nf_conntrack_proto_icmp.c `icmp_pkt_to_tuple`): sport = identifier,
 *    dport = (type << 8) | code. The reply tuple swaps the addresses, keeps the identifier and maps
 *    the type with `invmap` (echo 8 <-> 0, timestamp 13 <-> 14, info 15 <-> 16, address mask 17 <-> 18).
 *  - every other protocol (GRE, SCTP, ...): generic, sport = dport = 0 (address pair only),
 *    as nf_conntrack_proto_generic.c.
 */
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../wire/packet-info.js";

export const ICMP_ECHO_REPLY = 0;
export const ICMP_ECHO = 8;
export const ICMP_TIMESTAMP = 13;
export const ICMP_TIMESTAMP_REPLY = 14;
export const ICMP_INFO_REQUEST = 15;
export const ICMP_INFO_REPLY = 16;
export const ICMP_ADDRESS = 17;
export const ICMP_ADDRESS_REPLY = 18;

/**
 * Linux `invmap[]` in nf_conntrack_proto_icmp.c, stored as inverse type + 1 so 0 means "no inverse".
 */
const ICMP_INVERSE_PLUS_ONE = new Uint8Array(256);
ICMP_INVERSE_PLUS_ONE[ICMP_ECHO] = ICMP_ECHO_REPLY + 1;
ICMP_INVERSE_PLUS_ONE[ICMP_ECHO_REPLY] = ICMP_ECHO + 1;
ICMP_INVERSE_PLUS_ONE[ICMP_TIMESTAMP] = ICMP_TIMESTAMP_REPLY + 1;
ICMP_INVERSE_PLUS_ONE[ICMP_TIMESTAMP_REPLY] = ICMP_TIMESTAMP + 1;
ICMP_INVERSE_PLUS_ONE[ICMP_INFO_REQUEST] = ICMP_INFO_REPLY + 1;
ICMP_INVERSE_PLUS_ONE[ICMP_INFO_REPLY] = ICMP_INFO_REQUEST + 1;
ICMP_INVERSE_PLUS_ONE[ICMP_ADDRESS] = ICMP_ADDRESS_REPLY + 1;
ICMP_INVERSE_PLUS_ONE[ICMP_ADDRESS_REPLY] = ICMP_ADDRESS + 1;

/** The reply type of an ICMP query type, or -1 when it has none (Linux `icmp_invert_tuple` fails). */
export function icmpInverseType(type: number): number {
  return ICMP_INVERSE_PLUS_ONE[type & 0xff]! - 1;
}

/**
 * Request types that may create a connection: `valid_new[]` in Linux nf_conntrack_icmp_packet.
 * A reply (echo reply...) with no connection is INVALID.
 */
export function icmpMayCreate(type: number): boolean {
  return type === ICMP_ECHO || type === ICMP_TIMESTAMP || type === ICMP_INFO_REQUEST || type === ICMP_ADDRESS;
}

/**
 * The inverse tuple's dport of an ICMP tuple dport ((type << 8) | code): the reply type, or the
 * same type when it has none (the callers have checked that it may be inverted), same code.
 */
export function icmpInverseDport(dport: number): number {
  const type = (dport >>> 8) & 0xff;
  const inverse = icmpInverseType(type);
  return ((inverse < 0 ? type : inverse) << 8) | (dport & 0xff);
}

/** The dport of an ICMP tuple: (type << 8) | code. */
export function icmpTupleDport(type: number, code: number): number {
  return ((type & 0xff) << 8) | (code & 0xff);
}

/** True for protocols whose tuples carry ports (or the ICMP identifier/type/code). */
export function protocolHasPorts(protocol: number): boolean {
  return protocol === IPPROTO_TCP || protocol === IPPROTO_UDP || protocol === IPPROTO_ICMP;
}
