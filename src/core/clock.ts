/**
 * Time is injected so that five-day conntrack timeouts are tested in milliseconds.
 * `now()` returns seconds as a float (conntrack resolution is whole seconds; ICMP
 * rate limiting uses the fraction).
 */
export interface Clock {
  now(): number;
}

export const systemClock: Clock = {
  now: () => performance.timeOrigin / 1000 + performance.now() / 1000,
};

/** A clock that only moves when a test says so. */
export class ManualClock implements Clock {
  constructor(private seconds = 1_000_000) {}
  now(): number {
    return this.seconds;
  }
  advance(seconds: number): void {
    this.seconds += seconds;
  }
}
