/**
 * Why a packet was not forwarded. Numeric so that the hot path counts into a typed array
 * (`counters[reason]++`); names are for `qnat show stats` and traces.
 * Every layer (wire, routing, conntrack, NAT, dataplane) reports through this one enum.
 */
export enum DropReason {
  None = 0,
  // wire: validation at the edge (src/wire/validate.ts)
  Truncated,            // shorter than an IPv4 header
  BadVersion,           // version != 4
  BadHeaderLength,      // IHL < 5 or header beyond the buffer
  BadTotalLength,       // total length beyond the buffer or below the header
  BadHeaderChecksum,
  TruncatedL4,          // first fragment too short for its TCP/UDP/ICMP header
  BadL4,                // L4 header inconsistent (e.g. TCP data offset < 5, UDP length)
  // routing and forwarding
  MartianSource,        // source is 0/8, 127/8, multicast, broadcast (Linux: ip_route_input_slow)
  MartianDestination,   // destination 0.0.0.0 or 127/8 arriving on the wire
  ReversePathFilter,    // rp_filter: no route back to the source (by the arrival port, when strict);
                        // Linux LINUX_MIB_IPRPFILTER "IPReversePathFilter" (fib_validate_source -EXDEV)
  TtlExceeded,          // TTL <= 1 on forward: ICMP time exceeded sent (if allowed)
  NoRoute,              // no route: ICMP net unreachable sent (if allowed)
  FragmentationNeeded,  // DF set and larger than egress MTU: ICMP frag needed sent
  GsoTooBigNoDf,        // a GSO super-packet without DF whose segments exceed the egress MTU
                        // (Linux segments it, then fragments each segment: ip_finish_output_gso)
  // conntrack
  ConntrackInvalid,     // ctstate INVALID (bad checksum / bad TCP flags / orphan ICMP error), dropped
                        // only with conntrack.drop_invalid (Linux: a --ctstate INVALID -j DROP rule)
  ConntrackFull,        // table full and no non-ASSURED entry could be evicted
  ConntrackInsertFailed, // a clashing entry was confirmed first (nf_conntrack_confirm insert_failed)
  // filter (what Neutron's filter rules would drop)
  MetadataNotRedirected, // TCP to the metadata proxy's port, not REDIRECTed from a qr- port
                         // (Neutron: mangle mark 0x1 + filter INPUT --dport 9697 -j DROP)
  // NAT
  NatNoFreeTuple,       // port/id range exhausted for this binding
  FragmentNoState,      // non-first fragment whose first fragment was never seen
  FragmentTableFull,
  FragmentOversize,     // a fragment ending past 65535 bytes of datagram (Linux ip_frag_reasm: "Oversized IP packet")
  // egress
  EgressQueueFull,
  FragmentOutputFull,   // too big without DF, and its fragments did not fit the batch's fragment
                        // output (dataplane/fragment-output.ts; Linux IPSTATS_MIB_FRAGFAILS)
  IcmpRateLimited,      // an ICMP error was due but the rate limit suppressed it
  // the router itself
  Internal,             // processing the packet threw (a bug): the packet is dropped, the loop goes on
  Count,
}

export const DROP_REASON_COUNT = DropReason.Count as number;

/** kebab-case names for display: DropReason.TtlExceeded -> "ttl-exceeded". */
export function dropReasonName(reason: DropReason): string {
  const name = DropReason[reason] ?? `reason-${reason}`;
  return name.replace(/([a-z0-9])([A-Z])/g, "$1-$2").toLowerCase();
}
