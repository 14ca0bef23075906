#!/usr/bin/env node
/**
 * The `qnat` command (package.json "bin"). Contracts in DESIGN.md "CLI". Every error a user can
 * act on is one line: a bad config or rules file `FILE:LINE: ...` and a usage mistake exit 2,
 * missing privileges or an operational problem exit 1; anything unexpected is
 * `qnat: internal error: ...` with exit 70 (EX_SOFTWARE, sysexits.h), the stack only with
 * QNAT_DEBUG=1.
 */
import { readFileSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { ConfigError } from "../config/config.js";
import { CommandError } from "../io/netns.js";
import { TunAddonNotBuiltError } from "../io/tun.js";
import { ControlError } from "../control/socket.js";
import { OperationalError, PrivilegeError, UsageError } from "./errors.js";
import { parseArgs, type ParsedArgs } from "./args.js";
import { defaultConfigPath, resolveRouterNamespace } from "./paths.js";

export const USAGE = `usage: qnat COMMAND ...

  qnat run CONFIG                       run the router of CONFIG in the foreground (root)
  qnat lab up [CONFIG]                  build the lab of CONFIG (default examples/seed.yaml) and start its router (root)
  qnat lab down [CONFIG]                stop the lab's router and remove everything the lab made (root)
  qnat demo [CONFIG]                    lab up, then a guided tour with real traffic (what \`npm start\` runs; root)
  qnat show ports|routes|rules|conntrack|stats|neigh [--json] [-v] [--router NAMESPACE | --config CONFIG]
                                        ask the running router (default: the seed's)
  qnat trace [--config CONFIG | --router NAMESPACE] [--json] 'PORT PROTO SRC[:SPORT] > DST[:DPORT] [FLAGS]'
                                        explain one packet hop by hop (offline from a config needs no root)
                                        FLAGS: syn ack fin rst psh urg, seq=N ack=N win=N, ttl=N len=N df,
                                        ICMP id=N type=N code=N; a TCP segment of a live connection without
                                        seq=/ack= gets in-window numbers from the connection
  qnat rules check FILE                 check iptables nat text; each problem as FILE:LINE: ...
  qnat rules generate DESCRIPTION [--release icehouse|kilo|liberty]
                                        the nat table Neutron's L3 agent installs for the router DESCRIPTION
                                        describes (examples/seed-router.neutron.yaml), as iptables -t nat -S
  qnat conntrack -L|-D|-F [-f ipv4|ipv6] [-p PROTO] [-s|-d|-r|-q ADDR[/LEN]] [--sport|--dport|--reply-port-src|--reply-port-dst PORT]
                 [--state STATE] [--status ASSURED,...] [--router NAMESPACE]
                                        conntrack-tools' list, delete and flush against the running router
  qnat apply CONFIG [--router NAMESPACE]
                                        change the running router to CONFIG, live; prints what changed (root)
  qnat rules save [-c] [--router NAMESPACE]
                                        the live nat table as iptables-save -t nat (-c: with counters)
  qnat rules restore [FILE|-] [--router NAMESPACE]
                                        replace the live nat table with iptables-restore text, all or nothing
  qnat top [--router NAMESPACE] [--once]
                                        the running router's rates, connection table and busiest connections,
                                        every second (q quits); --once: one snapshot, without a terminal
  qnat capture PORT [PORT...] [--leg wire|mirror|both] [-c COUNT] [-G SECONDS] [-B KIB] [--router NAMESPACE] -w FILE|-
                                        pcapng of the running router's ports, each packet with a comment
                                        saying what qnat did to it (-w -: to stdout, e.g. | tcpdump -r -)
  qnat help                             this text
`;

/** EX_SOFTWARE (sysexits.h): an internal software error. */
export const EXIT_INTERNAL = 70;

type Out = (text: string) => void;

export interface CliIo {
  readonly out: Out;
  readonly err: Out;
}

const processIo: CliIo = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

function withNewline(text: string): string {
  return text.endsWith("\n") || text === "" ? text : `${text}\n`;
}

/** Runs one qnat command line (without `node main.js`); resolves with the exit code. */
export async function runCli(argv: readonly string[], io: CliIo = processIo): Promise<number> {
  try {
    // conntrack-tools' own options (-L, -s, -d...), not qnat's: parsed on their own.
    if (argv[0] === "conntrack") return await conntrackCommand(argv.slice(1), io);
    // tcpdump's options (-w, -c COUNT, -G), not qnat's: parsed on their own.
    if (argv[0] === "capture") return await captureCommand(argv.slice(1), io);
    return await dispatch(parseArgs(argv), io);
  } catch (error) {
    return reportError(error, io);
  }
}

/** Prints an error as the CLI does and returns its exit code. */
export function reportError(error: unknown, io: CliIo): number {
  if (error instanceof ConfigError) {
    io.err(`${error.message}\n`);
    return 2;
  }
  if (error instanceof UsageError) {
    io.err(`qnat: ${error.message}\n${error.message.startsWith("usage") ? "" : "run `qnat help` for usage\n"}`);
    return 2;
  }
  if (error instanceof PrivilegeError || error instanceof OperationalError || error instanceof ControlError) {
    io.err(`qnat: ${firstLine(error.message)}\n`);
    return error.exitCode;
  }
  if (error instanceof CommandError || error instanceof TunAddonNotBuiltError) {
    io.err(`qnat: ${firstLine(error.message)}\n`);
    return 1;
  }
  const message = error instanceof Error ? error.message : String(error);
  io.err(`qnat: internal error: ${firstLine(message)}\n`);
  if (process.env["QNAT_DEBUG"] === "1" && error instanceof Error && error.stack) io.err(`${error.stack}\n`);
  return EXIT_INTERNAL;
}

function firstLine(text: string): string {
  return text.split("\n", 1)[0]!.trim();
}

async function dispatch(args: ParsedArgs, io: CliIo): Promise<number> {
  const [command, ...rest] = args.positional;
  if (args.flags.has("help") || command === undefined || command === "help") {
    io.out(USAGE);
    return command === undefined && !args.flags.has("help") ? 2 : 0;
  }
  switch (command) {
    case "run": {
      args.allow("run", []);
      const config = args.exactlyOne(rest, "qnat run CONFIG");
      const { runRouterCommand } = await import("../control/router-process.js");
      return runRouterCommand(config);
    }
    case "lab": {
      args.allow("lab", []);
      const [action, config, ...extra] = rest;
      if ((action !== "up" && action !== "down") || extra.length > 0) throw new UsageError("usage: qnat lab up|down [CONFIG]");
      const lab = await import("../control/lab.js");
      const path = config ?? defaultConfigPath();
      return action === "up" ? lab.labUp(path, io.out) : lab.labDown(path, io.out);
    }
    case "demo": {
      args.allow("demo", []);
      if (rest.length > 1) throw new UsageError("usage: qnat demo [CONFIG]");
      const { runDemo } = await import("./demo.js");
      return runDemo(rest[0] ?? defaultConfigPath(), io.out);
    }
    case "show": {
      args.allow("show", ["json", "verbose", "router", "config"]);
      const what = args.exactlyOne(rest, "qnat show ports|routes|rules|conntrack|stats|neigh");
      const { SHOW_WHAT, controlRequest, controlSocketPath } = await import("../control/socket.js");
      if (!(SHOW_WHAT as readonly string[]).includes(what)) {
        throw new UsageError(`show what? expected one of ${SHOW_WHAT.join(", ")}`);
      }
      const namespace = resolveRouterNamespace(args.value("router"), args.value("config"));
      // A streamed answer (show conntrack) is printed as its pieces arrive.
      let streamed = "";
      const response = await controlRequest(
        controlSocketPath(namespace),
        { cmd: "show", what: what as (typeof SHOW_WHAT)[number], json: args.flags.has("json"), verbose: args.flags.has("verbose") },
        undefined,
        (piece) => {
          if (piece === "") return;
          io.out(piece);
          streamed = piece;
        },
      );
      if (!response.ok) throw new OperationalError(response.error);
      if (streamed !== "") io.out(withNewline(streamed).slice(streamed.length));
      else io.out(withNewline(response.text ?? JSON.stringify(response.data)));
      return 0;
    }
    case "trace":
      args.allow("trace", ["json", "router", "config"]);
      return trace(args, rest, io);
    case "rules": {
      const [sub, file, ...extra] = rest;
      if (sub === "save" || sub === "restore") return liveRules(args, rest, io);
      if (sub === "generate") {
        args.allow("rules generate", ["release"]);
        if (file === undefined || extra.length > 0) throw new UsageError("usage: qnat rules generate DESCRIPTION [--release NAME]");
        return rulesGenerate(file, args.value("release"), io);
      }
      args.allow("rules", []);
      if (sub !== "check" || file === undefined || extra.length > 0) throw new UsageError("usage: qnat rules check FILE | qnat rules generate DESCRIPTION [--release NAME]");
      return rulesCheck(file, io);
    }
    case "top": {
      args.allow("top", ["router", "config", "once"]);
      if (rest.length > 0) throw new UsageError("usage: qnat top [--router NAMESPACE] [--once]");
      const { runTop } = await import("./top.js");
      return runTop({ namespace: resolveRouterNamespace(args.value("router"), args.value("config")), once: args.flags.has("once"), out: io.out });
    }
    case "apply":
      args.allow("apply", ["router"]);
      return apply(args.exactlyOne(rest, "qnat apply CONFIG [--router NAMESPACE]"), args.value("router"), io);
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

async function trace(args: ParsedArgs, rest: readonly string[], io: CliIo): Promise<number> {
  if (rest.length === 0) throw new UsageError("usage: qnat trace [--config CONFIG | --router NAMESPACE] [--json] 'PORT PROTO SRC[:SPORT] > DST[:DPORT] [FLAGS]'");
  const spec = rest.join(" ");
  const json = args.flags.has("json");
  const configPath = args.value("config");
  const router = args.value("router");
  if (configPath !== undefined && router !== undefined) throw new UsageError("give --config or --router, not both");
  if (router === undefined) {
    // Offline: a fresh dataplane built from the config; no root needed.
    const { loadConfig } = await import("../config/config.js");
    const { buildDataplane } = await import("../dataplane/from-config.js");
    const traceModule = await import("../control/trace.js");
    const { XorShift32 } = await import("../core/rng.js");
    // Fixed keys: the same packet traces the same way (port choice included) every run.
    const dataplane = buildDataplane(loadConfig(configPath ?? defaultConfigPath()), { rng: new XorShift32() });
    let result;
    try {
      result = traceModule.runTrace(dataplane, spec);
    } catch (error) {
      if (error instanceof traceModule.TraceSpecError) throw new UsageError(error.message);
      throw error;
    }
    io.out(withNewline(json ? JSON.stringify(result) : traceModule.formatTrace(result)));
    return result.verdict === "drop" ? 1 : 0;
  }
  const { controlRequest, controlSocketPath } = await import("../control/socket.js");
  const response = await controlRequest(controlSocketPath(router), { cmd: "trace", packet: spec, json });
  if (!response.ok) throw new OperationalError(response.error);
  io.out(withNewline(response.text ?? JSON.stringify(response.data)));
  return 0;
}

/**
 * `qnat conntrack ...` (cli/conntrack.ts): the entries listed or deleted on stdout as they
 * arrive, the tool's summary line on stderr; a mistake in the options is one line, exit 2.
 */
async function conntrackCommand(argv: readonly string[], io: CliIo): Promise<number> {
  if (argv.includes("-h") || argv.includes("--help")) {
    io.out(USAGE);
    return 0;
  }
  const { ConntrackArgsError, conntrackSummary, parseConntrackArgs } = await import("./conntrack.js");
  let command;
  try {
    command = parseConntrackArgs(argv);
  } catch (error) {
    if (!(error instanceof ConntrackArgsError)) throw error;
    io.err(`qnat conntrack: ${error.message}\n`);
    return 2;
  }
  const { controlRequest, controlSocketPath } = await import("../control/socket.js");
  const namespace = resolveRouterNamespace(command.router, undefined);
  let lines = 0;
  const response = await controlRequest(
    controlSocketPath(namespace),
    { cmd: "conntrack", op: command.op, filter: command.filter },
    undefined,
    (piece) => {
      for (let at = piece.indexOf("\n"); at >= 0; at = piece.indexOf("\n", at + 1)) lines++;
      io.out(piece);
    },
  );
  if (!response.ok) throw new OperationalError(response.error);
  io.err(`${conntrackSummary(command.op, lines)}\n`);
  // conntrack-tools exits 1 when -D found nothing to delete.
  return command.op === "delete" && lines === 0 ? 1 : 0;
}

/**
 * `qnat capture ...` (cli/capture.ts): the pcapng goes to the file or stdout, one line on stderr
 * when it starts and a summary when it ends; Ctrl-C asks the router to finish (a second one quits).
 */
async function captureCommand(argv: readonly string[], io: CliIo): Promise<number> {
  if (argv.includes("-h") || argv.includes("--help")) {
    io.out(USAGE);
    return 0;
  }
  const { captureSummary, parseCaptureArgs, runCapture } = await import("./capture.js");
  const args = parseCaptureArgs(argv);
  let interrupted = 0;
  let onSigint: (() => void) | undefined;
  let result;
  // A reader of `-w -` that goes away (`| tcpdump -c 5 -r -`) ends the capture as SIGPIPE would:
  // one line, exit 0 (main's stdout handler exits).
  let packets = (): number => 0;
  const onPipe = (error: NodeJS.ErrnoException): void => {
    if (error.code === "EPIPE") io.err(`qnat capture: the reader of stdout went away; ${packets()} packets captured\n`);
  };
  process.stdout.prependListener("error", onPipe);
  try {
    result = await runCapture(
      args,
      process.stdout,
      (line, progress) => {
        packets = () => progress.packets;
        io.err(`qnat capture: ${line}; Ctrl-C ends it\n`);
      },
      (stop) => {
        onSigint = () => {
          interrupted++;
          if (interrupted === 1) stop();
          else process.exit(130);
        };
        process.on("SIGINT", onSigint);
        process.on("SIGTERM", onSigint);
      },
    );
  } finally {
    if (onSigint !== undefined) {
      process.off("SIGINT", onSigint);
      process.off("SIGTERM", onSigint);
    }
    process.stdout.off("error", onPipe);
  }
  io.err(`${captureSummary(result)}${result.complete ? "" : " (the router ended the capture without its statistics)"}\n`);
  return 0;
}

async function rulesCheck(file: string, io: CliIo): Promise<number> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    throw new ConfigError(file, 0, `cannot read rules file (${(error as NodeJS.ErrnoException).code ?? "error"})`);
  }
  const { checkRulesText } = await import("../nat/rules/check.js");
  const problems = checkRulesText(text, file);
  for (const problem of problems) io.err(`${problem}\n`);
  if (problems.length > 0) return 2;
  const { parseRules } = await import("../nat/rules/parse.js");
  const { rulesInOrder } = await import("../nat/rules/model.js");
  io.out(`${file}: ${rulesInOrder(parseRules(text).table).length} rules, OK\n`);
  return 0;
}

/** `qnat rules generate DESCRIPTION [--release NAME]` (control/neutron-rules.ts). */
async function rulesGenerate(file: string, releaseName: string | undefined, io: CliIo): Promise<number> {
  const { DEFAULT_RELEASE, RELEASES, generateNatRules, releaseLayout } = await import("../control/neutron-rules.js");
  const release = releaseLayout(releaseName ?? DEFAULT_RELEASE);
  if (release === undefined) throw new UsageError(`unknown release "${releaseName}" (expected one of ${RELEASES.map((r) => r.name).join(", ")})`);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    throw new ConfigError(file, 0, `cannot read description (${(error as NodeJS.ErrnoException).code ?? "error"})`);
  }
  const { parseNeutronDescription } = await import("../control/neutron-description.js");
  io.out(generateNatRules(parseNeutronDescription(text, file), release));
  return 0;
}

/**
 * `qnat apply CONFIG`: the config file and its rules are read here (a mistake is `FILE:LINE:
 * ...`, exit 2, and the router is not asked), then its text goes to the router, which checks
 * the rest (routes, the rules against the ports), applies what differs and answers with the
 * changes, or with the `FILE:LINE: ...` of the first problem, changing nothing (live-apply.ts).
 * The routing table is built once, in the router: building one takes ~0.1 s (its 32 MiB tbl24).
 */
async function apply(configPath: string, router: string | undefined, io: CliIo): Promise<number> {
  const { loadConfig } = await import("../config/config.js");
  const { parseConfigRules } = await import("../control/host-setup.js");
  const config = loadConfig(configPath);
  parseConfigRules(config);
  const text = readFileSync(configPath, "utf8");
  const { controlRequest, controlSocketPath } = await import("../control/socket.js");
  const response = await controlRequest(controlSocketPath(router ?? config.namespace), { cmd: "apply", file: configPath, text });
  if (!response.ok) throw liveChangeError(response.error);
  io.out(response.text ?? "");
  return 0;
}

/** A refusal from the router: a mistake in the text (`FILE:LINE: ...`) exits 2 as it would here. */
function liveChangeError(message: string): Error {
  const located = /^(.+?):(\d+): (.*)$/.exec(message);
  return located !== null ? new ConfigError(located[1]!, Number(located[2]), located[3]!) : new OperationalError(message);
}

/** `qnat rules save [-c]` and `qnat rules restore [FILE|-]` against the running router. */
async function liveRules(args: ParsedArgs, rest: readonly string[], io: CliIo): Promise<number> {
  const [sub, file, ...extra] = rest;
  const router = args.value("router");
  const { controlRequest, controlSocketPath } = await import("../control/socket.js");
  const path = controlSocketPath(router ?? resolveRouterNamespace(undefined, undefined));
  if (sub === "save") {
    args.allow("rules save", ["router", "counters"]);
    if (file !== undefined) throw new UsageError("usage: qnat rules save [-c] [--router NAMESPACE]");
    const response = await controlRequest(path, { cmd: "rules", action: "save", counters: args.flags.has("counters") });
    if (!response.ok) throw new OperationalError(response.error);
    io.out(response.text ?? "");
    return 0;
  }
  args.allow("rules restore", ["router"]);
  if (extra.length > 0) throw new UsageError("usage: qnat rules restore [FILE|-] [--router NAMESPACE]");
  const name = file === undefined || file === "-" ? "-" : file;
  let text: string;
  try {
    text = readFileSync(name === "-" ? 0 : name, "utf8");
  } catch (error) {
    throw new ConfigError(name, 0, `cannot read rules file (${(error as NodeJS.ErrnoException).code ?? "error"})`);
  }
  // Checked here first, as iptables-restore does before it commits anything.
  const { parseRules } = await import("../nat/rules/parse.js");
  const first = parseRules(text).errors[0];
  if (first !== undefined) throw new ConfigError(name, first.line, first.message);
  const response = await controlRequest(path, { cmd: "rules", action: "restore", file: name, text });
  if (!response.ok) throw liveChangeError(response.error);
  io.out(response.text ?? "");
  return 0;
}

/** Whether this module is the program (`node dist/src/cli/main.js`, or the bin symlink to it). */
function isMainModule(): boolean {
  const invoked = process.argv[1];
  if (invoked === undefined) return false;
  try {
    return realpathSync(invoked) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMainModule()) {
  // A reader that goes away (`qnat show conntrack | head`) ends the command quietly, as SIGPIPE
  // ends a C tool; Node ignores SIGPIPE and reports EPIPE on the stream instead.
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code !== "EPIPE") process.stderr.write(`qnat: cannot write output (${error.code ?? error.message})\n`);
    process.exit(error.code === "EPIPE" ? 0 : 1);
  });
  runCli(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      process.exitCode = reportError(error, processIo);
    },
  );
}
