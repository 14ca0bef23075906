/**
 * Keeps a running router's connections in its state file (config `state: { file, interval }`;
 * the format is state-file.ts): reads them back when the router starts, writes them every
 * `interval` seconds while it runs and once more when it stops (SIGTERM/SIGINT).
 *
 * A write is atomic, as a careful database writes its files: the snapshot goes to a temporary
 * file in the same directory (`.NAME.PID.N.tmp`), is fsync'ed, renamed over the state file, and
 * the directory is fsync'ed so the rename itself survives a power cut. A router killed in the
 * middle leaves the previous file whole (and a temporary file, removed at the next start).
 *
 * While the router runs, a snapshot is taken in pieces of about a millisecond between batches
 * (SnapshotCursor) and written by libuv's thread pool, so forwarding waits at most one piece; a
 * save is skipped when no packet arrived since the last one (the file's timeouts are relative to
 * its saved-at time, so it stays right). At stop the router has stopped reading and the snapshot
 * is taken in large pieces.
 *
 * A file that is not a qnat state file at all (wrong magic) is never written over: it may be
 * something else the path was pointed at by mistake. Every other failure (no directory, no
 * permission, a directory in the file's place) is logged once, counted, and retried next time.
 */
import { mkdirSync, readdirSync, unlinkSync } from "node:fs";
import { open, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { StateConfig } from "../config/config.js";
import type { Dataplane } from "../dataplane/pipeline.js";
import { PortCounter } from "../dataplane/pipeline.js";
import {
  STATE_FLAG_AT_STOP,
  SNAPSHOT_BUDGET,
  STOP_BUDGET,
  SnapshotCursor,
  crc32,
  describeRestore,
  encodeHeader,
  restoreState,
  type RestoreOptions,
  type RestoreReport,
  type SnapshotBudget,
} from "./state-file.js";

/** `qnat show stats` / `--json`: what the state file holds and how saving goes. */
export interface StateStatsView {
  readonly file: string;
  readonly interval: number;
  /** What the start found in the file. */
  readonly restore: RestoreReport;
  readonly saves: number;
  /** Saves skipped because no packet arrived since the last one. */
  readonly unchanged: number;
  readonly failures: number;
  /** The last failure, while saving fails. */
  readonly error?: string;
  readonly last?: {
    readonly at: string;
    readonly entries: number;
    readonly bytes: number;
    /** From the first piece to the rename, ms. */
    readonly ms: number;
    /** The longest piece: how long the packet loop waited at most, ms. */
    readonly longestPieceMs: number;
    readonly pieces: number;
  };
}

/** Thrown inside a save that a newer one replaced. */
class Superseded extends Error {}

export interface StateKeeperOptions extends RestoreOptions {
  readonly log: (line: string) => void;
  /** Budget of a running router's snapshot pieces (default SNAPSHOT_BUDGET). */
  readonly budget?: SnapshotBudget;
}

export class StateKeeper {
  private restored: RestoreReport | undefined;
  private saves = 0;
  private unchanged = 0;
  private failures = 0;
  private lastError: string | undefined;
  private last: StateStatsView["last"];
  private timer: NodeJS.Timeout | undefined;
  /** Sequence number of the save in progress (a newer one supersedes it). */
  private sequence = 0;
  private running: Promise<void> | undefined;
  /** Packets seen at the last save (a save with none since is skipped). */
  private savedFingerprint = -1;
  /** Set when the file is not a qnat state file: nothing is written over it. */
  private foreign = false;
  private readonly wallClock: () => number;
  /** The router's dataplane now. */
  private readonly current: () => Dataplane;

  /**
   * `dataplane`: the router's, or a function returning the current one (a live change replaces
   * the dataplane and keeps its connection table).
   */
  constructor(
    readonly config: StateConfig,
    dataplane: Dataplane | (() => Dataplane),
    private readonly options: StateKeeperOptions,
  ) {
    this.wallClock = options.wallClock ?? Date.now;
    this.current = typeof dataplane === "function" ? dataplane : () => dataplane;
  }

  /** Reads the file back into the (empty) table, logs one line about it, and starts the interval. */
  start(): RestoreReport {
    const { file } = this.config;
    this.removeStaleTemporaries();
    const report = restoreState(this.current(), file, this.options);
    this.restored = report;
    this.foreign = report.outcome === "refused" && report.warning === "not a qnat state file";
    this.options.log(describeRestore(report) + (this.foreign ? `; it is not written over: move it away or set another state.file` : ""));
    this.timer = setInterval(() => {
      if (this.running === undefined) void this.save(false, this.options.budget ?? SNAPSHOT_BUDGET);
    }, this.config.interval * 1000);
    this.timer.unref();
    return report;
  }

  /** Saves once now (unless no packet arrived since the last save); resolves when it is on disk. */
  saveNow(budget: SnapshotBudget = this.options.budget ?? SNAPSHOT_BUDGET): Promise<void> {
    return this.save(false, budget);
  }

  /**
   * The router stopped reading: stops the interval, supersedes a save in progress and writes the
   * final snapshot. Resolves when it is on disk (or failed, logged).
   */
  async stop(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    await this.save(true, STOP_BUDGET);
  }

  view(): StateStatsView {
    return {
      file: this.config.file,
      interval: this.config.interval,
      restore: this.restored ?? { file: this.config.file, outcome: "absent", saved: 0, restored: 0, dropped: {} },
      saves: this.saves,
      unchanged: this.unchanged,
      failures: this.failures,
      ...(this.lastError !== undefined ? { error: this.lastError } : {}),
      ...(this.last !== undefined ? { last: this.last } : {}),
    };
  }

  /** Packets received on every leg so far: unchanged means no connection moved. */
  private fingerprint(): number {
    const counters = this.current().portCounters;
    const stride = PortCounter.Count as number;
    let packets = 0;
    for (let at = 0; at < counters.length; at += stride) packets += counters[at + PortCounter.RxPackets]! + counters[at + PortCounter.MirrorRxPackets]!;
    return packets;
  }

  private save(atStop: boolean, budget: SnapshotBudget): Promise<void> {
    if (this.foreign) return Promise.resolve();
    const fingerprint = this.fingerprint();
    if (!atStop && fingerprint === this.savedFingerprint && this.lastError === undefined) {
      this.unchanged++;
      return Promise.resolve();
    }
    const sequence = ++this.sequence;
    const run = this.write(sequence, atStop, budget).then(
      (took) => {
        this.savedFingerprint = fingerprint;
        this.saves++;
        this.last = took;
        if (this.lastError !== undefined) this.options.log(`qnat: state: saving to ${this.config.file} works again`);
        this.lastError = undefined;
      },
      (error: unknown) => {
        if (error instanceof Superseded) return;
        this.failures++;
        const message = describeFailure(error);
        // Logged once: again only when the reason changes (or after it worked meanwhile).
        if (message !== this.lastError) this.options.log(`qnat: state: cannot save to ${this.config.file}: ${message} (the router goes on; retrying every ${this.config.interval} s)`);
        this.lastError = message;
      },
    );
    const tracked = run.finally(() => {
      if (this.running === tracked) this.running = undefined;
    });
    this.running = tracked;
    return tracked;
  }

  /** One atomic write of a snapshot; resolves with its figures. */
  private async write(sequence: number, atStop: boolean, budget: SnapshotBudget): Promise<NonNullable<StateStatsView["last"]>> {
    const { file } = this.config;
    const directory = dirname(file);
    const started = performance.now();
    const savedAt = this.wallClock();
    const dataplane = this.current();
    const cursor = new SnapshotCursor(dataplane, budget);
    const piece = Buffer.alloc(cursor.pieceBytes);
    mkdirSync(directory, { recursive: true, mode: 0o700 });
    const temporary = join(directory, `.${basename(file)}.${process.pid}.${sequence}.tmp`);
    const handle = await open(temporary, "w", 0o600);
    let renamed = false;
    let position = cursor.layout.bytes;
    try {
      let crc = 0;
      while (!cursor.done) {
        if (sequence !== this.sequence) throw new Superseded();
        const bytes = cursor.fill(piece);
        if (bytes > 0) {
          crc = crc32(piece.subarray(0, bytes), crc);
          await handle.write(piece, 0, bytes, position);
          position += bytes;
        } else if (!atStop) {
          // A sparse stretch of the table: still give the packet loop its turn.
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
      const table = dataplane.conntrack;
      const counters = table.counters as unknown as Record<string, number>;
      const header = encodeHeader(cursor.layout, {
        count: cursor.count,
        savedAt,
        flags: atStop ? STATE_FLAG_AT_STOP : 0,
        bodyCrc: crc,
        counterValues: cursor.layout.counters.map((name) => counters[name] ?? 0),
      });
      await handle.write(header, 0, header.length, 0);
      await handle.sync();
      await handle.close();
      if (sequence !== this.sequence) throw new Superseded();
      await rename(temporary, file);
      renamed = true;
      await syncDirectory(directory);
    } catch (error) {
      await handle.close().catch(() => undefined);
      if (!renamed) await unlink(temporary).catch(() => undefined);
      throw error;
    }
    return {
      at: new Date(savedAt).toISOString(),
      entries: cursor.count,
      bytes: position,
      ms: performance.now() - started,
      longestPieceMs: cursor.longestPieceMs,
      pieces: cursor.pieces,
    };
  }

  /** Temporary files of routers killed while saving (their pid no longer runs). */
  private removeStaleTemporaries(): void {
    const directory = dirname(this.config.file);
    const prefix = `.${basename(this.config.file)}.`;
    let names: string[];
    try {
      names = readdirSync(directory);
    } catch {
      return;
    }
    for (const name of names) {
      const match = name.startsWith(prefix) ? /^(\d+)\.\d+\.tmp$/.exec(name.slice(prefix.length)) : null;
      if (match === null) continue;
      const pid = Number(match[1]);
      if (pid !== process.pid && processRuns(pid)) continue;
      try {
        unlinkSync(join(directory, name));
      } catch {
        // someone else's to clean up
      }
    }
  }
}

/** A failure without the temporary file's name (which changes every time): `rename: ENOTEMPTY`. */
function describeFailure(error: unknown): string {
  const failure = error as NodeJS.ErrnoException;
  if (typeof failure?.code === "string") return `${failure.syscall ?? "I/O"}: ${failure.code}`;
  return error instanceof Error ? error.message : String(error);
}

/** fsync of a directory: makes a rename in it durable (rename(2) alone may be lost in a crash). */
async function syncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** `qnat show stats` lines about the state file. */
export function formatStateStats(view: StateStatsView): string[] {
  const r = view.restore;
  const lines = [`state: ${view.file}, saved every ${view.interval} s: ${view.saves} saves, ${view.unchanged} skipped (no packets), ${view.failures} failed`];
  if (r.outcome === "restored") {
    const drops = Object.entries(r.dropped).map(([name, n]) => `${name}=${n}`);
    lines.push(`    restored ${r.restored} of ${r.saved} at start (down ${r.downSeconds!.toFixed(1)} s); dropped: ${drops.join(" ")}`);
  } else if (r.outcome === "refused") {
    lines.push(`    at start: ${r.warning}; started with an empty table`);
  } else {
    lines.push("    at start: no file yet");
  }
  if (view.last !== undefined) {
    const l = view.last;
    lines.push(`    last save ${l.at}: ${l.entries} entries, ${l.bytes} bytes, ${l.ms.toFixed(1)} ms in ${l.pieces} pieces (longest ${l.longestPieceMs.toFixed(2)} ms)`);
  }
  if (view.error !== undefined) lines.push(`    saving fails: ${view.error}`);
  return lines;
}
