/**
 * Property-based fuzzing of the whole pipeline (pipeline-harness.ts says what is checked): random
 * and mutated packets of the seed's router through Dataplane.processBatch. A bounded run here;
 * `npm run fuzz -- --minutes N` runs the same property for longer (docs/fuzzing.md).
 * A failure prints fast-check's seed and path: replay it with `npm run fuzz -- --seed S --path P`.
 */
import fc from "fast-check";
import { describe, it } from "vitest";
import { pipelineProperty } from "./properties.js";

/** Scenarios per run: about two seconds under vitest (QNAT_FUZZ_RUNS=N for more; the long run is npm run fuzz). */
const RUNS = Number(process.env.QNAT_FUZZ_RUNS ?? 50);

describe("whatever arrives, the router keeps its invariants", () => {
  it("random and mutated packets of the seed's traffic: no throw, every drop counted, checksums, TTL and translations explained by conntrack, replies find their way back", () => {
    fc.assert(pipelineProperty(), { numRuns: RUNS });
  });
});
