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
import { parseCidr } from "../../src/core/addr.js";
import { occupiedPrefixes } from "./addresses.js";
import { beyondAddress, insertRules, isSmallTable, kernelSelftestPlans } from "./kernel-selftests.js";
import { topologyOf } from "./scenarios.js";

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
  it("are in the /24 that overlaps nothing of the config, and are none of its addresses", () => {
    for (const name of ["seed.yaml", "two-subnets.yaml", "three-tenants.yaml"]) {
      const c = config(name);
      const t = topologyOf(c);
      const net = parseCidr(t.room.beyondNet)!;
      for (const address of [beyondAddress(t, 200), beyondAddress(t, 201)]) {
        const a = parseCidr(`${address}/32`)!.addr;
        expect(a >>> 8, `${name}: ${address} in ${t.room.beyondNet}`).toBe(net.addr >>> 8);
        for (const taken of occupiedPrefixes(c)) {
          const mask = taken.prefixLength === 0 ? 0 : (0xffffffff << (32 - taken.prefixLength)) >>> 0;
          expect(((a & mask) >>> 0) === ((taken.addr & mask) >>> 0), `${name}: ${address} in ${taken.addr}/${taken.prefixLength}`).toBe(false);
        }
      }
    }
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
  const observed = (invariants: string[]): Observation => ({ agents: {}, clients: [], actions: [], conntrack: [], invariants });

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
