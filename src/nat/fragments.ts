/**
 * Virtual reassembly for NAT: translating IPv4 fragments without reassembling them.
 *
 * Linux reassembles every fragmented datagram before conntrack sees it (nf_defrag_ipv4.c ->
 * ip_defrag, net/ipv4/ip_fragment.c) and fragments it again on output. qnat does not: only the
 * first fragment (offset 0) carries the ports, so conntrack and NAT run on it, and the
 * fragments after it are translated with the same connection and direction (their address
 * rewrite needs nothing else; manip.ts natPacket leaves their payload alone). This table remembers, per
 * datagram, which connection its first fragment belonged to.
 *
 * Key: (source, destination, IP identification, protocol) of the packet as it ARRIVED, before any
 * NAT — RFC 791's reassembly key, the same as Linux ip4_frag key (saddr, daddr, id, protocol) —
 * and, as in that key, the defrag "user": Linux reassembles packets from the network at
 * PREROUTING (IP_DEFRAG_CONNTRACK_IN) and those the host sends at OUTPUT
 * (IP_DEFRAG_CONNTRACK_OUT) in separate queues (nf_defrag_ipv4.c, include/net/ip.h), so a
 * fragment from a wire leg and one from a mirror never belong to one datagram, and a held
 * fragment is released to the path it arrived on. The dataplane records the first fragment
 * before rewriting it.
 *
 * Fragments that arrive before their first fragment are held: copied into a preallocated pool of
 * fixed-size slots (bounded count and bytes, no allocation per packet) and released when the
 * first fragment arrives (`releaseHeld` hands them back to the dataplane, which runs them through
 * the pipeline again and now finds the state). A datagram whose first fragment does not come
 * within the reassembly timeout (Linux ipfrag_time, 30 s) is forgotten; its held fragments are
 * dropped and the caller counts them as DropReason.FragmentNoState. No free entry or no free slot:
 * DropReason.FragmentTableFull.
 *
 * Completion: the datagram's state is freed once the bytes seen reach the total length the last
 * fragment (MF clear) announces, or at the timeout.
 *
 * Overlapping and duplicate fragments: translation is per datagram, not per byte — every fragment
 * of a key gets the translation of that key's first fragment, so an overlap can never be
 * translated differently from the rest of its datagram. The byte count is a plain sum, so
 * duplicates or overlaps can make the state look complete early; a fragment of that datagram
 * arriving afterwards finds no state, is held, and is dropped at the timeout (FragmentNoState).
 * qnat never forwards such a fragment untranslated. (Linux drops overlapping fragments outright,
 * RFC 5722 style, in ip_frag_queue.)
 *
 * Hot path: all state is in typed arrays; no allocation per packet.
 */
import type { PacketBatch } from "../core/batch.js";
import type { Clock } from "../core/clock.js";
import { DropReason } from "../core/drop-reason.js";
import type { PacketInfo } from "../wire/packet-info.js";
import { type HashKey, hashKeyFrom, hsiphashBits } from "../core/hash.js";
import { XorShift32 } from "../core/rng.js";

/** Defrag users (Linux enum ip_defrag_users): fragments from the network, and from the router's own host. */
export const DEFRAG_USER_IN = 0;
export const DEFRAG_USER_OUT = 1;

/** Linux ipfrag_time (net/ipv4/ip_fragment.c, IP_FRAG_TIME = 30 * HZ). */
export const FRAGMENT_TIMEOUT_SECONDS = 30;

export interface FragmentTableOptions {
  clock: Clock;
  /** Datagrams tracked at once (default 1024). */
  maxDatagrams?: number;
  /** Fragments held while waiting for their first fragment (default 256). */
  maxHeldFragments?: number;
  /** Bytes per held fragment slot: larger fragments cannot be held (default 2048). Held bytes <= maxHeldFragments * slotSize. */
  slotSize?: number;
  /** Seconds a datagram's state lives (default 30, Linux ipfrag_time). */
  timeout?: number;
  /**
   * Key of the datagram hash (HalfSipHash, src/core/hash.ts); a running router draws a random
   * one (Linux keys its fragment hash with a random seed too). Default: a fixed key (tests).
   */
  key?: HashKey;
}

export interface FragmentCounters {
  /** datagrams whose state was created */
  datagrams: number;
  /** non-first fragments translated from their first fragment's state */
  translated: number;
  /** fragments held waiting for the first fragment */
  held: number;
  /** held fragments handed back after their first fragment arrived */
  released: number;
  /** held fragments dropped at the timeout (DropReason.FragmentNoState) */
  expiredHeld: number;
  /** fragments refused for lack of an entry or slot (DropReason.FragmentTableFull) */
  tableFull: number;
  /** datagrams whose state was freed when complete */
  completed: number;
}

const NONE = -1;

export class FragmentTable {
  readonly counters: FragmentCounters = { datagrams: 0, translated: 0, held: 0, released: 0, expiredHeld: 0, tableFull: 0, completed: 0 };
  readonly maxDatagrams: number;
  readonly maxHeldFragments: number;
  readonly slotSize: number;
  readonly timeout: number;

  private readonly clock: Clock;
  /** The datagram hash's key words (options.key). */
  private readonly k0: number;
  private readonly k1: number;

  // per datagram entry
  private readonly keySrc: Uint32Array;
  private readonly keyDst: Uint32Array;
  private readonly keyIdProto: Uint32Array;
  /** Conntrack handle `(id << 1) | dir` of the first fragment, or -1 while it has not been seen. */
  private readonly refs: Int32Array;
  private readonly expires: Float64Array;
  private readonly bytesSeen: Uint32Array;
  /** Total datagram payload length once the last fragment was seen, else -1. */
  private readonly totalLength: Int32Array;
  private readonly heldHead: Int32Array;
  private readonly heldTail: Int32Array;
  private readonly chainNext: Int32Array;
  private readonly agePrev: Int32Array;
  private readonly ageNext: Int32Array;
  private readonly buckets: Int32Array;
  private readonly bucketMask: number;
  private freeEntry = NONE;
  private ageHead = NONE;
  private ageTail = NONE;
  private entries = 0;

  // held fragment slots
  private readonly pool: Uint8Array;
  private readonly slotLength: Uint32Array;
  /** The defrag user each held fragment arrived as. */
  private readonly slotUser: Uint8Array;
  private readonly slotNext: Int32Array;
  private freeSlot = NONE;
  private releasedHead = NONE;
  private releasedTail = NONE;
  private slotsUsed = 0;
  private bytesHeld = 0;

  constructor(options: FragmentTableOptions) {
    this.clock = options.clock;
    this.maxDatagrams = Math.max(1, Math.floor(options.maxDatagrams ?? 1024));
    this.maxHeldFragments = Math.max(0, Math.floor(options.maxHeldFragments ?? 256));
    this.slotSize = Math.max(20, Math.floor(options.slotSize ?? 2048));
    this.timeout = options.timeout ?? FRAGMENT_TIMEOUT_SECONDS;
    const key = options.key ?? hashKeyFrom(new XorShift32(0x5bd1e995));
    this.k0 = key.k0 | 0;
    this.k1 = key.k1 | 0;

    const n = this.maxDatagrams;
    this.keySrc = new Uint32Array(n);
    this.keyDst = new Uint32Array(n);
    this.keyIdProto = new Uint32Array(n);
    this.refs = new Int32Array(n).fill(NONE);
    this.expires = new Float64Array(n);
    this.bytesSeen = new Uint32Array(n);
    this.totalLength = new Int32Array(n).fill(NONE);
    this.heldHead = new Int32Array(n).fill(NONE);
    this.heldTail = new Int32Array(n).fill(NONE);
    this.chainNext = new Int32Array(n);
    this.agePrev = new Int32Array(n).fill(NONE);
    this.ageNext = new Int32Array(n).fill(NONE);
    let buckets = 16;
    while (buckets < n * 2) buckets *= 2;
    this.buckets = new Int32Array(buckets).fill(NONE);
    this.bucketMask = buckets - 1;
    for (let e = n - 1; e >= 0; e--) {
      this.chainNext[e] = this.freeEntry;
      this.freeEntry = e;
    }

    const slots = this.maxHeldFragments;
    this.pool = new Uint8Array(slots * this.slotSize);
    this.slotLength = new Uint32Array(slots);
    this.slotUser = new Uint8Array(slots);
    this.slotNext = new Int32Array(slots);
    for (let s = slots - 1; s >= 0; s--) {
      this.slotNext[s] = this.freeSlot;
      this.freeSlot = s;
    }
  }

  /** Datagrams currently tracked. */
  get size(): number {
    return this.entries;
  }
  /** Fragments currently held (waiting or released but not yet taken). */
  get heldFragments(): number {
    return this.slotsUsed;
  }
  get heldBytes(): number {
    return this.bytesHeld;
  }

  /**
   * The first fragment (offset 0, MF set) of a datagram, with the conntrack handle
   * `(id << 1) | dir` it was classified to. Call before NAT rewrites it. Fragments held for this
   * datagram become ready for `releaseHeld`. Returns DropReason.None, or FragmentTableFull when no
   * state can be created (drop the fragment: its followers could not be translated).
   */
  noteFirstFragment(buf: Uint8Array, info: PacketInfo, ref: number, user = DEFRAG_USER_IN): DropReason {
    const now = this.clock.now();
    const e = this.findOrInsert(info.srcBits, info.dstBits, keyIdProto(buf, info, user), now);
    if (e === NONE) return DropReason.FragmentTableFull;
    this.refs[e] = ref;
    // Hand the waiting fragments over, in arrival order.
    const head = this.heldHead[e]!;
    if (head !== NONE) {
      if (this.releasedTail === NONE) this.releasedHead = head;
      else this.slotNext[this.releasedTail] = head;
      this.releasedTail = this.heldTail[e]!;
      this.heldHead[e] = NONE;
      this.heldTail[e] = NONE;
    }
    this.account(e, info);
    return DropReason.None;
  }

  /**
   * A non-first fragment: the conntrack handle of its datagram's first fragment, or -1 when that
   * has not been seen (then `holdFragment`).
   */
  lookupFragment(buf: Uint8Array, info: PacketInfo, user = DEFRAG_USER_IN): number {
    const e = this.find(info.srcBits, info.dstBits, keyIdProto(buf, info, user), this.clock.now());
    if (e === NONE) return NONE;
    const ref = this.refs[e]!;
    if (ref < 0) return NONE;
    this.counters.translated++;
    this.account(e, info);
    return ref;
  }

  /**
   * Holds a non-first fragment whose first fragment has not arrived: copies the packet
   * (`info.length` bytes at `info.offset`) into the pool. Returns DropReason.None when held (the
   * caller must not forward it now), FragmentTableFull when there is no room (drop it).
   */
  holdFragment(buf: Uint8Array, info: PacketInfo, user = DEFRAG_USER_IN): DropReason {
    const now = this.clock.now();
    const length = info.length;
    if (this.freeSlot === NONE || length > this.slotSize) {
      this.counters.tableFull++;
      return DropReason.FragmentTableFull;
    }
    const e = this.findOrInsert(info.srcBits, info.dstBits, keyIdProto(buf, info, user), now);
    if (e === NONE) return DropReason.FragmentTableFull;
    const slot = this.freeSlot;
    this.freeSlot = this.slotNext[slot]!;
    const pool = this.pool;
    const from = info.offset;
    const to = slot * this.slotSize;
    for (let i = 0; i < length; i++) pool[to + i] = buf[from + i]!;
    this.slotLength[slot] = length;
    this.slotUser[slot] = user;
    this.slotNext[slot] = NONE;
    if (this.heldTail[e] === NONE) this.heldHead[e] = slot;
    else this.slotNext[this.heldTail[e]!] = slot;
    this.heldTail[e] = slot;
    this.slotsUsed++;
    this.bytesHeld += length;
    this.counters.held++;
    return DropReason.None;
  }

  /** True when fragments are ready for `releaseHeld`. */
  get hasReleased(): boolean {
    return this.releasedHead !== NONE;
  }

  /**
   * Copies fragments whose first fragment has arrived into `batch` (as many as fit) and frees
   * their slots; the dataplane runs them through the pipeline, where `lookupFragment` now finds
   * their state, on the path of the defrag user each arrived as (`users[i]`, DEFRAG_USER_*).
   * Returns how many were copied.
   */
  releaseHeld(batch: PacketBatch, users?: Uint8Array): number {
    let copied = 0;
    const pool = this.pool;
    while (this.releasedHead !== NONE) {
      const slot = this.releasedHead;
      const length = this.slotLength[slot]!;
      if (batch.count >= batch.capacity || length > batch.slotSize) break;
      const from = slot * this.slotSize;
      const to = batch.offsetOf(batch.count);
      const data = batch.data;
      for (let i = 0; i < length; i++) data[to + i] = pool[from + i]!;
      batch.lengths[batch.count] = length;
      if (users !== undefined) users[batch.count] = this.slotUser[slot]!;
      batch.count++;
      this.releasedHead = this.slotNext[slot]!;
      if (this.releasedHead === NONE) this.releasedTail = NONE;
      this.freeSlotOf(slot, length);
      this.counters.released++;
      copied++;
    }
    return copied;
  }

  /**
   * Forgets datagrams whose timeout passed (Linux ip_expire). Returns how many held fragments
   * were dropped for lack of their first fragment since the last call (here, or met expired by
   * a lookup): the caller counts them as DropReason.FragmentNoState. O(expired entries).
   */
  expire(): number {
    this.reclaimExpired(this.clock.now());
    const dropped = this.unreportedNoState;
    this.unreportedNoState = 0;
    return dropped;
  }
  private unreportedNoState = 0;

  private expireEntry(e: number): void {
    const dropped = this.remove(e);
    this.counters.expiredHeld += dropped;
    this.unreportedNoState += dropped;
  }

  // ---- internals -------------------------------------------------------------------------------

  private bucketOf(src: number, dst: number, idProto: number): number {
    return hsiphashBits(this.k0, this.k1, 3, src, dst, idProto, 0) & this.bucketMask;
  }

  /** The live entry with this key, or -1; an expired one met here is removed first. */
  private find(src: number, dst: number, idProto: number, now: number): number {
    let e = this.buckets[this.bucketOf(src, dst, idProto)]!;
    while (e !== NONE) {
      if (this.keySrc[e] === src >>> 0 && this.keyDst[e] === dst >>> 0 && this.keyIdProto[e] === idProto) {
        if (this.expires[e]! <= now) {
          this.expireEntry(e);
          return NONE;
        }
        return e;
      }
      e = this.chainNext[e]!;
    }
    return NONE;
  }

  /** The datagram's entry, created when missing; NONE (counted as tableFull) when there is no room. */
  private findOrInsert(src: number, dst: number, idProto: number, now: number): number {
    let e = this.find(src, dst, idProto, now);
    if (e === NONE) {
      e = this.insert(src, dst, idProto, now);
      if (e === NONE) this.counters.tableFull++;
    }
    return e;
  }

  /** Expires every entry whose timeout passed, oldest first (the age list is in expiry order). */
  private reclaimExpired(now: number): void {
    while (this.ageHead !== NONE && this.expires[this.ageHead]! <= now) this.expireEntry(this.ageHead);
  }

  private insert(src: number, dst: number, idProto: number, now: number): number {
    if (this.freeEntry === NONE) {
      // Reclaim expired entries before refusing (their held fragments are counted in counters.expiredHeld).
      this.reclaimExpired(now);
      if (this.freeEntry === NONE) return NONE;
    }
    const e = this.freeEntry;
    this.freeEntry = this.chainNext[e]!;
    this.keySrc[e] = src >>> 0;
    this.keyDst[e] = dst >>> 0;
    this.keyIdProto[e] = idProto;
    this.refs[e] = NONE;
    this.expires[e] = now + this.timeout;
    this.bytesSeen[e] = 0;
    this.totalLength[e] = NONE;
    this.heldHead[e] = NONE;
    this.heldTail[e] = NONE;
    const bucket = this.bucketOf(src, dst, idProto);
    this.chainNext[e] = this.buckets[bucket]!;
    this.buckets[bucket] = e;
    // append to the age list (creation order = expiry order)
    this.agePrev[e] = this.ageTail;
    this.ageNext[e] = NONE;
    if (this.ageTail === NONE) this.ageHead = e;
    else this.ageNext[this.ageTail] = e;
    this.ageTail = e;
    this.entries++;
    this.counters.datagrams++;
    return e;
  }

  /** Counts the fragment's bytes; frees the entry when the datagram is complete. */
  private account(e: number, info: PacketInfo): void {
    const seen = this.bytesSeen[e]! + info.l4Length;
    this.bytesSeen[e] = seen;
    if (!info.moreFragments) this.totalLength[e] = info.fragmentOffset + info.l4Length;
    const total = this.totalLength[e]!;
    if (total >= 0 && seen >= total && this.heldHead[e] === NONE && this.refs[e]! >= 0) {
      this.counters.completed++;
      this.remove(e);
    }
  }

  /** Frees entry `e` and its held fragments; returns how many fragments were dropped. */
  private remove(e: number): number {
    // unlink from the hash chain
    const bucket = this.bucketOf(this.keySrc[e]!, this.keyDst[e]!, this.keyIdProto[e]!);
    let current = this.buckets[bucket]!;
    let previous = NONE;
    while (current !== NONE) {
      if (current === e) {
        if (previous === NONE) this.buckets[bucket] = this.chainNext[e]!;
        else this.chainNext[previous] = this.chainNext[e]!;
        break;
      }
      previous = current;
      current = this.chainNext[current]!;
    }
    // unlink from the age list
    const p = this.agePrev[e]!;
    const n = this.ageNext[e]!;
    if (p === NONE) this.ageHead = n;
    else this.ageNext[p] = n;
    if (n === NONE) this.ageTail = p;
    else this.agePrev[n] = p;
    // drop held fragments
    let dropped = 0;
    let slot = this.heldHead[e]!;
    while (slot !== NONE) {
      const next = this.slotNext[slot]!;
      this.freeSlotOf(slot, this.slotLength[slot]!);
      dropped++;
      slot = next;
    }
    this.heldHead[e] = NONE;
    this.heldTail[e] = NONE;
    this.chainNext[e] = this.freeEntry;
    this.freeEntry = e;
    this.entries--;
    return dropped;
  }

  private freeSlotOf(slot: number, length: number): void {
    this.slotNext[slot] = this.freeSlot;
    this.freeSlot = slot;
    this.slotsUsed--;
    this.bytesHeld -= length;
  }
}

/** (IP identification, defrag user, protocol) of the fragment at `info.offset` in one number (RFC 791 reassembly key). */
function keyIdProto(buf: Uint8Array, info: PacketInfo, user: number): number {
  const o = info.offset;
  return ((((buf[o + 4]! << 8) | buf[o + 5]!) * 2 + user) * 256 + info.protocol) >>> 0;
}
