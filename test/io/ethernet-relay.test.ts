/**
 * Two forwarding threads of one router with Ethernet ports (`workers: 2`), in memory: each has its
 * own Ethernet stage and neighbour table, and every ARP packet one of them receives on a wire is
 * passed to the other (control/ethernet-threads.ts), which learns from it by arp_process's rules
 * without answering or counting it again; and each tells the other what its table starts resolving
 * and what an INCOMPLETE entry of it learnt (NeighbourNews). So the two tables behave as Linux's
 * one: the gateway is asked for once, by the thread that first needs it, the other thread's packet
 * waits for that request's reply, and after the reply (whichever thread hears it) both threads send
 * to the gateway without ARP; a request for a router address creates the sender's entry on both,
 * answered once; a gratuitous ARP or an unsolicited reply creates nothing (arp_accept=0) on either;
 * a dead neighbour fails on both after the one thread's three requests; an ARP flood is passed on
 * only up to RELAY_PER_TICK per tick.
 */
import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { ETH_HLEN } from "../../src/core/batch.js";
import { EthCounter, RELAY_PER_TICK, type NeighbourNews } from "../../src/io/ethernet-leg.js";
import { NUD_FAILED, NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE } from "../../src/neigh/table.js";
import { ARPOP_REPLY, ARPOP_REQUEST, arpOperation, arpTargetIp } from "../../src/wire/arp.js";
import { ETH_P_ARP, ETH_P_IP, ethernetType, formatMac, parseMac } from "../../src/wire/ethernet.js";
import { decodePacket } from "../../src/wire/build.js";
import { EthernetRouter, QG_MAC, QR_MAC, arpFrame, ipFrame } from "../support/ethernet-router.js";

const QR = 0;
const QG = 1;
const VM2_MAC = "02:00:0a:00:00:03"; // 10.0.0.3
const GW_MAC = "02:00:09:ba:64:01"; // 9.186.100.1
const BROADCAST = "ff:ff:ff:ff:ff:ff";
const ip = parseIpv4;

interface Threads {
  a: EthernetRouter;
  b: EthernetRouter;
  /** ARP frames each thread passed on. */
  relayed: number[];
  /** Neighbour news each thread told, as "resolving 9.186.100.1" / "resolved 9.186.100.1 REACHABLE". */
  told: string[][];
  /** With `posted`: delivers what each thread posted to the other, in the order posted. */
  deliver(): void;
}

/**
 * Thread A (the main thread) and thread B (a worker), each passing the ARP it receives and its
 * table's news to the other: at once, or (`posted`) into the other's inbox until `deliver`, as
 * postMessage does between two batches.
 */
function twoThreads(posted = false): Threads {
  const a = new EthernetRouter();
  const b = new EthernetRouter();
  const relayed = [0, 0];
  const told: string[][] = [[], []];
  const inbox: (() => void)[][] = [[], []];
  const post = (to: number, learn: () => void): void => {
    if (posted) inbox[to]!.push(learn);
    else learn();
  };
  [a, b].forEach((from, n) => {
    const other = n === 0 ? b : a;
    from.stage.onArpReceived = (port, frame) => {
      relayed[n]!++;
      post(1 - n, () => other.stage.learnRelayed(port, frame));
    };
    from.stage.onNeighbourNews = (news: NeighbourNews) => {
      told[n]!.push(news.kind === "resolving" ? `resolving ${formatIp(news.ip)}` : `resolved ${formatIp(news.ip)} ${news.state === NUD_REACHABLE ? "REACHABLE" : "STALE"}`);
      post(1 - n, () => other.stage.learnNews(news));
    };
  });
  const deliver = (): void => {
    for (const box of inbox) box.splice(0).forEach((learn) => learn());
  };
  return { a, b, relayed, told, deliver };
}

function formatIp(value: number): string {
  return [24, 16, 8, 0].map((shift) => (value >>> shift) & 0xff).join(".");
}

/** 10.0.0.3 known on both threads, so the tenant's packets route without ARP on qr-. */
function tenantKnown(...routers: EthernetRouter[]): void {
  for (const r of routers) r.table.update(QR, ip("10.0.0.3"), parseMac(VM2_MAC), 0, NUD_REACHABLE, true, false);
}

const ping = (seq: number, dst = "203.0.113.10"): Uint8Array =>
  ipFrame(QR_MAC, VM2_MAC, { protocol: "icmp", src: "10.0.0.3", dst, icmpType: 8, icmpId: 9, icmpSeq: seq });

/** The gateway 9.186.100.1 answers 9.186.100.2's request, to qg-'s MAC. */
const gatewayReply = (): Uint8Array =>
  arpFrame(QG_MAC, GW_MAC, ARPOP_REPLY, { mac: GW_MAC, ip: ip("9.186.100.1") }, { mac: QG_MAC, ip: ip("9.186.100.2") });

/** The ARP requests a leg sent, as their target addresses; the IPv4 frames it sent, decoded with their destination MAC. */
function sent(r: EthernetRouter, port: number): { requests: string[]; packets: { mac: string; src: string; dst: string; seq: number | undefined }[] } {
  const frames = r.leg(port).take();
  return {
    requests: frames.filter((f) => ethernetType(f, 0) === ETH_P_ARP && arpOperation(f, ETH_HLEN) === ARPOP_REQUEST).map((f) => formatIp(arpTargetIp(f, ETH_HLEN))),
    packets: frames.filter((f) => ethernetType(f, 0) === ETH_P_IP).map((f) => {
      const p = decodePacket(f.subarray(ETH_HLEN)) as { src: string; dst: string; icmpSeq?: number };
      return { mac: formatMac(f, 0), src: p.src, dst: p.dst, seq: p.icmpSeq };
    }),
  };
}

describe("ARP relayed between the threads of a router with workers", () => {
  it("thread A asks for the gateway 9.186.100.1 once; thread B's ping waits for A's request without one of its own, and leaves through B to the gateway's MAC as 9.186.100.2 when the reply comes to A", () => {
    const { a, b, relayed, told } = twoThreads();
    tenantKnown(a, b);
    a.leg(QR).inject(ping(1));
    a.run();
    expect(told[0]).toEqual(["resolving 9.186.100.1"]);
    b.leg(QR).inject(ping(2));
    b.run();
    // One request on the segment, as from Linux's one INCOMPLETE entry; B's entry waits for it.
    expect(sent(a, QG).requests).toEqual(["9.186.100.1"]);
    expect(sent(b, QG).requests).toEqual([]);
    expect(b.stage.counter(QG, EthCounter.ArpRequestsOut)).toBe(0);
    expect(b.table.state(b.table.lookup(QG, ip("9.186.100.1")))).toBe(NUD_INCOMPLETE);
    expect(b.table.waitsForAnotherThread(b.table.lookup(QG, ip("9.186.100.1")))).toBe(true);
    // B's retransmission timer runs, but the requests are A's: a second and a third from A only.
    a.advance(1.05);
    b.advance(1.05);
    expect(sent(a, QG).requests).toEqual(["9.186.100.1"]);
    expect(sent(b, QG).requests).toEqual([]);
    // The kernel hands the one reply to thread A's queue only.
    a.leg(QG).inject(gatewayReply());
    a.run();
    expect(relayed).toEqual([1, 0]);
    expect(told[0]).toEqual(["resolving 9.186.100.1", "resolved 9.186.100.1 REACHABLE"]);
    expect(sent(a, QG).packets).toEqual([{ mac: GW_MAC, src: "9.186.100.2", dst: "203.0.113.10", seq: 1 }]);
    const fromB = b.leg(QG).take();
    expect(fromB.map((f) => [formatMac(f, 0), formatMac(f, 6), ethernetType(f, 0)])).toEqual([[GW_MAC, QG_MAC, ETH_P_IP]]);
    expect(decodePacket(fromB[0]!.subarray(ETH_HLEN))).toMatchObject({ src: "9.186.100.2", dst: "203.0.113.10", icmpSeq: 2 });
    // A reply to the port's MAC: REACHABLE on both; counted once, by the thread that received it.
    for (const r of [a, b]) expect(r.table.state(r.table.lookup(QG, ip("9.186.100.1")))).toBe(NUD_REACHABLE);
    expect(a.stage.counter(QG, EthCounter.ArpRepliesIn) + b.stage.counter(QG, EthCounter.ArpRepliesIn)).toBe(1);
    expect(a.stage.counter(QG, EthCounter.ArpIn) + b.stage.counter(QG, EthCounter.ArpIn)).toBe(1);
    expect(a.stage.counter(QG, EthCounter.ArpRequestsOut) + b.stage.counter(QG, EthCounter.ArpRequestsOut)).toBe(2);
  });

  for (const heardBy of ["A", "B"] as const) {
    it(`thread A resolves the gateway for a ping and the reply comes to thread ${heardBy}: afterwards B's first ping to the outside leaves at once to the gateway's MAC, no request, nothing queued`, () => {
      const { a, b, told, deliver } = twoThreads(true);
      tenantKnown(a, b);
      a.leg(QR).inject(ping(1));
      a.run();
      expect(sent(a, QG).requests).toEqual(["9.186.100.1"]);
      // The reply may reach B before B has read A's news: the messages wait for B's next batch.
      const hearer = heardBy === "A" ? a : b;
      hearer.leg(QG).inject(gatewayReply());
      hearer.run();
      // Two rounds at most: A learns B's relayed copy and tells its news; B learns it.
      deliver();
      deliver();
      expect(told[0]).toEqual(["resolving 9.186.100.1", "resolved 9.186.100.1 REACHABLE"]);
      expect(sent(a, QG).packets).toEqual([{ mac: GW_MAC, src: "9.186.100.2", dst: "203.0.113.10", seq: 1 }]);
      expect(b.table.state(b.table.lookup(QG, ip("9.186.100.1")))).toBe(NUD_REACHABLE);
      b.leg(QR).inject(ping(2));
      b.run();
      expect(sent(b, QG)).toEqual({ requests: [], packets: [{ mac: GW_MAC, src: "9.186.100.2", dst: "203.0.113.10", seq: 2 }] });
      expect(b.stage.counter(QG, EthCounter.ArpRequestsOut)).toBe(0);
      expect(b.stage.counter(QG, EthCounter.NeighbourHeld)).toBe(0);
      expect(b.table.counters.queued).toBe(0);
      // Counted once, by the thread that heard it.
      expect(a.stage.counter(QG, EthCounter.ArpRepliesIn) + b.stage.counter(QG, EthCounter.ArpRepliesIn)).toBe(1);
    });
  }

  it(`a sweep of 100 new neighbours in one tick: thread A tells ${RELAY_PER_TICK} of them and counts the rest in arp_relay_limited; thread B asks for those itself`, () => {
    const { a, b, told } = twoThreads();
    tenantKnown(a, b);
    const targets = Array.from({ length: 100 }, (_, i) => `9.186.100.${10 + i}`);
    for (const [i, dst] of targets.entries()) a.leg(QR).inject(ping(i, dst));
    for (let batch = 0; batch < 2; batch++) a.run();
    expect(sent(a, QG).requests).toEqual(targets);
    expect(told[0]).toEqual(targets.slice(0, RELAY_PER_TICK).map((dst) => `resolving ${dst}`));
    expect(a.stage.counter(QG, EthCounter.ArpRelayLimited)).toBe(100 - RELAY_PER_TICK);
    // B waits for A's requests for the first 64, and asks for the others itself.
    for (const [i, dst] of targets.entries()) b.leg(QR).inject(ping(i, dst));
    for (let batch = 0; batch < 2; batch++) b.run();
    expect(sent(b, QG).requests).toEqual(targets.slice(RELAY_PER_TICK));
  });

  it("an unsolicited reply from 9.186.100.1 and a gratuitous ARP of 9.186.100.7 create nothing on either thread (arp_accept=0), and tell nothing", () => {
    const { a, b, told } = twoThreads();
    a.leg(QG).inject(gatewayReply());
    a.leg(QG).inject(arpFrame(BROADCAST, "02:00:09:ba:64:07", ARPOP_REQUEST, { mac: "02:00:09:ba:64:07", ip: ip("9.186.100.7") }, { ip: ip("9.186.100.7") }));
    b.leg(QG).inject(arpFrame(BROADCAST, GW_MAC, ARPOP_REPLY, { mac: GW_MAC, ip: ip("9.186.100.1") }, { mac: BROADCAST, ip: ip("9.186.100.1") }));
    a.run();
    b.run();
    for (const r of [a, b]) {
      expect(r.table.lookup(QG, ip("9.186.100.1"))).toBeLessThan(0);
      expect(r.table.lookup(QG, ip("9.186.100.7"))).toBeLessThan(0);
      expect(r.table.size).toBe(0);
    }
    expect(told).toEqual([[], []]);
  });

  it("a dead neighbour 9.186.100.77: thread A's three requests are the only ones; both threads' entries fail and each answers its own queued ping with host unreachable", () => {
    const { a, b } = twoThreads();
    tenantKnown(a, b);
    a.leg(QR).inject(ping(1, "9.186.100.77"));
    a.run();
    b.leg(QR).inject(ping(2, "9.186.100.77"));
    b.run();
    const requests: string[][] = [sent(a, QG).requests, sent(b, QG).requests];
    for (let t = 0; t < 35; t++) {
      a.advance(0.1);
      b.advance(0.1);
      requests[0]!.push(...sent(a, QG).requests);
      requests[1]!.push(...sent(b, QG).requests);
    }
    expect(requests).toEqual([["9.186.100.77", "9.186.100.77", "9.186.100.77"], []]);
    for (const r of [a, b]) expect(r.table.state(r.table.lookup(QG, ip("9.186.100.77")))).toBe(NUD_FAILED);
    // Each thread answers the ping it queued: 9.186.100.2 says host unreachable to 10.0.0.3.
    for (const r of [a, b]) {
      const answers = r.leg(QR).take().map((f) => decodePacket(f.subarray(ETH_HLEN)) as { src: string; dst: string; icmpType?: number; icmpCode?: number });
      expect(answers.map((p) => [p.src, p.dst, p.icmpType, p.icmpCode])).toEqual([["9.186.100.2", "10.0.0.3", 3, 1]]);
      expect(r.stage.counter(QG, EthCounter.HostUnreachableSent)).toBe(1);
    }
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
