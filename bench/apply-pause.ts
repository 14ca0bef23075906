/**
 * How long the packet loop waits while `qnat apply` runs. No namespaces, no root:
 *   npm run build && node dist/bench/apply-pause.js [CYCLES]
 *   npm run build && node --expose-gc dist/bench/apply-pause.js full-table [ROUTES]
 *
 * Without `full-table`: a floating IP associated or disassociated (one /32 added to or removed
 * from qg-), the synchronous part of router-process.ts applyNow, the successor dataplane built
 * (with its routing table built anew, or the running one changed in place at the swap,
 * live-apply.ts inPlaceRouting).
 *
 * `full-table`: a router with a full Internet table (ROUTES `ip route` lines in a routes_file,
 * default 1,000,000, plus a default route) applies a new file in which every route has another
 * next hop and half of the prefixes are replaced by others. The apply runs as applyNow runs it
 * (the kernel's half left out: no namespace), twice: all at once (parseConfig, diffConfigs, the
 * table built by buildDataplane, as before the apply was cut in pieces) and in pieces
 * (parseConfigInPieces, diffConfigsInPieces, routingForChange). A 1 ms timer ticks meanwhile: the
 * longest gap between two ticks is the longest the packet loop, which shares the thread, would
 * have waited. Printed per way: that gap (overall and after the config parse), the wall time of
 * the apply and of its parse, and the lengths of the pieces.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseConfig, parseConfigInPieces, type RouterConfig } from "../src/config/config.js";
import { carryOverCounters, diffConfigs, diffConfigsInPieces, formatDifference, inPlaceRouting, routingForChange } from "../src/control/live-apply.js";
import { parseConfigRules } from "../src/control/host-setup.js";
import { formatIpv4, parseIpv4 } from "../src/core/addr.js";
import { nextTurn } from "../src/core/pieces.js";
import { XorShift32 } from "../src/core/rng.js";
import { buildDataplane } from "../src/dataplane/from-config.js";
import type { Dataplane } from "../src/dataplane/pipeline.js";
import { syntheticInternetTable, type SyntheticPrefix } from "../src/route/synthetic-table.js";

if (process.argv[2] === "full-table") {
  await fullTable(Number(process.argv[3] ?? 1_000_000));
  process.exit(0);
}

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
  return percentile(values, 0.5);
}

function percentile(values: number[], fraction: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * fraction))]!;
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

/**
 * The longest gap between ticks of a 1 ms timer while `work` runs (overall, and after the work
 * calls `mark()`), and the work's wall time.
 */
async function longestStall(work: (mark: () => Promise<void>) => Promise<unknown>): Promise<{ stallMs: number; afterMarkMs: number; wallMs: number; ticks: number }> {
  let last = performance.now();
  let stallMs = 0;
  let afterMarkMs = 0;
  let marked = false;
  let ticks = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    stallMs = Math.max(stallMs, now - last);
    if (marked) afterMarkMs = Math.max(afterMarkMs, now - last);
    last = now;
    ticks++;
  }, 1);
  await new Promise((resolve) => setTimeout(resolve, 20));
  stallMs = 0;
  ticks = 0;
  const started = performance.now();
  last = started;
  await work(async () => {
    await new Promise((resolve) => setTimeout(resolve, 2)); // the tick that ends the gap before the mark
    marked = true;
  });
  const wallMs = performance.now() - started;
  await new Promise((resolve) => setTimeout(resolve, 5)); // the tick after the work's last piece
  clearInterval(timer);
  return { stallMs, afterMarkMs, wallMs, ticks };
}

/**
 * a.routes: `count` synthetic prefixes clear of the router's own subnets via 198.51.100.11;
 * b.routes: every other one of them replaced by another prefix, all via 198.51.100.12. Returns a
 * prefix kept and one replaced (the generator's objects are garbage once this returns, as in a
 * router, which holds only its config and tables).
 */
function writeRouteFiles(dir: string, count: number): { kept: SyntheticPrefix; replaced: SyntheticPrefix } {
  const clear = (seed: number): SyntheticPrefix[] =>
    syntheticInternetTable(Math.ceil(count * 1.05), new XorShift32(seed)).filter((p) => ![10, 198].includes(p.prefix >>> 24) && p.prefixLength >= 8);
  const running = clear(20261130).slice(0, count);
  const taken = new Set(running.map((p) => p.prefix * 64 + p.prefixLength));
  const others = clear(7).filter((p) => !taken.has(p.prefix * 64 + p.prefixLength));
  const line = (p: SyntheticPrefix, gateway: number): string => `${formatIpv4(p.prefix)}/${p.prefixLength} via 198.51.100.${gateway} dev qg-upstream`;
  writeFileSync(join(dir, "a.routes"), running.map((p) => line(p, 11)).join("\n") + "\n");
  writeFileSync(join(dir, "b.routes"), running.map((p, i) => line(i % 2 === 0 ? p : others[i >> 1]!, 12)).join("\n") + "\n");
  return { kept: running[0]!, replaced: running[1]! };
}

async function fullTable(count: number): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  const dir = mkdtempSync(join(tmpdir(), "qnat-apply-pause-"));
  try {
    const { kept, replaced } = writeRouteFiles(dir, count);
    const configText = (routes: string): string => `router:
  id: apply-pause
ports:
  - name: qr-tenant
    addresses: [10.0.0.1/24]
    wire: { namespace: qnat-tenant, device: eth0 }
  - name: qg-upstream
    addresses: [198.51.100.1/24]
    wire: { namespace: qnat-upstream, device: eth0 }
routes:
  - default via 198.51.100.254
routes_file: ${routes}
nat: |
  -A POSTROUTING -o qg-upstream -j SNAT --to-source 198.51.100.1
`;
    writeFileSync(join(dir, "a.yaml"), configText("a.routes"));
    writeFileSync(join(dir, "b.yaml"), configText("b.routes"));
    const load = (name: string): RouterConfig => parseConfig(readFileSync(join(dir, name), "utf8"), join(dir, name));
    const before = load("a.yaml");
    const rng = new XorShift32(1);
    console.log(`full table: ${count.toLocaleString("en")} routes + a default; the new file: every next hop changed, half of the prefixes replaced`);

    for (const inPieces of [false, true]) {
      const runningDataplane = buildDataplane(before, { rng });
      const text = readFileSync(join(dir, "b.yaml"), "utf8");
      gc?.();
      await new Promise((resolve) => setTimeout(resolve, 200));
      let parseMs = 0;
      let changedLines = 0;
      let successor: Dataplane | undefined;
      const pieceLengths: number[] = [];
      const measured = await longestStall(async (mark) => {
        // Between pieces: the time since the end of the previous wait is the piece's length.
        let resumed = performance.now();
        const pieces = {
          yieldToLoop: async (): Promise<void> => {
            const length = performance.now() - resumed;
            pieceLengths.push(length);
            await nextTurn();
            resumed = performance.now();
          },
        };
        // applyText: the config parsed (its routes file read and split into lines).
        const parseStart = performance.now();
        const next = inPieces ? await parseConfigInPieces(text, join(dir, "b.yaml"), pieces) : parseConfig(text, join(dir, "b.yaml"));
        // The first interval spans the routes file's asynchronous read (the loop ran meanwhile): not a piece.
        if (inPieces) pieceLengths.shift();
        parseMs = performance.now() - parseStart;
        await mark();
        const rules = parseConfigRules(before);
        const nextRules = parseConfigRules(next);
        let change: (() => void) | undefined;
        if (inPieces) {
          const difference = await diffConfigsInPieces(before, rules, next, nextRules, pieces);
          const routing = await routingForChange(before, next, runningDataplane.routes, difference, pieces);
          change = routing.change;
          successor = buildDataplane(next, { successorOf: runningDataplane, routes: routing.routes });
          changedLines = formatDifference(difference, next).length;
        } else {
          const difference = diffConfigs(before, rules, next, nextRules);
          change = inPlaceRouting(before, next, runningDataplane.routes);
          successor = buildDataplane(next, { successorOf: runningDataplane, ...(change !== undefined ? { routes: runningDataplane.routes } : {}) });
          changedLines = formatDifference(difference, next).length;
        }
        // The swap, between two batches.
        change?.();
        carryOverCounters(runningDataplane, successor);
        successor.conntrack.clearRouteCaches();
      });
      const probe = successor!.routes;
      const keptRoute = probe.describeRoute(probe.lookup(kept.prefix));
      console.log(
        `${inPieces ? "in pieces   " : "all at once "}: longest stall ${measured.stallMs.toFixed(1)} ms, after the config parse ${measured.afterMarkMs.toFixed(1)} ms (the parse: ${(parseMs / 1000).toFixed(2)} s), ` +
          `apply ${(measured.wallMs / 1000).toFixed(2)} s, ${measured.ticks} ticks of the 1 ms timer; ` +
          (pieceLengths.length > 0 ? `${pieceLengths.length} pieces: median ${median(pieceLengths).toFixed(2)} ms, p99 ${percentile(pieceLengths, 0.99).toFixed(2)} ms, max ${Math.max(...pieceLengths).toFixed(1)} ms; ` : "") +
          `${changedLines} lines printed; ${formatIpv4(kept.prefix)} -> "${keptRoute}"; ${formatIpv4(replaced.prefix)}/${replaced.prefixLength} ${probe.routesOf(replaced.prefix, replaced.prefixLength).length === 0 ? "gone" : "STILL THERE"}`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
