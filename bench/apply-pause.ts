/**
 * How long the packet loop waits while `qnat apply` associates or disassociates a floating IP
 * (one /32 added to or removed from qg-): the synchronous part of router-process.ts
 * applyNow, the successor dataplane built (with its routing table built anew, or the running one
 * changed in place at the swap, live-apply.ts inPlaceRouting). No namespaces, no root:
 *   npm run build && node dist/bench/apply-pause.js [CYCLES]
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseConfig } from "../src/config/config.js";
import { inPlaceRouting } from "../src/control/live-apply.js";
import { parseIpv4 } from "../src/core/addr.js";
import { XorShift32 } from "../src/core/rng.js";
import { buildDataplane } from "../src/dataplane/from-config.js";

const SEED_FILE = resolve(import.meta.dirname, "../../examples/seed.yaml");
const SEED = parseConfig(readFileSync(SEED_FILE, "utf8"), SEED_FILE);
/** The seed with floating IP 9.186.100.130 on qg- (its DNAT rule left out: the rules are compiled anew either way). */
const WITH_FIP = {
  ...SEED,
  ports: SEED.ports.map((p) => (p.name.startsWith("qg-") ? { ...p, addresses: [...p.addresses, { addr: parseIpv4("9.186.100.130"), prefixLength: 32 }] } : p)),
};

const cycles = Number(process.argv[2] ?? 40);
const configs = [SEED, WITH_FIP];
const rng = new XorShift32(1);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

for (const inPlace of [false, true]) {
  let dataplane = buildDataplane(configs[0]!, { rng });
  const pauses: number[] = [];
  for (let i = 1; i <= cycles; i++) {
    const running = configs[(i - 1) % 2]!;
    const next = configs[i % 2]!;
    const start = process.hrtime.bigint();
    const change = inPlace ? inPlaceRouting(running, next, dataplane.routes) : undefined;
    const successor = buildDataplane(next, { rng, successorOf: dataplane, ...(change !== undefined ? { routes: dataplane.routes } : {}) });
    change?.();
    successor.conntrack.clearRouteCaches();
    pauses.push(Number(process.hrtime.bigint() - start) / 1e6);
    dataplane = successor;
  }
  const label = inPlace ? "routing table changed in place" : "routing table built anew";
  console.log(`${label}: median ${median(pauses).toFixed(2)} ms, max ${Math.max(...pauses).toFixed(2)} ms over ${cycles} floating IP applies`);
}
