import { describe, expect, it } from "vitest";
import { CtDir, CtState, CtStatus } from "../../src/conntrack/table.js";
import { TcpState, tcpFlagsValid, tcpMayCreate } from "../../src/conntrack/tcp.js";
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG } from "../../src/wire/packet-info.js";
import { ACK, RST, SYN, SYNACK, VM, WEB, newTable, send, tcp, ttl } from "./packets.js";

const FINACK = TCP_FIN | TCP_ACK;

/** 10.0.0.3 opens a connection to 9.186.100.1:80 and completes the handshake. */
function established() {
  const { table, clock } = newTable();
  const syn = send(table, tcp(VM, WEB, SYN));
  send(table, tcp(WEB, VM, SYNACK));
  send(table, tcp(VM, WEB, ACK));
  return { table, clock, id: syn.id };
}

describe("TCP conntrack: the three-way handshake (nf_conntrack_proto_tcp.c)", () => {
  it("SYN creates an unconfirmed NEW entry in SYN_SENT for 120 s, UNREPLIED", () => {
    const { table } = newTable();
    const syn = send(table, tcp(VM, WEB, SYN));
    expect(syn).toMatchObject({ state: CtState.New, isNew: true, dir: CtDir.Original, confirmed: true });
    expect(table.tcpState(syn.id)).toBe(TcpState.SynSent);
    expect(ttl(table, syn.id)).toBe(120);
    expect(table.status(syn.id) & CtStatus.SeenReply).toBe(0);
  });

  it("SYN/ACK from 9.186.100.1 is ESTABLISHED (reply direction), SYN_RECV for 60 s, SEEN_REPLY", () => {
    const { table } = newTable();
    const syn = send(table, tcp(VM, WEB, SYN));
    const synAck = send(table, tcp(WEB, VM, SYNACK));
    expect(synAck).toMatchObject({ id: syn.id, dir: CtDir.Reply, state: CtState.Established, isNew: false });
    expect(table.tcpState(syn.id)).toBe(TcpState.SynRecv);
    expect(ttl(table, syn.id)).toBe(60);
    expect(table.status(syn.id) & CtStatus.SeenReply).toBeTruthy();
    expect(table.status(syn.id) & CtStatus.Assured).toBe(0);
  });

  it("the final ACK makes it ESTABLISHED and ASSURED for 432000 s", () => {
    const { table, id } = established();
    expect(table.tcpState(id)).toBe(TcpState.Established);
    expect(table.status(id) & CtStatus.Assured).toBeTruthy();
    expect(ttl(table, id)).toBe(432_000);
    expect(send(table, tcp(VM, WEB, ACK | TCP_PSH))).toMatchObject({ id, state: CtState.Established, dir: CtDir.Original });
  });

  it("an idle ESTABLISHED connection expires after 432000 s (5 days)", () => {
    const { table, clock } = established();
    clock.advance(431_999);
    expect(table.lookup(6, 0x0a000003, 0x09ba6401, 40000, 80)).toBeGreaterThanOrEqual(0);
    clock.advance(1);
    expect(table.lookup(6, 0x0a000003, 0x09ba6401, 40000, 80)).toBe(-1);
    expect(table.count).toBe(0);
    expect(table.counters.expired).toBe(1);
  });

  it("a retransmitted SYN stays NEW (not a new entry) and does not renew the timeout", () => {
    const { table, clock } = newTable();
    const syn = send(table, tcp(VM, WEB, SYN));
    clock.advance(50);
    const again = send(table, tcp(VM, WEB, SYN));
    expect(again).toMatchObject({ id: syn.id, state: CtState.New, isNew: false });
    expect(ttl(table, syn.id)).toBe(70);
    clock.advance(70);
    expect(send(table, tcp(VM, WEB, SYN)).isNew).toBe(true);
  });

  it("a SYN_SENT entry nobody answers expires after 120 s", () => {
    const { table, clock } = newTable();
    send(table, tcp(VM, WEB, SYN));
    clock.advance(120);
    expect(table.gc(1024)).toBe(1);
    expect(table.count).toBe(0);
  });

  it("simultaneous open: SYN both ways goes through SYN_SENT2 to ESTABLISHED", () => {
    const { table } = newTable();
    const a = send(table, tcp(VM, WEB, SYN));
    send(table, tcp(WEB, VM, SYN));
    expect(table.tcpState(a.id)).toBe(TcpState.SynSent2);
    expect(ttl(table, a.id)).toBe(120);
    send(table, tcp(VM, WEB, SYNACK));
    expect(table.tcpState(a.id)).toBe(TcpState.SynRecv);
    send(table, tcp(WEB, VM, ACK));
    expect(table.tcpState(a.id)).toBe(TcpState.Established);
    expect(table.status(a.id) & CtStatus.Assured).toBeTruthy();
  });
});

describe("TCP conntrack: closing", () => {
  it("client closes first: FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, gone after 120 s", () => {
    const { table, clock, id } = established();
    send(table, tcp(VM, WEB, FINACK));
    expect([table.tcpState(id), ttl(table, id)]).toEqual([TcpState.FinWait, 120]);
    send(table, tcp(WEB, VM, ACK));
    expect([table.tcpState(id), ttl(table, id)]).toEqual([TcpState.CloseWait, 60]);
    send(table, tcp(WEB, VM, FINACK));
    expect([table.tcpState(id), ttl(table, id)]).toEqual([TcpState.LastAck, 30]);
    send(table, tcp(VM, WEB, ACK));
    expect([table.tcpState(id), ttl(table, id)]).toEqual([TcpState.TimeWait, 120]);
    clock.advance(119);
    expect(send(table, tcp(VM, WEB, ACK))).toMatchObject({ id, state: CtState.Established });
    clock.advance(120);
    expect(table.lookup(6, 0x0a000003, 0x09ba6401, 40000, 80)).toBe(-1);
  });

  it("server closes first: the same states from the reply direction", () => {
    const { table, id } = established();
    send(table, tcp(WEB, VM, FINACK));
    expect(table.tcpState(id)).toBe(TcpState.FinWait);
    send(table, tcp(VM, WEB, ACK));
    expect(table.tcpState(id)).toBe(TcpState.CloseWait);
    send(table, tcp(VM, WEB, FINACK));
    expect(table.tcpState(id)).toBe(TcpState.LastAck);
    send(table, tcp(WEB, VM, ACK));
    expect(table.tcpState(id)).toBe(TcpState.TimeWait);
  });

  it("simultaneous close: FIN both ways then ACK", () => {
    const { table, id } = established();
    send(table, tcp(VM, WEB, FINACK));
    send(table, tcp(WEB, VM, FINACK));
    expect(table.tcpState(id)).toBe(TcpState.LastAck);
    send(table, tcp(VM, WEB, ACK));
    expect(table.tcpState(id)).toBe(TcpState.TimeWait);
  });

  it("RST closes an established connection: CLOSE for 10 s", () => {
    const { table, clock, id } = established();
    const rst = send(table, tcp(WEB, VM, RST | TCP_ACK));
    expect(rst).toMatchObject({ id, state: CtState.Established });
    expect([table.tcpState(id), ttl(table, id)]).toEqual([TcpState.Close, 10]);
    clock.advance(10);
    expect(table.lookup(6, 0x0a000003, 0x09ba6401, 40000, 80)).toBe(-1);
  });

  it("a RST answering a SYN (port closed) kills the entry at once", () => {
    const { table } = newTable();
    const syn = send(table, tcp(VM, WEB, SYN));
    const rst = send(table, tcp(WEB, VM, RST | TCP_ACK));
    expect(rst).toMatchObject({ id: syn.id, dir: CtDir.Reply, state: CtState.Established });
    expect(table.lookup(6, 0x0a000003, 0x09ba6401, 40000, 80)).toBe(-1);
    expect(table.count).toBe(0);
  });

  it("a new SYN reopens a connection in TIME_WAIT: the old entry is removed, a NEW one created", () => {
    const { table, id } = established();
    send(table, tcp(VM, WEB, FINACK));
    send(table, tcp(WEB, VM, FINACK));
    send(table, tcp(VM, WEB, ACK));
    expect(table.tcpState(id)).toBe(TcpState.TimeWait);
    const reopened = send(table, tcp(VM, WEB, SYN));
    expect(reopened).toMatchObject({ state: CtState.New, isNew: true, confirmed: true });
    expect(table.tcpState(reopened.id)).toBe(TcpState.SynSent);
    expect(table.status(reopened.id) & CtStatus.Assured).toBe(0);
    expect(table.count).toBe(1);
    expect(table.counters.removed).toBe(1);
  });

  it("a SYN after a RST from the same side reopens a CLOSE connection", () => {
    const { table } = established();
    send(table, tcp(VM, WEB, RST));
    const reopened = send(table, tcp(VM, WEB, SYN));
    expect(reopened.isNew).toBe(true);
    expect(table.tcpState(reopened.id)).toBe(TcpState.SynSent);
  });
});

describe("TCP conntrack: loose pickup, ignored and invalid segments", () => {
  it("a mid-stream ACK is picked up as ESTABLISHED (nf_conntrack_tcp_loose=1), 300 s until answered", () => {
    const { table } = newTable();
    const ack = send(table, tcp(VM, WEB, ACK));
    expect(ack).toMatchObject({ state: CtState.New, isNew: true });
    expect([table.tcpState(ack.id), ttl(table, ack.id)]).toEqual([TcpState.Established, 300]);
    send(table, tcp(WEB, VM, ACK));
    expect(ttl(table, ack.id)).toBe(300);
    expect(table.status(ack.id) & CtStatus.Assured).toBe(0);
    send(table, tcp(VM, WEB, ACK));
    expect(table.status(ack.id) & CtStatus.Assured).toBeTruthy();
    expect(ttl(table, ack.id)).toBe(432_000);
  });

  it("only SYN and ACK segments may create a connection (tcp_new)", () => {
    expect(tcpMayCreate(SYN)).toBe(true);
    expect(tcpMayCreate(ACK | TCP_PSH)).toBe(true);
    expect(tcpMayCreate(SYNACK)).toBe(false);
    expect(tcpMayCreate(FINACK)).toBe(false);
    expect(tcpMayCreate(RST)).toBe(false);
    const { table } = newTable();
    for (const flags of [SYNACK, FINACK, RST, RST | TCP_ACK]) {
      expect(send(table, tcp(VM, WEB, flags))).toMatchObject({ state: CtState.Invalid, id: -1, isNew: false });
    }
    expect(table.count).toBe(0);
    expect(table.counters.invalid).toBe(4);
  });

  it("invalid flag combinations are INVALID (tcp_valid_flags): SYN+FIN, none, FIN alone, SYN+RST", () => {
    for (const flags of [TCP_SYN | TCP_FIN, 0, TCP_FIN, TCP_SYN | TCP_RST, TCP_FIN | TCP_PSH | TCP_URG]) {
      expect(tcpFlagsValid(flags)).toBe(false);
    }
    for (const flags of [SYN, SYNACK, ACK, FINACK, RST, RST | TCP_ACK, ACK | TCP_PSH | 0x40 | 0x80, SYN | TCP_URG]) {
      expect(tcpFlagsValid(flags)).toBe(true);
    }
    const { table, id } = established();
    expect(send(table, tcp(VM, WEB, TCP_SYN | TCP_FIN)).state).toBe(CtState.Invalid);
    expect(send(table, tcp(VM, WEB, 0)).state).toBe(CtState.Invalid);
    expect(table.tcpState(id)).toBe(TcpState.Established);
  });

  it("an ACK from the client in SYN_SENT is INVALID and leaves the entry as it was", () => {
    const { table, clock } = newTable();
    const syn = send(table, tcp(VM, WEB, SYN));
    clock.advance(5);
    expect(send(table, tcp(VM, WEB, ACK))).toMatchObject({ state: CtState.Invalid, id: -1 });
    expect(table.tcpState(syn.id)).toBe(TcpState.SynSent);
    expect(ttl(table, syn.id)).toBe(115);
  });

  it("a late SYN/ACK in ESTABLISHED is ignored (sIG): accepted, no state change", () => {
    const { table, id } = established();
    const late = send(table, tcp(WEB, VM, SYNACK));
    expect(late).toMatchObject({ id, state: CtState.Established });
    expect(table.tcpState(id)).toBe(TcpState.Established);
    expect(table.counters.ignore).toBe(1);
  });

  it("RFC 5961: the challenge ACK answering a SYN in LAST_ACK is not taken as the last ACK", () => {
    const { table, id } = established();
    send(table, tcp(VM, WEB, FINACK));
    send(table, tcp(WEB, VM, FINACK));
    expect(table.tcpState(id)).toBe(TcpState.LastAck);
    send(table, tcp(VM, WEB, SYN)); // ignored in LAST_ACK
    send(table, tcp(WEB, VM, ACK)); // challenge ACK
    expect(table.tcpState(id)).toBe(TcpState.LastAck);
    send(table, tcp(VM, WEB, ACK)); // the real last ACK
    expect(table.tcpState(id)).toBe(TcpState.TimeWait);
  });
});
