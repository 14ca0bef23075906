/**
 * JIT warm-up. V8 compiles the per-packet code only after it has run it many times; until then a
 * packet costs tens of microseconds instead of a few hundred nanoseconds, which a user sees as a
 * slow first ping through a router that just started. So before the router goes live, a scratch
 * dataplane built from the same config (its own conntrack, NAT state and counters: nothing is
 * shared with the live one) forwards a few thousand synthetic packets of every kind the live one
 * will see: TCP handshakes, data and teardowns, UDP requests, pings, each answered by a reply
 * built from the translated packet that left (so the reply direction and the NAT's reverse
 * translation run too), router-originated traffic through the mirrors, and an expired TTL (the
 * router's own ICMP errors). The live dataplane then starts with that code already optimised.
 *
 * The scratch dataplane uses the live one's batch geometry (headroom, slot size) and the system
 * clock, so the code is warmed for the same shapes it will meet.
 */
import { formatIpv4, type Cidr } from "../core/addr.js";
import { PacketBatch } from "../core/batch.js";
import type { RouterConfig } from "../config/config.js";
import { buildPacket, decodePacket, type PacketSpec } from "../wire/build.js";
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN } from "../wire/packet-info.js";
import { buildDataplane } from "./from-config.js";
import type { Dataplane } from "./pipeline.js";
import { LEG_MIRROR, LEG_WIRE } from "./port.js";

export interface WarmUpOptions {
  /** Bytes before each packet in a slot (the TUN legs' virtio_net_hdr length). Default 0. */
  headroom?: number;
  /** Slot size of the receive batch. Default 2048 + headroom. */
  slotSize?: number;
  /** Packets to send at least (whole conversations, so a few more). Default 9000. */
  packets?: number;
}

export interface WarmUpReport {
  packets: number;
  forwarded: number;
  /** ICMP errors the scratch router generated. */
  generated: number;
  /** Packets that left through each port's wire, by port index. */
  perPort: number[];
  connections: number;
  ms: number;
}

/** TEST-NET-2 (RFC 5737): a host beyond every port, reached by whatever route covers it. */
const REMOTE = "198.51.100.7";
const BATCH = 16;

export function warmUp(config: RouterConfig, options: WarmUpOptions = {}): WarmUpReport {
  const started = performance.now();
  const headroom = options.headroom ?? 0;
  const slotSize = options.slotSize ?? 2048 + headroom;
  const budget = options.packets ?? 9000;
  const dataplane = buildDataplane(config, { conntrackCapacity: 16_384 });
  const runner = new Runner(dataplane, headroom, slotSize, config.ports.length);

  // Who talks: on each port a neighbour (a host address of its first subnet that is not the
  // router's), the router itself through each mirror, and a remote host arriving on any port.
  const ports = config.ports.map((port, index) => {
    const primary = port.addresses[0];
    return { index, neighbour: primary === undefined ? undefined : neighbourOf(primary), addresses: port.addresses.map((a) => formatIpv4(a.addr)) };
  });
  const destinations = [REMOTE, ...ports.flatMap((p) => [...p.addresses, ...(p.neighbour ? [p.neighbour] : [])])];

  // Every conversation once, per port, then interleaved port by port: a router with many ports
  // spends the budget on all of them rather than on the first ones (the number of conversations
  // grows with ports x addresses; the budget keeps the warm-up at a fraction of a second).
  const perPort = ports.map((port) => {
    const list: Conversation[] = [];
    for (const src of [...(port.neighbour ? [port.neighbour] : []), REMOTE]) {
      for (const dst of destinations) if (dst !== src) list.push({ port: port.index, leg: LEG_WIRE, src, dst });
    }
    const own = port.addresses[0];
    if (own !== undefined) for (const dst of destinations) if (dst !== own) list.push({ port: port.index, leg: LEG_MIRROR, src: own, dst });
    if (port.neighbour) list.push({ port: port.index, leg: LEG_WIRE, src: port.neighbour, dst: REMOTE, ttlExpires: true });
    return list;
  });
  const conversations: Conversation[] = [];
  for (let i = 0; perPort.some((list) => i < list.length); i++) {
    for (const list of perPort) if (i < list.length) conversations.push(list[i]!);
  }

  let sport = 20_000;
  for (let i = 0; conversations.length > 0 && runner.packets < budget; i = (i + 1) % conversations.length) {
    const c = conversations[i]!;
    sport = sport >= 60_000 ? 20_000 : sport + 1;
    if (c.ttlExpires) {
      runner.send(c.port, c.leg, { protocol: "udp", src: c.src, dst: c.dst, sport: 33434, dport: 33434, ttl: 1 });
    } else if (c.leg === LEG_MIRROR) {
      runner.udpExchange(c.port, c.leg, c.src, c.dst, sport);
    } else {
      runner.tcpConversation(c.port, c.leg, c.src, c.dst, sport);
      runner.udpExchange(c.port, c.leg, c.src, c.dst, sport);
      runner.ping(c.port, c.leg, c.src, c.dst, sport);
    }
  }
  return {
    packets: runner.packets,
    forwarded: runner.forwarded,
    generated: runner.generated,
    perPort: runner.perPort,
    connections: dataplane.conntrack.counters.created,
    ms: performance.now() - started,
  };
}

interface Conversation {
  port: number;
  leg: number;
  src: string;
  dst: string;
  /** A single UDP packet with TTL 1 instead: the router's own ICMP time exceeded. */
  ttlExpires?: boolean;
}

/**
 * A host address of `cidr`'s subnet other than the router's own: the first usable one, else the
 * next; on a /31 the other address (RFC 3021); none on a /32.
 */
function neighbourOf(cidr: Cidr): string | undefined {
  if (cidr.prefixLength >= 32) return undefined;
  const own = cidr.addr >>> 0;
  if (cidr.prefixLength === 31) return formatIpv4((own ^ 1) >>> 0);
  const hostBits = (1 << (32 - cidr.prefixLength)) - 1;
  const base = (own & ~hostBits) >>> 0;
  return formatIpv4(base + 1 === own ? base + 2 : base + 1);
}

/** Sends synthetic packets through a dataplane and answers what leaves. */
class Runner {
  packets = 0;
  forwarded = 0;
  generated = 0;
  readonly perPort: number[];
  private readonly batch: PacketBatch;
  private readonly verdicts = new Int32Array(BATCH);
  private readonly errors: PacketBatch;
  private readonly errorVerdicts = new Int32Array(BATCH);
  private readonly payload = new Uint8Array(64);

  constructor(
    private readonly dataplane: Dataplane,
    headroom: number,
    slotSize: number,
    ports: number,
  ) {
    // as the Forwarder's receive batch, so the fast path is warmed with its checksum kernel
    this.batch = new PacketBatch(BATCH, slotSize, headroom, { lanes: true });
    // As the Forwarder's batch of the router's own ICMP errors: small slots, the legs' headroom.
    this.errors = new PacketBatch(BATCH, Math.min(slotSize, 2048 + headroom), headroom);
    this.perPort = new Array<number>(ports).fill(0);
  }

  /** One packet in on `port`'s `leg`; what left (as a spec to answer) and the port it left on, if any. */
  send(port: number, leg: number, spec: PacketSpec): { reply: PacketSpec; port: number } | undefined {
    const batch = this.batch;
    batch.clear();
    batch.push(buildPacket({ payload: this.payload.subarray(0, 16), ...spec }));
    this.errors.clear();
    this.dataplane.processBatch(batch, port, leg, this.verdicts, this.errors, this.errorVerdicts);
    this.packets++;
    this.generated += this.errors.count;
    const verdict = this.verdicts[0]!;
    if (verdict < 0 || (verdict & 1) !== LEG_WIRE) return undefined;
    this.forwarded++;
    this.perPort[verdict >> 1]!++;
    const out = decodePacket(batch.copyOut(0));
    const reply: PacketSpec = { protocol: out.protocol, src: out.dst, dst: out.src, sport: out.dport, dport: out.sport };
    if (out.protocol === "icmp") Object.assign(reply, { icmpType: 0, icmpId: out.icmpId, icmpSeq: out.icmpSeq });
    return { reply, port: verdict >> 1 };
  }

  tcpConversation(port: number, leg: number, src: string, dst: string, sport: number): void {
    const flow = { protocol: "tcp" as const, src, dst, sport, dport: 80 };
    const out = this.send(port, leg, { ...flow, tcpFlags: TCP_SYN, seq: 1000 });
    const answer = (flags: number): void => {
      if (out) this.send(out.port, LEG_WIRE, { ...out.reply, tcpFlags: flags, seq: 5000, ack: 1001 });
    };
    answer(TCP_SYN | TCP_ACK);
    this.send(port, leg, { ...flow, tcpFlags: TCP_ACK, seq: 1001, ack: 5001 });
    for (let i = 0; i < 3; i++) {
      this.send(port, leg, { ...flow, tcpFlags: TCP_ACK | TCP_PSH, seq: 1001, ack: 5001 });
      answer(TCP_ACK | TCP_PSH);
    }
    this.send(port, leg, { ...flow, tcpFlags: TCP_FIN | TCP_ACK, seq: 1017, ack: 5001 });
    answer(TCP_FIN | TCP_ACK);
    this.send(port, leg, { ...flow, tcpFlags: TCP_ACK, seq: 1018, ack: 5002 });
  }

  udpExchange(port: number, leg: number, src: string, dst: string, sport: number): void {
    for (let i = 0; i < 3; i++) {
      const out = this.send(port, leg, { protocol: "udp", src, dst, sport, dport: 53 });
      if (out) this.send(out.port, LEG_WIRE, out.reply);
    }
  }

  ping(port: number, leg: number, src: string, dst: string, id: number): void {
    for (let seq = 1; seq <= 3; seq++) {
      const out = this.send(port, leg, { protocol: "icmp", src, dst, icmpType: 8, icmpId: id, icmpSeq: seq });
      if (out) this.send(out.port, LEG_WIRE, out.reply);
    }
  }
}
