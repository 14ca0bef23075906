import { describe, expect, it } from "vitest";
import { XorShift32 } from "../../src/core/rng.js";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { buildPacket, decodePacket, type PacketSpec } from "../../src/wire/build.js";
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

// The router's own addresses and the subnets' broadcasts are among them: the fast path must hand
// those to the general path (its fold pre-filter may not let one through).
const TENANTS = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.1", "10.0.0.255"];
const OUTSIDE = ["9.186.100.1", "203.0.113.10", "198.51.100.7", "200.1.2.3", "127.0.0.1", "224.0.0.5", "9.186.100.255", "255.255.255.255", "9.186.100.129"];
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
    const seenIn: typeof seenOut = [];
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
          // a reply to something that left through the gateway (after SNAT); for a ping, an echo
          // reply with the identifier it left with (or, now and then, another one)
          const o = seenOut[rng.next() % seenOut.length]!;
          port = QG;
          spec =
            o.protocol === "icmp"
              ? { protocol: "icmp", src: o.dst, dst: o.src, icmpType: 0, icmpId: rng.next() % 8 === 0 ? o.sport ^ 1 : o.sport, icmpSeq: rng.next() & 0xffff }
              : { protocol: o.protocol as "udp" | "tcp", src: o.dst, dst: o.src, sport: o.dport, dport: o.sport, tcpFlags };
        } else if (kind === 1 && rng.next() % 3 === 0) {
          // a ping to the floating IP (DNAT) or the SNAT address, or an echo reply nobody asked for
          port = QG;
          spec = { protocol: "icmp", src: pick(rng, OUTSIDE.slice(0, 4)), dst: rng.next() & 1 ? "9.186.100.129" : "9.186.100.2", icmpType: pick(rng, [8, 8, 0]), icmpId: 7 + (rng.next() % 3), icmpSeq: rng.next() & 0xffff };
        } else if (kind === 2 && seenIn.length > 0 && rng.next() % 2 === 0) {
          // 10.0.0.2 answers a ping that reached it through the floating IP
          const o = seenIn[rng.next() % seenIn.length]!;
          spec = { protocol: "icmp", src: o.dst, dst: o.src, icmpType: 0, icmpId: o.sport, icmpSeq: rng.next() & 0xffff };
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
            if (d.protocol === "icmp" && d.icmpType === 8) seenOut.push({ src: d.src, dst: d.dst, sport: d.icmpId!, dport: 0, protocol: "icmp" });
          }
          if (seenOut.length > 64) seenOut.splice(0, seenOut.length - 64);
        } else {
          for (const p of a) {
            const d = decodePacket(p);
            if (d.protocol === "icmp" && d.icmpType === 8) seenIn.push({ src: d.src, dst: d.dst, sport: d.icmpId!, dport: 0, protocol: "icmp" });
          }
          if (seenIn.length > 16) seenIn.splice(0, seenIn.length - 16);
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

  it("pings through SNAT and through the floating IP take it once their connection is confirmed, byte for byte as the general path", () => {
    const fast = MemoryRouter.fromFile("examples/seed.yaml");
    const slow = MemoryRouter.fromFile("examples/seed.yaml");
    slow.dataplane.fastPath = false;
    const both = (port: string, spec: PacketSpec): string[] => {
      const bytes = buildPacket({ ...spec, payload: new Uint8Array(56).fill(0x5a) });
      fast.send(port, bytes);
      slow.send(port, bytes);
      fast.run();
      slow.run();
      const out = (r: MemoryRouter) => [QR, QG].flatMap((name) => r.receivedRaw(name).map((p) => `${name} ${Buffer.from(p).toString("hex")}`));
      const a = out(fast);
      expect(a).toEqual(out(slow));
      expect(a).toHaveLength(1);
      return a;
    };
    const before = fast.dataplane.fastPathPackets;
    for (let seq = 1; seq <= 3; seq++) {
      // 10.0.0.3 pings 203.0.113.10: SNAT to 9.186.100.2; the reply is translated back.
      const request = decodePacket(Buffer.from(both(QR, { protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 4242, icmpSeq: seq })[0]!.split(" ")[1]!, "hex"));
      expect([request.src, request.icmpId]).toEqual(["9.186.100.2", 4242]);
      both(QG, { protocol: "icmp", src: "203.0.113.10", dst: "9.186.100.2", icmpType: 0, icmpId: 4242, icmpSeq: seq });
      // 203.0.113.10 pings the floating IP: DNAT to 10.0.0.2, whose reply leaves as 9.186.100.129.
      both(QG, { protocol: "icmp", src: "203.0.113.10", dst: "9.186.100.129", icmpType: 8, icmpId: 99, icmpSeq: seq });
      const reply = decodePacket(Buffer.from(both(QR, { protocol: "icmp", src: "10.0.0.2", dst: "203.0.113.10", icmpType: 0, icmpId: 99, icmpSeq: seq })[0]!.split(" ")[1]!, "hex"));
      expect([reply.src, reply.dst, reply.icmpId]).toEqual(["9.186.100.129", "203.0.113.10", 99]);
    }
    // The first request of each ping creates its connection (rules, NAT binding): general path.
    // Every later packet, the first replies included, is forwarded by the fast path.
    expect(fast.dataplane.fastPathPackets - before).toBe(12 - 2);
    expect(formatConntrackTable(fast.dataplane.conntrack)).toBe(formatConntrackTable(slow.dataplane.conntrack));
  });

  it("a ping whose identifier the NAT changed is translated both ways by the fast path", () => {
    const fast = MemoryRouter.fromFile("examples/seed.yaml");
    const slow = MemoryRouter.fromFile("examples/seed.yaml");
    slow.dataplane.fastPath = false;
    const out: string[][] = [[], []];
    // 10.0.0.3 and 10.0.0.4 ping the same server with the same identifier: both SNAT to 9.186.100.2,
    // so the second gets another identifier (nf_nat_core's port search over ICMP ids).
    for (const [k, r] of [fast, slow].entries()) {
      for (const src of ["10.0.0.3", "10.0.0.4"]) r.send(QR, { protocol: "icmp", src, dst: "203.0.113.10", icmpType: 8, icmpId: 7, icmpSeq: 1 });
      r.run();
      const ids = r.received(QG).map((p) => p.icmpId!);
      expect(ids[0]).toBe(7);
      expect(ids[1]).not.toBe(7);
      for (let seq = 2; seq < 4; seq++) {
        for (const id of ids) r.send(QG, { protocol: "icmp", src: "203.0.113.10", dst: "9.186.100.2", icmpType: 0, icmpId: id, icmpSeq: seq });
        for (const src of ["10.0.0.3", "10.0.0.4"]) r.send(QR, { protocol: "icmp", src, dst: "203.0.113.10", icmpType: 8, icmpId: 7, icmpSeq: seq });
        r.run();
        out[k]!.push(...[QR, QG].flatMap((name) => r.receivedRaw(name).map((p) => Buffer.from(p).toString("hex"))));
      }
    }
    expect(out[0]).toEqual(out[1]);
    const replies = out[0]!.map((hex) => decodePacket(Buffer.from(hex, "hex"))).filter((p) => p.icmpType === 0);
    expect(replies.map((p) => `${p.dst} ${p.icmpId}`)).toEqual(["10.0.0.3 7", "10.0.0.4 7", "10.0.0.3 7", "10.0.0.4 7"]);
    expect(fast.dataplane.fastPathPackets).toBe(8);
  });

  describe("the route each connection caches", () => {
    /** One UDP packet of an established SNAT flow from 10.0.0.3, on both routers; where it left. */
    function setup() {
      const fast = MemoryRouter.fromFile("examples/seed.yaml");
      const slow = MemoryRouter.fromFile("examples/seed.yaml");
      slow.dataplane.fastPath = false;
      const send = (): string[] => {
        const spec: PacketSpec = { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5353, dport: 53, payload: new Uint8Array(8) };
        const left: string[][] = [];
        for (const r of [fast, slow]) {
          r.send(QR, spec);
          r.run();
          left.push([QR, QG].flatMap((name) => r.receivedRaw(name).map((p) => `${name} ${Buffer.from(p).toString("hex")}`)));
        }
        expect(left[0]).toEqual(left[1]);
        return left[0]!.map((line) => line.split(" ")[0]!);
      };
      const routes = (text: string, remove = false) => {
        for (const r of [fast, slow]) {
          if (remove) r.dataplane.routes.deleteRoute(text);
          else r.dataplane.routes.addRoute(text);
        }
      };
      return { fast, send, routes };
    }

    it("is used while the table is unchanged and dropped when a route changes", () => {
      const { fast, send, routes } = setup();
      send();
      // The first packet confirms the connection; the next two are the fast path's, from the cache.
      expect([send(), send()]).toEqual([[QG], [QG]]);
      const before = fast.dataplane.fastPathPackets;
      // A more specific route sends the server's subnet out of the tenant port: the cache is stale.
      routes(`203.0.113.0/24 dev ${QR}`);
      expect(send()).toEqual([QR]);
      routes(`203.0.113.0/24 dev ${QR}`, true);
      expect(send()).toEqual([QG]);
      expect(fast.dataplane.fastPathPackets - before).toBe(2);
    });

    it("cannot match again after the version's low 16 bits wrap around (65536 changes)", () => {
      const { send, routes } = setup();
      send();
      expect(send()).toEqual([QG]); // cached at version v
      routes(`203.0.113.0/24 dev ${QR}`); // v + 1: the server is now behind the tenant port
      for (let i = 0; i < 32767; i++) {
        routes("198.51.100.0/24 via 9.186.100.1");
        routes("198.51.100.0/24 via 9.186.100.1", true);
      }
      routes("192.0.2.0/24 via 9.186.100.1"); // v + 65536: the same low 16 bits as the cache
      expect(send()).toEqual([QR]);
    });
  });
});
