/**
 * TCP connection tracking: Linux net/netfilter/nf_conntrack_proto_tcp.c (6.x) without window
 * tracking.
 *
 * Implemented as Linux: the `tcp_conntracks[2][6][TCP_CONNTRACK_MAX]` state table; `tcp_valid_flags`
 * (invalid flag combinations are INVALID); `tcp_new` with nf_conntrack_tcp_loose = 1 (the Linux
 * default: a SYN creates SYN_SENT and a mid-stream ACK is picked up as ESTABLISHED, capped to the
 * UNACK timeout until a reply is seen; FIN, RST, SYN/ACK never create); ignored packets (sIG) are
 * accepted without a state change; TIME_WAIT/CLOSE reopened by a SYN when the old connection was
 * closed (CLOSE_INIT) or reset by the same side — the old entry is removed and the SYN creates a
 * new one; simultaneous open (SYN_SENT2); the RFC 5961 challenge-ACK case in LAST_ACK; ASSURED on
 * the ACK that moves SYN_RECV (or a picked-up ESTABLISHED) to ESTABLISHED once a reply was seen;
 * a RST before any reply kills the entry; a SYN retransmitted in SYN_SENT does not refresh the
 * timeout; a RST sets the CLOSE timeout.
 *
 * Documented differences (no sequence numbers are tracked, so `tcp_in_window` is skipped as with
 * nf_conntrack_tcp_no_window_check = 1): no out-of-window INVALID, no retransmission counting
 * (TCP_CONNTRACK_RETRANS timeout), no unacknowledged-data UNACK timeout, no RST sequence checks in
 * CLOSE, and no re-sync from a SYN/ACK answering an ignored SYN (Linux case "b)").
 */
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TCP_URG } from "../wire/packet-info.js";
import { CtDir, CtStatus, type ConntrackTable } from "./table.js";

/** Linux `enum tcp_conntrack` (include/uapi/linux/netfilter/nf_conntrack_tcp.h). */
export enum TcpState {
  None = 0,
  SynSent = 1,
  SynRecv = 2,
  Established = 3,
  FinWait = 4,
  CloseWait = 5,
  LastAck = 6,
  TimeWait = 7,
  Close = 8,
  SynSent2 = 9,
}

/** tcp_conntrack_names[] as `conntrack -L` prints them. */
export const TCP_STATE_NAMES: readonly string[] = [
  "NONE",
  "SYN_SENT",
  "SYN_RECV",
  "ESTABLISHED",
  "FIN_WAIT",
  "CLOSE_WAIT",
  "LAST_ACK",
  "TIME_WAIT",
  "CLOSE",
  "SYN_SENT2",
];

/** Linux `enum tcp_bit_set`: which of SYN, SYN/ACK, FIN, ACK, RST, none a segment carries. */
export const TcpFlagIndex = { Syn: 0, SynAck: 1, Fin: 2, Ack: 3, Rst: 4, None: 5 } as const;

/** What the tracker did with a segment. */
export const TcpVerdict = {
  /** in state table, state updated and timeout refreshed */
  Accept: 0,
  /** sIG: accepted, connection left as it was */
  Ignore: 1,
  /** sIV (or bad flags): the packet is INVALID, the connection is unchanged */
  Invalid: 2,
  /** SYN reopening a closed connection: remove the entry and track the SYN as NEW */
  Reopen: 3,
} as const;

const sSS = TcpState.SynSent;
const sSR = TcpState.SynRecv;
const sES = TcpState.Established;
const sFW = TcpState.FinWait;
const sCW = TcpState.CloseWait;
const sLA = TcpState.LastAck;
const sTW = TcpState.TimeWait;
const sCL = TcpState.Close;
const sS2 = TcpState.SynSent2;
/** TCP_CONNTRACK_MAX: invalid */
export const TCP_STATE_INVALID = 10;
/** TCP_CONNTRACK_IGNORE */
export const TCP_STATE_IGNORE = 11;
const sIV = TCP_STATE_INVALID;
const sIG = TCP_STATE_IGNORE;

const STATES = 10;
/** tcp_conntracks[dir][flag index][old state], flattened: (dir * 6 + index) * 10 + state. */
// prettier-ignore
const TCP_CONNTRACKS = new Uint8Array([
  // ORIGINAL      sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
  /* syn    */     sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2,
  /* synack */     sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR,
  /* fin    */     sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV,
  /* ack    */     sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV,
  /* rst    */     sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL,
  /* none   */     sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV,
  // REPLY         sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
  /* syn    */     sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2,
  /* synack */     sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR,
  /* fin    */     sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV,
  /* ack    */     sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG,
  /* rst    */     sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL,
  /* none   */     sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV,
]);

/** The state table lookup tcp_conntracks[dir][index][state]. */
export function tcpNextState(dir: number, index: number, state: number): number {
  return TCP_CONNTRACKS[(dir * 6 + index) * STATES + state]!;
}

/** tcp_valid_flags[] over FIN|SYN|RST|ACK|URG (PSH, ECE, CWR are always allowed): tcp_error. */
const TCP_VALID_FLAGS = new Uint8Array(0x40);
TCP_VALID_FLAGS[TCP_SYN] = 1;
TCP_VALID_FLAGS[TCP_SYN | TCP_URG] = 1;
TCP_VALID_FLAGS[TCP_SYN | TCP_ACK] = 1;
TCP_VALID_FLAGS[TCP_RST] = 1;
TCP_VALID_FLAGS[TCP_RST | TCP_ACK] = 1;
TCP_VALID_FLAGS[TCP_FIN | TCP_ACK] = 1;
TCP_VALID_FLAGS[TCP_FIN | TCP_ACK | TCP_URG] = 1;
TCP_VALID_FLAGS[TCP_ACK] = 1;
TCP_VALID_FLAGS[TCP_ACK | TCP_URG] = 1;

const TCP_FLAGS_CHECKED = TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK | TCP_URG;

export function tcpFlagsValid(flags: number): boolean {
  return TCP_VALID_FLAGS[flags & TCP_FLAGS_CHECKED] === 1;
}

/** get_conntrack_index(). */
export function tcpFlagIndex(flags: number): number {
  if (flags & TCP_RST) return TcpFlagIndex.Rst;
  if (flags & TCP_SYN) return flags & TCP_ACK ? TcpFlagIndex.SynAck : TcpFlagIndex.Syn;
  if (flags & TCP_FIN) return TcpFlagIndex.Fin;
  if (flags & TCP_ACK) return TcpFlagIndex.Ack;
  return TcpFlagIndex.None;
}

/** tcp_new(): may a segment with these (valid) flags create a connection? (loose = 1) */
export function tcpMayCreate(flags: number): boolean {
  return tcpNextState(CtDir.Original, tcpFlagIndex(flags), TcpState.None) < TCP_STATE_INVALID;
}

// The per-entry private byte (ConntrackTable.tcpFlags): Linux ip_ct_tcp last_index, last_dir,
// seen[dir].flags & IP_CT_TCP_FLAG_CLOSE_INIT, last_flags & IP_CT_TCP_SIMULTANEOUS_OPEN /
// IP_CT_EXP_CHALLENGE_ACK.
const LAST_INDEX_MASK = 0x07;
const LAST_DIR_REPLY = 0x08;
const CLOSE_INIT_ORIGINAL = 0x10;
const CLOSE_INIT_REPLY = 0x20;
const SIMULTANEOUS_OPEN = 0x40;
const EXP_CHALLENGE_ACK = 0x80;

function closeInitBit(dir: number): number {
  return dir === CtDir.Original ? CLOSE_INIT_ORIGINAL : CLOSE_INIT_REPLY;
}

function withLast(bits: number, index: number, dir: number): number {
  return (bits & ~(LAST_INDEX_MASK | LAST_DIR_REPLY)) | index | (dir === CtDir.Reply ? LAST_DIR_REPLY : 0);
}

/** Timeout of a TCP state, from the table's timeouts. */
export function tcpStateTimeout(table: ConntrackTable, state: number): number {
  const t = table.timeouts;
  switch (state) {
    case TcpState.SynSent:
      return t.tcpSynSent;
    case TcpState.SynRecv:
      return t.tcpSynRecv;
    case TcpState.Established:
      return t.tcpEstablished;
    case TcpState.FinWait:
      return t.tcpFinWait;
    case TcpState.CloseWait:
      return t.tcpCloseWait;
    case TcpState.LastAck:
      return t.tcpLastAck;
    case TcpState.TimeWait:
      return t.tcpTimeWait;
    case TcpState.Close:
      return t.tcpClose;
    case TcpState.SynSent2:
      return t.tcpSynSent2;
    default:
      return t.tcpSynSent; // timeouts[0] = SYN_SENT in nf_conntrack_tcp_init_net
  }
}

/** An ignored segment (sIG, or a SYN that may not reopen): remember it, change nothing else. */
function tcpIgnore(table: ConntrackTable, id: number, bits: number, index: number, dir: number, oldState: number): number {
  bits = withLast(bits, index, dir);
  if (index === TcpFlagIndex.Syn && dir === CtDir.Original) {
    bits &= ~EXP_CHALLENGE_ACK;
    // RFC 5961: the peer may answer a SYN in LAST_ACK with a challenge ACK.
    if (oldState === TcpState.LastAck) bits |= EXP_CHALLENGE_ACK;
  }
  table.setTcpFlags(id, bits);
  table.counters.ignore++;
  return TcpVerdict.Ignore;
}

/**
 * nf_conntrack_tcp_packet for one segment of connection `id` travelling in `dir`. A new entry is in
 * state NONE (tcp_new has passed). Flags must already be valid (tcpFlagsValid). Returns a TcpVerdict;
 * the caller sets SEEN_REPLY after an accepted reply-direction packet, as nf_conntrack_in does.
 */
export function tcpPacket(table: ConntrackTable, id: number, dir: number, flags: number): number {
  const oldState = table.tcpState(id);
  const index = tcpFlagIndex(flags);
  let newState = tcpNextState(dir, index, oldState);
  let bits = table.tcpFlags(id);
  const lastIndex = bits & LAST_INDEX_MASK;
  const lastDir = bits & LAST_DIR_REPLY ? CtDir.Reply : CtDir.Original;

  switch (newState) {
    case TcpState.SynSent:
      if (oldState < TcpState.TimeWait) break;
      // RFC 1122 4.2.2.13: a SYN may reopen a connection from TIME-WAIT; also aborted connections.
      if (bits & (CLOSE_INIT_ORIGINAL | CLOSE_INIT_REPLY) || (lastDir === dir && lastIndex === TcpFlagIndex.Rst)) {
        return TcpVerdict.Reopen;
      }
      return tcpIgnore(table, id, bits, index, dir, oldState);
    case TCP_STATE_IGNORE:
      return tcpIgnore(table, id, bits, index, dir, oldState);
    case TCP_STATE_INVALID:
      return TcpVerdict.Invalid;
    case TcpState.TimeWait:
      if (
        oldState === TcpState.LastAck &&
        index === TcpFlagIndex.Ack &&
        lastDir !== dir &&
        lastIndex === TcpFlagIndex.Syn &&
        bits & EXP_CHALLENGE_ACK
      ) {
        // Detected RFC 5961 challenge ACK: it does not acknowledge the last FIN.
        table.setTcpFlags(id, bits & ~EXP_CHALLENGE_ACK);
        table.counters.ignore++;
        return TcpVerdict.Ignore;
      }
      break;
    case TcpState.SynSent2:
      // the table cannot express simultaneous open by itself
      bits |= SIMULTANEOUS_OPEN;
      break;
    case TcpState.SynRecv:
      if (dir === CtDir.Reply && index === TcpFlagIndex.Ack && bits & SIMULTANEOUS_OPEN) newState = TcpState.Established;
      break;
    default:
      break;
  }

  // in window (not checked, see the file comment)
  bits = withLast(bits, index, dir);
  if (oldState !== newState && newState === TcpState.FinWait) bits |= closeInitBit(dir);
  table.setTcpFlags(id, bits);
  table.setTcpState(id, newState);

  let timeout = index === TcpFlagIndex.Rst ? table.timeouts.tcpClose : tcpStateTimeout(table, newState);
  const status = table.status(id);
  if ((status & CtStatus.SeenReply) === 0) {
    // "If only reply is a RST, we can consider ourselves not to have an established connection"
    if (flags & TCP_RST) {
      table.kill(id);
      return TcpVerdict.Accept;
    }
    // do not renew the timeout on a SYN retransmit (port reuse could keep the entry alive forever)
    if (index === TcpFlagIndex.Syn && oldState === TcpState.SynSent) return TcpVerdict.Accept;
    // ESTABLISHED without SEEN_REPLY (mid-stream pickup): avoid the large ESTABLISHED timeout
    if (newState === TcpState.Established && timeout > table.timeouts.tcpUnack) timeout = table.timeouts.tcpUnack;
  } else if (
    (status & CtStatus.Assured) === 0 &&
    (oldState === TcpState.SynRecv || oldState === TcpState.Established) &&
    newState === TcpState.Established
  ) {
    table.setStatus(id, CtStatus.Assured);
  }
  // At the table's time (`now()`, pinned once per batch): no double crosses a call.
  table.refreshNow(id, timeout);
  return TcpVerdict.Accept;
}
