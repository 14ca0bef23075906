/**
 * The parts of the conformance harness that need no root: the kernel twin's config renaming and
 * iptables-restore text, and the reading of `conntrack -L` lines.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { natRestoreText, retagConfigText } from "../../src/control/twin.js";
import { compareObservations, conntrackText, finRetransmitted, parseConntrackText, ROOT, sideBySide, type CtEntry, type Observation, type Plan } from "./harness.js";

const SEED = join(ROOT, "examples/seed.yaml");
const seedText = readFileSync(SEED, "utf8");

describe("the kernel twin's config", () => {
  it("renames every namespace of the seed X -> X-<tag>, the router's too, and nothing else", () => {
    const config = parseConfig(retagConfigText(seedText, SEED, "k1a2b3c"), SEED);
    expect(config.namespace).toBe("qrouter-40fff075-d3a2-477b-942c-6b1adb42e35e-k1a2b3c");
    expect(config.ports.map((p) => [p.name, p.wire.namespace, p.wire.device])).toEqual([
      ["qr-694450d6-f6", "qnat-tenant-k1a2b3c", "eth0"],
      ["qg-e76de35e-90", "qnat-external-k1a2b3c", "eth0"],
    ]);
    expect(config.lab.map((h) => h.namespace)).toEqual(["qnat-tenant-k1a2b3c", "qnat-external-k1a2b3c"]);
    expect(config.nat.text).toBe(parseConfig(seedText, SEED).nat.text);
  });

  it("wraps the seed's -S rules for iptables-restore: chains as iptables-save declares them, rules verbatim", () => {
    const text = natRestoreText(parseConfig(seedText, SEED).nat.text).split("\n");
    expect(text[0]).toBe("*nat");
    expect(text).toContain(":PREROUTING ACCEPT [0:0]");
    expect(text).toContain(":neutron-vpn-agen-float-snat - [0:0]");
    expect(text).toContain("-A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2");
    expect(text.filter((line) => line.startsWith("-A"))).toHaveLength(12);
    expect(text.at(-2)).toBe("COMMIT");
  });

  it("passes iptables-save text as it is", () => {
    const save = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2\nCOMMIT";
    expect(natRestoreText(save)).toBe(save + "\n");
  });
});

describe("reading conntrack -L", () => {
  it("reads a TCP entry with a REDIRECT and an ICMP entry with SNAT", () => {
    const entries = parseConntrackText(
      "tcp      6 119 TIME_WAIT src=10.0.0.2 dst=169.254.169.254 sport=54878 dport=80 src=10.0.0.1 dst=10.0.0.2 sport=9697 dport=54878 [ASSURED] mark=0 use=1\n" +
        "icmp     1 29 src=10.0.0.3 dst=203.0.113.10 type=8 code=0 id=2215 [UNREPLIED] src=203.0.113.10 dst=9.186.100.2 type=0 code=0 id=2215 mark=0 use=1\n",
    );
    expect(entries.map((e) => conntrackText(e, new Set([54878, 80, 2215])))).toEqual([
      "tcp TIME_WAIT 10.0.0.2:54878 > 169.254.169.254:80 | 10.0.0.1:~ > 10.0.0.2:54878 [ASSURED]",
      "icmp 10.0.0.3 > 203.0.113.10 type 8/0 id 2215 | 203.0.113.10 > 9.186.100.2 type 0/0 id 2215 [UNREPLIED]",
    ]);
  });

  it("prints two sides side by side, marking the lines that differ", () => {
    const text = sideBySide("conntrack", ["a", "b"], ["a", "c"]);
    expect(text.split("\n").slice(2)).toEqual(["  a              | a", "! b              ! ", "!                ! c"]);
  });
});

describe("teardown timing", () => {
  // A server on 192.168.20.11:7002 closes after the client (LAST_ACK). Both routers show the same
  // packets, but on one side the server's FIN also arrived twice (retransmitted) and the second
  // ACK met a closed socket: a RST, and the entry in CLOSE instead of TIME_WAIT.
  const entry = (state: string): CtEntry => ({
    protocol: "tcp",
    state,
    original: { src: "192.168.10.12", dst: "172.16.50.22", sport: 42131, dport: 7002 },
    reply: { src: "192.168.20.11", dst: "192.168.20.1", sport: 7002, dport: 42131 },
    unreplied: false,
    assured: true,
    timeout: 10,
  });
  const packet = (flags: string, tcpseq: number) => ({ src: "172.16.50.22", dst: "192.168.10.12", proto: 6, ttl: 63, len: 52, df: true, sport: 7002, dport: 42131, flags, tcpseq });
  const observation = (packets: Array<Record<string, unknown>>, state: string): Observation => ({
    agents: { "tenant-a": { events: [], packets } },
    clients: [],
    actions: [],
    conntrack: [entry(state)],
  });
  const plan: Plan = { name: "hairpin", steps: [], knownPorts: [42131, 7002] };
  const clean = observation([packet("SA", 100), packet("PA", 101), packet("FA", 120)], "TIME_WAIT");

  it("finds a FIN that crossed twice with the same sequence number, and only that", () => {
    expect(finRetransmitted(clean)).toBe(false);
    expect(finRetransmitted(observation([packet("FA", 120), packet("A", 121), packet("A", 121)], "TIME_WAIT"))).toBe(false);
    expect(finRetransmitted(observation([packet("FA", 120), packet("FA", 120)], "CLOSE"))).toBe(true);
  });

  it("compares RSTs and TIME_WAIT/CLOSE as timing only after a retransmitted FIN, and says so", () => {
    const late = observation([packet("SA", 100), packet("PA", 101), packet("FA", 120), packet("FA", 120), packet("R", 121)], "CLOSE");
    const allowed = compareObservations(plan, clean, late, 1);
    expect(allowed.agree).toBe(true);
    expect(allowed.notes).toEqual([expect.stringContaining("retransmitted on the qnat side")]);
    // The same RST and CLOSE without the retransmission is a real difference.
    const unexplained = observation([packet("SA", 100), packet("PA", 101), packet("FA", 120), packet("R", 121)], "CLOSE");
    const differs = compareObservations(plan, clean, unexplained, 1);
    expect(differs.agree).toBe(false);
    expect(differs.sections.filter((s) => !s.equal).map((s) => s.section)).toEqual(["wire into tenant-a", "conntrack"]);
    expect(differs.notes).toEqual([]);
    // A differing scenario carries both sides' packets in arrival order, sequence numbers shown.
    expect(differs.timelines?.qnat.map((line) => line.replace(/^ *[\d.]+ ms {2}/, ""))).toEqual([
      "into tenant-a: 172.16.50.22 > 192.168.10.12 p6 ttl 63 len 52 DF 7002 > 42131 [SA] seq 100",
      "into tenant-a: 172.16.50.22 > 192.168.10.12 p6 ttl 63 len 52 DF 7002 > 42131 [PA] seq 101",
      "into tenant-a: 172.16.50.22 > 192.168.10.12 p6 ttl 63 len 52 DF 7002 > 42131 [FA] seq 120",
      "into tenant-a: 172.16.50.22 > 192.168.10.12 p6 ttl 63 len 52 DF 7002 > 42131 [R] seq 121",
    ]);
    // The allowance shows its evidence: the FIN twice in the qnat side's timeline.
    expect(allowed.timelines?.qnat.filter((line) => line.includes("[FA] seq 120"))).toHaveLength(2);
    expect(compareObservations(plan, clean, clean, 1).timelines).toBeUndefined();
  });
});
