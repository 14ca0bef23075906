/** IPv4 addresses are uint32 numbers in host order on every hot path; strings only at the edges. */

/** Parses dotted-quad text; returns -1 when it is not a valid IPv4 address. */
export function parseIpv4(text: string): number {
  // Four groups of 1-3 decimal digits, each <= 255, separated by dots; scanned without
  // allocating (a full routing table's file has a million addresses or more).
  let value = 0;
  let octets = 0;
  let at = 0;
  while (at <= text.length) {
    let octet = 0;
    let digits = 0;
    for (; at < text.length; at++) {
      const c = text.charCodeAt(at) - 48;
      if (c < 0 || c > 9) break;
      octet = octet * 10 + c;
      digits++;
    }
    if (digits === 0 || digits > 3 || octet > 255) return -1;
    value = value * 256 + octet;
    octets++;
    if (at === text.length) break;
    if (text.charCodeAt(at) !== 46 || octets === 4) return -1; // "."
    at++;
  }
  return octets === 4 ? value >>> 0 : -1;
}

export function formatIpv4(addr: number): string {
  return `${addr >>> 24}.${(addr >>> 16) & 0xff}.${(addr >>> 8) & 0xff}.${addr & 0xff}`;
}

/** Network mask for a prefix length, as uint32 (prefixLength 0 gives 0). */
export function prefixMask(prefixLength: number): number {
  return prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
}

export interface Cidr {
  readonly addr: number;
  readonly prefixLength: number;
}

/** Parses `A.B.C.D/N` or a bare host address (/32); returns undefined when malformed. */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf("/");
  const addr = parseIpv4(slash < 0 ? text : text.slice(0, slash));
  if (addr < 0) return undefined;
  if (slash < 0) return { addr, prefixLength: 32 };
  const lenText = text.slice(slash + 1);
  if (!/^\d{1,2}$/.test(lenText)) return undefined;
  const prefixLength = Number(lenText);
  if (prefixLength > 32) return undefined;
  return { addr, prefixLength };
}

export function formatCidr(cidr: Cidr): string {
  return `${formatIpv4(cidr.addr)}/${cidr.prefixLength}`;
}

export function inPrefix(addr: number, network: number, prefixLength: number): boolean {
  const mask = prefixMask(prefixLength);
  return ((addr & mask) >>> 0) === ((network & mask) >>> 0);
}
