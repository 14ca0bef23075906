/**
 * The kernel-selftest scenarios' own pieces, without namespaces: where the rules a case needs go,
 * which addresses stand for "beyond the outside host", which configs get which scenarios, and
 * that an invariant one router states and the other does not fails the comparison.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseConfig, type RouterConfig } from "../../src/config/config.js";
import { compareObservations, type Observation, type Plan } from "./harness.js";
import { ROOT } from "./harness.js";
import { insertRules, isSmallTable, kernelSelftestPlans, unusedAddresses } from "./kernel-selftests.js";

function config(name: string): RouterConfig {
  const path = join(ROOT, "examples", name);
  return parseConfig(readFileSync(path, "utf8"), path);
}

describe("the rules a kernel selftest case adds", () => {
  it("go first in their chain, before the config's own rules, in -S text", () => {
    const nat = ["-P POSTROUTING ACCEPT", "-N snat", "-A POSTROUTING -j snat", "-A snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2"].join("\n");
    const out = insertRules(nat, "POSTROUTING", ["-o qg -j MASQUERADE --random-fully"]).split("\n");
    expect(out).toEqual(["-P POSTROUTING ACCEPT", "-N snat", "-A POSTROUTING -o qg -j MASQUERADE --random-fully", "-A POSTROUTING -j snat", "-A snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2"]);
  });

  it("go before COMMIT in iptables-save text whose chain has no rule yet", () => {
    const nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]", "-A POSTROUTING -j MASQUERADE", "COMMIT"].join("\n");
    const out = insertRules(nat, "PREROUTING", ["-d 198.51.100.201/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080"]).split("\n");
    expect(out.indexOf("-A PREROUTING -d 198.51.100.201/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080")).toBe(out.indexOf("COMMIT") - 1);
  });
});

describe("addresses beyond the outside host", () => {
  it("are in no subnet, loopback or route of the config", () => {
    const seed = config("seed.yaml");
    const far = unusedAddresses(seed, 3);
    expect(new Set(far).size).toBe(3);
    // the seed's outside host has 203.0.113.10/32 on its loopback: never handed out
    expect(far).not.toContain("203.0.113.10");
    for (const address of far) expect(address.startsWith("10.0.0.") || address.startsWith("9.186.100.")).toBe(false);
  });

  it("skip a documentation range the config uses", () => {
    const text = readFileSync(join(ROOT, "examples/seed.yaml"), "utf8").replace("loopback: [203.0.113.10/32]", "loopback: [198.51.100.0/24]");
    const far = unusedAddresses(parseConfig(text, "seed.yaml"), 2);
    for (const address of far) expect(address.startsWith("198.51.100.")).toBe(false);
  });
});

describe("which configs run which kernel selftest", () => {
  it("the seed's router runs every case but the table limit, each named after its kernel test", () => {
    const names = kernelSelftestPlans(config("seed.yaml")).map((p) => p.name);
    expect(names).toHaveLength(8);
    for (const test of ["nft_nat.sh port shadowing", "UDP DNAT clash", "nf_nat_edemux.sh REDIRECT clash", "nf_nat_edemux.sh OUTPUT DNAT clash", "conntrack_icmp_related.sh", "conntrack_tcp_unreplied.sh", "fully-random"]) {
      expect(names.some((n) => n.includes(test))).toBe(true);
    }
    expect(names.some((n) => n.includes("conntrack_resize.sh"))).toBe(false);
  });

  it("a config with conntrack.max 64 runs the table limit alone, with a flood twice the table", () => {
    const small = config("small-table.yaml");
    expect(isSmallTable(small)).toBe(true);
    const plans = kernelSelftestPlans(small);
    expect(plans.map((p) => p.name)).toEqual([expect.stringContaining("conntrack_resize.sh table limit: 128 new UDP connections through a table of 64")]);
  });

  it("every rule a case adds is one qnat accepts (the config with it parses and compiles)", async () => {
    const { parseConfigRules } = await import("../../src/control/host-setup.js");
    for (const name of ["seed.yaml", "two-subnets.yaml"]) {
      const c = config(name);
      for (const plan of kernelSelftestPlans(c)) {
        for (const step of plan.steps) {
          for (const change of step) {
            if (!("nat" in change)) continue;
            expect(() => parseConfigRules({ ...c, nat: { ...c.nat, text: change.nat } }), plan.name).not.toThrow();
          }
        }
      }
    }
  });
});

describe("invariants are compared", () => {
  const plan: Plan = { name: "table limit", steps: [], knownPorts: [] };
  const observed = (invariants: string[]): Observation => ({ agents: {}, clients: [], conntrack: [], invariants });

  it("the same facts on both routers agree", () => {
    const facts = ["the count is within the table's limit", "the listing names no connection twice"];
    expect(compareObservations(plan, observed(facts), observed(facts), 0).agree).toBe(true);
  });

  it("a connection listed twice by qnat alone fails the scenario", () => {
    const result = compareObservations(plan, observed(["the listing names no connection twice"]), observed(["the listing names 1 connections twice"]), 0);
    expect(result.agree).toBe(false);
    expect(result.sections.find((s) => s.section === "invariants")?.equal).toBe(false);
  });
});
