import { describe, expect, it } from "vitest";
import { formatIpv4, parseIpv4 } from "../../src/core/addr.js";
import { DropReason } from "../../src/core/drop-reason.js";
import { XorShift32 } from "../../src/core/rng.js";
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";
import { l4ChecksumFull } from "../../src/wire/checksum.js";
import { ipv4ChecksumValid } from "../../src/wire/ipv4.js";
import { PacketInfo } from "../../src/wire/packet-info.js";
import {
  rewriteDstAddr,
  rewriteDstPort,
  rewriteIcmpId,
  rewriteInnerDstAddr,
  rewriteInnerDstPort,
  rewriteInnerIcmpId,
  rewriteInnerSrcAddr,
  rewriteInnerSrcPort,
  rewriteSrcAddr,
  rewriteSrcPort,
} from "../../src/wire/rewrite.js";
import { parsePacket } from "../../src/wire/validate.js";
import { expectSameBytes, randomIcmpError, randomSpec } from "./random-packets.js";

const info = new PacketInfo();
const SNAT = parseIpv4("9.186.100.2");
const FLOATING = parseIpv4("9.186.100.129");

function parseOk(b: Uint8Array, off = 0): void {
  expect(parsePacket(b, off, b.length - off, info)).toBe(DropReason.None);
}

describe("NAT rewrites: the seed's translations", () => {
  it("10.0.0.3:40000 reaches the outside as 9.186.100.2:1024 (TCP SNAT)", () => {
    const spec: PacketSpec = { protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 80, tcpFlags: 2, seq: 1, payload: Uint8Array.of(1, 2, 3) };
    const b = buildPacket(spec);
    rewriteSrcAddr(b, 0, SNAT);
    rewriteSrcPort(b, 0, 1024);
    expect(b).toEqual(buildPacket({ ...spec, src: "9.186.100.2", sport: 1024 }));
  });

  it("9.186.100.1 reaches 10.0.0.2 through the floating IP 9.186.100.129 (UDP DNAT, at an offset)", () => {
    const spec: PacketSpec = { protocol: "udp", src: "9.186.100.1", dst: "9.186.100.129", sport: 5353, dport: 53, payload: new Uint8Array(17).fill(7) };
    const slot = new Uint8Array(100);
    slot.set(buildPacket(spec), 13);
    rewriteDstAddr(slot, 13, parseIpv4("10.0.0.2"));
    rewriteDstPort(slot, 13, 5300);
    const expected = buildPacket({ ...spec, dst: "10.0.0.2", dport: 5300 });
    expect(slot.subarray(13, 13 + expected.length)).toEqual(expected);
  });

  it("a UDP checksum of 0 stays 0 (RFC 768: no checksum)", () => {
    const spec: PacketSpec = { protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 1, dport: 2, noUdpChecksum: true, payload: Uint8Array.of(9) };
    const b = buildPacket(spec);
    rewriteSrcAddr(b, 0, SNAT);
    rewriteSrcPort(b, 0, 4000);
    rewriteDstAddr(b, 0, FLOATING);
    expect(b).toEqual(buildPacket({ ...spec, src: "9.186.100.2", sport: 4000, dst: "9.186.100.129" }));
    expect(b[26]! | b[27]!).toBe(0);
  });

  it("a UDP checksum that comes out 0 after a rewrite is sent as 0xffff", () => {
    const spec: PacketSpec = { protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 1, dport: 2, payload: Uint8Array.of(1, 2, 3, 4) };
    const original = buildPacket(spec);
    // Find the source port for which the true checksum is 0 (l4ChecksumFull reports it as 0xffff).
    let port = -1;
    for (let p = 0; p < 65536 && port < 0; p++) {
      const probe = buildPacket({ ...spec, sport: p });
      if (l4ChecksumFull(probe, 0) === 0xffff) port = p;
    }
    expect(port).toBeGreaterThanOrEqual(0);
    rewriteSrcPort(original, 0, port);
    expect((original[26]! << 8) | original[27]!).toBe(0xffff);
  });

  it("an ICMP echo's identifier is rewritten with its checksum", () => {
    const spec: PacketSpec = { protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 7, icmpSeq: 1, payload: new Uint8Array(56).fill(0x61) };
    const b = buildPacket(spec);
    rewriteSrcAddr(b, 0, SNAT);
    rewriteIcmpId(b, 0, 1025);
    expect(b).toEqual(buildPacket({ ...spec, src: "9.186.100.2", icmpId: 1025 }));
  });

  it("a non-first fragment gets only its IP header rewritten; port rewrites do nothing", () => {
    const spec: PacketSpec = { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", fragmentOffset: 1480, payload: new Uint8Array(40).fill(0xab) };
    const b = buildPacket(spec);
    rewriteSrcAddr(b, 0, SNAT);
    rewriteSrcPort(b, 0, 9);
    rewriteDstPort(b, 0, 9);
    rewriteIcmpId(b, 0, 9);
    expect(b).toEqual(buildPacket({ ...spec, src: "9.186.100.2" }));
  });

  it("a port unreachable for 9.186.100.2:1024 is translated back to 10.0.0.3:40000 (embedded UDP and outer ICMP)", () => {
    const sent = buildPacket({ protocol: "udp", src: "9.186.100.2", dst: "9.186.100.1", sport: 1024, dport: 53, payload: new Uint8Array(30).fill(1) });
    const errorSpec = (payload: Uint8Array, dst: string): PacketSpec => ({ protocol: "icmp", src: "9.186.100.1", dst, icmpType: 3, icmpCode: 3, payload });
    const error = buildPacket(errorSpec(sent, "9.186.100.2"));
    parseOk(error);
    rewriteDstAddr(error, 0, parseIpv4("10.0.0.3"));
    rewriteInnerSrcAddr(error, 0, info.innerOffset, parseIpv4("10.0.0.3"));
    rewriteInnerSrcPort(error, 0, info.innerOffset, 40000);
    const original = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 53, payload: new Uint8Array(30).fill(1) });
    expect(error).toEqual(buildPacket(errorSpec(original, "10.0.0.3")));
  });

  it("an embedded TCP header with fewer than 20 bytes keeps its checksum untouched (tcp_manip_pkt)", () => {
    const sent = buildPacket({ protocol: "tcp", src: "9.186.100.2", dst: "9.186.100.1", sport: 1024, dport: 22, seq: 5 });
    const error = buildPacket({ protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.2", icmpType: 11, payload: sent.slice(0, 38) });
    parseOk(error);
    const inner = info.innerOffset;
    const checksumBefore = error.slice(inner + 36, inner + 38);
    rewriteInnerSrcAddr(error, 0, inner, parseIpv4("10.0.0.3"));
    rewriteInnerSrcPort(error, 0, inner, 40000);
    expect(error.slice(inner + 36, inner + 38)).toEqual(checksumBefore);
    expect(ipv4ChecksumValid(error, inner)).toBe(true);
    expect(l4ChecksumFull(error, 0)).toBe((error[22]! << 8) | error[23]!);
    parseOk(error);
    expect([formatIpv4(info.innerSrc), info.innerSport]).toEqual(["10.0.0.3", 40000]);
  });
});

type Op = (b: Uint8Array, value: number) => void;

describe("NAT rewrites: property tests against a full recompute", () => {
  it("any sequence of rewrites on 6000 random TCP/UDP/ICMP/other packets equals building the rewritten packet", () => {
    const rng = new XorShift32(0x5eed);
    for (let n = 0; n < 6000; n++) {
      const spec = randomSpec(rng);
      const b = buildPacket(spec);
      parseOk(b);
      const hasL4 = (spec.fragmentOffset ?? 0) === 0;
      const isPorts = hasL4 && (spec.protocol === "tcp" || spec.protocol === "udp");
      const isIcmp = hasL4 && spec.protocol === "icmp";
      const expected: PacketSpec = { ...spec };
      const steps = 1 + (rng.next() % 6);
      for (let s = 0; s < steps; s++) {
        const value32 = rng.next() >>> 0;
        const value16 = value32 & 0xffff;
        switch (rng.next() % 5) {
          case 0:
            rewriteSrcAddr(b, 0, value32);
            expected.src = formatIpv4(value32);
            break;
          case 1:
            rewriteDstAddr(b, 0, value32);
            expected.dst = formatIpv4(value32);
            break;
          case 2:
            rewriteSrcPort(b, 0, value16);
            if (isPorts) expected.sport = value16;
            break;
          case 3:
            rewriteDstPort(b, 0, value16);
            if (isPorts) expected.dport = value16;
            break;
          default:
            rewriteIcmpId(b, 0, value16);
            if (isIcmp) expected.icmpId = value16;
        }
      }
      expectSameBytes(b, buildPacket(expected));
      parseOk(b);
      expect(ipv4ChecksumValid(b, 0)).toBe(true);
    }
  });

  it("any sequence of rewrites on 4000 random ICMP errors keeps every checksum equal to a full recompute", () => {
    const rng = new XorShift32(0x1c3f);
    let tcpCutBeforeChecksum = 0;
    let innerChecksummed = 0;
    for (let n = 0; n < 4000; n++) {
      const { packet: b, original, embedded } = randomIcmpError(rng);
      parseOk(b);
      const outer = info.offset;
      const inner = info.innerOffset;
      const innerHasPorts = info.innerHasPorts;
      const innerProtocol = info.innerProtocol;
      // The same rewrites on the complete original packet are the reference for the embedded bytes.
      const shadow = original.slice();
      const outerSteps: Array<[Op, Op | undefined]> = [
        [(p, v) => rewriteInnerSrcAddr(p, outer, inner, v), (p, v) => rewriteSrcAddr(p, 0, v)],
        [(p, v) => rewriteInnerDstAddr(p, outer, inner, v), (p, v) => rewriteDstAddr(p, 0, v)],
        [(p, v) => rewriteInnerSrcPort(p, outer, inner, v & 0xffff), innerHasPorts ? (p, v) => rewriteSrcPort(p, 0, v & 0xffff) : undefined],
        [(p, v) => rewriteInnerDstPort(p, outer, inner, v & 0xffff), innerHasPorts ? (p, v) => rewriteDstPort(p, 0, v & 0xffff) : undefined],
        [(p, v) => rewriteInnerIcmpId(p, outer, inner, v & 0xffff), innerHasPorts ? (p, v) => rewriteIcmpId(p, 0, v & 0xffff) : undefined],
        [(p, v) => rewriteSrcAddr(p, outer, v), undefined],
        [(p, v) => rewriteDstAddr(p, outer, v), undefined],
      ];
      const steps = 1 + (rng.next() % 8);
      for (let s = 0; s < steps; s++) {
        const [onError, onShadow] = outerSteps[rng.next() % outerSteps.length]!;
        const value = rng.next() >>> 0;
        onError(b, value);
        onShadow?.(shadow, value);
      }
      parseOk(b);
      // Outer IPv4 header and outer ICMP checksum (which covers the embedded bytes).
      expect(ipv4ChecksumValid(b, 0)).toBe(true);
      expect((b[info.l4Offset + 2]! << 8) | b[info.l4Offset + 3]!).toBe(l4ChecksumFull(b, 0));
      // Embedded IPv4 header checksum.
      expect(ipv4ChecksumValid(b, inner)).toBe(true);
      // Embedded bytes equal the rewritten complete packet, except a TCP checksum that Linux
      // leaves alone when the embedded TCP header is not complete.
      const innerHeaderLength = (original[0]! & 15) * 4;
      const l4Present = embedded - innerHeaderLength;
      const innerFirst = ((original[6]! & 0x1f) | original[7]!) === 0;
      // TCP needs its whole 20-byte header, UDP and ICMP their 8 bytes, for the checksum to be patched.
      const checksumField = innerProtocol === 6 ? 16 : innerProtocol === 17 ? 6 : 2;
      const needed = innerProtocol === 6 ? 20 : 8;
      const checksumUntouched = innerFirst && [1, 6, 17].includes(innerProtocol) && l4Present < needed && l4Present > checksumField;
      if (checksumUntouched && innerProtocol === 6) tcpCutBeforeChecksum++;
      if (innerFirst && ((innerProtocol === 6 && l4Present >= 20) || (innerProtocol === 17 && l4Present >= 8))) innerChecksummed++;
      const actual = b.subarray(inner, inner + embedded);
      const reference = shadow.slice(0, embedded);
      if (checksumUntouched) {
        const at = innerHeaderLength + checksumField;
        for (let i = at; i < Math.min(embedded, at + 2); i++) reference[i] = original[i]!;
      }
      expectSameBytes(actual, reference);
      // When the whole packet is embedded, its own L4 checksum is right too.
      if (embedded === original.length && innerFirst && !(innerProtocol === 17 && ((original[innerHeaderLength + 6]! << 8) | original[innerHeaderLength + 7]!) === 0)) {
        const copy = b.slice(inner, inner + embedded);
        const full = l4ChecksumFull(copy, 0);
        if (full >= 0) {
          expect((copy[innerHeaderLength + checksumField]! << 8) | copy[innerHeaderLength + checksumField + 1]!).toBe(full);
        }
      }
    }
    // The generator reached the interesting corners.
    expect(tcpCutBeforeChecksum).toBeGreaterThan(0);
    expect(innerChecksummed).toBeGreaterThan(100);
  });
});
