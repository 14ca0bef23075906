/**
 * What the pipeline fuzzer sends: a scenario is a list of steps (a batch of packets arriving on
 * one leg of one port, or time passing) described as plain data, so that fast-check can shrink
 * it and print it, and `packetsOf` turns each description into bytes the same way every time.
 *
 * The packets are real ones of the seed's router (examples/seed.yaml) — tenants 10.0.0.x reaching
 * the outside, the outside reaching the floating IP 9.186.100.129 and the metadata address — and
 * then mutated: cut at any byte, any byte or header field overwritten (with or without the
 * checksums fixed up again), IHL and total-length lies, IP options, ICMP errors embedding garbage
 * or other ICMP errors, fragments out of order, overlapping, never finished or past 64 KiB, TCP
 * with any flags, UDP without a checksum, and TUN offload batches (GSO super-packets, partial
 * checksums). Not a test file; used by pipeline.test.ts and scripts/fuzz.ts.
 */
import fc from "fast-check";
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";
import { l4ChecksumFull, pseudoHeaderSum } from "../../src/wire/checksum.js";
import { ipv4FillChecksum } from "../../src/wire/ipv4.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../../src/wire/packet-info.js";

/**
 * The routers fuzzed: the seed's, and the seed with the SNAT port ranges of the flood tests
 * (examples/floods.yaml: UDP from 10.0.0.4 into 64 ports, from 10.0.0.5 into 64 with
 * --random-fully), where a burst of flows runs out of ports. Same ports and addresses.
 */
export const CONFIGS = { seed: "examples/seed.yaml", floods: "examples/floods.yaml" } as const;
export type ConfigName = keyof typeof CONFIGS;
/** Port indexes of examples/seed.yaml. */
export const TENANT_PORT = 0;
export const GATEWAY_PORT = 1;

const TENANTS = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.7"];
const OUTSIDE = ["9.186.100.1", "203.0.113.10", "198.51.100.7", "9.186.100.77"];
const ROUTER = ["10.0.0.1", "9.186.100.2", "9.186.100.129"];
const SPECIAL = ["169.254.169.254", "10.0.0.255", "9.186.100.255", "255.255.255.255", "224.0.0.5", "127.0.0.1", "0.0.0.0", "192.0.2.1"];
const PORTS = [80, 53, 9697, 40000, 40001, 1, 0, 65535, 600, 1023, 1024];

/** An IPv4 header or L4 field a mutation may overwrite. */
export type FieldName =
  | "versionIhl"
  | "tos"
  | "totalLength"
  | "id"
  | "flagsFragment"
  | "ttl"
  | "protocol"
  | "src"
  | "dst"
  | "l4Word0"
  | "l4Word1"
  | "l4Word2"
  | "l4Word3"
  | "tcpOffsetFlags";

/** After a mutation: leave the checksums, fix the IPv4 header's, or fix both it and the L4 one. */
export type Fix = "none" | "ip" | "all";

export type Mutation =
  | { op: "truncate"; keep: number }
  | { op: "byte"; at: number; value: number; fix: Fix }
  | { op: "field"; field: FieldName; value: number; fix: Fix }
  | { op: "append"; bytes: Uint8Array };

export type PacketGen =
  | { kind: "spec"; spec: PacketSpec; mutations: Mutation[] }
  /** An ICMP error from `src` to `dst` embedding `inner` (cut to `keep` bytes). */
  | { kind: "icmpError"; src: string; dst: string; type: number; code: number; inner: PacketGen; keep: number; mutations: Mutation[] }
  | { kind: "garbage"; bytes: Uint8Array; ipv4Header: boolean }
  /**
   * One datagram (`spec` with `size` payload bytes) cut into fragments of `chunk` bytes, sent in the order `order` names them (an
   * index may repeat or be missing), with fragment `overlapAt` moved back by `overlapBy` * 8
   * bytes, and, with `beyond64k`, one more fragment whose end lies past 65535.
   */
  | { kind: "fragments"; spec: PacketSpec; size: number; chunk: number; order: number[]; overlapAt: number; overlapBy: number; beyond64k: boolean };

/** One packet of a batch, with its TUN offload header (used when the batch has one). */
export interface BatchPacket {
  gen: PacketGen;
  /** virtio_net_hdr NEEDS_CSUM: the TCP/UDP checksum field holds the pseudo-header sum. */
  partial: boolean;
  /** virtio_net_hdr gso_size (0: not a super-packet). */
  gsoSize: number;
}

export type Step =
  | { t: "batch"; port: number; leg: number; offload: boolean; packets: BatchPacket[] }
  /**
   * `count` new connections from one tenant to one server, source ports `firstPort` and up, in
   * batches of 64: the NAT port search, a SNAT range or the conntrack table running out.
   */
  | { t: "burst"; protocol: "udp" | "tcp"; src: string; dst: string; dport: number; firstPort: number; count: number }
  /**
   * One connection's packets, each in its own batch (the harness answers each one it forwards,
   * so the connection gets established and its later packets take the established fast path).
   */
  | { t: "flow"; port: number; leg: number; offload: boolean; spec: PacketSpec; tcpFlags: number[]; partial: boolean; gsoSize: number; gapSeconds: number }
  | { t: "tick"; seconds: number };

export interface Scenario {
  config: ConfigName;
  /** Maximum conntrack entries (small, so that early drop and a full table happen). */
  capacity: number;
  /** Seed of the NAT port search RNG and the hash keys. */
  rngSeed: number;
  steps: Step[];
}

// ---------------------------------------------------------------------------- arbitraries

const address = (pool: readonly string[]): fc.Arbitrary<string> =>
  fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom(...pool) },
    { weight: 2, arbitrary: fc.constantFrom(...ROUTER, ...SPECIAL, ...TENANTS, ...OUTSIDE) },
    { weight: 1, arbitrary: fc.ipV4() },
  );

const port = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...PORTS) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 65535 }) });

const TCP_FLAGS = [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01, 0x03, 0x00, 0x29, 0xff];
const ICMP_QUERY_TYPES = [8, 0, 13, 14, 15, 16, 17, 18, 9, 10];

/** NOP options ending in End of Option List, or any bytes (the router only skips them). */
const ipOptions = fc.oneof(
  { weight: 5, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 10 }).map((words) => new Uint8Array(words * 4).fill(1)) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 40 }) },
);

/** Where a batch arrives decides whose addresses it mostly carries. */
function sourcePool(portIndex: number, leg: number): readonly string[] {
  if (leg === 1) return portIndex === TENANT_PORT ? ["10.0.0.1"] : ["9.186.100.2", "9.186.100.129"];
  return portIndex === TENANT_PORT ? TENANTS : OUTSIDE;
}

function destinationPool(portIndex: number, leg: number): readonly string[] {
  if (leg === 1) return portIndex === TENANT_PORT ? TENANTS : OUTSIDE;
  return portIndex === TENANT_PORT ? [...OUTSIDE, "169.254.169.254", "10.0.0.1"] : ["9.186.100.129", "9.186.100.2", "10.0.0.2"];
}

function specArb(portIndex: number, leg: number, maxPayload: number): fc.Arbitrary<PacketSpec> {
  const common = {
    src: address(sourcePool(portIndex, leg)),
    dst: address(destinationPool(portIndex, leg)),
    ttl: fc.oneof({ weight: 5, arbitrary: fc.constant(64) }, { weight: 1, arbitrary: fc.constantFrom(0, 1, 2, 255) }),
    id: fc.oneof(fc.constantFrom(0, 1, 7), fc.integer({ min: 0, max: 0xffff })),
    df: fc.boolean(),
    options: ipOptions,
    payload: fc.uint8Array({ maxLength: Math.min(maxPayload, 64) }),
    // Padding with zeros up to a total length (large super-packets without large arrays).
    pad: fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: maxPayload }) }),
  };
  const tcp = fc.record({ ...common, sport: port, dport: port, tcpFlags: fc.oneof(fc.constantFrom(...TCP_FLAGS), fc.integer({ min: 0, max: 255 })), seq: fc.nat(), ack: fc.nat(), tcpOptions: fc.option(fc.uint8Array({ maxLength: 40 }), { nil: undefined }) });
  const udp = fc.record({ ...common, sport: port, dport: port, noUdpChecksum: fc.boolean() });
  const icmp = fc.record({ ...common, icmpType: fc.constantFrom(...ICMP_QUERY_TYPES), icmpCode: fc.constantFrom(0, 0, 1), icmpId: port, icmpSeq: fc.integer({ min: 0, max: 0xffff }) });
  const other = fc.record({ ...common, protocolNumber: fc.constantFrom(47, 132, 50, 0, 255) });
  return fc
    .oneof(
      { weight: 4, arbitrary: tcp.map((r) => ({ ...r, protocol: "tcp" as const })) },
      { weight: 4, arbitrary: udp.map((r) => ({ ...r, protocol: "udp" as const })) },
      { weight: 3, arbitrary: icmp.map((r) => ({ ...r, protocol: "icmp" as const })) },
      { weight: 1, arbitrary: other.map(({ protocolNumber, ...r }) => ({ ...r, protocol: protocolNumber })) },
    )
    .map(({ pad, ...spec }) => {
      const out: PacketSpec = spec;
      if (pad > 0) out.length = Math.min(65535, naturalLength(out) + pad);
      return out;
    });
}

function naturalLength(spec: PacketSpec): number {
  return buildPacket({ ...spec, length: undefined }).length;
}

const FIELDS: readonly FieldName[] = ["versionIhl", "tos", "totalLength", "id", "flagsFragment", "ttl", "protocol", "src", "dst", "l4Word0", "l4Word1", "l4Word2", "l4Word3", "tcpOffsetFlags"];

const fieldValue = fc.oneof(
  fc.constantFrom(0, 1, 4, 5, 6, 15, 19, 20, 21, 0x40, 0x45, 0x46, 0x4f, 0x2000, 0x4000, 0x1fff, 0x3fff, 0xffff, 0x7fffffff, 0xffffffff),
  fc.integer({ min: 0, max: 0xffff }),
  fc.nat(),
);

const fix: fc.Arbitrary<Fix> = fc.constantFrom("ip", "ip", "all", "none");

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ op: fc.constant("truncate" as const), keep: fc.nat({ max: 2000 }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant("byte" as const), at: fc.nat({ max: 120 }), value: fc.integer({ min: 0, max: 255 }), fix }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant("field" as const), field: fc.constantFrom(...FIELDS), value: fieldValue, fix }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("append" as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 32 }) }) },
);

const mutations = fc.oneof({ weight: 3, arbitrary: fc.constant([] as Mutation[]) }, { weight: 2, arbitrary: fc.array(mutation, { minLength: 1, maxLength: 3 }) });

const ICMP_ERRORS: readonly [number, number][] = [[3, 0], [3, 1], [3, 3], [3, 4], [11, 0], [11, 1], [12, 0], [4, 0], [5, 1]];

function packetGenArb(portIndex: number, leg: number, maxPayload: number): fc.Arbitrary<PacketGen> {
  const { packet } = fc.letrec<{ packet: PacketGen; error: PacketGen }>((tie) => ({
    packet: fc.oneof(
      { depthSize: "small", withCrossShrink: true },
      { weight: 12, arbitrary: fc.record({ kind: fc.constant("spec" as const), spec: specArb(portIndex, leg, maxPayload), mutations }) },
      { weight: 3, arbitrary: tie("error") },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant("garbage" as const), bytes: fc.uint8Array({ maxLength: 80 }), ipv4Header: fc.boolean() }) },
      {
        weight: 2,
        arbitrary: fc.record({
          kind: fc.constant("fragments" as const),
          spec: specArb(portIndex, leg, 0).map((s) => ({ ...s, options: undefined, df: false, length: undefined, payload: undefined })),
          size: fc.nat({ max: 3000 }),
          chunk: fc.integer({ min: 1, max: 40 }).map((n) => n * 8),
          order: fc.array(fc.nat({ max: 12 }), { minLength: 1, maxLength: 8 }),
          overlapAt: fc.nat({ max: 12 }),
          overlapBy: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 4 })),
          beyond64k: fc.boolean(),
        }),
      },
    ),
    error: fc.record({
      kind: fc.constant("icmpError" as const),
      // The error travels back toward the inner packet's source: from its destination's side.
      src: address([...OUTSIDE, ...TENANTS, ...ROUTER]),
      dst: address([...ROUTER, ...TENANTS, ...OUTSIDE]),
      type: fc.constantFrom(...ICMP_ERRORS.map(([t]) => t)),
      code: fc.constantFrom(...ICMP_ERRORS.map(([, c]) => c)),
      inner: tie("packet"),
      keep: fc.oneof(fc.constant(10_000), fc.constant(28), fc.nat({ max: 600 })),
      mutations,
    }),
  }));
  return packet;
}

const batchPacket = (portIndex: number, leg: number, offload: boolean): fc.Arbitrary<BatchPacket> =>
  fc.record({
    gen: packetGenArb(portIndex, leg, offload ? 64_000 : 1600),
    partial: offload ? fc.boolean() : fc.constant(false),
    gsoSize: offload ? fc.oneof(fc.constant(0), fc.constantFrom(536, 1380, 1448, 1460, 1472)) : fc.constant(0),
  });

/**
 * Every (port, leg, offload) a batch can arrive with, weighted: mostly the wire legs without
 * offloads. Each is its own arbitrary (fc.oneof, not fc.chain), so that shrinking keeps its
 * power over the packets.
 */
function arrivalKinds(wireWeight: number, offloadWeight: number): { weight: number; port: number; leg: number; offload: boolean }[] {
  const kinds: { weight: number; port: number; leg: number; offload: boolean }[] = [];
  for (const offload of [false, true]) {
    for (const leg of [0, 1]) {
      for (const port of [TENANT_PORT, GATEWAY_PORT]) kinds.push({ weight: (leg === 0 ? wireWeight : 1) * (offload ? 1 : offloadWeight), port, leg, offload });
    }
  }
  return kinds;
}

const batchStep: fc.Arbitrary<Step> = fc.oneof(
  ...arrivalKinds(4, 4).map(({ weight, port, leg, offload }) => ({
    weight,
    arbitrary: fc.array(batchPacket(port, leg, offload), { minLength: 1, maxLength: 6 }).map((packets): Step => ({ t: "batch", port, leg, offload, packets })),
  })),
);

const FLOW_FLAGS = [0x02, 0x10, 0x18, 0x18, 0x18, 0x11, 0x10, 0x04, 0x02];

const flowStep: fc.Arbitrary<Step> = fc.oneof(
  ...arrivalKinds(6, 3).map(({ weight, port, leg, offload }) => ({
    weight,
    arbitrary: fc.record({
      t: fc.constant("flow" as const),
      port: fc.constant(port),
      leg: fc.constant(leg),
      offload: fc.constant(offload),
      spec: specArb(port, leg, offload ? 64_000 : 1400).filter((s) => s.protocol === "tcp" || s.protocol === "udp" || s.protocol === "icmp"),
      // SYN, then ACKs with data, now and then a FIN or RST or another SYN (a reopened port).
      tcpFlags: fc.oneof(fc.constant(FLOW_FLAGS.slice(0, 5)), fc.array(fc.constantFrom(...FLOW_FLAGS), { minLength: 1, maxLength: 8 })),
      partial: offload ? fc.boolean() : fc.constant(false),
      gsoSize: offload ? fc.constantFrom(0, 1448) : fc.constant(0),
      // Time between the packets: none, or across a UDP (30 s, 120 s) or ICMP timeout.
      gapSeconds: fc.constantFrom(0, 0, 0, 20, 35, 100, 125),
    }),
  })),
);

const burstStep: fc.Arbitrary<Step> = fc.record({
  t: fc.constant("burst" as const),
  protocol: fc.constantFrom("udp" as const, "tcp" as const),
  src: fc.constantFrom(...TENANTS),
  dst: fc.constantFrom(...OUTSIDE),
  dport: fc.constantFrom(53, 80),
  firstPort: fc.constantFrom(1024, 20000, 20100, 65500),
  count: fc.integer({ min: 1, max: 150 }),
});

const tickStep: fc.Arbitrary<Step> = fc.record({ t: fc.constant("tick" as const), seconds: fc.constantFrom(1, 10, 31, 121, 700, 432_001) });

export const scenarioArb: fc.Arbitrary<Scenario> = fc.record({
  config: fc.constantFrom<ConfigName>("seed", "floods"),
  capacity: fc.constantFrom(8, 64, 1024),
  rngSeed: fc.integer({ min: 1, max: 0x7fffffff }),
  steps: fc.array(
    fc.oneof({ weight: 12, arbitrary: batchStep }, { weight: 6, arbitrary: flowStep }, { weight: 2, arbitrary: tickStep }, { weight: 1, arbitrary: burstStep }),
    { minLength: 1, maxLength: 12 },
  ),
});

// ---------------------------------------------------------------------------- bytes

/** The packets a description stands for (a fragment train is several). Deterministic. */
export function packetsOf(gen: PacketGen): Uint8Array[] {
  switch (gen.kind) {
    case "spec":
      return [mutate(buildPacket(gen.spec), gen.mutations)];
    case "garbage": {
      const b = gen.bytes.slice();
      if (gen.ipv4Header && b.length >= 20) {
        b[0] = 0x45;
        b[2] = b.length >>> 8;
        b[3] = b.length & 0xff;
        ipv4FillChecksum(b, 0);
      }
      return [b];
    }
    case "icmpError": {
      const inner = packetsOf(gen.inner)[0] ?? new Uint8Array(0);
      const payload = inner.subarray(0, Math.min(inner.length, gen.keep, 1400));
      const packet = buildPacket({ protocol: "icmp", src: gen.src, dst: gen.dst, icmpType: gen.type, icmpCode: gen.code, icmpId: 0, icmpSeq: gen.type === 3 && gen.code === 4 ? 1400 : 0, payload });
      return [mutate(packet, gen.mutations)];
    }
    case "fragments":
      return fragmentTrain(gen);
  }
}

function fragmentTrain(gen: Extract<PacketGen, { kind: "fragments" }>): Uint8Array[] {
  // Bytes that differ from one datagram to another, so a fragment is recognised when it is released.
  let tag = gen.spec.id ?? 0;
  for (const c of `${gen.spec.src} ${gen.spec.dst}`) tag = (tag * 31 + c.charCodeAt(0)) >>> 0;
  const payload = new Uint8Array(gen.size).map((_, i) => (tag >>> (8 * (i % 4))) + i);
  const whole = buildPacket({ ...gen.spec, payload });
  const l4 = whole.subarray(20);
  const fragments: Uint8Array[] = [];
  for (let offset = 0; offset < l4.length; offset += gen.chunk) {
    const end = Math.min(l4.length, offset + gen.chunk);
    fragments.push(fragment(whole, l4.subarray(offset, end), offset, end < l4.length));
  }
  if (fragments.length === 0) return [];
  const at = gen.overlapAt % fragments.length;
  if (gen.overlapBy > 0 && at > 0) {
    const f = fragments[at]!;
    const offset = Math.max(0, ((((f[6]! << 8) | f[7]!) & 0x1fff) << 3) - gen.overlapBy * 8);
    fragments[at] = fragment(whole, f.subarray(20), offset, (f[6]! & 0x20) !== 0);
  }
  const out = gen.order.map((i) => fragments[i % fragments.length]!);
  // RFC 791 allows offsets up to 65528: a last fragment there ends past the 64 KiB an IPv4
  // datagram can have (the "ping of death").
  if (gen.beyond64k) out.push(fragment(whole, new Uint8Array(64).fill(0xcd), 65528, false));
  return out;
}

function fragment(whole: Uint8Array, part: Uint8Array, offset: number, more: boolean): Uint8Array {
  const f = new Uint8Array(20 + part.length);
  f.set(whole.subarray(0, 20));
  f.set(part, 20);
  f[2] = f.length >>> 8;
  f[3] = f.length & 0xff;
  const word = (more ? 0x2000 : 0) | (offset >>> 3);
  f[6] = word >>> 8;
  f[7] = word & 0xff;
  ipv4FillChecksum(f, 0);
  return f;
}

function mutate(packet: Uint8Array, list: readonly Mutation[]): Uint8Array {
  let b = packet;
  for (const m of list) {
    if (m.op === "truncate") {
      b = b.slice(0, m.keep % (b.length + 1));
    } else if (m.op === "append") {
      const longer = new Uint8Array(b.length + m.bytes.length);
      longer.set(b);
      longer.set(m.bytes, b.length);
      b = longer;
    } else if (m.op === "byte") {
      if (b.length === 0) continue;
      b[m.at % b.length] = m.value;
      fixChecksums(b, m.fix);
    } else {
      setField(b, m.field, m.value);
      fixChecksums(b, m.fix);
    }
  }
  return b;
}

function setField(b: Uint8Array, field: FieldName, value: number): void {
  const ihl = b.length > 0 ? (b[0]! & 0x0f) << 2 : 20;
  const put = (at: number, bytes: number): void => {
    for (let k = 0; k < bytes; k++) if (at + k < b.length) b[at + k] = (value >>> (8 * (bytes - 1 - k))) & 0xff;
  };
  switch (field) {
    case "versionIhl": return put(0, 1);
    case "tos": return put(1, 1);
    case "totalLength": return put(2, 2);
    case "id": return put(4, 2);
    case "flagsFragment": return put(6, 2);
    case "ttl": return put(8, 1);
    case "protocol": return put(9, 1);
    case "src": return put(12, 4);
    case "dst": return put(16, 4);
    case "l4Word0": return put(ihl, 2);
    case "l4Word1": return put(ihl + 2, 2);
    case "l4Word2": return put(ihl + 4, 2);
    case "l4Word3": return put(ihl + 6, 2);
    case "tcpOffsetFlags": return put(ihl + 12, 2);
  }
}

/** Recomputes the IPv4 header checksum (and the L4 one) where the bytes still allow it. */
function fixChecksums(b: Uint8Array, how: Fix): void {
  if (how === "none" || b.length < 20) return;
  const ihl = (b[0]! & 0x0f) << 2;
  if (ihl >= 20 && ihl <= b.length) ipv4FillChecksum(b, 0);
  if (how !== "all" || ihl < 20) return;
  const total = (b[2]! << 8) | b[3]!;
  if (total > b.length || total < ihl) return;
  const fieldAt = b[9] === IPPROTO_TCP ? ihl + 16 : b[9] === IPPROTO_UDP ? ihl + 6 : b[9] === IPPROTO_ICMP ? ihl + 2 : -1;
  if (fieldAt < 0 || fieldAt + 2 > total) return;
  const checksum = l4ChecksumFull(b, 0);
  if (checksum < 0) return;
  b[fieldAt] = checksum >>> 8;
  b[fieldAt + 1] = checksum & 0xff;
}

/**
 * What the kernel hands over with NEEDS_CSUM: the TCP/UDP checksum field holds the folded
 * pseudo-header sum, not complemented (tcp_v4_send_check). No-op for other packets.
 */
export function makeChecksumPartial(b: Uint8Array): boolean {
  if (b.length < 20) return false;
  const ihl = (b[0]! & 0x0f) << 2;
  const total = (b[2]! << 8) | b[3]!;
  const fieldAt = b[9] === IPPROTO_TCP ? ihl + 16 : b[9] === IPPROTO_UDP ? ihl + 6 : -1;
  if (fieldAt < 0 || fieldAt + 2 > b.length || total < ihl || total > b.length) return false;
  const sum = pseudoHeaderSum(readU32(b, 12), readU32(b, 16), b[9]!, total - ihl);
  b[fieldAt] = sum >>> 8;
  b[fieldAt + 1] = sum & 0xff;
  return true;
}

export function readU32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}
