/**
 * The random routers of the conformance property (random-config.ts) are valid configs whose
 * scenarios can be derived: for many seeds, the config loads, its rules parse, every address the
 * scenarios use beyond the config's hosts collides with nothing, and the same seed gives the
 * same text.
 */
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { formatCidr, inPrefix, parseIpv4 } from "../../src/core/addr.js";
import { occupiedPrefixes } from "./addresses.js";
import { randomNeutronConfig, propertySeeds } from "./random-config.js";
import { fastPlansFor, topologyOf } from "./scenarios.js";

const SEEDS = propertySeeds(0x5eed0001, 300);

describe("random Neutron-style routers", () => {
  it("the same seed gives the same config, another seed another one", () => {
    expect(randomNeutronConfig(42).text).toBe(randomNeutronConfig(42).text);
    expect(randomNeutronConfig(43).text).not.toBe(randomNeutronConfig(42).text);
    expect(randomNeutronConfig(0x1a2b3c4d).text).toMatch(/^# A random Neutron-style router .*CONFORMANCE_SEED=0x1a2b3c4d\n/);
  });

  it(`${SEEDS.length} seeds: each config loads, and its scenarios' derived addresses are on none of its subnets, routes or rule addresses`, () => {
    const seen = { floating: 0, masquerade: 0, randomFully: 0, metadata: 0, tenants: new Set<number>(), beyond: new Set<string>() };
    for (const seed of SEEDS) {
      const { text } = randomNeutronConfig(seed);
      const config = parseConfig(text, `seed-${seed}.yaml`);
      const t = topologyOf(config);
      expect(fastPlansFor(config).length, text).toBeGreaterThan(5);
      const occupied = occupiedPrefixes(config);
      for (const address of [t.room.beyond, t.room.spoofedOutside]) {
        const clash = occupied.find((c) => inPrefix(parseIpv4(address), c.addr, c.prefixLength));
        expect(clash === undefined ? "" : `${address} in ${formatCidr(clash)}`, text).toBe("");
      }
      const held = new Set([...config.ports.flatMap((p) => p.addresses), ...config.lab.flatMap((h) => h.addresses)].map((c) => c.addr));
      for (const address of t.room.unused.values()) expect(held.has(parseIpv4(address)), text).toBe(false);
      seen.floating += t.floating.length;
      seen.masquerade += /-j MASQUERADE/.test(text) ? 1 : 0;
      seen.randomFully += /--random-fully/.test(text) ? 1 : 0;
      seen.metadata += config.metadata ? 1 : 0;
      seen.tenants.add(config.ports.length - 1);
      seen.beyond.add(t.room.beyondNet);
    }
    // The generator reaches every kind of router it claims to.
    expect([...seen.tenants].sort()).toEqual([1, 2, 3]);
    expect(seen.floating).toBeGreaterThan(SEEDS.length / 2);
    for (const count of [seen.masquerade, seen.randomFully, seen.metadata]) expect(count).toBeGreaterThan(10);
    expect(seen.beyond.size).toBeGreaterThan(1);
  });
});
