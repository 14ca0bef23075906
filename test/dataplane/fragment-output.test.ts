/**
 * Fragmentation on output in the pipeline (src/dataplane/fragment-output.ts): on
 * examples/mtu-1450.yaml, a VXLAN tenant port (MTU 1450) beside a 1500 gateway, datagrams
 * without DF that do not fit leave as fragments — DNATed, SNATed, themselves fragments, held and
 * released, from the router's own host — while DF packets still get "fragmentation needed" and
 * GSO super-packets whose segments fit are not cut.
 */
import { readFileSync } from "node:fs";
import { getHeapSpaceStatistics } from "node:v8";
import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { DROP_REASON_COUNT, DropReason } from "../../src/core/drop-reason.js";
import { ManualClock } from "../../src/core/clock.js";
import { PacketBatch, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN } from "../../src/core/batch.js";
import { XorShift32 } from "../../src/core/rng.js";
import { parseConfig } from "../../src/config/config.js";
import { MetricsExporter } from "../../src/control/metrics.js";
import { collectStats, formatStats } from "../../src/control/show.js";
import { formatTrace, runTrace } from "../../src/control/trace.js";
import { FragmentOutput } from "../../src/dataplane/fragment-output.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import { LEG_MIRROR, LEG_WIRE, VERDICT_DROP, VERDICT_FRAGMENTED, egressOf } from "../../src/dataplane/port.js";
import { buildPacket, decodePacket, type PacketSpec } from "../../src/wire/build.js";
import { internetChecksum, pseudoHeaderSum } from "../../src/wire/checksum.js";
import { PacketInfo, TCP_ACK } from "../../src/wire/packet-info.js";
import { parsePacket } from "../../src/wire/validate.js";
import { fragmentDatagram, reassembleFragments } from "../support/fragments.js";
import { MemoryRouter } from "../support/memory-router.js";
import { makeChecksumPartial } from "../fuzz/scenario.js";

const CONFIG = "examples/mtu-1450.yaml";
const QR = "qr-5a6b7c8d-9e";
const QG = "qg-0f1e2d3c-4b";
const OUTSIDE = "198.18.0.1";
const FLOATING = "198.18.0.130";
const VM = "10.1.0.5";

/** Layout of what left a leg: [length, fragment offset, MF]. */
function layout(packets: Uint8Array[]): Array<[number, number, boolean]> {
  return packets.map((p) => {
    const d = decodePacket(p);
    return [p.length, d.fragmentOffset, d.mf];
  });
}

/** The UDP checksum of a whole (reassembled) datagram is right. */
function udpChecksumOk(datagram: Uint8Array): boolean {
  const l4 = datagram.subarray((datagram[0]! & 0x0f) * 4);
  const d = decodePacket(datagram);
  return internetChecksum(l4, 0, l4.length, pseudoHeaderSum(parseIpv4(d.src), parseIpv4(d.dst), 17, l4.length)) === 0;
}

/** A UDP datagram of `length` bytes with a patterned payload. */
function udp(src: string, dst: string, sport: number, dport: number, length: number, extra: Partial<PacketSpec> = {}): PacketSpec {
  const payload = new Uint8Array(length - 28).map((_, i) => (i * 11 + 5) & 0xff);
  return { protocol: "udp", src, dst, sport, dport, payload, id: 0x4242, ...extra };
}

function router(text = readFileSync(CONFIG, "utf8")): MemoryRouter {
  return new MemoryRouter(parseConfig(text, CONFIG));
}

describe("fragmentation on output (examples/mtu-1450.yaml)", () => {
  it("a 1500-byte datagram without DF from the outside to the floating IP reaches 10.1.0.5 as 1444 + 76 bytes, DNATed, id kept", () => {
    const r = router();
    const sent = buildPacket(udp(OUTSIDE, FLOATING, 40000, 7001, 1500));
    r.send(QG, sent);
    r.run();
    const out = r.receivedRaw(QR);
    expect(layout(out)).toEqual([
      [1444, 0, true],
      [76, 1424, false],
    ]);
    expect(out.map((p) => decodePacket(p)).map((d) => [d.src, d.dst, d.id, d.ttl, d.df])).toEqual([
      [OUTSIDE, VM, 0x4242, 63, false],
      [OUTSIDE, VM, 0x4242, 63, false],
    ]);
    // The L4 checksum NAT patched for the whole datagram is right once it is whole again.
    const whole = reassembleFragments(out);
    expect(udpChecksumOk(whole)).toBe(true);
    expect(whole.subarray(28)).toEqual(sent.subarray(28));
    expect(r.drops(QG)).toEqual({});
    expect(r.dataplane.fragmentOutput.counters).toEqual({ datagrams: 1, fragments: 2, failed: 0 });
    // One entry, as for any datagram: the reply finds it.
    r.send(QR, udp(VM, OUTSIDE, 7001, 40000, 100));
    r.run();
    expect(r.received(QG).map((d) => [d.src, d.sport, d.dst, d.dport])).toEqual([[FLOATING, 7001, OUTSIDE, 40000]]);
  });

  it("counts the fragments as sent on the tenant wire, and `show stats` and the metrics say how many datagrams were fragmented", async () => {
    const r = router();
    for (let i = 0; i < 3; i++) r.send(QG, udp(OUTSIDE, FLOATING, 40010 + i, 7001, 1500, { id: 100 + i }));
    r.run();
    expect(r.receivedRaw(QR)).toHaveLength(6);
    const stats = collectStats(r.dataplane);
    const tenant = stats.ports.find((p) => p.name === QR)!;
    expect([tenant.wire.txPackets, tenant.wire.txBytes]).toEqual([6, 3 * (1444 + 76)]);
    expect(formatStats(stats)).toContain("fragmentation: 3 datagrams too big for their egress MTU left as 6 fragments, 0 failed");
    const exposition = await new MetricsExporter({ dataplane: () => r.dataplane, censusMaxAgeMs: 0 }).scrape();
    expect(exposition).toMatch(/^qnat_fragmented_datagrams_total 3$/m);
    expect(exposition).toMatch(/^qnat_fragments_created_total 6$/m);
    expect(exposition).toMatch(/^qnat_fragmentation_failures_total 0$/m);
  });

  it("a DF datagram still gets ICMP fragmentation needed, mtu 1450, and nothing is fragmented", () => {
    const r = router();
    r.send(QG, udp(OUTSIDE, FLOATING, 40020, 7001, 1500, { df: true }));
    r.run();
    expect(r.receivedRaw(QR)).toEqual([]);
    const errors = r.received(QG);
    expect(errors.map((d) => [d.protocol, d.src, d.dst, d.icmpType, d.icmpCode, d.icmpSeq])).toEqual([["icmp", FLOATING, OUTSIDE, 3, 4, 1450]]);
    expect(r.drops(QG)).toEqual({ "fragmentation-needed": 1 });
    expect(r.dataplane.fragmentOutput.counters.datagrams).toBe(0);
  });

  it("SNAT: 192.168.10.12's 1500-byte datagram leaves two-subnets' 1400 gateway as two fragments from 172.16.50.10 (MASQUERADE)", () => {
    const r = MemoryRouter.fromFile("examples/two-subnets.yaml");
    const sent = buildPacket(udp("192.168.10.12", "192.0.2.80", 40030, 7001, 1500));
    r.send("qr-a1b2c3d4-01", sent);
    r.run();
    const out = r.receivedRaw("qg-5e1f0a2b-77");
    expect(layout(out)).toEqual([
      [1396, 0, true],
      [124, 1376, false],
    ]);
    expect(out.map((p) => decodePacket(p).src)).toEqual(["172.16.50.10", "172.16.50.10"]);
    const whole = reassembleFragments(out);
    expect(udpChecksumOk(whole)).toBe(true);
    expect(whole.subarray(28)).toEqual(sent.subarray(28));
  });

  it("a fragment of a datagram too big for the next MTU is cut again: offsets continue from its own, MF kept", () => {
    const r = router();
    // 3000 UDP bytes sent as 1480 + 1480 + 40 (fragments from a 1500 path)
    const fragments = fragmentDatagram(udp(OUTSIDE, FLOATING, 40040, 7001, 3028, { id: 0x7777 }), 1480);
    expect(layout(fragments)).toEqual([
      [1500, 0, true],
      [1500, 1480, true],
      [68, 2960, false],
    ]);
    for (const f of fragments) r.send(QG, f);
    r.run();
    const out = r.receivedRaw(QR);
    // The last fragment fits and leaves with its batch; the pieces follow it (the forwarder
    // writes the fragment output after the batch).
    expect(layout(out)).toEqual([
      [68, 2960, false],
      [1444, 0, true],
      [76, 1424, true],
      [1444, 1480, true],
      [76, 2904, true],
    ]);
    expect(out.every((p) => decodePacket(p).dst === VM)).toBe(true);
    expect(udpChecksumOk(reassembleFragments(out))).toBe(true);
  });

  it("a held fragment released by its first fragment is cut too, with the first fragment's translation", () => {
    const r = router();
    const [first, second, last] = fragmentDatagram(udp(OUTSIDE, FLOATING, 40050, 7001, 3028, { id: 0x7778 }), 1480);
    r.send(QG, last!);
    r.send(QG, second!);
    r.run();
    expect(r.receivedRaw(QR)).toEqual([]);
    r.send(QG, first!);
    r.run();
    const out = r.receivedRaw(QR);
    // the pieces of the first fragment and of the released middle one, then the released last one
    expect(layout(out)).toEqual([
      [1444, 0, true],
      [76, 1424, true],
      [1444, 1480, true],
      [76, 2904, true],
      [68, 2960, false],
    ]);
    expect(out.every((p) => decodePacket(p).dst === VM)).toBe(true);
    expect(udpChecksumOk(reassembleFragments(out))).toBe(true);
  });

  it("the router's own host: 1500 bytes without DF to the floating IP (OUTPUT DNAT) reach 10.1.0.5 as fragments", () => {
    const r = router();
    r.sendFromHost(QG, udp("198.18.0.2", FLOATING, 40060, 7001, 1500));
    r.run();
    const out = r.receivedRaw(QR);
    expect(layout(out)).toEqual([
      [1444, 0, true],
      [76, 1424, false],
    ]);
    expect(out.map((p) => decodePacket(p)).map((d) => [d.src, d.dst, d.ttl])).toEqual([
      ["198.18.0.2", VM, 64],
      ["198.18.0.2", VM, 64],
    ]);
    expect(udpChecksumOk(reassembleFragments(out))).toBe(true);
  });

  it("a partial UDP checksum (the host's checksum offload) is completed before cutting: the fragments leave as plain packets", () => {
    const dp = buildDataplane(parseConfig(readFileSync(CONFIG, "utf8"), CONFIG), { clock: new ManualClock(), rng: new XorShift32(5) });
    const batch = new PacketBatch(4, 2048 + VIRTIO_NET_HDR_LEN, VIRTIO_NET_HDR_LEN);
    const sent = buildPacket(udp("198.18.0.2", FLOATING, 40080, 7001, 1500));
    const full = sent.slice();
    expect(makeChecksumPartial(sent)).toBe(true);
    expect(sent).not.toEqual(full);
    batch.push(sent);
    batch.data[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    const verdicts = new Int32Array(4);
    // from the gateway port's mirror: the router's own host (OUTPUT DNAT to 10.1.0.5)
    dp.processBatch(batch, 1, LEG_MIRROR, verdicts, new PacketBatch(4), new Int32Array(4));
    expect(verdicts[0]).toBe(VERDICT_FRAGMENTED);
    const out = Array.from({ length: dp.fragmentOutput.batch.count }, (_, i) => dp.fragmentOutput.batch.copyOut(i));
    expect(layout(out)).toEqual([
      [1444, 0, true],
      [76, 1424, false],
    ]);
    const whole = reassembleFragments(out);
    expect(udpChecksumOk(whole)).toBe(true);
    expect(whole.subarray(28)).toEqual(full.subarray(28));
    for (let i = 0; i < out.length; i++) {
      const slot = dp.fragmentOutput.batch.slotSize * i;
      expect(dp.fragmentOutput.batch.data.subarray(slot, slot + VIRTIO_NET_HDR_LEN)).toEqual(new Uint8Array(VIRTIO_NET_HDR_LEN));
    }
  });

  it("the fragments of one batch that do not fit the fragment output are dropped whole and counted (fragment-output-full)", () => {
    // MTU 68: a 1500-byte datagram makes 31 fragments; 8 datagrams fill 248 of the 256 slots.
    const r = router(readFileSync(CONFIG, "utf8").replace("mtu: 1450", "mtu: 68"));
    for (let i = 0; i < 12; i++) r.send(QG, udp(OUTSIDE, FLOATING, 40100 + i, 7001, 1500, { id: 200 + i }));
    r.run();
    const out = r.receivedRaw(QR);
    expect(out).toHaveLength(8 * 31);
    expect(new Set(out.map((p) => decodePacket(p).id)).size).toBe(8);
    expect(r.drops(QG)).toEqual({ "fragment-output-full": 4 });
    expect(r.dataplane.fragmentOutput.counters).toEqual({ datagrams: 8, fragments: 248, failed: 4 });
    // The next batch has room again.
    r.send(QG, udp(OUTSIDE, FLOATING, 40200, 7001, 1500, { id: 300 }));
    r.run();
    expect(r.receivedRaw(QR)).toHaveLength(31);
  });

  it("qnat trace shows the cut: the packet leaves DNATed, as fragments of at most 1450 bytes, id kept", () => {
    const result = runTrace(router().dataplane, `${QG} udp ${OUTSIDE}:40070 > ${FLOATING}:7001 len=1500`);
    expect(result.verdict).toBe("forward");
    expect(result.out).toEqual({ port: QR, packet: `udp ${OUTSIDE}:40070 > ${VM}:7001` });
    const steps = formatTrace(result);
    expect(steps).toContain(`1500 bytes do not fit mtu 1450 of ${QR}`);
    expect(steps).toMatch(new RegExp(`1500 bytes leave ${QR} as 2 fragments of at most 1450 bytes, id \\d+ kept \\(ip_do_fragment\\)`));
  });

  it("FragmentOutput refuses a datagram whose fragments do not all fit, leaving the batch as it was", () => {
    const output = new FragmentOutput(1500, 16);
    const datagram = buildPacket(udp(OUTSIDE, VM, 1, 2, 1500));
    const info = parsed(datagram);
    expect(output.fragment(datagram, 0, info, 576, 4)).toBe(3);
    // 16 slots: 3 used, 13 left; 68-byte fragments need 31
    expect(output.fragment(datagram, 0, info, 68, 4)).toBe(0);
    expect(output.batch.count).toBe(3);
    expect(output.counters).toEqual({ datagrams: 1, fragments: 3, failed: 1 });
    expect(Array.from(output.verdicts.subarray(0, 3))).toEqual([4, 4, 4]);
  });
});

/** The packet parsed as the pipeline parses it. */
function parsed(packet: Uint8Array): PacketInfo {
  const info = new PacketInfo();
  expect(parsePacket(packet, 0, packet.length, info)).toBe(0);
  return info;
}

describe("GSO super-packets are segmented, not fragmented", () => {
  /** One TCP super-packet from outside to the floating IP in a batch with virtio_net_hdr room. */
  function superPacket(gsoSize: number, df: boolean): { verdict: number; fragmented: number; dropped: (reason: DropReason) => number } {
    const dp = buildDataplane(parseConfig(readFileSync(CONFIG, "utf8"), CONFIG), { clock: new ManualClock(), rng: new XorShift32(7) });
    const batch = new PacketBatch(4, 16384, VIRTIO_NET_HDR_LEN);
    const payload = new Uint8Array(3 * gsoSize).fill(0x5a);
    expect(batch.push(buildPacket({ protocol: "tcp", src: OUTSIDE, dst: FLOATING, sport: 40300, dport: 7002, tcpFlags: TCP_ACK, seq: 1, ack: 1, df, payload }))).toBe(true);
    batch.data[1] = VIRTIO_NET_HDR_GSO_TCPV4;
    batch.data[4] = gsoSize & 0xff;
    batch.data[5] = gsoSize >>> 8;
    const verdicts = new Int32Array(4);
    dp.processBatch(batch, 1, LEG_WIRE, verdicts, new PacketBatch(4), new Int32Array(4));
    // the gateway port (index 1) is where the packet came in
    return { verdict: verdicts[0]!, fragmented: dp.fragmentOutput.batch.count, dropped: (reason) => dp.drops[1 * DROP_REASON_COUNT + reason]! };
  }

  it("a super-packet without DF whose 1410-byte segments fit MTU 1450 leaves whole", () => {
    const { verdict, fragmented } = superPacket(1410, false);
    expect(verdict).toBe(egressOf(0, LEG_WIRE));
    expect(fragmented).toBe(0);
  });

  it("one whose segments do not fit is dropped as gso-too-big-no-df without DF, and refused with ICMP with DF", () => {
    const noDf = superPacket(1448, false);
    expect([noDf.verdict, noDf.fragmented, noDf.dropped(DropReason.GsoTooBigNoDf)]).toEqual([VERDICT_DROP, 0, 1]);
    const withDf = superPacket(1448, true);
    expect([withDf.verdict, withDf.fragmented, withDf.dropped(DropReason.FragmentationNeeded)]).toEqual([VERDICT_DROP, 0, 1]);
  });
});

describe("no allocation per fragmented packet", () => {
  it("64-packet batches of 1500-byte datagrams fragmented for MTU 1450 grow the young heap by far less than one heap number a packet", () => {
    // The seed's router with its tenant port at MTU 1450. (Its addresses are below 128.0.0.0: the
    // general path boxes addresses above that as heap numbers, fragmenting or not.)
    const text = readFileSync("examples/seed.yaml", "utf8").replace("mtu: 1500", "mtu: 1450");
    const dp = buildDataplane(parseConfig(text, "examples/seed.yaml"), { clock: new ManualClock(), rng: new XorShift32(3) });
    const batch = new PacketBatch(64, 2048);
    for (let i = 0; i < 64; i++) batch.push(buildPacket(udp("9.186.100.1", "9.186.100.129", 41000 + (i % 8), 7001, 1500, { id: i })));
    const image = batch.data.slice();
    const lengths = batch.lengths.slice();
    const verdicts = new Int32Array(64);
    const generated = new PacketBatch(64);
    const generatedVerdicts = new Int32Array(64);
    const round = (): void => {
      batch.data.set(image);
      batch.lengths.set(lengths);
      batch.count = 64;
      generated.clear();
      dp.processBatch(batch, 1, LEG_WIRE, verdicts, generated, generatedVerdicts);
    };
    // Warm up: optimised code must exist before measuring (compiling allocates).
    for (let i = 0; i < 1000; i++) round();
    expect(verdicts.every((v) => v === VERDICT_FRAGMENTED)).toBe(true);
    expect(dp.fragmentOutput.batch.count).toBe(128);
    expect(decodePacket(dp.fragmentOutput.batch.copyOut(0)).dst).toBe("10.0.0.2");
    const newSpace = (): number => getHeapSpaceStatistics().find((s) => s.space_name === "new_space")!.space_used_size;
    // Chunks of rounds (bench/hotpath.ts does the same): a chunk during which a scavenge emptied
    // the young heap (growth < 0) is left out. What remains is the one clock read per batch.
    let grown = 0;
    let packets = 0;
    for (let chunk = 0; chunk < 60; chunk++) {
      const before = newSpace();
      for (let i = 0; i < 25; i++) round();
      const after = newSpace();
      if (after >= before) {
        grown += after - before;
        packets += 25 * 64;
      }
    }
    expect(packets).toBeGreaterThan(0);
    // A heap number is 12-16 bytes: one per packet would show as at least 12.
    expect(grown / packets).toBeLessThan(4);
  });
});
