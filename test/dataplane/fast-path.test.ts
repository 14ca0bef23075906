import { describe, expect, it } from "vitest";
import { XorShift32 } from "../../src/core/rng.js";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { buildPacket, decodePacket, type PacketSpec } from "../../src/wire/build.js";
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

const TENANTS = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.1"];
const OUTSIDE = ["9.186.100.1", "203.0.113.10", "198.51.100.7", "200.1.2.3", "127.0.0.1", "224.0.0.5"];
const FLAGS = [TCP_SYN, TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK, TCP_RST, TCP_SYN | TCP_ACK, TCP_ACK];

function pick<T>(rng: XorShift32, list: readonly T[]): T {
  return list[rng.next() % list.length]!;
}

/** Random variations the fast path must either handle exactly or hand to the general path. */
function vary(rng: XorShift32, spec: PacketSpec): PacketSpec {
  const r = rng.next() % 20;
  if (r === 0) return { ...spec, ttl: 1 };
  if (r === 1) return { ...spec, options: new Uint8Array([1, 1, 1, 1]) };
  if (r === 2) return { ...spec, df: true, length: 1600 };
  if (r === 3) return { ...spec, mf: true };
  if (r === 4) return { ...spec, protocol: "icmp", icmpType: 8, icmpId: spec.sport };
  return spec;
}

describe("the established fast path changes nothing but speed", () => {
  it("random seed traffic gives byte-identical output, drops and conntrack with and without it", () => {
    const fast = MemoryRouter.fromFile("examples/seed.yaml");
    const slow = MemoryRouter.fromFile("examples/seed.yaml");
    slow.dataplane.fastPath = false;
    const rng = new XorShift32(2024);
    const seenOut: { src: string; dst: string; sport: number; dport: number; protocol: string }[] = [];
    let forwarded = 0;
    for (let round = 0; round < 1500; round++) {
      const burst = 1 + (rng.next() % 8);
      for (let k = 0; k < burst; k++) {
        const protocol = rng.next() & 1 ? "udp" : "tcp";
        const tcpFlags = pick(rng, FLAGS);
        let port = QR;
        let spec: PacketSpec;
        const kind = rng.next() % 4;
        if (kind === 0 && seenOut.length > 0) {
          // a reply to something that left through the gateway (after SNAT)
          const o = seenOut[rng.next() % seenOut.length]!;
          port = QG;
          spec = { protocol: o.protocol as "udp" | "tcp", src: o.dst, dst: o.src, sport: o.dport, dport: o.sport, tcpFlags };
        } else if (kind === 1) {
          // inbound to the floating IP or the SNAT address
          port = QG;
          spec = { protocol, src: pick(rng, OUTSIDE.slice(0, 4)), dst: rng.next() & 1 ? "9.186.100.129" : "9.186.100.2", sport: 1024 + (rng.next() % 4), dport: pick(rng, [80, 22, 9697]), tcpFlags };
        } else {
          spec = { protocol, src: pick(rng, TENANTS), dst: pick(rng, OUTSIDE), sport: 40000 + (rng.next() % 6), dport: pick(rng, [53, 80, 443]), tcpFlags };
        }
        const bytes = buildPacket(vary(rng, { ...spec, payload: new Uint8Array(rng.next() % 40) }));
        fast.send(port, bytes);
        slow.send(port, bytes);
      }
      fast.run();
      slow.run();
      for (const name of [QR, QG]) {
        const a = fast.receivedRaw(name);
        const b = slow.receivedRaw(name);
        expect(a.map((p) => Buffer.from(p).toString("hex"))).toEqual(b.map((p) => Buffer.from(p).toString("hex")));
        forwarded += a.length;
        if (name === QG) {
          for (const p of a) {
            const d = decodePacket(p);
            if (d.protocol === "udp" || d.protocol === "tcp") seenOut.push({ src: d.src, dst: d.dst, sport: d.sport!, dport: d.dport!, protocol: d.protocol });
          }
          if (seenOut.length > 64) seenOut.splice(0, seenOut.length - 64);
        }
        expect(fast.delivered(name).length).toBe(slow.delivered(name).length);
        expect(fast.drops(name)).toEqual(slow.drops(name));
      }
      if (rng.next() % 10 === 0) {
        const step = pick(rng, [1, 3, 31, 200]);
        fast.clock.advance(step);
        slow.clock.advance(step);
      }
    }
    expect(formatConntrackTable(fast.dataplane.conntrack)).toBe(formatConntrackTable(slow.dataplane.conntrack));
    expect(fast.dataplane.conntrack.counters).toEqual(slow.dataplane.conntrack.counters);
    expect(Array.from(fast.dataplane.portCounters)).toEqual(Array.from(slow.dataplane.portCounters));
    expect(forwarded).toBeGreaterThan(2000);
    expect(fast.dataplane.fastPathPackets).toBeGreaterThan(200);
    expect(slow.dataplane.fastPathPackets).toBe(0);
  });
});
