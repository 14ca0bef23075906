/**
 * The router's own addresses and the address checks every packet passes: which destinations are
 * the router itself (Linux's local table, RTN_LOCAL) or a broadcast (RTN_BROADCAST, received and
 * never forwarded), and which sources and destinations are martians (ip_route_input_slow).
 *
 * A router has a handful of addresses, so the per-packet checks scan int32 arrays: a Map/Set probe
 * with a key of 2^30 or more (most public addresses) hashes a boxed double — slower than the scan,
 * and it allocates. A 256-byte fold filter answers "neither" for almost every address before any
 * scan (one L1 load instead of a dozen compares).
 */
import type { RouterPort } from "./port.js";

export class RouterAddresses {
  /** Router addresses -> owning port. Control plane and the OUTPUT path's rare loopback case. */
  private readonly owner = new Map<number, number>();
  /** The router's own addresses, int32. */
  private readonly localList: Int32Array;
  /** Directed broadcasts of every port's subnets and 255.255.255.255, int32. */
  private readonly broadcastList: Int32Array;
  /** One byte per value of foldAddress(): non-zero where a local or broadcast address folds. */
  private readonly specialFold = new Uint8Array(256);

  constructor(ports: readonly RouterPort[]) {
    const broadcasts = new Set<number>([0xffffffff]);
    for (const port of ports) {
      for (const addr of port.addresses) this.owner.set(addr, port.index);
      for (const addr of port.broadcasts) broadcasts.add(addr);
    }
    this.localList = Int32Array.from(this.owner.keys(), (a) => a | 0);
    this.broadcastList = Int32Array.from(broadcasts, (a) => a | 0);
    for (const addr of this.localList) this.specialFold[foldAddress(addr)] = 1;
    for (const addr of this.broadcastList) this.specialFold[foldAddress(addr)] = 1;
  }

  /** One of the router's own addresses or a broadcast address (int32 or uint32 bits). */
  isOwnOrBroadcast(addr: number): boolean {
    return this.specialFold[foldAddress(addr)] !== 0 && (includes(this.localList, addr) || includes(this.broadcastList, addr));
  }

  /** Delivered to the router's own host: its addresses, broadcasts, and multicast (qnat routes no multicast). */
  isLocalDestination(addr: number): boolean {
    return this.isOwnOrBroadcast(addr) || addr >>> 28 === 0xe;
  }

  /** One of the router's own addresses. */
  isOwn(addr: number): boolean {
    return includes(this.localList, addr);
  }

  /** A broadcast address of one of the router's subnets, or the limited broadcast. */
  isBroadcast(addr: number): boolean {
    return includes(this.broadcastList, addr);
  }

  /** The port that holds `addr`, -1 when none does. */
  portOf(addr: number): number {
    return this.owner.get(addr >>> 0) ?? -1;
  }
}

/**
 * A source no router accepts (Linux ipv4_is_zeronet / ipv4_is_loopback / ipv4_is_multicast /
 * ipv4_is_lbcast in ip_route_input_slow): 0/8, 127/8, multicast, the limited broadcast.
 */
export function isMartianSource(addr: number): boolean {
  const first = addr >>> 24;
  return first === 0 || first === 127 || first >= 224;
}

/** A destination that must not arrive from a wire: 0/8 and loopback (ip_route_input_slow). */
export function isMartianDestination(addr: number): boolean {
  const first = addr >>> 24;
  return first === 127 || first === 0;
}

/** The four bytes of `addr` xor-ed together: an index into RouterAddresses' fold filter. */
function foldAddress(addr: number): number {
  const half = addr ^ (addr >>> 16);
  return (half ^ (half >>> 8)) & 0xff;
}

/** True when `addr` (uint32 or int32 bits) is in `list` (int32). */
function includes(list: Int32Array, addr: number): boolean {
  const key = addr | 0;
  for (let i = 0; i < list.length; i++) if (list[i] === key) return true;
  return false;
}
