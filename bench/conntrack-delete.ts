/**
 * How long does `qnat conntrack -D` / `-F` hold the packet thread at a time? No root: the seed's
 * dataplane holding N connections (default 1,000,000: half tenant UDP flows SNATed to
 * 9.186.100.2, half inbound TCP to the floating IP 9.186.100.129), then the router's own
 * ConntrackWork pieces as the control socket runs them, one per turn of the event loop, each
 * timed: `-D -d 9.186.100.129` (half the table), then `-F` (the rest). A piece's duration is how
 * long a leg's readable callback could have waited. Usage (docs/performance.md):
 *   node --expose-gc dist/bench/conntrack-delete.js [connections]
 */
import { ConntrackWork, type ConntrackOp } from "../src/control/conntrack-command.js";
import { parseConntrackArgs } from "../src/cli/conntrack.js";
import { establishInboundTcp, establishTenantFlows, inboundFlows, seedRouter, tenantFlows } from "./lib/scenario.js";

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

/** Wall time of each piece, and the process's CPU time in it (a wall time far above it: the VM preempted us). */
function measure(work: ConntrackWork): { pieces: number[]; cpu: number[]; totalMs: number } {
  const pieces: number[] = [];
  const cpu: number[] = [];
  const started = performance.now();
  for (;;) {
    const usage = process.cpuUsage();
    const t = performance.now();
    const piece = work.next();
    pieces.push(performance.now() - t);
    const spent = process.cpuUsage(usage);
    cpu.push((spent.user + spent.system) / 1000);
    if (piece === undefined) break;
  }
  return { pieces, cpu, totalMs: performance.now() - started };
}

function report(label: string, op: ConntrackOp, words: string[], router: ReturnType<typeof seedRouter>): void {
  const table = router.dataplane.conntrack;
  const before = table.count;
  const work = new ConntrackWork(table, op, parseConntrackArgs(words).filter);
  const { pieces, cpu, totalMs } = measure(work);
  const sorted = [...pieces].sort((a, b) => a - b);
  const cpuSorted = [...cpu].sort((a, b) => a - b);
  process.stdout.write(
    `${label}: ${work.count} of ${before} entries in ${totalMs.toFixed(0)} ms, ${pieces.length} pieces; ` +
      `longest piece #${pieces.indexOf(sorted[sorted.length - 1]!)}; ` +
      `piece median ${percentile(sorted, 0.5).toFixed(2)} ms, p99 ${percentile(sorted, 0.99).toFixed(2)} ms, max ${sorted[sorted.length - 1]!.toFixed(2)} ms` +
      ` (CPU time per piece: p99 ${percentile(cpuSorted, 0.99).toFixed(2)} ms, max ${cpuSorted[cpuSorted.length - 1]!.toFixed(2)} ms)\n`,
  );
}

async function main(): Promise<void> {
  const connections = Number(process.argv[2] ?? 1_000_000);
  if (!(Number.isInteger(connections) && connections >= 2 && connections <= 1 << 24)) throw new Error("connections must be 2..16777216");
  const router = seedRouter(Math.ceil(connections * 1.1));
  const started = performance.now();
  establishTenantFlows(router, tenantFlows(connections / 2, 1));
  establishInboundTcp(router, inboundFlows(connections / 2, 2));
  // The set-up's garbage (a million packets) is collected now, not inside a measured piece.
  // Then a pause, so the collector's background sweeping is over before the first piece.
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((resolve) => setTimeout(resolve, 1000));
  process.stdout.write(`set-up: ${router.dataplane.conntrack.count} connections through the seed's dataplane in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
  report("conntrack -D -d 9.186.100.129", "delete", ["-D", "-d", "9.186.100.129"], router);
  report("conntrack -F", "flush", ["-F"], router);
}

await main();
