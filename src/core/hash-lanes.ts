/**
 * HalfSipHash-1-3 of a batch of four-word tuples with WebAssembly SIMD: the dataplane's prefetch
 * hashes every packet of a batch into its conntrack bucket at once (`hsiphash4Batch`'s values,
 * bit for bit; src/core/hash.ts says why this hash). One SipRound is a chain of ~14 dependent
 * additions, rotations and xors; in JavaScript two interleaved chains cost ~11 ns a tuple on the
 * bench machine. Here each 128-bit lane register holds the state word of four tuples, and two
 * groups of four run interleaved, so eight tuples take one chain's time: ~4 ns a tuple.
 *
 * The module (about 4 KB) is assembled below, no toolchain: the tuples are read as the
 * prefetch writes them, four int32 words a tuple one after the other, and transposed four tuples at
 * a time into lanes (word i of four tuples in one register) with byte shuffles. It runs in the
 * memory of its `HashLanes` (a WebAssembly.Memory), where the prefetch writes its tuples and reads
 * the buckets. Where WebAssembly SIMD is missing, `HashLanes` runs `hsiphash4Batch` on the same
 * arrays instead.
 */
import { hsiphash4Batch } from "./hash.js";
import { compiledOnce, Emitter, laneMemory, Op, SimdOp, singleFunctionModule } from "./wasm-simd.js";

/** Tuples a loop turn hashes: two groups of four lanes. */
export const TURN = 8;

/**
 * The module: imports its memory as q.m, exports `hash(k0, k1, turns, out, mask, tuples)`, which
 * hashes `turns * 8` tuples from byte `tuples` on (16 bytes each) and stores `hash & mask` of
 * tuple k at `out + 4k`.
 */
function moduleBytes(): Uint8Array<ArrayBuffer> {
  // locals: params 0-5 (k0, k1, turns, out, mask, tuples), then i32 turn (6), p (7), then v128 from 8
  const K0 = 0;
  const K1 = 1;
  const TURNS = 2;
  const OUT = 3;
  const MASK = 4;
  const TUPLES = 5;
  const T = 6;
  const P = 7;
  let next = 8;
  const keyV0 = next++;
  const keyV1 = next++;
  const keyV2 = next++;
  const keyV3 = next++;
  const maskV = next++;
  const temp = [next++, next++, next++, next++];
  const finalBlock = next++;
  const groups = [0, 1].map(() => ({ v: [next++, next++, next++, next++], words: [next++, next++, next++, next++] }));
  const v128Locals = next - 8;

  const { code, get, set, simd, simdAt, i32, loopWhileBelow, nextTurn } = new Emitter();
  const splat = (n: number): void => {
    i32(n);
    simd(SimdOp.Splat);
  };
  /** a = a OP b (v128) */
  const binary = (op: number, a: number, b: number): void => {
    get(a);
    get(b);
    simd(op);
    set(a);
  };
  const rotl = (x: number, n: number): void => {
    get(x);
    i32(n);
    simd(SimdOp.Shl);
    get(x);
    i32(32 - n);
    simd(SimdOp.ShrU);
    simd(SimdOp.Or);
    set(x);
  };
  /** out = i32 lanes [a or b][...] (indices 0-3 from a, 4-7 from b) */
  const shuffle32 = (outLocal: number, a: number, b: number, lanes: readonly number[]): void => {
    get(a);
    get(b);
    simd(SimdOp.Shuffle);
    for (const lane of lanes) for (let byte = 0; byte < 4; byte++) code.push(lane * 4 + byte);
    set(outLocal);
  };
  /** x = rotl(x, 8 * bytes) with one byte shuffle */
  const rotlBytes = (x: number, bytes: number): void => {
    get(x);
    get(x);
    simd(SimdOp.Shuffle);
    for (let lane = 0; lane < 4; lane++) for (let byte = 0; byte < 4; byte++) code.push(lane * 4 + ((byte - bytes + 4) & 3));
    set(x);
  };
  // HSIPROUND (lib/siphash.c), the two groups' steps interleaved
  const round = (): void => {
    const steps: ((v: number[]) => void)[] = [
      (v) => binary(SimdOp.Add, v[0]!, v[1]!),
      (v) => rotl(v[1]!, 5),
      (v) => binary(SimdOp.Xor, v[1]!, v[0]!),
      (v) => rotlBytes(v[0]!, 2),
      (v) => binary(SimdOp.Add, v[2]!, v[3]!),
      (v) => rotlBytes(v[3]!, 1),
      (v) => binary(SimdOp.Xor, v[3]!, v[2]!),
      (v) => binary(SimdOp.Add, v[0]!, v[3]!),
      (v) => rotl(v[3]!, 7),
      (v) => binary(SimdOp.Xor, v[3]!, v[0]!),
      (v) => binary(SimdOp.Add, v[2]!, v[1]!),
      (v) => rotl(v[1]!, 13),
      (v) => binary(SimdOp.Xor, v[1]!, v[2]!),
      (v) => rotlBytes(v[2]!, 2),
    ];
    for (const step of steps) for (const g of groups) step(g.v);
  };
  /** v3 ^= m; round; v0 ^= m, m being each group's `word(g)` local */
  const absorb = (word: (g: (typeof groups)[number]) => number): void => {
    for (const g of groups) binary(SimdOp.Xor, g.v[3]!, word(g));
    round();
    for (const g of groups) binary(SimdOp.Xor, g.v[0]!, word(g));
  };

  get(K0);
  simd(SimdOp.Splat);
  set(keyV0);
  get(K1);
  simd(SimdOp.Splat);
  set(keyV1);
  get(keyV0);
  splat(0x6c796765); // "lyge"
  simd(SimdOp.Xor);
  set(keyV2);
  get(keyV1);
  splat(0x74656462); // "tedb"
  simd(SimdOp.Xor);
  set(keyV3);
  get(MASK);
  simd(SimdOp.Splat);
  set(maskV);

  loopWhileBelow(T, TURNS);
  // p = tuples + turn * 128: eight tuples of 16 bytes
  get(T);
  i32(7);
  code.push(Op.I32Shl);
  get(TUPLES);
  code.push(Op.I32Add);
  set(P);
  for (const [index, g] of groups.entries()) {
    // four tuples, one per register, transposed into word i of the four in words[i]
    for (let row = 0; row < 4; row++) {
      get(P);
      simdAt(SimdOp.Load, index * 64 + row * 16);
      set(g.words[row]!);
    }
    shuffle32(temp[0]!, g.words[0]!, g.words[1]!, [0, 4, 1, 5]);
    shuffle32(temp[1]!, g.words[2]!, g.words[3]!, [0, 4, 1, 5]);
    shuffle32(temp[2]!, g.words[0]!, g.words[1]!, [2, 6, 3, 7]);
    shuffle32(temp[3]!, g.words[2]!, g.words[3]!, [2, 6, 3, 7]);
    shuffle32(g.words[0]!, temp[0]!, temp[1]!, [0, 1, 4, 5]);
    shuffle32(g.words[1]!, temp[0]!, temp[1]!, [2, 3, 6, 7]);
    shuffle32(g.words[2]!, temp[2]!, temp[3]!, [0, 1, 4, 5]);
    shuffle32(g.words[3]!, temp[2]!, temp[3]!, [2, 3, 6, 7]);
    for (const [i, key] of [keyV0, keyV1, keyV2, keyV3].entries()) {
      get(key);
      set(g.v[i]!);
    }
  }
  for (let word = 0; word < 4; word++) absorb((g) => g.words[word]!);
  // the final block, the same for every tuple: the message length (16 bytes) in the top byte
  splat(16 << 24);
  set(finalBlock);
  absorb(() => finalBlock);
  for (const g of groups) {
    get(g.v[2]!);
    splat(0xff);
    simd(SimdOp.Xor);
    set(g.v[2]!);
  }
  round();
  round();
  round();
  for (const [index, g] of groups.entries()) {
    // out + turn * 32 + index * 16 <- (v1 ^ v3) & mask
    get(OUT);
    get(T);
    i32(5);
    code.push(Op.I32Shl, Op.I32Add);
    get(g.v[1]!);
    get(g.v[3]!);
    simd(SimdOp.Xor);
    get(maskV);
    simd(SimdOp.And);
    simdAt(SimdOp.Store, index * 16);
  }
  nextTurn(T);
  code.push(Op.End);

  return singleFunctionModule("hash", 6, [[2, Op.I32], [v128Locals, Op.V128]], code);
}

/** The compiled module, or null where this WebAssembly has no SIMD (compiled once, on first use). */
export const laneModule = compiledOnce(moduleBytes);

/** The module's export: see moduleBytes. */
export type HashFunction = (k0: number, k1: number, turns: number, out: number, mask: number, tuples: number) => void;

/** What ConntrackTable.bucketsOf hashes with: a HashLanes, or a receive batch's BatchLanes. */
export interface BucketHasher {
  /** Hashes tuples 0 .. count-1 into its `hashes`, masked with `mask`. */
  hash(k0: number, k1: number, count: number, mask: number): void;
}

/**
 * Tuple and bucket arrays for `capacity` tuples, and the hash that reads and fills them:
 * `tuples[4k .. 4k+3]` (protocol, source, destination, ports as int32 words) in,
 * `hashes[k] = hsiphash(k0, k1, 4, ...tuple k) & mask` out. One per dataplane thread; no
 * allocation per call.
 */
export class HashLanes implements BucketHasher {
  readonly tuples: Int32Array;
  readonly hashes: Int32Array;
  /** True when the WebAssembly SIMD module runs (else hsiphash4Batch). */
  readonly simd: boolean;
  private readonly run: HashFunction | null;
  private readonly outOffset: number;

  /** `simd: false` runs the JavaScript hash (tests compare the two). */
  constructor(capacity: number, options: { simd?: boolean } = {}) {
    const rounded = Math.max(TURN, Math.ceil(capacity / TURN) * TURN);
    this.outOffset = rounded * 16;
    const memory = options.simd === false ? null : laneMemory(this.outOffset + rounded * 4);
    const module = memory === null ? null : laneModule();
    if (memory !== null && module !== null) {
      const instance = new WebAssembly.Instance(module, { q: { m: memory } });
      this.run = instance.exports.hash as HashFunction;
      this.tuples = new Int32Array(memory.buffer, 0, rounded * 4);
      this.hashes = new Int32Array(memory.buffer, this.outOffset, rounded);
    } else {
      this.run = null;
      this.tuples = new Int32Array(rounded * 4);
      this.hashes = new Int32Array(rounded);
    }
    this.simd = this.run !== null;
  }

  /** Hashes tuples 0 .. count-1 (count <= capacity) into `hashes`, masked with `mask`. */
  hash(k0: number, k1: number, count: number, mask: number): void {
    const run = this.run;
    if (run !== null) run(k0, k1, (count + TURN - 1) >> 3, this.outOffset, mask, 0);
    else hsiphash4Batch(k0, k1, this.tuples, count, this.hashes, mask);
  }
}
