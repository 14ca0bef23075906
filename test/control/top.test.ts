/**
 * `qnat top`'s data and screen without a terminal: the router's answer to a `top` request from an
 * in-memory seed router (ports, conntrack usage, the busiest connections by recent activity), the
 * rates drawn from two answers, and the request's bounds on the control socket.
 */
import { describe, expect, it } from "vitest";
import { ConntrackCensus } from "../../src/control/census.js";
import { parseControlRequest } from "../../src/control/socket.js";
import { collectTop, formatRate, renderTop, type TopView } from "../../src/control/top-view.js";
import { MemoryRouter } from "../support/memory-router.js";

const TENANT = "qr-694450d6-f6";
const GATEWAY = "qg-e76de35e-90";

/** A census that never waits for the event loop and never reuses an old count. */
function census(router: MemoryRouter): ConntrackCensus {
  return new ConntrackCensus(() => router.dataplane.conntrack, undefined, () => Promise.resolve());
}

/** One ping from 10.0.0.3 (SNAT) and its answer, `seq` apart, a second of router time later. */
function pingRound(router: MemoryRouter, seq: number): void {
  router.clock.advance(1);
  router.send(TENANT, { src: "10.0.0.3", dst: "203.0.113.10", protocol: "icmp", icmpType: 8, icmpId: 9, icmpSeq: seq });
  router.run();
  router.received(GATEWAY);
  router.send(GATEWAY, { src: "203.0.113.10", dst: "9.186.100.2", protocol: "icmp", icmpType: 0, icmpId: 9, icmpSeq: seq });
  router.run();
  router.received(TENANT);
}

describe("qnat top: the router's answer", () => {
  it("ranks 10.0.0.3's steady ping above a connection that went quiet, with its SNAT tuples", async () => {
    const router = MemoryRouter.fromFile();
    const counting = census(router);
    // A UDP exchange from 10.0.0.2 (its floating IP) that then goes quiet.
    router.send(TENANT, { src: "10.0.0.2", dst: "203.0.113.10", protocol: "udp", sport: 5353, dport: 53 });
    pingRound(router, 1);
    // The first census only notes what each connection looked like: nothing is "active" yet.
    expect((await collectTop(router.dataplane, counting, 10, 1)).busiest).toEqual([]);
    for (let seq = 2; seq <= 4; seq++) {
      pingRound(router, seq);
      await new Promise((resolve) => setTimeout(resolve, 2)); // a new census for each sample
      const view = await collectTop(router.dataplane, counting, 10, 1);
      if (seq < 4) continue;
      expect(view.conntrack).toMatchObject({ entries: 2, capacity: 262144, snat: 2, dnat: 0 });
      expect(view.conntrack.byState).toEqual([
        { protocol: "icmp", state: "REPLIED", count: 1 },
        { protocol: "udp", state: "UNREPLIED", count: 1 },
      ]);
      expect(view.busiest).toHaveLength(1);
      const [busiest] = view.busiest;
      expect(busiest!.entry.original).toEqual({ src: "10.0.0.3", dst: "203.0.113.10", type: 8, code: 0, id: 9 });
      expect(busiest!.entry.reply).toMatchObject({ src: "203.0.113.10", dst: "9.186.100.2" });
      expect(busiest!.activeSamples).toBe(3);
      expect(view.ports.map((p) => [p.name, p.wire.rxPackets])).toEqual([[TENANT, 5], [GATEWAY, 4]]);
    }
  });

  it("asks for at most 100 connections", () => {
    expect(parseControlRequest({ cmd: "top", connections: 20 })).toEqual({ cmd: "top", connections: 20 });
    expect(parseControlRequest({ cmd: "top" })).toEqual({ cmd: "top", connections: 20 });
    expect(parseControlRequest({ cmd: "top", connections: 101 })).toBe('top "connections" must be a whole number from 0 to 100');
    expect(parseControlRequest({ cmd: "top", connections: "all" })).toBe('top "connections" must be a whole number from 0 to 100');
  });
});

describe("qnat top: the screen", () => {
  const view = (at: number, rxPackets: number, rxBytes: number, drops: number): TopView => ({
    at,
    ports: [
      { name: TENANT, wire: { rxPackets, rxBytes, txPackets: 0, txBytes: 0 }, mirror: { rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0 }, drops },
    ],
    conntrack: { entries: 3, capacity: 262144, byState: [{ protocol: "tcp", state: "ESTABLISHED", count: 3 }], snat: 3, dnat: 0 },
    busiest: [],
  });

  it("rates are the counters' differences over the time between two answers", () => {
    const lines = renderTop({ namespace: "qrouter-x", previous: view(1_000_000, 100, 10_000, 0), now: view(1_002_000, 2100, 1_260_000, 4) });
    // 2000 packets and 1.25 MB in 2 s: 1000 pps, 5 Mbit/s; 4 drops: 2/s.
    expect(lines.find((l) => l.startsWith(TENANT))).toMatch(/^qr-694450d6-f6 +wire +1\.00 kpps +5\.00 Mbit\/s +0 pps +0 bit\/s +2 \/s$/);
    expect(lines).toContain("conntrack: 3 of 262144 entries (0.0%), 3 SNAT, 0 DNAT");
    expect(lines).toContain("  tcp ESTABLISHED 3");
    expect(lines).toContain("  (none active since the last sample)");
  });

  it("the first screen has no rates yet, and lines are cut to the terminal's width", () => {
    const lines = renderTop({ namespace: "qrouter-x", now: view(1_000_000, 100, 10_000, 0), columns: 30 });
    expect(lines.find((l) => l.startsWith(TENANT))).toBe("qr-694450d6-f6  wire         -");
    expect(lines.every((l) => l.length <= 30)).toBe(true);
  });

  it("formats rates with SI prefixes", () => {
    expect(formatRate(0, "pps")).toBe("0 pps");
    expect(formatRate(999, "pps")).toBe("999 pps");
    expect(formatRate(12_345, "bit/s")).toBe("12.3 kbit/s");
    expect(formatRate(17_190_000_000, "bit/s")).toBe("17.2 Gbit/s");
  });
});
