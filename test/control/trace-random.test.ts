/**
 * `qnat trace --router` changes nothing, over random router states and random traced packets.
 *
 * The connection table and the NAT's by-source index are restored by an undo journal that only
 * sees the writes made through their write helpers (src/core/undo-log.ts); this test is what
 * catches a write that bypasses it. The seed's router, with a table small enough to fill, gets
 * random real traffic (TCP handshakes, data, FINs and RSTs, UDP, pings, from the tenants, from
 * outside and from the router's own host, on a few clashing ports) and then random traces of
 * the same kinds; the whole dataplane is fingerprinted before and after each trace, and at the
 * end it is byte for byte the dataplane of a twin router that got the same traffic and no trace.
 */
import { describe, expect, it } from "vitest";
import { runTrace } from "../../src/control/trace.js";
import { XorShift32 } from "../../src/core/rng.js";
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN } from "../../src/wire/packet-info.js";
import type { PacketSpec } from "../../src/wire/build.js";
import { MemoryRouter } from "../support/memory-router.js";
import { fingerprint as digest } from "../support/fingerprint.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const PORTS = [QR, QG];

const TENANTS = ["10.0.0.2", "10.0.0.3", "10.0.0.4"];
const OUTSIDE = ["9.186.100.1", "203.0.113.10"];
/** What the outside reaches the router at: its SNAT address and the floating IP. */
const ROUTER = ["9.186.100.2", "9.186.100.129"];
/** Few ports, so connections clash and the NAT searches. */
const PORT_POOL = [40000, 40001, 80, 53];
const TCP_FLAGS: ReadonlyArray<[number, string]> = [
  [TCP_SYN, "syn"],
  [TCP_SYN | TCP_ACK, "syn ack"],
  [TCP_ACK, "ack"],
  [TCP_ACK | TCP_PSH, "ack psh"],
  [TCP_FIN | TCP_ACK, "fin ack"],
  [TCP_RST, "rst"],
  [TCP_RST | TCP_ACK, "rst ack"],
];

interface RandomPacket {
  port: string;
  fromHost: boolean;
  spec: PacketSpec;
  /** The same packet as a trace spec. */
  text: string;
}

function randomPacket(rng: XorShift32): RandomPacket {
  const pick = <T,>(items: readonly T[]): T => items[rng.next() % items.length]!;
  const kind = rng.next() % 3;
  const fromHost = kind === 2;
  // tenant -> outside on qr; outside -> router on qg; the router's own host -> outside through qg's mirror
  const port = kind === 0 ? QR : QG;
  const src = kind === 0 ? pick(TENANTS) : kind === 1 ? pick(OUTSIDE) : "9.186.100.2";
  const dst = kind === 0 ? pick(OUTSIDE) : kind === 1 ? pick(ROUTER) : pick(OUTSIDE);
  const ttl = rng.next() % 8 === 0 ? 1 : 64;
  const extra = ttl === 1 ? " ttl=1" : "";
  const protocol = rng.next() % 4;
  const where = fromHost ? "host" : port;
  if (protocol <= 1) {
    const sport = pick(PORT_POOL);
    const dport = pick(PORT_POOL);
    const [flags, words] = pick(TCP_FLAGS);
    // Sometimes numbers, sometimes none (a trace then takes them from a live connection's window).
    const numbered = rng.next() % 2 === 0;
    const seq = rng.next() % 3 === 0 ? rng.next() : 1000 + (rng.next() % 4) * 100;
    const ack = rng.next() % 3 === 0 ? rng.next() : 5000 + (rng.next() % 4) * 100;
    const spec: PacketSpec = { protocol: "tcp", src, dst, sport, dport, tcpFlags: flags, ttl, ...(numbered ? { seq, ack } : {}) };
    const numbers = numbered ? ` seq=${seq} ack=${ack}` : "";
    return { port, fromHost, spec, text: `${where} tcp ${src}:${sport} > ${dst}:${dport} ${words}${numbers}${extra}` };
  }
  if (protocol === 2) {
    const sport = pick(PORT_POOL);
    const dport = pick(PORT_POOL);
    return { port, fromHost, spec: { protocol: "udp", src, dst, sport, dport, ttl }, text: `${where} udp ${src}:${sport} > ${dst}:${dport}${extra}` };
  }
  const type = rng.next() % 2 === 0 ? 8 : 0;
  const id = 1 + (rng.next() % 3);
  return {
    port,
    fromHost,
    spec: { protocol: "icmp", src, dst, icmpType: type, icmpCode: 0, icmpId: id, ttl },
    text: `${where} icmp ${src} > ${dst} type=${type} code=0 id=${id}${extra}`,
  };
}

function deliver(router: MemoryRouter, packet: RandomPacket): void {
  if (packet.fromHost) router.sendFromHost(packet.port, packet.spec);
  else router.send(packet.port, packet.spec);
}

function drain(router: MemoryRouter): void {
  for (const port of PORTS) {
    router.receivedRaw(port);
    router.delivered(port);
  }
}

describe("tracing changes nothing, at random", () => {
  // Shared tables (docs/multi-core.md) too: there the trace holds the lock, and the lock's words
  // and the entries' sequence words (which only move forward) are not state; the rest must come
  // back byte for byte. Fewer rounds: the path is the same but for those.
  it.each([
    ["150 random traces", false, 15],
    ["50 random traces on shared tables", true, 5],
  ])("%s over random traffic on a full table leave the dataplane byte for byte as an untraced twin's", (_, sharable, rounds) => {
    const options = { conntrackCapacity: 24, sharable };
    const traced = MemoryRouter.fromFile("examples/seed.yaml", options);
    const twin = MemoryRouter.fromFile("examples/seed.yaml", options);
    const fingerprint = (router: MemoryRouter): string => digest(router.dataplane, router.dataplane.conntrack.synchronization);
    const traffic = new XorShift32(0x5eed1);
    const traces = new XorShift32(0x7ace5);
    let dropped = 0;
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < 30; i++) {
        const packet = randomPacket(traffic);
        deliver(traced, packet);
        deliver(twin, packet);
      }
      traced.run();
      twin.run();
      drain(traced);
      drain(twin);
      // Time passes: some entries expire, so traces meet dead ones on their lookups.
      const seconds = traffic.next() % 40;
      traced.clock.advance(seconds);
      twin.clock.advance(seconds);
      for (let i = 0; i < 10; i++) {
        const packet = randomPacket(traces);
        const before = fingerprint(traced);
        const result = runTrace(traced.dataplane, packet.text);
        if (result.verdict === "drop") dropped++;
        expect(fingerprint(traced), `after tracing '${packet.text}' in round ${round}`).toBe(before);
      }
    }
    // The table was full and the traffic varied: traces met early drop, clashes and drops.
    expect(traced.dataplane.conntrack.count).toBe(traced.dataplane.conntrack.capacity);
    expect(traced.dataplane.conntrack.counters.earlyDrop).toBeGreaterThan(0);
    expect(dropped).toBeGreaterThan(0);
    expect(fingerprint(traced)).toBe(fingerprint(twin));
  });
});
