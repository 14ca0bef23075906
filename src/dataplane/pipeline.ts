/**
 * The forwarding pipeline: one batch of packets from one leg of one port in, one verdict per
 * packet out (the egress `port * 2 + leg`, or a drop), with the packets rewritten in place.
 * ICMP errors the router itself originates are written into `generated` and pass the OUTPUT
 * path like anything the router's host sends (Linux: icmp_send -> ip_local_out).
 *
 * Order per packet follows Linux (DESIGN.md "Pipeline"):
 *   wire leg:   validate -> conntrack -> PREROUTING nat -> route -> (local: INPUT nat -> mirror)
 *               | (forward: TTL, MTU -> POSTROUTING nat -> wire leg of the egress port)
 *   mirror leg: validate -> conntrack -> OUTPUT nat -> route -> POSTROUTING nat -> wire leg
 * Conntrack entries are confirmed at the end of the path (Linux __nf_conntrack_confirm at
 * POSTROUTING/INPUT); NAT rules run only for a connection's first packet.
 *
 * Hot path: no allocation. Numbers in, numbers out; every refusal is a counted DropReason.
 */
import { formatIpv4 } from "../core/addr.js";
import type { Clock } from "../core/clock.js";
import { DROP_REASON_COUNT, DropReason } from "../core/drop-reason.js";
import { PacketBatch } from "../core/batch.js";
import type { ConntrackTable } from "../conntrack/table.js";
import { CtState } from "../conntrack/table.js";
import { TrackResult, track } from "../conntrack/track.js";
import type { RoutingTable } from "../route/table.js";
import { RouteType } from "../route/table.js";
import { describePacket, writeIcmpError } from "../wire/build.js";
import { dropReasonName } from "../core/drop-reason.js";
import { formatConntrackEntry } from "../conntrack/format.js";
import {
  ICMP_DEST_UNREACHABLE,
  ICMP_FRAGMENTATION_NEEDED,
  ICMP_NET_UNREACHABLE,
  ICMP_TIME_EXCEEDED,
  ICMP_TTL_EXCEEDED_IN_TRANSIT,
  ICMP_HOST_UNREACHABLE,
  ICMP_ADMIN_PROHIBITED,
} from "../wire/icmp.js";
import { ipv4DecrementTtl } from "../wire/ipv4.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PacketInfo } from "../wire/packet-info.js";
import { gsoSegmentNetworkLength, parsePacket } from "../wire/validate.js";
import { FragmentTable } from "../nat/fragments.js";
import { IcmpRateLimiter } from "./icmp-rate-limit.js";
import { LEG_MIRROR, LEG_WIRE, RouterPort, VERDICT_DROP, VERDICT_STOLEN, egressOf, type PortSpec } from "./port.js";
import type { NatStage } from "./nat-stage.js";
import { CtStatus } from "../conntrack/table.js";
import { TcpState, tcpPacket } from "../conntrack/tcp.js";
import { udpPacket } from "../conntrack/udp.js";
import { TCP_ACK, TCP_PSH } from "../wire/packet-info.js";
import { rewriteForwardIcmpEcho, rewriteForwardPlain } from "../wire/rewrite.js";
import { icmpPacket } from "../conntrack/icmp.js";
import { ICMP_ECHO, ICMP_ECHO_REPLY } from "../conntrack/tuple.js";
import { NetfilterNat } from "./netfilter-nat.js";

/** A fragment reference (src/nat/fragments.ts) for a datagram whose first fragment was not tracked. */
const FRAGMENT_UNTRACKED = 0x7fffffff;

/** forwardEstablished() declines the packet: it takes the general path. */
const FAST_PATH_MISS = -100;
const NAT_DONE_BOTH = CtStatus.SrcNatDone | CtStatus.DstNatDone;
/**
 * CtStatus bits the fast path tests, as module constants: CtStatus is a (non-const) enum, i.e.
 * an object whose properties optimized code loads on every use.
 */
const CT_SEEN_REPLY = CtStatus.SeenReply;
const CT_DST_NAT = CtStatus.DstNat;
const CT_SRC_NAT = CtStatus.SrcNat;
const ROUTE_UNICAST = RouteType.Unicast;
const TCP_ESTABLISHED = TcpState.Established;

/** Linux sysctl net.ipv4.ip_default_ttl. */
const DEFAULT_TTL = 64;

/** Per-port counters, laid out [port * PORT_COUNTERS + field] in one Float64Array. */
export const enum PortCounter {
  RxPackets = 0,
  RxBytes,
  TxPackets,
  TxBytes,
  MirrorRxPackets,
  MirrorRxBytes,
  MirrorTxPackets,
  MirrorTxBytes,
  IcmpErrorsSent,
  Count,
}
const PORT_COUNTERS = PortCounter.Count as number;

/**
 * Receives the pipeline's decisions for one packet when `qnat trace` runs it (control plane:
 * the hot path only tests `tracer !== null`).
 */
export interface PipelineTracer {
  step(stage: string, text: string): void;
}

export interface DataplaneOptions {
  readonly ports: readonly PortSpec[];
  readonly routes: RoutingTable;
  readonly conntrack: ConntrackTable;
  readonly clock: Clock;
  /** The NAT stage (rules + bindings); without it the router forwards without translating. */
  readonly nat?: NatStage;
  /** Fragment tracking for NAT (virtual reassembly); default: a table with Linux-like limits. */
  readonly fragments?: FragmentTable;
}

export class Dataplane {
  readonly ports: readonly RouterPort[];
  readonly routes: RoutingTable;
  readonly conntrack: ConntrackTable;
  readonly nat: NatStage | undefined;
  /** Port counters, see PortCounter. */
  readonly portCounters: Float64Array;
  /** Drops by [port * DROP_REASON_COUNT + reason], counted against the ingress port. */
  readonly drops: Float64Array;

  private readonly clock: Clock;
  private readonly info = new PacketInfo();
  private readonly ct = new TrackResult();
  private readonly icmpLimiter: IcmpRateLimiter;
  /** Router addresses -> owning port (Linux local table: RTN_LOCAL). */
  private readonly localAddresses = new Map<number, number>();
  /**
   * The same two sets as int32 arrays for the per-packet checks: a router has a handful of
   * addresses, and a Map/Set probe with a key of 2^30 or more (most public addresses) hashes a
   * boxed double — slower than this scan, and it allocates.
   */
  private readonly localList: Int32Array;
  private readonly broadcastList: Int32Array;
  /**
   * The pre-filter for those scans (isOwnOrBroadcast): one byte per value of foldAddress(),
   * non-zero where a local or broadcast address folds. Most packets' addresses fold elsewhere and
   * skip both scans (one L1 load instead of a dozen compares, twice per packet).
   */
  private readonly specialFold = new Uint8Array(256);
  private ipId = 1;
  /** Verdicts of the router's own ICMP errors in the current batch (see sendIcmpError). */
  private generatedVerdicts: Int32Array = new Int32Array(0);
  /**
   * The connection (`id << 1 | dir`) the ICMP error being sent belongs to, -1 for none: Linux
   * attaches the offending packet's conntrack to the error (icmp_glue_bits -> nf_ct_attach) as
   * RELATED in the other direction, so NAT translates it back (nf_nat_icmp_reply_translation).
   */
  private attached = -1;
  /** The NAT stage when it is qnat's netfilter NAT (bindings in conntrack): enables the fast path. */
  private readonly netfilterNat: NetfilterNat | null;
  /** Batch prefetch scratch: bucket head node per packet (see prefetchBatch). */
  private prefetchHeads = new Int32Array(256);
  /**
   * What prefetchBatch computed per packet, reused by forwardEstablished for packet i when
   * i < prefetchedCount: the conntrack bucket of its tuple (-1: not computed). It cannot change
   * within the batch for the same bytes (the hash is seeded once), and packet i's bytes are not
   * touched before it is processed.
   */
  private prefetchBuckets = new Int32Array(256);
  private prefetchedCount = 0;
  /**
   * The route cache in each conntrack entry (ConntrackTable.routeCache): bits 0-7 the egress
   * port + 1 of original-direction packets, bits 8-15 of reply-direction ones (0: none), bits
   * 16-31 the low 16 bits of the routing table version it was looked up in. An established
   * packet whose cache matches skips the route lookup — on a large table, a cache and TLB miss
   * in tbl24 per packet. The destination it was looked up for is the entry's translated one,
   * fixed per direction. When the version's high bits change (65536 route changes), every cache
   * is cleared, so an old low half can never match again.
   */
  private routeVersion = 0;
  private routeEpoch = 0;
  /** forwardEstablished's DataView (see viewOf) and the bytes it views. */
  private view: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));
  private viewBytes: Uint8Array | null = null;
  /** Keeps the prefetch loads observable so the compiler cannot drop them. */
  prefetchSink = 0;
  /** The current packet's GSO segment size (batch virtio_net_hdr), 0 for a plain packet. */
  private gsoSize = 0;
  /** The current packet's TCP/UDP checksum is partial (batch virtio_net_hdr NEEDS_CSUM). */
  private l4Partial = false;
  /**
   * Non-first fragments are translated from their first fragment's connection (virtual
   * reassembly, src/nat/fragments.ts); those that arrive before it are held, then released here
   * and run through the pipeline again after the batch that brought their first fragment.
   */
  readonly fragments: FragmentTable;
  readonly released = new PacketBatch(64, 2048);
  readonly releasedVerdicts = new Int32Array(64);
  /** Held fragments dropped because their first fragment never came (Linux ipfrag_time). */
  fragmentsExpired = 0;
  /** Set while `qnat trace` runs one packet. */
  tracer: PipelineTracer | null = null;
  /**
   * The established fast path (forwardEstablished) and the batch prefetch. On by default; tests
   * turn it off to check that it changes nothing but speed.
   */
  fastPath = true;
  /** Packets forwarded by the fast path (the rest took the general path). */
  fastPathPackets = 0;
  /** Trace mode: new connections are released instead of confirmed, so the table is unchanged. */
  dryRun = false;

  constructor(options: DataplaneOptions) {
    this.ports = options.ports.map((p, i) => new RouterPort(i, p.name, p.addresses, p.mtu));
    this.routes = options.routes;
    this.conntrack = options.conntrack;
    this.clock = options.clock;
    this.nat = options.nat;
    this.netfilterNat = options.nat instanceof NetfilterNat ? options.nat : null;
    this.icmpLimiter = new IcmpRateLimiter(options.clock);
    this.fragments = options.fragments ?? new FragmentTable({ clock: options.clock });
    this.portCounters = new Float64Array(this.ports.length * PORT_COUNTERS);
    this.drops = new Float64Array(this.ports.length * DROP_REASON_COUNT);
    // Directed and limited broadcast addresses (RTN_BROADCAST): received, never forwarded.
    const broadcasts = new Set<number>([0xffffffff]);
    for (const port of this.ports) {
      for (const addr of port.addresses) this.localAddresses.set(addr, port.index);
      for (const addr of port.broadcasts) broadcasts.add(addr);
    }
    this.localList = Int32Array.from(this.localAddresses.keys(), (a) => a | 0);
    this.broadcastList = Int32Array.from(broadcasts, (a) => a | 0);
    for (const addr of this.localList) this.specialFold[foldAddress(addr)] = 1;
    for (const addr of this.broadcastList) this.specialFold[foldAddress(addr)] = 1;
  }

  /**
   * Processes `batch`, received on `leg` of port `ingress`. `verdicts[i]` receives the egress
   * (`port * 2 + leg`) or VERDICT_DROP for packet i. ICMP errors the router sends in response
   * are appended to `generated` (with their verdicts in `generatedVerdicts`), already through
   * the OUTPUT path.
   */
  processBatch(
    batch: PacketBatch,
    ingress: number,
    leg: number,
    verdicts: Int32Array,
    generated: PacketBatch,
    generatedVerdicts: Int32Array,
  ): void {
    // One clock read per batch for conntrack (Linux reads jiffies; a batch lasts microseconds).
    this.conntrack.pinTime(this.clock.now());
    const version = this.routes.version;
    if (version >>> 16 !== this.routeEpoch) {
      this.conntrack.clearRouteCaches();
      this.routeEpoch = version >>> 16;
    }
    this.routeVersion = version & 0xffff;
    this.prefetchedCount = 0;
    try {
      if (this.fastPath && this.tracer === null) this.prefetchBatch(batch);
      this.processBatchPinned(batch, ingress, leg, verdicts, generated, generatedVerdicts);
    } finally {
      this.conntrack.unpinTime();
    }
  }

  /**
   * Before any packet of the batch is processed, loads what each will need from the big tables —
   * its conntrack bucket, then the entry record the bucket points to (which caches its route) —
   * in loops whose iterations do not depend on each other, so the CPU overlaps the cache misses
   * (memory-level parallelism; VPP and DPDK prefetch the same way). Only reads; the bytes are not
   * validated here (a garbage packet merely loads a useless line; parsePacket judges it later).
   */
  private prefetchBatch(batch: PacketBatch): void {
    const count = batch.count;
    if (count < 2) return;
    if (this.prefetchHeads.length < count) {
      this.prefetchHeads = new Int32Array(batch.capacity);
      this.prefetchBuckets = new Int32Array(batch.capacity);
    }
    const heads = this.prefetchHeads;
    const buckets = this.prefetchBuckets;
    const data = batch.data;
    const end = data.length;
    const v = data === this.viewBytes ? this.view : this.viewOf(data);
    const conntrack = this.conntrack;
    let sink = 0;
    for (let i = 0; i < count; i++) {
      heads[i] = -1;
      buckets[i] = -1;
      const off = batch.offsetOf(i);
      if (off + 24 > end) continue;
      const b0 = v.getUint8(off);
      const protocol = v.getUint8(off + 9);
      const l4 = off + ((b0 & 0x0f) << 2);
      if (b0 >>> 4 !== 4 || (protocol !== IPPROTO_TCP && protocol !== IPPROTO_UDP) || l4 + 4 > end) continue;
      const dst = v.getInt32(off + 16);
      const ports = v.getInt32(l4);
      const bucket = conntrack.bucketOf(protocol, v.getInt32(off + 12), dst, ports >>> 16, ports & 0xffff);
      buckets[i] = bucket;
      heads[i] = conntrack.bucketHeadAt(bucket);
    }
    for (let i = 0; i < count; i++) {
      const node = heads[i]!;
      if (node >= 0) sink ^= conntrack.touchNode(node);
    }
    this.prefetchSink = sink;
    this.prefetchedCount = count;
  }

  private processBatchPinned(
    batch: PacketBatch,
    ingress: number,
    leg: number,
    verdicts: Int32Array,
    generated: PacketBatch,
    generatedVerdicts: Int32Array,
  ): void {
    this.generatedVerdicts = generatedVerdicts;
    const counters = this.portCounters;
    const base = ingress * PORT_COUNTERS + (leg === LEG_WIRE ? PortCounter.RxPackets : PortCounter.MirrorRxPackets);
    const data = batch.data;
    const slot = batch.slotSize;
    const headroom = batch.headroom;
    // The fast path is tried here; processFromWire (also used for released fragments) tries it
    // for the packets that reach it any other way.
    const fast = this.fastPathEnabled();
    for (let i = 0; i < batch.count; i++) {
      let length = batch.lengths[i]!;
      counters[base] += 1;
      counters[base + 1] += length;
      // Bytes past the IPv4 total length are not part of the packet (ip_rcv_core: pskb_trim_rcsum):
      // they never leave. A total length that is not plausible is left for validation to refuse.
      const off = i * slot + headroom;
      const total = length >= 20 ? (data[off + 2]! << 8) | data[off + 3]! : 0;
      if (total >= 20 && total < length) batch.lengths[i] = length = total;
      // Offloads (TUN virtio_net_hdr): super-packets and partial TCP/UDP checksums.
      if (headroom !== 0) {
        this.l4Partial = batch.isChecksumPartial(i);
        this.gsoSize = batch.gsoSizeOf(i);
      }
      verdicts[i] = this.forwardOne(data, off, length, i, ingress, leg, fast, generated);
    }
    if (headroom !== 0) {
      this.l4Partial = false;
      this.gsoSize = 0;
    }
    // Fragments held for a first fragment that this batch brought, as if they arrived now.
    this.released.clear();
    if (this.fragments.hasReleased) {
      this.fragments.releaseHeld(this.released);
      const rel = this.released;
      for (let i = 0; i < rel.count; i++) {
        this.releasedVerdicts[i] = this.forwardOne(rel.data, rel.offsetOf(i), rel.lengths[i]!, -1, ingress, leg, fast, generated);
      }
    }
  }

  /**
   * One packet from `leg` of port `ingress`: the established fast path, else the general path
   * (from the wire), or the OUTPUT path (from a mirror); counts what leaves. `index` is the
   * packet's slot in the batch (for the prefetch), -1 for a packet outside it.
   */
  private forwardOne(buf: Uint8Array, off: number, length: number, index: number, ingress: number, leg: number, fast: boolean, generated: PacketBatch): number {
    let verdict = FAST_PATH_MISS;
    if (leg === LEG_WIRE) {
      if (fast) verdict = this.forwardEstablished(buf, off, length, index);
      if (verdict === FAST_PATH_MISS) verdict = this.processFromWire(buf, off, length, ingress, generated);
    } else {
      verdict = this.processLocalOut(buf, off, length, ingress);
    }
    if (verdict >= 0) this.countTx(verdict, length);
    return verdict;
  }

  private countTx(verdict: number, length: number): void {
    const at = (verdict >> 1) * PORT_COUNTERS + ((verdict & 1) === LEG_WIRE ? PortCounter.TxPackets : PortCounter.MirrorTxPackets);
    this.portCounters[at] += 1;
    this.portCounters[at + 1] += length;
  }

  private drop(port: number, reason: DropReason): number {
    if (this.tracer !== null) this.tracer.step("drop", `dropped: ${dropReasonName(reason)}`);
    if (port >= 0) this.drops[port * DROP_REASON_COUNT + reason] += 1;
    return VERDICT_DROP;
  }

  /**
   * One of the router's own addresses or a broadcast address (int32 or uint32 bits). The fold
   * filter answers "neither" for almost every address without scanning either list.
   */
  private isOwnOrBroadcast(addr: number): boolean {
    return this.specialFold[foldAddress(addr)] !== 0 && (includes(this.localList, addr) || includes(this.broadcastList, addr));
  }

  /** The established fast path runs unless a trace is being recorded. */
  private fastPathEnabled(): boolean {
    return this.fastPath && this.tracer === null && this.netfilterNat !== null && this.netfilterNat.tracer === null;
  }

  /** A packet from the network (the fast path declined it): PREROUTING, then INPUT or FORWARD + POSTROUTING. */
  private processFromWire(buf: Uint8Array, off: number, length: number, ingress: number, generated: PacketBatch): number {
    const info = this.info;
    const reason = parsePacket(buf, off, length, info);
    info.l4ChecksumPartial = this.l4Partial;
    if (reason !== DropReason.None) return this.drop(ingress, reason);
    // Martian sources (Linux ip_route_input_slow / ip_route_input_mc): multicast, limited
    // broadcast, 0.0.0.0/8 and loopback sources are never routed.
    const src = info.src;
    // A source that is one of the router's own addresses is a martian too (fib_validate_source).
    if (isMartianSource(src) || this.isOwnOrBroadcast(src)) {
      return this.drop(ingress, DropReason.MartianSource);
    }
    const firstOctet = info.dst >>> 24;
    if (firstOctet === 127 || firstOctet === 0) return this.drop(ingress, DropReason.MartianDestination);

    // Conntrack (PREROUTING, priority -200) then DNAT (-100).
    const ct = this.ct;
    const tracked = this.trackPacket(ingress);
    if (tracked < 0) return tracked;
    if (this.nat !== undefined) {
      const natReason = this.nat.prerouting(buf, info, ct, ingress);
      if (natReason !== DropReason.None) return this.release(ingress, natReason);
    }

    const dst = info.dst;
    // Local delivery: to the mirror of the port the packet came in on (INPUT).
    // Broadcasts and multicast (qnat runs no multicast routing) go to the router's host too.
    if (this.isOwnOrBroadcast(dst) || dst >>> 28 === 0xe) {
      if (this.tracer !== null) this.tracer.step("route", `local: ${describePacket(this.info)} is for the router itself (INPUT), delivered through the ${this.ports[ingress]!.name} mirror`);
      return this.finishLocalIn(buf, ingress);
    }

    const route = this.routes.lookup(dst);
    if (this.tracer !== null) this.traceRoute(route);
    if (route < 0) {
      this.sendIcmpError(buf, off, ICMP_DEST_UNREACHABLE, ICMP_NET_UNREACHABLE, 0, ingress, generated);
      return this.release(ingress, DropReason.NoRoute);
    }
    const type = this.routes.routeType(route);
    if (type !== RouteType.Unicast) {
      // ip_error(): unreachable -> host unreachable, prohibit -> admin prohibited, blackhole silent.
      if (type === RouteType.Unreachable) this.sendIcmpError(buf, off, ICMP_DEST_UNREACHABLE, ICMP_HOST_UNREACHABLE, 0, ingress, generated);
      else if (type === RouteType.Prohibit) this.sendIcmpError(buf, off, ICMP_DEST_UNREACHABLE, ICMP_ADMIN_PROHIBITED, 0, ingress, generated);
      return this.release(ingress, DropReason.NoRoute);
    }
    const egress = this.routes.routePort(route);

    // ip_forward(): TTL first, then the MTU check.
    if (info.ttl <= 1) {
      this.sendIcmpError(buf, off, ICMP_TIME_EXCEEDED, ICMP_TTL_EXCEEDED_IN_TRANSIT, 0, ingress, generated);
      return this.release(ingress, DropReason.TtlExceeded);
    }
    const mtu = this.ports[egress]!.mtu;
    // A GSO super-packet fits when each of its segments does (ip_exceeds_mtu, skb_gso_validate_network_len).
    if ((this.gsoSize === 0 ? info.length : gsoSegmentNetworkLength(info, this.gsoSize)) > mtu) {
      if (info.dontFragment) {
        this.sendIcmpError(buf, off, ICMP_DEST_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, mtu, ingress, generated);
        return this.release(ingress, DropReason.FragmentationNeeded);
      }
      return this.release(ingress, DropReason.TooBigNoDf);
    }
    ipv4DecrementTtl(buf, off);
    info.ttl -= 1;
    if (this.tracer !== null) this.tracer.step("forward", `ttl ${info.ttl + 1} -> ${info.ttl}; ${info.length} bytes fit mtu ${mtu} of ${this.ports[egress]!.name}`);

    if (this.nat !== undefined) {
      const natReason = this.nat.postrouting(buf, info, ct, ingress, egress);
      if (natReason !== DropReason.None) return this.release(ingress, natReason);
    }
    if (!this.confirm(ingress)) return VERDICT_DROP;
    return egressOf(egress, LEG_WIRE);
  }

  /**
   * The established fast path (VPP's idea: the common case in one straight pass). A plain IPv4
   * packet — no options, not a fragment, not a GSO super-packet — carrying TCP (ACK or ACK+PSH, on
   * an ESTABLISHED connection) or UDP, of a confirmed connection whose SNAT and DNAT bindings are
   * both set up, routed to a unicast route that fits it, is validated, tracked, routed and
   * translated here with exactly the effects of the general path (same checks, same conntrack
   * updates through udpPacket/tcpPacket, same rewrites in the same order), without filling
   * PacketInfo or walking the hooks. Every test that could refuse the packet or send it elsewhere
   * runs before anything changes; any failing one returns FAST_PATH_MISS and the general path
   * handles the packet from scratch (so drops, ICMP errors and counters stay its business).
   */
  private forwardEstablished(buf: Uint8Array, off: number, length: number, index: number): number {
    if (this.gsoSize !== 0) return FAST_PATH_MISS;
    if (!(off >= 0) || length < 28 || off + length > buf.length) return FAST_PATH_MISS;
    // The header is read as big-endian words through a DataView (one bounds check and one load
    // per word instead of per byte); every read below is inside [off, off + length).
    const v = buf === this.viewBytes ? this.view : this.viewOf(buf);
    const w0 = v.getUint32(off);
    // Version 4, IHL 5 (options take the general path).
    if (w0 >>> 24 !== 0x45) return FAST_PATH_MISS;
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
    if (sum !== 0xffff) return FAST_PATH_MISS;
    const total = w0 & 0xffff;
    if (total > length) return FAST_PATH_MISS;
    // Not a fragment (MF clear, offset 0); DF may be set. The reserved bit takes the general path.
    if ((w1 & 0xbfff) !== 0) return FAST_PATH_MISS;
    const protocol = (w2 >>> 16) & 0xff;
    const l4 = off + 20;
    const l4Length = total - 20;
    let tcpFlags = 0;
    if (protocol === IPPROTO_UDP) {
      if (l4Length < 8) return FAST_PATH_MISS;
      const udpLength = v.getUint16(l4 + 4);
      if (udpLength < 8 || udpLength > l4Length) return FAST_PATH_MISS;
    } else if (protocol === IPPROTO_TCP) {
      if (l4Length < 20) return FAST_PATH_MISS;
      const offsetAndFlags = v.getUint16(l4 + 12);
      const dataOffset = offsetAndFlags >>> 12;
      if (dataOffset < 5 || dataOffset << 2 > l4Length) return FAST_PATH_MISS;
      tcpFlags = offsetAndFlags & 0xff;
      if (tcpFlags !== TCP_ACK && tcpFlags !== (TCP_ACK | TCP_PSH)) return FAST_PATH_MISS;
    } else if (protocol === IPPROTO_ICMP) {
      // Echo request and reply only (a ping): errors and the other queries take the general path,
      // and so does an ICMP checksum the kernel left partial.
      if (l4Length < 8 || this.l4Partial) return FAST_PATH_MISS;
      const typeCode = v.getUint16(l4);
      if (typeCode !== ICMP_ECHO << 8 && typeCode !== ICMP_ECHO_REPLY << 8) return FAST_PATH_MISS;
    } else {
      return FAST_PATH_MISS;
    }
    if (isMartianSource(src) || this.isOwnOrBroadcast(src)) return FAST_PATH_MISS;
    const firstOctet = dst >>> 24;
    if (firstOctet === 127 || firstOctet === 0) return FAST_PATH_MISS;
    // The tuple's ports: TCP/UDP source and destination port; ICMP identifier and type/code
    // (conntrack/tuple.ts), so one lookup serves both.
    const icmp = protocol === IPPROTO_ICMP;
    const ports = icmp ? (v.getUint16(l4 + 4) << 16) | v.getUint16(l4) : v.getInt32(l4);
    const sport = ports >>> 16;
    const dport = ports & 0xffff;

    const table = this.conntrack;
    // prefetchBatch hashes TCP and UDP tuples; other packets have bucket -1.
    const prefetched = index >= 0 && index < this.prefetchedCount && this.prefetchBuckets[index]! >= 0;
    const handle = table.findLiveInBucket(prefetched ? this.prefetchBuckets[index]! : -1, protocol, src, dst, ports);
    if (handle < 0) return FAST_PATH_MISS;
    const id = handle >> 1;
    const dir = handle & 1;
    const status = table.status(id);
    if ((status & NAT_DONE_BOTH) !== NAT_DONE_BOTH) return FAST_PATH_MISS;
    if (protocol === IPPROTO_TCP && table.tcpState(id) !== TCP_ESTABLISHED) return FAST_PATH_MISS;
    // nf_nat_packet at PREROUTING (destination) and POSTROUTING (source), as manip.ts natPacket.
    const other = dir ^ 1;
    let newDst = dst;
    let newDport = dport;
    if ((status & (dir === 0 ? CT_DST_NAT : CT_SRC_NAT)) !== 0) {
      newDst = table.tupleSrcBits(id, other);
      if (!icmp) newDport = table.tuplePortsBits(id, other) >>> 16;
    }
    if (this.isOwnOrBroadcast(newDst) || newDst >>> 28 === 0xe) return FAST_PATH_MISS;
    // The route: from the entry's route cache when it is current (see routeVersion).
    const version = this.routeVersion;
    const cache = table.routeCache(id);
    const shift = dir << 3;
    const current = cache >>> 16 === version;
    let egress = current ? ((cache >>> shift) & 0xff) - 1 : -1;
    if (egress < 0) {
      const routes = this.routes;
      const route = routes.lookup(newDst);
      if (route < 0 || routes.routeType(route) !== ROUTE_UNICAST) return FAST_PATH_MISS;
      egress = routes.routePort(route);
      if (egress < 0xff) table.setRouteCache(id, (version << 16) | (current ? cache & (0xff << (shift ^ 8)) : 0) | ((egress + 1) << shift));
    }
    if (w2 >>> 24 <= 1 || total > this.ports[egress]!.mtu) return FAST_PATH_MISS;
    let newSrc = src;
    let newSport = sport;
    if ((status & (dir === 0 ? CT_SRC_NAT : CT_DST_NAT)) !== 0) {
      newSrc = table.tupleDstBits(id, other);
      if (!icmp) newSport = table.tuplePortsBits(id, other) & 0xffff;
    }

    // Commit: conntrack (track(): the protocol handler, then SEEN_REPLY for a reply).
    this.fastPathPackets++;
    table.counters.found++;
    if (protocol === IPPROTO_UDP) udpPacket(table, id);
    else if (icmp) icmpPacket(table, id);
    else tcpPacket(table, id, dir, tcpFlags);
    if (dir === 1) table.setStatus(id, CT_SEEN_REPLY);
    // Rewrites in the general path's order: DNAT, TTL, SNAT (one pass, same bytes).
    if (icmp) {
      // The identifier is the ICMP "port" in both tuples (nf_nat_proto.c icmp_manip_pkt): either
      // manip sets it to the other tuple's, which equals this one's when nothing translates it.
      rewriteForwardIcmpEcho(v, off, newSrc, newDst, table.tuplePortsBits(id, other) >>> 16);
    } else {
      rewriteForwardPlain(v, off, protocol, newSrc, newSport, newDst, newDport, this.l4Partial);
    }
    return egressOf(egress, LEG_WIRE);
  }

  /** A DataView of `buf`'s bytes for forwardEstablished, made once per packet buffer. */
  private viewOf(buf: Uint8Array): DataView<ArrayBufferLike> {
    this.viewBytes = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    return this.view;
  }

  private traceRoute(route: number): void {
    const dst = this.info.dst;
    const text = route < 0 ? "no route (no default route either)" : this.routes.describeRoute(route);
    this.tracer!.step("route", `${formatIpv4(dst)}: ${text}`);
  }

  /** INPUT: nat INPUT (SNAT to the router's host is possible), confirm, to the ingress mirror. */
  private finishLocalIn(buf: Uint8Array, ingress: number): number {
    const ct = this.ct;
    if (this.nat !== undefined) {
      const natReason = this.nat.input(buf, this.info, ct, ingress);
      if (natReason !== DropReason.None) return this.release(ingress, natReason);
    }
    if (!this.confirm(ingress)) return VERDICT_DROP;
    return egressOf(ingress, LEG_MIRROR);
  }

  /**
   * A packet the router's own host sent (read from a mirror), or an ICMP error qnat generated
   * (`ingress` -1): OUTPUT nat, routing, POSTROUTING nat. No TTL decrement: it is not forwarded.
   */
  private processLocalOut(buf: Uint8Array, off: number, length: number, ingress: number): number {
    const info = this.info;
    const reason = parsePacket(buf, off, length, info);
    info.l4ChecksumPartial = this.l4Partial;
    if (reason !== DropReason.None) return this.drop(ingress, reason);
    const ct = this.ct;
    const tracked = this.attached >= 0 ? this.attachConnection() : this.trackPacket(ingress);
    if (tracked < 0) return tracked;
    if (this.nat !== undefined) {
      const natReason = this.nat.output(buf, info, ct);
      if (natReason !== DropReason.None) return this.release(ingress, natReason);
    }
    const dst = info.dst;
    let egress: number;
    // Loopback (an OUTPUT REDIRECT: nf_nat_redirect_ipv4 uses 127.0.0.1): Linux delivers it over
    // `lo`, which qnat cannot reach; it must never leave on a wire.
    if (dst >>> 24 === 127) return this.release(ingress, DropReason.MartianDestination);
    if (includes(this.localList, dst)) {
      // The host talks to itself through a mirror (its kernel would have used loopback):
      // hand it back on the mirror it came from.
      egress = ingress >= 0 ? ingress : this.localAddresses.get(dst)!;
      if (!this.confirm(ingress)) return VERDICT_DROP;
      return egressOf(egress, LEG_MIRROR);
    }
    const route = this.routes.lookup(dst);
    if (this.tracer !== null) this.traceRoute(route);
    if (route < 0 || this.routes.routeType(route) !== RouteType.Unicast) return this.release(ingress, DropReason.NoRoute);
    egress = this.routes.routePort(route);
    if (this.nat !== undefined) {
      const natReason = this.nat.postrouting(buf, info, ct, -1, egress);
      if (natReason !== DropReason.None) return this.release(ingress, natReason);
    }
    if (!this.confirm(ingress)) return VERDICT_DROP;
    return egressOf(egress, LEG_WIRE);
  }

  /**
   * Conntrack for the current packet into `this.ct`. INVALID packets are not dropped (Linux
   * conntrack only marks them; without a filter rule they pass, untranslated); they are counted
   * by the table. Returns 0, or a drop verdict (table full).
   */
  private trackPacket(ingress: number): number {
    const ct = this.ct;
    const info = this.info;
    if (info.fragmentOffset !== 0 && hasPorts(info.protocol)) return this.trackFragment(ingress);
    const reason = track(this.conntrack, info, ct);
    if (reason !== DropReason.None) return this.drop(ingress, reason);
    if (this.tracer !== null) this.traceConntrack();
    if (info.moreFragments && this.nat !== undefined && hasPorts(info.protocol)) {
      // A first fragment: remember its connection for the fragments that follow (before NAT).
      // Untracked (INVALID) ones too: Linux passes the whole datagram untranslated then.
      const ref = ct.id >= 0 ? (ct.id << 1) | ct.dir : FRAGMENT_UNTRACKED;
      const noted = this.fragments.noteFirstFragment(info.buf, info, ref);
      if (noted !== DropReason.None) return this.release(ingress, noted);
    }
    return 0;
  }

  /**
   * A non-first TCP/UDP/ICMP fragment has no ports: it belongs to the connection of its first
   * fragment. Without NAT it needs nothing; with NAT it is translated like its first fragment, or
   * held until that arrives.
   */
  private trackFragment(ingress: number): number {
    const ct = this.ct;
    ct.id = -1;
    ct.isNew = false;
    ct.state = CtState.Invalid;
    if (this.nat === undefined) return 0;
    const info = this.info;
    const ref = this.fragments.lookupFragment(info.buf, info);
    if (ref === FRAGMENT_UNTRACKED) {
      if (this.tracer !== null) this.tracer.step("conntrack", `fragment at offset ${info.fragmentOffset}: its first fragment was not tracked; passes without NAT`);
      return 0;
    }
    if (ref >= 0) {
      const id = ref >> 1;
      const dir = ref & 1;
      // The first fragment's connection must still be the one it was: a first fragment dropped
      // later in its path, or an entry freed since, leaves a stale id (Linux never completes
      // such a datagram: ip_expire discards it).
      const table = this.conntrack;
      if (
        !table.isAllocated(id) ||
        table.protocol(id) !== info.protocol ||
        (table.tupleSrcOf(id, dir) | 0) !== (info.src | 0) ||
        (table.tupleDstOf(id, dir) | 0) !== (info.dst | 0)
      ) {
        return this.drop(ingress, DropReason.FragmentNoState);
      }
      ct.id = id;
      ct.dir = dir;
      ct.state = CtState.Established;
      if (this.tracer !== null) this.tracer.step("conntrack", `fragment at offset ${info.fragmentOffset}: belongs to ${formatConntrackEntry(this.conntrack, ct.id)}`);
      return 0;
    }
    const held = this.fragments.holdFragment(info.buf, info);
    if (held !== DropReason.None) return this.drop(ingress, held);
    if (this.tracer !== null) this.tracer.step("conntrack", `fragment at offset ${info.fragmentOffset} came before its first fragment: held`);
    return VERDICT_STOLEN;
  }

  private traceConntrack(): void {
    const ct = this.ct;
    const tracer = this.tracer!;
    tracer.step("validate", `${describePacket(this.info, { tcpFlags: true })}, ${this.info.length} bytes, ttl ${this.info.ttl}`);
    const state = CtState[ct.state]!.toUpperCase();
    if (ct.id < 0) tracer.step("conntrack", `${state}: not tracked; passes without NAT`);
    else if (ct.isNew) tracer.step("conntrack", `${state}: no connection matches; a new entry is created (unconfirmed), so the nat rules run`);
    else
      tracer.step(
        "conntrack",
        `${state}: ${ct.dir === 0 ? "original" : "reply"} direction of ${formatConntrackEntry(this.conntrack, ct.id)} — nat rules are skipped, the stored binding applies`,
      );
  }

  /** The router's ICMP error takes the connection of the packet it is about (see `attached`). */
  private attachConnection(): number {
    const ct = this.ct;
    ct.id = this.attached >> 1;
    ct.dir = this.attached & 1;
    ct.isNew = false;
    ct.state = CtState.Related;
    if (this.tracer !== null) {
      this.tracer.step("conntrack", `RELATED: attached to ${formatConntrackEntry(this.conntrack, ct.id)}, ${ct.dir === 0 ? "original" : "reply"} direction`);
    }
    return 0;
  }

  /** Confirms a NEW connection at the end of its first packet's path (__nf_conntrack_confirm). */
  private confirm(ingress: number): boolean {
    const ct = this.ct;
    if (ct.id < 0 || !ct.isNew) return true;
    if (this.dryRun) {
      if (this.tracer !== null) this.tracer.step("confirm", `would confirm: ${formatConntrackEntry(this.conntrack, ct.id)}`);
      this.conntrack.release(ct.id);
      return true;
    }
    if (this.conntrack.confirm(ct.id)) return true;
    this.drop(ingress, DropReason.ConntrackInsertFailed);
    return false;
  }

  /** Drops the current packet, discarding the unconfirmed entry it created. */
  private release(ingress: number, reason: DropReason): number {
    const ct = this.ct;
    if (ct.id >= 0 && ct.isNew) {
      this.conntrack.release(ct.id);
      ct.id = -1;
    }
    return this.drop(ingress, reason);
  }

  /**
   * Queues an ICMP error about the packet at `buf[off..]` (RFC 1812 4.3.2.7; Linux __icmp_send):
   * never about an ICMP error, a non-first fragment, a packet to a broadcast/multicast address,
   * or from an address that cannot be answered; rate limited. Source: the preferred source of
   * the route back to the sender, else the primary address of the port that route uses.
   */
  private sendIcmpError(
    buf: Uint8Array,
    off: number,
    type: number,
    code: number,
    mtu: number,
    ingress: number,
    generated: PacketBatch,
  ): void {
    const info = this.info;
    if (info.fragmentOffset !== 0) return;
    if (info.protocol === IPPROTO_ICMP && (info.isIcmpError || !info.hasL4)) return;
    const to = info.src;
    if (to === 0 || isMartianSource(to) || includes(this.broadcastList, to)) return;
    if (includes(this.broadcastList, info.dst) || info.dst >>> 28 === 0xe) return;
    if (generated.count >= generated.capacity) return;
    if (!this.icmpLimiter.allow(type, code, to)) {
      this.drops[ingress * DROP_REASON_COUNT + DropReason.IcmpRateLimited] += 1;
      return;
    }
    let from = this.ports[ingress]!.primary;
    const back = this.routes.lookup(to);
    if (back >= 0) {
      const prefSrc = this.routes.routePrefSrc(back);
      from = prefSrc !== 0 ? prefSrc : this.ports[this.routes.routePort(back)]!.primary;
    }
    const at = generated.offsetOf(generated.count);
    this.ipId = (this.ipId + 1) & 0xffff;
    const length = writeIcmpError(generated.data, at, type, code, mtu, from, to, buf, off, info.length, DEFAULT_TTL, this.ipId);
    if (length === 0) return;
    generated.lengths[generated.count] = length;
    if (this.tracer !== null) this.tracer.step("icmp", `the router answers with ICMP ${type}/${code} from ${formatIpv4(from)} to ${formatIpv4(to)}`);
    const index = generated.count++;
    this.portCounters[ingress * PORT_COUNTERS + PortCounter.IcmpErrorsSent] += 1;

    // The error takes the OUTPUT path now, while the offending packet's connection (even an
    // unconfirmed one) still exists: Linux sends it from inside ip_forward (icmp_send).
    const ct = this.ct;
    const id = ct.id;
    const dir = ct.dir;
    const isNew = ct.isNew;
    const state = ct.state;
    this.attached = id >= 0 ? (id << 1) | (dir ^ 1) : -1;
    if (this.tracer !== null) this.tracer.step("output", "the router's own ICMP error takes the OUTPUT path:");
    // The error is a whole packet of its own: no offload state of the packet it is about.
    const partial = this.l4Partial;
    this.l4Partial = false;
    const verdict = this.processLocalOut(generated.data, at, length, -1);
    this.l4Partial = partial;
    this.attached = -1;
    this.generatedVerdicts[index] = verdict;
    if (verdict >= 0) this.countTx(verdict, length);
    ct.id = id;
    ct.dir = dir;
    ct.isNew = isNew;
    ct.state = state;
  }

  /** Incremental housekeeping, once per batch: expire a bounded number of conntrack entries. */
  housekeeping(): void {
    this.conntrack.gc(64);
    this.fragmentsExpired += this.fragments.expire();
    this.nat?.housekeeping();
  }
}

/** The four bytes of `addr` xor-ed together: an index into Dataplane.specialFold. */
function foldAddress(addr: number): number {
  const half = addr ^ (addr >>> 16);
  return (half ^ (half >>> 8)) & 0xff;
}

/** True when `addr` (uint32 or int32 bits) is in `list` (int32). */
function includes(list: Int32Array, addr: number): boolean {
  const key = addr | 0;
  for (let i = 0; i < list.length; i++) if (list[i] === key) return true;
  return false;
}

/** Protocols whose conntrack tuple needs the L4 header (ports or ICMP identifier). */
function hasPorts(protocol: number): boolean {
  return protocol === IPPROTO_TCP || protocol === IPPROTO_UDP || protocol === IPPROTO_ICMP;
}

/** Linux ipv4_is_zeronet / ipv4_is_loopback / ipv4_is_multicast / ipv4_is_lbcast. */
function isMartianSource(addr: number): boolean {
  const first = addr >>> 24;
  return first === 0 || first === 127 || first >= 224;
}

