/**
 * `qnat show routes` in pieces, as the conntrack listing is (conntrack/format.ts): a full Internet
 * table is a million lines, seconds of formatting that must not stop the packet loop, which runs
 * on the same thread. The control socket calls `next()` once per turn of the event loop
 * (control/socket.ts); each call does a bounded amount of work (~1 ms here).
 *
 * Order: the kernel's dump order, as RoutingTable.format (by prefix value, longer first, then the
 * chain's alias order). The listing first gathers the prefixes from the LPM's prefix store a few
 * thousand slots at a time into 256 buckets by first octet, then sorts and formats one bucket's
 * prefixes at a time. Like a kernel dump taken in parts (and conntrack -L), a route added or
 * deleted while the listing runs may or may not appear; every line printed is a route that
 * existed when its piece was made.
 */
import type { RoutingTable } from "./table.js";

/** Prefix-store slots gathered per piece. */
const SLOTS_PER_PIECE = 1 << 15;
/** Prefixes formatted per piece. */
const PREFIXES_PER_PIECE = 1000;

export class RouteListing {
  /** Per first octet: prefixes as prefix * 64 + (32 - length), so a numeric sort is dump order. */
  private readonly buckets: number[][] = Array.from({ length: 256 }, () => []);
  private gatherLength = 0;
  private gatherSlot = 0;
  private bucket = 0;
  private sorted: Float64Array | undefined;
  private at = 0;
  private listed = 0;
  private started = false;
  private finished = false;
  private readonly scratch: number[] = [];

  constructor(
    private readonly table: RoutingTable,
    private readonly form: "text" | "json",
  ) {}

  /** The next piece of output, "" while gathering, undefined after the last. */
  next(): string | undefined {
    if (this.finished) return undefined;
    let text = "";
    if (!this.started) {
      this.started = true;
      if (this.form === "json") text = "[";
    }
    if (this.gatherLength <= 32) {
      this.gather();
      return text;
    }
    let budget = PREFIXES_PER_PIECE;
    const lines: string[] = [];
    while (budget > 0 && this.bucket < 256) {
      if (this.sorted === undefined) {
        this.sorted = Float64Array.from(this.buckets[this.bucket]!).sort();
        this.buckets[this.bucket] = [];
        this.at = 0;
      }
      for (; budget > 0 && this.at < this.sorted.length; this.at++, budget--) {
        const key = this.sorted[this.at]!;
        const down = key % 64;
        for (const route of this.table.routesOf((key - down) / 64, 32 - down)) {
          lines.push(this.form === "json" ? (this.listed++ === 0 ? "" : ",") + JSON.stringify(this.table.routeJson(route)) : this.table.formatRoute(route) + "\n");
        }
      }
      if (this.at >= this.sorted.length) {
        this.sorted = undefined;
        this.bucket++;
      }
    }
    text += lines.join("");
    if (this.bucket >= 256) {
      this.finished = true;
      if (this.form === "json") text += "]\n";
    }
    return text;
  }

  /** Gathers up to SLOTS_PER_PIECE slots of the prefix store into the buckets. */
  private gather(): void {
    const store = this.table.prefixStore;
    let budget = SLOTS_PER_PIECE;
    while (budget > 0 && this.gatherLength <= 32) {
      const length = this.gatherLength;
      const slots = store.prefixSlotCount(length);
      const to = Math.min(slots, this.gatherSlot + budget);
      const found = this.scratch;
      found.length = 0;
      store.prefixesInSlots(length, this.gatherSlot, to, found);
      for (const prefix of found) this.buckets[prefix >>> 24]!.push(prefix * 64 + (32 - length));
      budget -= to - this.gatherSlot;
      this.gatherSlot = to;
      if (to >= slots) {
        this.gatherLength++;
        this.gatherSlot = 0;
      }
    }
  }
}
