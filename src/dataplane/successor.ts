/**
 * What a dataplane built to replace a running one (a live change: `qnat apply`, SIGHUP, `qnat
 * rules restore`; dataplane/from-config.ts `successorOf`) inherits besides the connection table
 * and NAT state it shares: the counters. The router's main thread and every worker thread
 * (control/dataplane-worker.ts) swap their dataplanes with it.
 */
import { NetfilterNat } from "./netfilter-nat.js";
import type { Dataplane } from "./pipeline.js";
import { formatRule } from "../nat/rules/format.js";
import { rulesInOrder, type NatChain, type NatTable } from "../nat/rules/model.js";

/** Rule keys in evaluation order: the rule's text and its occurrence among rules of that text. */
function ruleKeys(table: NatTable): string[] {
  const seen = new Map<string, number>();
  return rulesInOrder(table).map((rule) => {
    const text = formatRule(rule);
    const n = seen.get(text) ?? 0;
    seen.set(text, n + 1);
    return `${n} ${text}`;
  });
}

/**
 * Gives `to` (the successor being swapped in) the counters of `from`: per port by name (rx/tx,
 * mirror, ICMP errors, drops by reason), per rule for the rules that did not change, and the
 * built-in chains' policy counters. Control plane; runs once per live change.
 */
export function carryOverCounters(from: Dataplane, to: Dataplane): void {
  const portStride = from.portCounters.length / Math.max(1, from.ports.length);
  const dropStride = from.drops.length / Math.max(1, from.ports.length);
  for (const port of to.ports) {
    const before = from.ports.find((p) => p.name === port.name);
    if (before === undefined) continue;
    to.portCounters.set(from.portCounters.subarray(before.index * portStride, (before.index + 1) * portStride), port.index * portStride);
    to.drops.set(from.drops.subarray(before.index * dropStride, (before.index + 1) * dropStride), port.index * dropStride);
  }
  to.fragmentsExpired = from.fragmentsExpired;
  Object.assign(to.fragmentOutput.counters, from.fragmentOutput.counters);
  if (!(from.nat instanceof NetfilterNat) || !(to.nat instanceof NetfilterNat)) return;
  const old = from.nat.rules;
  const now = to.nat.rules;
  const oldIndex = new Map(ruleKeys(tableOf(old)).map((key, index) => [key, index]));
  ruleKeys(tableOf(now)).forEach((key, index) => {
    const before = oldIndex.get(key);
    if (before === undefined) return;
    now.packets[index] = old.packets[before]!;
    now.bytes[index] = old.bytes[before]!;
    now.allocationFailures[index] = old.allocationFailures[before]!;
  });
  now.allocationFailures[now.rules.length] = old.allocationFailures[old.rules.length]!;
  now.chains.forEach((chain, c) => {
    if (chain.hook === undefined) return;
    const before = old.chains.findIndex((o) => o.name === chain.name);
    if (before < 0) return;
    now.policyPackets[c] = old.policyPackets[before]!;
    now.policyBytes[c] = old.policyBytes[before]!;
  });
}

/** The compiled rules' model as a table (its rules in evaluation order). */
export function tableOf(rules: { readonly chains: readonly NatChain[] }): NatTable {
  return { chains: new Map(rules.chains.map((c) => [c.name, c])) };
}
