import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { parseConfig } from "../../src/config/config.js";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { buildPacket, type DecodedPacket } from "../../src/wire/build.js";
import { PacketInfo, TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { parsePacket, verifyL4Checksum } from "../../src/wire/validate.js";
import { DropReason } from "../../src/core/drop-reason.js";
import { formatIpv4 } from "../../src/core/addr.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const seed = () => MemoryRouter.fromFile("examples/seed.yaml");

function one(packets: DecodedPacket[]): DecodedPacket {
  expect(packets).toHaveLength(1);
  return packets[0]!;
}

describe("the seed's NAT, packet by packet (in-memory ports)", () => {
  it("1. 10.0.0.3 -> 9.186.100.1 leaves as 9.186.100.2, and the reply comes back to 10.0.0.3", () => {
    const router = seed();
    router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 80, tcpFlags: TCP_SYN });
    router.run();
    const out = one(router.received(QG));
    expect(out).toMatchObject({ src: "9.186.100.2", dst: "9.186.100.1", sport: 40000, dport: 80, ttl: 63 });
    router.send(QG, { protocol: "tcp", src: "9.186.100.1", dst: "9.186.100.2", sport: 80, dport: 40000, tcpFlags: TCP_SYN | TCP_ACK });
    router.run();
    expect(one(router.received(QR))).toMatchObject({ src: "9.186.100.1", dst: "10.0.0.3", sport: 80, dport: 40000 });
    expect(formatConntrackTable(router.dataplane.conntrack)).toContain(
      "src=10.0.0.3 dst=9.186.100.1 sport=40000 dport=80 src=9.186.100.1 dst=9.186.100.2 sport=80 dport=40000",
    );
  });

  it("1b. ping from 10.0.0.3 is SNATed with its echo id and the reply is translated back", () => {
    const router = seed();
    router.send(QR, { protocol: "icmp", src: "10.0.0.3", dst: "9.186.100.1", icmpType: 8, icmpId: 77, icmpSeq: 1 });
    router.run();
    expect(one(router.received(QG))).toMatchObject({ src: "9.186.100.2", dst: "9.186.100.1", icmpType: 8, icmpId: 77 });
    router.send(QG, { protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.2", icmpType: 0, icmpId: 77, icmpSeq: 1 });
    router.run();
    expect(one(router.received(QR))).toMatchObject({ src: "9.186.100.1", dst: "10.0.0.3", icmpType: 0, icmpId: 77 });
  });

  it("2. 10.0.0.2 -> outside leaves as its floating IP 9.186.100.129", () => {
    const router = seed();
    router.send(QR, { protocol: "udp", src: "10.0.0.2", dst: "203.0.113.10", sport: 5353, dport: 53 });
    router.run();
    expect(one(router.received(QG))).toMatchObject({ src: "9.186.100.129", dst: "203.0.113.10", sport: 5353, dport: 53 });
    router.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.129", sport: 53, dport: 5353 });
    router.run();
    expect(one(router.received(QR))).toMatchObject({ src: "203.0.113.10", dst: "10.0.0.2", sport: 53, dport: 5353 });
  });

  it("3. outside -> 9.186.100.129:22 reaches 10.0.0.2:22, and replies leave from 9.186.100.129", () => {
    const router = seed();
    router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.129", sport: 50000, dport: 22, tcpFlags: TCP_SYN });
    router.run();
    expect(one(router.received(QR))).toMatchObject({ src: "203.0.113.10", dst: "10.0.0.2", sport: 50000, dport: 22 });
    router.send(QR, { protocol: "tcp", src: "10.0.0.2", dst: "203.0.113.10", sport: 22, dport: 50000, tcpFlags: TCP_SYN | TCP_ACK });
    router.run();
    expect(one(router.received(QG))).toMatchObject({ src: "9.186.100.129", dst: "203.0.113.10", sport: 22, dport: 50000 });
    expect(formatConntrackTable(router.dataplane.conntrack)).toContain(
      "src=203.0.113.10 dst=9.186.100.129 sport=50000 dport=22 src=10.0.0.2 dst=203.0.113.10 sport=22 dport=50000",
    );
  });

  it("4. 10.0.0.2 -> 169.254.169.254:80 reaches the metadata proxy at 10.0.0.1:9697 on the qr- mirror; the reply returns from 169.254.169.254:80", () => {
    const router = seed();
    router.send(QR, { protocol: "tcp", src: "10.0.0.2", dst: "169.254.169.254", sport: 41000, dport: 80, tcpFlags: TCP_SYN });
    router.run();
    expect(one(router.delivered(QR))).toMatchObject({ src: "10.0.0.2", dst: "10.0.0.1", sport: 41000, dport: 9697, ttl: 64 });
    router.sendFromHost(QR, { protocol: "tcp", src: "10.0.0.1", dst: "10.0.0.2", sport: 9697, dport: 41000, tcpFlags: TCP_SYN | TCP_ACK });
    router.run();
    expect(one(router.received(QR))).toMatchObject({ src: "169.254.169.254", dst: "10.0.0.2", sport: 80, dport: 41000 });
  });

  it("5. hairpin: 10.0.0.3 -> 9.186.100.129 is DNATed to 10.0.0.2 and, being DNATed, SNATed to 9.186.100.2", () => {
    const router = seed();
    router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.129", sport: 42000, dport: 22, tcpFlags: TCP_SYN });
    router.run();
    expect(one(router.received(QR))).toMatchObject({ src: "9.186.100.2", dst: "10.0.0.2", sport: 42000, dport: 22 });
    router.send(QR, { protocol: "tcp", src: "10.0.0.2", dst: "9.186.100.2", sport: 22, dport: 42000, tcpFlags: TCP_SYN | TCP_ACK });
    router.run();
    expect(one(router.received(QR))).toMatchObject({ src: "9.186.100.129", dst: "10.0.0.3", sport: 22, dport: 42000 });
  });

  it("5b. a second tenant subnet (10.0.1.0/24 on another qr- port) reaches 10.0.0.0/24 without NAT", () => {
    const yaml = readFileSync("examples/seed.yaml", "utf8").replace(
      "  - name: qg-e76de35e-90",
      "  - name: qr-1b2c3d4e-5f\n    addresses: [10.0.1.1/24]\n    wire: { namespace: qnat-tenant2, device: eth0 }\n  - name: qg-e76de35e-90",
    );
    const router = new MemoryRouter(parseConfig(yaml, "two-subnets.yaml"));
    router.send("qr-1b2c3d4e-5f", { protocol: "udp", src: "10.0.1.5", dst: "10.0.0.3", sport: 6000, dport: 7000 });
    router.run();
    expect(one(router.received(QR))).toMatchObject({ src: "10.0.1.5", dst: "10.0.0.3", sport: 6000, dport: 7000, ttl: 63 });
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "10.0.1.5", sport: 7000, dport: 6000 });
    router.run();
    expect(one(router.received("qr-1b2c3d4e-5f"))).toMatchObject({ src: "10.0.0.3", dst: "10.0.1.5", sport: 7000, dport: 6000 });
  });

  it("6. two tenant hosts using the same source port to the same destination get distinct tuples", () => {
    const router = seed();
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 53 });
    router.send(QR, { protocol: "udp", src: "10.0.0.4", dst: "203.0.113.10", sport: 40000, dport: 53 });
    router.run();
    const [a, b] = router.received(QG);
    expect(a).toMatchObject({ src: "9.186.100.2", sport: 40000 });
    expect(b).toMatchObject({ src: "9.186.100.2" });
    expect(b!.sport).not.toBe(40000);
    expect(b!.sport).toBeGreaterThanOrEqual(1024);
    // Each reply finds its own tenant.
    router.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: b!.sport! });
    router.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: 40000 });
    router.run();
    expect(router.received(QR)).toMatchObject([
      { dst: "10.0.0.4", dport: 40000 },
      { dst: "10.0.0.3", dport: 40000 },
    ]);
  });

  it("7. TTL expiry beyond the router and a port unreachable from outside reach the tenant with the embedded header translated back", () => {
    const router = seed();
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 33434, dport: 33435, ttl: 2 });
    router.run();
    const sent = router.receivedRaw(QG)[0]!;
    // A router beyond 9.186.100.1 answers time exceeded, the destination answers port unreachable:
    // both embed the packet as it left qnat (from 9.186.100.2).
    router.send(QG, { protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.2", icmpType: 11, icmpCode: 0, payload: sent.subarray(0, 28) });
    router.send(QG, { protocol: "icmp", src: "203.0.113.10", dst: "9.186.100.2", icmpType: 3, icmpCode: 3, payload: sent });
    router.run();
    const [timeExceeded, unreachable] = router.received(QR);
    expect(timeExceeded).toMatchObject({
      src: "9.186.100.1",
      dst: "10.0.0.3",
      icmpType: 11,
      inner: { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 33434, dport: 33435 },
    });
    expect(unreachable).toMatchObject({
      src: "203.0.113.10",
      dst: "10.0.0.3",
      icmpType: 3,
      icmpCode: 3,
      inner: { src: "10.0.0.3", dst: "203.0.113.10", sport: 33434, dport: 33435 },
    });
  });

  it("7b. an ICMP error from the tenant about a DNATed reply leaves with the floating IP inside", () => {
    const router = seed();
    router.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.129", sport: 5000, dport: 6000 });
    router.run();
    const reached = router.receivedRaw(QR)[0]!;
    router.send(QR, { protocol: "icmp", src: "10.0.0.2", dst: "203.0.113.10", icmpType: 3, icmpCode: 3, payload: reached });
    router.run();
    expect(one(router.received(QG))).toMatchObject({
      src: "9.186.100.129",
      dst: "203.0.113.10",
      icmpType: 3,
      inner: { src: "203.0.113.10", dst: "9.186.100.129", sport: 5000, dport: 6000 },
    });
  });

  it("7c. the router's own time exceeded about a packet to the floating IP comes from 9.186.100.129 and hides 10.0.0.2, as Linux", () => {
    const router = seed();
    router.send(QG, { protocol: "udp", src: "9.186.100.1", dst: "9.186.100.129", sport: 5000, dport: 6000, ttl: 1 });
    router.run();
    expect(router.received(QR)).toEqual([]);
    expect(one(router.received(QG))).toMatchObject({
      src: "9.186.100.129",
      dst: "9.186.100.1",
      icmpType: 11,
      inner: { protocol: "udp", src: "9.186.100.1", dst: "9.186.100.129", sport: 5000, dport: 6000 },
    });
  });

  it("8. router-originated traffic to 9.186.100.129 is DNATed by the OUTPUT chain", () => {
    const router = seed();
    router.sendFromHost(QG, { protocol: "icmp", src: "9.186.100.2", dst: "9.186.100.129", icmpType: 8, icmpId: 9 });
    router.run();
    expect(one(router.received(QR))).toMatchObject({ src: "9.186.100.2", dst: "10.0.0.2", icmpType: 8, icmpId: 9, ttl: 64 });
    router.send(QR, { protocol: "icmp", src: "10.0.0.2", dst: "9.186.100.2", icmpType: 0, icmpId: 9 });
    router.run();
    expect(one(router.delivered(QR))).toMatchObject({ src: "9.186.100.129", dst: "9.186.100.2", icmpType: 0, icmpId: 9 });
  });

  it("NAT rules run once per connection: later packets use the stored binding, and rule counters show it", () => {
    const router = seed();
    for (let i = 0; i < 3; i++) router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 1111, dport: 53 });
    router.run();
    expect(router.received(QG)).toHaveLength(3);
    const rules = (router.dataplane.nat as unknown as { rules: { packets: Float64Array; ruleTextOf(i: number): string } }).rules;
    const snatIndex = [...rules.packets.keys()].find((i) => rules.ruleTextOf(i).includes("--to-source 9.186.100.2"))!;
    expect(rules.packets[snatIndex]).toBe(1);
  });

  it("every packet leaves with correct checksums", () => {
    const router = seed();
    const payload = new Uint8Array(333).map((_, i) => (i * 7) & 0xff);
    router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40001, dport: 80, tcpFlags: TCP_ACK, payload });
    router.send(QR, { protocol: "udp", src: "10.0.0.2", dst: "9.186.100.1", sport: 40002, dport: 53, payload });
    router.send(QR, buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40003, dport: 53, payload, noUdpChecksum: true }));
    router.run();
    const out = router.receivedRaw(QG);
    expect(out).toHaveLength(3);
    const info = new PacketInfo();
    for (const raw of out) {
      expect(parsePacket(raw, 0, raw.length, info)).toBe(DropReason.None); // includes the IP header checksum
      expect(formatIpv4(info.src)).toMatch(/^9\.186\.100\.(2|129)$/);
      expect(verifyL4Checksum(raw, info)).toBe(true);
    }
    // UDP without a checksum stays without one (RFC 768).
    expect(out[2]![info.l4Offset + 6]! | out[2]![info.l4Offset + 7]!).toBe(0);
  });
});
