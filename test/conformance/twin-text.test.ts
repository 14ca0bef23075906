/**
 * The parts of the conformance harness that need no root: the kernel twin's config renaming and
 * iptables-restore text, and the reading of `conntrack -L` lines.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { natRestoreText, retagConfigText } from "../../src/control/twin.js";
import { conntrackText, parseConntrackText, ROOT, sideBySide } from "./harness.js";

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
