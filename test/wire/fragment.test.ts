/**
 * IPv4 fragmentation on output (src/wire/fragment.ts) against Linux's ip_do_fragment slow path:
 * the layout for several MTUs and option sets, written out by hand; and, over random datagrams,
 * MTUs and options (fast-check), that reassembling the fragments gives back the datagram byte for
 * byte.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { PacketBatch, VIRTIO_NET_HDR_LEN } from "../../src/core/batch.js";
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";
import { fragmentCount, ipv4OptionsFragment, writeIpv4Fragments } from "../../src/wire/fragment.js";
import { ipv4ChecksumValid, ipv4FillChecksum } from "../../src/wire/ipv4.js";
import { reassembleFragments } from "../support/fragments.js";

/** What a fragment says about itself. */
interface Piece {
  length: number;
  offset: number;
  mf: boolean;
}

function piecesOf(batch: PacketBatch): Piece[] {
  return Array.from({ length: batch.count }, (_, i) => {
    const f = batch.copyOut(i);
    return { length: f.length, offset: (((f[6]! << 8) | f[7]!) & 0x1fff) * 8, mf: (f[6]! & 0x20) !== 0 };
  });
}

function fragmentsOf(datagram: Uint8Array, mtu: number, capacity = 64): { batch: PacketBatch; count: number; fragments: Uint8Array[] } {
  const batch = new PacketBatch(capacity, 2048 + VIRTIO_NET_HDR_LEN, VIRTIO_NET_HDR_LEN);
  const count = writeIpv4Fragments(datagram, 0, datagram.length, mtu, batch);
  return { batch, count, fragments: Array.from({ length: batch.count }, (_, i) => batch.copyOut(i)) };
}

/** A UDP datagram of `length` bytes whose payload bytes say where they are. */
function udpDatagram(length: number, extra: Partial<PacketSpec> = {}): Uint8Array {
  const headerLength = 20 + (extra.options === undefined ? 0 : (extra.options.length + 3) & ~3);
  const payload = new Uint8Array(length - headerLength - 8).map((_, i) => (i * 7 + 3) & 0xff);
  return buildPacket({ protocol: "udp", src: "198.18.0.1", dst: "10.1.0.5", sport: 40000, dport: 7001, id: 0x4242, ttl: 63, tos: 0x28, payload, ...extra });
}

// Router alert (type 148: copied, RFC 2113), then record route (type 7: not copied, RFC 791) with
// room for one address, then a NOP: 12 bytes, header length 32.
const ROUTER_ALERT = [0x94, 0x04, 0x00, 0x00];
const RECORD_ROUTE = [0x07, 0x07, 0x04, 0x00, 0x00, 0x00, 0x00];
const OPTIONS = Uint8Array.from([...ROUTER_ALERT, ...RECORD_ROUTE, 0x01]);
/** The same options as the fragments after the first carry them (ip_options_fragment). */
const OPTIONS_AFTER_FIRST = Uint8Array.from([...ROUTER_ALERT, 1, 1, 1, 1, 1, 1, 1, 0x01]);

describe("fragment layout as ip_do_fragment", () => {
  it("a 1500-byte datagram at MTU 1450 (VXLAN): 1424 + 56 payload bytes, id, TTL and TOS kept", () => {
    const datagram = udpDatagram(1500);
    const { count, batch, fragments } = fragmentsOf(datagram, 1450);
    expect(count).toBe(2);
    expect(piecesOf(batch)).toEqual([
      { length: 1444, offset: 0, mf: true },
      { length: 76, offset: 1424, mf: false },
    ]);
    for (const f of fragments) {
      expect(ipv4ChecksumValid(f, 0)).toBe(true);
      expect([f[1], f[4], f[5], f[8], f[9]]).toEqual([0x28, 0x42, 0x42, 63, 17]);
      expect(f.subarray(12, 20)).toEqual(datagram.subarray(12, 20));
    }
    expect(fragments[0]!.subarray(20)).toEqual(datagram.subarray(20, 1444));
    expect(fragments[1]!.subarray(20)).toEqual(datagram.subarray(1444));
  });

  it("at MTU 576 three pieces of 552, 552 and 376 bytes; at MTU 68 pieces of 48 bytes", () => {
    const datagram = udpDatagram(1500);
    expect(piecesOf(fragmentsOf(datagram, 576).batch)).toEqual([
      { length: 572, offset: 0, mf: true },
      { length: 572, offset: 552, mf: true },
      { length: 396, offset: 1104, mf: false },
    ]);
    const small = fragmentsOf(udpDatagram(200), 68);
    // 180 payload bytes: 48, 48, 48 and the last 36
    expect(piecesOf(small.batch)).toEqual([
      { length: 68, offset: 0, mf: true },
      { length: 68, offset: 48, mf: true },
      { length: 68, offset: 96, mf: true },
      { length: 56, offset: 144, mf: false },
    ]);
  });

  it("the last piece takes up to mtu - hlen bytes, not only the 8-byte rounded size (ip_frag_next)", () => {
    // MTU 1003: room 983, pieces 976; 1000 payload bytes leave 24 (not 976 + 24 split further).
    expect(piecesOf(fragmentsOf(udpDatagram(1020), 1003).batch)).toEqual([
      { length: 996, offset: 0, mf: true },
      { length: 44, offset: 976, mf: false },
    ]);
    // 1957 payload bytes: 976 and then 981 (<= room 983) in one piece.
    expect(piecesOf(fragmentsOf(udpDatagram(1977), 1003).batch)).toEqual([
      { length: 996, offset: 0, mf: true },
      { length: 1001, offset: 976, mf: false },
    ]);
    expect(fragmentCount(1977, 20, 1003)).toBe(2);
    expect(fragmentCount(1500, 20, 1500)).toBe(1);
  });

  it("options: the first piece keeps all, the others only the copied ones (record route becomes NOPs); the header length stays", () => {
    const datagram = udpDatagram(1500, { options: OPTIONS });
    const { fragments, batch } = fragmentsOf(datagram, 1000);
    // header 32: room 968, pieces of 968; 1468 payload bytes
    expect(piecesOf(batch)).toEqual([
      { length: 1000, offset: 0, mf: true },
      { length: 532, offset: 968, mf: false },
    ]);
    expect(fragments[0]!.subarray(20, 32)).toEqual(OPTIONS);
    expect(fragments[1]!.subarray(20, 32)).toEqual(OPTIONS_AFTER_FIRST);
    expect(fragments.every((f) => (f[0]! & 0x0f) === 8 && ipv4ChecksumValid(f, 0))).toBe(true);
  });

  it("a first fragment (MF) cut again: offsets from 0, MF on every piece, options fixed after the first piece", () => {
    const datagram = udpDatagram(1500, { options: OPTIONS, mf: true });
    const { fragments, batch } = fragmentsOf(datagram, 800);
    // room 768
    expect(piecesOf(batch)).toEqual([
      { length: 800, offset: 0, mf: true },
      { length: 732, offset: 768, mf: true },
    ]);
    expect(fragments[1]!.subarray(20, 32)).toEqual(OPTIONS_AFTER_FIRST);
  });

  it("a middle fragment cut again: offsets added to its own, MF kept, its options untouched in every piece", () => {
    const payload = new Uint8Array(1480 - 12).map((_, i) => i & 0xff);
    const middle = buildPacket({ protocol: "udp", src: "198.18.0.1", dst: "10.1.0.5", id: 7, mf: true, fragmentOffset: 2960, options: OPTIONS, payload });
    const { fragments, batch } = fragmentsOf(middle, 1000);
    expect(piecesOf(batch)).toEqual([
      { length: 1000, offset: 2960, mf: true },
      { length: 532, offset: 2960 + 968, mf: true },
    ]);
    expect(fragments.map((f) => f.subarray(20, 32))).toEqual([OPTIONS, OPTIONS]);
  });

  it("the last fragment cut again: the last piece has no MF", () => {
    const payload = new Uint8Array(1480).map((_, i) => i & 0xff);
    const last = buildPacket({ protocol: "udp", src: "198.18.0.1", dst: "10.1.0.5", id: 7, fragmentOffset: 1480, payload });
    expect(piecesOf(fragmentsOf(last, 1450).batch)).toEqual([
      { length: 1444, offset: 1480, mf: true },
      { length: 76, offset: 1480 + 1424, mf: false },
    ]);
  });

  it("the flags word is written anew: the reserved bit is not kept (frag_off = htons(offset >> 3))", () => {
    const datagram = udpDatagram(1500);
    datagram[6]! |= 0x80;
    ipv4FillChecksum(datagram, 0);
    const { fragments } = fragmentsOf(datagram, 1450);
    expect(fragments.map((f) => f[6]! & 0xc0)).toEqual([0, 0]);
  });

  it("writes nothing when the batch cannot take every fragment, and leaves its slots' headers zero", () => {
    const { count, batch } = fragmentsOf(udpDatagram(1500), 576, 2);
    expect(count).toBe(0);
    expect(batch.count).toBe(0);
    const fits = fragmentsOf(udpDatagram(1500), 576, 3);
    expect(fits.count).toBe(3);
    for (let i = 0; i < 3; i++) expect(fits.batch.data.subarray(i * fits.batch.slotSize, i * fits.batch.slotSize + VIRTIO_NET_HDR_LEN)).toEqual(new Uint8Array(VIRTIO_NET_HDR_LEN));
  });

  it("ip_options_fragment stops at END and at a malformed length, as Linux's walk does", () => {
    const header = new Uint8Array(32);
    header[0] = 0x48;
    header.set([0x07, 0x03, 0x04, 0x44, 0x04, 0x05, 0x00, 0x00, 0x07, 0x09, 0, 0], 20);
    ipv4OptionsFragment(header, 0, 32);
    // RR (3 bytes) and timestamp (4 bytes) become NOPs; END stops the walk: the bytes after it stay
    expect(Array.from(header.subarray(20))).toEqual([1, 1, 1, 1, 1, 1, 1, 0x00, 0x07, 0x09, 0, 0]);
    const bad = new Uint8Array(28);
    bad[0] = 0x47;
    bad.set([0x07, 0x09, 0x04, 0x00, 0, 0, 0, 0], 20);
    ipv4OptionsFragment(bad, 0, 28);
    expect(Array.from(bad.subarray(20))).toEqual([0x07, 0x09, 0x04, 0x00, 0, 0, 0, 0]);
  });
});

/** IP options of RFC 791's kinds, copied and not, with lengths that fit. */
const optionArb = fc.oneof(
  fc.constant([1]),
  fc.constant(ROUTER_ALERT),
  fc.integer({ min: 1, max: 4 }).map((addresses) => [0x07, 3 + 4 * addresses, 4, ...new Array<number>(4 * addresses).fill(0)]),
  fc.integer({ min: 1, max: 3 }).map((slots) => [0x44, 4 + 4 * slots, 5, 0, ...new Array<number>(4 * slots).fill(0)]),
  fc.integer({ min: 1, max: 2 }).map((addresses) => [0x83, 3 + 4 * addresses, 4, ...new Array<number>(4 * addresses).fill(9)]),
);
const optionsArb = fc.array(optionArb, { maxLength: 4 }).map((list) => list.flat()).filter((bytes) => bytes.length <= 40);

describe("reassembling the fragments gives back the datagram (property)", () => {
  it("over random sizes, MTUs, options and fragment positions", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 9000 }),
        fc.integer({ min: 68, max: 1500 }),
        optionsArb,
        fc.integer({ min: 0, max: 100 }),
        fc.boolean(),
        fc.integer(),
        (payloadLength, mtu, options, offsetUnits, mf, seed) => {
          const payload = new Uint8Array(payloadLength).map((_, i) => (seed + i * 31) & 0xff);
          const datagram = buildPacket({
            protocol: 17,
            src: "198.18.0.1",
            dst: "10.1.0.5",
            id: seed & 0xffff,
            ttl: 1 + (seed & 0x7f),
            mf,
            fragmentOffset: offsetUnits * 8,
            options: Uint8Array.from(options),
            payload,
          });
          const headerLength = (datagram[0]! & 0x0f) * 4;
          const batch = new PacketBatch(1200, 1536 + VIRTIO_NET_HDR_LEN, VIRTIO_NET_HDR_LEN);
          const original = datagram.slice();
          const count = writeIpv4Fragments(datagram, 0, datagram.length, mtu, batch);
          expect(count).toBe(fragmentCount(original.length, headerLength, mtu));
          const fragments = Array.from({ length: batch.count }, (_, i) => batch.copyOut(i));
          for (const f of fragments) {
            expect(f.length).toBeLessThanOrEqual(mtu);
            expect(ipv4ChecksumValid(f, 0)).toBe(true);
          }
          for (const f of fragments.slice(0, -1)) expect((f.length - headerLength) % 8).toBe(0);
          expect(reassembleFragments(fragments)).toEqual(original);
        },
      ),
      { numRuns: 200 },
    );
  });
});
