import { describe, expect, it } from "vitest";
import { loadConfig, parseConfig } from "../../src/config/config.js";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import { warmUp } from "../../src/dataplane/warmup.js";

describe("the JIT warm-up", () => {
  for (const file of ["examples/seed.yaml", "examples/two-subnets.yaml"]) {
    it(`runs every kind of traffic through a scratch dataplane of ${file}, out of every port, both directions`, () => {
      const config = loadConfig(file);
      const report = warmUp(config, { packets: 1500, headroom: 10, slotSize: 65552 });
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
    warmUp(config, { packets: 500 });
    expect(formatConntrackTable(live.conntrack)).toBe(before);
    expect(live.conntrack.counters.created).toBe(0);
    expect(Array.from(live.portCounters).every((n) => n === 0)).toBe(true);
  });

  it("keeps to its packet budget on a router with many ports, and still reaches every port", () => {
    // 16 tenant ports (/30 and /31 subnets, two addresses each) and a gateway: the conversations
    // grow with ports x addresses, the warm-up must not.
    const ports = Array.from({ length: 16 }, (_, i) =>
      i % 2 === 0
        ? `  - { name: qr-${i}, addresses: [10.1.${i}.1/30, 10.2.${i}.1/32], wire: { namespace: t${i}, device: eth0 } }`
        : `  - { name: qr-${i}, addresses: [10.1.${i}.0/31, 10.2.${i}.1/32], wire: { namespace: t${i}, device: eth0 } }`,
    );
    const text = [
      "router: { id: 11111111-2222-3333-4444-555555555555 }",
      "ports:",
      ...ports,
      "  - { name: qg-x, addresses: [203.0.113.2/24], wire: { namespace: ext, device: eth0 } }",
      "routes:",
      "  - default via 203.0.113.1 dev qg-x",
      "nat: |",
      "  -A POSTROUTING -o qg-x -j MASQUERADE",
    ].join("\n");
    const config = parseConfig(text, "many-ports.yaml");
    const report = warmUp(config, { packets: 3000 });
    expect(report.packets).toBeGreaterThanOrEqual(3000);
    expect(report.packets).toBeLessThan(3100);
    // Every tenant port has a neighbour (the /30's other host, the /31's other address) whose
    // traffic leaves through the gateway, and gets traffic back.
    for (const count of report.perPort) expect(count).toBeGreaterThan(0);
  });
});
