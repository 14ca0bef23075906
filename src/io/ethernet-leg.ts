/**
 * The Ethernet stage between the TAP legs of the router's Ethernet ports and the dataplane. The
 * pipeline sees IPv4 packets only; the frames around them are this file's business:
 *
 * Ingress (`EthernetLeg.readInto`, Linux eth_type_trans + the protocol handlers): the frame's
 * destination must be the leg's own address, broadcast or a group address; any other unicast
 * destination is another host's (PACKET_OTHERHOST, which ip_rcv and arp_rcv drop), counted and
 * dropped. IPv4 (ETH_P_IP) stays in the batch for the pipeline; ARP (ETH_P_ARP) is answered and
 * learnt from here (net/ipv4/arp.c arp_process) and leaves the batch; anything else is a counted
 * drop (no handler: __netif_receive_skb's unknown protocol). Nothing here throws on a frame.
 *
 * Egress (`EthernetLeg.writeSelected`): each packet's Ethernet header is written in front of it
 * (core/batch.ts's slot layout: at offsetOf(i) - ETH_HLEN), its destination from the neighbour
 * table (neigh/table.ts) for the packet's next hop (PacketBatch.nextHops, set by the pipeline);
 * a packet whose neighbour is not resolved yet is queued there (its verdict becomes
 * VERDICT_STOLEN) and sent when the ARP reply comes, or answered with ICMP host unreachable
 * when resolution fails (`onUnreachable`, the forwarder's hostUnreachable). Broadcast and
 * multicast next hops map to their group address (arp_mc_map) without ARP.
 *
 * The two legs of a port:
 * - the wire leg is qnat on the segment: it owns the port's MAC, answers ARP for the router's
 *   addresses as the port's arp_ignore allows (default 0: any local address, Linux's weak host
 *   model) to senders that pass the port's rp_filter, picks its requests' sender address by the
 *   port's arp_announce (default 0), learns neighbours from ARP requests for its addresses and
 *   replies (arp_accept=0: a gratuitous ARP only updates an existing entry), resolves next hops;
 *   no proxy ARP.
 * - the mirror is a TAP in the router namespace carrying the port's MAC, so `ip addr` there
 *   shows `link/ether MAC` as on a Neutron router. Frames from the mirror are routed by qnat at
 *   L3, so the router namespace's kernel only needs some address to send them to: qnat answers
 *   every ARP request on the mirror (for any target but the port's own addresses) with the
 *   port's "side MAC" (`sideMacOf`: the port's MAC with the first byte 0xfe), accepts frames to
 *   it, and writes frames to the mirror from the side MAC to the port's MAC. The kernel's
 *   neighbour table there thus holds every destination at the side MAC, as behind a router.
 */
import { ETH_HLEN, PacketBatch } from "../core/batch.js";
import type { Clock } from "../core/clock.js";
import { DropReason } from "../core/drop-reason.js";
import { isMartianSource } from "../dataplane/addresses.js";
import { VERDICT_STOLEN } from "../dataplane/port.js";
import { validateSource } from "../dataplane/reverse-path.js";
import type { RoutingTable } from "../route/table.js";
import { NEIGH_HELD, NUD_REACHABLE, NUD_STALE, type NeighbourIo, type NeighbourTable } from "../neigh/table.js";
import {
  ARPOP_REPLY,
  ARPOP_REQUEST,
  ZERO_MAC,
  arpOperation,
  arpSenderIp,
  arpSenderMacOffset,
  arpTargetIp,
  arpTargetMacOffset,
  arpValid,
  writeArp,
} from "../wire/arp.js";
import {
  BROADCAST_MAC,
  ETH_P_ARP,
  ETH_P_IP,
  ETH_ZLEN,
  ethernetDestIsBroadcast,
  ethernetDestIsMulticast,
  ethernetType,
  macEquals,
  writeEthernetHeader,
} from "../wire/ethernet.js";
import { TunLeg } from "./tun-leg.js";
import type { TunDevice } from "./tun.js";

/** The largest packet `EthernetStage.send` copies into its staging batch (a 9216-byte jumbo frame's). */
const STAGING_PACKET_BYTES = 9216;
/**
 * `workers: N`: ARP packets from the wire a thread passes on to the others per neighbour tick
 * (100 ms), at most: ARP is rare, and a flood of it must not become a flood of messages.
 */
export const RELAY_PER_TICK = 64;

/**
 * `workers: N`: what one thread's neighbour table tells the others' (control/ethernet-threads.ts),
 * so that the threads' tables behave as Linux's one: `resolving`, the thread started resolving
 * `ip` (its entry went INCOMPLETE and its broadcast request left), and the others wait for that
 * request's reply instead of asking themselves; `resolved`, an INCOMPLETE entry of the thread got
 * its address `mac` (`state`: REACHABLE for a reply to the port's MAC), and every other thread's
 * table holds the neighbour so (created if it had none). Learning news never sends news.
 */
export type NeighbourNews =
  | { readonly kind: "resolving"; readonly port: number; readonly ip: number }
  | { readonly kind: "resolved"; readonly port: number; readonly ip: number; readonly mac: Uint8Array; readonly state: number };

export const ETH_ROLE_WIRE = 0;
export const ETH_ROLE_MIRROR = 1;

/** Per-port Ethernet counters, laid out [port * EthCounter.Count + field]. */
export const enum EthCounter {
  /** ARP packets received (valid ones, both legs). */
  ArpIn = 0,
  /** ARP packets sent: replies, probes, gratuitous. */
  ArpOut,
  /** ARP requests answered on the wire (for one of the router's addresses). */
  ArpReplies,
  /** Gratuitous ARP sent (router start, address added). */
  GratuitousOut,
  /** ARP requests for addresses that are not the router's (arp_process: ignored, no proxy ARP). */
  ArpNotForUs,
  /** Malformed ARP, or ARP about a multicast/loopback address (arp_process drops). */
  ArpInvalid,
  /** Frames to another host's unicast MAC (PACKET_OTHERHOST), dropped. */
  OtherHost,
  /** Frames of an EtherType qnat does not handle (IPv6, VLAN, ...), dropped. */
  OtherEthertype,
  /** Frames shorter than an Ethernet header, dropped. */
  Runt,
  /** Packets held for a neighbour being resolved (queued or dropped by neigh/table.ts). */
  NeighbourHeld,
  /** Frames the stage built (ARP, packets that waited for ARP) that the leg failed to write (it is down), or too big to restage. */
  TxErrors,
  /** ARP requests for one of the router's addresses left unanswered by the port's arp_ignore (arp.c arp_ignore()). */
  ArpIgnored,
  /**
   * ARP requests whose sender failed source validation (arp_process routes the request with
   * ip_route_input_noref: rp_filter, or a martian sender): not answered, nothing created.
   */
  ArpRpFilter,
  /** ARP requests qnat sent to resolve a neighbour (arp_solicit: broadcast while INCOMPLETE, unicast in PROBE). */
  ArpRequestsOut,
  /** ARP requests and replies received on the wire leg (valid ones; ArpIn counts the mirror's too). */
  ArpRequestsIn,
  ArpRepliesIn,
  /** ICMP host unreachable sent for packets whose neighbour failed (rate-limited as the router's other errors). */
  HostUnreachableSent,
  /**
   * `workers: N`: ARP packets from the wire, or neighbour news (NeighbourNews), not passed on to the
   * other threads' neighbour tables, over RELAY_PER_TICK of each in one neighbour tick (an ARP
   * flood, a sweep of new neighbours); those threads learn them from a later one or ask themselves.
   */
  ArpRelayLimited,
  Count,
}
export const ETH_COUNTER_NAMES = [
  "arp_in", "arp_out", "arp_replies", "gratuitous_out", "arp_not_for_us", "arp_invalid",
  "other_host", "other_ethertype", "runt", "neighbour_held", "tx_errors", "arp_ignored", "arp_rp_filter",
  "arp_requests_out", "arp_requests_in", "arp_replies_in", "host_unreachable_sent", "arp_relay_limited",
] as const;
const ETH_COUNTERS = EthCounter.Count as number;

/** The side MAC of a port (see the module doc): the port's MAC with its first byte 0xfe (0xfa if it was 0xfe): locally administered, unicast. */
export function sideMacOf(mac: Uint8Array): Uint8Array {
  const side = Uint8Array.from(mac);
  side[0] = mac[0] === 0xfe ? 0xfa : 0xfe;
  return side;
}

/** What the stage knows of an Ethernet port. */
export interface EthernetPortSpec {
  readonly index: number;
  readonly name: string;
  readonly mac: Uint8Array;
  /** The port's addresses and prefix lengths. */
  readonly addresses: readonly { readonly addr: number; readonly prefixLength: number }[];
  /** The arp_ignore and arp_announce in force on the port (config.ts: max of conf/all and conf/DEV); 0 when absent. */
  readonly arpIgnore?: number;
  readonly arpAnnounce?: number;
}

/**
 * What ARP source validation needs of the dataplane (the running Dataplane: its routing table
 * and per-port rp_filter, reverse-path.ts).
 */
export interface SourceRoutes {
  readonly routes: RoutingTable;
  readonly rpFilter: Uint8Array;
}

/** What the Ethernet stage needs of a leg: which port and role it is, and a way to write frames it built. */
export interface FrameLeg {
  readonly port: number;
  readonly role: number;
  /**
   * Writes the frames of `batch` whose verdict is `want` as they are (Ethernet headers in place);
   * through queue `queue` of a multi-queue device (`workers: N`, io/forwarder.ts), or the leg's own when absent.
   */
  writeFrames(batch: PacketBatch, verdicts: Int32Array, want: number, queue?: number): number;
}

/** A TUN-leg over a TAP device whose frames pass the Ethernet stage. */
export class EthernetLeg extends TunLeg implements FrameLeg {
  constructor(
    device: TunDevice,
    readonly stage: EthernetStage,
    /** The port's index (changed when a live change renumbers the ports). */
    public port: number,
    readonly role: number,
  ) {
    super(device);
  }

  override readInto(batch: PacketBatch): number {
    const count = super.readInto(batch);
    if (count === 0) return 0;
    return this.stage.receive(this, batch, count);
  }

  override writeSelected(batch: PacketBatch, verdicts: Int32Array, want: number): number {
    return this.stage.send(this, batch, verdicts, want);
  }

  /** A connection's packets through its queue (`workers: N`): the headers first, as `writeSelected`. */
  override writeSelectedToQueue(queue: number, batch: PacketBatch, verdicts: Int32Array, want: number): number {
    return this.stage.send(this, batch, verdicts, want, queue);
  }

  /** Frames with their Ethernet headers in place (the stage's): written as they are. */
  writeFrames(batch: PacketBatch, verdicts: Int32Array, want: number, queue = -1): number {
    return queue < 0 ? super.writeSelected(batch, verdicts, want) : super.writeSelectedToQueue(queue, batch, verdicts, want);
  }
}

/**
 * The Ethernet side of a router: its ports' MACs, the neighbour table, the counters, and the
 * frames it sends itself (ARP replies, probes, gratuitous ARP, packets that waited for ARP).
 */
export class EthernetStage implements NeighbourIo {
  counters: Float64Array;
  /** `legs[port * 2 + role]`, set by `attach` when the router opens (or re-opens) a leg. */
  private readonly legs: (FrameLeg | null)[];
  private ports: (EthernetPortSpec | null)[];
  private sideMacs: (Uint8Array | null)[];
  /** Per port: its directed broadcast addresses (int32 bits), mapped to ff:ff:ff:ff:ff:ff. */
  private broadcasts: Int32Array[];
  /** The router's own addresses (int32 bits), answered on every port (arp_ignore=0). */
  private own = new Set<number>();
  private readonly tx: PacketBatch;
  private readonly txVerdicts = new Int32Array(1);
  private readonly poolVerdicts: Int32Array;
  /** Where `send` copies a batch without room for Ethernet headers. */
  private readonly staging: PacketBatch;
  private readonly stagingVerdicts = new Int32Array(64);
  private readonly multicastMac = new Uint8Array([0x01, 0x00, 0x5e, 0, 0, 0]);
  /**
   * The routes ARP requests' senders are validated against (arp_process -> ip_route_input_noref ->
   * fib_validate_source); the router sets it to the running dataplane (and again after a live
   * change). Null: no validation.
   */
  sources: SourceRoutes | null = null;
  /** Told about each packet whose neighbour failed (the forwarder answers it with host unreachable); returns the errors it sent (0 or 1). */
  onUnreachable: ((buf: Uint8Array, off: number, length: number, port: number) => number) | null = null;
  /** Told about the packets that waited for ARP when they leave (`verdicts[slot] === 0`), for a capture (io/capture.ts). */
  onQueuedSent: ((pool: PacketBatch, verdicts: Int32Array, legIndex: number) => void) | null = null;
  /**
   * `workers: N`: told about every valid ARP packet this thread's wire legs received (a copy of the
   * frame), after it was answered and learnt from here, so the other threads' neighbour tables
   * learn it too (`learnRelayed`; control/ethernet-threads.ts). Null with one thread.
   */
  onArpReceived: ((port: number, frame: Uint8Array) => void) | null = null;
  /**
   * `workers: N`: told what this thread's neighbour table has to tell the others (NeighbourNews),
   * which learn it with `learnNews`. Null with one thread.
   */
  onNeighbourNews: ((news: NeighbourNews) => void) | null = null;
  /** ARP packets, and neighbour news, this thread may still pass on before the next tick (RELAY_PER_TICK each). */
  private relayBudget = RELAY_PER_TICK;
  private newsBudget = RELAY_PER_TICK;

  constructor(
    readonly table: NeighbourTable,
    portCount: number,
    ports: readonly EthernetPortSpec[],
    /** The router's slot headroom (core/batch.ts: virtio_net_hdr length + ETH_HLEN). */
    readonly headroom: number,
    private readonly clock: Clock,
  ) {
    this.counters = new Float64Array(0);
    this.legs = new Array<FrameLeg | null>(portCount * 2).fill(null);
    this.ports = [];
    this.sideMacs = [];
    this.broadcasts = [];
    this.setPorts(portCount, ports);
    this.tx = new PacketBatch(1, 256 + headroom, headroom);
    // Room for a jumbo frame's packet (9000-byte MTUs; a larger one is counted in tx_errors).
    this.staging = new PacketBatch(64, STAGING_PACKET_BYTES + headroom, headroom);
    this.poolVerdicts = new Int32Array(Math.max(table.pool.capacity, table.superPool.capacity));
    table.io = this;
  }

  /** The Ethernet ports (others are TUN) and the router's addresses; called again by a live change. */
  setPorts(portCount: number, ports: readonly EthernetPortSpec[]): void {
    if (this.counters.length < portCount * ETH_COUNTERS) {
      const grown = new Float64Array(portCount * ETH_COUNTERS);
      grown.set(this.counters);
      this.counters = grown;
    }
    this.ports = new Array<EthernetPortSpec | null>(portCount).fill(null);
    this.sideMacs = new Array<Uint8Array | null>(portCount).fill(null);
    this.broadcasts = new Array<Int32Array>(portCount).fill(new Int32Array(0));
    const own = new Set<number>();
    for (const port of ports) {
      this.ports[port.index] = port;
      this.sideMacs[port.index] = sideMacOf(port.mac);
      this.broadcasts[port.index] = Int32Array.from(
        port.addresses.filter((a) => a.prefixLength < 31),
        (a) => (a.addr | ~prefixMaskOf(a.prefixLength)) | 0,
      );
      for (const a of port.addresses) own.add(a.addr | 0);
    }
    this.own = own;
  }

  /**
   * A live change renumbered the ports: port p is now `newIndexOf[p]` (-1: removed). Counters
   * and neighbour entries follow the ports that stay; those of removed ports are dropped.
   */
  renumberPorts(newIndexOf: readonly number[], portCount: number): void {
    const counters = new Float64Array(Math.max(portCount, 1) * ETH_COUNTERS);
    newIndexOf.forEach((to, from) => {
      if (to < 0 || (from + 1) * ETH_COUNTERS > this.counters.length) return;
      counters.set(this.counters.subarray(from * ETH_COUNTERS, (from + 1) * ETH_COUNTERS), to * ETH_COUNTERS);
    });
    this.counters = counters;
    this.table.renumberPorts(newIndexOf);
  }

  /** Adds the router's addresses of TUN ports too (they are local for arp_ignore=0). */
  addOwnAddresses(addresses: Iterable<number>): void {
    for (const a of addresses) this.own.add(a | 0);
  }

  attach(leg: FrameLeg): void {
    this.legs[leg.port * 2 + leg.role] = leg;
  }

  /** Leg `port * 2 + role` is down (a worker let its queue go): nothing is written to it until attached again. */
  detach(port: number, role: number): void {
    this.legs[port * 2 + role] = null;
  }

  macOf(port: number): Uint8Array | null {
    return this.ports[port]?.mac ?? null;
  }

  counter(port: number, field: EthCounter): number {
    return this.counters[port * ETH_COUNTERS + field]!;
  }

  private count(port: number, field: EthCounter): void {
    this.counters[port * ETH_COUNTERS + field] += 1;
  }

  /**
   * Ingress: checks and dispatches the `count` frames just read into `batch`; IPv4 packets stay
   * (moved down over the frames that left), the rest is handled or dropped here. Returns the
   * packets left (also `batch.count`).
   */
  receive(leg: FrameLeg, batch: PacketBatch, count: number): number {
    const port = leg.port;
    const data = batch.data;
    const own = leg.role === ETH_ROLE_WIRE ? this.ports[port]?.mac : this.sideMacs[port];
    if (own === undefined || own === null) {
      batch.count = 0;
      return 0;
    }
    let kept = 0;
    for (let i = 0; i < count; i++) {
      const length = batch.lengths[i]!;
      const eth = batch.offsetOf(i) - ETH_HLEN;
      if (length === 0) {
        this.count(port, EthCounter.Runt);
        continue;
      }
      // eth_type_trans: PACKET_HOST, PACKET_BROADCAST/MULTICAST, else PACKET_OTHERHOST.
      const toUs = macEquals(data, eth, own);
      if (!toUs && !ethernetDestIsMulticast(data, eth)) {
        this.count(port, EthCounter.OtherHost);
        continue;
      }
      const type = ethernetType(data, eth);
      if (type === ETH_P_IP) {
        if (kept !== i) {
          const from = i * batch.slotSize;
          data.copyWithin(kept * batch.slotSize, from, from + batch.headroom + length);
          batch.lengths[kept] = length;
        }
        kept++;
        continue;
      }
      if (type === ETH_P_ARP) {
        if (leg.role !== ETH_ROLE_WIRE) this.arpFromMirror(leg, data, eth, length);
        else if (this.arpFromWire(port, leg, data, eth, length, toUs) && this.onArpReceived !== null) this.relay(port, data, eth, length);
        continue;
      }
      this.count(port, EthCounter.OtherEthertype);
    }
    batch.count = kept;
    return kept;
  }

  /**
   * arp_process on the wire leg: validity; a request for one of the router's addresses creates
   * or updates the sender's entry (neigh_event_ns, STALE) and is answered; otherwise an existing
   * entry of the sender is updated (REACHABLE for a reply to our MAC, STALE else), overriding a
   * different address only past locktime or for a gratuitous ARP (arp_accept=0: never created).
   * `leg` null: an ARP packet another thread received and handled (`learnRelayed`), which this
   * thread's table learns from by the same rules, without answering or counting it again.
   * Returns whether it was a valid ARP packet (one to pass on to the other threads).
   */
  private arpFromWire(port: number, leg: FrameLeg | null, data: Uint8Array, eth: number, length: number, toUs: boolean): boolean {
    const counted = leg !== null;
    const arp = eth + ETH_HLEN;
    if (!arpValid(data, arp, length)) {
      if (counted) this.count(port, EthCounter.ArpInvalid);
      return false;
    }
    const sip = arpSenderIp(data, arp);
    const tip = arpTargetIp(data, arp);
    // arp_process: "Check for bad requests for 127.x.x.x and requests for multicast addresses."
    if (tip >>> 28 === 0xe || tip >>> 24 === 127 || sip >>> 28 === 0xe) {
      if (counted) this.count(port, EthCounter.ArpInvalid);
      return false;
    }
    const op = arpOperation(data, arp);
    if (counted) {
      this.count(port, EthCounter.ArpIn);
      this.count(port, op === ARPOP_REQUEST ? EthCounter.ArpRequestsIn : EthCounter.ArpRepliesIn);
    }
    const sha = arpSenderMacOffset(arp);
    const spec = this.ports[port];
    if (spec === null || spec === undefined) return false;
    // The sender claims one of our addresses: nothing is learnt (a conflicting sender is not
    // believed: fib_validate_source finds a local source martian).
    if (this.own.has(sip | 0)) return true;
    if (sip === 0) {
      // arp_process "Special case: IPv4 duplicate address detection packet" (RFC 5227 probe):
      // answered if the target is local and arp_ignore allows it; nothing learnt, no routing.
      if (leg !== null && op === ARPOP_REQUEST && this.own.has(tip | 0)) {
        if (this.arpIgnored(spec, 0, tip)) this.count(port, EthCounter.ArpIgnored);
        else this.reply(leg, spec, data, sha, tip, sip);
      }
      return true;
    }
    if (op === ARPOP_REQUEST) {
      // arp_process routes the request (ip_route_input_noref(tip, sip)): a sender that fails
      // source validation (rp_filter on the port, or a martian source) gets no answer, and the
      // request only refreshes an existing entry below (the "Update our ARP tables" part).
      if (!this.senderValid(sip, port)) {
        if (counted) this.count(port, EthCounter.ArpRpFilter);
      } else if (this.own.has(tip | 0)) {
        // RTN_LOCAL: arp_ignore decides; ignored requests teach nothing (out_consume_skb).
        if (this.arpIgnored(spec, sip, tip)) {
          if (counted) this.count(port, EthCounter.ArpIgnored);
          return true;
        }
        this.table.update(port, sip, data, sha, NUD_STALE, true, false);
        if (leg !== null) this.reply(leg, spec, data, sha, tip, sip);
        return true;
      }
    }
    // arp_is_garp: sender and target the same address (a reply's target MAC must be broadcast).
    const gratuitous = sip === tip && (op === ARPOP_REQUEST || ethernetDestIsBroadcast(data, arpTargetMacOffset(arp)));
    if (counted && op === ARPOP_REQUEST && !gratuitous && !this.own.has(tip | 0)) this.count(port, EthCounter.ArpNotForUs);
    const state = op === ARPOP_REPLY && toUs ? NUD_REACHABLE : NUD_STALE;
    // An INCOMPLETE entry completed (the reply to a request: this thread's, or another's it waited
    // for): Linux's one table now holds the neighbour for every CPU, so every thread's must.
    if (this.table.update(port, sip, data, sha, state, false, gratuitous)) {
      this.tell({ kind: "resolved", port, ip: sip, mac: data.slice(sha, sha + 6), state });
    }
    return true;
  }

  /** `workers: N`: passes `news` to the other threads (`onNeighbourNews`), within this tick's budget. */
  private tell(news: NeighbourNews): void {
    if (this.onNeighbourNews === null) return;
    if (this.newsBudget <= 0) {
      this.count(news.port, EthCounter.ArpRelayLimited);
      return;
    }
    this.newsBudget--;
    this.onNeighbourNews(news);
  }

  /**
   * `workers: N`: news from another thread's neighbour table (NeighbourNews). `resolving`: this
   * table's entry waits for that thread's request (NeighbourTable.learnResolving); `resolved`: the
   * entry is created or updated with the address as a solicited reply would (neigh_update, with
   * arp_process's locktime), and the packets this thread queued for it leave through this thread's
   * queue. Nothing is sent on the wire, counted, or told again. Control plane: between two batches.
   */
  learnNews(news: NeighbourNews): void {
    const spec = this.ports[news.port];
    if (spec === null || spec === undefined) return;
    if (news.kind === "resolving") this.table.learnResolving(news.port, news.ip);
    else this.table.update(news.port, news.ip, news.mac, 0, news.state, true, false);
  }

  /**
   * `workers: N`: passes a copy of the ARP frame at data[eth] to the other threads (`onArpReceived`),
   * within this tick's budget. A copy per ARP packet: ARP is rare, and RELAY_PER_TICK bounds it.
   */
  private relay(port: number, data: Uint8Array, eth: number, length: number): void {
    if (this.relayBudget <= 0) {
      this.count(port, EthCounter.ArpRelayLimited);
      return;
    }
    this.relayBudget--;
    this.onArpReceived!(port, data.slice(eth, eth + ETH_HLEN + length));
  }

  /**
   * `workers: N`: an ARP frame that another thread received on `port`'s wire and answered: this
   * thread's neighbour table learns from it as Linux's arp_process would (a reply completes an
   * INCOMPLETE entry here too, and the packets this thread queued for it leave through this
   * thread's queue; a request for a router address creates the sender's entry). Nothing is
   * answered or counted again. Control plane: between two batches.
   */
  learnRelayed(port: number, frame: Uint8Array): void {
    const spec = this.ports[port];
    if (spec === null || spec === undefined || frame.length < ETH_HLEN) return;
    this.arpFromWire(port, null, frame, 0, frame.length - ETH_HLEN, macEquals(frame, 0, spec.mac));
  }

  /** The ARP reply to a request for `tip` from `sip`, whose sender MAC is at data[sha]: with the port's MAC. */
  private reply(leg: FrameLeg, spec: EthernetPortSpec, data: Uint8Array, sha: number, tip: number, sip: number): void {
    this.sendArp(leg, data, sha, ARPOP_REPLY, spec.mac, tip, data, sha, sip);
    this.count(leg.port, EthCounter.ArpReplies);
  }

  /**
   * net/ipv4/arp.c arp_ignore(): whether a request from `sip` for the local address `tip` goes
   * unanswered on the port. 0 and 3 answer (qnat's addresses are all scope global, so 3's "not
   * for scope host addresses" changes nothing); 1 needs `tip` on this port; 2 also needs `sip`
   * on the subnet of one of its addresses holding `tip` (inet_confirm_addr: `sip` 0 skips that);
   * 8 answers nothing.
   */
  private arpIgnored(spec: EthernetPortSpec, sip: number, tip: number): boolean {
    const mode = spec.arpIgnore ?? 0;
    if (mode === 0 || mode === 3) return false;
    if (mode === 8) return true;
    if (!this.isPortAddress(spec.index, tip)) return true;
    if (mode === 1 || sip === 0) return false;
    for (const a of spec.addresses) {
      const mask = prefixMaskOf(a.prefixLength);
      if (((a.addr ^ tip) & mask) === 0 && ((a.addr ^ sip) & mask) === 0) return false;
    }
    return true;
  }

  /**
   * ip_route_input_noref's source validation of an ARP request's sender: a martian source
   * (loopback, 0/8, the limited broadcast: ip_route_input_slow, whatever rp_filter says), then
   * fib_validate_source with the port's rp_filter (reverse-path.ts).
   */
  private senderValid(sip: number, port: number): boolean {
    if (isMartianSource(sip)) return false;
    const sources = this.sources;
    if (sources === null) return true;
    return validateSource(sources.routes, sources.rpFilter[port] ?? 0, sip | 0, port) === DropReason.None;
  }

  /**
   * ARP from the router namespace's kernel on the mirror: every request is answered with the
   * side MAC (the kernel sends everything for qnat to route), except for the port's own
   * addresses and gratuitous announcements; replies need no action (qnat never asks it).
   */
  private arpFromMirror(leg: FrameLeg, data: Uint8Array, eth: number, length: number): void {
    const port = leg.port;
    const arp = eth + ETH_HLEN;
    if (!arpValid(data, arp, length)) {
      this.count(port, EthCounter.ArpInvalid);
      return;
    }
    this.count(port, EthCounter.ArpIn);
    if (arpOperation(data, arp) !== ARPOP_REQUEST) return;
    const sip = arpSenderIp(data, arp);
    const tip = arpTargetIp(data, arp);
    if (tip === sip || tip >>> 28 === 0xe || this.isPortAddress(port, tip)) return;
    const sha = arpSenderMacOffset(arp);
    this.sendArp(leg, data, sha, ARPOP_REPLY, this.sideMacs[port]!, tip, data, sha, sip);
  }

  private isPortAddress(port: number, ip: number): boolean {
    const spec = this.ports[port];
    if (spec === null || spec === undefined) return false;
    for (const a of spec.addresses) if (a.addr >>> 0 === ip >>> 0) return true;
    return false;
  }

  /** Builds one ARP frame (padded to ETH_ZLEN) in the stage's own batch and writes it to `leg`. */
  private sendArp(
    leg: FrameLeg,
    dest: Uint8Array,
    destOffset: number,
    op: number,
    senderMac: Uint8Array,
    senderIp: number,
    targetMac: Uint8Array,
    targetMacOffset: number,
    targetIp: number,
  ): void {
    const tx = this.tx;
    const at = tx.offsetOf(0);
    const payload = ETH_ZLEN - ETH_HLEN;
    // The frame is built before anything of `dest`/`targetMac` (which may be the received frame) is overwritten.
    tx.data.fill(0, 0, at + payload);
    writeArp(tx.data, at, op, senderMac, senderIp, targetMac, targetMacOffset, targetIp);
    writeEthernetHeader(tx.data, at - ETH_HLEN, dest, destOffset, senderMac, ETH_P_ARP);
    tx.lengths[0] = payload;
    tx.count = 1;
    this.txVerdicts[0] = 0;
    if (this.writeOwn(leg, tx, this.txVerdicts) > 0) this.count(leg.port, EthCounter.ArpOut);
  }

  /**
   * Writes frames the stage built: a leg that is down (its device gone, until the supervisor
   * re-creates it) throws, which is counted here and goes no further (a timer or another leg's
   * read must not fail for it; the forwarding loop notices the leg itself).
   */
  private writeOwn(leg: FrameLeg, batch: PacketBatch, verdicts: Int32Array): number {
    try {
      return leg.writeFrames(batch, verdicts, 0);
    } catch {
      this.count(leg.port, EthCounter.TxErrors);
      return 0;
    }
  }

  /**
   * Gratuitous ARP for each address of `port` (or only `only`), as Linux's arp_notify and
   * Neutron's `arping -U` announce an address: a broadcast request with sender and target the
   * address, target MAC zero (arp_send with a NULL target_hw).
   */
  announce(port: number, only?: readonly number[]): number {
    const leg = this.legs[port * 2 + ETH_ROLE_WIRE];
    const spec = this.ports[port];
    if (leg === null || leg === undefined || spec === null || spec === undefined) return 0;
    let sent = 0;
    for (const a of spec.addresses) {
      if (only !== undefined && !only.some((x) => x >>> 0 === a.addr >>> 0)) continue;
      this.sendArp(leg, BROADCAST_MAC, 0, ARPOP_REQUEST, spec.mac, a.addr >>> 0, ZERO_MAC, 0, a.addr >>> 0);
      this.count(port, EthCounter.GratuitousOut);
      sent++;
    }
    return sent;
  }

  /**
   * Egress of a leg (`EthernetLeg.writeSelected`): the Ethernet headers, then the frames. A batch
   * without room for the headers (the pipeline's released fragments, headroom 0; its fragment
   * output, headroom 10) is first copied, with its next hops, into the stage's staging batch.
   */
  send(leg: FrameLeg, batch: PacketBatch, verdicts: Int32Array, want: number, queue = -1): number {
    if (batch.headroom === this.headroom) {
      this.addHeaders(leg, batch, verdicts, want);
      return leg.writeFrames(batch, verdicts, want, queue);
    }
    // Rare path.
    const staging = this.staging;
    let written = 0;
    let i = 0;
    while (i < batch.count) {
      i = staging.takeSelected(batch, verdicts, want, i);
      for (let r = 0; r < staging.refused; r++) this.count(leg.port, EthCounter.TxErrors);
      if (staging.count === 0) continue;
      const stagingVerdicts = this.stagingVerdicts.fill(want);
      this.addHeaders(leg, staging, stagingVerdicts, want);
      written += leg.writeFrames(staging, stagingVerdicts, want, queue);
    }
    return written;
  }

  /**
   * Egress: writes the Ethernet header of every packet of `batch` selected for `leg`; a packet
   * whose neighbour is unresolved is held by the neighbour table and its verdict becomes
   * VERDICT_STOLEN. Allocation-free for a resolved neighbour.
   */
  addHeaders(leg: FrameLeg, batch: PacketBatch, verdicts: Int32Array, want: number): void {
    const port = leg.port;
    const spec = this.ports[port];
    if (spec === null || spec === undefined || batch.headroom !== this.headroom) return;
    const data = batch.data;
    const mac = spec.mac;
    if (leg.role === ETH_ROLE_MIRROR) {
      const side = this.sideMacs[port]!;
      for (let i = 0; i < batch.count; i++) {
        if (verdicts[i] !== want) continue;
        writeEthernetHeader(data, batch.offsetOf(i) - ETH_HLEN, mac, 0, side, ETH_P_IP);
      }
      return;
    }
    const table = this.table;
    const macs = table.macs;
    const broadcasts = this.broadcasts[port]!;
    let now = -1;
    for (let i = 0; i < batch.count; i++) {
      if (verdicts[i] !== want) continue;
      const eth = batch.offsetOf(i) - ETH_HLEN;
      const nextHop = batch.nextHops[i]! | 0;
      // arp_mc_map: multicast and broadcast next hops have their MAC without ARP.
      if (nextHop >>> 28 === 0xe) {
        const m = this.multicastMac;
        m[3] = (nextHop >>> 16) & 0x7f;
        m[4] = nextHop >>> 8;
        m[5] = nextHop;
        writeEthernetHeader(data, eth, m, 0, mac, ETH_P_IP);
        continue;
      }
      if (nextHop === -1 || isIn(broadcasts, nextHop)) {
        writeEthernetHeader(data, eth, BROADCAST_MAC, 0, mac, ETH_P_IP);
        continue;
      }
      if (now < 0) now = this.clock.now();
      const entry = table.resolve(port, nextHop, now, batch, i);
      if (entry === NEIGH_HELD) {
        verdicts[i] = VERDICT_STOLEN;
        this.count(port, EthCounter.NeighbourHeld);
        continue;
      }
      writeEthernetHeader(data, eth, macs, entry * 6, mac, ETH_P_IP);
    }
  }

  /**
   * NeighbourIo: an ARP request for `targetIp` (arp_solicit). Its sender address follows the
   * port's arp_announce: 0, the waiting packet's source (`packetSource`, 0 for none) if it is one
   * of the router's addresses; 1, only if that address is also on the target's subnet of this
   * port (inet_addr_onlink); 2, or when neither applies, the port's address on the target's
   * subnet, else its first (inet_select_addr).
   */
  solicit(port: number, targetIp: number, unicastMac: boolean, entry: number, packetSource: number): void {
    const leg = this.legs[port * 2 + ETH_ROLE_WIRE];
    const spec = this.ports[port];
    if (leg === null || leg === undefined || spec === null || spec === undefined) return;
    const announce = spec.arpAnnounce ?? 0;
    let source = 0;
    if (packetSource !== 0 && announce < 2 && this.own.has(packetSource | 0)) {
      if (announce === 0 || this.onLink(spec, targetIp, packetSource)) source = packetSource;
    }
    if (source === 0) {
      source = spec.addresses[0]?.addr ?? 0;
      for (const a of spec.addresses) {
        const mask = prefixMaskOf(a.prefixLength);
        if (((a.addr ^ targetIp) & mask) === 0) {
          source = a.addr;
          break;
        }
      }
    }
    const dest = unicastMac ? this.table.macs : BROADCAST_MAC;
    this.sendArp(leg, dest, unicastMac ? entry * 6 : 0, ARPOP_REQUEST, spec.mac, source >>> 0, ZERO_MAC, 0, targetIp);
    this.count(port, EthCounter.ArpRequestsOut);
  }

  /** inet_addr_onlink: one of the port's subnets holds both `a` and `b`. */
  private onLink(spec: EthernetPortSpec, a: number, b: number): boolean {
    for (const x of spec.addresses) {
      const mask = prefixMaskOf(x.prefixLength);
      if (((x.addr ^ a) & mask) === 0 && ((x.addr ^ b) & mask) === 0) return true;
    }
    return false;
  }

  /** NeighbourIo: the packets that waited for `entry` leave with its address. */
  sendQueued(port: number, entry: number, pool: PacketBatch, slots: Int32Array, count: number): void {
    const leg = this.legs[port * 2 + ETH_ROLE_WIRE];
    const spec = this.ports[port];
    if (leg === null || leg === undefined || spec === null || spec === undefined) return;
    const verdicts = this.poolVerdicts.fill(-1);
    for (let k = 0; k < count; k++) {
      const slot = slots[k]!;
      verdicts[slot] = 0;
      writeEthernetHeader(pool.data, pool.offsetOf(slot) - ETH_HLEN, this.table.macs, entry * 6, spec.mac, ETH_P_IP);
    }
    this.writeOwn(leg, pool, verdicts);
    this.onQueuedSent?.(pool, verdicts, port * 2 + ETH_ROLE_WIRE);
  }

  /** NeighbourIo: this thread's table started resolving `targetIp` (its first request sent): the other threads wait for its reply. */
  resolving(port: number, targetIp: number): void {
    this.tell({ kind: "resolving", port, ip: targetIp });
  }

  /** NeighbourIo: a queued packet whose neighbour failed. */
  unreachable(port: number, pool: PacketBatch, slot: number): void {
    const sent = this.onUnreachable?.(pool.data, pool.offsetOf(slot), pool.lengths[slot]!, port) ?? 0;
    this.counters[port * ETH_COUNTERS + EthCounter.HostUnreachableSent] += sent;
  }

  /** The neighbour timers (neigh/table.ts tick); the router calls it every 100 ms. */
  tick(): void {
    this.relayBudget = RELAY_PER_TICK;
    this.newsBudget = RELAY_PER_TICK;
    this.table.tick();
  }

  /** `ip neigh`-style lines, one per entry (control plane). */
  format(portNames: readonly string[]): string {
    return this.table
      .view()
      .map((row) => {
        const dev = portNames[row.port] ?? `port${row.port}`;
        return row.lladdr === null ? `${row.dst} dev ${dev} ${row.state}` : `${row.dst} dev ${dev} lladdr ${row.lladdr} ${row.state}`;
      })
      .map((line) => `${line}\n`)
      .join("");
  }
}

function prefixMaskOf(prefixLength: number): number {
  return prefixLength === 0 ? 0 : (~0 << (32 - prefixLength)) | 0;
}

function isIn(values: Int32Array, value: number): boolean {
  for (let i = 0; i < values.length; i++) if (values[i] === value) return true;
  return false;
}

