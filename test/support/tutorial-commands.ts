/**
 * The commands of docs/tutorial.md and docs/tutorial.zh.md, and how their outputs are compared
 * (test/e2e/tutorial.test.ts runs them).
 *
 * A command is a line `$ COMMAND` inside a ```console block; the lines after it, up to the next
 * `$ ` line or the end of the block, are the output the tutorial shows (stdout and stderr as a
 * terminal shows them). A leading `sudo ` is dropped (the test runs as root).
 *
 * Both sides are normalised the same way before they are compared, so what varies from run to run
 * does not make the tutorial stale, and nothing else is forgiven:
 *   - trailing spaces at line ends and blank lines at the end are dropped (`ip route` pads);
 *   - times: `0.258 ms` -> `T ms`, `time 1034ms` -> `time Tms`, ping's `rtt ... = a/b/c/d ms`;
 *   - ephemeral ports and ids: a number from 32768 to 65535 (Linux's ip_local_port_range and
 *     what NAT keeps of it) -> `PORT`; ICMP ids `id=N` / `id N` -> `id=ID` / `id ID`;
 *   - conntrack: the timeout column (`tcp      6 119 ...`, `icmp     1 29 ...`) -> `T`, and the
 *     entries of one listing are compared as a set (sorted): a table walk promises no order;
 *   - counters: `qnat show ports`' packet and byte columns, `-c PKTS BYTES` of `show rules -v`;
 *   - process ids: `pid N`;
 *   - MAC addresses -> `MAC` (TAP ports draw none today, but a kernel may show one);
 *   - tcpdump's `seq`/`ack`/`win`/`TS val ... ecr ...` numbers.
 * The namespaces of the lab the test builds carry a tag; its outputs have the tag removed before
 * they are compared (`untag`), and the tutorial's commands get it (`retag`).
 */

export interface TutorialCommand {
  /** The command as the tutorial shows it (without `$ `). */
  readonly command: string;
  /** The output the tutorial shows under it. */
  readonly expected: string;
  /** 1-based line of the `$ ` line in its file. */
  readonly line: number;
}

/** Every `$ ` command of the ```console blocks of a markdown text, in order. */
export function extractCommands(markdown: string): TutorialCommand[] {
  const commands: TutorialCommand[] = [];
  const lines = markdown.split("\n");
  let inConsole = false;
  let current: { command: string; line: number; output: string[] } | undefined;
  const close = (): void => {
    if (current !== undefined) commands.push({ command: current.command, expected: current.output.join("\n"), line: current.line });
    current = undefined;
  };
  lines.forEach((text, index) => {
    if (!inConsole) {
      if (/^```console\s*$/.test(text)) inConsole = true;
      return;
    }
    if (/^```\s*$/.test(text)) {
      close();
      inConsole = false;
      return;
    }
    if (text.startsWith("$ ")) {
      close();
      current = { command: text.slice(2).replace(/^sudo /, ""), line: index + 1, output: [] };
      return;
    }
    current?.output.push(text);
  });
  return commands;
}

/** Runs of conntrack -L lines: compared as a set. */
const CONNTRACK_LINE = /^(tcp|udp|icmp)\s+\d+ /;

export function normaliseOutput(text: string): string {
  const lines = text
    .split("\n")
    .map((line) =>
      line
        .replace(/\s+$/, "")
        .replace(/\b(tcp|udp|icmp)(\s+)(6|17|1) \d+ /g, "$1$2$3 T ")
        .replace(/rtt min\/avg\/max\/mdev = \S+ ms/, "rtt min/avg/max/mdev = T ms")
        .replace(/\btime=\d+(\.\d+)? ms/g, "time=T ms")
        .replace(/\d+\.\d+ ms\b/g, "T ms")
        .replace(/, time \d+ms/, ", time Tms")
        .replace(/\bid([= ])\d+/g, "id$1ID")
        .replace(/\bpid \d+/g, "pid N")
        .replace(/^(\s+(?:wire|mirror))(\s+\d+){4}$/, "$1 N N N N")
        .replace(/ -c \d+ \d+/g, " -c N N")
        // The kernel's root qdisc of a TUN device: pfifo_fast, or mq when qnat opens it with one
        // queue per worker (IFF_MULTI_QUEUE, workers > 1).
        .replace(/ qdisc mq /g, " qdisc pfifo_fast ")
        .replace(/\b[0-9a-f]{2}(:[0-9a-f]{2}){5}\b/g, "MAC")
        .replace(/\b(seq|ack|win) \d+(:\d+)?/g, "$1 N")
        .replace(/TS val \d+ ecr \d+/g, "TS val N ecr N")
        .replace(/\b(3[2-9]\d{3}|[45]\d{4}|6[0-4]\d{3}|65[0-4]\d{2}|655[0-2]\d|6553[0-5])\b/g, "PORT"),
    );
  while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  // Sort each run of conntrack entries.
  const out: string[] = [];
  for (let i = 0; i < lines.length; ) {
    if (!CONNTRACK_LINE.test(lines[i]!)) {
      out.push(lines[i++]!);
      continue;
    }
    const run: string[] = [];
    while (i < lines.length && CONNTRACK_LINE.test(lines[i]!)) run.push(lines[i++]!);
    out.push(...run.sort());
  }
  return out.join("\n");
}

/** The tutorial's namespace names, longest first, and their tagged names in the test's lab. */
export function namespaceRenames(names: readonly string[], tag: string): Array<[string, string]> {
  return [...names].sort((a, b) => b.length - a.length).map((name) => [name, `${name}-${tag}`]);
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The command with the lab's namespaces renamed (a name only where it stands alone). */
export function retag(command: string, renames: ReadonlyArray<[string, string]>): string {
  let out = command;
  for (const [from, to] of renames) out = out.replace(new RegExp(`(?<![\\w-])${escape(from)}(?![\\w-])`, "g"), to);
  return out;
}

/** The output with the lab's tagged namespaces named as the tutorial names them. */
export function untag(output: string, renames: ReadonlyArray<[string, string]>): string {
  let out = output;
  for (const [from, to] of renames) out = out.split(to).join(from);
  return out;
}

/** The qnat subcommand a command line runs (`qnat capture ...` -> `capture`), or undefined. */
export function qnatSubcommands(command: string): string[] {
  return [...command.matchAll(/(?:^|[|;&(]\s*)qnat\s+(\S+)/g)].map((m) => m[1]!);
}

/** Whether a command needs no root and no lab: trace from a config, rules generate/check. */
export function isOffline(command: string): boolean {
  const subcommands = qnatSubcommands(command);
  return (
    subcommands.length > 0 &&
    subcommands.every((sub) => sub === "rules" || sub === "trace") &&
    !/qnat trace (?!--config )/.test(command) &&
    !/\bqnat rules (save|restore)\b/.test(command) &&
    !/\bip netns\b/.test(command) &&
    !/(^|[^&])&([^&]|$)/.test(command) // nothing in the background
  );
}
