/**
 * Two forwarding threads of one router with Ethernet ports (`workers: 2`), in memory: each has its
 * own Ethernet stage and neighbour table, and every ARP packet one of them receives on a wire is
 * passed to the other (control/ethernet-threads.ts), which learns from it by arp_process's rules
 * without answering or counting it again. A reply to one thread's request completes the other's
 * INCOMPLETE entry and its queued packet leaves through that other thread; a request for a router
 * address creates the sender's entry on both, answered once; a gratuitous ARP creates nothing
 * (arp_accept=0) on either; an ARP flood is passed on only up to RELAY_PER_TICK per tick.
 */
import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { ETH_HLEN } from "../../src/core/batch.js";
import { EthCounter, RELAY_PER_TICK } from "../../src/io/ethernet-leg.js";
import { NUD_REACHABLE, NUD_STALE } from "../../src/neigh/table.js";
import { ARPOP_REPLY, ARPOP_REQUEST, arpOperation } from "../../src/wire/arp.js";
import { ETH_P_ARP, ETH_P_IP, ethernetType, formatMac, parseMac } from "../../src/wire/ethernet.js";
import { decodePacket } from "../../src/wire/build.js";
import { EthernetRouter, QG_MAC, QR_MAC, arpFrame, ipFrame } from "../support/ethernet-router.js";

const QR = 0;
const QG = 1;
const VM2_MAC = "02:00:0a:00:00:03"; // 10.0.0.3
const GW_MAC = "02:00:09:ba:64:01"; // 9.186.100.1
const BROADCAST = "ff:ff:ff:ff:ff:ff";
const ip = parseIpv4;

/** Thread A (the main thread) and thread B (a worker), each passing the ARP it receives to the other. */
function twoThreads(): { a: EthernetRouter; b: EthernetRouter; relayed: number[] } {
  const a = new EthernetRouter();
  const b = new EthernetRouter();
  const relayed = [0, 0];
  a.stage.onArpReceived = (port, frame) => {
    relayed[0]!++;
    b.stage.learnRelayed(port, frame);
  };
  b.stage.onArpReceived = (port, frame) => {
    relayed[1]!++;
    a.stage.learnRelayed(port, frame);
  };
  return { a, b, relayed };
}

/** 10.0.0.3 known on both threads, so the tenant's packets route without ARP on qr-. */
function tenantKnown(...routers: EthernetRouter[]): void {
  for (const r of routers) r.table.update(QR, ip("10.0.0.3"), parseMac(VM2_MAC), 0, NUD_REACHABLE, true, false);
}

const ping = (seq: number): Uint8Array =>
  ipFrame(QR_MAC, VM2_MAC, { protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 9, icmpSeq: seq });

describe("ARP relayed between the threads of a router with workers", () => {
  it("the gateway's reply to thread A completes thread B's INCOMPLETE entry too: B's queued ping leaves through B to the gateway's MAC as 9.186.100.2", () => {
    const { a, b, relayed } = twoThreads();
    tenantKnown(a, b);
    a.leg(QR).inject(ping(1));
    b.leg(QR).inject(ping(2));
    a.run();
    b.run();
    // Each thread asked for 9.186.100.1 for its own packet: one request per thread, counted.
    expect(a.stage.counter(QG, EthCounter.ArpRequestsOut)).toBe(1);
    expect(b.stage.counter(QG, EthCounter.ArpRequestsOut)).toBe(1);
    expect(a.leg(QG).take().map((f) => arpOperation(f, ETH_HLEN))).toEqual([ARPOP_REQUEST]);
    expect(b.leg(QG).take().map((f) => arpOperation(f, ETH_HLEN))).toEqual([ARPOP_REQUEST]);
    // The kernel hands the one reply to thread A's queue only.
    a.leg(QG).inject(arpFrame(QG_MAC, GW_MAC, ARPOP_REPLY, { mac: GW_MAC, ip: ip("9.186.100.1") }, { mac: QG_MAC, ip: ip("9.186.100.2") }));
    a.run();
    expect(relayed).toEqual([1, 0]);
    const [fromA] = a.leg(QG).take();
    const [fromB, ...nothingMore] = b.leg(QG).take();
    expect(nothingMore).toEqual([]);
    expect(formatMac(fromA!, 0)).toBe(GW_MAC);
    expect(decodePacket(fromA!.subarray(ETH_HLEN))).toMatchObject({ src: "9.186.100.2", dst: "203.0.113.10", icmpSeq: 1 });
    expect(formatMac(fromB!, 0)).toBe(GW_MAC);
    expect(formatMac(fromB!, 6)).toBe(QG_MAC);
    expect(ethernetType(fromB!, 0)).toBe(ETH_P_IP);
    expect(decodePacket(fromB!.subarray(ETH_HLEN))).toMatchObject({ src: "9.186.100.2", dst: "203.0.113.10", icmpSeq: 2 });
    // A reply to the port's MAC: REACHABLE on both; counted once, by the thread that received it.
    for (const r of [a, b]) expect(r.table.state(r.table.lookup(QG, ip("9.186.100.1")))).toBe(NUD_REACHABLE);
    expect(a.stage.counter(QG, EthCounter.ArpRepliesIn) + b.stage.counter(QG, EthCounter.ArpRepliesIn)).toBe(1);
    expect(a.stage.counter(QG, EthCounter.ArpIn) + b.stage.counter(QG, EthCounter.ArpIn)).toBe(1);
  });

  it("10.0.0.3 asking for 10.0.0.1 on thread B is answered once, by B, and its entry is made on both threads (STALE)", () => {
    const { a, b, relayed } = twoThreads();
    b.leg(QR).inject(arpFrame(BROADCAST, VM2_MAC, ARPOP_REQUEST, { mac: VM2_MAC, ip: ip("10.0.0.3") }, { ip: ip("10.0.0.1") }));
    b.run();
    expect(relayed).toEqual([0, 1]);
    const answers = b.leg(QR).take();
    expect(answers.map((f) => [ethernetType(f, 0), arpOperation(f, ETH_HLEN)])).toEqual([[ETH_P_ARP, ARPOP_REPLY]]);
    expect(a.leg(QR).take()).toEqual([]);
    for (const r of [a, b]) {
      const entry = r.table.lookup(QR, ip("10.0.0.3"));
      expect(r.table.state(entry)).toBe(NUD_STALE);
      expect(formatMac(r.table.macs, entry * 6)).toBe(VM2_MAC);
    }
    expect(b.stage.counter(QR, EthCounter.ArpReplies)).toBe(1);
    expect(a.stage.counter(QR, EthCounter.ArpReplies)).toBe(0);
    expect(a.stage.counter(QR, EthCounter.ArpRequestsIn)).toBe(0);
  });

  it("a gratuitous ARP of an unknown 10.0.0.9 creates nothing on either thread (arp_accept=0); one of the known 10.0.0.3 moves it on both", () => {
    const { a, b } = twoThreads();
    tenantKnown(a, b);
    const moved = "02:00:0a:00:00:33";
    a.leg(QR).inject(arpFrame(BROADCAST, "02:00:0a:00:00:09", ARPOP_REQUEST, { mac: "02:00:0a:00:00:09", ip: ip("10.0.0.9") }, { ip: ip("10.0.0.9") }));
    a.leg(QR).inject(arpFrame(BROADCAST, moved, ARPOP_REQUEST, { mac: moved, ip: ip("10.0.0.3") }, { ip: ip("10.0.0.3") }));
    a.run();
    for (const r of [a, b]) {
      expect(r.table.lookup(QR, ip("10.0.0.9"))).toBeLessThan(0);
      expect(formatMac(r.table.macs, r.table.lookup(QR, ip("10.0.0.3")) * 6)).toBe(moved);
    }
    // Nothing answered: neither is a request for a router address.
    expect(a.leg(QR).take()).toEqual([]);
    expect(b.leg(QR).take()).toEqual([]);
  });

  it(`an ARP flood: thread A passes on ${RELAY_PER_TICK} packets per neighbour tick and counts the rest in arp_relay_limited`, () => {
    const { a, relayed } = twoThreads();
    const flood = RELAY_PER_TICK + 36;
    for (let i = 0; i < flood; i++) {
      a.leg(QR).inject(arpFrame(BROADCAST, VM2_MAC, ARPOP_REQUEST, { mac: VM2_MAC, ip: ip("10.0.0.3") }, { ip: ip(`10.0.0.${100 + (i % 100)}`) }));
    }
    // A batch holds 64 frames, and a batch of ARP only leaves nothing for the pipeline: one run per batch.
    for (let batch = 0; batch < Math.ceil(flood / 64); batch++) a.run();
    expect(relayed[0]).toBe(RELAY_PER_TICK);
    expect(a.stage.counter(QR, EthCounter.ArpRelayLimited)).toBe(36);
    // The next tick gives a new budget.
    a.advance(0.1);
    a.leg(QR).inject(arpFrame(BROADCAST, VM2_MAC, ARPOP_REQUEST, { mac: VM2_MAC, ip: ip("10.0.0.3") }, { ip: ip("10.0.0.1") }));
    a.run();
    expect(relayed[0]).toBe(RELAY_PER_TICK + 1);
  });
});
