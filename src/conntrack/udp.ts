/**
 * UDP tracking: nf_conntrack_udp_packet in Linux 6.x net/netfilter/nf_conntrack_proto_udp.c.
 * Until a reply is seen the entry is UNREPLIED with the 30 s timeout. Once Udp.SeenReply is set (by
 * the tracker after the first reply packet), every packet refreshes it; a flow still active more
 * than 2 s after its first packet (`stream_ts`) is a stream: the 120 s stream timeout and Udp.Assured.
 */
import { CtStatus, type ConntrackTable } from "./table.js";

/**
 * CtStatus bits and the stream delay as literals (a const enum): CtStatus is an enum object whose
 * properties are loads, and a module constant is a context-slot load and an initialisation check.
 */
const enum Udp {
  SeenReply = CtStatus.SeenReply,
  Assured = CtStatus.Assured,
  /** Udp.StreamDelay (timeouts.ts): Linux's 2 s of stream_ts. */
  StreamDelay = 2,
}

export function udpPacket(table: ConntrackTable, id: number): void {
  // The time is the table's (`now()`: pinned once per batch by the dataplane); no double crosses
  // a call, so nothing is boxed per packet.
  const timeout = udpRefreshTimeout(table, id, table.status(id));
  if (timeout >= 0) {
    table.refreshNow(id, timeout);
  } else {
    table.refreshNow(id, table.timeouts.udpReplied);
    table.setStatus(id, Udp.Assured);
  }
}

/**
 * The timeout `udpPacket` refreshes entry `id` (of status `status`) with, or -1 when the packet
 * also makes it Udp.Assured (a stream: the 120 s timeout). The lock-free established path
 * (dataplane/fast-path.ts) refreshes with it and leaves the -1 case to the locked path.
 */
export function udpRefreshTimeout(table: ConntrackTable, id: number, status: number): number {
  const timeouts = table.timeouts;
  if ((status & Udp.SeenReply) === 0) return timeouts.udpUnreplied;
  // An ASSURED stream passed the two seconds below when it became one, and time only moves on:
  // Linux tests stream_ts again on every packet, with this answer, so the start time is not read.
  if ((status & Udp.Assured) !== 0) return timeouts.udpReplied;
  // "Still active after two seconds? Extend timeout." (time_after: strictly later)
  return table.startedMoreThan(id, Udp.StreamDelay) ? -1 : timeouts.udpUnreplied;
}
