/**
 * What the pipeline decided for each packet of a batch, kept only while a capture runs
 * (`qnat capture`, io/capture.ts): the connection the packet belongs to and its direction, its
 * ctstate, the drop reason, and the nat rules that bound a NEW connection. The capture turns
 * these numbers into the packet's comment ("SNAT 10.0.0.3:40000 -> 9.186.100.2:40000 (rule
 * neutron-vpn-agen-snat #2)") off the forwarding path. With no capture the pipeline's
 * `decisions` is null and nothing here is written.
 *
 * Per batch, typed arrays indexed by the packet's slot; numbers only (STYLE.md rule 2).
 */
import type { DropReason } from "../core/drop-reason.js";

/** `flags` bits. */
export const DECISION_NEW_CONNECTION = 1;
/** Conntrack found the packet INVALID (not NATed). */
export const DECISION_INVALID = 2;
/** The established fast path forwarded it (fast-path.ts). */
export const DECISION_FAST_PATH = 4;

export class PacketDecisions {
  /** The connection (`id << 1 | dir`) the packet belongs to after its path, -1 for none. */
  readonly connection: Int32Array;
  /** The ctstate (conntrack/table.ts CtState) the packet had. */
  readonly ctState: Uint8Array;
  readonly flags: Uint8Array;
  /** Why it was dropped (DropReason.None when it was not). */
  readonly reason: Uint8Array;
  /** Global index (CompiledRules ruleIndex) of the rule that bound the connection's source / destination NAT, -1 for none. */
  readonly sourceRule: Int32Array;
  readonly destinationRule: Int32Array;

  constructor(readonly capacity: number) {
    this.connection = new Int32Array(capacity);
    this.ctState = new Uint8Array(capacity);
    this.flags = new Uint8Array(capacity);
    this.reason = new Uint8Array(capacity);
    this.sourceRule = new Int32Array(capacity);
    this.destinationRule = new Int32Array(capacity);
  }

  /** Records packet `index`'s decision (the pipeline calls it once per packet while a capture runs). */
  note(index: number, connection: number, ctState: number, flags: number, reason: DropReason, sourceRule: number, destinationRule: number): void {
    if (index < 0 || index >= this.capacity) return;
    this.connection[index] = connection;
    this.ctState[index] = ctState;
    this.flags[index] = flags;
    this.reason[index] = reason;
    this.sourceRule[index] = sourceRule;
    this.destinationRule[index] = destinationRule;
  }
}
