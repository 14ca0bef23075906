/**
 * The L4 checksums of a batch with WebAssembly SIMD: nf_conntrack_checksum verifies the TCP/UDP
 * checksum of every packet (conntrack/checksum.ts), and in JavaScript the RFC 1071 sum is about
 * five instructions a 32-bit word — ~8 ns for a 64-byte packet, ~210 ns for a 1500-byte one on the
 * bench machine. Here one call per batch sums every packet's L4 bytes sixteen at a time
 * (`i32x4.extadd_pairwise_i16x8_u` adds the eight 16-bit words of a load into four 32-bit lanes),
 * the last partial load masked to the segment's length.
 *
 * The kernel reads the packets where they are: a `ChecksumLanes` owns a WebAssembly.Memory whose
 * first bytes are the batch's packet data (PacketBatch's `data` when it was made with
 * `checksumLanes`), followed by 16 bytes a last load may read past the data, the masks, the ranges
 * the caller writes and the sums it reads. No copy, no allocation per call. The fast path
 * (dataplane/fast-path.ts) fills the ranges in its batch prefetch and adds the pseudo-header.
 *
 * The sums are of little-endian 16-bit words, as fast-path.ts's own loop reads them: the one's
 * complement sum of byte-swapped words is the byte-swapped sum (RFC 1071 2(B)), and the caller
 * compares in that order.
 */
import { compiledOnce, Emitter, laneMemory, Op, SimdOp, singleFunctionModule, uleb } from "./wasm-simd.js";

/** Bytes after the data that a segment's last 16-byte load may read (masked off). */
const READ_PAST = 16;
/** Masks: for r = 0..15, r bytes of 0xff then zeros, 16 bytes each. */
const MASK_BYTES = 16 * 16;

/**
 * The module: `sums(count, ranges, out, masks)`: for k < count, the segment
 * [ranges[2k], ranges[2k+1]) (byte offsets, start <= end), its 16-bit little-endian words summed
 * and folded to 16 bits (0 .. 0xffff) into out[k].
 */
function moduleBytes(): Uint8Array<ArrayBuffer> {
  const COUNT = 0;
  const RANGES = 1;
  const OUT = 2;
  const MASKS = 3;
  const K = 4;
  const AT = 5;
  const END = 6;
  const SUM = 7;
  const ACC = 8;
  const { code, get, set, simd, simdAt, i32, loopWhileBelow, nextTurn } = new Emitter();
  const load32 = (offset: number): void => void code.push(Op.I32Load, 2, ...uleb(offset));
  const v128Load = (): void => simdAt(SimdOp.Load, 0);
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

  loopWhileBelow(K, COUNT);
  // at = ranges[2k], end = ranges[2k + 1]
  get(RANGES);
  get(K);
  i32(3);
  code.push(Op.I32Shl, Op.I32Add);
  set(AT);
  get(AT);
  load32(4);
  set(END);
  get(AT);
  load32(0);
  set(AT);
  simd(SimdOp.Const);
  code.push(...new Array<number>(16).fill(0));
  set(ACC);
  // whole 16-byte loads while at + 16 <= end
  code.push(Op.Block, Op.EmptyBlock, Op.Loop, Op.EmptyBlock);
  get(AT);
  i32(16);
  code.push(Op.I32Add);
  get(END);
  code.push(Op.I32GtU, Op.BrIf, 1);
  get(AT);
  v128Load();
  accumulate();
  get(AT);
  i32(16);
  code.push(Op.I32Add);
  set(AT);
  code.push(Op.Br, 0, Op.End, Op.End);
  // the rest (0-15 bytes): one load, masked to end - at bytes
  get(AT);
  v128Load();
  get(MASKS);
  get(END);
  get(AT);
  code.push(Op.I32Sub);
  i32(4);
  code.push(Op.I32Shl, Op.I32Add);
  v128Load();
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
  // out[k] = sum
  get(OUT);
  get(K);
  i32(2);
  code.push(Op.I32Shl, Op.I32Add);
  get(SUM);
  code.push(Op.I32Store, 2, 0);
  nextTurn(K);
  code.push(Op.End);
  return singleFunctionModule("sums", 4, [[4, Op.I32], [1, Op.V128]], code);
}

/** The compiled module, or null where this WebAssembly has no SIMD (compiled once, on first use). */
const checksumModule = compiledOnce(moduleBytes);

type SumsFunction = (count: number, ranges: number, out: number, masks: number) => void;

/**
 * Packet memory of `dataBytes` and the L4 sums of up to `capacity` segments in it. `create`
 * returns null where the kernel cannot run (no SIMD, or no memory to be had: see laneMemory); the
 * caller then keeps its data in a plain buffer and sums in JavaScript.
 */
export class ChecksumLanes {
  /** The packet bytes: offset 0 of the memory. */
  readonly data: Uint8Array;
  /** Segment k is the bytes [ranges[2k], ranges[2k+1]) of `data`; the caller writes them. */
  readonly ranges: Int32Array;
  /** What `sum` leaves: segment k's 16-bit one's complement sum of little-endian words. */
  readonly sums: Int32Array;
  private readonly run: SumsFunction;
  private readonly rangesOffset: number;
  private readonly sumsOffset: number;
  private readonly masksOffset: number;

  private constructor(memory: WebAssembly.Memory, module: WebAssembly.Module, dataBytes: number, capacity: number) {
    this.masksOffset = (dataBytes + READ_PAST + 15) & ~15;
    this.rangesOffset = this.masksOffset + MASK_BYTES;
    this.sumsOffset = this.rangesOffset + capacity * 8;
    this.data = new Uint8Array(memory.buffer, 0, dataBytes);
    this.ranges = new Int32Array(memory.buffer, this.rangesOffset, capacity * 2);
    this.sums = new Int32Array(memory.buffer, this.sumsOffset, capacity);
    const masks = new Uint8Array(memory.buffer, this.masksOffset, MASK_BYTES);
    for (let r = 0; r < 16; r++) masks.fill(0xff, r * 16, r * 16 + r);
    this.run = new WebAssembly.Instance(module, { q: { m: memory } }).exports.sums as SumsFunction;
  }

  static create(dataBytes: number, capacity: number): ChecksumLanes | null {
    const module = checksumModule();
    if (module === null) return null;
    const masksOffset = (dataBytes + READ_PAST + 15) & ~15;
    const memory = laneMemory(masksOffset + MASK_BYTES + capacity * 12);
    return memory === null ? null : new ChecksumLanes(memory, module, dataBytes, capacity);
  }

  /**
   * Sums segments 0 .. count-1 (count <= capacity). Each range must lie within `data`, start <= end;
   * the caller checks (a range outside would read other bytes of the memory, never outside it).
   */
  sum(count: number): void {
    this.run(count, this.rangesOffset, this.sumsOffset, this.masksOffset);
  }
}
