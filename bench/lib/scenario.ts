/**
 * Benchmark scenarios on the seed's router (examples/seed.yaml): pre-built packet batches for
 * established SNAT flows, established inbound TCP through the floating-IP DNAT, and new
 * connections. Everything here is set-up code (allocates freely); the measured loops live in
 * hotpath.ts and only copy pre-built bytes and call Dataplane.processBatch.
 */
import { PacketBatch } from "../../src/core/batch.js";
import type { Clock } from "../../src/core/clock.js";
import { XorShift32 } from "../../src/core/rng.js";
import { readFileSync } from "node:fs";
import { parseConfig } from "../../src/config/config.js";
import { type BuildOptions, buildDataplane } from "../../src/dataplane/from-config.js";
import type { Dataplane } from "../../src/dataplane/pipeline.js";
import { LEG_WIRE, egressOf } from "../../src/dataplane/port.js";
import { formatIpv4 } from "../../src/core/addr.js";
import { buildPacket } from "../../src/wire/build.js";
import { read16, read32 } from "../../src/wire/bytes.js";
import { TCP_ACK, TCP_PSH, TCP_SYN } from "../../src/wire/packet-info.js";

/** Packets per batch (what one TUN read/recvmmsg hands the pipeline). */
export const BATCH = 256;
/** Slot size of the bench batches: 64-byte packets plus headroom. */
export const SLOT = 128;
/** The size of every bench packet: a 64-byte IPv4 datagram (UDP: 36 payload bytes; TCP: 24). */
export const PACKET_BYTES = 64;

export const TENANT_PORT = 0; // qr-694450d6-f6
export const GATEWAY_PORT = 1; // qg-e76de35e-90

/** The system clock plus an offset the bench may advance (to expire entries). One shape, monomorphic. */
export class BenchClock implements Clock {
  offset = 0;
  now(): number {
    return (performance.timeOrigin + performance.now()) / 1000 + this.offset;
  }
}

export interface Router {
  readonly dataplane: Dataplane;
  readonly clock: BenchClock;
}

/**
 * The seed's router; `renumbered`: with every address at 128.0.0.0 or above (tenants 172.16.0.0/24
 * behind 198.51.100.2, floating IP 198.51.100.129), where a uint32 address is a heap number in V8.
 */
export function seedRouter(conntrackCapacity: number, renumbered = false, options: BuildOptions = {}): Router {
  const clock = new BenchClock();
  let text = readFileSync("examples/seed.yaml", "utf8");
  if (renumbered) text = text.replaceAll("10.0.0.", "172.16.0.").replaceAll("9.186.100.", "198.51.100.");
  const dataplane = buildDataplane(parseConfig(text, "examples/seed.yaml"), { clock, rng: new XorShift32(7), conntrackCapacity, ...options });
  return { dataplane, clock };
}

/** The tenant network of seedRouter: 10.0.0.0/24, or 172.16.0.0/24 renumbered. */
const TENANT_NET = 0x0a000000;
const TENANT_NET_RENUMBERED = 0xac100000;

/** A flow's endpoints, as numbers. */
export interface FlowSet {
  readonly count: number;
  readonly src: Uint32Array;
  readonly dst: Uint32Array;
  readonly sport: Uint16Array;
  readonly dport: Uint16Array;
}

/** A random public unicast address outside the seed's networks (11.0.0.0 - 223.255.255.254). */
function randomPublic(rng: XorShift32): number {
  for (;;) {
    const addr = (0x0b000000 + (rng.next() % (0xe0000000 - 0x0b000000))) >>> 0;
    const a = addr >>> 24;
    const b = (addr >>> 16) & 255;
    if (a === 127 || (a === 169 && b === 254) || (a === 172 && b >= 16 && b < 32) || (a === 192 && b === 168)) continue;
    if ((addr & 255) === 0 || (addr & 255) === 255) continue;
    return addr;
  }
}

/** Tenant flows 10.0.0.3-254:sport (`net` 172.16.0.0: 172.16.0.3-254) -> random public host, UDP 53/443 (SNAT). */
export function tenantFlows(count: number, seed: number, net = TENANT_NET): FlowSet {
  const rng = new XorShift32(seed);
  const src = new Uint32Array(count);
  const dst = new Uint32Array(count);
  const sport = new Uint16Array(count);
  const dport = new Uint16Array(count);
  for (let i = 0; i < count; i++) {
    src[i] = (net | (3 + (i % 252))) >>> 0;
    sport[i] = 1024 + (Math.floor(i / 252) % 60000);
    dst[i] = randomPublic(rng);
    dport[i] = rng.next() & 1 ? 53 : 443;
  }
  return { count, src, dst, sport, dport };
}

/** External clients random-public:sport -> the floating IP 9.186.100.129:80 (DNAT to 10.0.0.2). */
export function inboundFlows(count: number, seed: number): FlowSet {
  const rng = new XorShift32(seed);
  const src = new Uint32Array(count);
  const dst = new Uint32Array(count).fill(0x09ba6481);
  const sport = new Uint16Array(count);
  const dport = new Uint16Array(count).fill(80);
  for (let i = 0; i < count; i++) {
    src[i] = randomPublic(rng);
    sport[i] = 1024 + (rng.next() % 64000);
  }
  return { count, src, dst, sport, dport };
}

export function udpPacket(src: number, dst: number, sport: number, dport: number, length = PACKET_BYTES): Uint8Array {
  return buildPacket({ protocol: "udp", src: formatIpv4(src), dst: formatIpv4(dst), sport, dport, length });
}

export function tcpPacket(src: number, dst: number, sport: number, dport: number, flags: number): Uint8Array {
  return buildPacket({ protocol: "tcp", src: formatIpv4(src), dst: formatIpv4(dst), sport, dport, tcpFlags: flags, length: PACKET_BYTES });
}

/**
 * Packets laid out in bench slots, in `order`, cut into pre-made views of BATCH packets (so the
 * measured loop copies a batch with one `set` and allocates nothing).
 */
export class PacketTemplate {
  readonly bytes: Uint8Array;
  readonly views: Uint8Array[] = [];
  readonly batches: number;

  /** `slot`: the bytes per packet, as the Driver's batch that runs the views. */
  constructor(packets: readonly Uint8Array[], order: Uint32Array, slot = SLOT) {
    this.batches = Math.floor(order.length / BATCH);
    this.bytes = new Uint8Array(this.batches * BATCH * slot);
    for (let i = 0; i < this.batches * BATCH; i++) this.bytes.set(packets[order[i]!]!, i * slot);
    for (let b = 0; b < this.batches; b++) this.views.push(this.bytes.subarray(b * BATCH * slot, (b + 1) * BATCH * slot));
  }
}

export function shuffled(count: number, seed: number): Uint32Array {
  const rng = new XorShift32(seed);
  const order = new Uint32Array(count);
  for (let i = 0; i < count; i++) order[i] = i;
  for (let i = count - 1; i > 0; i--) {
    const j = rng.next() % (i + 1);
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  return order;
}

/** Reusable batch + verdict buffers for driving processBatch. */
export class Driver {
  /** Like a forwarder's receive batch (io/forwarder.ts), in a memory the checksum kernel reads. */
  readonly batch: PacketBatch;
  readonly verdicts = new Int32Array(BATCH);
  readonly generated = new PacketBatch(BATCH, SLOT);
  readonly generatedVerdicts = new Int32Array(BATCH);

  /** `slot` and `packetBytes`: the batch's slot size and the length of the packets `run` replays. */
  constructor(
    readonly dataplane: Dataplane,
    slot = SLOT,
    private readonly packetBytes = PACKET_BYTES,
  ) {
    this.batch = new PacketBatch(BATCH, slot, 0, { lanes: true });
    for (let i = 0; i < BATCH; i++) this.batch.lengths[i] = packetBytes;
  }

  /** Copies one pre-built batch in and runs it (the measured operation). */
  run(view: Uint8Array, ingress: number): void {
    const batch = this.batch;
    batch.data.set(view);
    batch.count = BATCH;
    this.generated.count = 0;
    this.dataplane.processBatch(batch, ingress, LEG_WIRE, this.verdicts, this.generated, this.generatedVerdicts);
  }

  /** Set-up: runs arbitrary packets (up to BATCH) and returns copies of what left, with verdicts. */
  runPackets(packets: readonly Uint8Array[], ingress: number): { out: Uint8Array[]; verdicts: number[] } {
    const batch = this.batch;
    batch.clear();
    for (const p of packets) batch.push(p);
    for (let i = 0; i < batch.count; i++) batch.lengths[i] = packets[i]!.length;
    this.generated.count = 0;
    this.dataplane.processBatch(batch, ingress, LEG_WIRE, this.verdicts, this.generated, this.generatedVerdicts);
    const out: Uint8Array[] = [];
    const verdicts: number[] = [];
    for (let i = 0; i < batch.count; i++) {
      out.push(batch.copyOut(i));
      verdicts.push(this.verdicts[i]!);
    }
    for (let i = 0; i < BATCH; i++) batch.lengths[i] = this.packetBytes;
    return { out, verdicts };
  }
}


function expectVerdict(got: number, want: number, what: string): void {
  if (got !== want) throw new Error(`bench set-up: ${what}: verdict ${got}, expected ${want}`);
}

/**
 * Establishes every tenant flow (first packet out through SNAT, one reply back so the entry has
 * SEEN_REPLY) and returns the original-direction packets, ready to be replayed.
 */
export function establishTenantFlows(router: Router, flows: FlowSet): Uint8Array[] {
  const driver = new Driver(router.dataplane);
  const originals: Uint8Array[] = [];
  for (let start = 0; start < flows.count; start += BATCH) {
    const end = Math.min(flows.count, start + BATCH);
    const out: Uint8Array[] = [];
    for (let i = start; i < end; i++) out.push(udpPacket(flows.src[i]!, flows.dst[i]!, flows.sport[i]!, flows.dport[i]!));
    originals.push(...out);
    const sent = driver.runPackets(out, TENANT_PORT);
    const replies: Uint8Array[] = [];
    for (let k = 0; k < sent.out.length; k++) {
      expectVerdict(sent.verdicts[k]!, egressOf(GATEWAY_PORT, LEG_WIRE), "tenant flow out");
      const p = sent.out[k]!;
      // reply: dst:dport -> translated source (9.186.100.2:port)
      replies.push(udpPacket(read32(p, 16), read32(p, 12), read16(p, 22), read16(p, 20)));
    }
    const back = driver.runPackets(replies, GATEWAY_PORT);
    for (const v of back.verdicts) expectVerdict(v, egressOf(TENANT_PORT, LEG_WIRE), "tenant flow reply");
  }
  return originals;
}

/** Three-way handshakes through the floating IP; returns the clients' ACK|PSH data segments. */
export function establishInboundTcp(router: Router, flows: FlowSet): Uint8Array[] {
  const driver = new Driver(router.dataplane);
  const data: Uint8Array[] = [];
  for (let start = 0; start < flows.count; start += BATCH) {
    const end = Math.min(flows.count, start + BATCH);
    const syns: Uint8Array[] = [];
    const acks: Uint8Array[] = [];
    for (let i = start; i < end; i++) {
      syns.push(tcpPacket(flows.src[i]!, flows.dst[i]!, flows.sport[i]!, flows.dport[i]!, TCP_SYN));
      acks.push(tcpPacket(flows.src[i]!, flows.dst[i]!, flows.sport[i]!, flows.dport[i]!, TCP_ACK));
      data.push(tcpPacket(flows.src[i]!, flows.dst[i]!, flows.sport[i]!, flows.dport[i]!, TCP_ACK | TCP_PSH));
    }
    const sent = driver.runPackets(syns, GATEWAY_PORT);
    const synAcks: Uint8Array[] = [];
    for (let k = 0; k < sent.out.length; k++) {
      expectVerdict(sent.verdicts[k]!, egressOf(TENANT_PORT, LEG_WIRE), "inbound SYN");
      const p = sent.out[k]!;
      synAcks.push(tcpPacket(read32(p, 16), read32(p, 12), read16(p, 22), read16(p, 20), TCP_SYN | TCP_ACK));
    }
    const back = driver.runPackets(synAcks, TENANT_PORT);
    for (const v of back.verdicts) expectVerdict(v, egressOf(GATEWAY_PORT, LEG_WIRE), "SYN/ACK");
    const done = driver.runPackets(acks, GATEWAY_PORT);
    for (const v of done.verdicts) expectVerdict(v, egressOf(TENANT_PORT, LEG_WIRE), "ACK");
  }
  return data;
}

/**
 * The new-connection workload: the first packets of `pool` distinct UDP flows from the tenants,
 * shuffled into batches. Replayed after the clock moved past the UDP timeout, every packet is a
 * new connection that also frees the expired entry of its previous round.
 */
export function newConnectionWorkload(pool: number, renumbered = false): { router: Router; template: PacketTemplate; driver: Driver } {
  const router = seedRouter(262_144, renumbered);
  const flows = tenantFlows(pool, 0xabcd, renumbered ? TENANT_NET_RENUMBERED : TENANT_NET);
  const packets: Uint8Array[] = [];
  for (let i = 0; i < pool; i++) packets.push(udpPacket(flows.src[i]!, flows.dst[i]!, flows.sport[i]!, flows.dport[i]!));
  return { router, template: new PacketTemplate(packets, shuffled(pool, 0x1234)), driver: new Driver(router.dataplane) };
}

/**
 * The profiling helpers' loop: `step()` (one batch) for `seconds`, printing the rate of
 * `perStep` units a second once a second as `unit` (scaled by `scale`).
 */
export function runTimed(seconds: number, perStep: number, scale: number, unit: string, step: () => void): void {
  const end = performance.now() + seconds * 1000;
  let steps = 0;
  let t0 = performance.now();
  let lastSteps = 0;
  while (performance.now() < end) {
    for (let k = 0; k < 16; k++) step();
    steps += 16;
    const t = performance.now();
    if (t - t0 > 1000) {
      process.stdout.write(`${(((steps - lastSteps) * perStep) / ((t - t0) / 1000) / scale).toFixed(scale >= 1e6 ? 2 : 0)} ${unit}\n`);
      t0 = t;
      lastSteps = steps;
    }
  }
}
