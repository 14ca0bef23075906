/**
 * A batch of packets in fixed-size slots of one buffer that the TypeScript side owns.
 * Packet i lives at `data[i * slotSize + headroom .. + lengths[i])`. The TUN addon reads
 * into and writes from batches in one call; in-memory ports queue them. A receive batch (the
 * forwarder's) keeps that buffer at the start of a WebAssembly memory, where the fast path's
 * batch prefetch runs its SIMD kernels over the packets in place (`lanes`, core/batch-lanes.ts);
 * every other batch has a plain one.
 *
 * `headroom` is what each slot holds before its packet: 0, or the 10-byte struct virtio_net_hdr
 * (include/uapi/linux/virtio_net.h) that a TUN device opened with IFF_VNET_HDR puts before every
 * packet (drivers/net/tun.c tun_put_user / tun_get_user). With offloads on (TUNSETOFFLOAD) that
 * header says whether the packet is a GSO super-packet (`gsoSizeOf`) and whether its TCP/UDP
 * checksum is only partial (`isChecksumPartial`); the packet bytes alone cannot tell. A header
 * of zeros is a plain packet with a full checksum, so slots of packets the router builds itself
 * only need their header bytes left at zero.
 *
 * Slot layout with Ethernet (TAP) ports — a contract the legs, the Ethernet stage and packet
 * capture rely on. In a router with any TAP port every batch has
 * `headroom = (vnet ? VIRTIO_NET_HDR_LEN : 0) + ETH_HLEN`: the IPv4 packet of slot i is at
 * `offsetOf(i)` whatever leg it came from or goes to, the virtio_net_hdr (if any) at the slot's
 * start, and for a frame read from or written to a TAP leg its 14-byte Ethernet header is at
 * `offsetOf(i) - ETH_HLEN` (so a TAP leg reads and writes each slot in one piece). A TUN leg of
 * such a router reads and writes around the 14-byte gap (readv/writev: the virtio_net_hdr at the
 * slot's start, the packet at `offsetOf(i)`). A router with only TUN ports keeps
 * `headroom = vnet ? VIRTIO_NET_HDR_LEN : 0` and no gap.
 *
 * `nextHops[i]` is the IPv4 address the pipeline routed packet i to (the route's gateway, or the
 * destination itself on a connected route), what an Ethernet leg resolves with ARP; it is only
 * meaningful for packets whose verdict is a wire leg.
 */

import { BatchLanes } from "./batch-lanes.js";

/** Length of an Ethernet II header (include/uapi/linux/if_ether.h ETH_HLEN). */
export const ETH_HLEN = 14;

/** sizeof(struct virtio_net_hdr) (include/uapi/linux/virtio_net.h; wireguard-go virtioNetHdrLen). */
export const VIRTIO_NET_HDR_LEN = 10;
/** virtio_net_hdr.flags: the TCP/UDP checksum is partial (csum_start/csum_offset are set). */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
/** virtio_net_hdr.gso_type values (include/uapi/linux/virtio_net.h). */
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

export class PacketBatch {
  readonly data: Uint8Array;
  /**
   * The SIMD kernels over `data` (core/batch-lanes.ts: L4 sums, tuples, their conntrack buckets),
   * when the batch was made with `lanes` and WebAssembly could give it a memory (`data` is then
   * that memory's first bytes); else null. The fast path's batch prefetch runs them.
   */
  readonly lanes: BatchLanes | null;
  readonly lengths: Uint32Array;
  /** The next hop of packet i (see the module doc), set by the pipeline with its verdict. */
  readonly nextHops: Uint32Array;
  count = 0;
  /** Packets the last takeSelected() could not copy (longer than a slot). */
  refused = 0;

  constructor(
    readonly capacity: number,
    readonly slotSize = 2048,
    /** Bytes before each packet in its slot: 0, or VIRTIO_NET_HDR_LEN for IFF_VNET_HDR devices. */
    readonly headroom = 0,
    /** `lanes`: keep the packets in a WebAssembly memory for the prefetch's SIMD kernels (receive batches). */
    options: { readonly lanes?: boolean } = {},
  ) {
    if (headroom < 0 || headroom >= slotSize) throw new RangeError(`headroom ${headroom} does not fit a ${slotSize}-byte slot`);
    this.lanes = options.lanes === true ? BatchLanes.create(capacity * slotSize, capacity) : null;
    this.data = this.lanes?.data ?? new Uint8Array(capacity * slotSize);
    this.lengths = new Uint32Array(capacity);
    this.nextHops = new Uint32Array(capacity);
  }

  /** Offset of packet i (after the slot's headroom). */
  offsetOf(index: number): number {
    return index * this.slotSize + this.headroom;
  }

  /**
   * The GSO segment size of packet i (virtio_net_hdr.gso_size, little-endian as TUN uses it on
   * little-endian hosts), 0 when the packet is not a super-packet (or there is no header).
   */
  gsoSizeOf(index: number): number {
    if (this.headroom < VIRTIO_NET_HDR_LEN || this.headroom === ETH_HLEN) return 0;
    const at = index * this.slotSize;
    const data = this.data;
    if ((data[at + 1]! & ~VIRTIO_NET_HDR_GSO_ECN) === VIRTIO_NET_HDR_GSO_NONE) return 0;
    return data[at + 4]! | (data[at + 5]! << 8);
  }

  /**
   * Whether packet i's TCP/UDP checksum field holds only the pseudo-header sum, to be completed
   * by whoever transmits it (VIRTIO_NET_HDR_F_NEEDS_CSUM; Linux CHECKSUM_PARTIAL).
   */
  isChecksumPartial(index: number): boolean {
    if (this.headroom < VIRTIO_NET_HDR_LEN || this.headroom === ETH_HLEN) return false;
    return (this.data[index * this.slotSize]! & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
  }

  /**
   * Copies a packet into the next free slot (its header bytes zeroed: a plain packet); returns
   * false when the batch is full or it does not fit.
   */
  push(packet: Uint8Array, start = 0, length = packet.length - start): boolean {
    if (this.count >= this.capacity || length > this.slotSize - this.headroom) return false;
    const slot = this.count * this.slotSize;
    if (this.headroom !== 0) this.data.fill(0, slot, slot + this.headroom);
    this.data.set(packet.subarray(start, start + length), slot + this.headroom);
    this.lengths[this.count] = length;
    this.count++;
    return true;
  }

  /**
   * Empties this batch and fills it with copies of the packets of `from` whose verdict is `want`
   * (with their next hops), starting at packet `start`, until it is full. Returns the index to go
   * on from (`from.count` when all were taken); a packet too long for this batch's slots is
   * skipped and counted in `refused`. Used to restage packets behind another headroom (rare path).
   */
  takeSelected(from: PacketBatch, verdicts: Int32Array, want: number, start: number): number {
    this.clear();
    this.refused = 0;
    let i = start;
    for (; i < from.count && this.count < this.capacity; i++) {
      if (verdicts[i] !== want) continue;
      const slot = this.count;
      if (!this.push(from.data, from.offsetOf(i), from.lengths[i]!)) {
        this.refused++;
        continue;
      }
      this.nextHops[slot] = from.nextHops[i]!;
    }
    return i;
  }

  /** A copy of packet i (tests and control plane only). */
  copyOut(index: number): Uint8Array {
    const at = index * this.slotSize + this.headroom;
    return this.data.slice(at, at + this.lengths[index]!);
  }

  clear(): void {
    this.count = 0;
  }
}
