/**
 * The parts of the lab and the CLI that need no root: which addresses get policy routing for
 * OUTPUT DNAT, the metadata proxy's floating IPs, and the CLI's one-line errors and exit codes.
 */
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { formatCidr } from "../../src/core/addr.js";
import { loadConfig, parseConfig } from "../../src/config/config.js";
import { floatingIpsOf, namespacesOf, outputDnatLocalAddresses, parseConfigRules } from "../../src/control/host-setup.js";
import { runCli } from "../../src/cli/main.js";

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const RULES = resolve(import.meta.dirname, "../../examples/neutron-nat.rules");

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await runCli(args, { out: (t) => (out += t), err: (t) => (err += t) });
  return { code, out, err };
}

describe("the seed router's host plan", () => {
  const config = loadConfig(SEED);
  const rules = parseConfigRules(config);

  it("routes the router's own packets for the floating IP 9.186.100.129 through a mirror (OUTPUT DNAT)", () => {
    expect(outputDnatLocalAddresses(config, rules).map(formatCidr)).toEqual(["9.186.100.129/32"]);
  });

  it("tells the metadata proxy that 10.0.0.2's public address is 9.186.100.129", () => {
    expect([...floatingIpsOf(rules)]).toEqual([["10.0.0.2", "9.186.100.129"]]);
  });

  it("names the router namespace and the two wire namespaces", () => {
    expect(namespacesOf(config)).toEqual(["qrouter-40fff075-d3a2-477b-942c-6b1adb42e35e", "qnat-tenant", "qnat-external"]);
  });

  it("puts no policy routing in place when OUTPUT DNATs nothing local", () => {
    const text = `router: { id: r1 }
ports:
  - { name: p0, addresses: [10.1.0.1/24], wire: { namespace: qnt-a, device: eth0 } }
nat: |
  -A OUTPUT -d 192.0.2.7/32 -j DNAT --to-destination 10.1.0.9
`;
    const other = parseConfig(text, "other.yaml");
    expect(outputDnatLocalAddresses(other, parseConfigRules(other))).toEqual([]);
  });
});

describe("qnat's command line without root", () => {
  it("checks the seed's rules file", async () => {
    expect(await cli(["rules", "check", RULES])).toEqual({ code: 0, out: `${RULES}: 12 rules, OK\n`, err: "" });
  });

  it("reports an unknown command and option as usage errors (exit 2)", async () => {
    const unknown = await cli(["frobnicate"]);
    expect(unknown.code).toBe(2);
    expect(unknown.err.split("\n")[0]).toBe('qnat: unknown command "frobnicate"');
    expect((await cli(["show", "ports", "--bogus"])).code).toBe(2);
    expect((await cli(["lab", "sideways"])).code).toBe(2);
  });

  it("prints usage with help", async () => {
    const help = await cli(["help"]);
    expect(help.code).toBe(0);
    expect(help.out).toContain("qnat lab up [CONFIG]");
  });

  it("reports a missing config as FILE:LINE, exit 2", async () => {
    const missing = await cli(["trace", "--config", "/nonexistent/qnat.yaml", "qr-694450d6-f6 icmp 10.0.0.3 > 8.8.8.8"]);
    expect(missing.code).toBe(2);
    expect(missing.err).toBe("/nonexistent/qnat.yaml:0: cannot read config (ENOENT)\n");
  });
});

describe("the qnat command in a pipeline", () => {
  it("ends quietly with exit 0 when its reader has gone (qnat trace ... | true), as SIGPIPE ends a C tool", async () => {
    const { spawnSync } = await import("node:child_process");
    const main = resolve(import.meta.dirname, "../../dist/src/cli/main.js");
    const trace = `'${process.execPath}' '${main}' trace --config '${SEED}' 'qr-694450d6-f6 tcp 10.0.0.3:40000 > 9.186.100.1:80 syn'`;
    // `true` exits before node has started, so the first write meets a closed pipe (EPIPE).
    const result = spawnSync("sh", ["-c", `{ ${trace}; echo "qnat exit $?" >&2; } | true`], { encoding: "utf8", timeout: 20_000 });
    expect(result.stderr).not.toMatch(/EPIPE|at .*\.js:\d+/);
    expect(result.stderr.trim()).toBe("qnat exit 0");
  });
});
