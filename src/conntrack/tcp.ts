/**
 * TCP connection tracking: Linux net/netfilter/nf_conntrack_proto_tcp.c (6.x), window tracking
 * included.
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
 * Window tracking as Linux `tcp_in_window`: per direction td_end, td_maxend, td_maxwin, td_maxack,
 * td_scale and the flags WINDOW_SCALE, SACK_PERM, BE_LIBERAL, DATA_UNACKNOWLEDGED, WinBits.MaxackSet
 * (CLOSE_INIT lives in the private byte below); window scale and SACK-permitted from the SYN and
 * SYN/ACK options (`tcp_options`), the highest SACK right edge (`tcp_sack`); the four bounds
 * (I-IV in Linux's comment) with before/after wraparound arithmetic; segments that overshoot the
 * receiver's window by less than a window are IGNORED with td_end advanced; out-of-window RSTs
 * before td_maxack are INVALID, an RST that does not match td_maxack exactly keeps ESTABLISHED
 * (room for a challenge ACK); the re-sync from a SYN/ACK answering an ignored SYN; the loose
 * pickup marks both directions SACK_PERM | BE_LIBERAL as Linux; `tcpBeLiberal` is
 * nf_conntrack_tcp_be_liberal; RETRANS (tcp_max_retrans = 3 identical ACK segments, or a zero
 * window) and UNACK (unacknowledged data) cap the timeout at 300 s; `nf_tcp_handle_invalid`
 * lowers an ASSURED entry's timeout when FIN/RST are out of window in both directions.
 * qnat never adjusts sequence numbers (no helpers), so Linux's nf_ct_seq_offset is always 0.
 */
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TCP_URG, type PacketInfo } from "../wire/packet-info.js";
import {
  TCP_MIN_HEADER_LENGTH,
  TCP_OPTION_SACK_PERM,
  TCP_OPTION_WINDOW_SCALE,
  tcpAckBits,
  tcpHeaderLength,
  tcpSackEdge,
  tcpSeqBits,
  tcpSynOptions,
  tcpWindow,
} from "../wire/tcp.js";
import { CtStatus, TcpWindowWord, type ConntrackTable } from "./table.js";

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
const sNO = TcpState.None;
// Const enums for the per-packet code, which TypeScript writes as literals: TcpState and CtStatus
// are (non-const) enums and TcpFlagIndex an object, whose properties optimized code would load on
// every use, and a module-level `const` is a context-slot load and an initialisation check.
/** TcpFlagIndex's values. */
const enum Index {
  Syn = 0,
  SynAck = 1,
  Fin = 2,
  Ack = 3,
  Rst = 4,
  None = 5,
}
const enum Dir {
  Original = 0,
  Reply = 1,
}
const enum Status {
  SeenReply = CtStatus.SeenReply,
  Assured = CtStatus.Assured,
  FixedTimeout = CtStatus.FixedTimeout,
}

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
  if (flags & TCP_RST) return Index.Rst;
  if (flags & TCP_SYN) return flags & TCP_ACK ? Index.SynAck : Index.Syn;
  if (flags & TCP_FIN) return Index.Fin;
  if (flags & TCP_ACK) return Index.Ack;
  return Index.None;
}

/** tcp_new(): may a segment with these (valid) flags create a connection? (loose = 1) */
export function tcpMayCreate(flags: number): boolean {
  return tcpNextState(Dir.Original, tcpFlagIndex(flags), sNO) < TCP_STATE_INVALID;
}

// The per-entry private byte (ConntrackTable.tcpFlags): Linux ip_ct_tcp last_index, last_dir,
// seen[dir].flags & IP_CT_TCP_FLAG_CLOSE_INIT, last_flags & IP_CT_TCP_SIMULTANEOUS_OPEN /
// IP_CT_EXP_CHALLENGE_ACK.
const enum Private {
  LastIndexMask = 0x07,
  LastDirReply = 0x08,
  CloseInitOriginal = 0x10,
  CloseInitReply = 0x20,
  SimultaneousOpen = 0x40,
  ExpChallengeAck = 0x80,
}

function closeInitBit(dir: number): number {
  return dir === Dir.Original ? Private.CloseInitOriginal : Private.CloseInitReply;
}

function withLast(bits: number, index: number, dir: number): number {
  return (bits & ~(Private.LastIndexMask | Private.LastDirReply)) | index | (dir === Dir.Reply ? Private.LastDirReply : 0);
}

/** Timeout of a TCP state, from the table's timeouts. */
export function tcpStateTimeout(table: ConntrackTable, state: number): number {
  const t = table.timeouts;
  switch (state) {
    case sSS:
      return t.tcpSynSent;
    case sSR:
      return t.tcpSynRecv;
    case sES:
      return t.tcpEstablished;
    case sFW:
      return t.tcpFinWait;
    case sCW:
      return t.tcpCloseWait;
    case sLA:
      return t.tcpLastAck;
    case sTW:
      return t.tcpTimeWait;
    case sCL:
      return t.tcpClose;
    case sS2:
      return t.tcpSynSent2;
    default:
      return t.tcpSynSent; // timeouts[0] = SYN_SENT in nf_conntrack_tcp_init_net
  }
}

// The small fields of the window state (word TcpWindowWord.Bits of table.tcpWindow). Per direction d a
// byte at d * 8: td_scale (bits 0-3) and the flags below (the option bits of wire/tcp.ts
// tcpSynOptions line up with them). Linux IP_CT_TCP_FLAG_* in include/uapi/linux/netfilter/nf_conntrack_tcp.h.
const F_WINDOW_SCALE = TCP_OPTION_WINDOW_SCALE;
const F_SACK_PERM = TCP_OPTION_SACK_PERM;
const enum WinBits {
  ScaleMask = 0x0f,
  BeLiberal = 0x40,
  DataUnacknowledged = 0x80,
  /** IP_CT_TCP_FLAG_MAXACK_SET of direction d: bit 16 + d. */
  MaxackSet = 1 << 16,
  /** last_wscale (bits 18-21) and last_flags' WINDOW_SCALE / SACK_PERM (the ignored SYN's options). */
  LastWscaleShift = 18,
  LastWindowScale = 1 << 22,
  LastSackPerm = 1 << 23,
  /** retrans (bits 24-31): a u8 as in Linux, so it wraps as Linux's does. */
  RetransShift = 24,
}
const enum Limit {
  /** Linux nf_conntrack_tcp_max_retrans. */
  MaxRetrans = 3,
  /** MAXACKWINCONST. */
  MaxAckWindow = 66000,
}

/** What tcp_in_window decided (enum nf_ct_tcp_action). */
const WINDOW_ACCEPT = 0;
const WINDOW_IGNORE = 1;
const WINDOW_INVALID = 2;
/** tcpIgnore's answer when a SYN/ACK re-synchronised the entry (Linux "b)"): go on as SYN_SENT -> SYN_RECV. */
const RESYNC = -1;

/** Linux before(seq1, seq2): (s32)(seq1 - seq2) < 0, on int32 bits. */
function before(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}
/** Linux after(seq2, seq1). */
function after(a: number, b: number): boolean {
  return ((b - a) | 0) < 0;
}

/** segment_seq_plus_len: seq + payload length + SYN + FIN, as int32 bits. */
function segmentEnd(seq: number, flags: number, b: Uint8Array, l4: number, l4Length: number): number {
  return (seq + (l4Length - tcpHeaderLength(b, l4)) + (flags & TCP_SYN ? 1 : 0) + (flags & TCP_FIN ? 1 : 0)) | 0;
}

/**
 * tcp_options for direction `d`: when the segment has option bytes, td_scale and the flags
 * become what they announce (BE_LIBERAL kept; WinBits.MaxackSet, DATA_UNACKNOWLEDGED and CLOSE_INIT
 * cleared); without option bytes nothing changes.
 */
function applyOptions(table: ConntrackTable, id: number, d: number, b: Uint8Array, l4: number): void {
  const options = tcpSynOptions(b, l4);
  if (options < 0) return;
  const at = id * TcpWindowWord.Words + TcpWindowWord.Bits;
  const shift = d << 3;
  const bits = table.tcpWindow[at]!;
  const kept = ((bits >>> shift) & WinBits.BeLiberal) | options;
  if (table.undoLog.recording) table.journalWindowWord(at);
  table.tcpWindow[at] = (bits & ~((0xff << shift) | (WinBits.MaxackSet << d))) | (kept << shift);
  table.setTcpFlags(id, table.tcpFlags(id) & ~closeInitBit(d));
}

/** tcp_init_sender: a SYN or SYN/ACK (re)initialises its direction's window from the segment. */
function initSender(table: ConntrackTable, id: number, dir: number, end: number, win: number, b: Uint8Array, l4: number): void {
  const w = table.tcpWindow;
  const s = id * TcpWindowWord.Words + (dir << 2);
  if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.End);
  w[s + TcpWindowWord.End] = end;
  if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxEnd);
  w[s + TcpWindowWord.MaxEnd] = end;
  if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxWin);
  w[s + TcpWindowWord.MaxWin] = win === 0 ? 1 : win;
  applyOptions(table, id, dir, b, l4);
  // RFC 7323 1.3: both sides must send the Window Scale option to enable scaling in either direction.
  const at = id * TcpWindowWord.Words + TcpWindowWord.Bits;
  const bits = w[at]!;
  if (dir === Dir.Reply && !(bits & F_WINDOW_SCALE && bits & (F_WINDOW_SCALE << 8))) {
    if (table.undoLog.recording) table.journalWindowWord(at);
    w[at] = bits & ~(WinBits.ScaleMask | (WinBits.ScaleMask << 8));
  }
}

/** nf_ct_tcp_state_reset for direction `d`: everything but BE_LIBERAL forgotten. */
function resetDirection(table: ConntrackTable, id: number, d: number): void {
  const w = table.tcpWindow;
  const s = id * TcpWindowWord.Words + (d << 2);
  if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.End);
  w[s + TcpWindowWord.End] = 0;
  if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxEnd);
  w[s + TcpWindowWord.MaxEnd] = 0;
  if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxWin);
  w[s + TcpWindowWord.MaxWin] = 0;
  if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxAck);
  w[s + TcpWindowWord.MaxAck] = 0;
  const at = id * TcpWindowWord.Words + TcpWindowWord.Bits;
  const shift = d << 3;
  const bits = w[at]!;
  if (table.undoLog.recording) table.journalWindowWord(at);
  w[at] = (bits & ~((0xff << shift) | (WinBits.MaxackSet << d))) | (bits & (WinBits.BeLiberal << shift));
  table.setTcpFlags(id, table.tcpFlags(id) & ~closeInitBit(d));
}

/**
 * Both directions BE_LIBERAL, for an entry whose window state was taken elsewhere and earlier (a
 * state file up to one interval old): the segments sent since would be out of its window, so it
 * learns the window anew instead, as conntrackd's entries do (TCPWindowTracking Off, the default:
 * IP_CT_TCP_FLAG_BE_LIBERAL set on both directions of an injected entry).
 */
export function tcpSetBeLiberal(table: ConntrackTable, id: number): void {
  const at = id * TcpWindowWord.Words + TcpWindowWord.Bits;
  if (table.undoLog.recording) table.journalWindowWord(at);
  table.tcpWindow[at]! |= (WinBits.BeLiberal << 8) | WinBits.BeLiberal;
}

/**
 * tcp_new: the window state of a connection's first segment (its flags passed tcpMayCreate). A
 * SYN initialises the original direction from its sequence number, window and options; anything
 * else is a connection picked up mid-stream (nf_conntrack_tcp_loose = 1): the original direction
 * from the segment, both directions SACK_PERM | BE_LIBERAL ("We assume SACK and liberal window
 * checking to handle window scaling").
 */
export function tcpNew(table: ConntrackTable, id: number, info: PacketInfo): void {
  const w = table.tcpWindow;
  const base = id * TcpWindowWord.Words;
  table.clearTcpWindow(id);
  table.setTcpLast(id, 0, 0);
  const b = info.buf;
  const l4 = info.l4Offset;
  const flags = info.tcpFlags;
  const end = segmentEnd(tcpSeqBits(b, l4), flags, b, l4, info.l4Length);
  const win = tcpWindow(b, l4);
  const maxwin = win === 0 ? 1 : win;
  if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.End);
  w[base + TcpWindowWord.End] = end;
  if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.MaxWin);
  w[base + TcpWindowWord.MaxWin] = maxwin;
  if (tcpFlagIndex(flags) === Index.Syn) {
    if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.MaxEnd);
    w[base + TcpWindowWord.MaxEnd] = end;
    applyOptions(table, id, Dir.Original, b, l4);
  } else {
    if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.MaxEnd);
    w[base + TcpWindowWord.MaxEnd] = (end + maxwin) | 0;
    if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.Bits);
    w[base + TcpWindowWord.Bits] = ((F_SACK_PERM | WinBits.BeLiberal) << 8) | F_SACK_PERM | WinBits.BeLiberal;
  }
}

/**
 * tcp_in_window for a segment of `id` in `dir` (its flag index `index`), the connection being in
 * `state` (the stored state). Returns WINDOW_ACCEPT (and updates both directions' window data
 * and the retransmission counter), WINDOW_IGNORE or WINDOW_INVALID (nothing updated, except
 * td_end for a segment overshooting the window by less than a window, as Linux).
 */
function tcpInWindow(
  table: ConntrackTable,
  id: number,
  dir: number,
  index: number,
  flags: number,
  state: number,
  b: Uint8Array,
  l4: number,
  l4Length: number,
): number {
  const w = table.tcpWindow;
  const base = id * TcpWindowWord.Words;
  const s = base + (dir << 2);
  const r = base + ((dir ^ 1) << 2);
  const sShift = dir << 3;
  const rShift = (dir ^ 1) << 3;
  let seq = tcpSeqBits(b, l4);
  let ack = tcpAckBits(b, l4);
  const winRaw = tcpWindow(b, l4);
  let win = winRaw;
  let end = segmentEnd(seq, flags, b, l4, l4Length);
  let sack = ack;
  if ((w[base + TcpWindowWord.Bits]! >>> rShift) & F_SACK_PERM && tcpHeaderLength(b, l4) > TCP_MIN_HEADER_LENGTH) sack = tcpSackEdge(b, l4, sack);

  if (w[s + TcpWindowWord.MaxWin] === 0) {
    if (flags & TCP_SYN) {
      initSender(table, id, dir, end, win, b, l4);
      // simultaneous open
      if ((flags & TCP_ACK) === 0) return WINDOW_ACCEPT;
    } else {
      // "We are in the middle of a connection, its history is lost for us."
      if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.End);
      w[s + TcpWindowWord.End] = end;
      const swin = win << ((w[base + TcpWindowWord.Bits]! >>> sShift) & WinBits.ScaleMask);
      if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxWin);
      w[s + TcpWindowWord.MaxWin] = swin === 0 ? 1 : swin;
      if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxEnd);
      w[s + TcpWindowWord.MaxEnd] = (end + w[s + TcpWindowWord.MaxWin]!) | 0;
      if (w[r + TcpWindowWord.MaxWin] === 0) {
        // no traffic seen the other way yet: tweak it so that bounds III and IV pass
        if (table.undoLog.recording) table.journalWindowWord(r + TcpWindowWord.End);
        w[r + TcpWindowWord.End] = sack;
        if (table.undoLog.recording) table.journalWindowWord(r + TcpWindowWord.MaxEnd);
        w[r + TcpWindowWord.MaxEnd] = sack;
      } else if (sack === ((w[r + TcpWindowWord.End]! + 1) | 0)) {
        // likely a reply to a keepalive
        if (table.undoLog.recording) table.journalWindowWord(r + TcpWindowWord.End);
        w[r + TcpWindowWord.End] = sack;
      }
    }
  } else if (flags & TCP_SYN && after(end, w[s + TcpWindowWord.End]!) && (state === sSS || state === sSR)) {
    // RFC 793: a reinitialised TCP uses larger sequence numbers; take the new SYN(/ACK) as the first.
    initSender(table, id, dir, end, win, b, l4);
    if (dir === Dir.Reply && (flags & TCP_ACK) === 0) return WINDOW_ACCEPT;
  }

  if ((flags & TCP_ACK) === 0) {
    // no ACK: pretend it was set and OK
    ack = sack = w[r + TcpWindowWord.End]!;
  } else if (flags & TCP_RST && ack === 0) {
    // broken stacks that send RST+ACK with a zero ack
    ack = sack = w[r + TcpWindowWord.End]!;
  }
  // RST answering a SYN
  if (flags & TCP_RST && seq === 0 && state === sSS) seq = end = w[s + TcpWindowWord.End]!;

  const bits = w[base + TcpWindowWord.Bits]!;
  const liberal = table.tcpBeLiberal || ((bits >>> sShift) & WinBits.BeLiberal) !== 0;
  const sEnd = w[s + TcpWindowWord.End]!;
  const sMaxend = w[s + TcpWindowWord.MaxEnd]!;
  const sMaxwin = w[s + TcpWindowWord.MaxWin]!;
  const rEnd = w[r + TcpWindowWord.End]!;
  const rMaxwin = w[r + TcpWindowWord.MaxWin]!;
  const maxAckWindow = sMaxwin >>> 0 > Limit.MaxAckWindow ? sMaxwin : Limit.MaxAckWindow;

  // I. seq <= sender.td_maxend
  if (!before(seq, (sMaxend + 1) | 0)) {
    const overshot = (end - sMaxend + 1) >>> 0;
    const ackOk = after(sack, (rEnd - maxAckWindow - 1) | 0);
    const inReceiveWindow = rMaxwin !== 0 && after(end, (sEnd - rMaxwin - 1) | 0);
    if (inReceiveWindow && ackOk && overshot <= rMaxwin >>> 0 && before(sack, (rEnd + 1) | 0)) {
      // a TCP sending more than the receive window allows: remember the data so its ACK passes
      if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.End);
      w[s + TcpWindowWord.End] = end;
      if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.Bits);
      w[base + TcpWindowWord.Bits] = bits | (WinBits.DataUnacknowledged << sShift);
      return liberal ? WINDOW_ACCEPT : WINDOW_IGNORE;
    }
    return liberal ? WINDOW_ACCEPT : WINDOW_INVALID; // "SEQ is over upper bound"
  }
  // III. sack <= receiver.td_end
  if (!before(sack, (rEnd + 1) | 0)) return liberal ? WINDOW_ACCEPT : WINDOW_INVALID; // "ACK is over upper bound"
  // II. seq + len >= sender.td_end - receiver.td_maxwin
  if (!(rMaxwin === 0 || after(end, (sEnd - rMaxwin - 1) | 0))) return liberal ? WINDOW_ACCEPT : WINDOW_IGNORE;
  // IV. sack >= receiver.td_end - MAXACKWINDOW(sender)
  if (!after(sack, (rEnd - maxAckWindow - 1) | 0)) return liberal ? WINDOW_ACCEPT : WINDOW_IGNORE;

  windowUpdate(table, id, dir, index, flags, seq, ack, sack, end, winRaw);
  return WINDOW_ACCEPT;
}

/**
 * tcp_in_window's updates for a segment that passed its bounds: the sender's td_maxwin, td_end
 * (DATA_UNACKNOWLEDGED) and td_maxack, the receiver's td_maxwin and td_maxend (DATA_UNACKNOWLEDGED
 * cleared when everything it sent is acknowledged), and the retransmission counter. `seq`, `ack`,
 * `sack`, `end` as tcp_in_window adjusted them (int32 bits), `winRaw` the segment's window field.
 */
function windowUpdate(table: ConntrackTable, id: number, dir: number, index: number, flags: number, seq: number, ack: number, sack: number, end: number, winRaw: number): void {
  const w = table.tcpWindow;
  const base = id * TcpWindowWord.Words;
  const s = base + (dir << 2);
  const r = base + ((dir ^ 1) << 2);
  const sShift = dir << 3;
  const rShift = (dir ^ 1) << 3;
  const bits = w[base + TcpWindowWord.Bits]!;
  const sEnd = w[s + TcpWindowWord.End]!;
  const sMaxend = w[s + TcpWindowWord.MaxEnd]!;
  const sMaxwin = w[s + TcpWindowWord.MaxWin]!;
  const rMaxwin = w[r + TcpWindowWord.MaxWin]!;
  let win = winRaw;
  // RFC 7323: the window of a segment other than a SYN is scaled.
  if ((flags & TCP_SYN) === 0) win = win << ((bits >>> sShift) & WinBits.ScaleMask);
  let newBits = bits;
  // sender
  const swin = (win + (sack - ack)) | 0;
  // Here and below, a conditional store is journaled whether or not it happens: undoing an unchanged word is harmless.
  if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxWin);
  if (sMaxwin >>> 0 < swin >>> 0) w[s + TcpWindowWord.MaxWin] = swin;
  if (after(end, sEnd)) {
    if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.End);
    w[s + TcpWindowWord.End] = end;
    newBits |= WinBits.DataUnacknowledged << sShift;
  }
  if (flags & TCP_ACK) {
    if ((newBits & (WinBits.MaxackSet << dir)) === 0) {
      if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxAck);
      w[s + TcpWindowWord.MaxAck] = ack;
      newBits |= WinBits.MaxackSet << dir;
    } else if (after(ack, w[s + TcpWindowWord.MaxAck]!)) {
      if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxAck);
      w[s + TcpWindowWord.MaxAck] = ack;
    }
  }
  // receiver
  if (table.undoLog.recording) table.journalWindowWord(r + TcpWindowWord.MaxWin);
  if (rMaxwin !== 0 && after(end, sMaxend)) w[r + TcpWindowWord.MaxWin] = (rMaxwin + (end - sMaxend)) | 0;
  const right = (sack + win) | 0;
  if (table.undoLog.recording) table.journalWindowWord(r + TcpWindowWord.MaxEnd);
  if (after(right, (w[r + TcpWindowWord.MaxEnd]! - 1) | 0)) w[r + TcpWindowWord.MaxEnd] = win === 0 ? (right + 1) | 0 : right;
  if (ack === w[r + TcpWindowWord.End]) newBits &= ~(WinBits.DataUnacknowledged << rShift);

  // retransmissions: the same ACK segment again, in the same direction
  if (index === Index.Ack) {
    const lastWinLen = w[base + TcpWindowWord.LastWinLen]!;
    const lastEnd = table.tcpLastEnd(id);
    const lastDir = table.tcpFlags(id) & Private.LastDirReply ? Dir.Reply : Dir.Original;
    if (
      lastDir === dir &&
      lastEnd === end &&
      ((lastEnd - (lastWinLen & 0xffff)) | 0) === seq &&
      table.tcpLastAck(id) === ack &&
      lastWinLen >>> 16 === winRaw
    ) {
      newBits = (newBits & ~(0xff << WinBits.RetransShift)) | ((((newBits >>> WinBits.RetransShift) + 1) & 0xff) << WinBits.RetransShift);
    } else {
      table.setTcpLast(id, end, ack);
      if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.LastWinLen);
      w[base + TcpWindowWord.LastWinLen] = (winRaw << 16) | ((end - seq) & 0xffff);
      newBits &= ~(0xff << WinBits.RetransShift);
    }
  }
  if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.Bits);
  w[base + TcpWindowWord.Bits] = newBits;
}

/**
 * The fast path's TCP step (dataplane/fast-path.ts), for an ACK or ACK+PSH segment of an
 * ESTABLISHED connection: when tcp_in_window would take it as a plain in-window segment (the
 * direction already initialised, no SACK blocks to read, all four bounds met) it is accepted and
 * true is returned; otherwise nothing changes and false sends the packet to the general path.
 * `seq`, `ack` as int32 bits, `win` the window field, `payload` the payload bytes,
 * `plainOptions`: the header has no options or only NOP NOP TIMESTAMP (nothing tcp_sack reads).
 *
 * The acceptance is windowUpdate + tcpAccept written out for this one case (no SYN, an ACK,
 * sack = ack, ESTABLISHED -> ESTABLISHED): as two calls with ten arguments they cost about a
 * fifth of the established TCP rate. test/dataplane/fast-path.test.ts proves the two equal over
 * random traffic, state and bytes, with and without the fast path.
 */
export function tcpFastPathSegment(table: ConntrackTable, id: number, dir: number, seq: number, ack: number, win: number, payload: number, plainOptions: boolean): boolean {
  // While the undo journal records (a trace's held state), every store must be journaled: the
  // general path does that; this one stores without journaling and so declines.
  if (table.undoLog.recording) return false;
  const w = table.tcpWindow;
  const base = id * TcpWindowWord.Words;
  const s = base + (dir << 2);
  const r = base + ((dir ^ 1) << 2);
  const sShift = dir << 3;
  const sMaxwin = w[s + TcpWindowWord.MaxWin]!;
  if (sMaxwin === 0) return false;
  const bits = w[base + TcpWindowWord.Bits]!;
  if (!plainOptions && (bits >>> ((dir ^ 1) << 3)) & F_SACK_PERM) return false;
  const end = (seq + payload) | 0;
  const sEnd = w[s + TcpWindowWord.End]!;
  const sMaxend = w[s + TcpWindowWord.MaxEnd]!;
  const rEnd = w[r + TcpWindowWord.End]!;
  const rMaxwin = w[r + TcpWindowWord.MaxWin]!;
  const maxAckWindow = sMaxwin >>> 0 > Limit.MaxAckWindow ? sMaxwin : Limit.MaxAckWindow;
  if (
    !before(seq, (sMaxend + 1) | 0) ||
    !before(ack, (rEnd + 1) | 0) ||
    !(rMaxwin === 0 || after(end, (sEnd - rMaxwin - 1) | 0)) ||
    !after(ack, (rEnd - maxAckWindow - 1) | 0)
  ) {
    return false;
  }

  // windowUpdate; a store only where a value changes (the steady state of a bulk transfer moves
  // td_end and td_maxack of one side and td_maxend of the other, nothing else).
  const scaled = win << ((bits >>> sShift) & WinBits.ScaleMask);
  let newBits = bits;
  if (sMaxwin >>> 0 < scaled >>> 0) w[s + TcpWindowWord.MaxWin] = scaled;
  if (after(end, sEnd)) {
    w[s + TcpWindowWord.End] = end;
    newBits |= WinBits.DataUnacknowledged << sShift;
  }
  const maxackSet = WinBits.MaxackSet << dir;
  if ((newBits & maxackSet) === 0 || after(ack, w[s + TcpWindowWord.MaxAck]!)) {
    w[s + TcpWindowWord.MaxAck] = ack;
    newBits |= maxackSet;
  }
  if (rMaxwin !== 0 && after(end, sMaxend)) w[r + TcpWindowWord.MaxWin] = (rMaxwin + (end - sMaxend)) | 0;
  const right = (ack + scaled) | 0;
  if (after(right, (w[r + TcpWindowWord.MaxEnd]! - 1) | 0)) w[r + TcpWindowWord.MaxEnd] = scaled === 0 ? (right + 1) | 0 : right;
  if (ack === rEnd) newBits &= ~(WinBits.DataUnacknowledged << ((dir ^ 1) << 3));
  const privateBits = table.tcpFlags(id);
  let lastWinLen = w[base + TcpWindowWord.LastWinLen]!;
  const lastEnd = table.tcpLastEnd(id);
  if (
    (privateBits & Private.LastDirReply ? Dir.Reply : Dir.Original) === dir &&
    lastEnd === end &&
    ((lastEnd - (lastWinLen & 0xffff)) | 0) === seq &&
    table.tcpLastAck(id) === ack &&
    lastWinLen >>> 16 === win
  ) {
    newBits = (newBits & ~(0xff << WinBits.RetransShift)) | ((((newBits >>> WinBits.RetransShift) + 1) & 0xff) << WinBits.RetransShift);
  } else {
    table.setTcpLast(id, end, ack);
    lastWinLen = (win << 16) | ((end - seq) & 0xffff);
    w[base + TcpWindowWord.LastWinLen] = lastWinLen;
    newBits &= ~(0xff << WinBits.RetransShift);
  }
  if (newBits !== bits) w[base + TcpWindowWord.Bits] = newBits;

  // tcpAccept (the state stays ESTABLISHED)
  const lastBits = withLast(privateBits, Index.Ack, dir);
  if (lastBits !== privateBits) table.setTcpFlags(id, lastBits);
  const timeouts = table.timeouts;
  const established = timeouts.tcpEstablished;
  let timeout = established;
  if (newBits >>> WinBits.RetransShift >= Limit.MaxRetrans && established > timeouts.tcpRetrans) timeout = timeouts.tcpRetrans;
  else if (newBits & (WinBits.DataUnacknowledged | (WinBits.DataUnacknowledged << 8)) && established > timeouts.tcpUnack) timeout = timeouts.tcpUnack;
  else if (lastWinLen >>> 16 === 0 && established > timeouts.tcpRetrans) timeout = timeouts.tcpRetrans;
  const status = table.status(id);
  if ((status & Status.SeenReply) === 0) {
    if (timeout > timeouts.tcpUnack) timeout = timeouts.tcpUnack;
  } else if ((status & Status.Assured) === 0) {
    table.setStatus(id, Status.Assured);
  }
  table.refreshNow(id, timeout);
  return true;
}

/** tcp_can_early_drop: the connection is closing. */
function isClosing(state: number): boolean {
  return state >= sFW && state <= sCL;
}

/**
 * Ignored packets (Linux "a) SYN in ORIGINAL, b) SYN/ACK in REPLY, c) ACK in reply direction
 * after initial SYN in original"): the entry may be out of sync with the endpoints, so the packet
 * passes without a state change and is remembered. A SYN/ACK that acknowledges the SYN ignored
 * just before re-synchronises the entry from that SYN (returns RESYNC).
 */
function tcpIgnore(table: ConntrackTable, id: number, dir: number, index: number, flags: number, oldState: number, b: Uint8Array, l4: number, l4Length: number): number {
  let bits = table.tcpFlags(id);
  const w = table.tcpWindow;
  const base = id * TcpWindowWord.Words;
  const lastIndex = bits & Private.LastIndexMask;
  const lastDir = bits & Private.LastDirReply ? Dir.Reply : Dir.Original;
  const ack = tcpAckBits(b, l4);
  if (index === Index.SynAck && lastIndex === Index.Syn && lastDir !== dir && ack === table.tcpLastEnd(id)) {
    // b) both ends are in sync, the entry is not: take the ignored SYN as the connection's start
    const s = base + (lastDir << 2);
    const lastEnd = table.tcpLastEnd(id);
    const lastWin = w[base + TcpWindowWord.LastWinLen]! >>> 16;
    if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.End);
    w[s + TcpWindowWord.End] = lastEnd;
    if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxEnd);
    w[s + TcpWindowWord.MaxEnd] = lastEnd;
    if (table.undoLog.recording) table.journalWindowWord(s + TcpWindowWord.MaxWin);
    w[s + TcpWindowWord.MaxWin] = lastWin === 0 ? 1 : lastWin;
    const windowBits = w[base + TcpWindowWord.Bits]!;
    const lastFlags =
      ((windowBits >>> WinBits.LastWscaleShift) & WinBits.ScaleMask) |
      (windowBits & WinBits.LastWindowScale ? F_WINDOW_SCALE : 0) |
      (windowBits & WinBits.LastSackPerm ? F_SACK_PERM : 0);
    const shift = lastDir << 3;
    if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.Bits);
    w[base + TcpWindowWord.Bits] = (windowBits & ~((0xff << shift) | (WinBits.MaxackSet << lastDir))) | (lastFlags << shift);
    table.setTcpFlags(id, bits & ~(Private.ExpChallengeAck | closeInitBit(lastDir)));
    resetDirection(table, id, dir);
    return RESYNC;
  }
  bits = withLast(bits, index, dir);
  const seq = tcpSeqBits(b, l4);
  const end = segmentEnd(seq, flags, b, l4, l4Length);
  table.setTcpLastEnd(id, end);
  if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.LastWinLen);
  w[base + TcpWindowWord.LastWinLen] = (tcpWindow(b, l4) << 16) | ((end - seq) & 0xffff);
  if (index === Index.Syn && dir === Dir.Original) {
    // a) annotate the SYN's options; the answer (SYN/ACK, or an RFC 5961 challenge ACK) tells
    bits &= ~(Private.SimultaneousOpen | Private.ExpChallengeAck);
    let windowBits = w[base + TcpWindowWord.Bits]! & ~((WinBits.ScaleMask << WinBits.LastWscaleShift) | WinBits.LastWindowScale | WinBits.LastSackPerm);
    const options = tcpSynOptions(b, l4);
    if (options > 0) {
      if (options & TCP_OPTION_WINDOW_SCALE) windowBits |= WinBits.LastWindowScale | ((options & WinBits.ScaleMask) << WinBits.LastWscaleShift);
      if (options & TCP_OPTION_SACK_PERM) windowBits |= WinBits.LastSackPerm;
    }
    if (table.undoLog.recording) table.journalWindowWord(base + TcpWindowWord.Bits);
    w[base + TcpWindowWord.Bits] = windowBits;
    // RFC 5961: the peer may answer a SYN in LAST_ACK with a challenge ACK.
    if (oldState === sLA) bits |= Private.ExpChallengeAck;
  }
  // c) a possible challenge ACK answering the SYN
  if (oldState === sSS && index === Index.Ack && dir === Dir.Reply) table.setTcpLastAck(id, ack);
  table.setTcpFlags(id, bits);
  table.counters.ignore++;
  return TcpVerdict.Ignore;
}

/**
 * nf_tcp_handle_invalid: an ASSURED connection whose FIN or RST was out of window in one
 * direction after a FIN or RST the other way gets at most the UNACK timeout (its ends and
 * conntrack disagree; let it go sooner); otherwise the segment is remembered as the last one.
 */
function handleInvalid(table: ConntrackTable, id: number, dir: number, index: number): void {
  const status = table.status(id);
  if ((status & Status.Assured) === 0 || (status & Status.FixedTimeout) !== 0) return;
  if (index !== Index.Rst && index !== Index.Fin) return;
  const bits = table.tcpFlags(id);
  const lastIndex = bits & Private.LastIndexMask;
  const lastDir = bits & Private.LastDirReply ? Dir.Reply : Dir.Original;
  if (lastDir !== dir && (lastIndex === Index.Fin || lastIndex === Index.Rst)) {
    const remaining = table.expiresAt(id) - table.now();
    if (remaining < 120) return;
    if (remaining > table.timeouts.tcpUnack) table.refreshNow(id, table.timeouts.tcpUnack);
  } else {
    table.setTcpFlags(id, withLast(bits, index, dir));
  }
}

/**
 * nf_conntrack_tcp_packet for one segment of connection `id` travelling in `dir`, read from the
 * packet (`info.buf` at `info.l4Offset`). A new entry has been through `tcpNew` and is in state
 * NONE. Flags must already be valid (tcpFlagsValid). Returns a TcpVerdict; the caller sets
 * SEEN_REPLY after an accepted reply-direction packet, as nf_conntrack_in does.
 */
export function tcpPacket(table: ConntrackTable, id: number, dir: number, info: PacketInfo): number {
  return tcpSegment(table, id, dir, info.tcpFlags, info.buf, info.l4Offset, info.l4Length);
}

/** `tcpPacket` for a segment whose TCP header is at `b[l4]`, `l4Length` bytes of TCP header and payload. */
export function tcpSegment(table: ConntrackTable, id: number, dir: number, flags: number, b: Uint8Array, l4: number, l4Length: number): number {
  const storedState = table.tcpState(id);
  let oldState = storedState;
  const index = tcpFlagIndex(flags);
  let newState = tcpNextState(dir, index, oldState);
  let bits = table.tcpFlags(id);
  const lastIndex = bits & Private.LastIndexMask;
  const lastDir = bits & Private.LastDirReply ? Dir.Reply : Dir.Original;
  let checkWindow = true;

  switch (newState) {
    case sSS:
    case TCP_STATE_IGNORE: {
      if (newState === sSS) {
        if (oldState < sTW) break;
        // RFC 1122 4.2.2.13: a SYN may reopen a connection from TIME-WAIT; also aborted connections.
        if (bits & (Private.CloseInitOriginal | Private.CloseInitReply) || (lastDir === dir && lastIndex === Index.Rst)) {
          return TcpVerdict.Reopen;
        }
        // a SYN that may not reopen is ignored
      }
      const ignored = tcpIgnore(table, id, dir, index, flags, oldState, b, l4, l4Length);
      if (ignored !== RESYNC) return ignored;
      oldState = sSS;
      newState = sSR;
      bits = table.tcpFlags(id);
      break;
    }
    case TCP_STATE_INVALID:
      table.counters.tcpInvalidState++;
      return TcpVerdict.Invalid;
    case sTW:
      if (
        oldState === sLA &&
        index === Index.Ack &&
        lastDir !== dir &&
        lastIndex === Index.Syn &&
        bits & Private.ExpChallengeAck
      ) {
        // Detected RFC 5961 challenge ACK: it does not acknowledge the last FIN.
        table.setTcpFlags(id, bits & ~Private.ExpChallengeAck);
        table.counters.ignore++;
        return TcpVerdict.Ignore;
      }
      break;
    case sS2:
      // the table cannot express simultaneous open by itself
      bits |= Private.SimultaneousOpen;
      table.setTcpFlags(id, bits);
      break;
    case sSR:
      if (dir === Dir.Reply && index === Index.Ack && bits & Private.SimultaneousOpen) newState = sES;
      break;
    case sCL: {
      if (index !== Index.Rst) break;
      // closing: the tuple may have been reused already, the window data is stale
      if (isClosing(oldState)) {
        checkWindow = false;
        break;
      }
      const w = table.tcpWindow;
      const base = id * TcpWindowWord.Words;
      const other = dir ^ 1;
      const seq = tcpSeqBits(b, l4);
      const status = table.status(id);
      // In this block `break rst` goes on to the checks after it; a plain `break` leaves the
      // switch for the window check, as Linux's `break` in its case TCP_CONNTRACK_CLOSE.
      rst: {
        // td_maxack might be outdated if a SYN was let through
        if ((w[base + TcpWindowWord.Bits]! & (WinBits.MaxackSet << other)) === 0 || lastIndex === Index.Syn) break rst;
        const established = oldState === sES && (status & Status.Assured) !== 0;
        // not established and seq 0: most likely the answer to a SYN let through above
        if (seq === 0 && !established) break;
        const maxack = w[base + (other << 2) + TcpWindowWord.MaxAck]!;
        if (before(seq, maxack)) {
          // "invalid rst" (nf_conntrack_tcp_ignore_invalid_rst = 0)
          table.counters.tcpRstOutOfWindow++;
          return TcpVerdict.Invalid;
        }
        if (!established || seq === maxack) break;
        // an RST ending a train: P seq..end, then R at end
        if (lastIndex === Index.Ack && lastDir === dir && seq === table.tcpLastEnd(id)) break;
        // the RST does not match exactly: keep ESTABLISHED, room for a challenge ACK
        newState = oldState;
      }
      const ack = tcpAckBits(b, l4);
      if (
        (((status & Status.SeenReply) !== 0 && lastIndex === Index.Syn) ||
          ((status & Status.Assured) === 0 && lastIndex === Index.Ack)) &&
        ack === table.tcpLastEnd(id)
      ) {
        // RST answering an invalid SYN or ACK let through at a) or c): no window check
        checkWindow = false;
      } else if (
        oldState === sSS &&
        lastIndex === Index.Ack &&
        lastDir === Dir.Reply &&
        seq === table.tcpLastAck(id)
      ) {
        // RST answering a challenge ACK let through
        checkWindow = false;
      }
      break;
    }
    default:
      break;
  }

  if (checkWindow) {
    const verdict = tcpInWindow(table, id, dir, index, flags, storedState, b, l4, l4Length);
    if (verdict === WINDOW_IGNORE) {
      table.counters.tcpWindowIgnore++;
      return TcpVerdict.Ignore;
    }
    if (verdict === WINDOW_INVALID) {
      table.counters.tcpOutOfWindow++;
      handleInvalid(table, id, dir, index);
      return TcpVerdict.Invalid;
    }
  }

  return tcpAccept(table, id, dir, index, flags, oldState, newState);
}

/**
 * nf_conntrack_tcp_packet from its `in_window:` label: the segment is accepted. The last segment
 * is remembered, the new state set (CLOSE_INIT on entering FIN_WAIT), and the timeout chosen:
 * RETRANS after tcp_max_retrans retransmissions, CLOSE for an RST, UNACK while data is
 * unacknowledged, RETRANS for a zero window, else the state's; then ASSURED, or the kill of an
 * entry whose only answer was an RST.
 */
function tcpAccept(table: ConntrackTable, id: number, dir: number, index: number, flags: number, oldState: number, newState: number): number {
  let bits = withLast(table.tcpFlags(id), index, dir);
  if (oldState !== newState && newState === sFW) bits |= closeInitBit(dir);
  table.setTcpFlags(id, bits);
  table.setTcpState(id, newState);

  const timeouts = table.timeouts;
  const stateTimeout = tcpStateTimeout(table, newState);
  const windowBits = table.tcpWindow[id * TcpWindowWord.Words + TcpWindowWord.Bits]!;
  let timeout: number;
  if (windowBits >>> WinBits.RetransShift >= Limit.MaxRetrans && stateTimeout > timeouts.tcpRetrans) timeout = timeouts.tcpRetrans;
  else if (index === Index.Rst) timeout = timeouts.tcpClose;
  else if (windowBits & (WinBits.DataUnacknowledged | (WinBits.DataUnacknowledged << 8)) && stateTimeout > timeouts.tcpUnack) timeout = timeouts.tcpUnack;
  else if (table.tcpWindow[id * TcpWindowWord.Words + TcpWindowWord.LastWinLen]! >>> 16 === 0 && stateTimeout > timeouts.tcpRetrans) timeout = timeouts.tcpRetrans;
  else timeout = stateTimeout;

  const status = table.status(id);
  if ((status & Status.SeenReply) === 0) {
    // "If only reply is a RST, we can consider ourselves not to have an established connection"
    if (flags & TCP_RST) {
      table.kill(id);
      return TcpVerdict.Accept;
    }
    // do not renew the timeout on a SYN retransmit (port reuse could keep the entry alive forever)
    if (index === Index.Syn && oldState === sSS) return TcpVerdict.Accept;
    // ESTABLISHED without SEEN_REPLY (mid-stream pickup): avoid the large ESTABLISHED timeout
    if (newState === sES && timeout > timeouts.tcpUnack) timeout = timeouts.tcpUnack;
  } else if (
    (status & Status.Assured) === 0 &&
    (oldState === sSR || oldState === sES) &&
    newState === sES
  ) {
    table.setStatus(id, Status.Assured);
  }
  // At the table's time (`now()`, pinned once per batch): no double crosses a call.
  table.refreshNow(id, timeout);
  return TcpVerdict.Accept;
}

/** One direction's window data (Linux `struct ip_ct_tcp_state`), for the control plane and tests. */
export interface TcpWindowState {
  /** td_end: highest seq + len seen from this side (uint32) */
  end: number;
  /** td_maxend: highest ack + window the other side allowed this side (uint32) */
  maxend: number;
  /** td_maxwin: largest (scaled) window this side announced */
  maxwin: number;
  /** td_maxack: highest ack this side sent (valid when maxackSet) */
  maxack: number;
  /** td_scale */
  scale: number;
  windowScale: boolean;
  sackPermitted: boolean;
  beLiberal: boolean;
  dataUnacknowledged: boolean;
  maxackSet: boolean;
  closeInit: boolean;
}

/** The window data of direction `dir` of TCP entry `id` (allocates: not for the per-packet path). */
export function tcpWindowState(table: ConntrackTable, id: number, dir: number): TcpWindowState {
  const w = table.tcpWindow;
  const base = id * TcpWindowWord.Words;
  const s = base + (dir << 2);
  const bits = w[base + TcpWindowWord.Bits]!;
  const byte = (bits >>> (dir << 3)) & 0xff;
  return {
    end: w[s + TcpWindowWord.End]! >>> 0,
    maxend: w[s + TcpWindowWord.MaxEnd]! >>> 0,
    maxwin: w[s + TcpWindowWord.MaxWin]! >>> 0,
    maxack: w[s + TcpWindowWord.MaxAck]! >>> 0,
    scale: byte & WinBits.ScaleMask,
    windowScale: (byte & F_WINDOW_SCALE) !== 0,
    sackPermitted: (byte & F_SACK_PERM) !== 0,
    beLiberal: (byte & WinBits.BeLiberal) !== 0,
    dataUnacknowledged: (byte & WinBits.DataUnacknowledged) !== 0,
    maxackSet: (bits & (WinBits.MaxackSet << dir)) !== 0,
    closeInit: (table.tcpFlags(id) & closeInitBit(dir)) !== 0,
  };
}

/** Linux ip_ct_tcp.retrans: how many times in a row the last ACK segment was seen again. */
export function tcpRetransCount(table: ConntrackTable, id: number): number {
  return table.tcpWindow[id * TcpWindowWord.Words + TcpWindowWord.Bits]! >>> WinBits.RetransShift;
}
