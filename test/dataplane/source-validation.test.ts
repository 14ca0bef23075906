import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { parseConfig } from "../../src/config/config.js";
import { TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const seedText = readFileSync("examples/seed.yaml", "utf8");

/** The seed's router with its config text edited. */
function seedRouter(edit: (yaml: string) => string = (y) => y): MemoryRouter {
  return new MemoryRouter(parseConfig(edit(seedText), "seed.yaml"));
}

const withRouterWide = (mode: string) => (yaml: string) => `${yaml}rp_filter: ${mode}\n`;
const withoutDefaultRoute = (yaml: string) => yaml.replace("routes:\n  - default via 9.186.100.1 dev qg-e76de35e-90\n", "");

describe("reverse-path filtering (rp_filter, Linux fib_validate_source)", () => {
  it("strict by default: a packet from 10.0.0.5 arriving on the gateway port never reaches the tenant", () => {
    const router = seedRouter();
    // To the floating IP (DNAT to 10.0.0.2: the check runs after PREROUTING) and straight to 10.0.0.3.
    router.send(QG, { protocol: "udp", src: "10.0.0.5", dst: "9.186.100.129", sport: 5000, dport: 53 });
    router.send(QG, { protocol: "tcp", src: "10.0.0.5", dst: "10.0.0.3", sport: 5001, dport: 22, tcpFlags: TCP_SYN });
    router.run();
    expect(router.received(QR)).toEqual([]);
    expect(router.drops(QG)).toEqual({ "reverse-path-filter": 2 });
    // Dropped in the route lookup, before confirmation: no connection is left behind.
    expect(router.dataplane.conntrack.count).toBe(0);
  });

  it("with rp_filter: loose the same packet reaches 10.0.0.2 through the floating IP (a route back exists)", () => {
    const router = seedRouter(withRouterWide("loose"));
    router.send(QG, { protocol: "udp", src: "10.0.0.5", dst: "9.186.100.129", sport: 5000, dport: 53 });
    router.run();
    // It leaves SNATed to 9.186.100.2: the seed's `-s 10.0.0.0/24 -j SNAT` matches its source.
    expect(router.received(QR)).toMatchObject([{ src: "9.186.100.2", dst: "10.0.0.2", dport: 53 }]);
    expect(router.drops(QG)).toEqual({});
  });

  it("a port's loose rp_filter raises the router-wide strict one on that port only (max of conf/all and conf/DEV)", () => {
    const router = seedRouter((y) => y.replace("    wire: { namespace: qnat-external, device: eth0 }\n", "    wire: { namespace: qnat-external, device: eth0 }\n    rp_filter: loose\n"));
    router.send(QG, { protocol: "udp", src: "10.0.0.5", dst: "10.0.0.3", sport: 5000, dport: 53 });
    router.send(QR, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.1", sport: 5000, dport: 53 });
    router.run();
    expect(router.received(QR)).toMatchObject([{ dst: "10.0.0.3", dport: 53 }]);
    expect(router.received(QG)).toEqual([]);
    expect(router.drops(QR)).toEqual({ "reverse-path-filter": 1 });
  });

  it("loose without a default route: a source with no route back at all is dropped, a routed one passes", () => {
    const router = seedRouter((y) => withRouterWide("loose")(withoutDefaultRoute(y)));
    router.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "10.0.0.3", sport: 5000, dport: 53 });
    router.send(QG, { protocol: "udp", src: "9.186.100.1", dst: "10.0.0.3", sport: 5001, dport: 53 });
    router.run();
    expect(router.received(QR)).toMatchObject([{ src: "9.186.100.1", dst: "10.0.0.3", sport: 5001 }]);
    expect(router.drops(QG)).toEqual({ "reverse-path-filter": 1 });
  });

  it("a route back that is a blackhole makes the source a martian, in loose mode too (fib_validate_source -EINVAL)", () => {
    const router = seedRouter((y) => withRouterWide("loose")(y.replace("routes:\n", "routes:\n  - blackhole 198.51.100.0/24\n")));
    router.send(QG, { protocol: "udp", src: "198.51.100.7", dst: "10.0.0.3", sport: 5000, dport: 53 });
    router.run();
    expect(router.received(QR)).toEqual([]);
    expect(router.drops(QG)).toEqual({ "martian-source": 1 });
  });

  it("packets for the router itself are checked too: a spoofed ping to 9.186.100.2 is not delivered to its host", () => {
    const router = seedRouter();
    router.send(QG, { protocol: "icmp", src: "10.0.0.5", dst: "9.186.100.2", icmpType: 8, icmpId: 1 });
    router.send(QG, { protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.2", icmpType: 8, icmpId: 2 });
    router.run();
    expect(router.delivered(QG)).toMatchObject([{ src: "9.186.100.1", icmpId: 2 }]);
    expect(router.drops(QG)).toEqual({ "reverse-path-filter": 1 });
  });

  it("rp_filter: off lets the spoofed packet through, as Linux with rp_filter=0", () => {
    const router = seedRouter(withRouterWide("off"));
    router.send(QG, { protocol: "udp", src: "10.0.0.5", dst: "10.0.0.3", sport: 5000, dport: 53 });
    router.run();
    expect(router.received(QR)).toMatchObject([{ dst: "10.0.0.3", dport: 53 }]);
  });

  it("the established fast path applies it per packet: a connection's packets arriving on the wrong port are dropped", () => {
    const router = seedRouter();
    // 10.0.0.3 -> 203.0.113.10 UDP, answered: established, SNATed to 9.186.100.2.
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 53 });
    router.run();
    expect(router.received(QG)).toMatchObject([{ src: "9.186.100.2", sport: 40000 }]);
    router.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: 40000 });
    router.run();
    expect(router.received(QR)).toMatchObject([{ src: "203.0.113.10", dst: "10.0.0.3" }]);
    for (let i = 0; i < 3; i++) {
      router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 53 });
      router.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: 40000 });
    }
    router.run();
    const fastBefore = router.dataplane.fastPathPackets;
    expect(fastBefore).toBeGreaterThanOrEqual(6);
    expect(router.received(QG)).toHaveLength(3);
    expect(router.received(QR)).toHaveLength(3);

    // The same tuples, each on the other port: the original from the outside, the reply from a tenant.
    router.send(QG, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 53 });
    router.send(QR, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: 40000 });
    router.run();
    expect(router.received(QG)).toEqual([]);
    expect(router.received(QR)).toEqual([]);
    expect(router.drops(QG)).toEqual({ "reverse-path-filter": 1 });
    expect(router.drops(QR)).toEqual({ "reverse-path-filter": 1 });
    expect(router.dataplane.fastPathPackets).toBe(fastBefore);
  });

  it("the fast path's answer follows a route change: a new, more specific route back moves the check", () => {
    const router = seedRouter();
    router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.129", sport: 50000, dport: 80, tcpFlags: TCP_SYN });
    router.run();
    router.send(QR, { protocol: "tcp", src: "10.0.0.2", dst: "203.0.113.10", sport: 80, dport: 50000, tcpFlags: TCP_SYN | TCP_ACK });
    router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.129", sport: 50000, dport: 80, tcpFlags: TCP_ACK });
    router.run();
    expect(router.received(QR)).toHaveLength(2);
    // 203.0.113.0/24 now routes back through the tenant port: the outside's packets fail strict.
    router.dataplane.routes.addRoute("203.0.113.0/24 dev qr-694450d6-f6");
    router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.129", sport: 50000, dport: 80, tcpFlags: TCP_ACK });
    router.run();
    expect(router.received(QR)).toEqual([]);
    expect(router.drops(QG)).toEqual({ "reverse-path-filter": 1 });
  });
});
