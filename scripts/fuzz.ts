/**
 * The long fuzz: the properties of test/fuzz (the whole pipeline, and the iptables rules reader)
 * run in rounds until the time is up, each round with a fresh seed; progress every 10 seconds; on
 * a failure the shrunk counterexample, the broken invariant, the seed and path to replay it, and
 * exit 1.
 *
 *   npm run fuzz -- --minutes 10                         both properties for ten minutes
 *   npm run fuzz -- --target pipeline|rules --minutes N  one of them
 *   npm run fuzz -- --target T --seed S [--path P]       replay a failure as printed
 *
 * Usage errors exit 2 (qnat's convention).
 */
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import type { RunStats } from "../test/fuzz/pipeline-harness.js";
import { checkPipelineScenario, pipelineFails, pipelineProperty, reduceScenario, rulesProperty } from "../test/fuzz/properties.js";
import type { Scenario } from "../test/fuzz/scenario.js";

const TARGETS = ["pipeline", "rules"] as const;
type Target = (typeof TARGETS)[number];

interface Options {
  minutes: number;
  targets: Target[];
  seed: number | undefined;
  path: string | undefined;
  runsPerRound: number;
}

function usage(problem: string): never {
  console.error(`fuzz: ${problem}; usage: npm run fuzz -- [--minutes N] [--target pipeline|rules] [--seed S [--path P]] [--runs N]`);
  process.exit(2);
}

function parseArgs(argv: readonly string[]): Options {
  const options: Options = { minutes: 1, targets: [...TARGETS], seed: undefined, path: undefined, runsPerRound: 200 };
  for (let i = 0; i < argv.length; i += 2) {
    const arg = argv[i]!;
    const value = argv[i + 1];
    if (value === undefined) usage(`${arg} needs a value`);
    const number = Number(value);
    if (arg === "--minutes" && number > 0) options.minutes = number;
    else if (arg === "--target" && (TARGETS as readonly string[]).includes(value)) options.targets = [value as Target];
    else if (arg === "--seed" && Number.isInteger(number)) options.seed = number;
    else if (arg === "--path" && /^[0-9:]+$/.test(value)) options.path = value;
    else if (arg === "--runs" && Number.isInteger(number) && number > 0) options.runsPerRound = number;
    else usage(`unknown argument or bad value: ${arg} ${value}`);
  }
  if (options.seed !== undefined && options.targets.length !== 1) usage("--seed replays one target: add --target pipeline or --target rules");
  return options;
}

const total = { cases: 0, packets: 0, forwarded: 0, dropped: 0, held: 0, replies: 0, fastPath: 0, errorsSent: 0, rulesTexts: 0 };

function count(stats: RunStats): void {
  total.packets += stats.packets;
  total.forwarded += stats.forwarded;
  total.dropped += stats.dropped;
  total.held += stats.held;
  total.replies += stats.replies;
  total.fastPath += stats.fastPath;
  total.errorsSent += stats.errorsSent;
}

const pipeline = pipelineProperty((stats) => {
  total.cases++;
  count(stats);
});
const rules = rulesProperty((stats) => {
  total.rulesTexts++;
  count(stats);
});

interface Outcome {
  failed: boolean;
  counterexample: unknown[] | null;
  report: string | undefined;
  error: unknown;
  seed: number;
  path: string | null;
}

function check(target: Target, seed: number, numRuns: number, path: string | undefined): Outcome {
  const parameters = { seed, numRuns, path, endOnFailure: false };
  return target === "pipeline" ? outcome(fc.check(pipeline, parameters)) : outcome(fc.check(rules, parameters));
}

function outcome<T>(details: fc.RunDetails<T>): Outcome {
  return { failed: details.failed, counterexample: details.counterexample as unknown[] | null, report: fc.defaultReportMessage(details), error: details.errorInstance, seed: details.seed, path: details.counterexamplePath };
}

function report(prefix: string, started: number): void {
  const seconds = (Date.now() - started) / 1000;
  console.log(
    `${prefix} ${seconds.toFixed(0)} s: ${total.cases} pipeline scenarios, ${total.rulesTexts} accepted rules texts; ` +
      `${total.packets} packets (${total.forwarded} forwarded, ${total.dropped} dropped, ${total.held} held; ` +
      `${total.fastPath} by the fast path), ${total.replies} replies and ${total.errorsSent} ICMP errors of the router's checked`,
  );
}

/** One round; on failure prints everything needed to replay it. */
function runRound(target: Target, seed: number, runs: number, path?: string): boolean {
  const details = check(target, seed, runs, path);
  if (!details.failed) return true;
  console.log(details.report ?? "failed");
  const error = details.error;
  console.log(`\n${error instanceof Error ? (error.name === "FuzzFailure" ? error.message : error.stack) : String(error)}`);
  console.log(`\nreplay: npm run fuzz -- --target ${target} --seed ${details.seed} --path ${details.path ?? ""}`);
  if (target === "pipeline" && details.counterexample !== null) printReduced(details.counterexample[0] as Scenario);
  return false;
}

/** fast-check's counterexample with the steps, packets and mutations it did not need removed. */
function printReduced(scenario: Scenario): void {
  const reduced = reduceScenario(scenario, pipelineFails);
  if (reduced === scenario) return;
  let message = "";
  try {
    checkPipelineScenario(reduced);
  } catch (error) {
    message = error instanceof Error ? error.message : String(error);
  }
  console.log(`\nsmaller still (steps, packets and mutations it does not need removed):\n${fc.stringify(reduced)}\n\n${message}`);
}

function main(): void {
  const options = parseArgs(process.argv.slice(2));
  // The scenarios read examples/seed.yaml from the package root (this file is dist/scripts/fuzz.js).
  process.chdir(fileURLToPath(new URL("../..", import.meta.url)));
  const started = Date.now();
  if (options.seed !== undefined) {
    const ok = runRound(options.targets[0]!, options.seed, options.runsPerRound, options.path);
    report(ok ? "replay passed:" : "replay failed:", started);
    process.exit(ok ? 0 : 1);
  }
  const deadline = started + options.minutes * 60_000;
  let lastReport = started;
  console.log(`fuzzing ${options.targets.join(" and ")} for ${options.minutes} min (rounds of ${options.runsPerRound} cases, a new seed each)`);
  for (let round = 0; Date.now() < deadline; round++) {
    const target = options.targets[round % options.targets.length]!;
    const seed = (Math.random() * 0x7fffffff) | 0;
    if (!runRound(target, seed, options.runsPerRound)) {
      report("FAILED after", started);
      process.exit(1);
    }
    if (Date.now() - lastReport >= 10_000) {
      report("fuzz:", started);
      lastReport = Date.now();
    }
  }
  report("done:", started);
}

main();
