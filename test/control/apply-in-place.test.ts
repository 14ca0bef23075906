import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig, type RouterConfig } from "../../src/config/config.js";
import { inPlaceRouting } from "../../src/control/live-apply.js";
import { parseIpv4 } from "../../src/core/addr.js";
import { XorShift32 } from "../../src/core/rng.js";
import { buildRoutingTable } from "../../src/dataplane/from-config.js";
import type { RoutingTable } from "../../src/route/table.js";

const SEED_FILE = resolve(import.meta.dirname, "../../examples/seed.yaml");
const SEED = readFileSync(SEED_FILE, "utf8");
const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

/** The seed router with these addresses on qr- and qg- and these route lines. */
function router(qr: string[], qg: string[], routes: string[]): RouterConfig {
  const text = SEED.replace("addresses: [10.0.0.1/24]", `addresses: [${qr.join(", ")}]`)
    .replace("addresses: [9.186.100.2/24, 9.186.100.129/32]", `addresses: [${qg.join(", ")}]`)
    .replace(`routes:\n  - default via 9.186.100.1 dev ${QG}\n`, `routes:\n${routes.map((r) => `  - ${r}\n`).join("")}`);
  return parseConfig(text, SEED_FILE);
}

const SEED_QR = ["10.0.0.1/24"];
const SEED_QG = ["9.186.100.2/24", "9.186.100.129/32"];
const DEFAULT = `default via 9.186.100.1 dev ${QG}`;

/** Everything a packet or `ip route` can see of a table, for the addresses given. */
function observe(table: RoutingTable, addresses: number[]): unknown {
  const lookups = addresses.map((dst) => {
    const id = table.lookup(dst);
    if (id < 0) return [dst, -1];
    return [dst, table.describeRoute(id), table.routeType(id), table.routePort(id), table.routeGateway(id), table.routePrefSrc(id), table.localAddressPort(dst)];
  });
  const ports = table.portNames.map((_, port) => table.portAddresses(port));
  return { text: table.format(), json: JSON.stringify(table.toJSON()), ports, lookups };
}

/** Random addresses, and every address of both configs' subnets' edges and gateways. */
function probes(...configs: RouterConfig[]): number[] {
  const rng = new XorShift32(20261130);
  const out: number[] = [];
  for (let i = 0; i < 4000; i++) out.push(rng.next() >>> 0);
  for (let i = 0; i < 2000; i++) out.push(((parseIpv4("9.186.100.0") | (rng.next() & 0xff)) >>> 0), ((parseIpv4("10.0.0.0") | (rng.next() & 0x1ffff)) >>> 0));
  for (const config of configs) {
    for (const port of config.ports) for (const cidr of port.addresses) out.push(cidr.addr, (cidr.addr + 1) >>> 0, (cidr.addr - 1) >>> 0);
    for (const route of config.routes) for (const word of route.value.split(/\s+/)) {
      const addr = parseIpv4(word.split("/")[0]!);
      if (addr >= 0) out.push(addr, (addr + 1) >>> 0, (addr | 0xff) >>> 0);
    }
  }
  return out;
}

/** Changes a table built from `running` in place to `next`; returns it and one built from `next`. */
function changeInPlace(running: RouterConfig, next: RouterConfig): { changed: RoutingTable; fresh: RoutingTable; before: unknown } {
  const changed = buildRoutingTable(running);
  const addresses = probes(running, next);
  const before = observe(changed, addresses);
  const version = changed.version;
  const change = inPlaceRouting(running, next, changed);
  expect(change, "the change is made in place").toBeDefined();
  expect(observe(changed, addresses), "the dry run left the running table as it was").toEqual(before);
  change!();
  expect(changed.version).toBeGreaterThan(version);
  return { changed, fresh: buildRoutingTable(next), before };
}

function expectSameAsBuilt(running: RouterConfig, next: RouterConfig): void {
  const { changed, fresh } = changeInPlace(running, next);
  const addresses = probes(running, next);
  expect(observe(changed, addresses)).toEqual(observe(fresh, addresses));
}

describe("a live change of addresses and routes made in the running routing table", () => {
  it("floating IP 9.186.100.130 associated: a /32 on qg-, the table as one built from the new config", () => {
    expectSameAsBuilt(router(SEED_QR, SEED_QG, [DEFAULT]), router(SEED_QR, [...SEED_QG, "9.186.100.130/32"], [DEFAULT]));
  });

  it("floating IP 9.186.100.129 disassociated: its /32 leaves qg-, 9.186.100.129 is no longer the router's", () => {
    const running = router(SEED_QR, SEED_QG, [DEFAULT]);
    const next = router(SEED_QR, ["9.186.100.2/24"], [DEFAULT]);
    const { changed } = changeInPlace(running, next);
    expect(changed.localAddressPort(parseIpv4("9.186.100.129"))).toBe(-1);
    expectSameAsBuilt(running, next);
  });

  it("a subnet added to qr- brings its connected route (proto kernel scope link src), removed takes it away", () => {
    const running = router(SEED_QR, SEED_QG, [DEFAULT]);
    const next = router([...SEED_QR, "10.1.0.1/24"], SEED_QG, [DEFAULT]);
    const { changed } = changeInPlace(running, next);
    expect(changed.format()).toContain(`10.1.0.0/24 dev ${QR} proto kernel scope link src 10.1.0.1 \n`);
    expectSameAsBuilt(running, next);
    expectSameAsBuilt(next, running);
  });

  it("a route added, deleted, and its gateway replaced", () => {
    const plain = router(SEED_QR, SEED_QG, [DEFAULT]);
    const withRoute = router(SEED_QR, SEED_QG, [DEFAULT, `198.51.100.0/24 via 10.0.0.3 dev ${QR}`]);
    const otherGateway = router(SEED_QR, SEED_QG, [DEFAULT, `198.51.100.0/24 via 10.0.0.2 dev ${QR}`]);
    expectSameAsBuilt(plain, withRoute);
    expectSameAsBuilt(withRoute, plain);
    expectSameAsBuilt(withRoute, otherGateway);
    const { changed } = changeInPlace(withRoute, otherGateway);
    expect(changed.describeRoute(changed.lookup(parseIpv4("198.51.100.7")))).toBe(`198.51.100.0/24 via 10.0.0.2 dev ${QR}`);
  });

  it("the default route's gateway replaced, a blackhole and a second metric of one prefix added and removed", () => {
    const running = router(SEED_QR, SEED_QG, [DEFAULT, "blackhole 10.99.0.0/16", `10.5.0.0/16 via 10.0.0.2 dev ${QR}`]);
    const next = router(SEED_QR, SEED_QG, [`10.5.0.0/16 via 10.0.0.2 dev ${QR}`, `default via 9.186.100.3 dev ${QG}`, `10.5.0.0/16 via 10.0.0.3 dev ${QR} metric 50`]);
    expectSameAsBuilt(running, next);
    expectSameAsBuilt(next, router(SEED_QR, SEED_QG, [`10.5.0.0/16 via 10.0.0.2 dev ${QR}`, DEFAULT, "blackhole 10.99.0.0/16"]));
  });

  it("a floating IP and a route in one change, the route's src the new address", () => {
    expectSameAsBuilt(
      router(SEED_QR, SEED_QG, [DEFAULT]),
      router(SEED_QR, [...SEED_QG, "9.186.100.130/32"], [DEFAULT, `203.0.113.0/24 via 9.186.100.1 dev ${QG} src 9.186.100.130`]),
    );
  });
});

describe("changes the running routing table is built anew for", () => {
  const running = router(SEED_QR, SEED_QG, [DEFAULT, `10.9.0.0/24 dev ${QR}`, `198.51.100.0/24 via 10.9.0.5`]);
  const unchanged = (next: RouterConfig): void => {
    const table = buildRoutingTable(running);
    const before = table.format();
    expect(inPlaceRouting(running, next, table)).toBeUndefined();
    expect(table.format()).toBe(before);
  };

  it("a route that resolves another's gateway removed (scope link): built anew, that reports the other", () => {
    const next = router(SEED_QR, SEED_QG, [DEFAULT, `198.51.100.0/24 via 10.9.0.5`]);
    unchanged(next);
    expect(() => buildRoutingTable(next)).toThrow(ConfigError);
  });

  it("an address a staying route's gateway depends on removed", () => {
    unchanged(router(["10.0.0.1/24"], ["9.186.100.129/32"], [DEFAULT, `10.9.0.0/24 dev ${QR}`, `198.51.100.0/24 via 10.9.0.5`]));
  });

  it("the ports' order or an address's place in its list changed", () => {
    unchanged(parseConfig(
      SEED.replace(/  - name: qr-[\s\S]*?mtu: 1500\n/, "").replace("mtu: 1500\nroutes:", `mtu: 1500\n  - name: ${QR}\n    addresses: [10.0.0.1/24]\n    wire: { namespace: qnat-tenant, device: eth0 }\n    mtu: 1500\nroutes:`)
        .replace(`routes:\n  - default via 9.186.100.1 dev ${QG}\n`, `routes:\n  - ${DEFAULT}\n  - 10.9.0.0/24 dev ${QR}\n  - 198.51.100.0/24 via 10.9.0.5\n`),
      SEED_FILE,
    ));
    unchanged(router(SEED_QR, ["9.186.100.129/32", "9.186.100.2/24"], [DEFAULT, `10.9.0.0/24 dev ${QR}`, `198.51.100.0/24 via 10.9.0.5`]));
  });

  it("an added route the kernel refuses (gateway on no connected subnet): left to the table built anew, which names its line", () => {
    const next = router(SEED_QR, SEED_QG, [DEFAULT, `10.9.0.0/24 dev ${QR}`, `198.51.100.0/24 via 10.9.0.5`, "203.0.113.0/24 via 172.16.0.1"]);
    unchanged(next);
    expect(() => buildRoutingTable(next)).toThrow(/Nexthop has invalid gateway/);
  });
});
