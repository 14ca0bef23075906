/**
 * Packet capture inside the forwarding loop (`qnat capture`, config `capture:`): copies of the
 * packets of chosen legs — ingress as read, before the pipeline rewrites them in place, egress as
 * written — go into a bounded ring allocated once per capture, with what the pipeline decided
 * for each (dataplane/decisions.ts) and a snapshot of its connection's tuples. The ring is
 * drained off the loop (control/capture.ts), where each packet becomes a pcapng Enhanced Packet
 * Block (pcapng.ts) whose comment says what qnat did to it (capture-comment.ts).
 *
 * Forwarding never waits for a capture: a packet that finds the ring full (no record or no
 * room for its bytes) is counted as lost by the capture and goes on. With no capture the
 * forwarder holds null and does nothing per batch (io/forwarder.ts).
 *
 * Link headers: a TUN leg carries bare IPv4 (LINKTYPE_RAW alone, LINKTYPE_IPV4 beside other
 * interfaces: see pcapng.ts); a tap port's legs carry Ethernet,
 * whose 14-byte header sits just before the IPv4 packet in its slot (the slot layout of a
 * router with tap ports, core/batch.ts headroom), and is captured with it (LINKTYPE_ETHERNET).
 */
import type { PacketBatch } from "../core/batch.js";
import { PacketDecisions } from "../dataplane/decisions.js";
import type { Dataplane } from "../dataplane/pipeline.js";
import { LEG_MIRROR, LEG_WIRE } from "../dataplane/port.js";
import { LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_RAW } from "./pcapng.js";

export const ETHERNET_HEADER_LENGTH = 14;
const ETHERTYPE_IPV4 = 0x0800;

/** Which legs of a port a capture takes: the wire leg, the host mirror, or both. */
export type CaptureLegs = "wire" | "mirror" | "both";
export const CAPTURE_LEGS: readonly CaptureLegs[] = ["wire", "mirror", "both"];

/** One captured leg: a pcapng interface (its index in the session is its interface id). */
export interface CaptureInterface {
  /** The forwarder's leg index, `port * 2 + leg`. */
  readonly legIndex: number;
  readonly port: string;
  readonly leg: "wire" | "mirror";
  /** if_name: the port's name for its wire leg, `PORT/mirror` for its host mirror. */
  readonly name: string;
  readonly description: string;
  readonly linkType: number;
}

/** Where a captured copy was taken. */
export const enum CaptureKind {
  /** Read from a leg, before the pipeline. */
  Ingress = 0,
  /** Written to a leg, after the pipeline. */
  Egress = 1,
  /** An ICMP error the router generated, as written. */
  Generated = 2,
  /** A fragment held for its first fragment and released, as written. */
  Released = 3,
  /** A fragment the router cut from a datagram larger than its egress MTU, as written. */
  Fragment = 4,
  /** A packet that waited for ARP (a tap port), as written when its neighbour answered. */
  Deferred = 5,
}

/** Record words (one Int32Array row per captured copy). */
export const enum Rec {
  Offset = 0,
  Length,
  Interface,
  Kind,
  Verdict,
  Reason,
  Flags,
  CtState,
  Connection,
  Protocol,
  Status,
  OrigSrc,
  OrigDst,
  OrigPorts,
  ReplySrc,
  ReplyDst,
  ReplyPorts,
  SourceRule,
  DestinationRule,
  /** The forwarder leg index the packet was read from. */
  IngressLeg,
  Words,
}
const REC = Rec.Words as number;

export interface CaptureRingSize {
  /** Bytes of packet data the ring holds (default 8 MiB). */
  readonly bytes?: number;
  /** Packets the ring holds (default 8192). */
  readonly records?: number;
}

export const DEFAULT_RING_BYTES = 8 * 1024 * 1024;
export const DEFAULT_RING_RECORDS = 8192;

/** Wall-clock microseconds since the epoch, from the monotonic clock's origin (one read per batch). */
export function nowMicroseconds(): number {
  return (performance.timeOrigin + performance.now()) * 1000;
}

/**
 * One capture: its legs, its ring, its counters. Records are written by the forwarding loop
 * (`CaptureTap`) and read in order by `take` off the loop.
 */
export class CaptureSession {
  readonly bytes: Uint8Array;
  /** A DataView of `bytes`, for the loop's copies. */
  readonly view: DataView<ArrayBufferLike>;
  readonly records: Int32Array;
  readonly times: Float64Array;
  /** Per forwarder leg index: the pcapng interface id that captures it, -1 for none. */
  readonly interfaceOfLeg: Int32Array;
  /** Per interface: packets the capture saw, and those it lost (the ring was full). */
  readonly seen: Float64Array;
  readonly lost: Float64Array;
  readonly startedAt = nowMicroseconds();
  /** Packets admitted to the ring (the count limit applies to these). */
  admitted = 0;
  /** The capture stopped taking packets (count reached, or stopped). */
  closed = false;

  private readonly recordCapacity: number;
  /** Next record to write, next to read, records held. */
  private head = 0;
  private tail = 0;
  private held = 0;
  /** Where the next packet's bytes go. */
  private byteHead = 0;

  constructor(
    readonly interfaces: readonly CaptureInterface[],
    legCount: number,
    /** Stop after this many packets (0: no limit). */
    readonly count = 0,
    size: CaptureRingSize = {},
  ) {
    this.bytes = new Uint8Array(size.bytes ?? DEFAULT_RING_BYTES);
    this.view = new DataView(this.bytes.buffer);
    this.recordCapacity = size.records ?? DEFAULT_RING_RECORDS;
    this.records = new Int32Array(this.recordCapacity * REC);
    this.times = new Float64Array(this.recordCapacity);
    this.interfaceOfLeg = new Int32Array(legCount).fill(-1);
    interfaces.forEach((iface, id) => {
      if (iface.legIndex < legCount) this.interfaceOfLeg[iface.legIndex] = id;
    });
    this.seen = new Float64Array(interfaces.length);
    this.lost = new Float64Array(interfaces.length);
  }

  get pending(): number {
    return this.held;
  }

  get lostTotal(): number {
    return this.lost.reduce((a, b) => a + b, 0);
  }

  /** Every packet the count allows was taken and read out. */
  get finished(): boolean {
    return this.closed && this.held === 0;
  }

  /**
   * Reserves a record and `length` bytes for a packet of interface `iface`; returns the record
   * index, or -1 when the packet is lost (ring full) or the capture takes no more.
   */
  reserve(iface: number, length: number, time: number): number {
    if (this.closed) return -1;
    this.seen[iface] += 1;
    const at = this.room(length);
    if (this.held >= this.recordCapacity || at < 0) {
      this.lost[iface] += 1;
      return -1;
    }
    // An empty ring starts again at its beginning: the lines the loop writes stay warm in cache.
    if (this.held === 0) this.head = this.tail = 0;
    const record = this.head;
    this.head = record + 1 === this.recordCapacity ? 0 : record + 1;
    this.held++;
    this.byteHead = at + length;
    const r = record * REC;
    const rec = this.records;
    // The other words are the tap's to write (CaptureTap.annotate writes them all).
    rec[r + Rec.Offset] = at;
    rec[r + Rec.Length] = length;
    rec[r + Rec.Interface] = iface;
    this.times[record] = time;
    this.admitted++;
    if (this.count > 0 && this.admitted >= this.count) this.closed = true;
    return record;
  }

  /** Where `length` bytes fit after the newest packet without reaching the oldest unread one; -1 if nowhere. */
  private room(length: number): number {
    const capacity = this.bytes.length;
    if (length > capacity) return -1;
    if (this.held === 0) return 0;
    const head = this.byteHead;
    const tail = this.records[this.tail * REC + Rec.Offset]!;
    if (head > tail) {
      if (head + length <= capacity) return head;
      return length < tail ? 0 : -1;
    }
    return head + length < tail ? head : -1;
  }

  /** The oldest unread record, or -1. */
  peek(): number {
    return this.held === 0 ? -1 : this.tail;
  }

  /** The record after `record` among those held, or -1. */
  next(record: number): number {
    const following = record + 1 === this.recordCapacity ? 0 : record + 1;
    return following === this.head ? -1 : following;
  }

  /** Frees the oldest record (after it was written out). */
  advance(): void {
    if (this.held === 0) return;
    this.tail = this.tail + 1 === this.recordCapacity ? 0 : this.tail + 1;
    this.held--;
  }

  /** Stops taking packets; what the ring holds can still be read. */
  close(): void {
    this.closed = true;
  }
}

/**
 * The forwarder's side of every running capture: per batch, `ingress` before the pipeline
 * and `egress` after the batch was written. Sessions come and go between two batches.
 */
export class CaptureTap {
  readonly sessions: CaptureSession[] = [];
  /** The pipeline fills it while this tap is on the forwarder (Dataplane.decisions). */
  readonly decisions: PacketDecisions;
  /** Per session and packet slot of the batch: the ingress record to annotate after the pipeline. */
  private pendingIngress: Int32Array[] = [];
  /** The pipeline's verdicts of the batch before the legs wrote it (a tap leg turns a packet that waits for ARP into VERDICT_STOLEN). */
  private readonly decidedVerdicts: Int32Array;
  private time = 0;
  /** When the batch's writes began (`decided`): the time its copies as written carry. */
  private writesBegan = 0;
  /** copyBytes' DataView and the bytes it views. */
  private view: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));
  private viewBytes: Uint8Array | null = null;

  constructor(
    private readonly batchCapacity: number,
    /** Per port: its legs carry Ethernet frames (a tap port); replaced when the ports change. */
    public ethernet: readonly boolean[],
  ) {
    this.decisions = new PacketDecisions(batchCapacity);
    this.decidedVerdicts = new Int32Array(batchCapacity);
  }

  /** After the pipeline, before the legs write the batch: its verdicts as the pipeline gave them. */
  decided(verdicts: Int32Array, count: number): void {
    const saved = this.decidedVerdicts;
    for (let i = 0; i < count && i < saved.length; i++) saved[i] = verdicts[i]!;
    this.writesBegan = nowMicroseconds();
  }

  /**
   * Packets of a tap port that waited for ARP, as they leave (`verdicts[slot] === 0` marks them,
   * EthernetStage.sendQueued): copied with their Ethernet header for the wire leg `legIndex`.
   */
  deferred(pool: PacketBatch, verdicts: Int32Array, legIndex: number): void {
    if (this.sessions.length === 0) return;
    this.time = nowMicroseconds();
    for (let s = 0; s < this.sessions.length; s++) {
      const session = this.sessions[s]!;
      const iface = legIndex < session.interfaceOfLeg.length ? session.interfaceOfLeg[legIndex]! : -1;
      if (iface < 0) continue;
      for (let i = 0; i < pool.count; i++) {
        if (verdicts[i] !== 0) continue;
        const record = this.copy(session, iface, pool, i, legIndex >> 1, CaptureKind.Deferred);
        if (record >= 0) this.annotateUndecided(session, record, legIndex, CaptureKind.Deferred);
      }
    }
  }

  add(session: CaptureSession): void {
    this.sessions.push(session);
    this.pendingIngress.push(new Int32Array(this.batchCapacity).fill(-1));
  }

  remove(session: CaptureSession): void {
    const index = this.sessions.indexOf(session);
    if (index < 0) return;
    this.sessions.splice(index, 1);
    this.pendingIngress.splice(index, 1);
  }

  get empty(): boolean {
    return this.sessions.length === 0;
  }

  /** Before the pipeline: copies the packets read from leg `legIndex` as they arrived. */
  ingress(batch: PacketBatch, legIndex: number): void {
    this.time = nowMicroseconds();
    for (let s = 0; s < this.sessions.length; s++) {
      const session = this.sessions[s]!;
      const pending = this.pendingIngress[s]!;
      pending.fill(-1, 0, batch.count);
      const iface = legIndex < session.interfaceOfLeg.length ? session.interfaceOfLeg[legIndex]! : -1;
      if (iface < 0) continue;
      for (let i = 0; i < batch.count; i++) pending[i] = this.copy(session, iface, batch, i, legIndex >> 1, CaptureKind.Ingress);
    }
  }

  /**
   * After the batch was written: annotates the ingress copies with the pipeline's decisions and
   * copies each packet written to a captured leg, as written (with its link header for a tap
   * port). `released`, `generated` and `fragments` are the pipeline's other batches of the same
   * turn (fragments held and released, the router's ICMP errors, the fragments it cut).
   */
  egress(
    dataplane: Dataplane,
    batch: PacketBatch,
    verdicts: Int32Array,
    legIndex: number,
    released: PacketBatch,
    releasedVerdicts: Int32Array,
    generated: PacketBatch,
    generatedVerdicts: Int32Array,
    fragments: PacketBatch,
    fragmentVerdicts: Int32Array,
  ): void {
    // The comments read the packets' connections: under the shared tables' lock (docs/multi-core.md).
    dataplane.conntrack.lock();
    try {
      this.egressLocked(dataplane, batch, verdicts, legIndex, released, releasedVerdicts, generated, generatedVerdicts, fragments, fragmentVerdicts);
    } finally {
      dataplane.conntrack.unlock();
    }
  }

  private egressLocked(
    dataplane: Dataplane,
    batch: PacketBatch,
    verdicts: Int32Array,
    legIndex: number,
    released: PacketBatch,
    releasedVerdicts: Int32Array,
    generated: PacketBatch,
    generatedVerdicts: Int32Array,
    fragments: PacketBatch,
    fragmentVerdicts: Int32Array,
  ): void {
    // The copies as written carry the time the batch's writes began: an answer the kernel makes
    // inside a write (an echo reply, an ACK), which another thread may read before this write
    // returns, is then later than the packet it answers (workers: N).
    this.time = this.writesBegan;
    for (let s = 0; s < this.sessions.length; s++) {
      const session = this.sessions[s]!;
      const pending = this.pendingIngress[s]!;
      for (let i = 0; i < batch.count; i++) {
        const record = pending[i]!;
        if (record >= 0) this.annotate(session, record, dataplane, i, this.decidedVerdicts[i]!, legIndex, CaptureKind.Ingress);
        const copied = this.copyOut(session, dataplane, batch, verdicts, i, legIndex, CaptureKind.Egress, record < 0);
        // The same packet, before and after: its decision words are the ingress copy's.
        if (copied >= 0 && record >= 0) {
          const rec = session.records;
          const to = copied * REC;
          const from = record * REC;
          for (let w = Rec.Verdict as number; w < REC; w++) rec[to + w] = rec[from + w]!;
        }
      }
      for (let i = 0; i < released.count; i++) this.copyOut(session, dataplane, released, releasedVerdicts, i, legIndex, CaptureKind.Released, false);
      for (let i = 0; i < generated.count; i++) this.copyOut(session, dataplane, generated, generatedVerdicts, i, legIndex, CaptureKind.Generated, false);
      for (let i = 0; i < fragments.count; i++) this.copyOut(session, dataplane, fragments, fragmentVerdicts, i, legIndex, CaptureKind.Fragment, false);
    }
  }

  private copyOut(
    session: CaptureSession,
    dataplane: Dataplane,
    batch: PacketBatch,
    verdicts: Int32Array,
    i: number,
    ingressLeg: number,
    kind: CaptureKind,
    decided: boolean,
  ): number {
    const verdict = verdicts[i]!;
    if (verdict < 0 || verdict >= session.interfaceOfLeg.length) return -1;
    const iface = session.interfaceOfLeg[verdict]!;
    if (iface < 0) return -1;
    const record = this.copy(session, iface, batch, i, verdict >> 1, kind);
    if (record >= 0 && decided) this.annotate(session, record, dataplane, i, verdict, ingressLeg, kind);
    else if (record >= 0) this.annotate(session, record, dataplane, -1, verdict, ingressLeg, kind);
    return record;
  }

  /** Copies packet `i` of `batch` (with its Ethernet header on a tap port) into the ring. */
  private copy(session: CaptureSession, iface: number, batch: PacketBatch, i: number, port: number, kind: CaptureKind): number {
    const length = batch.lengths[i]!;
    const off = batch.offsetOf(i);
    const ethernet = this.ethernet[port] === true;
    const link = ethernet ? ETHERNET_HEADER_LENGTH : 0;
    const record = session.reserve(iface, length + link, this.time);
    if (record < 0) return -1;
    const rec = session.records;
    const r = record * REC;
    rec[r + Rec.Kind] = kind;
    const at = rec[r + Rec.Offset]!;
    const ring = session.bytes;
    const data = batch.data;
    if (ethernet) {
      // The leg's header is in the slot's headroom when the slot has room for it; a slot without
      // it (a released fragment's) gets a header with zero addresses and the IPv4 EtherType.
      if (off - i * batch.slotSize >= ETHERNET_HEADER_LENGTH) this.copyBytes(data, off - ETHERNET_HEADER_LENGTH, session, at, ETHERNET_HEADER_LENGTH);
      else {
        ring.fill(0, at, at + ETHERNET_HEADER_LENGTH - 2);
        ring[at + 12] = ETHERTYPE_IPV4 >> 8;
        ring[at + 13] = ETHERTYPE_IPV4 & 0xff;
      }
    }
    this.copyBytes(data, off, session, at + link, length);
    return record;
  }

  /**
   * `length` bytes from `from[start..]` into the ring at `at`: 32 bits at a time through
   * DataViews for a small packet (no view allocated per packet), set() for a large one.
   */
  private copyBytes(from: Uint8Array, start: number, session: CaptureSession, at: number, length: number): void {
    if (length > 512) {
      session.bytes.set(from.subarray(start, start + length), at);
      return;
    }
    const source = from === this.viewBytes ? this.view : this.viewOf(from);
    const ring = session.view;
    const words = length & ~3;
    let k = 0;
    for (; k < words; k += 4) ring.setUint32(at + k, source.getUint32(start + k, true), true);
    for (; k < length; k++) ring.setUint8(at + k, source.getUint8(start + k));
  }

  /** A DataView of a batch's bytes, made once per batch buffer. */
  private viewOf(bytes: Uint8Array): DataView<ArrayBufferLike> {
    this.viewBytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return this.view;
  }

  /** A copy with no decision of the pipeline's at hand: its kind and leg say what it is. */
  private annotateUndecided(session: CaptureSession, record: number, verdict: number, kind: CaptureKind): void {
    const rec = session.records;
    const r = record * REC;
    rec[r + Rec.Kind] = kind;
    rec[r + Rec.Verdict] = verdict;
    for (let w = Rec.Reason as number; w < REC; w++) rec[r + w] = -1;
    rec[r + Rec.Reason] = 0;
    rec[r + Rec.Flags] = 0;
  }

  /** What the pipeline decided for packet `index` (-1: not one of the batch's), and its connection's tuples now. */
  private annotate(session: CaptureSession, record: number, dataplane: Dataplane, index: number, verdict: number, ingressLeg: number, kind: CaptureKind): void {
    const rec = session.records;
    const r = record * REC;
    rec[r + Rec.Kind] = kind;
    rec[r + Rec.Verdict] = verdict;
    rec[r + Rec.IngressLeg] = ingressLeg;
    // Every word is written here (reserve leaves them as the ring's previous packet had them).
    const d = this.decisions;
    const decided = index >= 0;
    rec[r + Rec.Reason] = decided ? d.reason[index]! : 0;
    rec[r + Rec.Flags] = decided ? d.flags[index]! : 0;
    rec[r + Rec.CtState] = decided ? d.ctState[index]! : -1;
    rec[r + Rec.SourceRule] = decided ? d.sourceRule[index]! : -1;
    rec[r + Rec.DestinationRule] = decided ? d.destinationRule[index]! : -1;
    const connection = decided ? d.connection[index]! : -1;
    const table = dataplane.conntrack;
    const id = connection >> 1;
    if (connection < 0 || !table.isAllocated(id)) {
      for (let w = Rec.Connection as number; w <= Rec.ReplyPorts; w++) rec[r + w] = -1;
      return;
    }
    rec[r + Rec.Connection] = connection;
    rec[r + Rec.Protocol] = table.protocol(id);
    rec[r + Rec.Status] = table.status(id);
    rec[r + Rec.OrigSrc] = table.origSrc(id);
    rec[r + Rec.OrigDst] = table.origDst(id);
    rec[r + Rec.OrigPorts] = (table.origSport(id) << 16) | table.origDport(id);
    rec[r + Rec.ReplySrc] = table.replySrc(id);
    rec[r + Rec.ReplyDst] = table.replyDst(id);
    rec[r + Rec.ReplyPorts] = (table.replySport(id) << 16) | table.replyDport(id);
  }
}

/** The pcapng interfaces of a capture of `ports` (names) and `legs`, in the router's leg order. */
export function captureInterfaces(
  routerPorts: readonly { readonly name: string; readonly ethernet: boolean; readonly wireNamespace: string; readonly wireDevice: string }[],
  routerNamespace: string,
  ports: readonly string[],
  legs: CaptureLegs,
): CaptureInterface[] | string {
  const interfaces: CaptureInterface[] = [];
  for (const name of ports) {
    const index = routerPorts.findIndex((p) => p.name === name);
    if (index < 0) return `no port ${name} (the router's ports: ${routerPorts.map((p) => p.name).join(", ")})`;
    const port = routerPorts[index]!;
    const linkType = port.ethernet ? LINKTYPE_ETHERNET : LINKTYPE_RAW;
    if (legs !== "mirror") {
      interfaces.push({
        legIndex: index * 2 + LEG_WIRE,
        port: name,
        leg: "wire",
        name,
        description: `${name} wire leg: ${port.wireDevice} in namespace ${port.wireNamespace}`,
        linkType,
      });
    }
    if (legs !== "wire") {
      interfaces.push({
        legIndex: index * 2 + LEG_MIRROR,
        port: name,
        leg: "mirror",
        name: `${name}/mirror`,
        description: `${name} host mirror in namespace ${routerNamespace} (the router's own host)`,
        linkType,
      });
    }
  }
  // Several TUN interfaces: LINKTYPE_IPV4, which libpcap 1.10 reads (see pcapng.ts LINKTYPE_IPV4).
  if (interfaces.length > 1) return interfaces.map((iface) => (iface.linkType === LINKTYPE_RAW ? { ...iface, linkType: LINKTYPE_IPV4 } : iface));
  return interfaces;
}
