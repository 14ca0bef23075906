/**
 * `npm run bench`: the in-memory hot path with benchmark.js, one core, the seed's rules
 * (examples/seed.yaml), 64-byte IPv4 packets in pre-built batches of 256 (see docs/performance.md).
 *
 * Measures: established SNAT flows at 64k and 1M concurrent flows (and at 64k with 1500-byte
 * packets), established inbound TCP through
 * the floating-IP DNAT, new connections (also on the seed renumbered above 128.0.0.0), route lookups on a random 1M-prefix table (and its size
 * and build time), conntrack bytes per entry at 1M entries, heap allocations per packet on the
 * established path, and per-stage costs. Writes bench/results/latest.{json,md} and hotpath.svg.
 *
 * Run with `--expose-gc` (the npm script does). `BENCH_QUICK=1` shortens every measurement;
 * `BENCH_ONLY=established64k,large,route,...` runs a subset (results then hold only those figures).
 */
import Benchmark from "benchmark";
import { writeFileSync } from "node:fs";
import { PerformanceObserver } from "node:perf_hooks";
import { getHeapSpaceStatistics } from "node:v8";
import { XorShift32 } from "../src/core/rng.js";
import { ConntrackTable } from "../src/conntrack/table.js";
import { TrackResult, track } from "../src/conntrack/track.js";
import { NatEngine } from "../src/nat/binding.js";
import { formatIpv4 } from "../src/core/addr.js";
import { Lpm4 } from "../src/route/lpm.js";
import { RoutingTable } from "../src/route/table.js";
import { syntheticInternetTable } from "../src/route/synthetic-table.js";
import { PacketInfo } from "../src/wire/packet-info.js";
import { parsePacket } from "../src/wire/validate.js";
import type { NetfilterNat } from "../src/dataplane/netfilter-nat.js";
import {
  BATCH,
  BenchClock,
  Driver,
  GATEWAY_PORT,
  PACKET_BYTES,
  PacketTemplate,
  SLOT,
  TENANT_PORT,
  establishInboundTcp,
  establishTenantFlows,
  inboundFlows,
  seedRouter,
  shuffled,
  tenantFlows,
  newConnectionWorkload,
  udpPacket,
} from "./lib/scenario.js";
import { type Figure, type HotpathResults, machine, markdown, mergeResults, svgChart } from "./lib/report.js";
import { ProgressLine } from "./lib/progress.js";

const QUICK = process.env.BENCH_QUICK === "1";
const ONLY = new Set((process.env.BENCH_ONLY ?? "").split(",").filter((s) => s !== ""));
const MAX_TIME = QUICK ? 0.5 : 3;
const gc = (globalThis as { gc?: () => void }).gc;

function wanted(name: string): boolean {
  return ONLY.size === 0 || ONLY.has(name);
}

const STEPS = ["route", "established64k", "established1m", "inbound", "new", "new-high", "memory"];
/** On stderr, only on a terminal (bench/lib/progress.ts): the results on stdout stay as they were. */
const progress = new ProgressLine("bench", STEPS.filter(wanted).length);

function log(text: string): void {
  progress.print(() => process.stdout.write(text + "\n"));
}

function collect(): void {
  if (gc) {
    gc();
    gc();
  }
}

/** Runs `fn` under benchmark.js; returns calls per second and the relative margin of error (%). */
function measure(name: string, fn: () => void): { hz: number; rme: number } {
  const bench = new Benchmark(name, fn, { maxTime: MAX_TIME, minSamples: QUICK ? 5 : 20, initCount: 1 });
  // benchmark.js runs synchronously: the progress line's clock moves once per cycle.
  if (progress.enabled) bench.on("cycle", () => progress.tick());
  bench.run({ async: false });
  if (bench.error) throw bench.error as Error;
  return { hz: bench.hz, rme: bench.stats.rme };
}

const figures: Figure[] = [];
const keepAlive: unknown[] = [];
const stages: Figure[] = [];

/** Established UDP flows tenant -> outside, SNAT to 9.186.100.2, at `count` concurrent flows. */
function establishedSnat(count: number, key: string, label: string, target: number): Driver {
  const capacity = Math.max(262_144, Math.ceil(count * 1.05));
  const started = performance.now();
  const router = seedRouter(capacity);
  const flows = tenantFlows(count, 0xc0ffee);
  const packets = establishTenantFlows(router, flows);
  const template = new PacketTemplate(packets, shuffled(count, 0x5eed));
  packets.length = 0;
  const driver = new Driver(router.dataplane);
  log(`  ${count} flows established in ${((performance.now() - started) / 1000).toFixed(1)} s (conntrack ${router.dataplane.conntrack.count})`);
  collect();
  const { pps, rme } = replayRate(key, driver, template, TENANT_PORT, GATEWAY_PORT * 2);
  figures.push({ key, label, value: pps, unit: "packets/s", target, higher: true, rme });
  log(`  ${label}: ${(pps / 1e6).toFixed(2)} Mpps ±${rme.toFixed(1)}%`);
  if (key === "established64k") {
    stageCosts(router.dataplane.conntrack, router.dataplane.nat as NetfilterNat, router.dataplane, template, driver, pps);
    allocations(driver, template, router.clock);
  }
  return driver;
}

/**
 * Benchmark `key`: the template's batches replayed in turn through `driver` from port `ingress`;
 * packets per second and the relative error. The last batch must have left by `verdict`.
 */
function replayRate(key: string, driver: Driver, template: PacketTemplate, ingress: number, verdict: number): { pps: number; rme: number } {
  let next = 0;
  const views = template.views;
  const batches = template.batches;
  const result = measure(key, () => {
    driver.run(views[next]!, ingress);
    if (++next === batches) next = 0;
  });
  checkForwarded(driver, verdict);
  return { pps: result.hz * BATCH, rme: result.rme };
}

function checkForwarded(driver: Driver, verdict: number): void {
  for (let i = 0; i < BATCH; i++) {
    if (driver.verdicts[i] !== verdict) throw new Error(`bench: packet ${i} got verdict ${driver.verdicts[i]}, expected ${verdict}`);
  }
}

/** Cumulative micro-benchmarks of the established path: copy, +parse, +conntrack, +NAT, +route. */
function stageCosts(
  conntrack: ConntrackTable,
  nat: NetfilterNat,
  dataplane: Driver["dataplane"],
  template: PacketTemplate,
  driver: Driver,
  fullPps: number,
): void {
  const info = new PacketInfo();
  const ct = new TrackResult();
  const batch = driver.batch;
  const data = batch.data;
  const views = template.views;
  const batches = template.batches;
  const routes = dataplane.routes;
  let next = 0;
  let sink = 0;
  const fastPath = dataplane.established;
  batch.count = BATCH;
  const level = (name: string, depth: number): number => {
    const r = measure(name, () => {
      data.set(views[next]!);
      if (++next === batches) next = 0;
      if (depth === 0) return;
      // as processBatch: one clock read per batch, then the batch prefetch
      conntrack.pinTime(conntrack.clock.now());
      fastPath.prefetch(batch);
      if (depth === 1) {
        conntrack.unpinTime();
        return;
      }
      for (let i = 0; i < BATCH; i++) {
        const off = i * SLOT;
        parsePacket(data, off, PACKET_BYTES, info);
        if (depth === 2) continue;
        track(conntrack, info, ct);
        if (depth === 3) continue;
        nat.prerouting(data, info, ct, TENANT_PORT);
        sink += routes.lookup(info.dst);
        nat.postrouting(data, info, ct, TENANT_PORT, GATEWAY_PORT);
      }
      conntrack.unpinTime();
    });
    return 1e9 / (r.hz * BATCH);
  };
  const copy = level("copy", 0);
  const prefetched = level("prefetch", 1);
  const parse = level("parse", 2);
  const tracked = level("track", 3);
  const natted = level("nat", 4);
  const full = 1e9 / fullPps;
  void sink;
  stages.push(
    { key: "copy", label: "copy the packet into the receive batch (bench harness; a TUN read does this)", value: copy, unit: "ns" },
    { key: "prefetch", label: "batch prefetch: clock read, conntrack bucket + entry loads", value: prefetched - copy, unit: "ns" },
    { key: "fast", label: "fast path: validate, conntrack lookup + refresh, cached route, NAT rewrite, TTL, counters", value: full - prefetched, unit: "ns" },
    { key: "total", label: "total per packet (established, 64k flows, processBatch)", value: full, unit: "ns" },
    { key: "generalParse", label: "(general path) parsePacket: validate IPv4 + UDP, fill PacketInfo", value: parse - prefetched, unit: "ns" },
    { key: "generalTrack", label: "(general path) track(): lookup, UDP refresh", value: tracked - parse, unit: "ns" },
    { key: "generalNat", label: "(general path) PREROUTING nat + route + POSTROUTING nat", value: natted - tracked, unit: "ns" },
  );
  for (const s of stages) log(`    ${s.label}: ${s.value.toFixed(1)} ns`);
}

/** Heap allocated per established packet: new-space growth and heapUsed over many packets, no GC in between. */
function allocations(driver: Driver, template: PacketTemplate, clock: BenchClock): void {
  const packets = QUICK ? 2_000_000 : 10_000_000;
  const rounds = Math.ceil(packets / BATCH);
  const views = template.views;
  const batches = template.batches;
  // warm up (optimised code must exist before measuring: compiling allocates code objects)
  let next = 0;
  for (let i = 0; i < 20_000; i++) {
    driver.run(views[next]!, TENANT_PORT);
    if (++next === batches) next = 0;
  }
  let gcs = 0;
  const observer = new PerformanceObserver((list) => {
    gcs += list.getEntries().length;
  });
  collect();
  const newSpace = (): number => getHeapSpaceStatistics().find((s) => s.space_name === "new_space")!.space_used_size;
  const h0 = process.memoryUsage().heapUsed;
  observer.observe({ entryTypes: ["gc"] });
  // Chunks of 100k packets: new-space growth over a chunk is what it allocated, unless a scavenge
  // emptied new space meanwhile (growth < 0): such chunks are left out of the average.
  const chunkRounds = Math.ceil(100_000 / BATCH);
  let grown = 0;
  let measuredRounds = 0;
  for (let done = 0; done < rounds; done += chunkRounds) {
    const n0 = newSpace();
    for (let r = 0; r < chunkRounds; r++) {
      driver.run(views[next]!, TENANT_PORT);
      if (++next === batches) next = 0;
    }
    const n1 = newSpace();
    if (n1 >= n0) {
      grown += n1 - n0;
      measuredRounds += chunkRounds;
    }
  }
  const h1 = process.memoryUsage().heapUsed;
  // Control: the one clock read per batch (processBatch pins conntrack's time with it) returns a
  // heap number from performance.now(); measured alone, the same number of times, and subtracted.
  let clockGrown = 0;
  let clockRounds = 0;
  let clockSink = 0;
  while (clockRounds < measuredRounds) {
    const n0 = newSpace();
    for (let r = 0; r < chunkRounds; r++) clockSink += clock.now();
    const n1 = newSpace();
    if (n1 >= n0) {
      clockGrown += n1 - n0;
      clockRounds += chunkRounds;
    }
  }
  const perBatchClock = clockRounds > 0 ? clockGrown / clockRounds : 0;
  void clockSink;
  // gc entries are delivered asynchronously; the synchronous bench reads them at the end (below).
  pendingAllocation = { packets: measuredRounds * BATCH, newSpace: grown, clock: perBatchClock * measuredRounds, heapUsed: h1 - h0, observer, gcs: () => gcs };
}

let pendingAllocation:
  | { packets: number; newSpace: number; clock: number; heapUsed: number; observer: PerformanceObserver; gcs: () => number }
  | undefined;

async function finishAllocations(): Promise<void> {
  if (pendingAllocation === undefined) return;
  await new Promise((resolve) => setTimeout(resolve, 50));
  const a = pendingAllocation;
  a.observer.disconnect();
  const gcs = a.gcs();
  const perPacket = Math.max(a.newSpace - a.clock, 0) / a.packets;
  figures.push({
    key: "allocPerPacket",
    label: "heap allocated per established packet",
    value: perPacket,
    unit: "bytes",
    target: 0,
    higher: false,
    note:
      `new-space growth ${a.newSpace} B over ${a.packets} packets (chunks without a scavenge), of which ${Math.round(a.clock)} B are the ` +
      `clock reads (one per batch of ${BATCH}, measured alone); heapUsed delta ${a.heapUsed} B; ${gcs} GCs during the run`,
  });
  log(
    `  allocations: ${perPacket.toFixed(4)} B/packet (new space +${a.newSpace} B over ${a.packets} packets, ` +
      `${Math.round(a.clock)} B of it the per-batch clock read; heapUsed ${a.heapUsed >= 0 ? "+" : ""}${a.heapUsed} B; ${gcs} GCs)`,
  );
}

/** The datagrams of the large-packet workload: an Ethernet MTU's worth, as a bulk transfer sends. */
const LARGE_BYTES = 1500;
/** Its batch slots: the datagram rounded up to whole cache lines. */
const LARGE_SLOT = 1536;

/**
 * Established SNAT flows (64k) replayed with 1500-byte datagrams whose UDP checksums are complete,
 * as from a sender without offloads: the per-byte work — the copy into the receive batch and the
 * L4 checksum verification (core/batch-lanes.ts) — on top of the per-packet work the 64-byte
 * figures measure. The NAT rewrite itself is incremental and does not read the payload.
 */
function establishedLarge(): void {
  const count = 65_536;
  const router = seedRouter(262_144);
  const flows = tenantFlows(count, 0xc0ffee);
  establishTenantFlows(router, flows);
  const packets: Uint8Array[] = [];
  for (let i = 0; i < count; i++) packets.push(udpPacket(flows.src[i]!, flows.dst[i]!, flows.sport[i]!, flows.dport[i]!, LARGE_BYTES));
  const template = new PacketTemplate(packets, shuffled(count, 0x5eed), LARGE_SLOT);
  packets.length = 0;
  const driver = new Driver(router.dataplane, LARGE_SLOT, LARGE_BYTES);
  collect();
  const { pps, rme } = replayRate("established64kLarge", driver, template, TENANT_PORT, GATEWAY_PORT * 2);
  const label = `established UDP with SNAT, 64k flows, ${LARGE_BYTES}-byte packets`;
  figures.push({
    key: "established64kLarge",
    label,
    value: pps,
    unit: "packets/s",
    rme,
    note: `${((pps * LARGE_BYTES * 8) / 1e9).toFixed(1)} Gbit/s of IPv4 packets; each copied into the batch (as a TUN read does) and its UDP checksum verified`,
  });
  log(`  ${label}: ${(pps / 1e6).toFixed(2)} Mpps ±${rme.toFixed(1)}% (${((pps * LARGE_BYTES * 8) / 1e9).toFixed(1)} Gbit/s)`);
}

/** Established TCP segments from outside to the floating IP 9.186.100.129:80 (DNAT to 10.0.0.2). */
function inboundTcp(): void {
  const count = 65_536;
  const router = seedRouter(262_144);
  const flows = inboundFlows(count, 0xbeef);
  const packets = establishInboundTcp(router, flows);
  const template = new PacketTemplate(packets, shuffled(count, 0xfeed));
  const driver = new Driver(router.dataplane);
  collect();
  const { pps, rme } = replayRate("inboundTcp", driver, template, GATEWAY_PORT, TENANT_PORT * 2);
  figures.push({ key: "inboundTcpDnat", label: "established inbound TCP via floating-IP DNAT, 64k flows", value: pps, unit: "packets/s", rme });
  log(`  inbound TCP DNAT: ${(pps / 1e6).toFixed(2)} Mpps ±${rme.toFixed(1)}%`);
}

/**
 * New connections: first packets of distinct UDP flows through conntrack, the nat rules (SNAT to
 * 9.186.100.2: port kept or searched), confirm. The flow pool is replayed after moving the clock
 * 31 s on, so each round's entries have expired (UDP unreplied: 30 s) and a new connection also
 * pays for freeing the dead entry it meets — the steady state of a busy router.
 */
function newConnections(renumbered: boolean): void {
  const { router, template, driver } = newConnectionWorkload(131_072, renumbered);
  const clock: BenchClock = router.clock;
  const conntrack = router.dataplane.conntrack;
  collect();
  let next = 0;
  const key = renumbered ? "newConnectionsHigh" : "newConnections";
  const r = measure(key, () => {
    driver.run(template.views[next]!, TENANT_PORT);
    if (++next === template.batches) {
      next = 0;
      clock.offset += 31;
    }
  });
  checkForwarded(driver, GATEWAY_PORT * 2);
  const cps = r.hz * BATCH;
  figures.push({
    key,
    label: renumbered ? "new connections, addresses of 128.0.0.0 and up (172.16.0.0/24 behind 198.51.100.2)" : "new connections (rules, port choice, insert)",
    value: cps,
    unit: "connections/s",
    target: 1_000_000,
    higher: true,
    rme: r.rme,
    note: `conntrack created ${conntrack.counters.created}, expired ${conntrack.counters.expired}`,
  });
  log(`  new connections${renumbered ? " (addresses of 128.0.0.0 and up)" : ""}: ${(cps / 1e3).toFixed(0)} k/s ±${r.rme.toFixed(1)}%`);
}

function routeLookups(): void {
  const rng = new XorShift32(0x1f2e3d4c);
  const prefixes = syntheticInternetTable(1_000_000, rng);
  collect();
  const before = process.memoryUsage();
  const started = performance.now();
  const lpm = new Lpm4();
  lpm.insertAll(prefixes);
  const buildMs = performance.now() - started;
  collect();
  const after = process.memoryUsage();
  const measured = after.heapUsed + after.arrayBuffers - (before.heapUsed + before.arrayBuffers);
  const addresses = new Uint32Array(1 << 20);
  for (let i = 0; i < addresses.length; i++) addresses[i] = rng.next();
  const mask = addresses.length - 1;
  let at = 0;
  let sink = 0;
  const PER_CALL = 1024;
  const r = measure("route", () => {
    let s = 0;
    for (let i = 0; i < PER_CALL; i++) s += lpm.lookup(addresses[(at + i) & mask]!);
    at = (at + PER_CALL) & mask;
    sink += s;
  });
  void sink;
  const lps = r.hz * PER_CALL;
  figures.push(
    { key: "routeLookups", label: "route lookups, random addresses, 1M prefixes", value: lps, unit: "lookups/s", target: 30e6, higher: true, rme: r.rme },
    { key: "routeBytes", label: "route table size, 1M prefixes", value: lpm.byteLength(), unit: "bytes", target: 112 * 2 ** 20, higher: false, note: `heap+arrayBuffers growth ${measured} B` },
    { key: "routeBuildMs", label: "route table build, 1M prefixes", value: buildMs, unit: "ms", target: 2000, higher: false },
  );
  log(`  route: ${(lps / 1e6).toFixed(1)} M lookups/s, ${(lpm.byteLength() / 2 ** 20).toFixed(1)} MiB (measured ${(measured / 2 ** 20).toFixed(1)} MiB), built in ${buildMs.toFixed(0)} ms`);

  // The control plane: the same prefixes as a routes file's `ip route add` lines (parsed, the
  // gateway resolved, the chain and the LPM updated), as `qnat run` loads a full table; then
  // lookups through RoutingTable (route id, then its egress port), as the general path makes them.
  const table = new RoutingTable(["qg"]);
  table.addConnected(0, 0x09ba6402, 24); // 9.186.100.2/24
  const texts = prefixes
    .filter((p) => !(p.prefixLength === 24 && p.prefix === 0x09ba6400))
    .map((p, i) => `${formatIpv4(p.prefix)}/${p.prefixLength} via 9.186.100.${1 + (i % 8)}`);
  collect();
  const addStarted = performance.now();
  for (const text of texts) table.addRoute(text);
  const addSeconds = (performance.now() - addStarted) / 1000;
  figures.push({ key: "routeAdds", label: `routes added as \`ip route add\` text, ${Math.round(texts.length / 1000)}k prefixes`, value: texts.length / addSeconds, unit: "routes/s" });
  figures.push({ key: "routeTableLoadMs", label: `routing table load, ${Math.round(texts.length / 1000)}k \`ip route\` lines`, value: addSeconds * 1000, unit: "ms", target: 5000, higher: false });
  log(`  ip route add: ${texts.length} routes in ${(addSeconds * 1000).toFixed(0)} ms`);
  let tableSink = 0;
  const rt = measure("routingTable", () => {
    let s = 0;
    for (let i = 0; i < PER_CALL; i++) {
      const id = table.lookup(addresses[(at + i) & mask]!);
      s += id < 0 ? -1 : table.routePort(id);
    }
    at = (at + PER_CALL) & mask;
    tableSink += s;
  });
  void tableSink;
  const tableLps = rt.hz * PER_CALL;
  figures.push({ key: "routingTableLookups", label: "RoutingTable lookups (route and its port), random addresses, 1M routes", value: tableLps, unit: "lookups/s", target: 30e6, higher: true, rme: rt.rme });
  log(`  RoutingTable: ${(tableLps / 1e6).toFixed(1)} M lookups/s at ${texts.length} routes`);
}

/** Conntrack (+ NAT by-source index) bytes per entry with 1M live entries, from heap + arrayBuffers growth. */
function conntrackMemory(): void {
  const entries = 1_000_000;
  collect();
  const before = process.memoryUsage();
  const clock = new BenchClock();
  const table = new ConntrackTable({ capacity: entries, clock, seed: 1 });
  collect();
  const afterTable = process.memoryUsage();
  const engine = new NatEngine(table, new XorShift32(3));
  // Held in a module variable: a local the optimiser sees as dead may be collected before `after`.
  keepAlive.push(table, engine);
  const rng = new XorShift32(99);
  for (let i = 0; i < entries; i++) {
    const id = table.create(17, (0x0a000000 | (i & 0xffff)) >>> 0, rng.next(), 1024 + (i >>> 16), 53);
    table.refresh(id, 30, clock.now());
    table.confirm(id);
  }
  collect();
  const after = process.memoryUsage();
  if (table.count !== entries) throw new Error(`bench: conntrack holds ${table.count}, expected ${entries}`);
  const tableBytes = afterTable.heapUsed + afterTable.arrayBuffers - (before.heapUsed + before.arrayBuffers);
  const total = after.heapUsed + after.arrayBuffers - (before.heapUsed + before.arrayBuffers);
  figures.push({
    key: "conntrackBytesPerEntry",
    label: "conntrack memory per entry at 1M entries (with NAT index)",
    value: total / entries,
    unit: "bytes",
    target: 128,
    higher: false,
    note: `table alone ${(tableBytes / entries).toFixed(1)} B/entry (its own count: ${(table.memoryBytes / entries).toFixed(1)})`,
  });
  log(`  conntrack: ${(total / entries).toFixed(1)} B/entry with NAT index; table alone ${(tableBytes / entries).toFixed(1)} B/entry`);
}

async function main(): Promise<void> {
  if (!gc) log("warning: run with --expose-gc for the memory and allocation figures");
  const m = machine();
  log(`qnat hot path bench — ${m.cpu}, ${m.cores} cores, Node ${m.node}${QUICK ? " (quick)" : ""}`);
  // Route lookups first: on a 1M-prefix table, after the seed's 3-route table warmed Lpm4.lookup
  // with its /16-summary branch taken, V8's code for it is slower (production has one table).
  if (wanted("route")) {
    progress.step("route lookups");
    log("route lookups");
    routeLookups();
    collect();
  }
  if (wanted("established64k")) {
    progress.step("established SNAT, 64k flows");
    log("established SNAT, 64k flows");
    establishedSnat(65_536, "established64k", "established UDP with SNAT, 64k flows", 10e6);
    await finishAllocations();
    collect();
  }
  if (wanted("established1m")) {
    progress.step("established SNAT, 1M flows");
    log("established SNAT, 1M flows");
    establishedSnat(1_000_000, "established1m", "established UDP with SNAT, 1M flows", 5e6);
    collect();
  }
  if (wanted("large")) {
    progress.step("established SNAT, 1500-byte packets");
    log("established SNAT, 64k flows, 1500-byte packets");
    establishedLarge();
    collect();
  }
  if (wanted("inbound")) {
    progress.step("established inbound TCP through the floating IP");
    log("established inbound TCP through the floating IP");
    inboundTcp();
    collect();
  }
  if (wanted("new")) {
    progress.step("new connections");
    log("new connections");
    newConnections(false);
    collect();
  }
  if (wanted("new-high")) {
    progress.step("new connections, addresses of 128.0.0.0 and up");
    log("new connections, addresses of 128.0.0.0 and up");
    newConnections(true);
    collect();
  }
  if (wanted("memory")) {
    progress.step("conntrack memory");
    log("conntrack memory");
    conntrackMemory();
  }
  const results: HotpathResults = { date: new Date().toISOString(), machine: m, figures, stages };
  const dir = process.env.BENCH_OUT ?? "bench/results";
  mergeResults(`${dir}/latest.json`, "hotpath", results);
  writeFileSync(`${dir}/latest.md`, markdown(results));
  writeFileSync(`${dir}/hotpath.svg`, svgChart(results));
  progress.done();
  log(`wrote ${dir}/latest.json, latest.md, hotpath.svg`);
}

await main();
