/**
 * The established fast path (VPP's idea: the common case in one straight pass), its batch
 * prefetch and the route cache it keeps in each conntrack entry.
 *
 * A plain IPv4 packet — no options, not a fragment, not a GSO super-packet — carrying TCP (ACK or
 * ACK+PSH, on an ESTABLISHED connection), UDP or an ICMP echo request/reply, of a confirmed
 * connection whose SNAT and DNAT bindings are both set up, routed to a unicast route that fits
 * it, with a source that passes rp_filter and a right L4 checksum (or a partial one), is
 * validated, tracked, routed and translated here with exactly the effects of the general
 * path (same checks, same conntrack updates through udpPacket/tcpFastPathSegment/icmpPacket, same rewrites
 * in the same order), without filling PacketInfo or walking the hooks. Every test that could
 * refuse the packet or send it elsewhere runs before anything changes; any failing one returns
 * FastPathVerdict.Miss and the general path (pipeline.ts) handles the packet from scratch, so drops,
 * ICMP errors and counters stay its business. test/dataplane/fast-path.test.ts proves the two
 * equal over random traffic (STYLE.md rule 10).
 */
import type { PacketBatch } from "../core/batch.js";
import { HashLanes } from "../core/hash-lanes.js";
import type { ConntrackTable } from "../conntrack/table.js";
import { CtStatus } from "../conntrack/table.js";
import { TcpState, tcpFastPathSegment } from "../conntrack/tcp.js";
import { udpPacket, udpRefreshTimeout } from "../conntrack/udp.js";
import type { RoutingTable } from "../route/table.js";
import { RouteType } from "../route/table.js";
import { rewriteForwardIcmpEcho, rewriteForwardPlain } from "../wire/rewrite.js";
import { isMartianDestination, isMartianSource, type RouterAddresses } from "./addresses.js";
import type { PacketContext } from "./packet-context.js";
import { egressOf, type RouterPort } from "./port.js";

/** What EstablishedFastPath.forward() returns besides an egress. */
export const enum FastPathVerdict {
  /** Declined: the packet takes the general path. */
  Miss = -100,
}

/**
 * CtStatus bits and states tested per packet, as a const enum: CtStatus is a (non-const) enum, i.e.
 * an object whose properties optimized code loads on every use, and a module-level `const` is a
 * context-slot load with an initialisation check; TypeScript writes a const enum's members as
 * literals (see Entry in conntrack/table.ts).
 */
const enum Tested {
  NatDoneBoth = CtStatus.SrcNatDone | CtStatus.DstNatDone,
  SeenReply = CtStatus.SeenReply,
  DstNat = CtStatus.DstNat,
  SrcNat = CtStatus.SrcNat,
  TcpEstablished = TcpState.Established,
  /** Marks a prefetched bucket head (a node < 2^26) whose packet is TCP; BatchLanes' slots mark a TCP tuple's packet with the same bit (BATCH_LANES_TCP). */
  PrefetchTcp = 1 << 30,
}

/**
 * The protocol numbers, TCP flags and options, ICMP types, rp_filter modes and leg forward()
 * tests, as literals (a const enum) rather than the imported constants they equal — IPPROTO_*,
 * TCP_ACK and TCP_PSH (wire/packet-info.ts), ICMP_ECHO and ICMP_ECHO_REPLY (conntrack/tuple.ts),
 * RP_FILTER_* (reverse-path.ts), LEG_WIRE (port.ts), TCP_TIMESTAMP_ONLY_WORD (wire/tcp.ts): an
 * imported binding is a module-cell load and an initialisation check at every use.
 * test/dataplane/fast-path.test.ts checks that they agree.
 */
export const enum FastPathLiteral {
  Icmp = 1,
  Tcp = 6,
  Udp = 17,
  TcpAck = 0x10,
  TcpPsh = 0x08,
  IcmpEcho = 8,
  IcmpEchoReply = 0,
  RpFilterOff = 0,
  RpFilterStrict = 1,
  LegWire = 0,
  /** NOP, NOP, timestamp option (kind 8, length 10): the options of a plain segment. */
  TcpTimestampOnlyWord = 0x0101080a,
}

export class EstablishedFastPath {
  /** Packets forwarded here (the rest took the general path). */
  packets = 0;
  /** Of `packets`: forwarded without the shared tables' lock (`unlocked`). */
  lockFreePackets = 0;
  /** Keeps the prefetch loads observable so the compiler cannot drop them. */
  prefetchSink = 0;
  /** The entry id of the last packet `forward` forwarded (read by the pipeline for multi-queue steering). */
  hitConnection = -1;
  /** The connection (`id << 1 | dir`) of the latest packet forwarded here (a capture's comments read it). */
  lastConnection = -1;
  /**
   * Set by the pipeline while it does not hold the shared tables' lock (docs/multi-core.md,
   * "lock-free established path"): lookups are `findStableInBucket`'s, writes to the entry wait for
   * `beginLockFreeCommit`, and anything that would change the entry's status or TCP state misses
   * (the pipeline then takes the lock).
   */
  unlocked = false;

  /** Batch prefetch scratch: bucket head node per packet (see prefetch). */
  private prefetchHeads = new Int32Array(256);
  /**
   * What prefetch computed per packet, reused by forward for packet i when i < prefetchedCount:
   * the conntrack bucket of its tuple (-1: not computed). It cannot change within the batch for
   * the same bytes (the hash key is fixed), and packet i's bytes are not touched before it is
   * processed.
   */
  private prefetchBuckets = new Int32Array(256);
  private prefetchedCount = 0;
  /**
   * The L4 sums of the prefetched batch's packets (core/batch-lanes.ts) when its memory has the
   * kernels, else null: packet i's when i < prefetchedCount (-1: none). Its bytes are not touched
   * before it is processed, so the sum stays the sum of what forward verifies.
   */
  private prefetchSums: Int32Array | null = null;
  /**
   * prefetch's scratch: the tuples it hashes and their buckets (protocol, src, dst, ports per
   * TCP/UDP packet, in the hash's own memory: core/hash-lanes.ts), and the packet each came from
   * (| Tested.PrefetchTcp for TCP).
   */
  private prefetchLanes = new HashLanes(256);
  private prefetchSlots = new Int32Array(256);
  /**
   * The route cache in each conntrack entry (ConntrackTable.routeCache): bits 0-7 the next hop
   * id + 1 (RoutingTable.routeNexthop: the egress port and the on-wire gateway) of
   * original-direction packets, bits 8-15 of reply-direction ones (0: none), bits
   * 16-31 the low 16 bits of the routing table version it was looked up in. An established
   * packet whose cache matches skips the route lookup — on a large table, a cache and TLB miss
   * in tbl24 per packet. The destination it was looked up for is the entry's translated one,
   * fixed per direction. When the version's high bits change (65536 route changes), every cache
   * is cleared, so an old low half can never match again.
   */
  private routeVersion = 0;
  private routeEpoch = 0;
  /** forward's DataView (see viewOf) and the bytes it views. */
  private view: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));
  private viewBytes: Uint8Array | null = null;

  constructor(
    private readonly conntrack: ConntrackTable,
    private readonly routes: RoutingTable,
    private readonly ports: readonly RouterPort[],
    private readonly addresses: RouterAddresses,
    /** Reverse-path filtering per port (reverse-path.ts), the pipeline's array. */
    private readonly rpFilter: Uint8Array,
    /**
     * The pipeline's packet context: forward() leaves the next hop of a packet it forwarded in
     * `nextHop` (the route's gateway, or the translated destination on a connected route; what an
     * Ethernet leg resolves with ARP), where the general path leaves it too, so the pipeline
     * copies one field to the batch whichever path forwarded the packet.
     */
    private readonly packet: PacketContext,
  ) {}

  /** Once per batch, before any packet: the routing table's version for the route caches. */
  beginBatch(): void {
    const version = this.routes.version;
    if (version >>> 16 !== this.routeEpoch) {
      const table = this.conntrack;
      table.locked(() => table.clearRouteCaches());
      this.routeEpoch = version >>> 16;
    }
    this.routeVersion = version & 0xffff;
    this.prefetchedCount = 0;
    this.prefetchSums = null;
  }

  /**
   * Before any packet of the batch is processed, loads what each will need from the big tables —
   * its conntrack bucket, then the entry record the bucket points to (which caches its route) —
   * in loops whose iterations do not depend on each other, so the CPU overlaps the cache misses
   * (memory-level parallelism; VPP and DPDK prefetch the same way). Only reads; the bytes are not
   * validated here (a garbage packet merely loads a useless line; parsePacket judges it later).
   */
  prefetch(batch: PacketBatch): void {
    const count = batch.count;
    if (count < 2) return;
    if (this.prefetchHeads.length < count) {
      this.prefetchHeads = new Int32Array(batch.capacity);
      this.prefetchBuckets = new Int32Array(batch.capacity);
      this.prefetchLanes = new HashLanes(batch.capacity);
      this.prefetchSlots = new Int32Array(batch.capacity);
    }
    const heads = this.prefetchHeads;
    const buckets = this.prefetchBuckets;
    const conntrack = this.conntrack;
    heads.fill(-1, 0, count);
    buckets.fill(-1, 0, count);
    let sink = 0;
    // 1. The tuples of the TCP and UDP packets, gathered for the hash; 2. their buckets, eight
    // keyed hashes at a time in WebAssembly SIMD lanes, in a pass of its own: the hash is ~100
    // dependent instructions, and a loop that hashed and loaded each bucket kept only two or three
    // bucket misses in flight (the reorder buffer full of hash work).
    const batchLanes = batch.lanes;
    let n: number;
    let hashed: Int32Array;
    let slots: Int32Array;
    if (batchLanes !== null) {
      // In the batch's own memory (core/batch-lanes.ts), which also sums every packet's L4 bytes
      // for forward's checksum verification.
      n = batchLanes.prepare(count, batch.slotSize, batch.headroom);
      conntrack.bucketsOf(batchLanes, n);
      hashed = batchLanes.hashes;
      slots = batchLanes.slots;
      this.prefetchSums = batchLanes.sums;
    } else {
      n = this.gather(batch, count);
      conntrack.bucketsOf(this.prefetchLanes, n);
      hashed = this.prefetchLanes.hashes;
      slots = this.prefetchSlots;
    }
    // 3. The bucket loads: one miss every few instructions.
    for (let k = 0; k < n; k++) {
      const slot = slots[k]!;
      const i = slot & ~Tested.PrefetchTcp;
      const bucket = hashed[k]!;
      buckets[i] = bucket;
      const head = conntrack.bucketHeadAt(bucket);
      if (head >= 0) heads[i] = head | (slot & Tested.PrefetchTcp);
    }
    // 4. The entry records the buckets point to.
    for (let i = 0; i < count; i++) {
      const head = heads[i]!;
      if (head < 0) continue;
      const node = head & ~Tested.PrefetchTcp;
      sink ^= conntrack.touchNode(node);
      // a TCP segment's window check reads the entry's window state, in an array of its own
      if (head !== node) sink ^= conntrack.touchTcpWindow(node);
    }
    this.prefetchSink = sink;
    this.prefetchedCount = count;
  }

  /**
   * prefetch's step 1 for a batch without lanes: the tuples of its TCP and UDP packets into
   * prefetchLanes' tuples (protocol, source, destination, ports as big-endian words), their packet
   * indices (| Tested.PrefetchTcp for TCP) into prefetchSlots; returns how many.
   */
  private gather(batch: PacketBatch, count: number): number {
    const tuples = this.prefetchLanes.tuples;
    const slots = this.prefetchSlots;
    const data = batch.data;
    const end = data.length;
    const v = data === this.viewBytes ? this.view : this.viewOf(data);
    let n = 0;
    for (let i = 0; i < count; i++) {
      const off = batch.offsetOf(i);
      if (off + 24 > end) continue;
      const b0 = v.getUint8(off);
      const protocol = v.getUint8(off + 9);
      const l4 = off + ((b0 & 0x0f) << 2);
      if (b0 >>> 4 !== 4 || (protocol !== FastPathLiteral.Tcp && protocol !== FastPathLiteral.Udp) || l4 + 4 > end) continue;
      const at = n << 2;
      tuples[at] = protocol;
      tuples[at + 1] = v.getInt32(off + 12);
      tuples[at + 2] = v.getInt32(off + 16);
      tuples[at + 3] = v.getInt32(l4);
      slots[n++] = protocol === FastPathLiteral.Tcp ? i | Tested.PrefetchTcp : i;
    }
    return n;
  }

  /**
   * One packet from a wire leg, not a GSO super-packet: its egress (`port * 2 + leg`) when the
   * fast path forwarded it, else FastPathVerdict.Miss with nothing changed. `index` is its slot in the
   * prefetched batch, -1 for a packet outside it; `ingress` the port it came in on; `l4Partial`:
   * its TCP/UDP checksum is partial.
   */
  forward(buf: Uint8Array, off: number, length: number, index: number, ingress: number, l4Partial: boolean): number {
    if (!(off >= 0) || length < 28 || off + length > buf.length) return FastPathVerdict.Miss;
    // The header is read as big-endian words through a DataView (one bounds check and one load
    // per word instead of per byte); every read below is inside [off, off + length).
    const v = buf === this.viewBytes ? this.view : this.viewOf(buf);
    const w0 = v.getUint32(off);
    // Version 4, IHL 5 (options take the general path).
    if (w0 >>> 24 !== 0x45) return FastPathVerdict.Miss;
    const w1 = v.getUint32(off + 4);
    const w2 = v.getUint32(off + 8);
    // Addresses stay int32 here: a uint32 of 2^31 or more is a heap number in V8, and passing one
    // to a function that is not inlined allocates it (the allocation-per-packet figure of the bench).
    const src = v.getInt32(off + 12);
    const dst = v.getInt32(off + 16);
    // ip_fast_csum over the 20-byte header must fold to 0xffff (validate.ts, ip_rcv_core).
    let sum =
      (w0 >>> 16) + (w0 & 0xffff) + (w1 >>> 16) + (w1 & 0xffff) + (w2 >>> 16) + (w2 & 0xffff) +
      (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff);
    sum = (sum & 0xffff) + (sum >>> 16);
    sum = (sum & 0xffff) + (sum >>> 16);
    if (sum !== 0xffff) return FastPathVerdict.Miss;
    const total = w0 & 0xffff;
    if (total > length) return FastPathVerdict.Miss;
    // Not a fragment (MF clear, offset 0); DF may be set. The reserved bit takes the general path.
    if ((w1 & 0xbfff) !== 0) return FastPathVerdict.Miss;
    const protocol = (w2 >>> 16) & 0xff;
    const l4 = off + 20;
    const l4Length = total - 20;
    let tcpFlags = 0;
    let tcpDataOffset = 5;
    if (protocol === FastPathLiteral.Udp) {
      if (l4Length < 8) return FastPathVerdict.Miss;
      const udpLength = v.getUint16(l4 + 4);
      if (udpLength < 8 || udpLength > l4Length) return FastPathVerdict.Miss;
    } else if (protocol === FastPathLiteral.Tcp) {
      if (l4Length < 20) return FastPathVerdict.Miss;
      const offsetAndFlags = v.getUint16(l4 + 12);
      const dataOffset = offsetAndFlags >>> 12;
      if (dataOffset < 5 || dataOffset << 2 > l4Length) return FastPathVerdict.Miss;
      tcpDataOffset = dataOffset;
      tcpFlags = offsetAndFlags & 0xff;
      if (tcpFlags !== FastPathLiteral.TcpAck && tcpFlags !== (FastPathLiteral.TcpAck | FastPathLiteral.TcpPsh)) return FastPathVerdict.Miss;
    } else if (protocol === FastPathLiteral.Icmp) {
      // Echo request and reply only (a ping): errors and the other queries take the general path,
      // and so does an ICMP checksum the kernel left partial.
      if (l4Length < 8 || l4Partial) return FastPathVerdict.Miss;
      const typeCode = v.getUint16(l4);
      if (typeCode !== FastPathLiteral.IcmpEcho << 8 && typeCode !== FastPathLiteral.IcmpEchoReply << 8) return FastPathVerdict.Miss;
    } else {
      return FastPathVerdict.Miss;
    }
    const addresses = this.addresses;
    if (isMartianSource(src) || addresses.isOwnOrBroadcast(src)) return FastPathVerdict.Miss;
    if (isMartianDestination(dst)) return FastPathVerdict.Miss;
    // The tuple's ports: TCP/UDP source and destination port; ICMP identifier and type/code
    // (conntrack/tuple.ts), so one lookup serves both.
    const icmp = protocol === FastPathLiteral.Icmp;
    const ports = icmp ? (v.getUint16(l4 + 4) << 16) | v.getUint16(l4) : v.getInt32(l4);
    const sport = ports >>> 16;
    const dport = ports & 0xffff;

    const table = this.conntrack;
    const unlocked = this.unlocked;
    // Without the lock: no TCP (its window updates need the entry to themselves, Linux's ct->lock).
    if (unlocked && protocol === FastPathLiteral.Tcp) return FastPathVerdict.Miss;
    // prefetch hashes TCP and UDP tuples; other packets have bucket -1.
    const prefetched = index >= 0 && index < this.prefetchedCount && this.prefetchBuckets[index]! >= 0;
    const bucket = prefetched ? this.prefetchBuckets[index]! : -1;
    const handle = unlocked ? table.findStableInBucket(bucket, protocol, src, dst, ports) : table.findLiveInBucket(bucket, protocol, src, dst, ports);
    if (handle < 0) return FastPathVerdict.Miss;
    const id = handle >> 1;
    const dir = handle & 1;
    const status = table.status(id);
    if ((status & Tested.NatDoneBoth) !== Tested.NatDoneBoth) return FastPathVerdict.Miss;
    // Without the lock the status is only read: the first reply (SEEN_REPLY) takes the locked path.
    if (unlocked && dir === 1 && (status & Tested.SeenReply) === 0) return FastPathVerdict.Miss;
    if (protocol === FastPathLiteral.Tcp) {
      if (table.tcpState(id) !== Tested.TcpEstablished) return FastPathVerdict.Miss;
      // The entry's window state (tcpFastPathSegment's), loaded now so that its latency overlaps
      // the NAT, route and checksum work below instead of stalling the window check (established
      // inbound TCP: +8-12 % measured, on top of the batch prefetch's own load of it).
      this.prefetchSink ^= table.touchTcpWindow(handle);
    }
    // nf_nat_packet at PREROUTING (destination) and POSTROUTING (source), as manip.ts natPacket.
    const other = dir ^ 1;
    // The other direction's ports: the translated ports (and the ICMP identifier, below).
    const otherPorts = table.tuplePortsBits(id, other);
    let newDst = dst;
    let newDport = dport;
    if ((status & (dir === 0 ? Tested.DstNat : Tested.SrcNat)) !== 0) {
      newDst = table.tupleSrcBits(id, other);
      if (!icmp) newDport = otherPorts >>> 16;
    }
    if (addresses.isLocalDestination(newDst)) return FastPathVerdict.Miss;
    // The route: from the entry's route cache when it is current (see routeVersion).
    const version = this.routeVersion;
    let cache = table.routeCache(id);
    // Without the lock, what is read of the entry before the commit (status, the other tuple,
    // the route cache) may mix two states of it when another thread changes it meanwhile. Nothing
    // is written and the packet is not touched before `beginLockFreeCommit`, which refuses when the
    // entry's sequence word moved since the lookup, so a mixed read only ever decides for a packet
    // that then takes the locked path. Until then it can do no harm: the route cache word is read
    // whole (an aligned Int32 read does not tear) and any value it holds was written as a cache, so
    // its next hop ids index the routing table's next hop arrays within their bounds.
    let cacheChanged = false;
    const shift = dir << 3;
    const current = cache >>> 16 === version;
    const routes = this.routes;
    let nexthop = current ? ((cache >>> shift) & 0xff) - 1 : -1;
    let egress: number;
    let gateway: number;
    if (nexthop >= 0) {
      egress = routes.nexthopPorts[nexthop]!;
      gateway = routes.nexthopGateways[nexthop]!;
    } else {
      const route = routes.lookup(newDst);
      if (route < 0 || routes.routeType(route) !== RouteType.Unicast) return FastPathVerdict.Miss;
      egress = routes.routePort(route);
      gateway = routes.routeGateway(route) | 0;
      nexthop = routes.routeNexthop(route);
      if (nexthop >= 0) {
        cache = (version << 16) | (current ? cache & (0xff << (shift ^ 8)) : 0) | ((nexthop + 1) << shift);
        if (unlocked) cacheChanged = true;
        else table.setRouteCache(id, cache);
      }
    }
    // rp_filter (reverse-path.ts), per packet as Linux. The route back to the source is the other
    // direction's route (its destination after NAT is this tuple's source), so its cached
    // egress answers; a failing check is the general path's to drop and count.
    const rpFilter = this.rpFilter[ingress]!;
    if (rpFilter !== FastPathLiteral.RpFilterOff) {
      const backShift = other << 3;
      const cacheCurrent = cache >>> 16 === version;
      const backNexthop = cacheCurrent ? ((cache >>> backShift) & 0xff) - 1 : -1;
      let back: number;
      if (backNexthop >= 0) {
        back = routes.nexthopPorts[backNexthop]!;
      } else {
        const route = routes.lookup(src);
        if (route < 0 || routes.routeType(route) !== RouteType.Unicast) return FastPathVerdict.Miss;
        back = routes.routePort(route);
        const backId = routes.routeNexthop(route);
        if (backId >= 0) {
          const both = (version << 16) | (cacheCurrent ? cache & (0xff << shift) : 0) | ((backId + 1) << backShift);
          if (unlocked) {
            cache = both;
            cacheChanged = true;
          } else {
            table.setRouteCache(id, both);
          }
        }
      }
      if (rpFilter === FastPathLiteral.RpFilterStrict && back !== ingress) return FastPathVerdict.Miss;
    }
    if (w2 >>> 24 <= 1 || total > this.ports[egress]!.mtu) return FastPathVerdict.Miss;
    // nf_conntrack_checksum (conntrack/checksum.ts): a bad TCP/UDP/ICMP checksum makes the packet
    // INVALID — not NATed, counted, perhaps dropped — which is the general path's business. A
    // partial checksum (a local sender's offload) is not verified; a UDP checksum 0 means none.
    if (!l4Partial && !(protocol === FastPathLiteral.Udp && v.getUint16(l4 + 6) === 0)) {
      let initial = 0;
      if (!icmp) {
        initial = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + l4Length;
        initial = (initial & 0xffff) + (initial >>> 16);
        initial = (initial & 0xffff) + (initial >>> 16);
        // into the byte order of the sum below
        initial = ((initial & 0xff) << 8) | (initial >>> 8);
      }
      // The RFC 1071 sum of the L4 bytes: the batch kernel's (prefetch) when the batch has one,
      // else with 32-bit loads, written out here: as a call it was
      // not inlined into this large function and cost a quarter of the packet's time (bench,
      // 64-byte UDP: 6.8 against 9.0 Mpps). A JS number holds the sum of any 64 KiB exactly.
      // Proved equal to the general path's verification (wire/checksum.ts l4ChecksumValid) by
      // the differential tests (test/dataplane/fast-path.test.ts, test/fuzz).
      // The words are read little-endian, a plain load where big-endian adds a byte swap to each:
      // the one's complement sum of byte-swapped words is the byte-swapped sum (RFC 1071 2(B)), so
      // the pseudo-header's sum is swapped to match, an odd last byte is a low byte, and the
      // result is compared with 0xffff, its own swap.
      // Eight bytes a turn into two sums, so the additions of one word need not wait for the other's.
      // The words are read as int32 (`>>> 16` and `& 0xffff` give the same halves): a uint32 read
      // is compiled with a check that it fits an int32, which payload bytes fail half the time.
      let sum = initial;
      const sums = this.prefetchSums;
      const prepared = sums !== null && index >= 0 && index < this.prefetchedCount ? sums[index]! : -1;
      if (prepared >= 0) {
        // the batch kernel's sum of these very bytes, in the same (little-endian) order
        sum += prepared;
      } else {
        let odd = 0;
        let at = l4;
        const end8 = l4 + (l4Length & ~7);
        for (; at < end8; at += 8) {
          const word = v.getInt32(at, true);
          const next = v.getInt32(at + 4, true);
          sum += (word >>> 16) + (word & 0xffff);
          odd += (next >>> 16) + (next & 0xffff);
        }
        sum += odd;
        if ((l4Length & 4) !== 0) {
          const word = v.getInt32(at, true);
          sum += (word >>> 16) + (word & 0xffff);
          at += 4;
        }
        if ((l4Length & 2) !== 0) {
          sum += v.getUint16(at, true);
          at += 2;
        }
        if ((l4Length & 1) !== 0) sum += v.getUint8(at);
      }
      sum = (sum & 0xffff) + (sum >>> 16);
      sum = (sum & 0xffff) + (sum >>> 16);
      if ((sum & 0xffff) + (sum >>> 16) !== 0xffff) return FastPathVerdict.Miss;
    }
    let newSrc = src;
    let newSport = sport;
    if ((status & (dir === 0 ? Tested.SrcNat : Tested.DstNat)) !== 0) {
      newSrc = table.tupleDstBits(id, other);
      if (!icmp) newSport = otherPorts & 0xffff;
    }
    // The identifier is the ICMP "port" in both tuples (nf_nat_proto.c icmp_manip_pkt): either
    // manip sets it to the other tuple's, which equals this one's when nothing translates it.
    // Read before the commit: without the lock, what is read after it may be another entry's.
    const icmpId = otherPorts >>> 16;

    // Commit: conntrack (track(): the protocol handler, then SEEN_REPLY for a reply). TCP first:
    // tcp_in_window takes only a plain in-window segment here (and then commits it); an old
    // duplicate, an overshoot, SACK blocks, a direction not seen yet and the rest take the
    // general path, with nothing changed.
    if (protocol === FastPathLiteral.Tcp) {
      const dataOffset = tcpDataOffset;
      const plainOptions = dataOffset === 5 || (dataOffset === 8 && v.getInt32(l4 + 20) === FastPathLiteral.TcpTimestampOnlyWord);
      if (!tcpFastPathSegment(table, id, dir, v.getInt32(l4 + 4), v.getInt32(l4 + 8), v.getUint16(l4 + 14), l4Length - (dataOffset << 2), plainOptions)) {
        return FastPathVerdict.Miss;
      }
    } else {
      // UDP and ICMP only refresh the entry (udpPacket, icmpPacket), with UDP's timeout from the
      // status read above; -1: this packet makes the UDP stream ASSURED (udpPacket's other step).
      const timeout = icmp ? table.timeouts.icmp : udpRefreshTimeout(table, id, status);
      if (unlocked) {
        // Without the lock a packet that would make the entry ASSURED takes the locked path.
        if (timeout < 0 || !table.beginLockFreeCommit(id)) return FastPathVerdict.Miss;
        if (cacheChanged) table.setRouteCache(id, cache);
        table.refreshNow(id, timeout);
        table.endLockFreeCommit(id);
        this.lockFreePackets++;
      } else if (timeout >= 0) {
        table.refreshNow(id, timeout);
      } else {
        udpPacket(table, id);
      }
    }
    this.packets++;
    this.lastConnection = handle;
    table.counters.found++;
    // (Without the lock SEEN_REPLY is set already: see above.)
    if (dir === 1 && !unlocked) table.setStatus(id, Tested.SeenReply);
    // Rewrites in the general path's order: DNAT, TTL, SNAT (one pass, same bytes).
    if (icmp) {
      rewriteForwardIcmpEcho(v, off, newSrc, newDst, icmpId);
    } else {
      rewriteForwardPlain(v, off, protocol, newSrc, newSport, newDst, newDport, l4Partial);
    }
    this.packet.nextHop = gateway !== 0 ? gateway : newDst | 0;
    this.hitConnection = id;
    return egressOf(egress, FastPathLiteral.LegWire);
  }

  /** A DataView of `buf`'s bytes for forward, made once per packet buffer. */
  private viewOf(buf: Uint8Array): DataView<ArrayBufferLike> {
    this.viewBytes = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    return this.view;
  }
}
