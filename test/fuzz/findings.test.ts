/**
 * What fuzzing the pipeline found, one regression test each (docs/fuzzing.md lists them).
 */
import { describe, expect, it } from "vitest";
import { buildPacket, decodePacket } from "../../src/wire/build.js";
import { parseRules } from "../../src/nat/rules/parse.js";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { ipv4FillChecksum } from "../../src/wire/ipv4.js";
import { TCP_ACK, TCP_RST, TCP_SYN } from "../../src/wire/packet-info.js";
import { fragmentDatagram } from "../support/fragments.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

describe("fuzzing findings", () => {
  it("a fragment that would make its datagram longer than 65535 bytes (the ping of death) is dropped and counted, not translated and forwarded", () => {
    const router = MemoryRouter.fromFile();
    const [first] = fragmentDatagram({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4000, dport: 53, payload: new Uint8Array(200), id: 0x5151 }, 104);
    const tail = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", id: 0x5151, fragmentOffset: 65528, payload: new Uint8Array(64) });
    router.send(QR, first!);
    router.send(QR, tail);
    router.run();
    expect(router.receivedRaw(QG).map((p) => decodePacket(p).fragmentOffset)).toEqual([0]);
    expect(router.drops(QR)).toEqual({ "fragment-oversize": 1 });
  });

  it("a fragment from the tenant's wire is not released by a first fragment the router's own host sends: the two are different datagrams (Linux IP_DEFRAG_CONNTRACK_IN / _OUT)", () => {
    const router = MemoryRouter.fromFile();
    const payload = new Uint8Array(200).map((_, i) => i);
    // 10.0.0.3 sends a datagram in two fragments; its second one arrives first and is held.
    const [first, second] = fragmentDatagram({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4000, dport: 53, payload, id: 0x4242 }, 104);
    router.send(QR, second!);
    router.run();
    expect(router.receivedRaw(QG)).toEqual([]);
    // The router's host sends a first fragment with the same addresses and IP id: it goes out
    // on its own (OUTPUT), and does not take 10.0.0.3's held fragment along the OUTPUT path.
    router.sendFromHost(QR, first!);
    router.run();
    expect(router.receivedRaw(QG).map((p) => decodePacket(p).fragmentOffset)).toEqual([0]);
    // 10.0.0.3's own first fragment releases it: both forwarded, TTL 64 -> 63, as 9.186.100.2.
    router.send(QR, first!);
    router.run();
    const out = router.receivedRaw(QG).map((p) => decodePacket(p));
    expect(out.map((d) => [d.src, d.fragmentOffset, d.ttl])).toEqual([
      ["9.186.100.2", 0, 63],
      ["9.186.100.2", 104, 63],
    ]);
  });

  it("a RST before any reply kills the connection (nf_ct_kill): a reply then is a connection of its own, picked up mid-stream and not translated back", () => {
    const router = MemoryRouter.fromFile();
    const flow = { protocol: "tcp" as const, src: "10.0.0.7", dst: "9.186.100.1", sport: 80, dport: 80 };
    router.send(QR, { ...flow, tcpFlags: TCP_SYN, seq: 0x7ffffffa, payload: new Uint8Array(5) });
    router.send(QR, { ...flow, tcpFlags: TCP_RST, seq: 0x80000000 });
    router.run();
    expect(router.received(QG).map((p) => [p.src, p.tcpFlags])).toEqual([
      ["9.186.100.2", TCP_SYN],
      ["9.186.100.2", TCP_RST],
    ]);
    expect(formatConntrackTable(router.dataplane.conntrack)).toBe("");
    router.send(QG, { protocol: "tcp", src: "9.186.100.1", dst: "9.186.100.2", sport: 80, dport: 80, tcpFlags: TCP_ACK });
    router.run();
    expect(router.received(QR)).toEqual([]);
    expect(router.delivered(QG)).toMatchObject([{ src: "9.186.100.1", dst: "9.186.100.2", dport: 80 }]);
    expect(formatConntrackTable(router.dataplane.conntrack)).toMatch(/^tcp +6 \d+ ESTABLISHED src=9\.186\.100\.1 dst=9\.186\.100\.2 sport=80 dport=80 \[UNREPLIED\]/);
  });

  it("a datagram with the reserved flag that must be fragmented leaves in fragments without it: frag_off is written anew (Linux ip_frag_next)", () => {
    const router = MemoryRouter.fromFile();
    const packet = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4000, dport: 53, length: 1600 });
    packet[6] |= 0x80;
    ipv4FillChecksum(packet, 0);
    router.send(QR, packet);
    router.run();
    const out = router.receivedRaw(QG);
    expect(out.map((p) => [p[6]! & 0xe0, decodePacket(p).fragmentOffset, decodePacket(p).src])).toEqual([
      [0x20, 0, "9.186.100.2"],
      [0, 1480, "9.186.100.2"],
    ]);
  });

  it("a chain name with a quote, declared iptables-save style (`:\"odd - [0:0]`) or with -N, is refused at its line: printed bare by -S it could not be read back", () => {
    const saved = ["*nat", ":PREROUTING ACCEPT [0:0]", ':"odd - [0:0]', "COMMIT", ""].join("\n");
    expect(parseRules(saved).errors).toEqual([{ line: 3, message: 'chain name "\\"odd" may not contain quotes or backslashes' }]);
    expect(parseRules(`-N 'a"b'\n`).errors).toEqual([{ line: 1, message: 'chain name "a\\"b" may not contain quotes or backslashes' }]);
  });
});
