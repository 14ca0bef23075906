/**
 * The lock of a table set that several threads share (the conntrack table and the NAT's
 * by-source index in SharedArrayBuffers, docs/multi-core.md "Shared tables"): one mutex word,
 * taken with Atomics.compareExchange, a short spin, then Atomics.wait until the holder's
 * Atomics.notify — Ulrich Drepper's "Futexes Are Tricky" mutex 2 (0 free, 1 held, 2 held with
 * sleepers), the shape of glibc's lowlevellock and Linux's own futex-based mutexes.
 *
 * Re-entrant for the thread that holds it (owner = its worker_threads threadId + 1, and a
 * depth): `qnat trace` and `conntrack -D` on the main thread take the lock, then call code (the
 * pipeline's processBatch, the table's remove) that takes it again.
 *
 * Memory order: every Atomics operation is sequentially consistent, so the plain stores a
 * holder made to the tables before its releasing Atomics.exchange happen before the plain loads
 * of the next holder after its acquiring compareExchange/exchange (ECMAScript memory model,
 * synchronizes-with). A thread that reads the tables without the lock has no such edge.
 *
 * The words (`TABLE_LOCK_WORDS` Int32 words): [0] state, [1] owner (threadId + 1, 0: none),
 * [2] depth (written only by the owner), [3] the lock-free readers' epoch: odd while a holder
 * writes the tables in a way their per-entry sequence words do not show (a trace and its undo,
 * conntrack/table.ts `excludeLockFree`), so that every lock-free read overlapping it is refused.
 */
import { threadId } from "node:worker_threads";

export const TABLE_LOCK_WORDS = 4;
const STATE = 0;
const OWNER = 1;
const DEPTH = 2;
/** Index of the lock-free readers' epoch in the words (conntrack/table.ts reads it directly). */
export const TABLE_LOCK_EPOCH = 3;
const EPOCH = TABLE_LOCK_EPOCH;
const FREE = 0;
const HELD = 1;
const HELD_WITH_SLEEPERS = 2;
/**
 * Loads (and compareExchange tries) before sleeping: about 0.1 ms at ~10 ns a try, two batches'
 * hold of the lock (a batch of 256 established packets takes ~40 µs). Sleeping is the expensive
 * way: the release must then Atomics.notify, a futex wake of the sleeper, and once one thread took
 * the lock by the sleeping path every release notifies (the word stays 2, Drepper's mutex 2); on a
 * loaded machine each wake also hands the core to the woken thread. Measured (docs/multi-core.md):
 * with 200 spins two workers slept on nearly every hand-over.
 */
const SPINS = 10_000;

/** This thread's owner id (main thread: 1). */
const SELF = threadId + 1;

export class TableLock {
  /** Times `acquire` found the lock held by another thread (this object's count). */
  contended = 0;

  /** `words`: TABLE_LOCK_WORDS Int32 words of a SharedArrayBuffer, zero when no one holds it. */
  constructor(readonly words: Int32Array) {
    if (words.length < TABLE_LOCK_WORDS || !(words.buffer instanceof SharedArrayBuffer)) {
      throw new RangeError(`a table lock needs ${TABLE_LOCK_WORDS} words of a SharedArrayBuffer`);
    }
  }

  /** Takes the lock (again, when this thread holds it). */
  acquire(): void {
    const w = this.words;
    // Only this thread ever writes SELF into OWNER, and it clears it before releasing: reading
    // SELF means this thread holds the lock.
    if (Atomics.load(w, OWNER) === SELF) {
      w[DEPTH]!++;
      return;
    }
    if (Atomics.compareExchange(w, STATE, FREE, HELD) !== FREE) this.contend();
    Atomics.store(w, OWNER, SELF);
    w[DEPTH] = 1;
  }

  /** Gives back one `acquire`; the last one frees the lock and wakes one sleeper. */
  release(): void {
    const w = this.words;
    if (--w[DEPTH]! > 0) return;
    Atomics.store(w, OWNER, 0);
    if (Atomics.exchange(w, STATE, FREE) === HELD_WITH_SLEEPERS) Atomics.notify(w, STATE, 1);
  }

  /** The lock-free readers' epoch (even: lock-free reads may go on). */
  epoch(): number {
    return Atomics.load(this.words, EPOCH);
  }

  /** Makes the epoch odd (call holding the lock); lock-free reads started before or during fail their check. */
  excludeLockFree(): void {
    Atomics.add(this.words, EPOCH, 1);
  }

  /** Makes the epoch even again, and different from any value a reader saw before `excludeLockFree`. */
  admitLockFree(): void {
    Atomics.add(this.words, EPOCH, 1);
  }

  /** True while this thread holds the lock. */
  get held(): boolean {
    return Atomics.load(this.words, OWNER) === SELF;
  }

  private contend(): void {
    this.contended++;
    const w = this.words;
    for (let i = 0; i < SPINS; i++) {
      if (Atomics.load(w, STATE) === FREE && Atomics.compareExchange(w, STATE, FREE, HELD) === FREE) return;
    }
    // Mark it "held with sleepers" and sleep until it is free; whoever takes it this way keeps
    // the mark, so its release wakes the next sleeper (Drepper's mutex 2).
    while (Atomics.exchange(w, STATE, HELD_WITH_SLEEPERS) !== FREE) Atomics.wait(w, STATE, HELD_WITH_SLEEPERS);
  }
}
