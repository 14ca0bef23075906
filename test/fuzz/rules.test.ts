/**
 * Fuzzing the iptables rules reader (src/nat/rules/parse.ts) with mutated copies of the seed's nat
 * rules (properties.ts rulesProperty says what must hold). A bounded run here; the long one is
 * `npm run fuzz -- --minutes N` (docs/fuzzing.md).
 */
import fc from "fast-check";
import { describe, it } from "vitest";
import { rulesProperty } from "./properties.js";

/** Cases per run: about a second of one core (QNAT_FUZZ_RUNS=N for more). */
const RUNS = Number(process.env.QNAT_FUZZ_RUNS ?? 60);

describe("the rules reader, whatever the text", () => {
  it("never throws; reports FILE:LINE problems on lines of the text; what it accepts prints back to itself and routes the seed's traffic with every invariant kept", () => {
    fc.assert(rulesProperty(), { numRuns: RUNS });
  });
});
