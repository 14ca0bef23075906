/** The Ethernet and ARP views (wire/ethernet.ts, wire/arp.ts): fields at their RFC 826 / IEEE 802.3 offsets, the one validity check. */
import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import {
  ARPOP_REPLY,
  ARPOP_REQUEST,
  ARP_LENGTH,
  arpOperation,
  arpSenderIp,
  arpTargetIp,
  arpValid,
  writeArp,
  ZERO_MAC,
} from "../../src/wire/arp.js";
import {
  BROADCAST_MAC,
  ETH_P_ARP,
  ethernetDestIsBroadcast,
  ethernetDestIsMulticast,
  ethernetType,
  formatMac,
  macEquals,
  parseMac,
  writeEthernetHeader,
} from "../../src/wire/ethernet.js";

const QR_MAC = parseMac("fa:16:3e:5d:18:10");

describe("Ethernet and ARP views", () => {
  it("qr-'s reply to 10.0.0.3 has the bytes of RFC 826: htype 1, ptype 0x0800, hlen 6, plen 4, op 2", () => {
    const b = new Uint8Array(14 + ARP_LENGTH);
    writeEthernetHeader(b, 0, parseMac("02:00:0a:00:00:03"), 0, QR_MAC, ETH_P_ARP);
    writeArp(b, 14, ARPOP_REPLY, QR_MAC, parseIpv4("10.0.0.1"), parseMac("02:00:0a:00:00:03"), 0, parseIpv4("10.0.0.3"));
    expect([...b.subarray(12, 22)]).toEqual([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    expect(formatMac(b, 0)).toBe("02:00:0a:00:00:03");
    expect(formatMac(b, 6)).toBe("fa:16:3e:5d:18:10");
    expect(ethernetType(b, 0)).toBe(ETH_P_ARP);
    expect(arpValid(b, 14, ARP_LENGTH)).toBe(true);
    expect(arpOperation(b, 14)).toBe(ARPOP_REPLY);
    expect(arpSenderIp(b, 14)).toBe(parseIpv4("10.0.0.1"));
    expect(arpTargetIp(b, 14)).toBe(parseIpv4("10.0.0.3"));
    expect(macEquals(b, 6, QR_MAC)).toBe(true);
  });

  it("arpValid refuses what arp_rcv/arp_process refuse: short packets, other hardware, other protocols, odd lengths, unknown operations", () => {
    const good = (): Uint8Array => {
      const b = new Uint8Array(ARP_LENGTH);
      writeArp(b, 0, ARPOP_REQUEST, QR_MAC, 1, ZERO_MAC, 0, 2);
      return b;
    };
    expect(arpValid(good(), 0, ARP_LENGTH)).toBe(true);
    expect(arpValid(good(), 0, ARP_LENGTH - 1)).toBe(false);
    expect(arpValid(good(), 4, ARP_LENGTH)).toBe(false);
    for (const [at, value] of [[1, 6], [2, 0x86], [4, 8], [5, 16], [7, 3]] as const) {
      const b = good();
      b[at] = value;
      expect(arpValid(b, 0, ARP_LENGTH)).toBe(false);
    }
  });

  it("broadcast and group destinations are told apart from a unicast MAC", () => {
    const b = new Uint8Array(14);
    writeEthernetHeader(b, 0, BROADCAST_MAC, 0, QR_MAC, ETH_P_ARP);
    expect([ethernetDestIsBroadcast(b, 0), ethernetDestIsMulticast(b, 0)]).toEqual([true, true]);
    writeEthernetHeader(b, 0, parseMac("01:00:5e:00:00:05"), 0, QR_MAC, ETH_P_ARP);
    expect([ethernetDestIsBroadcast(b, 0), ethernetDestIsMulticast(b, 0)]).toEqual([false, true]);
    writeEthernetHeader(b, 0, QR_MAC, 0, QR_MAC, ETH_P_ARP);
    expect([ethernetDestIsBroadcast(b, 0), ethernetDestIsMulticast(b, 0)]).toEqual([false, false]);
    expect(() => parseMac("fa:16:3e:5d:18")).toThrow(RangeError);
  });
});
