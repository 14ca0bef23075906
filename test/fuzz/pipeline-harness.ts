/**
 * Runs a fuzz scenario (scenario.ts) through the whole pipeline — Dataplane.processBatch and its
 * housekeeping, as the Forwarder drives them, on the seed's router with a manual clock and a
 * seeded RNG — and checks, for every packet, what must hold whatever the bytes were:
 *
 * - nothing throws out of the pipeline (nor is caught there as DropReason.Internal);
 * - parsePacket fills PacketInfo with finite integers (no undefined/NaN), offsets inside the buffer;
 * - every drop is one count of one DropReason (the counters grow by exactly the packets dropped),
 *   every packet held for its first fragment is accounted for until released or expired, and the
 *   router's own ICMP errors are never dropped, and embed a packet as its sender sent it;
 * - every forwarded packet parses, has its arrival length, and differs from what arrived only in
 *   the TTL, addresses, ports or ICMP identifier and the checksums over them; its IPv4 header
 *   checksum is right; its TCP/UDP/ICMP checksum (and an ICMP error's embedded ones) is right
 *   whenever it was right on arrival (a full recompute equals the incremental update; UDP
 *   checksum 0 stays 0; partial checksums stay the pseudo-header sum the offload header
 *   announces); its TTL is one less when forwarded and unchanged when delivered or sent locally;
 *   no fragment of a datagram longer than 65535 bytes leaves;
 * - its translation is the one its conntrack entry explains (`conntrack -L`'s tuples: the packet
 *   leaves as the inverse of the other direction's tuple; an ICMP error's embedded packet as that
 *   tuple), nothing is translated without one, and a later fragment as its first fragment;
 * - the translation is reversible: a reply to the forwarded packet's tuple reaches the original
 *   sender's address and port from the original destination, and so does an ICMP error about it,
 *   embedding the packet as the sender sent it;
 * - the conntrack table never holds more than its capacity.
 *
 * A broken invariant throws FuzzFailure naming the step, the packet and what was wrong; fast-check
 * then shrinks the scenario. Not a test file; used by pipeline.test.ts and scripts/fuzz.ts.
 */
import { formatIpv4 } from "../../src/core/addr.js";
import { PacketBatch, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN } from "../../src/core/batch.js";
import { ManualClock } from "../../src/core/clock.js";
import { DROP_REASON_COUNT, DropReason, dropReasonName } from "../../src/core/drop-reason.js";
import { XorShift32 } from "../../src/core/rng.js";
import { loadConfig, type RouterConfig } from "../../src/config/config.js";
import { conntrackEntryJson, formatConntrackTable, type ConntrackTupleJson } from "../../src/conntrack/format.js";
import { ConntrackTable, CtStatus } from "../../src/conntrack/table.js";
import { icmpInverseType, icmpTupleDport } from "../../src/conntrack/tuple.js";
import { buildRoutingTable, compileRules } from "../../src/dataplane/from-config.js";
import { NetfilterNat } from "../../src/dataplane/netfilter-nat.js";
import { Dataplane } from "../../src/dataplane/pipeline.js";
import { LEG_WIRE, VERDICT_DROP, VERDICT_FRAGMENTED, VERDICT_STOLEN } from "../../src/dataplane/port.js";
import { NatEngine } from "../../src/nat/binding.js";
import { compile, RuleTrace } from "../../src/nat/rules/evaluate.js";
import { parseRules } from "../../src/nat/rules/parse.js";
import type { RoutingTable } from "../../src/route/table.js";
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";
import { onesComplementSum, pseudoHeaderSum } from "../../src/wire/checksum.js";
import { icmpIsQuery } from "../../src/wire/icmp.js";
import { ipv4ChecksumValid } from "../../src/wire/ipv4.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PacketInfo, TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { parsePacket, verifyL4Checksum } from "../../src/wire/validate.js";
import { reassembleFragments } from "../support/fragments.js";
import { CONFIGS, TENANT_PORT, makeChecksumPartial, packetsOf, readU32, type ConfigName, type Scenario, type Step } from "./scenario.js";

export class FuzzFailure extends Error {
  override name = "FuzzFailure";
}

/** Figures of one run, summed by the long fuzz. */
export interface RunStats {
  packets: number;
  forwarded: number;
  dropped: number;
  held: number;
  replies: number;
  /** Packets the established fast path forwarded. */
  fastPath: number;
  /** ICMP errors the router sent (each checked to embed a packet as its sender sent it). */
  errorsSent: number;
}

const GSO_SLOT = 65_536 + VIRTIO_NET_HDR_LEN;
const PLAIN_SLOT = 2048;

const loaded = new Map<ConfigName, { config: RouterConfig; routes: RoutingTable }>();

/** A fuzzed router's config and routing table, built once (the table is read-only for the dataplane). */
function router(name: ConfigName): { config: RouterConfig; routes: RoutingTable } {
  let router = loaded.get(name);
  if (router === undefined) {
    const config = loadConfig(CONFIGS[name]);
    router = { config, routes: buildRoutingTable(config) };
    loaded.set(name, router);
  }
  return router;
}

/** What arrived, kept to judge what left. */
interface Arrival {
  bytes: Uint8Array;
  port: number;
  leg: number;
  partial: boolean;
  gsoSize: number;
  where: string;
  /** A reply or ICMP error the harness sent back: not answered in turn. */
  probe?: boolean;
}

interface Forwarded {
  arrival: Arrival;
  out: Uint8Array;
  verdict: number;
  explained: boolean;
  /** It left as fragments (`out` is them put back together): a partial checksum was completed. */
  fragmented?: boolean;
}

interface PumpResult {
  forwarded: Forwarded[];
  /** Drop reasons counted in this batch, "name=N ...". */
  dropped: string;
  sawInvalid: boolean;
}

export class PipelineHarness {
  readonly clock = new ManualClock();
  readonly dataplane: Dataplane;
  readonly conntrack: ConntrackTable;
  private readonly nat: NetfilterNat;
  private readonly laneBatches = new Map<string, PacketBatch>();
  private pumps = 0;
  readonly stats: RunStats = { packets: 0, forwarded: 0, dropped: 0, held: 0, replies: 0, fastPath: 0, errorsSent: 0 };
  private readonly ports: number;
  private readonly inInfo = new PacketInfo();
  private readonly outInfo = new PacketInfo();
  private readonly scratchInfo = new PacketInfo();
  /**
   * Fragments the dataplane held (stolen), to recognise them when released. Those that expire
   * stay here (which ones expired is not told); a released fragment is matched by its bytes.
   */
  private held: Arrival[] = [];
  /** The translation of each datagram's first fragment: key "src dst id proto" -> "src dst" out. */
  private readonly fragmentTranslations = new Map<string, string>();
  private where = "";
  /**
   * One line per batch: where, each packet's verdict and a hash of what left (the router's own
   * ICMP errors too), and of the connection table as `conntrack -L` prints it. Two harnesses
   * that differ only in `dataplane.fastPath` must log the same (STYLE.md rule 10).
   */
  readonly log: string[] = [];

  /** `rulesText`: nat rules to use instead of the seed's (they must parse without errors). */
  constructor(readonly scenario: Pick<Scenario, "config" | "capacity" | "rngSeed">, rulesText?: string) {
    const { config, routes } = router(scenario.config);
    const rng = new XorShift32(scenario.rngSeed);
    let engine: NatEngine | undefined;
    this.conntrack = new ConntrackTable({ capacity: scenario.capacity, clock: this.clock, seed: rng.next(), onRemove: (id) => engine?.forget(id) });
    engine = new NatEngine(this.conntrack, rng);
    const rules = rulesText === undefined ? compileRules(config) : compile(parseRules(rulesText).table, config.ports.map((p) => p.name));
    const nat = new NetfilterNat(this.conntrack, rules, config.ports.map((p) => p.addresses[0]!.addr), engine);
    this.nat = nat;
    this.dataplane = new Dataplane({
      ports: config.ports.map((p) => ({ name: p.name, addresses: p.addresses, mtu: p.mtu })),
      routes,
      conntrack: this.conntrack,
      clock: this.clock,
      nat,
    });
    this.ports = config.ports.length;
    this.dataplane.log = (line) => void this.internalErrors.push(line);
  }

  /** What the dataplane logged about exceptions it caught (each is also DropReason.Internal). */
  private readonly internalErrors: string[] = [];

  /**
   * Explains every packet as `qnat trace` does (the dataplane's and the NAT stage's tracers set,
   * their text kept): the trace code sees every packet the fuzz makes, and forwarding must not
   * change for it. Returns the lines written so far.
   */
  traceEverything(): string[] {
    const lines: string[] = [];
    this.dataplane.tracer = { step: (stage, text) => void lines.push(`${stage} ${text}`) };
    this.nat.tracer = {
      ruleTrace: () => new RuleTrace(),
      rules: (_hook, trace) => void lines.push(...trace.steps.map((s) => s.text)),
      binding: (_hook, text) => void lines.push(...text),
      translated: (_hook, what) => void lines.push(what),
    };
    return lines;
  }

  /** Runs every step; throws FuzzFailure at the first broken invariant. */
  run(steps: readonly Step[]): RunStats {
    steps.forEach((step, index) => {
      if (step.t === "tick") {
        this.clock.advance(step.seconds);
        return;
      }
      if (step.t === "burst") {
        const arrivals: Arrival[] = [];
        for (let k = 0; k < step.count; k++) {
          const sport = (step.firstPort + k) & 0xffff;
          const bytes = buildPacket({ protocol: step.protocol, src: step.src, dst: step.dst, sport, dport: step.dport, tcpFlags: TCP_SYN });
          arrivals.push({ bytes, port: TENANT_PORT, leg: LEG_WIRE, partial: false, gsoSize: 0, where: `step ${index} packet ${k}` });
        }
        for (let from = 0; from < arrivals.length; from += 64) this.pump(arrivals.slice(from, from + 64), false);
        return;
      }
      if (step.t === "flow") {
        step.tcpFlags.forEach((tcpFlags, k) => {
          if (k > 0) this.clock.advance(step.gapSeconds);
          const bytes = buildPacket(step.spec.protocol === "tcp" ? { ...step.spec, tcpFlags } : { ...step.spec, icmpSeq: k });
          const partial = step.offload && step.partial && makeChecksumPartial(bytes);
          this.pump([{ bytes, port: step.port, leg: step.leg, partial, gsoSize: step.offload ? step.gsoSize : 0, where: `step ${index} packet ${k}` }], step.offload);
        });
        return;
      }
      const arrivals: Arrival[] = [];
      step.packets.forEach((p, k) => {
        for (const bytes of packetsOf(p.gen)) {
          const partial = step.offload && p.partial && makeChecksumPartial(bytes);
          arrivals.push({ bytes, port: step.port, leg: step.leg, partial, gsoSize: step.offload ? p.gsoSize : 0, where: `step ${index} packet ${k}` });
        }
      });
      // A batch holds at most 64 packets (a fragment train may be longer than its step says).
      for (let from = 0; from < arrivals.length; from += 64) this.pump(arrivals.slice(from, from + 64), step.offload);
    });
    this.stats.fastPath = this.dataplane.fastPathPackets;
    return this.stats;
  }

  /**
   * One batch through processBatch and housekeeping (Forwarder.pump), every packet judged; what
   * left, the drop reasons counted, and whether conntrack found a packet INVALID.
   */
  /**
   * A receive batch of at least `count` slots whose packets live in the checksum kernel's memory,
   * one per shape, reused (a WebAssembly memory per batch would soon exhaust the address space).
   */
  private laneBatch(count: number, slot: number, headroom: number): PacketBatch {
    const capacity = Math.max(16, 2 ** Math.ceil(Math.log2(count)));
    const key = `${capacity}/${slot}/${headroom}`;
    let batch = this.laneBatches.get(key);
    if (batch === undefined) {
      batch = new PacketBatch(capacity, slot, headroom, { lanes: true });
      this.laneBatches.set(key, batch);
    }
    batch.clear();
    return batch;
  }

  private pump(arrivals: Arrival[], offload: boolean): PumpResult {
    const result: PumpResult = { forwarded: [], dropped: "", sawInvalid: false };
    if (arrivals.length === 0) return result;
    const { port, leg } = arrivals[0]!;
    const dp = this.dataplane;
    const ct = this.conntrack;
    const slot = offload ? GSO_SLOT : PLAIN_SLOT;
    const headroom = offload ? VIRTIO_NET_HDR_LEN : 0;
    // every other batch as a forwarder's receive batch: in WebAssembly memory, its L4 checksums
    // verified and its tuples cut out by the prefetch's kernels (core/batch-lanes.ts)
    const batch = this.pumps++ % 2 === 0 ? new PacketBatch(arrivals.length, slot, headroom) : this.laneBatch(arrivals.length, slot, headroom);
    const kept: Arrival[] = [];
    for (const a of arrivals) {
      this.where = a.where;
      this.checkParse(a.bytes);
      if (!batch.push(a.bytes)) continue; // larger than a slot: a TUN read would have cut it
      kept.push(a);
      if (offload) writeVirtioHeader(batch, batch.count - 1, a);
    }
    if (kept.length === 0) return result;
    const verdicts = new Int32Array(batch.capacity).fill(-99);
    const generated = new PacketBatch(batch.capacity, PLAIN_SLOT + batch.headroom, batch.headroom);
    const generatedVerdicts = new Int32Array(batch.capacity);
    const dropsBefore = this.packetDrops();
    const countersBefore = this.dataplane.drops.slice();
    const heldBefore = dp.fragments.heldFragments;
    const expiredBefore = dp.fragmentsExpired;
    const volatileBefore = this.volatileCount();
    const invalidBefore = ct.counters.invalid;
    const internalBefore = this.countOf(DropReason.Internal);

    try {
      dp.processBatch(batch, port, leg, verdicts, generated, generatedVerdicts);
    } catch (error) {
      throw new FuzzFailure(`${kept[0]!.where}: processBatch threw ${String((error as Error)?.stack ?? error)}`);
    }
    // Entries may vanish or packets be refused as INVALID within one batch; then a packet's
    // translation can no longer be read back from the table for sure.
    const volatile = this.volatileCount() !== volatileBefore;
    const sawInvalid = ct.counters.invalid !== invalidBefore;
    let drops = 0;
    let stolen = 0;
    const forwarded: Forwarded[] = [];
    const pieces = new FragmentCursor(dp, (message) => this.fail(message));
    for (let i = 0; i < batch.count; i++) {
      const a = kept[i]!;
      this.where = a.where;
      this.stats.packets++;
      const v = verdicts[i]!;
      if (v === VERDICT_DROP) drops++;
      else if (v === VERDICT_STOLEN) {
        stolen++;
        this.held.push(a);
      } else if (v === VERDICT_FRAGMENTED) {
        forwarded.push(pieces.take(a, batch.copyOut(i)));
      } else if (v >= 0 && v < this.ports * 2) {
        forwarded.push({ arrival: a, out: batch.copyOut(i), verdict: v, explained: false });
      } else this.fail(`verdict ${v} is neither a leg, a drop, fragmented nor held`);
    }
    const released = dp.released;
    const sent = [...kept];
    for (let i = 0; i < released.count; i++) {
      const out = released.copyOut(i);
      const v = dp.releasedVerdicts[i]!;
      const a = this.takeHeld(out, v);
      sent.push(a);
      this.where = `${a.where} (released)`;
      if (v === VERDICT_DROP) drops++;
      else if (v === VERDICT_STOLEN) {
        stolen++;
        this.held.push(a);
      } else if (v === VERDICT_FRAGMENTED) forwarded.push(pieces.take(a, out));
      else if (v >= 0 && v < this.ports * 2) forwarded.push({ arrival: a, out, verdict: v, explained: false });
      else this.fail(`released fragment: verdict ${v}`);
    }
    this.where = kept[0]!.where;
    pieces.done();
    // An exception inside the pipeline is caught there and counted as DropReason.Internal: for
    // the fuzz it is a bug all the same.
    const internal = this.internalErrors.length > 0 || this.countOf(DropReason.Internal) !== internalBefore;
    if (internal) this.fail(`the pipeline threw: ${this.internalErrors[0] ?? "(not logged)"}`);
    const dropsCounted = this.packetDrops() - dropsBefore;
    for (let port = 0; port < this.ports; port++) if (dp.drops[port * DROP_REASON_COUNT + DropReason.None]! > 0) this.fail("a drop was counted with no reason (DropReason.None)");
    if (dropsCounted !== drops) {
      this.fail(`${drops} packets dropped but the drop counters grew by ${dropsCounted} (${this.describeDrops(countersBefore)})`);
    }
    for (let i = 0; i < generated.count; i++) this.checkGenerated(generated, i, generatedVerdicts[i]!, sent);

    for (const f of forwarded) {
      this.where = f.arrival.where;
      f.explained = this.checkForwarded(f.arrival, f.out, f.verdict, volatile, sawInvalid, f.fragmented === true);
    }
    dp.housekeeping();
    const expired = dp.fragmentsExpired - expiredBefore;
    const heldNow = dp.fragments.heldFragments;
    if (heldNow !== heldBefore + stolen - released.count - expired) {
      this.fail(`held fragments ${heldBefore} + ${stolen} held - ${released.count} released - ${expired} expired != ${heldNow}`);
    }
    this.stats.dropped += drops;
    this.stats.held += stolen;
    this.stats.forwarded += forwarded.length;
    if (ct.count > ct.capacity) this.fail(`conntrack holds ${ct.count} entries, capacity ${ct.capacity}`);

    const left: string[] = [];
    for (let i = 0; i < batch.count; i++) left.push(`${verdicts[i]}:${verdicts[i]! >= 0 ? hashBytes(batch.copyOut(i)) : ""}`);
    for (let i = 0; i < released.count; i++) left.push(`r${dp.releasedVerdicts[i]}:${hashBytes(released.copyOut(i))}`);
    for (let i = 0; i < generated.count; i++) left.push(`g${generatedVerdicts[i]}:${hashBytes(generated.copyOut(i))}`);
    const fragmentBatch = dp.fragmentOutput.batch;
    for (let i = 0; i < fragmentBatch.count; i++) left.push(`f${dp.fragmentOutput.verdicts[i]}:${hashBytes(fragmentBatch.copyOut(i))}`);
    const table = new TextEncoder().encode(formatConntrackTable(ct));
    this.log.push(`${kept[0]!.where}: ${left.join(" ")} drops ${this.packetDrops()} conntrack ${ct.count}/${hashBytes(table)}`);
    result.forwarded = forwarded;
    result.dropped = this.describeDrops(countersBefore);
    result.sawInvalid = sawInvalid;
    // Replies, one batch each, after everything above was judged (not to the replies themselves).
    for (const f of forwarded) {
      if (!f.explained || f.arrival.probe) continue;
      this.where = `${f.arrival.where} (its reply)`;
      this.checkReply(f.arrival, f.out, f.verdict);
    }
    return result;
  }

  private fail(message: string): never {
    throw new FuzzFailure(`${this.where}: ${message}`);
  }

  /** Sum of the drop counters over ports and reasons, except suppressed ICMP errors (not packets). */
  private packetDrops(): number {
    let sum = 0;
    const drops = this.dataplane.drops;
    for (let i = 0; i < drops.length; i++) if (i % DROP_REASON_COUNT !== DropReason.IcmpRateLimited) sum += drops[i]!;
    return sum;
  }

  /** One drop reason's count over all ports. */
  private countOf(reason: DropReason): number {
    let sum = 0;
    for (let port = 0; port < this.ports; port++) sum += this.dataplane.drops[port * DROP_REASON_COUNT + reason]!;
    return sum;
  }

  /** The drop reasons counted since `before` (a copy of the counters), as "name=N ...". */
  private describeDrops(before: Float64Array): string {
    const names: string[] = [];
    this.dataplane.drops.forEach((n, i) => n > before[i]! && names.push(`${dropReasonName(i % DROP_REASON_COUNT)}=${n - before[i]!}`));
    return names.join(" ");
  }

  private volatileCount(): number {
    const c = this.conntrack.counters;
    return c.earlyDrop + c.removed + c.released + c.insertFailed + c.expired;
  }

  /**
   * The entry (`id << 1 | dir`) with this tuple, -1 for none. A scan, not ConntrackTable.lookup:
   * a lookup frees the dead entries it meets, and the harness must change nothing. Entries that
   * were killed in this batch (a RST before any reply: nf_ct_kill) still explain the packet that
   * killed them; a live entry with the same tuple wins over them.
   */
  private findEntry(protocol: number, src: number, dst: number, sport: number, dport: number): number {
    const t = this.conntrack;
    let found = -1;
    for (let id = 0; id < t.capacity; id++) {
      if (!t.isAllocated(id) || t.protocol(id) !== protocol) continue;
      for (let dir = 0; dir < 2; dir++) {
        if ((t.tupleSrcOf(id, dir) | 0) !== (src | 0) || (t.tupleDstOf(id, dir) | 0) !== (dst | 0)) continue;
        if (t.tupleSportOf(id, dir) !== sport || t.tupleDportOf(id, dir) !== dport) continue;
        if ((t.status(id) & CtStatus.Dying) === 0) return (id << 1) | dir;
        found = (id << 1) | dir;
      }
    }
    return found;
  }

  /** The held arrival a released fragment came from: same IP id, offset and payload (NAT changes only addresses). */
  private takeHeld(out: Uint8Array, verdict: number): Arrival {
    // Several held fragments may look alike but for their addresses, which NAT may have changed.
    const candidates = this.held.filter((a) => sameFragment(a.bytes, out));
    const exact = candidates.find((a) => readU32(a.bytes, 12) === readU32(out, 12) && readU32(a.bytes, 16) === readU32(out, 16));
    const index = this.held.indexOf(exact ?? candidates[0]!);
    if (index < 0) this.fail(`a fragment was released (verdict ${verdict}) that was never held`);
    return this.held.splice(index, 1)[0]!;
  }

  // ------------------------------------------------------------------------- parse

  /** parsePacket on the raw bytes, at offset 0 and inside a larger buffer: a verdict, finite fields. */
  private checkParse(bytes: Uint8Array): void {
    for (const pad of [0, 7]) {
      const buf = new Uint8Array(bytes.length + pad + 3);
      buf.set(bytes, pad);
      const info = this.scratchInfo;
      let reason: DropReason;
      try {
        reason = parsePacket(buf, pad, bytes.length, info);
      } catch (error) {
        this.fail(`parsePacket threw ${String(error)}`);
      }
      if (!Number.isInteger(reason) || reason < 0 || reason >= DROP_REASON_COUNT) this.fail(`parsePacket returned ${String(reason)}`);
      for (const [key, value] of Object.entries(info)) {
        if (key === "buf") continue;
        if (typeof value === "boolean") continue;
        // Addresses are held as int32 bits (srcBits, dstBits, ...: packet-info.ts), negative from 128.0.0.0 up.
        if (key.endsWith("Bits")) {
          if (value !== (value | 0)) this.fail(`PacketInfo.${key} is ${String(value)}, not int32 bits`);
          continue;
        }
        if (typeof value !== "number" || !Number.isInteger(value) || value < 0) this.fail(`PacketInfo.${key} is ${String(value)}`);
      }
      if (reason !== DropReason.None) continue;
      const end = pad + info.length;
      if (end > pad + bytes.length) this.fail(`parsed length ${info.length} beyond ${bytes.length} bytes`);
      if (info.l4Offset !== pad + info.headerLength || info.l4Offset + info.l4Length !== end) this.fail(`L4 offsets ${info.l4Offset}+${info.l4Length} do not end the packet at ${end}`);
      if (info.isIcmpError && info.innerOffset + info.innerHeaderLength > end) this.fail(`embedded header ${info.innerOffset}+${info.innerHeaderLength} beyond ${end}`);
    }
  }

  // ------------------------------------------------------------------------- forwarded

  /** Judges one packet that left; true when a conntrack entry explains its translation. */
  private checkForwarded(a: Arrival, out: Uint8Array, verdict: number, volatile: boolean, sawInvalid: boolean, fragmented = false): boolean {
    const inInfo = this.inInfo;
    const outInfo = this.outInfo;
    const inReason = parsePacket(a.bytes, 0, a.bytes.length, inInfo);
    if (inReason !== DropReason.None) this.fail(`forwarded although invalid on arrival (${dropReasonName(inReason)})`);
    const outReason = parsePacket(out, 0, out.length, outInfo);
    if (outReason !== DropReason.None) this.fail(`left invalid: ${dropReasonName(outReason)}`);
    if (outInfo.length !== out.length) this.fail(`left with ${out.length} bytes for a total length of ${outInfo.length}`);
    if (outInfo.headerLength + outInfo.fragmentOffset + outInfo.l4Length > 65535) this.fail(`a fragment ending at byte ${outInfo.fragmentOffset + outInfo.l4Length} of a datagram longer than 65535 bytes left`);
    const outLeg = verdict & 1;
    const forwardedTtl = a.leg === LEG_WIRE && outLeg === LEG_WIRE;
    const expectedTtl = forwardedTtl ? inInfo.ttl - 1 : inInfo.ttl;
    if (outInfo.ttl !== expectedTtl) this.fail(`TTL ${inInfo.ttl} -> ${outInfo.ttl}, expected ${expectedTtl} (${forwardedTtl ? "forwarded" : "local"})`);
    this.checkChecksums(a, out, fragmented);
    this.checkOnlyNatFieldsChanged(a, out, fragmented);
    return this.checkTranslation(a, out, volatile, sawInvalid);
  }

  /**
   * NAT and forwarding change the TTL, addresses, ports or ICMP identifier, and the checksums
   * over them (for an ICMP error, those of the packet it embeds too): any other byte that changed,
   * or a length that changed, is a write in the wrong place. A packet that left in fragments is
   * compared as reassembled, whose flags byte holds only the offset: the fragmenter writes each
   * fragment's frag_off anew (Linux ip_frag_next), so the reserved flag it arrived with is gone.
   */
  private checkOnlyNatFieldsChanged(a: Arrival, out: Uint8Array, fragmented: boolean): void {
    const info = this.inInfo;
    const length = info.length;
    if (out.length !== length) this.fail(`left with ${out.length} bytes, arrived with ${length}`);
    const may = new Uint8Array(length);
    const allow = (from: number, count: number): void => void may.fill(1, Math.max(0, from), Math.min(length, from + count));
    // Ports and checksum of TCP (checksum at 16) and UDP (at 6); checksum and identifier of ICMP.
    const allowL4 = (protocol: number, at: number): void => {
      if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) allow(at, 4);
      if (protocol === IPPROTO_TCP) allow(at + 16, 2);
      else if (protocol === IPPROTO_UDP) allow(at + 6, 2);
      else if (protocol === IPPROTO_ICMP) allow(at + 2, 4);
    };
    allow(8, 1); // TTL
    allow(10, 10); // header checksum, source, destination
    if (info.hasL4) allowL4(info.protocol, info.l4Offset);
    if (info.isIcmpError) {
      allow(info.innerOffset + 10, 10);
      allowL4(info.innerProtocol, info.innerOffset + info.innerHeaderLength);
    }
    for (let i = 0; i < length; i++) {
      const arrived = fragmented && i === 6 ? a.bytes[i]! & 0x7f : a.bytes[i];
      if (may[i] === 0 && out[i] !== arrived) this.fail(`byte ${i} changed from ${arrived} to ${out[i]}; NAT has no business there`);
    }
  }

  private checkChecksums(a: Arrival, out: Uint8Array, fragmented: boolean): void {
    const inInfo = this.inInfo;
    const outInfo = this.outInfo;
    if (!inInfo.hasL4 || inInfo.isFragment) return;
    const protocol = inInfo.protocol;
    if (protocol === IPPROTO_UDP && read16(a.bytes, inInfo.l4Offset + 6) === 0) {
      if (read16(out, outInfo.l4Offset + 6) !== 0) this.fail("UDP checksum 0 (none) was replaced");
      return;
    }
    if (a.partial && (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP)) {
      // Fragments leave as plain packets: the checksum was completed first (skb_checksum_help).
      if (fragmented) {
        if (partialConsistent(a.bytes, inInfo) && !verifyL4Checksum(out, outInfo)) this.fail("a partial checksum completed before fragmenting is wrong");
        return;
      }
      if (partialConsistent(a.bytes, inInfo) && !partialConsistent(out, outInfo)) this.fail("partial checksum is no longer the pseudo-header sum");
      return;
    }
    if (verifyL4Checksum(a.bytes, inInfo) && !verifyL4Checksum(out, outInfo)) this.fail(`${protocolLabel(protocol)} checksum wrong after rewriting (right on arrival)`);
    if (inInfo.isIcmpError && innerHeaderComplete(a.bytes, inInfo)) {
      if (onesComplementSum(a.bytes, inInfo.innerOffset, inInfo.innerHeaderLength) === 0xffff && onesComplementSum(out, outInfo.innerOffset, outInfo.innerHeaderLength) !== 0xffff) {
        this.fail("embedded IPv4 header checksum wrong after rewriting (right on arrival)");
      }
      // An embedded packet carried whole has a TCP/UDP/ICMP checksum of its own to keep right.
      if (embeddedL4ChecksumOk(a.bytes, inInfo) === true && embeddedL4ChecksumOk(out, outInfo) === false) {
        this.fail("embedded TCP/UDP/ICMP checksum wrong after rewriting (right on arrival)");
      }
    }
  }

  private checkTranslation(a: Arrival, out: Uint8Array, volatile: boolean, sawInvalid: boolean): boolean {
    const inInfo = this.inInfo;
    const outInfo = this.outInfo;
    const protocol = inInfo.protocol;
    const inKey = `${protocolLabel(protocol)} ${describe(inInfo)}`;
    const outKey = `${protocolLabel(protocol)} ${describe(outInfo)}`;
    const hasPorts = protocol === IPPROTO_TCP || protocol === IPPROTO_UDP || protocol === IPPROTO_ICMP;
    if (inInfo.fragmentOffset !== 0 && hasPorts) {
      // A later fragment: the translation of its datagram's first fragment, or none.
      const key = fragmentKey(a.bytes, inInfo);
      const got = `${formatIpv4(outInfo.src)} ${formatIpv4(outInfo.dst)}`;
      const untouched = `${formatIpv4(inInfo.src)} ${formatIpv4(inInfo.dst)}`;
      const expected = this.fragmentTranslations.get(key);
      // Never an internal address leaking out untranslated while its datagram is translated.
      if (expected !== undefined ? got !== expected : got !== untouched) this.fail(`fragment ${untouched} left as ${got}; its first fragment left as ${expected ?? "(not seen)"}`);
      return false;
    }
    if (inInfo.moreFragments && hasPorts) this.fragmentTranslations.set(fragmentKey(a.bytes, inInfo), `${formatIpv4(outInfo.src)} ${formatIpv4(outInfo.dst)}`);
    if (inInfo.isIcmpError) {
      this.checkErrorTranslation(volatile, sawInvalid);
      return false;
    }

    const lookup = tupleOf(inInfo);
    const handle = lookup === null ? -1 : this.findEntry(protocol, inInfo.src | 0, inInfo.dst | 0, lookup.sport, lookup.dport);
    if (handle < 0) {
      if (outKey !== inKey && !volatile) this.fail(`translated ${inKey} -> ${outKey} without a conntrack entry`);
      return false;
    }
    const entry = conntrackEntryJson(this.conntrack, handle >> 1);
    const other = (handle & 1) === 0 ? entry.reply : entry.original;
    const expected = `${protocolLabel(protocol)} ${describeInverse(other, protocol, outInfo)}`;
    if (outKey === expected) return true;
    if (outKey === inKey && (sawInvalid || volatile)) return false; // INVALID in this batch: passes untranslated (Linux)
    this.fail(`${inKey} left as ${outKey}; conntrack -L explains ${expected}: ${JSON.stringify(entry)}`);
  }

  /** An ICMP error of a known connection: its embedded packet becomes the other direction's tuple. */
  private checkErrorTranslation(volatile: boolean, sawInvalid: boolean): void {
    const inInfo = this.inInfo;
    const outInfo = this.outInfo;
    const inner = innerLookup(inInfo);
    const handle = inner === null ? -1 : this.findEntry(inInfo.innerProtocol, inInfo.innerDst | 0, inInfo.innerSrc | 0, inner.sport, inner.dport);
    const inText = describeError(inInfo);
    const outText = describeError(outInfo);
    if (handle < 0 || inInfo.dst >>> 0 !== inInfo.innerSrc >>> 0) {
      if (outText !== inText && !volatile) this.fail(`ICMP error ${inText} translated to ${outText} without a conntrack entry`);
      return;
    }
    const entry = conntrackEntryJson(this.conntrack, handle >> 1);
    const other = (handle & 1) === 0 ? entry.reply : entry.original;
    const innerOk = formatIpv4(outInfo.innerSrc) === other.src && formatIpv4(outInfo.innerDst) === other.dst && (!outInfo.innerHasPorts || innerPortsMatch(outInfo, other));
    const outerOk = formatIpv4(outInfo.dst) === other.src && (outInfo.src === inInfo.src || formatIpv4(outInfo.src) === other.dst);
    if (innerOk && outerOk) return;
    if (outText === inText && (sawInvalid || volatile)) return;
    this.fail(`ICMP error ${inText} left as ${outText}; conntrack -L explains embedded ${JSON.stringify(other)}: ${JSON.stringify(entry)}`);
  }

  /** The router's own ICMP errors: well-formed, checksums right, counted when dropped. */
  private checkGenerated(generated: PacketBatch, i: number, verdict: number, sent: readonly Arrival[]): void {
    if (verdict < 0) this.fail(`the router's own ICMP error was dropped (verdict ${verdict}) and no drop counter says why`);
    if (verdict >= this.ports * 2) this.fail(`generated ICMP error: verdict ${verdict}`);
    const out = generated.copyOut(i);
    const info = this.outInfo;
    const reason = parsePacket(out, 0, out.length, info);
    if (reason !== DropReason.None) this.fail(`the router's ICMP error is invalid: ${dropReasonName(reason)}`);
    if (info.protocol !== IPPROTO_ICMP || !info.isIcmpError) this.fail("the router generated something other than an ICMP error");
    if (!verifyL4Checksum(out, info)) this.fail("the router's ICMP error has a wrong ICMP checksum");
    // It is about a packet of this batch and goes back to that packet's sender, embedding the
    // packet as the sender sent it (Linux translates it back: nf_nat_icmp_reply_translation), so
    // the sender's stack can match it to its socket (RFC 1122 3.2.2).
    if (onesComplementSum(out, info.innerOffset, info.innerHeaderLength) !== 0xffff) this.fail("the router's ICMP error embeds a header with a wrong checksum");
    const embedded = describeError(info);
    const arrival = this.scratchInfo;
    const about = sent.find((a) => {
      if (parsePacket(a.bytes, 0, a.bytes.length, arrival) !== DropReason.None) return false;
      if (arrival.src !== info.dst || arrival.src !== info.innerSrc || arrival.dst !== info.innerDst || arrival.protocol !== info.innerProtocol) return false;
      if (read16(a.bytes, 4) !== read16(out, info.innerOffset + 4) || arrival.ttl !== out[info.innerOffset + 8]) return false;
      if (!info.innerHasPorts) return true;
      if (arrival.protocol === IPPROTO_ICMP) return !icmpIsQuery(arrival.icmpType) || arrival.icmpId === info.innerSport;
      return arrival.sport === info.innerSport && arrival.dport === info.innerDport;
    });
    if (about === undefined) this.fail(`the router's ICMP error ${embedded} is not about a packet as its sender sent it`);
    this.stats.errorsSent++;
  }

  // ------------------------------------------------------------------------- replies

  /**
   * The reply to a forwarded connection packet (TCP, UDP, ICMP query; not a fragment, not an
   * error) from where it went: it must reach the original sender's address and port, from the
   * original destination.
   */
  private checkReply(a: Arrival, out: Uint8Array, verdict: number): void {
    const inInfo = this.inInfo;
    const outInfo = this.outInfo;
    parsePacket(a.bytes, 0, a.bytes.length, inInfo);
    parsePacket(out, 0, out.length, outInfo);
    if (!outInfo.hasL4 || outInfo.isFragment || outInfo.isIcmpError) return;
    const protocol = outInfo.protocol;
    const tuple = tupleOf(inInfo);
    if (tuple === null) return;
    if (protocol === IPPROTO_ICMP ? !icmpIsQuery(outInfo.icmpType) || icmpInverseType(outInfo.icmpType) < 0 : protocol !== IPPROTO_TCP && protocol !== IPPROTO_UDP) return;
    // Only a packet its connection explains has a reply to reverse (not an INVALID one, and not
    // one whose entry is gone), and the reply must belong to that same connection.
    const original = this.findEntry(protocol, inInfo.src, inInfo.dst, tuple.sport, tuple.dport);
    if (original < 0) return;
    // A connection killed in this batch (a RST before any reply: nf_ct_kill) keeps no translation:
    // a reply to it is a connection of its own (an ACK is picked up mid-stream, untranslated).
    if ((this.conntrack.status(original >> 1) & CtStatus.Dying) !== 0) return;
    const replyType = icmpInverseType(outInfo.icmpType);
    const replyHandle =
      protocol === IPPROTO_ICMP
        ? this.findEntry(protocol, outInfo.dst, outInfo.src, outInfo.icmpId, icmpTupleDport(replyType, outInfo.icmpCode))
        : this.findEntry(protocol, outInfo.dst, outInfo.src, outInfo.dport, outInfo.sport);
    // (A connection to itself, 10.0.0.7:1024 > 10.0.0.7:1024, has one tuple both ways.)
    if (replyHandle >> 1 !== original >> 1) this.fail(`forwarded ${describe(outInfo)}: its reply tuple is not the other direction of its connection (${original} vs ${replyHandle})`);
    const base = { src: formatIpv4(outInfo.dst), dst: formatIpv4(outInfo.src), ttl: 64 };
    let reply: PacketSpec;
    if (protocol === IPPROTO_ICMP) {
      reply = { ...base, protocol: "icmp", icmpType: replyType, icmpCode: outInfo.icmpCode, icmpId: outInfo.icmpId };
    } else if (protocol === IPPROTO_TCP) {
      const flags = (inInfo.tcpFlags & TCP_SYN) !== 0 && (inInfo.tcpFlags & TCP_ACK) === 0 ? TCP_SYN | TCP_ACK : TCP_ACK;
      reply = { ...base, protocol: "tcp", sport: outInfo.dport, dport: outInfo.sport, tcpFlags: flags };
    } else {
      reply = { ...base, protocol: "udp", sport: outInfo.dport, dport: outInfo.sport };
    }
    // (pump() below reuses inInfo and outInfo: what is needed is read out first.)
    const wantDst = inInfo.src;
    const wantSrc = inInfo.dst;
    const wantPort = protocol === IPPROTO_ICMP ? inInfo.icmpId : inInfo.sport;
    const wantFrom = protocol === IPPROTO_ICMP ? -1 : inInfo.dport;
    const what = `reply ${protocolLabel(protocol)} ${describe(outInfo, true)}`;
    const outText = describe(outInfo);
    const egress = verdict >> 1;
    const leg = verdict & 1;
    const embedded = out.subarray(0, Math.min(out.length, 548));
    const errorSpec: PacketSpec = { protocol: "icmp", src: base.src, dst: base.dst, icmpType: 3, icmpCode: 3, payload: embedded };
    const probe = { port: egress, leg, partial: false, gsoSize: 0, where: this.where, probe: true };

    const answer = this.pump([{ ...probe, bytes: buildPacket(reply) }], false);
    this.stats.replies++;
    const info = this.scratchInfo;
    if (answer.forwarded.length === 0) {
      // A reply may be refused for reasons of its own (a martian original source, a route back
      // that is not unicast); never for want of the translation back.
      if (/nat-no-free-tuple|conntrack-insert-failed/.test(answer.dropped) && !answer.sawInvalid) this.fail(`${what}: dropped (${answer.dropped})`);
    } else if (!answer.sawInvalid) {
      const back = answer.forwarded[0]!.out;
      parsePacket(back, 0, back.length, info);
      const port = protocol === IPPROTO_ICMP ? info.icmpId : info.dport;
      const from = protocol === IPPROTO_ICMP ? -1 : info.sport;
      if (info.dst !== wantDst || port !== wantPort || info.src !== wantSrc || from !== wantFrom) {
        this.fail(`${what} reached ${describe(info)}, expected ${formatIpv4(wantSrc)}${wantFrom >= 0 ? `:${wantFrom}` : ""} > ${formatIpv4(wantDst)}:${wantPort}`);
      }
    }

    // An ICMP error about the forwarded packet, from where it went (RFC 792 port unreachable):
    // it reaches the original sender and embeds the packet as that sender sent it.
    const error = this.pump([{ ...probe, bytes: buildPacket(errorSpec) }], false);
    if (error.forwarded.length === 0 || error.sawInvalid) return;
    const back = error.forwarded[0]!.out;
    parsePacket(back, 0, back.length, info);
    if (info.dst !== wantDst || info.innerSrc !== wantDst || info.innerDst !== wantSrc || (info.innerHasPorts && info.innerSport !== wantPort)) {
      this.fail(`ICMP error about ${outText} reached ${describeError(info)}, expected it to reach ${formatIpv4(wantDst)} embedding ${formatIpv4(wantDst)}:${wantPort} > ${formatIpv4(wantSrc)}`);
    }
  }
}

// ---------------------------------------------------------------------------- helpers

function writeVirtioHeader(batch: PacketBatch, i: number, a: Arrival): void {
  const at = i * batch.slotSize;
  const protocol = a.bytes.length > 9 ? a.bytes[9] : 0;
  if (a.partial) batch.data[at] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  if (a.gsoSize > 0 && (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP)) {
    batch.data[at + 1] = protocol === IPPROTO_TCP ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_UDP_L4;
    batch.data[at + 4] = a.gsoSize & 0xff;
    batch.data[at + 5] = a.gsoSize >>> 8;
  }
}

/**
 * The fragments of the packets that were too big for their egress MTU, in the order the pipeline
 * cut them (the batch's packets, then the released ones): each packet's pieces must be whole
 * fragments (a valid header checksum, at most the egress MTU, 8-byte multiples but the last, one
 * egress) that together give back the packet as it left (`out`, whose header the pipeline changed
 * only by cutting); checkForwarded then judges that packet.
 */
class FragmentCursor {
  private next = 0;

  constructor(
    private readonly dp: Dataplane,
    private readonly fail: (message: string) => never,
  ) {}

  take(arrival: Arrival, out: Uint8Array): Forwarded {
    const batch = this.dp.fragmentOutput.batch;
    const verdicts = this.dp.fragmentOutput.verdicts;
    const headerLength = (out[0]! & 0x0f) * 4;
    const want = ((out[2]! << 8) | out[3]!) - headerLength;
    const pieces: Uint8Array[] = [];
    let got = 0;
    const verdict = verdicts[this.next]!;
    const mtu = this.dp.ports[verdict >> 1]?.mtu ?? 0;
    while (got < want) {
      if (this.next >= batch.count) this.fail(`fragmented, but its fragments cover ${got} of ${want} bytes`);
      const piece = batch.copyOut(this.next);
      if (verdicts[this.next] !== verdict) this.fail(`the fragments of one packet leave by legs ${verdict} and ${verdicts[this.next]}`);
      if (piece.length > mtu) this.fail(`a ${piece.length}-byte fragment left a port of MTU ${mtu}`);
      if (!ipv4ChecksumValid(piece, 0)) this.fail("a fragment left with a bad header checksum");
      if ((piece[6]! & 0x80) !== 0) this.fail("a fragment left with the reserved flag (ip_frag_next writes frag_off anew)");
      got += piece.length - headerLength;
      if (got < want && (piece.length - headerLength) % 8 !== 0) this.fail("a fragment before the last is not a multiple of 8 bytes");
      pieces.push(piece);
      this.next++;
    }
    if (pieces.length < 2) this.fail("fragmented into one piece");
    return { arrival, out: reassembleFragments(pieces), verdict, explained: false, fragmented: true };
  }

  /** Every fragment belongs to a packet. */
  done(): void {
    if (this.next !== this.dp.fragmentOutput.batch.count) this.fail(`${this.dp.fragmentOutput.batch.count - this.next} fragments of no packet`);
  }
}

/** FNV-1a over the bytes (a log entry, not a checksum). */
function hashBytes(b: Uint8Array): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
  return `${b.length}/${(h >>> 0).toString(16)}`;
}

function read16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

function protocolLabel(protocol: number): string {
  return protocol === IPPROTO_TCP ? "tcp" : protocol === IPPROTO_UDP ? "udp" : protocol === IPPROTO_ICMP ? "icmp" : `proto-${protocol}`;
}

/** "SRC:SPORT > DST:DPORT" (ICMP queries: "SRC > DST id N type T"). */
function describe(info: PacketInfo, noType = false): string {
  if (info.protocol === IPPROTO_TCP || info.protocol === IPPROTO_UDP) return `${formatIpv4(info.src)}:${info.sport} > ${formatIpv4(info.dst)}:${info.dport}`;
  if (info.protocol === IPPROTO_ICMP && icmpIsQuery(info.icmpType)) return `${formatIpv4(info.src)} > ${formatIpv4(info.dst)} id ${info.icmpId}${noType ? "" : ` type ${info.icmpType}`}`;
  return `${formatIpv4(info.src)} > ${formatIpv4(info.dst)}`;
}

/** The packet a tuple's inverse describes, in `describe`'s format (ICMP type from the packet). */
function describeInverse(t: ConntrackTupleJson, protocol: number, like: PacketInfo): string {
  if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) return `${t.dst}:${t.dport} > ${t.src}:${t.sport}`;
  if (protocol === IPPROTO_ICMP && icmpIsQuery(like.icmpType)) return `${t.dst} > ${t.src} id ${t.id} type ${like.icmpType}`;
  return `${t.dst} > ${t.src}`;
}

function describeError(info: PacketInfo): string {
  const ports = info.innerHasPorts ? ` ${info.innerSport}>${info.innerDport}` : "";
  return `${formatIpv4(info.src)} > ${formatIpv4(info.dst)} [${protocolLabel(info.innerProtocol)} ${formatIpv4(info.innerSrc)} > ${formatIpv4(info.innerDst)}${ports}]`;
}

/** The conntrack lookup ports of a packet (track.ts), or null when it cannot have an entry. */
function tupleOf(info: PacketInfo): { sport: number; dport: number } | null {
  if (info.protocol === IPPROTO_TCP || info.protocol === IPPROTO_UDP) return info.hasL4 ? { sport: info.sport, dport: info.dport } : null;
  if (info.protocol === IPPROTO_ICMP) return info.hasL4 && icmpIsQuery(info.icmpType) ? { sport: info.icmpId, dport: icmpTupleDport(info.icmpType, info.icmpCode) } : null;
  return { sport: 0, dport: 0 };
}

/** The inverted embedded tuple's ports (track.ts trackIcmpError), or null. */
function innerLookup(info: PacketInfo): { sport: number; dport: number } | null {
  const p = info.innerProtocol;
  if (p === IPPROTO_TCP || p === IPPROTO_UDP) return info.innerHasPorts ? { sport: info.innerDport, dport: info.innerSport } : null;
  if (p === IPPROTO_ICMP) {
    if (!info.innerHasPorts) return null;
    const inverse = icmpInverseType(info.innerIcmpType);
    return inverse < 0 ? null : { sport: info.innerSport, dport: icmpTupleDport(inverse, info.innerIcmpCode) };
  }
  return { sport: 0, dport: 0 };
}

function innerPortsMatch(info: PacketInfo, t: ConntrackTupleJson): boolean {
  if (info.innerProtocol === IPPROTO_TCP || info.innerProtocol === IPPROTO_UDP) return info.innerSport === t.sport && info.innerDport === t.dport;
  if (info.innerProtocol === IPPROTO_ICMP) return !icmpIsQuery(info.innerIcmpType) || info.innerSport === t.id;
  return true;
}

function innerHeaderComplete(b: Uint8Array, info: PacketInfo): boolean {
  return info.innerOffset + info.innerHeaderLength <= info.offset + info.length && b.length >= info.innerOffset + info.innerHeaderLength;
}

/** The embedded packet's own L4 checksum when the error carries it whole; undefined when it cannot be judged. */
function embeddedL4ChecksumOk(b: Uint8Array, info: PacketInfo): boolean | undefined {
  const end = info.offset + info.length;
  const inner = b.subarray(info.innerOffset, end);
  if (inner.length < 20 || ((inner[2]! << 8) | inner[3]!) !== inner.length) return undefined;
  const innerInfo = new PacketInfo();
  if (parsePacket(inner, 0, inner.length, innerInfo) !== DropReason.None || !innerInfo.hasL4 || innerInfo.isFragment) return undefined;
  return verifyL4Checksum(inner, innerInfo);
}

function partialConsistent(b: Uint8Array, info: PacketInfo): boolean {
  const at = info.l4Offset + (info.protocol === IPPROTO_TCP ? 16 : 6);
  return read16(b, at) === pseudoHeaderSum(info.src, info.dst, info.protocol, info.l4Length);
}

function fragmentKey(b: Uint8Array, info: PacketInfo): string {
  return `${info.src} ${info.dst} ${read16(b, info.offset + 4)} ${info.protocol}`;
}

/** Same IP identification, fragment field and payload: one fragment before and after NAT. */
function sameFragment(arrived: Uint8Array, b: Uint8Array): boolean {
  const a = arrived.subarray(0, Math.min(arrived.length, read16(arrived, 2)));
  if (a.length !== b.length || a.length < 20 || read16(a, 4) !== read16(b, 4) || read16(a, 6) !== read16(b, 6)) return false;
  const ihl = (a[0]! & 0x0f) << 2;
  for (let i = ihl; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
