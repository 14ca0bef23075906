/**
 * The forwarding threads of a router with `workers: N` (N > 1): the main thread forwards queue 0
 * of every leg and keeps the control plane; `ForwardingWorkers` starts N - 1 worker_threads
 * (control/dataplane-worker.ts), worker i forwarding queue i of every leg, and speaks for them:
 *
 *   - counters: `counters()` asks every worker for a copy of its dataplane's counters (over its
 *     MessagePort, answered between two batches) so `show stats`, `show ports`, `top` and the
 *     metrics add them to the main thread's and show one router; a worker that does not answer in
 *     COUNTERS_TIMEOUT_MS is shown with its last answer. Asking costs the packet path nothing
 *     until asked, and a worker's counters stay in its own thread's memory.
 *   - a worker that fails (an exception out of its loop, which the loop's own guards make a bug)
 *     is logged in one line and started again on the same queues (the main thread holds their
 *     fds); its counters up to its last answer are carried over. After RESTART_LIMIT failures in
 *     RESTART_WINDOW_MS it is not started again, and says so: its queues are then not read, and
 *     the kernel drops what it steers to them (the flows hashed there stall; the router lives).
 *   - legs: when the main thread's supervisor retires a leg (io/leg-supervisor.ts) every worker
 *     lets its queue of it go before the fds are closed (`releaseLeg`), so a reused fd number never
 *     reaches a worker; a leg re-created with N queues gives each worker its new queue (`legUp`).
 *   - live changes: `apply` has every worker build and swap in its successor dataplane; `relink`
 *     (ports added or removed) swaps the legs too: every worker gets its queue of each new leg and
 *     lets those of the removed legs go before the main thread closes their fds.
 *   - ARP (tap ports): an ARP frame a worker received, and its neighbour table's news, come here
 *     (`onArpFrame`, `onNeighbourNews`) and go to every other worker (`relayArp`,
 *     `relayNeighbourNews`), so every thread's neighbour table learns them
 *     (control/ethernet-threads.ts).
 *   - stop: every worker stops reading, ends its batch and answers (`stop`); the caller saves the
 *     state, then `end` ends the threads.
 */
import { Worker } from "node:worker_threads";
import { PortCounter } from "../dataplane/pipeline.js";
import type { NeighbourNews } from "../io/ethernet-leg.js";
import type { TunDevice } from "../io/tun.js";
import { TunLeg } from "../io/tun-leg.js";
import type { DataplaneCounters, FromWorker, ToWorker, WorkerLegSetup, WorkerSetup } from "../io/worker-protocol.js";
import { addDataplaneCounters, renumberPortCounters } from "../io/worker-protocol.js";
import type { WorkerStatsView } from "./show.js";

/** How long `counters()` waits for a worker's answer. */
export const COUNTERS_TIMEOUT_MS = 500;
/** How long `stop()` waits for the workers to answer that they stopped reading. */
export const STOP_TIMEOUT_MS = 400;
/**
 * How long a live change (`apply`, `relink`) waits for every worker to swap in its successor
 * before it says which have not (a worker builds a full routing table in pieces for seconds).
 */
export const CHANGE_TIMEOUT_MS = 5000;
/** A worker that fails this often within RESTART_WINDOW_MS is left stopped. */
export const RESTART_LIMIT = 5;
export const RESTART_WINDOW_MS = 60_000;

/** The module a worker thread runs: dataplane-worker.js beside this file in dist/src/control. */
const WORKER_MODULE = new URL("./dataplane-worker.js", import.meta.url);

/** Everything a worker is started with but its number and queues. */
export type WorkerBase = Omit<WorkerSetup, "worker" | "legs">;

/** One worker thread and what the main thread remembers of it. */
interface WorkerThread {
  readonly number: number;
  legs: WorkerLegSetup[];
  thread: Worker | null;
  /** Counters of earlier runs of this worker (before it failed and was started again). */
  carried: DataplaneCounters | null;
  last: DataplaneCounters | null;
  failures: number[];
  stopped: boolean;
  /**
   * The port renumberings (`relink`) posted to this worker that it has not answered yet, oldest
   * first: what it says meanwhile (a leg that failed, its counters) is in the ports it had.
   * `last` and `carried` are always in the main thread's ports.
   */
  renumberings: PortRenumbering[];
}

/** Where each port went in a live change (-1: removed), and how many ports there are now. */
interface PortRenumbering {
  readonly ports: readonly number[];
  readonly portCount: number;
}

export interface ForwardingWorkersOptions {
  /** Starts one worker thread (tests: a stand-in script); default: control/dataplane-worker.ts. */
  readonly spawnThread?: (setup: WorkerSetup) => Worker;
  /** How long `counters()` waits for each worker (default COUNTERS_TIMEOUT_MS). */
  readonly countersTimeoutMs?: number;
  /** How long `apply` and `relink` wait before they report the workers that have not answered (default CHANGE_TIMEOUT_MS). */
  readonly changeTimeoutMs?: number;
}

export class ForwardingWorkers {
  private readonly threads: WorkerThread[];
  private nextRequest = 1;
  private readonly pending = new Map<number, { remaining: Set<number>; answers: Map<number, DataplaneCounters>; done: () => void }>();
  private readonly releases = new Map<number, { remaining: Set<number>; done: () => void }>();
  private readonly stops = new Map<number, () => void>();
  private readonly applies = new Map<number, { remaining: Set<number>; done: () => void }>();
  private readonly relinks = new Map<number, { remaining: Set<number>; done: () => void }>();
  private stopping = false;

  /** `queues[w - 1][leg]`: worker w's queue of every leg. */
  constructor(
    private base: WorkerBase,
    queues: readonly (readonly WorkerLegSetup[])[],
    private readonly log: (line: string) => void,
    /** A worker saw leg `index` fail (its read, write or poll). */
    private readonly legFailed: (index: number, code: string, message: string) => void,
    private readonly options: ForwardingWorkersOptions = {},
  ) {
    this.threads = queues.map((legs, i) => ({ number: i + 1, legs: [...legs], thread: null, carried: null, last: null, failures: [], stopped: false, renumberings: [] }));
  }

  /** How many threads forward, the main thread included. */
  get count(): number {
    return this.threads.length + 1;
  }

  /** The workers left stopped after failing too often (their queues are not read). */
  get stoppedWorkers(): number[] {
    return this.threads.filter((t) => t.stopped).map((t) => t.number);
  }

  /** Starts every worker; resolves when all forward (after their JIT warm-up), with their warm-up times. */
  start(): Promise<number[]> {
    return Promise.all(this.threads.map((t) => this.spawn(t)));
  }

  private spawn(t: WorkerThread): Promise<number> {
    const setup: WorkerSetup = { ...this.base, worker: t.number, legs: t.legs };
    const thread = this.options.spawnThread?.(setup) ?? new Worker(WORKER_MODULE, { workerData: { qnatWorker: setup } });
    t.thread = thread;
    return new Promise<number>((resolve, reject) => {
      let ready = false;
      thread.on("message", (message: FromWorker) => {
        if (message.type === "ready") {
          ready = true;
          resolve(message.warmUpMs);
        } else this.received(t, message);
      });
      thread.on("error", (error) => {
        if (!ready) reject(new Error(`worker ${t.number} did not start: ${error.message.split("\n")[0]}`));
        else this.failed(t, thread, `${error.name}: ${error.message.split("\n")[0]}`);
      });
      thread.on("exit", (code) => {
        if (!ready) reject(new Error(`worker ${t.number} exited with ${code} before it forwarded`));
        // A thread that threw reports the error too, which may come just after its exit: that
        // one names the cause, so the exit waits a turn before it speaks for itself.
        else setImmediate(() => {
          if (!this.stopping && t.thread === thread) this.failed(t, thread, `exited with code ${code}`);
        });
        this.settle(t.number);
      });
    });
  }

  private received(t: WorkerThread, message: FromWorker): void {
    switch (message.type) {
      case "log":
        this.log(message.line);
        return;
      case "counters": {
        const counters = inPortsNow(message.counters, t.renumberings);
        t.last = counters;
        const request = this.pending.get(message.id);
        if (request === undefined) return;
        request.answers.set(t.number, counters);
        request.remaining.delete(t.number);
        if (request.remaining.size === 0) request.done();
        return;
      }
      case "leg-failed": {
        // Said in the legs the worker had: the main thread's index of it now (a removed leg: none).
        const index = t.renumberings.reduce((at, { ports }) => (at < 0 ? at : legIndexAfter(at, ports)), message.index);
        if (index >= 0) this.legFailed(index, message.code, message.message);
        return;
      }
      case "released": {
        const release = this.releases.get(message.index);
        release?.remaining.delete(t.number);
        if (release !== undefined && release.remaining.size === 0) release.done();
        return;
      }
      case "stopped":
        this.stops.get(t.number)?.();
        return;
      case "capture-chunk":
        this.onCaptureChunk?.(t.number, message);
        return;
      case "arp":
        this.onArpFrame?.(t.number, message.port, message.frame);
        return;
      case "neigh":
        this.onNeighbourNews?.(t.number, message.news);
        return;
      case "applied": {
        const change = this.applies.get(message.id);
        if (change !== undefined && change.remaining.delete(t.number) && change.remaining.size === 0) change.done();
        // It kept its running dataplane: started again with the new config, so that no thread
        // goes on with the old one, whether the others answered or not.
        if (message.error !== undefined && t.thread !== null) this.failed(t, t.thread, `the live change failed there: ${message.error}`);
        return;
      }
      case "relinked": {
        t.renumberings.shift();
        const change = this.relinks.get(message.id);
        if (change !== undefined && change.remaining.delete(t.number) && change.remaining.size === 0) change.done();
        // It let every leg go: started again on the new ones now, whether the others answered or not.
        if (message.error !== undefined && t.thread !== null) this.failed(t, t.thread, `the live change failed there: ${message.error}`);
        return;
      }
    }
  }

  /** Worker `t` failed: one line, and started again on the same queues unless it fails too often. */
  private failed(t: WorkerThread, thread: Worker, why: string): void {
    if (t.thread !== thread) return;
    t.thread = null;
    if (t.last !== null) t.carried = t.carried === null ? t.last : addDataplaneCounters(t.carried, [t.last]);
    t.last = null;
    // Started again, it runs the ports the main thread has now (t.legs, the base's config).
    t.renumberings = [];
    this.settle(t.number);
    const now = Date.now();
    t.failures = [...t.failures.filter((at) => now - at < RESTART_WINDOW_MS), now];
    if (t.failures.length >= RESTART_LIMIT) {
      t.stopped = true;
      this.log(`qnat: worker ${t.number} failed (${why}), ${t.failures.length} times in ${RESTART_WINDOW_MS / 1000} s: left stopped; its queues are not read until a restart`);
      return;
    }
    this.log(`qnat: worker ${t.number} failed (${why}); started again on its queues`);
    thread.removeAllListeners();
    void thread.terminate();
    this.spawn(t).catch((error: unknown) => {
      t.stopped = true;
      this.log(`qnat: worker ${t.number} could not be started again (${error instanceof Error ? error.message : String(error)}); its queues are not read until a restart`);
    });
  }

  /** A worker that is gone answers nothing more: the requests waiting for it go on without it. */
  private settle(number: number): void {
    for (const request of this.pending.values()) {
      if (request.remaining.delete(number) && request.remaining.size === 0) request.done();
    }
    for (const release of this.releases.values()) {
      if (release.remaining.delete(number) && release.remaining.size === 0) release.done();
    }
    for (const change of [...this.applies.values(), ...this.relinks.values()]) {
      if (change.remaining.delete(number) && change.remaining.size === 0) change.done();
    }
    this.stops.get(number)?.();
  }

  /** Every chunk of captured packets a worker sends (control/worker-capture.ts). */
  onCaptureChunk: ((worker: number, chunk: Extract<FromWorker, { type: "capture-chunk" }>) => void) | null = null;

  /** Every ARP frame a worker received on a tap port's wire (control/ethernet-threads.ts). */
  onArpFrame: ((from: number, port: number, frame: Uint8Array) => void) | null = null;

  /** Posts an ARP frame one thread received (`from`; 0: the main thread) to every other worker. */
  relayArp(from: number, port: number, frame: Uint8Array): void {
    for (const t of this.threads) if (t.number !== from) this.post(t, { type: "arp", port, frame });
  }

  /** Every neighbour news a worker's table tells (control/ethernet-threads.ts). */
  onNeighbourNews: ((from: number, news: NeighbourNews) => void) | null = null;

  /** Posts one thread's neighbour news (`from`; 0: the main thread) to every other worker. */
  relayNeighbourNews(from: number, news: NeighbourNews): void {
    for (const t of this.threads) if (t.number !== from) this.post(t, { type: "neigh", news });
  }

  /** Posts `message` to every running worker; the workers it reached. */
  broadcast(message: ToWorker): number[] {
    return this.threads.filter((t) => this.post(t, message)).map((t) => t.number);
  }

  private post(t: WorkerThread, message: ToWorker): boolean {
    if (t.thread === null) return false;
    t.thread.postMessage(message);
    return true;
  }

  /**
   * Every worker's counters (with what earlier runs of it counted), index w - 1 for worker w;
   * a worker that does not answer in time is given as it last answered (nothing, if never).
   */
  async counters(): Promise<DataplaneCounters[]> {
    const id = this.nextRequest++;
    const answers = new Map<number, DataplaneCounters>();
    const remaining = new Set(this.threads.filter((t) => this.post(t, { type: "counters", id })).map((t) => t.number));
    if (remaining.size > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.options.countersTimeoutMs ?? COUNTERS_TIMEOUT_MS);
        this.pending.set(id, {
          remaining,
          answers,
          done: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      });
      this.pending.delete(id);
    }
    return this.threads.map((t) => {
      const now = answers.get(t.number) ?? t.last;
      const parts = [t.carried, now].filter((c): c is DataplaneCounters => c !== null && c !== undefined);
      return addDataplaneCounters(NO_COUNTERS, parts);
    });
  }

  /** Packets per worker from counters: `main` the main thread's, `workers` as `counters()` gave them. */
  perWorker(main: DataplaneCounters, workers: readonly DataplaneCounters[]): WorkerStatsView[] {
    const view = (worker: number, c: DataplaneCounters, running: boolean): WorkerStatsView => ({ worker, ...packetTotals(c), running });
    return [view(0, main, true), ...workers.map((c, i) => view(i + 1, c, !this.threads[i]!.stopped))];
  }

  /**
   * Leg `index` is down: every worker stops using its queue of it; resolves when all let go (or
   * are gone), after which the caller may close the queues' fds.
   */
  releaseLeg(index: number): Promise<void> {
    // A worker started again before the leg is back must not be given the closed fds' numbers.
    for (const t of this.threads) t.legs[index] = { ...t.legs[index]!, fd: -1, queues: [] };
    const remaining = new Set(this.threads.filter((t) => this.post(t, { type: "leg-down", index })).map((t) => t.number));
    if (remaining.size === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = (): void => {
        this.releases.delete(index);
        resolve();
      };
      this.releases.set(index, { remaining, done });
    });
  }

  /**
   * A live change with the same ports (control/live-apply.ts): every worker swaps in the
   * successor dataplane of `config` between two batches. Resolves when all did, with [], or after
   * CHANGE_TIMEOUT_MS with the workers that had not answered (a loaded machine; a full routing
   * table to build): they swap when they get to it, still by the old config until then. A worker
   * that could not (it ran out of memory building it...) is started again with the new config, so
   * no thread goes on with the old one. Workers started later get `config` too.
   */
  async apply(config: WorkerBase["config"]): Promise<number[]> {
    this.base = { ...this.base, config };
    const id = this.nextRequest++;
    const remaining = new Set(this.threads.filter((t) => this.post(t, { type: "apply", id, config })).map((t) => t.number));
    const answered = new Promise<void>((resolve) => {
      const done = (): void => {
        this.applies.delete(id);
        resolve();
      };
      if (remaining.size === 0) done();
      else this.applies.set(id, { remaining, done });
    });
    return this.lateAfterWait(answered, remaining);
  }

  /** Waits for `answered` at most CHANGE_TIMEOUT_MS; then the workers still in `remaining`, in order, else []. */
  private async lateAfterWait(answered: Promise<void>, remaining: ReadonlySet<number>): Promise<number[]> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), this.options.changeTimeoutMs ?? CHANGE_TIMEOUT_MS)));
    const timedOut = await Promise.race([answered.then(() => false), late]);
    clearTimeout(timer);
    return timedOut ? [...remaining].sort((a, b) => a - b) : [];
  }

  /**
   * A live change that adds or removes ports (router-process.ts relinkLegs, after the main thread
   * linked its own legs anew): every worker swaps in the successor dataplane of `config` and
   * forwards over `queues[w - 1]` (its queue of every leg of `config`) in one step between two
   * batches; `ports[p]` is where port p went (-1: removed). `released` is called once every
   * worker answered (or is gone): none then holds an fd of the legs it had and `config` lacks, so
   * the caller may close them. Resolves with `released` called, or after CHANGE_TIMEOUT_MS with the
   * workers that had not answered (a loaded machine; a full routing table to build): they follow
   * when they get to it, and `released` waits for them. A worker that could not build the
   * successor let all its legs go; it is started again with the new config, as `apply` does.
   */
  async relink(config: WorkerBase["config"], queues: readonly (readonly WorkerLegSetup[])[], ports: readonly number[], released: () => void): Promise<number[]> {
    this.base = { ...this.base, config };
    const id = this.nextRequest++;
    const renumbering: PortRenumbering = { ports, portCount: config.ports.length };
    const remaining = new Set<number>();
    for (const t of this.threads) {
      // A worker started again from now on is given the new legs and config (spawn).
      t.legs = [...queues[t.number - 1]!];
      if (t.last !== null) t.last = inPortsNow(t.last, [renumbering]);
      if (t.carried !== null) t.carried = inPortsNow(t.carried, [renumbering]);
      if (!this.post(t, { type: "relink", id, config, legs: t.legs, ports })) continue;
      t.renumberings.push(renumbering);
      remaining.add(t.number);
    }
    const answered = new Promise<void>((resolve) => {
      const done = (): void => {
        this.relinks.delete(id);
        try {
          released();
        } finally {
          resolve();
        }
      };
      if (remaining.size === 0) done();
      else this.relinks.set(id, { remaining, done });
    });
    return this.lateAfterWait(answered, remaining);
  }

  /** Leg `index` was re-created: `queues[w - 1]` is worker w's queue of it. */
  legUp(index: number, queues: readonly WorkerLegSetup[]): void {
    this.threads.forEach((t, i) => {
      t.legs[index] = queues[i]!;
      this.post(t, { type: "leg-up", index, leg: queues[i]! });
    });
  }

  /**
   * Every worker stops reading and ends its batch (it answers between two batches, so it holds
   * no lock then); resolves when all answered, or after STOP_TIMEOUT_MS with those that did not
   * (a loaded machine may not have run them yet). Those are still running: the state can still be
   * saved (it takes the tables' lock as their batches do); `end()` ends every thread afterwards.
   */
  async stop(): Promise<number[]> {
    this.stopping = true;
    const unanswered: number[] = [];
    await Promise.all(
      this.threads.map(async (t) => {
        const thread = t.thread;
        if (thread === null) return;
        const answered = new Promise<void>((resolve) => this.stops.set(t.number, resolve));
        thread.postMessage({ type: "stop" } satisfies ToWorker);
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), STOP_TIMEOUT_MS)));
        if (await Promise.race([answered.then(() => false), late])) unanswered.push(t.number);
        clearTimeout(timer);
        this.stops.delete(t.number);
      }),
    );
    return unanswered;
  }

  /** Ends every worker thread (after `stop()` and the state saving). */
  async end(): Promise<void> {
    this.stopping = true;
    await Promise.all(
      this.threads.map(async (t) => {
        const thread = t.thread;
        if (thread === null) return;
        t.thread = null;
        await thread.terminate();
      }),
    );
  }
}

/** `counters`, said in the ports a worker had before `renumberings`, in the ports after them. */
function inPortsNow(counters: DataplaneCounters, renumberings: readonly PortRenumbering[]): DataplaneCounters {
  return renumberings.reduce((now, { ports, portCount }) => renumberPortCounters(now, ports, portCount), counters);
}

/** Leg `index` (`port * 2 + leg`) after its port moved as `ports` says; -1 when its port was removed. */
function legIndexAfter(index: number, ports: readonly number[]): number {
  const port = ports[index >> 1] ?? -1;
  return port < 0 ? -1 : port * 2 + (index & 1);
}

/** A worker that never answered: nothing counted. */
const NO_COUNTERS: DataplaneCounters = {
  portCounters: new Float64Array(0),
  drops: new Float64Array(0),
  conntrack: {},
  chains: { lookups: 0, nodesWalked: 0, longestWalk: 0 },
  fragments: {},
  fragmentation: {},
  rules: null,
  nat: {},
};

/** Received (wire and mirror legs), sent and dropped packets of one dataplane's counters, as `show stats` totals them. */
function packetTotals(c: DataplaneCounters): { rxPackets: number; txPackets: number; drops: number } {
  let rxPackets = 0;
  let txPackets = 0;
  for (let at = 0; at + PORT_COUNTERS <= c.portCounters.length; at += PORT_COUNTERS) {
    rxPackets += c.portCounters[at + PortCounter.RxPackets]! + c.portCounters[at + PortCounter.MirrorRxPackets]!;
    txPackets += c.portCounters[at + PortCounter.TxPackets]! + c.portCounters[at + PortCounter.MirrorTxPackets]!;
  }
  let drops = 0;
  for (const n of c.drops) drops += n;
  return { rxPackets, txPackets, drops };
}

const PORT_COUNTERS = PortCounter.Count as number;

/** A leg holding the workers' queues of its device (MultiQueueLeg; a tap port's: control/ethernet-threads.ts). */
export interface WorkerQueued {
  /** Worker w's queue as it is sent to it. */
  queueFor(worker: number): WorkerLegSetup;
  /** Closes every queue now, queue 0 included: for a caller that knows no worker holds their fds (a leg of a port removed live, once every worker relinked). */
  closeQueues(): void;
}

export function isWorkerQueued(leg: object): leg is WorkerQueued {
  return typeof (leg as Partial<WorkerQueued>).queueFor === "function";
}

/** A worker's queue `device` as it is sent to it, with every queue's fd (`queueFds`). */
export function workerQueueSetup(device: TunDevice, queueFds: readonly number[]): WorkerLegSetup {
  return { fd: device.fd, name: device.name, netns: device.netns ?? "", queues: queueFds };
}

/**
 * How a multi-queue leg closes (the supervisor retires it, the router stops): queue 0 is no longer
 * read at once; every queue, queue 0 included (every thread writes through it: io/forwarder.ts
 * useQueues), is closed once every worker let its fds go (`release`).
 */
export function closeWorkerQueues(leg: TunLeg & WorkerQueued, release: () => Promise<void>): void {
  leg.device.stopReadable();
  void release().then(() => leg.closeQueues());
}

/**
 * Queue 0 of a leg of a multi-queue router: the main thread's own queue, holding the other
 * queues (the workers'). Closing it (the supervisor retires it, the router stops) has every
 * worker let its queue go first, then closes them all; the device goes with its last queue.
 */
export class MultiQueueLeg extends TunLeg implements WorkerQueued {
  constructor(
    device: TunDevice,
    /** Queues 1..N-1, worker w's at w - 1. */
    readonly workerQueues: readonly TunDevice[],
    private readonly release: () => Promise<void>,
  ) {
    super(device);
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
