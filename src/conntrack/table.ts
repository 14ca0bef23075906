/**
 * The connection tracking table: Linux nf_conntrack_core.c's hash of `nf_conntrack_tuple_hash`
 * (each connection is indexed twice, by its original and by its reply tuple) in typed arrays.
 *
 * Layout (no object per entry): an entry `id` owns two tuple nodes, `node = (id << 1) | dir` —
 * node 2*id is the original tuple, 2*id+1 the reply tuple. A node is exactly the handle `lookup`
 * returns. Each entry is one packed 64-byte record (see Entry.Words below): per node src, dst,
 * (sport << 16 | dport) and the hash-chain link (-1 terminated); per entry protocol, TCP state and
 * private flags, status (Linux IPS_* bits), mark, the dataplane's route cache, expiry time and
 * start time. Buckets: a power of two >= capacity, each the head node of a chain. Free entries
 * are chained through the original node's link.
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
import { type HashKey, hashKeyFrom, hsiphashBits } from "../core/hash.js";
import type { BucketHasher } from "../core/hash-lanes.js";
import type { Clock } from "../core/clock.js";
import { XorShift32 } from "../core/rng.js";
import { TABLE_LOCK_EPOCH, TABLE_LOCK_WORDS, TableLock } from "../core/table-lock.js";
import { UndoLog } from "../core/undo-log.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../wire/packet-info.js";
import { type ConntrackTimeouts, resolveTimeouts } from "./timeouts.js";
import { icmpInverseDport } from "./tuple.js";

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

/**
 * Status bits the per-packet code tests. CtStatus is a (non-const) enum, an object whose
 * properties optimized code would load on every use; a const enum is written as number literals.
 */
const enum Status {
  /** Bits 0-23 are CtStatus bits (Linux uses 0-15); bits 24-31 are the owner queue (`ownerQueue`). */
  Bits = 0xffffff,
  OwnerShift = 24,
  Dying = CtStatus.Dying,
  FixedTimeout = CtStatus.FixedTimeout,
  Confirmed = CtStatus.Confirmed,
  Assured = CtStatus.Assured,
}

/** IPS_NAT_MASK and IPS_NAT_DONE_MASK. */
export const CT_STATUS_NAT_MASK = CtStatus.SrcNat | CtStatus.DstNat;
export const CT_STATUS_NAT_DONE_MASK = CtStatus.SrcNatDone | CtStatus.DstNatDone;

/** The most entries a table can hold (2^25: 2 GiB of 64-byte records). */
export const MAX_CONNTRACK_CAPACITY = 1 << 25;

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
  /** of `invalid`: a bad TCP/UDP/ICMP checksum (nf_conntrack_checksum, checksum.ts) */
  invalidChecksum: number;
  /** TCP packets INVALID for their flag combination (tcp_error: "invalid tcp flag combination") */
  tcpInvalidFlags: number;
  /** TCP packets INVALID by the state table (sIV: e.g. an ACK answering nothing, a SYN/ACK in ESTABLISHED) */
  tcpInvalidState: number;
  /** TCP segments INVALID outside the window (tcp_in_window: SEQ over the upper bound, ACK over the upper bound) */
  tcpOutOfWindow: number;
  /** RSTs INVALID for their sequence number (nf_conntrack_tcp_packet: "invalid rst", before td_maxack) */
  tcpRstOutOfWindow: number;
  /** TCP segments accepted but ignored by the window check (retransmitted or overly delayed: NFCT_TCP_IGNORE) */
  tcpWindowIgnore: number;
}

/** Hash-chain walks (`ConntrackTable.chainStats`), for `qnat show stats`. */
export interface ConntrackChainStats {
  /** tuple lookups (packets, confirms, NAT's probes for a free tuple) */
  lookups: number;
  /** chain nodes those lookups walked */
  nodesWalked: number;
  /** the most nodes one lookup walked: the longest chain seen */
  longestWalk: number;
}

export interface ConntrackTableOptions {
  capacity: number;
  clock: Clock;
  timeouts?: Partial<ConntrackTimeouts>;
  /**
   * Key of the tuple hash (HalfSipHash, src/core/hash.ts). A running router gives a random one
   * (from a CryptoRng, dataplane/from-config.ts) against hash flooding, as Linux draws
   * nf_conntrack_hash_rnd at boot.
   */
  key?: HashKey;
  /** Without `key`: a seed the key is derived from (XorShift32), for reproducible tests. */
  seed?: number;
  /** Called just before an entry's slot is freed (NAT releases its binding state). Control-plane rate. */
  onRemove?: (id: number) => void;
  /**
   * Linux sysctl nf_conntrack_tcp_be_liberal (default off): when on, only out-of-window RSTs are
   * INVALID; every other segment the TCP window check would refuse is accepted.
   */
  tcpBeLiberal?: boolean;
  /**
   * Put the table's memory (records, buckets, TCP window state, the header with the free list,
   * the entry count, the gc cursor, the hash key and the lock) in SharedArrayBuffers, so that
   * other threads can `attach` to it (`sharedMemory()`; docs/multi-core.md "Shared tables").
   */
  sharable?: boolean;
  /**
   * The queues of a router with workers (`workers: N`, default 1): the free slots are kept in one
   * list per queue, slot `id` on list `(id >> 4) % queues`, and a thread takes slots from its own
   * queue's list first (`ownQueue`). A connection's packets are forwarded by the thread of the
   * queue its first packet came by (`ownerQueue`), so the lock-free sequence words of 16
   * consecutive slots, which share a cache line, are mostly written by one thread.
   */
  queues?: number;
  /**
   * Attach to the memory of a sharable table made by another thread (its `sharedMemory()`): this
   * object reads and writes the same entries; `capacity` must be that table's, and the hash key
   * is that table's (`key` and `seed` are not used). Counters, chain statistics, the pinned time,
   * the undo journal and `clashWith` stay this object's own.
   */
  shared?: ConntrackSharedMemory;
}

/** The table's buffers: SharedArrayBuffers when sharable. */
type TableMemory = { readonly [K in keyof ConntrackSharedMemory]: ArrayBuffer | SharedArrayBuffer };

/**
 * The memory of a sharable table (`ConntrackTable.sharedMemory()`): plain SharedArrayBuffers,
 * so it crosses `postMessage` to a worker thread, which attaches with the `shared` option.
 */
export interface ConntrackSharedMemory {
  /** Header.Words words of table state, the TABLE_LOCK_WORDS of the lock, then a free-list head per queue. */
  readonly header: SharedArrayBuffer;
  /** The records, Entry.Words Int32 words per entry. */
  readonly entries: SharedArrayBuffer;
  readonly buckets: SharedArrayBuffer;
  readonly tcpWindow: SharedArrayBuffer;
  /** One sequence word per entry (`findStableInBucket`). */
  readonly sequence: SharedArrayBuffer;
}

/**
 * TCP window tracking state (Linux `struct ip_ct_tcp`, seen[2] and the last_* fields), written
 * only by tcp.ts: 10 words per entry in a parallel Int32Array (`tcpWindow`), and last_end and
 * last_ack in words 14-15 of the entry's record, which only UDP uses otherwise (its start time,
 * for `ct->proto.udp.stream_ts`; TCP has no use for a start time). The parallel array rather than
 * a larger record: 64 + 40 bytes would not be a power of two (the hash and lookup code index
 * records with a shift) and a 128-byte record would cost 64 more bytes for every protocol, over
 * the 128 bytes an entry may take at 1M entries with the NAT index.
 *
 * tcpWindow words: per direction d (original 0, reply 1) at d * 4: td_end, td_maxend, td_maxwin,
 * td_maxack (uint32 as int32 bits); then (last_win << 16 | last_end - last_seq) — a segment spans
 * at most 65535 - 40 + 2 sequence numbers, so the length gives last_seq back exactly — and one
 * word of small fields, TcpWindowWord.Bits (see tcp.ts).
 */
export const enum TcpWindowWord {
  End = 0,
  MaxEnd = 1,
  MaxWin = 2,
  MaxAck = 3,
  LastWinLen = 8,
  Bits = 9,
  /** Words per entry. */
  Words = 10,
}
/** TcpWindowWord.Words for the control plane (the state file's entry layout). */
export const TCP_WINDOW_WORDS: number = TcpWindowWord.Words;

/** TCP private flags byte (see tcp.ts): kept here only to initialise it. */
const TCP_PRIVATE_INITIAL = 5; // last flag index = TCP_NONE_SET, as tcp_new

/**
 * Packed entry layout: one 64-byte record (a cache line) per entry in one ArrayBuffer, read as
 * Int32 words (`Entry.Words` per entry) and, for the two times, as Float64.
 * A lookup that hits touches its bucket and this one record; the struct-of-arrays layout before it
 * touched one cache line (and TLB page) per field array, 8-10 per packet.
 *
 * The layout's numbers are const enums, which TypeScript writes as literals: a module-level
 * `const` is, in every function that reads it, a context-slot load and a check that it is
 * initialised — bytecode that V8 counts against the budget of what it inlines into the fast path
 * (dataplane/fast-path.ts), and a load and a test per use in the optimized code.
 */
const enum Entry {
  /** Int32 words per entry. */
  Words = 16,
  /** log2(Words) */
  Shift = 4,
  /** log2(Float64 per entry) */
  DoubleShift = 3,
  /** protocol (bits 0-7) | TCP state (8-15) | TCP private flags (16-23) | slot used (bit 24). */
  Meta = 8,
  Status = 9,
  Mark = 10,
  /** The dataplane's route cache (routeCache below); 0: nothing cached. */
  Route = 11,
  /** TCP entries: Linux ip_ct_tcp last_end and last_ack (see TcpWindowWord.Words), UDP's start time's words. */
  TcpLastEnd = 14,
  TcpLastAck = 15,
}
/** Float64 index within the entry (words 12-13 and 14-15). Started is UDP's; TCP uses its words. */
const enum EntryDouble {
  Expiry = 6,
  Started = 7,
}
/** Node words: src, dst, ports, next. The original node is at word 0, the reply node at word 4. */
const enum NodeWord {
  Src = 0,
  Dst = 1,
  Ports = 2,
  Next = 3,
}
/** Bits of the Meta word. */
const enum Meta {
  Used = 1 << 24,
}

/**
 * The header: the table's mutable state that is not per object, so that every thread attached to
 * a shared table counts its entries and sweeps with one gc cursor; then what an attached object
 * needs to read the memory (capacity, hash key). The free lists' heads follow the lock's words
 * (`freeHeads`).
 */
const enum Header {
  Used = 0,
  GcCursor = 1,
  Capacity = 2,
  K0 = 3,
  K1 = 4,
  /** Words in the header. */
  Words = 8,
}

/** The most chain nodes a lock-free lookup walks before it gives up (and takes the lock). */
const LOCK_FREE_WALK = 64;

/** The table's arrays in its undo journal (the order they are registered in). */
const JOURNAL_WORDS = 0;
const JOURNAL_BUCKETS = 1;
const JOURNAL_WINDOW = 2;

/** Word offset of node `node` ((id << 1) | dir) in the entry array. */
function nodeBase(node: number): number {
  return ((node >> 1) << Entry.Shift) + ((node & 1) << 2);
}

export class ConntrackTable {
  readonly capacity: number;
  readonly clock: Clock;
  readonly timeouts: ConntrackTimeouts;
  readonly counters: ConntrackCounters = {
    found: 0,
    invalid: 0,
    invalidChecksum: 0,
    ignore: 0,
    created: 0,
    inserted: 0,
    insertFailed: 0,
    earlyDrop: 0,
    dropFull: 0,
    expired: 0,
    released: 0,
    removed: 0,
    tcpInvalidFlags: 0,
    tcpInvalidState: 0,
    tcpOutOfWindow: 0,
    tcpRstOutOfWindow: 0,
    tcpWindowIgnore: 0,
  };
  /**
   * TCP window tracking state, TcpWindowWord.Words per entry (layout above). tcp.ts reads it and
   * writes it, each store preceded by `journalWindowWord` while the undo journal records.
   */
  readonly tcpWindow: Int32Array;
  /** After a failed `confirm`: the handle ((id << 1) | dir) of the entry whose tuple clashed, else -1. */
  clashWith = -1;
  /** nf_conntrack_tcp_be_liberal (config `conntrack.tcp_be_liberal`). */
  readonly tcpBeLiberal: boolean;

  /**
   * The undo journal of the entries, buckets and TCP window state (src/core/undo-log.ts), shared
   * with the NAT engine's by-source index (nat/binding.ts): `qnat trace` records while its packet
   * runs and undoes afterwards. Every store to those arrays is preceded by
   * `if (this.undoLog.recording) this.journalX(index)` — the index crosses the call, never the
   * value (an int32 or double argument to a call V8 does not inline may be boxed) — so a packet
   * outside a trace pays one load and a never-taken branch per store.
   */
  readonly undoLog = new UndoLog();

  /**
   * The lock of a shared table set (this table and the NAT's by-source index; src/core/table-lock.ts),
   * null for a table that is not shared. `lock()`/`unlock()` take it; a table that is not shared
   * pays one never-taken branch for each.
   */
  readonly tableLock: TableLock | null;
  /** The SharedArrayBuffers, for `sharedMemory()`; null when not sharable. */
  private readonly memory: ConntrackSharedMemory | null;

  /** The entries, Entry.Words Int32 words each (layout above). */
  private readonly words: Int32Array;
  /** The same memory as Float64, 2^Entry.DoubleShift per entry (expiry, start time). */
  private readonly doubles: Float64Array;
  // per bucket
  private readonly buckets: Int32Array;
  private readonly bucketMask: number;

  /** The tuple hash's key words (options.key). */
  private readonly k0: number;
  private readonly k1: number;
  /**
   * Hash-chain walks, for `qnat show stats` (a collision attack shows up here): [0] lookups,
   * [1] nodes walked by them, [2] the most nodes one lookup walked. Float64 so totals do not wrap;
   * a typed array so counting costs a load and a store, never an allocation.
   */
  private readonly walks = new Float64Array(3);
  private readonly onRemove: ((id: number) => void) | undefined;
  /** Header.Used, Header.GcCursor, Header.Capacity, Header.K0, Header.K1 (shared when the table is). */
  private readonly header: Int32Array;
  /** The head of every free list (-1: empty); slot `id` is on list `(id >> 4) % freeHeads.length`. */
  private readonly freeHeads: Int32Array;
  /**
   * Shared tables: one sequence word per entry, a seqcount (Linux include/linux/seqlock.h) for the
   * lock-free established path (`findStableInBucket`). The lock holder makes it odd, changes what
   * the entry is — its tuples, its chain links, its slot being used and confirmed — and makes it
   * even again, 2 more than before (`beginChange`/`endChange`). A lock-free reader takes its value
   * before reading the entry and commits its writes (expiry, route cache) only by
   * compareExchange from that value to odd and back (`beginLockFreeCommit`): an entry freed,
   * reused or re-linked meanwhile is never written, nor its packet translated. Empty when not shared.
   */
  private readonly sequence: Int32Array;
  /** [0] the sequence word `findStableInBucket` saw, [1] the readers' epoch it saw. */
  private readonly stable = new Int32Array(2);
  /** The lock's words (TableLock; the epoch at TABLE_LOCK_EPOCH), read directly per lock-free packet. */
  private readonly lockWords: Int32Array;
  /**
   * [0]: the time pinned by `pinTime` for the current batch (NaN: read the clock); [1]: the time
   * `findNode` judges expiry by. Kept in a Float64Array rather than passed around: a double that
   * crosses a call V8 does not inline is boxed, i.e. allocated, and these run for every packet.
   */
  private readonly times = new Float64Array([NaN, 0]);
  /**
   * With workers: the queue of every device this thread reads (0..255, MAX_TAP_QUEUES), recorded
   * in the entries it creates (`ownerQueue`). Set by the forwarder (io/forwarder.ts useQueues).
   */
  ownQueue = 0;

  constructor(options: ConntrackTableOptions) {
    const capacity = Math.floor(options.capacity);
    if (!(capacity >= 1 && capacity <= MAX_CONNTRACK_CAPACITY)) throw new RangeError("conntrack capacity must be 1..2^25");
    this.capacity = capacity;
    this.clock = options.clock;
    this.timeouts = resolveTimeouts(options.timeouts);
    this.onRemove = options.onRemove;
    this.tcpBeLiberal = options.tcpBeLiberal ?? false;
    let bucketCount = 16;
    while (bucketCount < capacity) bucketCount *= 2;
    this.bucketMask = bucketCount - 1;

    const shared = options.shared;
    const sharable = shared !== undefined || options.sharable === true;
    const Memory = sharable ? SharedArrayBuffer : ArrayBuffer;
    const queues = options.queues ?? 1;
    if (!(Number.isInteger(queues) && queues >= 1 && queues <= 256)) throw new RangeError(`conntrack queues ${queues}: 1..256`);
    const memory: TableMemory = shared ?? {
      header: new Memory((Header.Words + TABLE_LOCK_WORDS + queues) * 4),
      entries: new Memory(capacity * Entry.Words * 4),
      buckets: new Memory(bucketCount * 4),
      tcpWindow: new Memory(capacity * TcpWindowWord.Words * 4),
      sequence: new Memory(sharable ? capacity * 4 : 0),
    };
    this.memory = sharable ? (memory as ConntrackSharedMemory) : null;
    this.header = new Int32Array(memory.header, 0, Header.Words);
    this.lockWords = new Int32Array(memory.header, Header.Words * 4, TABLE_LOCK_WORDS);
    this.freeHeads = new Int32Array(memory.header, (Header.Words + TABLE_LOCK_WORDS) * 4);
    this.tableLock = sharable ? new TableLock(this.lockWords) : null;
    this.words = new Int32Array(memory.entries);
    this.doubles = new Float64Array(memory.entries);
    this.buckets = new Int32Array(memory.buckets);
    this.tcpWindow = new Int32Array(memory.tcpWindow);
    this.sequence = new Int32Array(memory.sequence);
    // Registered in the order of JOURNAL_WORDS, JOURNAL_BUCKETS, JOURNAL_WINDOW.
    this.undoLog.register(this.words, this.doubles);
    this.undoLog.register(this.buckets);
    this.undoLog.register(this.tcpWindow);

    if (shared !== undefined) {
      if (this.header[Header.Capacity] !== capacity || this.words.length !== capacity * Entry.Words || this.buckets.length !== bucketCount) {
        throw new RangeError(`conntrack capacity ${capacity} is not the shared table's (${this.header[Header.Capacity]})`);
      }
      this.k0 = this.header[Header.K0]!;
      this.k1 = this.header[Header.K1]!;
      return;
    }
    const key = options.key ?? hashKeyFrom(new XorShift32(options.seed ?? 0x2545f491));
    this.k0 = key.k0 | 0;
    this.k1 = key.k1 | 0;
    const h = this.header;
    h[Header.Capacity] = capacity;
    h[Header.K0] = this.k0;
    h[Header.K1] = this.k1;
    this.buckets.fill(-1);
    // every free list in id order, so that one queue's ids are handed out 0, 1, 2, ... (queues 1)
    this.freeHeads.fill(-1);
    for (let id = capacity - 1; id >= 0; id--) this.pushFree(id);
  }

  /**
   * The memory of a sharable table, for another thread to attach to (option `shared`). Throws
   * for a table made without `sharable`.
   */
  sharedMemory(): ConntrackSharedMemory {
    if (this.memory === null) throw new Error("this conntrack table is not sharable (option sharable)");
    return this.memory;
  }

  /** True when the table's memory is shared (or can be): its users must take `lock()`. */
  get isShared(): boolean {
    return this.tableLock !== null;
  }

  /**
   * Takes the lock of the shared table set (re-entrant; src/core/table-lock.ts) before a batch or
   * a control-plane command works on the table and the NAT index. No-op on a table that is not shared.
   */
  lock(): void {
    if (this.tableLock !== null) this.tableLock.acquire();
  }

  /** Gives back one `lock()`. */
  unlock(): void {
    if (this.tableLock !== null) this.tableLock.release();
  }

  /** `work()` under `lock()` (control plane: a closure per call). */
  locked<T>(work: () => T): T {
    this.lock();
    try {
      return work();
    } finally {
      this.unlock();
    }
  }

  /**
   * What other threads change while this one holds the lock, so that no one may put it back as
   * it was: the lock (its state word turns "held with sleepers", its epoch) and the sequence words
   * (a lock-free commit holds one odd). A trace's state snapshot leaves them out
   * (control/trace.ts holdState). Empty for a table that is not shared.
   */
  get synchronization(): readonly object[] {
    return this.tableLock === null ? [] : [this.tableLock, this.lockWords, this.sequence];
  }

  /** Entries allocated (confirmed and unconfirmed), as Linux nf_conntrack_count. */
  get count(): number {
    return this.header[Header.Used]!;
  }

  /** Bytes held by the table's arrays (for `qnat show stats` and the memory test). */
  get memoryBytes(): number {
    return this.words.byteLength + this.buckets.byteLength + this.tcpWindow.byteLength + this.sequence.byteLength;
  }

  /**
   * The time conntrack uses: the pinned batch time if any, else the clock. The dataplane pins the
   * time once per batch (`pinTime`), as Linux reads jiffies rather than a clock per packet; a
   * batch lasts microseconds and the table's resolution is seconds.
   */
  now(): number {
    const pinned = this.times[0]!;
    return pinned === pinned ? pinned : this.clock.now();
  }

  /** Uses `now` as the time of every operation until `unpinTime` (one clock read per batch). */
  pinTime(now: number): void {
    this.times[0] = now;
  }

  unpinTime(): void {
    this.times[0] = NaN;
  }

  // ---- hashing -------------------------------------------------------------------------------

  /** Keyed HalfSipHash of the tuple (Linux hash_conntrack_raw: siphash of the tuple, random key). */
  private hashTuple(protocol: number, src: number, dst: number, ports: number): number {
    return hsiphashBits(this.k0, this.k1, 4, protocol, src, dst, ports) & this.bucketMask;
  }

  private nodeBucket(node: number): number {
    const w = this.words;
    const b = nodeBase(node);
    return this.hashTuple(w[((node >> 1) << Entry.Shift) + Entry.Meta]! & 0xff, w[b + NodeWord.Src]!, w[b + NodeWord.Dst]!, w[b + NodeWord.Ports]!);
  }

  // ---- undo journal (see `undoLog`) --------------------------------------------------------------

  /** Saves word `at` of the entries before a store (call only while `undoLog.recording`). */
  private journalWord(at: number): void {
    this.undoLog.save(JOURNAL_WORDS, at, this.words[at]!);
  }

  /** Saves Float64 `at` of the entries (its two Int32 words) before a store. */
  private journalDouble(at: number): void {
    this.undoLog.save(JOURNAL_WORDS, at << 1, this.words[at << 1]!);
    this.undoLog.save(JOURNAL_WORDS, (at << 1) + 1, this.words[(at << 1) + 1]!);
  }

  private journalBucket(bucket: number): void {
    this.undoLog.save(JOURNAL_BUCKETS, bucket, this.buckets[bucket]!);
  }

  /**
   * tcp.ts calls this before every store to `tcpWindow[at]`:
   * `if (table.undoLog.recording) table.journalWindowWord(at)`.
   */
  journalWindowWord(at: number): void {
    this.undoLog.save(JOURNAL_WINDOW, at, this.tcpWindow[at]!);
  }

  /** Zeroes the TCP window state of entry `id` (tcp_new starts from a clean ip_ct_tcp). */
  clearTcpWindow(id: number): void {
    const base = id * TcpWindowWord.Words;
    if (this.undoLog.recording) for (let at = base; at < base + TcpWindowWord.Words; at++) this.journalWindowWord(at);
    this.tcpWindow.fill(0, base, base + TcpWindowWord.Words);
  }

  private link(node: number): void {
    this.linkIn(node, this.nodeBucket(node));
  }

  /** `link` into `bucket`, which must be `nodeBucket(node)`. */
  private linkIn(node: number, bucket: number): void {
    if (this.undoLog.recording) this.journalWord(nodeBase(node) + NodeWord.Next);
    this.words[nodeBase(node) + NodeWord.Next] = this.buckets[bucket]!;
    if (this.undoLog.recording) this.journalBucket(bucket);
    this.buckets[bucket] = node;
  }

  private unlink(node: number): void {
    this.unlinkIn(node, this.nodeBucket(node));
  }

  /** `unlink` from `bucket`, which must be `nodeBucket(node)`. */
  private unlinkIn(node: number, bucket: number): void {
    const w = this.words;
    let current = this.buckets[bucket]!;
    let previous = -1;
    while (current >= 0) {
      const next = w[nodeBase(current) + NodeWord.Next]!;
      if (current === node) {
        if (previous < 0) {
          if (this.undoLog.recording) this.journalBucket(bucket);
          this.buckets[bucket] = next;
        } else {
          if (this.undoLog.recording) this.journalWord(nodeBase(previous) + NodeWord.Next);
          w[nodeBase(previous) + NodeWord.Next] = next;
        }
        if (this.undoLog.recording) this.journalWord(nodeBase(node) + NodeWord.Next);
        w[nodeBase(node) + NodeWord.Next] = -1;
        return;
      }
      previous = current;
      current = next;
    }
  }

  private isDead(id: number, now: number): boolean {
    // nf_ct_is_expired: (s32)(ct->timeout - nfct_time_stamp) <= 0; a killed entry is dying.
    return this.doubles[(id << Entry.DoubleShift) + EntryDouble.Expiry]! <= now || (this.words[(id << Entry.Shift) + Entry.Status]! & Status.Dying) !== 0;
  }

  /**
   * The live confirmed node holding exactly this tuple, or -1. A dead entry met on the way is
   * removed (Linux ____nf_conntrack_find -> nf_ct_gc_expired) and -1 returned. Addresses and
   * ports are compared as int32 words (`| 0`), as they are stored.
   */
  private findNode(protocol: number, src: number, dst: number, ports: number): number {
    src |= 0;
    dst |= 0;
    ports |= 0;
    return this.findNodeIn(this.hashTuple(protocol, src, dst, ports), protocol, src, dst, ports);
  }

  /** `findNode` in a bucket already hashed (`bucketOf`); src, dst and ports are int32 words. */
  private findNodeIn(bucket: number, protocol: number, src: number, dst: number, ports: number): number {
    const w = this.words;
    let node = this.buckets[bucket]!;
    let walked = 0;
    while (node >= 0) {
      walked++;
      const b = ((node >> 1) << Entry.Shift) + ((node & 1) << 2);
      if (w[b + NodeWord.Src] === src && w[b + NodeWord.Dst] === dst && w[b + NodeWord.Ports] === ports && (w[((node >> 1) << Entry.Shift) + Entry.Meta]! & 0xff) === protocol) break;
      node = w[b + NodeWord.Next]!;
    }
    this.countWalk(walked);
    if (node < 0) return -1;
    const id = node >> 1;
    // isDead(id, now), written out: a double argument to a call V8 does not inline is boxed.
    if (this.doubles[(id << Entry.DoubleShift) + EntryDouble.Expiry]! <= this.times[1]! || (w[(id << Entry.Shift) + Entry.Status]! & Status.Dying) !== 0) {
      // Refreshed meanwhile by another worker's lock-free commit (shared tables): live after all.
      if (!this.freeExpiredAt(id, node, bucket)) return node;
      this.counters.expired++;
      return -1;
    }
    return node;
  }

  /** One lookup walked `walked` nodes of a chain (the `walks` statistics). */
  private countWalk(walked: number): void {
    const walks = this.walks;
    walks[0]++;
    walks[1] += walked;
    if (walked > walks[2]!) walks[2] = walked;
  }

  /**
   * Hash-chain statistics since the table was made: lookups (packets' and NAT's tuple probes),
   * the chain nodes they walked, and the most one walked. With a good key, nodes per lookup stay
   * near 1 and the longest walk small; a flood of tuples aimed at one bucket would show here.
   * (Older Linux counted the nodes its lookups passed over as `searched` in the per-cpu
   * ip_conntrack_stat that `conntrack -S` prints.)
   */
  get chainStats(): ConntrackChainStats {
    return { lookups: this.walks[0]!, nodesWalked: this.walks[1]!, longestWalk: this.walks[2]! };
  }

  // ---- hot-path API --------------------------------------------------------------------------

  /** The handle `(id << 1) | dir` of the live connection with this tuple in either direction, or -1. */
  lookup(protocol: number, src: number, dst: number, sport: number, dport: number): number {
    const pinned = this.times[0]!;
    this.times[1] = pinned === pinned ? pinned : this.clock.now();
    const node = this.findNode(protocol, src, dst, (sport << 16) | dport);
    if (node >= 0) this.counters.found++;
    return node;
  }

  /**
   * The bucket this tuple hashes to. The dataplane's batch prefetch computes it once per packet
   * and hands it back to `findLiveInBucket`, so the fast path does not hash the tuple twice.
   */
  bucketOf(protocol: number, src: number, dst: number, sport: number, dport: number): number {
    return this.hashTuple(protocol, src | 0, dst | 0, (sport << 16) | dport);
  }

  /**
   * `bucketOf` for `count` tuples at once: tuple k is `lanes.tuples[4k .. 4k+3]` = protocol, src,
   * dst, ports (sport << 16 | dport) as int32 words; its bucket goes to `lanes.hashes[k]`. The
   * batch prefetch hashes a whole batch this way (core/hash-lanes.ts: eight tuples at a time in
   * WebAssembly SIMD lanes).
   */
  bucketsOf(lanes: BucketHasher, count: number): void {
    lanes.hash(this.k0, this.k1, count, this.bucketMask);
  }

  /**
   * One word per entry that the dataplane owns: where each direction's packets were last routed
   * (the egress port), with the routing table version it was looked up in
   * (dataplane/fast-path.ts). Zero when the entry is created.
   */
  routeCache(id: number): number {
    return this.words[(id << Entry.Shift) + Entry.Route]!;
  }

  setRouteCache(id: number, value: number): void {
    if (this.undoLog.recording) this.journalWord((id << Entry.Shift) + Entry.Route);
    this.words[(id << Entry.Shift) + Entry.Route] = value;
  }

  /** Forgets every entry's route cache (the routing table version wrapped around). */
  clearRouteCaches(): void {
    const w = this.words;
    const shared = this.tableLock !== null;
    for (let at = Entry.Route; at < w.length; at += Entry.Words) {
      if (w[at] === 0) continue;
      if (this.undoLog.recording) this.journalWord(at);
      // A lock-free commit racing this one would write a cache of the old epoch: it fails instead.
      const sequence = shared ? this.beginChange(at >> Entry.Shift) : 0;
      w[at] = 0;
      if (shared) this.endChange(at >> Entry.Shift, sequence);
    }
  }

  /**
   * Batch prefetch, step 1 (with `bucketOf`): the head node of `bucket` (-1: empty). The dataplane
   * reads it for every packet of a batch before processing any, so the cache misses of the bucket
   * loads overlap instead of stalling one packet after another (VPP/DPDK's prefetch-then-process
   * batching; JavaScript has no prefetch instruction, a plain load does it).
   */
  bucketHeadAt(bucket: number): number {
    return this.buckets[bucket]!;
  }

  /** Batch prefetch, step 2: loads the record of `node` (from `bucketHeadAt`) into the cache. */
  touchNode(node: number): number {
    // Two loads: the node's words and the entry's times. A large ArrayBuffer's memory is not
    // 64-byte aligned (glibc's mmap'd chunks start 16 bytes into a page), so a 64-byte record
    // usually spans two cache lines, the times (words 12-15) in the second.
    const w = this.words;
    return w[nodeBase(node) + NodeWord.Src]! ^ w[((node >> 1) << Entry.Shift) + (EntryDouble.Expiry << 1)]!;
  }

  /** Batch prefetch for TCP: loads the TCP window state of the entry of `node` (both ends of its 40 bytes). */
  touchTcpWindow(node: number): number {
    const at = (node >> 1) * TcpWindowWord.Words;
    return this.tcpWindow[at]! ^ this.tcpWindow[at + TcpWindowWord.Words - 1]!;
  }

  /**
   * `lookup` without counting `found` (the dataplane's fast path counts when it commits), at
   * `now()`, with src, dst and `ports` (sport << 16 | dport) as int32 words, in `bucket`, which
   * must be `bucketOf` this tuple, or -1 to hash it here. Takes no time argument: a double passed
   * to a function V8 does not inline is boxed, i.e. allocated, and this runs for every packet.
   */
  findLiveInBucket(bucket: number, protocol: number, src: number, dst: number, ports: number): number {
    const pinned = this.times[0]!;
    this.times[1] = pinned === pinned ? pinned : this.clock.now();
    return this.findNodeIn(bucket >= 0 ? bucket : this.hashTuple(protocol, src, dst, ports), protocol, src, dst, ports);
  }

  // ---- the lock-free established path (shared tables; docs/multi-core.md) --------------------

  /**
   * The lock holder starts changing what entry `id` is (see `sequence`): waits until no lock-free
   * commit holds its word (a few stores), makes it odd, returns the even value it had.
   */
  private beginChange(id: number): number {
    const sequence = this.sequence;
    for (;;) {
      const value = Atomics.load(sequence, id);
      if ((value & 1) === 0 && Atomics.compareExchange(sequence, id, value, value + 1) === value) return value;
    }
  }

  private endChange(id: number, value: number): void {
    Atomics.store(this.sequence, id, value + 2);
  }

  /**
   * `findLiveInBucket` without the lock (Linux's RCU lookup of __nf_conntrack_find_get): the node
   * of a confirmed, live entry holding exactly this tuple, or -1 — and -1 too whenever it cannot be
   * sure (an entry being changed, a walk longer than LOCK_FREE_WALK, a trace running): the caller
   * then takes the lock and the general path. A chain being changed meanwhile may lead the walk
   * astray (onto another chain, or the free list); it only misses then, it never matches wrongly:
   * the entry's sequence word, read before its tuple, is what `beginLockFreeCommit` checks.
   * Removes nothing (an expired entry is the locked path's to free).
   */
  findStableInBucket(bucket: number, protocol: number, src: number, dst: number, ports: number): number {
    const epoch = Atomics.load(this.lockWords, TABLE_LOCK_EPOCH);
    if ((epoch & 1) !== 0) return -1;
    const pinned = this.times[0]!;
    const now = pinned === pinned ? pinned : this.clock.now();
    const w = this.words;
    const sequence = this.sequence;
    const limit = this.capacity << 1;
    let node = this.buckets[bucket >= 0 ? bucket : this.hashTuple(protocol, src, dst, ports)]!;
    for (let walked = 0; walked < LOCK_FREE_WALK; walked++) {
      if (node < 0 || node >= limit) return -1;
      const id = node >> 1;
      const seen = Atomics.load(sequence, id);
      const b = ((node >> 1) << Entry.Shift) + ((node & 1) << 2);
      const e = id << Entry.Shift;
      if (w[b + NodeWord.Src] === src && w[b + NodeWord.Dst] === dst && w[b + NodeWord.Ports] === ports && (w[e + Entry.Meta]! & 0xff) === protocol) {
        const status = w[e + Entry.Status]!;
        if (
          (seen & 1) !== 0 ||
          (w[e + Entry.Meta]! & Meta.Used) === 0 ||
          (status & Status.Confirmed) === 0 ||
          (status & Status.Dying) !== 0 ||
          this.doubles[(id << Entry.DoubleShift) + EntryDouble.Expiry]! <= now
        ) {
          return -1;
        }
        this.stable[0] = seen;
        this.stable[1] = epoch;
        return node;
      }
      node = w[b + NodeWord.Next]!;
    }
    return -1;
  }

  /**
   * Before a lock-free packet writes entry `id` (expiry, route cache): takes its sequence word
   * from the value `findStableInBucket` saw to odd, so that the lock holder cannot free or change
   * the entry under the writes. False (nothing may be written; take the locked path) when the
   * entry changed since. `endLockFreeCommit` gives the word back unchanged: the writes are of
   * values any reader may see in any order (Linux refreshes ct->timeout without a lock too).
   */
  beginLockFreeCommit(id: number): boolean {
    const seen = this.stable[0]!;
    if (Atomics.load(this.lockWords, TABLE_LOCK_EPOCH) !== this.stable[1]) return false;
    return Atomics.compareExchange(this.sequence, id, seen, seen + 1) === seen;
  }

  endLockFreeCommit(id: number): void {
    Atomics.store(this.sequence, id, this.stable[0]!);
  }

  /**
   * The lock holder is about to write the tables without sequence words (a trace and its undo,
   * control/trace.ts): every lock-free read that overlaps it, until `admitLockFree`, is refused.
   * No-op on a table that is not shared.
   */
  excludeLockFree(): void {
    if (this.tableLock !== null) this.tableLock.excludeLockFree();
  }

  admitLockFree(): void {
    if (this.tableLock !== null) this.tableLock.admitLockFree();
  }

  /**
   * Linux nf_conntrack_tuple_taken: true when a live confirmed entry other than `ignoreId` holds
   * this tuple in either direction. Dead entries do not count (and are left for lookup/gc).
   */
  isTupleTaken(protocol: number, src: number, dst: number, sport: number, dport: number, ignoreId = -1): boolean {
    src |= 0;
    dst |= 0;
    const ports = (sport << 16) | dport;
    const now = this.now();
    const w = this.words;
    let node = this.buckets[this.hashTuple(protocol, src, dst, ports)]!;
    let walked = 0;
    while (node >= 0) {
      walked++;
      const b = nodeBase(node);
      if (
        w[b + NodeWord.Src] === src &&
        w[b + NodeWord.Dst] === dst &&
        w[b + NodeWord.Ports] === ports &&
        (w[((node >> 1) << Entry.Shift) + Entry.Meta]! & 0xff) === protocol &&
        node >> 1 !== ignoreId &&
        // !isDead(id, now), written out (no boxed double argument)
        !(this.doubles[((node >> 1) << Entry.DoubleShift) + EntryDouble.Expiry]! <= now || (w[((node >> 1) << Entry.Shift) + Entry.Status]! & Status.Dying) !== 0)
      ) {
        break;
      }
      node = w[b + NodeWord.Next]!;
    }
    this.countWalk(walked);
    return node >= 0;
  }

  /**
   * Allocates an unconfirmed entry for a NEW packet with this original tuple; the reply tuple is
   * its inverse (Linux nf_ct_invert_tuple; ICMP types mapped by invmap). Returns the id, or -1
   * when the table is full and early drop found nothing to evict (`counters.dropFull`).
   * The caller (tracker) sets the timeout; the entry expires "now" until it does.
   */
  create(protocol: number, src: number, dst: number, sport: number, dport: number): number {
    src |= 0;
    dst |= 0;
    let id = this.takeFree();
    if (id < 0) {
      if (!this.earlyDrop(this.hashTuple(protocol, src, dst, (sport << 16) | dport))) {
        this.counters.dropFull++;
        return -1;
      }
      id = this.takeFree();
    }
    const w = this.words;
    const e = id << Entry.Shift;
    const sequence = this.tableLock !== null ? this.beginChange(id) : 0;
    if (this.undoLog.recording) this.journalWord(e + Entry.Meta);
    w[e + Entry.Meta] = protocol | (TCP_PRIVATE_INITIAL << 16) | Meta.Used;
    if (this.undoLog.recording) this.journalWord(e + Entry.Status);
    w[e + Entry.Status] = this.ownQueue << Status.OwnerShift;
    if (this.undoLog.recording) this.journalWord(e + Entry.Mark);
    w[e + Entry.Mark] = 0;
    if (this.undoLog.recording) this.journalWord(e + Entry.Route);
    w[e + Entry.Route] = 0;
    const now = this.now();
    if (this.undoLog.recording) this.journalDouble((id << Entry.DoubleShift) + EntryDouble.Expiry);
    this.doubles[(id << Entry.DoubleShift) + EntryDouble.Expiry] = now;
    if (this.undoLog.recording) this.journalDouble((id << Entry.DoubleShift) + EntryDouble.Started);
    this.doubles[(id << Entry.DoubleShift) + EntryDouble.Started] = now;
    if (this.undoLog.recording) this.journalWord(e + NodeWord.Src);
    w[e + NodeWord.Src] = src;
    if (this.undoLog.recording) this.journalWord(e + NodeWord.Dst);
    w[e + NodeWord.Dst] = dst;
    if (this.undoLog.recording) this.journalWord(e + NodeWord.Ports);
    w[e + NodeWord.Ports] = (sport << 16) | dport;
    if (this.undoLog.recording) this.journalWord(e + 4 + NodeWord.Src);
    w[e + 4 + NodeWord.Src] = dst;
    if (this.undoLog.recording) this.journalWord(e + 4 + NodeWord.Dst);
    w[e + 4 + NodeWord.Dst] = src;
    if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) {
      if (this.undoLog.recording) this.journalWord(e + 4 + NodeWord.Ports);
      w[e + 4 + NodeWord.Ports] = (dport << 16) | sport;
    } else if (protocol === IPPROTO_ICMP) {
      if (this.undoLog.recording) this.journalWord(e + 4 + NodeWord.Ports);
      w[e + 4 + NodeWord.Ports] = (sport << 16) | icmpInverseDport(dport);
    } else {
      if (this.undoLog.recording) this.journalWord(e + 4 + NodeWord.Ports);
      w[e + 4 + NodeWord.Ports] = (dport << 16) | sport;
    }
    if (this.undoLog.recording) this.journalWord(e + NodeWord.Next);
    w[e + NodeWord.Next] = -1;
    if (this.undoLog.recording) this.journalWord(e + 4 + NodeWord.Next);
    w[e + 4 + NodeWord.Next] = -1;
    if (this.tableLock !== null) this.endChange(id, sequence);
    this.header[Header.Used]++;
    this.counters.created++;
    return id;
  }

  /**
   * NAT rewrites the reply tuple (nf_nat_setup_info -> nf_conntrack_alter_reply). Normally before
   * confirm; on a confirmed entry the reply node is re-hashed.
   */
  setReplyTuple(id: number, src: number, dst: number, sport: number, dport: number): void {
    const reply = (id << 1) | 1;
    const confirmed = (this.words[(id << Entry.Shift) + Entry.Status]! & Status.Confirmed) !== 0;
    const sequence = this.tableLock !== null ? this.beginChange(id) : 0;
    if (confirmed) this.unlink(reply);
    const b = nodeBase(reply);
    if (this.undoLog.recording) this.journalWord(b + NodeWord.Src);
    this.words[b + NodeWord.Src] = src | 0;
    if (this.undoLog.recording) this.journalWord(b + NodeWord.Dst);
    this.words[b + NodeWord.Dst] = dst | 0;
    if (this.undoLog.recording) this.journalWord(b + NodeWord.Ports);
    this.words[b + NodeWord.Ports] = (sport << 16) | dport;
    if (confirmed) this.link(reply);
    if (this.tableLock !== null) this.endChange(id, sequence);
  }

  /**
   * __nf_conntrack_confirm: inserts both tuples. When either is already held by a live entry
   * (two NEW packets raced, or NAT chose a taken tuple) the entry is freed, `clashWith` names the
   * holder, `counters.insertFailed` counts it, and false is returned. Confirming twice is a no-op.
   */
  confirm(id: number): boolean {
    if (!this.isAllocated(id)) return false;
    const w = this.words;
    const e = id << Entry.Shift;
    const status = w[e + Entry.Status]!;
    if (status & Status.Confirmed) return true;
    this.times[1] = this.now();
    const protocol = w[e + Entry.Meta]! & 0xff;
    // Each tuple hashed once, for its clash lookup and then its link.
    const originalBucket = this.hashTuple(protocol, w[e + NodeWord.Src]!, w[e + NodeWord.Dst]!, w[e + NodeWord.Ports]!);
    const replyBucket = this.hashTuple(protocol, w[e + 4 + NodeWord.Src]!, w[e + 4 + NodeWord.Dst]!, w[e + 4 + NodeWord.Ports]!);
    let clash = this.findNodeIn(originalBucket, protocol, w[e + NodeWord.Src]!, w[e + NodeWord.Dst]!, w[e + NodeWord.Ports]!);
    if (clash < 0) clash = this.findNodeIn(replyBucket, protocol, w[e + 4 + NodeWord.Src]!, w[e + 4 + NodeWord.Dst]!, w[e + 4 + NodeWord.Ports]!);
    if (clash >= 0) {
      this.clashWith = clash;
      this.counters.insertFailed++;
      this.freeEntry(id);
      return false;
    }
    this.clashWith = -1;
    const sequence = this.tableLock !== null ? this.beginChange(id) : 0;
    if (this.undoLog.recording) this.journalWord(e + Entry.Status);
    w[e + Entry.Status] = status | Status.Confirmed;
    this.linkIn(id << 1, originalBucket);
    this.linkIn((id << 1) | 1, replyBucket);
    if (this.tableLock !== null) this.endChange(id, sequence);
    this.counters.inserted++;
    return true;
  }

  /** Frees an unconfirmed entry whose packet was dropped. No-op on a free slot or a confirmed entry. */
  release(id: number): void {
    if (!this.isAllocated(id)) return;
    if (this.words[(id << Entry.Shift) + Entry.Status]! & Status.Confirmed) return;
    this.counters.released++;
    this.freeEntry(id);
  }

  /** Removes an entry now (conntrack -D, TCP reopen). No-op on a free slot. */
  remove(id: number): void {
    if (!this.isAllocated(id)) return;
    this.counters.removed++;
    this.freeEntry(id);
  }

  /**
   * nf_ct_kill: the entry is marked dying and expires now, but stays readable until a lookup or
   * gc removes it, so the packet that killed it can still be translated from its binding.
   */
  kill(id: number): void {
    if (!this.isAllocated(id)) return;
    if (this.undoLog.recording) this.journalWord((id << Entry.Shift) + Entry.Status);
    this.words[(id << Entry.Shift) + Entry.Status] |= Status.Dying;
    if (this.undoLog.recording) this.journalDouble((id << Entry.DoubleShift) + EntryDouble.Expiry);
    this.doubles[(id << Entry.DoubleShift) + EntryDouble.Expiry] = 0;
  }

  private freeEntry(id: number): void {
    this.freeEntryAt(id, -1, -1);
  }

  /**
   * `freeEntry`, where node `known` of the entry (or -1) is already known to hash to `bucket`
   * (a lookup that met the dead entry in its chain): that node is unlinked without hashing it
   * again.
   */
  private freeEntryAt(id: number, known: number, bucket: number): void {
    if (this.onRemove) this.onRemove(id);
    this.unlinkAndFree(id, known, bucket, this.tableLock !== null ? this.beginChange(id) : 0);
  }

  /**
   * `freeEntryAt` for an entry found dead by expiry: on a shared table, judged again once its
   * sequence word is held. Between the holder's look at the expiry and its `beginChange`, another
   * worker's lock-free commit may have refreshed the entry (its packet already forwarded by it);
   * freeing it then would lose a live connection — its next packet would make a new one, perhaps
   * with another NAT port. Linux re-checks the same way after taking its reference
   * (nf_conntrack_core.c nf_ct_gc_expired -> nf_ct_should_gc); here the check is exact, since no
   * commit can start while the word is odd. False (nothing changed) when the entry lives.
   */
  private freeExpiredAt(id: number, known: number, bucket: number): boolean {
    if (this.tableLock === null) {
      if (this.onRemove) this.onRemove(id);
      this.unlinkAndFree(id, known, bucket, 0);
      return true;
    }
    const sequence = this.beginChange(id);
    if (!this.isDead(id, this.now())) {
      // Given back unchanged: nothing was written, so readers that saw `sequence` stay right.
      Atomics.store(this.sequence, id, sequence);
      return false;
    }
    if (this.onRemove) this.onRemove(id);
    this.unlinkAndFree(id, known, bucket, sequence);
    return true;
  }

  /** The free of `freeEntryAt`, the sequence word already taken (`sequence`: its even value; 0 when not shared). */
  private unlinkAndFree(id: number, known: number, bucket: number, sequence: number): void {
    const w = this.words;
    const e = id << Entry.Shift;
    if (w[e + Entry.Status]! & Status.Confirmed) {
      this.unlinkIn(id << 1, known === id << 1 ? bucket : this.nodeBucket(id << 1));
      this.unlinkIn((id << 1) | 1, known === ((id << 1) | 1) ? bucket : this.nodeBucket((id << 1) | 1));
    }
    if (this.undoLog.recording) this.journalWord(e + Entry.Meta);
    w[e + Entry.Meta] = 0;
    if (this.undoLog.recording) this.journalWord(e + Entry.Status);
    w[e + Entry.Status] = 0;
    if (this.undoLog.recording) this.journalWord(e + NodeWord.Next);
    this.pushFree(id);
    this.header[Header.Used]--;
    if (this.tableLock !== null) this.endChange(id, sequence);
  }

  /**
   * Takes a free slot: from this thread's queue's list (`ownQueue`), else from the next list that
   * has one; -1 when every list is empty. Under the table's lock, as every change of the lists.
   */
  private takeFree(): number {
    const heads = this.freeHeads;
    const lists = heads.length;
    let list = this.ownQueue < lists ? this.ownQueue : this.ownQueue % lists;
    for (let tried = 0; tried < lists; tried++) {
      const id = heads[list]!;
      if (id >= 0) {
        heads[list] = this.words[(id << Entry.Shift) + NodeWord.Next]!;
        return id;
      }
      list = list + 1 === lists ? 0 : list + 1;
    }
    return -1;
  }

  /** Puts slot `id` at the head of its free list (`(id >> 4) % lists`), so a create then a release leaves the lists as they were. */
  private pushFree(id: number): void {
    const heads = this.freeHeads;
    const list = heads.length === 1 ? 0 : (id >> 4) % heads.length;
    this.words[(id << Entry.Shift) + NodeWord.Next] = heads[list]!;
    heads[list] = id;
  }

  /**
   * Linux early_drop(): walk CT_EVICTION_RANGE buckets from `bucket` and free the first confirmed
   * entry that is dead, not ASSURED, or a closing TCP connection. True when a slot was freed.
   */
  private earlyDrop(bucket: number): boolean {
    const now = this.now();
    const w = this.words;
    for (let i = 0; i < CT_EVICTION_RANGE; i++) {
      let node = this.buckets[(bucket + i) & this.bucketMask]!;
      while (node >= 0) {
        const id = node >> 1;
        if (this.isDead(id, now) && this.freeExpiredAt(id, -1, -1)) {
          this.counters.expired++;
          return true;
        }
        if ((w[(id << Entry.Shift) + Entry.Status]! & Status.Assured) === 0 || this.canEarlyDropAssured(id)) {
          this.counters.earlyDrop++;
          this.freeEntry(id);
          return true;
        }
        node = w[nodeBase(node) + NodeWord.Next]!;
      }
    }
    return false;
  }

  /** tcp_can_early_drop (nf_conntrack_proto_tcp.c): FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE. */
  private canEarlyDropAssured(id: number): boolean {
    if (this.protocol(id) !== IPPROTO_TCP) return false;
    const state = this.tcpState(id);
    return state >= 4 && state <= 8;
  }

  /**
   * Incremental expiry sweep (Linux gc_worker, OVS conntrack_clean): looks at `budget` slots from a
   * rotating cursor and removes dead confirmed entries. O(budget). Returns how many it removed.
   */
  gc(budget: number): number {
    const now = this.now();
    let removed = 0;
    let cursor = this.header[Header.GcCursor]!;
    const capacity = this.capacity;
    const w = this.words;
    for (let i = 0; i < budget && i < capacity; i++) {
      const e = cursor << Entry.Shift;
      if ((w[e + Entry.Meta]! & Meta.Used) !== 0 && (w[e + Entry.Status]! & Status.Confirmed) !== 0 && this.isDead(cursor, now) && this.freeExpiredAt(cursor, -1, -1)) {
        this.counters.expired++;
        removed++;
      }
      cursor++;
      if (cursor === capacity) cursor = 0;
    }
    this.header[Header.GcCursor] = cursor;
    return removed;
  }

  /**
   * Tests only (not the hot path; allocates): what is wrong with the table's structure, empty when
   * nothing. Checks that the entry count is the number of used slots, the free list holds exactly
   * the other slots once each, every node in a chain is a confirmed entry's and hashes to the
   * bucket it is in, no node is in two chains (or twice in one), every confirmed entry is
   * reachable from both its buckets and an unconfirmed one from neither, and, on a shared table,
   * that no sequence word is left odd. Call holding the lock, with no lock-free commit running.
   */
  structureProblems(): string[] {
    const problems: string[] = [];
    const w = this.words;
    const capacity = this.capacity;
    let used = 0;
    for (let id = 0; id < capacity; id++) if ((w[(id << Entry.Shift) + Entry.Meta]! & Meta.Used) !== 0) used++;
    if (used !== this.header[Header.Used]) problems.push(`the entry count is ${this.header[Header.Used]}, ${used} slots are used`);
    const onFreeList = new Uint8Array(capacity);
    let free = 0;
    const lists = this.freeHeads.length;
    for (let list = 0; list < lists; list++) {
      for (let id = this.freeHeads[list]!; id >= 0; id = w[(id << Entry.Shift) + NodeWord.Next]!) {
        if (id >= capacity || onFreeList[id] !== 0) {
          problems.push(`free list ${list} reaches ${id} ${id >= capacity ? "(no such slot)" : "twice"}`);
          break;
        }
        onFreeList[id] = 1;
        free++;
        if ((w[(id << Entry.Shift) + Entry.Meta]! & Meta.Used) !== 0) problems.push(`slot ${id} is used and on the free list`);
        if ((id >> 4) % lists !== list) problems.push(`slot ${id} is on free list ${list}, not ${(id >> 4) % lists}`);
      }
    }
    if (used + free !== capacity) problems.push(`${used} used + ${free} free slots, of ${capacity}`);
    const chainOf = new Int32Array(capacity * 2).fill(-1);
    for (let bucket = 0; bucket <= this.bucketMask; bucket++) {
      for (let node = this.buckets[bucket]!, walked = 0; node >= 0; node = w[nodeBase(node) + NodeWord.Next]!, walked++) {
        if (node >= capacity * 2 || walked > capacity * 2) {
          problems.push(`bucket ${bucket}: ${node >= capacity * 2 ? `node ${node} is no node` : "the chain loops"}`);
          break;
        }
        const id = node >> 1;
        if (chainOf[node] >= 0) {
          problems.push(`node ${node} (entry ${id}) is in bucket ${chainOf[node]} and again in bucket ${bucket}`);
          break;
        }
        chainOf[node] = bucket;
        if ((w[(id << Entry.Shift) + Entry.Meta]! & Meta.Used) === 0 || (w[(id << Entry.Shift) + Entry.Status]! & Status.Confirmed) === 0) {
          problems.push(`bucket ${bucket} holds node ${node} of an entry that is not used and confirmed`);
        } else if (this.nodeBucket(node) !== bucket) {
          problems.push(`node ${node} is in bucket ${bucket}, its tuple hashes to ${this.nodeBucket(node)}`);
        }
      }
    }
    for (let id = 0; id < capacity; id++) {
      if ((w[(id << Entry.Shift) + Entry.Meta]! & Meta.Used) === 0) continue;
      const confirmed = (w[(id << Entry.Shift) + Entry.Status]! & Status.Confirmed) !== 0;
      for (let dir = 0; dir < 2; dir++) {
        const linked = chainOf[(id << 1) | dir]! >= 0;
        if (linked !== confirmed) problems.push(`entry ${id} (${confirmed ? "confirmed" : "unconfirmed"}): its direction ${dir} is ${linked ? "" : "not "}in a chain`);
      }
    }
    for (let id = 0; id < this.sequence.length; id++) {
      if ((Atomics.load(this.sequence, id) & 1) !== 0) problems.push(`entry ${id}: its sequence word is odd`);
    }
    return problems;
  }

  // ---- accessors (numeric, hot path) ---------------------------------------------------------

  isAllocated(id: number): boolean {
    return id >= 0 && id < this.capacity && (this.words[(id << Entry.Shift) + Entry.Meta]! & Meta.Used) !== 0;
  }
  protocol(id: number): number {
    return this.words[(id << Entry.Shift) + Entry.Meta]! & 0xff;
  }
  origSrc(id: number): number {
    return this.words[(id << Entry.Shift) + NodeWord.Src]! >>> 0;
  }
  origDst(id: number): number {
    return this.words[(id << Entry.Shift) + NodeWord.Dst]! >>> 0;
  }
  origSport(id: number): number {
    return this.words[(id << Entry.Shift) + NodeWord.Ports]! >>> 16;
  }
  origDport(id: number): number {
    return this.words[(id << Entry.Shift) + NodeWord.Ports]! & 0xffff;
  }
  replySrc(id: number): number {
    return this.words[(id << Entry.Shift) + 4 + NodeWord.Src]! >>> 0;
  }
  replyDst(id: number): number {
    return this.words[(id << Entry.Shift) + 4 + NodeWord.Dst]! >>> 0;
  }
  replySport(id: number): number {
    return this.words[(id << Entry.Shift) + 4 + NodeWord.Ports]! >>> 16;
  }
  replyDport(id: number): number {
    return this.words[(id << Entry.Shift) + 4 + NodeWord.Ports]! & 0xffff;
  }
  /** Tuple of direction `dir` (0 original, 1 reply). */
  tupleSrcOf(id: number, dir: number): number {
    return this.words[(id << Entry.Shift) + (dir << 2) + NodeWord.Src]! >>> 0;
  }
  tupleDstOf(id: number, dir: number): number {
    return this.words[(id << Entry.Shift) + (dir << 2) + NodeWord.Dst]! >>> 0;
  }
  /** Source address of direction `dir` as stored: int32 bits (`>>> 0` gives the uint32). */
  tupleSrcBits(id: number, dir: number): number {
    return this.words[(id << Entry.Shift) + (dir << 2) + NodeWord.Src]!;
  }
  tupleDstBits(id: number, dir: number): number {
    return this.words[(id << Entry.Shift) + (dir << 2) + NodeWord.Dst]!;
  }
  /** Ports of direction `dir` as stored: sport << 16 | dport (int32). */
  tuplePortsBits(id: number, dir: number): number {
    return this.words[(id << Entry.Shift) + (dir << 2) + NodeWord.Ports]!;
  }
  tupleSportOf(id: number, dir: number): number {
    return this.words[(id << Entry.Shift) + (dir << 2) + NodeWord.Ports]! >>> 16;
  }
  tupleDportOf(id: number, dir: number): number {
    return this.words[(id << Entry.Shift) + (dir << 2) + NodeWord.Ports]! & 0xffff;
  }
  status(id: number): number {
    return this.words[(id << Entry.Shift) + Entry.Status]! & Status.Bits;
  }
  /**
   * The queue whose thread read the connection's first packet (`ownQueue` of the thread that
   * created the entry): with workers, the forwarder writes every packet of the connection through
   * that queue (io/forwarder.ts steerToOwners), so the kernel steers both its directions there.
   */
  ownerQueue(id: number): number {
    return this.words[(id << Entry.Shift) + Entry.Status]! >>> Status.OwnerShift;
  }
  /** ORs `bits` into the status (Linux set_bit / `ct->status |= bits`). */
  setStatus(id: number, bits: number): void {
    if (this.undoLog.recording) this.journalWord((id << Entry.Shift) + Entry.Status);
    this.words[(id << Entry.Shift) + Entry.Status] |= bits & Status.Bits;
  }
  /** Clears `bits` from the status (Linux clear_bit). */
  clearStatus(id: number, bits: number): void {
    if (this.undoLog.recording) this.journalWord((id << Entry.Shift) + Entry.Status);
    this.words[(id << Entry.Shift) + Entry.Status] &= ~(bits & Status.Bits);
  }
  isConfirmed(id: number): boolean {
    return (this.words[(id << Entry.Shift) + Entry.Status]! & Status.Confirmed) !== 0;
  }
  /** TCP state (TcpState in tcp.ts); 0 (NONE) for other protocols. */
  tcpState(id: number): number {
    return (this.words[(id << Entry.Shift) + Entry.Meta]! >>> 8) & 0xff;
  }
  setTcpState(id: number, state: number): void {
    const at = (id << Entry.Shift) + Entry.Meta;
    if (this.undoLog.recording) this.journalWord(at);
    this.words[at] = (this.words[at]! & ~0xff00) | ((state & 0xff) << 8);
  }
  /** The TCP tracker's private bits (last flag index/direction, CLOSE_INIT...; see tcp.ts). */
  tcpFlags(id: number): number {
    return (this.words[(id << Entry.Shift) + Entry.Meta]! >>> 16) & 0xff;
  }
  setTcpFlags(id: number, bits: number): void {
    const at = (id << Entry.Shift) + Entry.Meta;
    if (this.undoLog.recording) this.journalWord(at);
    this.words[at] = (this.words[at]! & ~0xff0000) | ((bits & 0xff) << 16);
  }
  mark(id: number): number {
    return this.words[(id << Entry.Shift) + Entry.Mark]! >>> 0;
  }
  setMark(id: number, mark: number): void {
    if (this.undoLog.recording) this.journalWord((id << Entry.Shift) + Entry.Mark);
    this.words[(id << Entry.Shift) + Entry.Mark] = mark | 0;
  }
  /** Absolute clock time (seconds) at which the entry expires. */
  expiresAt(id: number): number {
    return this.doubles[(id << Entry.DoubleShift) + EntryDouble.Expiry]!;
  }
  /** Clock time of the entry's first packet (UDP entries only: a TCP entry keeps window state there). */
  startedAt(id: number): number {
    return this.doubles[(id << Entry.DoubleShift) + EntryDouble.Started]!;
  }
  /** nf_ct_refresh: the entry now expires `timeout` seconds after `now` (unless IPS_FIXED_TIMEOUT). */
  refresh(id: number, timeout: number, now: number): void {
    if (this.words[(id << Entry.Shift) + Entry.Status]! & Status.FixedTimeout) return;
    if (this.undoLog.recording) this.journalDouble((id << Entry.DoubleShift) + EntryDouble.Expiry);
    this.doubles[(id << Entry.DoubleShift) + EntryDouble.Expiry] = now + timeout;
  }
  /** `refresh` at `now()` (no double crosses the call). */
  refreshNow(id: number, timeout: number): void {
    if (this.words[(id << Entry.Shift) + Entry.Status]! & Status.FixedTimeout) return;
    const pinned = this.times[0]!;
    if (this.undoLog.recording) this.journalDouble((id << Entry.DoubleShift) + EntryDouble.Expiry);
    this.doubles[(id << Entry.DoubleShift) + EntryDouble.Expiry] = (pinned === pinned ? pinned : this.clock.now()) + timeout;
  }
  /** True when `now()` is more than `seconds` after the entry's first packet (time_after); UDP entries only. */
  startedMoreThan(id: number, seconds: number): boolean {
    const pinned = this.times[0]!;
    return (pinned === pinned ? pinned : this.clock.now()) > this.doubles[(id << Entry.DoubleShift) + EntryDouble.Started]! + seconds;
  }
  /** Sets the absolute expiry time. */
  setExpiresAt(id: number, at: number): void {
    if (this.undoLog.recording) this.journalDouble((id << Entry.DoubleShift) + EntryDouble.Expiry);
    this.doubles[(id << Entry.DoubleShift) + EntryDouble.Expiry] = at;
  }
  /** Sets the clock time of the entry's first packet (UDP entries; a restored entry keeps its age). */
  setStartedAt(id: number, at: number): void {
    if (this.undoLog.recording) this.journalDouble((id << Entry.DoubleShift) + EntryDouble.Started);
    this.doubles[(id << Entry.DoubleShift) + EntryDouble.Started] = at;
  }

  /** TCP entries: last_end of ip_ct_tcp (int32 bits), kept where UDP keeps its start time. */
  tcpLastEnd(id: number): number {
    return this.words[(id << Entry.Shift) + Entry.TcpLastEnd]!;
  }
  /** TCP entries: last_ack of ip_ct_tcp (int32 bits). */
  tcpLastAck(id: number): number {
    return this.words[(id << Entry.Shift) + Entry.TcpLastAck]!;
  }
  setTcpLastEnd(id: number, end: number): void {
    if (this.undoLog.recording) this.journalWord((id << Entry.Shift) + Entry.TcpLastEnd);
    this.words[(id << Entry.Shift) + Entry.TcpLastEnd] = end;
  }
  setTcpLastAck(id: number, ack: number): void {
    if (this.undoLog.recording) this.journalWord((id << Entry.Shift) + Entry.TcpLastAck);
    this.words[(id << Entry.Shift) + Entry.TcpLastAck] = ack;
  }
  setTcpLast(id: number, end: number, ack: number): void {
    const at = (id << Entry.Shift) + Entry.TcpLastEnd;
    if (this.undoLog.recording) this.journalWord(at);
    this.words[at] = end;
    if (this.undoLog.recording) this.journalWord(at + 1);
    this.words[at + 1] = ack;
  }

  // ---- control plane -------------------------------------------------------------------------

  /** Ids of the live confirmed entries, in id order (what `conntrack -L` lists). */
  entries(): number[] {
    const now = this.now();
    const ids: number[] = [];
    for (let id = 0; id < this.capacity; id++) {
      if (this.isAllocated(id) && this.isConfirmed(id) && !this.isDead(id, now)) ids.push(id);
    }
    return ids;
  }

  /** Removes every entry (conntrack -F). */
  flush(): void {
    for (let id = 0; id < this.capacity; id++) {
      if (this.isAllocated(id)) this.remove(id);
    }
  }
}

