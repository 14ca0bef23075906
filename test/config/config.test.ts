import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { effectiveArpAnnounce, effectiveArpIgnore, effectiveRpFilter, loadConfig, parseConfig, defaultMacOf } from "../../src/config/config.js";
import { formatCidr } from "../../src/core/addr.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import { configErrorOf } from "../support/config-error.js";

const seedText = readFileSync("examples/seed.yaml", "utf8");

const errorOf = configErrorOf;

describe("the seed's config", () => {
  const config = loadConfig("examples/seed.yaml");
  it("names the router namespace after the router id", () => {
    expect(config.namespace).toBe("qrouter-40fff075-d3a2-477b-942c-6b1adb42e35e");
  });
  it("has the qr- and qg- ports with the seed's addresses", () => {
    expect(config.ports.map((p) => p.name)).toEqual(["qr-694450d6-f6", "qg-e76de35e-90"]);
    expect(config.ports[1]!.addresses.map(formatCidr)).toEqual(["9.186.100.2/24", "9.186.100.129/32"]);
    expect(config.ports[0]!.wire).toEqual({ namespace: "qnat-tenant", device: "eth0", mode: "tun" });
  });
  it("keeps the nat rules verbatim with their line numbers in the config", () => {
    expect(config.nat.text).toBe(readFileSync("examples/neutron-nat.rules", "utf8"));
    const lines = seedText.split("\n");
    expect(lines[config.nat.firstLine - 1]!.trim()).toBe("-P PREROUTING ACCEPT");
  });
  it("has the lab hosts and metadata instances", () => {
    expect(config.lab.map((h) => h.namespace)).toEqual(["qnat-tenant", "qnat-external"]);
    expect(config.metadata?.port).toBe(9697);
    expect(config.metadata?.instances.get("10.0.0.2")?.["instance-id"]).toBe("i-00000001");
    expect(config.routes).toEqual([{ value: "default via 9.186.100.1 dev qg-e76de35e-90", line: 16 }]);
  });
});

describe("a broken config gets one line: FILE:LINE: what is wrong", () => {
  it("port name longer than 15 characters", () => {
    const text = seedText.replace("name: qr-694450d6-f6", "name: qr-694450d6-f6-too-long");
    expect(errorOf(text)).toMatch(/^bad\.yaml:7: port name "qr-694450d6-f6-too-long" is 23 characters; Linux interface names have at most 15$/);
  });
  it("bad address", () => {
    expect(errorOf(seedText.replace("[10.0.0.1/24]", "[10.0.0.300/24]"))).toBe(
      'bad.yaml:8: port qr-694450d6-f6 addresses: "10.0.0.300/24" is not an IPv4 address with prefix length',
    );
  });
  it("unknown key, invalid YAML, missing ports, duplicate address", () => {
    expect(errorOf("router: {id: x}\nportz: []\n")).toBe('bad.yaml:2: unknown key "portz" (expected one of router, ports, routes, routes_file, nat, metadata, lab, conntrack, rp_filter, arp_ignore, arp_announce, state, metrics, capture, workers)');
    expect(errorOf("router: {id: x\n")).toMatch(/^bad\.yaml:\d+: invalid YAML: /);
    expect(errorOf("router: {id: x}\n")).toMatch(/^bad\.yaml:1: ports must be a non-empty list$/);
    expect(errorOf(seedText.replace("9.186.100.129/32]", "10.0.0.1/32]"))).toMatch(/^bad\.yaml:12: address 10\.0\.0\.1\/32 is already on port qr-694450d6-f6$/);
  });
  it("mtu out of range and a missing file", () => {
    expect(errorOf(seedText.replace("mtu: 1500", "mtu: 40"))).toBe("bad.yaml:10: mtu 40 is outside 68..65535");
    expect(() => loadConfig("/nonexistent/qnat.yaml")).toThrow("/nonexistent/qnat.yaml:0: cannot read config (ENOENT)");
  });
});

describe("conntrack.max: the connection table's size (Linux nf_conntrack_max)", () => {
  const withConntrack = (block: string): string => `${seedText}conntrack:\n${block}\n`;
  const lineOfConntrack = seedText.split("\n").length;

  it("the seed's router holds 262144 connections, a config can make it 4096", () => {
    expect(loadConfig("examples/seed.yaml").conntrack.max).toBe(262_144);
    const small = parseConfig(withConntrack("  max: 4096"), "small.yaml");
    expect(small.conntrack.max).toBe(4096);
    expect(buildDataplane(small).conntrack.capacity).toBe(4096);
  });
  it("zero, a fraction, text or more than the table can hold is a FILE:LINE error", () => {
    const line = lineOfConntrack + 1;
    expect(errorOf(withConntrack("  max: 0"))).toBe(`bad.yaml:${line}: conntrack.max 0 is outside 1..33554432`);
    expect(errorOf(withConntrack("  max: 33554433"))).toBe(`bad.yaml:${line}: conntrack.max 33554433 is outside 1..33554432`);
    expect(errorOf(withConntrack("  max: 1.5"))).toBe(`bad.yaml:${line}: conntrack.max must be a whole number of entries`);
    expect(errorOf(withConntrack("  max: lots"))).toBe(`bad.yaml:${line}: conntrack.max must be a whole number of entries`);
    expect(errorOf(withConntrack("  maximum: 10"))).toBe(`bad.yaml:${line}: unknown conntrack key "maximum"`);
    expect(errorOf(`${seedText}conntrack: 4096\n`)).toBe(`bad.yaml:${lineOfConntrack}: conntrack must be a mapping, e.g. { max: 65536 }`);
  });
});

describe("rp_filter: router-wide (conf/all) and per port (conf/DEV), Linux's max of the two", () => {
  const withPortKey = (value: string) =>
    seedText.replace("    wire: { namespace: qnat-external, device: eth0 }\n", `    wire: { namespace: qnat-external, device: eth0 }\n    rp_filter: ${value}\n`);
  it("is strict on every port when the config says nothing", () => {
    const config = parseConfig(seedText, "seed.yaml");
    expect(config.rpFilter).toBe("strict");
    expect(config.ports.map((p) => effectiveRpFilter(config, p))).toEqual(["strict", "strict"]);
  });
  it("a port may raise it (loose over strict); a router-wide off leaves each port its own", () => {
    const loose = parseConfig(withPortKey("loose"), "seed.yaml");
    expect(loose.ports.map((p) => effectiveRpFilter(loose, p))).toEqual(["strict", "loose"]);
    const off = parseConfig(`${withPortKey("strict")}rp_filter: off\n`, "seed.yaml");
    expect(off.ports.map((p) => effectiveRpFilter(off, p))).toEqual(["off", "strict"]);
  });
  it("a bad value, and a port value the router-wide one overrides, are one-line errors", () => {
    expect(errorOf(`${seedText}rp_filter: yes\n`)).toBe(`bad.yaml:${seedText.split("\n").length}: rp_filter must be strict, loose or off`);
    expect(errorOf(withPortKey("2"))).toBe("bad.yaml:14: port qg-e76de35e-90 rp_filter must be strict, loose or off");
    expect(errorOf(withPortKey("off"))).toBe(
      "bad.yaml:14: port qg-e76de35e-90 rp_filter off has no effect under the router-wide rp_filter strict: " +
        "a port gets the larger of the two (off < strict < loose), as Linux's conf/all and conf/qg-e76de35e-90",
    );
  });
});

describe("arp_ignore and arp_announce: tap ports only, router-wide (conf/all) and per port (conf/DEV), Linux's max of the two", () => {
  /** The seed with both ports in tap mode; `qg` lines added to qg-'s mapping (line 14 onwards), `top` at the end. */
  const tapText = (qg = "", top = "") =>
    seedText
      .replace(/device: eth0 \}/g, "device: eth0, mode: tap }")
      .replace("    wire: { namespace: qnat-external, device: eth0, mode: tap }\n", `    wire: { namespace: qnat-external, device: eth0, mode: tap }\n${qg}`) + top;
  const lastLine = (text: string) => text.split("\n").length - 1;
  it("are 0 (Linux's defaults) unless the config says otherwise", () => {
    const config = parseConfig(tapText(), "seed.yaml");
    expect(config.ports.map((p) => [effectiveArpIgnore(config, p), effectiveArpAnnounce(config, p)])).toEqual([[0, 0], [0, 0]]);
  });
  it("a port takes the larger of its own value and the router-wide one", () => {
    const config = parseConfig(tapText("    arp_ignore: 2\n    arp_announce: 2\n", "arp_ignore: 1\narp_announce: 1\n"), "seed.yaml");
    expect(config.ports.map((p) => [effectiveArpIgnore(config, p), effectiveArpAnnounce(config, p)])).toEqual([[1, 1], [2, 2]]);
    const eight = parseConfig(tapText("    arp_ignore: 8\n"), "seed.yaml");
    expect(eight.ports.map((p) => effectiveArpIgnore(eight, p))).toEqual([0, 8]);
  });
  it("values Linux does not have, or reserves, are one-line errors saying why", () => {
    expect(errorOf(tapText("    arp_ignore: 5\n"))).toBe("bad.yaml:14: port qg-e76de35e-90 arp_ignore 5 is reserved in Linux (it answers as 0 there); use 0, 1, 2, 3 or 8");
    expect(errorOf(tapText("    arp_ignore: 9\n"))).toBe("bad.yaml:14: port qg-e76de35e-90 arp_ignore must be 0, 1, 2, 3 or 8 (Linux's arp_ignore values)");
    expect(errorOf(tapText("    arp_announce: strict\n"))).toBe("bad.yaml:14: port qg-e76de35e-90 arp_announce must be 0, 1 or 2 (Linux's arp_announce values)");
    const top = tapText("", "arp_announce: 3\n");
    expect(errorOf(top)).toBe(`bad.yaml:${lastLine(top)}: arp_announce must be 0, 1 or 2 (Linux's arp_announce values)`);
  });
  it("a port value the router-wide one overrides is an error, as for rp_filter", () => {
    expect(errorOf(tapText("    arp_ignore: 1\n", "arp_ignore: 2\n"))).toBe(
      "bad.yaml:14: port qg-e76de35e-90 arp_ignore 1 has no effect under the router-wide arp_ignore 2: a port gets the larger of the two, as Linux's conf/all and conf/qg-e76de35e-90",
    );
  });
  it("on a TUN port, or router-wide without a tap port, they are errors: TUN ports have no ARP", () => {
    const tun = seedText.replace("    wire: { namespace: qnat-external, device: eth0 }\n", "    wire: { namespace: qnat-external, device: eth0 }\n    arp_announce: 1\n");
    expect(errorOf(tun)).toBe("bad.yaml:14: port qg-e76de35e-90: arp_announce needs wire.mode: tap (a TUN port has no ARP)");
    const wide = `${seedText}arp_ignore: 1\n`;
    expect(errorOf(wide)).toBe(`bad.yaml:${lastLine(wide)}: arp_ignore needs a port with wire.mode: tap (TUN ports have no ARP)`);
  });
});

describe("the conntrack: block", () => {
  it("tcp_be_liberal and drop_invalid are off unless set", () => {
    expect(parseConfig(seedText, "seed.yaml").conntrack).toMatchObject({ tcpBeLiberal: false, dropInvalid: false });
    const set = parseConfig(`${seedText}conntrack:\n  max: 4096\n  tcp_be_liberal: true\n  drop_invalid: true\n`, "seed.yaml");
    expect(set.conntrack).toEqual({ max: 4096, tcpBeLiberal: true, dropInvalid: true });
  });
  it("a value that is not a boolean, an unknown key, or no mapping is a one-line error", () => {
    const end = seedText.split("\n").length;
    expect(errorOf(`${seedText}conntrack:\n  drop_invalid: yes please\n`)).toBe(`bad.yaml:${end + 1}: conntrack.drop_invalid must be true or false`);
    expect(errorOf(`${seedText}conntrack:\n  tcp_be_liberal: 1\n`)).toBe(`bad.yaml:${end + 1}: conntrack.tcp_be_liberal must be true or false`);
    expect(errorOf(`${seedText}conntrack:\n  drop_invalids: true\n`)).toBe(`bad.yaml:${end + 1}: unknown conntrack key "drop_invalids"`);
  });
});

describe("state: where the router keeps its connections across restarts", () => {
  const withState = (block: string): string => `${seedText}state:\n${block}\n`;
  const line = seedText.split("\n").length;

  it("is absent unless configured; file is taken from the config's directory, interval defaults to 1 s", () => {
    expect(loadConfig("examples/seed.yaml").state).toBeUndefined();
    const config = parseConfig(withState("  file: state/seed.state"), "/etc/qnat/seed.yaml");
    expect(config.state).toEqual({ file: "/etc/qnat/state/seed.state", interval: 1, line: line + 1 });
    expect(parseConfig(withState("  file: /var/lib/qnat/seed.state\n  interval: 0.5"), "x.yaml").state).toMatchObject({ file: "/var/lib/qnat/seed.state", interval: 0.5 });
  });

  it("each mistake is one line at its place", () => {
    expect(errorOf(withState("  interval: 2"))).toBe(`bad.yaml:${line + 1}: state needs a file: PATH`);
    expect(errorOf(withState("  file: /var/lib/qnat/\n"))).toBe(`bad.yaml:${line + 1}: state.file "/var/lib/qnat/" must name a file, not a directory`);
    expect(errorOf(withState("  file: [a, b]"))).toBe(`bad.yaml:${line + 1}: state.file must be a path`);
    expect(errorOf(withState("  file: s\n  interval: 0"))).toBe(`bad.yaml:${line + 2}: state.interval 0 is outside 0.1..86400 seconds`);
    expect(errorOf(withState("  file: s\n  interval: often"))).toBe(`bad.yaml:${line + 2}: state.interval must be a number of seconds`);
    expect(errorOf(withState("  file: s\n  every: 1"))).toBe(`bad.yaml:${line + 2}: unknown state key "every" (expected file, interval)`);
    expect(errorOf(`${seedText}state: /var/lib/qnat/seed.state\n`)).toBe(`bad.yaml:${line}: state must be a mapping, e.g. { file: /var/lib/qnat/router.state, interval: 1 }`);
  });
});

describe("Ethernet ports: wire.mode, wire.bridge and mac", () => {
  const QR_WIRE = "    wire: { namespace: qnat-tenant, device: eth0 }\n";
  const withTenantWire = (wire: string, extra = "") => seedText.replace(QR_WIRE, `    wire: ${wire}\n${extra}`);
  const wireLine = seedText.split("\n").findIndex((l) => l === QR_WIRE.trimEnd()) + 1;
  it("a port is tun unless the config says tap; a tap port gets a stable fa:16:3e MAC from its name", () => {
    const seed = parseConfig(seedText, "seed.yaml");
    expect(seed.ports.map((p) => p.wire.mode)).toEqual(["tun", "tun"]);
    const tap = parseConfig(withTenantWire("{ namespace: qnat-tenant, device: eth0, mode: tap, bridge: br-int }"), "seed.yaml");
    const qr = tap.ports[0]!;
    expect(qr.wire).toEqual({ namespace: "qnat-tenant", device: "eth0", mode: "tap", bridge: "br-int" });
    expect(qr.mac).toMatch(/^fa:16:3e(:[0-9a-f]{2}){3}$/);
    expect(qr.mac).toBe(defaultMacOf("qr-694450d6-f6"));
    expect(defaultMacOf("qg-e76de35e-90")).not.toBe(qr.mac);
  });
  it("the article's MAC is taken as given (any case), printed as ip link prints it", () => {
    const config = parseConfig(withTenantWire("{ namespace: qnat-tenant, device: eth0, mode: tap }", "    mac: FA:16:3E:5D:18:10\n"), "seed.yaml");
    expect(config.ports[0]!.mac).toBe("fa:16:3e:5d:18:10");
  });
  it("a bad mode, a bridge or mac on a tun port, a multicast or malformed MAC, an unknown wire key: one line each", () => {
    expect(errorOf(withTenantWire("{ namespace: qnat-tenant, device: eth0, mode: tan }"))).toBe(`bad.yaml:${wireLine}: port qr-694450d6-f6: wire.mode must be tun or tap, not "tan"`);
    expect(errorOf(withTenantWire("{ namespace: qnat-tenant, device: eth0, bridge: br-int }"))).toBe(
      `bad.yaml:${wireLine}: port qr-694450d6-f6: wire.bridge needs wire.mode: tap (a TUN device carries no Ethernet frames)`,
    );
    expect(errorOf(withTenantWire("{ namespace: qnat-tenant, device: eth0 }", "    mac: fa:16:3e:5d:18:10\n"))).toBe(
      `bad.yaml:${wireLine + 1}: port qr-694450d6-f6: mac needs wire.mode: tap (a TUN port has no Ethernet address)`,
    );
    expect(errorOf(withTenantWire("{ namespace: qnat-tenant, device: eth0, mode: tap }", "    mac: 01:00:5e:00:00:01\n"))).toBe(
      `bad.yaml:${wireLine + 1}: port qr-694450d6-f6: mac 01:00:5e:00:00:01 is a multicast address`,
    );
    expect(errorOf(withTenantWire("{ namespace: qnat-tenant, device: eth0, mode: tap }", "    mac: fa:16:3e:5d:18\n"))).toBe(
      `bad.yaml:${wireLine + 1}: port qr-694450d6-f6: mac "fa:16:3e:5d:18" is not an Ethernet address like fa:16:3e:5d:18:10`,
    );
    expect(errorOf(withTenantWire("{ namespace: qnat-tenant, device: eth0, vlan: 5 }"))).toBe(
      `bad.yaml:${wireLine}: unknown wire key "vlan" (expected namespace, device, mode, bridge)`,
    );
  });
});
