/**
 * Building and describing packets: the checked "repr" side of the wire layer (smoltcp's
 * `*Repr`). `buildPacket`, `decodePacket` and `describePacket` allocate and are for tests, the
 * control plane and traces. `writeIcmpError` is on the forwarding path (TTL exceeded, no route,
 * fragmentation needed) and allocates nothing.
 */
import { formatIpv4, parseIpv4 } from "../core/addr.js";
import { DropReason, dropReasonName } from "../core/drop-reason.js";
import { read16, read32, write16, write32 } from "./bytes.js";
import { internetChecksum, l4ChecksumFull } from "./checksum.js";
import { icmpIsQuery } from "./icmp.js";
import { ipv4FillChecksum } from "./ipv4.js";
import { IPPROTO_GRE, IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, PacketInfo } from "./packet-info.js";
import { parsePacket } from "./validate.js";

export type ProtocolName = "tcp" | "udp" | "icmp";

export interface PacketSpec {
  /** "tcp", "udp", "icmp" or an IP protocol number (then `payload` is the whole IP payload). */
  protocol: ProtocolName | number;
  src: string;
  dst: string;
  sport?: number;
  dport?: number;
  /** Default 64. */
  ttl?: number;
  tos?: number;
  id?: number;
  df?: boolean;
  mf?: boolean;
  /** In bytes, a multiple of 8. A non-zero offset builds a non-first fragment: no L4 header, only `payload`. */
  fragmentOffset?: number;
  /** TCP flags byte (TCP_SYN | TCP_ACK ...). Default 0. */
  tcpFlags?: number;
  seq?: number;
  ack?: number;
  /** TCP window, default 65535. */
  window?: number;
  /** TCP options, padded with zeros (EOL) to a multiple of 4 bytes, at most 40 (sets the data offset). */
  tcpOptions?: Uint8Array;
  /** Default 8 (echo request). */
  icmpType?: number;
  icmpCode?: number;
  /** ICMP header bytes 4-5 (identifier for queries). */
  icmpId?: number;
  /** ICMP header bytes 6-7 (sequence for queries; next-hop MTU for frag-needed). */
  icmpSeq?: number;
  payload?: Uint8Array;
  /** IP options; padded with zeros (End of Option List) to a multiple of 4 bytes, at most 40. */
  options?: Uint8Array;
  /** Total length to reach by padding the payload with zeros (must not be below the natural length). */
  length?: number;
  /** UDP only: send checksum 0 ("no checksum", RFC 768). */
  noUdpChecksum?: boolean;
}

function protocolNumber(protocol: ProtocolName | number): number {
  if (protocol === "tcp") return IPPROTO_TCP;
  if (protocol === "udp") return IPPROTO_UDP;
  if (protocol === "icmp") return IPPROTO_ICMP;
  return protocol;
}

function requireAddress(text: string, what: string): number {
  const addr = parseIpv4(text);
  if (addr < 0) throw new Error(`${what}: not an IPv4 address: ${JSON.stringify(text)}`);
  return addr;
}

/** Builds a complete IPv4 packet with correct IP and L4 checksums. Throws on an impossible spec. */
export function buildPacket(spec: PacketSpec): Uint8Array {
  const protocol = protocolNumber(spec.protocol);
  const src = requireAddress(spec.src, "src");
  const dst = requireAddress(spec.dst, "dst");
  const options = spec.options ?? new Uint8Array(0);
  const optionsLength = (options.length + 3) & ~3;
  if (optionsLength > 40) throw new Error(`IP options too long: ${options.length} bytes (at most 40)`);
  const headerLength = 20 + optionsLength;
  const fragmentOffset = spec.fragmentOffset ?? 0;
  if (fragmentOffset % 8 !== 0 || fragmentOffset < 0 || fragmentOffset > 0x1fff * 8) {
    throw new Error(`fragment offset ${fragmentOffset} is not a multiple of 8 in 0..65528`);
  }
  const withL4Header = fragmentOffset === 0;
  const tcpOptions = spec.tcpOptions ?? new Uint8Array(0);
  const tcpOptionsLength = (tcpOptions.length + 3) & ~3;
  if (tcpOptionsLength > 40) throw new Error(`TCP options too long: ${tcpOptions.length} bytes (at most 40)`);
  let l4HeaderLength = 0;
  if (withL4Header) {
    if (protocol === IPPROTO_TCP) l4HeaderLength = 20 + tcpOptionsLength;
    else if (protocol === IPPROTO_UDP || protocol === IPPROTO_ICMP) l4HeaderLength = 8;
  }
  const payload = spec.payload ?? new Uint8Array(0);
  const naturalLength = headerLength + l4HeaderLength + payload.length;
  const totalLength = spec.length ?? naturalLength;
  if (totalLength < naturalLength) throw new Error(`length ${totalLength} is below the packet's ${naturalLength} bytes`);
  if (totalLength > 65535) throw new Error(`length ${totalLength} exceeds 65535`);

  const b = new Uint8Array(totalLength);
  b[0] = 0x40 | (headerLength >>> 2);
  b[1] = spec.tos ?? 0;
  write16(b, 2, totalLength);
  write16(b, 4, spec.id ?? 0);
  write16(b, 6, (spec.df ? 0x4000 : 0) | (spec.mf ? 0x2000 : 0) | (fragmentOffset >>> 3));
  b[8] = spec.ttl ?? 64;
  b[9] = protocol;
  write32(b, 12, src);
  write32(b, 16, dst);
  b.set(options, 20);
  ipv4FillChecksum(b, 0);

  const l4 = headerLength;
  b.set(payload, l4 + l4HeaderLength);
  if (!withL4Header || l4HeaderLength === 0) return b;
  const l4Length = totalLength - headerLength;
  if (protocol === IPPROTO_TCP) {
    write16(b, l4, spec.sport ?? 0);
    write16(b, l4 + 2, spec.dport ?? 0);
    write32(b, l4 + 4, spec.seq ?? 0);
    write32(b, l4 + 8, spec.ack ?? 0);
    b[l4 + 12] = (l4HeaderLength >>> 2) << 4;
    b.set(tcpOptions, l4 + 20);
    b[l4 + 13] = spec.tcpFlags ?? 0;
    write16(b, l4 + 14, spec.window ?? 65535);
    write16(b, l4 + 16, l4ChecksumFull(b, 0));
  } else if (protocol === IPPROTO_UDP) {
    write16(b, l4, spec.sport ?? 0);
    write16(b, l4 + 2, spec.dport ?? 0);
    // In a first fragment the UDP length is the whole datagram's; here it is what this packet holds.
    write16(b, l4 + 4, l4Length);
    write16(b, l4 + 6, spec.noUdpChecksum ? 0 : l4ChecksumFull(b, 0));
  } else {
    b[l4] = spec.icmpType ?? 8;
    b[l4 + 1] = spec.icmpCode ?? 0;
    write16(b, l4 + 4, spec.icmpId ?? 0);
    write16(b, l4 + 6, spec.icmpSeq ?? 0);
    write16(b, l4 + 2, l4ChecksumFull(b, 0));
  }
  return b;
}

/** RFC 1812 section 4.3.2.3: an ICMP error is at most 576 bytes (Linux icmp_send caps `room` so). */
export const ICMP_ERROR_MAX_LENGTH = 576;

/**
 * Writes an ICMP error (RFC 792) about `offending[offendingOff .. +offendingLen)` — the
 * offending packet's bytes from its IPv4 header, `offendingLen` normally its total length —
 * into `out` at `outOff`, with as much of the offending datagram as keeps the error within 576
 * bytes (RFC 1812 section 4.3.2.3; Linux icmp_send: room = 576 - IP header - ICMP header) and
 * within `out`. `restOfHeader` fills ICMP bytes 4-7 (next-hop MTU in the low 16 bits for
 * "fragmentation needed", RFC 1191; the pointer in the top byte for parameter problem).
 * Returns the error's total length, or 0 when `out` cannot hold even the headers.
 *
 * `out` may be the same buffer as `offending`, overlapping included (e.g. built in place over
 * the offending packet): the embedded copy is a memmove. No allocation.
 * TOS as Linux icmp_send: the offending TOS bits with precedence "internetwork control" (0xc0);
 * DF clear (the ICMP socket uses IP_PMTUDISC_DONT).
 */
export function writeIcmpError(
  out: Uint8Array,
  outOff: number,
  type: number,
  code: number,
  restOfHeader: number,
  src: number,
  dst: number,
  offending: Uint8Array,
  offendingOff: number,
  offendingLen: number,
  ttl = 64,
  ipId = 0,
): number {
  const room = out.length - outOff;
  if (room < 28 || outOff < 0) return 0;
  let copied = offendingLen;
  if (copied > ICMP_ERROR_MAX_LENGTH - 28) copied = ICMP_ERROR_MAX_LENGTH - 28;
  if (copied > room - 28) copied = room - 28;
  if (copied > offending.length - offendingOff) copied = offending.length - offendingOff;
  if (copied < 0) copied = 0;
  const offendingTos = copied > 1 ? offending[offendingOff + 1]! : 0;

  // Embedded datagram first, in case it overlaps where the new headers go.
  const to = outOff + 28;
  if (out === offending && to > offendingOff) {
    for (let i = copied - 1; i >= 0; i--) out[to + i] = offending[offendingOff + i]!;
  } else {
    for (let i = 0; i < copied; i++) out[to + i] = offending[offendingOff + i]!;
  }

  const totalLength = 28 + copied;
  const o = outOff;
  out[o] = 0x45;
  out[o + 1] = (offendingTos & 0x1e) | 0xc0; // RT_TOS(tos) | IPTOS_PREC_INTERNETCONTROL
  write16(out, o + 2, totalLength);
  write16(out, o + 4, ipId);
  write16(out, o + 6, 0);
  out[o + 8] = ttl;
  out[o + 9] = IPPROTO_ICMP;
  write16(out, o + 10, 0);
  write32(out, o + 12, src);
  write32(out, o + 16, dst);
  write16(out, o + 10, internetChecksum(out, o, 20));

  const l4 = o + 20;
  out[l4] = type;
  out[l4 + 1] = code;
  write16(out, l4 + 2, 0);
  write32(out, l4 + 4, restOfHeader);
  write16(out, l4 + 2, internetChecksum(out, l4, 8 + copied));
  return totalLength;
}

/** tcpdump-style flag letters: S F R P . (ACK) U E W, e.g. "S." for SYN+ACK. */
export function formatTcpFlags(flags: number): string {
  let text = "";
  if (flags & 0x02) text += "S";
  if (flags & 0x01) text += "F";
  if (flags & 0x04) text += "R";
  if (flags & 0x08) text += "P";
  if (flags & 0x20) text += "U";
  if (flags & 0x40) text += "E";
  if (flags & 0x80) text += "W";
  if (flags & 0x10) text += ".";
  return text === "" ? "none" : text;
}

function protocolName(protocol: number): string {
  switch (protocol) {
    case IPPROTO_TCP:
      return "tcp";
    case IPPROTO_UDP:
      return "udp";
    case IPPROTO_ICMP:
      return "icmp";
    case IPPROTO_GRE:
      return "gre";
    case IPPROTO_SCTP:
      return "sctp";
    default:
      return `proto ${protocol}`;
  }
}

/**
 * One line for traces and the CLI (DESIGN.md contract):
 * `udp 10.0.0.3:1234 > 9.186.100.1:53`, `icmp 10.0.0.3 > 9.186.100.1 8/0 id 7` (id only for
 * query types), `tcp 1.2.3.4 > 5.6.7.8` for a fragment without ports. With `tcpFlags`, TCP gets
 * ` [S.]` appended.
 */
export function describePacket(info: PacketInfo, options: { tcpFlags?: boolean } = {}): string {
  const name = protocolName(info.protocol);
  const src = formatIpv4(info.src);
  const dst = formatIpv4(info.dst);
  if (!info.hasL4) return `${name} ${src} > ${dst}`;
  if (info.protocol === IPPROTO_ICMP) {
    const base = `icmp ${src} > ${dst} ${info.icmpType}/${info.icmpCode}`;
    return icmpIsQuery(info.icmpType) ? `${base} id ${info.icmpId}` : base;
  }
  const text = `${name} ${src}:${info.sport} > ${dst}:${info.dport}`;
  return options.tcpFlags && info.protocol === IPPROTO_TCP ? `${text} [${formatTcpFlags(info.tcpFlags)}]` : text;
}

export interface DecodedPacket {
  protocol: ProtocolName | number;
  src: string;
  dst: string;
  sport?: number;
  dport?: number;
  ttl: number;
  tos: number;
  id: number;
  df: boolean;
  mf: boolean;
  fragmentOffset: number;
  tcpFlags?: number;
  seq?: number;
  ack?: number;
  window?: number;
  icmpType?: number;
  icmpCode?: number;
  icmpId?: number;
  icmpSeq?: number;
  /** Bytes after the L4 header (the whole IP payload for fragments and other protocols). */
  payload: Uint8Array;
  options: Uint8Array;
  length: number;
  headerChecksum: number;
  /** The stored L4 checksum, when the packet has one. */
  l4Checksum?: number;
  /** For ICMP errors: the embedded packet, as far as it is present. */
  inner?: { protocol: ProtocolName | number; src: string; dst: string; sport?: number; dport?: number; icmpType?: number; icmpCode?: number; icmpId?: number };
}

/** Parses bytes into a spec-like object (tests, traces). Throws with the drop reason's name when invalid. */
export function decodePacket(bytes: Uint8Array, off = 0, len = bytes.length - off): DecodedPacket {
  const info = new PacketInfo();
  const reason = parsePacket(bytes, off, len, info);
  if (reason !== DropReason.None) throw new Error(`invalid packet: ${dropReasonName(reason)}`);
  const o = info.offset;
  const l4 = info.l4Offset;
  const end = o + info.length;
  const proto = info.protocol;
  const named: ProtocolName | number =
    proto === IPPROTO_TCP ? "tcp" : proto === IPPROTO_UDP ? "udp" : proto === IPPROTO_ICMP ? "icmp" : proto;
  const decoded: DecodedPacket = {
    protocol: named,
    src: formatIpv4(info.src),
    dst: formatIpv4(info.dst),
    ttl: info.ttl,
    tos: bytes[o + 1]!,
    id: read16(bytes, o + 4),
    df: info.dontFragment,
    mf: info.moreFragments,
    fragmentOffset: info.fragmentOffset,
    payload: bytes.slice(l4, end),
    options: bytes.slice(o + 20, l4),
    length: info.length,
    headerChecksum: read16(bytes, o + 10),
  };
  if (!info.hasL4) return decoded;
  if (proto === IPPROTO_TCP) {
    decoded.sport = info.sport;
    decoded.dport = info.dport;
    decoded.seq = read32(bytes, l4 + 4);
    decoded.ack = read32(bytes, l4 + 8);
    decoded.tcpFlags = info.tcpFlags;
    decoded.window = read16(bytes, l4 + 14);
    decoded.l4Checksum = read16(bytes, l4 + 16);
    decoded.payload = bytes.slice(l4 + ((bytes[l4 + 12]! >>> 4) << 2), end);
  } else if (proto === IPPROTO_UDP) {
    decoded.sport = info.sport;
    decoded.dport = info.dport;
    decoded.l4Checksum = read16(bytes, l4 + 6);
    decoded.payload = bytes.slice(l4 + 8, end);
  } else if (proto === IPPROTO_ICMP) {
    decoded.icmpType = info.icmpType;
    decoded.icmpCode = info.icmpCode;
    decoded.icmpId = read16(bytes, l4 + 4);
    decoded.icmpSeq = read16(bytes, l4 + 6);
    decoded.l4Checksum = read16(bytes, l4 + 2);
    decoded.payload = bytes.slice(l4 + 8, end);
    if (info.isIcmpError) {
      const ip = info.innerProtocol;
      const inner: NonNullable<DecodedPacket["inner"]> = {
        protocol: ip === IPPROTO_TCP ? "tcp" : ip === IPPROTO_UDP ? "udp" : ip === IPPROTO_ICMP ? "icmp" : ip,
        src: formatIpv4(info.innerSrc),
        dst: formatIpv4(info.innerDst),
      };
      if (info.innerHasPorts) {
        if (ip === IPPROTO_ICMP) {
          inner.icmpType = info.innerIcmpType;
          inner.icmpCode = info.innerIcmpCode;
          if (icmpIsQuery(info.innerIcmpType)) inner.icmpId = info.innerSport;
        } else {
          inner.sport = info.innerSport;
          inner.dport = info.innerDport;
        }
      }
      decoded.inner = inner;
    }
  }
  return decoded;
}
