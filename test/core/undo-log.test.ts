/**
 * The undo journal: words saved before each store while it records come back, newest first, so
 * each array is exactly as it was when recording began — however often a word was written.
 */
import { describe, expect, it } from "vitest";
import { UndoLog } from "../../src/core/undo-log.js";

describe("UndoLog", () => {
  it("puts back every word written while recording, a word written twice to its first value", () => {
    const log = new UndoLog();
    const a = new Int32Array([1, 2, 3, 4]);
    const b = new Int32Array(300).fill(7);
    const na = log.register(a);
    const nb = log.register(b);
    const write = (n: number, array: Int32Array, at: number, value: number): void => {
      if (log.recording) log.save(n, at, array[at]!);
      array[at] = value;
    };
    write(na, a, 0, 100); // before recording: kept
    log.begin();
    write(na, a, 1, -5);
    write(na, a, 1, -6);
    for (let i = 0; i < 300; i++) write(nb, b, i, i); // grows the journal past its first buffer
    expect(log.savedWords).toBe(302);
    log.undo();
    expect([...a]).toEqual([100, 2, 3, 4]);
    expect(b.every((v) => v === 7)).toBe(true);
    expect(log.recording).toBe(false);
    write(na, a, 2, 9); // after undo: kept, nothing saved
    expect(log.savedWords).toBe(0);
    expect([...a]).toEqual([100, 2, 9, 4]);
  });

  it("covers the registered arrays and the views over them", () => {
    const log = new UndoLog();
    const words = new Int32Array(8);
    const doubles = new Float64Array(words.buffer);
    log.register(words, doubles);
    expect(log.covered).toEqual([words, doubles]);
  });
});
