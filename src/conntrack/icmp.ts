/**
 * ICMP query tracking: nf_conntrack_icmp_packet in Linux net/netfilter/nf_conntrack_proto_icmp.c.
 * Every packet of an echo/timestamp/info/address-mask exchange refreshes the 30 s timeout; the
 * entry is not deleted on the first reply (duplicates and conntrackd traffic). Which types may
 * create an entry, and how ICMP errors map to RELATED, is in tuple.ts and track.ts.
 */
import type { ConntrackTable } from "./table.js";

export function icmpPacket(table: ConntrackTable, id: number): void {
  table.refreshNow(id, table.timeouts.icmp);
}
