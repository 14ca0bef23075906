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
 */
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";
import type * as Scenario from "./lib/scenario.js";

const [oldTree, newTree, workload, secondsArg, flowsArg] = process.argv.slice(2);
if (oldTree === undefined || newTree === undefined || !["e64", "e1m", "inbound", "new", "e64shared"].includes(workload ?? "")) {
  process.stderr.write("usage: compare-trees.js OLD_TREE NEW_TREE e64|e1m|inbound|new|e64shared [seconds] [flows]\n");
  process.exit(2);
}
const seconds = Number(secondsArg ?? 10);

/** One batch of the workload per call, in `tree`'s code. */
async function workloadOf(tree: string): Promise<() => void> {
  const s = (await import(pathToFileURL(resolve(tree, "dist/bench/lib/scenario.js")).href)) as typeof Scenario;
  let next = 0;
  if (workload === "new") {
    const { router, template, driver } = s.newConnectionWorkload(131_072);
    return () => {
      driver.run(template.views[next]!, s.TENANT_PORT);
      if (++next === template.batches) {
        next = 0;
        router.clock.offset += 31;
      }
    };
  }
  const count = flowsArg !== undefined ? Number(flowsArg) : workload === "e1m" ? 1_000_000 : 65_536;
  const router = s.seedRouter(Math.max(262_144, Math.ceil(count * 1.05)), false, workload === "e64shared" ? { sharable: true } : {});
  const inbound = workload === "inbound";
  const packets = inbound ? s.establishInboundTcp(router, s.inboundFlows(count, 0xbeef)) : s.establishTenantFlows(router, s.tenantFlows(count, 0xc0ffee));
  const template = new s.PacketTemplate(packets, s.shuffled(count, inbound ? 0xfeed : 0x5eed));
  const driver = new s.Driver(router.dataplane);
  const port = inbound ? s.GATEWAY_PORT : s.TENANT_PORT;
  return () => {
    driver.run(template.views[next]!, port);
    if (++next === template.batches) next = 0;
  };
}

const runOld = await workloadOf(oldTree);
const runNew = await workloadOf(newTree);
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
