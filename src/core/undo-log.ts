/**
 * An undo journal for large Int32Arrays: while it records, every write made through an owner's
 * write helper first saves (array, index, old value); `undo` writes the saved values back in
 * reverse order, which leaves each array exactly as it was when recording began.
 *
 * What it is for: `qnat trace --router` runs one packet through the live dataplane and must
 * change nothing (control/trace.ts). Copying the conntrack table and the NAT's by-source index
 * around every trace costs O(capacity) — 7-45 ms at 262,144 entries, ~200 ms at 1M — with the
 * packet loop waiting; the journal costs O(words the packet writes), a few dozen.
 *
 * Why a word journal and not a copy of each touched record on its first write: the same result
 * (reverse-order replay restores the first saved value of every word), without a "touched" set
 * to look up on each write, and it works unchanged for arrays that are not made of records (hash
 * bucket heads, chain links). A trace writes a few dozen words, so logging a word twice costs
 * nothing that matters.
 *
 * Cost when not recording: the owner's write helper tests `recording` (one load and a branch
 * that is always predicted) before its store. While recording, the journal grows by doubling:
 * allocation happens only then, at control-plane rate.
 *
 * An array that is journaled must be written only through helpers that call `save` first. The
 * owners (conntrack/table.ts, nat/binding.ts) keep their arrays private for that reason, and
 * test/control/trace-random.test.ts fingerprints the whole dataplane around many random traces,
 * so a write that bypasses the journal shows up there.
 */
export class UndoLog {
  /** True between `begin` and `undo`: owners' write helpers call `save` before each store. */
  recording = false;
  private readonly arrays: Int32Array[] = [];
  /** Other views whose memory is one of `arrays` (a Float64Array over a record buffer). */
  private readonly aliases: ArrayBufferView[] = [];
  /** Triples (array number, index, old value). */
  private entries = new Int32Array(0);
  private length = 0;

  /** Adds an array the journal covers; returns its number for `save`. Done once, at construction. */
  register(array: Int32Array, ...aliases: ArrayBufferView[]): number {
    this.arrays.push(array);
    this.aliases.push(...aliases);
    return this.arrays.length - 1;
  }

  /** Every view the journal restores (for state-snapshot.ts to leave out of its copy). */
  get covered(): readonly ArrayBufferView[] {
    return [...this.arrays, ...this.aliases];
  }

  /** Words saved since `begin`. */
  get savedWords(): number {
    return this.length / 3;
  }

  /** Starts recording; anything saved before is forgotten. */
  begin(): void {
    this.length = 0;
    this.recording = true;
  }

  /** Saves word `index` of array `array` before it is overwritten. Call only while `recording`. */
  save(array: number, index: number, old: number): void {
    if (this.length + 3 > this.entries.length) {
      const grown = new Int32Array(Math.max(96, this.entries.length * 2));
      grown.set(this.entries);
      this.entries = grown;
    }
    const e = this.entries;
    e[this.length] = array;
    e[this.length + 1] = index;
    e[this.length + 2] = old;
    this.length += 3;
  }

  /** Stops recording and writes every saved word back, newest first. */
  undo(): void {
    this.recording = false;
    const e = this.entries;
    for (let at = this.length - 3; at >= 0; at -= 3) this.arrays[e[at]!]![e[at + 1]!] = e[at + 2]!;
    this.length = 0;
  }
}
