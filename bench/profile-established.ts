/**
 * Profiling helper (not part of `npm run bench`): replays established SNAT flows through
 * Dataplane.processBatch in a plain loop for `node --cpu-prof`. Usage:
 *   node --cpu-prof dist/bench/profile-established.js [flows] [seconds]
 */
import { BATCH, Driver, PacketTemplate, TENANT_PORT, establishTenantFlows, runTimed, seedRouter, shuffled, tenantFlows } from "./lib/scenario.js";

const flows = Number(process.argv[2] ?? 65_536);
const seconds = Number(process.argv[3] ?? 5);
const router = seedRouter(Math.max(262_144, Math.ceil(flows * 1.05)));
const packets = establishTenantFlows(router, tenantFlows(flows, 0xc0ffee));
const template = new PacketTemplate(packets, shuffled(flows, 0x5eed));
const driver = new Driver(router.dataplane);
// `noprefetch` as third argument: compare without the batch prefetch.
if (process.argv[4] === "noprefetch") router.dataplane.established.prefetch = () => {};
let next = 0;
runTimed(seconds, BATCH, 1e6, "Mpps", () => {
  driver.run(template.views[next]!, TENANT_PORT);
  if (++next === template.batches) next = 0;
});
