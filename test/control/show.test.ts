import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  collectPorts,
  collectStats,
  formatJson,
  formatPorts,
  formatStats,
  type LegCounters,
  type PortView,
  type StatsView,
} from "../../src/control/show.js";
import { controlRequest, serveControl } from "../../src/control/socket.js";
import { parseIpv4 } from "../../src/core/addr.js";
import { XorShift32 } from "../../src/core/rng.js";
import { buildPacket } from "../../src/wire/build.js";
import { IPPROTO_UDP } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";
import { loadConfig } from "../../src/config/config.js";
import { DROP_REASON_COUNT, DropReason } from "../../src/core/drop-reason.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import { PortCounter } from "../../src/dataplane/pipeline.js";
import { addDataplaneCounters, countersOf } from "../../src/io/worker-protocol.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

const legs = (rxPackets: number, rxBytes: number, txPackets: number, txBytes: number): LegCounters => ({ rxPackets, rxBytes, txPackets, txBytes });
const idle = legs(0, 0, 0, 0);

// The seed's router after 10.0.0.3 pinged out a few times and 10.0.0.2 asked for its metadata.
const seedPorts: PortView[] = [
  {
    index: 0,
    name: QR,
    addresses: ["10.0.0.1/24"],
    mtu: 1500,
    wire: { namespace: "qnat-tenant", device: "eth0" },
    counters: { wire: legs(12, 1234, 10, 1000), mirror: legs(2, 168, 1, 84) },
  },
  {
    index: 1,
    name: QG,
    addresses: ["9.186.100.2/24", "9.186.100.129/32"],
    mtu: 1500,
    wire: { namespace: "qnat-external", device: "eth0" },
    counters: { wire: legs(10, 1000, 12, 1234567890), mirror: idle },
  },
];

const seedStats: StatsView = {
  ports: [
    { index: 0, name: QR, wire: legs(12, 1234, 10, 1000), mirror: legs(2, 168, 1, 84), icmpErrorsSent: 1, drops: { "no-route": 3, "ttl-exceeded": 1 } },
    { index: 1, name: QG, wire: idle, mirror: idle, icmpErrorsSent: 0, drops: {} },
  ],
  conntrack: {
    count: 3,
    capacity: 262144,
    memoryBytes: 20 * 1024 * 1024,
    counters: { found: 10, invalid: 0, invalidChecksum: 0, ignore: 0, created: 3, inserted: 3, insertFailed: 0, earlyDrop: 0, dropFull: 0, expired: 0, released: 0, removed: 0, tcpInvalidFlags: 0, tcpInvalidState: 0, tcpOutOfWindow: 0, tcpRstOutOfWindow: 0, tcpWindowIgnore: 0 },
    chains: { lookups: 25, nodesWalked: 13, longestWalk: 2 },
  },
  metadata: { served: 2, notFound: 1, methodNotAllowed: 0 },
};

describe("qnat show ports", () => {
  it("prints one block per port: addresses, legs, counters aligned across ports", () => {
    expect(formatPorts(seedPorts)).toBe(
      [
        "0: qr-694450d6-f6: mtu 1500",
        "    inet 10.0.0.1/24",
        "    wire eth0 in qnat-tenant, mirror qr-694450d6-f6 in the router namespace",
        "            RX packets  RX bytes  TX packets    TX bytes",
        "    wire            12      1234          10        1000",
        "    mirror           2       168           1          84",
        "1: qg-e76de35e-90: mtu 1500",
        "    inet 9.186.100.2/24",
        "    inet 9.186.100.129/32",
        "    wire eth0 in qnat-external, mirror qg-e76de35e-90 in the router namespace",
        "            RX packets  RX bytes  TX packets    TX bytes",
        "    wire            10      1000          12  1234567890",
        "    mirror           0         0           0           0",
      ].join("\n"),
    );
  });

  it("--json is the same data", () => {
    expect(JSON.parse(formatJson(seedPorts))).toEqual(seedPorts);
  });

  it("no ports, no text", () => {
    expect(formatPorts([])).toBe("");
  });
});

describe("qnat show stats", () => {
  it("prints totals, conntrack as conntrack -S, then per port counters and drops by reason", () => {
    expect(formatStats(seedStats)).toBe(
      [
        "packets: received 14, sent 11, dropped 4, icmp errors sent 1",
        "conntrack: 3 entries, max 262144 (0.0%), 20.0 MiB",
        "    found=10 invalid=0 invalid_checksum=0 ignore=0 created=3 inserted=3",
        "    insert_failed=0 early_drop=0 drop_full=0 expired=0 released=0 removed=0",
        "    tcp_invalid_flags=0 tcp_invalid_state=0 tcp_out_of_window=0",
        "    tcp_rst_out_of_window=0 tcp_window_ignore=0",
        "    hash chains: 25 lookups walked 13 nodes (0.52 per lookup), longest walk 2",
        "port 0: qr-694450d6-f6",
        "            RX packets  RX bytes  TX packets  TX bytes",
        "    wire            12      1234          10      1000",
        "    mirror           2       168           1        84",
        "    icmp errors sent: 1",
        "    drops: 4",
        "        no-route      3",
        "        ttl-exceeded  1",
        "port 1: qg-e76de35e-90",
        "            RX packets  RX bytes  TX packets  TX bytes",
        "    wire             0         0           0         0",
        "    mirror           0         0           0         0",
        "    icmp errors sent: 0",
        "    drops: none",
        "metadata: served 2, not found 1, method not allowed 0",
      ].join("\n"),
    );
  });

  it("leaves the metadata line out when the router serves no metadata", () => {
    const { metadata: _unused, ...withoutMetadata } = seedStats;
    expect(formatStats(withoutMetadata)).not.toContain("metadata");
    expect(formatStats({ ...withoutMetadata, conntrack: { ...withoutMetadata.conntrack, count: 1 } })).toContain("conntrack: 1 entry, max 262144");
  });

  it("--json is the same data", () => {
    expect(JSON.parse(formatJson(seedStats))).toEqual(seedStats);
  });

  it("leaves the hash chain line out of a view without chain statistics", () => {
    const { chains: _unused, ...withoutChains } = seedStats.conntrack;
    expect(formatStats({ ...seedStats, conntrack: withoutChains })).not.toContain("hash chains");
  });
});

describe("qnat show stats of a router with workers: N", () => {
  it("the totals are every thread's, and each thread's packets follow them", () => {
    const text = formatStats({
      ...seedStats,
      workers: [
        { worker: 0, rxPackets: 8, txPackets: 6, drops: 3, running: true },
        { worker: 1, rxPackets: 6, txPackets: 5, drops: 1, running: false },
      ],
    });
    expect(text.split("\n").slice(0, 5)).toEqual([
      "packets: received 14, sent 11, dropped 4, icmp errors sent 1",
      "workers: 2",
      "    0 (main thread): received 8, sent 6, dropped 3",
      "    1: received 6, sent 5, dropped 1 (STOPPED: failed too often)",
      "conntrack: 3 entries, max 262144 (0.0%), 20.0 MiB",
    ]);
  });

  it("collects one router from two dataplanes' counters: packets, drops and conntrack counters added, the table's size the shared one's", () => {
    const config = loadConfig("examples/seed.yaml");
    const main = buildDataplane(config);
    const worker = buildDataplane(config);
    // 10.0.0.3's packets into the tenant port's wire leg: 5 on the main thread's queue, 7 on the worker's.
    main.portCounters[PortCounter.RxPackets] = 5;
    worker.portCounters[PortCounter.RxPackets] = 7;
    worker.drops[DROP_REASON_COUNT + DropReason.NoRoute] = 2;
    worker.conntrack.counters.created = 4;
    const stats = collectStats(main, undefined, addDataplaneCounters(countersOf(main), [countersOf(worker)]));
    expect(stats.ports[0]!.wire.rxPackets).toBe(12);
    expect(stats.ports[1]!.drops).toEqual({ "no-route": 2 });
    expect(stats.conntrack.counters.created).toBe(4);
    expect(stats.conntrack.capacity).toBe(main.conntrack.capacity);
    expect(collectPorts(main, [], undefined, addDataplaneCounters(countersOf(main), [countersOf(worker)]))[0]!.counters.wire.rxPackets).toBe(12);
    // Without the sum, the main thread's own.
    expect(collectStats(main).ports[0]!.wire.rxPackets).toBe(5);
  });
});

describe("show stats makes a hash collision flood visible", () => {
  const OUTSIDE = "9.186.100.1";
  const FLOATING = "9.186.100.129";
  const FLOOD = 48;

  /** UDP source ports from 9.186.100.1 to the floating IP's port 53 whose tuples share one conntrack bucket of `router`. */
  function aimedPorts(router: MemoryRouter): number[] {
    const table = router.dataplane.conntrack;
    const src = parseIpv4(OUTSIDE);
    const dst = parseIpv4(FLOATING);
    const target = table.bucketOf(IPPROTO_UDP, src, dst, 1024, 53);
    const ports: number[] = [];
    for (let sport = 1024; sport < 65536 && ports.length < FLOOD; sport++) {
      if (table.bucketOf(IPPROTO_UDP, src, dst, sport, 53) === target) ports.push(sport);
    }
    return ports;
  }

  /** Each port sends twice: the first packet creates its connection, the second finds it. */
  function flood(router: MemoryRouter, ports: readonly number[]): StatsView {
    for (let round = 0; round < 2; round++) {
      for (const sport of ports) router.send(QG, buildPacket({ protocol: "udp", src: OUTSIDE, dst: FLOATING, sport, dport: 53, payload: new Uint8Array(8) }));
      router.run();
      expect(router.received(QR)).toHaveLength(ports.length); // all DNATed to 10.0.0.2
    }
    return collectStats(router.dataplane);
  }

  it("48 flows aimed at one bucket under the router's key: the longest walk is the chain, 48 nodes", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 1024 });
    const ports = aimedPorts(router);
    expect(ports).toHaveLength(FLOOD);
    const chains = flood(router, ports).conntrack.chains!;
    expect(chains.longestWalk).toBeGreaterThanOrEqual(FLOOD);
    expect(chains.nodesWalked / chains.lookups).toBeGreaterThan(8);
    expect(formatStats(collectStats(router.dataplane))).toMatch(new RegExp(`longest walk ${chains.longestWalk}\n`));
  });

  it("the same flows at a router with another key spread over the buckets", () => {
    const aimedAtSeed42 = aimedPorts(MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 1024 }));
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 1024, rng: new XorShift32(43) });
    const chains = flood(router, aimedAtSeed42).conntrack.chains!;
    expect(chains.longestWalk).toBeLessThanOrEqual(4);
    expect(chains.nodesWalked / chains.lookups).toBeLessThan(1.5);
  });
});

describe("views collected from the seed's running router", () => {
  it("counts a ping to the router's own address on the wire leg in and the mirror out", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { withoutNat: true });
    const ping = buildPacket({ protocol: "icmp", src: "10.0.0.2", dst: "10.0.0.1", icmpType: 8, icmpId: 1, icmpSeq: 1 });
    router.send(QR, ping);
    router.run();
    expect(router.delivered(QR)).toHaveLength(1);

    const ports = collectPorts(
      router.dataplane,
      router.config.ports.map((p) => p.wire),
    );
    expect(ports.map((p) => [p.index, p.name, p.addresses, p.mtu, p.wire])).toEqual([
      [0, QR, ["10.0.0.1/24"], 1500, { namespace: "qnat-tenant", device: "eth0" }],
      [1, QG, ["9.186.100.2/24", "9.186.100.129/32"], 1500, { namespace: "qnat-external", device: "eth0" }],
    ]);
    expect(ports[0]!.counters).toEqual({ wire: legs(1, ping.length, 0, 0), mirror: legs(0, 0, 1, ping.length) });
    expect(ports[1]!.counters).toEqual({ wire: idle, mirror: idle });
  });

  it("counts a truncated packet as a drop on its ingress port, and conntrack's size", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { withoutNat: true, conntrackCapacity: 1024 });
    router.send(QG, new Uint8Array(10));
    router.send(QR, buildPacket({ protocol: "icmp", src: "10.0.0.2", dst: "10.0.0.1", icmpType: 8, icmpId: 2, icmpSeq: 1 }));
    router.run();

    const stats = collectStats(router.dataplane, { served: 1, notFound: 0, methodNotAllowed: 0 });
    expect(stats.ports[1]!.drops).toEqual({ truncated: 1 });
    expect(stats.ports[0]!.drops).toEqual({});
    expect(stats.conntrack.capacity).toBe(1024);
    expect(stats.conntrack.count).toBe(1);
    expect(stats.conntrack.counters.created).toBe(1);
    expect(stats.metadata).toEqual({ served: 1, notFound: 0, methodNotAllowed: 0 });
    expect(formatStats(stats)).toContain("port 1: qg-e76de35e-90");
    expect(formatStats(stats)).toMatch(/drops: 1\n {8}truncated {2}1/);
  });

  it("shows the router process's memory: its resident set and V8's heap, in bytes and as text", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 1024 });
    const stats = collectStats(router.dataplane);
    const memory = stats.process!;
    expect(memory.rssBytes).toBeGreaterThan(0);
    expect(memory.heapUsedBytes).toBeGreaterThan(0);
    expect(memory.heapUsedBytes).toBeLessThanOrEqual(memory.heapTotalBytes);
    expect(memory.rssBytes).toBeGreaterThanOrEqual(memory.heapUsedBytes);
    expect(formatStats(stats)).toMatch(/\nprocess: rss \d+\.\d MiB, heap \d+\.\d MiB used of \d+\.\d MiB, external \d+(\.\d)? [KM]i?B$/);
  });

  it("a fragment of 203.0.113.10's datagram whose first fragment has not come is held, and the pool's bounds are shown", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml");
    const middle = { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.129", fragmentOffset: 1480, mf: true, payload: new Uint8Array(100) } as const;
    const fragment = buildPacket(middle);
    router.send(QG, fragment);
    router.run();

    const stats = collectStats(router.dataplane);
    expect(stats.fragments).toMatchObject({ datagrams: 1, maxDatagrams: 1024, held: 1, maxHeld: 256 });
    expect(stats.fragments!.counters.held).toBe(1);
    expect(formatStats(stats)).toContain(
      [
        "fragments: 1 datagram, max 1024; 1 held, max 256 (120 B)",
        "    datagrams=1 translated=0 held=1 released=0 expired_held=0 table_full=0",
        "    completed=0",
      ].join("\n"),
    );
  });
});

describe("qnat show through the control socket", () => {
  let runDir: string;
  beforeAll(() => {
    runDir = mkdtempSync(join(tmpdir(), "qnat-show-"));
  });
  afterAll(() => {
    rmSync(runDir, { recursive: true, force: true });
  });

  it("answers show ports and show stats --json from the router's counters", async () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { withoutNat: true });
    const wires = router.config.ports.map((p) => p.wire);
    const path = join(runDir, `${router.config.namespace}.sock`);
    const server = await serveControl(path, (request) => {
      if (request.cmd !== "show") return { ok: false, error: "not here" };
      if (request.what === "ports") {
        const ports = collectPorts(router.dataplane, wires);
        return { ok: true, text: request.json ? formatJson(ports) : formatPorts(ports), data: ports };
      }
      const stats = collectStats(router.dataplane);
      return { ok: true, text: request.json ? formatJson(stats) : formatStats(stats), data: stats };
    });
    try {
      router.send(QR, buildPacket({ protocol: "icmp", src: "10.0.0.3", dst: "10.0.0.1", icmpType: 8, icmpId: 3, icmpSeq: 1 }));
      router.run();
      const ports = await controlRequest(path, { cmd: "show", what: "ports" });
      expect(ports.ok && ports.text).toMatch(/^0: qr-694450d6-f6: mtu 1500\n {4}inet 10\.0\.0\.1\/24\n/);
      const stats = await controlRequest(path, { cmd: "show", what: "stats", json: true });
      expect(stats.ok).toBe(true);
      if (stats.ok) {
        expect(JSON.parse(stats.text!)).toEqual(stats.data);
        expect((stats.data as StatsView).ports[0]!.wire.rxPackets).toBe(1);
      }
    } finally {
      await server.close();
    }
  });
});
