/**
 * Captures with `workers: N` (docs/multi-core.md): every worker thread has a tap of its own
 * (io/capture.ts CaptureTap, the same interfaces as the main thread's session) and a ring of its
 * own; off its packet loop it drains the ring into pcapng Enhanced Packet Blocks with their
 * comments (control/capture.ts drainSession) and posts them to the main thread in chunks,
 * transferring their ArrayBuffers. The main thread merges them with its own packets into the one
 * pcapng file in time order: every chunk says how far its worker has sent (`through`: all its
 * packets captured before that time), and a packet is written only once every thread has sent
 * everything older (a watermark merge, as a stream processor merges its sources). So a request one
 * thread forwarded comes before the reply another forwarded, and `-c N` keeps the N oldest. A
 * worker that says nothing for STALE_MS (stopped, failed) no longer holds the others back.
 *
 * Bounded: chunks the main thread has not written yet hold at most MAX_QUEUED_BYTES per capture;
 * a chunk past that (the output is slower than the packets) is counted lost, per worker.
 */
import type { PacketBatch } from "../core/batch.js";
import type { Dataplane } from "../dataplane/pipeline.js";
import { CaptureSession, CaptureTap, nowMicroseconds, type CaptureInterface } from "../io/capture.js";
import type { Forwarder } from "../io/forwarder.js";
import { BLOCK_ENHANCED_PACKET, type PcapngBlock } from "../io/pcapng.js";
import type { FromWorker, ToWorker } from "../io/worker-protocol.js";
import { CommentCache, commentContextOf, drainSession } from "./capture.js";

/** How often a worker drains its captures' rings. */
const WORKER_DRAIN_MS = 10;
/** Packets a worker writes out per chunk. */
const WORKER_CHUNK_PACKETS = 512;
/** Chunks of one capture waiting for the main thread's output, in bytes. */
export const MAX_QUEUED_BYTES = 32 * 1024 * 1024;
/** A worker whose watermark has not moved for this long no longer holds the merge back. */
export const STALE_MS = 250;

type CaptureChunk = Extract<FromWorker, { type: "capture-chunk" }>;
type CaptureStart = Extract<ToWorker, { type: "capture-start" }>;

/** A worker thread's captures: its tap on its forwarder while one runs, null otherwise. */
export class WorkerCaptures {
  private tap: CaptureTap | null = null;
  private readonly sessions = new Map<number, { readonly session: CaptureSession; readonly cache: CommentCache }>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly batchSize: number,
    private forwarder: Forwarder,
    private readonly dataplane: () => Dataplane,
    private readonly post: (message: FromWorker, transfer: ArrayBuffer[]) => void,
    /** Per port: its legs carry Ethernet frames (a tap port), as the main thread's tap knows them. */
    private ethernet: readonly boolean[] = [],
  ) {}

  /** Between two batches: a session of the capture's interfaces on this thread's tap. */
  start(message: CaptureStart): void {
    this.tap ??= new CaptureTap(this.batchSize, this.ethernet);
    const ring = message.ringBytes === undefined ? {} : { bytes: message.ringBytes, records: Math.max(16, Math.min(8192, Math.floor(message.ringBytes / 64))) };
    const session = new CaptureSession(message.interfaces, message.legCount, 0, ring);
    this.sessions.set(message.id, { session, cache: new CommentCache() });
    this.tap.add(session);
    this.forwarder.setCapture(this.tap);
    this.timer ??= setInterval(() => this.flushAll(), WORKER_DRAIN_MS);
  }

  /** Packets that waited for ARP in this thread's neighbour table, as they leave (io/capture.ts `deferred`). */
  deferred(pool: PacketBatch, verdicts: Int32Array, legIndex: number): void {
    this.tap?.deferred(pool, verdicts, legIndex);
  }

  /** The capture ends here: its tap comes off, what its ring holds goes out with `last`. */
  stop(id: number): void {
    const entry = this.sessions.get(id);
    if (entry === undefined) {
      this.post({ type: "capture-chunk", id, blocks: new ArrayBuffer(0), seen: [], lost: [], last: true, through: Infinity }, []);
      return;
    }
    entry.session.close();
    this.tap?.remove(entry.session);
    if (this.tap?.empty === true) this.forwarder.setCapture(null);
    this.flush(id, entry.session, entry.cache, true);
    this.sessions.delete(id);
    if (this.sessions.size === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  /**
   * Ports were added or removed live and this thread forwards with `forwarder` now: the running
   * captures' interfaces are the old legs', so their sessions take no more packets (the main
   * thread ends them, control/capture.ts attach, and `stop` still sends what their rings hold);
   * captures started later tap the new forwarder, with the new ports' `ethernet` (tap or not).
   */
  moveTo(forwarder: Forwarder, ethernet: readonly boolean[]): void {
    for (const { session } of this.sessions.values()) session.close();
    this.tap = null;
    this.forwarder.setCapture(null);
    this.forwarder = forwarder;
    this.ethernet = ethernet;
  }

  /** The worker stops: every capture ends. */
  stopAll(): void {
    for (const id of [...this.sessions.keys()]) this.stop(id);
  }

  private flushAll(): void {
    for (const [id, entry] of this.sessions) this.flush(id, entry.session, entry.cache, false);
  }

  /**
   * Everything in the ring, in chunks; the last says `through` the time the drain began: this
   * runs between two batches of this thread, so every packet captured before then is in the
   * ring. Sent even when there is nothing (the watermark moves).
   */
  private flush(id: number, session: CaptureSession, cache: CommentCache, last: boolean): void {
    const context = commentContextOf(this.dataplane());
    const through = nowMicroseconds();
    do {
      const blocks = drainSession(session, context, WORKER_CHUNK_PACKETS, cache);
      const bytes = blocks[0]?.bytes;
      const buffer = bytes === undefined ? new ArrayBuffer(0) : ownBuffer(bytes);
      const drained = session.pending === 0;
      const done = last && drained;
      this.post({ type: "capture-chunk", id, blocks: buffer, seen: [...session.seen], lost: [...session.lost], last: done, through: drained ? through : 0 }, [buffer]);
      if (drained) return;
    } while (session.pending > 0);
  }
}

/** An ArrayBuffer that holds exactly `bytes` (transferable). */
function ownBuffer(bytes: Buffer): ArrayBuffer {
  if (bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.length && bytes.buffer instanceof ArrayBuffer) return bytes.buffer;
  const copy = new ArrayBuffer(bytes.length);
  new Uint8Array(copy).set(bytes);
  return copy;
}

/** Who the main thread's captures talk to: the worker threads (control/workers.ts). */
export interface CaptureWorkers {
  /** Posts `message` to every running worker; returns the workers it reached. */
  broadcast(message: ToWorker): number[];
  /** Called with every chunk a worker sends. */
  onCaptureChunk: ((worker: number, chunk: CaptureChunk) => void) | null;
}

/** A packet (an Enhanced Packet Block) waiting in the merge, with its time. */
interface HeldPacket {
  readonly bytes: Buffer;
  readonly time: number;
  readonly remote: boolean;
}

/** One capture's packets from the workers, waiting to be merged into the main thread's output. */
export class RemoteCapture {
  private readonly queued: Buffer[] = [];
  private queuedBytes = 0;
  /** Packets of every thread not written yet, oldest first: newer than some thread's watermark. */
  private held: HeldPacket[] = [];
  /** Per worker: how far it has sent (microseconds; Infinity once it sent its last chunk) and when that last moved. */
  private readonly watermarks = new Map<number, { through: number; movedAt: number }>();
  /** Per worker: its seen and lost per interface (its latest totals), and chunks lost here. */
  private readonly seenOf = new Map<number, readonly number[]>();
  private readonly lostOf = new Map<number, readonly number[]>();
  private readonly behindOf = new Map<number, Float64Array>();
  private readonly waiting: Set<number>;
  /** Packets from the workers written out. */
  captured = 0;

  constructor(
    readonly id: number,
    workers: readonly number[],
    private readonly interfaceCount: number,
    /** Milliseconds, for STALE_MS (injected in tests). */
    private readonly clock: () => number = () => performance.now(),
  ) {
    this.waiting = new Set(workers);
    const now = clock();
    for (const worker of workers) this.watermarks.set(worker, { through: 0, movedAt: now });
  }

  /** Every worker sent its last chunk. */
  get complete(): boolean {
    return this.waiting.size === 0;
  }

  received(worker: number, chunk: CaptureChunk): void {
    this.seenOf.set(worker, chunk.seen);
    this.lostOf.set(worker, chunk.lost);
    if (chunk.last) this.waiting.delete(worker);
    const mark = this.watermarks.get(worker);
    const through = chunk.last ? Infinity : chunk.through;
    if (mark !== undefined && through > mark.through) this.watermarks.set(worker, { through, movedAt: this.clock() });
    const bytes = Buffer.from(chunk.blocks);
    if (bytes.length === 0) return;
    if (this.queuedBytes + bytes.length > MAX_QUEUED_BYTES) {
      // The output is behind: this chunk's packets are lost (counted per worker and interface).
      const behind = this.behindOf.get(worker) ?? new Float64Array(this.interfaceCount);
      this.behindOf.set(worker, behind);
      for (let at = 0; at + 12 <= bytes.length; at += bytes.readUInt32LE(at + 4)) {
        const iface = bytes.readUInt32LE(at + 8);
        if (iface < behind.length) behind[iface]! += 1;
      }
      return;
    }
    this.queued.push(bytes);
    this.queuedBytes += bytes.length;
  }

  /** The workers' seen packets per interface. */
  seen(): Float64Array {
    return this.sum([...this.seenOf.values()]);
  }

  /** The workers' lost packets per interface: their rings' and those the main thread could not hold. */
  lost(): Float64Array {
    return this.sum([...this.lostOf.values(), ...this.behindOf.values()]);
  }

  get lostTotal(): number {
    return this.lost().reduce((a, b) => a + b, 0);
  }

  /**
   * The main thread's `blocks` (runs of Enhanced Packet Blocks) and every chunk waiting, joined
   * to the packets held from before, in time order (stable: one thread's packets keep their
   * order); written out are those no thread can still send an older packet than: up to the
   * lowest watermark of the workers and of the main thread (`main`: when its drain began, if it
   * drained everything, else its newest packet drained; absent: no bound). `final`: everything,
   * the capture ends. At most `limit` packets (Infinity: all); past it the rest is dropped.
   */
  merge(
    blocks: readonly PcapngBlock[],
    limit: number,
    main?: { readonly drainedAt: number; readonly caughtUp: boolean },
    final = false,
  ): { blocks: PcapngBlock[]; packets: number; fromWorkers: number } {
    const arrived: HeldPacket[] = [];
    let newestMain = -Infinity;
    const add = (bytes: Buffer, remote: boolean): void => {
      for (let at = 0; at + 28 <= bytes.length; ) {
        const length = bytes.readUInt32LE(at + 4);
        if (length < 28 || at + length > bytes.length) break;
        const time = bytes.readUInt32LE(at + 12) * 0x1_0000_0000 + bytes.readUInt32LE(at + 16);
        // A copy: the drain's buffers are its own to reuse once written.
        arrived.push({ bytes: Buffer.from(bytes.subarray(at, at + length)), time, remote });
        if (!remote && time > newestMain) newestMain = time;
        at += length;
      }
    };
    for (const block of blocks) add(block.bytes, false);
    for (const bytes of this.queued) add(bytes, true);
    this.queued.length = 0;
    this.queuedBytes = 0;
    if (arrived.length > 0) {
      // Array.prototype.sort is stable: held packets and each thread's own keep their order.
      this.held = this.held.concat(arrived).sort((a, b) => a.time - b.time);
    }
    const mainThrough = main === undefined ? Infinity : main.caughtUp ? main.drainedAt : newestMain;
    const bound = final ? Infinity : Math.min(mainThrough, this.workersThrough());
    let ready = 0;
    while (ready < this.held.length && this.held[ready]!.time <= bound) ready++;
    const emitted = this.held.slice(0, Math.min(ready, Math.max(0, limit)));
    this.held = ready >= this.held.length ? [] : this.held.slice(ready);
    if (emitted.length === 0) return { blocks: [], packets: 0, fromWorkers: 0 };
    const fromWorkers = emitted.reduce((n, p) => n + (p.remote ? 1 : 0), 0);
    this.captured += fromWorkers;
    return { blocks: [{ type: BLOCK_ENHANCED_PACKET, bytes: Buffer.concat(emitted.map((p) => p.bytes)) }], packets: emitted.length, fromWorkers };
  }

  /** The lowest watermark of the workers that still send (a stale one, STALE_MS without moving, counts as caught up). */
  private workersThrough(): number {
    const now = this.clock();
    let lowest = Infinity;
    for (const mark of this.watermarks.values()) {
      if (mark.through !== Infinity && now - mark.movedAt < STALE_MS) lowest = Math.min(lowest, mark.through);
    }
    return lowest;
  }

  private sum(rows: readonly ArrayLike<number>[]): Float64Array {
    const total = new Float64Array(this.interfaceCount);
    for (const row of rows) for (let i = 0; i < total.length && i < row.length; i++) total[i]! += row[i]!;
    return total;
  }
}

/** The start message of a capture of `interfaces` for the workers. */
export function captureStartMessage(id: number, interfaces: readonly CaptureInterface[], legCount: number, ringBytes: number | undefined): ToWorker {
  return { type: "capture-start", id, interfaces, legCount, ...(ringBytes !== undefined ? { ringBytes } : {}) };
}
