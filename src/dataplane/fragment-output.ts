/**
 * Fragmentation on output (Linux ip_finish_output -> ip_fragment -> ip_do_fragment): a packet
 * without DF that does not fit the MTU of the port it leaves by is cut into fragments
 * (src/wire/fragment.ts) after POSTROUTING, so the fragments carry the translated header and
 * the L4 checksum the NAT already patched for the whole datagram. Forwarded packets and the
 * router's own host's packets (OUTPUT) alike; a DF packet that is too big was refused earlier
 * with ICMP "fragmentation needed" (ip_forward -> ip_exceeds_mtu), and a GSO super-packet whose
 * segments fit is not cut at all (it is segmented by whoever receives it).
 *
 * The fragments go into one preallocated batch per dataplane (`batch`, its verdicts in
 * `verdicts`), cleared at the start of every input batch and written by the forwarder right
 * after that batch's own packets (io/forwarder.ts). A datagram whose fragments do not all fit
 * what is left of it is dropped whole and counted (DropReason.FragmentOutputFull, and `failed`
 * as Linux's IPSTATS_MIB_FRAGFAILS). The counters are Linux's Ip: FragOKs (`datagrams`) and
 * FragCreates (`fragments`) of /proc/net/snmp, shown by `qnat show stats`.
 *
 * Hot path: no allocation; the slots carry the forwarder's virtio_net_hdr room, left zero (a
 * plain packet, core/batch.ts), so a TUN leg with IFF_VNET_HDR writes them without a copy.
 */
import { PacketBatch, VIRTIO_NET_HDR_LEN } from "../core/batch.js";
import { onesComplementSum } from "../wire/checksum.js";
import { writeIpv4Fragments } from "../wire/fragment.js";
import { IPPROTO_TCP, IPPROTO_UDP, type PacketInfo } from "../wire/packet-info.js";

/** Fragments one input batch may produce (64 packets of 1500 bytes to a 1450 MTU make 128). */
export const FRAGMENT_BATCH_CAPACITY = 256;
/** Bytes the batch may take at most: with large MTUs (jumbo, up to 65535) it holds fewer slots. */
const FRAGMENT_BATCH_BYTES = 4 << 20;

/** Linux's fragmentation counters (include/uapi/linux/snmp.h IPSTATS_MIB_FRAG*). */
export interface FragmentOutputCounters {
  /** Datagrams fragmented (FragOKs). */
  datagrams: number;
  /** Fragments created (FragCreates). */
  fragments: number;
  /** Datagrams that needed fragmenting and were dropped: the batch was full (FragFails). */
  failed: number;
}

export class FragmentOutput {
  readonly batch: PacketBatch;
  /** The egress (`port * 2 + leg`) of each fragment in `batch`. */
  readonly verdicts: Int32Array;
  readonly counters: FragmentOutputCounters = { datagrams: 0, fragments: 0, failed: 0 };

  /** `largestMtu`: the largest MTU of the dataplane's ports (a fragment is never longer). */
  constructor(largestMtu: number, capacity = FRAGMENT_BATCH_CAPACITY) {
    const slotSize = (Math.max(2048, largestMtu + VIRTIO_NET_HDR_LEN) + 15) & ~15;
    const slots = Math.max(16, Math.min(capacity, Math.floor(FRAGMENT_BATCH_BYTES / slotSize)));
    this.batch = new PacketBatch(slots, slotSize, VIRTIO_NET_HDR_LEN);
    this.verdicts = new Int32Array(slots);
  }

  /** Forgets the previous batch's fragments (the forwarder has written them). */
  clear(): void {
    this.batch.count = 0;
  }

  /**
   * Cuts the parsed packet `info` (at `buf[off..]`, `info.length` bytes) into fragments for
   * `mtu`, each with egress `verdict`; returns how many, 0 when the batch has no room for all of
   * them (nothing written, counted as failed). A partial TCP/UDP checksum (a local sender's
   * offload) is completed first, as ip_do_fragment does (skb_checksum_help): the fragments leave
   * as plain packets.
   */
  fragment(buf: Uint8Array, off: number, info: PacketInfo, mtu: number, verdict: number): number {
    const out = this.batch;
    const first = out.count;
    if (info.l4ChecksumPartial && info.fragmentOffset === 0 && info.hasL4) completePartialChecksum(buf, info);
    const count = writeIpv4Fragments(buf, off, info.length, mtu, out);
    if (count === 0) {
      this.counters.failed++;
      return 0;
    }
    for (let i = first; i < out.count; i++) this.verdicts[i] = verdict;
    this.counters.datagrams++;
    this.counters.fragments += count;
    return count;
  }
}

/**
 * Finishes a TCP/UDP checksum whose field holds only the pseudo-header sum (CHECKSUM_PARTIAL):
 * the sum over the L4 bytes, field included, inverted (skb_checksum_help); a UDP result of 0 is
 * sent as 0xffff (RFC 768: 0 means no checksum).
 */
function completePartialChecksum(buf: Uint8Array, info: PacketInfo): void {
  const protocol = info.protocol;
  if (protocol !== IPPROTO_TCP && protocol !== IPPROTO_UDP) return;
  const field = info.l4Offset + (protocol === IPPROTO_TCP ? 16 : 6);
  let checksum = ~onesComplementSum(buf, info.l4Offset, info.l4Length) & 0xffff;
  if (protocol === IPPROTO_UDP && checksum === 0) checksum = 0xffff;
  buf[field] = checksum >>> 8;
  buf[field + 1] = checksum;
  info.l4ChecksumPartial = false;
}
