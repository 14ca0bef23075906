/**
 * Test packets for conntrack: PacketInfo filled directly (the tracker reads only parsed facts).
 * Written as `tcp("10.0.0.3:40000", "9.186.100.1:80", SYN)` so tests read like the seed's story.
 */
import { parseIpv4 } from "../../src/core/addr.js";
import { ConntrackTable } from "../../src/conntrack/table.js";
import { TrackResult, track } from "../../src/conntrack/track.js";
import { ManualClock } from "../../src/core/clock.js";
import { DropReason } from "../../src/core/drop-reason.js";
import { write16, write32 } from "../../src/wire/bytes.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PacketInfo, TCP_ACK, TCP_RST, TCP_SYN } from "../../src/wire/packet-info.js";
import { TCP_ACK_NUMBER, TCP_DATA_OFFSET, TCP_SEQ, TCP_WINDOW } from "../../src/wire/tcp.js";

/** The seed's story: 10.0.0.3 (a tenant VM) talks to a web server outside, and the TCP flags it uses. */
export const VM = "10.0.0.3:40000";
export const WEB = "9.186.100.1:80";
export const SYN = TCP_SYN;
export const SYNACK = TCP_SYN | TCP_ACK;
export const ACK = TCP_ACK;
export const RST = TCP_RST;

export function ip(text: string): number {
  const value = parseIpv4(text);
  if (value < 0) throw new Error(`bad address ${text}`);
  return value;
}

function endpoint(text: string): [number, number] {
  const [addr, port] = text.split(":");
  return [ip(addr!), Number(port ?? 0)];
}

function base(protocol: number, src: number, dst: number): PacketInfo {
  const info = new PacketInfo();
  info.protocol = protocol;
  info.src = src;
  info.dst = dst;
  info.ttl = 64;
  info.hasL4 = true;
  return info;
}

/** A TCP segment's sequence space fields; unset: seq 0, ack 0, window 65535, no payload, no options. */
export interface Segment {
  seq?: number;
  ack?: number;
  win?: number;
  /** payload bytes */
  len?: number;
  /** option bytes (padded with EOL to a multiple of 4) */
  options?: number[];
}

/**
 * A TCP packet: the parsed facts plus the TCP header (and zeroed payload) in `buf`, which the
 * window tracking reads as Linux reads the skb.
 */
export function tcp(from: string, to: string, flags: number, segment: Segment = {}): PacketInfo {
  const [src, sport] = endpoint(from);
  const [dst, dport] = endpoint(to);
  const info = base(IPPROTO_TCP, src, dst);
  info.sport = sport;
  info.dport = dport;
  info.tcpFlags = flags;
  const options = segment.options ?? [];
  const headerLength = 20 + ((options.length + 3) & ~3);
  const l4Length = headerLength + (segment.len ?? 0);
  const buf = new Uint8Array(20 + l4Length);
  const l4 = 20;
  buf[0] = 0x45;
  write32(buf, l4 + TCP_SEQ, segment.seq ?? 0);
  write32(buf, l4 + TCP_ACK_NUMBER, segment.ack ?? 0);
  buf[l4 + TCP_DATA_OFFSET] = (headerLength / 4) << 4;
  buf[l4 + 13] = flags;
  write16(buf, l4 + TCP_WINDOW, segment.win ?? 65535);
  buf.set(options, l4 + 20);
  info.buf = buf;
  info.offset = 0;
  info.headerLength = 20;
  info.l4Offset = l4;
  info.l4Length = l4Length;
  info.length = 20 + l4Length;
  return info;
}

export function udp(from: string, to: string): PacketInfo {
  const [src, sport] = endpoint(from);
  const [dst, dport] = endpoint(to);
  const info = base(IPPROTO_UDP, src, dst);
  info.sport = sport;
  info.dport = dport;
  return info;
}

/** An ICMP query message (echo 8 / reply 0, timestamp 13/14, ...). */
export function icmpQuery(from: string, to: string, type: number, id: number, code = 0): PacketInfo {
  const info = base(IPPROTO_ICMP, ip(from), ip(to));
  info.icmpType = type;
  info.icmpCode = code;
  info.icmpId = id;
  info.sport = id;
  return info;
}

export function other(protocol: number, from: string, to: string): PacketInfo {
  const info = base(protocol, ip(from), ip(to));
  info.hasL4 = false;
  return info;
}

/** An ICMP error (type/code) from `from` to `to` that embeds `inner` (its parsed facts). */
export function icmpError(from: string, to: string, type: number, code: number, inner: PacketInfo, innerHasPorts = true): PacketInfo {
  const info = base(IPPROTO_ICMP, ip(from), ip(to));
  info.icmpType = type;
  info.icmpCode = code;
  info.isIcmpError = true;
  info.innerProtocol = inner.protocol;
  info.innerSrc = inner.src;
  info.innerDst = inner.dst;
  info.innerHasPorts = innerHasPorts;
  if (inner.protocol === IPPROTO_ICMP) {
    info.innerIcmpType = inner.icmpType;
    info.innerIcmpCode = inner.icmpCode;
    info.innerSport = inner.icmpId;
  } else {
    info.innerSport = inner.sport;
    info.innerDport = inner.dport;
  }
  return info;
}

export interface Tracked {
  id: number;
  dir: number;
  state: number;
  isNew: boolean;
  reason: DropReason;
  confirmed: boolean;
}

/** Tracks one packet as the dataplane does: a NEW entry is confirmed when the packet "leaves". */
export function send(table: ConntrackTable, info: PacketInfo): Tracked {
  const result = new TrackResult();
  const reason = track(table, info, result);
  const confirmed = result.isNew ? table.confirm(result.id) : false;
  return { id: result.id, dir: result.dir, state: result.state, isNew: result.isNew, reason, confirmed };
}

export function newTable(capacity = 1024, clock = new ManualClock()): { table: ConntrackTable; clock: ManualClock } {
  return { table: new ConntrackTable({ capacity, clock, seed: 42 }), clock };
}

/** Seconds until the entry expires. */
export function ttl(table: ConntrackTable, id: number): number {
  return table.expiresAt(id) - table.clock.now();
}
