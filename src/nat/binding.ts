/**
 * NAT bindings: choosing the translated tuple of a NEW connection, as Linux
 * net/netfilter/nf_nat_core.c (nf_nat_setup_info, get_unique_tuple, find_appropriate_src,
 * find_best_ips_proto, nf_nat_l4proto_unique_tuple, nf_nat_used_tuple, nf_nat_alloc_null_binding).
 *
 * The binding lives in the conntrack entry itself, as in Linux: NAT rewrites the entry's reply
 * tuple (nf_conntrack_alter_reply) and sets IPS_SRC_NAT / IPS_DST_NAT when the tuple changed and
 * IPS_*_NAT_DONE in any case. Packets are then rewritten from the two tuples (manip.ts).
 *
 * Tuples here are in "original" form (src, dst, sport, dport) with the encoding of
 * src/conntrack/tuple.ts: TCP/UDP ports; ICMP queries sport = identifier, dport = type<<8 | code;
 * other protocols ports 0. A tuple is "used" when the conntrack table already holds its inverse
 * (nf_nat_used_tuple: conntrack only indexes incoming tuples, so the reply of the candidate is
 * looked up).
 *
 * Where qnat differs from the kernel, on purpose:
 *  - Port offset: Linux >= 5.x starts the port search at get_random_u16() for every connection.
 *    qnat starts it at a keyed hash of (new address, peer address, peer port) — the 3-tuple
 *    Linux < 5.x hashed with siphash and a boot-time key (secure_ipv4_port_ephemeral) — mixed
 *    with the endpoint being translated (without it every client of one server would probe
 *    from the same offset and the first window would always be taken). A binding is thus a
 *    deterministic function of the tuple and the engine's key, which a running router draws at
 *    random when it starts (so the port a clashing connection gets cannot be predicted from the
 *    source, and differs from one start to the next); `--random` and `--random-fully` take the
 *    offset from the injected Rng instead. Later "another_round" offsets come from the Rng, as
 *    Linux.
 *  - When no unique tuple exists Linux keeps a clashing one and drops the packet when the entry
 *    is confirmed (__nf_conntrack_confirm); qnat reports it at once: `setupNat` returns false and
 *    the caller drops the packet with DropReason.NatNoFreeTuple.
 *  - The address hash of find_best_ips_proto (jhash2 with a fixed initval in Linux) is keyed too.
 *
 * Every hash here is the keyed HalfSipHash of src/core/hash.ts, its keys drawn from the Rng when
 * the engine is made (Linux: nf_nat_hash_rnd, net_secret).
 *
 * Hot path: `setupNat` runs once per NEW connection and allocates nothing unless an `explain`
 * array is passed (control plane: `qnat trace`).
 */
import { formatIpv4 } from "../core/addr.js";
import { type HashKey, hashKeyFrom, hsiphashBits } from "../core/hash.js";
import type { Rng } from "../core/rng.js";
import type { UndoLog } from "../core/undo-log.js";
import { CtStatus, type ConntrackTable } from "../conntrack/table.js";
import { icmpInverseDport } from "../conntrack/tuple.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, type PacketInfo } from "../wire/packet-info.js";
import { natIcmpError as translateIcmpError, natPacket as translatePacket } from "./manip.js";
import {
  formatNatRange,
  Manip,
  NF_NAT_RANGE_MAP_IPS,
  NF_NAT_RANGE_PERSISTENT,
  NF_NAT_RANGE_PROTO_RANDOM_ALL,
  NF_NAT_RANGE_PROTO_SPECIFIED,
  type NatRange,
} from "./range.js";

/** nf_nat_l4proto_unique_tuple: `max_attempts`, the first search window. */
export const NAT_MAX_ATTEMPTS = 128;
/** nf_nat_l4proto_unique_tuple: no further (halved) round once the window is below this. */
export const NAT_MIN_ATTEMPTS = 16;

/** Counters for `qnat show stats`. */
export interface NatCounters {
  /** setupNat calls that produced a binding (null bindings included). */
  bindings: number;
  /** bindings whose tuple differs from the original (IPS_SRC_NAT / IPS_DST_NAT set). */
  translated: number;
  /** bindings whose port/id had to be searched. */
  searches: number;
  /** candidate tuples tried by searches. */
  searchTries: number;
  /** bindings reusing the mapping of an existing connection from the same source (find_appropriate_src). */
  sourceMapReused: number;
  /** setupNat calls that found no unique tuple (DropReason.NatNoFreeTuple). */
  noFreeTuple: number;
}

/**
 * The NAT state all threads of a shared table set use (NatEngine `sharedMemory()`, option
 * `shared`; docs/multi-core.md "Shared tables"): the by-source index and the hash keys, which
 * must be common so that every thread finds a connection's by-source bucket and probes the same
 * port offsets. SharedArrayBuffers: it crosses `postMessage`.
 */
export interface NatSharedMemory {
  /** addrKey, portKey, bysourceKey: six Int32 words. */
  readonly keys: SharedArrayBuffer;
  readonly bysourceHeads: SharedArrayBuffer;
  readonly bysourceNext: SharedArrayBuffer;
  readonly bysourceBucketOf: SharedArrayBuffer;
}

export interface NatEngineOptions {
  /**
   * Keep the by-source index and the keys in SharedArrayBuffers (`sharedMemory()`), for engines
   * of other threads over the same shared conntrack table to attach to.
   */
  readonly sharable?: boolean;
  /**
   * Attach to the memory of a sharable engine made by another thread: the same keys and index
   * (the Rng then serves only `--random` offsets and later search rounds). Its table must be
   * attached to the same shared conntrack memory.
   */
  readonly shared?: NatSharedMemory;
}

/** Number of buckets of the by-source index for a table of `capacity` entries. */
function bucketCountFor(capacity: number): number {
  let n = 16;
  while (n < capacity) n *= 2;
  return n;
}

export class NatEngine {
  readonly counters: NatCounters = {
    bindings: 0,
    translated: 0,
    searches: 0,
    searchTries: 0,
    sourceMapReused: 0,
    noFreeTuple: 0,
  };

  /** Boot-time hash keys (Linux nf_nat_hash_rnd / net_secret), drawn once from the Rng. */
  private readonly addrKey: HashKey;
  private readonly portKey: HashKey;
  private readonly bysourceKey: HashKey;

  /**
   * The by-source index (Linux nf_nat_bysource): every connection with a SRC binding, chained by
   * hash of its original (protocol, source address, source port). Singly linked through
   * `bysourceNext[id]`; `bysourceBucketOf[id]` is the bucket an id is linked in (-1: none).
   * Stale ids (freed entries when `forget` is not wired to the table's onRemove) are checked and
   * unlinked lazily when a walk meets them.
   */
  private readonly bysourceHeads: Int32Array;
  private readonly bysourceNext: Int32Array;
  private readonly bysourceBucketOf: Int32Array;
  private readonly bysourceMask: number;
  /** The SharedArrayBuffers, for `sharedMemory()`; null when not sharable. */
  private readonly memory: NatSharedMemory | null;
  /** The table's undo journal, which covers the by-source index too, and the index's arrays' numbers in it. */
  private readonly undoLog: UndoLog;
  private readonly journalHeads: number;
  private readonly journalNext: number;
  private readonly journalBucketOf: number;

  // The tuple being built (original form), and the current one (invert of the reply tuple).
  // Addresses are int32 bits, as the conntrack table stores them: a uint32 of 128.0.0.0 or more
  // is a heap number in V8, allocated when held in a field or passed to a call. Order comparisons
  // (inRange, findBestIps) convert to uint32 locally.
  private protocol = 0;
  private curSrc = 0;
  private curDst = 0;
  private curSport = 0;
  private curDport = 0;
  private newSrc = 0;
  private newDst = 0;
  private newSport = 0;
  private newDport = 0;
  /** Connection being set up (ignored by nf_nat_used_tuple). */
  private settingUp = -1;
  /** The connection whose mapping was reused (for the explanation). */
  private reusedFrom = -1;

  constructor(
    readonly table: ConntrackTable,
    private readonly rng: Rng,
    options: NatEngineOptions = {},
  ) {
    const buckets = bucketCountFor(table.capacity);
    this.bysourceMask = buckets - 1;
    const shared = options.shared;
    if (shared !== undefined) {
      const keys = new Int32Array(shared.keys);
      this.addrKey = { k0: keys[0]!, k1: keys[1]! };
      this.portKey = { k0: keys[2]!, k1: keys[3]! };
      this.bysourceKey = { k0: keys[4]!, k1: keys[5]! };
      this.bysourceHeads = new Int32Array(shared.bysourceHeads);
      this.bysourceNext = new Int32Array(shared.bysourceNext);
      this.bysourceBucketOf = new Int32Array(shared.bysourceBucketOf);
      if (this.bysourceHeads.length !== buckets || this.bysourceNext.length !== table.capacity) {
        throw new RangeError("the shared NAT index is not for a table of this capacity");
      }
      this.memory = shared;
    } else {
      this.addrKey = hashKeyFrom(rng);
      this.portKey = hashKeyFrom(rng);
      this.bysourceKey = hashKeyFrom(rng);
      const Memory = options.sharable === true ? SharedArrayBuffer : ArrayBuffer;
      const memory = {
        keys: new Memory(6 * 4),
        bysourceHeads: new Memory(buckets * 4),
        bysourceNext: new Memory(table.capacity * 4),
        bysourceBucketOf: new Memory(table.capacity * 4),
      };
      new Int32Array(memory.keys).set([this.addrKey.k0, this.addrKey.k1, this.portKey.k0, this.portKey.k1, this.bysourceKey.k0, this.bysourceKey.k1]);
      this.bysourceHeads = new Int32Array(memory.bysourceHeads).fill(-1);
      this.bysourceNext = new Int32Array(memory.bysourceNext).fill(-1);
      this.bysourceBucketOf = new Int32Array(memory.bysourceBucketOf).fill(-1);
      this.memory = options.sharable === true ? (memory as NatSharedMemory) : null;
    }
    this.undoLog = table.undoLog;
    this.journalHeads = this.undoLog.register(this.bysourceHeads);
    this.journalNext = this.undoLog.register(this.bysourceNext);
    this.journalBucketOf = this.undoLog.register(this.bysourceBucketOf);
  }

  /**
   * The memory of a sharable engine, for another thread's engine to attach to (option `shared`).
   * Throws for an engine made without `sharable`.
   */
  sharedMemory(): NatSharedMemory {
    if (this.memory === null) throw new Error("this NAT engine is not sharable (option sharable)");
    return this.memory;
  }

  /** True when the SRC (or DST) binding of the connection is set up (IPS_SRC_NAT_DONE / IPS_DST_NAT_DONE). */
  manipDone(id: number, manip: Manip): boolean {
    const bit = manip === Manip.Src ? CtStatus.SrcNatDone : CtStatus.DstNatDone;
    return (this.table.status(id) & bit) !== 0;
  }

  /**
   * nf_nat_alloc_null_binding: a binding that maps the connection onto its own address (the
   * current one, after any earlier manip), letting the port search remap a source port that
   * clashes with another connection's translated tuple (two tenants behind one SNAT address, or
   * a tenant whose port the SNAT already handed out). Used for NEW connections no rule NATs.
   */
  nullBinding(id: number, manip: Manip, explain?: string[]): boolean {
    const table = this.table;
    // "Use reply in case it's already been mangled": the address the packet carries now.
    const addr = manip === Manip.Src ? table.tupleDstBits(id, 1) : table.tupleSrcBits(id, 1);
    this.nullRange.minAddr = addr;
    this.nullRange.maxAddr = addr;
    return this.setupNat(id, manip, this.nullRange, explain);
  }
  private readonly nullRange: NatRange = { minAddr: 0, maxAddr: 0, minPort: 0, maxPort: 0, flags: NF_NAT_RANGE_MAP_IPS };

  /**
   * nf_nat_setup_info: binds connection `id` (created, not yet confirmed) so that its `manip` side
   * maps into `range` with a tuple no other connection uses. Rewrites the entry's reply tuple and
   * status. Returns false when no unique tuple exists (the caller drops the packet with
   * DropReason.NatNoFreeTuple and releases the entry). On a confirmed entry, or a second call for
   * a manip already done, nothing changes and true is returned (Linux: NF_ACCEPT, resp. WARN).
   * `explain` (control plane only) receives one line per decision.
   */
  setupNat(id: number, manip: Manip, range: NatRange, explain?: string[]): boolean {
    const table = this.table;
    // "Can't setup nat info for confirmed ct" (nf_nat_setup_info): its tuples are in the hash.
    if (table.isConfirmed(id)) {
      if (explain) explain.push("connection already confirmed: binding unchanged");
      return true;
    }
    if (this.manipDone(id, manip)) {
      if (explain) explain.push(`${manip === Manip.Src ? "source" : "destination"} NAT already set up`);
      return true;
    }
    const protocol = table.protocol(id);
    this.protocol = protocol;
    this.settingUp = id;
    // What we've got will look like the inverse of the reply (nf_nat_setup_info).
    this.curSrc = table.tupleDstBits(id, 1);
    this.curDst = table.tupleSrcBits(id, 1);
    if (protocol === IPPROTO_ICMP) {
      this.curSport = table.replySport(id);
      const dport = table.replyDport(id);
      this.curDport = icmpInverseDport(dport);
    } else {
      this.curSport = table.replyDport(id);
      this.curDport = table.replySport(id);
    }

    if (!this.getUniqueTuple(manip, range, explain)) {
      this.counters.noFreeTuple++;
      return false;
    }

    if (
      this.newSrc !== this.curSrc ||
      this.newDst !== this.curDst ||
      this.newSport !== this.curSport ||
      this.newDport !== this.curDport
    ) {
      // Alter the conntrack entry so replies are recognised (nf_conntrack_alter_reply).
      if (protocol === IPPROTO_ICMP) {
        table.setReplyTuple(id, this.newDst, this.newSrc, this.newSport, icmpInverseDport(this.newDport));
      } else {
        table.setReplyTuple(id, this.newDst, this.newSrc, this.newDport, this.newSport);
      }
      table.setStatus(id, manip === Manip.Src ? CtStatus.SrcNat : CtStatus.DstNat);
      this.counters.translated++;
    }
    if (manip === Manip.Src) this.linkBySource(id);
    table.setStatus(id, manip === Manip.Src ? CtStatus.SrcNatDone : CtStatus.DstNatDone);
    this.counters.bindings++;
    if (explain) {
      explain.push(
        `${manip === Manip.Src ? "SNAT" : "DNAT"} binding: ${this.formatTuple(this.curSrc, this.curDst, this.curSport, this.curDport)}` +
          ` -> ${this.formatTuple(this.newSrc, this.newDst, this.newSport, this.newDport)}`,
      );
    }
    return true;
  }

  /** nf_nat_packet for connection `id`, direction `dir`, at a hook doing `manip` (manip.ts). */
  natPacket(buf: Uint8Array, info: PacketInfo, id: number, dir: number, manip: Manip): void {
    translatePacket(this.table, buf, info, id, dir, manip);
  }

  /** nf_nat_icmp_reply_translation (manip.ts); false: drop the error. */
  natIcmpError(buf: Uint8Array, info: PacketInfo, id: number, dir: number, manip: Manip): boolean {
    return translateIcmpError(this.table, buf, info, id, dir, manip);
  }

  /**
   * Forgets NAT state of a conntrack entry being freed (Linux nf_nat_cleanup_conntrack). Wire it
   * to ConntrackTable's `onRemove`; without it stale ids are cleaned lazily.
   */
  forget(id: number): void {
    if (id >= 0 && id < this.bysourceBucketOf.length) this.unlinkBySource(id);
  }

  /**
   * Indexes a connection restored from a state file (control/state-file.ts) whose source binding
   * was made by an earlier run: the by-source index is this run's (its key is new), so every
   * SNATed connection is linked again, as Linux's ctnetlink_create_conntrack does through
   * nf_nat_setup_info for an entry a user space daemon (conntrackd) injects. No-op without
   * IPS_SRC_NAT_DONE.
   */
  restoreBySource(id: number): void {
    if ((this.table.status(id) & CtStatus.SrcNatDone) !== 0) this.linkBySource(id);
  }

  // ---- get_unique_tuple ------------------------------------------------------------------------

  private getUniqueTuple(manip: Manip, range: NatRange, explain: string[] | undefined): boolean {
    const flags = range.flags;
    this.reusedFrom = -1;
    // 1) SRC manip: keep the original tuple when it is in range and free; else reuse the mapping
    //    an existing connection from the same source has, if it gives a free tuple in range.
    if (manip === Manip.Src && (flags & NF_NAT_RANGE_PROTO_RANDOM_ALL) === 0) {
      this.copyCurrentToNew();
      if (this.inRange(range)) {
        if (!this.isUsed()) {
          if (explain) explain.push(`source ${this.formatEndpoint(this.curSrc, this.curSport)} is in range ${formatNatRange(range)} and free: kept`);
          return true;
        }
        if (explain) explain.push(`source ${this.formatEndpoint(this.curSrc, this.curSport)} is in range but taken`);
      } else if (this.findAppropriateSource(range)) {
        if (!this.isUsed()) {
          this.counters.sourceMapReused++;
          if (explain) {
            explain.push(
              `source ${this.formatEndpoint(this.curSrc, this.curSport)} already maps to ` +
                `${this.formatEndpoint(this.newSrc, this.newSport)} (connection ${this.reusedFrom}): reused`,
            );
          }
          return true;
        }
      }
    }

    // 2) Select the IP in the range (find_best_ips_proto).
    this.copyCurrentToNew();
    this.findBestIps(manip, range, explain);

    // 3) Only search the per-protocol part if it is not already in range and unique.
    if ((flags & NF_NAT_RANGE_PROTO_RANDOM_ALL) === 0) {
      if (flags & NF_NAT_RANGE_PROTO_SPECIFIED) {
        if (this.l4InRange(manip, range.minPort, range.maxPort) && !this.isUsed()) {
          if (explain) explain.push(`${this.sideName(manip)} ${this.keyName()} ${this.currentKey(manip)} is in ${range.minPort}-${range.maxPort} and free: kept`);
          return true;
        }
      } else if (!this.isUsed()) {
        if (explain && this.hasKey(manip)) explain.push(`${this.sideName(manip)} ${this.keyName()} ${this.currentKey(manip)} is free: kept`);
        return true;
      }
    }
    return this.uniqueL4(manip, range, explain);
  }

  private copyCurrentToNew(): void {
    this.newSrc = this.curSrc;
    this.newDst = this.curDst;
    this.newSport = this.curSport;
    this.newDport = this.curDport;
  }

  /** nf_nat_used_tuple: is the inverse of the candidate held by another connection? */
  private isUsed(): boolean {
    const protocol = this.protocol;
    if (protocol === IPPROTO_ICMP) {
      return this.table.isTupleTaken(protocol, this.newDst, this.newSrc, this.newSport, icmpInverseDport(this.newDport), this.settingUp);
    }
    return this.table.isTupleTaken(protocol, this.newDst, this.newSrc, this.newDport, this.newSport, this.settingUp);
  }

  /** in_range: the candidate's source (address, and port/id when PROTO_SPECIFIED) lies in the range. */
  private inRange(range: NatRange): boolean {
    if (range.flags & NF_NAT_RANGE_MAP_IPS) {
      const src = this.newSrc >>> 0;
      if (src < range.minAddr >>> 0 || src > range.maxAddr >>> 0) return false;
    }
    if ((range.flags & NF_NAT_RANGE_PROTO_SPECIFIED) === 0) return true;
    return this.l4InRange(Manip.Src, range.minPort, range.maxPort);
  }

  /** l4proto_in_range: ICMP id (either manip), TCP/UDP port of the manip side; other protocols always. */
  private l4InRange(manip: Manip, min: number, max: number): boolean {
    const protocol = this.protocol;
    if (protocol === IPPROTO_ICMP) return this.newSport >= min && this.newSport <= max;
    if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) {
      const port = manip === Manip.Src ? this.newSport : this.newDport;
      return port >= min && port <= max;
    }
    return true;
  }

  /**
   * find_appropriate_src: a connection from the same source (protocol, address, port) already
   * SNATed; its translated source, with our destination, if that is in range.
   */
  private findAppropriateSource(range: NatRange): boolean {
    const table = this.table;
    const protocol = this.protocol;
    const src = this.curSrc;
    const sport = this.curSport;
    const bucket = this.bysourceBucket(protocol, src, sport);
    let previous = -1;
    let candidate = this.bysourceHeads[bucket]!;
    while (candidate >= 0) {
      const next = this.bysourceNext[candidate]!;
      if (
        !table.isAllocated(candidate) ||
        (table.status(candidate) & CtStatus.SrcNatDone) === 0 ||
        this.bysourceBucket(table.protocol(candidate), table.tupleSrcBits(candidate, 0), table.origSport(candidate)) !== bucket
      ) {
        // Stale: freed, or reused by a connection that is not (yet) source-bound here.
        if (previous < 0) this.setHead(bucket, next);
        else this.setNext(previous, next);
        this.setNext(candidate, -1);
        this.setBucketOf(candidate, -1);
        candidate = next;
        continue;
      }
      if (
        candidate !== this.settingUp &&
        table.protocol(candidate) === protocol &&
        table.tupleSrcBits(candidate, 0) === src &&
        table.origSport(candidate) === sport
      ) {
        // Copy the source part from the (inverted) reply tuple; keep our destination.
        this.newSrc = table.tupleDstBits(candidate, 1);
        this.newSport = protocol === IPPROTO_ICMP ? table.replySport(candidate) : table.replyDport(candidate);
        this.newDst = this.curDst;
        this.newDport = this.curDport;
        if (this.inRange(range)) {
          this.reusedFrom = candidate;
          return true;
        }
      }
      previous = candidate;
      candidate = next;
    }
    return false;
  }

  /**
   * find_best_ips_proto: one address in [minAddr, maxAddr] from a hash of the tuple's addresses,
   * so a client keeps its translated address across connections ("some Internet Banking sites
   * like this"); with PERSISTENT the other side's address is left out of the hash.
   */
  private findBestIps(manip: Manip, range: NatRange, explain: string[] | undefined): void {
    if ((range.flags & NF_NAT_RANGE_MAP_IPS) === 0) return;
    const min = range.minAddr >>> 0;
    const max = range.maxAddr >>> 0;
    let chosen: number;
    if (min === max) {
      chosen = min;
    } else {
      const key = this.addrKey;
      // hash2 as int32 bits (hsiphashBits): reciprocalScale reads its two halves either way.
      const j = hsiphashBits(key.k0, key.k1, 2, this.newSrc, range.flags & NF_NAT_RANGE_PERSISTENT ? 0 : this.newDst, 0, 0);
      const dist = max >= min ? max - min + 1 : 1;
      chosen = (min + reciprocalScale(j, dist)) >>> 0;
    }
    if (manip === Manip.Src) this.newSrc = chosen | 0;
    else this.newDst = chosen | 0;
    if (explain && min !== max) {
      explain.push(
        `address ${formatIpv4(chosen)} chosen from ${formatIpv4(min)}-${formatIpv4(max)} by hash of ` +
          (range.flags & NF_NAT_RANGE_PERSISTENT ? "the source address (persistent)" : "source and destination addresses"),
      );
    }
  }

  /**
   * nf_nat_l4proto_unique_tuple: search the port (TCP/UDP, manip side) or the ICMP identifier
   * for a tuple nobody uses. Windows of at most 128 candidates from an offset; when one fails,
   * a new random offset and half the window ("another_round"), until the window is below 16 or
   * covers the whole range.
   */
  private uniqueL4(manip: Manip, range: NatRange, explain: string[] | undefined): boolean {
    const protocol = this.protocol;
    const flags = range.flags;
    let min: number;
    let rangeSize: number;
    let isIcmp = false;
    if (protocol === IPPROTO_ICMP) {
      // The id is the same in either direction.
      isIcmp = true;
      if (flags & NF_NAT_RANGE_PROTO_SPECIFIED) {
        min = range.minPort;
        rangeSize = range.maxPort - range.minPort + 1;
      } else {
        min = 0;
        rangeSize = 65536;
      }
    } else if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) {
      if ((flags & NF_NAT_RANGE_PROTO_SPECIFIED) === 0) {
        // If it's a destination rewrite, the port cannot change: the clashing tuple is kept.
        if (manip === Manip.Dst) return this.keepClashingDestination(explain);
        const port = this.newSport;
        if (port < 1024) {
          // "Loose convention: >> 512 is credential passing."
          if (port < 512) {
            min = 1;
            rangeSize = 511;
          } else {
            min = 600;
            rangeSize = 1023 - 600 + 1;
          }
        } else {
          min = 1024;
          rangeSize = 65535 - 1024 + 1;
        }
      } else {
        let lo = range.minPort;
        let hi = range.maxPort;
        if (hi < lo) {
          const t = lo;
          lo = hi;
          hi = t;
        }
        min = lo;
        rangeSize = hi - lo + 1;
      }
    } else {
      // Generic protocols: nothing but the address to vary; nf_nat_l4proto_unique_tuple leaves
      // the tuple as it is. --random/--random-fully skip get_unique_tuple's "already unique"
      // check and come here for every protocol, so a free tuple is kept here; a taken one is
      // what Linux refuses when the connection is confirmed (__nf_conntrack_confirm).
      if (!this.isUsed()) {
        if (explain) explain.push(`tuple ${this.formatTuple(this.newSrc, this.newDst, this.newSport, this.newDport)} is free (${this.protocol} has no ports): kept`);
        return true;
      }
      if (explain) explain.push(`tuple ${this.formatTuple(this.newSrc, this.newDst, this.newSport, this.newDport)} is taken and ${this.protocol} has no ports: drop (nat-no-free-tuple)`);
      return false;
    }

    const src = manip === Manip.Src;
    const oldKey = isIcmp ? this.newSport : src ? this.newSport : this.newDport;
    // Offset: --random / --random-fully from the Rng; default from the keyed 3-tuple hash.
    let off: number;
    if (flags & NF_NAT_RANGE_PROTO_RANDOM_ALL) {
      off = this.rng.next() & 0xffff;
    } else {
      // The 3-tuple of secure_ipv4_port_ephemeral (our new address, the peer's address and
      // port), plus the endpoint being translated so that many clients of one server do not all
      // probe from the same offset. The two ports share a word; the protocol is left out (TCP
      // and UDP ports are separate spaces, one offset for both costs nothing).
      const peerPort = src ? this.newDport : this.newSport;
      const ownPort = src ? this.curSport : this.curDport;
      const key = this.portKey;
      off =
        hsiphashBits(key.k0, key.k1, 4, src ? this.newSrc : this.newDst, src ? this.newDst : this.newSrc, src ? this.curSrc : this.curDst, (peerPort << 16) | ownPort) &
        0xffff;
    }
    const firstOffset = off;
    let attempts = rangeSize < NAT_MAX_ATTEMPTS ? rangeSize : NAT_MAX_ATTEMPTS;
    let tries = 0;
    this.counters.searches++;
    for (;;) {
      for (let i = 0; i < attempts; i++, off = (off + 1) & 0xffff) {
        const key = min + (off % rangeSize);
        if (isIcmp || src) this.newSport = key;
        else this.newDport = key;
        tries++;
        if (!this.isUsed()) {
          this.counters.searchTries += tries;
          if (explain) this.explainSearch(explain, manip, oldKey, min, rangeSize, firstOffset, key, tries);
          return true;
        }
      }
      if (attempts >= rangeSize || attempts < NAT_MIN_ATTEMPTS) break;
      attempts >>>= 1;
      off = this.rng.next() & 0xffff;
    }
    this.counters.searchTries += tries;
    if (manip === Manip.Dst) return this.keepClashingDestination(explain);
    if (explain) {
      explain.push(
        `${this.sideName(manip)} ${this.keyName()} ${oldKey} is taken; no free ${this.keyName()} in ` +
          `${min}-${min + rangeSize - 1} after ${tries} tries: drop (nat-no-free-tuple)`,
      );
    }
    return false;
  }

  /**
   * A destination rewrite that finds no free tuple keeps the clashing one, as Linux does
   * (nf_nat_l4proto_unique_tuple returns with the last candidate; get_unique_tuple cannot fail):
   * the source NAT that follows — a rule or the null binding at POSTROUTING or INPUT
   * (nf_nat_alloc_null_binding) — remaps the source port and makes the tuple unique, which is how
   * a DNATed or REDIRECTed connection and a direct one from the same client port both work
   * (tools/testing/selftests/net/netfilter/nf_nat_edemux.sh, nft_nat.sh test_dnat_clash). What
   * still clashes when the connection is confirmed is refused there (conntrack-insert-failed).
   */
  private keepClashingDestination(explain: string[] | undefined): boolean {
    if (explain) explain.push(`destination ${this.formatEndpoint(this.newDst, this.newDport)} is taken: kept, for the source NAT that follows to make the tuple unique`);
    return true;
  }

  private explainSearch(
    explain: string[],
    manip: Manip,
    oldKey: number,
    min: number,
    rangeSize: number,
    offset: number,
    chosen: number,
    tries: number,
  ): void {
    const max = min + rangeSize - 1;
    const why = oldKey < min || oldKey > max ? `is outside ${min}-${max}` : `is taken; searching ${min}-${max} from offset ${offset % rangeSize}`;
    explain.push(`${this.sideName(manip)} ${this.keyName()} ${oldKey} ${why}: chose ${chosen} after ${tries} ${tries === 1 ? "try" : "tries"}`);
  }

  /**
   * Tests only (allocates): what is wrong with the by-source index, empty when nothing. Every id
   * in a chain is there once, in the bucket `bysourceBucketOf` names, and every id that names a
   * bucket is in its chain; with `forget` wired to the table's onRemove (as buildDataplane does),
   * every linked id is a live allocation with SRC_NAT_DONE whose original source hashes there.
   * Call holding the table's lock.
   */
  bySourceProblems(): string[] {
    const problems: string[] = [];
    const table = this.table;
    const inChain = new Int32Array(this.bysourceBucketOf.length).fill(-1);
    for (let bucket = 0; bucket <= this.bysourceMask; bucket++) {
      for (let id = this.bysourceHeads[bucket]!; id >= 0; id = this.bysourceNext[id]!) {
        if (id >= inChain.length || inChain[id]! >= 0) {
          problems.push(`by-source bucket ${bucket} reaches ${id} ${id >= inChain.length ? "(no such entry)" : `again (first in bucket ${inChain[id]})`}`);
          break;
        }
        inChain[id] = bucket;
        if (this.bysourceBucketOf[id] !== bucket) problems.push(`entry ${id} is in by-source bucket ${bucket}, recorded in ${this.bysourceBucketOf[id]}`);
        if (!table.isAllocated(id) || (table.status(id) & CtStatus.SrcNatDone) === 0) {
          problems.push(`by-source bucket ${bucket} holds entry ${id}, which is not a source-NATed connection`);
        } else if (this.bysourceBucket(table.protocol(id), table.tupleSrcBits(id, 0), table.origSport(id)) !== bucket) {
          problems.push(`entry ${id} is in by-source bucket ${bucket}, its source hashes elsewhere`);
        }
      }
    }
    for (let id = 0; id < inChain.length; id++) {
      if (this.bysourceBucketOf[id]! >= 0 && inChain[id] !== this.bysourceBucketOf[id]) problems.push(`entry ${id} names by-source bucket ${this.bysourceBucketOf[id]} but is not in its chain`);
    }
    return problems;
  }

  // ---- by-source index -------------------------------------------------------------------------

  private bysourceBucket(protocol: number, src: number, sport: number): number {
    const key = this.bysourceKey;
    return hsiphashBits(key.k0, key.k1, 3, protocol, src, sport, 0) & this.bysourceMask;
  }

  private linkBySource(id: number): void {
    this.unlinkBySource(id);
    const bucket = this.bysourceBucket(this.table.protocol(id), this.table.tupleSrcBits(id, 0), this.table.origSport(id));
    this.setNext(id, this.bysourceHeads[bucket]!);
    this.setHead(bucket, id);
    this.setBucketOf(id, bucket);
  }

  private unlinkBySource(id: number): void {
    const bucket = this.bysourceBucketOf[id]!;
    if (bucket < 0) return;
    let previous = -1;
    let current = this.bysourceHeads[bucket]!;
    while (current >= 0) {
      if (current === id) {
        const next = this.bysourceNext[id]!;
        if (previous < 0) this.setHead(bucket, next);
        else this.setNext(previous, next);
        break;
      }
      previous = current;
      current = this.bysourceNext[current]!;
    }
    this.setNext(id, -1);
    this.setBucketOf(id, -1);
  }

  // The by-source index's stores, each saved first in the conntrack table's undo journal while it
  // records (`qnat trace`, src/core/undo-log.ts). Values here are ids and buckets, small integers:
  // nothing is boxed when one of these is not inlined. Runs once per NEW connection, not per packet.

  private setHead(bucket: number, id: number): void {
    const log = this.undoLog;
    if (log.recording) log.save(this.journalHeads, bucket, this.bysourceHeads[bucket]!);
    this.bysourceHeads[bucket] = id;
  }

  private setNext(id: number, next: number): void {
    const log = this.undoLog;
    if (log.recording) log.save(this.journalNext, id, this.bysourceNext[id]!);
    this.bysourceNext[id] = next;
  }

  private setBucketOf(id: number, bucket: number): void {
    const log = this.undoLog;
    if (log.recording) log.save(this.journalBucketOf, id, this.bysourceBucketOf[id]!);
    this.bysourceBucketOf[id] = bucket;
  }

  // ---- formatting (explain only) ---------------------------------------------------------------

  private hasKey(manip: Manip): boolean {
    return this.protocol === IPPROTO_ICMP || ((this.protocol === IPPROTO_TCP || this.protocol === IPPROTO_UDP) && manip === Manip.Src);
  }
  private sideName(manip: Manip): string {
    if (this.protocol === IPPROTO_ICMP) return "icmp";
    return manip === Manip.Src ? "source" : "destination";
  }
  private keyName(): string {
    return this.protocol === IPPROTO_ICMP ? "id" : "port";
  }
  private currentKey(manip: Manip): number {
    return this.protocol === IPPROTO_ICMP || manip === Manip.Src ? this.newSport : this.newDport;
  }
  private formatEndpoint(addr: number, port: number): string {
    if (this.protocol === IPPROTO_ICMP) return `${formatIpv4(addr)} id ${port}`;
    if (this.protocol === IPPROTO_TCP || this.protocol === IPPROTO_UDP) return `${formatIpv4(addr)}:${port}`;
    return formatIpv4(addr);
  }
  private formatTuple(src: number, dst: number, sport: number, dport: number): string {
    if (this.protocol === IPPROTO_ICMP) return `${formatIpv4(src)} > ${formatIpv4(dst)} id ${sport}`;
    if (this.protocol === IPPROTO_TCP || this.protocol === IPPROTO_UDP) {
      return `${formatIpv4(src)}:${sport} > ${formatIpv4(dst)}:${dport}`;
    }
    return `${formatIpv4(src)} > ${formatIpv4(dst)}`;
  }
}

// ---- hashing ---------------------------------------------------------------------------------

/**
 * Linux reciprocal_scale(val, ep_ro) = (val * ep_ro) >> 32 for a uint32 `val` and a range size up
 * to 2^32, computed exactly in doubles by splitting `val` into 16-bit halves.
 */
export function reciprocalScale(val: number, range: number): number {
  const hi = val >>> 16;
  const lo = val & 0xffff;
  return Math.floor((hi * range + Math.floor((lo * range) / 65536)) / 65536);
}
