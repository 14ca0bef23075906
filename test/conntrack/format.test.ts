import { describe, expect, it } from "vitest";
import { conntrackEntryJson, formatConntrackEntry, formatConntrackTable } from "../../src/conntrack/format.js";
import { CtStatus } from "../../src/conntrack/table.js";
import { TrackResult, track } from "../../src/conntrack/track.js";
import { TCP_ACK, TCP_SYN, type PacketInfo } from "../../src/wire/packet-info.js";
import { icmpQuery, ip, newTable, send, tcp, udp } from "./packets.js";
import type { ConntrackTable } from "../../src/conntrack/table.js";

/** The first packet of a connection leaving through the gateway port as 9.186.100.2 (SNAT). */
function snat(table: ConntrackTable, info: PacketInfo, replySport = info.dport, replyDport = info.sport): number {
  const result = new TrackResult();
  track(table, info, result);
  table.setReplyTuple(result.id, info.dst, ip("9.186.100.2"), replySport, replyDport);
  table.setStatus(result.id, CtStatus.SrcNat | CtStatus.SrcNatDone);
  table.confirm(result.id);
  return result.id;
}

describe("conntrack -L", () => {
  it("prints the seed's NATed connections exactly as conntrack-tools does", () => {
    const { table, clock } = newTable();
    const web = snat(table, tcp("10.0.0.3:40000", "9.186.100.1:80", TCP_SYN));
    send(table, tcp("9.186.100.1:80", "9.186.100.2:40000", TCP_SYN | TCP_ACK));
    send(table, tcp("10.0.0.3:40000", "9.186.100.1:80", TCP_ACK));
    const dns = snat(table, udp("10.0.0.3:5000", "9.186.100.1:53"));
    const ping = snat(table, icmpQuery("10.0.0.3", "9.186.100.1", 8, 1234), 1234, 0);
    clock.advance(0.5);
    expect(formatConntrackEntry(table, web)).toBe(
      "tcp      6 431999 ESTABLISHED src=10.0.0.3 dst=9.186.100.1 sport=40000 dport=80 src=9.186.100.1 dst=9.186.100.2 sport=80 dport=40000 [ASSURED] mark=0 use=1",
    );
    expect(formatConntrackEntry(table, dns)).toBe(
      "udp      17 29 src=10.0.0.3 dst=9.186.100.1 sport=5000 dport=53 [UNREPLIED] src=9.186.100.1 dst=9.186.100.2 sport=53 dport=5000 mark=0 use=1",
    );
    expect(formatConntrackEntry(table, ping)).toBe(
      "icmp     1 29 src=10.0.0.3 dst=9.186.100.1 type=8 code=0 id=1234 [UNREPLIED] src=9.186.100.1 dst=9.186.100.2 type=0 code=0 id=1234 mark=0 use=1",
    );
    send(table, icmpQuery("9.186.100.1", "9.186.100.2", 0, 1234));
    expect(formatConntrackEntry(table, ping)).toBe(
      "icmp     1 30 src=10.0.0.3 dst=9.186.100.1 type=8 code=0 id=1234 src=9.186.100.1 dst=9.186.100.2 type=0 code=0 id=1234 mark=0 use=1",
    );
    expect(formatConntrackTable(table).split("\n")).toHaveLength(4);
  });

  it("prints a SYN_SENT entry, other protocols, and never a negative timeout", () => {
    const { table, clock } = newTable();
    const syn = send(table, tcp("10.0.0.3:40001", "9.186.100.1:443", TCP_SYN));
    const gre = send(table, { ...tcp("10.0.0.3:0", "9.186.100.1:0", 0), protocol: 47, hasL4: false } as PacketInfo);
    clock.advance(100);
    expect(formatConntrackEntry(table, syn.id)).toBe(
      "tcp      6 20 SYN_SENT src=10.0.0.3 dst=9.186.100.1 sport=40001 dport=443 [UNREPLIED] src=9.186.100.1 dst=10.0.0.3 sport=443 dport=40001 mark=0 use=1",
    );
    expect(formatConntrackEntry(table, gre.id)).toBe(
      "gre      47 500 src=10.0.0.3 dst=9.186.100.1 [UNREPLIED] src=9.186.100.1 dst=10.0.0.3 mark=0 use=1",
    );
    clock.advance(1000);
    expect(formatConntrackEntry(table, syn.id)).toContain(" 0 SYN_SENT ");
    expect(formatConntrackTable(table)).toBe(""); // dead entries are not listed
  });

  it("has a JSON form for --json", () => {
    const { table } = newTable();
    const web = snat(table, tcp("10.0.0.3:40000", "9.186.100.1:80", TCP_SYN));
    table.setMark(web, 7);
    expect(conntrackEntryJson(table, web)).toEqual({
      id: web,
      protocol: "tcp",
      protonum: 6,
      timeout: 120,
      state: "SYN_SENT",
      original: { src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 80 },
      reply: { src: "9.186.100.1", dst: "9.186.100.2", sport: 80, dport: 40000 },
      status: ["CONFIRMED", "SRC_NAT", "SRC_NAT_DONE"],
      mark: 7,
      use: 1,
    });
    const ping = snat(table, icmpQuery("10.0.0.3", "9.186.100.1", 8, 9), 9, 0);
    expect(conntrackEntryJson(table, ping).reply).toEqual({ src: "9.186.100.1", dst: "9.186.100.2", type: 0, code: 0, id: 9 });
  });
});
