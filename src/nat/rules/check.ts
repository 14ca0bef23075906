/**
 * `qnat rules check FILE`: every problem of an iptables nat text as `FILE:LINE: message`
 * (the CLI exits 2 when the list is not empty).
 */
import { parseRules } from "./parse.js";

export function checkRulesText(text: string, fileName: string): string[] {
  return parseRules(text).errors.map((error) => `${fileName}:${error.line}: ${error.message}`);
}
