import { describe, expect, it } from "vitest";
import { formatIpv4, parseCidr, parseIpv4, prefixMask, inPrefix } from "../../src/core/addr.js";

describe("IPv4 addresses", () => {
  it("round-trips the seed's addresses as uint32", () => {
    for (const text of ["10.0.0.1", "9.186.100.129", "0.0.0.0", "255.255.255.255"]) {
      expect(formatIpv4(parseIpv4(text))).toBe(text);
    }
    expect(parseIpv4("9.186.100.2")).toBe(0x09ba6402);
  });
  it("rejects malformed text", () => {
    for (const text of ["10.0.0", "10.0.0.256", "a.b.c.d", "10.0.0.1.1", "", "1..2.3"]) {
      expect(parseIpv4(text)).toBe(-1);
    }
    expect(parseCidr("10.0.0.0/33")).toBeUndefined();
  });
  it("matches prefixes", () => {
    expect(prefixMask(24)).toBe(0xffffff00);
    expect(prefixMask(0)).toBe(0);
    expect(inPrefix(parseIpv4("10.0.0.3"), parseIpv4("10.0.0.0"), 24)).toBe(true);
    expect(inPrefix(parseIpv4("10.0.1.3"), parseIpv4("10.0.0.0"), 24)).toBe(false);
    expect(parseCidr("9.186.100.129")).toEqual({ addr: parseIpv4("9.186.100.129"), prefixLength: 32 });
  });
});
