/**
 * The NAT stage: iptables nat rules + NAT bindings at the netfilter hooks, as Linux
 * nf_nat_inet_fn / nf_nat_ipv4_fn (net/netfilter/nf_nat_core.c, nf_nat_proto.c):
 *
 * - RELATED ICMP errors are translated from their connection (nf_nat_icmp_reply_translation).
 * - A connection whose binding for this hook's manip type is not yet set up (its first packet)
 *   walks the hook's chain; a NAT target sets up the binding, anything else (ACCEPT, RETURN to
 *   the policy) gets a null binding, so a clashing source port is still remapped.
 * - Every tracked packet is then translated from the binding (nf_nat_packet).
 *
 * Hooks and manip types (HOOK2MANIP): PREROUTING and OUTPUT do destination NAT, POSTROUTING and
 * INPUT source NAT. Untracked and INVALID packets pass untranslated, as on Linux.
 */
import { DropReason } from "../core/drop-reason.js";
import { CtState as ConntrackState, CtStatus, type ConntrackTable } from "../conntrack/table.js";
import type { TrackResult } from "../conntrack/track.js";
import { NatEngine } from "../nat/binding.js";
import { Manip, NF_NAT_RANGE_MAP_IPS, type NatRange } from "../nat/range.js";
import { CtState as RuleCtState, Hook } from "../nat/rules/model.js";
import { type CompiledRules, type NatDecision, NatDecisionKind, RuleInput, type RuleTrace } from "../nat/rules/evaluate.js";
import { describePacket } from "../wire/build.js";
import { IPPROTO_ICMP, type PacketInfo } from "../wire/packet-info.js";
import type { NatStage } from "./nat-stage.js";

const MANIP_NAMES = ["source NAT", "destination NAT"];

/** Linux nf_nat_redirect_ipv4: locally generated packets are redirected to 127.0.0.1. */
const LOOPBACK = 0x7f000001;

/** What `qnat trace` wants to see of the NAT stage (control plane only). */
export interface NatTraceSink {
  rules(hook: Hook, trace: RuleTrace): void;
  binding(hook: Hook, lines: string[]): void;
  translated(hook: Hook, what: string): void;
  readonly ruleTrace: () => RuleTrace;
}

export class NetfilterNat implements NatStage {
  readonly engine: NatEngine;
  /** Set by `qnat trace` for one packet; null on the hot path. */
  tracer: NatTraceSink | null = null;
  /**
   * The rule (CompiledRules ruleIndex, -1: the policy) whose verdict bound the latest connection's
   * source / destination NAT; read by the pipeline for a capture's comments (dataplane/decisions.ts).
   */
  boundSourceRule = -1;
  boundDestinationRule = -1;

  private readonly ruleInput = new RuleInput();
  private readonly range: NatRange = { minAddr: 0, maxAddr: 0, minPort: 0, maxPort: 0, flags: 0 };

  constructor(
    readonly table: ConntrackTable,
    readonly rules: CompiledRules,
    /** Each port's primary address (REDIRECT and MASQUERADE targets). */
    private readonly portPrimaries: readonly number[],
    engine: NatEngine,
  ) {
    this.engine = engine;
  }

  prerouting(buf: Uint8Array, info: PacketInfo, ct: TrackResult, ingress: number): DropReason {
    return this.hook(Hook.Prerouting, Manip.Dst, buf, info, ct, ingress, -1);
  }

  input(buf: Uint8Array, info: PacketInfo, ct: TrackResult, ingress: number): DropReason {
    return this.hook(Hook.Input, Manip.Src, buf, info, ct, ingress, -1);
  }

  output(buf: Uint8Array, info: PacketInfo, ct: TrackResult): DropReason {
    return this.hook(Hook.Output, Manip.Dst, buf, info, ct, -1, -1);
  }

  postrouting(buf: Uint8Array, info: PacketInfo, ct: TrackResult, ingress: number, egress: number): DropReason {
    return this.hook(Hook.Postrouting, Manip.Src, buf, info, ct, ingress, egress);
  }

  housekeeping(): void {}

  private hook(
    hook: Hook,
    manip: Manip,
    buf: Uint8Array,
    info: PacketInfo,
    ct: TrackResult,
    ingress: number,
    egress: number,
  ): DropReason {
    const id = ct.id;
    if (id < 0) return DropReason.None;
    const engine = this.engine;
    if (ct.state === ConntrackState.Related && info.protocol === IPPROTO_ICMP && info.isIcmpError) {
      const tracer = this.tracer;
      if (!engine.natIcmpError(buf, info, id, ct.dir, manip)) return DropReason.ConntrackInvalid;
      if (tracer !== null) tracer.translated(hook, "ICMP error translated with its embedded header (RELATED)");
      return DropReason.None;
    }
    if (!engine.manipDone(id, manip)) {
      const reason = this.bind(hook, manip, info, ct, ingress, egress);
      if (reason !== DropReason.None) return reason;
    }
    if (this.tracer === null) {
      engine.natPacket(buf, info, id, ct.dir, manip);
      return DropReason.None;
    }
    const before = describePacket(info);
    engine.natPacket(buf, info, id, ct.dir, manip);
    const after = describePacket(info);
    if (before !== after) this.tracer.translated(hook, `${MANIP_NAMES[manip]}: ${before} -> ${after}`);
    return DropReason.None;
  }

  /**
   * A binding into [minAddr, maxAddr] with the rule's ports and flags (nf_nat_setup_info). The
   * addresses are int32 bits: a uint32 of 128.0.0.0 or more passed to a call is a heap number.
   */
  private setup(id: number, manip: Manip, decision: NatDecision, minAddr: number, maxAddr: number, explain: string[] | undefined): boolean {
    const range = this.range;
    range.minAddr = minAddr;
    range.maxAddr = maxAddr;
    range.minPort = decision.minPort;
    range.maxPort = decision.maxPort;
    range.flags = decision.flags | NF_NAT_RANGE_MAP_IPS;
    return this.engine.setupNat(id, manip, range, explain);
  }

  /** The first packet of a connection at this hook: walk the chain, set up the binding. */
  private bind(hook: Hook, manip: Manip, info: PacketInfo, ct: TrackResult, ingress: number, egress: number): DropReason {
    const id = ct.id;
    const input = this.ruleInput;
    input.protocol = info.protocol;
    input.src = info.srcBits;
    input.dst = info.dstBits;
    input.sport = info.protocol === IPPROTO_ICMP ? 0 : info.sport;
    input.dport = info.protocol === IPPROTO_ICMP ? 0 : info.dport;
    input.icmpType = info.icmpType;
    input.icmpCode = info.icmpCode;
    input.tcpFlags = info.tcpFlags;
    input.inPort = ingress;
    input.outPort = egress;
    input.length = info.length;
    input.ctstate = ruleStateOf(ct, this.table.status(id));

    const tracer = this.tracer;
    const trace = tracer !== null ? tracer.ruleTrace() : undefined;
    const decision = this.rules.traverse(hook, input, trace);
    if (manip === Manip.Src) this.boundSourceRule = decision.ruleIndex;
    else this.boundDestinationRule = decision.ruleIndex;
    const explain: string[] | undefined = tracer !== null ? [] : undefined;
    if (tracer !== null) tracer.rules(hook, trace!);

    let ok: boolean;
    switch (decision.kind) {
      case NatDecisionKind.Dnat:
      case NatDecisionKind.Snat:
        ok = this.setup(id, manip, decision, decision.minAddr | 0, decision.maxAddr | 0, explain);
        break;
      case NatDecisionKind.Redirect: {
        // nf_nat_redirect_ipv4: the primary address of the incoming interface; loopback for OUTPUT.
        const addr = ingress >= 0 ? this.portPrimaries[ingress]! | 0 : LOOPBACK;
        ok = this.setup(id, manip, decision, addr, addr, explain);
        break;
      }
      case NatDecisionKind.Masquerade: {
        // nf_nat_masquerade_ipv4: the egress interface's address (inet_select_addr).
        const addr = egress >= 0 ? this.portPrimaries[egress]! | 0 : info.srcBits;
        ok = this.setup(id, manip, decision, addr, addr, explain);
        break;
      }
      default:
        ok = this.engine.nullBinding(id, manip, explain);
        if (explain !== undefined && ok) {
          // Linux nf_nat_alloc_null_binding: no rule NATs this connection at this hook, but its
          // tuple must still be unique (a clashing source port is remapped).
          const changed = (this.table.status(id) & (manip === Manip.Src ? CtStatus.SrcNat : CtStatus.DstNat)) !== 0;
          const side = manip === Manip.Src ? "source" : "destination";
          explain.length = 0;
          explain.push(
            changed
              ? `no ${side} NAT rule: null binding, but the tuple clashed, so it was remapped (nf_nat_alloc_null_binding)`
              : `no ${side} NAT rule: null binding, ${side} kept`,
          );
        }
    }
    if (tracer !== null) tracer.binding(hook, explain!);
    if (ok) return DropReason.None;
    // No free tuple: counted against the deciding rule (the policy's slot past the rules).
    const failures = this.rules.allocationFailures;
    failures[decision.ruleIndex >= 0 ? decision.ruleIndex : failures.length - 1]! += 1;
    return DropReason.NatNoFreeTuple;
  }
}

/** `-m conntrack --ctstate` bits for a packet (xt_conntrack.c conntrack_mt). */
function ruleStateOf(ct: TrackResult, status: number): number {
  let bits: number;
  switch (ct.state) {
    case ConntrackState.New:
      bits = RuleCtState.New;
      break;
    case ConntrackState.Established:
      bits = RuleCtState.Established;
      break;
    case ConntrackState.Related:
      bits = RuleCtState.Related;
      break;
    default:
      bits = RuleCtState.Invalid;
  }
  if ((status & CtStatus.SrcNat) !== 0) bits |= RuleCtState.Snat;
  if ((status & CtStatus.DstNat) !== 0) bits |= RuleCtState.Dnat;
  return bits;
}
