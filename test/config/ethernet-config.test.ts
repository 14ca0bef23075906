/**
 * Ethernet ports in the config and the lab: examples/seed-ethernet.yaml (the article's MACs,
 * br-int and br-ex, a second VM on br-int in a namespace of its own), the lab's `bridge:` key
 * and its one-line errors, and the TAP version of any config (tapVariantText) that the
 * conformance harness and bench:e2e run in TAP mode.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { loadConfig, parseConfig } from "../../src/config/config.js";
import { formatCidr } from "../../src/core/addr.js";
import {
  LAB_HOST_DEVICE,
  labBridgeEndOf,
  labDeviceOf,
  labPortOf,
  labSegmentOf,
  outputDnatLocalAddresses,
  outputDnatRoutingCommands,
  parseConfigRules,
} from "../../src/control/host-setup.js";
import { retagConfigText, tapVariantText } from "../../src/control/twin.js";
import { configErrorOf } from "../support/config-error.js";

const ethernetText = readFileSync("examples/seed-ethernet.yaml", "utf8");

const errorOf = configErrorOf;

/** The 1-based line of the first line of `text` that contains `needle`. */
function lineOf(text: string, needle: string): number {
  return text.split("\n").findIndex((line) => line.includes(needle)) + 1;
}

describe("examples/seed-ethernet.yaml: the seed's router with the article's Ethernet ports", () => {
  const config = loadConfig("examples/seed-ethernet.yaml");
  it("is the seed's router: same namespace, ports and addresses", () => {
    const seed = loadConfig("examples/seed.yaml");
    expect(config.namespace).toBe(seed.namespace);
    expect(config.ports.map((p) => [p.name, p.addresses.map(formatCidr)])).toEqual(seed.ports.map((p) => [p.name, p.addresses.map(formatCidr)]));
    expect(config.nat.text).toBe(seed.nat.text);
  });
  it("has qr-694450d6-f6 as fa:16:3e:5d:18:10 on br-int and qg-e76de35e-90 as fa:16:3e:70:24:92 on br-ex, both tap", () => {
    expect(config.ports.map((p) => [p.name, p.mac, p.wire.mode, p.wire.bridge])).toEqual([
      ["qr-694450d6-f6", "fa:16:3e:5d:18:10", "tap", "br-int"],
      ["qg-e76de35e-90", "fa:16:3e:70:24:92", "tap", "br-ex"],
    ]);
  });
  it("puts 10.0.0.2 in qnat-tenant and 10.0.0.3 in qnat-vm2, both on br-int, each on a veth end named lab0", () => {
    const vm1 = config.lab.find((h) => h.namespace === "qnat-tenant")!;
    const vm2 = config.lab.find((h) => h.namespace === "qnat-vm2")!;
    expect(vm2.bridge).toEqual({ namespace: "qnat-tenant", name: "br-int" });
    expect(labSegmentOf(config, vm1)).toEqual({ namespace: "qnat-tenant", bridge: "br-int", mtu: 1500 });
    expect(labSegmentOf(config, vm2)).toEqual({ namespace: "qnat-tenant", bridge: "br-int", mtu: 1500 });
    expect([labDeviceOf(config, vm1), labDeviceOf(config, vm2)]).toEqual([LAB_HOST_DEVICE, LAB_HOST_DEVICE]);
    expect(labPortOf(config, vm2).name).toBe("qr-694450d6-f6");
    // The bridge ends of the two veths share br-int's namespace, so their names differ.
    expect(labBridgeEndOf(vm1)).not.toBe(labBridgeEndOf(vm2));
    expect(labBridgeEndOf(vm1)).toMatch(/^lab-[0-9a-f]{8}$/);
  });
  it("keeps a host on a bridgeless port on the wire device itself, as a TUN port does", () => {
    const seed = loadConfig("examples/seed.yaml");
    expect(labSegmentOf(seed, seed.lab[0]!)).toBeUndefined();
    expect(labDeviceOf(seed, seed.lab[0]!)).toBe("eth0");
    const bridgeless = parseConfig(ethernetText.replace(", bridge: br-int }", " }").replace(/^  qnat-vm2:.*\n/m, ""), "x.yaml");
    expect(labDeviceOf(bridgeless, bridgeless.lab[0]!)).toBe("tap694450d6-f6");
  });
});

describe("a lab host's bridge: one line FILE:LINE when it is wrong", () => {
  const vm2Line = lineOf(ethernetText, "qnat-vm2:");
  it("a namespace that is no wire namespace needs a bridge", () => {
    expect(errorOf(ethernetText.replace("{ bridge: br-int, addresses: [10.0.0.3/24]", "{ addresses: [10.0.0.3/24]"))).toBe(
      `bad.yaml:${vm2Line}: lab namespace "qnat-vm2" is not the wire namespace of any port (a host of its own namespace needs bridge: BRIDGE of a tap port)`,
    );
  });
  it("a bridge no port has", () => {
    expect(errorOf(ethernetText.replace("bridge: br-int, addresses: [10.0.0.3/24]", "bridge: br-tun, addresses: [10.0.0.3/24]"))).toBe(
      `bad.yaml:${vm2Line}: lab qnat-vm2: bridge "br-tun" is not the wire.bridge of any port (bridges: qnat-tenant/br-int, qnat-external/br-ex)`,
    );
  });
  it("a bridge name in two wire namespaces is ambiguous; NAMESPACE/BRIDGE says which", () => {
    const twoBrInt = ethernetText.replace("bridge: br-ex }", "bridge: br-int }");
    expect(errorOf(twoBrInt)).toBe(
      `bad.yaml:${vm2Line}: lab qnat-vm2: bridge "br-int" is in several wire namespaces (qnat-tenant, qnat-external); write NAMESPACE/br-int`,
    );
    const chosen = parseConfig(twoBrInt.replace("bridge: br-int, addresses: [10.0.0.3/24]", "bridge: qnat-external/br-int, addresses: [10.0.0.3/24]"), "x.yaml");
    expect(chosen.lab.find((h) => h.namespace === "qnat-vm2")!.bridge).toEqual({ namespace: "qnat-external", name: "br-int" });
  });
  it("a host in a wire namespace takes no bridge: it is on that port's segment", () => {
    const text = ethernetText.replace("qnat-tenant:   { addresses: [10.0.0.2/24]", "qnat-tenant:   { bridge: br-int, addresses: [10.0.0.2/24]");
    expect(errorOf(text)).toBe(
      `bad.yaml:${lineOf(text, "qnat-tenant:   {")}: lab qnat-tenant: bridge is for a host in a namespace of its own; qnat-tenant is the wire namespace of port qr-694450d6-f6`,
    );
  });
  it("the router's own namespace is no lab host", () => {
    const text = ethernetText.replace("  qnat-vm2:  ", "  qrouter-40fff075-d3a2-477b-942c-6b1adb42e35e:");
    expect(errorOf(text)).toBe(`bad.yaml:${vm2Line}: lab namespace "qrouter-40fff075-d3a2-477b-942c-6b1adb42e35e" is the router's namespace`);
  });
  it("a port's wire device or bridge may not take the lab's veth names", () => {
    expect(errorOf(ethernetText.replace("device: tap694450d6-f6", "device: lab0"))).toBe(
      `bad.yaml:${lineOf(ethernetText, "device: tap694450d6-f6")}: port qr-694450d6-f6: wire.device lab0 is a name qnat lab up gives a lab host's veth on a bridge`,
    );
  });
});

describe("the TAP version of a config (tapVariantText)", () => {
  const seedText = readFileSync("examples/seed.yaml", "utf8");
  it("makes every port of the seed tap, the gateway port on br-ex and the tenant port on br-int, with default MACs", () => {
    const tap = parseConfig(tapVariantText(seedText, "examples/seed.yaml"), "examples/seed.yaml");
    expect(tap.ports.map((p) => [p.name, p.wire.mode, p.wire.bridge, p.wire.device])).toEqual([
      ["qr-694450d6-f6", "tap", "br-int", "eth0"],
      ["qg-e76de35e-90", "tap", "br-ex", "eth0"],
    ]);
    expect(tap.ports[0]!.mac).toMatch(/^fa:16:3e:/);
    // Its hosts move from the wire device to a veth into the bridge.
    expect(tap.lab.map((h) => labDeviceOf(tap, h))).toEqual([LAB_HOST_DEVICE, LAB_HOST_DEVICE]);
  });
  it("keeps the bridges and MACs a config gives (seed-ethernet.yaml is its own TAP version)", () => {
    const tap = parseConfig(tapVariantText(ethernetText, "examples/seed-ethernet.yaml"), "examples/seed-ethernet.yaml");
    expect(tap.ports.map((p) => [p.mac, p.wire.bridge])).toEqual([
      ["fa:16:3e:5d:18:10", "br-int"],
      ["fa:16:3e:70:24:92", "br-ex"],
    ]);
  });
  it("gives two ports facing one wire namespace two bridges", () => {
    const text = seedText.replace("wire: { namespace: qnat-external, device: eth0 }", "wire: { namespace: qnat-tenant, device: eth1 }").replace(/^  qnat-external:.*\n/m, "");
    const tap = parseConfig(tapVariantText(text, "x.yaml"), "x.yaml");
    expect(tap.ports.map((p) => p.wire.bridge)).toEqual(["br-int", "br-ex"]);
    const inside = text.replace("default via 9.186.100.1 dev qg-e76de35e-90", "10.9.0.0/16 via 9.186.100.1");
    expect(parseConfig(tapVariantText(inside, "x.yaml"), "x.yaml").ports.map((p) => p.wire.bridge)).toEqual(["br-int", "br-int2"]);
  });
  it("renames the namespace of a lab host's bridge: NAMESPACE/BRIDGE with the others (retagConfigText)", () => {
    const text = ethernetText.replace("bridge: br-int, addresses", "bridge: qnat-tenant/br-int, addresses");
    const tagged = parseConfig(retagConfigText(text, "x.yaml", "t1"), "x.yaml");
    expect(tagged.lab.find((h) => h.namespace === "qnat-vm2-t1")!.bridge).toEqual({ namespace: "qnat-tenant-t1", name: "br-int" });
  });
});

describe("OUTPUT DNAT of the floating IP from the router's own host, on a tap port", () => {
  it("pins 9.186.100.129 on the qg- mirror at the port's side MAC, as the router host's kernel cannot resolve its own address there", () => {
    const config = loadConfig("examples/seed-ethernet.yaml");
    const commands = outputDnatRoutingCommands(config, outputDnatLocalAddresses(config, parseConfigRules(config)), "").map((c) => c.join(" "));
    expect(commands).toContain("route replace 9.186.100.129/32 dev qg-e76de35e-90 src 9.186.100.129 table 200");
    expect(commands).toContain("neigh replace 9.186.100.129 lladdr fe:16:3e:70:24:92 dev qg-e76de35e-90 nud permanent");
  });
  it("needs no neighbour entry on a TUN mirror", () => {
    const config = loadConfig("examples/seed.yaml");
    const commands = outputDnatRoutingCommands(config, outputDnatLocalAddresses(config, parseConfigRules(config)), "");
    expect(commands.filter((c) => c[0] === "neigh")).toEqual([]);
  });
});
