/**
 * The main thread's side of tap ports with `workers: N` (control/ethernet-threads.ts), against
 * stand-in worker threads (no TAP device, no root): an ARP frame worker 1 received is learnt by the
 * main thread's stage and reaches workers 2 and 3, not worker 1 again; one the main thread received
 * reaches every worker. Neighbour news goes the same way: worker 1's resolved gateway fills the main
 * thread's table and reaches workers 2 and 3; the main thread's resolving reaches all three. The threads' Ethernet counters add up to one router's (`show stats`), and
 * `show neigh` lists every thread's entries, each saying whose table holds it.
 */
import { Worker } from "node:worker_threads";
import { afterEach, describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { distinctNeighbours, formatThreadNeighbours, neighboursOfThreads, relayArpBetweenThreads } from "../../src/control/ethernet-threads.js";
import { collectEthernetStats } from "../../src/control/show.js";
import { ForwardingWorkers, type WorkerBase } from "../../src/control/workers.js";
import { EthCounter } from "../../src/io/ethernet-leg.js";
import { addDataplaneCounters, countersOf, ethernetCountersOf, type WorkerSetup } from "../../src/io/worker-protocol.js";
import { NUD_REACHABLE, NUD_STALE, type NeighbourView } from "../../src/neigh/table.js";
import { ARPOP_REQUEST } from "../../src/wire/arp.js";
import { formatMac, parseMac } from "../../src/wire/ethernet.js";
import { EthernetRouter, QG_MAC, arpFrame, ipFrame } from "../support/ethernet-router.js";

const QR = 0;
const QG = 1;
const VM2_MAC = "02:00:0a:00:00:03";
const GW_MAC = "02:00:09:ba:64:01";
const GATEWAY = parseIpv4("9.186.100.1") >>> 0;

/**
 * A stand-in worker: ready at once; worker 1 then posts one ARP frame it "received" on port 0;
 * every ARP frame posted to a worker is logged as `worker W learnt port P: BYTES`.
 */
const STAND_IN = `
const { parentPort, workerData } = require("node:worker_threads");
parentPort.on("message", (message) => {
  if (message.type === "arp") {
    parentPort.postMessage({ type: "log", line: "worker " + workerData.worker + " learnt port " + message.port + ": " + message.frame.length + " bytes" });
  } else if (message.type === "neigh") {
    parentPort.postMessage({ type: "log", line: "worker " + workerData.worker + " learnt " + message.news.kind + " " + message.news.ip + " on port " + message.news.port });
  } else if (message.type === "stop") {
    parentPort.postMessage({ type: "stopped" });
    parentPort.close();
  }
});
parentPort.postMessage({ type: "ready", warmUpMs: 1 });
if (workerData.worker === 1) parentPort.postMessage({ type: "arp", port: 0, frame: new Uint8Array(workerData.frame) });
if (workerData.worker === 1 && workerData.news) parentPort.postMessage({ type: "neigh", news: { ...workerData.news, mac: new Uint8Array(workerData.news.mac) } });`;

const BASE = {
  config: {}, vnetHdr: false, batchSize: 64, slotSize: 2048, headroom: 0,
  spinMicroseconds: 0, warmUp: false, tables: { conntrack: {}, nat: null },
} as unknown as WorkerBase;

let running: ForwardingWorkers | undefined;
afterEach(async () => {
  await running?.stop();
  await running?.end();
  running = undefined;
});

/** 10.0.0.3 asks for 10.0.0.1 on qr-'s wire. */
const request = arpFrame("ff:ff:ff:ff:ff:ff", VM2_MAC, ARPOP_REQUEST, { mac: VM2_MAC, ip: parseIpv4("10.0.0.3") }, { ip: parseIpv4("10.0.0.1") });

async function until(done: () => boolean): Promise<void> {
  for (let waited = 0; waited < 10_000 && !done(); waited += 20) await new Promise((resolve) => setTimeout(resolve, 20));
}

describe("ARP relayed between the main thread and its workers", () => {
  it("worker 1's ARP frame is learnt by the main thread and reaches workers 2 and 3; the main thread's reaches all three", async () => {
    const log: string[] = [];
    const queues = Array.from({ length: 3 }, () => [{ fd: 99, name: "eth0", netns: "x", queues: [] }]);
    const workers = (running = new ForwardingWorkers(BASE, queues, (line) => log.push(line), () => undefined, {
      spawnThread: (setup: WorkerSetup) => new Worker(STAND_IN, { eval: true, workerData: { worker: setup.worker, frame: Array.from(request) } }),
    }));
    const main = new EthernetRouter();
    relayArpBetweenThreads(main.stage, workers);
    await workers.start();
    await until(() => log.length >= 2);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(log.sort()).toEqual(["worker 2 learnt port 0: 60 bytes", "worker 3 learnt port 0: 60 bytes"]);
    // The main thread learnt 10.0.0.3 from it (a request for a router address), without answering it.
    expect(main.table.state(main.table.lookup(QR, parseIpv4("10.0.0.3")))).toBe(NUD_STALE);
    expect(main.leg(QR).take()).toEqual([]);
    expect(main.stage.counter(QR, EthCounter.ArpRequestsIn)).toBe(0);
    // What the main thread's own wire receives goes to every worker.
    log.length = 0;
    main.leg(QR).inject(request);
    main.run();
    await until(() => log.length >= 3);
    expect(log.sort()).toEqual(["worker 1 learnt port 0: 60 bytes", "worker 2 learnt port 0: 60 bytes", "worker 3 learnt port 0: 60 bytes"]);
    expect(main.stage.counter(QR, EthCounter.ArpRequestsIn)).toBe(1);
  }, 20_000);
});

describe("neighbour news between the main thread and its workers", () => {
  it("worker 1 resolved the gateway 9.186.100.1: the main thread's table holds it REACHABLE and workers 2 and 3 learn it; the main thread's own resolving reaches all three", async () => {
    const log: string[] = [];
    const queues = Array.from({ length: 3 }, () => [{ fd: 99, name: "eth0", netns: "x", queues: [] }]);
    const news = { kind: "resolved", port: QG, ip: GATEWAY, mac: Array.from(parseMac(GW_MAC)), state: NUD_REACHABLE };
    const workers = (running = new ForwardingWorkers(BASE, queues, (line) => log.push(line), () => undefined, {
      spawnThread: (setup: WorkerSetup) => new Worker(STAND_IN, { eval: true, workerData: { worker: setup.worker, frame: Array.from(request), news } }),
    }));
    const main = new EthernetRouter();
    relayArpBetweenThreads(main.stage, workers);
    await workers.start();
    await until(() => log.filter((line) => line.includes("resolved")).length >= 2);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(log.filter((line) => line.includes("resolved")).sort()).toEqual([`worker 2 learnt resolved ${GATEWAY} on port ${QG}`, `worker 3 learnt resolved ${GATEWAY} on port ${QG}`]);
    const entry = main.table.lookup(QG, GATEWAY);
    expect(main.table.state(entry)).toBe(NUD_REACHABLE);
    expect(formatMac(main.table.macs, entry * 6)).toBe(GW_MAC);
    // Learning news tells nothing: worker 1 heard nothing back, and nothing went on the wire.
    expect(main.leg(QG).take()).toEqual([]);
    // The main thread starts resolving 10.0.0.4 for a packet from the outside to it: every worker is told.
    log.length = 0;
    main.leg(QG).inject(ipFrame(QG_MAC, GW_MAC, { protocol: "udp", src: "203.0.113.10", dst: "10.0.0.4", sport: 5000, dport: 53 }));
    main.run();
    await until(() => log.length >= 3);
    const tenant4 = parseIpv4("10.0.0.4") >>> 0;
    expect(log.sort()).toEqual([1, 2, 3].map((w) => `worker ${w} learnt resolving ${tenant4} on port ${QR}`));
  }, 20_000);
});

describe("one router's Ethernet counters and neighbours over two threads", () => {
  it("show stats adds both threads' ARP counters and counts 10.0.0.3, in both tables, once; show neigh lists each thread's entry of it", () => {
    const threads = [new EthernetRouter(), new EthernetRouter()];
    threads.forEach((r, thread) => {
      r.leg(QR).inject(request);
      r.run();
      if (thread === 1) r.table.update(QR, parseIpv4("10.0.0.4"), parseMac("02:00:0a:00:00:04"), 0, NUD_STALE, true, false);
    });
    const [main, worker] = threads.map((r) => ({ ...countersOf(r.dataplane), ethernet: ethernetCountersOf(r.stage) }));
    const summed = addDataplaneCounters(main!, [worker!]);
    const names = threads[0]!.config.ports.map((p) => p.name);
    const view = collectEthernetStats(threads[0]!.stage, names, summed.ethernet);
    expect(view.ports[names[0]!]!["arp_requests_in"]).toBe(2);
    expect(view.ports[names[0]!]!["arp_replies"]).toBe(2);
    // The threads' table sizes add up to 3; the router knows 2 neighbours (router-process.ts
    // workerCounters puts the distinct count in `show stats`).
    expect(view.neighbours["entries"]).toBe(3);
    expect(distinctNeighbours([main!.ethernet.entries, worker!.ethernet.entries])).toBe(2);
    const rows = neighboursOfThreads([main!.ethernet.entries, worker!.ethernet.entries], names);
    expect(formatThreadNeighbours(rows)).toBe(
      `10.0.0.3 dev ${names[0]} lladdr ${VM2_MAC} STALE thread 0\n` +
        `10.0.0.3 dev ${names[0]} lladdr ${VM2_MAC} STALE thread 1\n` +
        `10.0.0.4 dev ${names[0]} lladdr 02:00:0a:00:00:04 STALE thread 1\n`,
    );
  });
});

describe("distinctNeighbours", () => {
  const row = (port: number, dst: string): NeighbourView => ({ port, dst, lladdr: null, state: "INCOMPLETE", queued: 0 });
  it("counts an address once per port, however many threads hold it, and the same address on two ports twice", () => {
    expect(distinctNeighbours([[row(0, "10.0.0.3"), row(1, "10.0.0.3")], [row(0, "10.0.0.3")], []])).toBe(2);
    expect(distinctNeighbours([])).toBe(0);
  });
});
