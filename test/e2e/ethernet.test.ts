/**
 * The seed's router with Ethernet ports (`wire.mode: tap`, no bridge), in real namespaces (root
 * only; fresh names qnt-<tag>-*, linked to nothing, removed afterwards even on failure):
 *   - a gratuitous ARP for each address of qg- is seen on the external segment at start
 *     (tcpdump in the wire namespace, started before the router);
 *   - `arping -I eth0 10.0.0.1` from the tenant is answered with qr-'s MAC;
 *   - the router namespace shows the article's picture: `<BROADCAST,MULTICAST,UP,LOWER_UP>` and
 *     `link/ether fa:16:3e:..` on the mirror;
 *   - the seed's flows work: 10.0.0.3 reaches the outside as 9.186.100.2 (SNAT), the outside
 *     reaches 10.0.0.2 through the floating IP 9.186.100.129, TCP with curl;
 *   - a dead neighbour (9.186.100.77, nobody there) is answered with ICMP host unreachable after
 *     about 3 s (ping prints "Destination Host Unreachable", from 9.186.100.2's router, the error
 *     translated back to 10.0.0.3);
 *   - `qnat show neigh` lists the neighbours as `ip neigh` does;
 *   - `qnat apply` of a new floating IP's address on qg- announces it with a gratuitous ARP;
 *   - a deleted mirror comes back by itself with the port's MAC, and the router namespace's
 *     kernel reaches the tenant through it again;
 * and a router with one tap port (qr-) and one TUN port (qg-), offloads off: the TUN leg reads
 * and writes around the Ethernet gap of the slots, the seed's flows work across the two kinds.
 * Every ping and transfer is bounded in count and time.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../src/cli/main.js";
import { pingUntil } from "../../src/control/lab.js";
import { parseConfig, withWorkersFromEnvironment, workersOf } from "../../src/config/config.js";
import { ensureNetns, ip, isRoot as runningAsRoot } from "../../src/io/netns.js";
import { retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/ethernet.test.ts: not root, so the Ethernet port tests are skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const QR_MAC = "fa:16:3e:5d:18:10";
const QG_MAC = "fa:16:3e:70:24:92";

/** The seed's config with both ports in tap mode and the article's MACs. */
function tapConfig(text: string): string {
  return text
    .replace(/(- name: qr-694450d6-f6\n)/, `$1    mac: ${QR_MAC}\n`)
    .replace(/(- name: qg-e76de35e-90\n)/, `$1    mac: ${QG_MAC}\n`)
    .replace(/device: eth0 \}/g, "device: eth0, mode: tap }");
}

async function qnat(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await runCli(argv, { out: (t) => (out += t), err: (t) => (err += t) });
  return { code, out, err };
}

/** Runs a command in a namespace to its end (bounded by `timeout`), whatever its exit code. */
function run(netns: string, args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((done) => {
    const child = spawn("ip", ["netns", "exec", netns, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    child.stderr.on("data", (c: Buffer) => (out += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      done({ code, out });
    });
  });
}

describe.skipIf(!isRoot)("the seed's router with Ethernet (tap) ports", () => {
  let lab: Lab | undefined;
  let capture: ChildProcess | undefined;
  let captured = "";
  const tag = runTag();
  const retagged = retagForRun(SEED, tag);
  const text = tapConfig(retagged.text);
  const config = parseConfig(text, SEED);
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;
  const router = config.namespace;

  beforeAll(async () => {
    // tcpdump on the external segment before the router starts (any interface: eth0 comes with the router).
    ensureNetns(external);
    capture = spawn("ip", ["netns", "exec", external, "tcpdump", "-i", "any", "-n", "-l", "-e", "arp"], { stdio: ["ignore", "pipe", "pipe"] });
    capture.stdout!.on("data", (c: Buffer) => (captured += c.toString()));
    await sleep(500);
    lab = await startQnatLab(text, config);
  }, 40_000);
  const dir = mkdtempSync(join(tmpdir(), "qnat-ethernet-"));
  afterAll(async () => {
    try {
      capture?.kill("SIGKILL");
    } finally {
      rmSync(dir, { recursive: true, force: true });
      await lab?.stop();
    }
  }, 20_000);

  it("announces 9.186.100.2 and 9.186.100.129 with a gratuitous ARP at start", async () => {
    for (let waited = 0; waited < 3000 && !captured.includes("9.186.100.129"); waited += 100) await sleep(100);
    const lines = captured.split("\n");
    for (const address of ["9.186.100.2", "9.186.100.129"]) {
      expect(lines.some((l) => l.includes(QG_MAC) && l.includes(`Request who-has ${address} tell ${address}`))).toBe(true);
    }
  });

  it("the tenant's arping for 10.0.0.1 is answered with qr-'s MAC", async () => {
    const result = await run(tenant, ["arping", "-c", "2", "-w", "4", "-I", "eth0", "10.0.0.1"], 8000);
    expect(result.out.toLowerCase()).toContain(`reply from 10.0.0.1 [${QR_MAC}]`);
  });

  it("the router namespace shows the mirror as an Ethernet device with the port's MAC", () => {
    const shown = ip(router, "addr", "show", "dev", QR);
    expect(shown).toMatch(/<BROADCAST,MULTICAST,UP,LOWER_UP>/);
    expect(shown).toContain(`link/ether ${QR_MAC}`);
    expect(shown).toContain("inet 10.0.0.1/24");
  });

  it("10.0.0.3 reaches the outside as 9.186.100.2, the outside reaches 10.0.0.2 as 9.186.100.129, TCP too", async () => {
    expect(await pingUntil(tenant, "9.186.100.1", 5000, "10.0.0.3")).toBe(true);
    expect(await pingUntil(external, "9.186.100.129", 5000)).toBe(true);
    // A TCP service on the outside (203.0.113.10), fetched by the tenant through SNAT.
    const server = spawn("ip", ["netns", "exec", external, "python3", "-m", "http.server", "--bind", "203.0.113.10", "18080"], { stdio: "ignore" });
    try {
      let body = "";
      for (let attempt = 0; attempt < 20 && !body.includes("Directory listing"); attempt++) {
        await sleep(200);
        body = (await run(tenant, ["curl", "-s", "-m", "3", "--interface", "10.0.0.3", "http://203.0.113.10:18080/"], 5000)).out;
      }
      expect(body).toContain("Directory listing");
    } finally {
      server.kill("SIGKILL");
    }
    const conntrack = await qnat("conntrack", "-L", "--router", router);
    expect(conntrack.out).toMatch(/src=10\.0\.0\.3 dst=9\.186\.100\.1 .*src=9\.186\.100\.1 dst=9\.186\.100\.2/);
  }, 30_000);

  it("a dead neighbour (9.186.100.77) gives ICMP host unreachable after about 3 s", async () => {
    const result = await run(tenant, ["ping", "-n", "-c", "1", "-w", "8", "-I", "10.0.0.3", "9.186.100.77"], 12_000);
    expect(result.out).toContain("Destination Host Unreachable");
    expect(result.out).toMatch(/From 9\.186\.100\.2 icmp_seq=1 Destination Host Unreachable/);
    const neigh = await qnat("show", "neigh", "--router", router);
    expect(neigh.out).toContain(`9.186.100.77 dev ${QG} FAILED`);
  }, 20_000);

  it("qnat show neigh lists the tenant hosts and the gateway as ip neigh does", async () => {
    expect(await pingUntil(tenant, "9.186.100.1", 5000, "10.0.0.3")).toBe(true);
    const neigh = await qnat("show", "neigh", "--router", router);
    expect(neigh.code).toBe(0);
    const tenantMac = ip(tenant, "link", "show", "eth0").match(/link\/ether (\S+)/)![1]!;
    // With workers (the suite's second pass, QNAT_WORKERS=2) each line ends in the thread whose table holds it.
    const threads = workersOf(withWorkersFromEnvironment(config, process.env.QNAT_WORKERS));
    const thread = threads > 1 ? " thread \\d+" : "";
    // The gateway, resolved by the thread that forwarded the ping, is in every thread's table.
    for (let t = 0; threads > 1 && t < threads; t++) expect(neigh.out).toMatch(new RegExp(`^9\\.186\\.100\\.1 dev ${QG} lladdr [0-9a-f:]{17} \\S+ thread ${t}$`, "m"));
    expect(neigh.out).toMatch(new RegExp(`^10\\.0\\.0\\.3 dev ${QR} lladdr ${tenantMac} (REACHABLE|STALE|DELAY|PROBE)${thread}$`, "m"));
    expect(neigh.out).toMatch(new RegExp(`^9\\.186\\.100\\.1 dev ${QG} lladdr [0-9a-f:]{17} (REACHABLE|STALE|DELAY|PROBE)${thread}$`, "m"));
    const json = await qnat("show", "neigh", "--json", "--router", router);
    const rows = JSON.parse(json.out) as { dst: string; dev: string; state: string }[];
    expect(rows.find((r) => r.dst === "10.0.0.3")?.dev).toBe(QR);
    const stats = await qnat("show", "stats", "--json", "--router", router);
    const ethernet = (JSON.parse(stats.out) as { ethernet: { ports: Record<string, Record<string, number>> } }).ethernet;
    expect(ethernet.ports[QR]!["arp_replies"]).toBeGreaterThan(0);
    expect(ethernet.ports[QG]!["gratuitous_out"]).toBe(2);
    const text = await qnat("show", "stats", "--router", router);
    expect(text.out).toMatch(new RegExp(`^ethernet ${QR}:$`, "m"));
    expect(text.out).toMatch(/^neighbours: \d+ entries$/m);
  });

  it("qnat apply of an added address on qg- (a new floating IP) announces it with a gratuitous ARP", async () => {
    const file = join(dir, "with-fip.yaml");
    writeFileSync(file, text.replace("9.186.100.2/24, 9.186.100.129/32", "9.186.100.2/24, 9.186.100.129/32, 9.186.100.130/32"));
    const applied = await qnat("apply", file);
    expect(applied.err).toBe("");
    expect(applied.out).toContain(`+ address 9.186.100.130/32 on ${QG}`);
    for (let waited = 0; waited < 3000 && !captured.includes("who-has 9.186.100.130 tell 9.186.100.130"); waited += 100) await sleep(100);
    expect(captured.split("\n").some((l) => l.includes(QG_MAC) && l.includes("Request who-has 9.186.100.130 tell 9.186.100.130"))).toBe(true);
  });

  it("a deleted mirror is re-created with the port's MAC, and the router's kernel reaches 10.0.0.3 through it again", async () => {
    ip(router, "link", "del", QR);
    let shown = "";
    for (let waited = 0; waited < 10_000 && !shown.includes("inet 10.0.0.1/24"); waited += 200) {
      await sleep(200);
      try {
        shown = ip(router, "addr", "show", "dev", QR);
      } catch {
        shown = "";
      }
    }
    expect(shown).toContain(`link/ether ${QR_MAC}`);
    expect(shown).toContain("inet 10.0.0.1/24");
    expect(await pingUntil(router, "10.0.0.3", 5000)).toBe(true);
  }, 20_000);
});

describe.skipIf(!isRoot)("a router with a tap port and a TUN port, offloads off", () => {
  let lab: Lab | undefined;
  const tag = runTag();
  const retagged = retagForRun(SEED, tag);
  // Only qr- in tap mode: qg- stays TUN and reads/writes around the 14-byte gap.
  const text = retagged.text
    .replace(/(- name: qr-694450d6-f6\n)/, `$1    mac: ${QR_MAC}\n`)
    .replace(/(- name: qr-694450d6-f6\n(?:.*\n)*?\s+wire: \{[^}]*device: eth0) \}/, "$1, mode: tap }");
  const config = parseConfig(text, SEED);
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;

  beforeAll(async () => {
    lab = await startQnatLab(text, config, { offloads: false });
  }, 40_000);
  afterAll(async () => {
    await lab?.stop();
  }, 20_000);

  it("qr- is tap and qg- is TUN", () => {
    expect(config.ports.map((p) => p.wire.mode)).toEqual(["tap", "tun"]);
    expect(ip(config.namespace, "-o", "link", "show", QR)).toContain(`link/ether ${QR_MAC}`);
    expect(ip(config.namespace, "-o", "link", "show", QG)).toContain("link/none");
  });

  it("10.0.0.3 reaches 9.186.100.1 as 9.186.100.2, and the outside reaches 10.0.0.2 through 9.186.100.129", async () => {
    expect(await pingUntil(tenant, "9.186.100.1", 5000, "10.0.0.3")).toBe(true);
    expect(await pingUntil(external, "9.186.100.129", 5000)).toBe(true);
    const result = await run(tenant, ["arping", "-c", "1", "-w", "3", "-I", "eth0", "10.0.0.1"], 6000);
    expect(result.out.toLowerCase()).toContain(`reply from 10.0.0.1 [${QR_MAC}]`);
  }, 20_000);
});
