/** Splits test datagrams into IPv4 fragments, the way a sender with a small MTU would. */
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";
import { ipv4FillChecksum, setIpv4FragmentOffset, setIpv4MoreFragments, setIpv4TotalLength } from "../../src/wire/ipv4.js";

/** The datagram of `spec` (no IP options) as fragments of at most `chunk` L4 bytes (a multiple of 8). */
export function fragmentDatagram(spec: PacketSpec, chunk: number): Uint8Array[] {
  const whole = buildPacket(spec);
  const l4 = whole.subarray(20);
  const out: Uint8Array[] = [];
  for (let offset = 0; offset < l4.length; offset += chunk) {
    const part = l4.subarray(offset, Math.min(l4.length, offset + chunk));
    const f = new Uint8Array(20 + part.length);
    f.set(whole.subarray(0, 20));
    f.set(part, 20);
    setIpv4TotalLength(f, 0, f.length);
    setIpv4FragmentOffset(f, 0, offset);
    setIpv4MoreFragments(f, 0, offset + chunk < l4.length);
    ipv4FillChecksum(f, 0);
    out.push(f);
  }
  return out;
}
