/**
 * The kernel twin of the seed's router with Ethernet ports (examples/seed-ethernet.yaml): the
 * same bridges br-int and br-ex, the article's MACs on the router's ports, the lab's VMs plugged
 * into the bridges with veths, and Linux's own ARP and neighbour table. This is what qnat's TAP
 * mode is compared with (test/conformance, TAP mode), so it must show what the article's router
 * does on an Ethernet segment: ARP answered with the port's MAC, a dead neighbour answered with
 * ICMP host unreachable after the three ARP probes, traceroute's `!H`.
 *
 * Needs root: it builds namespaces named *-tw<hex> (randomTag), linked to nothing outside them,
 * and removes them afterwards, also when a test fails.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig, type RouterConfig } from "../../src/config/config.js";
import { LAB_HOST_DEVICE, labBridgeEndOf } from "../../src/control/host-setup.js";
import { buildKernelTwin, destroyKernelTwin, randomTag, retagConfigText, type KernelTwin } from "../../src/control/twin.js";
import { ip, isRoot } from "../../src/io/netns.js";

const SEED_ETHERNET = "examples/seed-ethernet.yaml";
const root = isRoot();
if (!root) console.warn("test/control/twin-ethernet.test.ts: not root, so the kernel twin of seed-ethernet.yaml (network namespaces) is skipped");

/** A command inside a namespace, bounded; resolves with its exit code and output (a failing command is a result here). */
function inNetns(netns: string, command: string, args: readonly string[], timeoutMs = 15_000): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn("ip", ["netns", "exec", netns, command, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout });
    });
  });
}

interface Link {
  ifname: string;
  address?: string;
  link_type?: string;
  master?: string;
  flags?: string[];
}

function links(netns: string): Link[] {
  return JSON.parse(ip(netns, "-j", "link", "show")) as Link[];
}

describe.skipIf(!root)("the kernel twin of the seed's router with Ethernet ports", () => {
  const tag = randomTag("tw");
  const config: RouterConfig = parseConfig(retagConfigText(readFileSync(SEED_ETHERNET, "utf8"), SEED_ETHERNET, tag), SEED_ETHERNET);
  const ns = (name: string): string => `${name}-${tag}`;
  let twin: KernelTwin | undefined;

  beforeAll(async () => {
    twin = await buildKernelTwin(config, { metadata: false });
  }, 60_000);
  afterAll(() => {
    twin?.destroy();
    destroyKernelTwin(config);
  });

  it("has the article's ports: qr-694450d6-f6 is link/ether fa:16:3e:5d:18:10, qg-e76de35e-90 fa:16:3e:70:24:92", () => {
    const router = links(config.namespace);
    const qr = router.find((l) => l.ifname === "qr-694450d6-f6");
    const qg = router.find((l) => l.ifname === "qg-e76de35e-90");
    expect([qr?.link_type, qr?.address]).toEqual(["ether", "fa:16:3e:5d:18:10"]);
    expect([qg?.link_type, qg?.address]).toEqual(["ether", "fa:16:3e:70:24:92"]);
    expect(qr?.flags).toEqual(expect.arrayContaining(["BROADCAST", "MULTICAST", "UP", "LOWER_UP"]));
  });

  it("plugs the router's wire legs and the VMs into br-int and br-ex", () => {
    const tenant = links(ns("qnat-tenant"));
    const vm2 = config.lab.find((h) => h.namespace === ns("qnat-vm2"))!;
    const vm1 = config.lab.find((h) => h.namespace === ns("qnat-tenant"))!;
    const inBridge = (all: Link[], bridge: string): string[] => all.filter((l) => l.master === bridge).map((l) => l.ifname).sort();
    expect(inBridge(tenant, "br-int")).toEqual([labBridgeEndOf(vm1), labBridgeEndOf(vm2), "tap694450d6-f6"].sort());
    expect(inBridge(links(ns("qnat-external")), "br-ex")).toEqual([labBridgeEndOf(config.lab.find((h) => h.namespace === ns("qnat-external"))!), "tape76de35e-90"].sort());
    // The second VM is alone in its own namespace, its addresses on its end of the veth.
    const addresses = JSON.parse(ip(ns("qnat-vm2"), "-j", "-4", "addr", "show", "dev", LAB_HOST_DEVICE)) as Array<{ addr_info: Array<{ local: string }> }>;
    expect(addresses[0]!.addr_info.map((a) => a.local)).toEqual(["10.0.0.3"]);
  });

  it("forwards the seed's flows: 10.0.0.2 and 10.0.0.3 (another namespace on br-int) reach 203.0.113.10, and the outside reaches the floating IP 9.186.100.129", async () => {
    const pings = await Promise.all([
      inNetns(ns("qnat-tenant"), "ping", ["-c", "1", "-W", "3", "203.0.113.10"]),
      inNetns(ns("qnat-vm2"), "ping", ["-c", "1", "-W", "3", "203.0.113.10"]),
      inNetns(ns("qnat-external"), "ping", ["-c", "1", "-W", "3", "9.186.100.129"]),
    ]);
    expect(pings.map((p) => p.code)).toEqual([0, 0, 0]);
    const conntrack = (await inNetns(config.namespace, "conntrack", ["-L", "-p", "icmp"])).stdout;
    // 10.0.0.3 leaves as 9.186.100.2 (the snat rule), 10.0.0.2 as its floating IP.
    expect(conntrack).toMatch(/src=10\.0\.0\.3 dst=203\.0\.113\.10 .* src=203\.0\.113\.10 dst=9\.186\.100\.2 /);
    expect(conntrack).toMatch(/src=10\.0\.0\.2 dst=203\.0\.113\.10 .* src=203\.0\.113\.10 dst=9\.186\.100\.129 /);
  });

  it("answers arping from the tenant for 10.0.0.1 with qr-694450d6-f6's MAC, and from the outside for the floating IP with qg-e76de35e-90's", async () => {
    const [tenant, outside] = await Promise.all([
      inNetns(ns("qnat-vm2"), "arping", ["-c", "2", "-w", "4", "-I", LAB_HOST_DEVICE, "10.0.0.1"]),
      inNetns(ns("qnat-external"), "arping", ["-c", "2", "-w", "4", "-I", LAB_HOST_DEVICE, "9.186.100.129"]),
    ]);
    expect(tenant.stdout).toMatch(/Unicast reply from 10\.0\.0\.1 \[FA:16:3E:5D:18:10\]/);
    expect(outside.stdout).toMatch(/Unicast reply from 9\.186\.100\.129 \[FA:16:3E:70:24:92\]/);
  });

  it("answers a packet for a dead neighbour on 9.186.100.0/24 with host unreachable after its ARP probes, and traceroute prints !H", async () => {
    const [ping, trace] = await Promise.all([
      inNetns(ns("qnat-tenant"), "ping", ["-n", "-c", "1", "-W", "8", "9.186.100.77"]),
      inNetns(ns("qnat-vm2"), "traceroute", ["-n", "-q", "1", "-w", "8", "-m", "2", "9.186.100.77"]),
    ]);
    // The error is made when resolution fails (arp_error_report -> icmp_send, net/ipv4/arp.c),
    // after POSTROUTING: the packet left as 10.0.0.2's floating IP, so the error is addressed to
    // 9.186.100.129, from it, and conntrack turns its destination back into 10.0.0.2.
    expect(ping.stdout).toMatch(/From 9\.186\.100\.129 icmp_seq=1 Destination Host Unreachable/);
    // Hop 1 is the router (time exceeded), hop 2 the unresolved neighbour: !H.
    expect(trace.stdout).toMatch(/^ 1 +10\.0\.0\.1 +[\d.]+ ms$/m);
    expect(trace.stdout).toMatch(/^ 2 +9\.186\.100\.2 +[\d.]+ ms !H$/m);
    // 3 probes 1 s apart (mcast_solicit, retrans_time) unanswered: the neighbour is FAILED.
    expect(ip(config.namespace, "neigh", "show", "9.186.100.77")).toMatch(/FAILED/);
  }, 30_000);
});
