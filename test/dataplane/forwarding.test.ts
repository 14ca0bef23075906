import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { parseConfig } from "../../src/config/config.js";
import { TCP_SYN } from "../../src/wire/packet-info.js";
import { buildPacket } from "../../src/wire/build.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

/** The seed's router without its nat rules: plain forwarding. */
function plainRouter(edit: (yaml: string) => string = (y) => y): MemoryRouter {
  const yaml = edit(readFileSync("examples/seed.yaml", "utf8"));
  return new MemoryRouter(parseConfig(yaml, "seed.yaml"), { withoutNat: true });
}

describe("the seed's router forwards like Linux", () => {
  it("prints the seed's `ip route` lines", () => {
    const router = plainRouter();
    expect(router.dataplane.routes.format()).toBe(
      "default via 9.186.100.1 dev qg-e76de35e-90 \n" +
        "9.186.100.0/24 dev qg-e76de35e-90 proto kernel scope link src 9.186.100.2 \n" +
        "10.0.0.0/24 dev qr-694450d6-f6 proto kernel scope link src 10.0.0.1 \n",
    );
  });

  it("10.0.0.3 pings 9.186.100.1: forwarded, TTL 63 on arrival, and the reply comes back", () => {
    const router = plainRouter();
    router.send(QR, { protocol: "icmp", src: "10.0.0.3", dst: "9.186.100.1", icmpType: 8, icmpId: 7, icmpSeq: 1 });
    router.run();
    const out = router.received(QG);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ src: "10.0.0.3", dst: "9.186.100.1", ttl: 63, icmpType: 8, icmpId: 7 });
    router.send(QG, { protocol: "icmp", src: "9.186.100.1", dst: "10.0.0.3", icmpType: 0, icmpId: 7, icmpSeq: 1 });
    router.run();
    expect(router.received(QR)).toMatchObject([{ src: "9.186.100.1", dst: "10.0.0.3", ttl: 63, icmpType: 0 }]);
    expect(router.drops(QR)).toEqual({});
  });

  it("a packet with TTL 1 gets ICMP time exceeded from 10.0.0.1, carrying its header", () => {
    const router = plainRouter();
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 33434, dport: 33435, ttl: 1 });
    router.run();
    expect(router.received(QG)).toEqual([]);
    const errors = router.received(QR);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({
      protocol: "icmp",
      src: "10.0.0.1",
      dst: "10.0.0.3",
      icmpType: 11,
      icmpCode: 0,
      inner: { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 33434, dport: 33435 },
    });
    expect(router.drops(QR)).toEqual({ "ttl-exceeded": 1 });
  });

  it("without a default route, a packet to an unrouted network gets net unreachable", () => {
    const router = plainRouter((y) => y.replace("routes:\n  - default via 9.186.100.1 dev qg-e76de35e-90\n", ""));
    router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 80, tcpFlags: TCP_SYN });
    router.run();
    expect(router.received(QG)).toEqual([]);
    expect(router.received(QR)).toMatchObject([
      { protocol: "icmp", src: "10.0.0.1", dst: "10.0.0.3", icmpType: 3, icmpCode: 0, inner: { sport: 40000, dport: 80 } },
    ]);
    expect(router.drops(QR)).toEqual({ "no-route": 1 });
  });

  it("DF and too big for the egress MTU gets fragmentation needed with the next-hop MTU", () => {
    const router = plainRouter((y) => y.replace(/mtu: 1500\n(\s+)?$/m, "mtu: 1400\n").replace(/(qg-e76de35e-90\n[\s\S]*?mtu: )1500/, "$11400"));
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 5000, dport: 5001, df: true, length: 1500 });
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 5000, dport: 5001, df: true, length: 1400 });
    router.run();
    expect(router.received(QG)).toMatchObject([{ length: 1400 }]);
    expect(router.received(QR)).toMatchObject([{ src: "10.0.0.1", dst: "10.0.0.3", icmpType: 3, icmpCode: 4, icmpSeq: 1400 }]);
  });

  it("packets to the router's own addresses go to the ingress port's mirror, TTL untouched", () => {
    const router = plainRouter();
    router.send(QR, { protocol: "icmp", src: "10.0.0.3", dst: "10.0.0.1", icmpType: 8, icmpId: 1 });
    router.send(QR, { protocol: "icmp", src: "10.0.0.3", dst: "9.186.100.2", icmpType: 8, icmpId: 2 });
    router.run();
    expect(router.delivered(QR)).toMatchObject([
      { dst: "10.0.0.1", ttl: 64 },
      { dst: "9.186.100.2", ttl: 64 },
    ]);
    expect(router.received(QG)).toEqual([]);
    // The router's host answers through the mirror; qnat forwards the reply to the tenant wire.
    router.sendFromHost(QR, { protocol: "icmp", src: "10.0.0.1", dst: "10.0.0.3", icmpType: 0, icmpId: 1 });
    router.run();
    expect(router.received(QR)).toMatchObject([{ src: "10.0.0.1", dst: "10.0.0.3", ttl: 64, icmpType: 0 }]);
  });

  it("never sends ICMP errors about ICMP errors or non-first fragments", () => {
    const router = plainRouter();
    const offending = buildPacket({ protocol: "udp", src: "9.186.100.1", dst: "10.0.0.3", sport: 53, dport: 4000 });
    router.send(QR, { protocol: "icmp", src: "10.0.0.3", dst: "9.186.100.1", icmpType: 3, icmpCode: 3, ttl: 1, payload: offending.subarray(0, 28) });
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", ttl: 1, fragmentOffset: 1480, payload: new Uint8Array(100) });
    router.run();
    expect(router.received(QR)).toEqual([]);
    expect(router.drops(QR)).toEqual({ "ttl-exceeded": 2 });
  });

  it("rate-limits ICMP errors per destination like Linux (burst 6, then one per second)", () => {
    const router = plainRouter();
    const probe = { protocol: "udp" as const, src: "10.0.0.3", dst: "203.0.113.10", sport: 1, dport: 2, ttl: 1 };
    for (let i = 0; i < 10; i++) router.send(QR, probe);
    router.run();
    expect(router.received(QR)).toHaveLength(6);
    router.clock.advance(1);
    for (let i = 0; i < 3; i++) router.send(QR, probe);
    router.run();
    expect(router.received(QR)).toHaveLength(1);
    expect(router.drops(QR)).toEqual({ "ttl-exceeded": 13, "icmp-rate-limited": 6 });
  });

  it("malformed packets are dropped with their reason, never forwarded", () => {
    const router = plainRouter();
    const good = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "9.186.100.1", sport: 1, dport: 2 });
    const badChecksum = good.slice();
    badChecksum[10] ^= 0xff;
    const badVersion = good.slice();
    badVersion[0] = 0x65;
    router.send(QR, badChecksum);
    router.send(QR, badVersion);
    router.send(QR, good.subarray(0, 10));
    router.send(QR, { protocol: "udp", src: "127.0.0.1", dst: "9.186.100.1", sport: 1, dport: 2 });
    router.run();
    expect(router.received(QG)).toEqual([]);
    expect(router.drops(QR)).toEqual({ "bad-header-checksum": 1, "bad-version": 1, truncated: 1, "martian-source": 1 });
  });
});
