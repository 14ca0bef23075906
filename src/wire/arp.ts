/**
 * ARP for IPv4 over Ethernet (RFC 826; include/uapi/linux/if_arp.h struct arphdr followed by
 * sender MAC, sender IP, target MAC, target IP) as named offsets and accessors over `(b, o)`,
 * where `o` is the offset of the ARP header (after the Ethernet header).
 *
 * Contract (smoltcp's): `arpValid` is the one check, done at the edge (what arp_rcv checks:
 * length, hardware type Ethernet, protocol IPv4, address lengths 6 and 4); after it accepted the
 * packet, no accessor can fail. `writeArp` builds a whole packet (replies, requests, gratuitous
 * ARP) into a buffer the caller sized.
 */
import { read16, read32, write16, write32 } from "./bytes.js";
import { copyMac } from "./ethernet.js";

export const ARP_HTYPE = 0;
export const ARP_PTYPE = 2;
export const ARP_HLEN = 4;
export const ARP_PLEN = 5;
export const ARP_OPER = 6;
export const ARP_SHA = 8;
export const ARP_SPA = 14;
export const ARP_THA = 18;
export const ARP_TPA = 24;
/** An ARP packet for IPv4 over Ethernet: 28 bytes. */
export const ARP_LENGTH = 28;

/** include/uapi/linux/if_arp.h ARPHRD_ETHER, ARPOP_REQUEST, ARPOP_REPLY. */
export const ARPHRD_ETHER = 1;
export const ARPOP_REQUEST = 1;
export const ARPOP_REPLY = 2;
const ETH_P_IP = 0x0800;

/**
 * Whether `length` bytes at `b[o..]` are an Ethernet/IPv4 ARP request or reply (arp_rcv: room
 * for the header and addresses; arp_process: ar_hrd ARPHRD_ETHER, ar_pro ETH_P_IP, ar_hln 6,
 * ar_pln 4, ar_op request or reply). Everything else is dropped by the caller.
 */
export function arpValid(b: Uint8Array, o: number, length: number): boolean {
  if (length < ARP_LENGTH || o < 0 || o + ARP_LENGTH > b.length) return false;
  if (read16(b, o + ARP_HTYPE) !== ARPHRD_ETHER || read16(b, o + ARP_PTYPE) !== ETH_P_IP) return false;
  if (b[o + ARP_HLEN] !== 6 || b[o + ARP_PLEN] !== 4) return false;
  const op = read16(b, o + ARP_OPER);
  return op === ARPOP_REQUEST || op === ARPOP_REPLY;
}

export function arpOperation(b: Uint8Array, o: number): number {
  return read16(b, o + ARP_OPER);
}
/** Sender protocol (IPv4) address, uint32. */
export function arpSenderIp(b: Uint8Array, o: number): number {
  return read32(b, o + ARP_SPA);
}
/** Target protocol (IPv4) address, uint32. */
export function arpTargetIp(b: Uint8Array, o: number): number {
  return read32(b, o + ARP_TPA);
}
/** Offset of the sender hardware address (6 bytes). */
export function arpSenderMacOffset(o: number): number {
  return o + ARP_SHA;
}
/** Offset of the target hardware address (6 bytes). */
export function arpTargetMacOffset(o: number): number {
  return o + ARP_THA;
}

/**
 * Writes a 28-byte ARP packet at `b[o..]`: operation `op`, sender `senderMac`/`senderIp`, target
 * `targetMac[targetMacOffset..]`/`targetIp` (a request's target MAC is zero: pass ZERO_MAC).
 */
export function writeArp(
  b: Uint8Array,
  o: number,
  op: number,
  senderMac: Uint8Array,
  senderIp: number,
  targetMac: Uint8Array,
  targetMacOffset: number,
  targetIp: number,
): void {
  write16(b, o + ARP_HTYPE, ARPHRD_ETHER);
  write16(b, o + ARP_PTYPE, ETH_P_IP);
  b[o + ARP_HLEN] = 6;
  b[o + ARP_PLEN] = 4;
  write16(b, o + ARP_OPER, op);
  copyMac(b, o + ARP_SHA, senderMac, 0);
  write32(b, o + ARP_SPA, senderIp);
  copyMac(b, o + ARP_THA, targetMac, targetMacOffset);
  write32(b, o + ARP_TPA, targetIp);
}

/** 00:00:00:00:00:00, a request's target hardware address. */
export const ZERO_MAC: Uint8Array = new Uint8Array(6);
