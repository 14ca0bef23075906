/**
 * The router changes while it runs, as Neutron's L3 agent changes it (issue 11), in real
 * namespaces (root only; the seed's router under fresh names qnt-<tag>-*, linked to nothing,
 * removed afterwards even on failure):
 *   - `qnat apply` of the unchanged config prints nothing;
 *   - a router interface (a new qr- port, its network namespace and a host there) is added and
 *     removed while the other ports forward;
 *   - a floating IP 9.186.100.130 for 10.0.0.3 is associated (its address on qg-, the DNAT and
 *     SNAT rules) and disassociated as Neutron does it (the config without it, then `qnat
 *     conntrack -D -d/-q` of its connections), and the outside reaches 10.0.0.3 through it only
 *     meanwhile;
 *   - an extra route sends 198.51.100.0/24 to a tenant host;
 *   - a port's MTU changes on both its legs; the metadata proxy answers from the new instances;
 *   - `qnat rules save` prints what the kernel's `iptables-save -t nat` prints for the same rules,
 *     and `qnat rules restore` replaces the live table, all or nothing;
 *   - a broken config is refused with one `FILE:LINE:` line, exit 2, nothing changed;
 *   - SIGHUP applies the file the router was started with;
 *   - a ping every 50 ms and a TCP stream run through the router across 50 apply cycles of
 *     another floating IP, and lose nothing.
 * Every ping and stream is bounded in count and time.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../src/cli/main.js";
import { pingUntil } from "../../src/control/lab.js";
import { controlRequest, controlSocketPath } from "../../src/control/socket.js";
import { deleteNetns, ensureNetns, ip, isRoot as runningAsRoot, netnsExec } from "../../src/io/netns.js";
import { parseRules } from "../../src/nat/rules/parse.js";
import { formatSave } from "../../src/nat/rules/format.js";
import { retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/live-changes.test.ts: not root, so the live change tests are skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const WAIT_MS = 5_000;
const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const LAST_SNAT_RULE = "  -A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2";

/** `text` with `from` replaced by `to`, which must be there exactly once. */
function edit(text: string, from: string, to: string): string {
  const at = text.indexOf(from);
  if (at < 0 || text.indexOf(from, at + from.length) >= 0) throw new Error(`the config has not exactly one "${from}"`);
  return text.slice(0, at) + to + text.slice(at + from.length);
}

/** The seed's config with floating IP `fip` associated to `fixed` (Neutron's address and three rules). */
function withFloatingIp(text: string, fip: string, fixed: string): string {
  let out = edit(text, "9.186.100.2/24, 9.186.100.129/32", `9.186.100.2/24, 9.186.100.129/32, ${fip}/32`);
  out = edit(
    out,
    LAST_SNAT_RULE,
    `  -A neutron-vpn-agen-OUTPUT -d ${fip}/32 -j DNAT --to-destination ${fixed}\n` +
      `  -A neutron-vpn-agen-PREROUTING -d ${fip}/32 -j DNAT --to-destination ${fixed}\n` +
      `  -A neutron-vpn-agen-float-snat -s ${fixed}/32 -j SNAT --to-source ${fip}\n` +
      LAST_SNAT_RULE,
  );
  return out;
}

function pingsOnce(netns: string, destination: string): Promise<boolean> {
  return pingUntil(netns, destination, 1);
}

interface CliRun {
  readonly code: number;
  readonly out: string;
  readonly err: string;
}

async function qnat(...argv: string[]): Promise<CliRun> {
  let out = "";
  let err = "";
  const code = await runCli(argv, { out: (t) => (out += t), err: (t) => (err += t) });
  return { code, out, err };
}

describe.skipIf(!isRoot)("a running router changes as Neutron changes it, live", () => {
  let lab: Lab | undefined;
  const tag = runTag();
  const { text: seedText, config } = retagForRun(SEED, tag);
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;
  const router = config.namespace;
  const dir = mkdtempSync(join(tmpdir(), "qnat-live-"));
  const scratchNs = `qnt-${tag}-ipt`;
  /** The wire namespace of the router interface a test adds (the lab's, made by qnat apply). */
  const extraNs = `qnt-${tag}-p2`;
  let n = 0;

  /** `qnat apply` of a config text, written to a file of its own. */
  async function apply(text: string): Promise<CliRun> {
    const file = join(dir, `router-${++n}.yaml`);
    writeFileSync(file, text);
    return qnat("apply", file);
  }

  async function rulesSave(counters = false): Promise<string> {
    const run = await qnat("rules", "save", "--router", router, ...(counters ? ["-c"] : []));
    expect(run.code).toBe(0);
    return run.out;
  }

  /** The router namespace's addresses on a mirror, as `ip -4 -o addr` lists them. */
  function mirrorAddresses(port: string): string[] {
    return [...ip(router, "-4", "-o", "addr", "show", "dev", port).matchAll(/inet (\S+)/g)].map((m) => m[1]!);
  }

  async function traceOut(packet: string): Promise<string> {
    const response = await controlRequest(controlSocketPath(router), { cmd: "trace", packet, json: true });
    if (!response.ok) throw new Error(response.error);
    return (response.data as { out?: { packet: string } }).out?.packet ?? "(dropped)";
  }

  beforeAll(async () => {
    lab = await startQnatLab(seedText, config);
  }, 30_000);
  afterAll(async () => {
    try {
      await lab?.stop();
    } finally {
      for (const name of [scratchNs, extraNs]) {
        try {
          deleteNetns(name);
        } catch {
          // not made (not root, or the test failed before)
        }
      }
      rmSync(dir, { recursive: true, force: true });
    }
  }, 20_000);

  it("applying the config the router runs prints nothing and changes nothing", async () => {
    expect(await pingUntil(tenant, "203.0.113.10", WAIT_MS, "10.0.0.3")).toBe(true);
    const run = await apply(seedText);
    expect(run).toEqual({ code: 0, out: "", err: "" });
  });

  it("a router interface: qr-5e1f0c2a-11 10.1.0.1/24 added with its own network and host 10.1.0.5, then removed", async () => {
    const port = "qr-5e1f0c2a-11";
    const withInterface = edit(
      edit(
        edit(seedText, "  - name: qg-e76de35e-90\n", `  - name: ${port}\n    addresses: [10.1.0.1/24]\n    wire: { namespace: ${extraNs}, device: eth0 }\n  - name: qg-e76de35e-90\n`),
        LAST_SNAT_RULE,
        `${LAST_SNAT_RULE}\n  -A neutron-vpn-agen-snat -s 10.1.0.0/24 -j SNAT --to-source 9.186.100.2`,
      ),
      "lab:\n",
      `lab:\n  ${extraNs}: { addresses: [10.1.0.5/24], routes: [default via 10.1.0.1] }\n`,
    );
    const added = await apply(withInterface);
    expect(added.err).toBe("");
    expect(added.out.split("\n").filter(Boolean)).toEqual([
      `+ port ${port} 10.1.0.1/24 mtu 1500 <-> ${extraNs}/eth0`,
      `+ address 10.1.0.1/24 on ${port}`,
      "+ rule -A neutron-vpn-agen-snat -s 10.1.0.0/24 -j SNAT --to-source 9.186.100.2",
    ]);
    expect(mirrorAddresses(port)).toEqual(["10.1.0.1/24"]);
    // The new network reaches the outside (as 9.186.100.2) and the tenant network; the old one goes on.
    expect(await pingUntil(extraNs, "203.0.113.10", WAIT_MS, "10.1.0.5")).toBe(true);
    expect(await pingUntil(extraNs, "10.0.0.3", WAIT_MS, "10.1.0.5")).toBe(true);
    expect(await pingUntil(tenant, "203.0.113.10", WAIT_MS, "10.0.0.3")).toBe(true);
    expect(await traceOut(`${port} udp 10.1.0.5:5000 > 203.0.113.10:53`)).toBe("udp 9.186.100.2:5000 > 203.0.113.10:53");

    const removed = await apply(seedText);
    expect(removed.out.split("\n").filter(Boolean)).toEqual([
      `- port ${port} 10.1.0.1/24 mtu 1500 <-> ${extraNs}/eth0`,
      `- address 10.1.0.1/24 on ${port}`,
      "- rule -A neutron-vpn-agen-snat -s 10.1.0.0/24 -j SNAT --to-source 9.186.100.2",
    ]);
    expect(ip(router, "-o", "link", "show")).not.toContain(port);
    expect(await pingsOnce(extraNs, "203.0.113.10")).toBe(false);
    expect(await pingUntil(tenant, "203.0.113.10", WAIT_MS, "10.0.0.3")).toBe(true);
    expect(await pingUntil(external, "9.186.100.129", WAIT_MS)).toBe(true);
  });

  it("a floating IP 9.186.100.130 for 10.0.0.3: associated, the outside reaches 10.0.0.3 through it; disassociated, no more", async () => {
    const associated = await apply(withFloatingIp(seedText, "9.186.100.130", "10.0.0.3"));
    expect(associated.err).toBe("");
    expect(associated.code).toBe(0);
    expect(associated.out.split("\n").filter(Boolean)).toEqual([
      `+ address 9.186.100.130/32 on ${QG}`,
      "+ rule -A neutron-vpn-agen-OUTPUT -d 9.186.100.130/32 -j DNAT --to-destination 10.0.0.3",
      "+ rule -A neutron-vpn-agen-PREROUTING -d 9.186.100.130/32 -j DNAT --to-destination 10.0.0.3",
      "+ rule -A neutron-vpn-agen-float-snat -s 10.0.0.3/32 -j SNAT --to-source 9.186.100.130",
    ]);
    expect(mirrorAddresses(QG)).toContain("9.186.100.130/32");
    expect(await pingUntil(external, "9.186.100.130", WAIT_MS)).toBe(true);
    // A new connection of 10.0.0.3 leaves as its floating IP now.
    expect(await traceOut(`${QR} tcp 10.0.0.3:41000 > 203.0.113.10:80 syn`)).toBe("tcp 9.186.100.130:41000 > 203.0.113.10:80");

    // The connection the ping made through the floating IP.
    expect((await qnat("conntrack", "-L", "-d", "9.186.100.130", "--router", router)).out).toContain("dst=9.186.100.130");

    // Neutron's disassociation: the config without it, then conntrack -D of its connections.
    const disassociated = await apply(seedText);
    expect(disassociated.code).toBe(0);
    const deleted = await qnat("conntrack", "-D", "-d", "9.186.100.130", "--router", router);
    expect(deleted.err).toMatch(/[1-9]\d* flow entries have been deleted\./);
    await qnat("conntrack", "-D", "-q", "9.186.100.130", "--router", router);
    expect((await qnat("conntrack", "-L", "-d", "9.186.100.130", "--router", router)).out).toBe("");
    expect(await pingsOnce(external, "9.186.100.130")).toBe(false);
    expect(disassociated.out).toContain(`- address 9.186.100.130/32 on ${QG}\n`);
    expect(disassociated.out).toContain("- rule -A neutron-vpn-agen-PREROUTING -d 9.186.100.130/32 -j DNAT --to-destination 10.0.0.3\n");
    expect(mirrorAddresses(QG)).not.toContain("9.186.100.130/32");
    expect(await traceOut(`${QR} tcp 10.0.0.3:41001 > 203.0.113.10:80 syn`)).toBe("tcp 9.186.100.2:41001 > 203.0.113.10:80");
    // The ping's own connection to .130 may live on in conntrack (Linux semantics); a new one is not DNATed.
    expect(await traceOut(`${QG} tcp 9.186.100.1:42000 > 9.186.100.130:22 syn`)).not.toContain("10.0.0.3");
  });

  it("an extra route: 198.51.100.0/24 via the tenant host 10.0.0.3 reaches 198.51.100.7 there", async () => {
    ip(tenant, "addr", "replace", "198.51.100.7/32", "dev", "lo");
    ip(external, "route", "replace", "198.51.100.0/24", "via", "9.186.100.2");
    expect(await pingsOnce(external, "198.51.100.7")).toBe(false);
    const route = `198.51.100.0/24 via 10.0.0.3 dev ${QR}`;
    const run = await apply(edit(seedText, `  - default via 9.186.100.1 dev ${QG}\n`, `  - default via 9.186.100.1 dev ${QG}\n  - ${route}\n`));
    expect(run.out).toBe(`+ route ${route}\n`);
    expect(ip(router, "route", "show", "198.51.100.0/24")).toContain("via 10.0.0.3");
    expect(await pingUntil(external, "198.51.100.7", WAIT_MS)).toBe(true);
    const removed = await apply(seedText);
    expect(removed.out).toBe(`- route ${route}\n`);
    expect(ip(router, "route", "show", "198.51.100.0/24").trim()).toBe("");
  });

  it("an MTU: qr- at 1400 on both its legs, then 1500 again", async () => {
    const mtus = (): string[] => [ip(router, "-o", "link", "show", QR), ip(tenant, "-o", "link", "show", "eth0")].map((line) => /mtu (\d+)/.exec(line)![1]!);
    const lowered = edit(seedText, "    mtu: 1500\n  - name: qg", "    mtu: 1400\n  - name: qg");
    expect((await apply(lowered)).out).toBe(`~ mtu 1500 -> 1400 on ${QR}\n`);
    expect(mtus()).toEqual(["1400", "1400"]);
    expect((await apply(seedText)).out).toBe(`~ mtu 1400 -> 1500 on ${QR}\n`);
    expect(mtus()).toEqual(["1500", "1500"]);
  });

  it("metadata instances: vm-2 renamed vm-2b is what 10.0.0.3 reads from 169.254.169.254 next", async () => {
    const hostname = (): string =>
      netnsExec(tenant, "curl", ["-s", "-m", "5", "--interface", "10.0.0.3", "http://169.254.169.254/latest/meta-data/hostname"]).trim();
    expect(hostname()).toBe("vm-2");
    const run = await apply(edit(seedText, "hostname: vm-2 }", "hostname: vm-2b }"));
    expect(run.out).toBe("~ metadata: 2 instances on port 9697\n");
    expect(hostname()).toBe("vm-2b");
    expect((await apply(seedText)).out).toBe("~ metadata: 2 instances on port 9697\n");
    expect(hostname()).toBe("vm-2");
  });

  it("qnat rules save prints what the kernel's iptables-save -t nat prints for the same rules", async () => {
    const seedRules = parseRules(config.nat.text).table;
    ensureNetns(scratchNs);
    netnsExec(scratchNs, "iptables-restore", ["-w"], { input: formatSave(seedRules) });
    const kernel = netnsExec(scratchNs, "iptables-save", ["-t", "nat"]);
    const ours = await rulesSave();
    const body = (text: string): string[] => text.split("\n").filter((line) => line !== "" && !line.startsWith("#"));
    expect(body(ours)).toEqual(body(kernel));
    const comments = (text: string): string[] => text.split("\n").filter((line) => line.startsWith("#")).map((line) => line.split(" ").slice(0, 2).join(" "));
    expect(comments(ours)).toEqual(comments(kernel));
    expect(ours).toMatch(/^# Generated by .* on \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n\*nat\n/);
    // With -c, every rule and built-in chain has [packets:bytes], as iptables-save -c prints them;
    // 10.0.0.3's pings went out through the snat rule, which counted them.
    const counted = await rulesSave(true);
    const snat = counted.split("\n").find((line) => line.endsWith("-A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2"));
    expect(snat).toMatch(/^\[[1-9]\d*:[1-9]\d*\] -A /);
    const kernelCounted = netnsExec(scratchNs, "iptables-save", ["-t", "nat", "-c"]);
    const shape = (text: string): string[] => body(text).map((line) => line.replace(/\[\d+:\d+\]/g, "[P:B]"));
    expect(shape(counted)).toEqual(shape(kernelCounted));
  });

  it("qnat rules restore replaces the live table: a DNAT for 9.186.100.131 works, then the old table is back", async () => {
    const before = await rulesSave();
    const added = before.replace(
      "-A neutron-vpn-agen-PREROUTING -d 9.186.100.129/32",
      "-A neutron-vpn-agen-PREROUTING -d 9.186.100.131/32 -j DNAT --to-destination 10.0.0.3\n-A neutron-vpn-agen-PREROUTING -d 9.186.100.129/32",
    );
    expect(added).not.toBe(before);
    const file = join(dir, "restore.rules");
    writeFileSync(file, added);
    const run = await qnat("rules", "restore", file, "--router", router);
    expect(run.err).toBe("");
    expect(run.out).toBe("+ rule -A neutron-vpn-agen-PREROUTING -d 9.186.100.131/32 -j DNAT --to-destination 10.0.0.3\n");
    expect(await pingUntil(external, "9.186.100.131", WAIT_MS)).toBe(true);

    // All or nothing: a table with one bad line changes nothing.
    const broken = join(dir, "broken.rules");
    writeFileSync(broken, before.replace("COMMIT", "-A neutron-vpn-agen-snat -j NOSUCHTARGET\nCOMMIT"));
    const refused = await qnat("rules", "restore", broken, "--router", router);
    expect(refused.code).toBe(2);
    expect(refused.err).toMatch(new RegExp(`^${broken.replaceAll(".", "\\.")}:\\d+: .*\\n$`));
    expect((await rulesSave()).replace(/^#.*\n/gm, "")).toBe(added.replace(/^#.*\n/gm, ""));

    writeFileSync(file, before);
    const back = await qnat("rules", "restore", file, "--router", router);
    expect(back.out).toBe("- rule -A neutron-vpn-agen-PREROUTING -d 9.186.100.131/32 -j DNAT --to-destination 10.0.0.3\n");
    expect((await rulesSave()).replace(/^#.*\n/gm, "")).toBe(before.replace(/^#.*\n/gm, ""));
  });

  it("a broken config is refused with one FILE:LINE: line, exit 2, and nothing changes", async () => {
    const rulesBefore = await rulesSave();
    const addressesBefore = mirrorAddresses(QG);
    // A good floating IP and, further down, a rule with an unknown target: nothing of it applies.
    const text = edit(withFloatingIp(seedText, "9.186.100.132", "10.0.0.2"), LAST_SNAT_RULE, `${LAST_SNAT_RULE}\n  -A neutron-vpn-agen-snat -j NOSUCHTARGET`);
    const run = await apply(text);
    expect(run.code).toBe(2);
    expect(run.out).toBe("");
    const line = text.split("\n").findIndex((l) => l.includes("NOSUCHTARGET")) + 1;
    expect(run.err).toMatch(new RegExp(`^${dir.replaceAll(".", "\\.")}/router-\\d+\\.yaml:${line}: .*\\n$`));
    const badRoute = await apply(edit(seedText, `  - default via 9.186.100.1 dev ${QG}\n`, `  - default via 9.186.100.1 dev ${QG}\n  - 198.51.100.0/24 dev qr-nosuchport\n`));
    expect(badRoute.code).toBe(2);
    expect(badRoute.err).toMatch(/router-\d+\.yaml:\d+: route "198\.51\.100\.0\/24 dev qr-nosuchport"/);
    expect((await rulesSave()).replace(/^#.*\n/gm, "")).toBe(rulesBefore.replace(/^#.*\n/gm, ""));
    expect(mirrorAddresses(QG)).toEqual(addressesBefore);
  });

  it("SIGHUP applies the file the router was started with", async () => {
    const cmdline = readFileSync(`/proc/${lab!.pid!}/cmdline`, "utf8").split("\0").filter(Boolean);
    const file = cmdline[cmdline.length - 1]!;
    expect(file.endsWith(".yaml")).toBe(true);
    try {
      writeFileSync(file, withFloatingIp(seedText, "9.186.100.133", "10.0.0.3"));
      process.kill(lab!.pid!, "SIGHUP");
      const started = Date.now();
      while (!lab!.output!().includes(`+ address 9.186.100.133/32 on ${QG}`) && Date.now() - started < WAIT_MS) await sleep(50);
      expect(lab!.output!()).toContain(`+ address 9.186.100.133/32 on ${QG}`);
      expect(mirrorAddresses(QG)).toContain("9.186.100.133/32");
      expect(await pingUntil(external, "9.186.100.133", WAIT_MS)).toBe(true);
    } finally {
      writeFileSync(file, seedText);
      process.kill(lab!.pid!, "SIGHUP");
    }
    const again = Date.now();
    while (!lab!.output!().includes(`- address 9.186.100.133/32 on ${QG}`) && Date.now() - again < WAIT_MS) await sleep(50);
    expect(mirrorAddresses(QG)).not.toContain("9.186.100.133/32");
  });

  it("the router logged no kernel change that failed, and no internal error", () => {
    expect(lab!.output!()).not.toMatch(/qnat: apply: ip |internal error/);
  });

  it("a ping every 50 ms and a TCP stream through the router lose nothing across 50 floating IP apply cycles", async () => {
    const CYCLES = 50;
    // The TCP stream: 10.0.0.3 sends a counted pattern to 203.0.113.10:5001 until told to stop
    // (stdin closes); the receiver checks every byte and prints what it got.
    const receiver = spawnIn(external, [
      "-e",
      `const net=require("net");let n=0,bad=0;const s=net.createServer(c=>{c.on("data",d=>{for(const b of d){if(b!==n%251)bad++;n++}});c.on("end",()=>{console.log(JSON.stringify({n,bad}));s.close()})});s.listen(5001,"203.0.113.10",()=>console.log("listening"));setTimeout(()=>process.exit(3),75000)`,
    ]);
    await waitForLine(receiver, "listening");
    const sender = spawnIn(tenant, [
      "-e",
      `const net=require("net");let n=0,stop=false;const c=net.connect({host:"203.0.113.10",port:5001,localAddress:"10.0.0.3"},()=>{console.log("connected");const t=setInterval(()=>{if(stop){clearInterval(t);c.end(()=>{console.log(JSON.stringify({n}))});return}const b=Buffer.alloc(4096);for(let i=0;i<b.length;i++)b[i]=(n+i)%251;n+=b.length;c.write(b)},5)});process.stdin.on("end",()=>{stop=true});process.stdin.resume();setTimeout(()=>process.exit(3),75000)`,
    ]);
    await waitForLine(sender, "connected");
    const ping = spawn("ip", ["netns", "exec", tenant, "ping", "-n", "-i", "0.05", "-c", "100000", "-I", "10.0.0.3", "203.0.113.10"], { stdio: ["ignore", "pipe", "pipe"] });
    const pingOut = collect(ping);
    const pingExited = new Promise((done) => ping.once("exit", done));
    try {
      await waitForLine(ping, "icmp_seq=");
      const associated = withFloatingIp(seedText, "9.186.100.140", "10.0.0.2");
      for (let cycle = 0; cycle < CYCLES; cycle++) {
        const on = await apply(associated);
        const off = await apply(seedText);
        if (on.code !== 0 || off.code !== 0 || !on.out.includes("+ address 9.186.100.140/32") || !off.out.includes("- address 9.186.100.140/32")) {
          throw new Error(`cycle ${cycle}: ${on.out}${on.err}${off.out}${off.err}`);
        }
      }
      // Stop the ping right after a reply, so no request is in flight when it counts.
      const replies = pingOut.text().split("icmp_seq=").length;
      while (pingOut.text().split("icmp_seq=").length === replies) await sleep(5);
      ping.kill("SIGINT");
      sender.stdin!.end();
      const sent = JSON.parse(await waitForLine(sender, '{"n"')) as { n: number };
      const got = JSON.parse(await waitForLine(receiver, '{"n"')) as { n: number; bad: number };
      await pingExited;
      const summary = /(\d+) packets transmitted, (\d+) received/.exec(pingOut.text());
      expect(summary).not.toBeNull();
      const transmitted = Number(summary![1]);
      expect(transmitted).toBeGreaterThan(CYCLES);
      expect(Number(summary![2])).toBe(transmitted);
      expect(sent.n).toBeGreaterThan(0);
      expect(got).toEqual({ n: sent.n, bad: 0 });
    } finally {
      for (const child of [ping, sender, receiver]) if (child.exitCode === null) child.kill("SIGKILL");
    }
  }, 80_000);
});

/** `node ARGS` inside a namespace, its stdout collected. */
function spawnIn(netns: string, args: string[]): ChildProcess & { lines: () => string } {
  const child = spawn("ip", ["netns", "exec", netns, process.execPath, ...args], { stdio: ["pipe", "pipe", "pipe"] });
  const out = collect(child);
  return Object.assign(child, { lines: out.text });
}

function collect(child: ChildProcess): { text: () => string } {
  let text = "";
  child.stdout!.on("data", (chunk: Buffer) => (text += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (text += chunk.toString()));
  (child as ChildProcess & { collected?: () => string }).collected = () => text;
  return { text: () => text };
}

/** Resolves with the first output line of `child` containing `needle` (at most 20 s). */
async function waitForLine(child: ChildProcess, needle: string): Promise<string> {
  const text = (child as ChildProcess & { collected?: () => string }).collected ?? (() => "");
  const started = Date.now();
  while (Date.now() - started < 20_000) {
    const line = text()
      .split("\n")
      .find((l) => l.includes(needle));
    if (line !== undefined) return line;
    if (child.exitCode !== null) throw new Error(`process exited (${child.exitCode}) before printing ${needle}: ${text()}`);
    await sleep(20);
  }
  throw new Error(`no "${needle}" within 20 s: ${text()}`);
}
