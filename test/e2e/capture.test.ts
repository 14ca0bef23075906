/**
 * `qnat capture` against a running router in real namespaces (root only; the seed's router under
 * fresh names qnt-<tag>-*, linked to nothing, removed afterwards even on failure): a capture of
 * the qr- and qg- ports during a ping and a curl through SNAT and an HTTP request to the
 * floating IP, read back with tcpdump (the same packets before and after NAT) and tshark (the
 * comments that say why); `-w - | tcpdump -r -`; and a ring too small for a burst, whose losses
 * the capture counts while forwarding loses nothing. Every traffic loop is bounded.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRoot as runningAsRoot, netnsExec } from "../../src/io/netns.js";
import { pingUntil } from "../../src/control/lab.js";
import { packageRoot, retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";
import { parseConfig } from "../../src/config/config.js";
import { readPcapng } from "../support/pcapng-reader.js";

const isRoot = runningAsRoot();
const hasTools = ["tcpdump", "tshark"].every((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0);
if (!isRoot) console.warn("test/e2e/capture.test.ts: not root, so qnat capture against a live router is skipped");
else if (!hasTools) console.warn("test/e2e/capture.test.ts: tcpdump or tshark missing (scripts/host-packages.sh installs them), so the capture tests are skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const WAIT_MS = 10_000;
const MAIN = join(packageRoot(), "dist", "src", "cli", "main.js");

const WHO_AM_I = `
const [host, port] = process.argv.slice(1);
require("http").createServer((req, res) => res.end("seen " + req.socket.remoteAddress.replace(/^::ffff:/, "") + "\\n"))
  .listen(Number(port), host, () => console.log("ready"));
setTimeout(() => process.exit(0), 60000);`;

/** 300 UDP datagrams of 200 bytes in one go, to a port nobody listens on (bounded: one burst). */
const BURST = `
const socket = require("dgram").createSocket("udp4");
socket.bind({ address: "10.0.0.3" }, () => {
  const payload = Buffer.alloc(200, 0x71);
  let left = 300;
  for (let i = 0; i < 300; i++) socket.send(payload, 9, "203.0.113.10", () => { if (--left === 0) { console.log("sent"); socket.close(); } });
});
setTimeout(() => process.exit(1), 10000);`;

function startIn(netns: string, script: string, args: readonly string[], children: ChildProcess[]): Promise<ChildProcess> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn("ip", ["netns", "exec", netns, process.execPath, "-e", script, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    const timer = setTimeout(() => reject(new Error(`server in ${netns} did not start`)), 10_000);
    child.stdout!.once("data", () => {
      clearTimeout(timer);
      resolvePromise(child);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server in ${netns} exited (${code})`));
    });
  });
}

interface CaptureProcess {
  readonly child: ChildProcess;
  readonly stderr: () => string;
  readonly exited: Promise<number | null>;
}

/** `qnat capture ARGS` as a user runs it; resolves once it says it is capturing. */
async function startCapture(args: readonly string[]): Promise<CaptureProcess> {
  const child = spawn(process.execPath, [MAIN, "capture", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
  const started = Date.now();
  while (!stderr.includes("capturing") && Date.now() - started < WAIT_MS) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  if (!stderr.includes("capturing")) {
    child.kill("SIGKILL");
    throw new Error(`qnat capture did not start: ${stderr}`);
  }
  return { child, stderr: () => stderr, exited };
}

/** Ctrl-C, and the capture's exit (bounded). */
async function interrupt(capture: CaptureProcess): Promise<number | null> {
  capture.child.kill("SIGINT");
  const timer = setTimeout(() => capture.child.kill("SIGKILL"), WAIT_MS);
  const code = await capture.exited;
  clearTimeout(timer);
  return code;
}

function run(command: string, args: readonly string[]): string {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: 20_000 });
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
}

/** Collects a capture pipeline's output and waits until the capture says it is capturing. */
async function capturing(pipeline: ChildProcess, children: ChildProcess[]): Promise<{ io: { out: string; err: string }; exited: Promise<number | null> }> {
  children.push(pipeline);
  const io = { out: "", err: "" };
  pipeline.stdout!.on("data", (chunk: Buffer) => (io.out += chunk.toString()));
  pipeline.stderr!.on("data", (chunk: Buffer) => (io.err += chunk.toString()));
  const exited = new Promise<number | null>((done) => pipeline.once("exit", (code) => done(code)));
  const started = Date.now();
  while (!io.err.includes("capturing") && Date.now() - started < WAIT_MS) await new Promise((r) => setTimeout(r, 20));
  return { io, exited };
}

describe.skipIf(!isRoot || !hasTools)("qnat capture on the live router: the seed's SNAT and floating IP, before and after NAT", () => {
  let lab: Lab | undefined;
  const children: ChildProcess[] = [];
  const dir = mkdtempSync(join(tmpdir(), "qnat-capture-"));
  const { text, config } = retagForRun(SEED, runTag());
  const router = config.namespace;
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;

  beforeAll(async () => {
    lab = await startQnatLab(text, config);
    await startIn(external, WHO_AM_I, ["0.0.0.0", "8080"], children);
    await startIn(tenant, WHO_AM_I, ["10.0.0.2", "8081"], children);
  }, 60_000);
  afterAll(async () => {
    try {
      for (const child of children) child.kill("SIGKILL");
      await lab?.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a ping and a curl from 10.0.0.3 leave as 9.186.100.2, a curl to 9.186.100.129 reaches 10.0.0.2: tcpdump shows both sides, tshark says why", async () => {
    const file = join(dir, "snat.pcapng");
    const capture = await startCapture([QR, QG, "--router", router, "-w", file]);
    try {
      expect(await pingUntil(tenant, "203.0.113.10", WAIT_MS, "10.0.0.3")).toBe(true);
      expect(netnsExec(tenant, "curl", ["-s", "-m", "5", "--interface", "10.0.0.3", "http://203.0.113.10:8080/"], { timeoutMs: 10_000 }).trim()).toBe("seen 9.186.100.2");
      expect(netnsExec(external, "curl", ["-s", "-m", "5", "http://9.186.100.129:8081/"], { timeoutMs: 10_000 }).trim()).toBe("seen 9.186.100.1");
    } finally {
      expect(await interrupt(capture)).toBe(0);
    }
    const summary = /(\d+) packets captured, (\d+) lost by the capture/.exec(capture.stderr());
    expect(summary, capture.stderr()).not.toBeNull();
    const packets = Number(summary![1]);
    expect(Number(summary![2])).toBe(0);

    // tcpdump reads every packet; the ping is seen before (10.0.0.3) and after (9.186.100.2) SNAT.
    const dump = run("tcpdump", ["-nn", "-r", file]).split("\n").filter((line) => line !== "");
    expect(dump).toHaveLength(packets);
    expect(dump.some((l) => /IP 10\.0\.0\.3 > 203\.0\.113\.10: ICMP echo request/.test(l))).toBe(true);
    expect(dump.some((l) => /IP 9\.186\.100\.2 > 203\.0\.113\.10: ICMP echo request/.test(l))).toBe(true);
    expect(dump.some((l) => /IP 203\.0\.113\.10 > 10\.0\.0\.3: ICMP echo reply/.test(l))).toBe(true);
    expect(dump.some((l) => /IP 10\.0\.0\.3\.\d+ > 203\.0\.113\.10\.8080: Flags \[S\]/.test(l))).toBe(true);
    expect(dump.some((l) => /IP 9\.186\.100\.2\.\d+ > 203\.0\.113\.10\.8080: Flags \[S\]/.test(l))).toBe(true);
    expect(dump.some((l) => /IP 9\.186\.100\.1\.\d+ > 9\.186\.100\.129\.8081: Flags \[S\]/.test(l))).toBe(true);
    expect(dump.some((l) => /IP 9\.186\.100\.1\.\d+ > 10\.0\.0\.2\.8081: Flags \[S\]/.test(l))).toBe(true);

    // tshark: each packet's interface, addresses and comment.
    const rows = run("tshark", ["-r", file, "-T", "fields", "-E", "separator=|", "-e", "frame.interface_name", "-e", "ip.src", "-e", "ip.dst", "-e", "frame.comment"])
      .split("\n")
      .filter((line) => line !== "");
    expect(rows).toHaveLength(packets);
    expect(rows.some((r) => /^qr-694450d6-f6\|10\.0\.0\.3\|203\.0\.113\.10\|SNAT 10\.0\.0\.3:\d+ -> 9\.186\.100\.2:\d+ \(rule neutron-vpn-agen-snat #2\)$/.test(r)), rows.join("\n")).toBe(true);
    expect(rows).toContain(`${QR}|10.0.0.3|203.0.113.10|SNAT 10.0.0.3 -> 9.186.100.2 (rule neutron-vpn-agen-snat #2)`);
    expect(rows).toContain(`${QG}|9.186.100.2|203.0.113.10|SNAT 10.0.0.3 -> 9.186.100.2 (rule neutron-vpn-agen-snat #2)`);
    expect(rows).toContain(`${QG}|203.0.113.10|9.186.100.2|un-NAT reply: dst 9.186.100.2 -> 10.0.0.3 (conntrack ESTABLISHED)`);
    expect(rows.some((r) => r.startsWith(`${QG}|9.186.100.1|9.186.100.129|DNAT 9.186.100.129 -> 10.0.0.2 (floating IP, rule neutron-vpn-agen-PREROUTING #2)`))).toBe(true);
    expect(rows.some((r) => r.startsWith(`${QR}|9.186.100.1|10.0.0.2|DNAT 9.186.100.129 -> 10.0.0.2 (floating IP`))).toBe(true);
    expect(rows.some((r) => /^qg-e76de35e-90\|9\.186\.100\.2\|203\.0\.113\.10\|SNAT 10\.0\.0\.3:\d+ -> 9\.186\.100\.2:\d+ \(/.test(r))).toBe(true);

    // The file itself: one interface per port, LINKTYPE_RAW, real timestamps, the statistics at the end.
    const read = readPcapng(readFileSync(file));
    expect(read.interfaces.map((i) => [i.name, i.linkType])).toEqual([
      [QR, 228],
      [QG, 228],
    ]);
    const first = Number(read.packets[0]!.timestamp) / 1e6;
    expect(Math.abs(first - Date.now() / 1000)).toBeLessThan(120);
    expect(read.statistics.map((s) => s.interfaceId)).toEqual([0, 1]);
    expect(read.statistics.reduce((sum, s) => sum + Number(s.received), 0)).toBe(packets);
  }, 60_000);

  it("a port the router does not have, or a router that is not running, is one line and exit 1", () => {
    const unknown = spawnSync(process.execPath, [MAIN, "capture", "qg-nope", "--router", router, "-w", join(dir, "x.pcapng")], { encoding: "utf8", timeout: 20_000 });
    expect(unknown.status).toBe(1);
    expect(unknown.stderr).toBe(`qnat: no port qg-nope (the router's ports: ${QR}, ${QG})\n`);
    const absent = spawnSync(process.execPath, [MAIN, "capture", QG, "--router", `${router}-none`, "-w", "-"], { encoding: "utf8", timeout: 20_000 });
    expect(absent.status).toBe(1);
    expect(absent.stderr).toMatch(/^qnat: no qnat router is running for namespace \S+-none \(.*\)\n$/);
    expect(absent.stdout).toBe("");
  });

  it("-w - | tcpdump -r -: the capture streams through the control socket; -c 4 ends it", async () => {
    const pipeline = spawn("bash", ["-c", `set -o pipefail; ${process.execPath} ${MAIN} capture ${QG} -c 4 --router ${router} -w - | tcpdump -nn -r -`], { stdio: ["ignore", "pipe", "pipe"] });
    const { io, exited } = await capturing(pipeline, children);
    for (let i = 0; i < 5 && pipeline.exitCode === null; i++) await pingUntil(tenant, "203.0.113.10", 2000, "10.0.0.3");
    const timer = setTimeout(() => pipeline.kill("SIGKILL"), WAIT_MS);
    expect(await exited, io.err).toBe(0);
    clearTimeout(timer);
    const lines = io.out.split("\n").filter((line) => line !== "");
    expect(io.err).toContain("link-type RAW"); // one TUN interface: LINKTYPE_RAW
    expect(lines).toHaveLength(4);
    expect(lines.filter((l) => /IP 9\.186\.100\.2 > 203\.0\.113\.10: ICMP echo request/.test(l)).length).toBeGreaterThanOrEqual(2);
    expect(io.err).toContain("4 packets captured, 0 lost by the capture");
    expect(io.err).not.toMatch(/at .*\.js:\d+/); // no stack trace
  }, 60_000);

  it("| tcpdump -c 2 -r -: when the reader goes away the capture ends with one line (SIGPIPE), exit 0", async () => {
    const pipeline = spawn("bash", ["-c", `set -o pipefail; ${process.execPath} ${MAIN} capture ${QG} --router ${router} -w - | tcpdump -c 2 -nn -r -`], { stdio: ["ignore", "pipe", "pipe"] });
    const { io, exited } = await capturing(pipeline, children);
    // tcpdump leaves after 2 packets; the capture learns it at its next write.
    for (let i = 0; i < 10 && pipeline.exitCode === null; i++) await pingUntil(tenant, "203.0.113.10", 2000, "10.0.0.3");
    const timer = setTimeout(() => pipeline.kill("SIGKILL"), WAIT_MS);
    expect(await exited, io.err).toBe(0);
    clearTimeout(timer);
    expect(io.out.split("\n").filter((line) => line !== "")).toHaveLength(2);
    const ours = io.err.split("\n").filter((line) => line.startsWith("qnat"));
    expect(ours).toHaveLength(2); // "capturing ..." and the one line at the end
    expect(ours[1]).toMatch(/^qnat capture: the reader of stdout went away; \d+ packets captured$/);
    expect(io.err).not.toMatch(/at .*\.js:\d+/);
  }, 60_000);

  it("a 1 KiB ring (-B 1) loses part of a burst of 300 datagrams to the capture, counted in the file and in show stats; forwarding loses none", async () => {
    const statsBefore = JSON.parse(run(process.execPath, [MAIN, "show", "stats", "--json", "--router", router])) as { ports: { wire: { txPackets: number } }[] };
    const file = join(dir, "burst.pcapng");
    const capture = await startCapture([QR, QG, "-B", "1", "--router", router, "-w", file]);
    try {
      await startIn(tenant, BURST, [], children);
      await new Promise((r) => setTimeout(r, 500));
    } finally {
      expect(await interrupt(capture)).toBe(0);
    }
    const summary = /(\d+) packets captured, (\d+) lost by the capture/.exec(capture.stderr());
    expect(summary, capture.stderr()).not.toBeNull();
    const [captured, lost] = [Number(summary![1]), Number(summary![2])];
    expect(lost).toBeGreaterThan(0);
    const read = readPcapng(readFileSync(file));
    expect(read.packets).toHaveLength(captured);
    expect(read.statistics.reduce((sum, s) => sum + Number(s.dropped), 0)).toBe(lost);
    // Both legs of 300 datagrams, and nothing else of the burst: what the capture saw is all of it.
    expect(read.statistics.reduce((sum, s) => sum + Number(s.received), 0)).toBeGreaterThanOrEqual(600);
    const statsAfter = JSON.parse(run(process.execPath, [MAIN, "show", "stats", "--json", "--router", router])) as {
      ports: { wire: { txPackets: number } }[];
      capture?: { running: number; lost: number };
    };
    expect(statsAfter.ports[1]!.wire.txPackets - statsBefore.ports[1]!.wire.txPackets).toBeGreaterThanOrEqual(300);
    expect(statsAfter.capture?.running).toBe(0);
    expect(statsAfter.capture?.lost).toBeGreaterThanOrEqual(lost);
    expect(run(process.execPath, [MAIN, "show", "stats", "--router", router])).toMatch(/capture: 0 running; \d+ packets captured, \d+ lost \(ring full\)/);
  }, 60_000);
});

describe.skipIf(!isRoot || !hasTools)("the config's capture: the router captures from its start", () => {
  let lab: Lab | undefined;
  const dir = mkdtempSync(join(tmpdir(), "qnat-capture-config-"));
  const file = join(dir, "qg.pcapng");
  const retagged = retagForRun(SEED, runTag());
  const text = `${retagged.text}capture:\n  file: ${file}\n  ports: [${QG}]\n  count: 4\n`;
  const tenant = retagged.config.ports[0]!.wire.namespace;

  beforeAll(async () => {
    lab = await startQnatLab(text, retagged.config);
  }, 60_000);
  afterAll(async () => {
    try {
      await lab?.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("capture: { file, ports: [qg-...], count: 4 } writes 10.0.0.3's pings as 9.186.100.2, then says it ended", async () => {
    const started = Date.now();
    while (!lab!.output!().includes("ended") && Date.now() - started < WAIT_MS) await pingUntil(tenant, "203.0.113.10", 2000, "10.0.0.3");
    expect(lab!.output!()).toContain(`qnat: capture to ${file} ended: 4 packets captured, 0 lost`);
    const dump = run("tcpdump", ["-nn", "-r", file]).split("\n").filter((line) => line !== "");
    expect(dump).toHaveLength(4);
    expect(dump.every((line) => / IP (9\.186\.100\.2 > 203\.0\.113\.10: ICMP echo request|203\.0\.113\.10 > 9\.186\.100\.2: ICMP echo reply)/.test(line))).toBe(true);
  }, 60_000);
});

describe.skipIf(!isRoot || !hasTools)("a capture of tap ports: Ethernet frames with their addresses (LINKTYPE_ETHERNET)", () => {
  let lab: Lab | undefined;
  const dir = mkdtempSync(join(tmpdir(), "qnat-capture-tap-"));
  const QR_MAC = "fa:16:3e:5d:18:10";
  const QG_MAC = "fa:16:3e:70:24:92";
  const retagged = retagForRun(SEED, runTag());
  const text = retagged.text
    .replace(/(- name: qr-694450d6-f6\n)/, `$1    mac: ${QR_MAC}\n`)
    .replace(/(- name: qg-e76de35e-90\n)/, `$1    mac: ${QG_MAC}\n`)
    .replace(/device: eth0 \}/g, "device: eth0, mode: tap }");
  const config = parseConfig(text, SEED);
  const router = config.namespace;
  const tenant = config.ports[0]!.wire.namespace;

  beforeAll(async () => {
    lab = await startQnatLab(text, config);
  }, 60_000);
  afterAll(async () => {
    try {
      await lab?.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("10.0.0.3's ping arrives at qr-'s MAC and leaves from qg-'s, SNATed: tcpdump -e shows both frames", async () => {
    const file = join(dir, "tap.pcapng");
    const capture = await startCapture([QR, QG, "--router", router, "-w", file]);
    try {
      // The first waits for ARP (9.186.100.1's MAC); the second finds the neighbour known.
      expect(await pingUntil(tenant, "203.0.113.10", WAIT_MS, "10.0.0.3")).toBe(true);
      expect(await pingUntil(tenant, "203.0.113.10", WAIT_MS, "10.0.0.3")).toBe(true);
    } finally {
      expect(await interrupt(capture)).toBe(0);
    }
    const read = readPcapng(readFileSync(file));
    expect(read.interfaces.map((i) => [i.name, i.linkType])).toEqual([
      [QR, 1],
      [QG, 1],
    ]);
    const dump = run("tcpdump", ["-e", "-nn", "-r", file]).split("\n");
    expect(dump.some((l) => new RegExp(`> ${QR_MAC}, ethertype IPv4 \\(0x0800\\), length \\d+: 10\\.0\\.0\\.3 > 203\\.0\\.113\\.10: ICMP echo request`).test(l)), dump.join("\n")).toBe(true);
    expect(dump.some((l) => new RegExp(`${QG_MAC} > [0-9a-f:]{17}, ethertype IPv4 \\(0x0800\\), length \\d+: 9\\.186\\.100\\.2 > 203\\.0\\.113\\.10: ICMP echo request`).test(l)), dump.join("\n")).toBe(true);
    const rows = run("tshark", ["-r", file, "-T", "fields", "-E", "separator=|", "-e", "frame.interface_name", "-e", "eth.src", "-e", "ip.src", "-e", "frame.comment"]).split("\n");
    expect(rows, rows.join("\n")).toContain(`${QG}|${QG_MAC}|9.186.100.2|waited for ARP: sent when the next hop's neighbour answered`);
    expect(rows, rows.join("\n")).toContain(`${QG}|${QG_MAC}|9.186.100.2|SNAT 10.0.0.3 -> 9.186.100.2 (rule neutron-vpn-agen-snat #2)`);
    expect(rows, rows.join("\n")).toContain(`${QR}|${QR_MAC}|203.0.113.10|un-NAT reply: dst 9.186.100.2 -> 10.0.0.3 (conntrack ESTABLISHED)`);
  }, 60_000);
});
