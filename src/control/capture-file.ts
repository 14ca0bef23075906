/**
 * A pcapng capture written to files, rotated every N seconds as tcpdump's `-G`: used by
 * `qnat capture -w FILE` (the CLI writes the stream the router sends) and by the router for the
 * config's `capture:`. Each file is whole on its own: it starts with the capture's Section
 * Header Block and Interface Description Blocks again.
 *
 * File names with rotation: a name with `%` fields is expanded with the time the file starts,
 * as strftime (local time; %Y %m %d %H %M %S %s %%), e.g. `qg-%Y%m%d-%H%M%S.pcapng`; a name
 * without them gets the file's index before its extension: `snat.pcapng` -> `snat.0.pcapng`,
 * `snat.1.pcapng`... Without rotation the name is used as it is.
 */
import { createWriteStream, type WriteStream } from "node:fs";
import { BLOCK_ENHANCED_PACKET, BLOCK_INTERFACE_DESCRIPTION, BLOCK_SECTION_HEADER, type PcapngBlock } from "../io/pcapng.js";

/** tcpdump-like strftime of the fields people put in capture file names. */
export function strftime(pattern: string, date: Date): string {
  const two = (n: number): string => String(n).padStart(2, "0");
  return pattern.replace(/%([YmdHMSs%])/g, (_, field: string) => {
    switch (field) {
      case "Y":
        return String(date.getFullYear());
      case "m":
        return two(date.getMonth() + 1);
      case "d":
        return two(date.getDate());
      case "H":
        return two(date.getHours());
      case "M":
        return two(date.getMinutes());
      case "S":
        return two(date.getSeconds());
      case "s":
        return String(Math.floor(date.getTime() / 1000));
      default:
        return "%";
    }
  });
}

/** The name of rotated file number `index`, started at `date` (see the module comment). */
export function rotatedFileName(pattern: string, index: number, date: Date): string {
  if (pattern.includes("%")) return strftime(pattern, date);
  const slash = pattern.lastIndexOf("/");
  const dot = pattern.lastIndexOf(".");
  if (dot > slash + 1) return `${pattern.slice(0, dot)}.${index}${pattern.slice(dot)}`;
  return `${pattern}.${index}`;
}

export class PcapngFileWriter {
  /** The capture's header blocks (SHB and IDBs), written again at the start of every file. */
  private header: Buffer[] = [];
  private headerDone = false;
  private stream: WriteStream | undefined;
  private fileStartedMs = 0;
  private index = 0;
  private failure: Error | undefined;
  /** The files written, in order. */
  readonly files: string[] = [];

  constructor(
    private readonly pattern: string,
    /** Seconds per file; 0: one file. */
    private readonly rotateSeconds = 0,
    private readonly now: () => number = Date.now,
  ) {}

  /** The first write error (the file system is full, a directory is missing...), once it happened. */
  get error(): Error | undefined {
    return this.failure;
  }

  /** Writes whole blocks; false when the file's buffer is full (wait for `drained`). */
  write(blocks: readonly PcapngBlock[]): boolean {
    let ok = true;
    for (const block of blocks) {
      if (!this.headerDone && (block.type === BLOCK_SECTION_HEADER || block.type === BLOCK_INTERFACE_DESCRIPTION)) {
        this.header.push(Buffer.from(block.bytes));
        continue;
      }
      this.headerDone = true;
      if (this.stream === undefined || (block.type === BLOCK_ENHANCED_PACKET && this.rotateSeconds > 0 && this.now() - this.fileStartedMs >= this.rotateSeconds * 1000)) {
        this.open();
      }
      ok = this.stream!.write(block.bytes) && ok;
    }
    return ok;
  }

  drained(): Promise<void> {
    const stream = this.stream;
    if (stream === undefined || !stream.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      stream.once("drain", resolve);
      stream.once("close", resolve);
    });
  }

  /** Finishes the current file (a capture without a packet still gets one, with its header). */
  async close(): Promise<void> {
    if (this.stream === undefined && this.header.length > 0) this.open();
    await this.finish(this.stream);
    this.stream = undefined;
  }

  private open(): void {
    const previous = this.stream;
    if (previous !== undefined) void this.finish(previous);
    this.fileStartedMs = this.now();
    const name = this.rotateSeconds > 0 ? rotatedFileName(this.pattern, this.index, new Date(this.fileStartedMs)) : this.pattern;
    this.index++;
    const stream = createWriteStream(name);
    stream.on("error", (error) => {
      this.failure ??= error;
    });
    for (const bytes of this.header) stream.write(bytes);
    this.files.push(name);
    this.stream = stream;
  }

  private finish(stream: WriteStream | undefined): Promise<void> {
    if (stream === undefined || stream.closed) return Promise.resolve();
    return new Promise((resolve) => {
      stream.once("close", () => resolve());
      stream.end();
    });
  }
}
