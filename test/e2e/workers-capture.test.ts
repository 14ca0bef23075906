/**
 * A capture with `workers: 2`, in real namespaces (root only; the seed's router under fresh
 * names qnt-<tag>-*, linked to nothing, removed afterwards even on failure): the config's
 * `capture:` of both ports starts with the router; 32 UDP flows from 10.0.0.3 cross it, which the
 * kernel spreads over both queues (the main thread's and the worker's); the one pcapng file
 * holds every datagram and every answer of every flow, before and after NAT, each with the
 * comment that says what qnat did, and `show stats` counts them all; `qnat capture -c 100`
 * takes 100 packets of every thread's together. Bounded in time and count.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { isRoot as runningAsRoot } from "../../src/io/netns.js";
import { controlRequest, controlSocketPath } from "../../src/control/socket.js";
import type { StatsView } from "../../src/control/show.js";
import { retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";
import { readPcapng } from "../support/pcapng-reader.js";
import { startIn, UDP_FLOWS, UDP_WHO_AM_I } from "../support/workers-traffic.js";

const isRoot = runningAsRoot();
const hasTools = ["tcpdump", "tshark"].every((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0);
if (!isRoot) console.warn("test/e2e/workers-capture.test.ts: not root, so the capture with two workers is skipped");
else if (!hasTools) console.warn("test/e2e/workers-capture.test.ts: tcpdump or tshark missing (scripts/host-packages.sh installs them), so the capture with two workers is skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const WAIT_MS = 10_000;
const MAIN = resolve(import.meta.dirname, "../../dist/src/cli/main.js");
const FLOWS = 32;
const PER_FLOW = 10;

function run(command: string, args: readonly string[]): string {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: 20_000, maxBuffer: 64 * 1024 * 1024 });
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
}

describe.skipIf(!isRoot || !hasTools)("a capture of both ports with workers: 2", () => {
  let lab: Lab | undefined;
  const children: ChildProcess[] = [];
  const retagged = retagForRun(SEED, runTag());
  const dir = mkdtempSync(join(tmpdir(), "qnat-workers-capture-"));
  const file = join(dir, "flows.pcapng");
  const text = `${retagged.text}workers: 2\ncapture: { file: ${file}, ports: [${QR}, ${QG}], leg: wire }\n`;
  const config = parseConfig(text, "router.yaml");
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;
  const socket = controlSocketPath(config.namespace);

  async function stats(): Promise<StatsView> {
    const response = await controlRequest(socket, { cmd: "show", what: "stats", json: true });
    if (!response.ok) throw new Error(`qnat show stats: ${response.error}`);
    return response.data as StatsView;
  }

  /** Runs UDP_FLOWS from 10.0.0.3 to 203.0.113.10:PORT; every datagram is answered. */
  function udpFlows(port: number): void {
    const client = spawnSync("ip", ["netns", "exec", tenant, process.execPath, "-e", UDP_FLOWS, String(FLOWS), String(PER_FLOW), "10.0.0.3", "203.0.113.10", String(port)], {
      encoding: "utf8",
      timeout: 20_000,
    });
    expect(JSON.parse(client.stdout)).toMatchObject({ sent: FLOWS * PER_FLOW, answered: FLOWS * PER_FLOW });
  }

  beforeAll(async () => {
    lab = await startQnatLab(text, config);
    await startIn(external, UDP_WHO_AM_I, ["203.0.113.10", "7000"], children);
    await startIn(external, UDP_WHO_AM_I, ["203.0.113.10", "7001"], children);
  }, 60_000);
  afterAll(async () => {
    for (const child of children) child.kill("SIGKILL");
    try {
      await lab?.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it("the config's capture: starts with the router on two workers", () => {
    expect(lab!.output!()).toMatch(/workers: 2 \(queue 0 on the main thread, queue 1 on a worker thread/);
    expect(lab!.output!()).toContain(`capturing ${QR}, ${QG} (wire) to ${file}`);
  });

  it("qnat capture -c 100 of both ports while the flows cross both threads: 100 packets in all, then it ends by itself", async () => {
    const second = join(dir, "count.pcapng");
    const capture = spawn(process.execPath, [MAIN, "capture", QR, QG, "-c", "100", "--router", config.namespace, "-w", second], { stdio: ["ignore", "ignore", "pipe"] });
    children.push(capture);
    let stderr = "";
    capture.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((done) => capture.once("exit", (code) => done(code)));
    const started = Date.now();
    while (!stderr.includes("capturing") && capture.exitCode === null && Date.now() - started < WAIT_MS) await sleep(20);
    expect(stderr).toContain("capturing");
    udpFlows(7001);
    expect(await Promise.race([exited, sleep(WAIT_MS).then(() => "still running")]), stderr).toBe(0);
    expect(stderr).toContain("100 packets captured, 0 lost by the capture");
    expect(run("tcpdump", ["-nn", "-r", second]).split("\n").filter((line) => line !== "")).toHaveLength(100);
  }, 30_000);

  it(`${FLOWS} UDP flows cross both threads: the one file holds every datagram and answer, before and after SNAT, with its comment`, async () => {
    const before = await stats();
    udpFlows(7000);
    const after = await stats();
    // Both threads carried some of the flows (the kernel spreads them over the queues by hash).
    for (const [i, w] of after.workers!.entries()) expect(w.rxPackets - (before.workers![i]?.rxPackets ?? 0)).toBeGreaterThan(0);
    // show stats counts every thread's captured packets: each datagram and answer on both ports.
    const datagrams = FLOWS * PER_FLOW;
    const counted = async (): Promise<number> => (await stats()).capture?.captured ?? 0;
    const waited = Date.now();
    while ((await counted()) < 4 * datagrams && Date.now() - waited < WAIT_MS) await sleep(100);
    const capture = (await stats()).capture!;
    expect(capture.running).toBe(1);
    expect(capture.lost).toBe(0);
    expect(capture.captured).toBeGreaterThanOrEqual(4 * datagrams);

    // SIGTERM ends the capture: the file is complete, with its statistics.
    process.kill(lab!.pid!, "SIGTERM");
    expect(await Promise.race([lab!.exited!, sleep(WAIT_MS).then(() => "still running")])).toBe(0);
    expect(lab!.output!()).toMatch(/capture to \S+ ended: \d+ packets captured, 0 lost/);

    // tshark: every flow's datagrams before SNAT on qr-, after it on qg-, and the answers both ways.
    const rows = run("tshark", ["-r", file, "-Y", "udp.port == 7000", "-T", "fields", "-E", "separator=|", "-e", "frame.interface_name", "-e", "ip.src", "-e", "udp.srcport", "-e", "ip.dst", "-e", "udp.dstport", "-e", "frame.comment"])
      .split("\n")
      .filter((line) => line !== "");
    const count = (pattern: RegExp): number => rows.filter((r) => pattern.test(r)).length;
    expect(count(/^qr-694450d6-f6\|10\.0\.0\.3\|\d+\|203\.0\.113\.10\|7000\|SNAT 10\.0\.0\.3:\d+ -> 9\.186\.100\.2:\d+ /), rows.slice(0, 8).join("\n")).toBe(datagrams);
    expect(count(/^qg-e76de35e-90\|9\.186\.100\.2\|\d+\|203\.0\.113\.10\|7000\|SNAT 10\.0\.0\.3:\d+ -> 9\.186\.100\.2:\d+ /)).toBe(datagrams);
    expect(count(/^qg-e76de35e-90\|203\.0\.113\.10\|7000\|9\.186\.100\.2\|\d+\|un-NAT reply: /)).toBe(datagrams);
    expect(count(/^qr-694450d6-f6\|203\.0\.113\.10\|7000\|10\.0\.0\.3\|\d+\|un-NAT reply: /)).toBe(datagrams);
    // Each of the 32 flows, by its tenant-side port: its 10 datagrams and 10 answers on qr-.
    const perFlow = new Map<string, number>();
    for (const r of rows.filter((row) => row.startsWith(`${QR}|10.0.0.3|`))) {
      const port = r.split("|")[2]!;
      perFlow.set(port, (perFlow.get(port) ?? 0) + 1);
    }
    expect([...perFlow.values()]).toEqual(Array.from({ length: FLOWS }, () => PER_FLOW));

    // tcpdump reads the same file; the file: the two ports' interfaces, the statistics every thread's.
    const dump = run("tcpdump", ["-nn", "-r", file, "udp port 7000"]).split("\n").filter((line) => line !== "");
    expect(dump).toHaveLength(4 * datagrams);
    const read = readPcapng(readFileSync(file));
    expect(read.interfaces.map((i) => i.name)).toEqual([QR, QG]);
    expect(read.statistics.reduce((sum, s) => sum + Number(s.received), 0)).toBe(read.packets.length);
    expect(read.statistics.reduce((sum, s) => sum + Number(s.dropped), 0)).toBe(0);
  }, 60_000);
});
