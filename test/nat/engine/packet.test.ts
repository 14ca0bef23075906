import { describe, expect, it } from "vitest";
import { XorShift32 } from "../../../src/core/rng.js";
import { DropReason } from "../../../src/core/drop-reason.js";
import { Manip, natRange } from "../../../src/nat/range.js";
import { buildPacket, decodePacket, writeIcmpError, type PacketSpec } from "../../../src/wire/build.js";
import { IPPROTO_TCP, IPPROTO_UDP, PacketInfo } from "../../../src/wire/packet-info.js";
import { parsePacket } from "../../../src/wire/validate.js";
import { connect, ip, makeFixture, ping, snat, type Fixture } from "./setup.js";

const SNAT_ADDR = natRange(ip("9.186.100.2"));
const info = new PacketInfo();

function parsed(bytes: Uint8Array): PacketInfo {
  expect(parsePacket(bytes, 0, bytes.length, info)).toBe(DropReason.None);
  return info;
}

/** Translates `spec` as connection `id`/`dir` at a hook doing `manip`; returns the bytes. */
function translate(f: Fixture, spec: PacketSpec, id: number, dir: number, manip: Manip): Uint8Array {
  const bytes = buildPacket(spec);
  f.nat.natPacket(bytes, parsed(bytes), id, dir, manip);
  return bytes;
}

/** Expected bytes: the same packet built from scratch (every checksum a full recompute). */
function expectPacket(actual: Uint8Array, spec: PacketSpec): void {
  expect(decodePacket(actual)).toEqual(decodePacket(buildPacket(spec)));
  expect(Array.from(actual)).toEqual(Array.from(buildPacket(spec)));
}

const payload = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]);

describe("natPacket (nf_nat_packet / nf_nat_manip_pkt)", () => {
  it("10.0.0.3 reaches the outside as 9.186.100.2 and the reply comes back to 10.0.0.3, remapped port included", () => {
    const f = makeFixture();
    snat(f, IPPROTO_TCP, "10.0.0.2", 40000, "203.0.113.10", 80, SNAT_ADDR);
    const id = snat(f, IPPROTO_TCP, "10.0.0.3", 40000, "203.0.113.10", 80, SNAT_ADDR);
    const port = f.table.replyDport(id);
    const out: PacketSpec = { protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 80, tcpFlags: 2, seq: 99, payload };
    // POSTROUTING (Src) on the original direction
    const leaving = translate(f, out, id, 0, Manip.Src);
    expectPacket(leaving, { ...out, src: "9.186.100.2", sport: port });
    // PREROUTING (Dst) on the original direction: nothing (no DNAT)
    const untouched = translate(f, out, id, 0, Manip.Dst);
    expectPacket(untouched, out);
    // the reply at PREROUTING (Dst): destination back to the tenant
    const reply: PacketSpec = { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.2", sport: 80, dport: port, tcpFlags: 0x12, payload };
    expect(f.table.lookup(IPPROTO_TCP, ip("203.0.113.10"), ip("9.186.100.2"), 80, port)).toBe((id << 1) | 1);
    const back = translate(f, reply, id, 1, Manip.Dst);
    expectPacket(back, { ...reply, dst: "10.0.0.3", dport: 40000 });
    expect(info.dst).toBe(ip("10.0.0.3"));
    expect(info.dport).toBe(40000);
  });

  it("the floating IP: 9.186.100.129:22 in, 10.0.0.2:22 at the tenant, and the reply leaves as 9.186.100.129:22 (UDP, and UDP checksum 0 stays 0)", () => {
    const f = makeFixture();
    const id = connect(f, IPPROTO_UDP, "198.51.100.7", 5555, "9.186.100.129", 22, (c) =>
      f.nat.setupNat(c, Manip.Dst, natRange(ip("10.0.0.2"))) && f.nat.nullBinding(c, Manip.Src),
    );
    for (const noUdpChecksum of [false, true]) {
      const inbound: PacketSpec = { protocol: "udp", src: "198.51.100.7", dst: "9.186.100.129", sport: 5555, dport: 22, payload, noUdpChecksum };
      expectPacket(translate(f, inbound, id, 0, Manip.Dst), { ...inbound, dst: "10.0.0.2" });
      expectPacket(translate(f, inbound, id, 0, Manip.Src), inbound);
      const reply: PacketSpec = { protocol: "udp", src: "10.0.0.2", dst: "198.51.100.7", sport: 22, dport: 5555, payload, noUdpChecksum };
      expectPacket(translate(f, reply, id, 1, Manip.Dst), reply);
      expectPacket(translate(f, reply, id, 1, Manip.Src), { ...reply, src: "9.186.100.129" });
    }
  });

  it("ICMP echo: the identifier is remapped both ways", () => {
    const f = makeFixture();
    ping(f, "10.0.0.2", "203.0.113.10", 7, SNAT_ADDR);
    const id = ping(f, "10.0.0.3", "203.0.113.10", 7, SNAT_ADDR);
    const mapped = f.table.replySport(id);
    const request: PacketSpec = { protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 7, icmpSeq: 1, payload };
    expectPacket(translate(f, request, id, 0, Manip.Src), { ...request, src: "9.186.100.2", icmpId: mapped });
    const reply: PacketSpec = { protocol: "icmp", src: "203.0.113.10", dst: "9.186.100.2", icmpType: 0, icmpId: mapped, icmpSeq: 1, payload };
    expectPacket(translate(f, reply, id, 1, Manip.Dst), { ...reply, dst: "10.0.0.3", icmpId: 7 });
  });

  it("property: translated packets equal freshly built ones (seeded, both directions, TCP/UDP)", () => {
    const rng = new XorShift32(2024);
    const f = makeFixture(8192, 5);
    for (let i = 0; i < 400; i++) {
      const tcp = (rng.next() & 1) === 0;
      const host = `10.0.${rng.next() & 3}.${(rng.next() % 250) + 2}`;
      const sport = (rng.next() % 2000) + (rng.next() & 1 ? 1 : 39000);
      const dst = `203.0.113.${rng.next() % 4}`;
      const dport = tcp ? 443 : 53;
      const id = snat(f, tcp ? IPPROTO_TCP : IPPROTO_UDP, host, sport, dst, dport, SNAT_ADDR);
      if (id < 0) continue;
      const port = f.table.replyDport(id);
      const data = new Uint8Array(rng.next() % 64).map(() => rng.next() & 255);
      const out: PacketSpec = { protocol: tcp ? "tcp" : "udp", src: host, dst, sport, dport, payload: data, id: rng.next() & 0xffff };
      expectPacket(translate(f, out, id, 0, Manip.Src), { ...out, src: "9.186.100.2", sport: port });
      const back: PacketSpec = { protocol: tcp ? "tcp" : "udp", src: dst, dst: "9.186.100.2", sport: dport, dport: port, payload: data };
      expectPacket(translate(f, back, id, 1, Manip.Dst), { ...back, dst: host, dport: sport });
    }
  });

  it("a non-first fragment gets its address translated only", () => {
    const f = makeFixture();
    const id = snat(f, IPPROTO_UDP, "10.0.0.3", 4000, "203.0.113.10", 53, SNAT_ADDR);
    const frag: PacketSpec = { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", fragmentOffset: 1480, id: 77, payload };
    expectPacket(translate(f, frag, id, 0, Manip.Src), { ...frag, src: "9.186.100.2" });
  });
});

/** An ICMP error from `from` to `to` about the packet `about` (the whole packet embedded). */
function icmpError(type: number, code: number, from: string, to: string, about: PacketSpec): Uint8Array {
  const embedded = buildPacket(about);
  const out = new Uint8Array(28 + embedded.length);
  const length = writeIcmpError(out, 0, type, code, 0, ip(from), ip(to), embedded, 0, embedded.length);
  return out.subarray(0, length);
}

describe("natIcmpError (nf_nat_icmp_reply_translation)", () => {
  it("a port-unreachable from the outside about 9.186.100.2:4000 -> 203.0.113.10:53 reaches 10.0.0.3 about 10.0.0.3:4000 -> 203.0.113.10:53", () => {
    const f = makeFixture();
    snat(f, IPPROTO_UDP, "10.0.0.2", 4000, "203.0.113.10", 53, SNAT_ADDR); // make the binding of .3 non-trivial
    const id = snat(f, IPPROTO_UDP, "10.0.0.3", 4000, "203.0.113.10", 53, SNAT_ADDR);
    const port = f.table.replyDport(id);
    const left: PacketSpec = { protocol: "udp", src: "9.186.100.2", dst: "203.0.113.10", sport: port, dport: 53, payload, ttl: 63 };
    for (const [type, code, from] of [
      [3, 3, "203.0.113.10"],
      [11, 0, "198.51.100.1"],
    ] as const) {
      const bytes = icmpError(type, code, from, "9.186.100.2", left);
      const pi = parsed(bytes);
      // conntrack: the inverse of the embedded tuple is the reply tuple -> the error travels in the reply direction
      expect(f.table.lookup(IPPROTO_UDP, pi.innerDst, pi.innerSrc, pi.innerDport, pi.innerSport)).toBe((id << 1) | 1);
      expect(f.nat.natIcmpError(bytes, pi, id, 1, Manip.Dst)).toBe(true); // PREROUTING
      expect(f.nat.natIcmpError(bytes, pi, id, 1, Manip.Src)).toBe(true); // POSTROUTING: nothing more
      const expected = icmpError(type, code, from, "10.0.0.3", { ...left, src: "10.0.0.3", sport: 4000 });
      expect(Array.from(bytes)).toEqual(Array.from(expected));
      const decoded = decodePacket(bytes);
      expect(decoded.dst).toBe("10.0.0.3");
      expect(decoded.inner).toMatchObject({ src: "10.0.0.3", sport: 4000, dst: "203.0.113.10", dport: 53 });
    }
  });

  it("DNAT: 10.0.0.2's port-unreachable about X -> 10.0.0.2:22 leaves as 9.186.100.129 about X -> 9.186.100.129:22", () => {
    const f = makeFixture();
    const id = connect(f, IPPROTO_TCP, "198.51.100.7", 5555, "9.186.100.129", 22, (c) =>
      f.nat.setupNat(c, Manip.Dst, natRange(ip("10.0.0.2"))) && f.nat.nullBinding(c, Manip.Src),
    );
    const delivered: PacketSpec = { protocol: "tcp", src: "198.51.100.7", dst: "10.0.0.2", sport: 5555, dport: 22, tcpFlags: 2, ttl: 62 };
    const bytes = icmpError(3, 3, "10.0.0.2", "198.51.100.7", delivered);
    const pi = parsed(bytes);
    expect(f.table.lookup(IPPROTO_TCP, pi.innerDst, pi.innerSrc, pi.innerDport, pi.innerSport)).toBe((id << 1) | 1);
    expect(f.nat.natIcmpError(bytes, pi, id, 1, Manip.Dst)).toBe(true); // PREROUTING: nothing (no SNAT)
    expect(f.nat.natIcmpError(bytes, pi, id, 1, Manip.Src)).toBe(true); // POSTROUTING
    const expected = icmpError(3, 3, "9.186.100.129", "198.51.100.7", { ...delivered, dst: "9.186.100.129" });
    expect(Array.from(bytes)).toEqual(Array.from(expected));
  });

  it("DNAT: an error from the outside about the reply that left as 9.186.100.129:22 -> X reaches 10.0.0.2 about 10.0.0.2:22 -> X", () => {
    const f = makeFixture();
    const id = connect(f, IPPROTO_TCP, "198.51.100.7", 5555, "9.186.100.129", 22, (c) =>
      f.nat.setupNat(c, Manip.Dst, natRange(ip("10.0.0.2"))) && f.nat.nullBinding(c, Manip.Src),
    );
    const leftAs: PacketSpec = { protocol: "tcp", src: "9.186.100.129", dst: "198.51.100.7", sport: 22, dport: 5555, tcpFlags: 0x12, ttl: 1 };
    const bytes = icmpError(11, 0, "198.51.100.1", "9.186.100.129", leftAs);
    const pi = parsed(bytes);
    expect(f.table.lookup(IPPROTO_TCP, pi.innerDst, pi.innerSrc, pi.innerDport, pi.innerSport)).toBe(id << 1);
    expect(f.nat.natIcmpError(bytes, pi, id, 0, Manip.Dst)).toBe(true);
    expect(f.nat.natIcmpError(bytes, pi, id, 0, Manip.Src)).toBe(true);
    const expected = icmpError(11, 0, "198.51.100.1", "10.0.0.2", { ...leftAs, src: "10.0.0.2" });
    expect(Array.from(bytes)).toEqual(Array.from(expected));
  });

  it("an error about an echo request: the embedded identifier is translated back", () => {
    const f = makeFixture();
    ping(f, "10.0.0.2", "203.0.113.10", 9, SNAT_ADDR);
    const id = ping(f, "10.0.0.3", "203.0.113.10", 9, SNAT_ADDR);
    const mapped = f.table.replySport(id);
    const leftAs: PacketSpec = { protocol: "icmp", src: "9.186.100.2", dst: "203.0.113.10", icmpType: 8, icmpId: mapped, icmpSeq: 3, ttl: 1, payload };
    const bytes = icmpError(11, 0, "198.51.100.1", "9.186.100.2", leftAs);
    const pi = parsed(bytes);
    expect(f.nat.natIcmpError(bytes, pi, id, 1, Manip.Dst)).toBe(true);
    const expected = icmpError(11, 0, "198.51.100.1", "10.0.0.3", { ...leftAs, src: "10.0.0.3", icmpId: 9 });
    expect(Array.from(bytes)).toEqual(Array.from(expected));
  });

  it("an error quoting only 8 bytes of a TCP header: ports translated, embedded checksum left as it is, outer checksum right", () => {
    const f = makeFixture();
    snat(f, IPPROTO_TCP, "10.0.0.2", 4000, "203.0.113.10", 80, SNAT_ADDR);
    const id = snat(f, IPPROTO_TCP, "10.0.0.3", 4000, "203.0.113.10", 80, SNAT_ADDR);
    const port = f.table.replyDport(id);
    const leftAs = buildPacket({ protocol: "tcp", src: "9.186.100.2", dst: "203.0.113.10", sport: port, dport: 80, tcpFlags: 2 });
    const out = new Uint8Array(28 + 28);
    writeIcmpError(out, 0, 3, 1, 0, ip("198.51.100.1"), ip("9.186.100.2"), leftAs, 0, 28);
    const pi = parsed(out);
    expect(pi.innerHasPorts).toBe(true);
    expect(f.nat.natIcmpError(out, pi, id, 1, Manip.Dst)).toBe(true);
    const wanted = buildPacket({ protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4000, dport: 80, tcpFlags: 2 });
    // the quoted TCP checksum is beyond the 8 bytes: keep the original's
    wanted[36] = leftAs[36]!;
    wanted[37] = leftAs[37]!;
    const expected = new Uint8Array(56);
    writeIcmpError(expected, 0, 3, 1, 0, ip("198.51.100.1"), ip("10.0.0.3"), wanted, 0, 28);
    expect(Array.from(out)).toEqual(Array.from(expected));
  });

  it("an ICMP redirect about a NATed connection is refused", () => {
    const f = makeFixture();
    const id = snat(f, IPPROTO_UDP, "10.0.0.3", 4000, "203.0.113.10", 53, SNAT_ADDR);
    const bytes = icmpError(5, 1, "198.51.100.1", "9.186.100.2", { protocol: "udp", src: "9.186.100.2", dst: "203.0.113.10", sport: 4000, dport: 53 });
    expect(f.nat.natIcmpError(bytes, parsed(bytes), id, 1, Manip.Dst)).toBe(false);
  });
});
