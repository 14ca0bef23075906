/**
 * The pipeline tells, per packet, where it goes on the wire (PacketBatch.nextHops, what an
 * Ethernet port resolves with ARP): the route's gateway, or the destination on a connected route.
 * The fast path (its route cache carries the next hop) and the general path agree.
 */
import { describe, expect, it } from "vitest";
import { formatIpv4 } from "../../src/core/addr.js";
import { PacketBatch } from "../../src/core/batch.js";
import { ManualClock } from "../../src/core/clock.js";
import { XorShift32 } from "../../src/core/rng.js";
import { loadConfig } from "../../src/config/config.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import type { Dataplane } from "../../src/dataplane/pipeline.js";
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";

const QR = 0;
const QG = 1;

function router(fastPath: boolean): Dataplane {
  const dataplane = buildDataplane(loadConfig("examples/seed.yaml"), { clock: new ManualClock(), rng: new XorShift32(3) });
  dataplane.fastPath = fastPath;
  return dataplane;
}

/** Runs one packet from `port`'s `leg`; returns its verdict, next hop and the router's own errors' next hops. */
function send(dataplane: Dataplane, port: number, spec: PacketSpec, leg = 0): { verdict: number; nextHop: string; errors: string[] } {
  const batch = new PacketBatch(4, 2048, 0);
  batch.push(buildPacket(spec));
  const verdicts = new Int32Array(4);
  const generated = new PacketBatch(4, 2048, 0);
  const generatedVerdicts = new Int32Array(4);
  dataplane.processBatch(batch, port, leg, verdicts, generated, generatedVerdicts);
  const errors: string[] = [];
  for (let i = 0; i < generated.count; i++) errors.push(formatIpv4(generated.nextHops[i]!));
  return { verdict: verdicts[0]!, nextHop: formatIpv4(batch.nextHops[0]!), errors };
}

describe("next hops", () => {
  for (const fast of [true, false]) {
    it(`10.0.0.3's packets go to the gateway 9.186.100.1, the replies to 10.0.0.3 itself (${fast ? "with" : "without"} the fast path)`, () => {
      const dataplane = router(fast);
      for (let i = 0; i < 5; i++) {
        const out = send(dataplane, QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4000, dport: 53 });
        expect(out).toMatchObject({ verdict: QG * 2, nextHop: "9.186.100.1" });
        const back = send(dataplane, QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: 4000 });
        expect(back).toMatchObject({ verdict: QR * 2, nextHop: "10.0.0.3" });
      }
      expect(dataplane.fastPathPackets > 0).toBe(fast);
    });

    it(`the floating IP 9.186.100.129 is delivered to 10.0.0.2 on its subnet (${fast ? "with" : "without"} the fast path)`, () => {
      const dataplane = router(fast);
      for (let i = 0; i < 3; i++) {
        const inbound = send(dataplane, QG, { protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.129", icmpType: 8, icmpId: 5, icmpSeq: i });
        expect(inbound).toMatchObject({ verdict: QR * 2, nextHop: "10.0.0.2" });
        const reply = send(dataplane, QR, { protocol: "icmp", src: "10.0.0.2", dst: "9.186.100.1", icmpType: 0, icmpId: 5, icmpSeq: i });
        expect(reply).toMatchObject({ verdict: QG * 2, nextHop: "9.186.100.1" });
      }
    });
  }

  it("the router's own packets (from a mirror) and its ICMP errors carry their next hop too", () => {
    const dataplane = router(true);
    expect(send(dataplane, QG, { protocol: "icmp", src: "9.186.100.2", dst: "203.0.113.10", icmpType: 8, icmpId: 1, icmpSeq: 1 }, 1)).toMatchObject({
      verdict: QG * 2,
      nextHop: "9.186.100.1",
    });
    const expired = send(dataplane, QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4001, dport: 53, ttl: 1 });
    expect(expired.errors).toEqual(["10.0.0.3"]);
  });
});
