import { describe, expect, it } from "vitest";
import {
  BLOCK_ENHANCED_PACKET,
  BLOCK_INTERFACE_DESCRIPTION,
  BLOCK_SECTION_HEADER,
  LINKTYPE_ETHERNET,
  LINKTYPE_RAW,
  PcapngBlockSplitter,
  enhancedPacketBlock,
  interfaceDescriptionBlock,
  interfaceStatisticsBlock,
  readInterfaceStatistics,
  sectionHeaderBlock,
} from "../../src/io/pcapng.js";
import { buildPacket } from "../../src/wire/build.js";
import { readPcapng } from "../support/pcapng-reader.js";

const u32 = (b: Buffer, at: number): number => b.readUInt32LE(at);
const u16 = (b: Buffer, at: number): number => b.readUInt16LE(at);

describe("pcapng blocks, byte by byte against the format (draft-ietf-opsawg-pcapng)", () => {
  it("a Section Header Block: type 0x0A0D0D0A, the lengths at both ends, magic 0x1A2B3C4D, version 1.0, section length -1", () => {
    const shb = sectionHeaderBlock("qnat capture");
    expect(u32(shb, 0)).toBe(0x0a0d0d0a);
    expect(u32(shb, 4)).toBe(shb.length);
    expect(u32(shb, shb.length - 4)).toBe(shb.length);
    expect(shb.length % 4).toBe(0);
    expect([...shb.subarray(8, 12)]).toEqual([0x4d, 0x3c, 0x2b, 0x1a]);
    expect(u16(shb, 12)).toBe(1);
    expect(u16(shb, 14)).toBe(0);
    expect(shb.readBigInt64LE(16)).toBe(-1n);
    // shb_userappl (4), 12 bytes, then opt_endofopt
    expect(u16(shb, 24)).toBe(4);
    expect(u16(shb, 26)).toBe("qnat capture".length);
    expect(shb.subarray(28, 40).toString()).toBe("qnat capture");
    expect(u32(shb, 40)).toBe(0);
    expect(shb.length).toBe(48);
  });

  it("an Interface Description Block: link type, snap length, if_name padded to 32 bits, if_tsresol 6", () => {
    const idb = interfaceDescriptionBlock({ linkType: LINKTYPE_RAW, name: "qg-e76de35e-90" });
    expect(u32(idb, 0)).toBe(1);
    expect(u32(idb, 4)).toBe(idb.length);
    expect(u16(idb, 8)).toBe(101);
    expect(u16(idb, 10)).toBe(0);
    expect(u32(idb, 12)).toBe(65535 + 14);
    expect(u16(idb, 16)).toBe(2); // if_name
    expect(u16(idb, 18)).toBe(14);
    expect(idb.subarray(20, 34).toString()).toBe("qg-e76de35e-90");
    expect([...idb.subarray(34, 36)]).toEqual([0, 0]); // padding to 16 bytes
    expect(u16(idb, 36)).toBe(9); // if_tsresol
    expect(u16(idb, 38)).toBe(1);
    expect(idb[40]).toBe(6);
    expect(u32(idb, 44)).toBe(0); // opt_endofopt
    expect(u32(idb, idb.length - 4)).toBe(idb.length);
  });

  it("an Enhanced Packet Block: interface id, the timestamp's high and low words, lengths, padded data, opt_comment", () => {
    const packet = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 53, payload: new Uint8Array(3) });
    const us = 1_764_489_600_123_456; // 2025-11-30 08:00:00.123456 UTC
    const epb = enhancedPacketBlock(1, us, packet, 0, packet.length, "SNAT 10.0.0.3:40000 -> 9.186.100.2:40000");
    expect(u32(epb, 0)).toBe(6);
    expect(u32(epb, 8)).toBe(1);
    expect(BigInt(u32(epb, 12)) * 2n ** 32n + BigInt(u32(epb, 16))).toBe(BigInt(us));
    expect(u32(epb, 20)).toBe(packet.length);
    expect(u32(epb, 24)).toBe(packet.length);
    expect([...epb.subarray(28, 28 + packet.length)]).toEqual([...packet]);
    const optionsAt = 28 + ((packet.length + 3) & ~3);
    expect(u16(epb, optionsAt)).toBe(1);
    expect(epb.subarray(optionsAt + 4, optionsAt + 4 + u16(epb, optionsAt + 2)).toString()).toBe("SNAT 10.0.0.3:40000 -> 9.186.100.2:40000");
    expect(u32(epb, epb.length - 4)).toBe(epb.length);
    expect(epb.length % 4).toBe(0);
  });

  it("a whole capture reads back: interfaces, packets with their bytes, times and comments, statistics", () => {
    const ping = buildPacket({ protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 7 });
    const frame = new Uint8Array(14 + ping.length);
    frame.set([0xfa, 0x16, 0x3e, 0, 0, 1, 0xfa, 0x16, 0x3e, 0, 0, 2, 0x08, 0x00]);
    frame.set(ping, 14);
    const file = Buffer.concat([
      sectionHeaderBlock("qnat capture"),
      interfaceDescriptionBlock({ linkType: LINKTYPE_RAW, name: "qr-694450d6-f6", description: "tenant" }),
      interfaceDescriptionBlock({ linkType: LINKTYPE_ETHERNET, name: "qg-e76de35e-90" }),
      enhancedPacketBlock(0, 1_000_000, ping, 0, ping.length, "SNAT 10.0.0.3 -> 9.186.100.2"),
      enhancedPacketBlock(1, 1_000_250, frame, 0, frame.length),
      interfaceStatisticsBlock({ interfaceId: 1, microseconds: 2_000_000, startMicroseconds: 1_000_000, received: 5, dropped: 3 }),
    ]);
    const read = readPcapng(file);
    expect(read.majorVersion).toBe(1);
    expect(read.application).toBe("qnat capture");
    expect(read.interfaces.map((i) => [i.name, i.linkType, i.tsresol])).toEqual([
      ["qr-694450d6-f6", LINKTYPE_RAW, 6],
      ["qg-e76de35e-90", LINKTYPE_ETHERNET, 6],
    ]);
    expect(read.interfaces[0]!.description).toBe("tenant");
    expect(read.packets).toHaveLength(2);
    expect([...read.packets[0]!.data]).toEqual([...ping]);
    expect(read.packets[0]!.comments).toEqual(["SNAT 10.0.0.3 -> 9.186.100.2"]);
    expect(read.packets[1]!.timestamp - read.packets[0]!.timestamp).toBe(250n);
    expect(read.packets[1]!.comments).toEqual([]);
    expect([...read.packets[1]!.data.subarray(12, 14)]).toEqual([0x08, 0x00]);
    expect(read.statistics).toEqual([{ interfaceId: 1, received: 5n, dropped: 3n }]);
  });

  it("the splitter cuts a stream arriving in odd pieces into the same whole blocks, and reads the statistics back", () => {
    const packet = buildPacket({ protocol: "tcp", src: "9.186.100.1", dst: "9.186.100.129", sport: 80, dport: 40000, tcpFlags: 0x12 });
    const stream = Buffer.concat([
      sectionHeaderBlock("qnat capture"),
      interfaceDescriptionBlock({ linkType: LINKTYPE_RAW, name: "qg-e76de35e-90" }),
      enhancedPacketBlock(0, 5, packet, 0, packet.length, "DNAT 9.186.100.129 -> 10.0.0.2 (floating IP)"),
      interfaceStatisticsBlock({ interfaceId: 0, microseconds: 9, startMicroseconds: 1, received: 10, dropped: 4 }),
    ]);
    const splitter = new PcapngBlockSplitter();
    const blocks = [];
    for (let at = 0; at < stream.length; at += 7) blocks.push(...splitter.push(stream.subarray(at, at + 7)));
    expect(splitter.held).toBe(0);
    expect(blocks.map((b) => b.type)).toEqual([BLOCK_SECTION_HEADER, BLOCK_INTERFACE_DESCRIPTION, BLOCK_ENHANCED_PACKET, 5]);
    expect(Buffer.concat(blocks.map((b) => b.bytes)).equals(stream)).toBe(true);
    expect(readInterfaceStatistics(blocks[3]!.bytes)).toEqual({ interfaceId: 0, received: 10, dropped: 4 });
    expect(() => new PcapngBlockSplitter().push(Buffer.from([1, 0, 0, 0, 13, 0, 0, 0]))).toThrow(/not a pcapng stream/);
  });
});
