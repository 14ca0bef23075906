/**
 * The addresses and ports the conformance scenarios use beyond a config's own hosts are derived
 * from the config (addresses.ts) and collide with nothing in it: a config whose external subnet
 * is 198.51.100.0/24 does not get 198.51.100.7 as "beyond the outside host", and a config that
 * leaves no room is refused in one line.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseConfig, type RouterConfig } from "../../src/config/config.js";
import { formatCidr, parseCidr, parseIpv4, prefixMask } from "../../src/core/addr.js";
import { NoRoomError, occupiedPrefixes, reservedPorts, roomOf } from "./addresses.js";
import { ROOT } from "./harness.js";
import { plansFor, TCP_SERVER, topologyOf, UDP_SERVER } from "./scenarios.js";

const SEED = join(ROOT, "examples/seed.yaml");
const seedText = readFileSync(SEED, "utf8");

/** The seed's router with its addresses replaced (textually: every occurrence). */
function seedWith(replacements: ReadonlyArray<readonly [string, string]>, extraRules = ""): RouterConfig {
  let text = seedText;
  for (const [from, to] of replacements) text = text.split(from).join(to);
  if (extraRules !== "") text = text.replace("  -A neutron-vpn-agen-snat -j neutron-vpn-agen-float-snat\n", `  -A neutron-vpn-agen-snat -j neutron-vpn-agen-float-snat\n${extraRules}`);
  return parseConfig(text, "moved.yaml");
}

function inside(address: string, prefix: string): boolean {
  const cidr = parseCidr(prefix)!;
  return ((parseIpv4(address) & prefixMask(cidr.prefixLength)) >>> 0) === ((cidr.addr & prefixMask(cidr.prefixLength)) >>> 0);
}

/** No derived address is on a subnet, route or rule address of the config. */
function expectNoCollision(config: RouterConfig): void {
  const room = roomOf(config);
  const occupied = occupiedPrefixes(config);
  for (const address of [room.beyond, room.spoofedOutside]) {
    for (const cidr of occupied) expect(inside(address, formatCidr(cidr)), `${address} in ${formatCidr(cidr)}`).toBe(false);
  }
  const taken = new Set([...config.ports.flatMap((p) => p.addresses), ...config.lab.flatMap((h) => h.addresses)].map((c) => c.addr));
  for (const address of room.unused.values()) expect(taken.has(parseIpv4(address))).toBe(false);
}

describe("addresses a scenario uses beyond the config's hosts", () => {
  it("the seed's router: 198.51.100.7 is beyond the outside host, 10.0.0.77 an unused tenant address", () => {
    const config = parseConfig(seedText, SEED);
    const room = roomOf(config);
    expect([room.beyondNet, room.beyond, room.spoofedOutside]).toEqual(["198.51.100.0/24", "198.51.100.7", "198.51.100.99"]);
    expect(Object.fromEntries(room.unused)).toEqual({ "qr-694450d6-f6": "10.0.0.77", "qg-e76de35e-90": "9.186.100.77" });
    expectNoCollision(config);
  });

  it("an external subnet 198.51.100.0/24 moves 'beyond' past 203.0.113.0/24 (the outside server's 203.0.113.10) to 192.0.2.7: the traceroute no longer aims at a dead address of a connected subnet", () => {
    const config = seedWith([["9.186.100.", "198.51.100."]]);
    const room = roomOf(config);
    expect(room.beyond).toBe("192.0.2.7");
    expectNoCollision(config);
    const traceroute = plansFor(config).find((p) => p.name.startsWith("traceroute"))!;
    expect(traceroute.setup).toContainEqual({ ns: "qnat-external", argv: ["ip", "route", "replace", "unreachable", "192.0.2.0/24"] });
  });

  it("subnets on every documentation range (198.51.100/24 outside, 203.0.113.10 outside's server, 192.0.2.0/24 tenants) move it to the benchmarking range", () => {
    const config = seedWith([["9.186.100.", "198.51.100."], ["10.0.0.", "192.0.2."]]);
    expect(roomOf(config).beyond).toBe("198.18.0.7");
    expectNoCollision(config);
  });

  it("a tenant address .77 already held is skipped for the unused one", () => {
    const config = seedWith([["10.0.0.3/24", "10.0.0.77/24"]]);
    expect(roomOf(config).unused.get("qr-694450d6-f6")).toBe("10.0.0.78");
    expectNoCollision(config);
  });

  it("refuses, in one line, a config whose subnets leave no /24 for 'beyond'", () => {
    // 192.0.0.0/2 covers every documentation and benchmarking range tried.
    const config = seedWith([["9.186.100.2/24", "192.0.0.2/2"], ["9.186.100.1/24", "192.0.0.1/2"], ["9.186.100.", "192.0.0."]]);
    expect(() => roomOf(config)).toThrow(NoRoomError);
    expect(() => roomOf(config)).toThrow(/^moved\.yaml: no \/24 outside every subnet, route and rule address of the config \(tried [^\n]*\) for an address beyond the outside host$/);
  });

  it("refuses, in one line, a /30 tenant subnet whose two host addresses are taken", () => {
    const config = seedWith([["10.0.0.1/24", "10.0.0.1/30"], ["10.0.0.2/24, 10.0.0.3/24", "10.0.0.2/30"], ["10.0.0.0/24", "10.0.0.0/30"]]);
    expect(() => topologyOf(config)).toThrow(/^moved\.yaml: no unused address on 10\.0\.0\.0\/30 for an unused address behind qr-694450d6-f6: [^\n]*$/);
  });
});

describe("ports a scenario chooses", () => {
  it("the seed's router keeps the default blocks (UDP 7001, TCP 7002, clients from 40100)", () => {
    const t = topologyOf(parseConfig(seedText, SEED));
    expect([t.port(UDP_SERVER), t.port(TCP_SERVER), t.port(40100), t.port(33434)]).toEqual([7001, 7002, 40100, 33434]);
  });

  it("a port forward of 7000:7010 and an SNAT range 40000-40999 move the servers and the clients elsewhere, and no scenario port falls in a rule's range", () => {
    const config = seedWith(
      [],
      "  -A neutron-vpn-agen-snat -s 10.0.0.3/32 -p udp -j SNAT --to-source 9.186.100.2:40000-40999 --random-fully\n",
    );
    const moved = parseConfig(
      readFileSync(SEED, "utf8").replace(
        "  -A neutron-vpn-agen-PREROUTING -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2\n",
        "  -A neutron-vpn-agen-PREROUTING -d 9.186.100.129/32 -p tcp -m tcp --dport 7000:7010 -j DNAT --to-destination 10.0.0.3:7000-7010\n" +
          "  -A neutron-vpn-agen-PREROUTING -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2\n",
      ),
      "forward.yaml",
    );
    const t = topologyOf(moved);
    expect([t.port(UDP_SERVER), t.port(TCP_SERVER)]).toEqual([6001, 6002]);
    expect(topologyOf(config).port(40100)).toBe(45100);
    for (const c of [config, moved]) {
      const forwards = topologyOf(c).portForwards;
      // Only the REDIRECT's 80, the metadata port and a port forward's own ports are used on purpose.
      const onPurpose = (plan: string, port: number): boolean =>
        port === 80 || port === 9697 || (plan.startsWith("port forwarding") && forwards.some((f) => (port >= f.dport.min && port <= f.dport.max) || (port >= f.to.min && port <= f.to.max)));
      const reserved = reservedPorts(c);
      for (const plan of plansFor(c)) {
        for (const port of plan.knownPorts.filter((p) => !onPurpose(plan.name, p))) {
          expect(reserved.some((r) => port >= r.min && port <= r.max), `${plan.name}: port ${port}`).toBe(false);
        }
      }
    }
  });
});

describe("the example routers", () => {
  it("each gets a 'beyond' /24 of its own and keeps the default port blocks", () => {
    const beyond = Object.fromEntries(
      ["seed", "two-subnets", "mtu-1450", "three-tenants", "masquerade", "port-forwarding"].map((name) => {
        const path = join(ROOT, "examples", `${name}.yaml`);
        const config = parseConfig(readFileSync(path, "utf8"), path);
        expectNoCollision(config);
        const t = topologyOf(config);
        expect([t.port(UDP_SERVER), t.port(40100)]).toEqual([7001, 40100]);
        return [name, t.room.beyondNet];
      }),
    );
    // three-tenants' gateway subnet is 198.51.100.0/24 and its outside server 203.0.113.50.
    expect(beyond["three-tenants"]).toBe("192.0.2.0/24");
    expect(beyond.masquerade).toBe("203.0.113.0/24");
    expect(beyond.seed).toBe("198.51.100.0/24");
  });
});
