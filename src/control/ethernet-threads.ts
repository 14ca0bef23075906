/**
 * Ethernet (tap) ports on every forwarding thread (`workers: N`; docs/multi-core.md "Ethernet
 * ports with workers").
 *
 * Each thread has an Ethernet stage and a neighbour table of its own (io/ethernet-leg.ts,
 * neigh/table.ts): nothing of them is shared, so the per-packet neighbour lookup stays a read of
 * the thread's own typed arrays, and a packet a thread queued while its neighbour was INCOMPLETE
 * leaves through that thread's queue (or is answered with host unreachable by it). What makes the
 * tables behave as Linux's one table is messages between the threads (a worker's through the main
 * thread, which learns them too):
 * - every valid ARP packet a thread receives on a wire leg is answered and learnt from there, once,
 *   and a copy goes to every other thread, which learns from it by the same arp_process rules
 *   (`EthernetStage.learnRelayed`): a request for a router address creates the sender's entry
 *   everywhere; a gratuitous ARP or an unsolicited reply only updates entries that exist
 *   (arp_accept=0);
 * - neighbour news (NeighbourNews, `EthernetStage.learnNews`): a thread that starts resolving a
 *   neighbour tells the others (`resolving`), whose entries go INCOMPLETE without a request of
 *   their own, so the segment sees one request per retrans_time as from Linux's one entry; and a
 *   thread whose INCOMPLETE entry gets its address (the reply, received or relayed) tells the
 *   others (`resolved`), which create or complete theirs: after one solicited reply every
 *   thread's table holds the neighbour, and their queued packets leave.
 *
 * Counters: each thread's stage counts what it received and sent; the counter snapshots carry
 * them (io/worker-protocol.ts EthernetCounters) and `show stats`, `show ports` and the metrics add
 * them up. `show neigh` lists every thread's entries, each line saying whose table it is in.
 */
import type { RouterConfig } from "../config/config.js";
import { effectiveArpAnnounce, effectiveArpIgnore } from "../config/config.js";
import { systemClock } from "../core/clock.js";
import { CryptoRng } from "../core/rng.js";
import type { Dataplane } from "../dataplane/pipeline.js";
import { EthernetLeg, EthernetStage, type EthernetPortSpec, type NeighbourNews } from "../io/ethernet-leg.js";
import type { TunDevice } from "../io/tun.js";
import type { Forwarder } from "../io/forwarder.js";
import type { FromWorker, WorkerLegSetup } from "../io/worker-protocol.js";
import { NeighbourTable, type NeighbourView } from "../neigh/table.js";
import { parseMac } from "../wire/ethernet.js";
import { closeWorkerQueues, workerQueueSetup, type WorkerQueued } from "./workers.js";

/** How often the neighbour timers run (neigh/table.ts: probes are 1 s apart). */
export const NEIGHBOUR_TICK_MS = 100;

/** The Ethernet (tap) ports of a config as the Ethernet stage knows them. */
export function ethernetPortsOf(config: RouterConfig): EthernetPortSpec[] {
  return config.ports.flatMap((port, index) =>
    port.wire.mode === "tap"
      ? [{
          index, name: port.name, mac: parseMac(port.mac), addresses: port.addresses,
          arpIgnore: effectiveArpIgnore(config, port), arpAnnounce: effectiveArpAnnounce(config, port),
        }]
      : [],
  );
}

/** The slot geometry of a thread's batches (core/batch.ts). */
export interface EthernetGeometry {
  /** Slot headroom: virtio_net_hdr (with offloads) + ETH_HLEN. */
  readonly headroom: number;
  /** With offloads: the batches' slot size, for GSO super-packets waiting for a neighbour. */
  readonly superSlotSize?: number;
}

/**
 * The Ethernet stage of a router with tap ports (undefined without): its neighbour table, the
 * router's addresses (all answered for, arp_ignore=0), the routes ARP senders are validated
 * against (`dataplane`, set again after a live change).
 */
export function buildEthernetStage(config: RouterConfig, geometry: EthernetGeometry, dataplane: Dataplane): EthernetStage | undefined {
  if (!config.ports.some((p) => p.wire.mode === "tap")) return undefined;
  const { headroom, superSlotSize } = geometry;
  const stage = new EthernetStage(
    // With offloads, GSO super-packets waiting for a neighbour are queued whole (as Linux queues
    // the skb) in slots as large as the batch's.
    new NeighbourTable({ clock: systemClock, rng: new CryptoRng(), slotSize: 2048 + headroom, headroom, ...(superSlotSize !== undefined ? { superSlotSize } : {}) }),
    config.ports.length,
    ethernetPortsOf(config),
    headroom,
    systemClock,
  );
  stage.sources = dataplane;
  stage.addOwnAddresses(config.ports.flatMap((p) => p.addresses.map((a) => a.addr)));
  return stage;
}

/** A live change with the same ports: the stage follows the ports' addresses and the successor's routes. */
export function followConfig(stage: EthernetStage, config: RouterConfig, dataplane: Dataplane): void {
  stage.sources = dataplane;
  stage.setPorts(config.ports.length, ethernetPortsOf(config));
  stage.addOwnAddresses(config.ports.flatMap((p) => p.addresses.map((a) => a.addr)));
}

/** Whether leg `index` (`port * 2 + role`) of `config` is a tap port's. */
export function isTapLeg(config: RouterConfig, index: number): boolean {
  return config.ports[index >> 1]?.wire.mode === "tap";
}

/**
 * Queue 0 of a tap port's leg on the main thread with `workers: N`, holding the workers' queues
 * (queues 1..N-1) as control/workers.ts MultiQueueLeg does for TUN legs: closing it has every
 * worker let its queue go first, then closes them.
 */
export class MultiQueueEthernetLeg extends EthernetLeg implements WorkerQueued {
  constructor(
    device: TunDevice,
    stage: EthernetStage,
    port: number,
    role: number,
    /** Queues 1..N-1, worker w's at w - 1. */
    readonly workerQueues: readonly TunDevice[],
    private readonly release: () => Promise<void>,
  ) {
    super(device, stage, port, role);
    this.queueFds = [device.fd, ...workerQueues.map((queue) => queue.fd)];
  }

  queueFor(worker: number): WorkerLegSetup {
    return workerQueueSetup(this.workerQueues[worker - 1]!, this.queueFds!);
  }

  override close(): void {
    closeWorkerQueues(this, this.release);
  }

  closeQueues(): void {
    super.close();
    for (const queue of this.workerQueues) queue.close();
  }
}

/**
 * A worker thread's stage in its loop: a packet whose neighbour failed is answered by this
 * thread's dataplane (host unreachable, through its own queue), and every ARP packet its wire legs
 * receive goes to the main thread, which learns from it and passes it on (`relayArpBetweenThreads`).
 */
export function connectWorkerEthernet(stage: EthernetStage, forwarder: Forwarder, post: (message: FromWorker) => void): void {
  stage.onUnreachable = (buf, off, length, port) => forwarder.hostUnreachable(buf, off, length, port);
  stage.onArpReceived = (port, frame) => post({ type: "arp", port, frame });
  stage.onNeighbourNews = (news) => post({ type: "neigh", news });
}

/** What the main thread needs of its workers to relay ARP between the threads (control/workers.ts ForwardingWorkers). */
export interface ArpRelay {
  /** Posts an ARP frame to every worker but `from` (0: the main thread). */
  relayArp(from: number, port: number, frame: Uint8Array): void;
  /** Set to receive the ARP frames each worker received. */
  onArpFrame: ((from: number, port: number, frame: Uint8Array) => void) | null;
  /** Posts a thread's neighbour news to every worker but `from` (0: the main thread). */
  relayNeighbourNews(from: number, news: NeighbourNews): void;
  /** Set to receive each worker's neighbour news. */
  onNeighbourNews: ((from: number, news: NeighbourNews) => void) | null;
}

/**
 * The main thread's side of the relay: what its own wire legs receive, and its table's news, go
 * to every worker; what a worker received or tells is learnt here and goes to every other worker.
 * News is passed on once, from the thread that told it to every other: learning it tells nothing,
 * so nothing loops. A worker's messages reach the others in the order it posted them (one port to
 * the main thread, one from it to each worker), so a `resolving` never arrives after its `resolved`.
 */
export function relayArpBetweenThreads(stage: EthernetStage, workers: ArpRelay): void {
  stage.onArpReceived = (port, frame) => workers.relayArp(0, port, frame);
  stage.onNeighbourNews = (news) => workers.relayNeighbourNews(0, news);
  workers.onArpFrame = (from, port, frame) => {
    stage.learnRelayed(port, frame);
    workers.relayArp(from, port, frame);
  };
  workers.onNeighbourNews = (from, news) => {
    stage.learnNews(news);
    workers.relayNeighbourNews(from, news);
  };
}

/** `show neigh` rows of every thread (`thread` 0: the main thread's table), ordered by port, address, thread. */
export interface ThreadNeighbourView extends NeighbourView {
  readonly dev: string;
  readonly thread: number;
}

export function neighboursOfThreads(perThread: readonly (readonly NeighbourView[])[], portNames: readonly string[]): ThreadNeighbourView[] {
  const rows = perThread.flatMap((entries, thread) => entries.map((row) => ({ ...row, dev: portNames[row.port] ?? `port${row.port}`, thread })));
  const order = (dst: string): number => dst.split(".").reduce((n, part) => n * 256 + Number(part), 0);
  return rows.sort((a, b) => a.port - b.port || order(a.dst) - order(b.dst) || a.thread - b.thread);
}

/**
 * How many neighbours the router knows: each (port, address) once, however many threads' tables
 * hold it (`show stats`' `entries` with workers; the threads' counters are added up, but an entry
 * two threads learned is one neighbour).
 */
export function distinctNeighbours(perThread: readonly (readonly NeighbourView[])[]): number {
  return new Set(perThread.flatMap((entries) => entries.map((row) => `${row.port} ${row.dst}`))).size;
}

/** `ip neigh`-style lines, each ending in the thread whose table holds the entry. */
export function formatThreadNeighbours(rows: readonly ThreadNeighbourView[]): string {
  return rows
    .map((row) => `${row.dst} dev ${row.dev}${row.lladdr === null ? "" : ` lladdr ${row.lladdr}`} ${row.state} thread ${row.thread}\n`)
    .join("");
}
