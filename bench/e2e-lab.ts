/**
 * The lab topology for end-to-end measurements and tests, built fresh per run under unique
 * namespace names (`qnt-<tag>-r` router, `qnt-<tag>-p<N>` per wire namespace), linked to nothing
 * and removed at the end even on failure; the host's own namespace is never touched.
 *
 * - `startQnatLab`: `qnat run` of the config (optionally in pass-through mode or under
 *   `node --cpu-prof`) as a child process, plus the lab hosts, as `qnat lab up` builds them.
 * - `startKernelLab`: the kernel twin of the same config (src/control/twin.ts): veth ports,
 *   ip_forward=1, the config's iptables nat rules loaded verbatim.
 * In TAP mode (`retagForRun(..., "tap")`) both run the config's Ethernet version (twin.ts
 * tapVariantText): TAP legs (qnat) or veths (kernel) on Linux bridges, the hosts on veths into them.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { formatIpv4, prefixMask } from "../src/core/addr.js";
import { parseConfig, type RouterConfig } from "../src/config/config.js";
import { ip } from "../src/io/netns.js";
import { configureLabHosts, joinWireBridges } from "../src/control/host-setup.js";
import { routerAnswers } from "../src/control/lab.js";
import { buildKernelTwin, destroyKernelTwin, retagConfigText, tapVariantText } from "../src/control/twin.js";
import { parseDocument } from "yaml";
import { setTimeout as sleep } from "node:timers/promises";

export type LabKind = "qnat" | "kernel" | "passthrough";

export interface Lab {
  readonly kind: LabKind;
  readonly config: RouterConfig;
  /** The router process (qnat kinds). */
  readonly pid: number | undefined;
  /** Stops the router (SIGINT: a --cpu-prof profile is written) and removes every namespace. */
  stop(): Promise<void>;
  /** What the router printed so far (qnat kinds). */
  output?(): string;
  /** Resolves with the router's exit code (null: killed by a signal) once it exits (qnat kinds). */
  readonly exited?: Promise<number | null>;
}

/** The package root (this file is bench/ from source, dist/bench/ compiled). */
export function packageRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  return here.endsWith(join("dist", "bench")) ? resolve(here, "..", "..") : resolve(here, "..");
}

export function runTag(): string {
  return randomBytes(3).toString("hex");
}

/**
 * qnat's config text with `workers: N` set (added, or replacing the config's own): N threads
 * forward, each reading one queue of every port's multi-queue TUN legs, over one shared
 * connection table. The kernel twin ignores the key (Linux spreads its work by itself).
 */
export function withWorkersText(text: string, workers: number): string {
  const document = parseDocument(text);
  document.set("workers", workers);
  return document.toString();
}

/**
 * The config at `path` (its Ethernet version in `tap` mode) with its namespaces renamed
 * qnt-<tag>-r (router) and qnt-<tag>-p<N> (wires, lab hosts); with `workers`, it says
 * `workers: N` too (withWorkersText).
 */
export function retagForRun(path: string, tag: string, mode: "tun" | "tap" = "tun", workers?: number): { text: string; config: RouterConfig } {
  const read = mode === "tap" ? tapVariantText(readFileSync(path, "utf8"), path) : readFileSync(path, "utf8");
  const text = workers === undefined ? read : withWorkersText(read, workers);
  const original = parseConfig(text, path);
  const names = new Map<string, string>([[original.namespace, `qnt-${tag}-r`]]);
  original.ports.forEach((port, index) => {
    if (!names.has(port.wire.namespace)) names.set(port.wire.namespace, `qnt-${tag}-p${index}`);
  });
  const renamed = retagConfigText(text, path, tag, (name) => names.get(name) ?? `qnt-${tag}-${name}`);
  return { text: renamed, config: parseConfig(renamed, path) };
}

/**
 * Pass-through forwards without NAT or routing, so each lab host needs a route to the other
 * ports' networks out of its own wire device (the router does not rewrite the source).
 */
function addPassthroughRoutes(config: RouterConfig): void {
  for (const port of config.ports) {
    for (const other of config.ports) {
      if (other === port) continue;
      for (const cidr of other.addresses) {
        if (cidr.prefixLength === 32) continue;
        const network = `${formatIpv4((cidr.addr & prefixMask(cidr.prefixLength)) >>> 0)}/${cidr.prefixLength}`;
        ip(port.wire.namespace, "route", "replace", network, "dev", port.wire.device);
      }
    }
  }
}

export interface QnatLabOptions {
  readonly passthrough?: boolean;
  /** Run the router under `node --cpu-prof --cpu-prof-dir DIR`. */
  readonly cpuProfDir?: string;
  /** Offloads on (default) or off (QNAT_OFFLOAD=0). */
  readonly offloads?: boolean;
  readonly startLimitMs?: number;
  /** The qnat build to run (a package root with dist/; default this one). */
  readonly root?: string;
}

/** Starts `qnat run` on the renamed config and configures the lab hosts. */
export async function startQnatLab(text: string, config: RouterConfig, options: QnatLabOptions = {}): Promise<Lab> {
  const dir = mkdtempSync(join(tmpdir(), "qnat-e2e-"));
  const file = join(dir, "router.yaml");
  writeFileSync(file, text);
  const main = join(options.root ?? packageRoot(), "dist", "src", "cli", "main.js");
  const nodeArgs = options.cpuProfDir === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", options.cpuProfDir];
  let output = "";
  const child: ChildProcess = spawn(process.execPath, [...nodeArgs, main, "run", file], {
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      ...process.env,
      QNAT_PASSTHROUGH: options.passthrough === true ? "1" : "0",
      QNAT_OFFLOAD: options.offloads === false ? "0" : "1",
    },
  });
  child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  let exited = false;
  const exitCode = new Promise<number | null>((done) => child.once("exit", (code) => ((exited = true), done(code))));
  const exit = exitCode.then(() => undefined);
  const stop = async (): Promise<void> => {
    if (!exited) {
      child.kill("SIGINT");
      await Promise.race([exit, sleep(5000)]);
      if (!exited) {
        child.kill("SIGKILL");
        await Promise.race([exit, sleep(2000)]);
      }
    }
    destroyKernelTwin(config);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const limit = options.startLimitMs ?? 20_000;
    const started = Date.now();
    while (!(await routerAnswers(config, 1000))) {
      if (exited) throw new Error(`qnat run exited while starting: ${output.trim().split("\n").slice(-2).join(" | ")}`);
      if (Date.now() - started > limit) throw new Error(`qnat run did not answer within ${limit} ms`);
      await sleep(50);
    }
    // As `qnat lab up`: the router's TAP wire legs into their bridges, then the hosts.
    joinWireBridges(config);
    configureLabHosts(config);
    if (options.passthrough === true) addPassthroughRoutes(config);
  } catch (error) {
    await stop();
    throw error;
  }
  return { kind: options.passthrough === true ? "passthrough" : "qnat", config, pid: child.pid, stop, output: () => output, exited: exitCode };
}

/** Builds the kernel twin of the renamed config (no metadata proxy: not needed to forward). */
export async function startKernelLab(config: RouterConfig): Promise<Lab> {
  const twin = await buildKernelTwin(config, { metadata: false });
  return {
    kind: "kernel",
    config,
    pid: undefined,
    stop: async () => twin.destroy(),
  };
}
