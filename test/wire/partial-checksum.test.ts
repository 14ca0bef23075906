/**
 * Partial TCP/UDP checksums (VIRTIO_NET_HDR_F_NEEDS_CSUM, Linux CHECKSUM_PARTIAL): with TUN
 * offloads on, the kernel hands qnat packets whose checksum field holds only the pseudo-header
 * sum; the device that finally transmits them adds the L4 bytes. A NAT rewrite of such a packet
 * must leave a field that, once completed, equals a full recompute of the translated packet.
 */
import { describe, expect, it } from "vitest";
import { formatIpv4, parseIpv4 } from "../../src/core/addr.js";
import { DropReason } from "../../src/core/drop-reason.js";
import { XorShift32 } from "../../src/core/rng.js";
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";
import { l4ChecksumFull, onesComplementSum, pseudoHeaderSum } from "../../src/wire/checksum.js";
import { ipv4ChecksumValid } from "../../src/wire/ipv4.js";
import { IPPROTO_TCP, IPPROTO_UDP, PacketInfo } from "../../src/wire/packet-info.js";
import {
  partialChecksumUpdate32,
  rewriteDstAddr,
  rewriteDstPort,
  rewriteSrcAddr,
  rewriteSrcPort,
} from "../../src/wire/rewrite.js";
import { gsoSegmentNetworkLength, parsePacket } from "../../src/wire/validate.js";
import { randomBytes } from "./random-packets.js";

const info = new PacketInfo();

function l4ChecksumField(b: Uint8Array): number {
  const l4 = (b[0]! & 0x0f) << 2;
  const at = l4 + (b[9] === IPPROTO_TCP ? 16 : 6);
  return (b[at]! << 8) | b[at + 1]!;
}

function setL4ChecksumField(b: Uint8Array, value: number): void {
  const l4 = (b[0]! & 0x0f) << 2;
  const at = l4 + (b[9] === IPPROTO_TCP ? 16 : 6);
  b[at] = value >>> 8;
  b[at + 1] = value & 0xff;
}

/**
 * What the kernel hands over with NEEDS_CSUM: the field holds the folded pseudo-header sum, not
 * complemented (tcp_v4_send_check: th->check = ~tcp_v4_check(len, saddr, daddr, 0)).
 */
function makePartial(b: Uint8Array): void {
  const ihl = (b[0]! & 0x0f) << 2;
  const total = (b[2]! << 8) | b[3]!;
  const src = ((b[12]! << 24) | (b[13]! << 16) | (b[14]! << 8) | b[15]!) >>> 0;
  const dst = ((b[16]! << 24) | (b[17]! << 16) | (b[18]! << 8) | b[19]!) >>> 0;
  setL4ChecksumField(b, pseudoHeaderSum(src, dst, b[9]!, total - ihl));
}

/**
 * What the transmitting device does (skb_checksum_help): the one's complement sum from
 * csum_start (the L4 header) to the end, the field included as it is, complemented into the field.
 * A UDP result of 0 is sent as 0xffff (udp4_hwcsum / CSUM_MANGLED_0).
 */
function completeChecksum(b: Uint8Array): void {
  const ihl = (b[0]! & 0x0f) << 2;
  const total = (b[2]! << 8) | b[3]!;
  let checksum = ~onesComplementSum(b, ihl, total - ihl) & 0xffff;
  if (b[9] === IPPROTO_UDP && checksum === 0) checksum = 0xffff;
  setL4ChecksumField(b, checksum);
}

function randomTcpOrUdp(rng: XorShift32): PacketSpec {
  const tcp = rng.next() % 2 === 0;
  return {
    protocol: tcp ? "tcp" : "udp",
    src: formatIpv4(rng.next() >>> 0),
    dst: formatIpv4(rng.next() >>> 0),
    sport: rng.next() & 0xffff,
    dport: rng.next() & 0xffff,
    seq: rng.next() >>> 0,
    ack: rng.next() >>> 0,
    tcpFlags: 0x10,
    payload: randomBytes(rng, rng.next() % 3 === 0 ? rng.next() % 9000 : rng.next() % 200),
  };
}

describe("partial checksums: what the device completes is the full checksum of the translated packet", () => {
  it("10.0.0.3:40000 leaves as 9.186.100.2:1024 with a partial TCP checksum (SNAT)", () => {
    const spec: PacketSpec = { protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 5201, tcpFlags: 0x18, seq: 7, payload: new Uint8Array(3000).fill(0x5a) };
    const b = buildPacket(spec);
    makePartial(b);
    rewriteSrcAddr(b, 0, parseIpv4("9.186.100.2"), true);
    rewriteSrcPort(b, 0, 1024, true);
    // Still a partial sum: exactly the pseudo-header sum of the new addresses.
    const expected = buildPacket({ ...spec, src: "9.186.100.2", sport: 1024 });
    makePartial(expected);
    expect(l4ChecksumField(b)).toBe(l4ChecksumField(expected));
    expect(ipv4ChecksumValid(b, 0)).toBe(true);
    completeChecksum(b);
    expect(l4ChecksumField(b)).toBe(l4ChecksumFull(b, 0));
  });

  it("the floating IP 9.186.100.129 reaches 10.0.0.2 with a partial UDP checksum (DNAT)", () => {
    const spec: PacketSpec = { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.129", sport: 5000, dport: 53, payload: Uint8Array.of(1, 2, 3, 4, 5) };
    const b = buildPacket(spec);
    makePartial(b);
    rewriteDstAddr(b, 0, parseIpv4("10.0.0.2"), true);
    rewriteDstPort(b, 0, 5353, true);
    completeChecksum(b);
    const expected = buildPacket({ ...spec, dst: "10.0.0.2", dport: 5353 });
    expect(b).toEqual(expected);
  });

  it("a port rewrite leaves a partial checksum alone; a full one is patched", () => {
    const b = buildPacket({ protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 80 });
    makePartial(b);
    const partial = l4ChecksumField(b);
    rewriteSrcPort(b, 0, 1024, true);
    expect(l4ChecksumField(b)).toBe(partial);
    rewriteSrcPort(b, 0, 1025);
    expect(l4ChecksumField(b)).not.toBe(partial);
  });

  it("the partial update is RFC 1624's with old and new swapped: S' = S + ~m + m'", () => {
    const rng = new XorShift32(1624);
    for (let n = 0; n < 10_000; n++) {
      const src = rng.next() >>> 0;
      const dst = rng.next() >>> 0;
      const newSrc = rng.next() >>> 0;
      const length = rng.next() & 0xffff;
      const before = pseudoHeaderSum(src, dst, IPPROTO_TCP, length);
      const after = partialChecksumUpdate32(before, src, newSrc);
      const direct = pseudoHeaderSum(newSrc, dst, IPPROTO_TCP, length);
      // One's complement: 0x0000 and 0xffff are the same number.
      expect(after % 0xffff).toBe(direct % 0xffff);
    }
  });

  it("property: any sequence of address and port rewrites on seeded random packets, completed, equals a full recompute", () => {
    const rng = new XorShift32(0x9e3779b9);
    for (let n = 0; n < 3000; n++) {
      const spec = randomTcpOrUdp(rng);
      const b = buildPacket(spec);
      makePartial(b);
      expect(parsePacket(b, 0, b.length, info)).toBe(DropReason.None);
      const steps = 1 + (rng.next() % 4);
      for (let s = 0; s < steps; s++) {
        const which = rng.next() % 4;
        if (which === 0) rewriteSrcAddr(b, 0, rng.next() >>> 0, true);
        else if (which === 1) rewriteDstAddr(b, 0, rng.next() >>> 0, true);
        else if (which === 2) rewriteSrcPort(b, 0, rng.next() & 0xffff, true);
        else rewriteDstPort(b, 0, rng.next() & 0xffff, true);
      }
      expect(ipv4ChecksumValid(b, 0)).toBe(true);
      completeChecksum(b);
      expect(l4ChecksumField(b)).toBe(l4ChecksumFull(b, 0));
    }
  });
});

describe("GSO super-packets against the MTU (skb_gso_validate_network_len)", () => {
  it("a 64000-byte TCP super-packet of 1448-byte segments fits a 1500-byte MTU", () => {
    const b = buildPacket({ protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 1, dport: 2, tcpOptions: new Uint8Array(12), payload: new Uint8Array(64000) });
    expect(parsePacket(b, 0, b.length, info)).toBe(DropReason.None);
    expect(gsoSegmentNetworkLength(info, 1448)).toBe(20 + 32 + 1448);
    expect(gsoSegmentNetworkLength(info, 1449)).toBe(1501);
    expect(gsoSegmentNetworkLength(info, 0)).toBe(info.length);
  });

  it("a UDP super-packet (USO) segments into 8-byte headers + gso_size", () => {
    const b = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 1, dport: 2, payload: new Uint8Array(20000) });
    expect(parsePacket(b, 0, b.length, info)).toBe(DropReason.None);
    expect(gsoSegmentNetworkLength(info, 1472)).toBe(1500);
  });
});
