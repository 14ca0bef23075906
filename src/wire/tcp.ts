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
