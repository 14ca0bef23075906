/**
 * The Prometheus exposition of a router, read from the dataplane's own counters: traffic through
 * an in-memory seed router moves the metrics a scrape shows.
 */
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { parseConfig } from "../../src/config/config.js";
import { MetricsExporter } from "../../src/control/metrics.js";
import { parseConfigRules } from "../../src/control/host-setup.js";
import { carryOverCounters, diffConfigs, formatDifference } from "../../src/control/live-apply.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import { NetfilterNat } from "../../src/dataplane/netfilter-nat.js";
import { LoopStats } from "../../src/io/loop-stats.js";
import { XorShift32 } from "../../src/core/rng.js";
import { TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const TENANT = "qr-694450d6-f6";
const GATEWAY = "qg-e76de35e-90";

/** One sample line of the text format: name, labels, value. */
interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** Parses the text exposition format (https://prometheus.io/docs/instrumenting/exposition_formats/). */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line.startsWith("# TYPE ")) {
      const [, , name, type] = line.split(" ");
      types.set(name!, type!);
      continue;
    }
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]!] = pair[2]!;
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return { samples, types };
}

function value(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length !== 1) throw new Error(`${name}${JSON.stringify(labels)}: ${found.length} samples`);
  return found[0]!.value;
}

/** Runs the router's legs as the live loop does: each batch counted by the loop's stats. */
function run(router: MemoryRouter, loop: LoopStats): void {
  for (let round = 0; round < 100; round++) {
    let moved = 0;
    for (let leg = 0; leg < router.legs.length; leg++) {
      const started = performance.now();
      moved += loop.pump(router.forwarder, leg);
      loop.wakeUpDone(started);
    }
    if (moved === 0) return;
  }
}

describe("metrics: the Prometheus exposition of the seed router", () => {
  it("counts 10.0.0.3's pings to the outside on both ports, in conntrack and in the SNAT rule", async () => {
    const router = MemoryRouter.fromFile();
    const loop = new LoopStats();
    const exporter = new MetricsExporter({ dataplane: () => router.dataplane, loop, censusMaxAgeMs: 0 });

    const before = parseExposition(await exporter.scrape());
    expect(before.types.get("qnat_port_receive_packets_total")).toBe("counter");
    expect(before.types.get("qnat_conntrack_entries")).toBe("gauge");
    expect(before.types.get("qnat_batch_packets")).toBe("histogram");
    expect(value(before.samples, "qnat_port_receive_packets_total", { port: TENANT, leg: "wire" })).toBe(0);
    expect(value(before.samples, "qnat_conntrack_inserts_total")).toBe(0);

    // Three pings from 10.0.0.3 and a TCP SYN from 10.0.0.2 (floating IP 9.186.100.129) in one batch.
    for (let seq = 1; seq <= 3; seq++) {
      router.send(TENANT, { src: "10.0.0.3", dst: "203.0.113.10", protocol: "icmp", icmpType: 8, icmpId: 7, icmpSeq: seq, payload: new Uint8Array(56) });
    }
    router.send(TENANT, { src: "10.0.0.2", dst: "203.0.113.10", protocol: "tcp", sport: 40000, dport: 80, tcpFlags: TCP_SYN });
    run(router, loop);
    const out = router.received(GATEWAY);
    expect(out.map((p) => p.src)).toEqual(["9.186.100.2", "9.186.100.2", "9.186.100.2", "9.186.100.129"]);

    const after = parseExposition(await exporter.scrape());
    const s = after.samples;
    expect(value(s, "qnat_port_receive_packets_total", { port: TENANT, leg: "wire" })).toBe(4);
    expect(value(s, "qnat_port_transmit_packets_total", { port: GATEWAY, leg: "wire" })).toBe(4);
    expect(value(s, "qnat_port_transmit_bytes_total", { port: GATEWAY, leg: "wire" })).toBe(3 * 84 + 40);
    expect(value(s, "qnat_conntrack_inserts_total")).toBe(2);
    expect(value(s, "qnat_conntrack_entries", { protocol: "icmp", state: "UNREPLIED" })).toBe(1);
    expect(value(s, "qnat_conntrack_entries", { protocol: "tcp", state: "SYN_SENT" })).toBe(1);
    expect(value(s, "qnat_nat_bindings", { type: "snat" })).toBe(2);
    // The pings' connection was bound by the default SNAT rule, the SYN's by the floating IP's.
    expect(value(s, "qnat_nat_rule_bindings_total", { chain: "neutron-vpn-agen-snat", target: "SNAT" })).toBe(1);
    expect(value(s, "qnat_nat_rule_bindings_total", { chain: "neutron-vpn-agen-float-snat", target: "SNAT" })).toBe(1);
    expect(value(s, "qnat_nat_rule_port_allocation_failures_total", { rule: "policy" })).toBe(0);
    // One batch of 4 packets from the tenant's wire (the pings' and the SYN's), nothing else read.
    expect(value(s, "qnat_batch_packets_bucket", { le: "2" })).toBe(0);
    expect(value(s, "qnat_batch_packets_bucket", { le: "4" })).toBe(1);
    expect(value(s, "qnat_batch_packets_count")).toBe(1);
    expect(value(s, "qnat_batch_packets_sum")).toBe(4);
    expect(value(s, "qnat_loop_busy_seconds_count")).toBeGreaterThan(0);
  });

  it("counts a drop by its reason against the port it came in on", async () => {
    const router = MemoryRouter.fromFile();
    const exporter = new MetricsExporter({ dataplane: () => router.dataplane });
    router.send(TENANT, { src: "10.0.0.3", dst: "203.0.113.10", protocol: "udp", sport: 5000, dport: 53, ttl: 1, payload: new Uint8Array(8) });
    router.run();
    const s = parseExposition(await exporter.scrape()).samples;
    expect(value(s, "qnat_port_drops_total", { port: TENANT, reason: "ttl-exceeded" })).toBe(1);
    expect(value(s, "qnat_port_drops_total", { port: GATEWAY, reason: "ttl-exceeded" })).toBe(0);
    expect(value(s, "qnat_port_icmp_errors_sent_total", { port: TENANT })).toBe(1);
  });

  it("counts a connection the SNAT rule had no free port for against that rule", async () => {
    // The seed's default SNAT narrowed to one UDP port: the second flow to the same server cannot get it.
    const seed = readFileSync("examples/seed.yaml", "utf8");
    const narrowed = seed.replace(
      "-A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2",
      "-A neutron-vpn-agen-snat -s 10.0.0.0/24 -p udp -j SNAT --to-source 9.186.100.2:1000",
    );
    expect(narrowed).not.toBe(seed);
    const router = new MemoryRouter(parseConfig(narrowed, "narrowed.yaml"));
    const exporter = new MetricsExporter({ dataplane: () => router.dataplane, censusMaxAgeMs: 0 });
    router.send(TENANT, { src: "10.0.0.3", dst: "203.0.113.10", protocol: "udp", sport: 5000, dport: 53 });
    router.send(TENANT, { src: "10.0.0.4", dst: "203.0.113.10", protocol: "udp", sport: 5000, dport: 53 });
    router.run();
    expect(router.received(GATEWAY).map((p) => `${p.src}:${p.sport}`)).toEqual(["9.186.100.2:1000"]);
    const s = parseExposition(await exporter.scrape()).samples;
    const rule = { chain: "neutron-vpn-agen-snat", rule: "2", target: "SNAT" };
    expect(value(s, "qnat_nat_rule_bindings_total", rule)).toBe(1);
    expect(value(s, "qnat_nat_rule_port_allocation_failures_total", rule)).toBe(1);
    expect(value(s, "qnat_port_drops_total", { port: TENANT, reason: "nat-no-free-tuple" })).toBe(1);
    expect(value(s, "qnat_nat_bindings", { type: "snat" })).toBe(1);
  });
});

describe("metrics across qnat apply", () => {
  const seedText = readFileSync("examples/seed.yaml", "utf8");
  const load = (text: string) => {
    const config = parseConfig(text, "router.yaml");
    return { config, rules: parseConfigRules(config) };
  };

  it("apply turns the endpoint on, moves it and turns it off, and says so", () => {
    const off = load(seedText);
    const on = load(`${seedText}metrics: { listen: 0.0.0.0:9100 }\n`);
    const moved = load(`${seedText}metrics: { listen: 127.0.0.1:9464 }\n`);
    expect(formatDifference(diffConfigs(off.config, off.rules, on.config, on.rules), on.config)).toEqual(["~ metrics off -> 0.0.0.0:9100"]);
    expect(formatDifference(diffConfigs(on.config, on.rules, moved.config, moved.rules), moved.config)).toEqual(["~ metrics 0.0.0.0:9100 -> 127.0.0.1:9464"]);
    expect(formatDifference(diffConfigs(moved.config, moved.rules, off.config, off.rules), off.config)).toEqual(["~ metrics 127.0.0.1:9464 -> off"]);
  });

  it("a rule's port-allocation failures survive a live change that keeps the rule", () => {
    const { config } = load(seedText);
    const running = buildDataplane(config, { rng: new XorShift32(1) });
    const before = (running.nat as NetfilterNat).rules;
    before.allocationFailures.fill(3);
    const next = buildDataplane(config, { successorOf: running });
    carryOverCounters(running, next);
    expect([...(next.nat as NetfilterNat).rules.allocationFailures]).toEqual([...before.allocationFailures]);
  });
});
