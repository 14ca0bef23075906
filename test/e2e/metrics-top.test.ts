/**
 * The Prometheus endpoint and `qnat top` against a running router in real namespaces (root only;
 * the seed's router under fresh names qnt-<tag>-*, with `metrics: { listen: 127.0.0.1:9464 }`,
 * linked to nothing, removed afterwards even on failure). Traffic: pings from 10.0.0.3 to the
 * outside (SNAT) and 10.0.0.2's metadata fetch through the router (REDIRECT to the proxy); the
 * scrape, with curl inside the router namespace, counts them. `qnat top` runs in a tmux pane on
 * its own tmux server (a socket of this test's), shows the ports and a non-zero rate while a
 * bounded ping runs, and quits on `q` (and Ctrl-C) with the terminal given back; `qnat apply`
 * moves the endpoint. Every traffic loop is bounded in count and time.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRoot as runningAsRoot, netnsExec } from "../../src/io/netns.js";
import { pingUntil } from "../../src/control/lab.js";
import { packageRoot, retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";

const isRoot = runningAsRoot();
const hasTmux = spawnSync("tmux", ["-V"]).status === 0;
if (!isRoot) console.warn("test/e2e/metrics-top.test.ts: not root, so the metrics endpoint and qnat top against a live router are skipped");
else if (!hasTmux) console.warn("test/e2e/metrics-top.test.ts: no tmux (scripts/host-packages.sh installs it), so qnat top on a terminal is skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const TENANT_PORT = "qr-694450d6-f6";
const GATEWAY_PORT = "qg-e76de35e-90";
const METRICS = "127.0.0.1:9464";
const PINGS = 5;

function qnatMain(): string {
  return join(packageRoot(), "dist", "src", "cli", "main.js");
}

/** One sample's value from the text format; undefined when no line has that name and those labels. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(name) || (line[name.length] !== "{" && line[name.length] !== " ")) continue;
    if (!Object.entries(labels).every(([key, value]) => line.includes(`${key}="${value}"`))) continue;
    return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return undefined;
}

describe.skipIf(!isRoot)("metrics and qnat top against the live seed router", () => {
  let lab: Lab | undefined;
  const { text, config } = retagForRun(SEED, runTag());
  const router = config.namespace;
  const tenant = config.ports[0]!.wire.namespace;
  const scrape = (address = METRICS): string => netnsExec(router, "curl", ["-s", "-m", "5", `http://${address}/metrics`], { timeoutMs: 10_000 });

  beforeAll(async () => {
    lab = await startQnatLab(`${text}\nmetrics:\n  listen: ${METRICS}\n`, config);
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it("a scrape inside the router namespace counts 10.0.0.3's pings out of the qg- port and 10.0.0.2's metadata fetch", async () => {
    expect(lab!.output!()).toContain(`metrics on http://${METRICS}/metrics in ${router}`);
    expect(await pingUntil(tenant, "203.0.113.10", 10_000, "10.0.0.3")).toBe(true);
    netnsExec(tenant, "ping", ["-c", String(PINGS), "-i", "0.2", "-W", "2", "-I", "10.0.0.3", "203.0.113.10"], { timeoutMs: 10_000 });
    const instance = netnsExec(tenant, "curl", ["-s", "-m", "5", "--interface", "10.0.0.2", "http://169.254.169.254/latest/meta-data/instance-id"], { timeoutMs: 10_000 });
    expect(instance.trim()).toBe("i-00000001");

    const text = scrape();
    // Two connections at least: the pings' (SNAT to 9.186.100.2) and the metadata fetch's (REDIRECT).
    expect(sample(text, "qnat_conntrack_inserts_total")).toBeGreaterThanOrEqual(2);
    expect(sample(text, "qnat_port_transmit_packets_total", { port: GATEWAY_PORT, leg: "wire" })).toBeGreaterThanOrEqual(PINGS + 1);
    expect(sample(text, "qnat_port_receive_packets_total", { port: TENANT_PORT, leg: "wire" })).toBeGreaterThanOrEqual(PINGS + 1 + 3);
    expect(sample(text, "qnat_nat_rule_bindings_total", { chain: "neutron-vpn-agen-snat", target: "SNAT" })).toBeGreaterThanOrEqual(1);
    expect(sample(text, "qnat_nat_rule_bindings_total", { chain: "neutron-vpn-agen-PREROUTING", target: "REDIRECT" })).toBe(1);
    expect(sample(text, "qnat_conntrack_entries", { protocol: "icmp" })).toBeGreaterThanOrEqual(1);
    expect(sample(text, "qnat_batch_packets_count")).toBeGreaterThan(0);
    expect(sample(text, "qnat_loop_busy_seconds_count")).toBeGreaterThan(0);
    expect(sample(text, "qnat_port_drops_total", { port: TENANT_PORT, reason: "no-route" })).toBe(0);
  });

  it("qnat top --once prints the ports and the connection table without a terminal; plain qnat top refuses in one line", () => {
    const once = spawnSync(process.execPath, [qnatMain(), "top", "--once", "--router", router], { encoding: "utf8", timeout: 20_000 });
    expect(once.status).toBe(0);
    expect(once.stdout).toMatch(new RegExp(`^${TENANT_PORT} +wire `, "m"));
    expect(once.stdout).toMatch(new RegExp(`^${GATEWAY_PORT} +wire `, "m"));
    expect(once.stdout).toMatch(/^conntrack: \d+ of 262144 entries/m);

    const refused = spawnSync(process.execPath, [qnatMain(), "top", "--router", router], { encoding: "utf8", timeout: 20_000, stdio: ["ignore", "pipe", "pipe"] });
    expect(refused.status).toBe(2);
    expect(refused.stderr.split("\n")[0]).toBe("qnat: top needs a terminal (stdin and stdout); use --once for a snapshot");
  });

  it.skipIf(!hasTmux)("qnat top in a tmux pane shows the ports and a non-zero rate while 10.0.0.3 pings, and q (then Ctrl-C) gives the terminal back", async () => {
    const socket = `qnat-top-${runTag()}`;
    const tmux = (...args: string[]): string => {
      const result = spawnSync("tmux", ["-L", socket, ...args], { encoding: "utf8", timeout: 10_000 });
      if (result.status !== 0) throw new Error(`tmux ${args.join(" ")}: ${result.stderr}`);
      return result.stdout;
    };
    // A bounded ping in the background: 40 packets at most, 0.1 s apart.
    const pinger = spawn("ip", ["netns", "exec", tenant, "ping", "-q", "-c", "40", "-i", "0.1", "-w", "8", "-I", "10.0.0.3", "203.0.113.10"], { stdio: "ignore" });
    try {
      tmux("new-session", "-d", "-x", "140", "-y", "40", "-s", "top", "sh");
      tmux("send-keys", "-t", "top", "clear; echo before-top", "Enter");
      tmux("send-keys", "-t", "top", `${process.execPath} ${qnatMain()} top --router ${router}; echo "top-exited $?"`, "Enter");
      let screen = "";
      for (let attempt = 0; attempt < 50; attempt++) {
        await sleep(200);
        screen = tmux("capture-pane", "-p", "-t", "top");
        if (new RegExp(`${TENANT_PORT} +wire +[1-9][0-9.]* k?pps`).test(screen)) break;
      }
      expect(screen).toContain(`qnat top - ${router}`);
      expect(screen).toMatch(new RegExp(`^${GATEWAY_PORT} +wire `, "m"));
      // 10.0.0.3's pings: a non-zero packet rate into the tenant port's wire leg.
      expect(screen).toMatch(new RegExp(`${TENANT_PORT} +wire +[1-9][0-9.]* k?pps`));
      expect(screen).toMatch(/^conntrack: \d+ of 262144 entries/m);

      tmux("send-keys", "-t", "top", "q");
      let after = "";
      for (let attempt = 0; attempt < 25 && !after.includes("top-exited"); attempt++) {
        await sleep(200);
        after = tmux("capture-pane", "-p", "-t", "top");
      }
      // Back on the main screen: what was there before top, then its exit status; no top screen left.
      expect(after).toContain("before-top");
      expect(after).toContain("top-exited 0");
      expect(after).not.toContain("qnat top -");
      // The cursor is shown again and the pane left the alternate screen.
      expect(tmux("display-message", "-p", "-t", "top", "#{cursor_flag} #{alternate_on}").trim()).toBe("1 0");

      // Ctrl-C quits the same way (the terminal is in raw mode: top reads it as a key).
      tmux("send-keys", "-t", "top", "clear", "Enter");
      tmux("send-keys", "-t", "top", `${process.execPath} ${qnatMain()} top --router ${router}; echo "again-exited $?"`, "Enter");
      screen = "";
      for (let attempt = 0; attempt < 50 && !screen.includes("(q quits)"); attempt++) {
        await sleep(200);
        screen = tmux("capture-pane", "-p", "-t", "top");
      }
      expect(tmux("display-message", "-p", "-t", "top", "#{alternate_on}").trim()).toBe("1");
      tmux("send-keys", "-t", "top", "C-c");
      after = "";
      for (let attempt = 0; attempt < 25 && !after.includes("again-exited"); attempt++) {
        await sleep(200);
        after = tmux("capture-pane", "-p", "-t", "top");
      }
      expect(after).toContain("again-exited 0");
      expect(tmux("display-message", "-p", "-t", "top", "#{cursor_flag} #{alternate_on}").trim()).toBe("1 0");
    } finally {
      pinger.kill("SIGKILL");
      spawnSync("tmux", ["-L", socket, "kill-server"], { timeout: 10_000 });
    }
  });

  it("qnat apply moves the endpoint: the new address answers, the old one no longer does", () => {
    const dir = mkdtempSync(join(tmpdir(), "qnat-metrics-"));
    try {
      const file = join(dir, "router.yaml");
      writeFileSync(file, `${text}\nmetrics:\n  listen: 127.0.0.1:9465\n`);
      const applied = spawnSync(process.execPath, [qnatMain(), "apply", file, "--router", router], { encoding: "utf8", timeout: 20_000 });
      expect([applied.status, applied.stdout]).toEqual([0, `~ metrics ${METRICS} -> 127.0.0.1:9465\n`]);
      expect(sample(scrape("127.0.0.1:9465"), "qnat_conntrack_inserts_total")).toBeGreaterThanOrEqual(2);
      expect(() => scrape()).toThrow();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
