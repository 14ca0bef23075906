/**
 * Which connections a `conntrack -L` / `-D` command line selects (conntrack-tools src/conntrack.c
 * with libnetfilter_conntrack's filter, what `qnat conntrack` speaks): every field given must
 * match, AND as the tool combines them. Addresses match under their prefix (`-s 10.0.0.0/24`,
 * conntrack-tools 1.4.6+), ports the tuple's ports (TCP/UDP only), `tcpState` the TCP state
 * (TcpState in tcp.ts), the ICMP type, code and id those of the original tuple, `status` all of its IPS_* bits. Plain data, so it travels as JSON over the
 * control socket. Control plane only: one call per entry of a listing or a deletion.
 */
import { inPrefix } from "../core/addr.js";
import type { ConntrackTable } from "./table.js";

/** An address under a prefix: `-s 10.0.0.0/24` is `{ addr: 10.0.0.0, prefixLength: 24 }`. */
export interface AddressMatch {
  /** uint32 */
  readonly addr: number;
  /** 0-32 */
  readonly prefixLength: number;
}

/** Address families of `-f ipv4|ipv6` (Linux AF_INET, AF_INET6). */
export const AF_INET = 2;
export const AF_INET6 = 10;

export interface ConntrackFilter {
  /** `-f`: AF_INET or AF_INET6. qnat tracks IPv4 only, so AF_INET6 selects nothing. */
  readonly family?: number;
  /** IP protocol number (`-p tcp` is 6). */
  readonly protocol?: number;
  /** `-s`/`--orig-src`, `-d`/`--orig-dst`, `-r`/`--reply-src`, `-q`/`--reply-dst`. */
  readonly origSrc?: AddressMatch;
  readonly origDst?: AddressMatch;
  readonly replySrc?: AddressMatch;
  readonly replyDst?: AddressMatch;
  /** `--sport`/`--orig-port-src`, `--dport`/`--orig-port-dst`, `--reply-port-src`, `--reply-port-dst`. */
  readonly origSport?: number;
  readonly origDport?: number;
  readonly replySport?: number;
  readonly replyDport?: number;
  /** `--icmp-type`, `--icmp-code`, `--icmp-id` (ICMP only): of the original tuple. */
  readonly icmpType?: number;
  readonly icmpCode?: number;
  readonly icmpId?: number;
  /** `--state` (TCP only): TcpState number. */
  readonly tcpState?: number;
  /** `--status`: IPS_* bits that must all be set. */
  readonly status?: number;
}

function addressMatches(addr: number, match: AddressMatch | undefined): boolean {
  return match === undefined || inPrefix(addr, match.addr, match.prefixLength);
}

/** True when entry `id` has everything `filter` asks for. */
export function matchesFilter(table: ConntrackTable, id: number, filter: ConntrackFilter): boolean {
  if (filter.family !== undefined && filter.family !== AF_INET) return false;
  if (filter.protocol !== undefined && table.protocol(id) !== filter.protocol) return false;
  if (!addressMatches(table.tupleSrcOf(id, 0), filter.origSrc)) return false;
  if (!addressMatches(table.tupleDstOf(id, 0), filter.origDst)) return false;
  if (!addressMatches(table.tupleSrcOf(id, 1), filter.replySrc)) return false;
  if (!addressMatches(table.tupleDstOf(id, 1), filter.replyDst)) return false;
  if (filter.origSport !== undefined && table.tupleSportOf(id, 0) !== filter.origSport) return false;
  if (filter.origDport !== undefined && table.tupleDportOf(id, 0) !== filter.origDport) return false;
  if (filter.replySport !== undefined && table.tupleSportOf(id, 1) !== filter.replySport) return false;
  if (filter.replyDport !== undefined && table.tupleDportOf(id, 1) !== filter.replyDport) return false;
  // ICMP tuples (tuple.ts): sport is the echo id, dport type << 8 | code.
  if (filter.icmpType !== undefined && table.tupleDportOf(id, 0) >>> 8 !== filter.icmpType) return false;
  if (filter.icmpCode !== undefined && (table.tupleDportOf(id, 0) & 0xff) !== filter.icmpCode) return false;
  if (filter.icmpId !== undefined && table.tupleSportOf(id, 0) !== filter.icmpId) return false;
  if (filter.tcpState !== undefined && table.tcpState(id) !== filter.tcpState) return false;
  if (filter.status !== undefined && (table.status(id) & filter.status) !== filter.status) return false;
  return true;
}
