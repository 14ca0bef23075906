/**
 * The state of the one packet the pipeline is working on, in one explicit object (VPP's buffer
 * metadata, Linux's skb->cb): its parsed headers, its conntrack result, its offload flags and, for
 * an ICMP error the router generated, the connection it belongs to. The pipeline keeps two — one
 * for the packets it is given and one for the ICMP error it may generate in the middle of one —
 * so nothing of the first is saved and restored by hand around the second. Reused, never
 * allocated per packet.
 */
import { TrackResult } from "../conntrack/track.js";
import { PacketInfo } from "../wire/packet-info.js";

export class PacketContext {
  /** The parsed headers (parsePacket). */
  readonly info = new PacketInfo();
  /** Conntrack's verdict for the packet (track). */
  readonly ct = new TrackResult();
  /**
   * Conntrack found the packet INVALID (`-m conntrack --ctstate INVALID`): a bad checksum, state
   * or ICMP error, or a fragment of a datagram whose first fragment was INVALID. A non-first
   * fragment that merely has no ports of its own is not.
   */
  invalid = false;
  /** GSO segment size of a super-packet (batch virtio_net_hdr), 0 for a plain packet. */
  gsoSize = 0;
  /** The TCP/UDP checksum is partial (batch virtio_net_hdr NEEDS_CSUM): the sender's kernel finishes it. */
  l4Partial = false;
  /**
   * For an ICMP error the router sends, the connection (`id << 1 | dir`) it belongs to, -1 for
   * none: Linux attaches the offending packet's conntrack to the error (icmp_glue_bits ->
   * nf_ct_attach) as RELATED in the other direction, so NAT translates it back
   * (nf_nat_icmp_reply_translation).
   */
  attached = -1;
  /**
   * Where the packet goes on the wire (int32 bits): the route's gateway, or its destination on a
   * connected route; copied to the batch's `nextHops` with the verdict (core/batch.ts).
   */
  nextHop = 0;
}
