/**
 * A benchmark's progress line: one line on stderr, redrawn in place (`\r` and erase to the end of
 * the line), saying which step of how many runs and for how long — only when stderr is a
 * terminal, so logs, pipes and CI output stay exactly as they were, and never on stdout, where
 * the results go. Log lines go through `print`, which lifts the progress line off the screen,
 * writes the line and puts it back, so the two never mix.
 */
const ERASE_LINE = "\r\x1b[K";
const REDRAW_MS = 1000;

export interface ProgressStream {
  readonly isTTY?: boolean;
  readonly columns?: number;
  write(text: string): unknown;
}

export class ProgressLine {
  private index = 0;
  private label = "starting";
  private readonly started = Date.now();
  private stepStarted = Date.now();
  private shown = false;
  private timer: NodeJS.Timeout | undefined;
  readonly enabled: boolean;

  constructor(
    private readonly name: string,
    private total: number,
    private readonly stream: ProgressStream = process.stderr,
    enabled = stream.isTTY === true,
  ) {
    this.enabled = enabled;
    if (!enabled) return;
    // Async steps (the end-to-end bench waits on iperf3) get a ticking clock; synchronous ones
    // redraw from `tick()`.
    this.timer = setInterval(() => this.draw(), REDRAW_MS);
    this.timer.unref();
  }

  /** The next step begins. */
  step(label: string): void {
    this.index++;
    if (this.index > this.total) this.total = this.index;
    this.label = label;
    this.stepStarted = Date.now();
    this.draw();
  }

  /** Redraws the line (the elapsed time moves); for callers inside a long synchronous step. */
  tick(): void {
    this.draw();
  }

  /** Writes a log line (`write` does the writing) without mixing it into the progress line. */
  print(write: () => void): void {
    if (this.shown) this.stream.write(ERASE_LINE);
    this.shown = false;
    write();
    this.draw();
  }

  /** Removes the line for good. */
  done(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    if (this.shown) this.stream.write(ERASE_LINE);
    this.shown = false;
  }

  /** The line's text: `bench:e2e [4/10] 1:02 qnat: iperf3 UDP 64-byte 5 s (0:03)`. */
  text(now = Date.now()): string {
    return `${this.name} [${this.index}/${this.total}] ${clock(now - this.started)} ${this.label} (${clock(now - this.stepStarted)})`;
  }

  private draw(): void {
    if (!this.enabled || this.timer === undefined) return;
    const width = this.stream.columns ?? 80;
    const line = this.text();
    this.stream.write(ERASE_LINE + (line.length >= width ? line.slice(0, width - 1) : line));
    this.shown = true;
  }
}

/** 75_000 ms -> "1:15". */
function clock(ms: number): string {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}
