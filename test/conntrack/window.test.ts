/**
 * TCP window tracking, with Linux's tcp_in_window / nf_conntrack_tcp_packet
 * (net/netfilter/nf_conntrack_proto_tcp.c, 6.x) as the oracle: every expected number below is
 * what Linux computes for the same segments.
 */
import { describe, expect, it } from "vitest";
import { ManualClock } from "../../src/core/clock.js";
import { ConntrackTable, CtState, CtStatus } from "../../src/conntrack/table.js";
import type { ConntrackTimeouts } from "../../src/conntrack/timeouts.js";
import { TcpState, tcpRetransCount, tcpWindowState } from "../../src/conntrack/tcp.js";
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN } from "../../src/wire/packet-info.js";
import { TCP_OPTION_SACK_PERM, TCP_OPTION_WINDOW_SCALE, tcpSackEdge, tcpSynOptions } from "../../src/wire/tcp.js";
import { ACK, RST, SYN, SYNACK, VM, WEB, send, tcp, ttl } from "./packets.js";

const PSHACK = TCP_PSH | TCP_ACK;

/** MSS 1460, SACK permitted, NOP, window scale 7: what Linux puts in a SYN. */
const SYN_OPTIONS = [2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7];

function newTable(options: { beLiberal?: boolean; timeouts?: Partial<ConntrackTimeouts> } = {}) {
  const clock = new ManualClock();
  const table = new ConntrackTable({ capacity: 64, clock, seed: 7, tcpBeLiberal: options.beLiberal, timeouts: options.timeouts });
  return { table, clock };
}

/**
 * 10.0.0.3 opens a connection to 9.186.100.1:80 with window scaling on both sides:
 *   SYN     seq 1000            win 64240  wscale 7
 *   SYN/ACK seq 5000 ack 1001   win 65160  wscale 7
 *   ACK     seq 1001 ack 5001   win 502 (x128 = 64256)
 */
function scaledHandshake(table: ConntrackTable): number {
  const syn = send(table, tcp(VM, WEB, SYN, { seq: 1000, win: 64240, options: SYN_OPTIONS }));
  send(table, tcp(WEB, VM, SYNACK, { seq: 5000, ack: 1001, win: 65160, options: SYN_OPTIONS }));
  send(table, tcp(VM, WEB, ACK, { seq: 1001, ack: 5001, win: 502 }));
  return syn.id;
}

/** The handshake, then 1000 bytes from 10.0.0.3 that 9.186.100.1 acknowledges. */
function afterOneRequest(table: ConntrackTable): number {
  const id = scaledHandshake(table);
  send(table, tcp(VM, WEB, PSHACK, { seq: 1001, ack: 5001, win: 502, len: 1000 }));
  send(table, tcp(WEB, VM, ACK, { seq: 5001, ack: 2001, win: 509 }));
  return id;
}

function snapshot(table: ConntrackTable, id: number) {
  return {
    state: table.tcpState(id),
    status: table.status(id),
    expires: table.expiresAt(id),
    original: tcpWindowState(table, id, 0),
    reply: tcpWindowState(table, id, 1),
  };
}

describe("TCP options (tcp_options, tcp_sack)", () => {
  it("reads window scale and SACK-permitted from a SYN, capping the shift at 14 (RFC 7323)", () => {
    const b = tcp(VM, WEB, SYN, { options: SYN_OPTIONS }).buf;
    expect(tcpSynOptions(b, 20)).toBe(TCP_OPTION_WINDOW_SCALE | TCP_OPTION_SACK_PERM | 7);
    expect(tcpSynOptions(tcp(VM, WEB, SYN, { options: [3, 3, 15] }).buf, 20)).toBe(TCP_OPTION_WINDOW_SCALE | 14);
    expect(tcpSynOptions(tcp(VM, WEB, SYN).buf, 20)).toBe(-1);
    // a "silly" option length ends the walk: the window scale after it is not read
    expect(tcpSynOptions(tcp(VM, WEB, SYN, { options: [4, 2, 8, 0, 3, 3, 7] }).buf, 20)).toBe(TCP_OPTION_SACK_PERM);
  });

  it("takes the highest right edge of the SACK blocks, and skips a timestamp-only block", () => {
    const sack = [1, 1, 5, 18, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0, 0, 0x30, 0, 0, 0, 0x38, 0];
    expect(tcpSackEdge(tcp(WEB, VM, ACK, { options: sack }).buf, 20, 0x1000)).toBe(0x3800);
    const timestamps = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    expect(tcpSackEdge(tcp(WEB, VM, ACK, { options: timestamps }).buf, 20, 0x1000)).toBe(0x1000);
  });
});

describe("TCP window tracking: a connection with window scaling (tcp_in_window)", () => {
  it("the handshake records both sides' windows, scale 7 each, as Linux", () => {
    const { table } = newTable();
    const id = scaledHandshake(table);
    expect(table.tcpState(id)).toBe(TcpState.Established);
    expect(tcpWindowState(table, id, 0)).toMatchObject({
      end: 1001,
      maxend: 1001 + 65160, // the SYN/ACK's ack + its (unscaled) window
      maxwin: 502 << 7, // the final ACK's window, scaled, is larger than the SYN's 64240
      maxack: 5001,
      scale: 7,
      windowScale: true,
      sackPermitted: true,
      dataUnacknowledged: false,
    });
    expect(tcpWindowState(table, id, 1)).toMatchObject({ end: 5001, maxend: 5001 + (502 << 7), maxwin: 65160, maxack: 1001, scale: 7 });
    expect(ttl(table, id)).toBe(432_000);
  });

  it("without a window scale option from 9.186.100.1, neither side is scaled (RFC 7323 1.3)", () => {
    const { table } = newTable();
    const syn = send(table, tcp(VM, WEB, SYN, { seq: 1000, win: 64240, options: SYN_OPTIONS }));
    send(table, tcp(WEB, VM, SYNACK, { seq: 5000, ack: 1001, win: 65160, options: [2, 4, 0x05, 0xb4] }));
    expect(tcpWindowState(table, syn.id, 0)).toMatchObject({ scale: 0, windowScale: true });
    expect(tcpWindowState(table, syn.id, 1)).toMatchObject({ scale: 0, windowScale: false });
  });

  it("data in the window passes; unacknowledged it caps the timeout at 300 s (UNACK), acknowledged it does not", () => {
    const { table } = newTable();
    const id = scaledHandshake(table);
    const data = send(table, tcp(VM, WEB, PSHACK, { seq: 1001, ack: 5001, win: 502, len: 1000 }));
    expect(data).toMatchObject({ id, state: CtState.Established });
    expect(tcpWindowState(table, id, 0)).toMatchObject({ end: 2001, dataUnacknowledged: true });
    expect(ttl(table, id)).toBe(300);
    send(table, tcp(WEB, VM, ACK, { seq: 5001, ack: 2001, win: 509 }));
    expect(tcpWindowState(table, id, 0)).toMatchObject({ dataUnacknowledged: false, maxend: 2001 + (509 << 7) });
    expect(ttl(table, id)).toBe(432_000);
  });

  it("the UNACK timeout is its own setting (timeouts.tcpUnack)", () => {
    const { table } = newTable({ timeouts: { tcpUnack: 250 } });
    const id = scaledHandshake(table);
    send(table, tcp(VM, WEB, PSHACK, { seq: 1001, ack: 5001, win: 502, len: 1000 }));
    expect(ttl(table, id)).toBe(250);
  });

  it("data starting beyond td_maxend by more than the receiver's window is INVALID and changes nothing", () => {
    const { table, clock } = newTable();
    const id = afterOneRequest(table);
    clock.advance(10);
    const before = snapshot(table, id);
    const far = send(table, tcp(VM, WEB, PSHACK, { seq: 1001 + 200_000, ack: 5001, win: 502, len: 100 }));
    expect(far).toMatchObject({ id: -1, state: CtState.Invalid });
    expect(snapshot(table, id)).toEqual(before);
    expect(table.counters.tcpOutOfWindow).toBe(1);
    expect(table.counters.invalid).toBe(1);
  });

  it("data overshooting the window by less than a window is ignored (passes) and its end remembered", () => {
    const { table } = newTable();
    const id = afterOneRequest(table);
    const maxend = tcpWindowState(table, id, 0).maxend;
    const expires = table.expiresAt(id);
    const over = send(table, tcp(VM, WEB, PSHACK, { seq: maxend + 1, ack: 5001, win: 502, len: 100 }));
    expect(over).toMatchObject({ id, state: CtState.Established });
    expect(tcpWindowState(table, id, 0)).toMatchObject({ end: maxend + 101, dataUnacknowledged: true });
    expect(table.expiresAt(id)).toBe(expires);
    expect(table.counters.tcpWindowIgnore).toBe(1);
  });

  it("an old duplicate segment (below td_end - the receiver's window) is ignored: passes, no refresh", () => {
    const { table, clock } = newTable();
    const id = afterOneRequest(table);
    clock.advance(100);
    const before = snapshot(table, id);
    const old = send(table, tcp(VM, WEB, PSHACK, { seq: (2001 - 100_000) >>> 0, ack: 5001, win: 502, len: 10 }));
    expect(old).toMatchObject({ id, state: CtState.Established });
    expect(snapshot(table, id)).toEqual(before);
    expect(table.counters.tcpWindowIgnore).toBe(1);
    expect(table.counters.invalid).toBe(0);
  });

  it("an ACK of data 9.186.100.1 never sent is INVALID; an overly delayed ACK is ignored", () => {
    const { table } = newTable();
    const id = afterOneRequest(table);
    expect(send(table, tcp(VM, WEB, ACK, { seq: 2001, ack: 5001 + 10, win: 502 })).state).toBe(CtState.Invalid);
    expect(table.counters.tcpOutOfWindow).toBe(1);
    expect(send(table, tcp(VM, WEB, ACK, { seq: 2001, ack: 5001 - 70_000, win: 502 }))).toMatchObject({ id, state: CtState.Established });
    expect(table.counters.tcpWindowIgnore).toBe(1);
  });

  it("sequence numbers wrap at 2^32: data across the wrap passes, its ACK too, an ACK beyond it is INVALID", () => {
    const { table } = newTable();
    const isn = 0xffffff00;
    const syn = send(table, tcp(VM, WEB, SYN, { seq: isn }));
    send(table, tcp(WEB, VM, SYNACK, { seq: 7, ack: isn + 1 }));
    send(table, tcp(VM, WEB, ACK, { seq: isn + 1, ack: 8 }));
    const data = send(table, tcp(VM, WEB, PSHACK, { seq: isn + 1, ack: 8, len: 0x200 }));
    expect(data.state).toBe(CtState.Established);
    expect(tcpWindowState(table, syn.id, 0).end).toBe(0x101);
    expect(send(table, tcp(WEB, VM, ACK, { seq: 8, ack: 0x101 })).state).toBe(CtState.Established);
    expect(tcpWindowState(table, syn.id, 0).dataUnacknowledged).toBe(false);
    expect(send(table, tcp(WEB, VM, ACK, { seq: 8, ack: 0x102 })).state).toBe(CtState.Invalid);
  });
});

describe("TCP window tracking: RST checks (nf_conntrack_tcp_packet, case TCP_CONNTRACK_CLOSE)", () => {
  it("an RST at exactly the sequence 10.0.0.3 acknowledged closes the connection (CLOSE, 10 s)", () => {
    const { table } = newTable();
    const id = afterOneRequest(table);
    expect(send(table, tcp(WEB, VM, RST, { seq: 5001 })).state).toBe(CtState.Established);
    expect(table.tcpState(id)).toBe(TcpState.Close);
    expect(ttl(table, id)).toBe(10);
  });

  it("an RST before what the peer acknowledged (td_maxack) is INVALID and leaves the connection as it was", () => {
    const { table, clock } = newTable();
    const id = afterOneRequest(table);
    clock.advance(5);
    const before = snapshot(table, id);
    expect(send(table, tcp(WEB, VM, RST, { seq: 4000 }))).toMatchObject({ id: -1, state: CtState.Invalid });
    expect(snapshot(table, id)).toEqual(before);
    expect(table.counters.tcpRstOutOfWindow).toBe(1);
  });

  it("an RST in the window but not exact keeps ESTABLISHED (room for a challenge ACK) with the CLOSE timeout", () => {
    const { table } = newTable();
    const id = afterOneRequest(table);
    expect(send(table, tcp(WEB, VM, RST, { seq: 5001 + 100 })).state).toBe(CtState.Established);
    expect(table.tcpState(id)).toBe(TcpState.Established);
    expect(ttl(table, id)).toBe(10);
    // 10.0.0.3's challenge ACK keeps the connection; the RST's sequence number advanced
    // 9.186.100.1's td_end, which the ACK does not cover: unacknowledged, 300 s (as Linux)
    send(table, tcp(VM, WEB, ACK, { seq: 2001, ack: 5001, win: 502 }));
    expect(table.tcpState(id)).toBe(TcpState.Established);
    expect(tcpWindowState(table, id, 1)).toMatchObject({ end: 5101, dataUnacknowledged: true });
    expect(ttl(table, id)).toBe(300);
  });

  it("a blind RST far outside the window is INVALID, the connection unchanged", () => {
    const { table, clock } = newTable();
    const id = afterOneRequest(table);
    clock.advance(5);
    const before = snapshot(table, id);
    expect(send(table, tcp(WEB, VM, RST | TCP_ACK, { seq: 5001 + 3_000_000, ack: 2001 })).state).toBe(CtState.Invalid);
    expect(snapshot(table, id).state).toBe(TcpState.Established);
    expect(snapshot(table, id).expires).toBe(before.expires);
    expect(table.counters.tcpOutOfWindow).toBe(1);
  });

  it("out-of-window FINs from both sides lower an ASSURED entry's timeout to UNACK (nf_tcp_handle_invalid)", () => {
    const { table } = newTable();
    const id = afterOneRequest(table);
    expect(send(table, tcp(VM, WEB, TCP_FIN | TCP_ACK, { seq: 2001 + 3_000_000, ack: 5001, win: 502 })).state).toBe(CtState.Invalid);
    expect(ttl(table, id)).toBe(432_000);
    expect(send(table, tcp(WEB, VM, TCP_FIN | TCP_ACK, { seq: 5001 + 3_000_000, ack: 2001 })).state).toBe(CtState.Invalid);
    expect(table.tcpState(id)).toBe(TcpState.Established);
    expect(ttl(table, id)).toBe(300);
  });
});

describe("TCP window tracking: timeouts from retransmissions and zero windows", () => {
  it("the same ACK segment seen 3 more times caps the timeout at timeout_max_retrans; a new one lifts it", () => {
    const { table } = newTable({ timeouts: { tcpRetrans: 200 } });
    const id = scaledHandshake(table);
    const again = () => send(table, tcp(VM, WEB, ACK, { seq: 1001, ack: 5001, win: 502 }));
    again();
    again();
    expect(tcpRetransCount(table, id)).toBe(2);
    expect(ttl(table, id)).toBe(432_000);
    again();
    expect(tcpRetransCount(table, id)).toBe(3);
    expect(ttl(table, id)).toBe(200);
    send(table, tcp(VM, WEB, ACK, { seq: 1001, ack: 5001, win: 503 }));
    expect(tcpRetransCount(table, id)).toBe(0);
    expect(ttl(table, id)).toBe(432_000);
  });

  it("a zero window from 9.186.100.1 also gets timeout_max_retrans (Linux: last_win == 0)", () => {
    const { table } = newTable({ timeouts: { tcpRetrans: 200 } });
    const id = afterOneRequest(table);
    send(table, tcp(WEB, VM, ACK, { seq: 5001, ack: 2001, win: 0 }));
    expect(ttl(table, id)).toBe(200);
  });
});

describe("TCP window tracking: connections picked up mid-stream and be_liberal", () => {
  it("a mid-stream ACK creates ESTABLISHED for 300 s; the answer and the next ACK make it ASSURED", () => {
    const { table } = newTable();
    const first = send(table, tcp(VM, WEB, ACK, { seq: 1000, ack: 2000, win: 100 }));
    expect(first).toMatchObject({ isNew: true, state: CtState.New });
    const id = first.id;
    expect(table.tcpState(id)).toBe(TcpState.Established);
    expect(ttl(table, id)).toBe(300);
    expect(tcpWindowState(table, id, 0)).toMatchObject({ end: 1000, maxwin: 100, maxend: 1100, beLiberal: true, sackPermitted: true });
    expect(tcpWindowState(table, id, 1)).toMatchObject({ beLiberal: true, sackPermitted: true, maxwin: 0 });
    send(table, tcp(WEB, VM, ACK, { seq: 2000, ack: 1000, win: 200 }));
    expect(tcpWindowState(table, id, 1)).toMatchObject({ end: 2000, maxwin: 200, maxack: 1000 });
    expect(tcpWindowState(table, id, 0).maxend).toBe(1200);
    send(table, tcp(VM, WEB, ACK, { seq: 1000, ack: 2000, win: 100 }));
    expect(table.status(id) & CtStatus.Assured).toBeTruthy();
    expect(ttl(table, id)).toBe(432_000);
  });

  it("a picked-up connection is tracked liberally (Linux sets BE_LIBERAL): far out-of-window data passes", () => {
    const { table } = newTable();
    const id = send(table, tcp(VM, WEB, ACK, { seq: 1000, ack: 2000, win: 100 })).id;
    send(table, tcp(WEB, VM, ACK, { seq: 2000, ack: 1000, win: 200 }));
    expect(send(table, tcp(VM, WEB, PSHACK, { seq: 1000 + 5_000_000, ack: 2000, len: 10 }))).toMatchObject({ id, state: CtState.Established });
    expect(table.counters.tcpOutOfWindow).toBe(0);
  });

  it("tcpBeLiberal (nf_conntrack_tcp_be_liberal) accepts out-of-window data, but not an RST before td_maxack", () => {
    const { table } = newTable({ beLiberal: true });
    const id = afterOneRequest(table);
    expect(send(table, tcp(VM, WEB, PSHACK, { seq: 1001 + 200_000, ack: 5001, win: 502, len: 100 }))).toMatchObject({ id, state: CtState.Established });
    expect(table.counters.tcpOutOfWindow).toBe(0);
    expect(send(table, tcp(WEB, VM, RST, { seq: 4000 })).state).toBe(CtState.Invalid);
    expect(table.counters.tcpRstOutOfWindow).toBe(1);
  });

  it("without it (the default), the same data is INVALID", () => {
    const { table } = newTable();
    afterOneRequest(table);
    expect(send(table, tcp(VM, WEB, PSHACK, { seq: 1001 + 200_000, ack: 5001, win: 502, len: 100 })).state).toBe(CtState.Invalid);
  });
});

describe("TCP window tracking: re-sync from a SYN/ACK answering an ignored SYN", () => {
  it("10.0.0.3 restarts with a new SYN on a connection conntrack thinks ESTABLISHED; the SYN/ACK re-syncs it", () => {
    const { table } = newTable();
    const id = afterOneRequest(table);
    const syn = send(table, tcp(VM, WEB, SYN, { seq: 9000, win: 64240, options: SYN_OPTIONS }));
    expect(syn).toMatchObject({ id, state: CtState.Established });
    expect(table.tcpState(id)).toBe(TcpState.Established);
    send(table, tcp(WEB, VM, SYNACK, { seq: 7000, ack: 9001, win: 65160, options: SYN_OPTIONS }));
    expect(table.tcpState(id)).toBe(TcpState.SynRecv);
    expect(tcpWindowState(table, id, 0)).toMatchObject({ end: 9001, maxwin: 64240, scale: 7, sackPermitted: true });
    expect(tcpWindowState(table, id, 1)).toMatchObject({ end: 7001, scale: 7, maxack: 9001 });
    send(table, tcp(VM, WEB, ACK, { seq: 9001, ack: 7001, win: 502 }));
    expect(table.tcpState(id)).toBe(TcpState.Established);
    // the new sequence space is tracked: an ACK beyond 10.0.0.3's new SYN is INVALID
    expect(send(table, tcp(WEB, VM, ACK, { seq: 7001, ack: 9001 + 10, win: 509 })).state).toBe(CtState.Invalid);
  });

  it("a SYN/ACK that does not acknowledge the ignored SYN is ignored too", () => {
    const { table } = newTable();
    const id = afterOneRequest(table);
    send(table, tcp(VM, WEB, SYN, { seq: 9000 }));
    send(table, tcp(WEB, VM, SYNACK, { seq: 7000, ack: 12345 }));
    expect(table.tcpState(id)).toBe(TcpState.Established);
    expect(table.counters.ignore).toBe(2);
  });
});

describe("TCP INVALID reasons are counted", () => {
  it("SYN+FIN is an invalid flag combination (tcp_error)", () => {
    const { table } = newTable();
    expect(send(table, tcp(VM, WEB, TCP_SYN | TCP_FIN, {})).state).toBe(CtState.Invalid);
    expect(table.counters.tcpInvalidFlags).toBe(1);
  });

  it("a SYN/ACK on an ESTABLISHED connection in the original direction is INVALID by the state table", () => {
    const { table } = newTable();
    scaledHandshake(table);
    expect(send(table, tcp(VM, WEB, SYNACK, { seq: 1001, ack: 5001 })).state).toBe(CtState.Invalid);
    expect(table.counters.tcpInvalidState).toBe(1);
  });
});
