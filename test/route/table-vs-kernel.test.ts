/**
 * RoutingTable against the real thing: the same addresses and `ip route add|del` commands go to a
 * throwaway network namespace (veth pairs inside it, never linked to the host) and to a
 * RoutingTable; then `ip route`, `ip -j route` and `ip route get` must agree with format(),
 * toJSON() and lookup(). Needs root; skipped otherwise.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { afterAll, describe, expect, it } from "vitest";
import { formatIpv4, parseIpv4, prefixMask } from "../../src/core/addr.js";
import { XorShift32 } from "../../src/core/rng.js";
import { RouteError, RouteType, RoutingTable } from "../../src/route/table.js";

const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
const hasIp = spawnSync("ip", ["-V"]).status === 0;
const canRun = isRoot && hasIp;

const PORTS = ["qr-694450d6-f6", "qg-e76de35e-90", "qx-5a5a5a5a-01"];
const ADDRESSES: [number, string][] = [
  [0, "10.0.0.1/24"],
  [1, "9.186.100.2/24"],
  [1, "9.186.100.129/32"],
  [0, "10.0.0.9/24"], // secondary: no route
  [2, "172.20.0.1/16"],
  [2, "192.168.100.1/30"],
];

interface IpResult {
  status: number;
  stdout: string;
  firstErrorLine: string;
}

function ip(namespace: string, args: string[]): IpResult {
  const result = spawnSync("ip", ["-n", namespace, ...args], { encoding: "utf8" });
  const firstErrorLine = (result.stderr ?? "").split("\n")[0]!.trim();
  return { status: result.status ?? -1, stdout: result.stdout ?? "", firstErrorLine };
}

function must(namespace: string, args: string[]): string {
  const result = ip(namespace, args);
  if (result.status !== 0) throw new Error(`ip ${args.join(" ")}: ${result.firstErrorLine}`);
  return result.stdout;
}

interface RouteGetAnswer {
  type?: string;
  dev: string;
  gateway?: string;
  prefsrc?: string;
}

/**
 * `ip route get` for many addresses in one `ip -batch` run: per address either the JSON answer
 * or the error line (iproute2 prints "RTNETLINK answers: ..." then "Command failed -:N").
 */
function routeGetAll(namespace: string, addresses: readonly string[]): ({ answer: RouteGetAnswer } | { error: string })[] {
  const input = addresses.map((a) => `route get ${a}\n`).join("");
  const result = spawnSync("ip", ["-n", namespace, "-j", "-force", "-batch", "-"], { input, encoding: "utf8" });
  const errors = new Map<number, string>();
  let lastMessage = "";
  for (const line of (result.stderr ?? "").split("\n")) {
    const failed = /^Command failed -:(\d+)$/.exec(line.trim());
    if (failed) errors.set(Number(failed[1]) - 1, lastMessage);
    else if (line.trim() !== "") lastMessage = line.trim();
  }
  const answers = new Map<string, RouteGetAnswer>();
  for (const line of (result.stdout ?? "").split("\n")) {
    if (line.trim() === "") continue;
    for (const answer of JSON.parse(line) as (RouteGetAnswer & { dst: string })[]) answers.set(answer.dst, answer);
  }
  return addresses.map((a, index) => {
    const error = errors.get(index);
    if (error !== undefined) return { error };
    const answer = answers.get(a);
    if (answer === undefined) throw new Error(`no answer from ip route get ${a}`);
    return { answer };
  });
}

/** A random route command in one of the forms the router's config may use (some invalid on purpose). */
function randomRouteCommand(rng: XorShift32, previous: string[]): string {
  const pick = <T>(items: readonly T[]): T => items[rng.next() % items.length]!;
  const regions: [string, number][] = [["10.0.0.0", 8], ["172.16.0.0", 12], ["192.168.0.0", 16], ["100.64.0.0", 10], ["0.0.0.0", 0]];
  const randomPrefix = (): string => {
    const [base, baseLength] = pick(regions);
    const prefixLength = Math.max(baseLength, rng.next() % 100 < 10 ? 32 : 8 + (rng.next() % 25));
    const addr = (parseIpv4(base) | (rng.next() & ~prefixMask(baseLength))) >>> 0;
    const hostBitsLeft = rng.next() % 30 === 0; // the kernel refuses these
    const shown = hostBitsLeft ? addr : (addr & prefixMask(prefixLength)) >>> 0;
    if (prefixLength === 0) return "default";
    return `${formatIpv4(shown)}/${prefixLength}`;
  };
  const gateways = [
    "10.0.0.5", "10.0.0.6", "10.0.0.254", "9.186.100.1", "9.186.100.77", "172.20.3.4", "192.168.100.2",
    "10.0.0.1", "9.186.100.129", // our own addresses: allowed, nexthop scope host
    "10.0.0.255", "8.8.8.8", "192.168.100.3", // broadcast, unreachable
  ];
  const options = (): string => {
    const words: string[] = [];
    if (rng.next() % 4 === 0) words.push("metric", String(pick([1, 5, 10, 100, 1024])));
    if (rng.next() % 6 === 0) words.push("proto", pick(["static", "boot", "dhcp", "77", "bgp"]));
    if (rng.next() % 8 === 0) words.push("src", pick(["10.0.0.1", "9.186.100.2", "9.186.100.129", "10.0.0.2"]));
    return words.length > 0 ? ` ${words.join(" ")}` : "";
  };
  const roll = rng.next() % 100;
  if (roll < 8 && previous.length > 0) return pick(previous); // a duplicate
  if (roll < 35) return `${randomPrefix()} via ${pick(gateways)}${options()}`;
  if (roll < 50) return `${randomPrefix()} via ${pick(gateways)} dev ${pick(PORTS)}${options()}`;
  if (roll < 65) return `${randomPrefix()} dev ${pick(PORTS)}${rng.next() % 3 === 0 ? ` scope ${pick(["link", "global"])}` : ""}${options()}`;
  if (roll < 72) return `default via ${pick(gateways)}${options()}`;
  if (roll < 85) return `${pick(["blackhole", "unreachable", "prohibit"])} ${randomPrefix()}${rng.next() % 3 === 0 ? " metric 7" : ""}`;
  if (roll < 92) return `${randomPrefix()} via ${pick(["1.2.3.4", "10.0.0.5", "10.0.0.1", "203.0.113.9"])} dev ${pick(PORTS)} onlink`;
  return `${randomPrefix()} via ${pick(gateways)} scope link`;
}

/** An address likely to hit one of the routes (inside, at an edge) or anything routable. */
function randomDestination(rng: XorShift32, table: RoutingTable): number {
  const routes = table.routes();
  for (;;) {
    let addr: number;
    if (rng.next() % 4 !== 0 && routes.length > 0) {
      const r = routes[rng.next() % routes.length]!;
      const span = 2 ** (32 - r.prefixLength);
      const edge = rng.next() % 3;
      addr = (r.prefix + (edge === 0 ? 0 : edge === 1 ? span - 1 : rng.next() % span)) >>> 0;
    } else {
      addr = rng.next();
    }
    const top = addr >>> 24;
    if (top === 0 || top === 127 || top >= 224) continue; // no loopback, multicast, 0/8: not routes
    return addr;
  }
}

describe.runIf(!canRun)("RoutingTable vs the kernel (skipped)", () => {
  it("needs root and iproute2 to build a namespace", () => {
    console.log("skipping the kernel comparison: run the tests as root with iproute2 installed");
  });
});

describe.runIf(canRun)("RoutingTable vs the kernel in a throwaway namespace", () => {
  const namespaces: string[] = [];

  function newRouter(table: RoutingTable): string {
    const namespace = `qnt-rt-${randomBytes(4).toString("hex")}`;
    const add = spawnSync("ip", ["netns", "add", namespace], { encoding: "utf8" });
    if (add.status !== 0) throw new Error(`ip netns add ${namespace}: ${add.stderr}`);
    namespaces.push(namespace);
    PORTS.forEach((name, index) => {
      // A veth pair with both ends inside the namespace: a port with carrier, linked to nothing outside.
      must(namespace, ["link", "add", name, "type", "veth", "peer", "name", `qntpeer${index}`]);
      must(namespace, ["link", "set", `qntpeer${index}`, "up"]);
      must(namespace, ["link", "set", name, "up"]);
    });
    for (const [port, cidr] of ADDRESSES) {
      must(namespace, ["addr", "add", cidr, "dev", PORTS[port]!]);
      const [addr, length] = cidr.split("/");
      table.addConnected(port, parseIpv4(addr!), Number(length));
    }
    return namespace;
  }

  const refusals = new Map<string, string>();

  afterAll(() => {
    console.log(`kernel comparison: ${[...refusals].map(([k, v]) => `${k}: ${v}`).join("; ")}`);
    for (const namespace of namespaces) spawnSync("ip", ["netns", "del", namespace]);
  });

  it("prints the seed's table byte for byte as `ip route` does", () => {
    const table = new RoutingTable(PORTS);
    const namespace = newRouter(table);
    const command = "default via 9.186.100.1 dev qg-e76de35e-90";
    must(namespace, ["route", "add", ...command.split(" ")]);
    table.addRoute(command);
    expect(table.format()).toBe(must(namespace, ["route"]));
  });

  for (const seed of [1, 2, 3, 4, 5]) {
    it(`agrees on a random table (seed ${seed}): accepted/refused, ip route, ip -j route, ip route get`, () => {
      const rng = new XorShift32(0x5eed0000 + seed);
      const table = new RoutingTable(PORTS);
      const namespace = newRouter(table);
      const commands: string[] = [];
      const target = 20 + (rng.next() % 31);
      let accepted = 0;
      for (let attempt = 0; attempt < 400 && accepted < target; attempt++) {
        const command = randomRouteCommand(rng, commands);
        commands.push(command);
        const kernel = ip(namespace, ["route", "add", ...command.split(" ")]);
        let ours = "";
        try {
          table.addRoute(command);
        } catch (error) {
          if (!(error instanceof RouteError)) throw error;
          ours = error.message;
        }
        expect(ours, `ip route add ${command}`).toBe(kernel.status === 0 ? "" : kernel.firstErrorLine);
        if (kernel.status === 0) accepted++;
        // Now and then delete a route that exists, as `ip route del` with its prefix and metric.
        if (rng.next() % 8 === 0 && table.routes().length > 0) {
          const routes = table.routes();
          const victim = routes[rng.next() % routes.length]!;
          const prefix = victim.prefixLength === 0 ? "default" : `${formatIpv4(victim.prefix)}/${victim.prefixLength}`;
          const text = `${prefix}${victim.metric !== 0 ? ` metric ${victim.metric}` : ""}`;
          must(namespace, ["route", "del", ...text.split(" ")]);
          table.deleteRoute(text);
        }
      }
      expect(accepted).toBeGreaterThanOrEqual(20);

      expect(table.format()).toBe(must(namespace, ["route"]));
      expect(table.toJSON()).toEqual(JSON.parse(must(namespace, ["-j", "route"])));

      let compared = 0;
      const destinations = Array.from({ length: 300 }, () => randomDestination(rng, table));
      const kernelAnswers = routeGetAll(namespace, destinations.map(formatIpv4));
      destinations.forEach((dst, index) => {
        const text = formatIpv4(dst);
        const kernel = kernelAnswers[index]!;
        const id = table.lookup(dst);
        if ("error" in kernel) {
          const expectedType = {
            "RTNETLINK answers: Network is unreachable": -1,
            "RTNETLINK answers: No route to host": RouteType.Unreachable,
            "RTNETLINK answers: Permission denied": RouteType.Prohibit,
            "RTNETLINK answers: Invalid argument": RouteType.Blackhole,
          }[kernel.error];
          expect(expectedType, `${text}: ${kernel.error}`).toBeDefined();
          expect(id === -1 ? -1 : table.routeType(id), `route get ${text}`).toBe(expectedType);
          compared++;
          return;
        }
        const answer = kernel.answer;
        if (answer.type === "local") {
          expect(table.localAddressPort(dst), text).toBeGreaterThanOrEqual(0);
          return;
        }
        if (answer.type === "broadcast") return; // the local table's subnet broadcasts
        expect(id, `route get ${text}`).toBeGreaterThanOrEqual(0);
        expect(table.routeType(id)).toBe(RouteType.Unicast);
        expect(
          {
            dev: PORTS[table.routePort(id)],
            gateway: table.routeGateway(id) === 0 ? undefined : formatIpv4(table.routeGateway(id)),
            prefsrc: formatIpv4(table.routePrefSrc(id)),
          },
          `route get ${text}`,
        ).toEqual({ dev: answer.dev, gateway: answer.gateway, prefsrc: answer.prefsrc });
        compared++;
      });
      refusals.set(`seed ${seed}`, `${accepted} accepted, ${commands.length - accepted} refused, ${compared} lookups compared`);
      expect(compared).toBeGreaterThan(200);
    });
  }
});
