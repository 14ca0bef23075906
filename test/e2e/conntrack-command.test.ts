/**
 * `qnat conntrack` against a running router in real namespaces (root only; the seed's router under
 * fresh names qnt-<tag>-*, linked to nothing, removed afterwards even on failure), Neutron's
 * floating-IP disassociation as its L3 agent does it: connections through SNAT and to the
 * floating IP 9.186.100.129, `-L -d FIP` lists exactly the ones to it, `-D -q FIP` and
 * `-D -d FIP` delete them with the tool's count on stderr, `-L` lists none of them afterwards,
 * `-F` empties the table. The lines and the summary are compared with the real `conntrack -L` of
 * a kernel twin that saw the same ping. Every ping and datagram is one packet, bounded in time.
 */
import { spawnSync } from "node:child_process";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRoot as runningAsRoot, netnsExec } from "../../src/io/netns.js";
import { pingUntil } from "../../src/control/lab.js";
import { buildKernelTwin, type KernelTwin } from "../../src/control/twin.js";
import { packageRoot, retagForRun, runTag, startQnatLab, type Lab } from "../../bench/e2e-lab.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/conntrack-command.test.ts: not root, so qnat conntrack against a live router is skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const FIP = "9.186.100.129";
const WAIT_MS = 10_000;

interface Run {
  readonly code: number | null;
  readonly out: string;
  readonly err: string;
}

/** The built `qnat conntrack WORDS` as a user runs it. */
function qnatConntrack(router: string, words: string[]): Run {
  const main = join(packageRoot(), "dist", "src", "cli", "main.js");
  const result = spawnSync(process.execPath, [main, "conntrack", ...words, "--router", router], { encoding: "utf8", timeout: 20_000 });
  return { code: result.status, out: result.stdout, err: result.stderr };
}

function lines(text: string): string[] {
  return text.split("\n").filter((line) => line !== "");
}

/** The original tuple's destination of a `conntrack -L` line. */
function origDst(line: string): string {
  return /dst=(\S+)/.exec(line)![1]!;
}

/** One UDP datagram from `netns` to ADDR:PORT (bash's /dev/udp: no tool needed). */
function sendDatagram(netns: string, address: string, port: number): void {
  netnsExec(netns, "bash", ["-c", `echo qnat > /dev/udp/${address}/${port}`], { timeoutMs: 5000 });
}

/** A line with what differs between two runs made the same (timeout, ICMP id) blanked. */
function normalised(line: string): string {
  return line.replace(/^(\S+\s+\d+) \d+ /, "$1 T ").replace(/id=\d+/g, "id=N");
}

describe.skipIf(!isRoot)("qnat conntrack against the live router: Neutron's floating IP disassociation", () => {
  let lab: Lab | undefined;
  let twin: KernelTwin | undefined;
  const { text, config } = retagForRun(SEED, runTag());
  const router = config.namespace;
  const tenant = config.ports[0]!.wire.namespace;
  const external = config.ports[1]!.wire.namespace;

  beforeAll(async () => {
    lab = await startQnatLab(text, config);
  });
  afterAll(async () => {
    try {
      await lab?.stop();
    } finally {
      twin?.destroy();
    }
  });

  it("connections through SNAT and to the floating IP: -L -d 9.186.100.129 lists exactly the ones to it", async () => {
    expect(await pingUntil(tenant, "203.0.113.10", WAIT_MS, "10.0.0.3")).toBe(true); // SNAT to 9.186.100.2
    sendDatagram(tenant, "203.0.113.10", 5353); // from 10.0.0.2: SNAT to the floating IP
    expect(await pingUntil(external, FIP, WAIT_MS)).toBe(true); // DNAT to 10.0.0.2
    sendDatagram(external, FIP, 5353);

    const all = qnatConntrack(router, ["-L"]);
    expect(all.code).toBe(0);
    const toFip = lines(all.out).filter((line) => origDst(line) === FIP);
    expect(toFip.some((line) => line.startsWith("icmp ") && line.includes(`dst=${FIP} type=8`) && line.includes("src=10.0.0.2 dst=9.186.100.1 type=0"))).toBe(true);
    expect(toFip.some((line) => line.startsWith("udp ") && line.includes(`dst=${FIP} sport=`) && line.includes("dport=5353 [UNREPLIED] src=10.0.0.2 "))).toBe(true);

    const listed = qnatConntrack(router, ["-L", "-d", FIP]);
    expect(listed.code).toBe(0);
    expect(lines(listed.out).sort()).toEqual(toFip.sort());
    expect(listed.err).toBe(`conntrack v1.4.7 (conntrack-tools): ${toFip.length} flow entries have been shown.\n`);
  });

  it("-D -q 9.186.100.129 deletes 10.0.0.2's connections that leave as the floating IP, -D -d the ones to it; -L lists none of them afterwards", () => {
    const byReply = qnatConntrack(router, ["-D", "-q", FIP]);
    expect(byReply.code).toBe(0);
    const deletedByReply = lines(byReply.out);
    expect(deletedByReply.some((line) => line.startsWith("udp ") && line.includes("src=10.0.0.2 dst=203.0.113.10 ") && line.includes(`dst=${FIP} sport=5353`))).toBe(true);
    expect(byReply.err).toBe(`conntrack v1.4.7 (conntrack-tools): ${deletedByReply.length} flow entries have been deleted.\n`);

    const byOrig = qnatConntrack(router, ["-D", "-d", FIP]);
    expect(byOrig.code).toBe(0);
    expect(lines(byOrig.out).length).toBeGreaterThanOrEqual(2);
    expect(byOrig.err).toBe(`conntrack v1.4.7 (conntrack-tools): ${lines(byOrig.out).length} flow entries have been deleted.\n`);

    const after = qnatConntrack(router, ["-L"]);
    expect(after.out).not.toContain(FIP);
    // 10.0.0.3's ping through SNAT is untouched.
    expect(lines(after.out).some((line) => line.includes("src=10.0.0.3 dst=203.0.113.10 type=8"))).toBe(true);
    // Nothing left to delete: the tool's exit 1.
    expect(qnatConntrack(router, ["-D", "-q", FIP])).toEqual({ code: 1, out: "", err: "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n" });
  });

  it("the floating IP's next packet is a new connection, NATed again", async () => {
    expect(await pingUntil(external, FIP, WAIT_MS)).toBe(true);
    const listed = lines(qnatConntrack(router, ["-L", "-d", FIP, "-p", "icmp"]).out);
    // One entry per answered ping (pingUntil repeats only when one is lost).
    expect(listed.length).toBeGreaterThanOrEqual(1);
    for (const line of listed) expect(line).toMatch(new RegExp(`^icmp {5}1 \\d+ src=9\\.186\\.100\\.1 dst=${FIP.replace(/\./g, "\\.")} type=8 code=0 id=\\d+ src=10\\.0\\.0\\.2 dst=9\\.186\\.100\\.1 type=0 code=0 id=\\d+ mark=0 use=1$`));
  });

  it("a mistake is one line and exit 2, with the tool's words", () => {
    expect(qnatConntrack(router, ["-L", "-p", "bogus"])).toEqual({ code: 2, out: "", err: "qnat conntrack: `bogus' unsupported protocol\n" });
    expect(qnatConntrack(router, ["-L", "-s", "9.186.100"])).toEqual({ code: 2, out: "", err: "qnat conntrack: Invalid IP address `9.186.100'\n" });
  });

  it("the lines and the summary are the kernel's: 10.0.0.3's ping as the twin's conntrack -L shows it", async () => {
    const ours = qnatConntrack(router, ["-L", "-p", "icmp", "-s", "10.0.0.3"]);
    twin = await buildKernelTwin(retagForRun(SEED, runTag()).config);
    const twinTenant = twin.config.ports[0]!.wire.namespace;
    expect(await pingUntil(twinTenant, "203.0.113.10", WAIT_MS, "10.0.0.3")).toBe(true);
    const kernel = spawnSync("ip", ["netns", "exec", twin.config.namespace, "conntrack", "-L", "-p", "icmp", "-s", "10.0.0.3"], { encoding: "utf8", timeout: 10_000 });
    expect(kernel.status).toBe(0);
    expect(lines(ours.out).map(normalised)).toEqual(lines(kernel.stdout).map(normalised));
    expect(lines(ours.out)).toHaveLength(1);
    expect(ours.err).toBe(kernel.stderr);
  });

  it("-F empties the table", () => {
    expect(qnatConntrack(router, ["-F"])).toEqual({ code: 0, out: "", err: "conntrack v1.4.7 (conntrack-tools): connection tracking table has been emptied.\n" });
    expect(qnatConntrack(router, ["-L"])).toEqual({ code: 0, out: "", err: "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n" });
  });
});
