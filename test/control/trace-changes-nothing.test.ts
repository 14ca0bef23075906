/**
 * `qnat trace --router` promises that tracing changes nothing. Each case below is a way a traced
 * packet used to change the live router; after the trace, the live state is byte for byte what it
 * was (fingerprints of the whole dataplane, and of the part concerned), and the router then
 * behaves as if no trace had run.
 */
import { describe, expect, it } from "vitest";
import { runTrace } from "../../src/control/trace.js";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { TCP_ACK, TCP_FIN, TCP_SYN } from "../../src/wire/packet-info.js";
import type { PacketSpec } from "../../src/wire/build.js";
import { MemoryRouter } from "../support/memory-router.js";
import { fingerprint } from "../support/fingerprint.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

function tcp(from: "tenant" | "outside", flags: number): PacketSpec {
  return from === "tenant"
    ? { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 80, tcpFlags: flags }
    : { protocol: "tcp", src: "9.186.100.1", dst: "9.186.100.2", sport: 80, dport: 40000, tcpFlags: flags };
}

/** 10.0.0.3:40000 <-> 9.186.100.1:80 through SNAT, opened and closed: the entry is in TIME_WAIT. */
function routerWithTimeWait(): MemoryRouter {
  const router = MemoryRouter.fromFile();
  const steps: Array<["tenant" | "outside", number]> = [
    ["tenant", TCP_SYN],
    ["outside", TCP_SYN | TCP_ACK],
    ["tenant", TCP_ACK],
    ["tenant", TCP_FIN | TCP_ACK],
    ["outside", TCP_ACK],
    ["outside", TCP_FIN | TCP_ACK],
    ["tenant", TCP_ACK],
  ];
  for (const [from, flags] of steps) {
    router.send(from === "tenant" ? QR : QG, tcp(from, flags));
    router.run();
  }
  router.received(QR);
  router.received(QG);
  return router;
}

/** Runs `spec` as a trace and returns the fingerprints of the whole dataplane before and after. */
function traceTwice(router: MemoryRouter, spec: string, times = 1): { before: string; after: string } {
  const before = fingerprint(router.dataplane);
  for (let i = 0; i < times; i++) runTrace(router.dataplane, spec);
  return { before, after: fingerprint(router.dataplane) };
}

describe("tracing changes nothing", () => {
  it("a traced SYN that would reopen 10.0.0.3's TIME_WAIT connection leaves the entry where it is", () => {
    const router = routerWithTimeWait();
    const table = formatConntrackTable(router.dataplane.conntrack);
    expect(table).toContain("TIME_WAIT src=10.0.0.3 dst=9.186.100.1 sport=40000 dport=80");
    const tableBytes = fingerprint(router.dataplane.conntrack);
    const trace = runTrace(router.dataplane, `${QR} tcp 10.0.0.3:40000 > 9.186.100.1:80 syn`);
    expect(trace.verdict).toBe("forward");
    expect(fingerprint(router.dataplane.conntrack)).toBe(tableBytes);
    expect(formatConntrackTable(router.dataplane.conntrack)).toBe(table);
    const { before, after } = traceTwice(router, `${QR} tcp 10.0.0.3:40000 > 9.186.100.1:80 syn`);
    expect(after).toBe(before);
    // The real SYN does reopen it (Linux tcp_packet: a SYN in TIME_WAIT starts a new connection).
    router.send(QR, tcp("tenant", TCP_SYN));
    router.run();
    expect(formatConntrackTable(router.dataplane.conntrack)).not.toBe(table);
  });

  it("a trace on a full table early-drops none of its entries", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 16 });
    // Unreplied UDP flows from 10.0.0.3: not ASSURED, so early_drop() may evict them.
    for (let sport = 5000; router.dataplane.conntrack.count < router.dataplane.conntrack.capacity; sport++) {
      router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport, dport: 53 });
      router.run();
    }
    router.received(QG);
    const table = formatConntrackTable(router.dataplane.conntrack);
    const tableBytes = fingerprint(router.dataplane.conntrack);
    const { before, after } = traceTwice(router, `${QR} udp 10.0.0.3:9999 > 203.0.113.10:53`, 3);
    expect(after).toBe(before);
    expect(fingerprint(router.dataplane.conntrack)).toBe(tableBytes);
    expect(formatConntrackTable(router.dataplane.conntrack)).toBe(table);
    expect(router.dataplane.conntrack.counters.earlyDrop).toBe(0);
    // A real packet of that flow does evict one (Linux early_drop on a full table).
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 9999, dport: 53 });
    router.run();
    expect(router.dataplane.conntrack.counters.earlyDrop).toBe(1);
  });

  it("traced TTL-1 packets spend none of the ICMP rate limiter's tokens: six real ones still get their time exceeded", () => {
    const router = MemoryRouter.fromFile();
    // More traces than the per-destination burst (6, Linux XRLIM_BURST_FACTOR); the clock stands still.
    const { before, after } = traceTwice(router, `${QR} udp 10.0.0.3:5000 > 203.0.113.10:53 ttl=1`, 10);
    expect(after).toBe(before);
    for (let i = 0; i < 6; i++) router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000 + i, dport: 53, ttl: 1 });
    router.run();
    const errors = router.received(QR);
    expect(errors).toHaveLength(6);
    expect(errors.every((p) => p.src === "10.0.0.1" && p.dst === "10.0.0.3" && p.icmpType === 11)).toBe(true);
    expect(router.drops(QR)).toEqual({ "ttl-exceeded": 6 });
  });

  it("a traced ICMP error takes no IP id: the next real one has the id it would have had", () => {
    const traced = MemoryRouter.fromFile();
    const untouched = MemoryRouter.fromFile();
    const { before, after } = traceTwice(traced, `${QR} udp 10.0.0.3:5000 > 203.0.113.10:53 ttl=1`);
    expect(after).toBe(before);
    const ids = [traced, untouched].map((router) => {
      router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53, ttl: 1 });
      router.run();
      return router.received(QR).map((p) => p.id);
    });
    expect(ids[0]).toHaveLength(1);
    expect(ids[0]).toEqual(ids[1]);
  });

  it("a traced SYN whose source port must be searched leaves the NAT's port search as it was", () => {
    const router = MemoryRouter.fromFile();
    router.send(QR, tcp("tenant", TCP_SYN));
    router.run();
    router.received(QG);
    // 10.0.0.4:40000 to the same server would leave as 9.186.100.2:40000 too: the port is searched.
    const trace = runTrace(router.dataplane, `${QR} tcp 10.0.0.4:40000 > 9.186.100.1:80 syn`);
    expect(trace.out?.packet).not.toBe("tcp 9.186.100.2:40000 > 9.186.100.1:80");
    const { before, after } = traceTwice(router, `${QR} tcp 10.0.0.4:40000 > 9.186.100.1:80 syn`, 3);
    expect(after).toBe(before);
  });
});
