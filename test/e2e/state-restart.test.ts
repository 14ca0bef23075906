/**
 * Restarts that keep connections, through the real lab (root only; the seed's router under fresh
 * names qnt-<tag>-*, linked to nothing, removed afterwards even on failure), with
 * `state: { file, interval: 0.2 }`:
 *
 *   10.0.0.3:41000 and 10.0.0.4:41000 talk to 203.0.113.10:7000 through the SNAT address
 *   9.186.100.2 — the second one's port remapped, as 10.0.0.3 holds 41000 — and 9.186.100.1 talks
 *   to 10.0.0.2:2222 through the floating IP 9.186.100.129. The router is killed with SIGKILL,
 *   `qnat lab up` starts it again, and the same three connections carry data again: the servers
 *   accepted no new connection and saw the same translated ports. `show conntrack` lists the
 *   three entries before any packet of the new run, with the same tuples and ASSURED. The same
 *   after a SIGTERM restart, whose file says it was written at stop.
 *
 * Without the state, the remapped connection could not survive: the next run would pick up
 * 10.0.0.4's next segment loosely and give it the free port 41000 — 10.0.0.3's — and the
 * server would answer with a reset.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ConntrackEntryJson } from "../../src/conntrack/format.js";
import { labLogPath } from "../../src/control/lab.js";
import type { StatsView } from "../../src/control/show.js";
import { controlRequest, controlSocketPath, pidPathFor } from "../../src/control/socket.js";
import { destroyKernelTwin } from "../../src/control/twin.js";
import { isRoot as runningAsRoot } from "../../src/io/netns.js";
import { packageRoot, retagForRun, runTag } from "../../bench/e2e-lab.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/state-restart.test.ts: not root, so the restart tests are skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const MAIN = join(packageRoot(), "dist", "src", "cli", "main.js");
const WAIT_MS = 10_000;

/** A TCP echo server that prints each peer it accepts. */
const ECHO_SERVER = `
const [host, port] = process.argv.slice(1);
require("net").createServer((socket) => {
  console.log("peer " + socket.remoteAddress + ":" + socket.remotePort);
  socket.on("error", () => {});
  socket.pipe(socket);
}).listen({ host, port: Number(port) }, () => console.log("ready"));`;

/** One TCP connection: each line on stdin is sent, each line echoed back is printed as "echo LINE". */
const CLIENT = `
const [bind, bindPort, host, port] = process.argv.slice(1);
const socket = require("net").connect({ host, port: Number(port), localAddress: bind, localPort: Number(bindPort) || undefined }, () => console.log("ready"));
socket.setEncoding("utf8");
let buffered = "";
socket.on("data", (data) => {
  buffered += data;
  for (let at; (at = buffered.indexOf("\\n")) >= 0; buffered = buffered.slice(at + 1)) console.log("echo " + buffered.slice(0, at));
});
socket.on("error", (error) => console.log("error " + error.code));
socket.on("close", () => console.log("closed"));
process.stdin.setEncoding("utf8");
process.stdin.on("data", (data) => socket.write(data));`;

interface Helper {
  readonly child: ChildProcess;
  output(): string;
  /** Resolves when the output contains `text`, false after `limitMs`. */
  waitFor(text: string, limitMs?: number): Promise<boolean>;
  kill(): void;
}

const helpers: Helper[] = [];

/** `node -e SCRIPT ARGS` inside `netns`, killed after a minute at the latest. */
function startIn(netns: string, script: string, args: readonly string[]): Helper {
  const child = spawn("ip", ["netns", "exec", netns, process.execPath, "-e", script, "--", ...args], { stdio: ["pipe", "pipe", "pipe"] });
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  child.once("exit", () => clearTimeout(timer));
  let out = "";
  child.stdout!.on("data", (chunk: Buffer) => (out += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (out += chunk.toString()));
  const helper: Helper = {
    child,
    output: () => out,
    waitFor: async (text, limitMs = WAIT_MS) => {
      const started = Date.now();
      while (!out.includes(text)) {
        if (Date.now() - started > limitMs || child.exitCode !== null) return out.includes(text);
        await sleep(50);
      }
      return true;
    },
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
  };
  helpers.push(helper);
  return helper;
}

/** The qnat command (the build), bounded; resolves with its exit code and output. */
function qnat(args: readonly string[], limitMs = 60_000): Promise<{ code: number | null; out: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [MAIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (out += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), limitMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      done({ code, out });
    });
  });
}

/** Pids of the `qnat run CONFIG` processes running. */
function routersOf(configFile: string): number[] {
  return readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name))
    .filter((name) => {
      try {
        const words = readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0");
        return words.includes("run") && words.includes(configFile) && alive(Number(name));
      } catch {
        return false;
      }
    })
    .map(Number);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /, "").startsWith("Z");
  } catch {
    return false;
  }
}

describe.skipIf(!isRoot)("a restarted router keeps the connections through SNAT and the floating IP", () => {
  const tag = runTag();
  const dir = mkdtempSync(join(tmpdir(), "qnat-state-e2e-"));
  const stateFile = join(dir, "router.state");
  const retagged = retagForRun(SEED, tag);
  const text =
    retagged.text.replace("10.0.0.3/24", "10.0.0.3/24, 10.0.0.4/24") +
    `state: { file: ${stateFile}, interval: 0.2 }\n`;
  const config = retagged.config;
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;
  const socket = controlSocketPath(config.namespace);
  const configFile = join(dir, "router.yaml");
  writeFileSync(configFile, text);

  let clients: { vm3: Helper; vm4: Helper; floating: Helper } | undefined;
  let servers: { web: Helper; vm2: Helper } | undefined;
  let lastUp = "";

  async function show<T>(what: "conntrack" | "stats"): Promise<T> {
    const response = await controlRequest(socket, { cmd: "show", what, json: true });
    if (!response.ok) throw new Error(`qnat show ${what}: ${response.error}`);
    return (response.data ?? JSON.parse(response.text!)) as T;
  }

  /** Our three TCP connections as `show conntrack` lists them: tuples, state and status. */
  async function ourConnections(): Promise<string[]> {
    const entries = await show<ConntrackEntryJson[]>("conntrack");
    return entries
      .filter((e) => e.protocol === "tcp" && (e.original.dport === 7000 || e.original.dport === 2222))
      .map((e) => `${e.original.src}:${e.original.sport} > ${e.original.dst}:${e.original.dport} | ${e.reply.src}:${e.reply.sport} > ${e.reply.dst}:${e.reply.dport} ${e.state} ${e.status.includes("ASSURED") ? "ASSURED" : ""}`)
      .sort();
  }

  function routerPid(): number {
    return Number.parseInt(readFileSync(pidPathFor(socket), "utf8"), 10);
  }

  /**
   * Every client sends `line` and gets it back, one after the other, 10.0.0.4 first: a router that
   * had lost its entries would give 10.0.0.4's segment the free port 41000 (10.0.0.3's).
   */
  async function exchange(line: string): Promise<void> {
    const { vm3, vm4, floating } = clients!;
    for (const [name, client] of [["10.0.0.4", vm4], ["10.0.0.3", vm3], ["9.186.100.1", floating]] as const) {
      client.child.stdin!.write(`${line}\n`);
      expect(await client.waitFor(`echo ${line}`), `${name}: ${client.output()}`).toBe(true);
    }
  }

  /**
   * Waits until the router skips a save for want of packets: no packet arrived since the last save
   * began, so the file holds every connection as it is now.
   */
  async function saved(): Promise<void> {
    const first = (await show<StatsView>("stats")).state!.unchanged;
    const started = Date.now();
    while ((await show<StatsView>("stats")).state!.unchanged === first) {
      if (Date.now() - started > WAIT_MS) throw new Error("the router did not save its state");
      await sleep(100);
    }
  }

  async function labUp(): Promise<void> {
    const up = await qnat(["lab", "up", configFile]);
    lastUp = up.out;
    expect(up.code, up.out).toBe(0);
  }

  beforeAll(async () => {
    await labUp();
    servers = {
      web: startIn(external, ECHO_SERVER, ["203.0.113.10", "7000"]),
      vm2: startIn(tenant, ECHO_SERVER, ["10.0.0.2", "2222"]),
    };
    expect(await servers.web.waitFor("ready")).toBe(true);
    expect(await servers.vm2.waitFor("ready")).toBe(true);
    const vm3 = startIn(tenant, CLIENT, ["10.0.0.3", "41000", "203.0.113.10", "7000"]);
    expect(await vm3.waitFor("ready"), vm3.output()).toBe(true);
    const vm4 = startIn(tenant, CLIENT, ["10.0.0.4", "41000", "203.0.113.10", "7000"]);
    const floating = startIn(external, CLIENT, ["9.186.100.1", "0", "9.186.100.129", "2222"]);
    expect(await vm4.waitFor("ready"), vm4.output()).toBe(true);
    expect(await floating.waitFor("ready"), floating.output()).toBe(true);
    clients = { vm3, vm4, floating };
  }, 60_000);

  afterAll(async () => {
    for (const helper of helpers) helper.kill();
    try {
      await qnat(["lab", "down", configFile]);
    } finally {
      destroyKernelTwin(config);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  let before: string[] = [];
  let peers = "";

  it("before: the three connections carry data; the outside sees 9.186.100.2:41000 and 9.186.100.2:<another port>, 10.0.0.2 sees 9.186.100.1", async () => {
    await exchange("one");
    const web = servers!.web.output().match(/peer \S+/g)!;
    expect(web).toHaveLength(2);
    expect(web).toContain("peer 9.186.100.2:41000");
    expect(web.filter((p) => p !== "peer 9.186.100.2:41000")[0]).toMatch(/^peer 9\.186\.100\.2:\d+$/);
    expect(servers!.vm2.output().match(/peer \S+/g)).toEqual([expect.stringMatching(/^peer 9\.186\.100\.1:\d+$/)]);
    peers = servers!.web.output() + servers!.vm2.output();
    before = await ourConnections();
    expect(before).toHaveLength(3);
    for (const line of before) expect(line).toMatch(/ESTABLISHED ASSURED$/);
  });

  it("SIGKILL, then qnat lab up: the router starts again with the three entries before any packet, and they carry data with the same ports", async () => {
    await saved();
    const pid = routerPid();
    process.kill(pid, "SIGKILL");
    const started = Date.now();
    while (alive(pid) && Date.now() - started < WAIT_MS) await sleep(50);
    expect(alive(pid)).toBe(false);
    await labUp();
    expect(lastUp).toContain("is not running (its control socket is stale); starting it again");
    expect(routerPid()).not.toBe(pid);
    expect(await ourConnections()).toEqual(before);
    const stats = await show<StatsView>("stats");
    expect(stats.state!.restore).toMatchObject({ outcome: "restored", atStop: false });
    expect(stats.state!.restore.restored).toBeGreaterThanOrEqual(3);
    expect(readFileSync(labLogPath(config.namespace), "utf8")).toMatch(/qnat: state: restored \d+ of \d+ connections from /);
    await exchange("two");
    expect(servers!.web.output() + servers!.vm2.output()).toBe(peers);
  });

  it("the second lab up is idempotent: the router runs, no second one is started", async () => {
    const pid = routerPid();
    await labUp();
    expect(lastUp).toContain("is already up");
    expect(routerPid()).toBe(pid);
  });

  it("SIGTERM, then two qnat lab up at once: one router starts; the file written at stop brings the same entries back, and data flows again", async () => {
    const pid = routerPid();
    process.kill(pid, "SIGTERM");
    const started = Date.now();
    while (alive(pid) && Date.now() - started < WAIT_MS) await sleep(50);
    expect(alive(pid)).toBe(false);
    // Two at once: one router comes up, the other lab up goes on with it.
    const ups = await Promise.all([qnat(["lab", "up", configFile]), qnat(["lab", "up", configFile])]);
    for (const up of ups) expect(up.code, up.out).toBe(0);
    expect(routersOf(configFile)).toEqual([routerPid()]);
    expect(await ourConnections()).toEqual(before);
    expect((await show<StatsView>("stats")).state!.restore).toMatchObject({ outcome: "restored", atStop: true });
    await exchange("three");
    for (const client of Object.values(clients!)) expect(client.output()).not.toMatch(/error|closed/);
    expect(servers!.web.output().match(/peer \S+/g)).toHaveLength(2);
    expect(servers!.vm2.output().match(/peer \S+/g)).toHaveLength(1);
  });
});
