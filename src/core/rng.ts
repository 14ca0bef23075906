/** A seeded xorshift32 generator: port searches and tests are reproducible. */
export interface Rng {
  /** Uniform uint32. */
  next(): number;
}

export class XorShift32 implements Rng {
  private state: number;
  constructor(seed = 0x9e3779b9) {
    this.state = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }
}
