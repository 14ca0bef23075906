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
 * td_scale and the flags WINDOW_SCALE, SACK_PERM, BE_LIBERAL, DATA_UNACKNOWLEDGED, MAXACK_SET
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
import {
  CtStatus,
  TCP_WINDOW_WORDS,
  TCP_WIN_BITS,
  TCP_WIN_END,
  TCP_WIN_LAST_WIN_LEN,
  TCP_WIN_MAXACK,
  TCP_WIN_MAXEND,
  TCP_WIN_MAXWIN,
  type ConntrackTable,
} from "./table.js";

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
// Plain constants for the per-packet code: TcpState and CtStatus are (non-const) enums and
// TcpFlagIndex an object, whose properties optimized code would load on every use.
const I_SYN = 0;
const I_SYNACK = 1;
const I_FIN = 2;
const I_ACK = 3;
const I_RST = 4;
const I_NONE = 5;
const DIR_ORIGINAL = 0;
const DIR_REPLY = 1;
const STATUS_SEEN_REPLY = CtStatus.SeenReply;
const STATUS_ASSURED = CtStatus.Assured;
const STATUS_FIXED_TIMEOUT = CtStatus.FixedTimeout;

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
  if (flags & TCP_RST) return I_RST;
  if (flags & TCP_SYN) return flags & TCP_ACK ? I_SYNACK : I_SYN;
  if (flags & TCP_FIN) return I_FIN;
  if (flags & TCP_ACK) return I_ACK;
  return I_NONE;
}

/** tcp_new(): may a segment with these (valid) flags create a connection? (loose = 1) */
export function tcpMayCreate(flags: number): boolean {
  return tcpNextState(DIR_ORIGINAL, tcpFlagIndex(flags), sNO) < TCP_STATE_INVALID;
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
  return dir === DIR_ORIGINAL ? CLOSE_INIT_ORIGINAL : CLOSE_INIT_REPLY;
}

function withLast(bits: number, index: number, dir: number): number {
  return (bits & ~(LAST_INDEX_MASK | LAST_DIR_REPLY)) | index | (dir === DIR_REPLY ? LAST_DIR_REPLY : 0);
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

// The small fields of the window state (word TCP_WIN_BITS of table.tcpWindow). Per direction d a
// byte at d * 8: td_scale (bits 0-3) and the flags below (the option bits of wire/tcp.ts
// tcpSynOptions line up with them). Linux IP_CT_TCP_FLAG_* in include/uapi/linux/netfilter/nf_conntrack_tcp.h.
const SCALE_MASK = 0x0f;
const F_WINDOW_SCALE = TCP_OPTION_WINDOW_SCALE;
const F_SACK_PERM = TCP_OPTION_SACK_PERM;
const F_BE_LIBERAL = 0x40;
const F_DATA_UNACKNOWLEDGED = 0x80;
/** IP_CT_TCP_FLAG_MAXACK_SET of direction d: bit 16 + d. */
const MAXACK_SET = 1 << 16;
/** last_wscale (bits 18-21) and last_flags' WINDOW_SCALE / SACK_PERM (the ignored SYN's options). */
const LAST_WSCALE_SHIFT = 18;
const LAST_WINDOW_SCALE = 1 << 22;
const LAST_SACK_PERM = 1 << 23;
/** retrans (bits 24-31): a u8 as in Linux, so it wraps as Linux's does. */
const RETRANS_SHIFT = 24;
/** Linux nf_conntrack_tcp_max_retrans. */
export const TCP_MAX_RETRANS = 3;
/** MAXACKWINCONST. */
const MAX_ACK_WINDOW_CONST = 66000;

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
 * become what they announce (BE_LIBERAL kept; MAXACK_SET, DATA_UNACKNOWLEDGED and CLOSE_INIT
 * cleared); without option bytes nothing changes.
 */
function applyOptions(table: ConntrackTable, id: number, d: number, b: Uint8Array, l4: number): void {
  const options = tcpSynOptions(b, l4);
  if (options < 0) return;
  const at = id * TCP_WINDOW_WORDS + TCP_WIN_BITS;
  const shift = d << 3;
  const bits = table.tcpWindow[at]!;
  const kept = ((bits >>> shift) & F_BE_LIBERAL) | options;
  if (table.undoLog.recording) table.journalWindowWord(at);
  table.tcpWindow[at] = (bits & ~((0xff << shift) | (MAXACK_SET << d))) | (kept << shift);
  table.setTcpFlags(id, table.tcpFlags(id) & ~closeInitBit(d));
}

/** tcp_init_sender: a SYN or SYN/ACK (re)initialises its direction's window from the segment. */
function initSender(table: ConntrackTable, id: number, dir: number, end: number, win: number, b: Uint8Array, l4: number): void {
  const w = table.tcpWindow;
  const s = id * TCP_WINDOW_WORDS + (dir << 2);
  if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_END);
  w[s + TCP_WIN_END] = end;
  if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXEND);
  w[s + TCP_WIN_MAXEND] = end;
  if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXWIN);
  w[s + TCP_WIN_MAXWIN] = win === 0 ? 1 : win;
  applyOptions(table, id, dir, b, l4);
  // RFC 7323 1.3: both sides must send the Window Scale option to enable scaling in either direction.
  const at = id * TCP_WINDOW_WORDS + TCP_WIN_BITS;
  const bits = w[at]!;
  if (dir === DIR_REPLY && !(bits & F_WINDOW_SCALE && bits & (F_WINDOW_SCALE << 8))) {
    if (table.undoLog.recording) table.journalWindowWord(at);
    w[at] = bits & ~(SCALE_MASK | (SCALE_MASK << 8));
  }
}

/** nf_ct_tcp_state_reset for direction `d`: everything but BE_LIBERAL forgotten. */
function resetDirection(table: ConntrackTable, id: number, d: number): void {
  const w = table.tcpWindow;
  const s = id * TCP_WINDOW_WORDS + (d << 2);
  if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_END);
  w[s + TCP_WIN_END] = 0;
  if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXEND);
  w[s + TCP_WIN_MAXEND] = 0;
  if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXWIN);
  w[s + TCP_WIN_MAXWIN] = 0;
  if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXACK);
  w[s + TCP_WIN_MAXACK] = 0;
  const at = id * TCP_WINDOW_WORDS + TCP_WIN_BITS;
  const shift = d << 3;
  const bits = w[at]!;
  if (table.undoLog.recording) table.journalWindowWord(at);
  w[at] = (bits & ~((0xff << shift) | (MAXACK_SET << d))) | (bits & (F_BE_LIBERAL << shift));
  table.setTcpFlags(id, table.tcpFlags(id) & ~closeInitBit(d));
}

/**
 * Both directions BE_LIBERAL, for an entry whose window state was taken elsewhere and earlier (a
 * state file up to one interval old): the segments sent since would be out of its window, so it
 * learns the window anew instead, as conntrackd's entries do (TCPWindowTracking Off, the default:
 * IP_CT_TCP_FLAG_BE_LIBERAL set on both directions of an injected entry).
 */
export function tcpSetBeLiberal(table: ConntrackTable, id: number): void {
  const at = id * TCP_WINDOW_WORDS + TCP_WIN_BITS;
  if (table.undoLog.recording) table.journalWindowWord(at);
  table.tcpWindow[at]! |= (F_BE_LIBERAL << 8) | F_BE_LIBERAL;
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
  const base = id * TCP_WINDOW_WORDS;
  table.clearTcpWindow(id);
  table.setTcpLast(id, 0, 0);
  const b = info.buf;
  const l4 = info.l4Offset;
  const flags = info.tcpFlags;
  const end = segmentEnd(tcpSeqBits(b, l4), flags, b, l4, info.l4Length);
  const win = tcpWindow(b, l4);
  const maxwin = win === 0 ? 1 : win;
  if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_END);
  w[base + TCP_WIN_END] = end;
  if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_MAXWIN);
  w[base + TCP_WIN_MAXWIN] = maxwin;
  if (tcpFlagIndex(flags) === I_SYN) {
    if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_MAXEND);
    w[base + TCP_WIN_MAXEND] = end;
    applyOptions(table, id, DIR_ORIGINAL, b, l4);
  } else {
    if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_MAXEND);
    w[base + TCP_WIN_MAXEND] = (end + maxwin) | 0;
    if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_BITS);
    w[base + TCP_WIN_BITS] = ((F_SACK_PERM | F_BE_LIBERAL) << 8) | F_SACK_PERM | F_BE_LIBERAL;
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
  const base = id * TCP_WINDOW_WORDS;
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
  if ((w[base + TCP_WIN_BITS]! >>> rShift) & F_SACK_PERM && tcpHeaderLength(b, l4) > TCP_MIN_HEADER_LENGTH) sack = tcpSackEdge(b, l4, sack);

  if (w[s + TCP_WIN_MAXWIN] === 0) {
    if (flags & TCP_SYN) {
      initSender(table, id, dir, end, win, b, l4);
      // simultaneous open
      if ((flags & TCP_ACK) === 0) return WINDOW_ACCEPT;
    } else {
      // "We are in the middle of a connection, its history is lost for us."
      if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_END);
      w[s + TCP_WIN_END] = end;
      const swin = win << ((w[base + TCP_WIN_BITS]! >>> sShift) & SCALE_MASK);
      if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXWIN);
      w[s + TCP_WIN_MAXWIN] = swin === 0 ? 1 : swin;
      if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXEND);
      w[s + TCP_WIN_MAXEND] = (end + w[s + TCP_WIN_MAXWIN]!) | 0;
      if (w[r + TCP_WIN_MAXWIN] === 0) {
        // no traffic seen the other way yet: tweak it so that bounds III and IV pass
        if (table.undoLog.recording) table.journalWindowWord(r + TCP_WIN_END);
        w[r + TCP_WIN_END] = sack;
        if (table.undoLog.recording) table.journalWindowWord(r + TCP_WIN_MAXEND);
        w[r + TCP_WIN_MAXEND] = sack;
      } else if (sack === ((w[r + TCP_WIN_END]! + 1) | 0)) {
        // likely a reply to a keepalive
        if (table.undoLog.recording) table.journalWindowWord(r + TCP_WIN_END);
        w[r + TCP_WIN_END] = sack;
      }
    }
  } else if (flags & TCP_SYN && after(end, w[s + TCP_WIN_END]!) && (state === sSS || state === sSR)) {
    // RFC 793: a reinitialised TCP uses larger sequence numbers; take the new SYN(/ACK) as the first.
    initSender(table, id, dir, end, win, b, l4);
    if (dir === DIR_REPLY && (flags & TCP_ACK) === 0) return WINDOW_ACCEPT;
  }

  if ((flags & TCP_ACK) === 0) {
    // no ACK: pretend it was set and OK
    ack = sack = w[r + TCP_WIN_END]!;
  } else if (flags & TCP_RST && ack === 0) {
    // broken stacks that send RST+ACK with a zero ack
    ack = sack = w[r + TCP_WIN_END]!;
  }
  // RST answering a SYN
  if (flags & TCP_RST && seq === 0 && state === sSS) seq = end = w[s + TCP_WIN_END]!;

  const bits = w[base + TCP_WIN_BITS]!;
  const liberal = table.tcpBeLiberal || ((bits >>> sShift) & F_BE_LIBERAL) !== 0;
  const sEnd = w[s + TCP_WIN_END]!;
  const sMaxend = w[s + TCP_WIN_MAXEND]!;
  const sMaxwin = w[s + TCP_WIN_MAXWIN]!;
  const rEnd = w[r + TCP_WIN_END]!;
  const rMaxwin = w[r + TCP_WIN_MAXWIN]!;
  const maxAckWindow = sMaxwin >>> 0 > MAX_ACK_WINDOW_CONST ? sMaxwin : MAX_ACK_WINDOW_CONST;

  // I. seq <= sender.td_maxend
  if (!before(seq, (sMaxend + 1) | 0)) {
    const overshot = (end - sMaxend + 1) >>> 0;
    const ackOk = after(sack, (rEnd - maxAckWindow - 1) | 0);
    const inReceiveWindow = rMaxwin !== 0 && after(end, (sEnd - rMaxwin - 1) | 0);
    if (inReceiveWindow && ackOk && overshot <= rMaxwin >>> 0 && before(sack, (rEnd + 1) | 0)) {
      // a TCP sending more than the receive window allows: remember the data so its ACK passes
      if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_END);
      w[s + TCP_WIN_END] = end;
      if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_BITS);
      w[base + TCP_WIN_BITS] = bits | (F_DATA_UNACKNOWLEDGED << sShift);
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
  const base = id * TCP_WINDOW_WORDS;
  const s = base + (dir << 2);
  const r = base + ((dir ^ 1) << 2);
  const sShift = dir << 3;
  const rShift = (dir ^ 1) << 3;
  const bits = w[base + TCP_WIN_BITS]!;
  const sEnd = w[s + TCP_WIN_END]!;
  const sMaxend = w[s + TCP_WIN_MAXEND]!;
  const sMaxwin = w[s + TCP_WIN_MAXWIN]!;
  const rMaxwin = w[r + TCP_WIN_MAXWIN]!;
  let win = winRaw;
  // RFC 7323: the window of a segment other than a SYN is scaled.
  if ((flags & TCP_SYN) === 0) win = win << ((bits >>> sShift) & SCALE_MASK);
  let newBits = bits;
  // sender
  const swin = (win + (sack - ack)) | 0;
  // Here and below, a conditional store is journaled whether or not it happens: undoing an unchanged word is harmless.
  if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXWIN);
  if (sMaxwin >>> 0 < swin >>> 0) w[s + TCP_WIN_MAXWIN] = swin;
  if (after(end, sEnd)) {
    if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_END);
    w[s + TCP_WIN_END] = end;
    newBits |= F_DATA_UNACKNOWLEDGED << sShift;
  }
  if (flags & TCP_ACK) {
    if ((newBits & (MAXACK_SET << dir)) === 0) {
      if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXACK);
      w[s + TCP_WIN_MAXACK] = ack;
      newBits |= MAXACK_SET << dir;
    } else if (after(ack, w[s + TCP_WIN_MAXACK]!)) {
      if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXACK);
      w[s + TCP_WIN_MAXACK] = ack;
    }
  }
  // receiver
  if (table.undoLog.recording) table.journalWindowWord(r + TCP_WIN_MAXWIN);
  if (rMaxwin !== 0 && after(end, sMaxend)) w[r + TCP_WIN_MAXWIN] = (rMaxwin + (end - sMaxend)) | 0;
  const right = (sack + win) | 0;
  if (table.undoLog.recording) table.journalWindowWord(r + TCP_WIN_MAXEND);
  if (after(right, (w[r + TCP_WIN_MAXEND]! - 1) | 0)) w[r + TCP_WIN_MAXEND] = win === 0 ? (right + 1) | 0 : right;
  if (ack === w[r + TCP_WIN_END]) newBits &= ~(F_DATA_UNACKNOWLEDGED << rShift);

  // retransmissions: the same ACK segment again, in the same direction
  if (index === I_ACK) {
    const lastWinLen = w[base + TCP_WIN_LAST_WIN_LEN]!;
    const lastEnd = table.tcpLastEnd(id);
    const lastDir = table.tcpFlags(id) & LAST_DIR_REPLY ? DIR_REPLY : DIR_ORIGINAL;
    if (
      lastDir === dir &&
      lastEnd === end &&
      ((lastEnd - (lastWinLen & 0xffff)) | 0) === seq &&
      table.tcpLastAck(id) === ack &&
      lastWinLen >>> 16 === winRaw
    ) {
      newBits = (newBits & ~(0xff << RETRANS_SHIFT)) | ((((newBits >>> RETRANS_SHIFT) + 1) & 0xff) << RETRANS_SHIFT);
    } else {
      table.setTcpLast(id, end, ack);
      if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_LAST_WIN_LEN);
      w[base + TCP_WIN_LAST_WIN_LEN] = (winRaw << 16) | ((end - seq) & 0xffff);
      newBits &= ~(0xff << RETRANS_SHIFT);
    }
  }
  if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_BITS);
  w[base + TCP_WIN_BITS] = newBits;
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
  const base = id * TCP_WINDOW_WORDS;
  const s = base + (dir << 2);
  const r = base + ((dir ^ 1) << 2);
  const sShift = dir << 3;
  const sMaxwin = w[s + TCP_WIN_MAXWIN]!;
  if (sMaxwin === 0) return false;
  const bits = w[base + TCP_WIN_BITS]!;
  if (!plainOptions && (bits >>> ((dir ^ 1) << 3)) & F_SACK_PERM) return false;
  const end = (seq + payload) | 0;
  const sEnd = w[s + TCP_WIN_END]!;
  const sMaxend = w[s + TCP_WIN_MAXEND]!;
  const rEnd = w[r + TCP_WIN_END]!;
  const rMaxwin = w[r + TCP_WIN_MAXWIN]!;
  const maxAckWindow = sMaxwin >>> 0 > MAX_ACK_WINDOW_CONST ? sMaxwin : MAX_ACK_WINDOW_CONST;
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
  const scaled = win << ((bits >>> sShift) & SCALE_MASK);
  let newBits = bits;
  if (sMaxwin >>> 0 < scaled >>> 0) w[s + TCP_WIN_MAXWIN] = scaled;
  if (after(end, sEnd)) {
    w[s + TCP_WIN_END] = end;
    newBits |= F_DATA_UNACKNOWLEDGED << sShift;
  }
  const maxackSet = MAXACK_SET << dir;
  if ((newBits & maxackSet) === 0 || after(ack, w[s + TCP_WIN_MAXACK]!)) {
    w[s + TCP_WIN_MAXACK] = ack;
    newBits |= maxackSet;
  }
  if (rMaxwin !== 0 && after(end, sMaxend)) w[r + TCP_WIN_MAXWIN] = (rMaxwin + (end - sMaxend)) | 0;
  const right = (ack + scaled) | 0;
  if (after(right, (w[r + TCP_WIN_MAXEND]! - 1) | 0)) w[r + TCP_WIN_MAXEND] = scaled === 0 ? (right + 1) | 0 : right;
  if (ack === rEnd) newBits &= ~(F_DATA_UNACKNOWLEDGED << ((dir ^ 1) << 3));
  const privateBits = table.tcpFlags(id);
  let lastWinLen = w[base + TCP_WIN_LAST_WIN_LEN]!;
  const lastEnd = table.tcpLastEnd(id);
  if (
    (privateBits & LAST_DIR_REPLY ? DIR_REPLY : DIR_ORIGINAL) === dir &&
    lastEnd === end &&
    ((lastEnd - (lastWinLen & 0xffff)) | 0) === seq &&
    table.tcpLastAck(id) === ack &&
    lastWinLen >>> 16 === win
  ) {
    newBits = (newBits & ~(0xff << RETRANS_SHIFT)) | ((((newBits >>> RETRANS_SHIFT) + 1) & 0xff) << RETRANS_SHIFT);
  } else {
    table.setTcpLast(id, end, ack);
    lastWinLen = (win << 16) | ((end - seq) & 0xffff);
    w[base + TCP_WIN_LAST_WIN_LEN] = lastWinLen;
    newBits &= ~(0xff << RETRANS_SHIFT);
  }
  if (newBits !== bits) w[base + TCP_WIN_BITS] = newBits;

  // tcpAccept (the state stays ESTABLISHED)
  const lastBits = withLast(privateBits, I_ACK, dir);
  if (lastBits !== privateBits) table.setTcpFlags(id, lastBits);
  const timeouts = table.timeouts;
  const established = timeouts.tcpEstablished;
  let timeout = established;
  if (newBits >>> RETRANS_SHIFT >= TCP_MAX_RETRANS && established > timeouts.tcpRetrans) timeout = timeouts.tcpRetrans;
  else if (newBits & (F_DATA_UNACKNOWLEDGED | (F_DATA_UNACKNOWLEDGED << 8)) && established > timeouts.tcpUnack) timeout = timeouts.tcpUnack;
  else if (lastWinLen >>> 16 === 0 && established > timeouts.tcpRetrans) timeout = timeouts.tcpRetrans;
  const status = table.status(id);
  if ((status & STATUS_SEEN_REPLY) === 0) {
    if (timeout > timeouts.tcpUnack) timeout = timeouts.tcpUnack;
  } else if ((status & STATUS_ASSURED) === 0) {
    table.setStatus(id, STATUS_ASSURED);
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
  const base = id * TCP_WINDOW_WORDS;
  const lastIndex = bits & LAST_INDEX_MASK;
  const lastDir = bits & LAST_DIR_REPLY ? DIR_REPLY : DIR_ORIGINAL;
  const ack = tcpAckBits(b, l4);
  if (index === I_SYNACK && lastIndex === I_SYN && lastDir !== dir && ack === table.tcpLastEnd(id)) {
    // b) both ends are in sync, the entry is not: take the ignored SYN as the connection's start
    const s = base + (lastDir << 2);
    const lastEnd = table.tcpLastEnd(id);
    const lastWin = w[base + TCP_WIN_LAST_WIN_LEN]! >>> 16;
    if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_END);
    w[s + TCP_WIN_END] = lastEnd;
    if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXEND);
    w[s + TCP_WIN_MAXEND] = lastEnd;
    if (table.undoLog.recording) table.journalWindowWord(s + TCP_WIN_MAXWIN);
    w[s + TCP_WIN_MAXWIN] = lastWin === 0 ? 1 : lastWin;
    const windowBits = w[base + TCP_WIN_BITS]!;
    const lastFlags =
      ((windowBits >>> LAST_WSCALE_SHIFT) & SCALE_MASK) |
      (windowBits & LAST_WINDOW_SCALE ? F_WINDOW_SCALE : 0) |
      (windowBits & LAST_SACK_PERM ? F_SACK_PERM : 0);
    const shift = lastDir << 3;
    if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_BITS);
    w[base + TCP_WIN_BITS] = (windowBits & ~((0xff << shift) | (MAXACK_SET << lastDir))) | (lastFlags << shift);
    table.setTcpFlags(id, bits & ~(EXP_CHALLENGE_ACK | closeInitBit(lastDir)));
    resetDirection(table, id, dir);
    return RESYNC;
  }
  bits = withLast(bits, index, dir);
  const seq = tcpSeqBits(b, l4);
  const end = segmentEnd(seq, flags, b, l4, l4Length);
  table.setTcpLastEnd(id, end);
  if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_LAST_WIN_LEN);
  w[base + TCP_WIN_LAST_WIN_LEN] = (tcpWindow(b, l4) << 16) | ((end - seq) & 0xffff);
  if (index === I_SYN && dir === DIR_ORIGINAL) {
    // a) annotate the SYN's options; the answer (SYN/ACK, or an RFC 5961 challenge ACK) tells
    bits &= ~(SIMULTANEOUS_OPEN | EXP_CHALLENGE_ACK);
    let windowBits = w[base + TCP_WIN_BITS]! & ~((SCALE_MASK << LAST_WSCALE_SHIFT) | LAST_WINDOW_SCALE | LAST_SACK_PERM);
    const options = tcpSynOptions(b, l4);
    if (options > 0) {
      if (options & TCP_OPTION_WINDOW_SCALE) windowBits |= LAST_WINDOW_SCALE | ((options & SCALE_MASK) << LAST_WSCALE_SHIFT);
      if (options & TCP_OPTION_SACK_PERM) windowBits |= LAST_SACK_PERM;
    }
    if (table.undoLog.recording) table.journalWindowWord(base + TCP_WIN_BITS);
    w[base + TCP_WIN_BITS] = windowBits;
    // RFC 5961: the peer may answer a SYN in LAST_ACK with a challenge ACK.
    if (oldState === sLA) bits |= EXP_CHALLENGE_ACK;
  }
  // c) a possible challenge ACK answering the SYN
  if (oldState === sSS && index === I_ACK && dir === DIR_REPLY) table.setTcpLastAck(id, ack);
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
  if ((status & STATUS_ASSURED) === 0 || (status & STATUS_FIXED_TIMEOUT) !== 0) return;
  if (index !== I_RST && index !== I_FIN) return;
  const bits = table.tcpFlags(id);
  const lastIndex = bits & LAST_INDEX_MASK;
  const lastDir = bits & LAST_DIR_REPLY ? DIR_REPLY : DIR_ORIGINAL;
  if (lastDir !== dir && (lastIndex === I_FIN || lastIndex === I_RST)) {
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
  const lastIndex = bits & LAST_INDEX_MASK;
  const lastDir = bits & LAST_DIR_REPLY ? DIR_REPLY : DIR_ORIGINAL;
  let checkWindow = true;

  switch (newState) {
    case sSS:
    case TCP_STATE_IGNORE: {
      if (newState === sSS) {
        if (oldState < sTW) break;
        // RFC 1122 4.2.2.13: a SYN may reopen a connection from TIME-WAIT; also aborted connections.
        if (bits & (CLOSE_INIT_ORIGINAL | CLOSE_INIT_REPLY) || (lastDir === dir && lastIndex === I_RST)) {
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
        index === I_ACK &&
        lastDir !== dir &&
        lastIndex === I_SYN &&
        bits & EXP_CHALLENGE_ACK
      ) {
        // Detected RFC 5961 challenge ACK: it does not acknowledge the last FIN.
        table.setTcpFlags(id, bits & ~EXP_CHALLENGE_ACK);
        table.counters.ignore++;
        return TcpVerdict.Ignore;
      }
      break;
    case sS2:
      // the table cannot express simultaneous open by itself
      bits |= SIMULTANEOUS_OPEN;
      table.setTcpFlags(id, bits);
      break;
    case sSR:
      if (dir === DIR_REPLY && index === I_ACK && bits & SIMULTANEOUS_OPEN) newState = sES;
      break;
    case sCL: {
      if (index !== I_RST) break;
      // closing: the tuple may have been reused already, the window data is stale
      if (isClosing(oldState)) {
        checkWindow = false;
        break;
      }
      const w = table.tcpWindow;
      const base = id * TCP_WINDOW_WORDS;
      const other = dir ^ 1;
      const seq = tcpSeqBits(b, l4);
      const status = table.status(id);
      // In this block `break rst` goes on to the checks after it; a plain `break` leaves the
      // switch for the window check, as Linux's `break` in its case TCP_CONNTRACK_CLOSE.
      rst: {
        // td_maxack might be outdated if a SYN was let through
        if ((w[base + TCP_WIN_BITS]! & (MAXACK_SET << other)) === 0 || lastIndex === I_SYN) break rst;
        const established = oldState === sES && (status & STATUS_ASSURED) !== 0;
        // not established and seq 0: most likely the answer to a SYN let through above
        if (seq === 0 && !established) break;
        const maxack = w[base + (other << 2) + TCP_WIN_MAXACK]!;
        if (before(seq, maxack)) {
          // "invalid rst" (nf_conntrack_tcp_ignore_invalid_rst = 0)
          table.counters.tcpRstOutOfWindow++;
          return TcpVerdict.Invalid;
        }
        if (!established || seq === maxack) break;
        // an RST ending a train: P seq..end, then R at end
        if (lastIndex === I_ACK && lastDir === dir && seq === table.tcpLastEnd(id)) break;
        // the RST does not match exactly: keep ESTABLISHED, room for a challenge ACK
        newState = oldState;
      }
      const ack = tcpAckBits(b, l4);
      if (
        (((status & STATUS_SEEN_REPLY) !== 0 && lastIndex === I_SYN) ||
          ((status & STATUS_ASSURED) === 0 && lastIndex === I_ACK)) &&
        ack === table.tcpLastEnd(id)
      ) {
        // RST answering an invalid SYN or ACK let through at a) or c): no window check
        checkWindow = false;
      } else if (
        oldState === sSS &&
        lastIndex === I_ACK &&
        lastDir === DIR_REPLY &&
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
  const windowBits = table.tcpWindow[id * TCP_WINDOW_WORDS + TCP_WIN_BITS]!;
  let timeout: number;
  if (windowBits >>> RETRANS_SHIFT >= TCP_MAX_RETRANS && stateTimeout > timeouts.tcpRetrans) timeout = timeouts.tcpRetrans;
  else if (index === I_RST) timeout = timeouts.tcpClose;
  else if (windowBits & (F_DATA_UNACKNOWLEDGED | (F_DATA_UNACKNOWLEDGED << 8)) && stateTimeout > timeouts.tcpUnack) timeout = timeouts.tcpUnack;
  else if (table.tcpWindow[id * TCP_WINDOW_WORDS + TCP_WIN_LAST_WIN_LEN]! >>> 16 === 0 && stateTimeout > timeouts.tcpRetrans) timeout = timeouts.tcpRetrans;
  else timeout = stateTimeout;

  const status = table.status(id);
  if ((status & STATUS_SEEN_REPLY) === 0) {
    // "If only reply is a RST, we can consider ourselves not to have an established connection"
    if (flags & TCP_RST) {
      table.kill(id);
      return TcpVerdict.Accept;
    }
    // do not renew the timeout on a SYN retransmit (port reuse could keep the entry alive forever)
    if (index === I_SYN && oldState === sSS) return TcpVerdict.Accept;
    // ESTABLISHED without SEEN_REPLY (mid-stream pickup): avoid the large ESTABLISHED timeout
    if (newState === sES && timeout > timeouts.tcpUnack) timeout = timeouts.tcpUnack;
  } else if (
    (status & STATUS_ASSURED) === 0 &&
    (oldState === sSR || oldState === sES) &&
    newState === sES
  ) {
    table.setStatus(id, STATUS_ASSURED);
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
  const base = id * TCP_WINDOW_WORDS;
  const s = base + (dir << 2);
  const bits = w[base + TCP_WIN_BITS]!;
  const byte = (bits >>> (dir << 3)) & 0xff;
  return {
    end: w[s + TCP_WIN_END]! >>> 0,
    maxend: w[s + TCP_WIN_MAXEND]! >>> 0,
    maxwin: w[s + TCP_WIN_MAXWIN]! >>> 0,
    maxack: w[s + TCP_WIN_MAXACK]! >>> 0,
    scale: byte & SCALE_MASK,
    windowScale: (byte & F_WINDOW_SCALE) !== 0,
    sackPermitted: (byte & F_SACK_PERM) !== 0,
    beLiberal: (byte & F_BE_LIBERAL) !== 0,
    dataUnacknowledged: (byte & F_DATA_UNACKNOWLEDGED) !== 0,
    maxackSet: (bits & (MAXACK_SET << dir)) !== 0,
    closeInit: (table.tcpFlags(id) & closeInitBit(dir)) !== 0,
  };
}

/** Linux ip_ct_tcp.retrans: how many times in a row the last ACK segment was seen again. */
export function tcpRetransCount(table: ConntrackTable, id: number): number {
  return table.tcpWindow[id * TCP_WINDOW_WORDS + TCP_WIN_BITS]! >>> RETRANS_SHIFT;
}
