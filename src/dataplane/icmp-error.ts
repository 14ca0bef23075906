/**
 * The ICMP errors the router originates (time exceeded, unreachable, fragmentation needed): when
 * one is due, from which address, and its bytes. The pipeline then sends it through its OUTPUT
 * path like anything the router's host sends (Linux: icmp_send -> ip_local_out).
 *
 * When (RFC 1812 4.3.2.7; Linux __icmp_send): never about an ICMP error, a non-first fragment, a
 * packet to a broadcast/multicast address, or from an address that cannot be answered; rate
 * limited as Linux (icmp-rate-limit.ts). From: the preferred source of the route back to the
 * sender, else the primary address of the port that route uses, else of the arrival port; to one
 * of the router's own addresses (a packet SNATed before the error was due), that address.
 */
import type { Clock } from "../core/clock.js";
import type { PacketBatch } from "../core/batch.js";
import type { RoutingTable } from "../route/table.js";
import { writeIcmpError } from "../wire/build.js";
import { IPPROTO_ICMP, type PacketInfo } from "../wire/packet-info.js";
import { isMartianSource, type RouterAddresses } from "./addresses.js";
import { IcmpRateLimiter } from "./icmp-rate-limit.js";
import type { RouterPort } from "./port.js";

/** Linux sysctl net.ipv4.ip_default_ttl. */
const DEFAULT_TTL = 64;

/** IcmpErrorWriter.write(): no error is due (RFC 1812's exceptions, or no room in the batch). */
export const ICMP_ERROR_NOT_DUE = 0;
/** IcmpErrorWriter.write(): an error was due, but the rate limit suppressed it. */
export const ICMP_ERROR_RATE_LIMITED = -1;

export class IcmpErrorWriter {
  /** The source address of the last error written (for traces), int32 bits. */
  lastFrom = 0;
  private readonly limiter: IcmpRateLimiter;
  private ipId = 1;

  constructor(
    clock: Clock,
    private readonly routes: RoutingTable,
    private readonly ports: readonly RouterPort[],
    private readonly addresses: RouterAddresses,
  ) {
    this.limiter = new IcmpRateLimiter(clock);
  }

  /**
   * Appends the ICMP error `type`/`code` about the packet `info` (at `buf[off..]`, arrived on
   * port `ingress`) to `generated`. Returns its length, ICMP_ERROR_NOT_DUE or
   * ICMP_ERROR_RATE_LIMITED. `mtu` is the next-hop MTU of "fragmentation needed".
   */
  write(info: PacketInfo, buf: Uint8Array, off: number, type: number, code: number, mtu: number, ingress: number, generated: PacketBatch): number {
    if (info.fragmentOffset !== 0) return ICMP_ERROR_NOT_DUE;
    if (info.protocol === IPPROTO_ICMP && (info.isIcmpError || !info.hasL4)) return ICMP_ERROR_NOT_DUE;
    // Addresses as int32 bits (packet-info.ts): a uint32 of 128.0.0.0 or more would be a heap number.
    const to = info.srcBits;
    if (to === 0 || isMartianSource(to) || this.addresses.isBroadcast(to)) return ICMP_ERROR_NOT_DUE;
    if (this.addresses.isBroadcast(info.dstBits) || info.dstBits >>> 28 === 0xe) return ICMP_ERROR_NOT_DUE;
    if (generated.count >= generated.capacity) return ICMP_ERROR_NOT_DUE;
    if (!this.limiter.allow(type, code, to)) return ICMP_ERROR_RATE_LIMITED;
    let from = this.ports[ingress]!.primary | 0;
    if (this.addresses.isOwn(to)) {
      // The packet's source is one of the router's own addresses: a packet already SNATed when
      // the error is due (a dead neighbour, after POSTROUTING), or the router host's own. Linux's
      // __icmp_send leaves the source to ip_route_output, whose route to a local address takes
      // that address itself (ip_route_output_key_hash_rcu, RTN_LOCAL: saddr = daddr): so the
      // error for 10.0.0.2's packet, SNATed to its floating IP, comes from the floating IP.
      from = to;
    } else {
      const back = this.routes.lookup(to);
      if (back >= 0) {
        const prefSrc = this.routes.routePrefSrc(back);
        from = prefSrc !== 0 ? prefSrc : this.ports[this.routes.routePort(back)]!.primary | 0;
      }
    }
    this.lastFrom = from;
    const at = generated.offsetOf(generated.count);
    this.ipId = (this.ipId + 1) & 0xffff;
    const length = writeIcmpError(generated.data, at, type, code, mtu, from, to, buf, off, info.length, DEFAULT_TTL, this.ipId);
    if (length === 0) return ICMP_ERROR_NOT_DUE;
    generated.lengths[generated.count] = length;
    return length;
  }
}
