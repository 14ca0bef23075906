import { describe, expect, it } from "vitest";
import { formatIpv4, parseIpv4 } from "../../src/core/addr.js";
import { RouteError, RouteScope, RouteType, RoutingTable } from "../../src/route/table.js";

const TENANT = "qr-694450d6-f6";
const GATEWAY = "qg-e76de35e-90";

/** The seed's qrouter: qr 10.0.0.1/24; qg 9.186.100.2/24 and the floating IP 9.186.100.129/32. */
function seedTable(defaultVia = "9.186.100.1"): RoutingTable {
  const table = new RoutingTable([TENANT, GATEWAY]);
  table.addConnected(0, parseIpv4("10.0.0.1"), 24);
  table.addConnected(1, parseIpv4("9.186.100.2"), 24);
  table.addConnected(1, parseIpv4("9.186.100.129"), 32);
  table.addRoute(`default via ${defaultVia} dev ${GATEWAY}`);
  return table;
}

function refusal(table: RoutingTable, text: string): string {
  try {
    table.addRoute(text);
  } catch (error) {
    expect(error).toBeInstanceOf(RouteError);
    return (error as Error).message;
  }
  throw new Error(`"${text}" was accepted`);
}

describe("the seed's routing table", () => {
  it("prints exactly what `ip route` prints in the qrouter namespace (iproute2-6.1: a space ends each line)", () => {
    const expected =
      "default via 9.186.100.1 dev qg-e76de35e-90 \n" +
      "9.186.100.0/24 dev qg-e76de35e-90 proto kernel scope link src 9.186.100.2 \n" +
      "10.0.0.0/24 dev qr-694450d6-f6 proto kernel scope link src 10.0.0.1 \n";
    expect(seedTable().format()).toBe(expected);
    expect(seedTable().format({ trailingSpace: false })).toBe(expected.replaceAll(" \n", "\n"));
  });

  it("sends 10.0.0.3 out of the tenant port directly and 203.0.113.10 to 9.186.100.1", () => {
    const table = seedTable();
    const vm = table.lookup(parseIpv4("10.0.0.3"));
    expect(table.routePort(vm)).toBe(0);
    expect(table.routeGateway(vm)).toBe(0);
    expect(table.routeType(vm)).toBe(RouteType.Unicast);
    expect(formatIpv4(table.routePrefSrc(vm))).toBe("10.0.0.1");

    const outside = table.lookup(parseIpv4("203.0.113.10"));
    expect(table.routePort(outside)).toBe(1);
    expect(formatIpv4(table.routeGateway(outside))).toBe("9.186.100.1");
    expect(formatIpv4(table.routePrefSrc(outside))).toBe("9.186.100.2"); // not the floating IP

    const neighbour = table.lookup(parseIpv4("9.186.100.1"));
    expect(table.routePort(neighbour)).toBe(1);
    expect(table.routeGateway(neighbour)).toBe(0);
    expect(table.localAddressPort(parseIpv4("9.186.100.129"))).toBe(1);
    expect(table.localAddressPort(parseIpv4("10.0.0.3"))).toBe(-1);
  });

  it("has no route anywhere before the default route is added", () => {
    const table = new RoutingTable([TENANT, GATEWAY]);
    table.addConnected(0, parseIpv4("10.0.0.1"), 24);
    expect(table.lookup(parseIpv4("8.8.8.8"))).toBe(-1);
  });

  it("lists the routes and their JSON like `ip -j route`", () => {
    const table = seedTable();
    expect(table.routes().map((r) => [formatIpv4(r.prefix), r.prefixLength, r.scope])).toEqual([
      ["0.0.0.0", 0, RouteScope.Universe],
      ["9.186.100.0", 24, RouteScope.Link],
      ["10.0.0.0", 24, RouteScope.Link],
    ]);
    expect(JSON.stringify(table.toJSON())).toBe(
      '[{"dst":"default","gateway":"9.186.100.1","dev":"qg-e76de35e-90","flags":[]},' +
        '{"dst":"9.186.100.0/24","dev":"qg-e76de35e-90","protocol":"kernel","scope":"link","prefsrc":"9.186.100.2","flags":[]},' +
        '{"dst":"10.0.0.0/24","dev":"qr-694450d6-f6","protocol":"kernel","scope":"link","prefsrc":"10.0.0.1","flags":[]}]',
    );
  });
});

describe("connected routes", () => {
  it("adds one route for two addresses in one subnet, with the first as src", () => {
    const table = new RoutingTable([TENANT]);
    table.addConnected(0, parseIpv4("10.0.0.1"), 24);
    table.addConnected(0, parseIpv4("10.0.0.9"), 24);
    expect(table.format()).toBe("10.0.0.0/24 dev qr-694450d6-f6 proto kernel scope link src 10.0.0.1 \n");
    expect(table.portAddresses(0).map((a) => a.secondary)).toEqual([false, true]);
  });

  it("adds no main-table route for a /32 address", () => {
    const table = new RoutingTable([GATEWAY]);
    table.addConnected(0, parseIpv4("9.186.100.129"), 32);
    expect(table.format()).toBe("");
  });

  it("refuses the same address twice", () => {
    const table = new RoutingTable([TENANT]);
    table.addConnected(0, parseIpv4("10.0.0.1"), 24);
    expect(() => table.addConnected(0, parseIpv4("10.0.0.1"), 24)).toThrow("RTNETLINK answers: File exists");
  });
});

describe("ip route add", () => {
  it("accepts every supported form and prints them in the kernel's dump order", () => {
    const table = seedTable();
    table.addRoute("0.0.0.0/8 via 10.0.0.7");
    table.addRoute("default via 10.0.0.7 metric 3");
    table.addRoute("blackhole default metric 9");
    table.addRoute("10.0.0.0/8 via 10.0.0.5");
    table.addRoute("10.0.0.0/25 via 10.0.0.5 metric 10");
    table.addRoute("10.0.0.0/25 via 10.0.0.6 preference 5");
    table.addRoute(`10.0.0.0/25 dev ${TENANT}`);
    table.addRoute("blackhole 172.16.0.0/12");
    table.addRoute("unreachable 172.16.5.0/24");
    table.addRoute("prohibit 172.16.6.0/24 metric 7");
    table.addRoute(`192.168.1.1 dev ${TENANT} proto static`);
    table.addRoute("192.168.2.0/24 via 192.168.1.1");
    table.addRoute("192.168.3.0/24 via 10.0.0.9 proto 77 src 10.0.0.1");
    table.addRoute(`192.168.4.0/24 via 1.2.3.4 dev ${TENANT} onlink`);
    table.addRoute("192.168.5.0/24 via 10.0.0.1");
    table.addRoute("192.168.6.0/24 via 9.186.100.129");
    table.addRoute(`192.168.7.0/24 dev ${TENANT} scope global`);
    table.addRoute("192.168.23.0/24 via 10.0.0.1 scope link");
    table.addRoute(`192.168.50.0/24 via 1.2.3.4 dev ${TENANT} onlink metric 5 src 10.0.0.1 proto static`);
    table.addRoute("to 192.168.40.0/24 via 10.0.0.3 proto dhcp scope 200");
    table.addRoute(`192.168.43.0/24 dev ${TENANT} src 9.186.100.2`);
    // As printed by `ip route` (iproute2-6.1) for the same commands in a namespace.
    expect(table.format()).toBe(
      [
        "0.0.0.0/8 via 10.0.0.7 dev qr-694450d6-f6 ",
        "default via 9.186.100.1 dev qg-e76de35e-90 ",
        "default via 10.0.0.7 dev qr-694450d6-f6 metric 3 ",
        "blackhole default metric 9 ",
        "9.186.100.0/24 dev qg-e76de35e-90 proto kernel scope link src 9.186.100.2 ",
        "10.0.0.0/25 dev qr-694450d6-f6 scope link ",
        "10.0.0.0/25 via 10.0.0.6 dev qr-694450d6-f6 metric 5 ",
        "10.0.0.0/25 via 10.0.0.5 dev qr-694450d6-f6 metric 10 ",
        "10.0.0.0/24 dev qr-694450d6-f6 proto kernel scope link src 10.0.0.1 ",
        "10.0.0.0/8 via 10.0.0.5 dev qr-694450d6-f6 ",
        "blackhole 172.16.0.0/12 ",
        "unreachable 172.16.5.0/24 ",
        "prohibit 172.16.6.0/24 metric 7 ",
        "192.168.1.1 dev qr-694450d6-f6 proto static scope link ",
        "192.168.2.0/24 via 192.168.1.1 dev qr-694450d6-f6 ",
        "192.168.3.0/24 via 10.0.0.9 dev qr-694450d6-f6 proto 77 src 10.0.0.1 ",
        "192.168.4.0/24 via 1.2.3.4 dev qr-694450d6-f6 onlink ",
        "192.168.5.0/24 via 10.0.0.1 dev qr-694450d6-f6 ",
        "192.168.6.0/24 via 9.186.100.129 dev qg-e76de35e-90 ",
        "192.168.7.0/24 dev qr-694450d6-f6 ",
        "192.168.23.0/24 via 10.0.0.1 dev qr-694450d6-f6 scope link ",
        "192.168.40.0/24 via 10.0.0.3 dev qr-694450d6-f6 proto dhcp scope site ",
        "192.168.43.0/24 dev qr-694450d6-f6 scope link src 9.186.100.2 ",
        "192.168.50.0/24 via 1.2.3.4 dev qr-694450d6-f6 proto static src 10.0.0.1 metric 5 onlink ",
        "",
      ].join("\n"),
    );
  });

  it("forwards by longest prefix, then lowest metric, and knows the error route types", () => {
    const table = seedTable();
    table.addRoute("10.0.0.0/25 via 10.0.0.5 metric 10");
    table.addRoute("10.0.0.0/25 via 10.0.0.6 metric 5");
    table.addRoute("blackhole 172.16.0.0/12");
    table.addRoute("unreachable 172.16.5.0/24");
    table.addRoute("prohibit 172.16.6.0/24");
    table.addRoute("192.168.6.0/24 via 9.186.100.129"); // a gateway that is our own address
    const low = table.lookup(parseIpv4("10.0.0.100"));
    expect(formatIpv4(table.routeGateway(low))).toBe("10.0.0.6");
    expect(table.routeGateway(table.lookup(parseIpv4("10.0.0.200")))).toBe(0);
    expect(table.routeType(table.lookup(parseIpv4("172.16.9.1")))).toBe(RouteType.Blackhole);
    expect(table.routePort(table.lookup(parseIpv4("172.16.9.1")))).toBe(-1);
    expect(table.routeType(table.lookup(parseIpv4("172.16.5.1")))).toBe(RouteType.Unreachable);
    expect(table.routeType(table.lookup(parseIpv4("172.16.6.1")))).toBe(RouteType.Prohibit);
    // Linux: the nexthop is a local address (scope host), so the packet goes to dst directly.
    const own = table.lookup(parseIpv4("192.168.6.1"));
    expect(table.routePort(own)).toBe(1);
    expect(table.routeGateway(own)).toBe(0);
  });

  it("gives a deleted route's addresses back to the covering route", () => {
    const table = seedTable();
    table.addRoute("10.0.0.0/25 via 10.0.0.6 metric 5");
    table.addRoute("10.0.0.0/25 via 10.0.0.5 metric 10");
    table.deleteRoute("10.0.0.0/25 via 10.0.0.6");
    expect(formatIpv4(table.routeGateway(table.lookup(parseIpv4("10.0.0.3"))))).toBe("10.0.0.5");
    table.deleteRoute("10.0.0.0/25");
    expect(table.routeGateway(table.lookup(parseIpv4("10.0.0.3")))).toBe(0);
    table.deleteRoute("default");
    expect(table.lookup(parseIpv4("8.8.8.8"))).toBe(-1);
    expect(() => table.deleteRoute("default")).toThrow("RTNETLINK answers: No such process");
    // Ids are reused after deletion.
    const id = table.addRoute("default via 9.186.100.1");
    expect(table.route(id)?.gateway).toBe(parseIpv4("9.186.100.1"));
    expect(table.lookup(parseIpv4("8.8.8.8"))).toBe(id);
  });

  it("refuses what Linux refuses, with iproute2's words", () => {
    const table = seedTable();
    table.addRoute(`192.168.7.0/24 dev ${TENANT} scope global`);
    const cases: [string, string][] = [
      ["192.168.7.0/24 via 8.8.8.8", "Error: Nexthop has invalid gateway."],
      ["192.168.12.0/24 via 192.168.7.1", "Error: Nexthop has invalid gateway."], // scope global route
      [`192.168.9.0/24 via 10.0.0.9 dev ${GATEWAY}`, "Error: Nexthop has invalid gateway."],
      ["192.168.20.0/24 via 10.0.0.255", "Error: Nexthop has invalid gateway."], // broadcast
      ["192.168.24.0/24 via 10.0.0.8 scope link", "Error: Nexthop has invalid gateway."],
      [`10.10.0.0/16 via 10.0.0.1 dev ${TENANT} onlink`, "Error: Nexthop has invalid gateway."],
      ["192.168.7.0/24 dev nosuch", 'Cannot find device "nosuch"'],
      [`192.168.7.0/33 dev ${TENANT}`, 'Error: any valid prefix is expected rather than "192.168.7.0/33".'],
      ["300.1.1.0/24 via 10.0.0.5", 'Error: any valid prefix is expected rather than "300.1.1.0/24".'],
      [`192.168.7.0/24 dev ${TENANT} foo`, 'Error: either "to" is duplicate, or "foo" is a garbage.'],
      [`192.168.7.0/24 dev ${TENANT} proto foo`, 'Error: argument "foo" is wrong: "protocol" value is invalid'],
      [`192.168.7.0/24 dev ${TENANT} proto 256`, 'Error: argument "256" is wrong: "protocol" value is invalid'],
      ["192.168.51.0/24 via 10.0.0.3 scope foo", 'Error: argument "foo" is wrong: invalid "scope" value'],
      [`192.168.25.0/24 dev ${TENANT} metric abc`, 'Error: argument "abc" is wrong: "metric" value is invalid'],
      ["192.168.51.0/24 via abc", 'Error: inet address is expected rather than "abc".'],
      ["192.168.51.0/24 via", 'Command line is not complete. Try option "help"'],
      ["192.168.51.0/24 via 10.0.0.5 via 10.0.0.6", 'Error: argument "via" is wrong: use nexthop syntax to specify multiple via'],
      [`10.0.0.0/24 dev ${TENANT}`, "RTNETLINK answers: File exists"],
      ["default via 9.186.100.1", "RTNETLINK answers: File exists"],
      ["blackhole 10.0.0.0/24", "RTNETLINK answers: File exists"],
      [`192.168.10.7/24 dev ${TENANT}`, "Error: Invalid prefix for given prefix length."],
      [`192.168.11.0/24 dev ${TENANT} src 1.1.1.1`, "Error: Invalid prefsrc address."],
      ["192.168.42.0/24 via 10.0.0.3 src 10.0.0.2", "Error: Invalid prefsrc address."],
      ["192.168.26.0/24", "RTNETLINK answers: No such device"],
      ["192.168.22.0/24 via 0.0.0.0", "RTNETLINK answers: No such device"],
      ["192.168.35.0/24 via 10.0.0.3 scope host", "Error: Route with host scope can not have a gateway."],
      [`192.168.37.0/24 dev ${TENANT} onlink`, "Error: Invalid flags for nexthop - PERVASIVE and ONLINK can not be set."],
      [`blackhole 192.168.38.0/24 dev ${TENANT}`, "Error: Gateway, device and multipath can not be specified for this route type."],
      ["192.168.51.0/24 via 1.2.3.4 onlink", "Error: Nexthop device required for onlink."],
      [`11.0.0.0/8 dev ${TENANT} scope nowhere`, "Error: Invalid scope."],
      [`12.0.0.0/8 via 1.1.1.1 dev ${TENANT} onlink scope link`, "Error: Nexthop has invalid scope."],
      ["192.168.60.0/24 via 10.0.0.3 table 100", 'Error: "table" is not supported by qnat\'s routing table.'],
    ];
    for (const [text, message] of cases) expect(refusal(table, text), text).toBe(message);
    // Nothing refused was added.
    expect(table.routes()).toHaveLength(4);
  });

  it("resolves the port from the connected routes when `dev` is not given", () => {
    const table = seedTable();
    const id = table.addRoute("192.168.2.0/24 via 10.0.0.254");
    expect(table.routePort(id)).toBe(0);
    expect(table.route(id)?.port).toBe(0);
  });
});

describe("route versions across a live change (route caches shared by worker threads)", () => {
  it("two threads that build the same successor get the same version, after the tables they replace", () => {
    // The seed's table on the main thread and on a worker: built by the same steps, equal versions.
    const mainBefore = seedTable();
    const workerBefore = seedTable();
    expect(workerBefore.version).toBe(mainBefore.version);
    // A change that replaces one route by another: a fresh table, built by as many steps as before.
    const mainAfter = seedTable("9.186.100.3");
    const workerAfter = seedTable("9.186.100.3");
    // Without continuing, the new table's version is the old one's: a route cached under it by a
    // thread still on the old table would be taken for the new one's.
    expect(mainAfter.version).toBe(mainBefore.version);
    mainAfter.continueVersionsFrom(mainBefore);
    workerAfter.continueVersionsFrom(workerBefore);
    expect(mainAfter.version).toBeGreaterThan(mainBefore.version);
    expect(workerAfter.version).toBe(mainAfter.version);
  });
});
