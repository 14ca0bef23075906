/**
 * Profiling helper (not part of `npm run bench`): replays the new-connection workload of
 * hotpath.ts (first packets of distinct UDP flows, the clock moved on between rounds so each
 * round's entries have expired) in a plain loop for `node --cpu-prof`. Usage:
 *   node --cpu-prof dist/bench/profile-new.js [seconds]
 */
import { BATCH, Driver, PacketTemplate, TENANT_PORT, seedRouter, shuffled, tenantFlows, udpPacket } from "./lib/scenario.js";

const seconds = Number(process.argv[2] ?? 5);
const pool = 131_072;
const router = seedRouter(262_144);
const flows = tenantFlows(pool, 0xabcd);
const packets: Uint8Array[] = [];
for (let i = 0; i < pool; i++) packets.push(udpPacket(flows.src[i]!, flows.dst[i]!, flows.sport[i]!, flows.dport[i]!));
const template = new PacketTemplate(packets, shuffled(pool, 0x1234));
const driver = new Driver(router.dataplane);
let next = 0;
const end = performance.now() + seconds * 1000;
let rounds = 0;
let t0 = performance.now();
let lastRounds = 0;
while (performance.now() < end) {
  for (let k = 0; k < 16; k++) {
    driver.run(template.views[next]!, TENANT_PORT);
    if (++next === template.batches) {
      next = 0;
      router.clock.offset += 31;
    }
  }
  rounds += 16;
  const t = performance.now();
  if (t - t0 > 1000) {
    process.stdout.write(`${(((rounds - lastRounds) * BATCH) / ((t - t0) / 1000) / 1e3).toFixed(0)} k connections/s\n`);
    t0 = t;
    lastRounds = rounds;
  }
}
