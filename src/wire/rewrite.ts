/**
 * NAT mangling with incremental checksum updates (RFC 1624 eqn. 3), as Linux does in
 * net/netfilter/nf_nat_proto.c (nf_nat_ipv4_manip_pkt, tcp/udp/icmp_manip_pkt,
 * nf_nat_icmp_reply_translation).
 *
 * Every function takes the offsets of an already validated packet (`parsePacket` returned None):
 * `o` is the outer IPv4 header, `innerOffset` the IPv4 header embedded in an ICMP error
 * (PacketInfo.innerOffset). Fields the functions need (IHL, protocol, fragment offset, total
 * length) are read back from the buffer, so they stay correct when applied one after another.
 * No allocation; nothing can fail on a validated packet (a rewrite that does not apply, e.g. a
 * port rewrite on a non-first fragment, does nothing).
 *
 * Checksum rules:
 * - IPv4 header checksum: patched for every address change (outer and embedded header).
 * - TCP/UDP: the pseudo-header makes addresses part of the L4 checksum (RFC 793 3.1, RFC 768),
 *   so an address change patches it too when the L4 header is present (unfragmented or first
 *   fragment); a non-first fragment only gets its IP header patched.
 * - UDP: checksum 0 means "none" and stays 0; a patched checksum that comes out 0 is sent as
 *   0xffff (RFC 768; Linux CSUM_MANGLED_0 in udp_manip_pkt).
 * - ICMP errors: the embedded packet is rewritten like a packet of its own (its IP header
 *   checksum, and its L4 checksum when the embedded L4 header is complete enough to hold it:
 *   TCP only with all 20 header bytes present, as tcp_manip_pkt; UDP and ICMP always, their
 *   checksum is in the first 8 bytes), and the outer ICMP checksum, which covers all of those
 *   bytes, is patched for every 16-bit word that changes, embedded checksums included. Linux
 *   recomputes the outer ICMP checksum in full here; patching gives the same value.
 * - Offloaded packets (`partial`, a TUN's VIRTIO_NET_HDR_F_NEEDS_CSUM): the TCP/UDP checksum field
 *   holds only the uncomplemented pseudo-header sum S, which the device completes. An address
 *   change updates it as a pseudo-header change (S' = S + ~m + m', partialChecksumUpdate32; Linux
 *   inet_proto_csum_replace4 with pseudohdr on a CHECKSUM_PARTIAL skb); a port change leaves it
 *   alone; UDP's "0 = none" does not apply.
 */
import { read16, read32Bits, write16, write32 } from "./bytes.js";
import { checksumUpdate16, checksumUpdate32 } from "./checksum.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "./packet-info.js";

const IP_SRC = 12;
const IP_DST = 16;
const IP_CHECKSUM = 10;
const TCP_CHECKSUM = 16;
const UDP_CHECKSUM = 6;
const ICMP_CHECKSUM = 2;
const ICMP_ID = 4;

/**
 * A partial (pseudo-header) sum after a 32-bit field it covers changed from oldValue to newValue:
 * S' = S + ~old + new, folded (RFC 1624 eqn. 3 without the complements around it).
 */
export function partialChecksumUpdate32(partialSum: number, oldValue: number, newValue: number): number {
  let sum = partialSum + (~(oldValue >>> 16) & 0xffff) + (~oldValue & 0xffff) + (newValue >>> 16) + (newValue & 0xffff);
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/**
 * Rewrites the IPv4 source address (SNAT), patching the IP and TCP/UDP checksums. `partial`: the
 * TCP/UDP checksum holds only the pseudo-header sum (see the module comment).
 */
export function rewriteSrcAddr(b: Uint8Array, o: number, newAddr: number, partial = false): void {
  rewriteAddr(b, o, o + IP_SRC, newAddr, partial);
}

/** Rewrites the IPv4 destination address (DNAT), patching the IP and TCP/UDP checksums. */
export function rewriteDstAddr(b: Uint8Array, o: number, newAddr: number, partial = false): void {
  rewriteAddr(b, o, o + IP_DST, newAddr, partial);
}

/** Rewrites the TCP/UDP source port, patching the L4 checksum. No-op for other protocols and non-first fragments. */
export function rewriteSrcPort(b: Uint8Array, o: number, newPort: number, partial = false): void {
  rewritePort(b, o, 0, newPort, partial);
}

/** Rewrites the TCP/UDP destination port, patching the L4 checksum. No-op for other protocols and non-first fragments. */
export function rewriteDstPort(b: Uint8Array, o: number, newPort: number, partial = false): void {
  rewritePort(b, o, 2, newPort, partial);
}

/** Rewrites the identifier of an ICMP query (echo etc.), patching the ICMP checksum (icmp_manip_pkt). */
export function rewriteIcmpId(b: Uint8Array, o: number, newId: number): void {
  if (b[o + 9] !== IPPROTO_ICMP || (read16(b, o + 6) & 0x1fff) !== 0) return;
  const l4 = o + ((b[o]! & 0x0f) << 2);
  const old = read16(b, l4 + ICMP_ID);
  write16(b, l4 + ICMP_ID, newId);
  write16(b, l4 + ICMP_CHECKSUM, checksumUpdate16(read16(b, l4 + ICMP_CHECKSUM), old, newId));
}

function rewriteAddr(b: Uint8Array, o: number, at: number, newAddr: number, partial: boolean): void {
  const old = read32Bits(b, at);
  write32(b, at, newAddr);
  write16(b, o + IP_CHECKSUM, checksumUpdate32(read16(b, o + IP_CHECKSUM), old, newAddr));
  if ((read16(b, o + 6) & 0x1fff) !== 0) return; // non-first fragment: no L4 header
  const protocol = b[o + 9]!;
  const l4 = o + ((b[o]! & 0x0f) << 2);
  if (protocol === IPPROTO_TCP) {
    const c = l4 + TCP_CHECKSUM;
    if (partial) write16(b, c, partialChecksumUpdate32(read16(b, c), old, newAddr));
    else write16(b, c, checksumUpdate32(read16(b, c), old, newAddr));
  } else if (protocol === IPPROTO_UDP) {
    const c = l4 + UDP_CHECKSUM;
    const checksum = read16(b, c);
    if (partial) write16(b, c, partialChecksumUpdate32(checksum, old, newAddr));
    else if (checksum !== 0) write16(b, c, udpNonZero(checksumUpdate32(checksum, old, newAddr)));
  }
}

function rewritePort(b: Uint8Array, o: number, portField: number, newPort: number, partial: boolean): void {
  if ((read16(b, o + 6) & 0x1fff) !== 0) return;
  const protocol = b[o + 9]!;
  const l4 = o + ((b[o]! & 0x0f) << 2);
  const at = l4 + portField;
  if (partial) {
    // The ports are summed when the checksum is completed: nothing to patch.
    if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) write16(b, at, newPort);
    return;
  }
  if (protocol === IPPROTO_TCP) {
    const old = read16(b, at);
    write16(b, at, newPort);
    const c = l4 + TCP_CHECKSUM;
    write16(b, c, checksumUpdate16(read16(b, c), old, newPort));
  } else if (protocol === IPPROTO_UDP) {
    const old = read16(b, at);
    write16(b, at, newPort);
    const c = l4 + UDP_CHECKSUM;
    const checksum = read16(b, c);
    if (checksum !== 0) write16(b, c, udpNonZero(checksumUpdate16(checksum, old, newPort)));
  }
}

function udpNonZero(checksum: number): number {
  return checksum === 0 ? 0xffff : checksum;
}

// ---- ICMP errors: the embedded packet (nf_nat_icmp_reply_translation) ----

/**
 * Writes a 16-bit word inside the outer ICMP message and patches the outer ICMP checksum for it.
 * `icmpChecksumAt` is the absolute offset of the outer ICMP checksum field. Every word of the
 * embedded packet lies at an even distance from the ICMP header (8 + multiples of 2), so the
 * word-wise patch is exact.
 */
function setIcmpPayloadWord(b: Uint8Array, icmpChecksumAt: number, at: number, value: number): void {
  const old = read16(b, at);
  if (old === value) return;
  write16(b, at, value);
  write16(b, icmpChecksumAt, checksumUpdate16(read16(b, icmpChecksumAt), old, value));
}

function outerIcmpChecksumAt(b: Uint8Array, o: number): number {
  return o + ((b[o]! & 0x0f) << 2) + ICMP_CHECKSUM;
}

function outerEnd(b: Uint8Array, o: number): number {
  return o + read16(b, o + 2);
}

/**
 * Offset of the embedded packet's L4 checksum field when it is present in the outer packet and
 * may be patched, else -1 (embedded non-first fragment, truncated header, other protocol).
 * TCP needs all 20 header bytes (tcp_manip_pkt: "this could be an inner header returned in icmp
 * packet; in such cases we cannot update the checksum field since it is outside of the 8 bytes
 * of transport layer headers we are guaranteed").
 */
function innerL4ChecksumAt(b: Uint8Array, end: number, innerOffset: number): number {
  if ((read16(b, innerOffset + 6) & 0x1fff) !== 0) return -1;
  const protocol = b[innerOffset + 9]!;
  const l4 = innerOffset + ((b[innerOffset]! & 0x0f) << 2);
  if (protocol === IPPROTO_TCP) return l4 + 20 <= end ? l4 + TCP_CHECKSUM : -1;
  if (protocol === IPPROTO_UDP) return l4 + 8 <= end ? l4 + UDP_CHECKSUM : -1;
  if (protocol === IPPROTO_ICMP) return l4 + 8 <= end ? l4 + ICMP_CHECKSUM : -1;
  return -1;
}

/** Patches an embedded L4 checksum for a change of one 16-bit word it covers (UDP 0 stays 0). */
function patchInnerL4Checksum(
  b: Uint8Array,
  icmpChecksumAt: number,
  checksumAt: number,
  protocol: number,
  oldWord: number,
  newWord: number,
): void {
  const checksum = read16(b, checksumAt);
  if (protocol === IPPROTO_UDP) {
    if (checksum === 0) return;
    setIcmpPayloadWord(b, icmpChecksumAt, checksumAt, udpNonZero(checksumUpdate16(checksum, oldWord, newWord)));
  } else {
    setIcmpPayloadWord(b, icmpChecksumAt, checksumAt, checksumUpdate16(checksum, oldWord, newWord));
  }
}

function rewriteInnerAddr(b: Uint8Array, o: number, innerOffset: number, at: number, newAddr: number): void {
  const icmpChecksumAt = outerIcmpChecksumAt(b, o);
  const old = read32Bits(b, at);
  const oldHi = old >>> 16;
  const oldLo = old & 0xffff;
  const newHi = newAddr >>> 16;
  const newLo = newAddr & 0xffff;
  setIcmpPayloadWord(b, icmpChecksumAt, at, newHi);
  setIcmpPayloadWord(b, icmpChecksumAt, at + 2, newLo);
  // Embedded IPv4 header checksum.
  const ipChecksumAt = innerOffset + IP_CHECKSUM;
  setIcmpPayloadWord(b, icmpChecksumAt, ipChecksumAt, checksumUpdate32(read16(b, ipChecksumAt), old, newAddr));
  // Embedded TCP/UDP pseudo-header (ICMP has none).
  const protocol = b[innerOffset + 9]!;
  if (protocol !== IPPROTO_TCP && protocol !== IPPROTO_UDP) return;
  const checksumAt = innerL4ChecksumAt(b, outerEnd(b, o), innerOffset);
  if (checksumAt < 0) return;
  const checksum = read16(b, checksumAt);
  if (protocol === IPPROTO_UDP && checksum === 0) return;
  let updated = checksumUpdate16(checksumUpdate16(checksum, oldHi, newHi), oldLo, newLo);
  if (protocol === IPPROTO_UDP) updated = udpNonZero(updated);
  setIcmpPayloadWord(b, icmpChecksumAt, checksumAt, updated);
}

function rewriteInnerWord(b: Uint8Array, o: number, innerOffset: number, l4Field: number, value: number): void {
  if ((read16(b, innerOffset + 6) & 0x1fff) !== 0) return;
  const end = outerEnd(b, o);
  const l4 = innerOffset + ((b[innerOffset]! & 0x0f) << 2);
  if (l4 + 8 > end) return; // fewer than 8 embedded L4 bytes: no ports to rewrite
  const icmpChecksumAt = outerIcmpChecksumAt(b, o);
  const at = l4 + l4Field;
  const old = read16(b, at);
  setIcmpPayloadWord(b, icmpChecksumAt, at, value);
  const checksumAt = innerL4ChecksumAt(b, end, innerOffset);
  if (checksumAt >= 0) patchInnerL4Checksum(b, icmpChecksumAt, checksumAt, b[innerOffset + 9]!, old, value);
}

/** ICMP error: rewrites the embedded packet's source address (its IP and L4 checksums, and the outer ICMP checksum). */
export function rewriteInnerSrcAddr(b: Uint8Array, o: number, innerOffset: number, newAddr: number): void {
  rewriteInnerAddr(b, o, innerOffset, innerOffset + IP_SRC, newAddr);
}

/** ICMP error: rewrites the embedded packet's destination address (its IP and L4 checksums, and the outer ICMP checksum). */
export function rewriteInnerDstAddr(b: Uint8Array, o: number, innerOffset: number, newAddr: number): void {
  rewriteInnerAddr(b, o, innerOffset, innerOffset + IP_DST, newAddr);
}

/** ICMP error: rewrites the embedded TCP/UDP source port. No-op for other embedded protocols. */
export function rewriteInnerSrcPort(b: Uint8Array, o: number, innerOffset: number, newPort: number): void {
  const protocol = b[innerOffset + 9];
  if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) rewriteInnerWord(b, o, innerOffset, 0, newPort);
}

/** ICMP error: rewrites the embedded TCP/UDP destination port. No-op for other embedded protocols. */
export function rewriteInnerDstPort(b: Uint8Array, o: number, innerOffset: number, newPort: number): void {
  const protocol = b[innerOffset + 9];
  if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) rewriteInnerWord(b, o, innerOffset, 2, newPort);
}

/** ICMP error about an ICMP query (e.g. an echo that hit a TTL limit): rewrites its identifier. */
export function rewriteInnerIcmpId(b: Uint8Array, o: number, innerOffset: number, newId: number): void {
  if (b[innerOffset + 9] === IPPROTO_ICMP) rewriteInnerWord(b, o, innerOffset, ICMP_ID, newId);
}

/**
 * The established fast path's rewrites (dataplane/pipeline.ts forwardEstablished) in one pass,
 * for a validated plain packet: IHL 5, not a fragment, TCP or UDP (`protocol`). The effects are
 * exactly those of rewriteDstAddr, rewriteDstPort, ipv4DecrementTtl (wire/ipv4.ts),
 * rewriteSrcAddr, rewriteSrcPort in that order (the general path's: DNAT at PREROUTING, TTL in
 * ip_forward, SNAT at POSTROUTING), each field rewritten only when its new value differs, and the
 * checksums patched by the same RFC 1624 steps — kept in locals between the steps instead of
 * written and read back, and without re-deriving IHL, protocol and fragment offset each time.
 * Addresses are int32 bits; `v` views the packet's buffer (big-endian reads, one per field).
 */
export function rewriteForwardPlain(
  v: DataView,
  o: number,
  protocol: number,
  newSrc: number,
  newSport: number,
  newDst: number,
  newDport: number,
  partial: boolean,
): void {
  const l4 = o + 20;
  const tcp = protocol === IPPROTO_TCP;
  const c = l4 + (tcp ? TCP_CHECKSUM : UDP_CHECKSUM);
  let ip = v.getUint16(o + IP_CHECKSUM);
  let l4sum = v.getUint16(c);
  const oldPorts = v.getInt32(l4);
  const oldDst = v.getInt32(o + IP_DST);
  if (oldDst !== newDst) {
    v.setInt32(o + IP_DST, newDst);
    ip = checksumUpdate32(ip, oldDst, newDst);
    l4sum = l4AddrUpdate(tcp, partial, l4sum, oldDst, newDst);
  }
  const oldDport = oldPorts & 0xffff;
  if (oldDport !== newDport) {
    v.setUint16(l4 + 2, newDport);
    if (!partial) l4sum = l4PortUpdate(tcp, l4sum, oldDport, newDport);
  }
  ip = decrementTtl(v, o, ip);
  const oldSrc = v.getInt32(o + IP_SRC);
  if (oldSrc !== newSrc) {
    v.setInt32(o + IP_SRC, newSrc);
    ip = checksumUpdate32(ip, oldSrc, newSrc);
    l4sum = l4AddrUpdate(tcp, partial, l4sum, oldSrc, newSrc);
  }
  const oldSport = oldPorts >>> 16;
  if (oldSport !== newSport) {
    v.setUint16(l4, newSport);
    if (!partial) l4sum = l4PortUpdate(tcp, l4sum, oldSport, newSport);
  }
  v.setUint16(o + IP_CHECKSUM, ip);
  v.setUint16(c, l4sum);
}

/**
 * rewriteForwardPlain for an ICMP echo request or reply (IHL 5, not a fragment): destination,
 * TTL, source, then the identifier. The ICMP checksum covers no pseudo-header, so only the
 * identifier changes it (RFC 1624), as rewriteIcmpId does.
 */
export function rewriteForwardIcmpEcho(v: DataView, o: number, newSrc: number, newDst: number, newId: number): void {
  let ip = v.getUint16(o + IP_CHECKSUM);
  const oldDst = v.getInt32(o + IP_DST);
  if (oldDst !== newDst) {
    v.setInt32(o + IP_DST, newDst);
    ip = checksumUpdate32(ip, oldDst, newDst);
  }
  ip = decrementTtl(v, o, ip);
  const oldSrc = v.getInt32(o + IP_SRC);
  if (oldSrc !== newSrc) {
    v.setInt32(o + IP_SRC, newSrc);
    ip = checksumUpdate32(ip, oldSrc, newSrc);
  }
  v.setUint16(o + IP_CHECKSUM, ip);
  const l4 = o + 20;
  const oldId = v.getUint16(l4 + ICMP_ID);
  if (oldId !== newId) {
    v.setUint16(l4 + ICMP_ID, newId);
    v.setUint16(l4 + ICMP_CHECKSUM, checksumUpdate16(v.getUint16(l4 + ICMP_CHECKSUM), oldId, newId));
  }
}

/**
 * ipv4DecrementTtl on a header checksum held in a local: the TTL/protocol word goes down by
 * 0x100 (RFC 1624). Returns the new checksum.
 */
function decrementTtl(v: DataView, o: number, ip: number): number {
  const ttlWord = v.getUint16(o + 8);
  v.setUint8(o + 8, ((ttlWord >>> 8) - 1) & 0xff);
  return checksumUpdate16(ip, ttlWord, ttlWord - 0x100);
}

/** rewriteAddr's TCP/UDP checksum step on a checksum held in a local. */
function l4AddrUpdate(tcp: boolean, partial: boolean, sum: number, oldAddr: number, newAddr: number): number {
  if (partial) return partialChecksumUpdate32(sum, oldAddr, newAddr);
  if (tcp) return checksumUpdate32(sum, oldAddr, newAddr);
  return sum !== 0 ? udpNonZero(checksumUpdate32(sum, oldAddr, newAddr)) : 0;
}

/** rewritePort's checksum step (full checksum) on a checksum held in a local. */
function l4PortUpdate(tcp: boolean, sum: number, oldPort: number, newPort: number): number {
  if (tcp) return checksumUpdate16(sum, oldPort, newPort);
  return sum !== 0 ? udpNonZero(checksumUpdate16(sum, oldPort, newPort)) : 0;
}
