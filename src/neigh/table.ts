/**
 * The neighbour table of qnat's Ethernet ports: IPv4 next hop -> Ethernet address, with the state
 * machine of Linux net/core/neighbour.c as net/ipv4/arp.c drives it. Time and randomness are
 * injected (a Clock, an Rng); every table and queue is bounded and every refusal is counted.
 *
 * States (include/uapi/linux/neighbour.h NUD_*, same values):
 *   NONE -> INCOMPLETE on the first packet (__neigh_event_send): the packet is queued and a
 *     broadcast request sent at once, then every retrans_time (1 s), mcast_solicit (3) in all;
 *   INCOMPLETE -> FAILED when they go unanswered (neigh_timer_handler, neigh_max_probes): each
 *     queued packet is answered with ICMP host unreachable (neigh_invalidate -> arp_error_report);
 *   INCOMPLETE -> REACHABLE on a reply, -> STALE on a request from it (neigh_update): the queue
 *     leaves with the learnt address;
 *   REACHABLE -> STALE after reachable_time (base_reachable_time 30 s randomised to 0.5-1.5x,
 *     neigh_rand_reach_time, redrawn every 300 s), or -> DELAY if used in the last
 *     delay_first_probe_time (neigh_timer_handler);
 *   STALE -> DELAY when a packet is sent to it (__neigh_event_send), the packet goes out;
 *   DELAY -> PROBE after delay_first_probe_time (5 s) without confirmation; PROBE sends
 *     ucast_solicit (3) unicast requests 1 s apart, then FAILED; a reply makes it REACHABLE.
 *   FAILED: a new packet starts INCOMPLETE again (__neigh_event_send).
 * qnat has no upper-layer confirmation (Linux's comes from local TCP sockets, which a forwarding
 * router does not have either): only ARP confirms.
 *
 * Queue while INCOMPLETE: the packets (with the slot's headroom: the virtio_net_hdr of an
 * offloading router) are copied into a pool of slots allocated once; per neighbour at most
 * unres_qlen_bytes (Linux's default SK_WMEM_MAX, 212992, counted here as frame bytes), the oldest
 * dropped first on overflow (__neigh_event_send, unres_discards); when the pool is empty the new
 * packet is dropped and counted. Linux queues a GSO super-packet whole (the skb as it is), so an
 * offloading router has a second, small pool of slots as large as its batch slots (`superSlots`
 * of `superSlotSize`) for them; one queue links slots of both pools, in arrival order.
 *
 * The per-packet entry point (`resolve`) allocates nothing: a hash of typed arrays, the entry's
 * Ethernet address read from `macs`.
 */
import type { Clock } from "../core/clock.js";
import type { Rng } from "../core/rng.js";
import { PacketBatch } from "../core/batch.js";
import { formatIpv4 } from "../core/addr.js";
import { formatMac } from "../wire/ethernet.js";

/** include/uapi/linux/neighbour.h */
export const NUD_NONE = 0x00;
export const NUD_INCOMPLETE = 0x01;
export const NUD_REACHABLE = 0x02;
export const NUD_STALE = 0x04;
export const NUD_DELAY = 0x08;
export const NUD_PROBE = 0x10;
export const NUD_FAILED = 0x20;
/** NUD_VALID without PERMANENT/NOARP (qnat has neither): the entry has an address. */
const NUD_VALID = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE;
/** States with a running timer (NUD_IN_TIMER). */
const NUD_IN_TIMER = NUD_INCOMPLETE | NUD_REACHABLE | NUD_DELAY | NUD_PROBE;

export function nudStateName(state: number): string {
  switch (state) {
    case NUD_INCOMPLETE: return "INCOMPLETE";
    case NUD_REACHABLE: return "REACHABLE";
    case NUD_STALE: return "STALE";
    case NUD_DELAY: return "DELAY";
    case NUD_PROBE: return "PROBE";
    case NUD_FAILED: return "FAILED";
    default: return "NONE";
  }
}

/** Linux's defaults for ARP (net/ipv4/arp.c arp_tbl.parms; Documentation/networking/ip-sysctl.rst). */
export interface NeighbourParams {
  /** base_reachable_time_ms: 30 s. */
  readonly baseReachableTime: number;
  /** retrans_time_ms: 1 s between probes. */
  readonly retransTime: number;
  /** delay_first_probe_time: 5 s. */
  readonly delayFirstProbeTime: number;
  /** ucast_solicit: 3 unicast probes in PROBE. */
  readonly ucastSolicit: number;
  /** mcast_solicit: 3 broadcast probes in INCOMPLETE. */
  readonly mcastSolicit: number;
  /** unres_qlen_bytes: bytes queued per unresolved neighbour (SK_WMEM_MAX). */
  readonly unresQlenBytes: number;
  /** locktime: an address is not replaced within 1 s of its last update (arp_process). */
  readonly locktime: number;
  /** gc_staletime: unused entries older than this may be collected (60 s). */
  readonly gcStaletime: number;
  /** gc_thresh1: below this many entries nothing is collected (128). */
  readonly gcThresh1: number;
}

export const LINUX_ARP_PARAMS: NeighbourParams = {
  baseReachableTime: 30,
  retransTime: 1,
  delayFirstProbeTime: 5,
  ucastSolicit: 3,
  mcastSolicit: 3,
  unresQlenBytes: 212_992,
  locktime: 1,
  gcStaletime: 60,
  gcThresh1: 128,
};

/** What the table asks of the ports (the Ethernet stage, io/ethernet-stage.ts). */
export interface NeighbourIo {
  /**
   * Sends an ARP request for `targetIp` out of `port`: broadcast, or (`unicastMac`) to the
   * address at `macs[entry * 6]` of the table. `packetSource`: the source address of the newest
   * packet waiting for the entry, 0 if none (neigh_probe's skb_peek_tail, which arp_solicit's
   * arp_announce looks at).
   */
  solicit(port: number, targetIp: number, unicastMac: boolean, entry: number, packetSource: number): void;
  /** Packets queued for `entry` can go now: `pool` slots `slots[0..count)` to `entry`'s address. */
  sendQueued(port: number, entry: number, pool: PacketBatch, slots: Int32Array, count: number): void;
  /** The neighbour failed: the queued packet at `pool` slot `slot` is answered with host unreachable. */
  unreachable(port: number, pool: PacketBatch, slot: number): void;
  /**
   * `targetIp` on `port` went INCOMPLETE for a packet of this table and its first request was just
   * sent (`workers: N`: the other threads' tables are told, `learnResolving`, so they wait for
   * this request's reply instead of sending their own). Optional: one table needs no telling.
   */
  resolving?(port: number, targetIp: number): void;
}

/** Counters (Linux /proc/net/stat/arp_cache and ip -s neigh where they exist). */
export class NeighbourCounters {
  /** Entries created (allocs). */
  allocs = 0;
  /** Entries removed by garbage collection. */
  destroys = 0;
  /** A new entry was refused: the table is full of entries in use (table_fulls). */
  tableFulls = 0;
  /** Packets queued while a neighbour was INCOMPLETE. */
  queued = 0;
  /** Of those, GSO super-packets (queued whole, in the super-packet pool). */
  queuedSuper = 0;
  /** Queued packets dropped for a newer one, over unres_qlen_bytes (unres_discards). */
  unresDiscards = 0;
  /** Packets not queued: the queue pool was empty, or the packet fits no pool slot (a super-packet on a router without offloads' pool). */
  queuePoolFull = 0;
  /** Packets dropped because their neighbour failed (each answered with host unreachable if due). */
  failedDrops = 0;
  /** Resolutions that failed (res_failed). */
  resFailed = 0;
  /** ARP requests sent as probes. */
  probes = 0;
}

export interface NeighbourTableOptions {
  readonly clock: Clock;
  readonly rng: Rng;
  /** Entries at most (gc_thresh3, 1024). */
  readonly capacity?: number;
  /** Slots of the queue pool shared by all INCOMPLETE neighbours. */
  readonly poolSlots?: number;
  /** The pool's slot size and headroom: the router's batch geometry (core/batch.ts). */
  readonly slotSize?: number;
  readonly headroom?: number;
  /** Slots for GSO super-packets (default 8 when `superSlotSize` is given, else none). */
  readonly superSlots?: number;
  /** Their size: the router's batch slot size when offloads are on (io/tun.ts GSO_SLOT_SIZE). */
  readonly superSlotSize?: number;
  readonly params?: Partial<NeighbourParams>;
}

/** One row of `qnat show neigh` (control plane). */
export interface NeighbourView {
  readonly dst: string;
  readonly port: number;
  readonly lladdr: string | null;
  readonly state: string;
  readonly queued: number;
}

/** resolve(): the packet was queued (or dropped) and must not be written now. */
export const NEIGH_HELD = -1;

const NO_TIMER = 0;

export class NeighbourTable {
  readonly params: NeighbourParams;
  readonly counters = new NeighbourCounters();
  readonly capacity: number;
  /** Ethernet address of entry e at macs[e * 6 .. + 6]. */
  readonly macs: Uint8Array;
  /** The queue pool (core/batch.ts geometry); its slots are queue slots 0..pool.capacity-1. */
  readonly pool: PacketBatch;
  /** The super-packet pool, queue slots pool.capacity.. (empty without offloads). */
  readonly superPool: PacketBatch;
  io: NeighbourIo | null = null;

  private readonly clock: Clock;
  private readonly rng: Rng;
  private readonly portOf: Int32Array;
  private readonly ipOf: Int32Array;
  private readonly stateOf: Uint8Array;
  private readonly probesOf: Uint8Array;
  /** 1: INCOMPLETE for another thread's request (`learnResolving`): this table sends no probe of its own. */
  private readonly remoteOf: Uint8Array;
  private readonly timerAt: Float64Array;
  private readonly confirmedAt: Float64Array;
  private readonly updatedAt: Float64Array;
  private readonly usedAt: Float64Array;
  private readonly queueHead: Int32Array;
  private readonly queueTail: Int32Array;
  private readonly queueBytes: Int32Array;
  private readonly queueCount: Int32Array;
  private readonly buckets: Int32Array;
  private readonly chain: Int32Array;
  private readonly bucketMask: number;
  private readonly poolNext: Int32Array;
  private poolFree = -1;
  private superFree = -1;
  private freeEntry = -1;
  private count = 0;
  /** reachable_time: base_reachable_time randomised, redrawn every 300 s (neigh_periodic_work). */
  private reachableTime: number;
  private lastRandom: number;
  private lastGc: number;
  private readonly flushSlots: Int32Array;

  constructor(options: NeighbourTableOptions) {
    this.clock = options.clock;
    this.rng = options.rng;
    this.params = { ...LINUX_ARP_PARAMS, ...options.params };
    const capacity = (this.capacity = options.capacity ?? 1024);
    this.macs = new Uint8Array(capacity * 6);
    this.portOf = new Int32Array(capacity);
    this.ipOf = new Int32Array(capacity);
    this.stateOf = new Uint8Array(capacity);
    this.probesOf = new Uint8Array(capacity);
    this.remoteOf = new Uint8Array(capacity);
    this.timerAt = new Float64Array(capacity);
    this.confirmedAt = new Float64Array(capacity);
    this.updatedAt = new Float64Array(capacity);
    this.usedAt = new Float64Array(capacity);
    this.queueHead = new Int32Array(capacity).fill(-1);
    this.queueTail = new Int32Array(capacity).fill(-1);
    this.queueBytes = new Int32Array(capacity);
    this.queueCount = new Int32Array(capacity);
    let buckets = 16;
    while (buckets < capacity * 2) buckets <<= 1;
    this.buckets = new Int32Array(buckets).fill(-1);
    this.bucketMask = buckets - 1;
    this.chain = new Int32Array(capacity).fill(-1);
    // Free entries as a list through `chain`.
    for (let e = capacity - 1; e >= 0; e--) {
      this.chain[e] = this.freeEntry;
      this.freeEntry = e;
    }
    const poolSlots = options.poolSlots ?? 256;
    this.pool = new PacketBatch(poolSlots, options.slotSize ?? 2048, options.headroom ?? 0);
    this.pool.count = poolSlots;
    const superSlots = options.superSlotSize === undefined ? 0 : (options.superSlots ?? 8);
    this.superPool = new PacketBatch(superSlots, options.superSlotSize ?? (options.headroom ?? 0) + 1, options.headroom ?? 0);
    this.superPool.count = superSlots;
    this.poolNext = new Int32Array(poolSlots + superSlots);
    for (let s = poolSlots - 1; s >= 0; s--) {
      this.poolNext[s] = this.poolFree;
      this.poolFree = s;
    }
    for (let s = poolSlots + superSlots - 1; s >= poolSlots; s--) {
      this.poolNext[s] = this.superFree;
      this.superFree = s;
    }
    this.flushSlots = new Int32Array(Math.max(poolSlots, superSlots));
    const now = this.clock.now();
    this.reachableTime = this.randomReachableTime();
    this.lastRandom = now;
    this.lastGc = now;
  }

  get size(): number {
    return this.count;
  }

  /** neigh_rand_reach_time: base/2 + random(base), i.e. 0.5-1.5 x base_reachable_time. */
  private randomReachableTime(): number {
    const base = this.params.baseReachableTime;
    return base / 2 + (this.rng.next() / 0x1_0000_0000) * base;
  }

  get currentReachableTime(): number {
    return this.reachableTime;
  }

  private bucketOf(port: number, ip: number): number {
    let h = Math.imul((ip | 0) ^ Math.imul(port + 1, 0x9e3779b1), 0x85ebca6b);
    h ^= h >>> 13;
    return h & this.bucketMask;
  }

  /** The entry of `ip` on `port`, -1 when there is none. */
  lookup(port: number, ip: number): number {
    const want = ip | 0;
    let e = this.buckets[this.bucketOf(port, want)]!;
    while (e >= 0) {
      if (this.ipOf[e] === want && this.portOf[e] === port) return e;
      e = this.chain[e]!;
    }
    return -1;
  }

  state(entry: number): number {
    return this.stateOf[entry]!;
  }

  ipOfEntry(entry: number): number {
    return this.ipOf[entry]! >>> 0;
  }

  portOfEntry(entry: number): number {
    return this.portOf[entry]!;
  }

  /**
   * A packet for next hop `ip` on `port` (neigh_resolve_output -> neigh_event_send): the entry
   * whose address (`macs[entry * 6]`) the packet is sent to now, or NEIGH_HELD when it was
   * queued (INCOMPLETE) or dropped (counted). `batch` slot `slot` holds the packet (its
   * headroom is copied with it when queued). `now`: the caller's time for the batch.
   */
  resolve(port: number, ip: number, now: number, batch: PacketBatch, slot: number): number {
    let e = this.lookup(port, ip);
    if (e < 0) {
      e = this.create(port, ip, now);
      if (e < 0) return NEIGH_HELD;
    }
    this.usedAt[e] = now;
    const state = this.stateOf[e]!;
    // neigh_event_send: CONNECTED, DELAY and PROBE send at once.
    if ((state & (NUD_REACHABLE | NUD_DELAY | NUD_PROBE)) !== 0) return e;
    if (state === NUD_STALE) {
      // __neigh_event_send: STALE -> DELAY, the packet goes out with the address it has.
      this.stateOf[e] = NUD_DELAY;
      this.timerAt[e] = now + this.params.delayFirstProbeTime;
      return e;
    }
    // __neigh_event_send for NONE/FAILED: INCOMPLETE, probes = ucast_probes; the packet is
    // queued, then the first probe goes at once (it sees the packet: arp_announce).
    const starting = state === NUD_NONE || state === NUD_FAILED;
    if (starting) this.startIncomplete(e, now, 0);
    this.enqueue(e, batch, slot);
    if (starting) {
      this.probe(e);
      this.io?.resolving?.(port, ip >>> 0);
    }
    return NEIGH_HELD;
  }

  /** NONE/FAILED -> INCOMPLETE (__neigh_event_send): probes = ucast_probes, the next probe retrans_time from now. */
  private startIncomplete(e: number, now: number, remote: number): void {
    this.stateOf[e] = NUD_INCOMPLETE;
    this.remoteOf[e] = remote;
    this.probesOf[e] = this.params.ucastSolicit;
    this.updatedAt[e] = now;
    this.timerAt[e] = now + this.params.retransTime;
  }

  /**
   * `workers: N`: another thread's table started resolving `ip` on `port` (NeighbourIo.resolving)
   * and sent the request. Linux has one entry for the router, INCOMPLETE, and one request per
   * retrans_time; here this table makes its entry INCOMPLETE too (unless it has one in another
   * state: nothing changes then), but sends no request of its own: packets for `ip` wait in its
   * queue for that request's reply, which completes the entry as a solicited one (the relayed
   * reply, or the other thread's `resolved` news). The entry keeps Linux's timer: unanswered for
   * mcast_solicit retrans_times, it fails here too and its queued packets are answered with host
   * unreachable. Control plane: between two batches.
   */
  learnResolving(port: number, ip: number): void {
    const now = this.clock.now();
    let e = this.lookup(port, ip);
    if (e < 0) {
      e = this.create(port, ip, now);
      if (e < 0) return;
    }
    const state = this.stateOf[e]!;
    if (state !== NUD_NONE && state !== NUD_FAILED) return;
    this.startIncomplete(e, now, 1);
    // That thread's first request, counted toward neigh_max_probes as if this entry had sent it.
    this.probe(e);
  }

  /** Whether `entry` is INCOMPLETE for another thread's request (`learnResolving`). */
  waitsForAnotherThread(entry: number): boolean {
    return this.stateOf[entry] === NUD_INCOMPLETE && this.remoteOf[entry] !== 0;
  }

  /**
   * neigh_probe -> arp_solicit: unicast while probes < ucast_probes (and an address is known), else
   * broadcast; probes++ after. An entry INCOMPLETE for another thread's request only counts the
   * probe toward neigh_max_probes: that thread sends it.
   */
  private probe(e: number): void {
    if (this.waitsForAnotherThread(e)) {
      this.probesOf[e] = this.probesOf[e]! + 1;
      return;
    }
    const unicast = this.probesOf[e]! < this.params.ucastSolicit && (this.stateOf[e]! & NUD_VALID) !== 0;
    this.counters.probes++;
    this.io?.solicit(this.portOf[e]!, this.ipOf[e]! >>> 0, unicast, e, this.newestSource(e));
    this.probesOf[e] = this.probesOf[e]! + 1;
  }

  /** neigh_max_probes: ucast + app + (PROBE ? mcast_reprobes (0) : mcast_probes). */
  private maxProbes(state: number): number {
    return this.params.ucastSolicit + (state === NUD_PROBE ? 0 : this.params.mcastSolicit);
  }

  /** A new NONE entry (neigh_create); when the table is full, one FAILED or STALE entry makes room (neigh_forced_gc). */
  private create(port: number, ip: number, now: number): number {
    if (this.freeEntry < 0 && !this.forcedGc(now)) {
      this.counters.tableFulls++;
      return -1;
    }
    const e = this.freeEntry;
    this.freeEntry = this.chain[e]!;
    this.portOf[e] = port;
    this.ipOf[e] = ip | 0;
    this.stateOf[e] = NUD_NONE;
    this.probesOf[e] = 0;
    this.remoteOf[e] = 0;
    this.timerAt[e] = NO_TIMER;
    this.confirmedAt[e] = now - this.params.baseReachableTime;
    this.updatedAt[e] = now;
    this.usedAt[e] = now;
    this.queueHead[e] = -1;
    this.queueTail[e] = -1;
    this.queueBytes[e] = 0;
    this.queueCount[e] = 0;
    this.macs.fill(0, e * 6, e * 6 + 6);
    const bucket = this.bucketOf(port, ip);
    this.chain[e] = this.buckets[bucket]!;
    this.buckets[bucket] = e;
    this.count++;
    this.counters.allocs++;
    return e;
  }

  /** Unlinks entry e and returns it to the free list (its queue must be empty). */
  private destroy(e: number): void {
    this.dropQueue(e);
    const bucket = this.bucketOf(this.portOf[e]!, this.ipOf[e]!);
    let at = this.buckets[bucket]!;
    if (at === e) this.buckets[bucket] = this.chain[e]!;
    else {
      while (at >= 0 && this.chain[at] !== e) at = this.chain[at]!;
      if (at >= 0) this.chain[at] = this.chain[e]!;
    }
    this.stateOf[e] = NUD_NONE;
    this.chain[e] = this.freeEntry;
    this.freeEntry = e;
    this.count--;
    this.counters.destroys++;
  }

  /** neigh_forced_gc: removes one entry not in a timer (FAILED, STALE or NONE), the least recently used. */
  private forcedGc(_now: number): boolean {
    let victim = -1;
    for (let e = 0; e < this.capacity; e++) {
      const state = this.stateOf[e]!;
      if (!this.isLive(e) || (state & NUD_IN_TIMER) !== 0) continue;
      if (victim < 0 || this.usedAt[e]! < this.usedAt[victim]!) victim = e;
    }
    if (victim < 0) return false;
    this.destroy(victim);
    return true;
  }

  private isLive(e: number): boolean {
    // An entry is live when it is reachable from its bucket; free entries have state NONE and no timer, so check the chain.
    return this.lookup(this.portOf[e]!, this.ipOf[e]!) === e;
  }

  /** The pool holding queue slot `s`. */
  private poolOf(s: number): PacketBatch {
    return s < this.pool.capacity ? this.pool : this.superPool;
  }

  /** Queue slot `s`'s index in its pool. */
  private indexIn(s: number): number {
    return s < this.pool.capacity ? s : s - this.pool.capacity;
  }

  /** The IPv4 source address of the newest packet queued for e (neigh_probe's skb_peek_tail), 0 if none. */
  private newestSource(e: number): number {
    const s = this.queueTail[e]!;
    if (s < 0) return 0;
    const pool = this.poolOf(s);
    const at = pool.offsetOf(this.indexIn(s)) + 12;
    const d = pool.data;
    return ((d[at]! << 24) | (d[at + 1]! << 16) | (d[at + 2]! << 8) | d[at + 3]!) >>> 0;
  }

  /**
   * Copies the packet at `batch` slot `slot` to the end of e's queue (__neigh_event_send): into
   * the pool, or, when it is larger than a pool slot (a GSO super-packet, which Linux queues
   * whole), into the super-packet pool.
   */
  private enqueue(e: number, batch: PacketBatch, slot: number): void {
    const length = batch.lengths[slot]!;
    const large = length + this.pool.headroom > this.pool.slotSize;
    const pool = large ? this.superPool : this.pool;
    if (length + pool.headroom > pool.slotSize || batch.headroom !== pool.headroom) {
      this.counters.queuePoolFull++;
      return;
    }
    const bytes = length + 14;
    // Over unres_qlen_bytes: the oldest packets go first (unres_discards).
    while (this.queueCount[e]! > 0 && this.queueBytes[e]! + bytes > this.params.unresQlenBytes) {
      this.popQueue(e);
      this.counters.unresDiscards++;
    }
    if (bytes > this.params.unresQlenBytes) {
      this.counters.unresDiscards++;
      return;
    }
    const s = large ? this.superFree : this.poolFree;
    if (s < 0) {
      this.counters.queuePoolFull++;
      return;
    }
    if (large) this.superFree = this.poolNext[s]!;
    else this.poolFree = this.poolNext[s]!;
    const index = this.indexIn(s);
    const from = slot * batch.slotSize;
    pool.data.set(batch.data.subarray(from, from + batch.headroom + length), index * pool.slotSize);
    pool.lengths[index] = length;
    pool.nextHops[index] = this.ipOf[e]! >>> 0;
    this.poolNext[s] = -1;
    if (this.queueTail[e]! >= 0) this.poolNext[this.queueTail[e]!] = s;
    else this.queueHead[e] = s;
    this.queueTail[e] = s;
    this.queueBytes[e] += bytes;
    this.queueCount[e] += 1;
    this.counters.queued++;
    if (large) this.counters.queuedSuper++;
  }

  /** Returns queue slot `s` to its pool's free list. */
  private freeSlot(s: number): void {
    if (s < this.pool.capacity) {
      this.poolNext[s] = this.poolFree;
      this.poolFree = s;
    } else {
      this.poolNext[s] = this.superFree;
      this.superFree = s;
    }
  }

  /** Removes the oldest packet of e's queue, its slot back to the pool. */
  private popQueue(e: number): number {
    const s = this.queueHead[e]!;
    if (s < 0) return -1;
    this.queueHead[e] = this.poolNext[s]!;
    if (this.queueHead[e]! < 0) this.queueTail[e] = -1;
    this.queueBytes[e] -= this.poolOf(s).lengths[this.indexIn(s)]! + 14;
    this.queueCount[e] -= 1;
    this.freeSlot(s);
    return s;
  }

  private dropQueue(e: number): void {
    while (this.queueCount[e]! > 0) this.popQueue(e);
  }

  queuedPackets(entry: number): number {
    return this.queueCount[entry]!;
  }

  /**
   * Hands e's queue to the port now that it has an address (neigh_update: "Again: avoid dead
   * loop" -> output), in arrival order: each run of slots of one pool in one write.
   */
  private sendQueue(e: number): void {
    const n = this.queueCount[e]!;
    if (n === 0) return;
    const port = this.portOf[e]!;
    let count = 0;
    let runPool: PacketBatch | null = null;
    for (let s = this.queueHead[e]!; s >= 0; s = this.poolNext[s]!) {
      const pool = this.poolOf(s);
      if (pool !== runPool && count > 0) {
        // The slots stay taken until the port has written them.
        this.io?.sendQueued(port, e, runPool!, this.flushSlots, count);
        count = 0;
      }
      runPool = pool;
      this.flushSlots[count++] = this.indexIn(s);
    }
    if (count > 0) this.io?.sendQueued(port, e, runPool!, this.flushSlots, count);
    this.dropQueue(e);
  }

  /**
   * neigh_update: what an ARP packet says about `ip` on `port` — its address at `mac[macOffset]`
   * and the new state (NUD_REACHABLE for a reply to us, NUD_STALE otherwise). `override`: the
   * address may replace a different one (arp_process: past locktime, or a gratuitous ARP).
   * `create`: make the entry if there is none (a request for one of our addresses,
   * neigh_event_ns); otherwise only an existing entry is updated (arp_accept = 0). Returns whether
   * this completed an INCOMPLETE entry (it had no address and now has one: a solicited reply, or
   * any ARP of the neighbour while it was being resolved), which `workers: N` tells the other
   * threads (control/ethernet-threads.ts).
   */
  update(port: number, ip: number, mac: Uint8Array, macOffset: number, state: number, create: boolean, gratuitous: boolean): boolean {
    const now = this.clock.now();
    let e = this.lookup(port, ip);
    if (e < 0) {
      if (!create) return false;
      e = this.create(port, ip, now);
      if (e < 0) return false;
    }
    const old = this.stateOf[e]!;
    const at = e * 6;
    const hadAddress = (old & NUD_VALID) !== 0;
    const same = hadAddress && sameMac(this.macs, at, mac, macOffset);
    // arp_process: override past locktime since the last update, or for a gratuitous ARP.
    const override = gratuitous || now >= this.updatedAt[e]! + this.params.locktime || !hadAddress;
    if (hadAddress && !same && !override) return false; // neigh_update without NEIGH_UPDATE_F_OVERRIDE
    let next = state;
    // neigh_update: "Do not change entry state if new one is STALE ... and address is the same".
    if (same && next === NUD_STALE) next = old;
    if (!same) {
      for (let i = 0; i < 6; i++) this.macs[at + i] = mac[macOffset + i]!;
    }
    this.stateOf[e] = next;
    if (next !== old || !same) this.updatedAt[e] = now;
    if (next === NUD_REACHABLE) {
      this.confirmedAt[e] = now;
      this.timerAt[e] = now + this.reachableTime;
    } else if ((next & NUD_IN_TIMER) === 0) {
      this.timerAt[e] = NO_TIMER;
    }
    // neigh_update: once the entry is VALID its queued packets leave.
    if ((next & NUD_VALID) !== 0) this.sendQueue(e);
    return old === NUD_INCOMPLETE && (next & NUD_VALID) !== 0;
  }

  /**
   * The timers (neigh_timer_handler for each entry whose timer is due; neigh_periodic_work's
   * reachable_time redraw and garbage collection). Call often (the router: every 100 ms).
   */
  tick(): void {
    const now = this.clock.now();
    const p = this.params;
    if (now >= this.lastRandom + 300) {
      this.lastRandom = now;
      this.reachableTime = this.randomReachableTime();
    }
    for (let e = 0; e < this.capacity; e++) {
      const due = this.timerAt[e]!;
      if (due === NO_TIMER || now < due) continue;
      const state = this.stateOf[e]!;
      this.timerAt[e] = NO_TIMER;
      if (state === NUD_REACHABLE) {
        if (now < this.confirmedAt[e]! + this.reachableTime) {
          this.timerAt[e] = this.confirmedAt[e]! + this.reachableTime;
        } else if (now < this.usedAt[e]! + p.delayFirstProbeTime) {
          this.stateOf[e] = NUD_DELAY;
          this.updatedAt[e] = now;
          this.timerAt[e] = now + p.delayFirstProbeTime;
        } else {
          this.stateOf[e] = NUD_STALE;
          this.updatedAt[e] = now;
        }
        continue;
      }
      if (state === NUD_DELAY) {
        if (now < this.confirmedAt[e]! + p.delayFirstProbeTime) {
          this.stateOf[e] = NUD_REACHABLE;
          this.updatedAt[e] = now;
          this.timerAt[e] = this.confirmedAt[e]! + this.reachableTime;
          continue;
        }
        this.stateOf[e] = NUD_PROBE;
        this.updatedAt[e] = now;
        this.probesOf[e] = 0;
      }
      const current = this.stateOf[e]!;
      if ((current & (NUD_INCOMPLETE | NUD_PROBE)) === 0) continue;
      if (this.probesOf[e]! >= this.maxProbes(current)) {
        this.fail(e, now);
        continue;
      }
      // The next probe retrans_time after this one was due (a late tick does not stretch the cadence).
      this.timerAt[e] = (now - due < p.retransTime ? due : now) + p.retransTime;
      this.probe(e);
    }
    // neigh_periodic_work, every base_reachable_time / 2: above gc_thresh1 entries, FAILED ones
    // and those unused for gc_staletime go.
    if (now >= this.lastGc + p.baseReachableTime / 2) {
      this.lastGc = now;
      if (this.count >= p.gcThresh1) {
        for (let e = 0; e < this.capacity; e++) {
          const state = this.stateOf[e]!;
          if ((state & NUD_IN_TIMER) !== 0 || !this.isLive(e)) continue;
          if (state === NUD_FAILED || now >= this.usedAt[e]! + p.gcStaletime) this.destroy(e);
        }
      }
    }
  }

  /** FAILED (neigh_timer_handler -> neigh_invalidate): every queued packet is reported unreachable (arp_error_report). */
  private fail(e: number, now: number): void {
    this.stateOf[e] = NUD_FAILED;
    this.updatedAt[e] = now;
    this.timerAt[e] = NO_TIMER;
    this.counters.resFailed++;
    const port = this.portOf[e]!;
    // The queue is detached first: answering a packet may queue new ones (for this entry too).
    let s = this.queueHead[e]!;
    this.queueHead[e] = -1;
    this.queueTail[e] = -1;
    this.queueBytes[e] = 0;
    this.queueCount[e] = 0;
    while (s >= 0) {
      const next = this.poolNext[s]!;
      this.counters.failedDrops++;
      this.io?.unreachable(port, this.poolOf(s), this.indexIn(s));
      this.freeSlot(s);
      s = next;
    }
  }

  /** The entries, for `qnat show neigh` (control plane). */
  list(): { entry: number; port: number; ip: number; state: number }[] {
    const rows: { entry: number; port: number; ip: number; state: number }[] = [];
    for (let b = 0; b <= this.bucketMask; b++) {
      for (let e = this.buckets[b]!; e >= 0; e = this.chain[e]!) rows.push({ entry: e, port: this.portOf[e]!, ip: this.ipOf[e]! >>> 0, state: this.stateOf[e]! });
    }
    rows.sort((a, b) => a.port - b.port || a.ip - b.ip);
    return rows;
  }

  /** The entries as `qnat show neigh --json` shows them (control plane). */
  view(): NeighbourView[] {
    return this.list().map((r) => ({
      dst: formatIpv4(r.ip),
      port: r.port,
      lladdr: (r.state & NUD_VALID) !== 0 ? formatMac(this.macs, r.entry * 6) : null,
      state: nudStateName(r.state),
      queued: this.queueCount[r.entry]!,
    }));
  }

  /** Forgets every entry (the ports were renumbered); queued packets are dropped. */
  clear(): void {
    for (const row of this.list()) this.destroy(row.entry);
  }

  /**
   * The ports were renumbered by a live change: entry of port p moves to port `newIndexOf[p]`, or
   * is forgotten (its queued packets dropped) when that is -1, as Linux keeps the neighbours of
   * the devices that stay and flushes those of a device that goes (neigh_ifdown).
   */
  renumberPorts(newIndexOf: readonly number[]): void {
    const rows = this.list();
    for (const row of rows) if ((newIndexOf[row.port] ?? -1) < 0) this.destroy(row.entry);
    const kept = this.list();
    this.buckets.fill(-1);
    for (const row of kept) {
      const e = row.entry;
      this.portOf[e] = newIndexOf[row.port]!;
      const bucket = this.bucketOf(this.portOf[e]!, this.ipOf[e]!);
      this.chain[e] = this.buckets[bucket]!;
      this.buckets[bucket] = e;
    }
  }

  /** Entries per state name (NONE, INCOMPLETE, ...), for the metrics (control plane). */
  countByState(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const row of this.list()) {
      const name = nudStateName(row.state);
      counts.set(name, (counts.get(name) ?? 0) + 1);
    }
    return counts;
  }

  /** Forgets every entry of `port` (its port was removed or re-created); queued packets are dropped. */
  flushPort(port: number): void {
    for (const row of this.list()) if (row.port === port) this.destroy(row.entry);
  }
}

function sameMac(a: Uint8Array, at: number, b: Uint8Array, bt: number): boolean {
  for (let i = 0; i < 6; i++) if (a[at + i] !== b[bt + i]) return false;
  return true;
}
