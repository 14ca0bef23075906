/**
 * IPv4 header (RFC 791 section 3.1) as named offsets and accessors over `(b, o)`, where `o` is
 * the offset of the IPv4 header in `b`.
 *
 * Contract (smoltcp's): these accessors do no checks. After `parsePacket` (validate.ts) accepted
 * the packet, the header and every offset it implies lie inside the buffer, so no accessor can
 * fail; before that, call none of them. Setters write the raw field and do NOT touch the header
 * checksum, except `ipv4DecrementTtl` (incremental, RFC 1624) and `ipv4FillChecksum` (full).
 * Address rewrites that must keep the L4 checksum right live in rewrite.ts.
 */
import { read16, read32, write16, write32 } from "./bytes.js";
import { checksumUpdate16, internetChecksum, onesComplementSum } from "./checksum.js";

export const IPV4_VERSION_IHL = 0;
export const IPV4_TOS = 1;
export const IPV4_TOTAL_LENGTH = 2;
export const IPV4_ID = 4;
export const IPV4_FLAGS_FRAGMENT = 6;
export const IPV4_TTL = 8;
export const IPV4_PROTOCOL = 9;
export const IPV4_CHECKSUM = 10;
export const IPV4_SRC = 12;
export const IPV4_DST = 16;
/** Header without options (IHL 5). */
export const IPV4_MIN_HEADER_LENGTH = 20;
/** IHL 15. */
export const IPV4_MAX_HEADER_LENGTH = 60;
export const IPV4_MAX_TOTAL_LENGTH = 65535;

/** Flags in the 16-bit flags/fragment-offset word (RFC 791: bit 0 reserved, DF, MF). */
export const IPV4_FLAG_RESERVED = 0x8000;
export const IPV4_FLAG_DF = 0x4000;
export const IPV4_FLAG_MF = 0x2000;
/** Fragment offset, in units of 8 bytes. */
export const IPV4_FRAGMENT_OFFSET_MASK = 0x1fff;

export function ipv4Version(b: Uint8Array, o: number): number {
  return b[o]! >>> 4;
}
/** Header length in bytes (IHL * 4). */
export function ipv4HeaderLength(b: Uint8Array, o: number): number {
  return (b[o]! & 0x0f) << 2;
}
export function ipv4Tos(b: Uint8Array, o: number): number {
  return b[o + IPV4_TOS]!;
}
export function ipv4TotalLength(b: Uint8Array, o: number): number {
  return read16(b, o + IPV4_TOTAL_LENGTH);
}
export function ipv4Id(b: Uint8Array, o: number): number {
  return read16(b, o + IPV4_ID);
}
export function ipv4DontFragment(b: Uint8Array, o: number): boolean {
  return (b[o + IPV4_FLAGS_FRAGMENT]! & 0x40) !== 0;
}
export function ipv4MoreFragments(b: Uint8Array, o: number): boolean {
  return (b[o + IPV4_FLAGS_FRAGMENT]! & 0x20) !== 0;
}
/** Fragment offset in bytes (the field is in units of 8 bytes). */
export function ipv4FragmentOffset(b: Uint8Array, o: number): number {
  return (read16(b, o + IPV4_FLAGS_FRAGMENT) & IPV4_FRAGMENT_OFFSET_MASK) << 3;
}
/** True when MF is set or the fragment offset is non-zero (RFC 791; Linux ip_is_fragment). */
export function ipv4IsFragment(b: Uint8Array, o: number): boolean {
  return (read16(b, o + IPV4_FLAGS_FRAGMENT) & (IPV4_FLAG_MF | IPV4_FRAGMENT_OFFSET_MASK)) !== 0;
}
export function ipv4Ttl(b: Uint8Array, o: number): number {
  return b[o + IPV4_TTL]!;
}
export function ipv4Protocol(b: Uint8Array, o: number): number {
  return b[o + IPV4_PROTOCOL]!;
}
export function ipv4Checksum(b: Uint8Array, o: number): number {
  return read16(b, o + IPV4_CHECKSUM);
}
export function ipv4Src(b: Uint8Array, o: number): number {
  return read32(b, o + IPV4_SRC);
}
export function ipv4Dst(b: Uint8Array, o: number): number {
  return read32(b, o + IPV4_DST);
}

/** Writes version 4 and the header length (bytes, a multiple of 4 from 20 to 60). */
export function setIpv4VersionAndHeaderLength(b: Uint8Array, o: number, headerLength: number): void {
  b[o] = 0x40 | (headerLength >>> 2);
}
export function setIpv4Tos(b: Uint8Array, o: number, v: number): void {
  b[o + IPV4_TOS] = v;
}
export function setIpv4TotalLength(b: Uint8Array, o: number, v: number): void {
  write16(b, o + IPV4_TOTAL_LENGTH, v);
}
export function setIpv4Id(b: Uint8Array, o: number, v: number): void {
  write16(b, o + IPV4_ID, v);
}
export function setIpv4DontFragment(b: Uint8Array, o: number, v: boolean): void {
  const at = o + IPV4_FLAGS_FRAGMENT;
  b[at] = v ? b[at]! | 0x40 : b[at]! & ~0x40;
}
export function setIpv4MoreFragments(b: Uint8Array, o: number, v: boolean): void {
  const at = o + IPV4_FLAGS_FRAGMENT;
  b[at] = v ? b[at]! | 0x20 : b[at]! & ~0x20;
}
/** Fragment offset in bytes (must be a multiple of 8); the flags are kept. */
export function setIpv4FragmentOffset(b: Uint8Array, o: number, bytes: number): void {
  const at = o + IPV4_FLAGS_FRAGMENT;
  write16(b, at, (read16(b, at) & ~IPV4_FRAGMENT_OFFSET_MASK) | ((bytes >>> 3) & IPV4_FRAGMENT_OFFSET_MASK));
}
export function setIpv4Ttl(b: Uint8Array, o: number, v: number): void {
  b[o + IPV4_TTL] = v;
}
export function setIpv4Protocol(b: Uint8Array, o: number, v: number): void {
  b[o + IPV4_PROTOCOL] = v;
}
export function setIpv4Checksum(b: Uint8Array, o: number, v: number): void {
  write16(b, o + IPV4_CHECKSUM, v);
}
export function setIpv4Src(b: Uint8Array, o: number, v: number): void {
  write32(b, o + IPV4_SRC, v);
}
export function setIpv4Dst(b: Uint8Array, o: number, v: number): void {
  write32(b, o + IPV4_DST, v);
}

/** The header checksum over IHL*4 bytes as it should be (computed with the field as zero). */
export function ipv4ComputeChecksum(b: Uint8Array, o: number): number {
  const headerLength = ipv4HeaderLength(b, o);
  // Sum the 10 bytes before the field and the rest after it, skipping the field itself.
  const before = onesComplementSum(b, o, IPV4_CHECKSUM);
  return internetChecksum(b, o + IPV4_CHECKSUM + 2, headerLength - IPV4_CHECKSUM - 2, before);
}

/** Recomputes and stores the header checksum (RFC 791; full sum over the header and its options). */
export function ipv4FillChecksum(b: Uint8Array, o: number): void {
  write16(b, o + IPV4_CHECKSUM, ipv4ComputeChecksum(b, o));
}

/** True when the one's complement sum over the whole header, checksum included, is 0xffff (RFC 1071). */
export function ipv4ChecksumValid(b: Uint8Array, o: number): boolean {
  return internetChecksum(b, o, ipv4HeaderLength(b, o)) === 0;
}

/**
 * Decrements the TTL and patches the header checksum incrementally (RFC 1624 eqn. 3 on the
 * TTL/protocol word; Linux ip_decrease_ttl in include/net/ip.h does the same). Returns the new
 * TTL. The caller has checked TTL > 1 (forwarding; RFC 1812 section 5.3.1).
 */
export function ipv4DecrementTtl(b: Uint8Array, o: number): number {
  const at = o + IPV4_TTL;
  const oldWord = read16(b, at);
  const ttl = (b[at]! - 1) & 0xff;
  b[at] = ttl;
  write16(b, o + IPV4_CHECKSUM, checksumUpdate16(read16(b, o + IPV4_CHECKSUM), oldWord, oldWord - 0x100));
  return ttl;
}
