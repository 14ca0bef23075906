/**
 * Big-endian (network order) reads and writes over a Uint8Array: the primitives every wire
 * accessor is built on. Manual shifts are faster than a DataView and allocate nothing.
 *
 * Contract: the caller has checked that `o .. o+width` lies inside `b` (validate.ts does this
 * once at the edge); these functions do no bounds checks of their own.
 */

export function read16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

/** Unsigned 32-bit read (never negative). */
export function read32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

/**
 * Signed 32-bit read: int32 bits (`>>> 0` gives the uint32). For per-packet code that passes the
 * value on (addresses): V8 keeps an int32 as a small integer, while a uint32 of 2^31 or more is a
 * heap number, allocated when returned from a call or passed to one that is not inlined.
 */
export function read32Bits(b: Uint8Array, o: number): number {
  return (b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!;
}

export function write16(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 8;
  b[o + 1] = v;
}

export function write32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = v >>> 16;
  b[o + 2] = v >>> 8;
  b[o + 3] = v;
}
