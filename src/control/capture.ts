/**
 * The router's captures (`qnat capture`, config `capture:`): starts a capture session on the
 * forwarder's tap (io/capture.ts), drains its ring off the forwarding loop into pcapng blocks
 * with their comments (io/capture-comment.ts), and hands them to an output — the control
 * connection of `qnat capture` (which writes the file or stdout on its side) or files of the
 * router's own (control/capture-file.ts). A capture ends when its count is reached, when its
 * client hangs up, or when the router stops; it then writes one Interface Statistics Block per
 * interface with the packets it saw and those it lost (isb_ifrecv, isb_ifdrop).
 *
 * The drain runs on timers and setImmediate, a bounded number of packets per turn, so the legs'
 * reads are served between; an output that does not keep up (a slow reader on the socket) makes
 * the drain wait, the ring fill, and packets be counted as lost, never forwarding wait.
 */
import type { Socket } from "node:net";
import type { Dataplane } from "../dataplane/pipeline.js";
import { NetfilterNat } from "../dataplane/netfilter-nat.js";
import { captureComment, type CommentContext } from "../io/capture-comment.js";
import {
  CAPTURE_LEGS,
  CaptureSession,
  CaptureTap,
  Rec,
  captureInterfaces,
  nowMicroseconds,
  type CaptureInterface,
  type CaptureLegs,
} from "../io/capture.js";
import type { Forwarder } from "../io/forwarder.js";
import {
  BLOCK_ENHANCED_PACKET,
  BLOCK_INTERFACE_DESCRIPTION,
  BLOCK_INTERFACE_STATISTICS,
  BLOCK_SECTION_HEADER,
  enhancedPacketBlockLength,
  interfaceDescriptionBlock,
  interfaceStatisticsBlock,
  sectionHeaderBlock,
  writeEnhancedPacketBlock,
  type PcapngBlock,
} from "../io/pcapng.js";
import type { CaptureConfig, RouterConfig } from "../config/config.js";
import { PcapngFileWriter } from "./capture-file.js";
import { RemoteCapture, captureStartMessage, type CaptureWorkers } from "./worker-capture.js";
import type { ControlResponse, ControlTakeover } from "./socket.js";

/** `{"cmd":"capture",...}` on the control socket. */
export interface CaptureRequest {
  readonly cmd: "capture";
  readonly ports: readonly string[];
  readonly leg: CaptureLegs;
  /** Stop after this many packets (0: no limit). */
  readonly count: number;
  /** The ring's size in bytes (tcpdump -B, in KiB there); default io/capture.ts DEFAULT_RING_BYTES. */
  readonly ringBytes?: number;
}

/** The smallest and largest ring a request may ask for. */
export const MIN_RING_BYTES = 1024;
export const MAX_RING_BYTES = 1024 * 1024 * 1024;
/** Packets written out per turn of the event loop. */
const DRAIN_BUDGET = 512;
/** How long the drain sleeps when the ring is empty. */
const DRAIN_IDLE_MS = 10;
/** How long a capture that ends waits for the worker threads' last packets. */
const WORKER_STOP_WAIT_MS = 1000;
/** Captures one router runs at once. */
export const MAX_CAPTURES = 4;

/** Checks a decoded capture request; returns it or a one-line reason it is not one. */
export function parseCaptureRequest(request: Record<string, unknown>): CaptureRequest | string {
  const { ports, leg, count, ringBytes } = request;
  if (!Array.isArray(ports) || ports.length === 0 || !ports.every((p) => typeof p === "string")) return `capture needs "ports": a list of port names`;
  if (typeof leg !== "string" || !(CAPTURE_LEGS as readonly string[]).includes(leg)) return `capture "leg" must be one of ${CAPTURE_LEGS.join(", ")}`;
  if (typeof count !== "number" || !Number.isInteger(count) || count < 0) return `capture "count" must be a whole number (0: no limit)`;
  if (ringBytes !== undefined && (typeof ringBytes !== "number" || !Number.isInteger(ringBytes) || ringBytes < MIN_RING_BYTES || ringBytes > MAX_RING_BYTES)) {
    return `capture "ringBytes" must be ${MIN_RING_BYTES}..${MAX_RING_BYTES}`;
  }
  return { cmd: "capture", ports: ports as string[], leg: leg as CaptureLegs, count, ...(ringBytes !== undefined ? { ringBytes } : {}) };
}

/** Where a capture's blocks go. */
export interface CaptureOutput {
  /** False when the output's buffer is full: the drain waits for `drained`. */
  write(blocks: readonly PcapngBlock[]): boolean;
  drained(): Promise<void>;
  /** The output went away (its client hung up): the capture ends without writing more. */
  readonly gone: boolean;
  close(): Promise<void>;
}

export interface CaptureSummary {
  readonly captured: number;
  readonly lost: number;
}

/** A capture's own view for `qnat show stats`. */
export interface CaptureStatsView {
  readonly running: number;
  /** Packets written out and lost by every capture since the router started (ended and running). */
  readonly captured: number;
  readonly lost: number;
}

/** The pcapng blocks that open a capture: its section and its interfaces. */
export function captureHeader(interfaces: readonly CaptureInterface[]): PcapngBlock[] {
  return [
    { type: BLOCK_SECTION_HEADER, bytes: sectionHeaderBlock("qnat capture") },
    ...interfaces.map((iface) => ({
      type: BLOCK_INTERFACE_DESCRIPTION,
      bytes: interfaceDescriptionBlock({ linkType: iface.linkType, name: iface.name, description: iface.description }),
    })),
  ];
}

/** The comment context of a dataplane: its own addresses and its nat rules' names. */
export function commentContextOf(dataplane: Dataplane): CommentContext {
  const nat = dataplane.nat;
  const rules = nat instanceof NetfilterNat ? nat.rules : undefined;
  return {
    isOwn: (addr) => dataplane.addresses.isOwn(addr),
    ...(rules !== undefined ? { ruleLabel: (index: number) => rules.ruleLabelOf(index) } : {}),
  };
}

/** Comments already composed, by the record words they depend on (a flow's packets repeat them). */
export class CommentCache {
  /** By a hash of the words: the words (to confirm a hit) and the comment's UTF-8 bytes. */
  private readonly entries = new Map<number, { readonly words: Int32Array; readonly text: Buffer }>();
  constructor(private readonly limit = 4096) {}

  /** The comment of record `r` as UTF-8 bytes. */
  commentOf(records: Int32Array, r: number, context: CommentContext): Buffer {
    let hash = records[r + Rec.Kind]! | 0;
    for (let w = Rec.Verdict as number; w < Rec.Words; w++) hash = (Math.imul(hash, 0x01000193) ^ records[r + w]!) | 0;
    const found = this.entries.get(hash);
    if (found !== undefined && this.same(found.words, records, r)) return found.text;
    if (this.entries.size >= this.limit) this.entries.clear();
    const words = new Int32Array(Rec.Words);
    words[Rec.Kind] = records[r + Rec.Kind]!;
    for (let w = Rec.Verdict as number; w < Rec.Words; w++) words[w] = records[r + w]!;
    const text = Buffer.from(captureComment(records, r, context), "utf8");
    this.entries.set(hash, { words, text });
    return text;
  }

  private same(words: Int32Array, records: Int32Array, r: number): boolean {
    if (words[Rec.Kind] !== records[r + Rec.Kind]) return false;
    for (let w = Rec.Verdict as number; w < Rec.Words; w++) if (words[w] !== records[r + w]) return false;
    return true;
  }

  /** The rules or addresses changed (a live change): names may differ now. */
  clear(): void {
    this.entries.clear();
  }
}

/**
 * Takes up to `budget` packets out of the ring as Enhanced Packet Blocks, written one after the
 * other into one Buffer (one "block" of type BLOCK_ENHANCED_PACKET that holds them all; a file
 * rotates between two such runs).
 */
export function drainSession(session: CaptureSession, context: CommentContext, budget = DRAIN_BUDGET, cache = new CommentCache()): PcapngBlock[] {
  const records = session.records;
  const comments: Buffer[] = [];
  let size = 0;
  // Pass 1: the comments and the size, without taking anything out of the ring.
  for (let n = 0, record = session.peek(); record >= 0 && n < budget; n++, record = session.next(record)) {
    const r = record * Rec.Words;
    const comment = cache.commentOf(records, r, context);
    comments.push(comment);
    size += enhancedPacketBlockLength(records[r + Rec.Length]!, comment.length);
  }
  if (comments.length === 0) return [];
  const out = Buffer.alloc(size);
  let at = 0;
  for (const comment of comments) {
    const record = session.peek();
    const r = record * Rec.Words;
    at = writeEnhancedPacketBlock(out, at, records[r + Rec.Interface]!, session.times[record]!, session.bytes, records[r + Rec.Offset]!, records[r + Rec.Length]!, comment);
    session.advance();
  }
  return [{ type: BLOCK_ENHANCED_PACKET, bytes: out }];
}

/** The Interface Statistics Blocks that close a capture (with the worker threads' packets, `remote`). */
export function captureStatistics(session: CaptureSession, remote?: RemoteCapture): PcapngBlock[] {
  const now = nowMicroseconds();
  const seen = remote?.seen();
  const lost = remote?.lost();
  return session.interfaces.map((_, id) => ({
    type: BLOCK_INTERFACE_STATISTICS,
    bytes: interfaceStatisticsBlock({
      interfaceId: id,
      microseconds: now,
      startMicroseconds: session.startedAt,
      received: session.seen[id]! + (seen?.[id] ?? 0),
      dropped: session.lost[id]! + (lost?.[id] ?? 0),
    }),
  }));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** The output of `qnat capture`: the control connection itself, after its first answer line. */
export class SocketCaptureOutput implements CaptureOutput {
  private closedByPeer = false;
  /** The client half-closed its side (Ctrl-C): finish the capture and hang up. */
  ended = false;

  constructor(private readonly socket: Socket) {
    socket.on("close", () => (this.closedByPeer = true));
    socket.on("error", () => (this.closedByPeer = true));
    socket.on("end", () => (this.ended = true));
  }

  get gone(): boolean {
    return this.closedByPeer || this.socket.destroyed || !this.socket.writable;
  }

  write(blocks: readonly PcapngBlock[]): boolean {
    if (this.gone) return true;
    return this.socket.write(Buffer.concat(blocks.map((b) => b.bytes)));
  }

  drained(): Promise<void> {
    if (this.gone || !this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.socket.off("drain", done);
        this.socket.off("close", done);
        resolve();
      };
      this.socket.on("drain", done);
      this.socket.on("close", done);
    });
  }

  async close(): Promise<void> {}
}

/** The config's `capture:`: files the router writes itself. */
export class FileCaptureOutput implements CaptureOutput {
  readonly writer: PcapngFileWriter;
  readonly gone = false;

  constructor(file: string, rotateSeconds: number) {
    this.writer = new PcapngFileWriter(file, rotateSeconds);
  }

  write(blocks: readonly PcapngBlock[]): boolean {
    return this.writer.write(blocks);
  }

  drained(): Promise<void> {
    return this.writer.drained();
  }

  close(): Promise<void> {
    return this.writer.close();
  }
}

interface RunningCapture {
  readonly session: CaptureSession;
  /** The worker threads' packets of this capture (workers: N > 1). */
  readonly remote: RemoteCapture | undefined;
  stop(): void;
  readonly done: Promise<CaptureSummary>;
}

/**
 * The captures of one router: one tap on its forwarder, a session per capture. `attach` is
 * called with each forwarder the router makes (a live change of ports makes a new one).
 */
export class RouterCaptures {
  readonly tap: CaptureTap;
  private forwarder: Forwarder | undefined;
  private readonly running = new Set<RunningCapture>();
  private capturedBefore = 0;
  private lostBefore = 0;
  private workers: CaptureWorkers | undefined;
  private nextId = 1;

  constructor(
    batchCapacity: number,
    private readonly config: () => RouterConfig,
    private readonly dataplane: () => Dataplane,
    private readonly log: (line: string) => void,
  ) {
    this.tap = new CaptureTap(batchCapacity, this.config().ports.map((p) => p.wire.mode === "tap"));
  }

  /** The forwarder the tap rides on (null: none, e.g. pass-through mode). */
  attach(forwarder: Forwarder | undefined): void {
    if (this.forwarder !== undefined && forwarder !== this.forwarder) {
      // Ports were added or removed: the legs' indexes changed under the running captures, which end.
      for (const run of this.running) run.stop();
      this.forwarder = forwarder;
      forwarder?.setCapture(null);
      return;
    }
    this.forwarder = forwarder;
    this.tap.ethernet = this.config().ports.map((p) => p.wire.mode === "tap");
    forwarder?.setCapture(this.tap.empty ? null : this.tap);
  }

  /** With workers: N > 1, every capture runs a tap on each worker thread too (control/worker-capture.ts). */
  useWorkers(workers: CaptureWorkers | undefined): void {
    this.workers = workers;
    if (workers === undefined) return;
    workers.onCaptureChunk = (worker, chunk) => {
      for (const run of this.running) if (run.remote?.id === chunk.id) run.remote.received(worker, chunk);
    };
  }

  stats(): CaptureStatsView {
    let captured = this.capturedBefore;
    let lost = this.lostBefore;
    for (const run of this.running) {
      captured += run.session.admitted - run.session.pending + (run.remote?.captured ?? 0);
      lost += run.session.lostTotal + (run.remote?.lostTotal ?? 0);
    }
    return { running: this.running.size, captured, lost };
  }

  /** Starts a capture of `ports`/`legs` into `output`; resolves when it has ended. */
  start(ports: readonly string[], legs: CaptureLegs, count: number, output: CaptureOutput, ringBytes?: number): { done: Promise<CaptureSummary>; stop: () => void } | string {
    const refusal = this.refusal(ports, legs);
    if (refusal !== undefined || this.forwarder === undefined) return refusal ?? "no forwarder";
    const config = this.config();
    const interfaces = this.interfacesOf(ports, legs) as CaptureInterface[];
    const ring = ringBytes === undefined ? {} : { bytes: ringBytes, records: Math.max(16, Math.min(8192, Math.floor(ringBytes / 64))) };
    const session = new CaptureSession(interfaces, config.ports.length * 2, count, ring);
    let stopping = false;
    const id = this.nextId++;
    const reached = this.workers?.broadcast(captureStartMessage(id, interfaces, config.ports.length * 2, ringBytes));
    const remote = reached === undefined ? undefined : new RemoteCapture(id, reached, interfaces.length);
    const run: RunningCapture = {
      session,
      remote,
      stop: () => {
        stopping = true;
        session.close();
      },
      done: this.drive(session, output, () => stopping, remote, count),
    };
    this.running.add(run);
    this.tap.add(session);
    this.forwarder.setCapture(this.tap);
    void run.done.finally(() => {
      this.running.delete(run);
      this.tap.remove(session);
      if (this.tap.empty) this.forwarder?.setCapture(null);
      this.capturedBefore += session.admitted - session.pending + (remote?.captured ?? 0);
      this.lostBefore += session.lostTotal + (remote?.lostTotal ?? 0);
    });
    return run;
  }

  /**
   * `qnat capture`'s request: a refusal (unknown port, too many captures), or an answer that takes
   * the control connection over and streams the capture on it until it ends.
   */
  answer(request: CaptureRequest): ControlTakeover | ControlResponse {
    const refusal = this.refusal(request.ports, request.leg);
    if (refusal !== undefined) return { ok: false, error: refusal };
    const legs = request.leg === "both" ? "wire and mirror legs" : `${request.leg} leg`;
    return {
      ok: true,
      text: `capturing ${request.ports.join(", ")} (${legs})`,
      takeover: async (socket) => {
        const started = this.start(request.ports, request.leg, request.count, new SocketCaptureOutput(socket), request.ringBytes);
        if (typeof started === "string") return;
        await started.done;
      },
    };
  }

  /** Why a capture of `ports`/`legs` cannot start now, or undefined. */
  private refusal(ports: readonly string[], legs: CaptureLegs): string | undefined {
    if (this.forwarder === undefined) return "this router does not capture (pass-through mode)";
    if (this.running.size >= MAX_CAPTURES) return `too many captures running (at most ${MAX_CAPTURES})`;
    const interfaces = this.interfacesOf(ports, legs);
    return typeof interfaces === "string" ? interfaces : undefined;
  }

  private interfacesOf(ports: readonly string[], legs: CaptureLegs): CaptureInterface[] | string {
    const config = this.config();
    return captureInterfaces(
      config.ports.map((p) => ({ name: p.name, ethernet: p.wire.mode === "tap", wireNamespace: p.wire.namespace, wireDevice: p.wire.device })),
      config.namespace,
      ports,
      legs,
    );
  }

  /** The config's `capture:`, from the router's start until it stops or its count is reached. */
  startFromConfig(capture: CaptureConfig): void {
    const output = new FileCaptureOutput(capture.file, capture.rotate);
    const started = this.start(capture.ports, capture.leg, capture.count, output);
    if (typeof started === "string") {
      this.log(`qnat: capture: ${started}`);
      return;
    }
    this.log(`qnat:   capturing ${capture.ports.join(", ")} (${capture.leg}) to ${capture.file}`);
    void started.done.then((summary) => {
      const failure = output.writer.error;
      this.log(`qnat: capture to ${capture.file} ended: ${summary.captured} packets captured, ${summary.lost} lost${failure !== undefined ? `; write error: ${failure.message}` : ""}`);
    });
  }

  /**
   * Ends every capture (the router stops): each writes what its ring holds and its statistics,
   * and closes; a reader that takes nothing does not hold the stop up for more than `limitMs`.
   */
  async stopAll(limitMs = 1000): Promise<void> {
    const runs = [...this.running];
    for (const run of runs) run.stop();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, limitMs)));
    await Promise.race([Promise.all(runs.map((run) => run.done)), late]);
    clearTimeout(timer);
  }

  private async drive(session: CaptureSession, output: CaptureOutput, stopping: () => boolean, remote: RemoteCapture | undefined, count: number): Promise<CaptureSummary> {
    let captured = 0;
    const cache = new CommentCache();
    let composedFor: Dataplane | undefined;
    /** With workers: when the workers were told to stop (their last chunks are awaited a while). */
    let workersStoppedAt = -1;
    const lost = (): number => session.lostTotal + (remote?.lostTotal ?? 0);
    try {
      output.write(captureHeader(session.interfaces));
      for (;;) {
        if (output.gone) return { captured, lost: lost() };
        if (stopping() || (output instanceof SocketCaptureOutput && output.ended)) session.close();
        if (remote !== undefined && session.closed && workersStoppedAt < 0) {
          this.workers?.broadcast({ type: "capture-stop", id: remote.id });
          workersStoppedAt = performance.now();
        }
        const before = session.pending;
        // A live change brings a new dataplane, perhaps other rules: comments are composed anew.
        const dataplane = this.dataplane();
        if (dataplane !== composedFor) cache.clear();
        composedFor = dataplane;
        // The workers' last chunks count as in only once merged (they arrive between two awaits).
        const workersComplete = remote === undefined || remote.complete;
        const workersDone = workersComplete || (workersStoppedAt >= 0 && performance.now() - workersStoppedAt > WORKER_STOP_WAIT_MS);
        // Between two batches of this thread: every packet it captured before now is in the ring.
        const drainedAt = nowMicroseconds();
        let blocks = drainSession(session, commentContextOf(dataplane), DRAIN_BUDGET, cache);
        const last = session.finished && workersDone;
        if (remote === undefined) captured += before - session.pending;
        else {
          // The workers' packets join the main thread's in time order (worker-capture.ts: a
          // packet waits until every thread has sent all older ones); the count holds for them all.
          const merged = remote.merge(blocks, count > 0 ? count - captured : Infinity, { drainedAt, caughtUp: session.pending === 0 }, last);
          blocks = merged.blocks;
          captured += merged.packets;
          if (count > 0 && captured >= count) session.close();
        }
        if (blocks.length > 0 && !output.write(blocks)) await output.drained();
        if (last) break;
        if (session.pending === 0) await sleep(DRAIN_IDLE_MS);
        else await nextTurn();
      }
      if (!output.gone) output.write(captureStatistics(session, remote));
      return { captured, lost: lost() };
    } finally {
      session.close();
      if (remote !== undefined && workersStoppedAt < 0) this.workers?.broadcast({ type: "capture-stop", id: remote.id });
      await output.close();
    }
  }
}
