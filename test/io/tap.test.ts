/**
 * qnat's TAP devices (the legs of Ethernet ports) and the slot layout of a router with Ethernet
 * ports (core/batch.ts): a TAP `eth0` with the port's MAC in a fresh namespace, frames read with
 * their Ethernet header at offsetOf(i) - 14, a frame written back; and a TUN device read and
 * written around the 14-byte gap. Needs root (namespaces qnt-tap-*, qnt-tun-*, linked to
 * nothing, deleted afterwards).
 */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ETH_HLEN, PacketBatch, VIRTIO_NET_HDR_LEN } from "../../src/core/batch.js";
import { createNetns, deleteNetns, ip, isRoot, netnsExecAsync, netnsExists, setSysctl } from "../../src/io/netns.js";
import { TunDevice } from "../../src/io/tun.js";
import { buildPacket, decodePacket } from "../../src/wire/build.js";
import { ETH_P_IP, ethernetType, formatMac, parseMac, writeEthernetHeader } from "../../src/wire/ethernet.js";

const root = isRoot();
if (!root) console.warn("test/io/tap.test.ts: not root, so the TAP tests in network namespaces are skipped");

const suffix = randomBytes(3).toString("hex");
const nsTap = `qnt-tap-${suffix}`;
const nsTun = `qnt-tun-${suffix}`;
const PORT_MAC = "fa:16:3e:5d:18:10";
const PEER_MAC = "02:00:0a:62:00:02";
const HEADROOM = VIRTIO_NET_HDR_LEN + ETH_HLEN;

/** Sends one UDP datagram "qnat-tap" from inside `netns` to `to:9`. */
function sendDatagram(netns: string, to: string): Promise<string> {
  return netnsExecAsync(
    netns,
    process.execPath,
    ["-e", `const s = require("dgram").createSocket("udp4"); s.send("qnat-tap", 9, "${to}", () => s.close());`],
    { timeoutMs: 10_000 },
  );
}

/** Reads from `device` until a packet matching `match` arrives (bounded); returns its slot or -1. */
async function readUntil(device: TunDevice, batch: PacketBatch, match: (i: number) => boolean): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const count = device.readInto(batch);
    for (let i = 0; i < count; i++) if (match(i)) return i;
    await new Promise((r) => setTimeout(r, 10));
  }
  return -1;
}

describe.skipIf(!root)("TAP devices and the Ethernet slot layout", () => {
  let tap: TunDevice;
  let tun: TunDevice;

  beforeAll(() => {
    for (const ns of [nsTap, nsTun]) {
      createNetns(ns);
      try {
        setSysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1);
        setSysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1);
      } catch {
        // a kernel without IPv6 has nothing to silence
      }
    }
    tap = TunDevice.open("eth0", { netns: nsTap, vnetHdr: true, tap: true });
    tap.setMac(PORT_MAC);
    tap.setUp();
    ip(nsTap, "addr", "add", "10.98.0.1/24", "dev", "eth0");
    ip(nsTap, "neigh", "replace", "10.98.0.2", "lladdr", PEER_MAC, "dev", "eth0");
    tun = TunDevice.open("eth0", { netns: nsTun, vnetHdr: true });
    tun.setUp();
    ip(nsTun, "addr", "add", "10.97.0.1/24", "dev", "eth0");
  });

  afterAll(() => {
    for (const device of [tap, tun]) {
      try {
        device?.close();
      } catch {
        // the namespaces' deletion removes what is left
      }
    }
    for (const ns of [nsTap, nsTun]) if (netnsExists(ns)) deleteNetns(ns);
  });

  it("the TAP device is an Ethernet device with the MAC it was given", () => {
    const shown = ip(nsTap, "-o", "link", "show", "eth0");
    expect(shown).toMatch(/<BROADCAST,MULTICAST,UP,LOWER_UP>/);
    expect(shown).toContain(`link/ether ${PORT_MAC}`);
  });

  it("a frame read from the TAP has its Ethernet header at offsetOf(i) - 14 and its IPv4 packet at offsetOf(i)", async () => {
    const batch = new PacketBatch(16, 2048 + HEADROOM, HEADROOM);
    await sendDatagram(nsTap, "10.98.0.2");
    const at = await readUntil(tap, batch, (i) => ethernetType(batch.data, batch.offsetOf(i) - ETH_HLEN) === ETH_P_IP);
    expect(at).toBeGreaterThanOrEqual(0);
    const eth = batch.offsetOf(at) - ETH_HLEN;
    expect(formatMac(batch.data, eth)).toBe(PEER_MAC);
    expect(formatMac(batch.data, eth + 6)).toBe(PORT_MAC);
    const packet = decodePacket(batch.copyOut(at));
    expect(packet).toMatchObject({ protocol: "udp", src: "10.98.0.1", dst: "10.98.0.2", dport: 9 });
    expect(new TextDecoder().decode(packet.payload)).toBe("qnat-tap");
  });

  it("a frame written to the TAP reaches the namespace's kernel: its ping is answered", async () => {
    const batch = new PacketBatch(16, 2048 + HEADROOM, HEADROOM);
    const ping = buildPacket({ protocol: "icmp", src: "10.98.0.2", dst: "10.98.0.1", icmpType: 8, icmpId: 0x7a, icmpSeq: 1 });
    expect(batch.push(ping)).toBe(true);
    writeEthernetHeader(batch.data, batch.offsetOf(0) - ETH_HLEN, parseMac(PORT_MAC), 0, parseMac(PEER_MAC), ETH_P_IP);
    expect(tap.write(batch)).toBe(1);
    const reply = await readUntil(tap, batch, (i) => {
      const p = batch.copyOut(i);
      return p.length >= 28 && p[9] === 1 && decodePacket(p).icmpType === 0;
    });
    expect(reply).toBeGreaterThanOrEqual(0);
    expect(decodePacket(batch.copyOut(reply))).toMatchObject({ src: "10.98.0.1", dst: "10.98.0.2", icmpId: 0x7a });
    expect(formatMac(batch.data, batch.offsetOf(reply) - ETH_HLEN)).toBe(PEER_MAC);
  });

  it("a TUN device of the same router reads and writes around the 14-byte gap (the packet at offsetOf(i))", async () => {
    const batch = new PacketBatch(16, 2048 + HEADROOM, HEADROOM);
    batch.data.fill(0xee);
    await sendDatagram(nsTun, "10.97.0.2");
    const at = await readUntil(tun, batch, (i) => {
      const p = batch.copyOut(i);
      return p.length >= 28 && p[0]! >> 4 === 4 && p[9] === 17;
    });
    expect(at).toBeGreaterThanOrEqual(0);
    expect(decodePacket(batch.copyOut(at))).toMatchObject({ src: "10.97.0.1", dst: "10.97.0.2", dport: 9 });
    // The gap is left as it was: the device's bytes went to the header and the packet only.
    const gap = batch.data.subarray(at * batch.slotSize + VIRTIO_NET_HDR_LEN, batch.offsetOf(at));
    expect([...gap].every((b) => b === 0xee)).toBe(true);
    // Written back the same way: a ping to the namespace is answered.
    batch.clear();
    batch.push(buildPacket({ protocol: "icmp", src: "10.97.0.2", dst: "10.97.0.1", icmpType: 8, icmpId: 0x7b, icmpSeq: 1 }));
    expect(tun.write(batch)).toBe(1);
    const reply = await readUntil(tun, batch, (i) => {
      const p = batch.copyOut(i);
      return p.length >= 28 && p[9] === 1 && decodePacket(p).icmpType === 0;
    });
    expect(decodePacket(batch.copyOut(reply))).toMatchObject({ src: "10.97.0.1", dst: "10.97.0.2", icmpId: 0x7b });
  });

  it("a TAP refuses batches without room for the Ethernet header", () => {
    const batch = new PacketBatch(4, 2048 + VIRTIO_NET_HDR_LEN, VIRTIO_NET_HDR_LEN);
    expect(() => tap.readInto(batch)).toThrow(/plus the Ethernet header/);
  });
});
