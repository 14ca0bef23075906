import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // One file at a time: the namespace tests (e2e, conformance) time real traffic through real
    // processes, and on a 2-core machine a CPU-heavy unit test beside them would be measured too.
    fileParallelism: false,
  },
});
