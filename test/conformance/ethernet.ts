/**
 * The TAP-mode scenarios: what only an Ethernet segment has, compared between the kernel twin
 * (veths on the same bridges, Linux's ARP and neighbour table, net/ipv4/arp.c and
 * net/core/neighbour.c) and qnat's TAP ports (issue 12):
 *   - ARP: `arping` from each lab host for the router's address on its port, answered with the
 *     port's MAC; for another port's address (Linux answers for any local address, arp_ignore=0);
 *     for an address nobody has (no answer, no proxy ARP);
 *   - a dead neighbour on a connected subnet: UDP and TCP get ICMP host unreachable once the
 *     router's three ARP probes, 1 s apart, went unanswered (Plan, compared as the other scenarios);
 *   - traceroute to that neighbour: the last hop prints `!H`.
 * Commands' outputs are compared after removing what is timing (milliseconds).
 */
import { formatIpv4, prefixMask } from "../../src/core/addr.js";
import type { PortConfig, RouterConfig } from "../../src/config/config.js";
import { labDeviceOf, labPortOf } from "../../src/control/host-setup.js";
import { spawn } from "node:child_process";
import type { ConformancePair, Plan, ScenarioResult, SectionResult, Side } from "./harness.js";
import { topologyOf, UDP_SERVER, TCP_SERVER } from "./scenarios.js";

/** One command run in a namespace (its original name) on both sides. */
export interface CommandRun {
  ns: string;
  argv: string[];
}

/** A scenario made of commands (arping, traceroute) whose normalised outputs must be equal. */
export interface CommandCheck {
  name: string;
  runs: CommandRun[];
  /** The lines of one run's output that are compared. */
  normalise(output: string): string[];
  knownBug?: string;
}

/**
 * The `nth` (from 0) host address of the port's first subnet, from its middle up, that no port and
 * no lab host has: a neighbour nobody answers for. Each scenario takes its own, so one's FAILED
 * neighbour entry does not shorten another's resolution.
 */
export function deadNeighbourOn(config: RouterConfig, port: PortConfig, nth = 0): string | undefined {
  const subnet = port.addresses.find((a) => a.prefixLength <= 30)!;
  const mask = prefixMask(subnet.prefixLength);
  const network = (subnet.addr & mask) >>> 0;
  const used = new Set<number>([...config.ports.flatMap((p) => p.addresses.map((a) => a.addr)), ...config.lab.flatMap((h) => h.addresses.map((a) => a.addr))]);
  const size = 2 ** (32 - subnet.prefixLength);
  // From the middle of the subnet up: clear of the low addresses configs give routers and hosts.
  let left = nth;
  for (let offset = Math.floor(size / 2) + 27; offset < size - 1; offset++) {
    const candidate = (network + offset) >>> 0;
    if (!used.has(candidate) && left-- === 0) return formatIpv4(candidate);
  }
  return undefined;
}

/** `arping` output -> who answered with which MAC, and how many answers (times removed). */
export function arpingLines(output: string): string[] {
  const lines: string[] = [];
  for (const line of output.split("\n")) {
    const reply = /^Unicast reply from (\S+) \[([0-9A-Fa-f:]+)\]/.exec(line);
    if (reply) lines.push(`reply from ${reply[1]} [${reply[2]!.toLowerCase()}]`);
    const received = /^Received (\d+) response/.exec(line);
    if (received) lines.push(`received ${received[1]}`);
  }
  return lines;
}

/** `traceroute -n -q 1` output -> hops with their addresses and annotations (`!H`), times removed. */
export function tracerouteLines(output: string): string[] {
  return output
    .split("\n")
    .filter((line) => /^\s*\d+\s/.test(line))
    .map((line) => line.trim().replace(/\s+[\d.]+ ms/g, "").replace(/\s+/g, " "));
}

/** The arping and traceroute checks of a TAP config. */
export function commandChecksFor(config: RouterConfig): CommandCheck[] {
  const t = topologyOf(config);
  const gatewayPort = config.ports.find((p) => formatIpv4(p.addresses[0]!.addr) === t.gatewayAddress)!;
  const arping = (host: RouterConfig["lab"][number], target: string): CommandRun => ({
    ns: host.namespace,
    argv: ["arping", "-c", "2", "-w", "4", "-I", labDeviceOf(config, host), target],
  });
  const checks: CommandCheck[] = [];
  checks.push({
    name: "arping from every lab host for the router's address on its port: answered with the port's MAC",
    runs: config.lab.map((host) => arping(host, formatIpv4(labPortOf(config, host).addresses[0]!.addr))),
    normalise: arpingLines,
  });
  const inside = config.lab.find((h) => h.namespace === t.inside[0]?.ns);
  if (inside !== undefined && labPortOf(config, inside) !== gatewayPort) {
    checks.push({
      name: `arping from ${inside.namespace} for the gateway port's ${t.gatewayAddress}: Linux answers for any local address (arp_ignore=0)`,
      runs: [arping(inside, t.gatewayAddress)],
      normalise: arpingLines,
    });
    const nobody = deadNeighbourOn(config, labPortOf(config, inside));
    if (nobody !== undefined) {
      checks.push({ name: `arping from ${inside.namespace} for ${nobody}, which nobody has: no answer (no proxy ARP)`, runs: [arping(inside, nobody)], normalise: arpingLines });
    }
  }
  const dead = deadNeighbourOn(config, gatewayPort, 1);
  if (inside !== undefined && dead !== undefined) {
    checks.push({
      name: `traceroute from ${inside.namespace} to ${dead}, a dead neighbour on the gateway's subnet: !H`,
      runs: [{ ns: inside.namespace, argv: ["traceroute", "-n", "-q", "1", "-w", "8", "-m", "2", dead] }],
      normalise: tracerouteLines,
      // traceroute's packets leave from the host's first address.
    });
  }
  return checks;
}

/** The Plans of a TAP config: UDP and TCP to a dead neighbour get ICMP host unreachable. */
export function ethernetPlansFor(config: RouterConfig): Plan[] {
  const t = topologyOf(config);
  const gatewayPort = config.ports.find((p) => formatIpv4(p.addresses[0]!.addr) === t.gatewayAddress)!;
  const dead = deadNeighbourOn(config, gatewayPort);
  const first = t.inside[0];
  if (dead === undefined || first === undefined) return [];
  return [
    {
      name: `UDP and TCP to ${dead}, a dead neighbour on the gateway's subnet: ICMP host unreachable after the ARP probes`,
      steps: [
        [
          {
            ns: first.ns,
            actions: [
              { kind: "udp", src: first.addr, sport: 44100, dst: dead, dport: UDP_SERVER, size: 100, wait: 8 },
              { kind: "tcp", src: first.addr, sport: 44101, dst: dead, dport: TCP_SERVER, size: 100, close: "fin", wait: 8 },
            ],
          },
        ],
      ],
      knownPorts: [44100, 44101, UDP_SERVER, TCP_SERVER],
      conntrack: (e) => e.original.sport === 44100 || e.original.sport === 44101,
    },
  ];
}

/** A command's stdout; arping and traceroute exit non-zero when nothing answers, which is an outcome here, not a failure. */
function outputOf(netns: string, argv: readonly string[], limitMs = 30_000): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn("ip", ["netns", "exec", netns, ...argv], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), limitMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code === null || (stdout === "" && code !== 0)) reject(new Error(`${argv.join(" ")} in ${netns} failed: ${stderr.trim() || "killed"}`));
      else resolvePromise(stdout);
    });
  });
}

function outputsOf(side: Side, check: CommandCheck): Promise<string[][]> {
  return Promise.all(check.runs.map(async (command) => check.normalise(await outputOf(side.ns(command.ns), command.argv))));
}

/** Runs a command check on both routers of the pair and compares, as ConformancePair.run does for a Plan. */
export async function runCommandCheck(pair: ConformancePair, check: CommandCheck): Promise<ScenarioResult> {
  const started = Date.now();
  const [kernel, qnat] = await Promise.all([outputsOf(pair.kernel, check), outputsOf(pair.qnat, check)]);
  const sections: SectionResult[] = check.runs.map((command, i) => {
    const k = kernel[i]!;
    const q = qnat[i]!;
    return { section: `${command.argv[0]} in ${command.ns}`, kernel: k, qnat: q, equal: k.length === q.length && k.every((line, j) => line === q[j]), allowed: [] };
  });
  // A retry (vitest's) is the next attempt of the same check, as ConformancePair.run counts them.
  const attempt = pair.results.filter((r) => r.name === check.name).length + 1;
  const result: ScenarioResult = { name: check.name, sections, agree: sections.every((s) => s.equal), ms: Date.now() - started, knownBug: check.knownBug, notes: [], attempt };
  pair.results.push(result);
  return result;
}
