/**
 * A forwarding worker thread (`workers: N`, N > 1; started by control/workers.ts): it forwards
 * queue i of every leg of the router, as the main thread forwards queue 0, with the same packet
 * loop (io/pump-loop.ts) over its own Dataplane. That dataplane is built from the same config
 * and attached to the main thread's connection table and NAT state (SharedArrayBuffers under one
 * lock, dataplane/from-config.ts `shared`), so a connection whose two directions the kernel
 * hands to different queues is one connection, and a NAT port is chosen once across all workers.
 * Its batches, counters, fragment table and JIT are its own, and so are, with tap ports, its
 * Ethernet stage and neighbour table: the ARP packets its wire legs receive go to the main thread,
 * and those the other threads received come back to be learnt (control/ethernet-threads.ts).
 *
 * The main thread opened every queue (fds are process-wide) and keeps them: the worker only
 * polls, reads and writes its fds and never closes them. It answers the main thread's messages
 * (io/worker-protocol.ts): a copy of its counters, a leg gone or re-created, a live change
 * (its successor dataplane, swapped in between two batches), stop.
 */
import { parentPort, workerData, type MessagePort } from "node:worker_threads";
import { CryptoRng } from "../core/rng.js";
import { workersOf } from "../config/config.js";
import { buildDataplane } from "../dataplane/from-config.js";
import { carryOverCounters } from "../dataplane/successor.js";
import { warmUp } from "../dataplane/warmup.js";
import { Forwarder } from "../io/forwarder.js";
import { WorkerCaptures } from "./worker-capture.js";
import { DownLeg } from "../io/leg.js";
import { LoopStats } from "../io/loop-stats.js";
import { PumpLoop } from "../io/pump-loop.js";
import { TunDevice, type TunError } from "../io/tun.js";
import { TunLeg } from "../io/tun-leg.js";
import { routingTableInPieces } from "./live-apply.js";
import { EthernetLeg } from "../io/ethernet-leg.js";
import { buildEthernetStage, followConfig, isTapLeg, connectWorkerEthernet, NEIGHBOUR_TICK_MS } from "./ethernet-threads.js";
import { countersOf, ethernetCountersOf, type FromWorker, type ToWorker, type WorkerLegSetup, type WorkerSetup } from "../io/worker-protocol.js";

/** Conntrack expiry also runs when no packet arrives (as the main thread's housekeeping timer). */
const HOUSEKEEPING_INTERVAL_MS = 1000;

/** Runs worker `setup.worker` until the main thread says stop. */
export function runDataplaneWorker(setup: WorkerSetup, port: MessagePort): void {
  const post = (message: FromWorker): void => port.postMessage(message);
  const log = (line: string): void => post({ type: "log", line });
  const config = setup.config;
  const started = performance.now();
  if (setup.warmUp) warmUp(config, { headroom: setup.headroom, slotSize: setup.slotSize });
  const warmUpMs = performance.now() - started;
  // One connection table and NAT state for every worker: the main thread's (from-config.ts shared).
  let dataplane = buildDataplane(config, { rng: new CryptoRng(), shared: setup.tables });
  dataplane.log = log;
  // Tap ports: this thread's own Ethernet stage and neighbour table (control/ethernet-threads.ts).
  const ethernet = buildEthernetStage(config, { headroom: setup.headroom, ...(setup.vnetHdr ? { superSlotSize: setup.slotSize } : {}) }, dataplane);
  const open = (leg: WorkerLegSetup, index: number): TunLeg => {
    const tap = ethernet !== undefined && isTapLeg(config, index);
    const device = TunDevice.fromFd(leg.fd, { name: leg.name, netns: leg.netns, vnetHdr: setup.vnetHdr, tap, ownsFd: false });
    const tunLeg = tap ? new EthernetLeg(device, ethernet, index >> 1, index & 1) : new TunLeg(device);
    tunLeg.queueFds = leg.queues;
    if (tunLeg instanceof EthernetLeg) ethernet!.attach(tunLeg);
    return tunLeg;
  };
  // A leg that is down as the worker starts (fd -1: its queues were closed) waits for `leg-up`.
  const legs: (TunLeg | null)[] = setup.legs.map((leg, index) => (leg.fd < 0 ? null : open(leg, index)));
  const forwarder = new Forwarder(dataplane, legs.map((leg) => leg ?? new DownLeg()), setup.batchSize, setup.slotSize, setup.headroom);
  if (ethernet !== undefined) connectWorkerEthernet(ethernet, forwarder, post);
  forwarder.useQueues(setup.worker, workersOf(config));
  const loopStats = new LoopStats();
  // Captures (`qnat capture` with workers: N): a tap on this thread's forwarder only while one runs.
  const captures = new WorkerCaptures(
    setup.batchSize, forwarder, () => dataplane, (message, transfer) => port.postMessage(message, transfer), config.ports.map((p) => p.wire.mode === "tap"),
  );
  // A capture sees the packets that waited for ARP in this thread's table when they leave.
  if (ethernet !== undefined) ethernet.onQueuedSent = (pool, verdicts, legIndex) => captures.deferred(pool, verdicts, legIndex);
  /** A leg whose read, write or poll failed here: out of this worker's loop, and the main thread told. */
  const legFailed = (index: number, error: unknown): void => {
    legs[index]?.device.stopReadable();
    const tunError = error as TunError;
    post({ type: "leg-failed", index, code: typeof tunError?.code === "string" ? tunError.code : "EUNKNOWN", message: error instanceof Error ? error.message : String(error) });
  };
  forwarder.slots.onFailure = legFailed;
  const loop = new PumpLoop(forwarder, {
    spinMicroseconds: setup.spinMicroseconds,
    loopStats,
    log,
    legFailed: (index, error) => forwarder.slots.fail(index, error),
  });
  legs.forEach((leg, index) => leg !== null && loop.watch(index, leg.device));
  const housekeeping = setInterval(() => {
    try {
      dataplane.housekeeping();
    } catch (failure) {
      loop.errors.offer(() => `qnat: worker ${setup.worker}: internal error in housekeeping (it goes on): ${failure instanceof Error ? failure.stack : String(failure)}`);
    }
  }, HOUSEKEEPING_INTERVAL_MS);
  // The neighbour timers (probes, FAILED, REACHABLE -> STALE), as on the main thread.
  const neighbourTicks = ethernet === undefined ? undefined : setInterval(() => {
    try {
      ethernet.tick();
    } catch (failure) {
      loop.errors.offer(() => `qnat: worker ${setup.worker}: internal error in the neighbour timers (it goes on): ${failure instanceof Error ? failure.stack : String(failure)}`);
    }
  }, NEIGHBOUR_TICK_MS);

  /**
   * A live change: the successor's routing table is built in pieces of about a millisecond with
   * this thread's packet loop running between them (a full Internet table takes seconds), then
   * swapped in between two batches. The successor keeps the shared connection table and NAT state,
   * and this dataplane's counters. Changes are applied one after another, in the order sent.
   */
  let changing = Promise.resolve();
  const applyChange = async (id: number, next: WorkerSetup["config"]): Promise<void> => {
    try {
      const routes = await routingTableInPieces(next);
      const successor = buildDataplane(next, { successorOf: dataplane, routes });
      // The same steps as the main thread's successor: the same route versions (route/table.ts).
      successor.routes.continueVersionsFrom(dataplane.routes);
      carryOverCounters(dataplane, successor);
      successor.log = log;
      forwarder.dataplane = successor;
      dataplane = successor;
      if (ethernet !== undefined) followConfig(ethernet, next, successor);
      post({ type: "applied", id });
    } catch (error) {
      post({ type: "applied", id, error: error instanceof Error ? error.message.split("\n")[0]! : String(error) });
    }
  };

  port.on("message", (message: ToWorker) => {
    switch (message.type) {
      case "counters":
        post({
          type: "counters", id: message.id,
          counters: { ...countersOf(dataplane), loop: loopStats.snapshot(), ...(ethernet !== undefined ? { ethernet: ethernetCountersOf(ethernet) } : {}) },
        });
        return;
      case "arp":
        ethernet?.learnRelayed(message.port, message.frame);
        return;
      case "leg-down": {
        // The main thread closes the fd once every worker let it go: until then its number
        // cannot be reused by another open, so this worker never reads someone else's device.
        const leg = legs[message.index];
        leg?.device.stopReadable();
        legs[message.index] = null;
        ethernet?.detach(message.index >> 1, message.index & 1);
        forwarder.slots.onFailure = null;
        forwarder.slots.fail(message.index, Object.assign(new Error("leg down"), { code: "ENODEV" }));
        forwarder.slots.onFailure = legFailed;
        post({ type: "released", index: message.index, fd: leg?.device.fd ?? -1 });
        return;
      }
      case "apply":
        changing = changing.then(() => applyChange(message.id, message.config));
        return;
      case "capture-start":
        captures.start(message);
        return;
      case "capture-stop":
        captures.stop(message.id);
        return;
      case "leg-up": {
        const leg = open(message.leg, message.index);
        legs[message.index] = leg;
        forwarder.slots.replace(message.index, leg);
        loop.watch(message.index, leg.device);
        return;
      }
      case "stop":
        // Reading stops: no wake-up runs the loop again. A batch is written before its wake-up
        // returns, so nothing is held; the worker ends once its port closes.
        clearInterval(housekeeping);
        clearInterval(neighbourTicks);
        for (const leg of legs) leg?.device.stopReadable();
        captures.stopAll();
        post({ type: "stopped" });
        port.close();
        return;
    }
  });
  post({ type: "ready", warmUpMs });
}

if (parentPort !== null && (workerData as { qnatWorker?: WorkerSetup } | null)?.qnatWorker !== undefined) {
  runDataplaneWorker((workerData as { qnatWorker: WorkerSetup }).qnatWorker, parentPort);
}
