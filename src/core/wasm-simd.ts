/**
 * What the WebAssembly SIMD kernels of the hot path share (core/hash-lanes.ts, the batch hash;
 * core/batch-lanes.ts, a receive batch's L4 sums and tuples): the opcodes and encodings they are assembled with
 * (no toolchain: each module is a few hundred bytes written out in TypeScript), and the memories
 * they run in.
 */

/** WebAssembly opcodes (WebAssembly core spec 5.4; the SIMD proposal's after the 0xfd prefix). */
export const enum Op {
  Block = 0x02,
  Loop = 0x03,
  End = 0x0b,
  Br = 0x0c,
  BrIf = 0x0d,
  LocalGet = 0x20,
  LocalSet = 0x21,
  I32Load = 0x28,
  I32Load8U = 0x2d,
  I32Store = 0x36,
  I32Const = 0x41,
  I32Eq = 0x46,
  I32Ne = 0x47,
  I32LtU = 0x49,
  I32GtU = 0x4b,
  I32GeU = 0x4f,
  I32Add = 0x6a,
  I32Sub = 0x6b,
  I32Mul = 0x6c,
  I32And = 0x71,
  I32Or = 0x72,
  I32Shl = 0x74,
  I32ShrU = 0x76,
  Simd = 0xfd,
  EmptyBlock = 0x40,
  I32 = 0x7f,
  V128 = 0x7b,
}
export const enum SimdOp {
  Load = 0x00,
  Store = 0x0b,
  Const = 0x0c,
  Shuffle = 0x0d,
  Splat = 0x11,
  ExtractLane = 0x1b,
  And = 0x4e,
  Or = 0x50,
  Xor = 0x51,
  /** i32x4.extadd_pairwise_i16x8_u: each 32-bit lane the sum of its two unsigned 16-bit halves */
  ExtaddPairwiseU = 0x7f,
  Shl = 0xab,
  ShrU = 0xad,
  Add = 0xae,
}

export function uleb(value: number): number[] {
  const out: number[] = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value !== 0) byte |= 0x80;
    out.push(byte);
  } while (value !== 0);
  return out;
}

export function sleb(value: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = value & 0x7f;
    value >>= 7;
    if ((value === 0 && (byte & 0x40) === 0) || (value === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

export function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

export function name(text: string): number[] {
  return [...uleb(text.length), ...Array.from(text, (c) => c.charCodeAt(0))];
}

/**
 * The code of a function being assembled, and the emitters both kernels use (arrow properties, so
 * a kernel can take them apart: `const { code, get, set } = new Emitter()`).
 */
export class Emitter {
  readonly code: number[] = [];
  readonly get = (local: number): void => void this.code.push(Op.LocalGet, ...uleb(local));
  readonly set = (local: number): void => void this.code.push(Op.LocalSet, ...uleb(local));
  readonly i32 = (value: number): void => void this.code.push(Op.I32Const, ...sleb(value | 0));
  readonly simd = (op: number): void => void this.code.push(Op.Simd, ...uleb(op));
  /** A SIMD load or store at the address on the stack + `offset` (alignment hint 1 byte). */
  readonly simdAt = (op: number, offset: number): void => void this.code.push(Op.Simd, ...uleb(op), 0, ...uleb(offset));
  /** Opens `block { loop {` and leaves it (br_if 1) once local `counter` >= local `limit` (unsigned). */
  readonly loopWhileBelow = (counter: number, limit: number): void => {
    this.code.push(Op.Block, Op.EmptyBlock, Op.Loop, Op.EmptyBlock);
    this.get(counter);
    this.get(limit);
    this.code.push(Op.I32GeU, Op.BrIf, 1);
  };
  /** local `counter` += 1, then closes what loopWhileBelow opened (br 0 back to its test). */
  readonly nextTurn = (counter: number): void => {
    this.get(counter);
    this.i32(1);
    this.code.push(Op.I32Add);
    this.set(counter);
    this.code.push(Op.Br, 0, Op.End, Op.End);
  };
}

/**
 * `bytes()` compiled on the first call of the function returned, or null where this WebAssembly
 * lacks what the module uses (SIMD); the same answer every later call.
 */
export function compiledOnce(bytes: () => Uint8Array<ArrayBuffer>): () => WebAssembly.Module | null {
  let compiled: WebAssembly.Module | null | undefined;
  return () => {
    if (compiled === undefined) {
      const module = bytes();
      compiled = WebAssembly.validate(module) ? new WebAssembly.Module(module) : null;
    }
    return compiled;
  };
}

/**
 * A module of one function, `exported`, of `params` i32 parameters and no result (or one i32 when
 * `returnsI32`), that imports its memory as q.m; `locals` are [count, type] runs.
 */
export function singleFunctionModule(
  exported: string,
  params: number,
  locals: readonly (readonly [number, number])[],
  code: readonly number[],
  returnsI32 = false,
): Uint8Array<ArrayBuffer> {
  const localBytes = [...uleb(locals.length), ...locals.flatMap(([count, type]) => [...uleb(count), type])];
  const body = [...localBytes, ...code];
  const results = returnsI32 ? [1, Op.I32] : [0];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, ...uleb(params), ...new Array<number>(params).fill(Op.I32), ...results]),
    ...section(2, [1, ...name("q"), ...name("m"), 0x02, 0x00, 1]),
    ...section(3, [1, 0]),
    ...section(7, [1, ...name(exported), 0x00, 0]),
    ...section(10, [1, ...uleb(body.length), ...body]),
  ]);
}

/** Set once a WebAssembly.Memory was refused: later callers do not ask again. */
let memoryRefused = false;

/**
 * A WebAssembly.Memory of at least `bytes`, or null when none can be had: V8 reserves several GiB
 * of address space for each (its bounds-check guard region), so a process that holds some
 * thirteen thousand at once is refused another, after a full garbage collection. The kernel's
 * caller then runs its JavaScript twin rather than failing the dataplane that asked; and since
 * each refusal costs that collection, the process stops asking.
 */
export function laneMemory(bytes: number): WebAssembly.Memory | null {
  if (memoryRefused) return null;
  try {
    return new WebAssembly.Memory({ initial: Math.max(1, Math.ceil(bytes / 65536)) });
  } catch {
    memoryRefused = true;
    return null;
  }
}
