/**
 * Generic tracking for protocols without ports (GRE, SCTP, ESP, ...): Linux
 * net/netfilter/nf_conntrack_proto_generic.c — the address pair is the tuple (sport = dport = 0),
 * and every packet refreshes the 600 s timeout.
 */
import type { ConntrackTable } from "./table.js";

export function genericPacket(table: ConntrackTable, id: number): void {
  table.refreshNow(id, table.timeouts.generic);
}
