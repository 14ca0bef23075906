import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { DropReason } from "../../src/core/drop-reason.js";
import { XorShift32 } from "../../src/core/rng.js";
import { buildPacket, decodePacket, describePacket, formatTcpFlags, ICMP_ERROR_MAX_LENGTH, writeIcmpError } from "../../src/wire/build.js";
import { l4ChecksumFull } from "../../src/wire/checksum.js";
import { icmpNextHopMtu } from "../../src/wire/icmp.js";
import { ipv4ChecksumValid } from "../../src/wire/ipv4.js";
import { PacketInfo, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN } from "../../src/wire/packet-info.js";
import { parsePacket, verifyL4Checksum } from "../../src/wire/validate.js";
import { expectSameBytes, randomSpec } from "./random-packets.js";

const info = new PacketInfo();
const ROUTER_TENANT = parseIpv4("10.0.0.1");
const VM = parseIpv4("10.0.0.3");

describe("buildPacket and decodePacket", () => {
  it("builds valid packets with correct checksums and decodes them back, 3000 random specs", () => {
    const rng = new XorShift32(2024);
    for (let n = 0; n < 3000; n++) {
      const spec = randomSpec(rng);
      const b = buildPacket(spec);
      expect(parsePacket(b, 0, b.length, info)).toBe(DropReason.None);
      expect(ipv4ChecksumValid(b, 0)).toBe(true);
      expect(verifyL4Checksum(b, info)).toBe(true);
      const d = decodePacket(b);
      expect([d.protocol, d.src, d.dst, d.ttl, d.id, d.df, d.mf, d.fragmentOffset]).toEqual([
        spec.protocol, spec.src, spec.dst, spec.ttl, spec.id, spec.df ?? false, spec.mf ?? false, spec.fragmentOffset ?? 0,
      ]);
      if ((spec.fragmentOffset ?? 0) !== 0) continue;
      expectSameBytes(d.payload, spec.payload ?? new Uint8Array(0));
      if (spec.protocol === "tcp") {
        expect([d.sport, d.dport, d.seq, d.ack, d.tcpFlags]).toEqual([spec.sport, spec.dport, spec.seq, spec.ack, spec.tcpFlags]);
      } else if (spec.protocol === "udp") {
        expect([d.sport, d.dport]).toEqual([spec.sport, spec.dport]);
        if (spec.noUdpChecksum) expect(d.l4Checksum).toBe(0);
      } else if (spec.protocol === "icmp") {
        expect([d.icmpType, d.icmpCode, d.icmpId, d.icmpSeq]).toEqual([spec.icmpType, spec.icmpCode, spec.icmpId, spec.icmpSeq]);
      }
    }
  });

  it("pads to a requested total length and keeps IP options", () => {
    const b = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 1, dport: 2, length: 1500, options: Uint8Array.of(1, 1, 1) });
    expect(b.length).toBe(1500);
    const d = decodePacket(b);
    expect(d.options).toEqual(Uint8Array.of(1, 1, 1, 0));
    expect(d.payload.length).toBe(1500 - 24 - 8);
    expect(d.length).toBe(1500);
  });

  it("rejects impossible specs with a message", () => {
    expect(() => buildPacket({ protocol: "tcp", src: "10.0.0.300", dst: "1.1.1.1" })).toThrow(/src/);
    expect(() => buildPacket({ protocol: "tcp", src: "1.1.1.1", dst: "1.1.1.1", length: 30 })).toThrow(/below/);
    expect(() => buildPacket({ protocol: "tcp", src: "1.1.1.1", dst: "1.1.1.1", options: new Uint8Array(41) })).toThrow(/options/);
    expect(() => buildPacket({ protocol: "tcp", src: "1.1.1.1", dst: "1.1.1.1", fragmentOffset: 3 })).toThrow(/multiple of 8/);
    expect(() => decodePacket(new Uint8Array(10))).toThrow(/truncated/);
  });

  it("decodes the embedded packet of an ICMP error", () => {
    const sent = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 53 });
    const error = buildPacket({ protocol: "icmp", src: "9.186.100.1", dst: "10.0.0.3", icmpType: 3, icmpCode: 3, payload: sent });
    expect(decodePacket(error).inner).toEqual({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 53 });
  });
});

describe("describePacket: one line per packet for traces", () => {
  const describe1 = (bytes: Uint8Array, tcpFlags = false) => {
    expect(parsePacket(bytes, 0, bytes.length, info)).toBe(DropReason.None);
    return describePacket(info, { tcpFlags });
  };
  it("formats TCP, UDP, ICMP queries and errors, fragments and other protocols", () => {
    expect(describe1(buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 1234, dport: 53 }))).toBe("udp 10.0.0.3:1234 > 9.186.100.1:53");
    const synAck = buildPacket({ protocol: "tcp", src: "1.2.3.4", dst: "5.6.7.8", sport: 80, dport: 999, tcpFlags: TCP_SYN | TCP_ACK });
    expect(describe1(synAck)).toBe("tcp 1.2.3.4:80 > 5.6.7.8:999");
    expect(describe1(synAck, true)).toBe("tcp 1.2.3.4:80 > 5.6.7.8:999 [S.]");
    expect(describe1(buildPacket({ protocol: "icmp", src: "10.0.0.3", dst: "9.186.100.1", icmpType: 8, icmpId: 7 }))).toBe("icmp 10.0.0.3 > 9.186.100.1 8/0 id 7");
    const sent = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 1, dport: 2 });
    expect(describe1(buildPacket({ protocol: "icmp", src: "10.0.0.1", dst: "10.0.0.3", icmpType: 11, payload: sent }))).toBe("icmp 10.0.0.1 > 10.0.0.3 11/0");
    expect(describe1(buildPacket({ protocol: "tcp", src: "1.2.3.4", dst: "5.6.7.8", fragmentOffset: 8 }))).toBe("tcp 1.2.3.4 > 5.6.7.8");
    expect(describe1(buildPacket({ protocol: 47, src: "1.2.3.4", dst: "5.6.7.8" }))).toBe("gre 1.2.3.4 > 5.6.7.8");
    expect(describe1(buildPacket({ protocol: 200, src: "1.2.3.4", dst: "5.6.7.8" }))).toBe("proto 200 1.2.3.4 > 5.6.7.8");
  });
  it("writes TCP flags as tcpdump does", () => {
    expect(formatTcpFlags(TCP_SYN)).toBe("S");
    expect(formatTcpFlags(TCP_FIN | TCP_PSH | TCP_ACK)).toBe("FP.");
    expect(formatTcpFlags(TCP_RST)).toBe("R");
    expect(formatTcpFlags(0)).toBe("none");
  });
});

describe("writeIcmpError (RFC 792, RFC 1812 section 4.3.2.3)", () => {
  const big = buildPacket({ protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 80, tcpFlags: TCP_ACK, ttl: 1, tos: 0x10, length: 1500 });

  it("a TTL-exceeded for a 1500-byte packet is capped at 576 bytes and embeds 548 bytes of it", () => {
    const out = new Uint8Array(2048);
    const length = writeIcmpError(out, 10, 11, 0, 0, ROUTER_TENANT, VM, big, 0, big.length, 64, 0x4242);
    expect(length).toBe(ICMP_ERROR_MAX_LENGTH);
    expect(parsePacket(out, 10, length, info)).toBe(DropReason.None);
    expect([info.length, info.protocol, info.icmpType, info.icmpCode, info.ttl, info.dontFragment]).toEqual([576, 1, 11, 0, 64, false]);
    expect([info.src, info.dst]).toEqual([ROUTER_TENANT, VM]);
    expect(out[11]).toBe(0xc0 | 0x10); // internetwork control precedence + original TOS bits
    expect((out[14]! << 8) | out[15]!).toBe(0x4242);
    expect(verifyL4Checksum(out, info)).toBe(true);
    expect(l4ChecksumFull(out, 10)).toBe((out[32]! << 8) | out[33]!);
    expect(out.subarray(38, 38 + 548)).toEqual(big.subarray(0, 548));
    expect([info.isIcmpError, info.innerSrc, info.innerDst, info.innerSport, info.innerDport]).toEqual([true, VM, parseIpv4("203.0.113.10"), 40000, 80]);
  });

  it("a small packet is embedded whole; fragmentation needed carries the next-hop MTU (RFC 1191)", () => {
    const small = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 5, dport: 6, payload: new Uint8Array(13) });
    const out = new Uint8Array(1500);
    const length = writeIcmpError(out, 0, 3, 4, 1400, ROUTER_TENANT, VM, small, 0, small.length);
    expect(length).toBe(28 + small.length);
    expect(parsePacket(out, 0, length, info)).toBe(DropReason.None);
    expect(icmpNextHopMtu(out, info.l4Offset)).toBe(1400);
    expect(out.subarray(28, length)).toEqual(small);
    expect(verifyL4Checksum(out, info)).toBe(true);
  });

  it("never writes past the output buffer", () => {
    expect(writeIcmpError(new Uint8Array(27), 0, 11, 0, 0, ROUTER_TENANT, VM, big, 0, big.length)).toBe(0);
    expect(writeIcmpError(new Uint8Array(100), 80, 11, 0, 0, ROUTER_TENANT, VM, big, 0, big.length)).toBe(0);
    const out = new Uint8Array(100);
    const length = writeIcmpError(out, 0, 11, 0, 0, ROUTER_TENANT, VM, big, 0, big.length);
    expect(length).toBe(100);
    expect(parsePacket(out, 0, length, info)).toBe(DropReason.None);
    expect(verifyL4Checksum(out, info)).toBe(true);
  });

  it("can build the error in place over the offending packet, or in front of it", () => {
    const expected = new Uint8Array(600);
    const expectedLength = writeIcmpError(expected, 0, 11, 0, 0, ROUTER_TENANT, VM, big, 0, big.length);
    const slot = new Uint8Array(2048);
    slot.set(big, 0);
    const inPlace = writeIcmpError(slot, 0, 11, 0, 0, ROUTER_TENANT, VM, slot, 0, big.length);
    expect(slot.subarray(0, inPlace)).toEqual(expected.subarray(0, expectedLength));
    const shifted = new Uint8Array(2048);
    shifted.set(big, 40);
    const before = writeIcmpError(shifted, 0, 11, 0, 0, ROUTER_TENANT, VM, shifted, 40, big.length);
    expect(shifted.subarray(0, before)).toEqual(expected.subarray(0, expectedLength));
  });
});
