import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { parseConfig } from "../../src/config/config.js";
import { PacketBatch, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_LEN } from "../../src/core/batch.js";
import { pseudoHeaderSum } from "../../src/wire/checksum.js";
import { buildPacket, decodePacket, type PacketSpec } from "../../src/wire/build.js";
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN } from "../../src/wire/packet-info.js";
import { LEG_WIRE, egressOf } from "../../src/dataplane/port.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const seedText = readFileSync("examples/seed.yaml", "utf8");

function seedRouter(extra = ""): MemoryRouter {
  return new MemoryRouter(parseConfig(seedText + extra, "seed.yaml"));
}

/** Offset of the L4 checksum field in a 20-byte-header IPv4 packet. */
function checksumFieldOf(packet: Uint8Array): number {
  const protocol = packet[9]!;
  return 20 + (protocol === 6 ? 16 : protocol === 17 ? 6 : 2);
}

/** The packet of `spec` with its TCP/UDP/ICMP checksum off by one (never 0). */
function badChecksum(spec: PacketSpec): Uint8Array {
  const packet = buildPacket(spec);
  const at = checksumFieldOf(packet);
  const value = ((packet[at]! << 8) | packet[at + 1]!) ^ 0x0100;
  packet[at] = value >> 8;
  packet[at + 1] = value & 0xff;
  return packet;
}

const udpOut = (sport: number): PacketSpec => ({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport, dport: 53, length: 60 });

describe("INVALID packets: bad checksums as nf_conntrack_checksum=1, drop_invalid as a filter rule", () => {
  it("a datagram with a bad UDP checksum from 10.0.0.3 is INVALID: no connection, not NATed, counted by cause", () => {
    const router = seedRouter();
    router.send(QR, badChecksum(udpOut(40000)));
    router.run();
    // Linux without a filter rule forwards it untranslated.
    expect(router.received(QG)).toMatchObject([{ src: "10.0.0.3", sport: 40000, dst: "203.0.113.10" }]);
    expect(router.dataplane.conntrack.count).toBe(0);
    expect(router.dataplane.conntrack.counters).toMatchObject({ invalid: 1, invalidChecksum: 1, created: 0 });
    expect(router.drops(QR)).toEqual({});
  });

  it("conntrack.drop_invalid: true drops it, counted as conntrack-invalid", () => {
    const router = seedRouter("conntrack:\n  drop_invalid: true\n");
    router.send(QR, badChecksum(udpOut(40000)));
    router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40001, dport: 80, tcpFlags: TCP_SYN | TCP_FIN });
    router.send(QR, badChecksum({ protocol: "icmp", src: "10.0.0.3", dst: "9.186.100.1", icmpType: 8, icmpId: 9 }));
    router.send(QR, udpOut(40002));
    router.run();
    expect(router.received(QG)).toMatchObject([{ src: "9.186.100.2", sport: 40002 }]);
    expect(router.drops(QR)).toEqual({ "conntrack-invalid": 3 });
    expect(router.dataplane.conntrack.counters).toMatchObject({ invalid: 3, invalidChecksum: 2 });
  });

  it("drop_invalid drops at FORWARD, after ip_forward's TTL check: an INVALID packet with TTL 1 still gets time exceeded", () => {
    const router = seedRouter("conntrack:\n  drop_invalid: true\n");
    router.send(QR, badChecksum({ ...udpOut(40003), ttl: 1 }));
    router.run();
    expect(router.received(QG)).toEqual([]);
    expect(router.received(QR)).toMatchObject([{ protocol: "icmp", src: "10.0.0.1", dst: "10.0.0.3", icmpType: 11 }]);
    expect(router.drops(QR)).toEqual({ "ttl-exceeded": 1 });
  });

  it("drop_invalid at INPUT: an INVALID packet for the router itself is not delivered to its host", () => {
    const router = seedRouter("conntrack:\n  drop_invalid: true\n");
    router.send(QR, badChecksum({ protocol: "icmp", src: "10.0.0.3", dst: "10.0.0.1", icmpType: 8, icmpId: 3 }));
    router.run();
    expect(router.delivered(QR)).toEqual([]);
    expect(router.drops(QR)).toEqual({ "conntrack-invalid": 1 });
  });

  it("a UDP checksum of 0 means none: tracked and NATed", () => {
    const router = seedRouter();
    const packet = buildPacket(udpOut(40004));
    packet[26] = 0;
    packet[27] = 0;
    router.send(QR, packet);
    router.run();
    expect(router.received(QG)).toMatchObject([{ src: "9.186.100.2", sport: 40004 }]);
    expect(router.dataplane.conntrack.counters.invalid).toBe(0);
  });

  it("the router's own packets (from a mirror, OUTPUT) are not verified, as Linux checks only at PREROUTING", () => {
    const router = seedRouter();
    router.sendFromHost(QG, badChecksum({ protocol: "udp", src: "9.186.100.2", dst: "203.0.113.10", sport: 40005, dport: 53 }));
    router.run();
    expect(router.received(QG)).toHaveLength(1);
    expect(router.dataplane.conntrack.count).toBe(1);
    expect(router.dataplane.conntrack.counters.invalid).toBe(0);
  });

  it("the fast path never forwards a bad checksum as ESTABLISHED with NAT: the packet leaves untranslated", () => {
    for (const fast of [true, false]) {
      const router = seedRouter();
      router.dataplane.fastPath = fast;
      // 10.0.0.3:40010 -> 203.0.113.10:80, established through SNAT to 9.186.100.2.
      router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40010, dport: 80, tcpFlags: TCP_SYN });
      router.run();
      router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.2", sport: 80, dport: 40010, tcpFlags: TCP_SYN | TCP_ACK });
      router.run();
      for (let i = 0; i < 3; i++) router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40010, dport: 80, tcpFlags: TCP_ACK | TCP_PSH, length: 100 });
      router.run();
      expect(router.received(QG)).toMatchObject([{ src: "9.186.100.2" }, { src: "9.186.100.2" }, { src: "9.186.100.2" }, { src: "9.186.100.2" }]);
      router.received(QR);
      const fastBefore = router.dataplane.fastPathPackets;
      if (fast) expect(fastBefore).toBeGreaterThanOrEqual(2);

      router.send(QR, badChecksum({ protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40010, dport: 80, tcpFlags: TCP_ACK | TCP_PSH, length: 100 }));
      router.send(QG, badChecksum({ protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.2", sport: 80, dport: 40010, tcpFlags: TCP_ACK, length: 60 }));
      router.run();
      expect(router.received(QG)).toMatchObject([{ src: "10.0.0.3", sport: 40010 }]);
      // The reply is not de-NATed either: 9.186.100.2 is the router's, so its host gets it.
      expect(router.received(QR)).toEqual([]);
      expect(router.delivered(QG)).toMatchObject([{ src: "203.0.113.10", dst: "9.186.100.2", dport: 40010 }]);
      expect(router.dataplane.conntrack.counters.invalidChecksum).toBe(2);
      expect(router.dataplane.fastPathPackets).toBe(fastBefore);
    }
  });

  it("the fast path verifies every byte of any length: a good datagram of each length is forwarded there, one with its last byte changed is INVALID", () => {
    const router = seedRouter();
    router.send(QR, udpOut(40020));
    router.run();
    router.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: 40020, length: 40 });
    router.run();
    router.received(QR);
    expect(router.received(QG)).toHaveLength(1);
    // L4 lengths 9..24: every remainder modulo 4, so the 32-bit loads, the 16-bit and the odd tail all count.
    for (let total = 29; total <= 44; total++) {
      const fastBefore = router.dataplane.fastPathPackets;
      router.send(QR, { ...udpOut(40020), length: total });
      router.run();
      expect(router.received(QG)).toMatchObject([{ src: "9.186.100.2", sport: 40020 }]);
      expect(router.dataplane.fastPathPackets).toBe(fastBefore + 1);

      const corrupt = buildPacket({ ...udpOut(40020), length: total });
      corrupt[total - 1] ^= 0x5a;
      router.send(QR, corrupt);
      router.run();
      expect(router.received(QG)).toMatchObject([{ src: "10.0.0.3", sport: 40020 }]);
      expect(router.dataplane.fastPathPackets).toBe(fastBefore + 1);
    }
    expect(router.dataplane.conntrack.counters.invalidChecksum).toBe(16);
    // The same packets in one batch: the fast path then verifies with the receive batch's SIMD
    // kernel (core/batch-lanes.ts), which sums each segment in 16-byte loads and a masked rest.
    expect(router.forwarder.rx.lanes).not.toBeNull();
    const fastBefore = router.dataplane.fastPathPackets;
    for (let total = 29; total <= 44; total++) {
      router.send(QR, { ...udpOut(40020), length: total });
      const corrupt = buildPacket({ ...udpOut(40020), length: total });
      corrupt[total - 1] ^= 0x5a;
      router.send(QR, corrupt);
    }
    router.run();
    const out = router.received(QG);
    expect(out).toHaveLength(32);
    out.forEach((packet, i) => expect(packet, `packet ${i}`).toMatchObject(i % 2 === 0 ? { src: "9.186.100.2" } : { src: "10.0.0.3" }));
    expect(router.dataplane.fastPathPackets).toBe(fastBefore + 16);
    expect(router.dataplane.conntrack.counters.invalidChecksum).toBe(32);
  });

  it("a partial checksum from a local sender's offload (CHECKSUM_PARTIAL) is not verified", () => {
    const router = seedRouter();
    const packet = buildPacket(udpOut(40020));
    // NEEDS_CSUM: the field holds the folded pseudo-header sum, not a checksum.
    const partial = pseudoHeaderSum(0x0a000003, 0xcb00710a, 17, packet.length - 20);
    packet[26] = partial >> 8;
    packet[27] = partial & 0xff;
    const batch = new PacketBatch(4, 2048, VIRTIO_NET_HDR_LEN);
    batch.push(packet);
    batch.data[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    const verdicts = new Int32Array(4);
    const generated = new PacketBatch(4, 2048, VIRTIO_NET_HDR_LEN);
    router.dataplane.processBatch(batch, 0, LEG_WIRE, verdicts, generated, new Int32Array(4));
    expect(verdicts[0]).toBe(egressOf(1, LEG_WIRE));
    const out = decodePacket(batch.data.subarray(batch.offsetOf(0), batch.offsetOf(0) + batch.lengths[0]!));
    expect(out).toMatchObject({ src: "9.186.100.2", sport: 40020 });
    expect(router.dataplane.conntrack.counters.invalid).toBe(0);
  });

  it("conntrack.tcp_be_liberal reaches the connection table", () => {
    expect(seedRouter().dataplane.conntrack.tcpBeLiberal).toBe(false);
    expect(seedRouter("conntrack:\n  tcp_be_liberal: true\n").dataplane.conntrack.tcpBeLiberal).toBe(true);
  });
});
