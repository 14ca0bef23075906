/**
 * Validation at the edge: `parsePacket` turns arbitrary bytes into either a DropReason or a
 * filled PacketInfo. It never throws and allocates nothing, whatever the bytes.
 *
 * Contract: when it returns DropReason.None, every offset PacketInfo names lies inside the
 * packet, so the accessors of ipv4.ts/tcp.ts/udp.ts/icmp.ts and the rewrites of rewrite.ts
 * cannot fail on it:
 * - the IPv4 header (options included) and `length` bytes are inside `buf`;
 * - when `hasL4`: TCP has its whole header (data offset included), UDP its 8 bytes with a
 *   consistent length field, ICMP its 8 bytes;
 * - when `isIcmpError`: the embedded IPv4 header (with its options) is complete; its first 8
 *   L4 bytes are there when `innerHasPorts`.
 *
 * Order of the IPv4 checks follows Linux ip_rcv_core (net/ipv4/ip_input.c): header length, then
 * version/IHL, header checksum, then total length. IP options are kept and skipped (the router
 * does not act on them). L4 checksums are not verified, as routers do not (RFC 1812 section
 * 5.2.2 only asks for the IP header) — Linux conntrack verifies them only when
 * nf_conntrack_checksum is set and only in PRE_ROUTING (nf_conntrack_proto_tcp.c tcp_error,
 * nf_ip_checksum); `verifyL4Checksum` is there for tests.
 */
import { DropReason } from "../core/drop-reason.js";
import { read32Bits } from "./bytes.js";
import { l4ChecksumFull, onesComplementSum } from "./checksum.js";
import { icmpIsError, icmpIsQuery } from "./icmp.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PacketInfo } from "./packet-info.js";

/**
 * Validates the IPv4 packet at `buf[off .. off+len)` and fills `info` (every field is reset,
 * so one instance can be reused). Returns DropReason.None when the packet may be processed.
 */
export function parsePacket(buf: Uint8Array, off: number, len: number, info: PacketInfo): DropReason {
  resetPacketInfo(info, buf, off);
  // Never read past the buffer, whatever the caller claims.
  if (!(off >= 0) || !(len >= 0)) return DropReason.Truncated;
  if (off + len > buf.length) len = buf.length - off;
  // ip_rcv_core: pskb_may_pull(skb, sizeof(struct iphdr)).
  if (len < 20) return DropReason.Truncated;
  const b0 = buf[off]!;
  if (b0 >>> 4 !== 4) return DropReason.BadVersion;
  const headerLength = (b0 & 0x0f) << 2;
  if (headerLength < 20 || headerLength > len) return DropReason.BadHeaderLength;
  // ip_fast_csum over the header, options included, must fold to zero.
  if (onesComplementSum(buf, off, headerLength) !== 0xffff) return DropReason.BadHeaderChecksum;
  const totalLength = (buf[off + 2]! << 8) | buf[off + 3]!;
  if (totalLength > len || totalLength < headerLength) return DropReason.BadTotalLength;

  const flagsFragment = (buf[off + 6]! << 8) | buf[off + 7]!;
  const fragmentOffset = (flagsFragment & 0x1fff) << 3;
  const moreFragments = (flagsFragment & 0x2000) !== 0;
  const protocol = buf[off + 9]!;
  const l4Offset = off + headerLength;
  const l4Length = totalLength - headerLength;

  info.length = totalLength;
  info.headerLength = headerLength;
  info.protocol = protocol;
  info.ttl = buf[off + 8]!;
  info.srcBits = read32Bits(buf, off + 12);
  info.dstBits = read32Bits(buf, off + 16);
  info.moreFragments = moreFragments;
  info.dontFragment = (flagsFragment & 0x4000) !== 0;
  info.fragmentOffset = fragmentOffset;
  info.isFragment = moreFragments || fragmentOffset !== 0;
  info.l4Offset = l4Offset;
  info.l4Length = l4Length;

  // Non-first fragments carry no L4 header (RFC 791); conntrack must associate them otherwise.
  if (fragmentOffset !== 0) return DropReason.None;

  if (protocol === IPPROTO_TCP) {
    // RFC 9293 section 3.1: data offset >= 5 words; the options it announces must be present.
    if (l4Length < 20) return DropReason.TruncatedL4;
    const dataOffset = buf[l4Offset + 12]! >>> 4;
    if (dataOffset < 5) return DropReason.BadL4;
    if (dataOffset << 2 > l4Length) return DropReason.TruncatedL4;
    info.sport = (buf[l4Offset]! << 8) | buf[l4Offset + 1]!;
    info.dport = (buf[l4Offset + 2]! << 8) | buf[l4Offset + 3]!;
    info.tcpFlags = buf[l4Offset + 13]!;
    info.hasL4 = true;
    return DropReason.None;
  }

  if (protocol === IPPROTO_UDP) {
    if (l4Length < 8) return DropReason.TruncatedL4;
    const udpLength = (buf[l4Offset + 4]! << 8) | buf[l4Offset + 5]!;
    // nf_conntrack_proto_udp.c udp_error: the length field covers at least the header and at
    // most the IP payload (trailing bytes are allowed). In a first fragment it covers the whole
    // datagram, so it cannot be shorter than this fragment's part.
    if (udpLength < 8) return DropReason.BadL4;
    if (moreFragments ? udpLength < l4Length : udpLength > l4Length) return DropReason.BadL4;
    info.sport = (buf[l4Offset]! << 8) | buf[l4Offset + 1]!;
    info.dport = (buf[l4Offset + 2]! << 8) | buf[l4Offset + 3]!;
    info.hasL4 = true;
    return DropReason.None;
  }

  if (protocol === IPPROTO_ICMP) {
    if (l4Length < 8) return DropReason.TruncatedL4;
    const type = buf[l4Offset]!;
    info.icmpType = type;
    info.icmpCode = buf[l4Offset + 1]!;
    info.hasL4 = true;
    if (icmpIsQuery(type)) {
      const id = (buf[l4Offset + 4]! << 8) | buf[l4Offset + 5]!;
      info.icmpId = id;
      info.sport = id;
      return DropReason.None;
    }
    if (icmpIsError(type)) {
      info.isIcmpError = true;
      return parseEmbedded(buf, l4Offset + 8, off + totalLength, info);
    }
    return DropReason.None;
  }

  // Other protocols (GRE, SCTP, ...) are forwarded without an L4 view.
  return DropReason.None;
}

/**
 * The datagram embedded in an ICMP error (RFC 792): its IPv4 header must be complete and sane
 * (else BadL4, as nf_conntrack_proto_icmp.c icmp_error_message finds no tuple and Linux marks
 * the packet invalid); its L4 part may be cut short (RFC 1812 section 4.3.2.3 keeps as much as
 * fits in 576 bytes, RFC 792 at least 8 bytes). Ports/identifier need its first 8 L4 bytes.
 */
function parseEmbedded(buf: Uint8Array, innerOffset: number, end: number, info: PacketInfo): DropReason {
  const available = end - innerOffset;
  if (available < 20) return DropReason.BadL4;
  const b0 = buf[innerOffset]!;
  if (b0 >>> 4 !== 4) return DropReason.BadL4;
  const innerHeaderLength = (b0 & 0x0f) << 2;
  if (innerHeaderLength < 20 || innerHeaderLength > available) return DropReason.BadL4;
  const innerProtocol = buf[innerOffset + 9]!;
  info.innerOffset = innerOffset;
  info.innerHeaderLength = innerHeaderLength;
  info.innerProtocol = innerProtocol;
  info.innerSrcBits = read32Bits(buf, innerOffset + 12);
  info.innerDstBits = read32Bits(buf, innerOffset + 16);
  const innerFragmentOffset = ((buf[innerOffset + 6]! << 8) | buf[innerOffset + 7]!) & 0x1fff;
  const innerL4 = innerOffset + innerHeaderLength;
  // An error about a non-first fragment, or one with fewer than 8 L4 bytes, has no ports.
  if (innerFragmentOffset !== 0 || end - innerL4 < 8) return DropReason.None;
  if (innerProtocol === IPPROTO_TCP || innerProtocol === IPPROTO_UDP) {
    info.innerSport = (buf[innerL4]! << 8) | buf[innerL4 + 1]!;
    info.innerDport = (buf[innerL4 + 2]! << 8) | buf[innerL4 + 3]!;
    info.innerHasPorts = true;
  } else if (innerProtocol === IPPROTO_ICMP) {
    const type = buf[innerL4]!;
    info.innerIcmpType = type;
    info.innerIcmpCode = buf[innerL4 + 1]!;
    if (icmpIsQuery(type)) info.innerSport = (buf[innerL4 + 4]! << 8) | buf[innerL4 + 5]!;
    info.innerHasPorts = true;
  }
  return DropReason.None;
}


function resetPacketInfo(info: PacketInfo, buf: Uint8Array, off: number): void {
  info.buf = buf;
  info.offset = off;
  info.l4ChecksumPartial = false;
  info.length = 0;
  info.headerLength = 0;
  info.protocol = 0;
  info.srcBits = 0;
  info.dstBits = 0;
  info.ttl = 0;
  info.isFragment = false;
  info.fragmentOffset = 0;
  info.moreFragments = false;
  info.dontFragment = false;
  info.l4Offset = 0;
  info.l4Length = 0;
  info.hasL4 = false;
  info.sport = 0;
  info.dport = 0;
  info.tcpFlags = 0;
  info.icmpType = 0;
  info.icmpCode = 0;
  info.icmpId = 0;
  info.isIcmpError = false;
  info.innerOffset = 0;
  info.innerHeaderLength = 0;
  info.innerProtocol = 0;
  info.innerSrcBits = 0;
  info.innerDstBits = 0;
  info.innerSport = 0;
  info.innerDport = 0;
  info.innerIcmpType = 0;
  info.innerIcmpCode = 0;
  info.innerHasPorts = false;
}

/**
 * Tests and diagnostics only (full sum): true when the TCP/UDP/ICMP checksum of a parsed,
 * unfragmented packet is right. A UDP checksum of 0 ("none", RFC 768) is accepted. Packets
 * without a verifiable L4 checksum (fragments, other protocols) return true.
 */
export function verifyL4Checksum(buf: Uint8Array, info: PacketInfo): boolean {
  if (!info.hasL4 || info.isFragment) return true;
  const expected = l4ChecksumFull(buf, info.offset);
  if (expected < 0) return true;
  const fieldOffset =
    info.protocol === IPPROTO_TCP ? info.l4Offset + 16 : info.protocol === IPPROTO_UDP ? info.l4Offset + 6 : info.l4Offset + 2;
  const stored = (buf[fieldOffset]! << 8) | buf[fieldOffset + 1]!;
  if (info.protocol === IPPROTO_UDP && stored === 0) return true;
  // 0x0000 and 0xffff are both one's complement zero; a sender may use either for a zero sum.
  return stored === expected || (expected === 0 && stored === 0xffff) || (expected === 0xffff && stored === 0);
}

/**
 * The network-layer length of each segment a GSO super-packet of a parsed packet becomes, given
 * its segment size (virtio_net_hdr.gso_size): IPv4 header + L4 header + gso_size, never more than
 * the packet itself. This is what a router checks against the egress MTU for such packets (Linux
 * ip_forward -> ip_exceeds_mtu -> skb_gso_validate_network_len, net/core/gso.c). TCP's header
 * length comes from its data offset, UDP's is 8 (USO); other protocols are not segmented.
 */
export function gsoSegmentNetworkLength(info: PacketInfo, gsoSize: number): number {
  if (!info.hasL4 || gsoSize <= 0) return info.length;
  let l4HeaderLength: number;
  if (info.protocol === IPPROTO_TCP) l4HeaderLength = (info.buf[info.l4Offset + 12]! >>> 4) << 2;
  else if (info.protocol === IPPROTO_UDP) l4HeaderLength = 8;
  else return info.length;
  const segment = info.headerLength + l4HeaderLength + gsoSize;
  return segment < info.length ? segment : info.length;
}
