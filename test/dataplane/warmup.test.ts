import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/config.js";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import { warmUp } from "../../src/dataplane/warmup.js";

describe("the JIT warm-up", () => {
  for (const file of ["examples/seed.yaml", "examples/two-subnets.yaml"]) {
    it(`runs every kind of traffic through a scratch dataplane of ${file}, out of every port, both directions`, () => {
      const config = loadConfig(file);
      const report = warmUp(config, { rounds: 2, headroom: 10, slotSize: 65552 });
      expect(report.packets).toBeGreaterThan(500);
      // Most packets leave: requests and the replies built from what left.
      expect(report.forwarded).toBeGreaterThan(report.packets / 2);
      expect(report.perPort).toHaveLength(config.ports.length);
      for (const count of report.perPort) expect(count).toBeGreaterThan(50);
      // TTL 1 from every port's neighbour: the router's own ICMP time exceeded (rate limits allow a few).
      expect(report.generated).toBeGreaterThan(0);
      expect(report.connections).toBeGreaterThan(100);
    });
  }

  it("leaves a dataplane built from the same config untouched", () => {
    const config = loadConfig("examples/seed.yaml");
    const live = buildDataplane(config);
    const before = formatConntrackTable(live.conntrack);
    warmUp(config, { rounds: 1 });
    expect(formatConntrackTable(live.conntrack)).toBe(before);
    expect(live.conntrack.counters.created).toBe(0);
    expect(Array.from(live.portCounters).every((n) => n === 0)).toBe(true);
  });
});
