/**
 * `qnat rules generate DESCRIPTION [--release NAME]`: the nat table that Neutron's L3 agent
 * installs for a router (neutron-description.ts), printed as `iptables -t nat -S` prints it.
 *
 * How the agent builds the table (neutron/agent/linux/iptables_manager.py, the L3 agent's
 * router code: neutron/agent/l3_agent.py up to Juno, neutron/agent/l3/router_info.py and
 * neutron/agent/metadata/driver.py from Kilo on):
 *   - IptablesManager wraps the built-in chains PREROUTING, OUTPUT and POSTROUTING: each gets a
 *     chain `<binary>-<CHAIN>` and the built-in chain's only rule jumps to it. `<binary>` is the
 *     base name of the agent's argv[0], cut to 16 characters, spaces made `_`
 *     (get_binary_name); a wrapped chain's own name is cut to 11 characters
 *     (MAX_IPTABLES_CHAIN_LEN_WRAP), an unwrapped one to 28, so no name passes iptables' 28.
 *   - It adds the shared, unwrapped `neutron-postrouting-bottom` as the last rule of POSTROUTING,
 *     which jumps to `<binary>-snat`, whose first rule jumps to `<binary>-float-snat`.
 *   - The metadata proxy's REDIRECT of 169.254.169.254:80 goes into `<binary>-PREROUTING` when
 *     the router is added; the gateway's rules into `<binary>-POSTROUTING` and `<binary>-snat`
 *     (_handle_router_snat_rules empties both and puts the float-snat jump back first); each
 *     floating IP adds a DNAT to PREROUTING and OUTPUT and an SNAT to float-snat
 *     (floating_forward_rules), in the order of the router's floating IPs.
 *   - iptables-restore loads it; `iptables -t nat -S` then lists the built-in chains' policies,
 *     the user chains (-N) in strcmp order (libiptc keeps them sorted), and the rules chain by
 *     chain in that same order (built-in chains first, in PREROUTING, INPUT, OUTPUT, POSTROUTING
 *     order), each chain's rules in the order they were added. iptables prints a rule in its
 *     canonical form: `-s 0.0.0.0/0` is left out, an address gets its /32, a source network its
 *     host bits cleared, `--to-port` reads `--to-ports`, `-m tcp` stays.
 *
 * The layouts differ between releases (docs/rules-generate.md): RELEASES below.
 */
import { formatCidr, formatIpv4, prefixMask, type Cidr } from "../core/addr.js";
import { INTERNAL_DEV_PREFIX, type NeutronRouterDescription } from "./neutron-description.js";

/** iptables_manager: the binary name prefix is cut to 16 characters (get_binary_name). */
export const MAX_BINARY_NAME = 16;
/** neutron_lib constants MAX_IPTABLES_CHAIN_LEN_WRAP: 28 - (16 + '-'). */
export const MAX_CHAIN_LEN_WRAP = 11;
/** neutron_lib constants MAX_IPTABLES_CHAIN_LEN_NOWRAP: iptables' own limit. */
export const MAX_CHAIN_LEN_NOWRAP = 28;

/** The L3 agent's external_ingress_mark (default 0x2) and its mask from Liberty on (ROUTER_MARK_MASK). */
const EXTERNAL_INGRESS_MARK = "0x2";
const ROUTER_MARK_MASK = "0xffff";
/** neutron/agent/linux/iptables_comments.py SNAT_OUT, on the jump to the snat chain from Kilo on. */
const SNAT_OUT_COMMENT = "Perform source NAT on outgoing traffic.";

export interface ReleaseLayout {
  readonly name: string;
  /** What the name covers, for `--release` help and the docs. */
  readonly covers: string;
  /** SNAT of the tenant networks: one `-s SUBNET` rule per router interface, or one `-o qg-...` rule. */
  readonly snat: "per-subnet" | "out-interface";
  /** The hairpin SNAT of DNATed traffic that did not enter the gateway (`-m mark ! --mark ...`). */
  readonly hairpinMark: string | undefined;
  /** The metadata REDIRECT only for packets entering a `qr-` device. */
  readonly metadataInInterface: boolean;
  /** `-m comment --comment "..."` on the neutron-postrouting-bottom jump. */
  readonly snatComment: boolean;
}

/** The layouts qnat knows, oldest first; the first is the default (the seed article's). */
export const RELEASES: readonly ReleaseLayout[] = [
  {
    name: "icehouse",
    covers: "Havana, Icehouse and Juno (the seed article's router)",
    snat: "per-subnet",
    hairpinMark: undefined,
    metadataInInterface: false,
    snatComment: false,
  },
  {
    name: "kilo",
    covers: "Kilo",
    snat: "out-interface",
    hairpinMark: EXTERNAL_INGRESS_MARK,
    metadataInInterface: false,
    snatComment: true,
  },
  {
    name: "liberty",
    covers: "Liberty and later",
    snat: "out-interface",
    hairpinMark: `${EXTERNAL_INGRESS_MARK}/${ROUTER_MARK_MASK}`,
    metadataInInterface: true,
    snatComment: true,
  },
];

/** Other names a release is known by: the releases whose layout is the same. */
const RELEASE_ALIASES = new Map([
  ["havana", "icehouse"],
  ["juno", "icehouse"],
]);

export const DEFAULT_RELEASE = RELEASES[0]!.name;

/** The layout of a release name (case-insensitive), or undefined. */
export function releaseLayout(name: string): ReleaseLayout | undefined {
  const lower = name.toLowerCase();
  const canonical = RELEASE_ALIASES.get(lower) ?? lower;
  return RELEASES.find((release) => release.name === canonical);
}

/** `neutron-vpn-agent` -> `neutron-vpn-agen` (iptables_manager get_binary_name). */
export function chainPrefixOf(agent: string): string {
  const base = agent.slice(agent.lastIndexOf("/") + 1);
  return base.slice(0, MAX_BINARY_NAME).replaceAll(" ", "_");
}

const BUILTIN_CHAINS = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];
/** The nat chains IptablesManager wraps (initialize_nat_table). */
const WRAPPED_BUILTINS = ["PREROUTING", "OUTPUT", "POSTROUTING"];
const POSTROUTING_BOTTOM = "neutron-postrouting-bottom".slice(0, MAX_CHAIN_LEN_NOWRAP);

/** A nat table under construction: chains and their rules in the order the agent adds them. */
class NatTable {
  private readonly rules = new Map<string, string[]>(BUILTIN_CHAINS.map((chain) => [chain, []]));

  constructor(private readonly prefix: string) {}

  /** `<prefix>-<name cut to 11>` (IptablesTable add_chain with wrap=True). */
  wrapped(name: string): string {
    return `${this.prefix}-${name.slice(0, MAX_CHAIN_LEN_WRAP)}`;
  }

  addChain(name: string): void {
    if (!this.rules.has(name)) this.rules.set(name, []);
  }

  add(chain: string, rule: string): void {
    const list = this.rules.get(chain);
    if (list === undefined) throw new Error(`no chain ${chain}`);
    list.push(rule);
  }

  /** As `iptables -t nat -S` prints it. */
  format(): string {
    const user = [...this.rules.keys()].filter((chain) => !BUILTIN_CHAINS.includes(chain)).sort(byteOrder);
    const lines = [...BUILTIN_CHAINS.map((chain) => `-P ${chain} ACCEPT`), ...user.map((chain) => `-N ${chain}`)];
    for (const chain of [...BUILTIN_CHAINS, ...user]) {
      for (const rule of this.rules.get(chain)!) lines.push(`-A ${chain} ${rule}`);
    }
    return `${lines.join("\n")}\n`;
  }
}

/** strcmp order, as libiptc sorts user chains (not localeCompare). */
function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A source network as iptables prints it: host bits cleared (`10.0.0.1/24` -> `10.0.0.0/24`). */
function networkOf(cidr: Cidr): string {
  return formatCidr({ addr: (cidr.addr & prefixMask(cidr.prefixLength)) >>> 0, prefixLength: cidr.prefixLength });
}

/** The nat table of `router` in `release`'s layout, as `iptables -t nat -S` prints it. */
export function generateNatRules(router: NeutronRouterDescription, release: ReleaseLayout): string {
  const table = new NatTable(chainPrefixOf(router.agent));
  const [prerouting, output, postrouting, snat, floatSnat] = ["PREROUTING", "OUTPUT", "POSTROUTING", "snat", "float-snat"].map((name) =>
    table.wrapped(name),
  ) as [string, string, string, string, string];

  // IptablesManager.__init__ (initialize_nat_table): the wrapped built-ins, the bottom chain,
  // snat and float-snat.
  for (const chain of WRAPPED_BUILTINS) {
    const wrapped = table.wrapped(chain);
    table.addChain(wrapped);
    table.add(chain, `-j ${wrapped}`);
  }
  table.addChain(POSTROUTING_BOTTOM);
  table.add("POSTROUTING", `-j ${POSTROUTING_BOTTOM}`);
  table.addChain(snat);
  // comment_rule(): a jump-only rule gets its comment first.
  table.add(POSTROUTING_BOTTOM, release.snatComment ? `-m comment --comment "${SNAT_OUT_COMMENT}" -j ${snat}` : `-j ${snat}`);
  table.addChain(floatSnat);
  table.add(snat, `-j ${floatSnat}`);

  // The metadata proxy's REDIRECT, when the router is added (metadata_nat_rules).
  if (router.metadataPort !== undefined) {
    const inInterface = release.metadataInInterface ? ` -i ${INTERNAL_DEV_PREFIX}+` : "";
    table.add(prerouting, `-d 169.254.169.254/32${inInterface} -p tcp -m tcp --dport 80 -j REDIRECT --to-ports ${router.metadataPort}`);
  }

  // The gateway's rules (_handle_router_snat_rules), with the first IPv4 address of the gateway
  // port as the SNAT address; none without a gateway or with enable_snat false.
  const gateway = router.gateway;
  if (gateway !== undefined && router.enableSnat) {
    const gatewayIp = formatIpv4(gateway.addresses[0]!.addr);
    const device = gateway.name;
    // Traffic that neither enters nor leaves the gateway and was not DNATed is not NATed.
    table.add(postrouting, `! -i ${device} ! -o ${device} -m conntrack ! --ctstate DNAT -j ACCEPT`);
    if (release.snat === "per-subnet") {
      // internal_network_nat_rules: the agent takes each interface's first fixed IP (it logs
      // "Ignoring multiple IPs on router port" for the others).
      for (const port of router.interfaces) table.add(snat, `-s ${networkOf(port.addresses[0]!)} -j SNAT --to-source ${gatewayIp}`);
    } else {
      table.add(snat, `-o ${device} -j SNAT --to-source ${gatewayIp}`);
    }
    if (release.hairpinMark !== undefined) {
      // A tenant reaching another tenant's floating IP: SNAT so the reply comes back through
      // the router to be un-DNATed; packets from outside carry the mark the mangle table set.
      table.add(snat, `-m mark ! --mark ${release.hairpinMark} -m conntrack --ctstate DNAT -j SNAT --to-source ${gatewayIp}`);
    }
  }

  // floating_forward_rules, in the order of the router's floating IPs.
  for (const fip of router.floatingIps) {
    const floating = formatIpv4(fip.floating);
    const fixed = formatIpv4(fip.fixed);
    table.add(prerouting, `-d ${floating}/32 -j DNAT --to-destination ${fixed}`);
    table.add(output, `-d ${floating}/32 -j DNAT --to-destination ${fixed}`);
    table.add(floatSnat, `-s ${fixed}/32 -j SNAT --to-source ${floating}`);
  }
  return table.format();
}
