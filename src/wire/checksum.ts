/**
 * The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
 *
 * All sums are over 16-bit big-endian words. `onesComplementSum` returns the folded one's
 * complement sum (not inverted); `internetChecksum` returns the value that goes in a header's
 * checksum field (inverted). Incremental updates use RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'),
 * which never produces the 0xffff ("-0") the older RFC 1141 formula could, so an updated
 * checksum is bit-identical to a full recompute (the property tests in test/wire check this).
 *
 * Hot path: no allocation, small monomorphic functions over Uint8Array.
 */
import { read16 } from "./bytes.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "./packet-info.js";

/**
 * Folded 16-bit one's complement sum of `len` bytes at `buf[off..]`, plus `initial` (any
 * non-negative partial sum below 2^31, folded or not). An odd trailing byte is padded with a
 * zero byte on the right (RFC 1071 section 4.1). The result is in 0..0xffff, not inverted.
 */
export function onesComplementSum(buf: Uint8Array, off: number, len: number, initial = 0): number {
  // Fold the initial value first so the accumulator stays a small integer (V8 Smi).
  let sum = (initial & 0xffff) + (initial >>> 16);
  let i = off;
  const end = off + len;
  const evenEnd = off + (len & ~1);
  while (i < evenEnd) {
    // At most 8192 words per chunk: 8192 * 0xffff + 0x1fffe < 2^30, so the sum stays a Smi.
    let chunkEnd = i + 16384;
    if (chunkEnd > evenEnd) chunkEnd = evenEnd;
    // Four bytes per step while at least four remain.
    while (i + 3 < chunkEnd) {
      sum += ((buf[i]! << 8) | buf[i + 1]!) + ((buf[i + 2]! << 8) | buf[i + 3]!);
      i += 4;
    }
    if (i < chunkEnd) {
      sum += (buf[i]! << 8) | buf[i + 1]!;
      i += 2;
    }
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  if (i < end) sum += buf[i]! << 8;
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** RFC 1071 checksum of `len` bytes: the inverted one's complement sum, as written in a header. */
export function internetChecksum(buf: Uint8Array, off: number, len: number, initial = 0): number {
  return ~onesComplementSum(buf, off, len, initial) & 0xffff;
}

/**
 * One's complement sum of the TCP/UDP pseudo-header (RFC 793 section 3.1, RFC 768): source,
 * destination, zero + protocol, L4 length. Folded; pass it as `initial` to the sum of the L4 bytes.
 */
export function pseudoHeaderSum(src: number, dst: number, protocol: number, l4Length: number): number {
  let sum = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + l4Length;
  sum = (sum & 0xffff) + (sum >>> 16);
  return (sum & 0xffff) + (sum >>> 16);
}

/** RFC 1624 eqn. 3: the checksum after one 16-bit word of the covered data changed from oldWord to newWord. */
export function checksumUpdate16(checksum: number, oldWord: number, newWord: number): number {
  let sum = (~checksum & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff);
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** RFC 1624 eqn. 3 for a 32-bit field (an IPv4 address, a TCP sequence number): two words at once. */
export function checksumUpdate32(checksum: number, oldValue: number, newValue: number): number {
  let sum =
    (~checksum & 0xffff) +
    (~(oldValue >>> 16) & 0xffff) +
    (~oldValue & 0xffff) +
    (newValue >>> 16) +
    (newValue & 0xffff);
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * Reference: the TCP/UDP/ICMP checksum of the IPv4 packet at `ipOff`, computed from scratch over
 * the L4 bytes the total length covers (as if the checksum field were zero; the buffer is not
 * modified). For UDP a computed 0 is returned as 0xffff (RFC 768: 0 means "no checksum").
 * Returns -1 for other protocols and for non-first fragments. Not for the hot path (full sum);
 * the dataplane patches checksums with rewrite.ts, the tests compare against this.
 */
export function l4ChecksumFull(buf: Uint8Array, ipOff: number): number {
  const headerLength = (buf[ipOff]! & 0x0f) << 2;
  const totalLength = read16(buf, ipOff + 2);
  const protocol = buf[ipOff + 9]!;
  if ((read16(buf, ipOff + 6) & 0x1fff) !== 0) return -1;
  const l4Off = ipOff + headerLength;
  const l4Length = totalLength - headerLength;
  let fieldOff: number;
  let initial = 0;
  if (protocol === IPPROTO_TCP) {
    fieldOff = l4Off + 16;
  } else if (protocol === IPPROTO_UDP) {
    fieldOff = l4Off + 6;
  } else if (protocol === IPPROTO_ICMP) {
    fieldOff = l4Off + 2;
  } else {
    return -1;
  }
  if (protocol !== IPPROTO_ICMP) {
    initial = pseudoHeaderSum(
      ((buf[ipOff + 12]! << 24) | (buf[ipOff + 13]! << 16) | (buf[ipOff + 14]! << 8) | buf[ipOff + 15]!) >>> 0,
      ((buf[ipOff + 16]! << 24) | (buf[ipOff + 17]! << 16) | (buf[ipOff + 18]! << 8) | buf[ipOff + 19]!) >>> 0,
      protocol,
      l4Length,
    );
  }
  // Sum around the checksum field (it is at an even offset from the L4 start, so the split keeps
  // word alignment) instead of zeroing it: the buffer is left untouched.
  const before = fieldOff - l4Off;
  if (l4Length < before + 2) return -1;
  const partial = onesComplementSum(buf, l4Off, before, initial);
  const sum = onesComplementSum(buf, fieldOff + 2, l4Length - before - 2, partial);
  const checksum = ~sum & 0xffff;
  return protocol === IPPROTO_UDP && checksum === 0 ? 0xffff : checksum;
}

/**
 * Whether the TCP/UDP/ICMP checksum of an IPv4 packet's `l4Length` L4 bytes at `l4Off` is right,
 * as Linux nf_ip_checksum (CHECKSUM_NONE) verifies it for conntrack: the sum over the pseudo-header
 * (TCP, UDP; its length is the L4 length) and every L4 byte, checksum field included, is 0xffff.
 * A UDP checksum of 0 means none (RFC 768; udp_error accepts it). Other protocols: true.
 * No allocation; the caller guarantees the bytes are inside `buf`.
 */
export function l4ChecksumValid(buf: Uint8Array, l4Off: number, l4Length: number, protocol: number, src: number, dst: number): boolean {
  if (protocol === IPPROTO_ICMP) return onesComplementSum(buf, l4Off, l4Length) === 0xffff;
  if (protocol !== IPPROTO_TCP && protocol !== IPPROTO_UDP) return true;
  if (protocol === IPPROTO_UDP && l4Length >= 8 && buf[l4Off + 6] === 0 && buf[l4Off + 7] === 0) return true;
  return onesComplementSum(buf, l4Off, l4Length, pseudoHeaderSum(src >>> 0, dst >>> 0, protocol, l4Length)) === 0xffff;
}
