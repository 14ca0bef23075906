/**
 * Profiling helper (not part of `npm run bench`): replays the new-connection workload of
 * hotpath.ts (first packets of distinct UDP flows, the clock moved on between rounds so each
 * round's entries have expired) in a plain loop for `node --cpu-prof`. Usage:
 *   node --cpu-prof dist/bench/profile-new.js [seconds]
 */
import { BATCH, TENANT_PORT, newConnectionWorkload, runTimed } from "./lib/scenario.js";

const seconds = Number(process.argv[2] ?? 5);
const { router, template, driver } = newConnectionWorkload(131_072);
let next = 0;
runTimed(seconds, BATCH, 1e3, "k connections/s", () => {
  driver.run(template.views[next]!, TENANT_PORT);
  if (++next === template.batches) {
    next = 0;
    router.clock.offset += 31;
  }
});
