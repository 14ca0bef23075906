/**
 * `qnat rules generate`: from Neutron's view of a router, the nat table its L3 agent installs.
 * The seed's router gives the article's `iptables -t nat -S` byte for byte; each release's layout
 * is pinned here line by line, and (as root) the kernel's own iptables, loaded with the generated
 * text in a scratch namespace, prints it back unchanged — so the text is iptables' canonical form.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runCli } from "../../src/cli/main.js";
import { parseNeutronDescription } from "../../src/control/neutron-description.js";
import { chainPrefixOf, generateNatRules, releaseLayout, RELEASES } from "../../src/control/neutron-rules.js";
import { natRestoreText, randomTag } from "../../src/control/twin.js";
import { deleteNetns, ensureNetns, isRoot, netnsExec } from "../../src/io/netns.js";

const EXAMPLES = resolve(import.meta.dirname, "../../examples");
const DESCRIPTION = join(EXAMPLES, "seed-router.neutron.yaml");
const SEED_RULES = readFileSync(join(EXAMPLES, "neutron-nat.rules"), "utf8");
const dir = mkdtempSync(join(tmpdir(), "qnat-generate-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await runCli(args, { out: (t) => (out += t), err: (t) => (err += t) });
  return { code, out, err };
}

function generate(text: string, release = "icehouse"): string {
  return generateNatRules(parseNeutronDescription(text, "router.yaml"), releaseLayout(release)!);
}

/** The seed's description with `from` replaced by `to` (which must be there once). */
function seedWith(from: string, to: string): string {
  const text = readFileSync(DESCRIPTION, "utf8");
  expect(text.split(from).length, `"${from}" once in the description`).toBe(2);
  return text.replace(from, to);
}

/** The policies, chains and jumps every layout shares: the seed's first 14 lines. */
const HEAD = SEED_RULES.trimEnd().split("\n").slice(0, 14);

/** Each release's table for the seed's router, as iptables -t nat -S prints it. */
const EXPECTED: Record<string, string[]> = {
  icehouse: SEED_RULES.trimEnd().split("\n"),
  kilo: [
    ...HEAD,
    '-A neutron-postrouting-bottom -m comment --comment "Perform source NAT on outgoing traffic." -j neutron-vpn-agen-snat',
    "-A neutron-vpn-agen-OUTPUT -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2",
    "-A neutron-vpn-agen-POSTROUTING ! -i qg-e76de35e-90 ! -o qg-e76de35e-90 -m conntrack ! --ctstate DNAT -j ACCEPT",
    "-A neutron-vpn-agen-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697",
    "-A neutron-vpn-agen-PREROUTING -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2",
    "-A neutron-vpn-agen-float-snat -s 10.0.0.2/32 -j SNAT --to-source 9.186.100.129",
    "-A neutron-vpn-agen-snat -j neutron-vpn-agen-float-snat",
    "-A neutron-vpn-agen-snat -o qg-e76de35e-90 -j SNAT --to-source 9.186.100.2",
    "-A neutron-vpn-agen-snat -m mark ! --mark 0x2 -m conntrack --ctstate DNAT -j SNAT --to-source 9.186.100.2",
  ],
  liberty: [
    ...HEAD,
    '-A neutron-postrouting-bottom -m comment --comment "Perform source NAT on outgoing traffic." -j neutron-vpn-agen-snat',
    "-A neutron-vpn-agen-OUTPUT -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2",
    "-A neutron-vpn-agen-POSTROUTING ! -i qg-e76de35e-90 ! -o qg-e76de35e-90 -m conntrack ! --ctstate DNAT -j ACCEPT",
    "-A neutron-vpn-agen-PREROUTING -d 169.254.169.254/32 -i qr-+ -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697",
    "-A neutron-vpn-agen-PREROUTING -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2",
    "-A neutron-vpn-agen-float-snat -s 10.0.0.2/32 -j SNAT --to-source 9.186.100.129",
    "-A neutron-vpn-agen-snat -j neutron-vpn-agen-float-snat",
    "-A neutron-vpn-agen-snat -o qg-e76de35e-90 -j SNAT --to-source 9.186.100.2",
    "-A neutron-vpn-agen-snat -m mark ! --mark 0x2/0xffff -m conntrack --ctstate DNAT -j SNAT --to-source 9.186.100.2",
  ],
};

describe("qnat rules generate: the seed's router", () => {
  it("prints the article's iptables -t nat -S byte for byte (examples/neutron-nat.rules)", async () => {
    expect(await cli(["rules", "generate", DESCRIPTION])).toEqual({ code: 0, out: SEED_RULES, err: "" });
  });

  it("prints what qnat rules check accepts, the 12 rules qnat runs", async () => {
    const file = join(dir, "generated.rules");
    writeFileSync(file, (await cli(["rules", "generate", DESCRIPTION])).out);
    expect(await cli(["rules", "check", file])).toEqual({ code: 0, out: `${file}: 12 rules, OK\n`, err: "" });
  });

  for (const release of RELEASES) {
    it(`in ${release.name}'s layout (${release.covers}) prints its table line by line`, async () => {
      const run = await cli(["rules", "generate", DESCRIPTION, "--release", release.name]);
      expect(run.code).toBe(0);
      expect(run.out.trimEnd().split("\n")).toEqual(EXPECTED[release.name]);
    });
  }

  it("knows Havana and Juno as Icehouse's layout, and refuses a release it does not know (exit 2)", async () => {
    expect((await cli(["rules", "generate", DESCRIPTION, "--release", "Juno"])).out).toBe(SEED_RULES);
    expect((await cli(["rules", "generate", DESCRIPTION, "--release", "havana"])).out).toBe(SEED_RULES);
    const unknown = await cli(["rules", "generate", DESCRIPTION, "--release", "diablo"]);
    expect(unknown.code).toBe(2);
    expect(unknown.err.split("\n")[0]).toBe('qnat: unknown release "diablo" (expected one of icehouse, kilo, liberty)');
  });

  it("says why Kilo's and later tables cannot run on qnat: their hairpin SNAT matches the mangle table's mark", async () => {
    for (const release of ["kilo", "liberty"]) {
      const file = join(dir, `${release}.rules`);
      writeFileSync(file, (await cli(["rules", "generate", DESCRIPTION, "--release", release])).out);
      expect(await cli(["rules", "check", file])).toEqual({ code: 2, out: "", err: `${file}:23: unsupported match "-m mark"\n` });
    }
  });
});

describe("qnat rules generate: other routers", () => {
  it("cuts the agent's binary name to 16 characters for the chain prefix, as iptables_manager does", () => {
    expect(chainPrefixOf("neutron-vpn-agent")).toBe("neutron-vpn-agen");
    expect(chainPrefixOf("/usr/bin/neutron-l3-agent")).toBe("neutron-l3-agent");
    expect(chainPrefixOf("my agent")).toBe("my_agent");
    const rules = generate(seedWith("agent: neutron-vpn-agent", "agent: /usr/bin/neutron-l3-agent"));
    expect(rules).toContain("-A neutron-l3-agent-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2\n");
    for (const line of rules.split("\n").filter((l) => l.startsWith("-N "))) expect(line.length - 3).toBeLessThanOrEqual(28);
  });

  it("SNATs every tenant subnet in Icehouse's layout and once by the gateway device in later ones", () => {
    const text = seedWith(
      "    addresses: [10.0.0.1/24]      # the subnet's gateway IP with the subnet's prefix length",
      "    addresses: [10.0.0.1/24]\n  - name: qr-11111111-22\n    addresses: [10.0.1.1/25, 10.0.2.1/24]",
    );
    const icehouse = generate(text).split("\n").filter((l) => l.includes("-j SNAT --to-source 9.186.100.2"));
    expect(icehouse).toEqual([
      "-A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2",
      "-A neutron-vpn-agen-snat -s 10.0.1.0/25 -j SNAT --to-source 9.186.100.2",
    ]);
    const liberty = generate(text, "liberty").split("\n").filter((l) => l.includes("-j SNAT --to-source 9.186.100.2"));
    expect(liberty).toEqual([
      "-A neutron-vpn-agen-snat -o qg-e76de35e-90 -j SNAT --to-source 9.186.100.2",
      "-A neutron-vpn-agen-snat -m mark ! --mark 0x2/0xffff -m conntrack --ctstate DNAT -j SNAT --to-source 9.186.100.2",
    ]);
  });

  it("adds each floating IP's three rules in the order Neutron lists them", () => {
    const rules = generate(seedWith("  - { fixed: 10.0.0.2, floating: 9.186.100.129 }", "  - { fixed: 10.0.0.2, floating: 9.186.100.129 }\n  - { fixed: 10.0.0.3, floating: 9.186.100.130 }"));
    expect(rules.split("\n").filter((l) => l.includes("9.186.100.130"))).toEqual([
      "-A neutron-vpn-agen-OUTPUT -d 9.186.100.130/32 -j DNAT --to-destination 10.0.0.3",
      "-A neutron-vpn-agen-PREROUTING -d 9.186.100.130/32 -j DNAT --to-destination 10.0.0.3",
      "-A neutron-vpn-agen-float-snat -s 10.0.0.3/32 -j SNAT --to-source 9.186.100.130",
    ]);
    expect(rules.indexOf("-d 9.186.100.129/32 -j DNAT")).toBeLessThan(rules.indexOf("-d 9.186.100.130/32 -j DNAT"));
  });

  it("leaves out the gateway's SNAT with enable_snat false, and the REDIRECT without a metadata proxy", () => {
    const noSnat = generate(seedWith("enable_snat: true", "enable_snat: false"));
    expect(noSnat).not.toContain("--to-source 9.186.100.2\n");
    expect(noSnat).not.toContain("-j ACCEPT");
    expect(noSnat).toContain("-A neutron-vpn-agen-float-snat -s 10.0.0.2/32 -j SNAT --to-source 9.186.100.129\n");
    const noMetadata = generate(seedWith("enabled: true ", "enabled: false"));
    expect(noMetadata).not.toContain("REDIRECT");
    expect(generate(seedWith("port: 9697 ", "port: 8775 "))).toContain("-j REDIRECT --to-ports 8775\n");
  });

  it("turns a description mistake into one FILE:LINE: line, exit 2", async () => {
    const cases: Array<[string, string, string]> = [
      ["addresses: [9.186.100.2/24]", "addresses: [9.186.100.2]", 'gateway address "9.186.100.2" must be A.B.C.D/N (the fixed IP with its subnet\'s prefix length)'],
      ["name: qg-e76de35e-90", "name: eth1", 'gateway name "eth1" must start with "qg-", as the L3 agent names its devices'],
      ["{ fixed: 10.0.0.2,", "{ fixed: 10.9.0.2,", "fixed IP 10.9.0.2 is on none of the router's interfaces' subnets (10.0.0.1/24)"],
      ["port: 9697 ", "port: 99999", "metadata.port must be a TCP port number (1-65535)"],
      ["enable_snat: true ", "enable_snat: maybe", "router.enable_snat must be true or false"],
      ["floating_ips:", "floating_ip:", 'unknown key "floating_ip" in the description (expected one of agent, router, gateway, interfaces, floating_ips, metadata)'],
    ];
    for (const [from, to, message] of cases) {
      const text = seedWith(from, to);
      const file = join(dir, "bad.yaml");
      writeFileSync(file, text);
      const line = text.split("\n").findIndex((l) => l.includes(to)) + 1;
      expect(await cli(["rules", "generate", file])).toEqual({ code: 2, out: "", err: `${file}:${line}: ${message}\n` });
    }
    const missing = await cli(["rules", "generate", join(dir, "nothing.yaml")]);
    expect(missing).toEqual({ code: 2, out: "", err: `${join(dir, "nothing.yaml")}:0: cannot read description (ENOENT)\n` });
  });
});

describe.skipIf(!isRoot())("qnat rules generate against the kernel's iptables (root)", () => {
  if (!isRoot()) console.warn("test/control/neutron-rules.test.ts: not root, so the kernel's iptables comparison is skipped");

  it("prints, for every release, exactly what iptables -t nat -S prints after loading it", async () => {
    const namespace = `qnt-${randomTag("gen")}`;
    ensureNetns(namespace);
    try {
      for (const release of RELEASES) {
        const text = (await cli(["rules", "generate", DESCRIPTION, "--release", release.name])).out;
        execFileSync("ip", ["netns", "exec", namespace, "iptables-restore"], { input: natRestoreText(text) });
        expect(netnsExec(namespace, "iptables", ["-t", "nat", "-S"]), release.name).toBe(text);
      }
    } finally {
      deleteNetns(namespace);
    }
  });
});
