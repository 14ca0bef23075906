/**
 * Addresses of 128.0.0.0 and up on every path of the pipeline: the seed's router renumbered to a
 * 172.16.0.0/24 tenant network behind 198.51.100.2 (floating IP 198.51.100.129), talking to hosts
 * in 203.0.113.0/24. In V8 a uint32 of 2^31 or more is a heap number, allocated whenever it is
 * held in an object field or passed to a call that is not inlined; the pipeline keeps addresses
 * as int32 bits (src/wire/packet-info.ts), so no path allocates per packet however high they are.
 * The seed's own addresses (10.0.0.0/24, 9.186.100.0/24) never showed it.
 */
import { readFileSync } from "node:fs";
import { getHeapSpaceStatistics } from "node:v8";
import { describe, expect, it } from "vitest";
import { formatIpv4 } from "../../src/core/addr.js";
import { ManualClock } from "../../src/core/clock.js";
import { PacketBatch } from "../../src/core/batch.js";
import { XorShift32 } from "../../src/core/rng.js";
import { parseConfig } from "../../src/config/config.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import type { Dataplane } from "../../src/dataplane/pipeline.js";
import { LEG_MIRROR, LEG_WIRE, VERDICT_DROP, VERDICT_STOLEN, egressOf } from "../../src/dataplane/port.js";
import { buildPacket, decodePacket, type PacketSpec } from "../../src/wire/build.js";
import { read32 } from "../../src/wire/bytes.js";
import { fragmentDatagram } from "../support/fragments.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = 0; // qr-694450d6-f6, 172.16.0.1/24
const QG = 1; // qg-e76de35e-90, 198.51.100.2/24 and the floating IP 198.51.100.129
const TO_QR = egressOf(QR, LEG_WIRE);
const TO_QG = egressOf(QG, LEG_WIRE);
const BATCH = 64;

/** examples/seed.yaml with every address moved above 128.0.0.0. */
export function highSeedConfig(): ReturnType<typeof parseConfig> {
  const text = readFileSync("examples/seed.yaml", "utf8").replaceAll("10.0.0.", "172.16.0.").replaceAll("9.186.100.", "198.51.100.");
  return parseConfig(text, "examples/seed.yaml (renumbered)");
}

/** One batch of pre-built packets, replayed as it was built. */
class Replay {
  readonly batch = new PacketBatch(BATCH, 2048);
  readonly verdicts = new Int32Array(BATCH);
  readonly generated = new PacketBatch(BATCH, 2048);
  readonly generatedVerdicts = new Int32Array(BATCH);
  private readonly image: Uint8Array;
  private readonly lengths: Int32Array | Uint16Array | Uint32Array;
  private readonly count: number;

  constructor(
    private readonly dp: Dataplane,
    packets: readonly Uint8Array[],
    private readonly ingress: number,
    private readonly leg = LEG_WIRE,
  ) {
    for (const p of packets) this.batch.push(p);
    this.image = this.batch.data.slice();
    this.lengths = this.batch.lengths.slice();
    this.count = this.batch.count;
  }

  run(): void {
    const batch = this.batch;
    batch.data.set(this.image);
    batch.lengths.set(this.lengths);
    batch.count = this.count;
    this.generated.clear();
    this.dp.processBatch(batch, this.ingress, this.leg, this.verdicts, this.generated, this.generatedVerdicts);
  }

  /** The packet in slot i as it left (after the last run). */
  out(i: number): Uint8Array {
    return this.batch.copyOut(i);
  }
}

function router(): { dp: Dataplane; clock: ManualClock } {
  const clock = new ManualClock();
  return { dp: buildDataplane(highSeedConfig(), { clock, rng: new XorShift32(3) }), clock };
}

/**
 * Bytes the young heap grew by per packet over many rounds of `round` (each `packets` packets),
 * after a warm-up (optimised code must exist first: compiling allocates). Chunks during which a
 * scavenge emptied the young heap (growth < 0) are left out, as in bench/hotpath.ts.
 */
function bytesPerPacket(round: () => void, packets = BATCH): number {
  for (let i = 0; i < 1000; i++) round();
  const newSpace = (): number => getHeapSpaceStatistics().find((s) => s.space_name === "new_space")!.space_used_size;
  let grown = 0;
  let counted = 0;
  for (let chunk = 0; chunk < 40; chunk++) {
    const before = newSpace();
    for (let i = 0; i < 25; i++) round();
    const after = newSpace();
    if (after >= before) {
      grown += after - before;
      counted += 25 * packets;
    }
  }
  expect(counted).toBeGreaterThan(0);
  return grown / counted;
}

// A heap number is 16 bytes: one per packet shows as 16. What remains is the one clock read per
// batch of 64 (about 1.3 bytes a packet).
const LIMIT = 4;

const tenantUdp = (i: number): PacketSpec => ({ protocol: "udp", src: `172.16.0.${3 + (i % 8)}`, dst: `203.0.113.${10 + i}`, sport: 40000 + i, dport: 53, length: 64 });

/** The outside's answer to a packet that left by qg (addresses and ports swapped). */
function replyTo(left: Uint8Array): Uint8Array {
  const p = decodePacket(left);
  return buildPacket({ protocol: "udp", src: p.dst, dst: p.src, sport: p.dport, dport: p.sport, length: 64 });
}

describe("no allocation per packet with addresses of 128.0.0.0 and up", () => {
  it("new connections from 172.16.0.0/24 SNATed to 198.51.100.2 (rules, port choice, conntrack insert)", () => {
    const { dp, clock } = router();
    const replay = new Replay(dp, Array.from({ length: BATCH }, (_, i) => buildPacket(tenantUdp(i))), QR);
    // Each round is past the UDP timeout of the previous one: every packet starts a connection.
    const perPacket = bytesPerPacket(() => {
      clock.advance(200);
      replay.run();
    });
    expect(Array.from(replay.verdicts)).toEqual(new Array(BATCH).fill(TO_QG));
    expect(decodePacket(replay.out(0)).src).toBe("198.51.100.2");
    expect(dp.conntrack.counters.created).toBeGreaterThan(1000 * BATCH);
    expect(perPacket).toBeLessThan(LIMIT);
  });

  it("new TCP connections and pings from the tenants", () => {
    const { dp, clock } = router();
    const syns = Array.from({ length: BATCH / 2 }, (_, i) => buildPacket({ ...tenantUdp(i), protocol: "tcp", dport: 443, tcpFlags: 0x02 }));
    const pings = Array.from({ length: BATCH / 2 }, (_, i) => buildPacket({ protocol: "icmp", src: "172.16.0.3", dst: `203.0.113.${100 + i}`, icmpType: 8, icmpId: 7 + i }));
    const replay = new Replay(dp, [...syns, ...pings], QR);
    const perPacket = bytesPerPacket(() => {
      clock.advance(200_000); // past the SYN_SENT timeout (120 s) as well
      replay.run();
    });
    expect(Array.from(replay.verdicts)).toEqual(new Array(BATCH).fill(TO_QG));
    expect(decodePacket(replay.out(BATCH - 1)).src).toBe("198.51.100.2");
    expect(perPacket).toBeLessThan(LIMIT);
  });

  it("new connections from 203.0.113.0/24 to the floating IP 198.51.100.129, DNATed to 172.16.0.2", () => {
    const { dp, clock } = router();
    const packets = Array.from({ length: BATCH }, (_, i) =>
      buildPacket({ protocol: "udp", src: `203.0.113.${10 + i}`, dst: "198.51.100.129", sport: 30000 + i, dport: 80, length: 64 }),
    );
    const replay = new Replay(dp, packets, QG);
    const perPacket = bytesPerPacket(() => {
      clock.advance(200);
      replay.run();
    });
    expect(Array.from(replay.verdicts)).toEqual(new Array(BATCH).fill(TO_QR));
    expect(decodePacket(replay.out(0)).dst).toBe("172.16.0.2");
    expect(perPacket).toBeLessThan(LIMIT);
  });

  it("new connections no rule NATs (a null binding): 203.0.113.x straight to 172.16.0.3", () => {
    const { dp, clock } = router();
    const packets = Array.from({ length: BATCH }, (_, i) =>
      buildPacket({ protocol: "udp", src: `203.0.113.${10 + i}`, dst: "172.16.0.3", sport: 30000 + i, dport: 80, length: 64 }),
    );
    const replay = new Replay(dp, packets, QG);
    const perPacket = bytesPerPacket(() => {
      clock.advance(200);
      replay.run();
    });
    expect(Array.from(replay.verdicts)).toEqual(new Array(BATCH).fill(TO_QR));
    expect(decodePacket(replay.out(0)).dst).toBe("172.16.0.3");
    expect(perPacket).toBeLessThan(LIMIT);
  });

  for (const fastPath of [true, false]) {
    it(`established flows both ways on the ${fastPath ? "fast" : "general"} path`, () => {
      const { dp } = router();
      dp.fastPath = fastPath;
      const out = new Replay(dp, Array.from({ length: BATCH }, (_, i) => buildPacket(tenantUdp(i))), QR);
      out.run();
      const back = new Replay(dp, Array.from({ length: BATCH }, (_, i) => replyTo(out.out(i))), QG);
      const perPacket = bytesPerPacket(() => {
        out.run();
        back.run();
      }, 2 * BATCH);
      expect(Array.from(out.verdicts)).toEqual(new Array(BATCH).fill(TO_QG));
      expect(Array.from(back.verdicts)).toEqual(new Array(BATCH).fill(TO_QR));
      expect(decodePacket(back.out(5)).dst).toBe("172.16.0.8");
      expect(dp.fastPathPackets > 0).toBe(fastPath);
      expect(perPacket).toBeLessThan(LIMIT);
    });
  }

  it("ICMP errors from the outside about SNATed flows, translated back (RELATED)", () => {
    const { dp } = router();
    const out = new Replay(dp, Array.from({ length: BATCH }, (_, i) => buildPacket(tenantUdp(i))), QR);
    out.run();
    const errors = Array.from({ length: BATCH }, (_, i) =>
      buildPacket({ protocol: "icmp", src: `203.0.113.${10 + i}`, dst: "198.51.100.2", icmpType: 3, icmpCode: 3, payload: out.out(i).subarray(0, 28) }),
    );
    const replay = new Replay(dp, errors, QG);
    const perPacket = bytesPerPacket(() => replay.run());
    expect(Array.from(replay.verdicts)).toEqual(new Array(BATCH).fill(TO_QR));
    const error = decodePacket(replay.out(1));
    // The error and the header it carries (its first 28 bytes) both name 172.16.0.4 again.
    expect([error.dst, formatIpv4(read32(error.payload, 12))]).toEqual(["172.16.0.4", "172.16.0.4"]);
    expect(perPacket).toBeLessThan(LIMIT);
  });

  it("the router's own ICMP errors (time exceeded) to 172.16.0.3", () => {
    const { dp, clock } = router();
    const packets = Array.from({ length: BATCH }, (_, i) => buildPacket({ ...tenantUdp(i), ttl: 1 }));
    const replay = new Replay(dp, packets, QR);
    const perPacket = bytesPerPacket(() => {
      clock.advance(1); // the rate limit lets a few through each round
      replay.run();
    });
    expect(replay.verdicts[0]).toBe(VERDICT_DROP);
    expect(replay.generated.count).toBeGreaterThan(0);
    expect(decodePacket(replay.generated.copyOut(0))).toMatchObject({ src: "172.16.0.1", dst: "172.16.0.3" });
    expect(perPacket).toBeLessThan(LIMIT);
  });

  it("fragmented datagrams from the tenants, in order and with the second fragment first (held, then released)", () => {
    for (const secondFirst of [false, true]) {
      const { dp, clock } = router();
      const pieces: Uint8Array[] = [];
      for (let i = 0; i < BATCH / 2; i++) {
        const [first, second] = fragmentDatagram({ ...tenantUdp(i), length: 200, id: i }, 96);
        pieces.push(...(secondFirst ? [second!, first!] : [first!, second!]));
      }
      const replay = new Replay(dp, pieces, QR);
      const perPacket = bytesPerPacket(() => {
        clock.advance(200);
        replay.run();
      });
      expect(replay.verdicts[0]).toBe(secondFirst ? VERDICT_STOLEN : TO_QG);
      expect(replay.verdicts[1]).toBe(TO_QG);
      expect(decodePacket(replay.out(1)).src).toBe("198.51.100.2");
      // Released fragments run from the dataplane's own batch: the fast path makes a DataView of
      // it and one of the next batch again (fast-path.ts viewOf), two per round, not per packet.
      expect(perPacket).toBeLessThan(secondFirst ? LIMIT + 3 : LIMIT);
    }
  });

  it("packets the router's own host sends from 198.51.100.2 (OUTPUT, POSTROUTING)", () => {
    const { dp, clock } = router();
    const packets = Array.from({ length: BATCH }, (_, i) => buildPacket({ ...tenantUdp(i), src: "198.51.100.2" }));
    const replay = new Replay(dp, packets, QG, LEG_MIRROR);
    const perPacket = bytesPerPacket(() => {
      clock.advance(200);
      replay.run();
    });
    expect(Array.from(replay.verdicts)).toEqual(new Array(BATCH).fill(TO_QG));
    expect(perPacket).toBeLessThan(LIMIT);
  });
});

describe("the renumbered seed behaves as the seed (addresses across the sign boundary)", () => {
  it("172.16.0.3 reaches 203.0.113.10 as 198.51.100.2, and the answer comes back to 172.16.0.3", () => {
    const r = new MemoryRouter(highSeedConfig());
    r.send("qr-694450d6-f6", { protocol: "udp", src: "172.16.0.3", dst: "203.0.113.10", sport: 5000, dport: 53 });
    r.run();
    const [out] = r.received("qg-e76de35e-90");
    expect(out).toMatchObject({ src: "198.51.100.2", dst: "203.0.113.10", dport: 53 });
    r.send("qg-e76de35e-90", { protocol: "udp", src: "203.0.113.10", dst: "198.51.100.2", sport: 53, dport: out!.sport });
    r.run();
    expect(r.received("qr-694450d6-f6")).toMatchObject([{ src: "203.0.113.10", dst: "172.16.0.3", sport: 53, dport: 5000 }]);
  });

  it("172.16.0.2 leaves as its floating IP 198.51.100.129, which 203.0.113.10 reaches it by", () => {
    const r = new MemoryRouter(highSeedConfig());
    r.send("qr-694450d6-f6", { protocol: "tcp", src: "172.16.0.2", dst: "203.0.113.10", sport: 5000, dport: 443, tcpFlags: 0x02 });
    r.send("qg-e76de35e-90", { protocol: "tcp", src: "203.0.113.10", dst: "198.51.100.129", sport: 6000, dport: 22, tcpFlags: 0x02 });
    r.run();
    expect(r.received("qg-e76de35e-90")).toMatchObject([{ src: "198.51.100.129", sport: 5000 }]);
    expect(r.received("qr-694450d6-f6")).toMatchObject([{ src: "203.0.113.10", dst: "172.16.0.2", dport: 22 }]);
  });

  it("ICMP errors go to peers at 128.0.0.1 and 223.255.255.254 at most at the per-peer rate (icmp_ratelimit)", () => {
    // rp_filter off (router-wide and per port): the peers need no route back through the tenant port.
    const config = highSeedConfig();
    const r = new MemoryRouter({ ...config, rpFilter: "off" });
    for (const peer of ["128.0.0.1", "223.255.255.254", "127.255.255.255"]) {
      for (let i = 0; i < 20; i++) r.send("qr-694450d6-f6", { protocol: "udp", src: peer, dst: "203.0.113.10", sport: 5000 + i, dport: 53, ttl: 1 });
    }
    r.run();
    // 127/8 is a martian source; the two others get a burst of 6 (XRLIM_BURST_FACTOR) each and no
    // more: the limiter knows a peer of 2^31 and up again, whatever form its address came in.
    const errors = [...r.received("qr-694450d6-f6"), ...r.received("qg-e76de35e-90")].filter((p) => p.icmpType === 11).map((p) => p.dst);
    expect(errors.filter((d) => d === "128.0.0.1")).toHaveLength(6);
    expect(errors.filter((d) => d === "223.255.255.254")).toHaveLength(6);
    expect(errors).toHaveLength(12);
  });
});
