/**
 * A log line that may repeat (a packet that makes the pipeline throw, a leg that keeps failing)
 * is written at most once per interval; the lines held back in between are counted and the next
 * line says how many, as Linux's net_ratelimit() / printk_ratelimited() report "N callbacks
 * suppressed". Time comes from the caller's clock (seconds), so tests need not wait.
 */
export class RateLimitedLog {
  /** Lines not written since the last one that was. */
  suppressed = 0;
  /** Lines offered in all (written or not). */
  offered = 0;
  private lastAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly sink: (line: string) => void,
    private readonly now: () => number,
    /** Seconds between two written lines. */
    private readonly intervalSeconds = 1,
  ) {}

  /**
   * Offers one line, built by `line()` only when it is written (building it may cost: the
   * callers format a packet summary); returns whether it was written.
   */
  offer(line: () => string): boolean {
    this.offered++;
    const now = this.now();
    if (now - this.lastAt < this.intervalSeconds) {
      this.suppressed++;
      return false;
    }
    this.lastAt = now;
    const held = this.suppressed;
    this.suppressed = 0;
    this.sink(held === 0 ? line() : `${line()} (${held} similar ${held === 1 ? "line" : "lines"} suppressed)`);
    return true;
  }
}
