/**
 * Keeps a router's TUN legs alive: a leg that fails is retired (its device closed, a DownLeg in
 * its place in the loop), counted, and logged once; the router then re-creates it by itself, with
 * backoff, as soon as its namespace exists again — no restart, the other legs forwarding all along.
 *
 * How a leg fails:
 *   - a read, a write or the readiness watcher reports an error (the device was deleted:
 *     EBADFD/EBADF; EIO; EFAULT...): LegSlots and the router call `fail`;
 *   - its namespace is deleted (`ip netns del`) or replaced by a new one of the same name: no
 *     syscall fails then — the TUN fd holds a reference to the namespace it was opened in
 *     (drivers/net/tun.c tun_chr_open: sk_alloc takes get_net), so the device lives on in a
 *     namespace nobody can reach. `tick` notices it: the inode of /run/netns/NAME is no longer
 *     the one the leg was opened in (ENOENT: deleted; ESTALE: replaced). Closing the fd lets the
 *     orphaned namespace go.
 *
 * Cost on the packet thread: `tick` (every TICK_MS) is a stat() per leg; a retry is one open of
 * the device in its namespace (a few setns/ioctl syscalls, well under a millisecond), at most one
 * per tick, and never while the namespace is missing; failed retries back off from
 * RETRY_FIRST_MS to RETRY_MAX_MS.
 */
import { statSync } from "node:fs";
import { RateLimitedLog } from "../core/log-limit.js";
import type { Leg, LegSlots } from "./leg.js";
import { netnsPath } from "./netns.js";
import { TunDevice, type TunError } from "./tun.js";
import { TunLeg } from "./tun-leg.js";
import { EthernetLeg, type EthernetStage } from "./ethernet-leg.js";

/** How often legs are checked and down ones retried. */
export const TICK_MS = 250;
/** First retry delay after a failed re-creation; doubled up to RETRY_MAX_MS. */
export const RETRY_FIRST_MS = 500;
export const RETRY_MAX_MS = 8000;
/** At most one "leg down" line per leg in this many seconds (a flapping leg). */
const LOG_INTERVAL_SECONDS = 10;

/** How to open a leg again: its device, namespace and what it was given when the router started. */
export interface LegSpec {
  /** The device name in its namespace (`eth0` for a wire leg, the port's name for a mirror). */
  readonly device: string;
  /** The namespace name (under /run/netns). */
  readonly netns: string;
  readonly vnetHdr: boolean;
  /** The TUNSETOFFLOAD flags every leg got (0: none); only with `vnetHdr`. */
  readonly offloadFlags: number;
  readonly mtu: number;
  /**
   * For a leg of an Ethernet (tap) port: the TAP device's Ethernet stage, port index and role
   * (io/ethernet-leg.ts), and the MAC the device gets (the mirror's: the port's; the wire
   * device's is the kernel's own, undefined).
   */
  readonly ethernet?: { readonly stage: EthernetStage; readonly port: number; readonly role: number; readonly mac?: string };
}

/** Why a leg is down: the errno name, what failed, since when (ms since the epoch). */
export interface LegFault {
  readonly code: string;
  readonly message: string;
  readonly since: number;
}

export interface LegHealth {
  readonly up: boolean;
  /** Set while down. */
  readonly fault: LegFault | null;
  /** Times this leg went down, and came back, since the router started. */
  readonly failures: number;
  readonly recoveries: number;
  /** Packets the pipeline sent to it while it was down. */
  readonly droppedWhileDown: number;
}

/** A leg the supervisor can close (a TunLeg; tests use in-memory ones). */
export interface ClosableLeg extends Leg {
  close(): void;
}

export interface LegSupervisorOptions<L extends ClosableLeg> {
  readonly log: (line: string) => void;
  /** Milliseconds since the epoch (injected for tests). */
  readonly now?: () => number;
  /** Opens a leg (the router's: `openLeg`, the TUN device with its offloads, MTU, up). */
  readonly open: (spec: LegSpec) => L;
  /** The inode of a namespace, to tell a new namespace of the same name (default: stat). */
  readonly namespaceId?: (netns: string) => number | null;
  /** Called when a leg was re-created and is back in the loop (the router polls it again). */
  readonly reopened?: (index: number, leg: L) => void;
}

interface LegRecord<L extends ClosableLeg> {
  readonly spec: LegSpec;
  /** The open device, null while down. */
  leg: L | null;
  /** The inode of the namespace it was opened in. */
  namespaceId: number | null;
  fault: LegFault | null;
  failures: number;
  recoveries: number;
  /** Dropped toward the leg in earlier down periods. */
  dropped: number;
  nextRetryAt: number;
  retryDelay: number;
  /** Whether this down period's first failed retry was logged. */
  retryLogged: boolean;
  readonly logLimit: RateLimitedLog;
}

export class LegSupervisor<L extends ClosableLeg = TunLeg> {
  private readonly records: LegRecord<L>[];
  private readonly log: (line: string) => void;
  private readonly now: () => number;
  private readonly open: (spec: LegSpec) => L;
  private readonly namespaceId: (netns: string) => number | null;
  private readonly reopened: (index: number, leg: L) => void;
  private stopped = false;

  /** `legs[i]` was opened from `specs[i]`; both as `slots` holds them (port * 2 + leg). */
  constructor(
    private readonly slots: LegSlots,
    specs: readonly LegSpec[],
    legs: readonly L[],
    options: LegSupervisorOptions<L>,
  ) {
    this.log = options.log;
    this.now = options.now ?? Date.now;
    this.open = options.open;
    this.namespaceId = options.namespaceId ?? namespaceInode;
    this.reopened = options.reopened ?? (() => undefined);
    this.records = specs.map((spec, index) => ({
      spec,
      leg: legs[index] ?? null,
      namespaceId: this.namespaceId(spec.netns),
      fault: null,
      failures: 0,
      recoveries: 0,
      dropped: 0,
      nextRetryAt: 0,
      retryDelay: RETRY_FIRST_MS,
      retryLogged: false,
      logLimit: new RateLimitedLog(this.log, () => this.now() / 1000, LOG_INTERVAL_SECONDS),
    }));
    slots.onFailure = (index, error) => this.retire(index, faultOf(error, this.now()));
  }

  /** The open legs (a down leg has none), for closing them at exit. */
  get openLegs(): L[] {
    return this.records.flatMap((r) => (r.leg === null ? [] : [r.leg]));
  }

  /** Takes leg `index` out because of `error` (a poll or I/O error the router saw). */
  fail(index: number, error: unknown): void {
    // Through the slots, so the loop stops using it at once; they call back into `retire`.
    if (this.slots.isDown(index)) return;
    this.slots.fail(index, error);
  }

  health(index: number): LegHealth {
    const r = this.records[index]!;
    return {
      up: r.fault === null,
      fault: r.fault,
      failures: r.failures,
      recoveries: r.recoveries,
      droppedWhileDown: r.dropped + this.slots.droppedWhileDown(index),
    };
  }

  /**
   * Periodic work: legs whose namespace was deleted or replaced are retired; down legs whose
   * namespace exists are re-created when their retry is due (at most one per call).
   */
  tick(): void {
    if (this.stopped) return;
    let retried = false;
    this.records.forEach((r, index) => {
      const current = this.namespaceId(r.spec.netns);
      if (r.fault === null) {
        if (current === r.namespaceId) return;
        const code = current === null ? "ENOENT" : "ESTALE";
        const what = current === null ? "was deleted" : "was replaced by a new one";
        this.fail(index, Object.assign(new Error(`namespace ${r.spec.netns} ${what}`), { code }));
        return;
      }
      if (retried || current === null || this.now() < r.nextRetryAt) return;
      retried = true;
      this.retry(index, r, current);
    });
  }

  /** No more retries; the router closes what is open. */
  stop(): void {
    this.stopped = true;
  }

  private retire(index: number, fault: LegFault): void {
    const r = this.records[index]!;
    r.fault = fault;
    r.failures++;
    r.nextRetryAt = 0;
    r.retryDelay = RETRY_FIRST_MS;
    r.retryLogged = false;
    const leg = r.leg;
    r.leg = null;
    if (leg !== null) {
      try {
        leg.close();
      } catch {
        // the fd goes away with its device; nothing else to free
      }
    }
    r.logLimit.offer(() => `qnat: ${describeLeg(r.spec)} is down (${fault.code}: ${fault.message}); the other legs go on, and this one is re-created when it can be`);
  }

  private retry(index: number, r: LegRecord<L>, namespaceId: number): void {
    let leg: L;
    try {
      leg = this.open(r.spec);
    } catch (error) {
      const fault = faultOf(error, this.now());
      if (!r.retryLogged) {
        r.retryLogged = true;
        this.log(`qnat: ${describeLeg(r.spec)}: re-creating it failed (${fault.code}: ${fault.message}); retrying with backoff`);
      }
      r.nextRetryAt = this.now() + r.retryDelay;
      r.retryDelay = Math.min(RETRY_MAX_MS, r.retryDelay * 2);
      return;
    }
    const downFor = (this.now() - r.fault!.since) / 1000;
    r.dropped += this.slots.droppedWhileDown(index);
    r.leg = leg;
    r.namespaceId = namespaceId;
    r.fault = null;
    r.recoveries++;
    this.slots.replace(index, leg);
    this.log(`qnat: ${describeLeg(r.spec)} is back (re-created after ${downFor.toFixed(1)} s down)`);
    this.reopened(index, leg);
  }
}

/** Opens a leg as the router did at start: the device in its namespace, offloads, MTU, up. */
export function openLeg(spec: LegSpec): TunLeg {
  const ethernet = spec.ethernet;
  const [device] = openLegQueues(spec, 1);
  if (ethernet === undefined) return new TunLeg(device!);
  const leg = new EthernetLeg(device!, ethernet.stage, ethernet.port, ethernet.role);
  ethernet.stage.attach(leg);
  return leg;
}

/**
 * The device of a leg opened as the router did at start, with `queues` queues (IFF_MULTI_QUEUE
 * when more than one: one per worker, queue 0 first; io/tun.ts openQueues), set up through
 * queue 0 (offloads, MTU and flags belong to the device, not to a queue).
 */
export function openLegQueues(spec: LegSpec, queues: number): TunDevice[] {
  const devices = TunDevice.openQueues(spec.device, { netns: spec.netns, vnetHdr: spec.vnetHdr, tap: spec.ethernet !== undefined }, queues);
  const device = devices[0]!;
  try {
    if (spec.vnetHdr) device.setOffload(spec.offloadFlags);
    device.setMtu(spec.mtu);
    if (spec.ethernet?.mac !== undefined) device.setMac(spec.ethernet.mac);
    device.setUp();
  } catch (error) {
    for (const queue of devices) queue.close();
    throw error;
  }
  return devices;
}

/** The inode of a named namespace (nsfs: one per namespace), null when it does not exist. */
export function namespaceInode(netns: string): number | null {
  try {
    return statSync(netnsPath(netns)).ino;
  } catch {
    return null;
  }
}

function describeLeg(spec: LegSpec): string {
  return `leg ${spec.device} in ${spec.netns}`;
}

function faultOf(error: unknown, now: number): LegFault {
  const tunError = error as TunError;
  const code = typeof tunError?.code === "string" ? tunError.code : "EUNKNOWN";
  const message = error instanceof Error ? error.message : String(error);
  return { code, message, since: now };
}
