/**
 * Longest-prefix match over IPv4 in the DIR-24-8 layout (Gupta, Lin, McKeown, "Routing Lookups
 * in Hardware at Memory Access Speeds", INFOCOM 1998; the layout of DPDK's rte_lpm).
 *
 * - `tbl24`: one Int32 entry per /24 (2^24 entries, 64 MiB). An entry below `TBL8_FLAG` is a
 *   value (stored as value + 1, so 0 means "no route"); an entry at or above it points to a tbl8
 *   group.
 * - `tbl8`: groups of 256 Int32 entries, one per address of a /24 that holds a prefix longer
 *   than /24. Entries are value + 1 or 0.
 *
 * A lookup is one load, or two for addresses under a longer-than-/24 prefix; it allocates
 * nothing and never throws. A 128 KiB summary per /16 (`tbl16`) answers first when all of a /16
 * maps to one value (most of the address space of a small table), so the lookups of a router
 * with a few routes stay in the CPU cache instead of touching a random page of tbl24.
 *
 * Incremental insert/delete stay exact without a per-entry depth array for tbl24 (which would
 * cost another 16 MiB): every prefix is kept in a compact exact-match store (per length: a direct
 * array up to /16, an open-addressing hash table beyond), and a change to a prefix of length
 * L <= 24 repaints its tbl24 range while skipping every sub-range owned by a longer prefix that
 * exists (found by walking the binary trie of the range, guided by one "something longer is
 * nested below" bit per trie node above /24: 2 MiB). A delete repaints
 * with the longest existing covering prefix, so the shorter route comes back. tbl8 groups keep a
 * Uint8 depth per entry (0 = inherited from the /24-or-shorter cover, kept in `groupCover`).
 *
 * Limits (refused with an `LpmError`, never a crash):
 * - values 0..LPM_MAX_VALUE (2^24 - 2, as DPDK's rte_lpm's 24-bit next hops): enough for a route
 *   id per prefix of a full Internet table (about 1M). Entries are Int32 so that every value V8
 *   reads back is a small integer (a Uint32 above 2^31 would be a heap number);
 * - at most LPM_MAX_TBL8_GROUPS (32768) /24s that hold longer-than-/24 prefixes (each such /24
 *   costs one group: 1280 bytes). Callers may lower the group limit to bound memory.
 *
 * Memory: 66 MiB fixed (tbl24 + tbl16 + trie bits) + 1280 B per tbl8 group + the prefix store
 * (about 10-20 B per prefix). Pages of tbl24 no route ever painted stay untouched (a table without
 * a default route and with few routes costs little resident memory).
 */

/** Largest value a prefix can map to (values are stored as value + 1 below TBL8_FLAG). */
export const LPM_MAX_VALUE = 0xfffffe;
/** Most tbl8 groups (distinct /24s holding prefixes longer than /24) a table can have. */
export const LPM_MAX_TBL8_GROUPS = 0x8000;

const TBL8_FLAG = 0x1000000;
/** tbl16 entry: the /16 is not uniform, look in tbl24. */
const TBL16_MIXED = -1;
/** The /16 summary is consulted while fewer than half of the /16s are mixed. */
const TBL16_USEFUL_BELOW = 1 << 15;
const TBL24_SIZE = 1 << 24;
const GROUP_SIZE = 256;
/** tbl24 entries a deferred fill paints at once (a /8's worth: about 0.1-0.3 ms). */
const FILL_PIECE = 1 << 16;

export class LpmError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LpmError";
  }
}

/**
 * Exact-match store of the prefixes of one length: key = prefix >>> (32 - length),
 * slot value = stored value + 1 (0 = empty). Lengths up to 16 use a direct array;
 * longer ones a linear-probing hash table with backward-shift deletion.
 */
class PrefixSet {
  private keys: Uint32Array;
  private values: Int32Array;
  private readonly direct: boolean;
  private mask: number;
  count = 0;

  constructor(readonly length: number) {
    this.direct = length <= 16;
    const capacity = this.direct ? 1 << length : 16;
    this.keys = new Uint32Array(this.direct ? 0 : capacity);
    this.values = new Int32Array(capacity);
    this.mask = capacity - 1;
  }

  /** Stored value + 1, or 0 when absent. */
  getEncoded(key: number): number {
    if (this.direct) return this.values[key]!;
    if (this.count === 0) return 0;
    let slot = hashKey(key) & this.mask;
    for (;;) {
      const stored = this.values[slot]!;
      if (stored === 0) return 0;
      if (this.keys[slot] === key) return stored;
      slot = (slot + 1) & this.mask;
    }
  }

  /** Sets the value; returns true when the key was new. */
  set(key: number, encoded: number): boolean {
    if (this.direct) {
      const fresh = this.values[key] === 0;
      this.values[key] = encoded;
      if (fresh) this.count++;
      return fresh;
    }
    if ((this.count + 1) * 4 > this.values.length * 3) this.grow();
    let slot = hashKey(key) & this.mask;
    for (;;) {
      const stored = this.values[slot]!;
      if (stored === 0) {
        this.keys[slot] = key;
        this.values[slot] = encoded;
        this.count++;
        return true;
      }
      if (this.keys[slot] === key) {
        this.values[slot] = encoded;
        return false;
      }
      slot = (slot + 1) & this.mask;
    }
  }

  /** Removes the key; returns true when it was present. */
  delete(key: number): boolean {
    if (this.direct) {
      if (this.values[key] === 0) return false;
      this.values[key] = 0;
      this.count--;
      return true;
    }
    if (this.count === 0) return false;
    let slot = hashKey(key) & this.mask;
    for (;;) {
      const stored = this.values[slot]!;
      if (stored === 0) return false;
      if (this.keys[slot] === key) break;
      slot = (slot + 1) & this.mask;
    }
    // Backward-shift deletion keeps every probe chain unbroken without tombstones.
    let hole = slot;
    let next = (hole + 1) & this.mask;
    while (this.values[next] !== 0) {
      const home = hashKey(this.keys[next]!) & this.mask;
      // Move the entry into the hole unless its home lies cyclically in (hole, next].
      const homeInRange = hole <= next ? home > hole && home <= next : home > hole || home <= next;
      if (!homeInRange) {
        this.keys[hole] = this.keys[next]!;
        this.values[hole] = this.values[next]!;
        hole = next;
      }
      next = (next + 1) & this.mask;
    }
    this.values[hole] = 0;
    this.count--;
    return true;
  }

  /** Calls visit(key, encoded) for every stored prefix (control plane only). */
  forEach(visit: (key: number, encoded: number) => void): void {
    if (this.direct) {
      for (let key = 0; key < this.values.length; key++) {
        const encoded = this.values[key]!;
        if (encoded !== 0) visit(key, encoded);
      }
      return;
    }
    for (let slot = 0; slot < this.values.length; slot++) {
      const encoded = this.values[slot]!;
      if (encoded !== 0) visit(this.keys[slot]!, encoded);
    }
  }

  byteLength(): number {
    return this.keys.byteLength + this.values.byteLength;
  }

  /** Slots to walk for `keysInSlots` (the direct array's or the hash table's size). */
  get slotCount(): number {
    return this.values.length;
  }

  /** Appends the keys stored in slots [from, to) to `into` (control plane: a listing in pieces). */
  keysInSlots(from: number, to: number, into: number[]): void {
    const end = Math.min(to, this.values.length);
    for (let slot = from; slot < end; slot++) {
      if (this.values[slot] !== 0) into.push(this.direct ? slot : this.keys[slot]!);
    }
  }

  /** Makes room for `expected` entries in total without further growth. */
  reserve(expected: number): void {
    if (this.direct) return;
    let capacity = this.values.length;
    while (expected * 4 > capacity * 3) capacity *= 2;
    if (capacity !== this.values.length) this.grow(capacity);
  }

  private grow(capacity = this.values.length * 2): void {
    const oldKeys = this.keys;
    const oldValues = this.values;
    this.keys = new Uint32Array(capacity);
    this.values = new Int32Array(capacity);
    this.mask = capacity - 1;
    for (let slot = 0; slot < oldValues.length; slot++) {
      const encoded = oldValues[slot]!;
      if (encoded === 0) continue;
      let at = hashKey(oldKeys[slot]!) & this.mask;
      while (this.values[at] !== 0) at = (at + 1) & this.mask;
      this.keys[at] = oldKeys[slot]!;
      this.values[at] = encoded;
    }
  }
}

/** Fibonacci hashing: the multiplier is 2^32 / golden ratio. */
function hashKey(key: number): number {
  const mixed = Math.imul(key ^ (key >>> 15), 0x9e3779b1);
  return (mixed ^ (mixed >>> 16)) >>> 0;
}

export interface LpmOptions {
  /** Upper bound on tbl8 groups (default and maximum LPM_MAX_TBL8_GROUPS). */
  maxTbl8Groups?: number;
}

export interface LpmPrefix {
  readonly prefix: number;
  readonly prefixLength: number;
  readonly value: number;
}

export class Lpm4 {
  /** Hot-path tables: read by `lookup` only. */
  private readonly tbl24 = new Int32Array(TBL24_SIZE);
  /**
   * One Int32 per /16 (256 KiB): the tbl24 value shared by all 256 /24s of the /16 when they
   * are equal and none holds a tbl8 group, else TBL16_MIXED. A small table (a few routes and a
   * default) answers almost every lookup from here, which stays in the CPU cache, instead of
   * from a random line (and page) of the 32 MiB tbl24. Kept exact by every tbl24 write.
   */
  private readonly tbl16 = new Int32Array(1 << 16);
  /**
   * How many /16s are TBL16_MIXED. When most are (a full Internet table) the summary would only
   * add a load to every lookup, so `lookup` skips it; with a few routes it answers nearly all.
   */
  private mixed16 = 0;
  private tbl8 = new Int32Array(0);
  /** Prefix length that owns each tbl8 entry; 0 = inherited from the group's cover. */
  private tbl8Depth = new Uint8Array(0);
  /** Per group: the encoded value of the /24-or-shorter cover, and how many >/24 prefixes it holds. */
  private groupCover = new Int32Array(0);
  private groupPrefixCount = new Uint16Array(0);
  private groupCapacity = 0;
  private groupsAllocated = 0;
  private freeGroups: number[] = [];
  private readonly maxGroups: number;
  private readonly sets: PrefixSet[] = [];
  /**
   * One bit per binary-trie node above /24 (heap order: node (level, key) is bit 2^level + key,
   * 2^24 bits = 2 MiB): set when a stored prefix of length in (level, 24] lies below the node.
   */
  private readonly nestedBits = new Uint8Array(1 << 21);
  private prefixCount = 0;
  /**
   * While a table is built in pieces (table-build.ts): tbl24 fills longer than FILL_PIECE wait
   * here as (start, end, encoded) triples, in order, until `paintPending` makes them; undefined
   * otherwise (every fill is made at once).
   */
  private pendingFills: number[] | undefined;
  private pendingAt = 0;

  constructor(options: LpmOptions = {}) {
    const maxGroups = options.maxTbl8Groups ?? LPM_MAX_TBL8_GROUPS;
    if (!Number.isInteger(maxGroups) || maxGroups < 0 || maxGroups > LPM_MAX_TBL8_GROUPS) {
      throw new LpmError(`maxTbl8Groups must be an integer in 0..${LPM_MAX_TBL8_GROUPS}`);
    }
    this.maxGroups = maxGroups;
    for (let length = 0; length <= 32; length++) this.sets.push(new PrefixSet(length));
  }

  /**
   * The value of the longest prefix that contains dst, or -1. Hot path: no allocation.
   * dst is a uint32 (a negative int32 of the same bits works too).
   */
  lookup(dst: number): number {
    if (this.mixed16 < TBL16_USEFUL_BELOW) {
      const uniform = this.tbl16[dst >>> 16]!;
      if (uniform !== TBL16_MIXED) return uniform - 1;
    }
    const entry = this.tbl24[dst >>> 8]!;
    if (entry < TBL8_FLAG) return entry - 1;
    return this.tbl8[((entry - TBL8_FLAG) << 8) | (dst & 0xff)]! - 1;
  }

  /**
   * From now on, a change that repaints more than FILL_PIECE /24s (a /0 repaints 16M of them, tens
   * of milliseconds) leaves the painting to `paintPending`, so a table being built off the packet
   * loop's critical path can be built in pieces of about a millisecond. Until `paintPending`
   * returns true, lookups may answer from the unpainted ranges; insert and delete finish the
   * pending painting first, so the table they change is always exact.
   */
  deferLargeFills(): void {
    this.pendingFills ??= [];
  }

  /**
   * Paints up to `maxEntries` tbl24 entries of the pending fills (deferLargeFills); true when
   * none is left. Each fill is made in /16-aligned steps, its /16 summaries with it.
   */
  paintPending(maxEntries: number): boolean {
    const fills = this.pendingFills;
    if (fills === undefined) return true;
    let budget = maxEntries;
    while (this.pendingAt < fills.length) {
      const start = fills[this.pendingAt]!;
      const end = fills[this.pendingAt + 1]!;
      if (budget <= 0) return false;
      const stop = Math.min(end, ((start >>> 8) + Math.max(1, budget >>> 8)) << 8);
      this.fillAndSummarise(start, stop, fills[this.pendingAt + 2]!);
      budget -= stop - start;
      if (stop >= end) this.pendingAt += 3;
      else fills[this.pendingAt] = stop;
    }
    fills.length = 0;
    this.pendingAt = 0;
    return true;
  }

  /** Stops deferring fills (after the pending ones are painted). */
  stopDeferringFills(): void {
    this.paintPending(Infinity);
    this.pendingFills = undefined;
  }

  /** Number of prefixes stored. */
  get size(): number {
    return this.prefixCount;
  }

  /** tbl8 groups in use (distinct /24s that hold prefixes longer than /24). */
  get tbl8GroupsInUse(): number {
    return this.groupsAllocated - this.freeGroups.length;
  }

  /** Bytes held in typed arrays: lookup tables plus the prefix store. */
  byteLength(): number {
    let bytes =
      this.tbl24.byteLength +
      this.tbl16.byteLength +
      this.nestedBits.byteLength +
      this.tbl8.byteLength +
      this.tbl8Depth.byteLength +
      this.groupCover.byteLength +
      this.groupPrefixCount.byteLength;
    for (const set of this.sets) bytes += set.byteLength();
    return bytes;
  }

  /** The value stored for exactly this prefix, or -1. */
  get(prefix: number, prefixLength: number): number {
    checkPrefix(prefix, prefixLength);
    return this.sets[prefixLength]!.getEncoded(keyOf(prefix, prefixLength)) - 1;
  }

  /**
   * Adds a prefix, or replaces the value of an existing one. Host bits beyond the length must be
   * zero. Throws LpmError for a malformed prefix, a value out of range or when tbl8 is full.
   */
  insert(prefix: number, prefixLength: number, value: number): void {
    checkPrefix(prefix, prefixLength);
    if (this.pendingFills !== undefined) this.paintPending(Infinity);
    if (!Number.isInteger(value) || value < 0 || value > LPM_MAX_VALUE) {
      throw new LpmError(`value ${value} out of range 0..${LPM_MAX_VALUE}`);
    }
    prefix >>>= 0;
    const encoded = value + 1;
    if (prefixLength <= 24) {
      if (this.sets[prefixLength]!.set(keyOf(prefix, prefixLength), encoded)) {
        this.prefixCount++;
        this.markNested(prefix, prefixLength);
      }
      this.paintTbl24(prefix >>> 8, prefixLength, encoded);
      return;
    }
    const index24 = prefix >>> 8;
    let entry = this.tbl24[index24]!;
    if (entry < TBL8_FLAG) {
      // The group is made before the prefix is stored, so a full tbl8 leaves the table unchanged.
      entry = TBL8_FLAG + this.allocateGroup(entry);
      this.tbl24[index24] = entry;
      this.summarise16(index24 >>> 8);
    }
    const group = entry - TBL8_FLAG;
    if (this.sets[prefixLength]!.set(keyOf(prefix, prefixLength), encoded)) {
      this.prefixCount++;
      this.groupPrefixCount[group]!++;
    }
    const start = (group << 8) | (prefix & 0xff);
    const end = start + (1 << (32 - prefixLength));
    for (let at = start; at < end; at++) {
      if (this.tbl8Depth[at]! <= prefixLength) {
        this.tbl8[at] = encoded;
        this.tbl8Depth[at] = prefixLength;
      }
    }
  }

  /**
   * Inserts many prefixes at once (a full table load): sizes the prefix store once and inserts
   * shortest first, so no repaint ever has to step around a longer prefix. Same result as
   * calling insert() for each in order (a later duplicate replaces an earlier one).
   */
  insertAll(prefixes: readonly LpmPrefix[]): void {
    const perLength = new Uint32Array(33);
    for (const p of prefixes) {
      checkPrefix(p.prefix, p.prefixLength);
      perLength[p.prefixLength]!++;
    }
    this.reservePrefixes(perLength);
    // One tbl8 allocation for every /24 that will need a group.
    const groupedIndexes = new Set<number>();
    for (const p of prefixes) if (p.prefixLength > 24) groupedIndexes.add(p.prefix >>> 8);
    let newGroups = 0;
    for (const index24 of groupedIndexes) if (this.tbl24[index24]! < TBL8_FLAG) newGroups++;
    const wanted = Math.min(this.maxGroups, this.groupsAllocated + Math.max(0, newGroups - this.freeGroups.length));
    if (wanted > this.groupCapacity) this.growGroups(wanted);
    // Counting sort by length; stable, so duplicates keep their order.
    const starts = new Uint32Array(34);
    for (let length = 0; length <= 32; length++) starts[length + 1] = starts[length]! + perLength[length]!;
    const order = new Uint32Array(prefixes.length);
    for (let i = 0; i < prefixes.length; i++) order[starts[prefixes[i]!.prefixLength]!++] = i;
    for (let i = 0; i < order.length; i++) {
      const p = prefixes[order[i]!]!;
      this.insert(p.prefix, p.prefixLength, p.value);
    }
  }

  /**
   * Makes room in the prefix store for `perLength[L]` more prefixes of each length L, so that
   * inserting them never rehashes a store of hundreds of thousands of prefixes at once (a table
   * built in pieces, table-build.ts: one such rehash is tens of ms). A hint: more or fewer
   * inserts stay correct.
   */
  reservePrefixes(perLength: ArrayLike<number>): void {
    for (let length = 0; length <= 32; length++) this.sets[length]!.reserve(this.sets[length]!.count + (perLength[length] ?? 0));
  }

  /** Removes a prefix; addresses it covered fall back to the longest shorter prefix. */
  delete(prefix: number, prefixLength: number): boolean {
    checkPrefix(prefix, prefixLength);
    if (this.pendingFills !== undefined) this.paintPending(Infinity);
    prefix >>>= 0;
    if (!this.sets[prefixLength]!.delete(keyOf(prefix, prefixLength))) return false;
    this.prefixCount--;
    if (prefixLength <= 24) {
      this.unmarkNested(prefix, prefixLength);
      this.paintTbl24(prefix >>> 8, prefixLength, this.coverEncoded(prefix, prefixLength - 1, 0));
      return true;
    }
    const index24 = prefix >>> 8;
    const group = this.tbl24[index24]! - TBL8_FLAG;
    // The longest remaining prefix between /25 and this one covers the freed entries;
    // without one they fall back to the group's /24-or-shorter cover (depth 0).
    let coverDepth = 0;
    let coverEncoded = this.groupCover[group]!;
    for (let length = prefixLength - 1; length > 24; length--) {
      const encoded = this.sets[length]!.getEncoded(keyOf(prefix, length));
      if (encoded !== 0) {
        coverDepth = length;
        coverEncoded = encoded;
        break;
      }
    }
    const start = (group << 8) | (prefix & 0xff);
    const end = start + (1 << (32 - prefixLength));
    for (let at = start; at < end; at++) {
      if (this.tbl8Depth[at] === prefixLength) {
        this.tbl8[at] = coverEncoded;
        this.tbl8Depth[at] = coverDepth;
      }
    }
    if (--this.groupPrefixCount[group]! === 0) {
      this.tbl24[index24] = this.groupCover[group]!;
      this.summarise16(index24 >>> 8);
      this.freeGroups.push(group);
    }
    return true;
  }

  /** Every stored prefix (control plane and tests; order: by length, then unspecified). */
  prefixes(): LpmPrefix[] {
    const out: LpmPrefix[] = [];
    for (const set of this.sets) {
      const length = set.length;
      set.forEach((key, encoded) => {
        const prefix = length === 0 ? 0 : (key << (32 - length)) >>> 0;
        out.push({ prefix, prefixLength: length, value: encoded - 1 });
      });
    }
    return out;
  }

  /** Slots of the prefix store of one length, for prefixesInSlots. */
  prefixSlotCount(prefixLength: number): number {
    return this.sets[prefixLength]!.slotCount;
  }

  /**
   * Appends the prefixes of one length stored in slots [from, to) of its store to `into` (a
   * listing walks a full table in pieces of a few thousand slots; a change between pieces moves
   * entries, so a prefix changed meanwhile may be missed or seen twice, as a kernel dump in parts).
   */
  prefixesInSlots(prefixLength: number, from: number, to: number, into: number[]): void {
    const start = into.length;
    this.sets[prefixLength]!.keysInSlots(from, to, into);
    if (prefixLength === 0) return;
    for (let i = start; i < into.length; i++) into[i] = (into[i]! << (32 - prefixLength)) >>> 0;
  }

  /** Encoded value of the longest stored prefix of length <= fromLength containing addr (0 = none). */
  private coverEncoded(addr: number, fromLength: number, downTo: number): number {
    for (let length = fromLength; length >= downTo; length--) {
      const set = this.sets[length]!;
      if (set.count === 0) continue;
      const encoded = set.getEncoded(keyOf(addr, length));
      if (encoded !== 0) return encoded;
    }
    return 0;
  }

  /**
   * Writes `encoded` over the tbl24 range of the prefix starting at /24 index `index24` with
   * length `level` (<= 24), except the sub-ranges owned by a stored longer prefix (<= /24).
   * The walk descends only into trie nodes whose "nested" bit says a longer prefix lies below,
   * so its cost follows the number of nested prefixes, not the size of the range.
   */
  private paintTbl24(index24: number, level: number, encoded: number): void {
    if (level === 24 || !this.hasNested(level, index24 >>> (24 - level))) {
      this.fillTbl24(index24, index24 + (1 << (24 - level)), encoded);
      return;
    }
    const childLevel = level + 1;
    const childSpan = 1 << (24 - childLevel);
    const childSet = this.sets[childLevel]!;
    for (let child = index24; child < index24 + 2 * childSpan; child += childSpan) {
      if (childSet.getEncoded(child >>> (24 - childLevel)) !== 0) continue;
      this.paintTbl24(child, childLevel, encoded);
    }
  }

  /** Whether a stored prefix of length in (level, 24] lies under trie node (level, key), level < 24. */
  private hasNested(level: number, key: number): boolean {
    const node = (1 << level) + key;
    return (this.nestedBits[node >>> 3]! & (1 << (node & 7))) !== 0;
  }

  /** After a /1-/24 prefix was stored: mark its ancestors (an ancestor of a marked node is marked). */
  private markNested(prefix: number, prefixLength: number): void {
    for (let level = prefixLength - 1; level >= 0; level--) {
      const node = (1 << level) + keyOf(prefix, level);
      const bit = 1 << (node & 7);
      if ((this.nestedBits[node >>> 3]! & bit) !== 0) return;
      this.nestedBits[node >>> 3]! |= bit;
    }
  }

  /** After a /1-/24 prefix was removed: clear the marks of ancestors with nothing left below. */
  private unmarkNested(prefix: number, prefixLength: number): void {
    for (let level = prefixLength - 1; level >= 0; level--) {
      const childLevel = level + 1;
      const firstChild = keyOf(prefix, level) << 1;
      let stillNested = false;
      for (let child = firstChild; child <= firstChild + 1 && !stillNested; child++) {
        stillNested =
          this.sets[childLevel]!.getEncoded(child) !== 0 ||
          (childLevel < 24 && this.hasNested(childLevel, child));
      }
      if (stillNested) return;
      const node = (1 << level) + keyOf(prefix, level);
      this.nestedBits[node >>> 3]! &= ~(1 << (node & 7));
    }
  }

  /** Recomputes the tbl16 entry of the /16 `index16` from its 256 tbl24 entries. */
  private summarise16(index16: number): void {
    const tbl24 = this.tbl24;
    const base = index16 << 8;
    const first = tbl24[base]!;
    let uniform = first < TBL8_FLAG;
    for (let index = base + 1; uniform && index < base + 256; index++) uniform = tbl24[index] === first;
    const summary = uniform ? first : TBL16_MIXED;
    const before = this.tbl16[index16]!;
    if (before === TBL16_MIXED && summary !== TBL16_MIXED) this.mixed16--;
    else if (before !== TBL16_MIXED && summary === TBL16_MIXED) this.mixed16++;
    this.tbl16[index16] = summary;
  }

  private fillTbl24(start: number, end: number, encoded: number): void {
    if (this.pendingFills !== undefined && end - start > FILL_PIECE) {
      this.pendingFills.push(start, end, encoded);
      return;
    }
    this.fillAndSummarise(start, end, encoded);
  }

  private fillAndSummarise(start: number, end: number, encoded: number): void {
    this.fillTbl24Range(start, end, encoded);
    if (end > start) for (let index16 = start >>> 8; index16 <= (end - 1) >>> 8; index16++) this.summarise16(index16);
  }

  private fillTbl24Range(start: number, end: number, encoded: number): void {
    const tbl24 = this.tbl24;
    for (let index = start; index < end; index++) {
      const entry = tbl24[index]!;
      if (entry < TBL8_FLAG) {
        tbl24[index] = encoded;
        continue;
      }
      // A group: its inherited entries (depth 0) take the new cover.
      const group = entry - TBL8_FLAG;
      this.groupCover[group] = encoded;
      const base = group << 8;
      for (let at = base; at < base + GROUP_SIZE; at++) {
        if (this.tbl8Depth[at] === 0) this.tbl8[at] = encoded;
      }
    }
  }

  private allocateGroup(coverEncoded: number): number {
    let group = this.freeGroups.pop();
    if (group === undefined) {
      if (this.groupsAllocated >= this.maxGroups) {
        throw new LpmError(
          `tbl8 is full: ${this.maxGroups} /24s already hold prefixes longer than /24`,
        );
      }
      if (this.groupsAllocated === this.groupCapacity) this.growGroups();
      group = this.groupsAllocated++;
    }
    const base = group << 8;
    this.tbl8.fill(coverEncoded, base, base + GROUP_SIZE);
    this.tbl8Depth.fill(0, base, base + GROUP_SIZE);
    this.groupCover[group] = coverEncoded;
    this.groupPrefixCount[group] = 0;
    return group;
  }

  /** Grows tbl8 by 1/4 (at least 64 groups), so little memory sits unused at a full table. */
  private growGroups(
    capacity = Math.min(this.maxGroups, Math.max(64, this.groupCapacity + (this.groupCapacity >>> 2))),
  ): void {
    const tbl8 = new Int32Array(capacity * GROUP_SIZE);
    tbl8.set(this.tbl8);
    const depth = new Uint8Array(capacity * GROUP_SIZE);
    depth.set(this.tbl8Depth);
    const cover = new Int32Array(capacity);
    cover.set(this.groupCover);
    const counts = new Uint16Array(capacity);
    counts.set(this.groupPrefixCount);
    this.tbl8 = tbl8;
    this.tbl8Depth = depth;
    this.groupCover = cover;
    this.groupPrefixCount = counts;
    this.groupCapacity = capacity;
  }
}

function keyOf(prefix: number, prefixLength: number): number {
  return prefixLength === 0 ? 0 : prefix >>> (32 - prefixLength);
}

function checkPrefix(prefix: number, prefixLength: number): void {
  if (!Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > 32) {
    throw new LpmError(`prefix length ${prefixLength} out of range 0..32`);
  }
  if (!Number.isInteger(prefix) || prefix < -0x80000000 || prefix > 0xffffffff) {
    throw new LpmError(`prefix ${prefix} is not a uint32 address`);
  }
  const hostBits = prefixLength === 32 ? 0 : (0xffffffff >>> prefixLength) & prefix;
  if (hostBits !== 0) {
    throw new LpmError(`prefix has host bits set beyond /${prefixLength}`);
  }
}
