/**
 * A forwarding worker thread (`workers: N`, N > 1; started by control/workers.ts): it forwards
 * queue i of every leg of the router, as the main thread forwards queue 0, with the same packet
 * loop (io/pump-loop.ts) over its own Dataplane. That dataplane is built from the same config
 * and attached to the main thread's connection table and NAT state (SharedArrayBuffers under one
 * lock, dataplane/from-config.ts `shared`), so a connection whose two directions the kernel
 * hands to different queues is one connection, and a NAT port is chosen once across all workers.
 * Its batches, counters, fragment table and JIT are its own, and so are, with tap ports, its
 * Ethernet stage and neighbour table: the ARP packets its wire legs receive, and what its table
 * has to tell the others (a neighbour it started resolving or completed), go to the main thread,
 * and those of the other threads come back to be learnt (control/ethernet-threads.ts).
 *
 * The main thread opened every queue (fds are process-wide) and keeps them: the worker only
 * polls, reads and writes its fds and never closes them. It answers the main thread's messages
 * (io/worker-protocol.ts): a copy of its counters, a leg gone or re-created, a live change
 * (its successor dataplane, swapped in between two batches; with ports added or removed, its
 * queues of the new config's legs in the same step), stop.
 */
import { parentPort, workerData, type MessagePort } from "node:worker_threads";
import { CryptoRng } from "../core/rng.js";
import { workersOf } from "../config/config.js";
import { buildDataplane } from "../dataplane/from-config.js";
import type { Dataplane } from "../dataplane/pipeline.js";
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
  /** The config whose ports the legs are (the first one, then each change of ports'). */
  let legsOf = config;
  const open = (leg: WorkerLegSetup, index: number): TunLeg => {
    const tap = ethernet !== undefined && isTapLeg(legsOf, index);
    const device = TunDevice.fromFd(leg.fd, { name: leg.name, netns: leg.netns, vnetHdr: setup.vnetHdr, tap, ownsFd: false });
    const tunLeg = tap ? new EthernetLeg(device, ethernet, index >> 1, index & 1) : new TunLeg(device);
    tunLeg.queueFds = leg.queues;
    if (tunLeg instanceof EthernetLeg) ethernet!.attach(tunLeg);
    return tunLeg;
  };
  // A leg that is down as the worker starts (fd -1: its queues were closed) waits for `leg-up`.
  // `let`: a live change that adds or removes ports links the legs anew (`relink` below).
  let legs: (TunLeg | null)[] = setup.legs.map((leg, index) => (leg.fd < 0 ? null : open(leg, index)));
  const forwarderOver = (over: Dataplane): Forwarder => {
    const made = new Forwarder(over, legs.map((leg) => leg ?? new DownLeg()), setup.batchSize, setup.slotSize, setup.headroom);
    if (ethernet !== undefined) connectWorkerEthernet(ethernet, made, post);
    made.useQueues(setup.worker, workersOf(config));
    return made;
  };
  let forwarder = forwarderOver(dataplane);
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
  /** The successor dataplane of `next`: its routing table built in pieces, this one's counters carried over. */
  const successorFor = async (next: WorkerSetup["config"]): Promise<Dataplane> => {
    const routes = await routingTableInPieces(next);
    const successor = buildDataplane(next, { successorOf: dataplane, routes });
    // The same steps as the main thread's successor: the same route versions (route/table.ts).
    successor.routes.continueVersionsFrom(dataplane.routes);
    carryOverCounters(dataplane, successor);
    successor.log = log;
    return successor;
  };
  const applyChange = async (id: number, next: WorkerSetup["config"]): Promise<void> => {
    try {
      const successor = await successorFor(next);
      forwarder.dataplane = successor;
      dataplane = successor;
      if (ethernet !== undefined) followConfig(ethernet, next, successor);
      post({ type: "applied", id });
    } catch (error) {
      post({ type: "applied", id, error: firstLineOf(error) });
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
      case "neigh":
        ethernet?.learnNews(message.news);
        return;
      case "leg-down":
        afterRelinks(() => legDown(message.index));
        return;
      case "apply":
        changing = changing.then(() => applyChange(message.id, message.config));
        return;
      case "relink":
        relinksPending++;
        changing = changing.then(() => relink(message));
        return;
      case "capture-start":
        captures.start(message);
        return;
      case "capture-stop":
        captures.stop(message.id);
        return;
      case "leg-up":
        afterRelinks(() => legUp(message.index, message.leg));
        return;
      case "stop":
        // Reading stops: no wake-up runs the loop again. A batch is written before its wake-up
        // returns, so nothing is held; the worker ends once its port closes.
        halted = true;
        clearInterval(housekeeping);
        clearInterval(neighbourTicks);
        for (const leg of legs) leg?.device.stopReadable();
        captures.stopAll();
        post({ type: "stopped" });
        port.close();
        return;
    }
  });
  /** Leg `index` is down: stop using its fd and say so (the main thread closes it once every worker let it go). */
  const legDown = (index: number): void => {
    // Until the main thread closes the fd its number cannot be reused by another open, so this
    // worker never reads someone else's device.
    const leg = legs[index];
    leg?.device.stopReadable();
    legs[index] = null;
    ethernet?.detach(index >> 1, index & 1);
    forwarder.slots.onFailure = null;
    forwarder.slots.fail(index, Object.assign(new Error("leg down"), { code: "ENODEV" }));
    forwarder.slots.onFailure = legFailed;
    post({ type: "released", index, fd: leg?.device.fd ?? -1 });
  };
  /** Leg `index` was re-created: this worker's queue of it. */
  const legUp = (index: number, setupOfLeg: WorkerLegSetup): void => {
    const leg = open(setupOfLeg, index);
    legs[index] = leg;
    forwarder.slots.replace(index, leg);
    if (!halted) loop.watch(index, leg.device);
  };
  /**
   * Relinks received and not yet in place: a `leg-down` or `leg-up` the main thread sent after one
   * numbers the legs as it does, so it waits for it; one sent before (none pending) is in the
   * legs this worker has, and is done at once (a release is not held up by a change).
   */
  let relinksPending = 0;
  /** Stopped, or left every leg after a change it could not make: nothing is watched again. */
  let halted = false;
  const afterRelinks = (work: () => void): void => {
    if (relinksPending === 0) work();
    // A failure here must not stop the changes queued after it.
    else changing = changing.then(work).catch((error: unknown) => log(`qnat: worker ${setup.worker}: ${error instanceof Error ? error.message : String(error)}`));
  };

  /**
   * Ports added or removed live: the successor (new port indexes; its routing table built in
   * pieces, as for any change) and the legs of the new config are swapped in together, between two
   * batches, as the main thread does (router-process.ts relinkLegs); from the answer on, no fd of
   * a removed leg is read or written here — not even by a pinned write, since those go through the
   * queues of the legs the new forwarder holds — so the main thread may close them.
   */
  const relink = async (message: Extract<ToWorker, { type: "relink" }>): Promise<void> => {
    try {
      const successor = await successorFor(message.config);
      for (const leg of legs) leg?.device.stopReadable();
      if (ethernet !== undefined) {
        // As the main thread's stage (router-process.ts relinkLegs): the neighbours and counters
        // of the ports that stay follow them, those of removed ports go; the new legs attach.
        legs.forEach((_, index) => ethernet.detach(index >> 1, index & 1));
        ethernet.renumberPorts(message.ports, message.config.ports.length);
        followConfig(ethernet, message.config, successor);
      }
      legsOf = message.config;
      legs = message.legs.map((leg, index) => (leg.fd < 0 ? null : open(leg, index)));
      forwarder = forwarderOver(successor);
      forwarder.slots.onFailure = legFailed;
      loop.forwarder = forwarder;
      // A running capture's interfaces are the old legs': it takes no more packets here, and the
      // main thread ends it (control/capture.ts attach); later ones tap the new forwarder.
      captures.moveTo(forwarder, message.config.ports.map((p) => p.wire.mode === "tap"));
      dataplane = successor;
      if (!halted) legs.forEach((leg, index) => leg !== null && loop.watch(index, leg.device));
      post({ type: "relinked", id: message.id });
    } catch (error) {
      // This thread cannot follow the change: it lets every leg go (no wake-up runs its loop
      // again) and is started again with the new config and legs (control/workers.ts).
      halted = true;
      for (const leg of legs) leg?.device.stopReadable();
      post({ type: "relinked", id: message.id, error: firstLineOf(error) });
    } finally {
      relinksPending--;
    }
  };
  post({ type: "ready", warmUpMs });
}

/** An error's first line, for the one-line answer to the main thread. */
function firstLineOf(error: unknown): string {
  return error instanceof Error ? error.message.split("\n")[0]! : String(error);
}

if (parentPort !== null && (workerData as { qnatWorker?: WorkerSetup } | null)?.qnatWorker !== undefined) {
  runDataplaneWorker((workerData as { qnatWorker: WorkerSetup }).qnatWorker, parentPort);
}
