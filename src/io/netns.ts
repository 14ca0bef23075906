/**
 * Network namespace helpers over iproute2's `ip` (control plane only: they spawn processes).
 * Named namespaces are files under /run/netns, as `ip netns add` makes them
 * (iproute2 ip/ipnetns.c, NETNS_RUN_DIR). Every failure is a CommandError whose message is one
 * line: the command as typed and what it printed on stderr.
 */
import { execFile, execFileSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";

/** iproute2 ip/ipnetns.c NETNS_RUN_DIR. */
export const NETNS_RUN_DIR = "/run/netns";

const NETNS_NAME_PATTERN = /^[A-Za-z0-9_.:@+-]+$/;
/** A sysctl key as sysctl(8) writes it: dot-separated, no path tricks. */
const SYSCTL_KEY_PATTERN = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$/;
const COMMAND_TIMEOUT_MS = 30_000;
/** A batch of a full table's routes takes the kernel some seconds on a loaded machine. */
const BATCH_TIMEOUT_MS = 300_000;

/** A command qnat ran failed (or could not be started: then `code` is "ENOENT"). */
export class CommandError extends Error {
  readonly code: string;
  constructor(
    readonly command: string,
    readonly stderr: string,
    readonly exitCode: number | null,
    code = "ERR_QNAT_COMMAND",
    detail?: string,
  ) {
    super(`${command}: ${detail ?? (firstLine(stderr) || `exited with status ${exitCode ?? "unknown"}`)}`);
    this.name = "CommandError";
    this.code = code;
  }
}

export function isRoot(): boolean {
  return typeof process.getuid === "function" && process.getuid() === 0;
}

/** The file of a named namespace; an absolute path is taken as it is (e.g. /proc/PID/ns/net). */
export function netnsPath(nameOrPath: string): string {
  if (nameOrPath.startsWith("/")) return nameOrPath;
  checkNetnsName(nameOrPath);
  return `${NETNS_RUN_DIR}/${nameOrPath}`;
}

export function netnsExists(name: string): boolean {
  return existsSync(netnsPath(name));
}

/** `ip netns add NAME`; fails when it exists. */
export function createNetns(name: string): void {
  checkNetnsName(name);
  run("ip", ["netns", "add", name]);
}

/** Creates the namespace unless it exists; returns whether it created it. */
export function ensureNetns(name: string): boolean {
  if (netnsExists(name)) return false;
  createNetns(name);
  return true;
}

/** `ip netns delete NAME`; returns false when there was no such namespace. */
export function deleteNetns(name: string): boolean {
  checkNetnsName(name);
  if (!netnsExists(name)) return false;
  run("ip", ["netns", "delete", name]);
  return true;
}

/** Names of the namespaces under /run/netns (`ip netns list`, without the ids). */
export function listNetns(): string[] {
  return run("ip", ["netns", "list"])
    .split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((name) => name.length > 0);
}

/** `ip [-n NETNS] ARGS...`; returns stdout. */
export function ip(netns: string | null, ...args: string[]): string {
  return run("ip", ipArgs(netns, args));
}

/**
 * `ip [-n NETNS] [-force] -batch -` with these command lines (`route replace ...`): a full routing
 * table's million routes in one process instead of a million. Without `force` the first failing
 * line fails the batch (its message names the line); with it every line is tried.
 */
export function ipBatch(netns: string | null, lines: readonly string[], force = false): string {
  return run("ip", ipArgs(netns, [...(force ? ["-force"] : []), "-batch", "-"]), { input: lines.join("\n") + "\n", timeoutMs: BATCH_TIMEOUT_MS });
}

/** ipBatch without blocking the event loop. */
export function ipBatchAsync(netns: string | null, lines: readonly string[], force = false): Promise<string> {
  return runAsync("ip", ipArgs(netns, [...(force ? ["-force"] : []), "-batch", "-"]), { input: lines.join("\n") + "\n", timeoutMs: BATCH_TIMEOUT_MS });
}

/** `ip [-n NETNS] ARGS...` without blocking the event loop; resolves to stdout. */
export function ipAsync(netns: string | null, ...args: string[]): Promise<string> {
  return runAsync("ip", ipArgs(netns, args));
}

export interface ExecOptions {
  /** Written to the command's stdin. */
  readonly input?: string;
  readonly timeoutMs?: number;
}

/** `ip netns exec NETNS COMMAND ARGS...` (or the command itself when netns is null); returns stdout. */
export function netnsExec(netns: string | null, command: string, args: readonly string[], options: ExecOptions = {}): string {
  const [file, argv] = execArgs(netns, command, args);
  return run(file, argv, options);
}

/** As netnsExec, without blocking the event loop. */
export function netnsExecAsync(
  netns: string | null,
  command: string,
  args: readonly string[],
  options: ExecOptions = {},
): Promise<string> {
  const [file, argv] = execArgs(netns, command, args);
  return runAsync(file, argv, options);
}

/**
 * Sets a sysctl such as "net.ipv4.ip_forward" in a namespace. /proc/sys/net shows the namespace
 * of the process that opens it, so inside another namespace the write is done by a shell started
 * there with `ip netns exec` (no dependency on procps' sysctl).
 */
export function setSysctl(netns: string | null, key: string, value: string | number): void {
  const path = sysctlPath(key);
  const text = String(value);
  if (netns === null) {
    try {
      writeFileSync(path, text);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? "EIO";
      throw new CommandError(`sysctl -w ${key}=${text}`, "", null, code, `cannot write ${path} (${code})`);
    }
    return;
  }
  netnsExec(netns, "sh", ["-c", 'printf "%s\\n" "$1" > "$2"', "qnat-sysctl", text, path]);
}

/** Reads a sysctl in a namespace (null: this process's). */
export function getSysctl(netns: string | null, key: string): string {
  return netnsExec(netns, "cat", [sysctlPath(key)]).trim();
}

function sysctlPath(key: string): string {
  if (!SYSCTL_KEY_PATTERN.test(key)) throw new CommandError(`sysctl ${key}`, "", null, "EINVAL", "not a sysctl key");
  return `/proc/sys/${key.replaceAll(".", "/")}`;
}

function checkNetnsName(name: string): void {
  if (!NETNS_NAME_PATTERN.test(name) || name === "." || name === "..") {
    throw new CommandError(`ip netns ${name}`, "", null, "EINVAL", `"${name}" is not a valid namespace name`);
  }
}

function ipArgs(netns: string | null, args: readonly string[]): string[] {
  if (netns === null) return [...args];
  checkNetnsName(netns);
  return ["-n", netns, ...args];
}

function execArgs(netns: string | null, command: string, args: readonly string[]): [string, string[]] {
  if (netns === null) return [command, [...args]];
  checkNetnsName(netns);
  return ["ip", ["netns", "exec", netns, command, ...args]];
}

function commandLine(file: string, args: readonly string[]): string {
  return [file, ...args].map((word) => (/^[\w./:=@+-]+$/.test(word) ? word : JSON.stringify(word))).join(" ");
}

function firstLine(text: string): string {
  return text.trim().split("\n")[0] ?? "";
}

interface SpawnFailure {
  code?: string | number;
  status?: number | null;
  stderr?: string | Buffer;
  signal?: string | null;
}

function toCommandError(file: string, args: readonly string[], error: unknown): CommandError {
  const failure = error as SpawnFailure;
  const command = commandLine(file, args);
  if (failure.code === "ENOENT") {
    const hint = file === "ip" ? "ip (iproute2) is not installed" : `${file} is not installed`;
    return new CommandError(command, "", null, "ENOENT", hint);
  }
  const stderr = failure.stderr === undefined ? "" : String(failure.stderr);
  const exitCode = typeof failure.status === "number" ? failure.status : typeof failure.code === "number" ? failure.code : null;
  const detail = failure.signal ? `killed by ${failure.signal}` : undefined;
  return new CommandError(command, stderr, exitCode, "ERR_QNAT_COMMAND", firstLine(stderr) ? undefined : detail);
}

function run(file: string, args: readonly string[], options: ExecOptions = {}): string {
  try {
    return execFileSync(file, args, {
      encoding: "utf8",
      input: options.input,
      stdio: ["pipe", "pipe", "pipe"],
      timeout: options.timeoutMs ?? COMMAND_TIMEOUT_MS,
    });
  } catch (error) {
    throw toCommandError(file, args, error);
  }
}

function runAsync(file: string, args: readonly string[], options: ExecOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      { encoding: "utf8", timeout: options.timeoutMs ?? COMMAND_TIMEOUT_MS },
      (error, stdout, stderr) => {
        if (error) {
          reject(toCommandError(file, args, { code: error.code, status: error.code, signal: error.signal, stderr }));
        } else {
          resolve(stdout);
        }
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
    else child.stdin?.end();
  });
}
