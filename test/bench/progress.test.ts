/**
 * The benchmarks' progress line (bench/lib/progress.ts): on a terminal it is one line redrawn in
 * place and lifted off for every log line; anywhere else (a pipe, a file, CI) it writes nothing,
 * so the benchmarks' output is what it was.
 */
import { describe, expect, it } from "vitest";
import { ProgressLine } from "../../bench/lib/progress.js";

function stream(isTTY: boolean): { isTTY: boolean; columns: number; written: string[]; write(text: string): void } {
  const written: string[] = [];
  return { isTTY, columns: 60, written, write: (text: string) => void written.push(text) };
}

describe("a benchmark's progress line", () => {
  it("on a terminal: each step redraws one line, a log line lifts it off and puts it back, done() erases it", () => {
    const terminal = stream(true);
    const logged: string[] = [];
    const progress = new ProgressLine("bench:e2e", 3, terminal);
    progress.step("qnat: iperf3 TCP 5 s");
    expect(terminal.written).toEqual(["\r\x1b[Kbench:e2e [1/3] 0:00 qnat: iperf3 TCP 5 s (0:00)"]);
    progress.print(() => logged.push("  iperf3 TCP 5 s"));
    expect(logged).toEqual(["  iperf3 TCP 5 s"]);
    expect(terminal.written.slice(1)).toEqual(["\r\x1b[K", "\r\x1b[Kbench:e2e [1/3] 0:00 qnat: iperf3 TCP 5 s (0:00)"]);
    progress.step("a label long enough to be cut at the terminal's sixty columns, not wrapped");
    expect(terminal.written.at(-1)!.length).toBe("\r\x1b[K".length + 59);
    progress.done();
    expect(terminal.written.at(-1)).toBe("\r\x1b[K");
    progress.print(() => logged.push("wrote bench/results/latest.json"));
    expect(terminal.written.at(-1)).toBe("\r\x1b[K");
  });

  it("anywhere else it writes nothing, and log lines are written as before", () => {
    const pipe = stream(false);
    const logged: string[] = [];
    const progress = new ProgressLine("bench", 6, pipe);
    progress.step("route lookups");
    progress.print(() => logged.push("route lookups"));
    progress.tick();
    progress.done();
    expect(pipe.written).toEqual([]);
    expect(logged).toEqual(["route lookups"]);
  });

  it("says how long the run and the step have taken", () => {
    const progress = new ProgressLine("bench", 6, stream(false));
    progress.step("new connections");
    expect(progress.text(Date.now() + 75_000)).toBe("bench [1/6] 1:15 new connections (1:15)");
  });
});
