/**
 * The long pipeline fuzz: the property of test/fuzz/pipeline.test.ts, run in rounds until the time
 * is up, each round with a fresh seed; progress every 10 seconds; on a failure the shrunk
 * counterexample, its seed and path, and exit 1.
 *
 *   npm run fuzz -- --minutes 10             fuzz for ten minutes
 *   npm run fuzz -- --seed S [--path P]      replay one failure (as printed) and exit
 *
 * Usage errors exit 2 (qnat's convention).
 */
import fc from "fast-check";
import { PipelineHarness, type RunStats } from "../test/fuzz/pipeline-harness.js";
import { scenarioArb } from "../test/fuzz/scenario.js";

interface Options {
  minutes: number;
  seed: number | undefined;
  path: string | undefined;
  runsPerRound: number;
}

function parseArgs(argv: readonly string[]): Options {
  const options: Options = { minutes: 1, seed: undefined, path: undefined, runsPerRound: 200 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = argv[i + 1];
    const number = Number(value);
    if (arg === "--minutes" && value !== undefined && number > 0) options.minutes = number;
    else if (arg === "--seed" && value !== undefined && Number.isInteger(number)) options.seed = number;
    else if (arg === "--path" && value !== undefined) options.path = value;
    else if (arg === "--runs" && value !== undefined && Number.isInteger(number) && number > 0) options.runsPerRound = number;
    else {
      console.error(`fuzz: unknown or incomplete argument ${JSON.stringify(arg)}; usage: npm run fuzz -- [--minutes N] [--seed S [--path P]] [--runs N]`);
      process.exit(2);
    }
    i++;
  }
  return options;
}

const total: RunStats = { packets: 0, forwarded: 0, dropped: 0, held: 0, replies: 0, fastPath: 0 };
let scenarios = 0;

const property = fc.property(scenarioArb, (scenario) => {
  const stats = new PipelineHarness(scenario).run(scenario.steps);
  scenarios++;
  total.packets += stats.packets;
  total.forwarded += stats.forwarded;
  total.dropped += stats.dropped;
  total.held += stats.held;
  total.replies += stats.replies;
  total.fastPath += stats.fastPath;
});

function report(prefix: string, started: number): void {
  const seconds = (Date.now() - started) / 1000;
  console.log(
    `${prefix} ${seconds.toFixed(0)} s: ${scenarios} scenarios, ${total.packets} packets ` +
      `(${total.forwarded} forwarded, ${total.dropped} dropped, ${total.held} held; ${total.fastPath} by the fast path), ${total.replies} replies checked`,
  );
}

function runRound(seed: number, runs: number, path?: string): boolean {
  const details = fc.check(property, { seed, numRuns: runs, path, endOnFailure: false });
  if (!details.failed) return true;
  console.log(fc.defaultReportMessage(details) ?? "failed");
  const error = details.errorInstance;
  console.log(`\n${error instanceof Error ? error.message : String(error)}`);
  console.log(`\nreplay: npm run fuzz -- --seed ${details.seed} --path ${details.counterexamplePath ?? ""}`);
  return false;
}

function main(): void {
  const options = parseArgs(process.argv.slice(2));
  const started = Date.now();
  if (options.seed !== undefined) {
    const ok = runRound(options.seed, options.path === undefined ? options.runsPerRound : 1, options.path);
    report(ok ? "replay passed:" : "replay failed:", started);
    process.exit(ok ? 0 : 1);
  }
  const deadline = started + options.minutes * 60_000;
  let lastReport = started;
  console.log(`fuzzing the pipeline for ${options.minutes} min (rounds of ${options.runsPerRound} scenarios, a new seed each)`);
  while (Date.now() < deadline) {
    const seed = (Math.random() * 0x7fffffff) | 0;
    // Small rounds, so progress and the deadline are checked often.
    if (!runRound(seed, options.runsPerRound)) {
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
