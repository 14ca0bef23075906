/**
 * Evaluates a parsed nat table the way ipt_do_table (net/ipv4/netfilter/ip_tables.c) walks it.
 *
 * `compile(table, portNames)` flattens the table once (control plane) into typed arrays:
 * per rule the address/mask tests, protocol, one precomputed boolean per router port for `-i`/`-o`
 * (wildcards resolved once), a small match program for the extensions, the target and its NAT
 * range, and packet/byte counters. `traverse(hook, input, trace?)` is the hot path: no allocation,
 * numbers only, one reused decision object.
 *
 * Semantics (ip_tables.c ipt_do_table, x_tables.c):
 * - rules run in order; a rule whose tests all match has its counters incremented (jump rules
 *   included) and then its target applied;
 * - `-j CHAIN` pushes the next rule as return point, `-g CHAIN` does not;
 * - RETURN, or the end of a user chain, pops; with nothing to pop the built-in chain's policy
 *   applies (its counters count, the verdict is the policy, always ACCEPT in nat);
 * - ACCEPT ends the traversal of this table for this hook, a NAT target is terminal;
 * - the interface tests see the empty name for "no device" (ip_packet_match with nulldevname),
 *   so `! -i X` matches when there is no input device.
 *
 * Per DESIGN.md the engine consults nat only for the first packet of a connection (NEW) and
 * supplies the conntrack state bits (CtState.Snat/Dnat when the reply tuple differs).
 */
import { formatIpv4 } from "../../core/addr.js";
import { formatNatRange, formatRule } from "./format.js";
import {
  BUILTIN_CHAIN_NAMES,
  HOOK_COUNT,
  NatRangeFlag,
  TargetKind,
  chainsInOrder,
  type Hook,
  type NatChain,
  type NatRule,
  type NatTable,
  type RuleTarget,
} from "./model.js";

/** The facts a rule can test about one packet. One instance is reused for every packet. */
export class RuleInput {
  protocol = 0;
  /** Addresses; the dataplane gives int32 bits (packet-info.ts), a uint32 matches the same. */
  src = 0;
  dst = 0;
  /** TCP/UDP ports (0 for other protocols). */
  sport = 0;
  dport = 0;
  icmpType = 0;
  icmpCode = 0;
  /** TCP flags byte (for --tcp-flags / --syn). */
  tcpFlags = 0;
  /** Index into the compiled port names, -1 for none (OUTPUT has no input device). */
  inPort = -1;
  outPort = -1;
  /** CtState bitmask. */
  ctstate = 0;
  /** Bytes of the packet, for the byte counters. */
  length = 0;
}

export enum NatDecisionKind {
  /** No rule decided: the chain policy (ACCEPT) applies; the engine makes a null binding. */
  None = 0,
  /** An explicit ACCEPT rule: no translation in this hook. */
  Accept,
  Dnat,
  Snat,
  Redirect,
  Masquerade,
}

/** The outcome of one traversal. One instance per compiled table, overwritten by each call. */
export class NatDecision {
  kind = NatDecisionKind.None;
  /** NAT range (meaningful for Dnat/Snat; Redirect/Masquerade only use ports). */
  minAddr = 0;
  maxAddr = 0;
  minPort = 0;
  maxPort = 0;
  /** NatRangeFlag bits: MapIps, ProtoSpecified (ports given), ProtoRandom, Persistent, ProtoRandomFully. */
  flags = 0;
  /** Global index (print order, see rulesInOrder) of the deciding rule; -1 for the policy. */
  ruleIndex = -1;
}

export interface RuleTraceStep {
  /** "rule": a rule tested; "return": the end of a user chain; "policy": a built-in's policy applied. */
  readonly kind: "rule" | "return" | "policy";
  readonly chain: string;
  /** 1-based rule number in its chain; 0 for "return" and "policy" steps. */
  readonly ruleNumber: number;
  /** `-A ...` text of the rule, `-P CHAIN ACCEPT` for the policy. */
  readonly text: string;
  readonly matched: boolean;
  /** What happened when it matched: "jump X", "goto X", "RETURN", "ACCEPT", "DNAT to ...", "continue". */
  readonly action: string;
}

/** Collects the steps of one traversal for `qnat trace` (control plane: allocates). */
export class RuleTrace {
  readonly steps: RuleTraceStep[] = [];
  verdict = "";
}

// Target kinds as plain constants for the hot loop's switch.
const TARGET_NONE: number = TargetKind.None;
const TARGET_ACCEPT: number = TargetKind.Accept;
const TARGET_RETURN: number = TargetKind.Return;
const TARGET_JUMP: number = TargetKind.Jump;
const TARGET_GOTO: number = TargetKind.Goto;

/** Match program opcodes, each followed by its operands in `matchCode`. */
const enum Op {
  /** min, max, invert */
  Sport = 1,
  Dport = 2,
  /** mask, comp, invert */
  TcpFlags = 3,
  /** mask, invert */
  CtState = 4,
  /** type, codeMin, codeMax, invert */
  Icmp = 5,
  /** direction (1 src, 2 dst, 3 either), invert, count, then count × (min, max) */
  Multiport = 6,
}

export class CompiledRules {
  readonly portNames: readonly string[];
  /** The rules in print order; index = ruleIndex. */
  readonly rules: readonly NatRule[];
  readonly chains: readonly NatChain[];
  /** The decision of the latest traverse(). */
  readonly decision = new NatDecision();

  /** Per rule. */
  readonly packets: Float64Array;
  readonly bytes: Float64Array;
  /**
   * Per rule, and one more slot (index `rules.length`) for the chains' policies: NAT bindings
   * that found no free tuple for the range the rule decided (DropReason.NatNoFreeTuple; a policy
   * or ACCEPT decision asks for a null binding). Counted by the NAT stage on that failure only.
   */
  readonly allocationFailures: Float64Array;
  /** Per chain (policy counters; used for built-ins only). */
  readonly policyPackets: Float64Array;
  readonly policyBytes: Float64Array;

  private readonly ruleChain: Int32Array;
  private readonly srcAddr: Int32Array;
  private readonly srcMask: Int32Array;
  private readonly dstAddr: Int32Array;
  private readonly dstMask: Int32Array;
  private readonly protocol: Int32Array;
  /** Bits: 1 src, 2 dst, 4 protocol. */
  private readonly invert: Uint8Array;
  /** (portCount + 1) entries per rule: [no device, port 0, port 1, ...], 1 = matches. */
  private readonly inMatch: Uint8Array;
  private readonly outMatch: Uint8Array;
  private readonly portStride: number;
  private readonly matchStart: Int32Array;
  private readonly matchEnd: Int32Array;
  private readonly matchCode: Int32Array;
  private readonly targetKind: Uint8Array;
  private readonly targetChain: Int32Array;
  private readonly natFlags: Int32Array;
  private readonly natMinAddr: Float64Array;
  private readonly natMaxAddr: Float64Array;
  private readonly natMinPort: Int32Array;
  private readonly natMaxPort: Int32Array;
  private readonly chainFirst: Int32Array;
  private readonly chainEnd: Int32Array;
  private readonly hookChain: Int32Array;
  /** Jump stack: return rule index and its chain (depth is bounded by the chain count: no loops). */
  private readonly stackRule: Int32Array;
  private readonly stackChain: Int32Array;
  /** Control plane: rule texts and numbers for traces. */
  private readonly ruleText: string[];
  private readonly ruleNumber: Int32Array;

  constructor(table: NatTable, portNames: readonly string[]) {
    this.portNames = portNames.slice();
    const chains = chainsInOrder(table);
    this.chains = chains;
    const chainIndex = new Map<string, number>();
    chains.forEach((chain, index) => chainIndex.set(chain.name, index));
    const rules: NatRule[] = [];
    this.chainFirst = new Int32Array(chains.length);
    this.chainEnd = new Int32Array(chains.length);
    chains.forEach((chain, index) => {
      this.chainFirst[index] = rules.length;
      rules.push(...chain.rules);
      this.chainEnd[index] = rules.length;
    });
    this.rules = rules;
    const n = rules.length;
    this.hookChain = new Int32Array(HOOK_COUNT);
    for (let hook = 0; hook < HOOK_COUNT; hook++) this.hookChain[hook] = chainIndex.get(BUILTIN_CHAIN_NAMES[hook]!)!;

    this.packets = new Float64Array(n);
    this.bytes = new Float64Array(n);
    this.allocationFailures = new Float64Array(n + 1);
    this.policyPackets = new Float64Array(chains.length);
    this.policyBytes = new Float64Array(chains.length);
    this.ruleChain = new Int32Array(n);
    this.srcAddr = new Int32Array(n);
    this.srcMask = new Int32Array(n);
    this.dstAddr = new Int32Array(n);
    this.dstMask = new Int32Array(n);
    this.protocol = new Int32Array(n);
    this.invert = new Uint8Array(n);
    this.portStride = this.portNames.length + 1;
    this.inMatch = new Uint8Array(n * this.portStride);
    this.outMatch = new Uint8Array(n * this.portStride);
    this.matchStart = new Int32Array(n);
    this.matchEnd = new Int32Array(n);
    this.targetKind = new Uint8Array(n);
    this.targetChain = new Int32Array(n);
    this.natFlags = new Int32Array(n);
    this.natMinAddr = new Float64Array(n);
    this.natMaxAddr = new Float64Array(n);
    this.natMinPort = new Int32Array(n);
    this.natMaxPort = new Int32Array(n);
    this.stackRule = new Int32Array(chains.length + 1);
    this.stackChain = new Int32Array(chains.length + 1);
    this.ruleText = [];
    this.ruleNumber = new Int32Array(n);

    const code: number[] = [];
    chains.forEach((chain, c) => {
      chain.rules.forEach((rule, number) => {
        const r = this.chainFirst[c]! + number;
        this.ruleChain[r] = c;
        this.ruleNumber[r] = number + 1;
        this.ruleText.push(formatRule(rule));
        this.packets[r] = rule.packets;
        this.bytes[r] = rule.bytes;
        this.srcAddr[r] = rule.src.addr | 0;
        this.srcMask[r] = rule.src.mask | 0;
        this.dstAddr[r] = rule.dst.addr | 0;
        this.dstMask[r] = rule.dst.mask | 0;
        this.protocol[r] = rule.protocol;
        this.invert[r] = (rule.src.invert ? 1 : 0) | (rule.dst.invert ? 2 : 0) | (rule.protocolInvert ? 4 : 0);
        for (let port = -1; port < this.portNames.length; port++) {
          const name = port < 0 ? "" : this.portNames[port]!;
          const at = r * this.portStride + port + 1;
          this.inMatch[at] = interfaceMatches(rule.inInterface?.name, rule.inInterface?.invert ?? false, name) ? 1 : 0;
          this.outMatch[at] = interfaceMatches(rule.outInterface?.name, rule.outInterface?.invert ?? false, name) ? 1 : 0;
        }
        this.matchStart[r] = code.length;
        compileMatches(rule, code);
        this.matchEnd[r] = code.length;
        this.compileTarget(r, rule.target, chainIndex);
      });
      this.policyPackets[c] = chain.packets;
      this.policyBytes[c] = chain.bytes;
    });
    this.matchCode = Int32Array.from(code);
  }

  private compileTarget(r: number, target: RuleTarget, chainIndex: Map<string, number>): void {
    this.targetKind[r] = target.kind;
    this.targetChain[r] = -1;
    switch (target.kind) {
      case TargetKind.Jump:
      case TargetKind.Goto: {
        const index = chainIndex.get(target.chain);
        if (index === undefined) throw new Error(`compile: jump to undefined chain "${target.chain}"`);
        this.targetChain[r] = index;
        break;
      }
      case TargetKind.Dnat:
      case TargetKind.Snat:
      case TargetKind.Redirect:
      case TargetKind.Masquerade:
        this.natFlags[r] = target.range.flags;
        this.natMinAddr[r] = target.range.minAddr;
        this.natMaxAddr[r] = target.range.maxAddr;
        this.natMinPort[r] = target.range.minPort;
        this.natMaxPort[r] = target.range.maxPort;
        break;
      default:
        break;
    }
  }

  /**
   * Walks the hook's built-in chain for one packet and returns the (reused) decision.
   * Hot path: allocation-free unless `trace` is given.
   */
  traverse(hook: Hook, input: RuleInput, trace?: RuleTrace): NatDecision {
    const stride = this.portStride;
    const portCount = stride - 1;
    const inSlot = input.inPort >= 0 && input.inPort < portCount ? input.inPort + 1 : 0;
    const outSlot = input.outPort >= 0 && input.outPort < portCount ? input.outPort + 1 : 0;
    const builtin = this.hookChain[hook]!;
    const chainFirst = this.chainFirst;
    const chainEnd = this.chainEnd;
    const targetKind = this.targetKind;
    const packets = this.packets;
    const bytes = this.bytes;
    const length = input.length;
    let chain = builtin;
    let r = chainFirst[chain]!;
    let end = chainEnd[chain]!;
    let depth = 0;
    for (;;) {
      let returning = false;
      if (r >= end) {
        if (trace !== undefined && chain !== builtin) this.traceReturn(trace, chain);
        returning = true;
      } else if (!this.ruleMatches(r, input, inSlot, outSlot)) {
        if (trace !== undefined) this.traceRule(trace, r, false, "");
        r++;
        continue;
      } else {
        packets[r]! += 1;
        bytes[r]! += length;
        const kind = targetKind[r]!;
        if (kind === TARGET_NONE) {
          if (trace !== undefined) this.traceRule(trace, r, true, "continue");
          r++;
          continue;
        }
        if (kind === TARGET_JUMP || kind === TARGET_GOTO) {
          const next = this.targetChain[r]!;
          if (trace !== undefined) {
            this.traceRule(trace, r, true, `${kind === TARGET_JUMP ? "jump" : "goto"} ${this.chains[next]!.name}`);
          }
          if (kind === TARGET_JUMP) {
            this.stackRule[depth] = r + 1;
            this.stackChain[depth] = chain;
            depth++;
          }
          chain = next;
          r = chainFirst[next]!;
          end = chainEnd[next]!;
          continue;
        }
        if (kind === TARGET_RETURN) {
          if (trace !== undefined) this.traceRule(trace, r, true, "RETURN");
          returning = true;
        } else if (kind === TARGET_ACCEPT) {
          if (trace !== undefined) this.traceRule(trace, r, true, "ACCEPT");
          return this.decide(NatDecisionKind.Accept, r, trace);
        } else {
          if (trace !== undefined) this.traceRule(trace, r, true, this.describeNat(r));
          return this.decide(natKindOf(kind), r, trace);
        }
      }
      if (returning) {
        if (depth === 0) {
          // Underflow: the built-in chain's policy (ip_tables.c uses private->underflow[hook]).
          this.policyPackets[builtin]! += 1;
          this.policyBytes[builtin]! += length;
          if (trace !== undefined) {
            const name = this.chains[builtin]!.name;
            trace.steps.push({ kind: "policy", chain: name, ruleNumber: 0, text: `-P ${name} ACCEPT`, matched: true, action: "policy ACCEPT" });
          }
          return this.decide(NatDecisionKind.None, -1, trace);
        }
        depth--;
        r = this.stackRule[depth]!;
        chain = this.stackChain[depth]!;
        end = chainEnd[chain]!;
      }
    }
  }

  private ruleMatches(r: number, input: RuleInput, inSlot: number, outSlot: number): boolean {
    const invert = this.invert[r]!;
    if (((input.src & this.srcMask[r]!) === this.srcAddr[r]!) === ((invert & 1) !== 0)) return false;
    if (((input.dst & this.dstMask[r]!) === this.dstAddr[r]!) === ((invert & 2) !== 0)) return false;
    const protocol = this.protocol[r]!;
    if (protocol !== 0 && (input.protocol === protocol) === ((invert & 4) !== 0)) return false;
    const base = r * this.portStride;
    if (this.inMatch[base + inSlot] === 0 || this.outMatch[base + outSlot] === 0) return false;
    const code = this.matchCode;
    let pc = this.matchStart[r]!;
    const end = this.matchEnd[r]!;
    while (pc < end) {
      switch (code[pc]) {
        case Op.Sport:
          if ((input.sport >= code[pc + 1]! && input.sport <= code[pc + 2]!) === (code[pc + 3] !== 0)) return false;
          pc += 4;
          break;
        case Op.Dport:
          if ((input.dport >= code[pc + 1]! && input.dport <= code[pc + 2]!) === (code[pc + 3] !== 0)) return false;
          pc += 4;
          break;
        case Op.TcpFlags:
          if (((input.tcpFlags & code[pc + 1]!) === code[pc + 2]) === (code[pc + 3] !== 0)) return false;
          pc += 4;
          break;
        case Op.CtState:
          if (((input.ctstate & code[pc + 1]!) !== 0) === (code[pc + 2] !== 0)) return false;
          pc += 3;
          break;
        case Op.Icmp: {
          // xt_icmp icmp_type_code_match: type 0xff is "any".
          const type = code[pc + 1]!;
          const hit =
            type === 0xff ||
            (input.icmpType === type && input.icmpCode >= code[pc + 2]! && input.icmpCode <= code[pc + 3]!);
          if (hit === (code[pc + 4] !== 0)) return false;
          pc += 5;
          break;
        }
        case Op.Multiport: {
          const direction = code[pc + 1]!;
          const count = code[pc + 3]!;
          let hit = false;
          for (let k = 0; k < count && !hit; k++) {
            const min = code[pc + 4 + 2 * k]!;
            const max = code[pc + 5 + 2 * k]!;
            hit =
              ((direction & 1) !== 0 && input.sport >= min && input.sport <= max) ||
              ((direction & 2) !== 0 && input.dport >= min && input.dport <= max);
          }
          if (hit === (code[pc + 2] !== 0)) return false;
          pc += 4 + 2 * count;
          break;
        }
        default:
          return false;
      }
    }
    return true;
  }

  private decide(kind: NatDecisionKind, r: number, trace: RuleTrace | undefined): NatDecision {
    const decision = this.decision;
    decision.kind = kind;
    decision.ruleIndex = r;
    if (r >= 0 && kind !== NatDecisionKind.Accept) {
      decision.flags = this.natFlags[r]!;
      decision.minAddr = this.natMinAddr[r]!;
      decision.maxAddr = this.natMaxAddr[r]!;
      decision.minPort = this.natMinPort[r]!;
      decision.maxPort = this.natMaxPort[r]!;
    } else {
      decision.flags = 0;
      decision.minAddr = 0;
      decision.maxAddr = 0;
      decision.minPort = 0;
      decision.maxPort = 0;
    }
    if (trace !== undefined) trace.verdict = describeDecision(decision);
    return decision;
  }

  private traceRule(trace: RuleTrace, r: number, matched: boolean, action: string): void {
    trace.steps.push({
      kind: "rule",
      chain: this.chains[this.ruleChain[r]!]!.name,
      ruleNumber: this.ruleNumber[r]!,
      text: this.ruleText[r]!,
      matched,
      action,
    });
  }

  private traceReturn(trace: RuleTrace, chain: number): void {
    const name = this.chains[chain]!.name;
    trace.steps.push({ kind: "return", chain: name, ruleNumber: 0, text: `end of chain ${name}`, matched: true, action: "RETURN" });
  }

  private describeNat(r: number): string {
    const target = this.rules[r]!.target;
    if (target.kind === TargetKind.Redirect || target.kind === TargetKind.Masquerade) {
      const ports = (target.range.flags & NatRangeFlag.ProtoSpecified) !== 0 ? ` to ports ${target.range.minPort}-${target.range.maxPort}` : "";
      return `${target.kind === TargetKind.Redirect ? "REDIRECT" : "MASQUERADE"}${ports}`;
    }
    if (target.kind === TargetKind.Dnat || target.kind === TargetKind.Snat) {
      return `${target.kind === TargetKind.Dnat ? "DNAT" : "SNAT"} to ${formatNatRange(target.range)}`;
    }
    return "";
  }

  /** `CHAIN #N` (N counted from 1 in its chain) of a decision's ruleIndex, for a capture's comments. */
  ruleLabelOf(ruleIndex: number): string {
    if (ruleIndex < 0 || ruleIndex >= this.rules.length) return "the chain policy";
    return `${this.chains[this.ruleChain[ruleIndex]!]!.name} #${this.ruleNumber[ruleIndex]!}`;
  }

  /** The rule text of a decision's ruleIndex, for messages. */
  ruleTextOf(ruleIndex: number): string {
    return ruleIndex < 0 ? "(policy)" : this.ruleText[ruleIndex]!;
  }

  /** Writes the counters back into the model's rules and chains (for `-S -v` printing). */
  copyCountersToModel(): void {
    this.rules.forEach((rule, r) => {
      rule.packets = this.packets[r]!;
      rule.bytes = this.bytes[r]!;
    });
    this.chains.forEach((chain, c) => {
      chain.packets = this.policyPackets[c]!;
      chain.bytes = this.policyBytes[c]!;
    });
  }

  resetCounters(): void {
    this.packets.fill(0);
    this.bytes.fill(0);
    this.allocationFailures.fill(0);
    this.policyPackets.fill(0);
    this.policyBytes.fill(0);
  }
}

/**
 * Compiles a table (as returned by parseRules; rules with errors are already left out) for the
 * router's ports. `-i`/`-o` names and `+` wildcards are resolved against `portNames` once.
 */
export function compile(table: NatTable, portNames: readonly string[]): CompiledRules {
  return new CompiledRules(table, portNames);
}

/** Linux ifname_compare: exact name, or prefix when the rule's name ends in `+`. */
export function interfaceMatches(ruleName: string | undefined, invert: boolean, deviceName: string): boolean {
  if (ruleName === undefined) return true;
  const hit = ruleName.endsWith("+") ? deviceName.startsWith(ruleName.slice(0, -1)) : deviceName === ruleName;
  return hit !== invert;
}

function compileMatches(rule: NatRule, code: number[]): void {
  for (const match of rule.matches) {
    switch (match.kind) {
      case "tcp":
      case "udp":
        if (match.sport !== undefined) code.push(Op.Sport, match.sport.min, match.sport.max, match.sportInvert ? 1 : 0);
        if (match.dport !== undefined) code.push(Op.Dport, match.dport.min, match.dport.max, match.dportInvert ? 1 : 0);
        if (match.tcpFlags !== undefined) {
          code.push(Op.TcpFlags, match.tcpFlags.mask, match.tcpFlags.comp, match.tcpFlags.invert ? 1 : 0);
        }
        break;
      case "multiport": {
        const direction = match.direction === "sports" ? 1 : match.direction === "dports" ? 2 : 3;
        code.push(Op.Multiport, direction, match.invert ? 1 : 0, match.ranges.length);
        for (const range of match.ranges) code.push(range.min, range.max);
        break;
      }
      case "icmp":
        code.push(Op.Icmp, match.type, match.codeMin, match.codeMax, match.invert ? 1 : 0);
        break;
      case "conntrack":
      case "state":
        code.push(Op.CtState, match.stateMask, match.invert ? 1 : 0);
        break;
      case "comment":
        break;
    }
  }
}

function natKindOf(kind: TargetKind): NatDecisionKind {
  switch (kind) {
    case TargetKind.Dnat:
      return NatDecisionKind.Dnat;
    case TargetKind.Snat:
      return NatDecisionKind.Snat;
    case TargetKind.Redirect:
      return NatDecisionKind.Redirect;
    case TargetKind.Masquerade:
      return NatDecisionKind.Masquerade;
    default:
      return NatDecisionKind.None;
  }
}

/** Human text of a decision: "SNAT 9.186.100.2", "REDIRECT :9697", "ACCEPT", "policy ACCEPT". */
export function describeDecision(decision: NatDecision): string {
  const kind = NatDecisionKind[decision.kind];
  if (decision.kind === NatDecisionKind.None) return "policy ACCEPT";
  if (decision.kind === NatDecisionKind.Accept) return "ACCEPT";
  let text = kind.toUpperCase();
  if ((decision.flags & NatRangeFlag.MapIps) !== 0) {
    text += ` ${formatIpv4(decision.minAddr)}`;
    if (decision.maxAddr !== decision.minAddr) text += `-${formatIpv4(decision.maxAddr)}`;
  }
  if ((decision.flags & NatRangeFlag.ProtoSpecified) !== 0) {
    text += ` :${decision.minPort}`;
    if (decision.maxPort !== decision.minPort) text += `-${decision.maxPort}`;
  }
  return text;
}
