/**
 * IPv4 fragmentation on output, as Linux's slow path does it (net/ipv4/ip_output.c
 * ip_do_fragment -> ip_frag_init / ip_frag_next, net/ipv4/ip_options.c ip_options_fragment;
 * RFC 791 section 3.2 "Fragmentation and Reassembly", RFC 1812 section 4.2.2.7).
 *
 * A datagram of header length `hlen` that does not fit `mtu` is cut into pieces of its payload:
 * every piece but the last carries `(mtu - hlen) & ~7` bytes (8-byte units, as the fragment
 * offset counts); the last carries what is left, up to `mtu - hlen`. Each piece gets a copy of
 * the header with its own total length, fragment offset and header checksum (ip_send_check); the
 * identification, TOS, TTL, protocol and addresses are the datagram's. The flags word is written
 * anew (`frag_off = htons(offset >> 3)`): DF and the reserved bit are not kept, MF is set on every
 * piece but the last — and on the last too when the datagram was itself a fragment with MF
 * (a fragment of a fragment keeps its place in the original: offsets start at its own offset).
 *
 * Options: every piece carries the same header length. Once the first piece of a datagram that
 * starts at offset 0 is written, the options that RFC 791 does not copy into fragments (the
 * IPOPT_COPIED bit, 0x80, clear: record route, timestamp...) are overwritten with NOPs in the
 * datagram's own header, so the pieces after it carry only copied options (ip_options_fragment,
 * which works on the original skb in place, "dirty, but effective"). A datagram that is itself a
 * non-first fragment keeps its options in every piece (its options were fixed when it was cut).
 *
 * Contract: the caller has parsed the packet (validate.ts) and checked it does not fit; `mtu` is
 * at least 68 (RFC 791's minimum, config.ts enforces it), so a piece is at least 8 bytes. No
 * allocation: bytes are copied with loops into the caller's batch.
 */
import type { PacketBatch } from "../core/batch.js";
import { read16, write16 } from "./bytes.js";
import { IPV4_FLAG_MF, IPV4_FLAGS_FRAGMENT, IPV4_FRAGMENT_OFFSET_MASK, IPV4_TOTAL_LENGTH, ipv4FillChecksum } from "./ipv4.js";

/** IP option types (RFC 791): end of list, no operation; the copied flag (include/uapi/linux/ip.h IPOPT_COPIED). */
export const IPOPT_END = 0;
export const IPOPT_NOOP = 1;
export const IPOPT_COPY = 0x80;

/** Payload bytes of every fragment but the last for `mtu` and header length `hlen` (ip_frag_next: `len &= ~7`). */
export function fragmentPayloadSize(mtu: number, headerLength: number): number {
  return (mtu - headerLength) & ~7;
}

/**
 * How many fragments a datagram of `length` bytes (header `headerLength` included) becomes at
 * `mtu`: 1 when it fits. ip_frag_next takes `mtu - hlen` bytes while more than that is left,
 * rounded down to 8, and the rest at once.
 */
export function fragmentCount(length: number, headerLength: number, mtu: number): number {
  const payload = length - headerLength;
  const room = mtu - headerLength;
  if (payload <= room) return 1;
  const piece = room & ~7;
  return 1 + Math.ceil((payload - room) / piece);
}

/**
 * Replaces the options not copied into fragments with NOPs in the header at `b[o..]`
 * (Linux ip_options_fragment): the walk stops at END, at an option whose length is below 2 or
 * runs past the header, as Linux's does.
 */
export function ipv4OptionsFragment(b: Uint8Array, o: number, headerLength: number): void {
  let at = o + 20;
  let left = headerLength - 20;
  while (left > 0) {
    const type = b[at]!;
    if (type === IPOPT_END) return;
    if (type === IPOPT_NOOP) {
      at++;
      left--;
      continue;
    }
    if (left < 2) return;
    const length = b[at + 1]!;
    if (length < 2 || length > left) return;
    if ((type & IPOPT_COPY) === 0) b.fill(IPOPT_NOOP, at, at + length);
    at += length;
    left -= length;
  }
}

/**
 * Writes the fragments of the datagram at `buf[off..off+length)` for `mtu` into the next free
 * slots of `out` (ip_do_fragment's slow path) and returns how many; 0 when they would not all fit
 * (the batch is left as it was: a datagram is sent whole or not at all). The header of the
 * datagram itself is changed when it starts at offset 0 and has options (ip_options_fragment).
 */
export function writeIpv4Fragments(buf: Uint8Array, off: number, length: number, mtu: number, out: PacketBatch): number {
  const headerLength = (buf[off]! & 0x0f) << 2;
  const count = fragmentCount(length, headerLength, mtu);
  if (out.count + count > out.capacity || mtu > out.slotSize - out.headroom) return 0;
  const room = mtu - headerLength;
  const piece = room & ~7;
  const word = read16(buf, off + IPV4_FLAGS_FRAGMENT);
  const moreAfter = (word & IPV4_FLAG_MF) !== 0;
  const start = (word & IPV4_FRAGMENT_OFFSET_MASK) << 3;
  const data = out.data;
  let offset = start;
  let from = off + headerLength;
  let left = length - headerLength;
  while (left > 0) {
    const size = left > room ? piece : left;
    const slot = out.count * out.slotSize;
    const at = slot + out.headroom;
    // A plain packet: the slot's virtio_net_hdr (if any) all zero (core/batch.ts).
    for (let i = slot; i < at; i++) data[i] = 0;
    for (let i = 0; i < headerLength; i++) data[at + i] = buf[off + i]!;
    for (let i = 0; i < size; i++) data[at + headerLength + i] = buf[from + i]!;
    left -= size;
    write16(data, at + IPV4_TOTAL_LENGTH, headerLength + size);
    write16(data, at + IPV4_FLAGS_FRAGMENT, (offset >>> 3) | (left > 0 || moreAfter ? IPV4_FLAG_MF : 0));
    ipv4FillChecksum(data, at);
    out.lengths[out.count] = headerLength + size;
    out.count++;
    // ip_frag_ipcb: after THE first piece of the datagram, the rest inherit fixed options.
    if (offset === 0 && headerLength > 20) ipv4OptionsFragment(buf, off, headerLength);
    offset += size;
    from += size;
  }
  return count;
}
