/**
 * `npm run bench`, last part: what the defences against hostile traffic cost the hot path, before
 * and after in one run. "Before" is qnat as it was just before them (BEFORE_COMMIT: a seeded
 * murmur tuple hash, no TCP window tracking, no checksum verification, no rp_filter); "after" is
 * this build. The same workloads (bench/lib/tree-workload.ts: the hot-path bench's established
 * UDP at 64k and 1M flows, inbound TCP through the floating IP, new connections) run in each tree,
 * each tree alone in its own process (bench/tree-rate.ts) — two trees in one process share the
 * caches, and the one with the larger tables then slows the other — alternating which goes first,
 * ROUNDS rounds; the figure is the median of the rounds' after/before ratios. The budget: at most
 * 15 % slower (a ratio of at least 0.85).
 *
 * The before tree is built from this repository's history (`git archive`, its TypeScript compiled
 * with this tree's node_modules) into the system's temporary directory, once; or
 * QNAT_BENCH_DEFENCES_BEFORE=DIR names a built checkout of it. Without git history (a tarball) the
 * part says why in one line and is skipped. Writes bench/results/defences.md and the `defences`
 * key of bench/results/latest.json. `BENCH_QUICK=1`: one short round.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { machine, median, mergeResults } from "./lib/report.js";
import type { TreeWorkload } from "./lib/tree-workload.js";

/** The last commit before the defences (issue 9's first change came after it). */
const BEFORE_COMMIT = "3264a9f3fb413bc3e5f65fcdf3a52773d1ad02fd";
const QUICK = process.env.BENCH_QUICK === "1";
const ROUNDS = QUICK ? 1 : 5;
const SECONDS = QUICK ? 1 : 4;
const BUDGET = 0.85;
const ROOT = resolve(".");

const WORKLOADS: readonly { workload: TreeWorkload; label: string; unit: string }[] = [
  { workload: "e64", label: "established UDP with SNAT, 64k flows", unit: "packets/s" },
  { workload: "e1m", label: "established UDP with SNAT, 1M flows", unit: "packets/s" },
  { workload: "inbound", label: "established inbound TCP via floating-IP DNAT, 64k flows", unit: "packets/s" },
  { workload: "new", label: "new connections (rules, port choice, insert)", unit: "connections/s" },
];

export interface Comparison {
  workload: TreeWorkload;
  label: string;
  unit: string;
  /** Median rates over the rounds. */
  before: number;
  after: number;
  /** Median of the rounds' after/before ratios. */
  ratio: number;
  ratios: number[];
  met: boolean;
}

function log(text: string): void {
  process.stdout.write(text + "\n");
}

/** One workload's rounds, before and after (round i of each ran side by side), judged against the budget. */
export function comparisonOf(what: { workload: TreeWorkload; label: string; unit: string }, before: readonly number[], after: readonly number[]): Comparison {
  const ratios = after.map((a, i) => a / before[i]!);
  const ratio = median(ratios);
  return { ...what, before: median(before), after: median(after), ratio, ratios, met: ratio >= BUDGET };
}

/** A built tree of BEFORE_COMMIT, or the one line that says why there is none. */
function beforeTree(): { dir: string } | { skipped: string } {
  const given = process.env.QNAT_BENCH_DEFENCES_BEFORE;
  if (given !== undefined) {
    return existsSync(join(given, "dist/bench/lib/scenario.js")) ? { dir: resolve(given) } : { skipped: `QNAT_BENCH_DEFENCES_BEFORE=${given} is not a built qnat tree (no dist/bench/lib/scenario.js)` };
  }
  const dir = join(tmpdir(), `qnat-before-defences-${BEFORE_COMMIT.slice(0, 12)}`);
  if (existsSync(join(dir, "dist/bench/lib/scenario.js"))) return { dir };
  const has = spawnSync("git", ["cat-file", "-e", `${BEFORE_COMMIT}^{commit}`], { cwd: ROOT, stdio: "ignore" });
  if (has.error !== undefined || has.status !== 0) return { skipped: `commit ${BEFORE_COMMIT.slice(0, 7)} is not in this checkout's git history` };
  log(`  building the tree before the defences (${BEFORE_COMMIT.slice(0, 7)}) in ${dir}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  try {
    const archive = execFileSync("git", ["archive", "--format=tar", BEFORE_COMMIT], { cwd: ROOT, maxBuffer: 1 << 30 });
    execFileSync("tar", ["-x", "-C", dir], { input: archive });
    symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"), "dir");
    execFileSync(process.execPath, [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", join(dir, "tsconfig.json")], { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    return { skipped: `building ${BEFORE_COMMIT.slice(0, 7)} failed: ${String((error as Error).message).split("\n")[0]}` };
  }
  return { dir };
}

/** One workload of one tree in a process of its own: its rate. */
function rateOf(tree: string, workload: TreeWorkload): number {
  const out = execFileSync(process.execPath, [join(ROOT, "dist/bench/tree-rate.js"), tree, workload, String(SECONDS)], { cwd: tree, encoding: "utf8", maxBuffer: 1 << 20 });
  const rate = (JSON.parse(out.trim().split("\n").pop()!) as { rate: number }).rate;
  if (!(rate > 0)) throw new Error(`bench: ${workload} in ${tree} reported no rate`);
  return rate;
}

export function defencesMarkdown(comparisons: readonly Comparison[], skipped: string | null): string {
  const m = machine();
  const lines = [
    "# What the defences against hostile traffic cost the hot path — `npm run bench`",
    "",
    `Run ${new Date().toISOString()} on ${m.cpu}, ${m.cores} cores, Node ${m.node}.`,
    `Before: qnat at ${BEFORE_COMMIT.slice(0, 7)}, just before the keyed hash, TCP window tracking, checksum`,
    "verification and rp_filter; after: this build. Each workload in each tree alone in its own process",
    `(bench/tree-rate.ts), ${ROUNDS} round(s) of ${SECONDS} s each (rates per second of CPU time), alternating which tree`,
    `goes first; the ratio is the median of the rounds' after/before. Budget: at least ${BUDGET} (at most 15 % slower).`,
    "",
  ];
  if (skipped !== null) return [...lines, `Not run: ${skipped}.`, ""].join("\n");
  lines.push("| workload | before | after | after / before | rounds | within budget |", "|---|---:|---:|---:|---|---|");
  for (const c of comparisons) {
    const rounds = c.ratios.map((r) => r.toFixed(2)).join(", ");
    lines.push(`| ${c.label} | ${(c.before / 1e6).toFixed(2)} M | ${(c.after / 1e6).toFixed(2)} M | ${c.ratio.toFixed(2)} | ${rounds} | ${c.met ? "yes" : "**no**"} |`);
  }
  lines.push("", "Rates: packets (new connections: connections) per second of CPU time. Where the cost is: docs/performance.md.", "");
  return lines.join("\n");
}

function main(): void {
  log("defences: the hot path before and after them, one run");
  const tree = beforeTree();
  const comparisons: Comparison[] = [];
  let skipped: string | null = null;
  if ("skipped" in tree) {
    skipped = tree.skipped;
    log(`  skipped: ${skipped}`);
  } else {
    for (const { workload, label, unit } of WORKLOADS) {
      const before: number[] = [];
      const after: number[] = [];
      for (let round = 0; round < ROUNDS; round++) {
        if (round % 2 === 0) {
          before.push(rateOf(tree.dir, workload));
          after.push(rateOf(ROOT, workload));
        } else {
          after.push(rateOf(ROOT, workload));
          before.push(rateOf(tree.dir, workload));
        }
      }
      const c = comparisonOf({ workload, label, unit }, before, after);
      comparisons.push(c);
      log(`  ${label}: before ${(c.before / 1e6).toFixed(2)} M, after ${(c.after / 1e6).toFixed(2)} M, after/before ${c.ratio.toFixed(3)} (rounds ${c.ratios.map((r) => r.toFixed(3)).join(", ")})`);
    }
  }
  mergeResults("bench/results/latest.json", "defences", { date: new Date().toISOString(), machine: machine(), before: BEFORE_COMMIT, budget: BUDGET, skipped, comparisons });
  writeFileSync("bench/results/defences.md", defencesMarkdown(comparisons, skipped));
  log("  wrote bench/results/defences.md and the defences key of bench/results/latest.json");
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main();
