/**
 * The facts the pipeline needs about one IPv4 packet, filled in place by `parsePacket`
 * (src/wire/validate.ts) at the edge. One instance is reused for every packet of a batch:
 * nothing here is allocated per packet. All offsets are absolute byte offsets into `buf`.
 *
 * Addresses are held as int32 bits (`srcBits`, `dstBits`, `innerSrcBits`, `innerDstBits`) and read
 * as uint32 through `src`, `dst`, `innerSrc`, `innerDst`. V8 keeps an int32 as a small integer
 * everywhere, but a uint32 of 2^31 or more (128.0.0.0 and up) is a heap number: held in an object
 * field, passed to a call that is not inlined or returned from one, it allocates. Per-packet code
 * passes the bits; an order comparison converts locally (`a >>> 0 < b >>> 0`), which allocates
 * nothing. Equality, masks, shifts, hashes and checksums give the same answer for either form.
 */
export class PacketInfo {
  buf: Uint8Array = new Uint8Array(0);
  /** Offset of the IPv4 header in `buf`. */
  offset = 0;
  /** Bytes of the packet as the IPv4 total length says (trailing buffer bytes are ignored). */
  length = 0;
  headerLength = 0;
  protocol = 0;
  /** Source and destination address, int32 bits (see the class comment; `src`/`dst` give the uint32). */
  srcBits = 0;
  dstBits = 0;
  ttl = 0;
  /** True when MF is set or the fragment offset is non-zero. */
  isFragment = false;
  /** Fragment offset in bytes (0 for the first fragment and unfragmented packets). */
  fragmentOffset = 0;
  moreFragments = false;
  dontFragment = false;
  /** Absolute offset of the L4 header (offset + headerLength). */
  l4Offset = 0;
  /** L4 bytes present in this packet/fragment. */
  l4Length = 0;
  /** True when the L4 header is present and was parsed (unfragmented or first fragment). */
  hasL4 = false;
  /** TCP/UDP ports; for ICMP echo/timestamp/info/mask: sport = identifier, dport = 0. */
  sport = 0;
  dport = 0;
  /** TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ECE 0x40, CWR 0x80). */
  tcpFlags = 0;
  icmpType = 0;
  icmpCode = 0;
  /** ICMP identifier for query messages (echo etc.). */
  icmpId = 0;
  /** ICMP error (dest unreachable 3, source quench 4, redirect 5, time exceeded 11, parameter problem 12). */
  isIcmpError = false;
  /**
   * For ICMP errors: the embedded (offending) packet. `innerOffset` is the absolute offset of the
   * embedded IPv4 header, `innerHeaderLength` its IHL in bytes, `innerProtocol`, `innerSrc`,
   * `innerDst`, and `innerSport`/`innerDport` when at least 8 bytes of its L4 header are present
   * (`innerHasPorts`). For an embedded ICMP echo, innerSport = its identifier.
   */
  innerOffset = 0;
  innerHeaderLength = 0;
  innerProtocol = 0;
  innerSrcBits = 0;
  innerDstBits = 0;
  innerSport = 0;
  innerDport = 0;
  innerIcmpType = 0;
  innerIcmpCode = 0;
  innerHasPorts = false;
  /**
   * The TCP/UDP checksum holds only the pseudo-header sum (a TUN offload's
   * VIRTIO_NET_HDR_F_NEEDS_CSUM): rewrites update it as such. Set by the I/O side per packet.
   */
  l4ChecksumPartial = false;

  /** Source address, uint32 (control plane, traces, tests; per-packet code uses `srcBits`). */
  get src(): number {
    return this.srcBits >>> 0;
  }
  set src(addr: number) {
    this.srcBits = addr | 0;
  }
  /** Destination address, uint32. */
  get dst(): number {
    return this.dstBits >>> 0;
  }
  set dst(addr: number) {
    this.dstBits = addr | 0;
  }
  /** The embedded packet's source address (ICMP errors), uint32. */
  get innerSrc(): number {
    return this.innerSrcBits >>> 0;
  }
  set innerSrc(addr: number) {
    this.innerSrcBits = addr | 0;
  }
  /** The embedded packet's destination address, uint32. */
  get innerDst(): number {
    return this.innerDstBits >>> 0;
  }
  set innerDst(addr: number) {
    this.innerDstBits = addr | 0;
  }
}

export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_GRE = 47;
export const IPPROTO_SCTP = 132;

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;
export const TCP_URG = 0x20;
