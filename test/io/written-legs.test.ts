import { describe, expect, it } from "vitest";
import { LEGS_BEYOND_MASK, legBit } from "../../src/io/leg.js";
import { MemoryRouter } from "../support/memory-router.js";

describe("which legs a pump wrote to (the router loop re-reads only those)", () => {
  it("marks the egress leg of what was forwarded, and nothing for a dropped packet", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml");
    const forwarder = router.forwarder;
    router.send("qr-694450d6-f6", { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 1000, dport: 53 });
    forwarder.written = 0;
    forwarder.pump(0); // the tenant port's wire leg
    expect(forwarder.written).toBe(legBit(2)); // out of the gateway port's wire leg
    router.send("qr-694450d6-f6", { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 1001, dport: 53, ttl: 1 });
    forwarder.written = 0;
    forwarder.pump(0);
    // TTL 1: dropped, and the router's ICMP time exceeded goes back out of the tenant wire leg.
    expect(forwarder.written).toBe(legBit(0));
    router.send("qr-694450d6-f6", { protocol: "udp", src: "127.0.0.1", dst: "203.0.113.10", sport: 1002, dport: 53 });
    forwarder.written = 0;
    forwarder.pump(0);
    expect(forwarder.written).toBe(0); // a martian source: dropped, nothing written
  });

  it("gives legs 0-30 a bit each and every higher leg the one 'consider every leg' bit", () => {
    expect(legBit(0)).toBe(1);
    expect(legBit(30)).toBe(1 << 30);
    expect(legBit(31)).toBe(LEGS_BEYOND_MASK);
    expect(legBit(63)).toBe(LEGS_BEYOND_MASK);
    expect(legBit(5) & LEGS_BEYOND_MASK).toBe(0);
  });
});
