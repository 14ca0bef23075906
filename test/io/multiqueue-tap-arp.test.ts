/**
 * Which queue of a multi-queue TAP device the kernel's ARP frames reach (a router's tap port with
 * `workers: 2`; docs/multi-core.md "Ethernet ports with workers"). Needs root (it creates a
 * namespace qmqa<tag>, linked to nothing, and deletes it afterwards).
 *
 * drivers/net/tun.c picks the queue by the symmetric flow hash (tun_automq_select_queue ->
 * __skb_get_hash_symmetric). For ARP the symmetric dissector keeps no addresses
 * (__skb_flow_dissect_arp stops when the dissector has no FLOW_DISSECTOR_KEY_ARP, and
 * flow_keys_dissector_symmetric has none), so every ARP frame has one hash: all of them reach
 * one queue, the one the hash picks, or the queue that last *wrote* an ARP frame (tun_flow_update
 * records the writer under that same hash, for 3 s). So one thread receives every ARP packet of
 * a segment, whichever thread asked: the threads' neighbour tables must learn from each other.
 *
 * Measured here (Linux 6.18): 32 requests for 32 addresses, all 32 on one queue; after a frame
 * written through the other queue, the next 32 all on that one.
 */
import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { ETH_HLEN, PacketBatch } from "../../src/core/batch.js";
import { randomTag } from "../../src/control/twin.js";
import { createNetns, deleteNetns, ip, isRoot, netnsExists } from "../../src/io/netns.js";
import { TunDevice } from "../../src/io/tun.js";
import { ARPOP_REQUEST, ZERO_MAC, arpOperation, arpTargetIp, writeArp } from "../../src/wire/arp.js";
import { BROADCAST_MAC, ETH_P_ARP, ETH_ZLEN, ethernetType, parseMac, writeEthernetHeader } from "../../src/wire/ethernet.js";

const root = isRoot();
if (!root) console.warn("test/io/multiqueue-tap-arp.test.ts: not root, so the multi-queue TAP ARP test in a network namespace is skipped");

const ns = randomTag("qmqa");
const DEVICE = "tapq0";
const LIMIT_MS = 10_000;
const TARGETS = 32;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The kernel in `ns` asks for 10.78.0.(first..first+TARGETS-1): one ping each (bounded: 1 packet, 1 s). */
function askFor(first: number): void {
  const script = `for i in $(seq ${first} ${first + TARGETS - 1}); do ping -n -c 1 -W 1 10.78.0.$i >/dev/null 2>&1 & done; wait`;
  spawn("ip", ["netns", "exec", ns, "timeout", "5", "sh", "-c", script], { stdio: "ignore" });
}

/** Reads both queues until every target of `first..` was asked for (or LIMIT_MS): the queue each ARP request for them came on. */
async function arpQueues(queues: readonly TunDevice[], first: number): Promise<Map<number, number>> {
  const batch = new PacketBatch(64, 2048 + ETH_HLEN, ETH_HLEN);
  const queueOf = new Map<number, number>();
  const started = Date.now();
  while (queueOf.size < TARGETS && Date.now() - started < LIMIT_MS) {
    for (let q = 0; q < queues.length; q++) {
      while (queues[q]!.readInto(batch) > 0) {
        for (let i = 0; i < batch.count; i++) {
          const eth = batch.offsetOf(i) - ETH_HLEN;
          if (ethernetType(batch.data, eth) !== ETH_P_ARP || arpOperation(batch.data, eth + ETH_HLEN) !== ARPOP_REQUEST) continue;
          const target = arpTargetIp(batch.data, eth + ETH_HLEN) & 0xff;
          if (target >= first && target < first + TARGETS && !queueOf.has(target)) queueOf.set(target, q);
        }
      }
    }
    await sleep(10);
  }
  return queueOf;
}

describe.skipIf(!root)("ARP on a two-queue TAP device", () => {
  let queues: TunDevice[] = [];

  beforeAll(() => {
    createNetns(ns);
    queues = TunDevice.openQueues(DEVICE, { netns: ns, tap: true }, 2);
    queues[0]!.setUp();
    ip(ns, "addr", "add", "10.78.0.1/24", "dev", DEVICE);
  });
  afterAll(() => {
    for (const queue of queues) queue.close();
    if (netnsExists(ns)) deleteNetns(ns);
  });

  it(`the kernel's ${TARGETS} ARP requests for ${TARGETS} addresses all reach one queue; after a frame written through the other, they all reach that one`, async () => {
    askFor(10);
    const first = await arpQueues(queues, 10);
    expect(first.size).toBe(TARGETS);
    const used = new Set(first.values());
    expect(used.size).toBe(1);
    const [queue] = used;
    // A gratuitous ARP for 10.78.0.200 written through the other queue (as a worker thread's
    // request would be): tun_flow_update records that queue for ARP's one hash.
    const other = 1 - queue!;
    const out = new PacketBatch(1, 2048 + ETH_HLEN, ETH_HLEN);
    const at = out.offsetOf(0);
    const mac = parseMac("02:00:0a:4e:00:c8");
    writeArp(out.data, at, ARPOP_REQUEST, mac, parseIpv4("10.78.0.200"), ZERO_MAC, 0, parseIpv4("10.78.0.200"));
    writeEthernetHeader(out.data, at - ETH_HLEN, BROADCAST_MAC, 0, mac, ETH_P_ARP);
    out.lengths[0] = ETH_ZLEN - ETH_HLEN;
    out.count = 1;
    expect(queues[other]!.write(out)).toBe(1);
    askFor(100);
    const second = await arpQueues(queues, 100);
    expect(second.size).toBe(TARGETS);
    expect(new Set(second.values())).toEqual(new Set([other]));
  }, 30_000);
});
