/**
 * One workload of one built qnat tree, alone in this process (bench/defences.ts runs it once per
 * tree and round): warms up, then forwards for `seconds` and prints one JSON line,
 * `{"workload": ..., "rate": packets per second of CPU time}`. CPU time (`process.cpuUsage`), not
 * the wall clock, so time spent descheduled on a busy machine is not counted. Usage:
 *   node dist/bench/tree-rate.js TREE e64|e1m|inbound|new|e64shared [seconds]
 */
import { isTreeWorkload, loadTreeWorkload } from "./lib/tree-workload.js";

const [tree, workload, secondsArg] = process.argv.slice(2);
if (tree === undefined || !isTreeWorkload(workload)) {
  process.stderr.write("usage: tree-rate.js TREE e64|e1m|inbound|new|e64shared [seconds]\n");
  process.exit(2);
}
const seconds = Number(secondsArg ?? 4);
const { step, packets } = await loadTreeWorkload(tree, workload);
// optimised code must exist before the clock starts
for (let i = 0; i < 3000; i++) step();
const start = process.cpuUsage();
const end = performance.now() + seconds * 1000;
let steps = 0;
while (performance.now() < end) {
  for (let k = 0; k < 32; k++) step();
  steps += 32;
}
const used = process.cpuUsage(start);
process.stdout.write(JSON.stringify({ workload, rate: (steps * packets) / ((used.user + used.system) / 1e6) }) + "\n");
