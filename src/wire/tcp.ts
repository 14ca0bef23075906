/**
 * TCP header (RFC 793 section 3.1 / RFC 9293 section 3.1) as named offsets and accessors over
 * `(b, o)`, where `o` is the offset of the TCP header (the IPv4 L4 offset).
 *
 * Contract: no checks here. After `parsePacket` accepted a packet with `hasL4` and protocol TCP,
 * the 20-byte header and the options its data offset announces are inside the packet, so no
 * accessor can fail. Setters do not touch the checksum (rewrite.ts patches it).
 */
import { read16, read32, write16, write32 } from "./bytes.js";

export const TCP_SRC_PORT = 0;
export const TCP_DST_PORT = 2;
export const TCP_SEQ = 4;
export const TCP_ACK_NUMBER = 8;
/** High nibble: data offset in 32-bit words. */
export const TCP_DATA_OFFSET = 12;
export const TCP_FLAGS = 13;
export const TCP_WINDOW = 14;
export const TCP_CHECKSUM = 16;
export const TCP_URGENT_POINTER = 18;
export const TCP_MIN_HEADER_LENGTH = 20;

export function tcpSrcPort(b: Uint8Array, o: number): number {
  return read16(b, o + TCP_SRC_PORT);
}
export function tcpDstPort(b: Uint8Array, o: number): number {
  return read16(b, o + TCP_DST_PORT);
}
export function tcpSeq(b: Uint8Array, o: number): number {
  return read32(b, o + TCP_SEQ);
}
export function tcpAck(b: Uint8Array, o: number): number {
  return read32(b, o + TCP_ACK_NUMBER);
}
/** Data offset in 32-bit words (5..15 when valid). */
export function tcpDataOffset(b: Uint8Array, o: number): number {
  return b[o + TCP_DATA_OFFSET]! >>> 4;
}
/** Header length in bytes (data offset * 4). */
export function tcpHeaderLength(b: Uint8Array, o: number): number {
  return (b[o + TCP_DATA_OFFSET]! >>> 4) << 2;
}
/** The flags byte: FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80. */
export function tcpFlags(b: Uint8Array, o: number): number {
  return b[o + TCP_FLAGS]!;
}
export function tcpWindow(b: Uint8Array, o: number): number {
  return read16(b, o + TCP_WINDOW);
}
export function tcpChecksum(b: Uint8Array, o: number): number {
  return read16(b, o + TCP_CHECKSUM);
}
export function tcpUrgentPointer(b: Uint8Array, o: number): number {
  return read16(b, o + TCP_URGENT_POINTER);
}

export function setTcpSrcPort(b: Uint8Array, o: number, v: number): void {
  write16(b, o + TCP_SRC_PORT, v);
}
export function setTcpDstPort(b: Uint8Array, o: number, v: number): void {
  write16(b, o + TCP_DST_PORT, v);
}
export function setTcpSeq(b: Uint8Array, o: number, v: number): void {
  write32(b, o + TCP_SEQ, v);
}
export function setTcpAck(b: Uint8Array, o: number, v: number): void {
  write32(b, o + TCP_ACK_NUMBER, v);
}
/** Data offset in 32-bit words; the reserved low nibble is kept. */
export function setTcpDataOffset(b: Uint8Array, o: number, words: number): void {
  const at = o + TCP_DATA_OFFSET;
  b[at] = ((words & 0x0f) << 4) | (b[at]! & 0x0f);
}
export function setTcpFlags(b: Uint8Array, o: number, v: number): void {
  b[o + TCP_FLAGS] = v;
}
export function setTcpWindow(b: Uint8Array, o: number, v: number): void {
  write16(b, o + TCP_WINDOW, v);
}
export function setTcpChecksum(b: Uint8Array, o: number, v: number): void {
  write16(b, o + TCP_CHECKSUM, v);
}
export function setTcpUrgentPointer(b: Uint8Array, o: number, v: number): void {
  write16(b, o + TCP_URGENT_POINTER, v);
}

/** Sequence number as int32 bits (`>>> 0` gives the uint32): seq arithmetic stays in int32. */
export function tcpSeqBits(b: Uint8Array, o: number): number {
  return (b[o + TCP_SEQ]! << 24) | (b[o + TCP_SEQ + 1]! << 16) | (b[o + TCP_SEQ + 2]! << 8) | b[o + TCP_SEQ + 3]!;
}
/** Acknowledgment number as int32 bits. */
export function tcpAckBits(b: Uint8Array, o: number): number {
  return (b[o + TCP_ACK_NUMBER]! << 24) | (b[o + TCP_ACK_NUMBER + 1]! << 16) | (b[o + TCP_ACK_NUMBER + 2]! << 8) | b[o + TCP_ACK_NUMBER + 3]!;
}

// ---- options (RFC 9293 3.1, RFC 7323 window scale, RFC 2018 SACK) ----------------------------

export const TCPOPT_EOL = 0;
export const TCPOPT_NOP = 1;
export const TCPOPT_MSS = 2;
export const TCPOPT_WINDOW = 3;
export const TCPOPT_SACK_PERM = 4;
export const TCPOPT_SACK = 5;
export const TCPOPT_TIMESTAMP = 8;
/** RFC 7323 2.3: a shift count above 14 is used as 14 (Linux TCP_MAX_WSCALE). */
export const TCP_MAX_WSCALE = 14;
/** What `tcpSynOptions` found: the scale in bits 0-3, plus these two flags. */
export const TCP_OPTION_WINDOW_SCALE = 0x10;
export const TCP_OPTION_SACK_PERM = 0x20;
/** NOP NOP TIMESTAMP(8) length 10: the first option word of nearly every Linux segment after the SYN. */
export const TCP_TIMESTAMP_ONLY_WORD = (TCPOPT_NOP << 24) | (TCPOPT_NOP << 16) | (TCPOPT_TIMESTAMP << 8) | 10;

/**
 * The window scale and SACK-permitted options of a segment, as Linux `tcp_options`
 * (nf_conntrack_proto_tcp.c): the shift count (capped at 14) | TCP_OPTION_WINDOW_SCALE when a
 * well-formed window scale option is present, | TCP_OPTION_SACK_PERM for SACK-permitted. A
 * malformed option ("silly" length < 2, or running past the header) ends the walk, keeping what
 * was found before it. -1 when the header has no option bytes at all (Linux then leaves the
 * direction's scale and flags as they were). Reads only inside the header's data offset;
 * allocates nothing.
 */
export function tcpSynOptions(b: Uint8Array, o: number): number {
  let at = o + TCP_MIN_HEADER_LENGTH;
  let length = tcpHeaderLength(b, o) - TCP_MIN_HEADER_LENGTH;
  if (length === 0) return -1;
  let found = 0;
  while (length > 0) {
    const kind = b[at]!;
    if (kind === TCPOPT_EOL) break;
    if (kind === TCPOPT_NOP) {
      at++;
      length--;
      continue;
    }
    if (length < 2) break;
    const size = b[at + 1]!;
    if (size < 2 || size > length) break;
    if (kind === TCPOPT_SACK_PERM && size === 2) {
      found |= TCP_OPTION_SACK_PERM;
    } else if (kind === TCPOPT_WINDOW && size === 3) {
      const shift = b[at + 2]!;
      found = (found & ~0x0f) | TCP_OPTION_WINDOW_SCALE | (shift > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : shift);
    }
    at += size;
    length -= size;
  }
  return found;
}

/** True when the header carries options other than exactly NOP NOP TIMESTAMP (the common case). */
export function tcpHasOptionsBeyondTimestamp(b: Uint8Array, o: number): boolean {
  const length = tcpHeaderLength(b, o) - TCP_MIN_HEADER_LENGTH;
  if (length === 0) return false;
  if (length !== 12) return true;
  const at = o + TCP_MIN_HEADER_LENGTH;
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) !== TCP_TIMESTAMP_ONLY_WORD;
}

/**
 * Linux `tcp_sack` (nf_conntrack_proto_tcp.c): the highest right edge of the first SACK option's
 * blocks when it is after `sack` (int32 bits, the acknowledgment number), else `sack`. As Linux:
 * a timestamp-only option block is skipped at once, a malformed option ends the walk, and only
 * the first well-formed SACK option is read. Returns int32 bits; allocates nothing.
 */
export function tcpSackEdge(b: Uint8Array, o: number, sack: number): number {
  if (!tcpHasOptionsBeyondTimestamp(b, o)) return sack;
  let at = o + TCP_MIN_HEADER_LENGTH;
  let length = tcpHeaderLength(b, o) - TCP_MIN_HEADER_LENGTH;
  while (length > 0) {
    const kind = b[at]!;
    if (kind === TCPOPT_EOL) return sack;
    if (kind === TCPOPT_NOP) {
      at++;
      length--;
      continue;
    }
    if (length < 2) return sack;
    const size = b[at + 1]!;
    if (size < 2 || size > length) return sack;
    // TCPOLEN_SACK_BASE 2 + n * TCPOLEN_SACK_PERBLOCK 8
    if (kind === TCPOPT_SACK && size >= 10 && (size - 2) % 8 === 0) {
      for (let block = at + 2; block < at + size; block += 8) {
        const right = (b[block + 4]! << 24) | (b[block + 5]! << 16) | (b[block + 6]! << 8) | b[block + 7]!;
        if (((sack - right) | 0) < 0) sack = right;
      }
      return sack;
    }
    at += size;
    length -= size;
  }
  return sack;
}
