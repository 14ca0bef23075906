/**
 * Splits one line of iptables text into words the way a POSIX shell would for the subset that
 * rules use: blanks separate words; "double quotes" group and allow \" and \\ inside (which is
 * also what iptables-restore's add_param_to_argv accepts); 'single quotes' are literal; a
 * backslash outside quotes escapes the next character. No expansion of any kind.
 */
export type TokenizeResult = { readonly tokens: string[]; readonly error?: undefined } | { readonly error: string };

export function tokenizeLine(line: string): TokenizeResult {
  const tokens: string[] = [];
  let word = "";
  let inWord = false;
  let i = 0;
  while (i < line.length) {
    const ch = line[i]!;
    if (ch === " " || ch === "\t" || ch === "\r" || ch === "\n") {
      if (inWord) tokens.push(word);
      word = "";
      inWord = false;
      i++;
      continue;
    }
    inWord = true;
    if (ch === '"') {
      const end = readDoubleQuoted(line, i + 1);
      if (end === undefined) return { error: "unterminated double quote" };
      word += end.text;
      i = end.next;
    } else if (ch === "'") {
      const close = line.indexOf("'", i + 1);
      if (close < 0) return { error: "unterminated single quote" };
      word += line.slice(i + 1, close);
      i = close + 1;
    } else if (ch === "\\") {
      if (i + 1 >= line.length) return { error: "backslash at end of line" };
      word += line[i + 1];
      i += 2;
    } else {
      word += ch;
      i++;
    }
  }
  if (inWord) tokens.push(word);
  return { tokens };
}

function readDoubleQuoted(line: string, start: number): { text: string; next: number } | undefined {
  let text = "";
  let i = start;
  while (i < line.length) {
    const ch = line[i]!;
    if (ch === '"') return { text, next: i + 1 };
    if (ch === "\\" && i + 1 < line.length) {
      const next = line[i + 1]!;
      // Inside double quotes a shell only unescapes these; iptables-save escapes " \ and '.
      if (next === '"' || next === "\\" || next === "'" || next === "$" || next === "`") {
        text += next;
        i += 2;
        continue;
      }
    }
    text += ch;
    i++;
  }
  return undefined;
}

/**
 * Quotes a string argument as iptables-save does (xtables_save_string in libxtables/xtables.c):
 * bare when it is non-empty and only [A-Za-z0-9_-], otherwise in double quotes with " \ and '
 * escaped by a backslash.
 */
export function quoteForSave(value: string): string {
  if (/^[A-Za-z0-9_-]+$/.test(value)) return value;
  return `"${value.replace(/["\\']/g, (c) => `\\${c}`)}"`;
}
