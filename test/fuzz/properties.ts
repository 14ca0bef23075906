/**
 * The two fuzzing properties, shared by the bounded runs in `npm test` (pipeline.test.ts,
 * rules.test.ts) and the long run (scripts/fuzz.ts). Each throws FuzzFailure on a broken
 * invariant. Not a test file.
 */
import fc from "fast-check";
import { checkRulesText } from "../../src/nat/rules/check.js";
import { compile } from "../../src/nat/rules/evaluate.js";
import { formatRules, formatSave } from "../../src/nat/rules/format.js";
import { parseRules } from "../../src/nat/rules/parse.js";
import { FuzzFailure, PipelineHarness, type RunStats } from "./pipeline-harness.js";
import { rulesCaseArb, rulesTextOf, type RulesCase } from "./rules-scenario.js";
import { scenarioArb, type Scenario, type Step } from "./scenario.js";

const PORTS = ["qr-694450d6-f6", "qg-e76de35e-90"];

/**
 * Whatever arrives, the seed's router keeps every invariant of pipeline-harness.ts; and, for one
 * scenario in four, it forwards exactly the same bytes with the established fast path off and
 * every packet explained as `qnat trace` explains it.
 */
export function pipelineProperty(onRun: (stats: RunStats) => void = () => {}): fc.IPropertyWithHooks<[Scenario]> {
  return fc.property(scenarioArb, (scenario) => checkPipelineScenario(scenario, onRun));
}

/** The pipeline property for one scenario: throws FuzzFailure when an invariant breaks. */
export function checkPipelineScenario(scenario: Scenario, onRun: (stats: RunStats) => void = () => {}): void {
  const harness = new PipelineHarness(scenario);
  onRun(harness.run(scenario.steps));
  if (scenario.rngSeed % 4 !== 0) return;
  const general = new PipelineHarness(scenario);
  general.dataplane.fastPath = false;
  const explained = general.traceEverything();
  general.run(scenario.steps);
  if (explained.some((line) => /undefined|NaN|\[object /.test(line))) {
    throw new FuzzFailure(`a trace line says: ${explained.find((line) => /undefined|NaN|\[object /.test(line))}`);
  }
  const at = harness.log.findIndex((line, i) => line !== general.log[i]);
  if (at >= 0 || harness.log.length !== general.log.length) {
    throw new FuzzFailure(`the fast path changed the outcome:\n  with it:    ${harness.log[at] ?? "(nothing)"}\n  without it: ${general.log[at] ?? "(nothing)"}`);
  }
}

/**
 * Whatever the nat rules text, the reader never throws; every problem is one `FILE:LINE: message`
 * on a line of the text; a text it accepts compiles, prints (`-S` and iptables-save) to text it
 * accepts again and prints the same, and a router using it keeps every pipeline invariant.
 */
export function rulesProperty(onRun: (stats: RunStats) => void = () => {}): fc.IPropertyWithHooks<[RulesCase, Scenario]> {
  return fc.property(rulesCaseArb, scenarioArb, (rulesCase, scenario) => {
    const text = rulesTextOf(rulesCase);
    const lines = text.split("\n").length;
    const { table, errors } = parseRules(text);
    for (const line of checkRulesText(text, "nat.rules")) {
      if (!/^nat\.rules:\d+: \S[^\n]*$/.test(line)) throw new FuzzFailure(`not one FILE:LINE: message line: ${JSON.stringify(line)}`);
    }
    for (const error of errors) if (!(error.line >= 1 && error.line <= lines)) throw new FuzzFailure(`problem reported on line ${error.line} of a ${lines}-line text`);
    if (errors.length > 0) return;
    compile(table, PORTS);
    const printed = formatRules(table);
    for (const [form, again] of [["-S", printed], ["iptables-save", formatSave(table)]] as const) {
      const reparsed = parseRules(again);
      if (reparsed.errors.length > 0) throw new FuzzFailure(`the ${form} print of an accepted text is refused: ${JSON.stringify(reparsed.errors)}\n${again}`);
      const reprinted = formatRules(reparsed.table);
      if (reprinted !== printed) throw new FuzzFailure(`the ${form} print reads back differently:\n${printed}---\n${reprinted}`);
    }
    onRun(new PipelineHarness(scenario, text).run(scenario.steps.slice(0, 4)));
  });
}

/**
 * fast-check's array shrinking keeps some trailing elements it could drop (it removes from the
 * front first): this greedy pass removes whole steps, then packets of a batch, flow packets,
 * mutations and burst connections, one at a time, for as long as `fails` still holds. Used on a shrunk counterexample.
 */
export function reduceScenario(scenario: Scenario, fails: (s: Scenario) => boolean): Scenario {
  let best = scenario;
  const candidates = function* (s: Scenario): Generator<Scenario> {
    for (let i = 0; i < s.steps.length; i++) yield { ...s, steps: s.steps.filter((_, k) => k !== i) };
    for (let i = 0; i < s.steps.length; i++) {
      const step = s.steps[i]!;
      const replace = (next: Step): Scenario => ({ ...s, steps: s.steps.map((x, k) => (k === i ? next : x)) });
      if (step.t === "batch") {
        for (let p = 0; p < step.packets.length; p++) {
          if (step.packets.length > 1) yield replace({ ...step, packets: step.packets.filter((_, k) => k !== p) });
          const gen = step.packets[p]!.gen;
          if ((gen.kind === "spec" || gen.kind === "icmpError") && gen.mutations.length > 0) {
            for (let m = 0; m < gen.mutations.length; m++) {
              const packets = step.packets.map((x, k) => (k === p ? { ...x, gen: { ...gen, mutations: gen.mutations.filter((_, j) => j !== m) } } : x));
              yield replace({ ...step, packets });
            }
          }
        }
      } else if (step.t === "burst" && step.count > 1) {
        yield replace({ ...step, count: step.count >> 1 });
        yield replace({ ...step, count: step.count - 1 });
      } else if (step.t === "flow" && step.tcpFlags.length > 1) {
        for (let f = 0; f < step.tcpFlags.length; f++) yield replace({ ...step, tcpFlags: step.tcpFlags.filter((_, k) => k !== f) });
      }
    }
  };
  for (let progress = true; progress; ) {
    progress = false;
    for (const candidate of candidates(best)) {
      if (candidate.steps.length > 0 && fails(candidate)) {
        best = candidate;
        progress = true;
        break;
      }
    }
  }
  return best;
}

/** True when the pipeline property fails on `scenario` (for reduceScenario). */
export function pipelineFails(scenario: Scenario): boolean {
  try {
    checkPipelineScenario(scenario);
    return false;
  } catch (error) {
    return error instanceof FuzzFailure;
  }
}
