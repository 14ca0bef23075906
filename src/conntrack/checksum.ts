/**
 * Linux `nf_conntrack_checksum=1` (the default): the protocol error handlers of nf_conntrack_in —
 * tcp_error, udp_error, nf_conntrack_icmpv4_error — verify the TCP/UDP/ICMP checksum with
 * nf_checksum at PREROUTING only (never for the router's own packets, which come through OUTPUT)
 * and make a packet with a bad one INVALID: it is not tracked and not NATed. A checksum the
 * sender's kernel left partial (CHECKSUM_PARTIAL, qnat's `l4ChecksumPartial` from a TUN offload)
 * is not verified, and a UDP checksum of 0 means none.
 *
 * qnat does not reassemble: a fragment's L4 checksum covers the whole datagram, so fragments are
 * not verified (Linux verifies the reassembled datagram).
 */
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, type PacketInfo } from "../wire/packet-info.js";
import { l4ChecksumValid } from "../wire/checksum.js";
import type { ConntrackTable } from "./table.js";

/**
 * True when the packet from the network has a bad L4 checksum: it is INVALID, counted in
 * `invalid` and `invalidChecksum`. No allocation.
 */
export function checksumInvalid(table: ConntrackTable, info: PacketInfo): boolean {
  const protocol = info.protocol;
  if (protocol !== IPPROTO_TCP && protocol !== IPPROTO_UDP && protocol !== IPPROTO_ICMP) return false;
  if (info.isFragment || !info.hasL4) return false;
  if (info.l4ChecksumPartial) return false;
  if (l4ChecksumValid(info.buf, info.l4Offset, info.l4Length, protocol, info.srcBits, info.dstBits)) return false;
  table.counters.invalid++;
  table.counters.invalidChecksum++;
  return true;
}
