/**
 * TUN offloads on (IFF_VNET_HDR + TUNSETOFFLOAD on every leg): TCP crosses qnat as 64 KiB GSO
 * super-packets with partial checksums, and the NAT still rewrites them so that every byte
 * arrives intact. Root only: it builds the seed's router under fresh names (qnt-<tag>-*), linked
 * to nothing, and removes them afterwards. Every transfer is bounded in time.
 *
 *   10.0.0.3 -> 203.0.113.10   SNAT to 9.186.100.2 (tenant uploads 48 MiB)
 *   203.0.113.10 -> 9.186.100.129   DNAT to the floating IP's 10.0.0.2 (outside uploads 48 MiB)
 * Each side hashes what it sent and what it received (sha256); they must match.
 */
import { spawn } from "node:child_process";
import { resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRoot as runningAsRoot, netnsExecAsync } from "../../src/io/netns.js";
import { controlRequest, controlSocketPath } from "../../src/control/socket.js";
import { retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/offload-integrity.test.ts: not root, so the offload transfer tests are skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const TRANSFER_BYTES = 48 * 1024 * 1024;
const LIMIT_MS = 30_000;

/** A TCP sink: prints "<bytes> <sha256>" of everything one connection sent, then exits. */
const SINK = `
const net = require("net"), crypto = require("crypto");
const [host, port] = process.argv.slice(1);
const server = net.createServer((socket) => {
  const hash = crypto.createHash("sha256"); let bytes = 0;
  socket.on("data", (chunk) => { hash.update(chunk); bytes += chunk.length; });
  socket.on("end", () => { console.log(bytes + " " + hash.digest("hex")); socket.end(); server.close(); });
});
server.listen(Number(port), host, () => console.log("listening"));`;

/** A TCP source: sends N seeded pseudo-random bytes from `bind`, prints "<bytes> <sha256>". */
const SOURCE = `
const net = require("net"), crypto = require("crypto");
const [bind, host, port, total] = process.argv.slice(1);
const hash = crypto.createHash("sha256"); let sent = 0, seed = 0x2545f491;
const chunk = () => { const b = Buffer.allocUnsafe(65536); for (let i = 0; i < b.length; i += 4) { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; b.writeInt32LE(seed | 0, i); } return b; };
const socket = net.connect({ host, port: Number(port), localAddress: bind }, () => {
  const pump = () => { while (sent < Number(total)) { const b = chunk(); hash.update(b); sent += b.length; if (!socket.write(b)) return socket.once("drain", pump); } socket.end(); };
  pump();
});
socket.on("data", () => {});
socket.on("close", () => console.log(sent + " " + hash.digest("hex")));`;

function startSink(netns: string, host: string, port: number): { ready: Promise<void>; result: Promise<string> } {
  const child = spawn("ip", ["netns", "exec", netns, process.execPath, "-e", SINK, host, String(port)], { stdio: ["ignore", "pipe", "pipe"] });
  const timer = setTimeout(() => child.kill("SIGKILL"), LIMIT_MS);
  let out = "";
  let markReady: () => void = () => undefined;
  const ready = new Promise<void>((done) => (markReady = done));
  child.stdout!.on("data", (chunk: Buffer) => {
    out += chunk.toString();
    if (out.includes("listening")) markReady();
  });
  const result = new Promise<string>((done) =>
    child.once("exit", () => {
      clearTimeout(timer);
      markReady();
      done(out.replace("listening", "").trim());
    }),
  );
  return { ready, result };
}

describe.skipIf(!isRoot)("offloads on: large TCP transfers through qnat arrive intact", () => {
  let lab: Lab | undefined;
  const { text, config } = retagForRun(SEED, runTag());
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;

  beforeAll(async () => {
    lab = await startQnatLab(text, config, { offloads: true });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  async function transfer(fromNs: string, bind: string, toNs: string, listenOn: string, connectTo: string, port: number): Promise<void> {
    const sink = startSink(toNs, listenOn, port);
    await sink.ready;
    const sent = (await netnsExecAsync(fromNs, process.execPath, ["-e", SOURCE, bind, connectTo, String(port), String(TRANSFER_BYTES)], { timeoutMs: LIMIT_MS })).trim();
    const received = await sink.result;
    expect(sent.split(" ")[0]).toBe(String(TRANSFER_BYTES));
    expect(received).toBe(sent);
  }

  it("10.0.0.3 uploads 48 MiB to 203.0.113.10 as 9.186.100.2 (SNAT), byte for byte", async () => {
    await transfer(tenant, "10.0.0.3", external, "203.0.113.10", "203.0.113.10", 7100);
  });

  it("203.0.113.10 uploads 48 MiB to the floating IP 9.186.100.129, received by 10.0.0.2 (DNAT), byte for byte", async () => {
    await transfer(external, "203.0.113.10", tenant, "10.0.0.2", "9.186.100.129", 7101);
  });

  it("the router saw GSO super-packets, not 1500-byte ones, and dropped nothing", async () => {
    const response = await controlRequest(controlSocketPath(config.namespace), { cmd: "show", what: "stats", json: true });
    if (!response.ok) throw new Error(`qnat show stats: ${response.error}`);
    const stats = response.data as { ports: { wire: { rxPackets: number; rxBytes: number }; drops: Record<string, number> }[] };
    const tenantWire = stats.ports[0]!.wire;
    expect(tenantWire.rxBytes / tenantWire.rxPackets).toBeGreaterThan(1500);
    for (const port of stats.ports) expect(Object.values(port.drops).reduce((a, b) => a + b, 0)).toBe(0);
  });
});
