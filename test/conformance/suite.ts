/**
 * One config's conformance suite: both routers up side by side (beforeAll), every scenario of
 * scenarios.ts as one test, both torn down (afterAll). With QNAT_CONFORMANCE_REPORT=FILE the
 * readable report (every scenario, both sides side by side) is written there at the end.
 * A scenario that agrees only on a retry is reported as FLAKY in the report and on the test
 * output (console), never silently green.
 *
 * In TAP mode both routers run the config's Ethernet version (harness.ts HarnessMode), with the
 * scenarios of ethernet.ts too (ARP, host unreachable, traceroute's !H). A router that cannot
 * start (a tap port's legs opened as TUN devices included) fails the suite.
 * With `workers: N` qnat forwards on N threads over one shared connection table; the kernel twin
 * is the same, so the same scenarios must agree.
 */
import { appendFileSync } from "node:fs";
import { afterAll, beforeAll, describe, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { commandChecksFor, ethernetPlansFor, runCommandCheck } from "./ethernet.js";
import { assertAgree, configTextFor, ConformancePair, isRoot, type HarnessMode, type Plan } from "./harness.js";
import { plansFor } from "./scenarios.js";

function appendReport(lines: readonly string[]): void {
  const report = process.env.QNAT_CONFORMANCE_REPORT;
  if (report) appendFileSync(report, lines.join("\n") + "\n\n");
}

/** The scenarios of CONFIG, or the one line that says why there are none (a config without room). */
function plansOf(configPath: string, make: (configPath: string) => Plan[]): Plan[] | string {
  try {
    return make(configPath);
  } catch (error) {
    if (error instanceof Error && error.name === "NoRoomError") return error.message;
    throw error;
  }
}

export interface SuiteOptions {
  /** The scenarios to run (default: every scenario of scenarios.ts for the config). */
  plans?: (configPath: string) => Plan[];
  /** How the suite is named in test output and the report (default: the config's path). */
  title?: string;
  /** Lines printed at the head of the suite's report (a generated config's text). */
  preamble?: readonly string[];
  /** `tun`: the config as written (default); `tap`: its Ethernet version, with ethernet.ts's scenarios too. */
  mode?: HarnessMode;
  /** qnat runs with `workers: N` (bench/e2e-lab.ts withWorkersText); absent, the config as written. */
  workers?: number;
}

/** How a suite is named: the config, and the mode and workers when they are not the config's own. */
function suiteTitle(configPath: string, mode: HarnessMode, workers: number | undefined): string {
  const notes = [mode === "tap" ? "TAP mode" : "", workers === undefined ? "" : `workers: ${workers}`].filter((note) => note !== "");
  return notes.length === 0 ? configPath : `${configPath} (${notes.join(", ")})`;
}

export function conformanceSuite(configPath: string, options: SuiteOptions = {}): void {
  const mode = options.mode ?? "tun";
  const configOf = (path: string) => parseConfig(configTextFor(path, mode), path);
  const make =
    options.plans ??
    ((path: string) => (mode === "tap" ? [...plansFor(configOf(path)), ...ethernetPlansFor(configOf(path))] : plansFor(configOf(path))));
  const workers = options.workers;
  const title = options.title ?? suiteTitle(configPath, mode, workers);
  if (!isRoot) {
    console.warn(`test/conformance: not root, so the kernel-vs-qnat conformance scenarios for ${title} are skipped (they build network namespaces; CI runs them as root)`);
  }
  const plans = plansOf(configPath, make);
  if (typeof plans === "string") {
    describe(`kernel vs qnat on ${title}`, () => {
      it("has room for the scenarios' addresses and ports", () => {
        // scripts/conformance.sh prints this line alone and exits 2: the config is the problem.
        appendReport([`REFUSED ${plans}`]);
        throw new Error(plans);
      });
    });
    return;
  }
  const checks = mode === "tap" ? commandChecksFor(configOf(configPath)) : [];
  describe.skipIf(!isRoot)(`kernel vs qnat on ${title}`, () => {
    let pair: ConformancePair | undefined;
    let started = Date.now();
    beforeAll(async () => {
      started = Date.now();
      // Any failure to start (a tap port's legs opened as TUN included, harness.ts TapDatapathMissing) fails the suite.
      pair = await ConformancePair.start(configPath, mode, workers);
    }, 90_000);
    afterAll(async () => {
      if (pair) {
        const flaky = pair.flaky();
        if (flaky.length > 0) console.warn(`qnat conformance: ${flaky.length} FLAKY scenario(s) on ${title} agreed only on a retry: ${flaky.map((r) => `"${r.name}" (attempt ${r.attempt})`).join(", ")}`);
        // One report file for every config of the run: each suite appends its part.
        appendReport([
          `qnat conformance: ${title}`,
          ...(options.preamble ?? []).map((line) => `  | ${line}`),
          `kernel twin namespaces *-${pair.kernel.tag}, qnat lab namespaces *-${pair.qnat.tag}`,
          "",
          ...pair.report(process.env.QNAT_CONFORMANCE_VERBOSE === "1", (Date.now() - started) / 1000),
        ]);
      }
      await pair?.stop();
    }, 90_000);
    for (const plan of plans) {
      // A scenario that shows a reported qnat bug is expected to differ (it.fails): once the bug
      // is fixed it fails, so the marker is removed and the scenario guards the fix.
      // Two retries for the others: both routers carry real traffic with real timers; a real
      // difference differs every time, and one that agrees only on a retry is reported as FLAKY.
      const test = plan.knownBug === undefined ? it : it.fails;
      const options = { timeout: 60_000, retry: plan.knownBug === undefined ? 2 : 0 };
      test(plan.knownBug === undefined ? plan.name : `${plan.name} [known qnat bug]`, options, async () => {
        if (pair === undefined) throw new Error("the routers are not up");
        const result = await pair.run(plan);
        if (result.agree && result.attempt > 1) {
          console.warn(`qnat conformance: FLAKY on ${title}: "${plan.name}" agreed only on attempt ${result.attempt}; the report shows the attempts that differed`);
        }
        assertAgree(result);
      });
    }
    for (const check of checks) {
      const test = check.knownBug === undefined ? it : it.fails;
      test(check.knownBug === undefined ? check.name : `${check.name} [known qnat bug]`, { timeout: 60_000, retry: check.knownBug === undefined ? 1 : 0 }, async () => {
        if (pair === undefined) throw new Error("the routers are not up");
        assertAgree(await runCommandCheck(pair, check));
      });
    }
  });
}
