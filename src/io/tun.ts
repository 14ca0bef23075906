/**
 * A TUN device (Linux drivers/net/tun.c, IFF_TUN | IFF_NO_PI: one read is one IPv4/IPv6 packet)
 * read and written a PacketBatch at a time through qnat's addon (native/tun.cc). The device may
 * live in another network namespace: the addon enters it only to open the device, so the
 * process stays where it is and holds every leg of the router (DESIGN.md, "Topology").
 *
 * With `vnetHdr` each slot holds a struct virtio_net_hdr (10 bytes, include/uapi/linux/virtio_net.h)
 * before the packet, on reads and on writes, as wireguard-go's tun/tun_linux.go uses it for
 * offloads: batches read or written must then have that headroom (PacketBatch.headroom ===
 * `vnetHeaderLength`). Offloads themselves are off unless `enableOffloads` (or `setOffload`) is
 * called: then the kernel hands over TCP (and UDP, with USO) super-packets of up to 64 KiB with
 * partial checksums (`GSO_SLOT_SIZE` slots hold them), and takes them back the same way.
 *
 * With `tap` the device is a TAP (IFF_TAP | IFF_NO_PI): one read is one Ethernet frame, whose
 * 14-byte header sits at `offsetOf(i) - ETH_HLEN` of the batch (core/batch.ts's slot layout with
 * Ethernet ports; `lengths[i]` counts what follows it). A TUN device accepts batches with that
 * layout too, and then reads and writes around the 14-byte gap.
 *
 * A device may have several queues (IFF_MULTI_QUEUE, `TunDevice.openQueues`): each is an fd of its
 * own, one per worker thread; the kernel spreads what it sends over them by flow and takes writes
 * from any. fds are process-wide, so a worker wraps the fd of a queue opened on the main thread
 * with `TunDevice.fromFd`.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { getSystemErrorName } from "node:util";
import { ETH_HLEN, VIRTIO_NET_HDR_LEN, type PacketBatch } from "../core/batch.js";
import { netnsPath } from "./netns.js";
import type { TunNative, TunNativeError, TunPollHandle } from "./tun-native.js";

/** Where `npm install` (node-gyp, native/binding.gyp) puts the addon, from the package root. */
export const TUN_ADDON_PATH = join("native", "build", "Release", "qnat_tun.node");

/** The addon is missing or does not load: one line for the user, no stack trace wanted. */
export class TunAddonNotBuiltError extends Error {
  readonly code = "ERR_QNAT_TUN_ADDON_NOT_BUILT";
  constructor(
    readonly searched: readonly string[],
    readonly loadError?: string,
  ) {
    super(
      loadError === undefined
        ? "qnat's TUN addon is not built: run npm install"
        : `qnat's TUN addon does not load (${loadError}): run npm install`,
    );
    this.name = "TunAddonNotBuiltError";
  }
}

/** A failure of a TUN syscall: `code` is the errno name ("EPERM", "ENOENT", "EBUSY"...). */
export type TunError = TunNativeError;

const require = createRequire(import.meta.url);
let loadedAddon: TunNative | undefined;

/**
 * Finds and loads the addon, looking for native/build/Release/qnat_tun.node in the folders above
 * this module (src/io when run from source, dist/src/io when compiled). `searchFrom` is for tests.
 */
export function loadTunAddon(searchFrom?: string): TunNative {
  if (searchFrom === undefined && loadedAddon !== undefined) return loadedAddon;
  const start = searchFrom ?? dirname(fileURLToPath(import.meta.url));
  const searched: string[] = [];
  let dir = resolve(start);
  for (let level = 0; level < 5; level++) {
    const candidate = join(dir, TUN_ADDON_PATH);
    searched.push(candidate);
    if (existsSync(candidate)) {
      let addon: TunNative;
      try {
        addon = require(candidate) as TunNative;
      } catch (error) {
        throw new TunAddonNotBuiltError(searched, error instanceof Error ? error.message.split("\n")[0] : String(error));
      }
      if (searchFrom === undefined) loadedAddon = addon;
      return addon;
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new TunAddonNotBuiltError(searched);
}

/**
 * A slot that holds the largest packet an offloading TUN device hands over: the virtio_net_hdr and
 * an IPv4 total length of up to 65535 bytes (the TUN device's gso_max_size is 64 KiB,
 * GSO_LEGACY_MAX_SIZE; BIG TCP is not enabled on TUN), rounded up to 16 bytes.
 */
export const GSO_SLOT_SIZE = (VIRTIO_NET_HDR_LEN + 65535 + 15) & ~15;

/** The offloads `enableOffloads` negotiated. */
export interface TunOffloads {
  readonly checksum: boolean;
  readonly tcpSegmentation: boolean;
  readonly udpSegmentation: boolean;
}

/**
 * MAX_TAP_QUEUES in Linux drivers/net/tun.c (the addon's constants.TUN_MAX_QUEUES): the most queues
 * one device can have, so the most workers that can share a port (`workers: auto` stops there).
 */
export const TUN_MAX_QUEUES = 256;

export interface TunOpenOptions {
  /** A namespace name as `ip netns` knows it (under /run/netns), or a path such as /proc/PID/ns/net. */
  readonly netns?: string;
  /** Open with IFF_VNET_HDR: every packet carries a virtio_net_hdr prefix. */
  readonly vnetHdr?: boolean;
  /** A TAP (Ethernet) device instead of TUN. */
  readonly tap?: boolean;
}

/** How a thread wraps a queue fd that another thread opened (`TunDevice.fromFd`). */
export interface TunQueueOptions extends TunOpenOptions {
  /** The device's name (as it was opened). */
  readonly name: string;
  /**
   * Whether `close()` closes the fd (default true: it detaches this queue only; the device goes
   * when its last queue is closed). false when the thread that opened it closes it: every fd must
   * be closed exactly once, as another open may reuse its number.
   */
  readonly ownsFd?: boolean;
}

/** "fa:16:3e:5d:18:10" as 6 bytes (the config has checked its form). */
export function macBytes(mac: string): Uint8Array {
  return Uint8Array.from(mac.split(":"), (part) => parseInt(part, 16));
}

export class TunDevice {
  /** Bytes before the packet in each slot: 0, or 10 with `vnetHdr`. */
  readonly vnetHeaderLength: number;
  /** Bytes of link header before each packet: ETH_HLEN for a TAP device, 0 for TUN. */
  readonly linkHeaderLength: number;
  /** Packets the kernel refused on write (e.g. EINVAL for a malformed one); they are skipped. */
  writeErrors = 0;
  lastWriteError: TunError | undefined;

  private pollHandle: TunPollHandle | null = null;
  private closed = false;

  private constructor(
    private readonly addon: TunNative,
    readonly name: string,
    readonly fd: number,
    /** The namespace the device lives in (the name or path given), null for this process's. */
    readonly netns: string | null,
    private readonly netnsFile: string | null,
    vnetHdr: boolean,
    readonly isTap: boolean,
    private readonly ownsFd: boolean,
  ) {
    this.vnetHeaderLength = vnetHdr ? addon.constants.VIRTIO_NET_HDR_LEN : 0;
    this.linkHeaderLength = isTap ? ETH_HLEN : 0;
  }

  /**
   * Creates (or attaches to) the TUN device `name`, non-blocking, in `options.netns` or here.
   * The device disappears when it is closed (it is not made persistent).
   */
  static open(name: string, options: TunOpenOptions = {}): TunDevice {
    return TunDevice.openQueue(loadTunAddon(), name, options, 0, undefined);
  }

  /**
   * Opens `queues` queues of the device `name` (IFF_MULTI_QUEUE), queue 0 first: the kernel
   * numbers a fresh device's queues in the order they attach (tun_attach). With `queues === 1`
   * this is `open` (no IFF_MULTI_QUEUE), so a one-worker router's device is what it always was.
   * All queues share the options: the device keeps the first queue's flags (tun_set_iff).
   * Offloads belong to the device: `enableOffloads` through queue 0 sets them for every queue.
   * If one fails, those opened are closed; the error says in one line why (multiQueueOpenError).
   */
  static openQueues(name: string, options: TunOpenOptions, queues: number): TunDevice[] {
    const addon = loadTunAddon();
    const limit = addon.constants.TUN_MAX_QUEUES;
    if (!Number.isInteger(queues) || queues < 1 || queues > limit) {
      const error = new Error(`TUN ${name}: ${queues} queues: a device has 1..${limit} (MAX_TAP_QUEUES)`) as TunError;
      error.code = "ERR_OUT_OF_RANGE";
      throw error;
    }
    if (queues === 1) return [TunDevice.open(name, options)];
    const devices: TunDevice[] = [];
    try {
      for (let queue = 0; queue < queues; queue++) {
        devices.push(TunDevice.openQueue(addon, name, options, addon.constants.IFF_MULTI_QUEUE, queues));
      }
    } catch (error) {
      for (const device of devices) device.close();
      throw error;
    }
    return devices;
  }

  /**
   * Wraps the fd of a queue that another thread opened (fds are process-wide): a worker's view of
   * its queue. It does not create the device; `options` must say what the device was opened with
   * (`vnetHdr`, `tap`), `netns` for setMtu/setUp. See `ownsFd` for who closes the fd.
   */
  static fromFd(fd: number, options: TunQueueOptions): TunDevice {
    if (!Number.isInteger(fd) || fd < 0) {
      const error = new Error(`TUN ${options.name}: fd ${fd} is not a file descriptor`) as TunError;
      error.code = "EBADF";
      throw error;
    }
    const netns = options.netns ?? null;
    const file = netns === null ? null : netnsPath(netns);
    return new TunDevice(loadTunAddon(), options.name, fd, netns, file, options.vnetHdr === true, options.tap === true, options.ownsFd !== false);
  }

  /** One open of `name`: `multiQueue` is 0 or IFF_MULTI_QUEUE (then `queues` says how many are opened). */
  private static openQueue(addon: TunNative, name: string, options: TunOpenOptions, multiQueue: number, queues: number | undefined): TunDevice {
    const c = addon.constants;
    const flags = (options.vnetHdr === true ? c.IFF_VNET_HDR : 0) | (options.tap === true ? c.IFF_TAP : 0) | multiQueue;
    const file = options.netns === undefined ? null : netnsPath(options.netns);
    let fd: number;
    try {
      fd = addon.open(name, file, flags);
    } catch (error) {
      throw queues === undefined ? error : multiQueueOpenError(error as TunError, name, options.tap === true, queues);
    }
    return new TunDevice(addon, name, fd, options.netns ?? null, file, options.vnetHdr === true, options.tap === true, true);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get isPolling(): boolean {
    return this.pollHandle !== null;
  }

  /**
   * Reads the queued packets into `batch` from slot 0 (up to its capacity) and sets
   * `batch.count`; returns it, 0 when nothing is queued.
   */
  readInto(batch: PacketBatch): number {
    this.checkOpen();
    this.checkHeadroom(batch);
    const count = this.addon.readBatch(
      this.fd, batch.data, batch.slotSize, batch.lengths, batch.capacity, batch.headroom, this.vnetHeaderLength, this.linkHeaderLength,
    );
    batch.count = count;
    return count;
  }

  /**
   * Writes `batch`'s packets 0..count-1; returns how many the kernel took. A packet the kernel
   * refuses is skipped and counted in `writeErrors`; on EAGAIN the rest is not written.
   */
  write(batch: PacketBatch): number {
    this.checkOpen();
    this.checkHeadroom(batch);
    const count = batch.count;
    const vnet = this.vnetHeaderLength;
    const link = this.linkHeaderLength;
    let next = this.addon.writeBatch(this.fd, batch.data, batch.slotSize, batch.lengths, count, batch.headroom, vnet, link);
    if (next === count) return count;
    // Rare path: EAGAIN, or a packet the kernel refused (the next call reports it by throwing).
    let written = next;
    while (next < count) {
      try {
        const n = this.addon.writeBatch(
          this.fd,
          batch.data.subarray(next * batch.slotSize),
          batch.slotSize,
          batch.lengths.subarray(next),
          count - next,
          batch.headroom,
          vnet,
          link,
        );
        if (n === 0) break; // EAGAIN
        next += n;
        written += n;
      } catch (error) {
        this.writeErrors++;
        this.lastWriteError = error as TunError;
        next++;
      }
    }
    return written;
  }

  /**
   * Calls `callback` from Node's event loop whenever the device has packets to read (replacing
   * an earlier callback). If the watcher fails, it stops and `callback` gets the error once.
   */
  onReadable(callback: (error?: TunError) => void): void {
    this.checkOpen();
    this.stopReadable();
    this.pollHandle = this.addon.poll(this.fd, (status) => {
      if (status === 0) {
        callback();
        return;
      }
      // libuv stopped the watcher; the handle is still open and referenced: close it (from
      // inside its own callback, which libuv allows), or it is torn down with the process, after
      // its fd, and that crashes the exit.
      const handle = this.pollHandle;
      this.pollHandle = null;
      if (handle !== null) this.addon.stopPoll(handle);
      callback(pollError(this.name, status));
    });
  }

  /** Stops the readable callbacks; idempotent. */
  stopReadable(): void {
    if (this.pollHandle === null) return;
    const handle = this.pollHandle;
    this.pollHandle = null;
    this.addon.stopPoll(handle);
  }

  /** SIOCSIFMTU on this device, in its namespace. */
  setMtu(mtu: number): void {
    this.checkOpen();
    this.addon.setMtu(this.name, this.netnsFile, mtu);
  }

  /** SIOCSIFHWADDR: this TAP device's Ethernet address ("fa:16:3e:5d:18:10"), in its namespace. */
  setMac(mac: string): void {
    this.checkOpen();
    this.addon.setMac(this.name, this.netnsFile, macBytes(mac));
  }

  /** Brings the device up (or down) with SIOCSIFFLAGS, in its namespace. */
  setUp(up = true): void {
    this.checkOpen();
    this.addon.setUp(this.name, this.netnsFile, up);
  }

  /** TUNSETOFFLOAD with the addon's TUN_F_* constants; only for a device opened with `vnetHdr`. */
  setOffload(offloadFlags: number): void {
    this.checkOpen();
    this.addon.setOffload(this.fd, offloadFlags);
  }

  /**
   * Turns on the offloads wireguard-go's tun/tun_linux.go asks for: TUN_F_CSUM | TUN_F_TSO4 |
   * TUN_F_TSO6, plus TUN_F_USO4 | TUN_F_USO6 where the kernel has them (Linux 6.2; older kernels
   * refuse them with EINVAL, then they are left out). Only for a device opened with `vnetHdr`.
   * From then on the kernel may hand over GSO super-packets with partial checksums.
   */
  enableOffloads(): TunOffloads {
    if (this.vnetHeaderLength === 0) throw new Error(`TUN ${this.name}: offloads need a device opened with vnetHdr`);
    const c = this.addon.constants;
    const tcp = c.TUN_F_CSUM | c.TUN_F_TSO4 | c.TUN_F_TSO6;
    try {
      this.setOffload(tcp | c.TUN_F_USO4 | c.TUN_F_USO6);
      return { checksum: true, tcpSegmentation: true, udpSegmentation: true };
    } catch (error) {
      if ((error as TunError).code !== "EINVAL") throw error;
    }
    this.setOffload(tcp);
    return { checksum: true, tcpSegmentation: true, udpSegmentation: false };
  }

  /**
   * Stops polling and closes the fd (unless a `fromFd` device with `ownsFd: false`), which
   * removes the device, or for a multi-queue device detaches this queue (the device goes with
   * its last queue). Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.stopReadable();
    this.closed = true;
    if (this.ownsFd) this.addon.close(this.fd);
  }

  /**
   * Whether batches with this headroom fit the device: its virtio_net_hdr length, plus ETH_HLEN
   * for a TAP device; a TUN device also takes the Ethernet layout (the 14-byte gap left unused).
   */
  acceptsHeadroom(headroom: number): boolean {
    const vnet = this.vnetHeaderLength;
    return headroom === vnet + ETH_HLEN || (!this.isTap && headroom === vnet);
  }

  /** A batch's slots must leave room for exactly this device's virtio_net_hdr (and Ethernet header). */
  checkHeadroom(batch: PacketBatch): void {
    if (!this.acceptsHeadroom(batch.headroom)) {
      const error = new Error(
        `TUN ${this.name}: batch headroom ${batch.headroom} does not match the device's virtio_net_hdr length ${this.vnetHeaderLength}${this.isTap ? " plus the Ethernet header" : ""}`,
      ) as TunError;
      error.code = "ERR_INVALID_ARG_VALUE";
      throw error;
    }
  }

  private checkOpen(): void {
    if (this.closed) {
      const error = new Error(`TUN ${this.name} is closed`) as TunError;
      error.code = "EBADF";
      throw error;
    }
  }
}

/**
 * A queue of a multi-queue device that TUNSETIFF refused, in one line for the router: EINVAL is
 * tun_set_iff's answer to an existing device whose IFF_MULTI_QUEUE differs (or of the other
 * kind, TUN vs TAP), E2BIG tun_attach's to a 257th queue. Keeps the errno fields.
 */
function multiQueueOpenError(error: TunError, name: string, tap: boolean, queues: number): TunError {
  let why: string;
  if (error.code === "EINVAL") why = `${name} exists without multi-queue (IFF_MULTI_QUEUE) or is not a ${tap ? "TAP" : "TUN"} device`;
  else if (error.code === "E2BIG") why = `${name} already has ${TUN_MAX_QUEUES} queues (MAX_TAP_QUEUES)`;
  else return error;
  const wrapped = new Error(`TUN ${name}: cannot open ${queues} queues: ${why} (${error.message})`) as TunError;
  wrapped.code = error.code;
  wrapped.errno = error.errno;
  wrapped.syscall = error.syscall;
  return wrapped;
}

function pollError(name: string, status: number): TunError {
  const code = getSystemErrorName(status);
  const error = new Error(`poll ${name}: ${code}`) as TunError;
  error.code = code;
  error.errno = status;
  error.syscall = "poll";
  return error;
}
