import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { DropReason } from "../../src/core/drop-reason.js";
import { XorShift32 } from "../../src/core/rng.js";
import { buildPacket } from "../../src/wire/build.js";
import { ipv4FillChecksum } from "../../src/wire/ipv4.js";
import { PacketInfo, TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { parsePacket, verifyL4Checksum } from "../../src/wire/validate.js";
import { randomBytes, randomIcmpError, randomSpec } from "./random-packets.js";

const info = new PacketInfo();

function parse(b: Uint8Array, off = 0, len = b.length - off): DropReason {
  return parsePacket(b, off, len, info);
}

describe("parsePacket: what a tenant VM sends is parsed into PacketInfo", () => {
  it("10.0.0.3:40000 > 9.186.100.1:53 over UDP, at an offset inside a bigger buffer", () => {
    const packet = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 53, ttl: 64, payload: new Uint8Array(33) });
    const slot = new Uint8Array(2048);
    slot.set(packet, 100);
    expect(parse(slot, 100, packet.length + 10)).toBe(DropReason.None); // trailing bytes ignored
    expect(info.buf).toBe(slot);
    expect(info.offset).toBe(100);
    expect(info.length).toBe(20 + 8 + 33);
    expect(info.headerLength).toBe(20);
    expect(info.protocol).toBe(17);
    expect(info.src).toBe(parseIpv4("10.0.0.3"));
    expect(info.dst).toBe(parseIpv4("9.186.100.1"));
    expect(info.ttl).toBe(64);
    expect(info.l4Offset).toBe(120);
    expect(info.l4Length).toBe(41);
    expect(info.hasL4).toBe(true);
    expect(info.sport).toBe(40000);
    expect(info.dport).toBe(53);
    expect(info.isFragment).toBe(false);
    expect(info.isIcmpError).toBe(false);
    expect(verifyL4Checksum(slot, info)).toBe(true);
  });

  it("a TCP SYN with IP options and TCP options", () => {
    const packet = buildPacket({
      protocol: "tcp", src: "10.0.0.2", dst: "203.0.113.10", sport: 33000, dport: 80, tcpFlags: TCP_SYN, df: true,
      options: Uint8Array.of(1, 1, 1, 0), tcpOptions: Uint8Array.of(2, 4, 5, 0xb4), payload: Uint8Array.of(1, 2, 3),
    });
    expect(parse(packet)).toBe(DropReason.None);
    expect(info.headerLength).toBe(24);
    expect(info.l4Offset).toBe(24);
    expect(info.l4Length).toBe(24 + 3);
    expect([info.sport, info.dport, info.tcpFlags]).toEqual([33000, 80, TCP_SYN]);
    expect(info.dontFragment).toBe(true);
    expect(verifyL4Checksum(packet, info)).toBe(true);
  });

  it("an ICMP echo request records its identifier as sport", () => {
    const packet = buildPacket({ protocol: "icmp", src: "10.0.0.3", dst: "9.186.100.1", icmpType: 8, icmpId: 0x1234, icmpSeq: 1 });
    expect(parse(packet)).toBe(DropReason.None);
    expect([info.icmpType, info.icmpCode, info.icmpId, info.sport, info.dport]).toEqual([8, 0, 0x1234, 0x1234, 0]);
    expect(info.isIcmpError).toBe(false);
  });

  it("an ICMP port unreachable from 9.186.100.1 embeds the NATed UDP packet", () => {
    const original = buildPacket({ protocol: "udp", src: "9.186.100.2", dst: "9.186.100.1", sport: 1024, dport: 53, payload: new Uint8Array(100) });
    const error = buildPacket({ protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.2", icmpType: 3, icmpCode: 3, payload: original.slice(0, 28) });
    expect(parse(error)).toBe(DropReason.None);
    expect(info.isIcmpError).toBe(true);
    expect(info.hasL4).toBe(true);
    expect([info.icmpType, info.icmpCode, info.icmpId, info.sport]).toEqual([3, 3, 0, 0]);
    expect(info.innerOffset).toBe(28);
    expect(info.innerHeaderLength).toBe(20);
    expect(info.innerProtocol).toBe(17);
    expect(info.innerSrc).toBe(parseIpv4("9.186.100.2"));
    expect(info.innerDst).toBe(parseIpv4("9.186.100.1"));
    expect([info.innerHasPorts, info.innerSport, info.innerDport]).toEqual([true, 1024, 53]);
  });

  it("an ICMP time exceeded about an echo request records the echo's identifier", () => {
    const echo = buildPacket({ protocol: "icmp", src: "9.186.100.2", dst: "203.0.113.10", icmpType: 8, icmpId: 77, ttl: 1 });
    const error = buildPacket({ protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.2", icmpType: 11, payload: echo });
    expect(parse(error)).toBe(DropReason.None);
    expect([info.innerProtocol, info.innerIcmpType, info.innerIcmpCode, info.innerSport, info.innerHasPorts]).toEqual([1, 8, 0, 77, true]);
  });

  it("an ICMP error whose embedded packet has fewer than 8 L4 bytes has no inner ports", () => {
    const original = buildPacket({ protocol: "tcp", src: "9.186.100.2", dst: "9.186.100.1", sport: 1, dport: 2 });
    const error = buildPacket({ protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.2", icmpType: 3, icmpCode: 1, payload: original.slice(0, 24) });
    expect(parse(error)).toBe(DropReason.None);
    expect(info.isIcmpError).toBe(true);
    expect(info.innerProtocol).toBe(6);
    expect(info.innerHasPorts).toBe(false);
  });

  it("recognises fragments: the first carries the L4 header, later ones do not", () => {
    const first = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 5000, dport: 5001, mf: true, payload: new Uint8Array(64) });
    // In a first fragment the UDP length covers the whole datagram.
    first[20 + 4] = 0x05;
    first[20 + 5] = 0xdc;
    expect(parse(first)).toBe(DropReason.None);
    expect([info.isFragment, info.moreFragments, info.fragmentOffset, info.hasL4, info.sport]).toEqual([true, true, 0, true, 5000]);
    const later = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", fragmentOffset: 1480, payload: new Uint8Array(3) });
    expect(parse(later)).toBe(DropReason.None);
    expect([info.isFragment, info.moreFragments, info.fragmentOffset, info.hasL4, info.sport, info.l4Length]).toEqual([true, false, 1480, false, 0, 3]);
  });

  it("other protocols are accepted without an L4 view", () => {
    const gre = buildPacket({ protocol: 47, src: "10.0.0.3", dst: "9.186.100.1", payload: new Uint8Array(3) });
    expect(parse(gre)).toBe(DropReason.None);
    expect([info.protocol, info.hasL4, info.l4Length]).toEqual([47, false, 3]);
  });

  it("resets every field between packets (one reused instance)", () => {
    const error = buildPacket({ protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.2", icmpType: 3, payload: buildPacket({ protocol: "udp", src: "1.1.1.1", dst: "2.2.2.2", sport: 9, dport: 9 }) });
    expect(parse(error)).toBe(DropReason.None);
    const fresh = new PacketInfo();
    const gre = buildPacket({ protocol: 47, src: "10.0.0.3", dst: "9.186.100.1" });
    expect(parse(gre)).toBe(DropReason.None);
    expect(parsePacket(gre, 0, gre.length, fresh)).toBe(DropReason.None);
    expect({ ...info }).toEqual({ ...fresh });
  });
});

describe("parsePacket: malformed input becomes a drop reason", () => {
  const good = () => buildPacket({ protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport: 1, dport: 2, tcpFlags: TCP_ACK, payload: new Uint8Array(10) });

  it("shorter than an IPv4 header: Truncated", () => {
    expect(parse(good(), 0, 19)).toBe(DropReason.Truncated);
    expect(parse(new Uint8Array(0))).toBe(DropReason.Truncated);
    expect(parse(good(), 0, 1000)).toBe(DropReason.None); // len clamped to the buffer
    expect(parse(good(), 50, 20)).toBe(DropReason.Truncated); // offset beyond the packet
    expect(parse(good(), -1, 40)).toBe(DropReason.Truncated);
  });

  it("version 6: BadVersion", () => {
    const b = good();
    b[0] = 0x65;
    expect(parse(b)).toBe(DropReason.BadVersion);
  });

  it("IHL below 5 or beyond the buffer: BadHeaderLength", () => {
    const b = good();
    b[0] = 0x44;
    expect(parse(b)).toBe(DropReason.BadHeaderLength);
    const c = buildPacket({ protocol: 47, src: "1.2.3.4", dst: "5.6.7.8" });
    c[0] = 0x46;
    expect(parse(c)).toBe(DropReason.BadHeaderLength);
  });

  it("a wrong header checksum: BadHeaderChecksum", () => {
    const b = good();
    b[10]! ^= 0x01;
    expect(parse(b)).toBe(DropReason.BadHeaderChecksum);
    const c = good();
    c[8] = 7; // TTL changed without the checksum
    expect(parse(c)).toBe(DropReason.BadHeaderChecksum);
  });

  it("total length beyond the buffer or below the header: BadTotalLength", () => {
    for (const totalLength of [good().length + 1, 19, 0, 65535]) {
      const b = good();
      b[2] = totalLength >>> 8;
      b[3] = totalLength & 0xff;
      ipv4FillChecksum(b, 0);
      expect(parse(b)).toBe(DropReason.BadTotalLength);
    }
  });

  it("L4 header cut short: TruncatedL4; TCP data offset < 5 or a bad UDP length: BadL4", () => {
    const withTotal = (b: Uint8Array, totalLength: number) => {
      b[2] = totalLength >>> 8;
      b[3] = totalLength & 0xff;
      ipv4FillChecksum(b, 0);
      return b;
    };
    expect(parse(withTotal(good(), 39))).toBe(DropReason.TruncatedL4);
    const offsetTooBig = good();
    offsetTooBig[20 + 12] = 0xf0; // 60-byte header in a 30-byte segment
    expect(parse(offsetTooBig)).toBe(DropReason.TruncatedL4);
    const offsetTooSmall = good();
    offsetTooSmall[20 + 12] = 0x40;
    expect(parse(offsetTooSmall)).toBe(DropReason.BadL4);
    const udp = () => buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 1, dport: 2, payload: new Uint8Array(4) });
    expect(parse(withTotal(udp(), 27))).toBe(DropReason.TruncatedL4);
    const udpLong = udp();
    udpLong[25] = 13; // length 13 > 12 bytes present
    expect(parse(udpLong)).toBe(DropReason.BadL4);
    const udpShort = udp();
    udpShort[25] = 7;
    expect(parse(udpShort)).toBe(DropReason.BadL4);
    const udpPadded = udp();
    udpPadded[25] = 8; // shorter than the IP payload: trailing bytes allowed (udp_error)
    expect(parse(udpPadded)).toBe(DropReason.None);
    const icmp = buildPacket({ protocol: "icmp", src: "10.0.0.3", dst: "9.186.100.1" });
    expect(parse(withTotal(icmp, 27))).toBe(DropReason.TruncatedL4);
  });

  it("an ICMP error whose embedded IPv4 header is malformed or cut: BadL4", () => {
    const inner = buildPacket({ protocol: "udp", src: "9.186.100.2", dst: "9.186.100.1", sport: 1, dport: 2, options: new Uint8Array(8).fill(1) });
    const errorWith = (payload: Uint8Array) => buildPacket({ protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.2", icmpType: 11, payload });
    expect(parse(errorWith(inner.slice(0, 19)))).toBe(DropReason.BadL4);
    expect(parse(errorWith(inner.slice(0, 27)))).toBe(DropReason.BadL4); // options cut
    expect(parse(errorWith(inner.slice(0, 28)))).toBe(DropReason.None);
    const v6 = inner.slice();
    v6[0] = 0x67;
    expect(parse(errorWith(v6))).toBe(DropReason.BadL4);
    const ihl4 = inner.slice();
    ihl4[0] = 0x44;
    expect(parse(errorWith(ihl4))).toBe(DropReason.BadL4);
  });

  it("every truncation of valid packets gives a drop reason, never an exception", () => {
    const rng = new XorShift32(42);
    const packets = [good()];
    for (let i = 0; i < 30; i++) packets.push(buildPacket(randomSpec(rng)));
    for (let i = 0; i < 30; i++) packets.push(randomIcmpError(rng).packet);
    for (const packet of packets) {
      expect(parse(packet)).toBe(DropReason.None);
      for (let cut = 0; cut < packet.length; cut++) {
        const reason = parse(packet.slice(0, cut));
        expect(reason).not.toBe(DropReason.None);
        expect(reason).toBeLessThan(DropReason.MartianSource); // a wire reason
        expect(parse(packet, 0, cut)).toBe(reason);
      }
    }
  });

  it("every truncation with the total length and checksum made to agree gives None or an L4 reason", () => {
    const rng = new XorShift32(43);
    const packets = [good()];
    for (let i = 0; i < 40; i++) packets.push(buildPacket(randomSpec(rng)));
    for (let i = 0; i < 40; i++) packets.push(randomIcmpError(rng).packet);
    const seen = new Set<DropReason>();
    for (const packet of packets) {
      const headerLength = (packet[0]! & 15) * 4;
      for (let cut = headerLength; cut <= packet.length; cut++) {
        const b = packet.slice(0, cut);
        b[2] = cut >>> 8;
        b[3] = cut & 0xff;
        ipv4FillChecksum(b, 0);
        const reason = parse(b);
        seen.add(reason);
        expect([DropReason.None, DropReason.TruncatedL4, DropReason.BadL4]).toContain(reason);
      }
    }
    expect(seen).toEqual(new Set([DropReason.None, DropReason.TruncatedL4, DropReason.BadL4]));
  });

  it("random bytes never throw: 20000 seeded buffers, raw and with a plausible header", () => {
    const rng = new XorShift32(7);
    const seen = new Set<DropReason>();
    for (let n = 0; n < 20000; n++) {
      const b = randomBytes(rng, rng.next() % 120);
      if (n % 2 === 0 && b.length >= 20) {
        // Plausible: version 4, IHL 5-6, total length near the buffer, valid header checksum.
        b[0] = 0x45 + (rng.next() % 2);
        const total = b.length - (rng.next() % 3);
        b[2] = total >>> 8;
        b[3] = total & 0xff;
        b[6] &= 0x40; // unfragmented mostly
        b[9] = [1, 6, 17][rng.next() % 3]!;
        if (b.length >= (b[0]! & 15) * 4) ipv4FillChecksum(b, 0);
      }
      const reason = parse(b, rng.next() % 3, b.length);
      seen.add(reason);
      if (reason === DropReason.None) {
        expect(info.offset + info.length).toBeLessThanOrEqual(b.length);
        expect(info.l4Offset + info.l4Length).toBe(info.offset + info.length);
      }
    }
    // The fuzzing reached past the IP header checks too.
    expect(seen.has(DropReason.None)).toBe(true);
    expect(seen.has(DropReason.TruncatedL4)).toBe(true);
    expect(seen.has(DropReason.BadHeaderChecksum)).toBe(true);
  });

  it("random corruption of valid packets never throws, and inner offsets stay in the packet", () => {
    const rng = new XorShift32(99);
    for (let n = 0; n < 3000; n++) {
      const packet = n % 2 === 0 ? buildPacket(randomSpec(rng)) : randomIcmpError(rng).packet;
      for (let k = 0; k < 3; k++) packet[rng.next() % packet.length] = rng.next() & 0xff;
      if (n % 3 !== 0) ipv4FillChecksum(packet, 0);
      const reason = parse(packet);
      if (reason === DropReason.None && info.isIcmpError) {
        expect(info.innerOffset + info.innerHeaderLength).toBeLessThanOrEqual(info.length);
      }
    }
  });

  it("verifyL4Checksum notices a corrupted payload (the parser itself does not check it)", () => {
    const b = good();
    b[b.length - 1]! ^= 0xff;
    expect(parse(b)).toBe(DropReason.None);
    expect(verifyL4Checksum(b, info)).toBe(false);
  });
});

describe("addresses on both sides of 128.0.0.0", () => {
  it("are read as uint32 (src, dst, innerSrc, innerDst) and held as their int32 bits", () => {
    const info = new PacketInfo();
    const cases: Array<[string, string]> = [
      ["0.0.0.1", "127.255.255.255"],
      ["128.0.0.0", "255.255.255.254"],
      ["255.255.255.254", "128.0.0.1"],
    ];
    for (const [src, dst] of cases) {
      const inner = buildPacket({ protocol: "udp", src: dst, dst: src, sport: 1, dport: 2 });
      const error = buildPacket({ protocol: "icmp", src, dst, icmpType: 3, icmpCode: 3, payload: inner.subarray(0, 28) });
      expect(parsePacket(error, 0, error.length, info)).toBe(DropReason.None);
      expect([info.src, info.dst, info.innerSrc, info.innerDst]).toEqual([parseIpv4(src), parseIpv4(dst), parseIpv4(dst), parseIpv4(src)]);
      expect([info.srcBits, info.dstBits]).toEqual([parseIpv4(src) | 0, parseIpv4(dst) | 0]);
      expect([info.innerSrcBits, info.innerDstBits]).toEqual([parseIpv4(dst) | 0, parseIpv4(src) | 0]);
    }
    info.dst = 0x80000000;
    expect([info.dst, info.dstBits]).toEqual([0x80000000, -0x80000000]);
  });
});
