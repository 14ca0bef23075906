/**
 * The NAT stage's hooks as the pipeline calls them (Linux registers nf_nat at these hooks:
 * PREROUTING and OUTPUT do destination NAT, POSTROUTING and INPUT source NAT). Each hook gets
 * the packet, its parsed facts and its conntrack result; it rewrites the packet in place and
 * returns DropReason.None or why the packet must be dropped.
 */
import type { DropReason } from "../core/drop-reason.js";
import type { TrackResult } from "../conntrack/track.js";
import type { PacketInfo } from "../wire/packet-info.js";

export interface NatStage {
  prerouting(buf: Uint8Array, info: PacketInfo, ct: TrackResult, ingress: number): DropReason;
  input(buf: Uint8Array, info: PacketInfo, ct: TrackResult, ingress: number): DropReason;
  output(buf: Uint8Array, info: PacketInfo, ct: TrackResult): DropReason;
  /** `ingress` is -1 for packets the router itself sends. */
  postrouting(buf: Uint8Array, info: PacketInfo, ct: TrackResult, ingress: number, egress: number): DropReason;
  /** Bounded periodic work (fragment timeouts), once per batch. */
  housekeeping(): void;
}
