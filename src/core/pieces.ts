/**
 * Control work cut in pieces of about a millisecond, one piece per turn of the event loop, so the
 * packet loop that shares the thread never waits longer than that (the standard of `qnat show`,
 * `conntrack -D` and `qnat apply`). Between pieces the work yields with setImmediate, which runs
 * after the poll phase: the legs' reads and their batches come first.
 */

export interface PieceOptions {
  /** Work per piece in milliseconds (default PIECE_MS). */
  readonly pieceMs?: number;
  /** Waits between two pieces (default: one turn of the event loop, setImmediate). */
  readonly yieldToLoop?: () => Promise<void>;
}

/** Default length of a piece. */
export const PIECE_MS = 1;
/** Steps between two reads of the clock (a step is a few microseconds of work). */
const STEPS_PER_CLOCK_READ = 16;

export function nextTurn(): Promise<void> {
  return new Promise<void>((resolve) => setImmediate(resolve));
}

/**
 * Calls `step()` until it returns true (done), yielding to the event loop whenever a piece has
 * used its time. A step must be short (microseconds, at most a fraction of a piece); whatever it
 * throws ends the work and rejects the promise. Resolves with the number of pieces.
 */
export async function inPieces(step: () => boolean, options: PieceOptions = {}): Promise<number> {
  const pieceMs = options.pieceMs ?? PIECE_MS;
  const yieldToLoop = options.yieldToLoop ?? nextTurn;
  let pieces = 1;
  for (;;) {
    const started = performance.now();
    for (let steps = 1; ; steps++) {
      if (step()) return pieces;
      if (steps % STEPS_PER_CLOCK_READ === 0 && performance.now() - started >= pieceMs) break;
    }
    await yieldToLoop();
    pieces++;
  }
}

/** Calls `visit(i)` for i in [0, count) in pieces (inPieces). */
export function eachInPieces(count: number, visit: (index: number) => void, options: PieceOptions = {}): Promise<number> {
  let index = 0;
  return inPieces(() => {
    if (index >= count) return true;
    visit(index++);
    return false;
  }, options);
}
