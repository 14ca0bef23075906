/**
 * One config's conformance suite: both routers up side by side (beforeAll), every scenario of
 * scenarios.ts as one test, both torn down (afterAll). With QNAT_CONFORMANCE_REPORT=FILE the
 * readable report (every scenario, both sides side by side) is written there at the end.
 */
import { appendFileSync, readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { assertAgree, ConformancePair, formatScenario, isRoot } from "./harness.js";
import { plansFor } from "./scenarios.js";

export function conformanceSuite(configPath: string): void {
  if (!isRoot) {
    console.warn(`test/conformance: not root, so the kernel-vs-qnat conformance scenarios for ${configPath} are skipped (they build network namespaces; CI runs them as root)`);
  }
  const plans = plansFor(parseConfig(readFileSync(configPath, "utf8"), configPath));
  describe.skipIf(!isRoot)(`kernel vs qnat on ${configPath}`, () => {
    let pair: ConformancePair | undefined;
    let started = Date.now();
    beforeAll(async () => {
      started = Date.now();
      pair = await ConformancePair.start(configPath);
    }, 90_000);
    afterAll(async () => {
      const report = process.env.QNAT_CONFORMANCE_REPORT;
      if (report && pair) {
        // One report file for every config of the run: each suite appends its part.
        const lines = [
          `qnat conformance: ${configPath}`,
          `kernel twin namespaces *-${pair.kernel.tag}, qnat lab namespaces *-${pair.qnat.tag}`,
          "",
          ...pair.results.map((r) => formatScenario(r, process.env.QNAT_CONFORMANCE_VERBOSE === "1") + "\n"),
          `${pair.results.filter((r) => r.agree).length}/${pair.results.length} scenarios agree` +
            ` (${pair.results.filter((r) => r.agree && r.sections.some((x) => !x.equal)).length} of them with documented differences);` +
            ` ${pair.results.filter((r) => !r.agree && r.knownBug !== undefined).length} differ by known qnat bugs,` +
            ` ${pair.results.filter((r) => !r.agree && r.knownBug === undefined).length} differ otherwise; ${((Date.now() - started) / 1000).toFixed(1)} s`,
        ];
        appendFileSync(report, lines.join("\n") + "\n\n");
      }
      await pair?.stop();
    }, 90_000);
    for (const plan of plans) {
      // A scenario that shows a reported qnat bug is expected to differ (it.fails): once the bug
      // is fixed it fails, so the marker is removed and the scenario guards the fix.
      // Two retries for the others: both routers carry real traffic with real timers (a 200 ms TCP
      // retransmit can fire on a busy machine); a real difference differs every time.
      const test = plan.knownBug === undefined ? it : it.fails;
      const options = { timeout: 60_000, retry: plan.knownBug === undefined ? 2 : 0 };
      test(plan.knownBug === undefined ? plan.name : `${plan.name} [known qnat bug]`, options, async () => {
        if (pair === undefined) throw new Error("the routers are not up");
        assertAgree(await pair.run(plan));
      });
    }
  });
}
