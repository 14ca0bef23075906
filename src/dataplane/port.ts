/**
 * The router's ports as the dataplane sees them. Each port has two legs (DESIGN.md): the wire
 * leg faces the network, the mirror is the port's TUN device in the router namespace, through
 * which the router's own host (its kernel) sends and receives. Egress is encoded as one number,
 * `port * 2 + leg`, so verdicts fit an Int32Array; -1 means the packet was dropped.
 */
import type { Cidr } from "../core/addr.js";
import { prefixMask } from "../core/addr.js";

export const LEG_WIRE = 0;
export const LEG_MIRROR = 1;
export const VERDICT_DROP = -1;
/** The packet was taken by the dataplane (e.g. held until its first fragment arrives). */
export const VERDICT_STOLEN = -2;
/**
 * The packet left as IP fragments (too big for its egress MTU, no DF): the fragments, each with
 * its egress, are in the dataplane's fragment output (fragment-output.ts), not the packet itself.
 */
export const VERDICT_FRAGMENTED = -3;

export function egressOf(port: number, leg: number): number {
  return port * 2 + leg;
}
export function egressPort(verdict: number): number {
  return verdict >> 1;
}
export function egressLeg(verdict: number): number {
  return verdict & 1;
}

export interface PortSpec {
  readonly name: string;
  readonly addresses: readonly Cidr[];
  readonly mtu: number;
}

export class RouterPort {
  readonly addresses: readonly number[];
  /** The first address: REDIRECT target, MASQUERADE source. */
  readonly primary: number;
  /** Directed broadcast addresses of the port's subnets (received locally, never forwarded). */
  readonly broadcasts: readonly number[];

  constructor(
    readonly index: number,
    readonly name: string,
    readonly cidrs: readonly Cidr[],
    readonly mtu: number,
  ) {
    this.addresses = cidrs.map((c) => c.addr);
    this.primary = this.addresses[0] ?? 0;
    this.broadcasts = cidrs.filter((c) => c.prefixLength < 31).map((c) => (c.addr | ~prefixMask(c.prefixLength)) >>> 0);
  }
}
