/**
 * Mutated iptables nat texts for the rules reader's fuzzing (rules.test.ts, scripts/fuzz.ts): the
 * seed's `iptables -t nat -S` with lines dropped, repeated, swapped, cut, and tokens replaced or
 * inserted from iptables' own vocabulary (and some garbage), in `-S` or iptables-save form.
 * Not a test file.
 */
import fc from "fast-check";
import { SEED_RULES } from "../nat/rules/seed-rules.js";

const VOCABULARY = [
  "-A", "-I", "-N", "-P", "-X", "-F", "-s", "-d", "!", "-p", "tcp", "udp", "icmp", "sctp", "all", "47",
  "-m", "conntrack", "--ctstate", "DNAT", "SNAT", "NEW,ESTABLISHED", "INVALID", "--dport", "--sport", "80", "9697",
  "0", "65535", "65536", "1000:2000", "2000:1000", "-j", "MASQUERADE", "REDIRECT", "ACCEPT", "RETURN", "DROP",
  "--to-destination", "--to-source", "--to-ports", "10.0.0.2", "10.0.0.2:80", "9.186.100.2-9.186.100.9:1000-2000",
  "1.2.3.4/33", "10.0.0.0/24", "0.0.0.0/0", "256.1.1.1", "-i", "-o", "qg-e76de35e-90", "qr-694450d6-f6", "eth+",
  "--random", "--random-fully", "--persistent", "-f", "--icmp-type", "echo-request", "-g", "--comment", "\"a b\"",
  "\"unterminated", "'", "\\", "-c", "[0:0]", "PREROUTING", "POSTROUTING", "OUTPUT", "INPUT", "neutron-vpn-agen-snat",
  "x".repeat(40), "--", "-", "", "é", "\u0000", "#",
];

const token = fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...VOCABULARY) }, { weight: 1, arbitrary: fc.string({ maxLength: 12 }) });

type LineEdit =
  | { op: "drop"; at: number }
  | { op: "repeat"; at: number }
  | { op: "swap"; at: number; with: number }
  | { op: "cut"; at: number; keep: number }
  | { op: "replace"; at: number; word: number; token: string }
  | { op: "insert"; at: number; word: number; token: string }
  | { op: "line"; at: number; tokens: string[] };

export interface RulesCase {
  edits: LineEdit[];
  /** iptables-save form (`*nat`, `:CHAIN POLICY [0:0]`, rules, COMMIT) instead of `-S`. */
  save: boolean;
}

const at = fc.nat({ max: 40 });
const edit: fc.Arbitrary<LineEdit> = fc.oneof(
  fc.record({ op: fc.constant("drop" as const), at }),
  fc.record({ op: fc.constant("repeat" as const), at }),
  fc.record({ op: fc.constant("swap" as const), at, with: at }),
  fc.record({ op: fc.constant("cut" as const), at, keep: fc.nat({ max: 80 }) }),
  fc.record({ op: fc.constant("replace" as const), at, word: fc.nat({ max: 12 }), token }),
  fc.record({ op: fc.constant("insert" as const), at, word: fc.nat({ max: 12 }), token }),
  fc.record({ op: fc.constant("line" as const), at, tokens: fc.array(token, { maxLength: 10 }) }),
);

export const rulesCaseArb: fc.Arbitrary<RulesCase> = fc.record({ edits: fc.array(edit, { maxLength: 6 }), save: fc.boolean() });

/** The text a case stands for. Deterministic. */
export function rulesTextOf(c: RulesCase): string {
  const lines = SEED_RULES.trimEnd().split("\n");
  for (const e of c.edits) {
    const i = lines.length === 0 ? 0 : e.at % lines.length;
    if (e.op === "line") lines.splice(i, 0, e.tokens.join(" "));
    if (lines.length === 0) continue;
    if (e.op === "drop") lines.splice(i, 1);
    else if (e.op === "repeat") lines.splice(i, 0, lines[i]!);
    else if (e.op === "swap") [lines[i], lines[e.with % lines.length]] = [lines[e.with % lines.length]!, lines[i]!];
    else if (e.op === "cut") lines[i] = lines[i]!.slice(0, e.keep);
    else if (e.op === "replace" || e.op === "insert") {
      const words = lines[i]!.split(" ");
      const w = e.word % (words.length + 1);
      words.splice(w, e.op === "replace" ? 1 : 0, e.token);
      lines[i] = words.join(" ");
    }
  }
  if (!c.save) return lines.join("\n") + "\n";
  // iptables-save: policies and chains as declarations, then the rules, then COMMIT.
  const declared = lines.map((l) => /^-P (\S+) (\S+)$/.exec(l) ?? /^-N (\S+)$/.exec(l)).map((m) => (m === null ? null : `:${m[1]} ${m[2] ?? "-"} [0:0]`));
  return ["*nat", ...declared.filter((d) => d !== null), ...lines.filter((_, k) => declared[k] === null), "COMMIT"].join("\n") + "\n";
}
