/**
 * UDP tracking: nf_conntrack_udp_packet in Linux 6.x net/netfilter/nf_conntrack_proto_udp.c.
 * Until a reply is seen the entry is UNREPLIED with the 30 s timeout. Once SEEN_REPLY is set (by
 * the tracker after the first reply packet), every packet refreshes it; a flow still active more
 * than 2 s after its first packet (`stream_ts`) is a stream: the 120 s stream timeout and ASSURED.
 */
import { CtStatus, type ConntrackTable } from "./table.js";
import { UDP_STREAM_DELAY } from "./timeouts.js";

/** CtStatus bits as plain constants (CtStatus is an enum object; its properties are loads). */
const SEEN_REPLY = CtStatus.SeenReply;
const ASSURED = CtStatus.Assured;

export function udpPacket(table: ConntrackTable, id: number): void {
  // The time is the table's (`now()`: pinned once per batch by the dataplane); no double crosses
  // a call, so nothing is boxed per packet.
  const timeout = udpRefreshTimeout(table, id, table.status(id));
  if (timeout >= 0) {
    table.refreshNow(id, timeout);
  } else {
    table.refreshNow(id, table.timeouts.udpReplied);
    table.setStatus(id, ASSURED);
  }
}

/**
 * The timeout `udpPacket` refreshes entry `id` (of status `status`) with, or -1 when the packet
 * also makes it ASSURED (a stream: the 120 s timeout). The lock-free established path
 * (dataplane/fast-path.ts) refreshes with it and leaves the -1 case to the locked path.
 */
export function udpRefreshTimeout(table: ConntrackTable, id: number, status: number): number {
  const timeouts = table.timeouts;
  if ((status & SEEN_REPLY) === 0) return timeouts.udpUnreplied;
  // "Still active after two seconds? Extend timeout." (time_after: strictly later)
  if (!table.startedMoreThan(id, UDP_STREAM_DELAY)) return timeouts.udpUnreplied;
  return (status & ASSURED) === 0 ? -1 : timeouts.udpReplied;
}
