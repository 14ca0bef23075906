/** Seeded random valid packets for the wire property tests (not a test file itself). */
import { expect } from "vitest";
import { XorShift32 } from "../../src/core/rng.js";
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";

export function randomBytes(rng: XorShift32, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = rng.next() & 0xff;
  return b;
}

export function randomAddress(rng: XorShift32): string {
  const a = rng.next();
  return `${a >>> 24}.${(a >>> 16) & 0xff}.${(a >>> 8) & 0xff}.${a & 0xff}`;
}

/** IP options: NOPs ending in a random-length tail, as many 4-byte words as `words`. */
function randomOptions(rng: XorShift32): Uint8Array | undefined {
  if (rng.next() % 3 !== 0) return undefined;
  const words = 1 + (rng.next() % 10);
  const options = new Uint8Array(words * 4).fill(1); // NOP
  options[options.length - 1] = 0; // EOL
  return options;
}

const QUERY_TYPES = [0, 8, 13, 14, 15, 16, 17, 18];
const ERROR_TYPES = [3, 4, 5, 11, 12];

/** A random TCP, UDP or ICMP query (or, rarely, another protocol) packet spec. */
export function randomSpec(rng: XorShift32, allowFragments = true): PacketSpec {
  const kind = rng.next() % 10;
  const base: PacketSpec = {
    protocol: kind < 4 ? "tcp" : kind < 7 ? "udp" : kind < 9 ? "icmp" : 47,
    src: randomAddress(rng),
    dst: randomAddress(rng),
    ttl: 1 + (rng.next() % 255),
    id: rng.next() & 0xffff,
    df: rng.next() % 2 === 0,
    options: randomOptions(rng),
    payload: randomBytes(rng, rng.next() % 5 === 0 ? rng.next() % 1400 : rng.next() % 64),
  };
  if (allowFragments && rng.next() % 8 === 0) {
    // A fragment: first (MF, offset 0) or a later one.
    base.df = false;
    base.mf = rng.next() % 2 === 0;
    base.fragmentOffset = rng.next() % 2 === 0 ? 0 : 8 * (1 + (rng.next() % 1000));
    if (base.fragmentOffset === 0) base.mf = true;
  }
  if (base.protocol === "tcp") {
    base.sport = rng.next() & 0xffff;
    base.dport = rng.next() & 0xffff;
    base.seq = rng.next();
    base.ack = rng.next();
    base.tcpFlags = rng.next() & 0xff;
    if (rng.next() % 3 === 0) base.tcpOptions = randomBytes(rng, 4 * (1 + (rng.next() % 10)));
  } else if (base.protocol === "udp") {
    base.sport = rng.next() & 0xffff;
    base.dport = rng.next() & 0xffff;
    base.noUdpChecksum = rng.next() % 4 === 0;
  } else if (base.protocol === "icmp") {
    base.icmpType = QUERY_TYPES[rng.next() % QUERY_TYPES.length];
    base.icmpCode = 0;
    base.icmpId = rng.next() & 0xffff;
    base.icmpSeq = rng.next() & 0xffff;
  }
  return base;
}

export interface IcmpErrorCase {
  /** The ICMP error packet. */
  packet: Uint8Array;
  /** The complete packet it embeds (as it was sent). */
  original: Uint8Array;
  /** How many bytes of `original` the error carries. */
  embedded: number;
}

/** An ICMP error embedding a random packet, cut at a random point after its IPv4 header. */
export function randomIcmpError(rng: XorShift32): IcmpErrorCase {
  const original = buildPacket(randomSpec(rng));
  const headerLength = (original[0]! & 0x0f) * 4;
  const choice = rng.next() % 5;
  let embedded: number;
  if (choice === 0) embedded = original.length; // all of it
  else if (choice === 1) embedded = Math.min(original.length, headerLength + 8); // RFC 792's minimum
  else embedded = headerLength + (rng.next() % (original.length - headerLength + 1)); // anywhere
  const type = ERROR_TYPES[rng.next() % ERROR_TYPES.length]!;
  const packet = buildPacket({
    protocol: "icmp",
    src: randomAddress(rng),
    dst: randomAddress(rng),
    ttl: 64,
    options: randomOptions(rng),
    icmpType: type,
    icmpCode: rng.next() % 16,
    icmpId: rng.next() & 0xffff,
    icmpSeq: rng.next() & 0xffff,
    payload: original.slice(0, embedded),
  });
  return { packet, original, embedded };
}

/** Byte equality that is cheap in loops; vitest's diff only when the bytes differ. */
export function expectSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  let same = actual.length === expected.length;
  for (let i = 0; same && i < actual.length; i++) same = actual[i] === expected[i];
  if (!same) expect(actual).toEqual(expected);
}
