/**
 * A receive batch's packets in WebAssembly memory, and the SIMD kernels the fast path's batch
 * prefetch runs over them (dataplane/fast-path.ts), one call each per batch:
 *
 * - `prepare`: for every packet with a plain 20-byte IPv4 header, its L4 checksum sum, and for
 *   each TCP/UDP one its conntrack tuple. nf_conntrack_checksum verifies the TCP/UDP checksum of
 *   every packet (conntrack/checksum.ts); in JavaScript the RFC 1071 sum is about five
 *   instructions a 32-bit word — ~8 ns for a 64-byte packet, ~210 ns for a 1500-byte one on the
 *   bench machine. Here sixteen bytes are summed at a time (`i32x4.extadd_pairwise_i16x8_u` adds
 *   the eight 16-bit words of a load into four 32-bit lanes), the last partial load masked to the
 *   segment's length; and the tuple (protocol, source, destination, ports, as big-endian words)
 *   is cut out of one 16-byte load of the header with one byte shuffle, where JavaScript reads
 *   each word through a DataView and writes it to the hash's memory.
 * - `hash`: the tuples' conntrack buckets, the keyed hash of core/hash-lanes.ts (its module,
 *   instantiated on this memory), bit for bit `hsiphash4Batch`.
 *
 * Layout of the memory: the packet data (PacketBatch's `data`) at 0, 16 bytes a last load may read
 * past it (masked off), the masks, then the arrays the kernels fill. No copy, no allocation per
 * call.
 *
 * The sums are of little-endian 16-bit words, as fast-path.ts's own loop reads them: the one's
 * complement sum of byte-swapped words is the byte-swapped sum (RFC 1071 2(B)), and the caller
 * compares in that order.
 */
import { type BucketHasher, type HashFunction, laneModule, TURN } from "./hash-lanes.js";
import { compiledOnce, Emitter, laneMemory, Op, SimdOp, singleFunctionModule, uleb } from "./wasm-simd.js";

/** Bytes after the data that a 16-byte load may read (masked off, or not used). */
const READ_PAST = 16;
/** Masks: for r = 0..15, r bytes of 0xff then zeros, 16 bytes each. */
const MASK_BYTES = 16 * 16;
/** Marks a TCP tuple's packet index in `slots` (a packet index is below 2^26). */
export const BATCH_LANES_TCP = 1 << 30;

/**
 * The module: `prepare(count, slot, headroom, end, sums, tuples, slots, masks) -> n`. For packet
 * i < count at `i * slot + headroom`: sums[i] (int32 at `sums + 4i`) is the folded 16-bit sum of
 * its L4 bytes when its header is a plain one (0x45) whose total length (at least 20) ends within
 * `end`, else -1; a TCP or UDP packet with a plain header gets tuple n (16 bytes at `tuples + 16n`:
 * protocol, source, destination, ports as the int32 values a big-endian read gives) and slots[n] =
 * i, | BATCH_LANES_TCP for TCP. Returns n. A packet whose first 24 bytes do not fit before `end`
 * gets neither.
 */
function moduleBytes(): Uint8Array<ArrayBuffer> {
  const COUNT = 0;
  const SLOT = 1;
  const HEADROOM = 2;
  const END = 3;
  const SUMS = 4;
  const TUPLES = 5;
  const SLOTS = 6;
  const MASKS = 7;
  const I = 8;
  const OFF = 9;
  const W = 10;
  const TOTAL = 11;
  const AT = 12;
  const STOP = 13;
  const SUM = 14;
  const N = 15;
  const PROTO = 16;
  const ACC = 17;
  const { code, get, set, simd, simdAt, i32, loopWhileBelow, nextTurn } = new Emitter();
  const load32 = (offset: number): void => void code.push(Op.I32Load, 2, ...uleb(offset));
  const store32 = (): void => void code.push(Op.I32Store, 2, 0);
  const v128Zero = (): void => {
    simd(SimdOp.Const);
    code.push(...new Array<number>(16).fill(0));
  };
  /** acc += pairwise(top of stack) */
  const accumulate = (): void => {
    simd(SimdOp.ExtaddPairwiseU);
    get(ACC);
    simd(SimdOp.Add);
    set(ACC);
  };
  /** sum = (sum & 0xffff) + (sum >>> 16) */
  const fold = (): void => {
    get(SUM);
    i32(0xffff);
    code.push(Op.I32And);
    get(SUM);
    i32(16);
    code.push(Op.I32ShrU, Op.I32Add);
    set(SUM);
  };
  /** base + local * (1 << shift) */
  const address = (base: number, index: number, shift: number): void => {
    get(base);
    get(index);
    i32(shift);
    code.push(Op.I32Shl, Op.I32Add);
  };

  loopWhileBelow(I, COUNT);
  // off = i * slot + headroom; sum = -1
  get(I);
  get(SLOT);
  code.push(Op.I32Mul);
  get(HEADROOM);
  code.push(Op.I32Add);
  set(OFF);
  i32(-1);
  set(SUM);
  code.push(Op.Block, Op.EmptyBlock); // skip: br 0 leaves the packet (depth 0 here)
  // the first 24 bytes within the data, version 4 and IHL 5
  get(OFF);
  i32(24);
  code.push(Op.I32Add);
  get(END);
  code.push(Op.I32GtU, Op.BrIf, 0);
  get(OFF);
  load32(0);
  set(W);
  get(W);
  i32(0xff);
  code.push(Op.I32And);
  i32(0x45);
  code.push(Op.I32Ne, Op.BrIf, 0);
  get(OFF);
  code.push(Op.I32Load8U, 0, 9);
  set(PROTO);
  // a TCP or UDP tuple (skip 0 leaves the tuple, depth 1 the packet)
  code.push(Op.Block, Op.EmptyBlock);
  get(PROTO);
  i32(6);
  code.push(Op.I32Ne);
  get(PROTO);
  i32(17);
  code.push(Op.I32Ne, Op.I32And, Op.BrIf, 0);
  // tuples[n] = bytes 8-23 shuffled: protocol (byte 9) as a little word, source, destination and
  // ports (bytes 12-15, 16-19, 20-23) byte-swapped into the values of big-endian reads
  address(TUPLES, N, 4);
  get(OFF);
  simdAt(SimdOp.Load, 8);
  v128Zero();
  simd(SimdOp.Shuffle);
  code.push(1, 16, 16, 16, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);
  simdAt(SimdOp.Store, 0);
  // slots[n] = i | (proto == TCP) << 30
  address(SLOTS, N, 2);
  get(I);
  get(PROTO);
  i32(6);
  code.push(Op.I32Eq);
  i32(30);
  code.push(Op.I32Shl, Op.I32Or);
  store32();
  get(N);
  i32(1);
  code.push(Op.I32Add);
  set(N);
  code.push(Op.End);
  // total = bytes 2-3 (big-endian); the segment [off + 20, off + total) within the data
  get(W);
  i32(8);
  code.push(Op.I32ShrU);
  i32(0xff00);
  code.push(Op.I32And);
  get(W);
  i32(24);
  code.push(Op.I32ShrU, Op.I32Or);
  set(TOTAL);
  get(TOTAL);
  i32(20);
  code.push(Op.I32LtU, Op.BrIf, 0);
  get(OFF);
  get(TOTAL);
  code.push(Op.I32Add);
  set(STOP);
  get(STOP);
  get(END);
  code.push(Op.I32GtU, Op.BrIf, 0);
  get(OFF);
  i32(20);
  code.push(Op.I32Add);
  set(AT);
  v128Zero();
  set(ACC);
  // whole 16-byte loads while at + 16 <= stop
  code.push(Op.Block, Op.EmptyBlock, Op.Loop, Op.EmptyBlock);
  get(AT);
  i32(16);
  code.push(Op.I32Add);
  get(STOP);
  code.push(Op.I32GtU, Op.BrIf, 1);
  get(AT);
  simdAt(SimdOp.Load, 0);
  accumulate();
  get(AT);
  i32(16);
  code.push(Op.I32Add);
  set(AT);
  code.push(Op.Br, 0, Op.End, Op.End);
  // the rest (0-15 bytes): one load, masked to stop - at bytes
  get(AT);
  simdAt(SimdOp.Load, 0);
  get(MASKS);
  get(STOP);
  get(AT);
  code.push(Op.I32Sub);
  i32(4);
  code.push(Op.I32Shl, Op.I32Add);
  simdAt(SimdOp.Load, 0);
  simd(SimdOp.And);
  accumulate();
  // the four lanes (each below 2^30 for a 64 KiB segment), folded to 16 bits
  for (let lane = 0; lane < 4; lane++) {
    get(ACC);
    simd(SimdOp.ExtractLane);
    code.push(lane);
    if (lane > 0) code.push(Op.I32Add);
  }
  set(SUM);
  fold();
  fold();
  code.push(Op.End);
  // sums[i] = sum
  address(SUMS, I, 2);
  get(SUM);
  store32();
  nextTurn(I);
  get(N);
  code.push(Op.End);
  return singleFunctionModule("prepare", 8, [[9, Op.I32], [1, Op.V128]], code, true);
}

/** The compiled module, or null where this WebAssembly has no SIMD (compiled once, on first use). */
const prepareModule = compiledOnce(moduleBytes);

type PrepareFunction = (count: number, slot: number, headroom: number, end: number, sums: number, tuples: number, slots: number, masks: number) => number;

function align16(offset: number): number {
  return (offset + 15) & ~15;
}

/** Where each part of a BatchLanes memory starts (see the module doc), and its size. */
interface Layout {
  readonly masks: number;
  readonly sums: number;
  readonly tuples: number;
  readonly slots: number;
  readonly hashes: number;
  readonly bytes: number;
  /** capacity rounded up to whole hash turns */
  readonly rounded: number;
}

function layoutOf(dataBytes: number, capacity: number): Layout {
  const rounded = Math.ceil(capacity / TURN) * TURN;
  const masks = align16(dataBytes + READ_PAST);
  const sums = masks + MASK_BYTES;
  const tuples = align16(sums + capacity * 4);
  const slots = tuples + rounded * 16;
  const hashes = slots + rounded * 4;
  return { masks, sums, tuples, slots, hashes, bytes: hashes + rounded * 4, rounded };
}

/**
 * Packet memory of `dataBytes` for a batch of `capacity` packets, and the kernels over it. `create`
 * returns null where they cannot run (no SIMD, or no memory to be had: see laneMemory); the batch
 * then keeps its data in a plain buffer and the prefetch works in JavaScript.
 */
export class BatchLanes implements BucketHasher {
  /** The packet bytes: offset 0 of the memory. */
  readonly data: Uint8Array;
  /** prepare's sum of packet i's L4 bytes (little-endian words), or -1: see moduleBytes. */
  readonly sums: Int32Array;
  /** prepare's tuples: protocol, source, destination, ports per TCP/UDP packet (four words each). */
  readonly tuples: Int32Array;
  /** prepare's packet index of tuple k, | BATCH_LANES_TCP for a TCP one. */
  readonly slots: Int32Array;
  /** hash's bucket of tuple k. */
  readonly hashes: Int32Array;
  private readonly runPrepare: PrepareFunction;
  private readonly runHash: HashFunction;
  /** Where the kernels' arrays are in the memory (the byte addresses they take). */
  private readonly layout: Layout;

  private constructor(memory: WebAssembly.Memory, prepare: WebAssembly.Module, hash: WebAssembly.Module, dataBytes: number, capacity: number, layout: Layout) {
    this.layout = layout;
    const buffer = memory.buffer;
    this.data = new Uint8Array(buffer, 0, dataBytes);
    this.sums = new Int32Array(buffer, layout.sums, capacity);
    this.tuples = new Int32Array(buffer, layout.tuples, layout.rounded * 4);
    this.slots = new Int32Array(buffer, layout.slots, layout.rounded);
    this.hashes = new Int32Array(buffer, layout.hashes, layout.rounded);
    const masks = new Uint8Array(buffer, layout.masks, MASK_BYTES);
    for (let r = 0; r < 16; r++) masks.fill(0xff, r * 16, r * 16 + r);
    const imports = { q: { m: memory } };
    this.runPrepare = new WebAssembly.Instance(prepare, imports).exports.prepare as PrepareFunction;
    this.runHash = new WebAssembly.Instance(hash, imports).exports.hash as HashFunction;
  }

  static create(dataBytes: number, capacity: number): BatchLanes | null {
    const prepare = prepareModule();
    const hash = laneModule();
    if (prepare === null || hash === null) return null;
    const layout = layoutOf(dataBytes, capacity);
    const memory = laneMemory(layout.bytes);
    return memory === null ? null : new BatchLanes(memory, prepare, hash, dataBytes, capacity, layout);
  }

  /**
   * Packets 0 .. count-1 (count <= capacity) of a batch with `slotSize`-byte slots and `headroom`:
   * fills `sums`, and `tuples` and `slots` for its TCP/UDP packets; returns how many tuples.
   */
  prepare(count: number, slotSize: number, headroom: number): number {
    const layout = this.layout;
    return this.runPrepare(count, slotSize, headroom, this.data.length, layout.sums, layout.tuples, layout.slots, layout.masks);
  }

  /** Hashes tuples 0 .. count-1 into `hashes`, masked with `mask` (ConntrackTable.bucketsOf). */
  hash(k0: number, k1: number, count: number, mask: number): void {
    const layout = this.layout;
    this.runHash(k0, k1, (count + TURN - 1) >> 3, layout.hashes, mask, layout.tuples);
  }
}
