/**
 * `qnat lab up [CONFIG]` / `qnat lab down [CONFIG]` (DESIGN.md "CLI"): the config's router in the
 * background with the lab's hosts around it, and its removal. Both are idempotent.
 *
 * up:   checks the config as `qnat run` would (nothing is touched on a mistake); starts
 *       `qnat run CONFIG` detached, logging to /run/qnat/<namespace>.log (it creates the
 *       namespaces and TUN devices); waits until its control socket answers; puts the wire legs
 *       of tap ports with `wire.bridge` into their bridges and plugs the lab hosts of bridged
 *       ports in with veths (host-setup.ts joinWireBridges, configureLabHosts); gives the lab
 *       hosts their addresses and routes (again after a router restart: the wire devices,
 *       and the addresses on them, go away with the router process); waits until it forwards.
 *       With the router running, a lab namespace deleted meanwhile (`ip netns del`) is made
 *       anew first, and lab up waits until the router has re-created its leg there by itself.
 *       A router that died (killed, crashed: its socket is stale) is started again, once: two
 *       `lab up` at the same time start at most one router (the control socket is its lock, and
 *       the one that loses the race goes on with the winner's).
 * down: stops the router (SIGTERM, then SIGKILL after a bound), ends any process left in the
 *       lab's namespaces, deletes the namespaces (which takes every device in them) and the
 *       socket, pid and log files; also after the router crashed or was killed with -9.
 */
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, unlinkSync } from "node:fs";
import { formatIpv4 } from "../core/addr.js";
import { loadConfig, type RouterConfig } from "../config/config.js";
import { deleteNetns, ip, isRoot, netnsExecAsync, netnsExists } from "../io/netns.js";
import { OperationalError, PrivilegeError } from "./errors.js";
import { configureLabHosts, ensureNamespaces, joinWireBridges, labDeviceOf, labPortOf, labSegmentOf, namespacesOf } from "./host-setup.js";
import type { PortView } from "./show.js";
import { prepareRouter } from "./router-process.js";
import { controlRequest, controlSocketPath, pidPathFor, probeControlSocket, runDir } from "./socket.js";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/** How long `lab up` waits for the router to answer, and then to forward. */
const START_LIMIT_MS = 20_000;
const FORWARD_LIMIT_MS = 10_000;
/** How long `lab up` waits for a running router to re-create the legs of re-made namespaces. */
const LEGS_LIMIT_MS = 10_000;
/** How long `lab down` waits after SIGTERM before SIGKILL, and after SIGKILL. */
const STOP_LIMIT_MS = 5_000;

type Out = (text: string) => void;

export function labLogPath(namespace: string): string {
  return join(runDir(), `${namespace}.log`);
}

/** Whether `pid` runs; a zombie (exited, not yet reaped by its parent) does not. */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  try {
    // proc(5): the state follows the parenthesised command name.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** Whether `pid` is a `qnat run` (so a recycled pid in a stale pid file is never signalled). */
function isQnatRouter(pid: number): boolean {
  try {
    const words = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    return words.includes("run") && words.some((w) => /main\.(js|ts)$|qnat$/.test(w));
  } catch {
    return false;
  }
}

function lastLines(path: string, count: number): string {
  try {
    return readFileSync(path, "utf8").trimEnd().split("\n").slice(-count).join(" | ");
  } catch {
    return "";
  }
}

/** Whether the router of `config` answers on its control socket within `timeoutMs`. */
export async function routerAnswers(config: RouterConfig, timeoutMs = 2000): Promise<boolean> {
  try {
    const response = await controlRequest(controlSocketPath(config.namespace), { cmd: "show", what: "ports" }, timeoutMs);
    return response.ok;
  } catch {
    return false;
  }
}

/** One bounded ping from inside `netns`; resolves whether it got an answer. */
async function pingOnce(netns: string, destination: string, source?: string): Promise<boolean> {
  const args = ["-c", "1", "-W", "1", ...(source === undefined ? [] : ["-I", source]), destination];
  try {
    await netnsExecAsync(netns, "ping", args, { timeoutMs: 3000 });
    return true;
  } catch {
    return false;
  }
}

/** Pings from inside `netns` (one bounded ping at a time) until one is answered or `limitMs` passed. */
export async function pingUntil(netns: string, destination: string, limitMs: number, source?: string): Promise<boolean> {
  const started = Date.now();
  while (Date.now() - started < limitMs) {
    if (await pingOnce(netns, destination, source)) return true;
    await sleep(200);
  }
  return false;
}

/** Starts `qnat run CONFIG` in the background, detached, its output in the log file. */
function startRouterProcess(configPath: string, logPath: string): number {
  mkdirSync(runDir(), { recursive: true, mode: 0o755 });
  const log = openSync(logPath, "a");
  try {
    const main = process.argv[1];
    if (main === undefined) throw new OperationalError("cannot tell where qnat's main module is");
    const child = spawn(process.execPath, [main, "run", configPath], {
      detached: true,
      stdio: ["ignore", log, log],
      env: process.env,
    });
    child.unref();
    if (child.pid === undefined) throw new OperationalError("could not start qnat run");
    return child.pid;
  } finally {
    closeSync(log);
  }
}

/**
 * Brings the lab up; returns the exit code. Prints what it built (or, when it was already up,
 * that it is and that it still forwards).
 */
export async function labUp(configPath: string, out: Out): Promise<number> {
  if (!isRoot()) throw new PrivilegeError("lab up");
  const { config } = prepareRouter(configPath);
  const socketPath = controlSocketPath(config.namespace);
  const logPath = labLogPath(config.namespace);

  const found = await probeControlSocket(socketPath);
  let pid: number | undefined;
  if (found.state === "live") {
    pid = found.pid;
    out(`qnat: lab ${config.namespace} is already up (router pid ${pid ?? "unknown"}); checking it\n`);
    const made = ensureNamespaces(config);
    if (made.length > 0) out(`qnat: made ${made.join(", ")} anew; waiting for the router to re-create its legs there\n`);
    // Also a leg whose device was deleted comes back by itself; its hosts' addresses come after.
    await waitForLegsUp(socketPath, logPath);
  } else {
    if (found.state === "stale") out(`qnat: the router of lab ${config.namespace} is not running (its control socket is stale); starting it again\n`);
    pid = startRouterProcess(configPath, logPath);
    const started = Date.now();
    while (!(await routerAnswers(config))) {
      if (!processAlive(pid)) {
        // Another `lab up` started the router meanwhile: this one's stopped at the lock.
        const winner = await probeControlSocket(socketPath).catch(() => undefined);
        if (winner?.state === "live") {
          pid = winner.pid;
          break;
        }
        const why = lastLines(logPath, 1);
        throw new OperationalError(`the router exited while starting${why ? `: ${why.replace(/^qnat: /, "")}` : ""} (log ${logPath})`);
      }
      if (Date.now() - started > START_LIMIT_MS) {
        throw new OperationalError(`the router did not answer within ${START_LIMIT_MS / 1000} s (log ${logPath}); run qnat lab down`);
      }
      await sleep(100);
    }
  }

  // The router's TAP wire legs exist now (it answered): into their bridges, then the hosts.
  joinWireBridges(config);
  configureLabHosts(config);

  // Forwarding: each lab host reaches the router's address on its port (wire leg -> dataplane ->
  // mirror -> the router's host and back), then the first host reaches the others across it.
  for (const host of config.lab) {
    const port = labPortOf(config, host);
    const target = formatIpv4(port.addresses[0]!.addr);
    if (!(await pingUntil(host.namespace, target, FORWARD_LIMIT_MS))) {
      throw new OperationalError(`${host.namespace} cannot reach the router at ${target} (log ${logPath}); run qnat lab down`);
    }
  }
  const warnings: string[] = [];
  const [first, ...others] = config.lab;
  if (first !== undefined) {
    for (const other of others) {
      const target = formatIpv4((other.loopback[0] ?? other.addresses[0])!.addr);
      if (!(await pingUntil(first.namespace, target, 3000))) {
        warnings.push(`qnat: warning: ${first.namespace} does not reach ${target} in ${other.namespace} through the router yet`);
      }
    }
  }

  out(describeLab(config, pid ?? 0, socketPath, logPath));
  for (const warning of warnings) out(`${warning}\n`);
  return 0;
}

/** Waits until the running router reports every leg up (show ports), bounded. */
async function waitForLegsUp(socketPath: string, logPath: string): Promise<void> {
  const started = Date.now();
  for (;;) {
    let down: string[] = [];
    try {
      const response = await controlRequest(socketPath, { cmd: "show", what: "ports", json: true }, 2000);
      const ports = (response.ok ? response.data : []) as PortView[];
      down = [];
      for (const port of ports) {
        if (port.legs?.wire.state === "down") down.push(`${port.wire.namespace}/${port.wire.device}`);
        if (port.legs?.mirror.state === "down") down.push(port.name);
      }
      if (response.ok && down.length === 0) return;
    } catch {
      down = ["(the router did not answer)"];
    }
    if (Date.now() - started > LEGS_LIMIT_MS) {
      throw new OperationalError(`the router did not re-create ${down.join(", ")} within ${LEGS_LIMIT_MS / 1000} s (log ${logPath}); run qnat lab down`);
    }
    await sleep(100);
  }
}

function describeLab(config: RouterConfig, pid: number, socketPath: string, logPath: string): string {
  const lines = [`qnat: lab up: router ${config.namespace} (pid ${pid || "unknown"})`];
  for (const port of config.ports) {
    const addresses = port.addresses.map((a) => `${formatIpv4(a.addr)}/${a.prefixLength}`).join(" ");
    const bridge = port.wire.bridge === undefined ? "" : ` in bridge ${port.wire.bridge}`;
    lines.push(`  ${port.name.padEnd(15)} ${addresses} (mirror in ${config.namespace}) <-> ${port.wire.namespace}/${port.wire.device}${bridge} (${port.wire.mode})`);
  }
  for (const host of config.lab) {
    const segment = labSegmentOf(config, host);
    const plugged = segment === undefined ? "" : ` (veth into ${segment.namespace}/${segment.bridge})`;
    const parts = [`${host.addresses.map((a) => `${formatIpv4(a.addr)}/${a.prefixLength}`).join(" ")} on ${labDeviceOf(config, host)}${plugged}`];
    if (host.loopback.length > 0) parts.push(`${host.loopback.map((a) => `${formatIpv4(a.addr)}/${a.prefixLength}`).join(" ")} on lo`);
    if (host.routes.length > 0) parts.push(`routes: ${host.routes.join(", ")}`);
    lines.push(`  host ${host.namespace}: ${parts.join("; ")}`);
  }
  lines.push(`  control socket ${socketPath}, log ${logPath}`);
  lines.push(`  try: ip netns exec ${config.lab[0]?.namespace ?? config.namespace} ping -c 2 ${config.lab.length > 1 ? formatIpv4((config.lab[1]!.loopback[0] ?? config.lab[1]!.addresses[0])!.addr) : formatIpv4(config.ports[0]!.addresses[0]!.addr)}`);
  lines.push(`       qnat show conntrack; qnat lab down`);
  return lines.join("\n") + "\n";
}

/** Stops the router and removes everything the lab made; returns the exit code. */
export async function labDown(configPath: string, out: Out): Promise<number> {
  if (!isRoot()) throw new PrivilegeError("lab down");
  const config = loadConfig(configPath);
  const socketPath = controlSocketPath(config.namespace);
  const pidPath = pidPathFor(socketPath);
  const removed: string[] = [];

  // The router: the pid it reports, else its pid file (after a crash the file may be stale).
  let pid: number | undefined;
  try {
    const found = await probeControlSocket(socketPath, 1000);
    if (found.state === "live") pid = found.pid;
  } catch {
    // not a socket: removed below
  }
  if (pid === undefined && existsSync(pidPath)) {
    const fromFile = Number.parseInt(readFileSync(pidPath, "utf8").trim(), 10);
    if (Number.isInteger(fromFile) && fromFile > 0 && processAlive(fromFile) && isQnatRouter(fromFile)) pid = fromFile;
  }
  if (pid !== undefined && processAlive(pid)) {
    await stopProcess(pid);
    removed.push(`router pid ${pid}`);
  }

  // Whatever still runs in the lab's namespaces (servers a demo or a user started there).
  const namespaces = namespacesOf(config).filter((name) => netnsExists(name));
  for (const name of namespaces) {
    for (const other of pidsIn(name)) {
      if (other !== process.pid) await stopProcess(other);
    }
  }
  for (const name of namespaces) {
    deleteNetns(name);
    removed.push(`namespace ${name}`);
  }
  for (const file of [socketPath, pidPath, labLogPath(config.namespace)]) {
    try {
      unlinkSync(file);
      removed.push(file);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    }
  }
  out(removed.length === 0 ? `qnat: lab ${config.namespace} is already down\n` : `qnat: lab down: removed ${removed.join(", ")}\n`);
  return 0;
}

/** `ip netns pids NAME`: the processes whose network namespace is that one. */
function pidsIn(namespace: string): number[] {
  try {
    return ip(null, "netns", "pids", namespace)
      .split("\n")
      .map((line) => Number.parseInt(line.trim(), 10))
      .filter((pid) => Number.isInteger(pid) && pid > 0);
  } catch {
    return [];
  }
}

/** SIGTERM, then SIGKILL after STOP_LIMIT_MS; resolves once the process is gone (bounded). */
async function stopProcess(pid: number): Promise<void> {
  const signal = (name: NodeJS.Signals): void => {
    try {
      process.kill(pid, name);
    } catch {
      // already gone
    }
  };
  signal("SIGTERM");
  for (const [limit, next] of [
    [STOP_LIMIT_MS, "SIGKILL"],
    [STOP_LIMIT_MS, undefined],
  ] as const) {
    const started = Date.now();
    while (processAlive(pid) && Date.now() - started < limit) await sleep(50);
    if (!processAlive(pid)) return;
    if (next !== undefined) signal(next);
  }
}
