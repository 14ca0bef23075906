/**
 * The Linux kernel as the oracle: for the seed's router, for a second, different router
 * (examples/two-subnets.yaml: two tenant subnets, two floating IPs, MASQUERADE, a smaller gateway
 * MTU) and for a VXLAN tenant network (examples/mtu-1450.yaml: fragmentation on output), the
 * kernel twin and qnat run the same traffic and must agree (harness.ts, scenarios.ts).
 * The configs run one after the other in this one file, so only two routers share the CPU.
 * `npm run conformance -- CONFIG` runs it on CONFIG alone (QNAT_CONFORMANCE_CONFIG).
 */
import { join, resolve } from "node:path";
import { ROOT } from "./harness.js";
import { conformanceSuite } from "./suite.js";

const chosen = process.env.QNAT_CONFORMANCE_CONFIG;
const configs = chosen
  ? [resolve(chosen)]
  : [join(ROOT, "examples/seed.yaml"), join(ROOT, "examples/two-subnets.yaml"), join(ROOT, "examples/mtu-1450.yaml")];
for (const config of configs) conformanceSuite(config);
