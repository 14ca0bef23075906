/**
 * `qnat capture PORT [PORT...] [--leg wire|mirror|both] [-c COUNT] [-G SECONDS] [-B KIB]
 * [--router NS] -w FILE|-`: a pcapng capture of the running router's ports (docs/capture.md).
 * The router streams the capture over its control socket (control/capture.ts); this side writes
 * it to FILE (rotated every SECONDS with -G, control/capture-file.ts) or to stdout with `-w -`,
 * and prints tcpdump's kind of summary on stderr when it ends: after COUNT packets, on Ctrl-C
 * (the router is asked to finish: its statistics blocks still arrive), or when the reader of
 * stdout goes away (`| tcpdump -c 5 -r -`).
 */
import { createConnection, type Socket } from "node:net";
import { BLOCK_ENHANCED_PACKET, BLOCK_INTERFACE_STATISTICS, PcapngBlockSplitter, readInterfaceStatistics, type PcapngBlock } from "../io/pcapng.js";
import { CAPTURE_LEGS, type CaptureLegs } from "../io/capture.js";
import { PcapngFileWriter } from "../control/capture-file.js";
import { MAX_RING_BYTES, MIN_RING_BYTES } from "../control/capture.js";
import { ControlError, controlSocketPath } from "../control/socket.js";
import { OperationalError, UsageError } from "./errors.js";
import { resolveRouterNamespace } from "./paths.js";

export const CAPTURE_USAGE =
  "usage: qnat capture PORT [PORT...] [--leg wire|mirror|both] [-c COUNT] [-G SECONDS] [-B KIB] [--router NAMESPACE] -w FILE|-";

export interface CaptureArgs {
  readonly ports: readonly string[];
  readonly leg: CaptureLegs;
  readonly count: number;
  readonly rotateSeconds: number;
  readonly ringBytes?: number;
  readonly router?: string;
  readonly file: string;
}

function wholeNumber(option: string, text: string | undefined, min: number, max: number): number {
  if (text === undefined || !/^\d+$/.test(text)) throw new UsageError(`${option} needs a whole number`);
  const value = Number(text);
  if (value < min || value > max) throw new UsageError(`${option} ${text} is outside ${min}..${max}`);
  return value;
}

/** Reads the capture's command line (its own: `-c` is a count here, as tcpdump's). */
export function parseCaptureArgs(argv: readonly string[]): CaptureArgs {
  const ports: string[] = [];
  let leg: CaptureLegs = "wire";
  let count = 0;
  let rotateSeconds = 0;
  let ringBytes: number | undefined;
  let router: string | undefined;
  let file: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    const value = (): string | undefined => argv[++i];
    switch (word) {
      case "-w":
        file = value();
        if (file === undefined || file === "") throw new UsageError("-w needs a file name, or - for stdout");
        break;
      case "-c":
        count = wholeNumber("-c", value(), 1, 2 ** 32);
        break;
      case "-G":
        rotateSeconds = wholeNumber("-G", value(), 1, 86_400);
        break;
      case "-B":
        ringBytes = wholeNumber("-B", value(), MIN_RING_BYTES / 1024, MAX_RING_BYTES / 1024) * 1024;
        break;
      case "--leg": {
        const text = value();
        if (text === undefined || !(CAPTURE_LEGS as readonly string[]).includes(text)) throw new UsageError(`--leg must be ${CAPTURE_LEGS.join(", ")}`);
        leg = text as CaptureLegs;
        break;
      }
      case "--router":
        router = value();
        if (router === undefined || router === "") throw new UsageError("--router needs a value");
        break;
      default:
        if (word.startsWith("-")) throw new UsageError(`qnat capture: unknown option ${word}`);
        ports.push(word);
    }
  }
  if (ports.length === 0 || file === undefined) throw new UsageError(CAPTURE_USAGE);
  if (file === "-" && rotateSeconds > 0) throw new UsageError("-G rotates files: it needs -w FILE, not -w -");
  return { ports, leg, count, rotateSeconds, ...(ringBytes !== undefined ? { ringBytes } : {}), ...(router !== undefined ? { router } : {}), file };
}

/** What a capture wrote, for its summary line. */
export interface CaptureResult {
  packets: number;
  lost: number;
  /** Statistics blocks arrived: the router ended the capture itself. */
  complete: boolean;
  files: readonly string[];
}

export function captureSummary(result: CaptureResult): string {
  const files = result.files.length > 1 ? ` in ${result.files.length} files (${result.files[0]} ... ${result.files[result.files.length - 1]})` : "";
  return `${result.packets} packet${result.packets === 1 ? "" : "s"} captured${files}, ${result.lost} lost by the capture (its ring was full)`;
}

/** Where the blocks go: files, or a byte stream (stdout). */
interface BlockSink {
  write(blocks: readonly PcapngBlock[]): boolean;
  drained(): Promise<void>;
  close(): Promise<void>;
  readonly files: readonly string[];
}

function streamSink(stream: NodeJS.WritableStream & { writableNeedDrain?: boolean }): BlockSink {
  return {
    files: [],
    write: (blocks) => stream.write(Buffer.concat(blocks.map((b) => b.bytes))),
    drained: () => (stream.writableNeedDrain === true ? new Promise((resolve) => stream.once("drain", () => resolve())) : Promise.resolve()),
    close: async () => {},
  };
}

function fileSink(file: string, rotateSeconds: number): BlockSink {
  const writer = new PcapngFileWriter(file, rotateSeconds);
  return {
    get files() {
      return writer.files;
    },
    write: (blocks) => {
      const ok = writer.write(blocks);
      if (writer.error !== undefined) throw new OperationalError(`cannot write ${file}: ${writer.error.message}`);
      return ok;
    },
    drained: () => writer.drained(),
    close: async () => {
      await writer.close();
      if (writer.error !== undefined) throw new OperationalError(`cannot write ${file}: ${writer.error.message}`);
    },
  };
}

/**
 * Runs the capture; resolves with what it wrote. `stdout` receives `-w -`; `stop` is called with
 * a function that ends the capture early (the CLI wires it to SIGINT).
 */
export async function runCapture(
  args: CaptureArgs,
  stdout: NodeJS.WritableStream,
  onStart: (line: string, progress: CaptureResult) => void,
  stopper: (stop: () => void) => void,
): Promise<CaptureResult> {
  const namespace = resolveRouterNamespace(args.router, undefined);
  const path = controlSocketPath(namespace);
  const request = {
    cmd: "capture",
    ports: args.ports,
    leg: args.leg,
    count: args.count,
    ...(args.ringBytes !== undefined ? { ringBytes: args.ringBytes } : {}),
  };
  const sink = args.file === "-" ? streamSink(stdout) : fileSink(args.file, args.rotateSeconds);
  const result: CaptureResult = { packets: 0, lost: 0, complete: false, files: [] };
  const socket: Socket = createConnection(path);
  const splitter = new PcapngBlockSplitter();
  let answered = false;
  let head = Buffer.alloc(0);
  let writing = Promise.resolve();
  let failure: Error | undefined;

  const take = (chunk: Buffer): void => {
    const blocks = splitter.push(chunk);
    for (const block of blocks) {
      if (block.type === BLOCK_ENHANCED_PACKET) result.packets++;
      if (block.type === BLOCK_INTERFACE_STATISTICS) {
        result.complete = true;
        result.lost += readInterfaceStatistics(block.bytes).dropped;
      }
    }
    if (blocks.length > 0 && !sink.write(blocks)) {
      // Backpressure: stop reading the router until the output drained (its ring takes the slack).
      socket.pause();
      writing = writing.then(() => sink.drained()).then(() => void socket.resume());
    }
  };

  await new Promise<void>((resolve) => {
    stopper(() => {
      if (!socket.destroyed) socket.end();
    });
    socket.on("connect", () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on("data", (chunk: Buffer) => {
      try {
        if (answered) {
          take(chunk);
          return;
        }
        head = Buffer.concat([head, chunk]);
        const newline = head.indexOf(10);
        if (newline < 0) return;
        const answer = JSON.parse(head.subarray(0, newline).toString("utf8")) as { ok: boolean; text?: string; error?: string };
        if (!answer.ok) throw new OperationalError(answer.error ?? "the router refused the capture");
        answered = true;
        onStart(answer.text ?? "capturing", result);
        const rest = head.subarray(newline + 1);
        if (rest.length > 0) take(rest);
      } catch (error) {
        failure = error instanceof Error ? error : new Error(String(error));
        socket.destroy();
      }
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      if (!answered) {
        const code = error.code;
        failure ??=
          code === "ENOENT" || code === "ECONNREFUSED"
            ? new ControlError(`no qnat router is running for namespace ${namespace} (${path})`, code)
            : code === "EACCES"
              ? new ControlError(`cannot connect to ${path}: permission denied (run as root)`, code)
              : new ControlError(`cannot talk to router ${namespace}: ${code ?? error.message}`, code);
      }
    });
    socket.on("close", () => resolve());
  });
  await writing;
  await sink.close();
  result.files = sink.files;
  if (failure !== undefined) throw failure;
  if (!answered) throw new ControlError(`router ${namespace} closed the control connection without answering`, "ECONNRESET");
  return result;
}
