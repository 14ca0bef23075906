/**
 * The connection tracking table: Linux nf_conntrack_core.c's hash of `nf_conntrack_tuple_hash`
 * (each connection is indexed twice, by its original and by its reply tuple) in typed arrays.
 *
 * Layout (struct of arrays, no object per entry): an entry `id` owns two tuple nodes,
 * `node = (id << 1) | dir` — node 2*id is the original tuple, 2*id+1 the reply tuple. A node is
 * exactly the handle `lookup` returns. Per node: src, dst, (sport << 16 | dport), and `nextNode`
 * (the hash chain, -1 terminated). Per entry: protocol, status (Linux IPS_* bits), TCP state,
 * TCP private flags, expiry time, start time, mark. Buckets: a power of two >= capacity, each the
 * head node of a chain. Free entries are chained through `nextNode[2*id]`.
 *
 * Life of an entry, as Linux: `create` allocates an *unconfirmed* entry for a NEW packet (not
 * in the hash, `lookup` cannot see it); NAT may `setReplyTuple`; when the packet leaves,
 * `confirm` inserts both tuples (`__nf_conntrack_confirm`), or `release` frees it (packet dropped).
 *
 * Bounds: `capacity` entries, allocated up front. When full, `create` evicts one entry like
 * Linux `early_drop()`: it walks the chains of NF_CT_EVICTION_RANGE (8) buckets starting at the new
 * tuple's bucket and drops the first confirmed entry that is expired, not ASSURED, or a TCP
 * connection that is already closing (`tcp_can_early_drop`, which Linux's gc worker applies under
 * pressure); when none is found the allocation fails and `counters.dropFull` counts it.
 *
 * Expiry is O(1) per packet: an expired entry met by a lookup is removed then (Linux
 * `nf_ct_gc_expired`), and `gc(budget)` sweeps `budget` slots per call from a rotating cursor.
 */
import type { Clock } from "../core/clock.js";
import { XorShift32 } from "../core/rng.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../wire/packet-info.js";
import { type ConntrackTimeouts, resolveTimeouts } from "./timeouts.js";
import { icmpInverseType } from "./tuple.js";

/** Direction of a packet relative to its connection (Linux `enum ip_conntrack_dir`). */
export const CtDir = { Original: 0, Reply: 1 } as const;
export type CtDir = (typeof CtDir)[keyof typeof CtDir];

/** `-m conntrack --ctstate` values a packet can get (Linux `enum ip_conntrack_info` collapsed). */
export enum CtState {
  New = 0,
  Established = 1,
  Related = 2,
  Invalid = 3,
}

/** Linux `enum ip_conntrack_status` (include/uapi/linux/netfilter/nf_conntrack_common.h), same bits. */
export enum CtStatus {
  Expected = 1 << 0,
  SeenReply = 1 << 1,
  Assured = 1 << 2,
  Confirmed = 1 << 3,
  SrcNat = 1 << 4,
  DstNat = 1 << 5,
  SeqAdjust = 1 << 6,
  SrcNatDone = 1 << 7,
  DstNatDone = 1 << 8,
  Dying = 1 << 9,
  FixedTimeout = 1 << 10,
}

/** IPS_NAT_MASK and IPS_NAT_DONE_MASK. */
export const CT_STATUS_NAT_MASK = CtStatus.SrcNat | CtStatus.DstNat;
export const CT_STATUS_NAT_DONE_MASK = CtStatus.SrcNatDone | CtStatus.DstNatDone;

/** Linux NF_CT_EVICTION_RANGE (nf_conntrack_core.c): buckets early_drop() looks at. */
export const CT_EVICTION_RANGE = 8;

/** Refusals and events, numbers only, for `qnat show stats` (names follow `conntrack -S`). */
export interface ConntrackCounters {
  /** lookups that found a live entry */
  found: number;
  /** packets tracked as INVALID */
  invalid: number;
  /** TCP packets accepted without a state change (Linux sIG) */
  ignore: number;
  /** entries allocated by `create` */
  created: number;
  /** entries confirmed into the hash */
  inserted: number;
  /** confirms refused because a tuple was taken meanwhile */
  insertFailed: number;
  /** entries evicted to make room */
  earlyDrop: number;
  /** creates refused: table full and nothing could be evicted */
  dropFull: number;
  /** entries removed because their timeout passed (lazily or by gc) */
  expired: number;
  /** unconfirmed entries released (their packet was dropped) */
  released: number;
  /** entries removed explicitly (`remove`, TCP reopen) */
  removed: number;
}

export interface ConntrackTableOptions {
  capacity: number;
  clock: Clock;
  timeouts?: Partial<ConntrackTimeouts>;
  /** Seed of the tuple hash (via src/core/rng.ts). Give a random one in production against hash flooding. */
  seed?: number;
  /** Called just before an entry's slot is freed (NAT releases its binding state). Control-plane rate. */
  onRemove?: (id: number) => void;
}

const SLOT_FREE = 0;
const SLOT_USED = 1;

/** TCP private flags byte (see tcp.ts): kept here only to initialise it. */
const TCP_PRIVATE_INITIAL = 5; // last flag index = TCP_NONE_SET, as tcp_new

export class ConntrackTable {
  readonly capacity: number;
  readonly clock: Clock;
  readonly timeouts: ConntrackTimeouts;
  readonly counters: ConntrackCounters = {
    found: 0,
    invalid: 0,
    ignore: 0,
    created: 0,
    inserted: 0,
    insertFailed: 0,
    earlyDrop: 0,
    dropFull: 0,
    expired: 0,
    released: 0,
    removed: 0,
  };
  /** After a failed `confirm`: the handle ((id << 1) | dir) of the entry whose tuple clashed, else -1. */
  clashWith = -1;

  // per node (2 per entry)
  private readonly tupleSrc: Uint32Array;
  private readonly tupleDst: Uint32Array;
  private readonly tuplePorts: Uint32Array;
  private readonly nextNode: Int32Array;
  // per bucket
  private readonly buckets: Int32Array;
  private readonly bucketMask: number;
  // per entry
  private readonly protocols: Uint8Array;
  private readonly slots: Uint8Array;
  private readonly statuses: Uint16Array;
  private readonly tcpStates: Uint8Array;
  private readonly tcpPrivate: Uint8Array;
  private readonly marks: Uint32Array;
  private readonly expiry: Float64Array;
  private readonly started: Float64Array;

  private readonly hashSeed: number;
  private readonly onRemove: ((id: number) => void) | undefined;
  private freeHead = -1;
  private used = 0;
  private gcCursor = 0;

  constructor(options: ConntrackTableOptions) {
    const capacity = Math.floor(options.capacity);
    if (!(capacity >= 1 && capacity <= 1 << 29)) throw new RangeError("conntrack capacity must be 1..2^29");
    this.capacity = capacity;
    this.clock = options.clock;
    this.timeouts = resolveTimeouts(options.timeouts);
    this.hashSeed = new XorShift32(options.seed ?? 0x2545f491).next() | 0;
    this.onRemove = options.onRemove;

    const nodes = capacity * 2;
    this.tupleSrc = new Uint32Array(nodes);
    this.tupleDst = new Uint32Array(nodes);
    this.tuplePorts = new Uint32Array(nodes);
    this.nextNode = new Int32Array(nodes);
    let bucketCount = 16;
    while (bucketCount < capacity) bucketCount *= 2;
    this.buckets = new Int32Array(bucketCount).fill(-1);
    this.bucketMask = bucketCount - 1;
    this.protocols = new Uint8Array(capacity);
    this.slots = new Uint8Array(capacity);
    this.statuses = new Uint16Array(capacity);
    this.tcpStates = new Uint8Array(capacity);
    this.tcpPrivate = new Uint8Array(capacity);
    this.marks = new Uint32Array(capacity);
    this.expiry = new Float64Array(capacity);
    this.started = new Float64Array(capacity);
    // free list in id order so ids are handed out 0, 1, 2, ...
    for (let id = capacity - 1; id >= 0; id--) {
      this.nextNode[id << 1] = this.freeHead;
      this.freeHead = id;
    }
  }

  /** Entries allocated (confirmed and unconfirmed), as Linux nf_conntrack_count. */
  get count(): number {
    return this.used;
  }

  /** Bytes held by the table's arrays (for `qnat show stats` and the memory test). */
  get memoryBytes(): number {
    return (
      this.tupleSrc.byteLength + this.tupleDst.byteLength + this.tuplePorts.byteLength + this.nextNode.byteLength +
      this.buckets.byteLength + this.protocols.byteLength + this.slots.byteLength + this.statuses.byteLength +
      this.tcpStates.byteLength + this.tcpPrivate.byteLength + this.marks.byteLength + this.expiry.byteLength +
      this.started.byteLength
    );
  }

  // ---- hashing -------------------------------------------------------------------------------

  /** Seeded murmur3-style mix of the tuple (Linux hash_conntrack_raw uses siphash with a random seed). */
  private hashTuple(protocol: number, src: number, dst: number, ports: number): number {
    let h = this.hashSeed ^ protocol;
    h = mixWord(h, src);
    h = mixWord(h, dst);
    h = mixWord(h, ports);
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    return h & this.bucketMask;
  }

  private nodeBucket(node: number): number {
    return this.hashTuple(this.protocols[node >> 1]!, this.tupleSrc[node]!, this.tupleDst[node]!, this.tuplePorts[node]!);
  }

  private link(node: number): void {
    const bucket = this.nodeBucket(node);
    this.nextNode[node] = this.buckets[bucket]!;
    this.buckets[bucket] = node;
  }

  private unlink(node: number): void {
    const bucket = this.nodeBucket(node);
    let current = this.buckets[bucket]!;
    let previous = -1;
    while (current >= 0) {
      if (current === node) {
        const after = this.nextNode[current]!;
        if (previous < 0) this.buckets[bucket] = after;
        else this.nextNode[previous] = after;
        this.nextNode[node] = -1;
        return;
      }
      previous = current;
      current = this.nextNode[current]!;
    }
  }

  private isDead(id: number, now: number): boolean {
    // nf_ct_is_expired: (s32)(ct->timeout - nfct_time_stamp) <= 0; a killed entry is dying.
    return this.expiry[id]! <= now || (this.statuses[id]! & CtStatus.Dying) !== 0;
  }

  /**
   * The live confirmed node holding exactly this tuple, or -1. A dead entry met on the way is
   * removed (Linux ____nf_conntrack_find -> nf_ct_gc_expired) and -1 returned.
   */
  private findNode(protocol: number, src: number, dst: number, ports: number, now: number): number {
    let node = this.buckets[this.hashTuple(protocol, src, dst, ports)]!;
    while (node >= 0) {
      if (
        this.tupleSrc[node] === src &&
        this.tupleDst[node] === dst &&
        this.tuplePorts[node] === ports &&
        this.protocols[node >> 1] === protocol
      ) {
        const id = node >> 1;
        if (this.isDead(id, now)) {
          this.counters.expired++;
          this.freeEntry(id);
          return -1;
        }
        return node;
      }
      node = this.nextNode[node]!;
    }
    return -1;
  }

  // ---- hot-path API --------------------------------------------------------------------------

  /** The handle `(id << 1) | dir` of the live connection with this tuple in either direction, or -1. */
  lookup(protocol: number, src: number, dst: number, sport: number, dport: number): number {
    return this.lookupAt(protocol, src, dst, sport, dport, this.clock.now());
  }

  /** `lookup` with the time already read (one clock read per packet in track()). */
  lookupAt(protocol: number, src: number, dst: number, sport: number, dport: number, now: number): number {
    const node = this.findNode(protocol, src >>> 0, dst >>> 0, ((sport << 16) | dport) >>> 0, now);
    if (node >= 0) this.counters.found++;
    return node;
  }

  /**
   * Linux nf_conntrack_tuple_taken: true when a live confirmed entry other than `ignoreId` holds
   * this tuple in either direction. Dead entries do not count (and are left for lookup/gc).
   */
  isTupleTaken(protocol: number, src: number, dst: number, sport: number, dport: number, ignoreId = -1): boolean {
    src >>>= 0;
    dst >>>= 0;
    const ports = ((sport << 16) | dport) >>> 0;
    const now = this.clock.now();
    let node = this.buckets[this.hashTuple(protocol, src, dst, ports)]!;
    while (node >= 0) {
      if (
        this.tupleSrc[node] === src &&
        this.tupleDst[node] === dst &&
        this.tuplePorts[node] === ports &&
        this.protocols[node >> 1] === protocol &&
        node >> 1 !== ignoreId &&
        !this.isDead(node >> 1, now)
      ) {
        return true;
      }
      node = this.nextNode[node]!;
    }
    return false;
  }

  /**
   * Allocates an unconfirmed entry for a NEW packet with this original tuple; the reply tuple is
   * its inverse (Linux nf_ct_invert_tuple; ICMP types mapped by invmap). Returns the id, or -1
   * when the table is full and early drop found nothing to evict (`counters.dropFull`).
   * The caller (tracker) sets the timeout; the entry expires "now" until it does.
   */
  create(protocol: number, src: number, dst: number, sport: number, dport: number): number {
    src >>>= 0;
    dst >>>= 0;
    if (this.freeHead < 0 && !this.earlyDrop(this.hashTuple(protocol, src, dst, ((sport << 16) | dport) >>> 0))) {
      this.counters.dropFull++;
      return -1;
    }
    const id = this.freeHead;
    this.freeHead = this.nextNode[id << 1]!;
    const orig = id << 1;
    const reply = orig | 1;
    this.slots[id] = SLOT_USED;
    this.protocols[id] = protocol;
    this.statuses[id] = 0;
    this.tcpStates[id] = 0;
    this.tcpPrivate[id] = TCP_PRIVATE_INITIAL;
    this.marks[id] = 0;
    const now = this.clock.now();
    this.expiry[id] = now;
    this.started[id] = now;
    this.tupleSrc[orig] = src;
    this.tupleDst[orig] = dst;
    this.tuplePorts[orig] = ((sport << 16) | dport) >>> 0;
    this.tupleSrc[reply] = dst;
    this.tupleDst[reply] = src;
    if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) {
      this.tuplePorts[reply] = ((dport << 16) | sport) >>> 0;
    } else if (protocol === IPPROTO_ICMP) {
      const inverse = icmpInverseType(dport >>> 8);
      const type = inverse < 0 ? dport >>> 8 : inverse;
      this.tuplePorts[reply] = ((sport << 16) | (type << 8) | (dport & 0xff)) >>> 0;
    } else {
      this.tuplePorts[reply] = ((dport << 16) | sport) >>> 0;
    }
    this.nextNode[orig] = -1;
    this.nextNode[reply] = -1;
    this.used++;
    this.counters.created++;
    return id;
  }

  /**
   * NAT rewrites the reply tuple (nf_nat_setup_info -> nf_conntrack_alter_reply). Normally before
   * confirm; on a confirmed entry the reply node is re-hashed.
   */
  setReplyTuple(id: number, src: number, dst: number, sport: number, dport: number): void {
    const reply = (id << 1) | 1;
    const confirmed = (this.statuses[id]! & CtStatus.Confirmed) !== 0;
    if (confirmed) this.unlink(reply);
    this.tupleSrc[reply] = src >>> 0;
    this.tupleDst[reply] = dst >>> 0;
    this.tuplePorts[reply] = ((sport << 16) | dport) >>> 0;
    if (confirmed) this.link(reply);
  }

  /**
   * __nf_conntrack_confirm: inserts both tuples. When either is already held by a live entry
   * (two NEW packets raced, or NAT chose a taken tuple) the entry is freed, `clashWith` names the
   * holder, `counters.insertFailed` counts it, and false is returned. Confirming twice is a no-op.
   */
  confirm(id: number): boolean {
    if (this.slots[id] !== SLOT_USED) return false;
    const status = this.statuses[id]!;
    if (status & CtStatus.Confirmed) return true;
    const now = this.clock.now();
    const orig = id << 1;
    const reply = orig | 1;
    const protocol = this.protocols[id]!;
    let clash = this.findNode(protocol, this.tupleSrc[orig]!, this.tupleDst[orig]!, this.tuplePorts[orig]!, now);
    if (clash < 0) clash = this.findNode(protocol, this.tupleSrc[reply]!, this.tupleDst[reply]!, this.tuplePorts[reply]!, now);
    if (clash >= 0) {
      this.clashWith = clash;
      this.counters.insertFailed++;
      this.freeEntry(id);
      return false;
    }
    this.clashWith = -1;
    this.statuses[id] = status | CtStatus.Confirmed;
    this.link(orig);
    this.link(reply);
    this.counters.inserted++;
    return true;
  }

  /** Frees an unconfirmed entry whose packet was dropped. No-op on a free slot or a confirmed entry. */
  release(id: number): void {
    if (id < 0 || id >= this.capacity || this.slots[id] !== SLOT_USED) return;
    if (this.statuses[id]! & CtStatus.Confirmed) return;
    this.counters.released++;
    this.freeEntry(id);
  }

  /** Removes an entry now (conntrack -D, TCP reopen). No-op on a free slot. */
  remove(id: number): void {
    if (id < 0 || id >= this.capacity || this.slots[id] !== SLOT_USED) return;
    this.counters.removed++;
    this.freeEntry(id);
  }

  /**
   * nf_ct_kill: the entry is marked dying and expires now, but stays readable until a lookup or
   * gc removes it, so the packet that killed it can still be translated from its binding.
   */
  kill(id: number): void {
    if (this.slots[id] !== SLOT_USED) return;
    this.statuses[id] = this.statuses[id]! | CtStatus.Dying;
    this.expiry[id] = 0;
  }

  private freeEntry(id: number): void {
    if (this.onRemove) this.onRemove(id);
    if (this.statuses[id]! & CtStatus.Confirmed) {
      this.unlink(id << 1);
      this.unlink((id << 1) | 1);
    }
    this.slots[id] = SLOT_FREE;
    this.statuses[id] = 0;
    this.nextNode[id << 1] = this.freeHead;
    this.freeHead = id;
    this.used--;
  }

  /**
   * Linux early_drop(): walk CT_EVICTION_RANGE buckets from `bucket` and free the first confirmed
   * entry that is dead, not ASSURED, or a closing TCP connection. True when a slot was freed.
   */
  private earlyDrop(bucket: number): boolean {
    const now = this.clock.now();
    for (let i = 0; i < CT_EVICTION_RANGE; i++) {
      let node = this.buckets[(bucket + i) & this.bucketMask]!;
      while (node >= 0) {
        const id = node >> 1;
        if (this.isDead(id, now)) {
          this.counters.expired++;
          this.freeEntry(id);
          return true;
        }
        if ((this.statuses[id]! & CtStatus.Assured) === 0 || this.canEarlyDropAssured(id)) {
          this.counters.earlyDrop++;
          this.freeEntry(id);
          return true;
        }
        node = this.nextNode[node]!;
      }
    }
    return false;
  }

  /** tcp_can_early_drop (nf_conntrack_proto_tcp.c): FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE. */
  private canEarlyDropAssured(id: number): boolean {
    if (this.protocols[id] !== IPPROTO_TCP) return false;
    const state = this.tcpStates[id]!;
    return state >= 4 && state <= 8;
  }

  /**
   * Incremental expiry sweep (Linux gc_worker, OVS conntrack_clean): looks at `budget` slots from a
   * rotating cursor and removes dead confirmed entries. O(budget). Returns how many it removed.
   */
  gc(budget: number): number {
    const now = this.clock.now();
    let removed = 0;
    let cursor = this.gcCursor;
    const capacity = this.capacity;
    for (let i = 0; i < budget && i < capacity; i++) {
      if (this.slots[cursor] === SLOT_USED && (this.statuses[cursor]! & CtStatus.Confirmed) !== 0 && this.isDead(cursor, now)) {
        this.counters.expired++;
        this.freeEntry(cursor);
        removed++;
      }
      cursor++;
      if (cursor === capacity) cursor = 0;
    }
    this.gcCursor = cursor;
    return removed;
  }

  // ---- accessors (numeric, hot path) ---------------------------------------------------------

  isAllocated(id: number): boolean {
    return id >= 0 && id < this.capacity && this.slots[id] === SLOT_USED;
  }
  protocol(id: number): number {
    return this.protocols[id]!;
  }
  origSrc(id: number): number {
    return this.tupleSrc[id << 1]!;
  }
  origDst(id: number): number {
    return this.tupleDst[id << 1]!;
  }
  origSport(id: number): number {
    return this.tuplePorts[id << 1]! >>> 16;
  }
  origDport(id: number): number {
    return this.tuplePorts[id << 1]! & 0xffff;
  }
  replySrc(id: number): number {
    return this.tupleSrc[(id << 1) | 1]!;
  }
  replyDst(id: number): number {
    return this.tupleDst[(id << 1) | 1]!;
  }
  replySport(id: number): number {
    return this.tuplePorts[(id << 1) | 1]! >>> 16;
  }
  replyDport(id: number): number {
    return this.tuplePorts[(id << 1) | 1]! & 0xffff;
  }
  /** Tuple of direction `dir` (0 original, 1 reply). */
  tupleSrcOf(id: number, dir: number): number {
    return this.tupleSrc[(id << 1) | dir]!;
  }
  tupleDstOf(id: number, dir: number): number {
    return this.tupleDst[(id << 1) | dir]!;
  }
  tupleSportOf(id: number, dir: number): number {
    return this.tuplePorts[(id << 1) | dir]! >>> 16;
  }
  tupleDportOf(id: number, dir: number): number {
    return this.tuplePorts[(id << 1) | dir]! & 0xffff;
  }
  status(id: number): number {
    return this.statuses[id]!;
  }
  /** ORs `bits` into the status (Linux set_bit / `ct->status |= bits`). */
  setStatus(id: number, bits: number): void {
    this.statuses[id] = this.statuses[id]! | bits;
  }
  /** Clears `bits` from the status (Linux clear_bit). */
  clearStatus(id: number, bits: number): void {
    this.statuses[id] = this.statuses[id]! & ~bits;
  }
  isConfirmed(id: number): boolean {
    return (this.statuses[id]! & CtStatus.Confirmed) !== 0;
  }
  /** TCP state (TcpState in tcp.ts); 0 (NONE) for other protocols. */
  tcpState(id: number): number {
    return this.tcpStates[id]!;
  }
  setTcpState(id: number, state: number): void {
    this.tcpStates[id] = state;
  }
  /** The TCP tracker's private bits (last flag index/direction, CLOSE_INIT...; see tcp.ts). */
  tcpFlags(id: number): number {
    return this.tcpPrivate[id]!;
  }
  setTcpFlags(id: number, bits: number): void {
    this.tcpPrivate[id] = bits;
  }
  mark(id: number): number {
    return this.marks[id]!;
  }
  setMark(id: number, mark: number): void {
    this.marks[id] = mark >>> 0;
  }
  /** Absolute clock time (seconds) at which the entry expires. */
  expiresAt(id: number): number {
    return this.expiry[id]!;
  }
  /** Clock time of the entry's first packet. */
  startedAt(id: number): number {
    return this.started[id]!;
  }
  /** nf_ct_refresh: the entry now expires `timeout` seconds after `now` (unless IPS_FIXED_TIMEOUT). */
  refresh(id: number, timeout: number, now: number): void {
    if (this.statuses[id]! & CtStatus.FixedTimeout) return;
    this.expiry[id] = now + timeout;
  }
  /** Sets the absolute expiry time. */
  setExpiresAt(id: number, at: number): void {
    this.expiry[id] = at;
  }

  // ---- control plane -------------------------------------------------------------------------

  /** Ids of the live confirmed entries, in id order (what `conntrack -L` lists). */
  entries(): number[] {
    const now = this.clock.now();
    const ids: number[] = [];
    for (let id = 0; id < this.capacity; id++) {
      if (this.slots[id] === SLOT_USED && (this.statuses[id]! & CtStatus.Confirmed) !== 0 && !this.isDead(id, now)) ids.push(id);
    }
    return ids;
  }

  /** Removes every entry (conntrack -F). */
  flush(): void {
    for (let id = 0; id < this.capacity; id++) {
      if (this.slots[id] === SLOT_USED) this.remove(id);
    }
  }
}

function mixWord(h: number, word: number): number {
  let k = Math.imul(word, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}
