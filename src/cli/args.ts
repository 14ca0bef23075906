/**
 * The qnat command line's words: positional arguments and the few options
 * (`--json`, `-v`/`--verbose`, `--router NS`, `--config FILE`, `--release NAME`, `-h`/`--help`). Each command
 * says which options it takes; anything else is a UsageError (exit 2).
 */
import { UsageError } from "./errors.js";

const BOOLEAN_OPTIONS = new Map([
  ["--json", "json"],
  ["-v", "verbose"],
  ["--verbose", "verbose"],
  ["-h", "help"],
  ["--help", "help"],
  // `qnat rules save -c` (iptables-save -c: with counters)
  ["-c", "counters"],
  ["--counters", "counters"],
  // `qnat top --once`: one snapshot instead of the live screen
  ["--once", "once"],
]);
const VALUE_OPTIONS = new Map([
  ["--router", "router"],
  ["--config", "config"],
  // `qnat rules generate --release NAME`
  ["--release", "release"],
]);

export class ParsedArgs {
  readonly positional: string[] = [];
  readonly flags = new Set<string>();
  readonly values = new Map<string, string>();

  value(name: string): string | undefined {
    return this.values.get(name);
  }

  /** Refuses options that `command` does not take. */
  allow(command: string, names: readonly string[]): void {
    for (const name of [...this.flags, ...this.values.keys()]) {
      if (name !== "help" && !names.includes(name)) throw new UsageError(`qnat ${command} does not take --${name}`);
    }
  }

  /** The one positional argument a command needs. */
  exactlyOne(rest: readonly string[], usage: string): string {
    if (rest.length !== 1) throw new UsageError(`usage: ${usage}`);
    return rest[0]!;
  }
}

export function parseArgs(argv: readonly string[]): ParsedArgs {
  const args = new ParsedArgs();
  let onlyPositional = false;
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (onlyPositional || !word.startsWith("-") || word === "-") {
      args.positional.push(word);
      continue;
    }
    if (word === "--") {
      onlyPositional = true;
      continue;
    }
    const eq = word.indexOf("=");
    const name = eq > 0 ? word.slice(0, eq) : word;
    const flag = BOOLEAN_OPTIONS.get(name);
    if (flag !== undefined && eq < 0) {
      args.flags.add(flag);
      continue;
    }
    const option = VALUE_OPTIONS.get(name);
    if (option !== undefined) {
      const value = eq > 0 ? word.slice(eq + 1) : argv[++i];
      if (value === undefined || value === "") throw new UsageError(`${name} needs a value`);
      args.values.set(option, value);
      continue;
    }
    throw new UsageError(`unknown option ${word}`);
  }
  return args;
}
