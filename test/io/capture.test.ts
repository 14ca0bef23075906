/**
 * The capture inside the forwarding loop, on the seed's router with in-memory legs: the copies
 * before and after the pipeline, the comments that say what qnat did, the ring's losses, and the
 * Ethernet header of a tap port's slot.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { PacketBatch } from "../../src/core/batch.js";
import { commentContextOf, captureHeader, captureStatistics, drainSession } from "../../src/control/capture.js";
import { CaptureSession, CaptureTap, captureInterfaces, type CaptureInterface, type CaptureLegs } from "../../src/io/capture.js";
import { LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_RAW } from "../../src/io/pcapng.js";
import { decodePacket } from "../../src/wire/build.js";
import { TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";
import { readPcapng, type ReadCapture } from "../support/pcapng-reader.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

function capturing(legs: CaptureLegs = "wire", ring: { bytes?: number; records?: number } = {}, ports = [QR, QG]) {
  const router = MemoryRouter.fromFile();
  const routerPorts = router.config.ports.map((p) => ({ name: p.name, ethernet: false, wireNamespace: p.wire.namespace, wireDevice: p.wire.device }));
  const interfaces = captureInterfaces(routerPorts, router.config.namespace, ports, legs) as CaptureInterface[];
  const tap = new CaptureTap(64, [false, false]);
  const session = new CaptureSession(interfaces, 4, 0, ring);
  tap.add(session);
  router.forwarder.setCapture(tap);
  /** The capture so far as a pcapng file, read back. */
  const file = (): ReadCapture => {
    const blocks = [...captureHeader(interfaces), ...drainSession(session, commentContextOf(router.dataplane), 1 << 20), ...captureStatistics(session)];
    return readPcapng(Buffer.concat(blocks.map((b) => b.bytes)));
  };
  return { router, session, tap, interfaces, file };
}

/** "IFACE: src > dst | comment" of every captured packet. */
function lines(capture: ReadCapture): string[] {
  return capture.packets.map((p) => {
    const d = decodePacket(p.data);
    const ports = d.sport !== undefined ? [`:${d.sport}`, `:${d.dport}`] : ["", ""];
    return `${capture.interfaces[p.interfaceId]!.name}: ${d.src}${ports[0]} > ${d.dst}${ports[1]} | ${p.comments.join(" / ")}`;
  });
}

describe("qnat capture inside the forwarding loop", () => {
  it("10.0.0.3 reaches the outside as 9.186.100.2: the same SYN before and after SNAT, and the reply un-NATed", () => {
    const { router, file } = capturing();
    router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 80, tcpFlags: TCP_SYN });
    router.run();
    router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.2", sport: 80, dport: 40000, tcpFlags: TCP_SYN | TCP_ACK });
    router.run();
    const capture = file();
    // Two TUN interfaces: raw IPv4 (LINKTYPE_IPV4, which libpcap 1.10 reads beside another one).
    expect(capture.interfaces.map((i) => [i.name, i.linkType])).toEqual([
      [QR, LINKTYPE_IPV4],
      [QG, LINKTYPE_IPV4],
    ]);
    expect(lines(capture)).toEqual([
      `${QR}: 10.0.0.3:40000 > 203.0.113.10:80 | SNAT 10.0.0.3:40000 -> 9.186.100.2:40000 (rule neutron-vpn-agen-snat #2)`,
      `${QG}: 9.186.100.2:40000 > 203.0.113.10:80 | SNAT 10.0.0.3:40000 -> 9.186.100.2:40000 (rule neutron-vpn-agen-snat #2)`,
      `${QG}: 203.0.113.10:80 > 9.186.100.2:40000 | un-NAT reply: dst 9.186.100.2:40000 -> 10.0.0.3:40000 (conntrack ESTABLISHED)`,
      `${QR}: 203.0.113.10:80 > 10.0.0.3:40000 | un-NAT reply: dst 9.186.100.2:40000 -> 10.0.0.3:40000 (conntrack ESTABLISHED)`,
    ]);
    // ingress as read (TTL 64), egress as written (TTL 63)
    expect(decodePacket(capture.packets[0]!.data).ttl).toBe(64);
    expect(decodePacket(capture.packets[1]!.data).ttl).toBe(63);
    expect(capture.packets[1]!.timestamp >= capture.packets[0]!.timestamp).toBe(true);
    expect(capture.statistics.map((s) => [s.received, s.dropped])).toEqual([
      [2n, 0n],
      [2n, 0n],
    ]);
  });

  it("an established flow on the fast path is still explained: SNAT (conntrack ESTABLISHED)", () => {
    const { router, file } = capturing("wire", {}, [QG]);
    expect(file().interfaces.map((i) => [i.name, i.linkType])).toEqual([[QG, LINKTYPE_RAW]]);
    const udp = { protocol: "udp" as const, src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53, payload: new Uint8Array(8) };
    router.send(QR, udp);
    router.run();
    router.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.2", sport: 53, dport: 5000, payload: new Uint8Array(8) });
    router.run();
    const before = router.dataplane.fastPathPackets;
    router.send(QR, udp);
    router.send(QR, udp);
    router.run();
    expect(router.dataplane.fastPathPackets - before).toBe(2);
    expect(lines(file()).slice(2)).toEqual([
      `${QG}: 9.186.100.2:5000 > 203.0.113.10:53 | SNAT 10.0.0.3:5000 -> 9.186.100.2:5000 (conntrack ESTABLISHED)`,
      `${QG}: 9.186.100.2:5000 > 203.0.113.10:53 | SNAT 10.0.0.3:5000 -> 9.186.100.2:5000 (conntrack ESTABLISHED)`,
    ]);
  });

  it("the floating IP, the metadata REDIRECT, rp_filter, the router's own host and its ICMP errors, each in words", () => {
    const { router, file } = capturing("both");
    router.send(QG, { protocol: "tcp", src: "9.186.100.1", dst: "9.186.100.129", sport: 33000, dport: 22, tcpFlags: TCP_SYN });
    router.send(QR, { protocol: "tcp", src: "10.0.0.2", dst: "169.254.169.254", sport: 41000, dport: 80, tcpFlags: TCP_SYN });
    router.send(QG, { protocol: "udp", src: "10.0.0.5", dst: "9.186.100.2", sport: 1, dport: 2 });
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 7, dport: 7, ttl: 1 });
    router.run();
    // In the loop's order: the batch of the qr- wire leg (ingress copies, then what it wrote),
    // then the batch of the qg- wire leg.
    expect(lines(file())).toEqual([
      `${QR}: 10.0.0.2:41000 > 169.254.169.254:80 | local: to the router's host; REDIRECT to 10.0.0.1:9697 (rule neutron-vpn-agen-PREROUTING #1)`,
      `${QR}: 10.0.0.3:7 > 203.0.113.10:7 | dropped: TTL exceeded`,
      `${QR}/mirror: 10.0.0.2:41000 > 10.0.0.1:9697 | local: to the router's host; REDIRECT to 10.0.0.1:9697 (rule neutron-vpn-agen-PREROUTING #1)`,
      `${QR}: 10.0.0.1 > 10.0.0.3 | ICMP error generated by qnat`,
      `${QG}: 9.186.100.1:33000 > 9.186.100.129:22 | DNAT 9.186.100.129 -> 10.0.0.2 (floating IP, rule neutron-vpn-agen-PREROUTING #2)`,
      `${QG}: 10.0.0.5:1 > 9.186.100.2:2 | dropped: rp_filter`,
      `${QR}: 9.186.100.1:33000 > 10.0.0.2:22 | DNAT 9.186.100.129 -> 10.0.0.2 (floating IP, rule neutron-vpn-agen-PREROUTING #2)`,
    ]);
    router.sendFromHost(QR, { protocol: "icmp", src: "10.0.0.1", dst: "10.0.0.3", icmpType: 8, icmpId: 9 });
    router.run();
    expect(lines(file())).toEqual([`${QR}/mirror: 10.0.0.1 > 10.0.0.3 | from the router's host (OUTPUT)`, `${QR}: 10.0.0.1 > 10.0.0.3 | from the router's host (OUTPUT)`]);
  });

  it("a datagram larger than qg-'s MTU: the copy as read says it was fragmented, each fragment says qnat made it", () => {
    const text = readFileSync("examples/seed.yaml", "utf8").replace(/(qg-e76de35e-90[\s\S]*?mtu: )1500/, "$11000");
    const router = new MemoryRouter(parseConfig(text, "examples/seed.yaml"));
    const routerPorts = router.config.ports.map((p) => ({ name: p.name, ethernet: false, wireNamespace: p.wire.namespace, wireDevice: p.wire.device }));
    const interfaces = captureInterfaces(routerPorts, router.config.namespace, [QR, QG], "wire") as CaptureInterface[];
    const tap = new CaptureTap(64, [false, false]);
    const session = new CaptureSession(interfaces, 4);
    tap.add(session);
    router.forwarder.setCapture(tap);
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4000, dport: 53, payload: new Uint8Array(1400) });
    router.run();
    const read = readPcapng(Buffer.concat([...captureHeader(interfaces), ...drainSession(session, commentContextOf(router.dataplane))].map((b) => b.bytes)));
    expect(read.packets.map((p) => `${read.interfaces[p.interfaceId]!.name} ${p.data.length} | ${p.comments[0]}`)).toEqual([
      `${QR} 1428 | fragmented by qnat: larger than the egress MTU, leaves as fragments; SNAT 10.0.0.3:4000 -> 9.186.100.2:4000 (rule neutron-vpn-agen-snat #2)`,
      `${QG} 996 | fragment made by qnat: the datagram was larger than the egress MTU (ip_fragment)`,
      `${QG} 452 | fragment made by qnat: the datagram was larger than the egress MTU (ip_fragment)`,
    ]);
  });

  it("a ring too small for the burst loses packets to the capture, never to forwarding, and counts them", () => {
    const { router, session, file } = capturing("wire", { bytes: 1024, records: 16 }, [QG]);
    for (let i = 0; i < 40; i++) router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 6000 + i, dport: 53, payload: new Uint8Array(20) });
    router.run();
    expect(router.received(QG)).toHaveLength(40);
    const capture = file();
    expect(capture.packets.length).toBeGreaterThan(0);
    expect(capture.packets.length).toBeLessThan(40);
    expect(session.lostTotal).toBe(40 - capture.packets.length);
    expect(capture.statistics).toEqual([{ interfaceId: 0, received: 40n, dropped: BigInt(40 - capture.packets.length) }]);
    // Drained, the ring takes packets again.
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 7000, dport: 53 });
    router.run();
    expect(file().packets).toHaveLength(1);
  });

  it("with -c COUNT the capture stops taking packets after COUNT", () => {
    const router = MemoryRouter.fromFile();
    const interfaces = captureInterfaces([{ name: QR, ethernet: false, wireNamespace: "t", wireDevice: "eth0" }], "r", [QR], "wire") as CaptureInterface[];
    const tap = new CaptureTap(64, [false, false]);
    const session = new CaptureSession(interfaces, 4, 3);
    tap.add(session);
    router.forwarder.setCapture(tap);
    for (let i = 0; i < 5; i++) router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 100 + i, dport: 53 });
    router.run();
    const blocks = drainSession(session, commentContextOf(router.dataplane));
    expect(readPcapng(Buffer.concat([...captureHeader(interfaces), ...blocks].map((b) => b.bytes))).packets).toHaveLength(3);
    expect(session.finished).toBe(true);
  });

  it("with no capture the dataplane records no decisions", () => {
    const { router, tap } = capturing();
    router.forwarder.setCapture(null);
    expect(router.dataplane.decisions).toBeNull();
    tap.decisions.connection.fill(-7);
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 1, dport: 2 });
    router.run();
    expect(tap.decisions.connection[0]).toBe(-7);
  });

  it("a tap port's packets are captured with the Ethernet header before them in the slot (LINKTYPE_ETHERNET)", () => {
    const router = MemoryRouter.fromFile();
    const ports = [
      { name: QR, ethernet: true, wireNamespace: "qnat-tenant", wireDevice: "eth0" },
      { name: QG, ethernet: false, wireNamespace: "qnat-external", wireDevice: "eth0" },
    ];
    const interfaces = captureInterfaces(ports, "qrouter-x", [QR], "wire") as CaptureInterface[];
    expect(interfaces.map((i) => i.linkType)).toEqual([LINKTYPE_ETHERNET]);
    const tap = new CaptureTap(8, [true, false]);
    const session = new CaptureSession(interfaces, 4);
    tap.add(session);
    // The slot layout of a router with tap ports: virtio_net_hdr (10) + Ethernet (14) of headroom.
    const batch = new PacketBatch(8, 2048, 10 + 14);
    const packet = Buffer.from([0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 3, 203, 0, 113, 10]);
    batch.push(packet);
    const header = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x33, 0x02, 0, 0, 0, 0, 3, 0x08, 0x00];
    batch.data.set(header, batch.offsetOf(0) - 14);
    tap.ingress(batch, 0);
    const verdicts = Int32Array.of(-1);
    const empty = new PacketBatch(1, 2048);
    tap.egress(router.dataplane, batch, verdicts, 0, empty, verdicts, empty, verdicts, empty, verdicts);
    // A released fragment's slot has no headroom: its frame gets zero addresses and the IPv4 type.
    const released = new PacketBatch(1, 2048);
    released.push(packet);
    tap.egress(router.dataplane, new PacketBatch(1, 2048), verdicts, 2, released, Int32Array.of(0), empty, verdicts, empty, verdicts);
    const read = readPcapng(Buffer.concat([...captureHeader(interfaces), ...drainSession(session, commentContextOf(router.dataplane))].map((b) => b.bytes)));
    expect(read.packets).toHaveLength(2);
    expect([...read.packets[0]!.data]).toEqual([...header, ...packet]);
    expect([...read.packets[1]!.data]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00, ...packet]);
  });
});
