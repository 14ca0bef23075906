/**
 * The per-packet entry point of connection tracking: Linux nf_conntrack_in (nf_conntrack_core.c)
 * — resolve_normal_ct, then the protocol's packet handler — and, for ICMP errors,
 * nf_conntrack_inet_error (nf_conntrack_proto_icmp.c).
 *
 * Contract with the dataplane:
 *  - `track(table, info, result)` fills the reused `result` and returns a DropReason: None, or
 *    ConntrackFull when the table was full and nothing could be evicted (Linux drops the packet;
 *    result.state is INVALID, id -1). Nothing is allocated.
 *  - `result.isNew`: this packet created an unconfirmed entry `result.id`. NAT rules run for it;
 *    when the packet leaves call `table.confirm(id)` (false: a tuple clashed, the entry is
 *    gone, drop or re-track the packet), or `table.release(id)` when the packet is dropped.
 *  - `result.state` is the ctstate, as resolve_normal_ct: a reply-direction packet is ESTABLISHED;
 *    an original-direction packet is ESTABLISHED once a reply has been seen, NEW before (so a
 *    retransmitted SYN of a confirmed but unanswered connection is NEW with isNew = false: its
 *    NAT binding already exists). ICMP errors of a known connection are RELATED. INVALID packets
 *    leave every entry untouched; `result.id` is -1; track() still returns DropReason.None:
 *    whether to drop them is the caller's policy (Linux forwards INVALID packets un-NATed unless a
 *    filter rule drops them; DropReason.ConntrackInvalid is there for callers that do).
 *
 * Fragments: Linux reassembles before conntrack; qnat does not. A TCP/UDP/ICMP packet without its
 * L4 header (`info.hasL4 === false`: a non-first fragment) gets INVALID here with reason
 * the dataplane must associate non-first fragments with the connection of their
 * first fragment itself (by IP id) and not call track() for them. Protocols without ports are
 * tracked by address pair whether or not they are fragmented.
 */
import { DropReason } from "../core/drop-reason.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, type PacketInfo } from "../wire/packet-info.js";
import { genericPacket } from "./generic.js";
import { icmpPacket } from "./icmp.js";
import { CtDir, CtState, CtStatus, type ConntrackTable } from "./table.js";
import { TcpVerdict, tcpFlagsValid, tcpMayCreate, tcpNew, tcpPacket } from "./tcp.js";
import { icmpInverseType, icmpMayCreate, icmpTupleDport } from "./tuple.js";
import { udpPacket } from "./udp.js";

export { CtDir, CtState, CtStatus };

/** Reused per packet; read its fields right after `track`. */
export class TrackResult {
  /** Entry id, or -1 (INVALID, table full). */
  id = -1;
  /** CtDir of the packet relative to the entry. */
  dir: number = CtDir.Original;
  state: CtState = CtState.Invalid;
  /** True when this packet created the (unconfirmed) entry: confirm or release it. */
  isNew = false;
}

function invalid(table: ConntrackTable, result: TrackResult): DropReason {
  table.counters.invalid++;
  result.state = CtState.Invalid;
  return DropReason.None;
}

export function track(table: ConntrackTable, info: PacketInfo, result: TrackResult): DropReason {
  result.id = -1;
  result.dir = CtDir.Original;
  result.isNew = false;

  const protocol = info.protocol;
  let sport = 0;
  let dport = 0;
  if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) {
    if (!info.hasL4) return invalid(table, result);
    // tcp_error: invalid flag combinations (SYN+FIN, no flags, ...)
    if (protocol === IPPROTO_TCP && !tcpFlagsValid(info.tcpFlags)) {
      table.counters.tcpInvalidFlags++;
      return invalid(table, result);
    }
    sport = info.sport;
    dport = info.dport;
  } else if (protocol === IPPROTO_ICMP) {
    if (!info.hasL4) return invalid(table, result);
    if (info.isIcmpError) return trackIcmpError(table, info, result);
    // Types without an inverse (router advertisement...) cannot be tracked: nf_ct_invert_tuple fails.
    if (icmpInverseType(info.icmpType) < 0) return invalid(table, result);
    sport = info.icmpId;
    dport = icmpTupleDport(info.icmpType, info.icmpCode);
  }

  // Time: the table's `now()` (pinned once per batch by the dataplane), read by each step itself.
  // Addresses as int32 bits (packet-info.ts): a uint32 of 2^31 or more passed to a call is a boxed (allocated) double.
  const handle = table.lookup(protocol, info.srcBits, info.dstBits, sport, dport);
  if (handle >= 0) {
    const id = handle >> 1;
    const dir = handle & 1;
    const status = table.status(id);
    const state = dir === CtDir.Reply || (status & CtStatus.SeenReply) !== 0 ? CtState.Established : CtState.New;
    let reopen = false;
    if (protocol === IPPROTO_TCP) {
      const verdict = tcpPacket(table, id, dir, info);
      if (verdict === TcpVerdict.Invalid) return invalid(table, result);
      if (verdict === TcpVerdict.Reopen) {
        // tcp_packet: nf_ct_kill + NF_REPEAT; the SYN is looked up again and starts a new connection.
        table.remove(id);
        reopen = true;
      }
    } else if (protocol === IPPROTO_UDP) {
      udpPacket(table, id);
    } else if (protocol === IPPROTO_ICMP) {
      icmpPacket(table, id);
    } else {
      genericPacket(table, id);
    }
    if (!reopen) {
      // nf_conntrack_in: IPS_SEEN_REPLY is set after the protocol handler accepted a reply packet.
      if (dir === CtDir.Reply) table.setStatus(id, CtStatus.SeenReply);
      result.id = id;
      result.dir = dir;
      result.state = state;
      return DropReason.None;
    }
  }

  // No connection: may this packet start one? (tcp_new, icmp valid_new)
  if (protocol === IPPROTO_TCP && !tcpMayCreate(info.tcpFlags)) {
    table.counters.tcpInvalidState++;
    return invalid(table, result);
  }
  if (protocol === IPPROTO_ICMP && !icmpMayCreate(info.icmpType)) return invalid(table, result);

  const id = table.create(protocol, info.srcBits, info.dstBits, sport, dport);
  if (id < 0) {
    result.state = CtState.Invalid;
    return DropReason.ConntrackFull;
  }
  if (protocol === IPPROTO_TCP) {
    tcpNew(table, id, info);
    // The first segment always passes the window check (tcp_new set its direction from it).
    tcpPacket(table, id, CtDir.Original, info);
  }
  else if (protocol === IPPROTO_UDP) udpPacket(table, id);
  else if (protocol === IPPROTO_ICMP) icmpPacket(table, id);
  else genericPacket(table, id);
  result.id = id;
  result.dir = CtDir.Original;
  result.state = CtState.New;
  result.isNew = true;
  return DropReason.None;
}

/**
 * nf_conntrack_inet_error: the embedded packet's tuple is inverted (it was travelling the other
 * way) and looked up. Found: RELATED, in the direction the inverted tuple matched. Not found, no
 * ports, an embedded ICMP error/non-query, or an outer destination that is not the embedded
 * packet's source ("outer daddr != inner"): INVALID. Never creates or refreshes an entry.
 */
function trackIcmpError(table: ConntrackTable, info: PacketInfo, result: TrackResult): DropReason {
  const innerProtocol = info.innerProtocol;
  let sport = 0;
  let dport = 0;
  if (innerProtocol === IPPROTO_TCP || innerProtocol === IPPROTO_UDP) {
    if (!info.innerHasPorts) return invalid(table, result);
    sport = info.innerDport;
    dport = info.innerSport;
  } else if (innerProtocol === IPPROTO_ICMP) {
    if (!info.innerHasPorts) return invalid(table, result);
    const inverseType = icmpInverseType(info.innerIcmpType);
    if (inverseType < 0) return invalid(table, result);
    sport = info.innerSport;
    dport = icmpTupleDport(inverseType, info.innerIcmpCode);
  }
  // ct->tuplehash[dir].tuple.dst is the inverted tuple's dst, i.e. the embedded source.
  if (info.dstBits !== info.innerSrcBits) return invalid(table, result);
  const handle = table.lookup(innerProtocol, info.innerDstBits, info.innerSrcBits, sport, dport);
  if (handle < 0) return invalid(table, result);
  result.id = handle >> 1;
  result.dir = handle & 1;
  result.state = CtState.Related;
  return DropReason.None;
}
