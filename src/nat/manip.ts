/**
 * Packet translation from a connection's binding: Linux nf_nat_packet / nf_nat_manip_pkt
 * (net/netfilter/nf_nat_core.c, nf_nat_proto.c) and nf_nat_icmp_reply_translation (nf_nat_proto.c).
 *
 * A hook applies one manip type: Dst at PREROUTING and OUTPUT, Src at POSTROUTING and INPUT
 * (HOOK2MANIP). The status bit that says "this side was translated" is IPS_SRC_NAT for Src and
 * IPS_DST_NAT for Dst, swapped for packets of the reply direction (a reply's destination is the
 * original's source). When the bit is set, the packet is made to look like the inverse of the
 * other direction's tuple: for Src its source address and port (ICMP: identifier) become the
 * other tuple's destination, for Dst its destination becomes the other tuple's source.
 *
 * Rewrites go through src/wire/rewrite.ts (incremental checksums, RFC 1624; UDP 0 stays 0). The
 * PacketInfo is updated to the new addresses/ports so later stages (routing after DNAT, traces)
 * see the translated packet. No allocation: addresses travel as int32 bits (packet-info.ts).
 */
import { CT_STATUS_NAT_DONE_MASK, CT_STATUS_NAT_MASK, CtStatus, type ConntrackTable } from "../conntrack/table.js";
import { ICMP_REDIRECT, icmpIsQuery } from "../wire/icmp.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, type PacketInfo } from "../wire/packet-info.js";
import {
  rewriteDstAddr,
  rewriteDstPort,
  rewriteIcmpId,
  rewriteInnerDstAddr,
  rewriteInnerDstPort,
  rewriteInnerIcmpId,
  rewriteInnerSrcAddr,
  rewriteInnerSrcPort,
  rewriteSrcAddr,
  rewriteSrcPort,
} from "../wire/rewrite.js";
import { Manip } from "./range.js";

/** The status bit nf_nat_packet tests for a packet of direction `dir` at a hook doing `manip`. */
export function natStatusBit(manip: Manip, dir: number): number {
  const bit = manip === Manip.Src ? CtStatus.SrcNat : CtStatus.DstNat;
  // Invert if this is the reply direction (statusbit ^= IPS_NAT_MASK).
  return dir === 0 ? bit : bit ^ CT_STATUS_NAT_MASK;
}

/**
 * nf_nat_packet: translates one packet of connection `id`, direction `dir` (0 original, 1 reply),
 * at a hook doing `manip`. Non-first fragments get their addresses translated only (their ports
 * are in the first fragment). ICMP errors must go through `natIcmpError` instead.
 */
export function natPacket(table: ConntrackTable, buf: Uint8Array, info: PacketInfo, id: number, dir: number, manip: Manip): void {
  if ((table.status(id) & natStatusBit(manip, dir)) === 0) return;
  const other = dir ^ 1;
  const o = info.offset;
  const protocol = info.protocol;
  if (manip === Manip.Src) {
    const addr = table.tupleDstBits(id, other);
    if (addr !== info.srcBits) {
      rewriteSrcAddr(buf, o, addr, info.l4ChecksumPartial);
      info.srcBits = addr;
    }
    if (!info.hasL4) return;
    if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) {
      const port = table.tupleDportOf(id, other);
      if (port !== info.sport) {
        rewriteSrcPort(buf, o, port, info.l4ChecksumPartial);
        info.sport = port;
      }
    } else if (protocol === IPPROTO_ICMP && !info.isIcmpError) {
      translateIcmpId(table, buf, info, id, other);
    }
  } else {
    const addr = table.tupleSrcBits(id, other);
    if (addr !== info.dstBits) {
      rewriteDstAddr(buf, o, addr, info.l4ChecksumPartial);
      info.dstBits = addr;
    }
    if (!info.hasL4) return;
    if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) {
      const port = table.tupleSportOf(id, other);
      if (port !== info.dport) {
        rewriteDstPort(buf, o, port, info.l4ChecksumPartial);
        info.dport = port;
      }
    } else if (protocol === IPPROTO_ICMP && !info.isIcmpError) {
      translateIcmpId(table, buf, info, id, other);
    }
  }
}

/** icmp_manip_pkt: the identifier is the same in both tuples (tuple sport), whatever the manip. */
function translateIcmpId(table: ConntrackTable, buf: Uint8Array, info: PacketInfo, id: number, other: number): void {
  if (!icmpIsQuery(info.icmpType)) return;
  const icmpId = table.tupleSportOf(id, other);
  if (icmpId === info.icmpId) return;
  rewriteIcmpId(buf, info.offset, icmpId);
  info.icmpId = icmpId;
  info.sport = icmpId;
}

/**
 * nf_nat_icmp_reply_translation: an ICMP error RELATED to connection `id`. `dir` is the
 * direction the ICMP error itself travels — the one conntrack finds by looking up the inverse
 * of the embedded tuple (nf_conntrack_proto_icmp.c icmp_error_message), i.e. the opposite of
 * the embedded packet's direction.
 *
 * The embedded packet belongs to the other direction, so it gets the inverse manip (`!manip`)
 * aimed at the other direction's tuple as it is (not inverted); the outer header gets `manip`
 * aimed at the inverse of the other direction's tuple, addresses only. Checksums: the embedded
 * IP and L4 checksums and the outer ICMP checksum are patched by rewrite.ts (Linux recomputes the
 * outer ICMP checksum in full; the result is the same). Unlike the kernel, the outer ICMP
 * "rest of header" is never touched (Linux runs icmp_manip_pkt on the outer error, writing the
 * connection's id/port into bytes 4-5; for errors those bytes are unused or carry the
 * parameter-problem pointer / redirect gateway, so qnat leaves them).
 *
 * Returns false when the packet must be dropped: an ICMP redirect about a NATed connection
 * (Linux refuses those: they would reveal or redirect the untranslated path).
 */
export function natIcmpError(table: ConntrackTable, buf: Uint8Array, info: PacketInfo, id: number, dir: number, manip: Manip): boolean {
  const status = table.status(id);
  if (info.icmpType === ICMP_REDIRECT) {
    if ((status & CT_STATUS_NAT_DONE_MASK) !== CT_STATUS_NAT_DONE_MASK) return false;
    if (status & CT_STATUS_NAT_MASK) return false;
  }
  if ((status & natStatusBit(manip, dir)) === 0) return true;
  const other = dir ^ 1;
  const o = info.offset;
  const inner = info.innerOffset;
  const innerProtocol = info.innerProtocol;
  const tSrc = table.tupleSrcBits(id, other);
  const tDst = table.tupleDstBits(id, other);
  const tSport = table.tupleSportOf(id, other);
  const tDport = table.tupleDportOf(id, other);

  // Embedded packet: the inverse manip, towards the other direction's tuple.
  if (manip === Manip.Dst) {
    // inner SRC manip
    if (info.innerSrcBits !== tSrc) {
      rewriteInnerSrcAddr(buf, o, inner, tSrc);
      info.innerSrcBits = tSrc;
    }
    if (info.innerHasPorts) {
      if (innerProtocol === IPPROTO_TCP || innerProtocol === IPPROTO_UDP) {
        if (info.innerSport !== tSport) {
          rewriteInnerSrcPort(buf, o, inner, tSport);
          info.innerSport = tSport;
        }
      } else if (innerProtocol === IPPROTO_ICMP) {
        translateInnerIcmpId(buf, info, tSport);
      }
    }
  } else {
    // inner DST manip
    if (info.innerDstBits !== tDst) {
      rewriteInnerDstAddr(buf, o, inner, tDst);
      info.innerDstBits = tDst;
    }
    if (info.innerHasPorts) {
      if (innerProtocol === IPPROTO_TCP || innerProtocol === IPPROTO_UDP) {
        if (info.innerDport !== tDport) {
          rewriteInnerDstPort(buf, o, inner, tDport);
          info.innerDport = tDport;
        }
      } else if (innerProtocol === IPPROTO_ICMP) {
        translateInnerIcmpId(buf, info, tSport);
      }
    }
  }

  // Outer header: look like the reply to the packet the error is about (addresses only).
  if (manip === Manip.Src) {
    if (info.srcBits !== tDst) {
      rewriteSrcAddr(buf, o, tDst);
      info.srcBits = tDst;
    }
  } else if (info.dstBits !== tSrc) {
    rewriteDstAddr(buf, o, tSrc);
    info.dstBits = tSrc;
  }
  return true;
}

function translateInnerIcmpId(buf: Uint8Array, info: PacketInfo, icmpId: number): void {
  if (!icmpIsQuery(info.innerIcmpType) || info.innerSport === icmpId) return;
  rewriteInnerIcmpId(buf, info.offset, info.innerOffset, icmpId);
  info.innerSport = icmpId;
}
