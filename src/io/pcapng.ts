/**
 * pcapng, the capture file format of Wireshark, tshark and `tcpdump -r` (draft-ietf-opsawg-pcapng,
 * "PCAP Now Generic (pcapng) Capture File Format"): a file is a Section Header Block, then an
 * Interface Description Block per captured interface, then Enhanced Packet Blocks that name
 * their interface by its index, and Interface Statistics Blocks. qnat writes little-endian
 * blocks (the byte-order magic says so, section 4.1); every block and option is padded to 32
 * bits.
 *
 * Block: type u32, total length u32, body, total length u32 again (section 3.1).
 * Option: code u16, length u16, value padded to 4, the list ended by opt_endofopt (section 3.5).
 *
 * Control plane only (the capture's drain, the CLI): blocks are built into fresh Buffers.
 */

/** Block types (section 11.1 of the draft). */
export const BLOCK_SECTION_HEADER = 0x0a0d0d0a;
export const BLOCK_INTERFACE_DESCRIPTION = 0x00000001;
export const BLOCK_INTERFACE_STATISTICS = 0x00000005;
export const BLOCK_ENHANCED_PACKET = 0x00000006;
/** SHB byte-order magic (section 4.1). */
export const BYTE_ORDER_MAGIC = 0x1a2b3c4d;

/** Option codes (section 3.5 and the block sections). */
export const OPT_ENDOFOPT = 0;
export const OPT_COMMENT = 1;
export const SHB_USERAPPL = 4;
export const IF_NAME = 2;
export const IF_DESCRIPTION = 3;
export const IF_TSRESOL = 9;
export const ISB_STARTTIME = 2;
export const ISB_ENDTIME = 3;
export const ISB_IFRECV = 4;
export const ISB_IFDROP = 5;

/** Link types (the tcpdump.org LINKTYPE_ registry). */
export const LINKTYPE_ETHERNET = 1;
/** Raw IPv4/IPv6, no link header: what a TUN device carries. */
export const LINKTYPE_RAW = 101;
/**
 * Raw IPv4 only, no link header. qnat's TUN interfaces take it instead of LINKTYPE_RAW when a
 * capture has more than one: libpcap 1.10 (tcpdump on Debian 12) maps the first interface's
 * LINKTYPE_RAW to DLT_RAW (12), then compares each further interface's 101 with that 12 and
 * refuses the file ("an interface has a type 101 different from the type of the first
 * interface"); LINKTYPE_IPV4 is 228 in both numberings.
 */
export const LINKTYPE_IPV4 = 228;

/** if_tsresol 6: timestamps in microseconds (10^-6 s), the draft's default made explicit. */
export const TSRESOL_MICROSECONDS = 6;
/** The largest packet qnat captures whole: a 64 KiB GSO super-packet and its link header. */
export const CAPTURE_SNAPLEN = 65535 + 14;

interface PcapngOption {
  readonly code: number;
  readonly value: Uint8Array;
}

function pad4(n: number): number {
  return (n + 3) & ~3;
}

function optionsLength(options: readonly PcapngOption[]): number {
  if (options.length === 0) return 0;
  return options.reduce((total, o) => total + 4 + pad4(o.value.length), 0) + 4;
}

function writeOptions(out: Buffer, at: number, options: readonly PcapngOption[]): number {
  if (options.length === 0) return at;
  for (const option of options) {
    out.writeUInt16LE(option.code, at);
    out.writeUInt16LE(option.value.length, at + 2);
    out.set(option.value, at + 4);
    at += 4 + pad4(option.value.length);
  }
  // opt_endofopt: code 0, length 0 (the buffer is zero-filled, padding included).
  return at + 4;
}

/** One block: type, length, `body` (already padded), options, length again. */
function block(type: number, body: Buffer, options: readonly PcapngOption[]): Buffer {
  const total = 12 + body.length + optionsLength(options);
  const out = Buffer.alloc(total);
  out.writeUInt32LE(type, 0);
  out.writeUInt32LE(total, 4);
  body.copy(out, 8);
  writeOptions(out, 8 + body.length, options);
  out.writeUInt32LE(total, total - 4);
  return out;
}

function textOption(code: number, text: string): PcapngOption {
  return { code, value: Buffer.from(text, "utf8") };
}

function u64Option(code: number, value: number): PcapngOption {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(value))));
  return { code, value: bytes };
}

/** A timestamp in microseconds as the (high, low) 32-bit words of EPB and ISB. */
function writeTimestamp(out: Buffer, at: number, microseconds: number): void {
  const us = Math.max(0, Math.floor(microseconds));
  out.writeUInt32LE(Math.floor(us / 0x1_0000_0000), at);
  out.writeUInt32LE(us % 0x1_0000_0000, at + 4);
}

/** The isb_starttime/isb_endtime option: a timestamp in the interface's resolution, high word first. */
function timestampOption(code: number, microseconds: number): PcapngOption {
  const bytes = Buffer.alloc(8);
  writeTimestamp(bytes, 0, microseconds);
  return { code, value: bytes };
}

/** Section Header Block (section 4.1): version 1.0, section length unknown (-1). */
export function sectionHeaderBlock(application: string): Buffer {
  const body = Buffer.alloc(16);
  body.writeUInt32LE(BYTE_ORDER_MAGIC, 0);
  body.writeUInt16LE(1, 4);
  body.writeUInt16LE(0, 6);
  body.writeBigInt64LE(-1n, 8);
  return block(BLOCK_SECTION_HEADER, body, [textOption(SHB_USERAPPL, application)]);
}

export interface InterfaceDescription {
  readonly linkType: number;
  /** if_name: qnat names an interface like its port (and leg). */
  readonly name: string;
  readonly description?: string;
  readonly snapLength?: number;
}

/** Interface Description Block (section 4.2), timestamps in microseconds (if_tsresol 6). */
export function interfaceDescriptionBlock(description: InterfaceDescription): Buffer {
  const body = Buffer.alloc(8);
  body.writeUInt16LE(description.linkType, 0);
  body.writeUInt32LE(description.snapLength ?? CAPTURE_SNAPLEN, 4);
  const options = [textOption(IF_NAME, description.name)];
  if (description.description !== undefined) options.push(textOption(IF_DESCRIPTION, description.description));
  options.push({ code: IF_TSRESOL, value: Uint8Array.of(TSRESOL_MICROSECONDS) });
  return block(BLOCK_INTERFACE_DESCRIPTION, body, options);
}

/** The length of an Enhanced Packet Block of `length` packet bytes and a `commentBytes`-byte comment (0: none). */
export function enhancedPacketBlockLength(length: number, commentBytes: number): number {
  return 32 + pad4(length) + (commentBytes > 0 ? 4 + pad4(commentBytes) + 4 : 0);
}

/**
 * Writes an Enhanced Packet Block (section 4.3) at `out[at..]`, which must be zero-filled (the
 * padding): `bytes[start, start + length)` captured whole (original length = captured length),
 * with `comment` (UTF-8) as opt_comment when it is not empty. Returns the offset after it.
 */
export function writeEnhancedPacketBlock(
  out: Buffer,
  at: number,
  interfaceId: number,
  microseconds: number,
  bytes: Uint8Array,
  start: number,
  length: number,
  comment: Uint8Array | undefined,
): number {
  const commentBytes = comment === undefined ? 0 : comment.length;
  const total = enhancedPacketBlockLength(length, commentBytes);
  out.writeUInt32LE(BLOCK_ENHANCED_PACKET, at);
  out.writeUInt32LE(total, at + 4);
  out.writeUInt32LE(interfaceId, at + 8);
  writeTimestamp(out, at + 12, microseconds);
  out.writeUInt32LE(length, at + 20);
  out.writeUInt32LE(length, at + 24);
  out.set(bytes.subarray(start, start + length), at + 28);
  if (comment !== undefined && commentBytes > 0) {
    const option = at + 28 + pad4(length);
    out.writeUInt16LE(OPT_COMMENT, option);
    out.writeUInt16LE(commentBytes, option + 2);
    out.set(comment, option + 4);
    // opt_endofopt: the zeros after it.
  }
  out.writeUInt32LE(total, at + total - 4);
  return at + total;
}

/** One Enhanced Packet Block in a Buffer of its own (tests, single packets). */
export function enhancedPacketBlock(
  interfaceId: number,
  microseconds: number,
  bytes: Uint8Array,
  start: number,
  length: number,
  comment?: string,
): Buffer {
  const text = comment === undefined || comment === "" ? undefined : Buffer.from(comment, "utf8");
  const out = Buffer.alloc(enhancedPacketBlockLength(length, text === undefined ? 0 : text.length));
  writeEnhancedPacketBlock(out, 0, interfaceId, microseconds, bytes, start, length, text);
  return out;
}

export interface InterfaceStatistics {
  readonly interfaceId: number;
  readonly microseconds: number;
  readonly startMicroseconds: number;
  /** isb_ifrecv: packets the capture saw on this interface (written and lost). */
  readonly received: number;
  /** isb_ifdrop: packets the capture could not keep (its ring was full). */
  readonly dropped: number;
}

/** Interface Statistics Block (section 4.6), written when a capture ends. */
export function interfaceStatisticsBlock(stats: InterfaceStatistics): Buffer {
  const body = Buffer.alloc(12);
  body.writeUInt32LE(stats.interfaceId, 0);
  writeTimestamp(body, 4, stats.microseconds);
  return block(BLOCK_INTERFACE_STATISTICS, body, [
    timestampOption(ISB_STARTTIME, stats.startMicroseconds),
    timestampOption(ISB_ENDTIME, stats.microseconds),
    u64Option(ISB_IFRECV, stats.received),
    u64Option(ISB_IFDROP, stats.dropped),
  ]);
}

/** One whole block cut from a stream: its type and its bytes (header and trailer included). */
export interface PcapngBlock {
  readonly type: number;
  readonly bytes: Buffer<ArrayBufferLike>;
}

/**
 * Cuts a little-endian pcapng byte stream (qnat's own, arriving in arbitrary chunks over the
 * control socket) into whole blocks. A length that is not a multiple of 4 or below 12 is not
 * pcapng: `push` throws, once.
 */
export class PcapngBlockSplitter {
  private pending: Buffer<ArrayBufferLike> = Buffer.alloc(0);

  push(chunk: Buffer<ArrayBufferLike>): PcapngBlock[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const blocks: PcapngBlock[] = [];
    let at = 0;
    while (this.pending.length - at >= 8) {
      const type = this.pending.readUInt32LE(at);
      const length = this.pending.readUInt32LE(at + 4);
      if (length < 12 || length % 4 !== 0) throw new Error(`not a pcapng stream: block of length ${length}`);
      if (this.pending.length - at < length) break;
      blocks.push({ type, bytes: this.pending.subarray(at, at + length) });
      at += length;
    }
    this.pending = this.pending.subarray(at);
    return blocks;
  }

  /** Bytes of an unfinished block held back (0 when the stream ended on a block boundary). */
  get held(): number {
    return this.pending.length;
  }
}

/** The isb_ifrecv and isb_ifdrop of an Interface Statistics Block qnat wrote. */
export function readInterfaceStatistics(bytes: Buffer<ArrayBufferLike>): { interfaceId: number; received: number; dropped: number } {
  const total = bytes.readUInt32LE(4);
  let received = 0;
  let dropped = 0;
  for (let at = 20; at + 4 <= total - 4; ) {
    const code = bytes.readUInt16LE(at);
    const length = bytes.readUInt16LE(at + 2);
    if (code === OPT_ENDOFOPT) break;
    if (code === ISB_IFRECV && length === 8) received = Number(bytes.readBigUInt64LE(at + 4));
    if (code === ISB_IFDROP && length === 8) dropped = Number(bytes.readBigUInt64LE(at + 4));
    at += 4 + pad4(length);
  }
  return { interfaceId: bytes.readUInt32LE(8), received, dropped };
}
