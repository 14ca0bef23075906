import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { XorShift32 } from "../../src/core/rng.js";
import * as ip from "../../src/wire/ipv4.js";
import { buildPacket } from "../../src/wire/build.js";

function hex(text: string): Uint8Array {
  const clean = text.replace(/\s+/g, "");
  const b = new Uint8Array(clean.length / 2);
  for (let i = 0; i < b.length; i++) b[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return b;
}

describe("IPv4 header accessors (RFC 791 section 3.1)", () => {
  // A UDP header from 192.168.0.1 to 192.168.0.199, DF, TTL 64, checksum b861.
  const header = hex("4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7");

  it("reads every field of a known header", () => {
    expect(ip.ipv4Version(header, 0)).toBe(4);
    expect(ip.ipv4HeaderLength(header, 0)).toBe(20);
    expect(ip.ipv4TotalLength(header, 0)).toBe(0x73);
    expect(ip.ipv4Id(header, 0)).toBe(0);
    expect(ip.ipv4DontFragment(header, 0)).toBe(true);
    expect(ip.ipv4MoreFragments(header, 0)).toBe(false);
    expect(ip.ipv4FragmentOffset(header, 0)).toBe(0);
    expect(ip.ipv4IsFragment(header, 0)).toBe(false);
    expect(ip.ipv4Ttl(header, 0)).toBe(64);
    expect(ip.ipv4Protocol(header, 0)).toBe(17);
    expect(ip.ipv4Checksum(header, 0)).toBe(0xb861);
    expect(ip.ipv4Src(header, 0)).toBe(parseIpv4("192.168.0.1"));
    expect(ip.ipv4Dst(header, 0)).toBe(parseIpv4("192.168.0.199"));
    expect(ip.ipv4ChecksumValid(header, 0)).toBe(true);
    expect(ip.ipv4ComputeChecksum(header, 0)).toBe(0xb861);
  });

  it("round-trips every setter at a non-zero offset, and fills the checksum", () => {
    const b = new Uint8Array(64);
    const o = 7;
    ip.setIpv4VersionAndHeaderLength(b, o, 24);
    ip.setIpv4Tos(b, o, 0x10);
    ip.setIpv4TotalLength(b, o, 1500);
    ip.setIpv4Id(b, o, 0xbeef);
    ip.setIpv4DontFragment(b, o, true);
    ip.setIpv4MoreFragments(b, o, true);
    ip.setIpv4FragmentOffset(b, o, 1480);
    ip.setIpv4Ttl(b, o, 1);
    ip.setIpv4Protocol(b, o, 6);
    ip.setIpv4Src(b, o, parseIpv4("10.0.0.3"));
    ip.setIpv4Dst(b, o, parseIpv4("9.186.100.1"));
    ip.ipv4FillChecksum(b, o);
    expect(ip.ipv4Version(b, o)).toBe(4);
    expect(ip.ipv4HeaderLength(b, o)).toBe(24);
    expect(ip.ipv4Tos(b, o)).toBe(0x10);
    expect(ip.ipv4TotalLength(b, o)).toBe(1500);
    expect(ip.ipv4Id(b, o)).toBe(0xbeef);
    expect(ip.ipv4DontFragment(b, o)).toBe(true);
    expect(ip.ipv4MoreFragments(b, o)).toBe(true);
    expect(ip.ipv4FragmentOffset(b, o)).toBe(1480);
    expect(ip.ipv4IsFragment(b, o)).toBe(true);
    expect(ip.ipv4Ttl(b, o)).toBe(1);
    expect(ip.ipv4Protocol(b, o)).toBe(6);
    expect(ip.ipv4Src(b, o)).toBe(parseIpv4("10.0.0.3"));
    expect(ip.ipv4Dst(b, o)).toBe(parseIpv4("9.186.100.1"));
    expect(ip.ipv4ChecksumValid(b, o)).toBe(true);
    ip.setIpv4DontFragment(b, o, false);
    ip.setIpv4MoreFragments(b, o, false);
    expect(ip.ipv4DontFragment(b, o)).toBe(false);
    expect(ip.ipv4MoreFragments(b, o)).toBe(false);
    expect(ip.ipv4FragmentOffset(b, o)).toBe(1480);
    ip.setIpv4FragmentOffset(b, o, 0);
    expect(ip.ipv4IsFragment(b, o)).toBe(false);
    ip.setIpv4Checksum(b, o, 0x1234);
    expect(ip.ipv4Checksum(b, o)).toBe(0x1234);
    expect(ip.ipv4ChecksumValid(b, o)).toBe(false);
  });

  it("decrements the TTL with an incremental checksum equal to a full recompute (all TTLs, random headers)", () => {
    const rng = new XorShift32(1812);
    for (let n = 0; n < 3000; n++) {
      const options = new Uint8Array((rng.next() % 11) * 4).fill(1);
      const b = buildPacket({
        protocol: rng.next() % 256,
        src: `${rng.next() % 256}.${rng.next() % 256}.${rng.next() % 256}.${rng.next() % 256}`,
        dst: `${rng.next() % 256}.${rng.next() % 256}.${rng.next() % 256}.${rng.next() % 256}`,
        ttl: 2 + (n % 254),
        id: rng.next() & 0xffff,
        tos: rng.next() & 0xff,
        options,
      });
      let ttl = ip.ipv4Ttl(b, 0);
      while (ttl > 1) {
        const next = ip.ipv4DecrementTtl(b, 0);
        expect(next).toBe(ttl - 1);
        ttl = next;
        expect(ip.ipv4Checksum(b, 0)).toBe(ip.ipv4ComputeChecksum(b, 0));
        if (n > 50) break; // walk every TTL down to 1 for the first headers only
      }
    }
  });
});
