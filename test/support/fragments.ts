/** Splits test datagrams into IPv4 fragments, the way a sender with a small MTU would. */
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";
import { ipv4FillChecksum, setIpv4FragmentOffset, setIpv4MoreFragments, setIpv4TotalLength } from "../../src/wire/ipv4.js";

/** The datagram of `spec` (no IP options) as fragments of at most `chunk` L4 bytes (a multiple of 8). */
export function fragmentDatagram(spec: PacketSpec, chunk: number): Uint8Array[] {
  const whole = buildPacket(spec);
  const l4 = whole.subarray(20);
  const out: Uint8Array[] = [];
  for (let offset = 0; offset < l4.length; offset += chunk) {
    const part = l4.subarray(offset, Math.min(l4.length, offset + chunk));
    const f = new Uint8Array(20 + part.length);
    f.set(whole.subarray(0, 20));
    f.set(part, 20);
    setIpv4TotalLength(f, 0, f.length);
    setIpv4FragmentOffset(f, 0, offset);
    setIpv4MoreFragments(f, 0, offset + chunk < l4.length);
    ipv4FillChecksum(f, 0);
    out.push(f);
  }
  return out;
}

/**
 * Puts IPv4 fragments (any order) back together as RFC 791's reassembly would: the header of the
 * piece at the lowest offset (a first fragment keeps every option), the pieces' payloads at their
 * offsets, MF as the piece that ends last has it, the total length and header checksum anew.
 * Throws when the pieces are of different datagrams, overlap or leave a hole.
 */
export function reassembleFragments(pieces: readonly Uint8Array[]): Uint8Array {
  if (pieces.length === 0) throw new Error("no fragments");
  const at = (p: Uint8Array) => ((p[6]! << 8) | p[7]!) & 0x1fff;
  const sorted = [...pieces].sort((a, b) => at(a) - at(b));
  const first = sorted[0]!;
  const key = (p: Uint8Array) => [4, 5, 9, 12, 13, 14, 15, 16, 17, 18, 19].map((i) => p[i]).join(",");
  const headerLength = (first[0]! & 0x0f) * 4;
  const start = at(first) * 8;
  let end = start;
  for (const p of sorted) {
    if (key(p) !== key(first)) throw new Error("fragments of different datagrams");
    if (at(p) * 8 !== end) throw new Error(`fragment at ${at(p) * 8}, expected ${end}: a hole or an overlap`);
    end += p.length - (p[0]! & 0x0f) * 4;
  }
  const whole = new Uint8Array(headerLength + end - start);
  whole.set(first.subarray(0, headerLength));
  for (const p of sorted) whole.set(p.subarray((p[0]! & 0x0f) * 4), headerLength + at(p) * 8 - start);
  const last = sorted[sorted.length - 1]!;
  setIpv4TotalLength(whole, 0, whole.length);
  whole[6] = ((last[6]! & 0x20) | (start >>> 11)) & 0xff;
  whole[7] = (start >>> 3) & 0xff;
  ipv4FillChecksum(whole, 0);
  return whole;
}
