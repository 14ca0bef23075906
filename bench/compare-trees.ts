/**
 * A/B helper (not part of `npm run bench`) for a shared, noisy machine: runs one hotpath.ts
 * workload of two built trees in ONE process, alternating short blocks of batches between them,
 * and times each block by the process's CPU time (`process.cpuUsage`), not the wall clock. A
 * neighbour's load then slows both trees alike within a pair of blocks, and time the process
 * spends descheduled is not counted; the median of the paired ratios is far steadier than
 * comparing two separate `npm run bench` runs (docs/performance.md, round 5). Usage:
 *   node dist/bench/compare-trees.js OLD_TREE NEW_TREE e64|e1m|inbound|new|e64shared [seconds] [flows]
 * Each tree is a checkout with `npm run build` done (its dist/bench/lib/scenario.js is loaded);
 * run it from a checkout that has examples/seed.yaml. Prints the median rates and new/old.
 * `e64shared` is e64 over sharable tables, one thread: the lock-free established path
 * (docs/multi-core.md), for trees that have it (from 89e5bb3 on). `flows` replaces the established workloads' flow count: a few hundred flows keep every table
 * line in the L1/L2 cache, so the figure is the fast path's instruction cost alone (no memory
 * stalls), a steadier measure of a change in compute than the full-size workloads.
 * The two trees share the process's caches: at full size each block starts on the other tree's
 * leftovers, so a change in a tree's memory footprint is judged against the other's, and the
 * full-size ratios come out higher than with each tree alone (inbound TCP against 3264a9f: 0.72-0.82
 * here, 0.55-0.69 alone). For a figure to quote, bench/defences.ts runs each tree in its own process.
 */
import { isTreeWorkload, loadTreeWorkload } from "./lib/tree-workload.js";

const [oldTree, newTree, workload, secondsArg, flowsArg] = process.argv.slice(2);
if (oldTree === undefined || newTree === undefined || !isTreeWorkload(workload)) {
  process.stderr.write("usage: compare-trees.js OLD_TREE NEW_TREE e64|e1m|inbound|new|e64shared [seconds] [flows]\n");
  process.exit(2);
}
const seconds = Number(secondsArg ?? 10);
const flows = flowsArg !== undefined ? Number(flowsArg) : undefined;

const runOld = (await loadTreeWorkload(oldTree, workload, flows)).step;
const runNew = (await loadTreeWorkload(newTree, workload, flows)).step;
for (let i = 0; i < 3000; i++) {
  runOld();
  runNew();
}
const block = workload === "new" ? 32 : 128;
const cpuSeconds = (run: () => void): number => {
  const start = process.cpuUsage();
  for (let i = 0; i < block; i++) run();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1e6;
};
const oldTimes: number[] = [];
const newTimes: number[] = [];
const ratios: number[] = [];
const end = performance.now() + seconds * 1000;
for (let pair = 0; performance.now() < end; pair++) {
  // alternate which tree goes first, so neither always runs on the other's cache leftovers
  const first = pair & 1 ? runOld : runNew;
  const a = cpuSeconds(first);
  const b = cpuSeconds(first === runOld ? runNew : runOld);
  const oldTime = first === runOld ? a : b;
  const newTime = first === runOld ? b : a;
  oldTimes.push(oldTime);
  newTimes.push(newTime);
  ratios.push(oldTime / newTime);
}
const median = (values: number[]): number => [...values].sort((x, y) => x - y)[values.length >> 1]!;
const rate = (time: number): string => ((block * 256) / time / 1e6).toFixed(3);
process.stdout.write(
  `${workload}: old ${rate(median(oldTimes))} M/s, new ${rate(median(newTimes))} M/s (CPU time), new/old median of ${ratios.length} pairs ${median(ratios).toFixed(3)}\n`,
);
