import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { runCli } from "../../src/cli/main.js";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { buildDataplane, buildRoutingTable } from "../../src/dataplane/from-config.js";
import { NetfilterNat } from "../../src/dataplane/netfilter-nat.js";
import { parseConfigRules } from "../../src/control/host-setup.js";
import { carryOverCounters, diffConfigs, formatDifference, inPlaceRouting, isEmptyDifference } from "../../src/control/live-apply.js";
import { parseIpv4 } from "../../src/core/addr.js";
import { XorShift32 } from "../../src/core/rng.js";
import { rulesInOrder } from "../../src/nat/rules/model.js";
import { formatRule } from "../../src/nat/rules/format.js";

const SEED_FILE = resolve(import.meta.dirname, "../../examples/seed.yaml");
const SEED = readFileSync(SEED_FILE, "utf8");
const SNAT = "  -A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2";
const WITH_FIP = SEED.replace("9.186.100.2/24, 9.186.100.129/32", "9.186.100.2/24, 9.186.100.129/32, 9.186.100.130/32").replace(
  SNAT,
  `  -A neutron-vpn-agen-PREROUTING -d 9.186.100.130/32 -j DNAT --to-destination 10.0.0.3\n${SNAT}`,
);

function load(text: string) {
  const config = parseConfig(text, SEED_FILE);
  return { config, rules: parseConfigRules(config) };
}

describe("what qnat apply sees as the difference", () => {
  it("the seed against itself: nothing", () => {
    const a = load(SEED);
    expect(isEmptyDifference(diffConfigs(a.config, a.rules, a.config, a.rules))).toBe(true);
  });

  it("a floating IP 9.186.100.130 associated: its address on qg- and its DNAT rule; disassociated: the same with -", () => {
    const seed = load(SEED);
    const fip = load(WITH_FIP);
    expect(formatDifference(diffConfigs(seed.config, seed.rules, fip.config, fip.rules), fip.config)).toEqual([
      "+ address 9.186.100.130/32 on qg-e76de35e-90",
      "+ rule -A neutron-vpn-agen-PREROUTING -d 9.186.100.130/32 -j DNAT --to-destination 10.0.0.3",
    ]);
    expect(formatDifference(diffConfigs(fip.config, fip.rules, seed.config, seed.rules), seed.config)).toEqual([
      "- address 9.186.100.130/32 on qg-e76de35e-90",
      "- rule -A neutron-vpn-agen-PREROUTING -d 9.186.100.130/32 -j DNAT --to-destination 10.0.0.3",
    ]);
  });

  it("rp_filter router-wide and drop_invalid: taken by the new dataplane, and printed", () => {
    const seed = load(SEED);
    const changed = load(`${SEED}rp_filter: loose\nconntrack: { drop_invalid: true }\n`);
    expect(formatDifference(diffConfigs(seed.config, seed.rules, changed.config, changed.rules), changed.config)).toEqual([
      "~ rp_filter strict -> loose",
      "~ conntrack drop_invalid false -> true",
    ]);
  });

  it("arp_ignore and arp_announce of tap ports, router-wide and per port: printed, taken by the Ethernet stage with the new ports", () => {
    const tap = SEED.replace(/device: eth0 \}/g, "device: eth0, mode: tap }");
    const seed = load(tap);
    const changed = load(
      `${tap.replace("    wire: { namespace: qnat-external, device: eth0, mode: tap }\n", "    wire: { namespace: qnat-external, device: eth0, mode: tap }\n    arp_announce: 2\n")}arp_ignore: 1\n`,
    );
    expect(formatDifference(diffConfigs(seed.config, seed.rules, changed.config, changed.rules), changed.config)).toEqual([
      "~ arp_announce 0 -> 2 on qg-e76de35e-90",
      "~ arp_ignore 0 -> 1",
    ]);
  });

  it("an MTU and a route", () => {
    const seed = load(SEED);
    const changed = load(
      SEED.replace("    mtu: 1500\n  - name: qg", "    mtu: 1400\n  - name: qg").replace(
        "  - default via 9.186.100.1 dev qg-e76de35e-90\n",
        "  - default via 9.186.100.1 dev qg-e76de35e-90\n  - 198.51.100.0/24   via 10.0.0.3 dev qr-694450d6-f6\n",
      ),
    );
    expect(formatDifference(diffConfigs(seed.config, seed.rules, changed.config, changed.rules), changed.config)).toEqual([
      "~ mtu 1500 -> 1400 on qr-694450d6-f6",
      "+ route 198.51.100.0/24 via 10.0.0.3 dev qr-694450d6-f6",
    ]);
  });
});

describe("the successor dataplane of a live change", () => {
  it("keeps the running routing table: as it is when only rules change, with the floating IP's /32 when one is associated", () => {
    const seed = load(SEED);
    const rulesOnly = load(SEED.replace(SNAT, `${SNAT}\n  -A neutron-vpn-agen-snat -s 10.9.0.0/24 -j SNAT --to-source 9.186.100.2`));
    const table = buildRoutingTable(seed.config);
    const before = table.format();
    inPlaceRouting(seed.config, rulesOnly.config, table)!();
    expect(table.format()).toBe(before);
    expect(table.localAddressPort(parseIpv4("9.186.100.130"))).toBe(-1);
    inPlaceRouting(seed.config, load(WITH_FIP).config, table)!();
    expect(table.localAddressPort(parseIpv4("9.186.100.130"))).toBe(table.portIndex("qg-e76de35e-90"));
    expect(table.format()).toBe(before);
  });

  it("shares the connection table and keeps the counters of ports and of unchanged rules; the new rule starts at 0", () => {
    const seed = load(SEED);
    const running = buildDataplane(seed.config, { rng: new XorShift32(1), conntrackCapacity: 1024 });
    const oldRules = (running.nat as NetfilterNat).rules;
    oldRules.packets.fill(7);
    oldRules.bytes.fill(700);
    running.portCounters[0] = 42;
    const next = buildDataplane(load(WITH_FIP).config, { successorOf: running });
    carryOverCounters(running, next);
    expect(next.conntrack).toBe(running.conntrack);
    expect((next.nat as NetfilterNat).engine).toBe((running.nat as NetfilterNat).engine);
    expect(next.portCounters[0]).toBe(42);
    const compiled = (next.nat as NetfilterNat).rules;
    const texts = rulesInOrder({ chains: new Map(compiled.chains.map((c) => [c.name, c])) }).map((r) => formatRule(r));
    texts.forEach((text, index) => {
      const fresh = text.includes("9.186.100.130");
      expect([text, compiled.packets[index]]).toEqual([text, fresh ? 0 : 7]);
    });
  });
});

describe("qnat apply and qnat rules restore refuse a broken file before asking any router", () => {
  async function qnat(...argv: string[]): Promise<{ code: number; err: string }> {
    let err = "";
    const code = await runCli(argv, { out: () => undefined, err: (t) => (err += t) });
    return { code, err };
  }

  it("a config whose nat rule has an unknown target: FILE:LINE of that rule, exit 2", async () => {
    const dir = mkdtempSync(join(tmpdir(), "qnat-apply-"));
    try {
      const text = SEED.replace(SNAT, `${SNAT}\n  -A neutron-vpn-agen-snat -j NOSUCHTARGET`);
      const file = join(dir, "broken.yaml");
      writeFileSync(file, text);
      const line = text.split("\n").findIndex((l) => l.includes("NOSUCHTARGET")) + 1;
      const run = await qnat("apply", file, "--router", "qnt-nosuchrouter");
      expect(run.code).toBe(2);
      expect(run.err).toMatch(new RegExp(`^${file.replaceAll(".", "\\.")}:${line}: .*\n$`));

      const rules = join(dir, "broken.rules");
      writeFileSync(rules, "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j NOSUCHTARGET\nCOMMIT\n");
      const restore = await qnat("rules", "restore", rules, "--router", "qnt-nosuchrouter");
      expect(restore.code).toBe(2);
      expect(restore.err).toMatch(new RegExp(`^${rules.replaceAll(".", "\\.")}:3: .*\n$`));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
