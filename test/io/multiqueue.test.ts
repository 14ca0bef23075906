/**
 * Multi-queue TUN/TAP devices (IFF_MULTI_QUEUE), the way a router with several workers opens its
 * ports: one queue (fd) per worker, all opened by the main thread. Needs root (it creates a
 * namespace qmq<tag>, linked to nothing, and deletes it afterwards).
 *
 * What Linux does with the queues (drivers/net/tun.c):
 * - Packets the kernel sends to the device go to one queue per flow: tun_select_queue ->
 *   tun_automq_select_queue takes the symmetric flow hash (__skb_get_hash_symmetric: addresses,
 *   protocol and ports; ICMP has no ports, so its echo id does not count) and looks it up in the
 *   device's flow table; without an entry the queue is the hash scaled to the queue count.
 * - Every packet written through a queue records its flow in that table (tun_get_user ->
 *   tun_flow_update, keyed by the same symmetric hash) as the writer's queue, so the kernel's later
 *   packets of that flow, both directions, leave by the queue that last wrote one. The record is
 *   made after the written packet has been delivered: an answer the kernel sends while still
 *   processing the write (an echo reply, a TCP ACK) leaves by the previous entry (or the hash).
 *   Entries unused for TUN_FLOW_EXPIRE (3 s) are dropped by tun_flow_cleanup, a 3 s timer.
 * - The queues share the device's flags and offloads; the flags are the first queue's.
 *
 * Measured here (Linux 6.18, 2 cores; the figures the tests below assert or that were measured
 * with the same helpers): 64 kernel-sent UDP flows split 32/32, 33/31, 36/28 over the two queues.
 * With the writer queue swapped per flow and per round, the second write's reply left by the
 * writer's queue 96 of 96 times, the first write's reply by the previous writer's 64 of 64, and
 * the kernel's own pings to the 32 peers by the last writer's 32 of 32. After silence (64 flows
 * per step), pings still followed the writer 64/64 at 0.5, 1, 2, 2.5, 3 and 3.5 s; from 4 s on
 * only the hash's share did (43, 29, 35, 36, 31 of 64 at 4, 5, 6, 7, 8 s).
 * So while a flow is active the steering is reliable, but only for the tuple the writer used:
 * a NATed connection's two directions are different tuples on different devices, and a flow's
 * first answer leaves by the hash, so a connection's packets can still reach different workers
 * and the connection table has to be shared by the workers.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { PacketBatch, VIRTIO_NET_HDR_LEN } from "../../src/core/batch.js";
import { randomTag } from "../../src/control/twin.js";
import { createNetns, deleteNetns, ip, isRoot, netnsExec, netnsExecAsync, netnsExists, setSysctl } from "../../src/io/netns.js";
import { GSO_SLOT_SIZE, loadTunAddon, TUN_MAX_QUEUES, TunDevice, type TunError } from "../../src/io/tun.js";
import { internetChecksum } from "../../src/wire/checksum.js";

const root = isRoot();
if (!root) console.warn("test/io/multiqueue.test.ts: not root, so the multi-queue TUN tests in a network namespace are skipped");

const ns = randomTag("qmq");
const HOST = "10.77.0.1";
const PEERS = "10.77.1.0/24"; // routed through the TUN device: the flows' far ends
const LIMIT_MS = 10_000;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Reads every queue until `done()` or LIMIT_MS, handing each packet to `seen(queue, batch, i)`.
 * Non-blocking reads every 10 ms: the test polls, a worker would use onReadable.
 */
async function readQueues(
  queues: readonly TunDevice[],
  seen: (queue: number, batch: PacketBatch, index: number) => void,
  done: () => boolean,
): Promise<void> {
  const batch = new PacketBatch(64);
  const started = Date.now();
  while (!done() && Date.now() - started < LIMIT_MS) {
    for (let q = 0; q < queues.length; q++) {
      while (queues[q]!.readInto(batch) > 0) {
        for (let i = 0; i < batch.count; i++) seen(q, batch, i);
      }
    }
    if (!done()) await sleep(10);
  }
}

function u32(d: Uint8Array, at: number): number {
  return ((d[at]! << 24) | (d[at + 1]! << 16) | (d[at + 2]! << 8) | d[at + 3]!) >>> 0;
}

/** An ICMP echo request from `source` to HOST, id 0x5151, sequence `sequence`. */
function echoRequest(source: number, sequence: number): Uint8Array {
  const p = new Uint8Array(28);
  p.set([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 1]); // IPv4, 28 bytes, DF, TTL 64, ICMP
  const host = parseIpv4(HOST);
  for (let k = 0; k < 4; k++) {
    p[12 + k] = (source >>> (24 - 8 * k)) & 0xff;
    p[16 + k] = (host >>> (24 - 8 * k)) & 0xff;
  }
  const ipSum = internetChecksum(p, 0, 20);
  p[10] = ipSum >> 8;
  p[11] = ipSum & 0xff;
  p.set([8, 0, 0, 0, 0x51, 0x51, sequence >> 8, sequence & 0xff], 20);
  const icmpSum = internetChecksum(p, 20, 8);
  p[22] = icmpSum >> 8;
  p[23] = icmpSum & 0xff;
  return p;
}

/** The echo reply's sequence number when packet i is HOST's ICMP echo reply with id 0x5151, else -1. */
function echoReplySequence(batch: PacketBatch, i: number): number {
  const at = batch.offsetOf(i);
  const d = batch.data;
  if (d[at]! !== 0x45 || d[at + 9] !== 1 || u32(d, at + 12) !== parseIpv4(HOST)) return -1;
  if (d[at + 20] !== 0 || d[at + 24] !== 0x51 || d[at + 25] !== 0x51) return -1;
  return (d[at + 26]! << 8) | d[at + 27]!;
}

describe.skipIf(!root)("a TUN device with two queues, as two workers hold it", () => {
  let queues: TunDevice[] = [];
  const others: TunDevice[] = [];

  beforeAll(() => {
    createNetns(ns);
    try {
      setSysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1);
      setSysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1);
    } catch {
      // a kernel without IPv6 sends nothing to silence
    }
    queues = TunDevice.openQueues("mq0", { netns: ns }, 2);
    ip(ns, "addr", "add", `${HOST}/24`, "dev", "mq0");
    queues[0]!.setUp();
    ip(ns, "route", "add", PEERS, "dev", "mq0");
  });

  afterAll(() => {
    for (const device of [...queues, ...others]) {
      try {
        device.close();
      } catch {
        // deleting the namespace removes what is left
      }
    }
    if (netnsExists(ns)) deleteNetns(ns);
  });

  it("is one device mq0 with IFF_MULTI_QUEUE and two queues, one fd each", () => {
    expect(queues).toHaveLength(2);
    expect(queues[0]!.fd).not.toBe(queues[1]!.fd);
    const flags = parseInt(netnsExec(ns, "cat", ["/sys/class/net/mq0/tun_flags"]).trim(), 16);
    expect(flags & loadTunAddon().constants.IFF_MULTI_QUEUE).not.toBe(0);
    const sysQueues = netnsExec(ns, "ls", ["/sys/class/net/mq0/queues"]).split(/\s+/).filter((q) => q !== "");
    expect(sysQueues.sort()).toEqual(["rx-0", "rx-1", "tx-0", "tx-1"]);
    expect(TUN_MAX_QUEUES).toBe(loadTunAddon().constants.TUN_MAX_QUEUES);
  });

  it("spreads 64 UDP flows that 10.77.0.1 sends over both queues, losing none", async () => {
    const flows = 64;
    const perQueue = [0, 0];
    await netnsExecAsync(
      ns,
      "python3",
      ["-c", `import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range(${flows}): s.sendto(b"flow", ("10.77.1.2", 20000 + i))`],
      { timeoutMs: LIMIT_MS },
    );
    await readQueues(
      queues,
      (q, batch, i) => {
        const at = batch.offsetOf(i);
        const d = batch.data;
        const port = (d[at + 22]! << 8) | d[at + 23]!;
        if (d[at + 9] === 17 && u32(d, at + 16) === parseIpv4("10.77.1.2") && port >= 20000 && port < 20000 + flows) perQueue[q]!++;
      },
      () => perQueue[0]! + perQueue[1]! >= flows,
    );
    expect(perQueue[0]! + perQueue[1]!).toBe(flows);
    expect(perQueue[0]).toBeGreaterThan(0);
    expect(perQueue[1]).toBeGreaterThan(0);
  });

  /**
   * Writes one echo request per flow f (from 10.77.1.<10 + f>) through queue `writer(f)` and
   * returns the queue each reply came out of (sequence numbers `base + f`).
   */
  async function exchange(flows: number, writer: (flow: number) => number, base: number): Promise<Int32Array> {
    const batch = new PacketBatch(1);
    const replyQueue = new Int32Array(flows).fill(-1);
    for (let f = 0; f < flows; f++) {
      batch.clear();
      batch.push(echoRequest(parseIpv4(`10.77.1.${10 + f}`), base + f));
      expect(queues[writer(f)]!.write(batch)).toBe(1);
    }
    let answered = 0;
    await readQueues(
      queues,
      (q, replies, i) => {
        const f = echoReplySequence(replies, i) - base;
        if (f >= 0 && f < flows && replyQueue[f] === -1) {
          replyQueue[f] = q;
          answered++;
        }
      },
      () => answered === flows,
    );
    expect(answered).toBe(flows);
    return replyQueue;
  }

  it("sends a flow's later packets out of the queue that last wrote it (tun_flow_update)", async () => {
    // 32 flows (one per peer address: ICMP hashes without ports), 3 rounds; in each round the even
    // flows are written through one queue and the odd ones through the other, swapped every round,
    // so about half of the replies must leave the queue their hash alone would pick. Each flow is
    // written twice: the first reply is sent while the write is still in the kernel, before
    // tun_get_user records the flow, so it leaves by the previous entry; the second follows the writer.
    const flows = 32;
    let followed = 0;
    let lagged = 0;
    for (let round = 0; round < 3; round++) {
      const writer = (f: number): number => (f + round) % 2;
      const first = await exchange(flows, writer, 1000 * round);
      const second = await exchange(flows, writer, 1000 * round + 500);
      for (let f = 0; f < flows; f++) {
        if (second[f] === writer(f)) followed++;
        if (round > 0 && first[f] === (f + round - 1) % 2) lagged++;
      }
    }
    expect(followed).toBe(3 * flows);
    expect(lagged).toBe(2 * flows); // Linux 6.18; a kernel that recorded the flow before delivering it would answer on the writer's queue

    // The kernel's own packets of those flows (pings from 10.77.0.1) leave by the last writer's queue.
    const pingQueue = new Int32Array(flows).fill(-1);
    let seen = 0;
    const peers = Array.from({ length: flows }, (_, f) => `10.77.1.${10 + f}`);
    const pings = netnsExecAsync(ns, "sh", ["-c", `for a in ${peers.join(" ")}; do ping -n -q -c 1 -W 1 $a >/dev/null & done; wait; true`], {
      timeoutMs: LIMIT_MS,
    });
    await readQueues(
      queues,
      (q, batch, i) => {
        const at = batch.offsetOf(i);
        const d = batch.data;
        const f = d[at + 19]! - 10;
        if (d[at + 9] === 1 && d[at + 20] === 8 && u32(d, at + 12) === parseIpv4(HOST) && f >= 0 && f < flows && pingQueue[f] === -1) {
          pingQueue[f] = q;
          seen++;
        }
      },
      () => seen === flows,
    );
    await pings;
    let pingsFollowed = 0;
    for (let f = 0; f < flows; f++) if (pingQueue[f] === f % 2) pingsFollowed++;
    expect(seen).toBe(flows);
    expect(pingsFollowed).toBe(flows);
  });

  it("takes offloads set through queue 0 for the whole device: queue 1 gets UDP super-packets too", async () => {
    // tun.c's set_offload stores the TUN_F_* in the device's set_features and calls
    // netdev_update_features: the features are the device's, whichever queue set them.
    const gso = TunDevice.openQueues("gso0", { netns: ns, vnetHdr: true }, 2);
    others.push(...gso);
    const offloads = gso[0]!.enableOffloads();
    if (!offloads.udpSegmentation) {
      console.warn("test/io/multiqueue.test.ts: this kernel has no UDP segmentation offload on TUN (Linux 6.2+), so the offload check is skipped");
      return;
    }
    ip(ns, "addr", "add", "10.77.3.1/24", "dev", "gso0");
    gso[0]!.setUp();
    // 16 flows of one 4000-byte datagram cut by UDP_SEGMENT (103, include/uapi/linux/udp.h) into 1000-byte segments
    const flows = 16;
    await netnsExecAsync(
      ns,
      "python3",
      [
        "-c",
        `import socket\nfor i in range(${flows}):\n s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n s.setsockopt(socket.SOL_UDP, 103, 1000)\n s.sendto(b"x" * 4000, ("10.77.3.2", 21000 + i))\n s.close()`,
      ],
      { timeoutMs: LIMIT_MS },
    );
    const superPackets = [0, 0];
    let datagrams = 0;
    const batch = new PacketBatch(8, GSO_SLOT_SIZE, VIRTIO_NET_HDR_LEN);
    const started = Date.now();
    while (datagrams < flows && Date.now() - started < LIMIT_MS) {
      for (let q = 0; q < 2; q++) {
        while (gso[q]!.readInto(batch) > 0) {
          for (let i = 0; i < batch.count; i++) {
            const at = batch.offsetOf(i);
            if (batch.data[at + 9] !== 17 || u32(batch.data, at + 16) !== parseIpv4("10.77.3.2")) continue;
            datagrams++;
            if (batch.gsoSizeOf(i) === 1000 && batch.lengths[i] === 20 + 8 + 4000) superPackets[q]!++;
          }
        }
      }
      await sleep(10);
    }
    expect(datagrams).toBe(flows);
    expect(superPackets[0]! + superPackets[1]!).toBe(flows);
    expect(superPackets[1]).toBeGreaterThan(0);
  });

  it("refuses IFF_MULTI_QUEUE on a device opened without it: EINVAL, said in one line", () => {
    const single = TunDevice.open("sq0", { netns: ns });
    others.push(single);
    const expected: Partial<TunError> = {
      code: "EINVAL",
      syscall: "TUNSETIFF",
      message:
        "TUN sq0: cannot open 2 queues: sq0 exists without multi-queue (IFF_MULTI_QUEUE) or is not a TUN device (TUNSETIFF sq0: Invalid argument)",
    };
    expect(() => TunDevice.openQueues("sq0", { netns: ns }, 2)).toThrow(expect.objectContaining(expected));
    // and the reverse: one queue without IFF_MULTI_QUEUE on the multi-queue mq0
    expect(() => TunDevice.open("mq0", { netns: ns })).toThrow(expect.objectContaining({ code: "EINVAL" }));
  });

  it("refuses a queue count outside 1..256 before opening anything", () => {
    const expected: Partial<TunError> = { code: "ERR_OUT_OF_RANGE", message: "TUN mq9: 257 queues: a device has 1..256 (MAX_TAP_QUEUES)" };
    expect(() => TunDevice.openQueues("mq9", { netns: ns }, TUN_MAX_QUEUES + 1)).toThrow(expect.objectContaining(expected));
    expect(ip(ns, "-o", "link", "show")).not.toContain("mq9");
  });

  it("opens one queue without IFF_MULTI_QUEUE, as a one-worker router always did", () => {
    const [only] = TunDevice.openQueues("one0", { netns: ns }, 1);
    others.push(only!);
    const flags = parseInt(netnsExec(ns, "cat", ["/sys/class/net/one0/tun_flags"]).trim(), 16);
    expect(flags & loadTunAddon().constants.IFF_MULTI_QUEUE).toBe(0);
  });

  it("lets a worker wrap queue 1's fd: it reads that queue, and closing it leaves the device", async () => {
    const worker = TunDevice.fromFd(queues[1]!.fd, { name: "mq0", netns: ns, ownsFd: false });
    const batch = new PacketBatch(1);
    batch.push(echoRequest(parseIpv4("10.77.1.200"), 4000));
    expect(worker.write(batch)).toBe(1); // records the flow as queue 1's (its reply may precede that)
    batch.clear();
    batch.push(echoRequest(parseIpv4("10.77.1.200"), 4001));
    expect(worker.write(batch)).toBe(1);
    let replyOn = -1;
    await readQueues(
      [queues[0]!, worker],
      (q, replies, i) => {
        if (echoReplySequence(replies, i) === 4001) replyOn = q;
      },
      () => replyOn !== -1,
    );
    expect(replyOn).toBe(1);
    worker.close();
    expect(worker.isClosed).toBe(true);
    expect(queues[1]!.isClosed).toBe(false);
    expect(ip(ns, "-o", "link", "show", "mq0")).toContain("mq0");
  });
});

describe.skipIf(!root)("a TAP device with two queues", () => {
  const tapNs = randomTag("qmq");

  it("opens both queues of tap0 (IFF_TAP | IFF_MULTI_QUEUE)", () => {
    createNetns(tapNs);
    let queues: TunDevice[] = [];
    try {
      queues = TunDevice.openQueues("tap0", { netns: tapNs, tap: true }, 2);
      expect(queues.map((q) => q.isTap)).toEqual([true, true]);
      const flags = parseInt(netnsExec(tapNs, "cat", ["/sys/class/net/tap0/tun_flags"]).trim(), 16);
      const c = loadTunAddon().constants;
      expect(flags & (c.IFF_TAP | c.IFF_MULTI_QUEUE)).toBe(c.IFF_TAP | c.IFF_MULTI_QUEUE);
      expect(netnsExec(tapNs, "ls", ["/sys/class/net/tap0/queues"]).split(/\s+/).filter((q) => q.startsWith("tx-"))).toHaveLength(2);
    } finally {
      for (const queue of queues) queue.close();
      if (netnsExists(tapNs)) deleteNetns(tapNs);
    }
  });
});
