/**
 * Ethernet II header (IEEE 802.3 / RFC 894: destination, source, EtherType) as named offsets and
 * accessors over `(b, o)`, where `o` is the offset of the 14-byte header in `b`.
 *
 * Contract (smoltcp's, as ipv4.ts): the accessors do no checks; the caller has checked that
 * `o + ETH_HLEN <= b.length` once at the edge (the Ethernet stage, io/ethernet-leg.ts), after
 * which no accessor can fail. Addresses stay in the buffer (compared and copied byte-wise) or in
 * 6-byte Uint8Arrays the control plane made: nothing is allocated per frame.
 */
import { read16, write16 } from "./bytes.js";

export { ETH_HLEN } from "../core/batch.js";
export const ETH_DEST = 0;
export const ETH_SOURCE = 6;
export const ETH_TYPE = 12;
/** include/uapi/linux/if_ether.h ETH_ALEN. */
export const ETH_ALEN = 6;
/** include/uapi/linux/if_ether.h ETH_P_IP / ETH_P_ARP. */
export const ETH_P_IP = 0x0800;
export const ETH_P_ARP = 0x0806;
/** The smallest frame Ethernet carries without its FCS (ETH_ZLEN): shorter ones are padded. */
export const ETH_ZLEN = 60;

export function ethernetType(b: Uint8Array, o: number): number {
  return read16(b, o + ETH_TYPE);
}
export function setEthernetType(b: Uint8Array, o: number, type: number): void {
  write16(b, o + ETH_TYPE, type);
}

/** Whether the destination is a group address (the I/G bit; broadcast is one). */
export function ethernetDestIsMulticast(b: Uint8Array, o: number): boolean {
  return (b[o + ETH_DEST]! & 1) !== 0;
}

/** Whether the destination is ff:ff:ff:ff:ff:ff. */
export function ethernetDestIsBroadcast(b: Uint8Array, o: number): boolean {
  return (b[o]! & b[o + 1]! & b[o + 2]! & b[o + 3]! & b[o + 4]! & b[o + 5]!) === 0xff;
}

/** Whether the 6 bytes at `b[o..]` equal `mac`. */
export function macEquals(b: Uint8Array, o: number, mac: Uint8Array, macOffset = 0): boolean {
  return (
    b[o]! === mac[macOffset]! &&
    b[o + 1]! === mac[macOffset + 1]! &&
    b[o + 2]! === mac[macOffset + 2]! &&
    b[o + 3]! === mac[macOffset + 3]! &&
    b[o + 4]! === mac[macOffset + 4]! &&
    b[o + 5]! === mac[macOffset + 5]!
  );
}

/** Copies 6 bytes `from[fromOffset..]` to `b[o..]`. */
export function copyMac(b: Uint8Array, o: number, from: Uint8Array, fromOffset = 0): void {
  b[o] = from[fromOffset]!;
  b[o + 1] = from[fromOffset + 1]!;
  b[o + 2] = from[fromOffset + 2]!;
  b[o + 3] = from[fromOffset + 3]!;
  b[o + 4] = from[fromOffset + 4]!;
  b[o + 5] = from[fromOffset + 5]!;
}

/** Writes a whole header: destination `dest[destOffset..]`, source `source`, EtherType `type`. */
export function writeEthernetHeader(b: Uint8Array, o: number, dest: Uint8Array, destOffset: number, source: Uint8Array, type: number): void {
  copyMac(b, o + ETH_DEST, dest, destOffset);
  copyMac(b, o + ETH_SOURCE, source, 0);
  write16(b, o + ETH_TYPE, type);
}

/** ff:ff:ff:ff:ff:ff. */
export const BROADCAST_MAC: Uint8Array = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** "fa:16:3e:5d:18:10" from 6 bytes at `b[o..]` (control plane). */
export function formatMac(b: Uint8Array, o = 0): string {
  const parts: string[] = [];
  for (let i = 0; i < ETH_ALEN; i++) parts.push(b[o + i]!.toString(16).padStart(2, "0"));
  return parts.join(":");
}

/** 6 bytes from "fa:16:3e:5d:18:10" (control plane; the config has checked the form). */
export function parseMac(text: string): Uint8Array {
  const parts = text.split(":");
  if (parts.length !== ETH_ALEN || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) throw new RangeError(`not an Ethernet address: ${text}`);
  return Uint8Array.from(parts, (p) => parseInt(p, 16));
}
