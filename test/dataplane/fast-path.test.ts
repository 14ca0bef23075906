import { describe, expect, it } from "vitest";
import { XorShift32 } from "../../src/core/rng.js";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { buildPacket, decodePacket, type DecodedPacket, type PacketSpec } from "../../src/wire/build.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN } from "../../src/wire/packet-info.js";
import { FastPathLiteral } from "../../src/dataplane/fast-path.js";
import { BATCH_LANES_TCP } from "../../src/core/batch-lanes.js";
import { ICMP_ECHO, ICMP_ECHO_REPLY } from "../../src/conntrack/tuple.js";
import { RP_FILTER_OFF, RP_FILTER_STRICT } from "../../src/dataplane/reverse-path.js";
import { LEG_WIRE } from "../../src/dataplane/port.js";
import { TCP_TIMESTAMP_ONLY_WORD } from "../../src/wire/tcp.js";
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

/** Next sequence number per TCP port: ports survive SNAT here, so both directions of a flow agree. */
const nextSeq = new Map<number, number>();

/**
 * Sequence numbers, acknowledgments, windows and options for a TCP packet: mostly the flow's next
 * ones (in window), now and then old, far ahead, a little beyond the window, acknowledging unseen
 * data or an overly delayed ACK; zero windows; window scale and SACK-permitted on SYNs; timestamps
 * and SACK blocks on the rest — so both the fast path's in-window check and the general path's
 * window verdicts (ignore, INVALID) are exercised.
 */
function sequence(rng: XorShift32, spec: PacketSpec): PacketSpec {
  if (spec.protocol !== "tcp") return spec;
  const flags = spec.tcpFlags ?? 0;
  const sport = spec.sport ?? 0;
  const dport = spec.dport ?? 0;
  const own = nextSeq.get(sport) ?? Math.imul(sport, 2654435761) >>> 0;
  const peer = nextSeq.get(dport) ?? Math.imul(dport, 2654435761) >>> 0;
  const length = spec.payload?.length ?? 0;
  const r = rng.next() % 10;
  const seq = (r < 7 ? own : r === 7 ? own - 100_000 : r === 8 ? own + 3_000_000 : own + 70_000) >>> 0;
  if (r < 7) nextSeq.set(sport, (own + length + (flags & TCP_SYN ? 1 : 0) + (flags & TCP_FIN ? 1 : 0)) >>> 0);
  const a = rng.next() % 10;
  const ack = (a < 8 ? peer : a === 8 ? peer + 5000 : peer - 80_000) >>> 0;
  const window = rng.next() % 20 === 0 ? 0 : 256 + (rng.next() % 65280);
  let options: number[] = [];
  const o = rng.next() % 8;
  if (flags & TCP_SYN) {
    if (o < 4) options = [2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, rng.next() % 16];
  } else if (o < 3) {
    options = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
  } else if (o === 3) {
    const left = (ack + 100) >>> 0;
    const right = (ack + (rng.next() & 1 ? 200 : 100_000)) >>> 0;
    options = [1, 1, 5, 10, left >>> 24, (left >>> 16) & 0xff, (left >>> 8) & 0xff, left & 0xff, right >>> 24, (right >>> 16) & 0xff, (right >>> 8) & 0xff, right & 0xff];
  }
  return { ...spec, seq, ack, window, tcpOptions: new Uint8Array(options) };
}

describe("the established fast path changes nothing but speed", () => {
  it("tests the same protocol numbers, TCP flags and options, ICMP types, rp_filter modes and leg as the general path", () => {
    // forward() writes them as literals (FastPathLiteral); a value that drifted from the named
    // constant would make the fast path decline or take the wrong packets.
    expect([FastPathLiteral.Icmp, FastPathLiteral.Tcp, FastPathLiteral.Udp]).toEqual([IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP]);
    expect([FastPathLiteral.TcpAck, FastPathLiteral.TcpPsh, FastPathLiteral.TcpTimestampOnlyWord]).toEqual([TCP_ACK, TCP_PSH, TCP_TIMESTAMP_ONLY_WORD]);
    expect([FastPathLiteral.IcmpEcho, FastPathLiteral.IcmpEchoReply]).toEqual([ICMP_ECHO, ICMP_ECHO_REPLY]);
    expect([FastPathLiteral.RpFilterOff, FastPathLiteral.RpFilterStrict, FastPathLiteral.LegWire]).toEqual([RP_FILTER_OFF, RP_FILTER_STRICT, LEG_WIRE]);
    // the TCP mark of a prefetched bucket head (Tested.PrefetchTcp, not exported) is BatchLanes' slot mark
    expect(BATCH_LANES_TCP).toBe(1 << 30);
  });

  // Also over tables made sharable (docs/multi-core.md): one worker's batches then start without
  // the lock, UDP and ICMP through the lock-free lookup and commit, the rest under the lock.
  it.each([
    ["", false],
    [", the tables shared (the lock-free established path)", true],
  ])("random seed traffic gives byte-identical output, drops and conntrack with and without it%s", (_, sharable) => {
    const fast = MemoryRouter.fromFile("examples/seed.yaml", { sharable });
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
        const bytes = buildPacket(vary(rng, sequence(rng, { ...spec, payload: new Uint8Array(rng.next() % 40) })));
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
    if (sharable) expect(fast.dataplane.lockFreePackets).toBeGreaterThan(50);
    else expect(fast.dataplane.lockFreePackets).toBe(0);
    expect(slow.dataplane.fastPathPackets).toBe(0);
    expect(slow.dataplane.conntrack.counters.tcpOutOfWindow).toBeGreaterThan(0);
    // the prefetch ran the receive batch's kernels (core/batch-lanes.ts): sums, tuples, buckets
    expect(fast.forwarder.rx.lanes).not.toBeNull();
  });

  it("TCP connections after real handshakes: in-window, old, far, overshooting, SACK, zero-window and RST segments agree", () => {
    const fast = MemoryRouter.fromFile("examples/seed.yaml");
    const slow = MemoryRouter.fromFile("examples/seed.yaml");
    slow.dataplane.fastPath = false;
    const rng = new XorShift32(9);
    /** One packet through both routers: same bytes out, same drops; what left, decoded. */
    const exchange = (port: string, spec: PacketSpec): DecodedPacket[] => {
      const bytes = buildPacket(spec);
      fast.send(port, bytes);
      slow.send(port, bytes);
      fast.run();
      slow.run();
      const out: DecodedPacket[] = [];
      for (const name of [QR, QG]) {
        const a = fast.receivedRaw(name).map((p) => Buffer.from(p).toString("hex"));
        expect(a).toEqual(slow.receivedRaw(name).map((p) => Buffer.from(p).toString("hex")));
        out.push(...a.map((hex) => decodePacket(Buffer.from(hex, "hex"))));
        expect(fast.drops(name)).toEqual(slow.drops(name));
      }
      return out;
    };
    const bytesOf = (n: number) => [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
    const flows: { client: string; sport: number; server: string; outside: string; outsidePort: number; c: number; s: number }[] = [];
    for (let i = 0; i < 16; i++) {
      // 10.0.0.x opens a connection to a server on 443, with window scaling or (one in four) without
      const client = TENANTS[i % 3]!;
      const sport = 50000 + i;
      const server = OUTSIDE[i % 3]!;
      const options = new Uint8Array(i % 4 === 0 ? [] : [2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, i % 15]);
      const c = rng.next() >>> 0;
      const s = rng.next() >>> 0;
      const [syn] = exchange(QR, { protocol: "tcp", src: client, dst: server, sport, dport: 443, tcpFlags: TCP_SYN, seq: c, window: 64240, tcpOptions: options });
      const flow = { client, sport, server, outside: syn!.src, outsidePort: syn!.sport!, c: (c + 1) >>> 0, s: (s + 1) >>> 0 };
      exchange(QG, { protocol: "tcp", src: server, dst: flow.outside, sport: 443, dport: flow.outsidePort, tcpFlags: TCP_SYN | TCP_ACK, seq: s, ack: flow.c, window: 65160, tcpOptions: options });
      exchange(QR, { protocol: "tcp", src: client, dst: server, sport, dport: 443, tcpFlags: TCP_ACK, seq: flow.c, ack: flow.s, window: 502 });
      flows.push(flow);
    }
    for (let step = 0; step < 2500; step++) {
      const flow = flows[rng.next() % flows.length]!;
      const fromClient = (rng.next() & 1) === 1;
      const own = fromClient ? flow.c : flow.s;
      const peer = fromClient ? flow.s : flow.c;
      let length = pick(rng, [0, 0, 100, 1000, 1448]);
      let flags = pick(rng, [TCP_ACK, TCP_ACK | TCP_PSH]);
      let seq = own;
      let ack = peer;
      let window = 256 + (rng.next() % 1024);
      const r = rng.next() % 24;
      if (r === 0) seq = own - 100_000; // an old duplicate
      else if (r === 1) seq = own + 3_000_000; // far ahead
      else if (r === 2) seq = own + 70_000; // a little beyond the window
      else if (r === 3) ack = peer + 5000; // acknowledges data never sent
      else if (r === 4) ack = peer - 80_000; // an overly delayed ACK
      else if (r === 5) window = 0;
      else if (r === 6 && rng.next() % 4 === 0) {
        flags = TCP_RST;
        length = 0;
        seq = own + pick(rng, [0, 100, -2000, 3_000_000]);
      }
      if (r > 2 && flags !== TCP_RST) {
        if (fromClient) flow.c = (own + length) >>> 0;
        else flow.s = (own + length) >>> 0;
      }
      const o = rng.next() % 6;
      const options =
        o < 2 ? [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2] : o === 2 ? [1, 1, 5, 10, ...bytesOf((ack - 3000) >>> 0), ...bytesOf((ack - 1000) >>> 0)] : [];
      const segment = { protocol: "tcp" as const, tcpFlags: flags, seq: seq >>> 0, ack: ack >>> 0, window, tcpOptions: new Uint8Array(options), payload: new Uint8Array(length) };
      if (fromClient) exchange(QR, { ...segment, src: flow.client, dst: flow.server, sport: flow.sport, dport: 443 });
      else exchange(QG, { ...segment, src: flow.server, dst: flow.outside, sport: 443, dport: flow.outsidePort });
      if (rng.next() % 50 === 0) {
        fast.clock.advance(20);
        slow.clock.advance(20);
      }
    }
    expect(formatConntrackTable(fast.dataplane.conntrack)).toBe(formatConntrackTable(slow.dataplane.conntrack));
    expect(fast.dataplane.conntrack.counters).toEqual(slow.dataplane.conntrack.counters);
    const counters = slow.dataplane.conntrack.counters;
    expect(counters.tcpOutOfWindow).toBeGreaterThan(20);
    expect(counters.tcpWindowIgnore).toBeGreaterThan(20);
    expect(fast.dataplane.fastPathPackets).toBeGreaterThan(500);
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
