import { describe, expect, it } from "vitest";
import { XorShift32 } from "../../src/core/rng.js";
import {
  checksumUpdate16,
  checksumUpdate32,
  internetChecksum,
  l4ChecksumValid,
  onesComplementSum,
  pseudoHeaderSum,
} from "../../src/wire/checksum.js";
import { buildPacket } from "../../src/wire/build.js";

/** The textbook RFC 1071 loop, one word at a time, folding at the end: the reference. */
function naiveSum(buf: Uint8Array, off: number, len: number, initial = 0): number {
  let sum = initial;
  for (let i = 0; i < len; i += 2) {
    const hi = buf[off + i]!;
    const lo = i + 1 < len ? buf[off + i + 1]! : 0;
    sum += (hi << 8) | lo;
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

function randomBytes(rng: XorShift32, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = rng.next() & 0xff;
  return b;
}

describe("the Internet checksum (RFC 1071)", () => {
  it("matches the worked example of RFC 1071 section 3", () => {
    // 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (one's complement), checksum 220d.
    const b = Uint8Array.of(0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7);
    expect(onesComplementSum(b, 0, 8)).toBe(0xddf2);
    expect(internetChecksum(b, 0, 8)).toBe(0x220d);
  });

  it("pads an odd trailing byte with zero", () => {
    const b = Uint8Array.of(0x12, 0x34, 0x56);
    expect(onesComplementSum(b, 0, 3)).toBe(0x1234 + 0x5600);
    expect(onesComplementSum(Uint8Array.of(0xab), 0, 1)).toBe(0xab00);
    expect(onesComplementSum(new Uint8Array(0), 0, 0)).toBe(0);
  });

  it("fast sum equals the naive reference over 5000 seeded random buffers", () => {
    const rng = new XorShift32(0xc0ffee);
    for (let n = 0; n < 5000; n++) {
      const size = n < 100 ? n : rng.next() % (n % 10 === 0 ? 70000 : 1600);
      const buf = randomBytes(rng, size + 7);
      const off = rng.next() % 7;
      const initial = n % 3 === 0 ? 0 : rng.next() % 0x7ffffff;
      const got = onesComplementSum(buf, off, size, initial);
      expect(got).toBe(naiveSum(buf, off, size, initial));
      expect(internetChecksum(buf, off, size, initial)).toBe(~got & 0xffff);
    }
  });

  it("sums all-0xff jumbo buffers without overflow", () => {
    const buf = new Uint8Array(65535).fill(0xff);
    expect(onesComplementSum(buf, 0, 65535)).toBe(naiveSum(buf, 0, 65535));
    expect(onesComplementSum(buf, 1, 65534, 0x7fffffff)).toBe(naiveSum(buf, 1, 65534, 0x7fffffff));
  });

  it("computes the pseudo-header partial sum of RFC 793 section 3.1", () => {
    // 10.0.0.3 > 9.186.100.1, UDP, 20 bytes.
    const expected = naiveSum(Uint8Array.of(10, 0, 0, 3, 9, 186, 100, 1, 0, 17, 0, 20), 0, 12);
    expect(pseudoHeaderSum(0x0a000003, 0x09ba6401, 17, 20)).toBe(expected);
    expect(pseudoHeaderSum(0xffffffff, 0xffffffff, 255, 0xffff)).toBe(
      naiveSum(Uint8Array.of(255, 255, 255, 255, 255, 255, 255, 255, 0, 255, 255, 255), 0, 12),
    );
  });
});

describe("incremental checksum update (RFC 1624 eqn. 3)", () => {
  it("a 16-bit change patched in place equals a full recompute, 20000 seeded cases", () => {
    const rng = new XorShift32(1624);
    for (let n = 0; n < 20000; n++) {
      const words = 1 + (rng.next() % 40);
      const buf = randomBytes(rng, words * 2);
      if (n % 50 === 0) buf.fill(0); // all-zero data: the -0/+0 corner of RFC 1624 section 3
      const before = internetChecksum(buf, 0, buf.length);
      const at = (rng.next() % words) * 2;
      const oldWord = (buf[at]! << 8) | buf[at + 1]!;
      const newWord = n % 7 === 0 ? oldWord : n % 11 === 0 ? 0 : rng.next() & 0xffff;
      buf[at] = newWord >>> 8;
      buf[at + 1] = newWord & 0xff;
      const full = internetChecksum(buf, 0, buf.length);
      const patched = checksumUpdate16(before, oldWord, newWord);
      // One's complement has two zeros; eqn. 3 only yields 0xffff where the full sum does.
      if (full === 0xffff) expect([0, 0xffff]).toContain(patched);
      else expect(patched).toBe(full);
    }
  });

  it("a 32-bit change (an address) equals a full recompute, 20000 seeded cases", () => {
    const rng = new XorShift32(791);
    for (let n = 0; n < 20000; n++) {
      const words = 3 + (rng.next() % 30);
      const buf = randomBytes(rng, words * 2);
      buf[0] = 0x45; // never all-zero data, like every real header
      const before = internetChecksum(buf, 0, buf.length);
      const at = 2 + 2 * (rng.next() % (words - 2)); // any aligned 32-bit field after the first word
      const oldValue = (((buf[at]! << 24) | (buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0);
      const newValue = rng.next() >>> 0;
      buf[at] = newValue >>> 24;
      buf[at + 1] = (newValue >>> 16) & 0xff;
      buf[at + 2] = (newValue >>> 8) & 0xff;
      buf[at + 3] = newValue & 0xff;
      expect(checksumUpdate32(before, oldValue, newValue)).toBe(internetChecksum(buf, 0, buf.length));
    }
  });

  it("gives 0x0000, never 0xffff, when the updated data sums to -0", () => {
    // RFC 1624 section 3: eqn. 2 (RFC 1141) could produce 0xffff; eqn. 3 cannot for non-zero data.
    expect(checksumUpdate16(0x0000, 0x5555, 0x5555)).toBe(0x0000);
    expect(checksumUpdate16(0xdd2f, 0x5555, 0x3285)).toBe(0x0000);
  });
});

describe("checksum verification (the fast path's 32-bit loads, nf_conntrack_checksum)", () => {
  it("accepts what a sender computed and refuses any single-bit corruption; UDP 0 is none", () => {
    const rng = new XorShift32(5);
    for (let n = 0; n < 300; n++) {
      const protocol = (["tcp", "udp", "icmp"] as const)[n % 3]!;
      const packet = buildPacket(
        protocol === "icmp"
          ? { protocol, src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: n, length: 28 + (rng.next() % 100) }
          : { protocol, src: "10.0.0.3", dst: "203.0.113.10", sport: 1000 + n, dport: 80, length: 40 + (rng.next() % 100) },
      );
      const proto = packet[9]!;
      const valid = (): boolean => l4ChecksumValid(packet, 20, packet.length - 20, proto, 0x0a000003, 0xcb00710a);
      expect(valid()).toBe(true);
      const bit = 20 * 8 + (rng.next() % ((packet.length - 20) * 8));
      packet[bit >> 3]! ^= 1 << (bit & 7);
      // A flip inside a UDP checksum that leaves it 0 would mean "no checksum"; never with these.
      expect(valid()).toBe(false);
    }
    const udp = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 1, dport: 2 });
    udp[26] = 0;
    udp[27] = 0;
    expect(l4ChecksumValid(udp, 20, udp.length - 20, 17, 0x0a000003, 0xcb00710a)).toBe(true);
  });
});
