import { defineConfig } from "vitest/config";
import base from "./vitest.config.js";

/**
 * `npm test`'s second pass: every end-to-end router and the whole conformance suite again with
 * two forwarding threads (docs/multi-core.md). A router whose config has no `workers:` line takes
 * QNAT_WORKERS from `qnat run`'s environment; the conformance suite runs each qnat router of the
 * kernel comparison with QNAT_CONFORMANCE_WORKERS. The tests that write `workers: 2` themselves
 * ran in the first pass already.
 */
export default defineConfig({
  test: {
    ...base.test,
    include: ["test/e2e/**/*.test.ts", "test/conformance/conformance.test.ts"],
    exclude: ["test/e2e/workers*.test.ts", "**/node_modules/**"],
    env: { QNAT_WORKERS: "2", QNAT_CONFORMANCE_WORKERS: "2" },
  },
});
