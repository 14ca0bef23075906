/**
 * Random Neutron-style routers from a seed, for the conformance property: one to three tenant
 * subnets (/24 to /28, private ranges) on qr- ports, a gateway subnet (documentation, shared,
 * private or public ranges) on a qg- port with the router's address and zero to two floating IPs
 * per tenant subnet, a default route and sometimes a route to the outside server's network, SNAT
 * or MASQUERADE per subnet (sometimes --random-fully), sometimes the metadata REDIRECT, and lab
 * hosts on every subnet. The nat rules are written as the L3 agent writes them (the seed's
 * `iptables -t nat -S`). The same seed always gives the same config.
 */
import { formatIpv4, parseIpv4, prefixMask } from "../../src/core/addr.js";
import { XorShift32 } from "../../src/core/rng.js";

interface Subnet {
  network: number;
  prefixLength: number;
}

function size(s: Subnet): number {
  return 2 ** (32 - s.prefixLength);
}

function overlaps(a: Subnet, b: Subnet): boolean {
  const mask = prefixMask(Math.min(a.prefixLength, b.prefixLength));
  return ((a.network & mask) >>> 0) === ((b.network & mask) >>> 0);
}

class Draw {
  private readonly rng: XorShift32;
  constructor(seed: number) {
    this.rng = new XorShift32(seed);
  }
  /** 0 .. n-1 */
  int(n: number): number {
    return this.rng.next() % n;
  }
  pick<T>(list: readonly T[]): T {
    return list[this.int(list.length)]!;
  }
  chance(p: number): boolean {
    return this.rng.next() / 0x1_0000_0000 < p;
  }
  /** K distinct host numbers of a subnet (1 .. size-2), none of `taken`. */
  hosts(s: Subnet, k: number, taken: ReadonlySet<number>): number[] {
    const chosen: number[] = [];
    while (chosen.length < k) {
      const host = (s.network + 1 + this.int(size(s) - 2)) >>> 0;
      if (!taken.has(host) && !chosen.includes(host)) chosen.push(host);
    }
    return chosen;
  }
  hex(n: number): string {
    let text = "";
    while (text.length < n) text += this.int(16).toString(16);
    return text;
  }
}

/** Where tenant subnets come from (RFC 1918). */
function tenantSubnet(draw: Draw): Subnet {
  const prefixLength = draw.pick([24, 24, 24, 25, 26, 27, 28]);
  const base = draw.pick([
    () => parseIpv4(`10.${draw.int(256)}.${draw.int(256)}.0`),
    () => parseIpv4(`172.${16 + draw.int(16)}.${draw.int(256)}.0`),
    () => parseIpv4(`192.168.${draw.int(256)}.0`),
  ])();
  return { network: ((base + ((draw.int(256) << (32 - prefixLength)) & 0xff)) & prefixMask(prefixLength)) >>> 0, prefixLength };
}

/** Where gateway subnets come from: the documentation ranges the harness itself would use, shared, private and public space. */
function gatewaySubnet(draw: Draw): Subnet {
  const base = draw.pick([
    () => "198.51.100.0",
    () => "203.0.113.0",
    () => "192.0.2.0",
    () => `100.${64 + draw.int(64)}.${draw.int(256)}.0`,
    () => `172.${16 + draw.int(16)}.${draw.int(256)}.0`,
    () => `${draw.pick([9, 37, 81, 151, 185])}.${draw.int(256)}.${draw.int(256)}.0`,
  ])();
  return { network: parseIpv4(base), prefixLength: 24 };
}

/** A /24 for the outside server's loopback address, away from every subnet so far. */
function serverSubnet(draw: Draw, used: readonly Subnet[]): Subnet {
  for (;;) {
    const candidate = { network: parseIpv4(draw.pick(["203.0.113.0", "198.51.100.0", "192.0.2.0", `${draw.pick([45, 93, 104, 142])}.${draw.int(256)}.${draw.int(256)}.0`])), prefixLength: 24 };
    if (!used.some((s) => overlaps(s, candidate))) return candidate;
  }
}

export interface RandomRouter {
  seed: number;
  /** The config, as a YAML file would hold it. */
  text: string;
}

/** The router of SEED (a uint32). */
export function randomNeutronConfig(seed: number): RandomRouter {
  const draw = new Draw(seed);
  const tag = (seed >>> 0).toString(16).padStart(8, "0");
  const id = `${tag}-${draw.hex(4)}-4${draw.hex(3)}-8${draw.hex(3)}-${draw.hex(12)}`;
  const used: Subnet[] = [];
  const gateway = gatewaySubnet(draw);
  used.push(gateway);
  const tenants: Subnet[] = [];
  const count = 1 + draw.int(3);
  while (tenants.length < count) {
    const candidate = tenantSubnet(draw);
    if (used.some((s) => overlaps(s, candidate))) continue;
    tenants.push(candidate);
    used.push(candidate);
  }
  const gatewayTaken = new Set<number>();
  const [routerGateway, outsideHost] = draw.hosts(gateway, 2, gatewayTaken);
  gatewayTaken.add(routerGateway!).add(outsideHost!);
  const qg = `qg-${tag}-ee`;
  const lines: string[] = [];
  const tenantPorts = tenants.map((subnet, i) => {
    const router = draw.chance(0.7) ? (subnet.network + 1) >>> 0 : draw.hosts(subnet, 1, new Set())[0]!;
    const vms = draw.hosts(subnet, 1 + draw.int(Math.min(3, size(subnet) - 3)), new Set([router]));
    const floating = draw.hosts(gateway, Math.min(vms.length, draw.int(3)), gatewayTaken).map((f, j) => {
      gatewayTaken.add(f);
      return { floating: f, fixed: vms[j]! };
    });
    return { name: `qr-${tag}-${i}`, ns: `qp${tag}-t${i}`, subnet, router, vms, floating, masquerade: draw.chance(0.3), randomFully: draw.chance(0.2) };
  });
  const floatings = tenantPorts.flatMap((p) => p.floating);
  const loopback = draw.chance(0.7) ? serverSubnet(draw, used) : undefined;
  const serverAddress = loopback ? (loopback.network + 10 + draw.int(200)) >>> 0 : undefined;
  const metadata = draw.chance(0.5);
  const cidr = (a: number, s: Subnet) => `${formatIpv4(a)}/${s.prefixLength}`;
  const net = (s: Subnet) => `${formatIpv4(s.network)}/${s.prefixLength}`;

  lines.push(`# A random Neutron-style router (test/conformance/random-config.ts), CONFORMANCE_SEED=0x${tag}`);
  lines.push("router:", `  id: ${id}`, "ports:");
  for (const p of tenantPorts) {
    lines.push(`  - name: ${p.name}`, `    addresses: [${cidr(p.router, p.subnet)}]`, `    wire: { namespace: ${p.ns}, device: eth0 }`, "    mtu: 1500");
  }
  lines.push(`  - name: ${qg}`, `    addresses: [${[cidr(routerGateway!, gateway), ...floatings.map((f) => `${formatIpv4(f.floating)}/32`)].join(", ")}]`, `    wire: { namespace: qp${tag}-ext, device: eth0 }`, "    mtu: 1500");
  lines.push("routes:", `  - default via ${formatIpv4(outsideHost!)} dev ${qg}`);
  if (loopback && draw.chance(0.5)) lines.push(`  - ${net(loopback)} via ${formatIpv4(outsideHost!)} dev ${qg}`);
  lines.push(
    "nat: |",
    "  -P PREROUTING ACCEPT",
    "  -P INPUT ACCEPT",
    "  -P OUTPUT ACCEPT",
    "  -P POSTROUTING ACCEPT",
    "  -N neutron-postrouting-bottom",
    "  -N neutron-vpn-agen-OUTPUT",
    "  -N neutron-vpn-agen-POSTROUTING",
    "  -N neutron-vpn-agen-PREROUTING",
    "  -N neutron-vpn-agen-float-snat",
    "  -N neutron-vpn-agen-snat",
    "  -A PREROUTING -j neutron-vpn-agen-PREROUTING",
    "  -A OUTPUT -j neutron-vpn-agen-OUTPUT",
    "  -A POSTROUTING -j neutron-vpn-agen-POSTROUTING",
    "  -A POSTROUTING -j neutron-postrouting-bottom",
    "  -A neutron-postrouting-bottom -j neutron-vpn-agen-snat",
  );
  for (const f of floatings) lines.push(`  -A neutron-vpn-agen-OUTPUT -d ${formatIpv4(f.floating)}/32 -j DNAT --to-destination ${formatIpv4(f.fixed)}`);
  lines.push(`  -A neutron-vpn-agen-POSTROUTING ! -i ${qg} ! -o ${qg} -m conntrack ! --ctstate DNAT -j ACCEPT`);
  if (metadata) lines.push("  -A neutron-vpn-agen-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697");
  for (const f of floatings) lines.push(`  -A neutron-vpn-agen-PREROUTING -d ${formatIpv4(f.floating)}/32 -j DNAT --to-destination ${formatIpv4(f.fixed)}`);
  for (const f of floatings) lines.push(`  -A neutron-vpn-agen-float-snat -s ${formatIpv4(f.fixed)}/32 -j SNAT --to-source ${formatIpv4(f.floating)}`);
  lines.push("  -A neutron-vpn-agen-snat -j neutron-vpn-agen-float-snat");
  for (const p of tenantPorts) {
    const target = p.masquerade ? "MASQUERADE" : `SNAT --to-source ${formatIpv4(routerGateway!)}`;
    lines.push(`  -A neutron-vpn-agen-snat -s ${net(p.subnet)} -j ${target}${p.randomFully ? " --random-fully" : ""}`);
  }
  if (metadata) {
    lines.push("metadata:", "  port: 9697", "  instances:");
    for (const p of tenantPorts) for (const vm of p.vms) lines.push(`    ${formatIpv4(vm)}: { instance-id: i-${tag}${vm.toString(16).slice(-4)}, hostname: vm-${vm & 0xff} }`);
  }
  lines.push("lab:");
  for (const p of tenantPorts) {
    lines.push(`  ${p.ns}: { addresses: [${p.vms.map((vm) => cidr(vm, p.subnet)).join(", ")}], routes: [default via ${formatIpv4(p.router)}] }`);
  }
  lines.push(`  qp${tag}-ext: { addresses: [${cidr(outsideHost!, gateway)}]${serverAddress !== undefined ? `, loopback: [${formatIpv4(serverAddress)}/32]` : ""} }`);
  return { seed: seed >>> 0, text: lines.join("\n") + "\n" };
}

/** The seeds of one property run: COUNT configs from the run's seed. */
export function propertySeeds(runSeed: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => (runSeed + Math.imul(i, 0x9e3779b9)) >>> 0);
}
