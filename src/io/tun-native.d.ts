/**
 * The interface of qnat's TUN addon (native/tun.cc, built to native/build/Release/qnat_tun.node).
 * The addon only makes syscalls into buffers that the TypeScript side owns; src/io/tun.ts is its
 * one user and decides everything else.
 *
 * Every failure throws an Error carrying `code` (the errno name: "EPERM", "ENOENT", "EBUSY"...,
 * or "ENAMETOOLONG"/"EINVAL"/"ERR_INVALID_ARG_TYPE"/"ERR_OUT_OF_RANGE" for bad arguments),
 * `errno` (negative, as in Node's own errors) and `syscall`; the message reads
 * "TUNSETIFF qr-694450d6-f6: Operation not permitted".
 */

/** The error shape the addon throws (a plain Error with these fields set). */
export interface TunNativeError extends Error {
  code: string;
  errno?: number;
  syscall?: string;
}

/** An opaque readiness watcher returned by `poll`. */
export interface TunPollHandle {
  readonly __tunPollHandle: unique symbol;
}

export interface TunNativeConstants {
  /** include/uapi/linux/if_tun.h: each packet is preceded by a struct virtio_net_hdr. */
  readonly IFF_VNET_HDR: number;
  /** include/uapi/linux/if_tun.h: an Ethernet (TAP) device instead of TUN; one read is one frame. */
  readonly IFF_TAP: number;
  /**
   * include/uapi/linux/if_tun.h: one queue (fd) of a multi-queue device; every open of the same
   * name with it attaches one more queue. All queues must be opened with the same flags.
   */
  readonly IFF_MULTI_QUEUE: number;
  /** MAX_TAP_QUEUES in drivers/net/tun.c: at most 256 queues per device (E2BIG beyond). */
  readonly TUN_MAX_QUEUES: number;
  /** TUNSETOFFLOAD flags (include/uapi/linux/if_tun.h). */
  readonly TUN_F_CSUM: number;
  readonly TUN_F_TSO4: number;
  readonly TUN_F_TSO6: number;
  readonly TUN_F_TSO_ECN: number;
  /** UDP segmentation offload (Linux 6.2+); TUNSETOFFLOAD refuses them (EINVAL) on older kernels. */
  readonly TUN_F_USO4: number;
  readonly TUN_F_USO6: number;
  /** sizeof(struct virtio_net_hdr), include/uapi/linux/virtio_net.h: 10. */
  readonly VIRTIO_NET_HDR_LEN: number;
  /** include/uapi/linux/if.h: names are at most IFNAMSIZ - 1 = 15 bytes. */
  readonly IFNAMSIZ: number;
}

export interface TunNative {
  /**
   * Opens /dev/net/tun (O_NONBLOCK | O_CLOEXEC) and attaches it with TUNSETIFF to a TUN device
   * `name` (IFF_TUN | IFF_NO_PI | flags; flags may be IFF_VNET_HDR, IFF_TAP, which makes it an
   * Ethernet device: IFF_TAP | IFF_NO_PI, and IFF_MULTI_QUEUE, which attaches one more queue of a
   * multi-queue device), created if missing. A second open of a device without IFF_MULTI_QUEUE
   * fails with EBUSY; IFF_MULTI_QUEUE on a device created without it (or the reverse) with EINVAL.
   * With `netnsPath` (e.g. "/run/netns/qnat-tenant") the calling thread enters that namespace
   * for the two calls and returns to its own, also on error. The device lives as long as the fd.
   */
  open(name: string, netnsPath: string | null, flags: number): number;
  /** TUNSETOFFLOAD with TUN_F_* flags (for a device opened with IFF_VNET_HDR); per device, through any of its queues. */
  setOffload(fd: number, offloadFlags: number): void;
  /** SIOCSIFMTU on the interface `name` in the namespace at `netnsPath` (null: this one). */
  setMtu(name: string, netnsPath: string | null, mtu: number): void;
  /** SIOCSIFHWADDR (ARPHRD_ETHER): the Ethernet address of `name`, 6 bytes. */
  setMac(name: string, netnsPath: string | null, mac: Uint8Array): void;
  /** Sets (default) or clears IFF_UP with SIOCGIFFLAGS/SIOCSIFFLAGS. */
  setUp(name: string, netnsPath: string | null, up?: boolean): void;
  /**
   * read()s packets into slots `data[i * slotSize ..]` until EAGAIN or `maxPackets`, filling
   * `lengths[i]` with the bytes after the slot's first `headroom` (default 0; the virtio_net_hdr
   * of an IFF_VNET_HDR device), cut to the slot when a packet is longer. Returns the count, 0
   * when none was queued. Throws only when the first read fails with something other than EAGAIN.
   *
   * `vnetLength` and `linkLength` (defaults: `headroom` and 0) say where the device's bytes go
   * when they are not one piece from the slot's start: the first `vnetLength` bytes (the
   * virtio_net_hdr) at the slot's start, the rest (a `linkLength`-byte link header, then the
   * packet) from `headroom - linkLength` (readv/writev); `lengths[i]` counts the packet only.
   * The same two arguments follow `headroom` in writeBatch and writeSelected.
   */
  readBatch(
    fd: number,
    data: Uint8Array,
    slotSize: number,
    lengths: Uint32Array,
    maxPackets: number,
    headroom?: number,
    vnetLength?: number,
    linkLength?: number,
  ): number;
  /**
   * write()s packets 0..count-1 from their slots, each as `headroom + lengths[i]` bytes from the
   * slot's start. Returns how many were written: fewer than `count` on EAGAIN, or before a
   * failing packet (which the next call, starting there, reports by throwing).
   */
  writeBatch(
    fd: number,
    data: Uint8Array,
    slotSize: number,
    lengths: Uint32Array,
    count: number,
    headroom?: number,
    vnetLength?: number,
    linkLength?: number,
  ): number;
  /**
   * write()s, of packets 0..count-1, those with `verdicts[i] === want` (a processed batch's
   * egress, src/dataplane/port.ts), without copying. Returns the index it got to: every selected
   * packet before it was written; less than `count` on EAGAIN, or before a failing packet (which
   * the next call, started at that index, reports by throwing), as writeBatch.
   */
  writeSelected(
    fd: number,
    data: Uint8Array,
    slotSize: number,
    lengths: Uint32Array,
    verdicts: Int32Array,
    count: number,
    want: number,
    headroom?: number,
    vnetLength?: number,
    linkLength?: number,
  ): number;
  /**
   * Moves the calling thread (Node's main thread) into the network namespace at `netnsPath` for
   * good (setns(2)): sockets created afterwards, and child processes, belong to it.
   */
  enterNetns(netnsPath: string): void;
  /**
   * Watches `fd` with a uv_poll_t (UV_READABLE) on Node's loop. `callback(0)` when readable;
   * `callback(-errno)` once if libuv reports an error (EBADF when the device was deleted), after
   * which the watcher has stopped but its handle is still open: call `stopPoll` then too, or the
   * handle is only closed at exit, after its fd, which crashes the process (tun.ts does this).
   * An active watcher keeps the process alive, like a socket.
   */
  poll(fd: number, callback: (status: number) => void): TunPollHandle;
  /** Stops the watcher; returns whether it was polling. Idempotent. */
  stopPoll(handle: TunPollHandle): boolean;
  /** close(2). Stop polling the fd first. */
  close(fd: number): void;
  readonly constants: TunNativeConstants;
}
