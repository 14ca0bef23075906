/**
 * ICMP header (RFC 792) as named offsets and accessors over `(b, o)`, where `o` is the offset of
 * the ICMP header (the IPv4 L4 offset). Every ICMP message starts with type, code, checksum and a
 * 4-byte "rest of header": identifier + sequence for queries, unused / pointer / gateway / next-hop
 * MTU for errors. Errors then carry the offending datagram's IP header and at least its first
 * 8 data bytes (RFC 792; RFC 1812 section 4.3.2.3: as much as fits in 576 bytes).
 *
 * Contract: no checks here. After `parsePacket` accepted a packet with `hasL4` and protocol ICMP,
 * the 8-byte header is inside the packet (and for errors the embedded IPv4 header is too), so no
 * accessor can fail. Setters do not touch the checksum (rewrite.ts patches it).
 */
import { read16, read32, write16, write32 } from "./bytes.js";

export const ICMP_TYPE = 0;
export const ICMP_CODE = 1;
export const ICMP_CHECKSUM = 2;
export const ICMP_ID = 4;
export const ICMP_SEQ = 6;
/** The 4 bytes after the checksum (RFC 792 "rest of header"). */
export const ICMP_REST_OF_HEADER = 4;
/** Next-hop MTU of "fragmentation needed" (RFC 1191 section 4: low 16 bits of the rest of header). */
export const ICMP_NEXT_HOP_MTU = 6;
export const ICMP_HEADER_LENGTH = 8;

// Types (RFC 792, RFC 950, RFC 1256).
export const ICMP_ECHO_REPLY = 0;
export const ICMP_DEST_UNREACHABLE = 3;
export const ICMP_SOURCE_QUENCH = 4;
export const ICMP_REDIRECT = 5;
export const ICMP_ECHO_REQUEST = 8;
export const ICMP_ROUTER_ADVERTISEMENT = 9;
export const ICMP_ROUTER_SOLICITATION = 10;
export const ICMP_TIME_EXCEEDED = 11;
export const ICMP_PARAMETER_PROBLEM = 12;
export const ICMP_TIMESTAMP_REQUEST = 13;
export const ICMP_TIMESTAMP_REPLY = 14;
export const ICMP_INFO_REQUEST = 15;
export const ICMP_INFO_REPLY = 16;
export const ICMP_ADDRESS_MASK_REQUEST = 17;
export const ICMP_ADDRESS_MASK_REPLY = 18;

// Destination unreachable codes (RFC 792, RFC 1812 section 5.2.7.1).
export const ICMP_NET_UNREACHABLE = 0;
export const ICMP_HOST_UNREACHABLE = 1;
export const ICMP_PROTOCOL_UNREACHABLE = 2;
export const ICMP_PORT_UNREACHABLE = 3;
export const ICMP_FRAGMENTATION_NEEDED = 4;
export const ICMP_SOURCE_ROUTE_FAILED = 5;
export const ICMP_NET_PROHIBITED = 9;
export const ICMP_HOST_PROHIBITED = 10;
export const ICMP_ADMIN_PROHIBITED = 13;
// Time exceeded codes.
export const ICMP_TTL_EXCEEDED_IN_TRANSIT = 0;
export const ICMP_FRAGMENT_REASSEMBLY_TIME_EXCEEDED = 1;

/**
 * Error messages that embed the offending datagram: 3, 4, 5, 11, 12 (Linux icmp_pointers[].error,
 * net/ipv4/icmp.c; conntrack treats them as RELATED in nf_conntrack_proto_icmp.c icmp_error).
 */
export function icmpIsError(type: number): boolean {
  return type === 3 || type === 4 || type === 5 || type === 11 || type === 12;
}

/**
 * Query messages whose identifier conntrack and NAT track: echo, timestamp, information,
 * address mask requests and replies (Linux nf_conntrack_proto_icmp.c valid_new / invmap).
 */
export function icmpIsQuery(type: number): boolean {
  return type === 0 || type === 8 || (type >= 13 && type <= 18);
}

export function icmpType(b: Uint8Array, o: number): number {
  return b[o + ICMP_TYPE]!;
}
export function icmpCode(b: Uint8Array, o: number): number {
  return b[o + ICMP_CODE]!;
}
export function icmpChecksum(b: Uint8Array, o: number): number {
  return read16(b, o + ICMP_CHECKSUM);
}
export function icmpId(b: Uint8Array, o: number): number {
  return read16(b, o + ICMP_ID);
}
export function icmpSeq(b: Uint8Array, o: number): number {
  return read16(b, o + ICMP_SEQ);
}
export function icmpRestOfHeader(b: Uint8Array, o: number): number {
  return read32(b, o + ICMP_REST_OF_HEADER);
}
export function icmpNextHopMtu(b: Uint8Array, o: number): number {
  return read16(b, o + ICMP_NEXT_HOP_MTU);
}

export function setIcmpType(b: Uint8Array, o: number, v: number): void {
  b[o + ICMP_TYPE] = v;
}
export function setIcmpCode(b: Uint8Array, o: number, v: number): void {
  b[o + ICMP_CODE] = v;
}
export function setIcmpChecksum(b: Uint8Array, o: number, v: number): void {
  write16(b, o + ICMP_CHECKSUM, v);
}
export function setIcmpId(b: Uint8Array, o: number, v: number): void {
  write16(b, o + ICMP_ID, v);
}
export function setIcmpSeq(b: Uint8Array, o: number, v: number): void {
  write16(b, o + ICMP_SEQ, v);
}
export function setIcmpRestOfHeader(b: Uint8Array, o: number, v: number): void {
  write32(b, o + ICMP_REST_OF_HEADER, v);
}
export function setIcmpNextHopMtu(b: Uint8Array, o: number, v: number): void {
  write16(b, o + ICMP_NEXT_HOP_MTU, v);
}
