import { describe, expect, it } from "vitest";
import { CtDir, CtState, CtStatus } from "../../src/conntrack/table.js";
import { TrackResult, track } from "../../src/conntrack/track.js";
import { DropReason } from "../../src/core/drop-reason.js";
import { IPPROTO_GRE, IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { icmpError, icmpQuery, ip, newTable, other, send, tcp, ttl, udp } from "./packets.js";

const DEST_UNREACH = 3;
const TIME_EXCEEDED = 11;
const PORT_UNREACH = 3;

describe("UDP conntrack (nf_conntrack_proto_udp.c)", () => {
  it("a DNS query is NEW and UNREPLIED for 30 s; the answer is ESTABLISHED and sets SEEN_REPLY", () => {
    const { table } = newTable();
    const query = send(table, udp("10.0.0.3:5000", "9.186.100.1:53"));
    expect(query).toMatchObject({ state: CtState.New, isNew: true, confirmed: true });
    expect(ttl(table, query.id)).toBe(30);
    const answer = send(table, udp("9.186.100.1:53", "10.0.0.3:5000"));
    expect(answer).toMatchObject({ id: query.id, dir: CtDir.Reply, state: CtState.Established, isNew: false });
    expect(table.status(query.id) & CtStatus.SeenReply).toBeTruthy();
    expect(table.status(query.id) & CtStatus.Assured).toBe(0);
    expect(ttl(table, query.id)).toBe(30);
  });

  it("an unanswered datagram's entry expires after 30 s", () => {
    const { table, clock } = newTable();
    send(table, udp("10.0.0.3:5000", "9.186.100.1:53"));
    clock.advance(29);
    expect(send(table, udp("10.0.0.3:5000", "9.186.100.1:53"))).toMatchObject({ state: CtState.New, isNew: false });
    clock.advance(30);
    expect(send(table, udp("9.186.100.1:53", "10.0.0.3:5000"))).toMatchObject({ state: CtState.New, isNew: true });
  });

  it("traffic both ways that goes on for more than 2 s becomes a stream: ASSURED, 120 s", () => {
    const { table, clock } = newTable();
    const first = send(table, udp("10.0.0.3:5000", "9.186.100.1:4000"));
    send(table, udp("9.186.100.1:4000", "10.0.0.3:5000"));
    clock.advance(1);
    const early = send(table, udp("10.0.0.3:5000", "9.186.100.1:4000"));
    expect(early.state).toBe(CtState.Established);
    expect(table.status(first.id) & CtStatus.Assured).toBe(0); // within stream_ts: still a probe
    expect(ttl(table, first.id)).toBe(30);
    clock.advance(1.5);
    send(table, udp("10.0.0.3:5000", "9.186.100.1:4000"));
    expect(table.status(first.id) & CtStatus.Assured).toBeTruthy();
    expect(ttl(table, first.id)).toBe(120);
    clock.advance(119);
    expect(table.lookup(IPPROTO_UDP, ip("10.0.0.3"), ip("9.186.100.1"), 5000, 4000)).toBe(first.id << 1);
    clock.advance(1);
    expect(table.lookup(IPPROTO_UDP, ip("10.0.0.3"), ip("9.186.100.1"), 5000, 4000)).toBe(-1);
  });

  it("a packet without its L4 header (non-first fragment) is INVALID here; the dataplane associates it", () => {
    const { table } = newTable();
    const info = udp("10.0.0.3:5000", "9.186.100.1:53");
    info.hasL4 = false;
    info.isFragment = true;
    info.fragmentOffset = 1480;
    expect(send(table, info)).toMatchObject({ state: CtState.Invalid, id: -1, reason: DropReason.None });
    expect(table.count).toBe(0);
  });
});

describe("ICMP query conntrack (nf_conntrack_proto_icmp.c)", () => {
  it("ping 9.186.100.1 from 10.0.0.3: the echo request is NEW, the reply with the same id ESTABLISHED", () => {
    const { table } = newTable();
    const request = send(table, icmpQuery("10.0.0.3", "9.186.100.1", 8, 1234));
    expect(request).toMatchObject({ state: CtState.New, isNew: true });
    expect([table.origSport(request.id), table.origDport(request.id)]).toEqual([1234, 8 << 8]);
    expect([table.replySport(request.id), table.replyDport(request.id)]).toEqual([1234, 0]);
    expect(ttl(table, request.id)).toBe(30);
    const reply = send(table, icmpQuery("9.186.100.1", "10.0.0.3", 0, 1234));
    expect(reply).toMatchObject({ id: request.id, dir: CtDir.Reply, state: CtState.Established });
    expect(send(table, icmpQuery("10.0.0.3", "9.186.100.1", 8, 1234))).toMatchObject({ id: request.id, state: CtState.Established });
  });

  it("connections are told apart by identifier; a reply nobody asked for is INVALID", () => {
    const { table } = newTable();
    send(table, icmpQuery("10.0.0.3", "9.186.100.1", 8, 1234));
    expect(send(table, icmpQuery("9.186.100.1", "10.0.0.3", 0, 999))).toMatchObject({ state: CtState.Invalid, id: -1 });
    expect(send(table, icmpQuery("10.0.0.3", "9.186.100.1", 8, 999)).isNew).toBe(true);
    expect(table.count).toBe(2);
  });

  it("timestamp (13 <-> 14), info (15 <-> 16) and address mask (17 <-> 18) pair like echo", () => {
    const { table } = newTable();
    for (const [request, replyType] of [[13, 14], [15, 16], [17, 18]] as const) {
      const r = send(table, icmpQuery("10.0.0.3", "9.186.100.1", request, 7));
      expect(r.isNew).toBe(true);
      expect(send(table, icmpQuery("9.186.100.1", "10.0.0.3", replyType, 7))).toMatchObject({ id: r.id, dir: CtDir.Reply });
    }
  });

  it("other non-error types (router advertisement 9) are INVALID and create nothing", () => {
    const { table } = newTable();
    expect(send(table, icmpQuery("9.186.100.1", "10.0.0.3", 9, 0)).state).toBe(CtState.Invalid);
    expect(send(table, icmpQuery("9.186.100.1", "10.0.0.3", 14, 1)).state).toBe(CtState.Invalid);
    expect(table.count).toBe(0);
  });

  it("an echo connection expires 30 s after its last packet", () => {
    const { table, clock } = newTable();
    const request = send(table, icmpQuery("10.0.0.3", "9.186.100.1", 8, 1));
    clock.advance(20);
    send(table, icmpQuery("9.186.100.1", "10.0.0.3", 0, 1));
    clock.advance(29);
    expect(table.lookup(IPPROTO_ICMP, ip("10.0.0.3"), ip("9.186.100.1"), 1, 8 << 8)).toBe(request.id << 1);
    clock.advance(1);
    expect(table.lookup(IPPROTO_ICMP, ip("10.0.0.3"), ip("9.186.100.1"), 1, 8 << 8)).toBe(-1);
  });
});

describe("ICMP errors are RELATED to the connection they quote (nf_conntrack_inet_error)", () => {
  it("port unreachable for 10.0.0.3's datagram comes back RELATED in the reply direction", () => {
    const { table, clock } = newTable();
    const query = send(table, udp("10.0.0.3:5000", "9.186.100.1:53"));
    clock.advance(10);
    const error = icmpError("9.186.100.1", "10.0.0.3", DEST_UNREACH, PORT_UNREACH, udp("10.0.0.3:5000", "9.186.100.1:53"));
    expect(send(table, error)).toMatchObject({ id: query.id, dir: CtDir.Reply, state: CtState.Related, isNew: false });
    expect(ttl(table, query.id)).toBe(20); // errors do not refresh
    expect(table.status(query.id) & CtStatus.SeenReply).toBe(0);
  });

  it("an error about a reply-direction packet is RELATED in the original direction", () => {
    const { table } = newTable();
    const conn = send(table, tcp("10.0.0.3:40000", "9.186.100.1:80", TCP_SYN));
    // 10.0.0.3 (or a router on its side) reports that 9.186.100.1's SYN/ACK could not be delivered
    const quoted = tcp("9.186.100.1:80", "10.0.0.3:40000", TCP_SYN | TCP_ACK);
    const error = icmpError("10.0.0.1", "9.186.100.1", DEST_UNREACH, 1, quoted);
    expect(send(table, error)).toMatchObject({ id: conn.id, dir: CtDir.Original, state: CtState.Related });
  });

  it("time exceeded quoting a TCP segment, from a router on the path, is RELATED", () => {
    const { table } = newTable();
    const conn = send(table, tcp("10.0.0.3:40000", "9.186.100.1:80", TCP_SYN));
    const error = icmpError("9.186.100.254", "10.0.0.3", TIME_EXCEEDED, 0, tcp("10.0.0.3:40000", "9.186.100.1:80", TCP_SYN));
    expect(send(table, error)).toMatchObject({ id: conn.id, dir: CtDir.Reply, state: CtState.Related });
  });

  it("time exceeded quoting an echo request is RELATED to the ping (embedded id and type inverted)", () => {
    const { table } = newTable();
    const ping = send(table, icmpQuery("10.0.0.3", "9.186.100.1", 8, 1234));
    const error = icmpError("9.186.100.254", "10.0.0.3", TIME_EXCEEDED, 0, icmpQuery("10.0.0.3", "9.186.100.1", 8, 1234));
    expect(send(table, error)).toMatchObject({ id: ping.id, dir: CtDir.Reply, state: CtState.Related });
    const backwards = icmpError("10.0.0.1", "9.186.100.1", TIME_EXCEEDED, 0, icmpQuery("9.186.100.1", "10.0.0.3", 0, 1234));
    expect(send(table, backwards)).toMatchObject({ id: ping.id, dir: CtDir.Original, state: CtState.Related });
  });

  it("errors that match nothing, lack ports, quote an error, or go elsewhere are INVALID and create nothing", () => {
    const { table } = newTable();
    send(table, udp("10.0.0.3:5000", "9.186.100.1:53"));
    const quoted = udp("10.0.0.3:5000", "9.186.100.1:53");
    const cases = [
      icmpError("9.186.100.1", "10.0.0.3", DEST_UNREACH, PORT_UNREACH, udp("10.0.0.3:5001", "9.186.100.1:53")),
      icmpError("9.186.100.1", "10.0.0.3", DEST_UNREACH, PORT_UNREACH, quoted, false),
      icmpError("9.186.100.1", "10.0.0.3", DEST_UNREACH, PORT_UNREACH, icmpQuery("10.0.0.3", "9.186.100.1", DEST_UNREACH, 0)),
      icmpError("9.186.100.1", "10.0.0.2", DEST_UNREACH, PORT_UNREACH, quoted), // outer daddr != inner saddr
    ];
    for (const error of cases) expect(send(table, error)).toMatchObject({ state: CtState.Invalid, id: -1, isNew: false });
    expect(table.count).toBe(1);
    expect(table.counters.invalid).toBe(cases.length);
  });
});

describe("generic protocols and a full table", () => {
  it("GRE is tracked by address pair for 600 s", () => {
    const { table } = newTable();
    const first = send(table, other(IPPROTO_GRE, "10.0.0.3", "9.186.100.1"));
    expect(first).toMatchObject({ state: CtState.New, isNew: true });
    expect(ttl(table, first.id)).toBe(600);
    expect(send(table, other(IPPROTO_GRE, "9.186.100.1", "10.0.0.3"))).toMatchObject({ id: first.id, dir: CtDir.Reply });
    expect(send(table, other(IPPROTO_SCTP, "10.0.0.3", "9.186.100.1")).isNew).toBe(true);
  });

  it("track reports ConntrackFull when nothing can be evicted, and allocates nothing", () => {
    const { table } = newTable(16);
    for (let i = 0; i < 16; i++) {
      const r = send(table, udp(`10.0.0.${i + 2}:5000`, "9.186.100.1:53"));
      table.setStatus(r.id, CtStatus.Assured);
    }
    const result = new TrackResult();
    expect(track(table, tcp("10.0.0.3:40000", "9.186.100.1:80", TCP_SYN), result)).toBe(DropReason.ConntrackFull);
    expect(result).toMatchObject({ id: -1, state: CtState.Invalid, isNew: false });
    expect(table.counters.dropFull).toBe(1);
    // established traffic of existing connections still flows
    expect(track(table, udp("9.186.100.1:53", "10.0.0.3:5000"), result)).toBe(DropReason.None);
    expect(result.state).toBe(CtState.Established);
  });

  it("a released NEW entry (its packet was dropped) leaves no trace", () => {
    const { table } = newTable();
    const result = new TrackResult();
    track(table, tcp("10.0.0.3:40000", "9.186.100.1:80", TCP_SYN), result);
    expect(result.isNew).toBe(true);
    table.release(result.id);
    expect(table.count).toBe(0);
    expect(table.lookup(IPPROTO_TCP, ip("10.0.0.3"), ip("9.186.100.1"), 40000, 80)).toBe(-1);
  });
});
