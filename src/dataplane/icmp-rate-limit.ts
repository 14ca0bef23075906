/**
 * ICMP error rate limiting as Linux does it (net/ipv4/icmp.c):
 * - a global token bucket, `icmp_msgs_per_sec` 1000 with `icmp_msgs_burst` 50
 *   (icmp_global_allow);
 * - per destination, `icmp_ratelimit` 1000 ms per message with a burst of 6 tokens
 *   (inet_peer_xrlim_allow, XRLIM_BURST_FACTOR 6), for the types in `icmp_ratemask`
 *   (default 0x1818: destination unreachable, source quench, time exceeded, parameter
 *   problem), except "fragmentation needed", which path MTU discovery depends on
 *   (icmpv4_mask_allow).
 * The per-destination state lives in a small direct-mapped table of typed arrays (Linux keeps
 * it in the inet_peer cache): a collision simply shares a bucket. Nothing is allocated.
 */
import type { Clock } from "../core/clock.js";

const PEER_SLOTS = 1024;
const PEER_INTERVAL = 1.0; // icmp_ratelimit, seconds
const PEER_BURST = 6 * PEER_INTERVAL; // XRLIM_BURST_FACTOR
const GLOBAL_RATE = 1000; // icmp_msgs_per_sec
const GLOBAL_BURST = 50; // icmp_msgs_burst
const RATE_MASK = 0x1818; // icmp_ratemask

export class IcmpRateLimiter {
  /** Peer addresses as int32 bits (packet-info.ts): compared with what `allow` is given, after `| 0`. */
  private readonly peerAddr = new Int32Array(PEER_SLOTS);
  private readonly peerTokens = new Float64Array(PEER_SLOTS);
  private readonly peerStamp = new Float64Array(PEER_SLOTS);
  private globalTokens = GLOBAL_BURST;
  private globalStamp: number;

  constructor(private readonly clock: Clock) {
    this.globalStamp = clock.now();
  }

  /** True when an ICMP error of this type/code may be sent to `dst` now (consumes a token). */
  allow(type: number, code: number, dst: number): boolean {
    if (type === 3 && code === 4) return true; // fragmentation needed is never limited
    if (type > 31 || ((RATE_MASK >>> type) & 1) === 0) return true;
    const now = this.clock.now();

    const elapsed = now - this.globalStamp;
    this.globalStamp = now;
    this.globalTokens = Math.min(GLOBAL_BURST, this.globalTokens + elapsed * GLOBAL_RATE);
    if (this.globalTokens < 1) return false;

    const peer = dst | 0;
    const slot = (Math.imul(peer, 0x9e3779b1) >>> 22) & (PEER_SLOTS - 1);
    if (this.peerAddr[slot] !== peer || this.peerStamp[slot] === 0) {
      this.peerAddr[slot] = peer;
      this.peerTokens[slot] = PEER_BURST;
      this.peerStamp[slot] = now;
    }
    const tokens = Math.min(PEER_BURST, this.peerTokens[slot]! + (now - this.peerStamp[slot]!));
    this.peerStamp[slot] = now;
    if (tokens < PEER_INTERVAL) {
      this.peerTokens[slot] = tokens;
      return false;
    }
    this.peerTokens[slot] = tokens - PEER_INTERVAL;
    this.globalTokens -= 1;
    return true;
  }
}
