import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { decodePacket } from "../../src/wire/build.js";
import { internetChecksum, pseudoHeaderSum } from "../../src/wire/checksum.js";
import { fragmentDatagram } from "../support/fragments.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

/** A UDP datagram of `size` patterned payload bytes as fragments of at most `chunk` bytes. */
function fragment(src: string, dst: string, sport: number, dport: number, size: number, chunk: number, id: number): Uint8Array[] {
  const payload = new Uint8Array(size).map((_, i) => (i * 13 + 7) & 0xff);
  return fragmentDatagram({ protocol: "udp", src, dst, sport, dport, payload, id }, chunk);
}

/** Reassembles fragments (any order) and checks the UDP checksum of the whole datagram. */
function reassembledChecksumOk(fragments: Uint8Array[]): boolean {
  const decoded = fragments.map((f) => decodePacket(f));
  const ipPayload = (f: Uint8Array) => f.subarray((f[0]! & 0x0f) * 4);
  const total = Math.max(...fragments.map((f, i) => decoded[i]!.fragmentOffset + ipPayload(f).length));
  const l4 = new Uint8Array(total);
  fragments.forEach((f, i) => l4.set(ipPayload(f), decoded[i]!.fragmentOffset));
  const first = decoded[0]!;
  const pseudo = pseudoHeaderSum(parseIpv4(first.src), parseIpv4(first.dst), 17, total);
  return internetChecksum(l4, 0, total, pseudo) === 0;
}

describe("fragmented UDP across the NAT (virtual reassembly)", () => {
  it("first, middle and last fragment of 10.0.0.3's datagram all leave as 9.186.100.2, and it reassembles with a valid checksum", () => {
    const router = MemoryRouter.fromFile();
    for (const f of fragment("10.0.0.3", "203.0.113.10", 4000, 53, 3000, 1480, 0x1234)) router.send(QR, f);
    router.run();
    const out = router.receivedRaw(QG);
    expect(out).toHaveLength(3);
    expect(out.map((p) => decodePacket(p).src)).toEqual(["9.186.100.2", "9.186.100.2", "9.186.100.2"]);
    expect(reassembledChecksumOk(out)).toBe(true);
  });

  it("fragments that arrive before their first fragment are held, then translated when it comes", () => {
    const router = MemoryRouter.fromFile();
    const [first, middle, last] = fragment("10.0.0.2", "203.0.113.10", 4001, 53, 3000, 1480, 0x2222);
    router.send(QR, last!);
    router.send(QR, middle!);
    router.run();
    expect(router.received(QG)).toEqual([]);
    router.send(QR, first!);
    router.run();
    const out = router.receivedRaw(QG);
    expect(out.map((p) => decodePacket(p)).map((d) => [d.src, d.fragmentOffset])).toEqual([
      ["9.186.100.129", 0],
      ["9.186.100.129", 2960],
      ["9.186.100.129", 1480],
    ]);
    expect(reassembledChecksumOk(out)).toBe(true);
  });

  it("fragments whose first fragment never comes are dropped after 30 s (Linux ipfrag_time)", () => {
    const router = MemoryRouter.fromFile();
    const [, middle] = fragment("10.0.0.3", "203.0.113.10", 4002, 53, 3000, 1480, 0x3333);
    router.send(QR, middle!);
    router.run();
    router.clock.advance(31);
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 1, dport: 2 }); // housekeeping runs per batch
    router.run();
    expect(router.received(QG)).toHaveLength(1);
    expect(router.dataplane.fragmentsExpired).toBe(1);
  });

  it("replies fragmented by the outside find the tenant too", () => {
    const router = MemoryRouter.fromFile();
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4003, dport: 53 });
    router.run();
    const sport = router.received(QG)[0]!.sport!;
    for (const f of fragment("203.0.113.10", "9.186.100.2", 53, sport, 2000, 1480, 0x4444)) router.send(QG, f);
    router.run();
    const out = router.receivedRaw(QR);
    expect(out.map((p) => decodePacket(p).dst)).toEqual(["10.0.0.3", "10.0.0.3"]);
    expect(reassembledChecksumOk(out)).toBe(true);
  });
});
