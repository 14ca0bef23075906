/**
 * A worker thread's side of a live change (control/dataplane-worker.ts), in a real worker thread
 * over real shared tables, without TUN devices (every leg down, as a worker whose queues were
 * closed): a change that brings a big routing table is built in pieces, so the worker goes on
 * answering (and, with legs, forwarding) while it builds, and swaps the successor in at the end;
 * a route line's mistake comes back as that line's one-line error, and the worker keeps running.
 * The worker runs the built JavaScript (dist/), as the router does.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { afterEach, describe, expect, it } from "vitest";
import { parseConfig, type RouterConfig } from "../../src/config/config.js";
import { CryptoRng } from "../../src/core/rng.js";
import { buildDataplane, sharedTablesOf } from "../../src/dataplane/from-config.js";
import type { FromWorker, ToWorker, WorkerSetup } from "../../src/io/worker-protocol.js";

const ROOT = join(import.meta.dirname, "../..");
const WORKER = join(ROOT, "dist/src/control/dataplane-worker.js");
const SEED = `router:
  id: worker-apply
ports:
  - name: qr-tenant
    addresses: [10.0.0.1/24]
    wire: { namespace: qnat-worker-apply-t, device: eth0 }
  - name: qg-gateway
    addresses: [198.51.100.2/24]
    wire: { namespace: qnat-worker-apply-g, device: eth0 }
routes:
  - default via 198.51.100.1 dev qg-gateway
workers: 2
`;

/** The seed with `count` more /24 routes through the gateway (10.128.0.0/24 on). */
function withRoutes(count: number, extra: readonly string[] = []): string {
  const lines = Array.from({ length: count }, (_, i) => `  - ${11 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}.0/24 via 198.51.100.1 dev qg-gateway`);
  return SEED.replace("routes:\n", `routes:\n${[...lines, ...extra].join("\n")}\n`);
}

class WorkerUnderTest {
  readonly thread: Worker;
  readonly received: FromWorker[] = [];
  private waiting: Array<{ test: (m: FromWorker) => boolean; done: (m: FromWorker) => void }> = [];

  constructor(config: RouterConfig) {
    const main = buildDataplane(config, { rng: new CryptoRng(), sharable: true });
    const legs = config.ports.flatMap((port) => [0, 1].map((leg) => ({ fd: -1, queues: [], name: `${port.name}-${leg}`, netns: port.wire.namespace })));
    const setup: WorkerSetup = { worker: 1, config, legs, tables: sharedTablesOf(main), vnetHdr: false, batchSize: 64, slotSize: 2048, headroom: 0, spinMicroseconds: 0, warmUp: false };
    this.thread = new Worker(WORKER, { workerData: { qnatWorker: setup } });
    this.thread.on("message", (message: FromWorker) => {
      this.received.push(message);
      for (const w of this.waiting.filter((w) => w.test(message))) w.done(message);
      this.waiting = this.waiting.filter((w) => !w.test(message));
    });
  }

  next(test: (m: FromWorker) => boolean): Promise<FromWorker> {
    const seen = this.received.find(test);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((done) => this.waiting.push({ test, done }));
  }

  send(message: ToWorker): void {
    this.thread.postMessage(message);
  }
}

const running: Worker[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((w) => w.terminate()));
});

describe.skipIf(!existsSync(WORKER))("a worker thread's live change", () => {
  it("a table of 100,000 more routes is built in pieces: the worker answers a counters request sent after the change before it has swapped", async () => {
    const worker = new WorkerUnderTest(parseConfig(SEED, "router.yaml"));
    running.push(worker.thread);
    await worker.next((m) => m.type === "ready");
    const next = parseConfig(withRoutes(100_000), "router.yaml");
    worker.send({ type: "apply", id: 1, config: next });
    worker.send({ type: "counters", id: 2 });
    const applied = await worker.next((m) => m.type === "applied");
    expect(applied).toEqual({ type: "applied", id: 1 });
    const order = worker.received.filter((m) => m.type === "applied" || m.type === "counters").map((m) => m.type);
    // A table built in one go would answer the change first: messages wait for the build.
    expect(order).toEqual(["counters", "applied"]);
  });

  it("a route line's mistake is that line's one-line error, and the worker keeps the running dataplane and answers", async () => {
    const worker = new WorkerUnderTest(parseConfig(SEED, "router.yaml"));
    running.push(worker.thread);
    await worker.next((m) => m.type === "ready");
    const text = withRoutes(1000, ["  - 203.0.113.0/24 dev qr-nosuchport"]);
    const line = text.split("\n").findIndex((l) => l.includes("qr-nosuchport")) + 1;
    worker.send({ type: "apply", id: 7, config: parseConfig(text, "router.yaml") });
    const applied = await worker.next((m) => m.type === "applied");
    expect(applied).toMatchObject({ type: "applied", id: 7 });
    expect((applied as { error?: string }).error).toMatch(new RegExp(`^router\\.yaml:${line}: route "203\\.0\\.113\\.0/24 dev qr-nosuchport": `));
    worker.send({ type: "counters", id: 8 });
    expect(await worker.next((m) => m.type === "counters")).toMatchObject({ type: "counters", id: 8 });
  });
});

describe.skipIf(!existsSync(WORKER))("a worker thread's live change of ports (relink)", () => {
  /** The seed with a third port, qr-extra 10.9.0.1/24, before the gateway's (its legs 2 and 3; the gateway's 4 and 5). */
  const withPort = (routes: number): string =>
    withRoutes(routes).replace("  - name: qg-gateway\n", "  - name: qr-extra\n    addresses: [10.9.0.1/24]\n    wire: { namespace: qnat-worker-apply-x, device: eth0 }\n  - name: qg-gateway\n");
  const downLegs = (config: RouterConfig) => config.ports.flatMap((port) => [0, 1].map((leg) => ({ fd: -1, queues: [], name: `${port.name}-${leg}`, netns: port.wire.namespace })));

  it("a leg-down sent after the relink is done in the new legs, after the swap; a counters request is answered meanwhile, in the old ports", async () => {
    const worker = new WorkerUnderTest(parseConfig(SEED, "router.yaml"));
    running.push(worker.thread);
    await worker.next((m) => m.type === "ready");
    const next = parseConfig(withPort(20_000), "router.yaml");
    worker.send({ type: "relink", id: 1, config: next, legs: downLegs(next), ports: [0, 2] });
    // Leg 5 exists only in the new numbering (the gateway's mirror).
    worker.send({ type: "leg-down", index: 5 });
    worker.send({ type: "counters", id: 2 });
    await worker.next((m) => m.type === "released");
    const order = worker.received.filter((m) => m.type !== "log" && m.type !== "ready").map((m) => m.type);
    expect(order).toEqual(["counters", "relinked", "released"]);
    expect(worker.received.find((m) => m.type === "relinked")).toEqual({ type: "relinked", id: 1 });
    expect(worker.received.find((m) => m.type === "released")).toMatchObject({ index: 5 });
    // Before the swap: two ports of counters; after it, three.
    const counted = (m: FromWorker | undefined): number => (m?.type === "counters" ? m.counters.portCounters.length : -1);
    const before = counted(worker.received.find((m) => m.type === "counters"));
    worker.send({ type: "counters", id: 3 });
    const after = counted(await worker.next((m) => m.type === "counters" && m.id === 3));
    expect(after / before).toBe(3 / 2);
  });

  it("a relink whose routes it cannot build is answered with the line's error, and a leg-down sent after it is still answered", async () => {
    const worker = new WorkerUnderTest(parseConfig(SEED, "router.yaml"));
    running.push(worker.thread);
    await worker.next((m) => m.type === "ready");
    const next = parseConfig(withPort(10).replace("routes:\n", "routes:\n  - 203.0.113.0/24 dev qr-nosuchport\n"), "router.yaml");
    worker.send({ type: "relink", id: 4, config: next, legs: downLegs(next), ports: [0, 2] });
    worker.send({ type: "leg-down", index: 1 });
    const relinked = await worker.next((m) => m.type === "relinked");
    expect((relinked as { error?: string }).error).toMatch(/^router\.yaml:\d+: route "203\.0\.113\.0\/24 dev qr-nosuchport": /);
    expect(await worker.next((m) => m.type === "released")).toMatchObject({ index: 1 });
  });
});
