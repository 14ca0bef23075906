/**
 * A bug met by one packet is one dropped packet (DropReason.Internal), never a dead router: the
 * NAT stage is made to throw for one crafted packet (a test double around the real one), and
 * the rest of its batch is forwarded as usual.
 */
import { describe, expect, it } from "vitest";
import { DropReason } from "../../src/core/drop-reason.js";
import type { NatStage } from "../../src/dataplane/nat-stage.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
/** The source port of the packet the NAT stage trips over. */
const POISON_PORT = 6666;

/** The seed's router whose POSTROUTING throws for UDP from port 6666; its log lines are kept. */
function routerWithFaultyNat(): { router: MemoryRouter; lines: string[] } {
  const router = MemoryRouter.fromFile("examples/seed.yaml");
  const nat = router.dataplane.nat as NatStage;
  const real = nat.postrouting.bind(nat);
  nat.postrouting = (buf, info, ct, ingress, egress) => {
    if (info.sport === POISON_PORT) throw new TypeError("test double: postrouting failed");
    return real(buf, info, ct, ingress, egress);
  };
  const lines: string[] = [];
  router.dataplane.log = (line) => lines.push(line);
  return { router, lines };
}

function sendUdp(router: MemoryRouter, sport: number): void {
  router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport, dport: 53 });
}

describe("an exception on one packet drops that packet only", () => {
  it("10.0.0.3's other datagrams in the batch still leave as 9.186.100.2; the poisoned one is an internal drop", () => {
    const { router, lines } = routerWithFaultyNat();
    for (const sport of [5000, POISON_PORT, 5001]) sendUdp(router, sport);
    router.run();
    const out = router.received(QG);
    expect(out.map((p) => `${p.src}:${p.sport}`)).toEqual(["9.186.100.2:5000", "9.186.100.2:5001"]);
    expect(router.drops(QR)).toEqual({ internal: 1 });
    expect(router.dataplane.drops[DropReason.Internal]).toBe(1);
    // The unconfirmed entry the poisoned packet created was released: two connections remain.
    expect(router.dataplane.conntrack.count).toBe(2);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`from ${QR} (udp 10.0.0.3:${POISON_PORT} > 203.0.113.10:53), dropped: TypeError: test double: postrouting failed`);
  });

  it("the log says it at most once a second and then counts what it held back", () => {
    const { router, lines } = routerWithFaultyNat();
    sendUdp(router, POISON_PORT);
    router.run();
    sendUdp(router, POISON_PORT);
    router.run();
    expect(lines).toHaveLength(1);
    router.clock.advance(1);
    sendUdp(router, POISON_PORT);
    router.run();
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(/\(1 similar line suppressed\)$/);
    expect(router.drops(QR)).toEqual({ internal: 3 });
    // The router goes on: a healthy datagram after them still crosses.
    sendUdp(router, 5002);
    router.run();
    expect(router.received(QG).map((p) => p.sport)).toEqual([5002]);
  });
});
