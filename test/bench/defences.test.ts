/**
 * `npm run bench`'s last part (bench/defences.ts): the defences' cost as the median of the rounds'
 * after/before ratios, judged against the 15 % budget, and a report that says when it could not
 * run. And the per-tree runner it uses (bench/tree-rate.ts) forwards this build's packets.
 */
import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { comparisonOf, defencesMarkdown } from "../../bench/defences.js";

const e64 = { workload: "e64" as const, label: "established UDP with SNAT, 64k flows", unit: "packets/s" };

describe("bench/defences.ts", () => {
  it("takes the median of the rounds' ratios, each round's after over the same round's before", () => {
    // a noisy machine: the before tree's own rate moves from round to round
    const c = comparisonOf(e64, [10e6, 8e6, 9e6], [8.6e6, 7.2e6, 6.3e6]);
    expect(c.ratios.map((r) => Number(r.toFixed(3)))).toEqual([0.86, 0.9, 0.7]);
    expect(c.ratio).toBeCloseTo(0.86, 6);
    expect(c.before).toBe(9e6);
    expect(c.after).toBe(7.2e6);
    expect(c.met).toBe(true);
  });

  it("says the budget is missed below 0.85 and met at it", () => {
    expect(comparisonOf(e64, [1e6], [0.849e6]).met).toBe(false);
    expect(comparisonOf(e64, [1e6], [0.85e6]).met).toBe(true);
  });

  it("reports each workload with its ratio and verdict, or one line saying why it did not run", () => {
    const text = defencesMarkdown([comparisonOf(e64, [9e6], [7e6])], null);
    expect(text).toContain("| established UDP with SNAT, 64k flows | 9.00 M | 7.00 M | 0.78 | 0.78 | **no** |");
    expect(text).toContain("3264a9f");
    const skipped = defencesMarkdown([], "commit 3264a9f is not in this checkout's git history");
    expect(skipped).toContain("Not run: commit 3264a9f is not in this checkout's git history.");
    expect(skipped).not.toContain("| workload |");
  });

  it("tree-rate runs a workload of a built tree alone and prints its rate (dist/, built by pretest)", () => {
    const out = execFileSync(process.execPath, ["dist/bench/tree-rate.js", ".", "new", "0.3"], { encoding: "utf8", timeout: 60_000 });
    const line = JSON.parse(out.trim()) as { workload: string; rate: number };
    expect(line.workload).toBe("new");
    expect(line.rate).toBeGreaterThan(1000);
  });
});
