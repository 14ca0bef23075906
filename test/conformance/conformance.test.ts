/**
 * The Linux kernel as the oracle: for the seed's router and for the other example routers (two
 * tenant subnets with a smaller gateway MTU; a VXLAN tenant network, MTU 1450, for fragmentation
 * on output; three tenant subnets with six floating IPs on 198.51.100.0/24; MASQUERADE; port
 * forwarding with ranges and --random-fully; a small connection table), the kernel twin
 * and qnat run the same traffic and must agree (harness.ts, scenarios.ts), and on two of them (and
 * in TAP mode) the kernel's own NAT selftests, rewritten (kernel-selftests.ts). Then the property: a
 * few random Neutron-style routers (random-config.ts) from one seed, each with the fast scenarios.
 * The configs run one after the other in this one file, so only two routers share the CPU.
 * Then in TAP mode (Ethernet ports on bridges, harness.ts HarnessMode): the seed's router with the
 * article's MACs (examples/seed-ethernet.yaml, a second VM on br-int in a namespace of its own) and
 * two-subnets.yaml's Ethernet version, with ARP, host unreachable and `!H` compared too.
 *
 * `npm test` runs this whole file twice: as written, and with every qnat router on two threads
 * (vitest.workers.config.ts sets QNAT_CONFORMANCE_WORKERS=2: one queue of every leg each, one
 * shared connection table, a connection's reply possibly on the other worker's queue).
 *
 * `npm run conformance -- [--tap] CONFIG` runs CONFIG alone (QNAT_CONFORMANCE_CONFIG, and
 * QNAT_CONFORMANCE_MODE=tap for its Ethernet version);
 * `npm run conformance -- random` only the property (QNAT_CONFORMANCE_RANDOM=1);
 * `npm run conformance -- --workers N ...` runs every qnat router of the run with `workers: N`
 * (QNAT_CONFORMANCE_WORKERS=N), the TAP suites too (each thread with its own neighbour table,
 * kept in step by relayed ARP: control/ethernet-threads.ts).
 * CONFORMANCE_SEED=0x... replays a property run (alone, unless a CONFIG is given too);
 * QNAT_CONFORMANCE_RANDOM_COUNT sets how many random routers (default 2).
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { ROOT } from "./harness.js";
import { plansWithKernelSelftests } from "./kernel-selftests.js";
import { propertySeeds, randomNeutronConfig } from "./random-config.js";
import { fastPlansFor } from "./scenarios.js";
import { conformanceSuite } from "./suite.js";

const EXAMPLES = ["seed.yaml", "two-subnets.yaml", "mtu-1450.yaml", "three-tenants.yaml", "masquerade.yaml", "port-forwarding.yaml", "small-table.yaml"];
/** Run again in TAP mode: a config that is Ethernet already, and a TUN one's Ethernet version. */
const TAP_EXAMPLES = ["seed-ethernet.yaml", "two-subnets.yaml"];
/** The examples that also run the kernel's own NAT tests (kernel-selftests.ts), as the TAP ones do; small-table.yaml runs only its table limit. */
const WITH_KERNEL_SELFTESTS = new Set(["seed.yaml", "two-subnets.yaml", "small-table.yaml"]);

const chosen = process.env.QNAT_CONFORMANCE_CONFIG;
const seedText = process.env.CONFORMANCE_SEED;
const randomOnly = process.env.QNAT_CONFORMANCE_RANDOM === "1" || (seedText !== undefined && chosen === undefined);

const mode = process.env.QNAT_CONFORMANCE_MODE;
if (mode !== undefined && mode !== "tun" && mode !== "tap") throw new Error(`QNAT_CONFORMANCE_MODE must be tun or tap, not ${mode}`);
const workersText = process.env.QNAT_CONFORMANCE_WORKERS;
if (workersText !== undefined && !/^[1-9]\d*$/.test(workersText)) throw new Error(`QNAT_CONFORMANCE_WORKERS must be a whole number of threads, not ${workersText}`);
/** Every qnat router of the run forwards on this many threads (absent: each config as written). */
const workers = workersText === undefined ? undefined : Number(workersText);
const withWorkers = workers === undefined ? {} : { workers };

if (chosen) conformanceSuite(resolve(chosen), { mode: mode ?? "tun", plans: plansWithKernelSelftests, ...withWorkers });
else if (!randomOnly) {
  for (const example of EXAMPLES) conformanceSuite(join(ROOT, "examples", example), { ...(WITH_KERNEL_SELFTESTS.has(example) ? { plans: plansWithKernelSelftests } : {}), ...withWorkers });
  for (const example of TAP_EXAMPLES) conformanceSuite(join(ROOT, "examples", example), { mode: "tap", plans: plansWithKernelSelftests, ...withWorkers });
}

if (!chosen || seedText !== undefined) {
  if (seedText !== undefined && !/^(0x[0-9a-f]{1,8}|\d+)$/i.test(seedText)) throw new Error(`CONFORMANCE_SEED=${seedText}: give a number (0x1a2b3c4d or decimal)`);
  const runSeed = seedText !== undefined ? Number(seedText) >>> 0 : randomBytes(4).readUInt32BE(0);
  const count = Number(process.env.QNAT_CONFORMANCE_RANDOM_COUNT ?? 2);
  const seedName = `0x${runSeed.toString(16).padStart(8, "0")}`;
  console.log(`qnat conformance: ${count} random routers from CONFORMANCE_SEED=${seedName} (replay: sudo CONFORMANCE_SEED=${seedName} npm run conformance -- random)`);
  const dir = mkdtempSync(join(tmpdir(), "qnat-random-config-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  for (const [i, seed] of propertySeeds(runSeed, count).entries()) {
    const router = randomNeutronConfig(seed);
    const path = join(dir, `random-${router.seed.toString(16).padStart(8, "0")}.yaml`);
    writeFileSync(path, router.text);
    conformanceSuite(path, {
      title: `random router ${i + 1} of ${count} from CONFORMANCE_SEED=${seedName} (config seed 0x${router.seed.toString(16).padStart(8, "0")}${workers === undefined ? "" : `, workers: ${workers}`})`,
      plans: (configPath) => fastPlansFor(parseConfig(router.text, configPath)),
      preamble: router.text.trimEnd().split("\n"),
      ...withWorkers,
    });
  }
}
