/**
 * A pcapng reader for the tests, written from the format's description
 * (draft-ietf-opsawg-pcapng) independently of src/io/pcapng.ts: it checks what a reader must be
 * able to rely on (block lengths repeated, 32-bit alignment, the byte-order magic, options ended
 * by opt_endofopt) and throws on anything else.
 */

export interface ReadInterface {
  readonly linkType: number;
  readonly snapLength: number;
  readonly name?: string;
  readonly description?: string;
  /** if_tsresol as given (6: microseconds); undefined when absent (then microseconds too). */
  readonly tsresol?: number;
}

export interface ReadPacket {
  readonly interfaceId: number;
  /** Timestamp in units of the interface's resolution. */
  readonly timestamp: bigint;
  readonly capturedLength: number;
  readonly originalLength: number;
  readonly data: Uint8Array;
  readonly comments: string[];
}

export interface ReadStatistics {
  readonly interfaceId: number;
  readonly received?: bigint;
  readonly dropped?: bigint;
}

export interface ReadCapture {
  readonly majorVersion: number;
  readonly minorVersion: number;
  readonly application?: string;
  readonly interfaces: ReadInterface[];
  readonly packets: ReadPacket[];
  readonly statistics: ReadStatistics[];
  /** Block types in file order. */
  readonly blockTypes: number[];
}

interface Option {
  code: number;
  value: Uint8Array;
}

function readOptions(view: DataView, start: number, end: number): Option[] {
  const options: Option[] = [];
  let at = start;
  while (at < end) {
    if (at + 4 > end) throw new Error(`option header past the block's end at ${at}`);
    const code = view.getUint16(at, true);
    const length = view.getUint16(at + 2, true);
    if (code === 0) {
      if (length !== 0) throw new Error("opt_endofopt with a length");
      return options;
    }
    const padded = (length + 3) & ~3;
    if (at + 4 + padded > end) throw new Error(`option ${code} runs past the block's end`);
    options.push({ code, value: new Uint8Array(view.buffer, view.byteOffset + at + 4, length) });
    at += 4 + padded;
  }
  if (options.length > 0) throw new Error("options without opt_endofopt");
  return options;
}

const text = (value: Uint8Array): string => new TextDecoder().decode(value);

export function readPcapng(bytes: Uint8Array): ReadCapture {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const capture: ReadCapture = { majorVersion: 0, minorVersion: 0, interfaces: [], packets: [], statistics: [], blockTypes: [] };
  let at = 0;
  let sawHeader = false;
  while (at < bytes.length) {
    if (at + 12 > bytes.length) throw new Error(`truncated block at ${at}`);
    const type = view.getUint32(at, true);
    const length = view.getUint32(at + 4, true);
    if (length % 4 !== 0 || length < 12 || at + length > bytes.length) throw new Error(`bad block length ${length} at ${at}`);
    if (view.getUint32(at + length - 4, true) !== length) throw new Error(`trailing length differs at ${at}`);
    const body = at + 8;
    const end = at + length - 4;
    capture.blockTypes.push(type);
    if (!sawHeader && type !== 0x0a0d0d0a) throw new Error("the file does not start with a Section Header Block");
    switch (type) {
      case 0x0a0d0d0a: {
        if (view.getUint32(body, true) !== 0x1a2b3c4d) throw new Error("byte-order magic is not little-endian 0x1A2B3C4D");
        sawHeader = true;
        (capture as { majorVersion: number }).majorVersion = view.getUint16(body + 4, true);
        (capture as { minorVersion: number }).minorVersion = view.getUint16(body + 6, true);
        const app = readOptions(view, body + 16, end).find((o) => o.code === 4);
        if (app !== undefined) (capture as { application?: string }).application = text(app.value);
        break;
      }
      case 1: {
        const options = readOptions(view, body + 8, end);
        const name = options.find((o) => o.code === 2);
        const description = options.find((o) => o.code === 3);
        const tsresol = options.find((o) => o.code === 9);
        capture.interfaces.push({
          linkType: view.getUint16(body, true),
          snapLength: view.getUint32(body + 4, true),
          ...(name ? { name: text(name.value) } : {}),
          ...(description ? { description: text(description.value) } : {}),
          ...(tsresol ? { tsresol: tsresol.value[0]! } : {}),
        });
        break;
      }
      case 6: {
        const interfaceId = view.getUint32(body, true);
        if (interfaceId >= capture.interfaces.length) throw new Error(`packet of interface ${interfaceId} before its description`);
        const timestamp = (BigInt(view.getUint32(body + 4, true)) << 32n) | BigInt(view.getUint32(body + 8, true));
        const capturedLength = view.getUint32(body + 12, true);
        const originalLength = view.getUint32(body + 16, true);
        const dataStart = body + 20;
        const padded = (capturedLength + 3) & ~3;
        if (dataStart + padded > end) throw new Error("packet data runs past the block's end");
        const options = readOptions(view, dataStart + padded, end);
        capture.packets.push({
          interfaceId,
          timestamp,
          capturedLength,
          originalLength,
          data: bytes.slice(dataStart, dataStart + capturedLength),
          comments: options.filter((o) => o.code === 1).map((o) => text(o.value)),
        });
        break;
      }
      case 5: {
        const options = readOptions(view, body + 12, end);
        const u64 = (code: number): bigint | undefined => {
          const o = options.find((x) => x.code === code);
          return o === undefined ? undefined : new DataView(o.value.buffer, o.value.byteOffset, 8).getBigUint64(0, true);
        };
        const received = u64(4);
        const dropped = u64(5);
        capture.statistics.push({
          interfaceId: view.getUint32(body, true),
          ...(received !== undefined ? { received } : {}),
          ...(dropped !== undefined ? { dropped } : {}),
        });
        break;
      }
      default:
        break;
    }
    at += length;
  }
  return capture;
}
