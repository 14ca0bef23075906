/**
 * UDP header (RFC 768) as named offsets and accessors over `(b, o)`, where `o` is the offset of
 * the UDP header (the IPv4 L4 offset).
 *
 * Contract: no checks here. After `parsePacket` accepted a packet with `hasL4` and protocol UDP,
 * the 8-byte header is inside the packet and its length field is consistent, so no accessor can
 * fail. A checksum of 0 means "no checksum" (RFC 768); a computed 0 is sent as 0xffff.
 */
import { read16, write16 } from "./bytes.js";

export const UDP_SRC_PORT = 0;
export const UDP_DST_PORT = 2;
export const UDP_LENGTH = 4;
export const UDP_CHECKSUM = 6;
export const UDP_HEADER_LENGTH = 8;

export function udpSrcPort(b: Uint8Array, o: number): number {
  return read16(b, o + UDP_SRC_PORT);
}
export function udpDstPort(b: Uint8Array, o: number): number {
  return read16(b, o + UDP_DST_PORT);
}
/** Header plus data, in bytes. */
export function udpLength(b: Uint8Array, o: number): number {
  return read16(b, o + UDP_LENGTH);
}
export function udpChecksum(b: Uint8Array, o: number): number {
  return read16(b, o + UDP_CHECKSUM);
}

export function setUdpSrcPort(b: Uint8Array, o: number, v: number): void {
  write16(b, o + UDP_SRC_PORT, v);
}
export function setUdpDstPort(b: Uint8Array, o: number, v: number): void {
  write16(b, o + UDP_DST_PORT, v);
}
export function setUdpLength(b: Uint8Array, o: number, v: number): void {
  write16(b, o + UDP_LENGTH, v);
}
export function setUdpChecksum(b: Uint8Array, o: number, v: number): void {
  write16(b, o + UDP_CHECKSUM, v);
}
