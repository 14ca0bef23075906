/**
 * The neighbour table's state machine (Linux net/core/neighbour.c as net/ipv4/arp.c drives it),
 * with a manual clock: 9.186.100.1, the seed's gateway, on port 1 (qg-).
 */
import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { PacketBatch } from "../../src/core/batch.js";
import { ManualClock } from "../../src/core/clock.js";
import { XorShift32 } from "../../src/core/rng.js";
import {
  NEIGH_HELD,
  NUD_DELAY,
  NUD_FAILED,
  NUD_INCOMPLETE,
  NUD_NONE,
  NUD_PROBE,
  NUD_REACHABLE,
  NUD_STALE,
  NeighbourTable,
  nudStateName,
  type NeighbourIo,
  type NeighbourParams,
} from "../../src/neigh/table.js";
import { formatMac, parseMac } from "../../src/wire/ethernet.js";

const GATEWAY = parseIpv4("9.186.100.1");
const PORT = 1;
const GATEWAY_MAC = parseMac("02:00:00:00:01:01");
const OTHER_MAC = parseMac("02:00:00:00:01:02");

/** Records what the table asks of the ports. */
class RecordingIo implements NeighbourIo {
  readonly probes: { target: number; unicast: boolean; at: number; source: number }[] = [];
  readonly sent: { entry: number; mac: string; lengths: number[]; bytes: number[] }[] = [];
  readonly unreachables: number[] = [];
  constructor(
    private readonly table: () => NeighbourTable,
    private readonly clock: ManualClock,
  ) {}
  solicit(_port: number, targetIp: number, unicastMac: boolean, _entry: number, packetSource: number): void {
    this.probes.push({ target: targetIp, unicast: unicastMac, at: this.clock.now(), source: packetSource });
  }
  sendQueued(_port: number, entry: number, pool: PacketBatch, slots: Int32Array, count: number): void {
    const lengths: number[] = [];
    const bytes: number[] = [];
    for (let k = 0; k < count; k++) {
      lengths.push(pool.lengths[slots[k]!]!);
      // The packet's last byte: the test's mark of which packet it is, copied whole.
      bytes.push(pool.data[pool.offsetOf(slots[k]!) + pool.lengths[slots[k]!]! - 1]!);
    }
    this.sent.push({ entry, mac: formatMac(this.table().macs, entry * 6), lengths, bytes });
  }
  unreachable(_port: number, pool: PacketBatch, slot: number): void {
    this.unreachables.push(pool.lengths[slot]!);
  }
}

function setup(params: Partial<NeighbourParams> = {}, options: { capacity?: number; poolSlots?: number; superSlots?: number; superSlotSize?: number } = {}) {
  const clock = new ManualClock();
  const table = new NeighbourTable({ clock, rng: new XorShift32(11), params, headroom: 0, slotSize: 2048, ...options });
  const io = new RecordingIo(() => table, clock);
  table.io = io;
  const batch = new PacketBatch(1, options.superSlotSize ?? 2048, 0);
  /** A packet of `length` bytes routed to `ip`, from `source`, its last byte `mark`. */
  const send = (length = 100, ip = GATEWAY, source = 0, mark = 0): number => {
    batch.lengths[0] = length;
    batch.count = 1;
    new DataView(batch.data.buffer).setUint32(12, source);
    batch.data[length - 1] = mark;
    return table.resolve(PORT, ip, clock.now(), batch, 0);
  };
  /** Runs the timers every 100 ms for `seconds`. */
  const advance = (seconds: number): void => {
    for (let i = 0; i < Math.round(seconds * 10); i++) {
      clock.advance(0.1);
      table.tick();
    }
  };
  const state = (ip = GATEWAY): number => {
    const e = table.lookup(PORT, ip);
    return e < 0 ? NUD_NONE : table.state(e);
  };
  const reply = (mac = GATEWAY_MAC, ip = GATEWAY): boolean => table.update(PORT, ip, mac, 0, NUD_REACHABLE, false, false);
  return { clock, table, io, send, advance, state, reply };
}

describe("the neighbour table resolves 9.186.100.1 as Linux's ARP does", () => {
  it("the first packet is queued, a broadcast request goes at once and two more 1 s apart, then FAILED after 3 s answers the queue with host unreachable", () => {
    const t = setup();
    expect(t.send(100)).toBe(NEIGH_HELD);
    expect(t.send(200)).toBe(NEIGH_HELD);
    expect(t.state()).toBe(NUD_INCOMPLETE);
    expect(t.io.probes.map((p) => p.unicast)).toEqual([false]);
    t.advance(2.05);
    expect(t.io.probes.length).toBe(3);
    expect(t.io.probes.every((p) => !p.unicast && p.target === GATEWAY)).toBe(true);
    expect(t.state()).toBe(NUD_INCOMPLETE);
    expect(t.io.unreachables).toEqual([]);
    t.advance(1);
    expect(t.state()).toBe(NUD_FAILED);
    expect(t.io.probes.length).toBe(3);
    expect(t.io.unreachables).toEqual([100, 200]);
    expect(t.table.counters).toMatchObject({ resFailed: 1, failedDrops: 2, queued: 2, probes: 3 });
    expect(t.table.queuedPackets(t.table.lookup(PORT, GATEWAY))).toBe(0);
  });

  it("a reply while INCOMPLETE makes it REACHABLE and the queued packets leave in order with the learnt MAC", () => {
    const t = setup();
    t.send(100);
    t.send(300);
    t.advance(0.5);
    t.reply();
    expect(t.state()).toBe(NUD_REACHABLE);
    expect(t.io.sent).toMatchObject([{ entry: t.table.lookup(PORT, GATEWAY), mac: "02:00:00:00:01:01", lengths: [100, 300] }]);
    const e = t.send(64);
    expect(e).toBe(t.table.lookup(PORT, GATEWAY));
    expect(formatMac(t.table.macs, e * 6)).toBe("02:00:00:00:01:01");
    t.advance(3);
    expect(t.io.unreachables).toEqual([]);
  });

  it("REACHABLE lasts reachable_time (30 s randomised to 15-45 s), then STALE when unused", () => {
    const t = setup();
    const reachable = t.table.currentReachableTime;
    expect(reachable).toBeGreaterThanOrEqual(15);
    expect(reachable).toBeLessThan(45);
    t.send();
    t.reply();
    t.advance(reachable - 0.2);
    expect(t.state()).toBe(NUD_REACHABLE);
    t.advance(0.4);
    expect(t.state()).toBe(NUD_STALE);
  });

  it("reachable_time is drawn from the injected RNG: two seeds give two times, each within 0.5-1.5x", () => {
    const a = new NeighbourTable({ clock: new ManualClock(), rng: new XorShift32(1) }).currentReachableTime;
    const b = new NeighbourTable({ clock: new ManualClock(), rng: new XorShift32(2) }).currentReachableTime;
    expect(a).not.toBe(b);
    for (const v of [a, b]) expect(v >= 15 && v < 45).toBe(true);
  });

  it("REACHABLE that was used in the last 5 s goes to DELAY when its time is up (neigh_timer_handler)", () => {
    const t = setup();
    t.send();
    t.reply();
    t.advance(t.table.currentReachableTime - 1);
    t.send();
    t.advance(1.2);
    expect(t.state()).toBe(NUD_DELAY);
  });

  it("STALE -> DELAY on a packet (sent at once with the old MAC), DELAY -> PROBE after 5 s: 3 unicast probes 1 s apart, then FAILED", () => {
    const t = setup();
    t.table.update(PORT, GATEWAY, GATEWAY_MAC, 0, NUD_STALE, true, false);
    expect(t.state()).toBe(NUD_STALE);
    expect(t.send()).toBeGreaterThanOrEqual(0);
    expect(t.state()).toBe(NUD_DELAY);
    expect(t.io.probes).toEqual([]);
    t.advance(4.9);
    expect(t.state()).toBe(NUD_DELAY);
    t.advance(0.2);
    expect(t.state()).toBe(NUD_PROBE);
    expect(t.io.probes.map((p) => p.unicast)).toEqual([true]);
    // PROBE still sends with the address it has.
    expect(t.send()).toBeGreaterThanOrEqual(0);
    t.advance(2);
    expect(t.io.probes.map((p) => p.unicast)).toEqual([true, true, true]);
    expect(t.state()).toBe(NUD_PROBE);
    t.advance(1);
    expect(t.state()).toBe(NUD_FAILED);
  });

  it("a reply while PROBE confirms it: REACHABLE again", () => {
    const t = setup();
    t.table.update(PORT, GATEWAY, GATEWAY_MAC, 0, NUD_STALE, true, false);
    t.send();
    t.advance(5.1);
    expect(t.state()).toBe(NUD_PROBE);
    t.reply();
    expect(t.state()).toBe(NUD_REACHABLE);
    t.advance(3);
    expect(t.state()).toBe(NUD_REACHABLE);
  });

  it("a packet to a FAILED neighbour starts resolving it again (INCOMPLETE, a new broadcast probe)", () => {
    const t = setup();
    t.send();
    t.advance(3.1);
    expect(t.state()).toBe(NUD_FAILED);
    const probes = t.io.probes.length;
    expect(t.send()).toBe(NEIGH_HELD);
    expect(t.state()).toBe(NUD_INCOMPLETE);
    expect(t.io.probes.length).toBe(probes + 1);
  });

  it("the queue of an INCOMPLETE neighbour keeps at most unres_qlen_bytes: the oldest packets are dropped and counted", () => {
    const t = setup({ unresQlenBytes: 3 * (1000 + 14) });
    for (const length of [1000, 1000, 1000, 1000, 1000]) t.send(length);
    const e = t.table.lookup(PORT, GATEWAY);
    expect(t.table.queuedPackets(e)).toBe(3);
    expect(t.table.counters.unresDiscards).toBe(2);
    t.send(500);
    expect(t.table.queuedPackets(e)).toBe(3);
    t.reply();
    expect(t.io.sent[0]!.lengths).toEqual([1000, 1000, 500]);
  });

  it("a GSO super-packet (64 KiB) waiting for the neighbour is queued whole, as Linux queues the skb, and leaves in arrival order among the others", () => {
    const t = setup({}, { superSlots: 2, superSlotSize: 65536 });
    t.send(100, GATEWAY, 0, 1);
    t.send(60000, GATEWAY, 0, 2);
    t.send(200, GATEWAY, 0, 3);
    t.send(30000, GATEWAY, 0, 4);
    // A third super-packet finds the super-packet pool taken: dropped, counted.
    t.send(40000, GATEWAY, 0, 5);
    expect(t.table.counters).toMatchObject({ queued: 4, queuedSuper: 2, queuePoolFull: 1 });
    t.reply();
    expect(t.io.sent.map((s) => [s.lengths, s.bytes])).toEqual([
      [[100], [1]],
      [[60000], [2]],
      [[200], [3]],
      [[30000], [4]],
    ]);
    // The slots are free again: two more super-packets for a new neighbour are queued.
    const other = parseIpv4("9.186.100.7");
    t.send(60000, other);
    t.send(60000, other);
    expect(t.table.counters.queuePoolFull).toBe(1);
    expect(t.table.queuedPackets(t.table.lookup(PORT, other))).toBe(2);
  });

  it("without a super-packet pool (a router without offloads has none) a packet larger than a slot is refused and counted", () => {
    const t = setup();
    expect(t.table.superPool.capacity).toBe(0);
    t.send(2100);
    expect(t.table.counters).toMatchObject({ queued: 0, queuePoolFull: 1 });
  });

  it("each probe is told the source of the newest packet waiting (neigh_probe's skb_peek_tail, for arp_announce); none in PROBE", () => {
    const t = setup();
    t.send(100, GATEWAY, parseIpv4("9.186.100.129"));
    t.send(100, GATEWAY, parseIpv4("10.0.0.3"));
    t.advance(1.05);
    expect(t.io.probes.map((p) => p.source)).toEqual([parseIpv4("9.186.100.129"), parseIpv4("10.0.0.3")]);
    t.reply();
    t.advance(60);
    t.send(100);
    t.advance(6.05);
    expect(t.state()).toBe(NUD_PROBE);
    expect(t.io.probes.at(-1)).toMatchObject({ unicast: true, source: 0 });
  });

  it("an empty queue pool refuses the packet and counts it; a full table refuses a new neighbour and counts it", () => {
    const t = setup({}, { poolSlots: 2, capacity: 2 });
    t.send(100);
    t.send(100);
    t.send(100);
    expect(t.table.counters.queuePoolFull).toBe(1);
    expect(t.send(100, parseIpv4("9.186.100.7"))).toBe(NEIGH_HELD);
    expect(t.table.size).toBe(2);
    // Both entries are INCOMPLETE (in a timer): nothing can make room.
    expect(t.send(100, parseIpv4("9.186.100.8"))).toBe(NEIGH_HELD);
    expect(t.table.counters.tableFulls).toBe(1);
    expect(t.table.size).toBe(2);
  });

  it("learning as arp_process: an unknown sender is not created unless asked (arp_accept=0); a different MAC replaces the old only past locktime or for a gratuitous ARP", () => {
    const t = setup();
    t.table.update(PORT, GATEWAY, GATEWAY_MAC, 0, NUD_STALE, false, false);
    expect(t.state()).toBe(NUD_NONE);
    t.table.update(PORT, GATEWAY, GATEWAY_MAC, 0, NUD_STALE, true, false);
    const e = t.table.lookup(PORT, GATEWAY);
    expect(formatMac(t.table.macs, e * 6)).toBe("02:00:00:00:01:01");
    // Within locktime (1 s): another MAC is not believed.
    t.clock.advance(0.5);
    t.table.update(PORT, GATEWAY, OTHER_MAC, 0, NUD_STALE, false, false);
    expect(formatMac(t.table.macs, e * 6)).toBe("02:00:00:00:01:01");
    // A gratuitous ARP overrides at once.
    t.table.update(PORT, GATEWAY, OTHER_MAC, 0, NUD_STALE, false, true);
    expect(formatMac(t.table.macs, e * 6)).toBe("02:00:00:00:01:02");
    // Past locktime, an ordinary update overrides too.
    t.clock.advance(1.5);
    t.table.update(PORT, GATEWAY, GATEWAY_MAC, 0, NUD_STALE, false, false);
    expect(formatMac(t.table.macs, e * 6)).toBe("02:00:00:00:01:01");
  });

  it("a request (STALE) from a REACHABLE neighbour with the same MAC keeps it REACHABLE (neigh_update)", () => {
    const t = setup();
    t.send();
    t.reply();
    t.table.update(PORT, GATEWAY, GATEWAY_MAC, 0, NUD_STALE, true, false);
    expect(t.state()).toBe(NUD_REACHABLE);
  });

  it("FAILED entries are collected above gc_thresh1 entries, in the periodic work", () => {
    const t = setup({ gcThresh1: 1 });
    t.send(100, parseIpv4("9.186.100.7"));
    t.send(100, parseIpv4("9.186.100.8"));
    t.advance(3.1);
    expect(t.table.view().map((r) => r.state)).toEqual(["FAILED", "FAILED"]);
    t.advance(15);
    expect(t.table.size).toBe(0);
    expect(t.table.counters.destroys).toBe(2);
  });

  it("show neigh's view is ip neigh's: address, MAC when known, state", () => {
    const t = setup();
    t.send(100, parseIpv4("9.186.100.7"));
    t.send();
    t.reply();
    expect(t.table.view()).toEqual([
      { dst: "9.186.100.1", port: PORT, lladdr: "02:00:00:00:01:01", state: "REACHABLE", queued: 0 },
      { dst: "9.186.100.7", port: PORT, lladdr: null, state: "INCOMPLETE", queued: 1 },
    ]);
    expect([NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_FAILED].map(nudStateName)).toEqual([
      "INCOMPLETE", "REACHABLE", "STALE", "DELAY", "PROBE", "FAILED",
    ]);
  });
});
