/**
 * The lab's Ethernet plumbing (host-setup.ts) for examples/seed-ethernet.yaml, in real namespaces:
 * the router's TAP wire legs join br-int and br-ex, the VMs plug into the bridges with veths (the
 * second VM from a namespace of its own), and `qnat lab down` removes all of it. qnat's TAP legs
 * are stood in for by persistent TAP devices (`ip tuntap add mode tap`), the kind of device the
 * router creates, so this tests the plumbing without the router.
 *
 * Needs root: namespaces *-lb<hex> (randomTag), linked to nothing, removed also when a test fails.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import {
  configureLabHosts,
  ensureNamespaces,
  joinWireBridges,
  LAB_HOST_DEVICE,
  labBridgeEndOf,
  namespacesOf,
  WireLegNotEthernetError,
} from "../../src/control/host-setup.js";
import { labDown } from "../../src/control/lab.js";
import { destroyKernelTwin, randomTag, retagConfigText } from "../../src/control/twin.js";
import { ip, isRoot, netnsExecAsync, netnsExists } from "../../src/io/netns.js";

const SEED_ETHERNET = "examples/seed-ethernet.yaml";
const root = isRoot();
if (!root) console.warn("test/control/lab-bridges.test.ts: not root, so the lab's bridges in network namespaces are skipped");

interface Link {
  ifname: string;
  master?: string;
  flags?: string[];
}

describe.skipIf(!root)("qnat lab's bridges for seed-ethernet.yaml", () => {
  const tag = randomTag("lb");
  const text = retagConfigText(readFileSync(SEED_ETHERNET, "utf8"), SEED_ETHERNET, tag);
  const config = parseConfig(text, SEED_ETHERNET);
  const ns = (name: string): string => `${name}-${tag}`;
  const dir = mkdtempSync(join(tmpdir(), "qnat-lab-bridges-"));
  const configPath = join(dir, "seed-ethernet.yaml");
  const links = (netns: string): Link[] => JSON.parse(ip(netns, "-j", "link", "show")) as Link[];

  beforeAll(() => {
    writeFileSync(configPath, text);
    ensureNamespaces(config);
    // What qnat's router does when it opens its TAP wire legs: the devices exist, not yet bridged.
    for (const port of config.ports) ip(port.wire.namespace, "tuntap", "add", "dev", port.wire.device, "mode", "tap");
    joinWireBridges(config);
    configureLabHosts(config);
  });
  afterAll(() => {
    destroyKernelTwin(config);
    rmSync(dir, { recursive: true, force: true });
  });

  it("puts the router's wire leg and both VMs' veths into br-int, and does it once however often lab up runs", () => {
    joinWireBridges(config);
    configureLabHosts(config);
    const vm1 = config.lab.find((h) => h.namespace === ns("qnat-tenant"))!;
    const vm2 = config.lab.find((h) => h.namespace === ns("qnat-vm2"))!;
    const tenant = links(ns("qnat-tenant"));
    expect(tenant.filter((l) => l.master === "br-int").map((l) => l.ifname).sort()).toEqual([labBridgeEndOf(vm1), labBridgeEndOf(vm2), "tap694450d6-f6"].sort());
    expect(links(ns("qnat-external")).filter((l) => l.master === "br-ex").map((l) => l.ifname)).toHaveLength(2);
    // The VM in the bridge's own namespace is the only one there answering ARP for 10.0.0.2.
    expect(tenant.find((l) => l.ifname === "br-int")?.flags).toContain("NOARP");
    // No multicast snooping (as OVS's br-int): the bridge sends no IGMP reports to the VMs.
    expect(ip(ns("qnat-tenant"), "-d", "link", "show", "dev", "br-int")).toMatch(/mcast_snooping 0/);
  });

  it("gives 10.0.0.3 in qnat-vm2 its address and default route on lab0, and it reaches 10.0.0.2 across br-int", async () => {
    const vm2 = ns("qnat-vm2");
    expect(ip(vm2, "-4", "addr", "show", "dev", LAB_HOST_DEVICE)).toMatch(/inet 10\.0\.0\.3\/24 brd 10\.0\.0\.255/);
    expect(ip(vm2, "route", "show", "default")).toMatch(/^default via 10\.0\.0\.1 dev lab0/);
    await expect(netnsExecAsync(vm2, "ping", ["-c", "1", "-W", "3", "10.0.0.2"], { timeoutMs: 10_000 })).resolves.toMatch(/1 received/);
  });

  it("refuses to bridge a TUN wire leg, saying the port needs qnat's TAP legs", () => {
    const port = config.ports[0]!;
    ip(port.wire.namespace, "link", "del", "dev", port.wire.device);
    ip(port.wire.namespace, "tuntap", "add", "dev", port.wire.device, "mode", "tun");
    expect(() => joinWireBridges(config, [port])).toThrow(WireLegNotEthernetError);
    expect(() => joinWireBridges(config, [port])).toThrow(`port qr-694450d6-f6: the wire device ${ns("qnat-tenant")}/tap694450d6-f6 is link/none, not Ethernet`);
  });

  it("qnat lab down removes every namespace it made, the second VM's too", async () => {
    let printed = "";
    expect(await labDown(configPath, (line) => (printed += line))).toBe(0);
    expect(namespacesOf(config).filter((name) => netnsExists(name))).toEqual([]);
    expect(printed).toContain(`namespace ${ns("qnat-vm2")}`);
  });
});
