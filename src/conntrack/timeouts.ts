/**
 * Every conntrack timeout, in seconds, in one place (as OVS keeps them in `ct_timeout` and Linux in
 * the per-protocol `*_timeouts[]` arrays). Defaults are Linux 6.x's:
 *  - TCP: `tcp_timeouts[]` in net/netfilter/nf_conntrack_proto_tcp.c
 *  - UDP: `udp_timeouts[]` in net/netfilter/nf_conntrack_proto_udp.c (nf_conntrack_udp_timeout = 30,
 *    nf_conntrack_udp_timeout_stream = 120)
 *  - ICMP: `nf_ct_icmp_timeout` in net/netfilter/nf_conntrack_proto_icmp.c (30)
 *  - generic: `nf_ct_generic_timeout` in net/netfilter/nf_conntrack_proto_generic.c (600)
 */
export interface ConntrackTimeouts {
  tcpSynSent: number;
  tcpSynRecv: number;
  tcpEstablished: number;
  tcpFinWait: number;
  tcpCloseWait: number;
  tcpLastAck: number;
  tcpTimeWait: number;
  tcpClose: number;
  tcpSynSent2: number;
  /** TCP_CONNTRACK_RETRANS: used by Linux after tcp_max_retrans retransmissions (needs window tracking; see tcp.ts). */
  tcpRetrans: number;
  /** TCP_CONNTRACK_UNACK: caps an ESTABLISHED entry picked up mid-stream until a reply is seen. */
  tcpUnack: number;
  /** UDP_CT_UNREPLIED: until the reply direction has been seen (and for the first 2 s of a stream). */
  udpUnreplied: number;
  /** UDP_CT_REPLIED: once both directions were seen and the flow is older than 2 s (Linux udp_timeout_stream). */
  udpReplied: number;
  icmp: number;
  generic: number;
}

export const DEFAULT_CONNTRACK_TIMEOUTS: Readonly<ConntrackTimeouts> = Object.freeze({
  tcpSynSent: 120,
  tcpSynRecv: 60,
  tcpEstablished: 432_000,
  tcpFinWait: 120,
  tcpCloseWait: 60,
  tcpLastAck: 30,
  tcpTimeWait: 120,
  tcpClose: 10,
  tcpSynSent2: 120,
  tcpRetrans: 300,
  tcpUnack: 300,
  udpUnreplied: 30,
  udpReplied: 120,
  icmp: 30,
  generic: 600,
});

export function resolveTimeouts(overrides?: Partial<ConntrackTimeouts>): ConntrackTimeouts {
  const resolved: ConntrackTimeouts = { ...DEFAULT_CONNTRACK_TIMEOUTS };
  if (overrides) {
    for (const key of Object.keys(resolved) as (keyof ConntrackTimeouts)[]) {
      const value = overrides[key];
      if (value !== undefined) {
        if (!(value >= 0) || !Number.isFinite(value)) throw new RangeError(`conntrack timeout ${key} must be a non-negative number of seconds`);
        resolved[key] = value;
      }
    }
  }
  return resolved;
}
