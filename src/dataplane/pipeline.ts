/**
 * The forwarding pipeline: one batch of packets from one leg of one port in, one verdict per
 * packet out (the egress `port * 2 + leg`, or a drop), with the packets rewritten in place.
 * ICMP errors the router itself originates are written into `generated` and pass the OUTPUT
 * path like anything the router's host sends (Linux: icmp_send -> ip_local_out). A packet
 * without DF too big for its egress MTU leaves as fragments, written into `fragmentOutput`
 * (fragment-output.ts; Linux ip_finish_output -> ip_fragment).
 *
 * Order per packet follows Linux (DESIGN.md "Pipeline"):
 *   wire leg:   validate -> conntrack -> PREROUTING nat -> route -> (local: INPUT nat -> mirror)
 *               | (forward: TTL, MTU -> POSTROUTING nat -> wire leg of the egress port)
 *   mirror leg: validate -> conntrack -> OUTPUT nat -> route -> POSTROUTING nat -> wire leg
 * Conntrack entries are confirmed at the end of the path (Linux __nf_conntrack_confirm at
 * POSTROUTING/INPUT); NAT rules run only for a connection's first packet.
 *
 * Stages with files of their own: the established fast path with its batch prefetch and route
 * cache (fast-path.ts), the router's own/broadcast/martian address checks (addresses.ts), the
 * ICMP errors the router originates (icmp-error.ts), the NAT hooks (netfilter-nat.ts).
 *
 * Hot path: no allocation. Numbers in, numbers out; every refusal is a counted DropReason.
 */
import { formatIpv4 } from "../core/addr.js";
import type { Clock } from "../core/clock.js";
import { DROP_REASON_COUNT, DropReason, dropReasonName } from "../core/drop-reason.js";
import { PacketBatch } from "../core/batch.js";
import { RateLimitedLog } from "../core/log-limit.js";
import type { ConntrackTable } from "../conntrack/table.js";
import { CtState, CtStatus } from "../conntrack/table.js";
import { track } from "../conntrack/track.js";
import { checksumInvalid } from "../conntrack/checksum.js";
import { formatConntrackEntry } from "../conntrack/format.js";
import type { RoutingTable } from "../route/table.js";
import { RouteType } from "../route/table.js";
import { describePacket } from "../wire/build.js";
import {
  ICMP_DEST_UNREACHABLE,
  ICMP_FRAGMENTATION_NEEDED,
  ICMP_NET_UNREACHABLE,
  ICMP_TIME_EXCEEDED,
  ICMP_TTL_EXCEEDED_IN_TRANSIT,
  ICMP_HOST_UNREACHABLE,
  ICMP_ADMIN_PROHIBITED,
} from "../wire/icmp.js";
import { IPV4_MAX_TOTAL_LENGTH, ipv4DecrementTtl } from "../wire/ipv4.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PacketInfo } from "../wire/packet-info.js";
import { gsoSegmentNetworkLength, parsePacket } from "../wire/validate.js";
import { DEFRAG_USER_IN, DEFRAG_USER_OUT, FragmentTable } from "../nat/fragments.js";
import { RouterAddresses, isMartianDestination, isMartianSource } from "./addresses.js";
import { EstablishedFastPath, FastPathVerdict } from "./fast-path.js";
import { FragmentOutput } from "./fragment-output.js";
import { ICMP_ERROR_RATE_LIMITED, IcmpErrorWriter } from "./icmp-error.js";
import { LEG_MIRROR, LEG_WIRE, RouterPort, VERDICT_DROP, VERDICT_FRAGMENTED, VERDICT_STOLEN, egressOf, type PortSpec } from "./port.js";
import type { NatStage } from "./nat-stage.js";
import { NetfilterNat } from "./netfilter-nat.js";
import { PacketContext } from "./packet-context.js";
import { DECISION_FAST_PATH, DECISION_INVALID, DECISION_NEW_CONNECTION, type PacketDecisions } from "./decisions.js";
import { RP_FILTER_OFF, RP_FILTER_STRICT, rpFilterName, validateSource } from "./reverse-path.js";

/** Neutron's tenant (router interface) ports: `qr-` + port id (iptables `-i qr-+`). */
const TENANT_PORT_PREFIX = "qr-";
const CT_STATUS_DST_NAT = CtStatus.DstNat;

/** A fragment reference (src/nat/fragments.ts) for a datagram whose first fragment was not tracked. */
const FRAGMENT_UNTRACKED = 0x7fffffff;

/** Per-port counters, laid out [port * PortCounter.Count + field] in one Float64Array. */
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
  /**
   * Reverse-path filtering per port (reverse-path.ts RP_FILTER_*, the port's effective value);
   * default strict on every port, as the config's default.
   */
  readonly rpFilter?: readonly number[];
  /**
   * The metadata proxy's TCP port on the router's host (0: none). It serves only connections
   * REDIRECTed to it from a `qr-` port; see finishLocalIn.
   */
  readonly metadataPort?: number;
  /**
   * Drop INVALID packets from the network (config `conntrack.drop_invalid`; Linux needs
   * `-m conntrack --ctstate INVALID -j DROP` in filter FORWARD and INPUT for it). Default false:
   * they pass untranslated, as Linux without that rule.
   */
  readonly dropInvalid?: boolean;
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
  /** Reverse-path filtering per port, RP_FILTER_* (reverse-path.ts). */
  readonly rpFilter: Uint8Array;
  /** conntrack.drop_invalid: INVALID packets from the network are dropped at FORWARD/INPUT. */
  readonly dropInvalid: boolean;
  /** The metadata proxy's port (0: none), and per port whether it is a tenant (`qr-`) port. */
  readonly metadataPort: number;
  private readonly tenantPort: Uint8Array;

  /** The dataplane's time; a dataplane built anew for a live change keeps it (BuildOptions.successorOf). */
  readonly clock: Clock;
  /** The packet being processed, and the ICMP error the router may send about it (packet-context.ts). */
  private readonly packet = new PacketContext();
  private readonly errorPacket = new PacketContext();
  /** The router's own, broadcast and martian addresses. */
  readonly addresses: RouterAddresses;
  private readonly icmpErrors: IcmpErrorWriter;
  /** Verdicts of the router's own ICMP errors in the current batch (see sendIcmpError). */
  private generatedVerdicts: Int32Array = new Int32Array(0);
  /** The NAT stage when it is qnat's netfilter NAT (bindings in conntrack): enables the fast path. */
  private readonly netfilterNat: NetfilterNat | null;
  /** The established fast path, its batch prefetch and route cache (fast-path.ts). */
  readonly established: EstablishedFastPath;
  /**
   * Non-first fragments are translated from their first fragment's connection (virtual
   * reassembly, src/nat/fragments.ts); those that arrive before it are held, then released here
   * and run through the pipeline again after the batch that brought their first fragment.
   */
  readonly fragments: FragmentTable;
  readonly released = new PacketBatch(64, 2048);
  readonly releasedVerdicts = new Int32Array(64);
  /** The defrag user (DEFRAG_USER_IN: from a wire leg, OUT: from a mirror) each released fragment arrived as. */
  private readonly releasedUsers = new Uint8Array(64);
  /** Held fragments dropped because their first fragment never came (Linux ipfrag_time). */
  fragmentsExpired = 0;
  /**
   * The fragments of this batch's packets that were too big for their egress MTU (without DF),
   * with their egress in `fragmentOutput.verdicts`: the forwarder writes them after the batch.
   */
  readonly fragmentOutput: FragmentOutput;
  /** Set while `qnat trace` runs one packet. */
  tracer: PipelineTracer | null = null;
  /** Set while a capture runs: what was decided for each packet of the batch (decisions.ts). */
  decisions: PacketDecisions | null = null;
  /**
   * With workers (N queues per device): the connection (entry id) each packet of the last batch
   * belongs to, -1 for none, so the forwarder can write it through its connection's queue
   * (io/forwarder.ts steerToOwners). Null, and not filled, on a one-worker router.
   */
  connections: Int32Array | null = null;
  /** The reason of the latest drop (for `decisions`). */
  private lastDrop = DropReason.None;
  /**
   * The established fast path (fast-path.ts) and the batch prefetch. On by default; tests turn it
   * off to check that it changes nothing but speed.
   */
  fastPath = true;
  /** Trace mode: new connections are released instead of confirmed, so the table is unchanged. */
  dryRun = false;
  /**
   * Shared tables only: established UDP and ICMP packets are forwarded without the tables' lock
   * (docs/multi-core.md). On by default; off, every batch holds the lock (the coarse lock).
   */
  lockFreeFastPath = true;
  /** While a batch runs: it holds the shared tables' lock (always, when they are not shared). */
  private holdsLock = false;
  /**
   * Where a packet that made the pipeline throw is reported (DropReason.Internal), at most one
   * line a second (the router sets its own log; default: stderr).
   */
  readonly internalErrors: RateLimitedLog;
  /** The sink of `internalErrors`: the router points it at its log. */
  log: (line: string) => void = (line) => process.stderr.write(`${line}\n`);

  constructor(options: DataplaneOptions) {
    this.ports = options.ports.map((p, i) => new RouterPort(i, p.name, p.addresses, p.mtu));
    this.routes = options.routes;
    this.conntrack = options.conntrack;
    this.clock = options.clock;
    this.nat = options.nat;
    this.netfilterNat = options.nat instanceof NetfilterNat ? options.nat : null;
    this.fragments = options.fragments ?? new FragmentTable({ clock: options.clock });
    this.fragmentOutput = new FragmentOutput(Math.max(0, ...this.ports.map((port) => port.mtu)));
    this.portCounters = new Float64Array(this.ports.length * PortCounter.Count);
    this.drops = new Float64Array(this.ports.length * DROP_REASON_COUNT);
    this.addresses = new RouterAddresses(this.ports);
    this.rpFilter = new Uint8Array(this.ports.length).fill(RP_FILTER_STRICT);
    options.rpFilter?.forEach((mode, port) => (this.rpFilter[port] = mode));
    this.metadataPort = options.metadataPort ?? 0;
    this.dropInvalid = options.dropInvalid ?? false;
    this.tenantPort = Uint8Array.from(this.ports, (port) => (port.name.startsWith(TENANT_PORT_PREFIX) ? 1 : 0));
    this.icmpErrors = new IcmpErrorWriter(options.clock, this.routes, this.ports, this.addresses);
    this.established = new EstablishedFastPath(this.conntrack, this.routes, this.ports, this.addresses, this.rpFilter, this.packet);
    this.internalErrors = new RateLimitedLog((line) => this.log(line), () => options.clock.now());
  }

  /** Packets forwarded by the established fast path (the rest took the general path). */
  get fastPathPackets(): number {
    return this.established.packets;
  }

  /** Of `fastPathPackets`: forwarded without the shared tables' lock (`lockFreeFastPath`). */
  get lockFreePackets(): number {
    return this.established.lockFreePackets;
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
    // The batch under the shared tables' lock (a no-op branch when the tables are not shared;
    // docs/multi-core.md "Shared tables"): the prefetch's bucket reads, every lookup,
    // creation, NAT port search, confirm with its clash check, expiry and early drop of the batch
    // are atomic toward the other workers, so a port is chosen once across all of them and no
    // binding is read half written.
    //
    // With `lockFreeFastPath`, a batch starts without the lock: established UDP and ICMP packets
    // go through the fast path's lock-free lookup and commit (fast-path.ts `unlocked`), and the
    // first packet that needs anything else takes the lock, kept to the end of the batch, so the
    // packets of a batch are still handled in their order.
    const table = this.conntrack;
    const lockFree = this.lockFreeFastPath && table.isShared && leg === LEG_WIRE && this.fastPathEnabled();
    if (!lockFree) table.lock();
    this.holdsLock = !lockFree;
    this.established.unlocked = lockFree;
    // One clock read per batch for conntrack (Linux reads jiffies; a batch lasts microseconds).
    table.pinTime(this.clock.now());
    try {
      this.established.beginBatch();
      if (this.fastPath && this.tracer === null) this.established.prefetch(batch);
      this.processBatchPinned(batch, ingress, leg, verdicts, generated, generatedVerdicts);
    } finally {
      table.unpinTime();
      this.established.unlocked = false;
      if (this.holdsLock) table.unlock();
      this.holdsLock = false;
    }
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
    const base = ingress * PortCounter.Count + (leg === LEG_WIRE ? PortCounter.RxPackets : PortCounter.MirrorRxPackets);
    const data = batch.data;
    const slot = batch.slotSize;
    const headroom = batch.headroom;
    const nextHops = batch.nextHops;
    // The fast path is tried here; processFromWire (also used for released fragments) tries it
    // for the packets that reach it any other way.
    const fast = this.fastPathEnabled();
    const packet = this.packet;
    this.fragmentOutput.clear();
    const decisions = this.decisions;
    const connections = this.connections;
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
        packet.l4Partial = batch.isChecksumPartial(i);
        packet.gsoSize = batch.gsoSizeOf(i);
      }
      // A failure stays with its packet (STYLE.md rule 12): one try per packet around the whole
      // path, which V8 optimises like straight code; the throw itself only happens on a bug.
      if (decisions !== null) this.beginDecision();
      if (connections !== null) {
        this.established.hitConnection = -1;
        packet.ct.id = -1;
      }
      try {
        verdicts[i] = this.forwardOne(data, off, length, i, ingress, leg, fast, generated);
        nextHops[i] = packet.nextHop;
      } catch (error) {
        verdicts[i] = this.internalError(error, data, off, length, ingress);
      }
      if (connections !== null) connections[i] = this.established.hitConnection >= 0 ? this.established.hitConnection : packet.ct.id;
      if (decisions !== null) this.noteDecision(decisions, i);
    }
    if (headroom !== 0) {
      packet.l4Partial = false;
      packet.gsoSize = 0;
    }
    // Fragments held for a first fragment that this batch brought, as if they arrived now, on
    // the leg kind they came from (a wire leg or a mirror: see DEFRAG_USER_IN in nat/fragments.ts).
    this.released.clear();
    if (this.fragments.hasReleased) {
      this.fragments.releaseHeld(this.released, this.releasedUsers);
      const rel = this.released;
      for (let i = 0; i < rel.count; i++) {
        const from = this.releasedUsers[i] === DEFRAG_USER_OUT ? LEG_MIRROR : LEG_WIRE;
        try {
          this.releasedVerdicts[i] = this.forwardOne(rel.data, rel.offsetOf(i), rel.lengths[i]!, -1, ingress, from, fast, generated);
          rel.nextHops[i] = this.packet.nextHop;
        } catch (error) {
          this.releasedVerdicts[i] = this.internalError(error, rel.data, rel.offsetOf(i), rel.lengths[i]!, ingress);
        }
      }
    }
  }

  /**
   * One packet from `leg` of port `ingress`: the established fast path, else the general path
   * (from the wire), or the OUTPUT path (from a mirror); counts what leaves. `index` is the
   * packet's slot in the batch (for the prefetch), -1 for a packet outside it.
   */
  private forwardOne(buf: Uint8Array, off: number, length: number, index: number, ingress: number, leg: number, fast: boolean, generated: PacketBatch): number {
    const p = this.packet;
    let verdict = FastPathVerdict.Miss;
    if (leg === LEG_WIRE) {
      if (fast && p.gsoSize === 0) verdict = this.established.forward(buf, off, length, index, ingress, p.l4Partial);
      // A hit left its next hop in p.nextHop (fast-path.ts), as the general path does.
      if (verdict === FastPathVerdict.Miss) {
        if (!this.holdsLock) this.takeLock();
        verdict = this.processFromWire(p, buf, off, length, ingress, generated);
      }
    } else {
      if (!this.holdsLock) this.takeLock();
      verdict = this.processLocalOut(p, buf, off, length, ingress);
    }
    if (verdict >= 0) this.countTx(verdict, length);
    return verdict;
  }

  /** The rest of the batch holds the shared tables' lock (from its first packet off the lock-free path). */
  private takeLock(): void {
    this.conntrack.lock();
    this.holdsLock = true;
    this.established.unlocked = false;
  }

  /**
   * A packet whose processing threw (a bug, never a bad packet: those are verdicts): dropped and
   * counted as DropReason.Internal, reported with its summary at most once a second, and whatever
   * it left half done is undone so the next packet starts clean — an unconfirmed conntrack entry
   * it created is released (release() leaves confirmed and free entries alone), the ICMP error
   * context is detached, offload flags are reset by the next packet.
   */
  private internalError(error: unknown, buf: Uint8Array, off: number, length: number, ingress: number): number {
    if (!this.holdsLock) this.takeLock();
    this.conntrack.release(this.packet.ct.id);
    this.conntrack.release(this.errorPacket.ct.id);
    this.errorPacket.attached = -1;
    if (ingress >= 0) this.drops[ingress * DROP_REASON_COUNT + DropReason.Internal] += 1;
    this.internalErrors.offer(() => {
      const info = new PacketInfo();
      const summary = parsePacket(buf, off, length, info) === DropReason.None ? describePacket(info) : `${length} bytes, not a valid IPv4 packet`;
      const port = ingress >= 0 ? this.ports[ingress]!.name : "the router";
      const why = error instanceof Error ? (error.stack ?? error.message).split("\n").slice(0, 2).join(" ") : String(error);
      return `qnat: internal error on a packet from ${port} (${summary}), dropped: ${why}`;
    });
    return VERDICT_DROP;
  }

  /** Before a packet while a capture runs: nothing of the previous packet's decision is left. */
  private beginDecision(): void {
    this.packet.ct.id = -1;
    this.packet.invalid = false;
    this.lastDrop = DropReason.None;
    this.established.lastConnection = -1;
    const nat = this.netfilterNat;
    if (nat !== null) {
      nat.boundSourceRule = -1;
      nat.boundDestinationRule = -1;
    }
  }

  /** After a packet while a capture runs: its connection, ctstate, drop reason and binding rules. */
  private noteDecision(decisions: PacketDecisions, index: number): void {
    const fast = this.established.lastConnection;
    const nat = this.netfilterNat;
    const sourceRule = nat !== null ? nat.boundSourceRule : -1;
    const destinationRule = nat !== null ? nat.boundDestinationRule : -1;
    if (fast >= 0) {
      decisions.note(index, fast, CtState.Established, DECISION_FAST_PATH, DropReason.None, -1, -1);
      return;
    }
    const ct = this.packet.ct;
    const flags = (ct.id >= 0 && ct.isNew ? DECISION_NEW_CONNECTION : 0) | (this.packet.invalid ? DECISION_INVALID : 0);
    const connection = ct.id >= 0 ? (ct.id << 1) | ct.dir : -1;
    decisions.note(index, connection, ct.id >= 0 ? ct.state : CtState.Invalid, flags, this.lastDrop, sourceRule, destinationRule);
  }

  private countTx(verdict: number, length: number): void {
    const at = (verdict >> 1) * PortCounter.Count + ((verdict & 1) === LEG_WIRE ? PortCounter.TxPackets : PortCounter.MirrorTxPackets);
    this.portCounters[at] += 1;
    this.portCounters[at + 1] += length;
  }

  private drop(port: number, reason: DropReason): number {
    this.lastDrop = reason;
    if (this.tracer !== null) this.tracer.step("drop", `dropped: ${dropReasonName(reason)}`);
    if (port >= 0) this.drops[port * DROP_REASON_COUNT + reason] += 1;
    return VERDICT_DROP;
  }

  /** The established fast path runs unless a trace is being recorded. */
  private fastPathEnabled(): boolean {
    return this.fastPath && this.tracer === null && this.netfilterNat !== null && this.netfilterNat.tracer === null;
  }

  /** A packet from the network (the fast path declined it): PREROUTING, then INPUT or FORWARD + POSTROUTING. */
  private processFromWire(p: PacketContext, buf: Uint8Array, off: number, length: number, ingress: number, generated: PacketBatch): number {
    const info = p.info;
    const reason = parsePacket(buf, off, length, info);
    info.l4ChecksumPartial = p.l4Partial;
    if (reason !== DropReason.None) return this.drop(ingress, reason);
    // Martian sources (Linux ip_route_input_slow / ip_route_input_mc): multicast, limited
    // broadcast, 0.0.0.0/8 and loopback sources are never routed.
    // Addresses as int32 bits (packet-info.ts): a uint32 of 128.0.0.0 or more would be a heap number.
    const src = info.srcBits;
    // A source that is one of the router's own addresses is a martian too (fib_validate_source).
    if (isMartianSource(src) || this.addresses.isOwnOrBroadcast(src)) {
      return this.drop(ingress, DropReason.MartianSource);
    }
    if (isMartianDestination(info.dstBits)) return this.drop(ingress, DropReason.MartianDestination);

    // Conntrack (PREROUTING, priority -200) then DNAT (-100).
    const ct = p.ct;
    const tracked = this.trackPacket(p, ingress, DEFRAG_USER_IN);
    if (tracked < 0) return tracked;
    if (this.nat !== undefined) {
      const natReason = this.nat.prerouting(buf, info, ct, ingress);
      if (natReason !== DropReason.None) return this.release(p, ingress, natReason);
    }

    const dst = info.dstBits;
    // Local delivery: to the mirror of the port the packet came in on (INPUT).
    // Broadcasts and multicast (qnat runs no multicast routing) go to the router's host too.
    if (this.addresses.isLocalDestination(dst)) {
      if (this.tracer !== null) this.tracer.step("route", `local: ${describePacket(p.info)} is for the router itself (INPUT), delivered through the ${this.ports[ingress]!.name} mirror`);
      const source = this.checkSource(p, ingress);
      if (source !== DropReason.None) return this.release(p, ingress, source);
      return this.finishLocalIn(p, buf, ingress);
    }

    const route = this.routes.lookup(dst);
    if (this.tracer !== null) this.traceRoute(p, route);
    if (route < 0) {
      this.sendIcmpError(p, buf, off, ICMP_DEST_UNREACHABLE, ICMP_NET_UNREACHABLE, 0, ingress, generated);
      return this.release(p, ingress, DropReason.NoRoute);
    }
    const type = this.routes.routeType(route);
    if (type !== RouteType.Unicast) {
      // ip_error(): unreachable -> host unreachable, prohibit -> admin prohibited, blackhole silent.
      if (type === RouteType.Unreachable) this.sendIcmpError(p, buf, off, ICMP_DEST_UNREACHABLE, ICMP_HOST_UNREACHABLE, 0, ingress, generated);
      else if (type === RouteType.Prohibit) this.sendIcmpError(p, buf, off, ICMP_DEST_UNREACHABLE, ICMP_ADMIN_PROHIBITED, 0, ingress, generated);
      return this.release(p, ingress, DropReason.NoRoute);
    }
    const egress = this.routes.routePort(route);
    p.nextHop = nextHopOf(this.routes, route, dst);
    const source = this.checkSource(p, ingress);
    if (source !== DropReason.None) return this.release(p, ingress, source);

    // ip_forward(): TTL first, then the MTU check.
    if (info.ttl <= 1) {
      this.sendIcmpError(p, buf, off, ICMP_TIME_EXCEEDED, ICMP_TTL_EXCEEDED_IN_TRANSIT, 0, ingress, generated);
      return this.release(p, ingress, DropReason.TtlExceeded);
    }
    const mtu = this.ports[egress]!.mtu;
    // A GSO super-packet fits when each of its segments does (ip_exceeds_mtu, skb_gso_validate_network_len).
    const tooBig = (p.gsoSize === 0 ? info.length : gsoSegmentNetworkLength(info, p.gsoSize)) > mtu;
    if (tooBig) {
      if (info.dontFragment) {
        this.sendIcmpError(p, buf, off, ICMP_DEST_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, mtu, ingress, generated);
        return this.release(p, ingress, DropReason.FragmentationNeeded);
      }
      // Linux segments such a super-packet and fragments each segment (ip_finish_output_gso).
      if (p.gsoSize !== 0) return this.release(p, ingress, DropReason.GsoTooBigNoDf);
    }
    ipv4DecrementTtl(buf, off);
    info.ttl -= 1;
    if (this.tracer !== null) this.tracer.step("forward", `ttl ${info.ttl + 1} -> ${info.ttl}; ${info.length} bytes ${tooBig ? "do not fit" : "fit"} mtu ${mtu} of ${this.ports[egress]!.name}`);
    // filter FORWARD (ip_forward's NF_INET_FORWARD hook, after the TTL and MTU checks).
    if (p.invalid && this.dropInvalid) return this.dropInvalidPacket(p, ingress, "FORWARD");

    if (this.nat !== undefined) {
      const natReason = this.nat.postrouting(buf, info, ct, ingress, egress);
      if (natReason !== DropReason.None) return this.release(p, ingress, natReason);
    }
    if (!this.confirm(p, ingress)) return VERDICT_DROP;
    if (tooBig) return this.fragmentOut(p, buf, off, ingress, egress, mtu);
    return egressOf(egress, LEG_WIRE);
  }

  /**
   * Whether a packet for the metadata port reached it through the nat table from a tenant port:
   * Neutron marks `-i qr-+ -d 169.254.169.254 -p tcp --dport 80` in mangle PREROUTING and its
   * filter INPUT accepts the mark, then drops `-p tcp --dport 9697`. qnat asks the same of the
   * connection: original direction, destination NATed (the REDIRECT), arriving on a `qr-` port.
   */
  private redirectedFromTenant(p: PacketContext, ingress: number): boolean {
    const ct = p.ct;
    return (
      ct.id >= 0 &&
      ct.dir === 0 &&
      this.tenantPort[ingress] === 1 &&
      (this.conntrack.status(ct.id) & CT_STATUS_DST_NAT) !== 0
    );
  }

  /**
   * rp_filter (reverse-path.ts): the source of a packet from the wire, after PREROUTING, once its
   * route is known to be local or unicast (ip_route_input_slow -> fib_validate_source).
   */
  private checkSource(p: PacketContext, ingress: number): DropReason {
    const mode = this.rpFilter[ingress]!;
    const reason = validateSource(this.routes, mode, p.info.srcBits, ingress);
    if (this.tracer !== null) this.traceSource(p, ingress, mode, reason);
    return reason;
  }

  private traceSource(p: PacketContext, ingress: number, mode: number, reason: DropReason): void {
    const src = formatIpv4(p.info.src);
    const port = this.ports[ingress]!.name;
    if (mode === RP_FILTER_OFF) {
      this.tracer!.step("rp_filter", `off on ${port}: the source ${src} is not validated`);
      return;
    }
    const back = this.routes.lookup(p.info.src);
    const via = back < 0 ? `there is no route back to ${src}` : `the route back to ${src} is ${this.routes.describeRoute(back).trim()}`;
    const verdict =
      reason === DropReason.None
        ? "source valid"
        : reason === DropReason.MartianSource
          ? "the route back is not unicast: a martian source (fib_validate_source -EINVAL)"
          : back < 0
            ? "dropped (IPReversePathFilter)"
            : `it does not leave by ${port}, the arrival port: dropped (IPReversePathFilter)`;
    this.tracer!.step("rp_filter", `${rpFilterName(mode)} on ${port}: ${via}; ${verdict}`);
  }

  private traceRoute(p: PacketContext, route: number): void {
    const dst = p.info.dst;
    const text = route < 0 ? "no route (no default route either)" : this.routes.describeRoute(route);
    this.tracer!.step("route", `${formatIpv4(dst)}: ${text}`);
  }

  /**
   * INPUT: the metadata port's filter, nat INPUT (SNAT to the router's host is possible), confirm,
   * to the ingress mirror.
   */
  private finishLocalIn(p: PacketContext, buf: Uint8Array, ingress: number): number {
    const ct = p.ct;
    if (p.invalid && this.dropInvalid) return this.dropInvalidPacket(p, ingress, "INPUT");
    if (this.metadataPort !== 0 && p.info.protocol === IPPROTO_TCP && p.info.dport === this.metadataPort && !this.redirectedFromTenant(p, ingress)) {
      if (this.tracer !== null) this.tracer.step("filter", `tcp to port ${this.metadataPort} that was not REDIRECTed from a qr- port: the metadata proxy is private (Neutron: INPUT --dport ${this.metadataPort} -j DROP)`);
      return this.release(p, ingress, DropReason.MetadataNotRedirected);
    }
    if (this.nat !== undefined) {
      const natReason = this.nat.input(buf, p.info, ct, ingress);
      if (natReason !== DropReason.None) return this.release(p, ingress, natReason);
    }
    if (!this.confirm(p, ingress)) return VERDICT_DROP;
    return egressOf(ingress, LEG_MIRROR);
  }

  /**
   * A packet the router's own host sent (read from a mirror), or an ICMP error qnat generated
   * (`ingress` -1): OUTPUT nat, routing, POSTROUTING nat. No TTL decrement: it is not forwarded.
   */
  private processLocalOut(p: PacketContext, buf: Uint8Array, off: number, length: number, ingress: number): number {
    const info = p.info;
    const reason = parsePacket(buf, off, length, info);
    info.l4ChecksumPartial = p.l4Partial;
    if (reason !== DropReason.None) return this.drop(ingress, reason);
    const ct = p.ct;
    const tracked = p.attached >= 0 ? this.attachConnection(p) : this.trackPacket(p, ingress, DEFRAG_USER_OUT);
    if (tracked < 0) return tracked;
    if (this.nat !== undefined) {
      const natReason = this.nat.output(buf, info, ct);
      if (natReason !== DropReason.None) return this.release(p, ingress, natReason);
    }
    const dst = info.dstBits;
    let egress: number;
    // Loopback (an OUTPUT REDIRECT: nf_nat_redirect_ipv4 uses 127.0.0.1): Linux delivers it over
    // `lo`, which qnat cannot reach; it must never leave on a wire.
    if (dst >>> 24 === 127) return this.release(p, ingress, DropReason.MartianDestination);
    if (this.addresses.isOwn(dst)) {
      // The host talks to itself through a mirror (its kernel would have used loopback):
      // hand it back on the mirror it came from.
      egress = ingress >= 0 ? ingress : this.addresses.portOf(dst);
      if (!this.confirm(p, ingress)) return VERDICT_DROP;
      return egressOf(egress, LEG_MIRROR);
    }
    const route = this.routes.lookup(dst);
    if (this.tracer !== null) this.traceRoute(p, route);
    if (route < 0 || this.routes.routeType(route) !== RouteType.Unicast) return this.release(p, ingress, DropReason.NoRoute);
    egress = this.routes.routePort(route);
    p.nextHop = nextHopOf(this.routes, route, dst);
    if (this.nat !== undefined) {
      const natReason = this.nat.postrouting(buf, info, ct, -1, egress);
      if (natReason !== DropReason.None) return this.release(p, ingress, natReason);
    }
    if (!this.confirm(p, ingress)) return VERDICT_DROP;
    // The router's host fragments what it sends, too (ip_finish_output); its super-packets are
    // segmented by the receiver, and its DF packets pass as they are.
    const mtu = this.ports[egress]!.mtu;
    if (info.length > mtu && p.gsoSize === 0 && !info.dontFragment) return this.fragmentOut(p, buf, off, ingress, egress, mtu);
    return egressOf(egress, LEG_WIRE);
  }

  /**
   * The current packet, translated and confirmed, leaves by the wire leg of `egress` as fragments
   * of at most `mtu` bytes (fragment-output.ts); they are counted as sent there. Returns
   * VERDICT_FRAGMENTED, or a drop when the fragment output has no room left in this batch.
   */
  private fragmentOut(p: PacketContext, buf: Uint8Array, off: number, ingress: number, egress: number, mtu: number): number {
    const verdict = egressOf(egress, LEG_WIRE);
    const count = this.fragmentOutput.fragment(buf, off, p.info, mtu, verdict);
    if (count === 0) return this.drop(ingress, DropReason.FragmentOutputFull);
    const out = this.fragmentOutput.batch;
    for (let i = out.count - count; i < out.count; i++) {
      this.countTx(verdict, out.lengths[i]!);
      out.nextHops[i] = p.nextHop;
    }
    if (this.tracer !== null) {
      const offset = p.info.fragmentOffset;
      this.tracer.step(
        "fragment",
        `${p.info.length} bytes${offset !== 0 || p.info.moreFragments ? ` (a fragment at offset ${offset})` : ""} leave ${this.ports[egress]!.name} as ${count} fragments of at most ${mtu} bytes, id ${(buf[off + 4]! << 8) | buf[off + 5]!} kept (ip_do_fragment)`,
      );
    }
    return VERDICT_FRAGMENTED;
  }

  /**
   * Conntrack for the current packet into `p.ct`. INVALID packets are not dropped here (Linux
   * conntrack only marks them; without a filter rule they pass, untranslated; with
   * `drop_invalid` the FORWARD/INPUT filter drops them); they are counted by the table.
   * Returns 0, or a drop verdict (table full). `user`: DEFRAG_USER_IN from a wire leg
   * (PREROUTING, where the L4 checksum is verified: checksum.ts), DEFRAG_USER_OUT from a mirror
   * (fragments of the two never make one datagram).
   */
  private trackPacket(p: PacketContext, ingress: number, user: number): number {
    const ct = p.ct;
    const info = p.info;
    p.invalid = false;
    // Conntrack sees datagrams whole (nf_defrag_ipv4): a datagram a fragment would make longer
    // than an IPv4 total length can say is never reassembled (ip_frag_reasm, out_oversize).
    if (info.headerLength + info.fragmentOffset + info.l4Length > IPV4_MAX_TOTAL_LENGTH) return this.drop(ingress, DropReason.FragmentOversize);
    if (info.fragmentOffset !== 0 && hasPorts(info.protocol)) return this.trackFragment(p, ingress, user);
    if (user === DEFRAG_USER_IN && checksumInvalid(this.conntrack, info)) {
      ct.id = -1;
      ct.isNew = false;
      ct.state = CtState.Invalid;
      if (this.tracer !== null) this.tracer.step("conntrack", `INVALID: bad ${info.protocol === IPPROTO_TCP ? "TCP" : info.protocol === IPPROTO_UDP ? "UDP" : "ICMP"} checksum (nf_conntrack_checksum); not tracked, not NATed`);
    } else {
      const reason = track(this.conntrack, info, ct);
      if (reason !== DropReason.None) return this.drop(ingress, reason);
      if (this.tracer !== null) this.traceConntrack(p);
    }
    p.invalid = ct.state === CtState.Invalid;
    if (info.moreFragments && this.nat !== undefined && hasPorts(info.protocol)) {
      // A first fragment: remember its connection for the fragments that follow (before NAT).
      // Untracked (INVALID) ones too: Linux passes the whole datagram untranslated then.
      const ref = ct.id >= 0 ? (ct.id << 1) | ct.dir : FRAGMENT_UNTRACKED;
      const noted = this.fragments.noteFirstFragment(info.buf, info, ref, user);
      if (noted !== DropReason.None) return this.release(p, ingress, noted);
    }
    return 0;
  }

  /**
   * A non-first TCP/UDP/ICMP fragment has no ports: it belongs to the connection of its first
   * fragment. Without NAT it needs nothing; with NAT it is translated like its first fragment, or
   * held until that arrives.
   */
  private trackFragment(p: PacketContext, ingress: number, user: number): number {
    const ct = p.ct;
    ct.id = -1;
    ct.isNew = false;
    ct.state = CtState.Invalid;
    if (this.nat === undefined) return 0;
    const info = p.info;
    const ref = this.fragments.lookupFragment(info.buf, info, user);
    if (ref === FRAGMENT_UNTRACKED) {
      // Linux would have reassembled the datagram and found it INVALID as a whole.
      p.invalid = true;
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
        table.tupleSrcBits(id, dir) !== info.srcBits ||
        table.tupleDstBits(id, dir) !== info.dstBits
      ) {
        return this.drop(ingress, DropReason.FragmentNoState);
      }
      ct.id = id;
      ct.dir = dir;
      ct.state = CtState.Established;
      if (this.tracer !== null) this.tracer.step("conntrack", `fragment at offset ${info.fragmentOffset}: belongs to ${formatConntrackEntry(this.conntrack, ct.id)}`);
      return 0;
    }
    const held = this.fragments.holdFragment(info.buf, info, user);
    if (held !== DropReason.None) return this.drop(ingress, held);
    if (this.tracer !== null) this.tracer.step("conntrack", `fragment at offset ${info.fragmentOffset} came before its first fragment: held`);
    return VERDICT_STOLEN;
  }

  private traceConntrack(p: PacketContext): void {
    const ct = p.ct;
    const tracer = this.tracer!;
    tracer.step("validate", `${describePacket(p.info, { tcpFlags: true })}, ${p.info.length} bytes, ttl ${p.info.ttl}`);
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
  private attachConnection(p: PacketContext): number {
    const ct = p.ct;
    ct.id = p.attached >> 1;
    ct.dir = p.attached & 1;
    ct.isNew = false;
    ct.state = CtState.Related;
    p.invalid = false;
    if (this.tracer !== null) {
      this.tracer.step("conntrack", `RELATED: attached to ${formatConntrackEntry(this.conntrack, ct.id)}, ${ct.dir === 0 ? "original" : "reply"} direction`);
    }
    return 0;
  }

  /** Confirms a NEW connection at the end of its first packet's path (__nf_conntrack_confirm). */
  private confirm(p: PacketContext, ingress: number): boolean {
    const ct = p.ct;
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

  /** conntrack.drop_invalid: the filter rule `-m conntrack --ctstate INVALID -j DROP` at `chain`. */
  private dropInvalidPacket(p: PacketContext, ingress: number, chain: string): number {
    if (this.tracer !== null) this.tracer.step("filter", `${chain}: INVALID, dropped (conntrack.drop_invalid, as -m conntrack --ctstate INVALID -j DROP)`);
    return this.release(p, ingress, DropReason.ConntrackInvalid);
  }

  /** Drops the current packet, discarding the unconfirmed entry it created. */
  private release(p: PacketContext, ingress: number, reason: DropReason): number {
    const ct = p.ct;
    if (ct.id >= 0 && ct.isNew) {
      this.conntrack.release(ct.id);
      ct.id = -1;
    }
    return this.drop(ingress, reason);
  }

  /**
   * Sends the ICMP error `type`/`code` about the current packet (at `buf[off..]`) when one is due
   * (icmp-error.ts): appended to `generated`, through the OUTPUT path at once.
   */
  private sendIcmpError(
    p: PacketContext,
    buf: Uint8Array,
    off: number,
    type: number,
    code: number,
    mtu: number,
    ingress: number,
    generated: PacketBatch,
  ): void {
    const length = this.icmpErrors.write(p.info, buf, off, type, code, mtu, ingress, generated);
    if (length === ICMP_ERROR_RATE_LIMITED) {
      this.drops[ingress * DROP_REASON_COUNT + DropReason.IcmpRateLimited] += 1;
      return;
    }
    if (length <= 0) return;
    const at = generated.offsetOf(generated.count);
    if (this.tracer !== null) this.tracer.step("icmp", `the router answers with ICMP ${type}/${code} from ${formatIpv4(this.icmpErrors.lastFrom)} to ${formatIpv4(p.info.src)}`);
    const index = generated.count++;
    // Dropped unless the OUTPUT path below decides (it may throw: see internalError).
    this.generatedVerdicts[index] = VERDICT_DROP;
    this.portCounters[ingress * PortCounter.Count + PortCounter.IcmpErrorsSent] += 1;

    // The error takes the OUTPUT path now, while the offending packet's connection (even an
    // unconfirmed one) still exists: Linux sends it from inside ip_forward (icmp_send).
    // The error is a whole packet of its own, in its own context: no offload state of the packet
    // it is about, and that packet's context stays as it is.
    const error = this.errorPacket;
    const ct = p.ct;
    error.attached = ct.id >= 0 ? (ct.id << 1) | (ct.dir ^ 1) : -1;
    error.l4Partial = false;
    error.gsoSize = 0;
    if (this.tracer !== null) this.tracer.step("output", "the router's own ICMP error takes the OUTPUT path:");
    const verdict = this.processLocalOut(error, generated.data, at, length, -1);
    error.attached = -1;
    this.generatedVerdicts[index] = verdict;
    generated.nextHops[index] = error.nextHop;
    if (verdict >= 0) this.countTx(verdict, length);
  }

  /**
   * A packet that was routed out of port `port` but whose neighbour failed to resolve (ARP,
   * neigh/table.ts): answered with ICMP host unreachable, as Linux's arp_error_report ->
   * icmp_send does, through the same path as the router's other errors (rate limit, OUTPUT, NAT:
   * the packet was already translated, so the error is tracked as RELATED through the header it
   * quotes and translated back). Appends to `generated` (verdicts in `generatedVerdicts`).
   */
  hostUnreachable(buf: Uint8Array, off: number, length: number, port: number, generated: PacketBatch, generatedVerdicts: Int32Array): void {
    // The error is tracked as RELATED and translated: the shared tables' lock, as a batch.
    this.conntrack.lock();
    this.conntrack.pinTime(this.clock.now());
    try {
      this.generatedVerdicts = generatedVerdicts;
      const p = this.packet;
      if (parsePacket(buf, off, length, p.info) !== DropReason.None) return;
      p.ct.id = -1;
      this.sendIcmpError(p, buf, off, ICMP_DEST_UNREACHABLE, ICMP_HOST_UNREACHABLE, 0, port, generated);
    } catch (error) {
      this.internalError(error, buf, off, length, port);
    } finally {
      this.conntrack.unpinTime();
      this.conntrack.unlock();
    }
  }

  /** Incremental housekeeping, once per batch: expire a bounded number of conntrack entries. */
  housekeeping(): void {
    const table = this.conntrack;
    table.lock();
    try {
      table.gc(64);
      this.nat?.housekeeping();
    } finally {
      table.unlock();
    }
    // The fragment table is this dataplane's own (docs/multi-core.md "Shared tables").
    this.fragmentsExpired += this.fragments.expire();
  }
}

/**
 * The address a packet routed by `route` to `dst` is sent to on the wire (int32 bits): the
 * route's on-wire gateway, else the destination itself (Linux rt_nexthop: rt_gw4 or daddr).
 */
function nextHopOf(routes: RoutingTable, route: number, dst: number): number {
  const gateway = routes.routeGateway(route) | 0;
  return gateway !== 0 ? gateway : dst | 0;
}

/** Protocols whose conntrack tuple needs the L4 header (ports or ICMP identifier). */
function hasPorts(protocol: number): boolean {
  return protocol === IPPROTO_TCP || protocol === IPPROTO_UDP || protocol === IPPROTO_ICMP;
}
