/**
 * `npm run bench:capture`: what a running capture costs the forwarding loop, in memory, one core,
 * on the hot path's established-SNAT workload (64k UDP flows, 64-byte packets, batches of 256;
 * bench/hotpath.ts). Four figures in one run, measured in turns (A B C A B C ...) so a noisy
 * machine moves them alike:
 *   - no capture: the forwarder's work as it is with no capture (Dataplane.decisions null);
 *   - decisions only: the pipeline records what it decided per packet (what a capture reads);
 *   - capture: a capture of the qr- and qg- wire legs, as `qnat capture qr-... qg-...`: each
 *     packet copied into the ring as read and as written, with its decision and connection;
 *     the ring is emptied after each batch without writing (the drain runs off the loop);
 *   - drain: packets/s the drain turns into pcapng blocks with their comments (off the loop).
 * Prints the figures; `BENCH_QUICK=1` shortens the runs.
 */
import { captureInterfaces, CaptureSession, CaptureTap, type CaptureInterface } from "../src/io/capture.js";
import { CommentCache, commentContextOf, drainSession } from "../src/control/capture.js";
import { BATCH, Driver, GATEWAY_PORT, PacketTemplate, TENANT_PORT, establishTenantFlows, seedRouter, shuffled, tenantFlows } from "./lib/scenario.js";

const QUICK = process.env.BENCH_QUICK === "1";
const ROUNDS = QUICK ? 2 : 5;
const SECONDS = QUICK ? 0.3 : 1;

function log(text: string): void {
  process.stdout.write(`${text}\n`);
}

const router = seedRouter(262_144);
const flows = tenantFlows(65_536, 0xc0ffee);
const packets = establishTenantFlows(router, flows);
const template = new PacketTemplate(packets, shuffled(65_536, 0x5eed));
const driver = new Driver(router.dataplane);
const dataplane = router.dataplane;
const names = ["qr-694450d6-f6", "qg-e76de35e-90"];
const interfaces = captureInterfaces(
  names.map((name) => ({ name, ethernet: false, wireNamespace: "w", wireDevice: "eth0" })),
  "r",
  names,
  "wire",
) as CaptureInterface[];
const tap = new CaptureTap(BATCH, [false, false]);
// The ring of `qnat capture` (io/capture.ts defaults: 8 MiB, 8192 packets).
const session = new CaptureSession(interfaces, 4);
tap.add(session);
const empty = () => {
  while (session.peek() >= 0) session.advance();
};

/** Batches per second of `step` for `seconds`. */
function rate(step: (view: Uint8Array) => void, seconds: number): number {
  let next = 0;
  let batches = 0;
  const views = template.views;
  const until = performance.now() + seconds * 1000;
  while (performance.now() < until) {
    for (let i = 0; i < 16; i++) {
      step(views[next]!);
      if (++next === template.batches) next = 0;
    }
    batches += 16;
  }
  return batches / seconds;
}

const plain = (view: Uint8Array): void => {
  dataplane.decisions = null;
  driver.run(view, TENANT_PORT);
};
const decisionsOnly = (view: Uint8Array): void => {
  dataplane.decisions = tap.decisions;
  driver.run(view, TENANT_PORT);
};
const captured = (view: Uint8Array): void => {
  dataplane.decisions = tap.decisions;
  const batch = driver.batch;
  batch.data.set(view);
  batch.count = BATCH;
  tap.ingress(batch, TENANT_PORT * 2);
  driver.generated.count = 0;
  dataplane.processBatch(batch, TENANT_PORT, 0, driver.verdicts, driver.generated, driver.generatedVerdicts);
  tap.decided(driver.verdicts, BATCH);
  tap.egress(dataplane, batch, driver.verdicts, TENANT_PORT * 2, dataplane.released, dataplane.releasedVerdicts, driver.generated, driver.generatedVerdicts, dataplane.fragmentOutput.batch, dataplane.fragmentOutput.verdicts);
  empty();
};

// Warm up each path, and check the capture saw every packet on both legs.
rate(plain, 0.3);
rate(decisionsOnly, 0.3);
captured(template.views[0]!);
if (session.lostTotal !== 0) throw new Error("bench: the capture lost packets");
for (let i = 0; i < BATCH; i++) if (driver.verdicts[i] !== GATEWAY_PORT * 2) throw new Error(`bench: packet ${i} was not forwarded`);
rate(captured, 0.3);

const results: Record<string, number[]> = { none: [], decisions: [], capture: [] };
for (let round = 0; round < ROUNDS; round++) {
  results["none"]!.push(rate(plain, SECONDS) * BATCH);
  results["decisions"]!.push(rate(decisionsOnly, SECONDS) * BATCH);
  results["capture"]!.push(rate(captured, SECONDS) * BATCH);
}
dataplane.decisions = null;

// The drain: one batch's copies (both legs) turned into pcapng blocks with comments.
const context = commentContextOf(dataplane);
const cache = new CommentCache();
let drained = 0;
const drainStart = performance.now();
while (performance.now() - drainStart < SECONDS * 1000) {
  dataplane.decisions = tap.decisions;
  const batch = driver.batch;
  batch.data.set(template.views[Math.floor(drained / BATCH) % template.batches]!);
  batch.count = BATCH;
  tap.ingress(batch, TENANT_PORT * 2);
  dataplane.processBatch(batch, TENANT_PORT, 0, driver.verdicts, driver.generated, driver.generatedVerdicts);
  tap.decided(driver.verdicts, BATCH);
  tap.egress(dataplane, batch, driver.verdicts, TENANT_PORT * 2, dataplane.released, dataplane.releasedVerdicts, driver.generated, driver.generatedVerdicts, dataplane.fragmentOutput.batch, dataplane.fragmentOutput.verdicts);
  const held = session.pending;
  drainSession(session, context, 1 << 20, cache);
  drained += held - session.pending;
}
const drainPps = drained / ((performance.now() - drainStart) / 1000);
dataplane.decisions = null;

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const none = median(results["none"]!);
log(`established SNAT, 64k flows, 64-byte packets, batches of ${BATCH}, ${ROUNDS} rounds of ${SECONDS} s, medians:`);
log(`  no capture        ${(none / 1e6).toFixed(2)} Mpps`);
for (const [key, label] of [
  ["decisions", "decisions only"],
  ["capture", "capture qr- + qg-"],
] as const) {
  const value = median(results[key]!);
  log(`  ${label.padEnd(17)} ${(value / 1e6).toFixed(2)} Mpps (${((value / none - 1) * 100).toFixed(1)}%; ${((1e9 / value - 1e9 / none)).toFixed(1)} ns more per packet)`);
}
log(`  drain (off the loop): ${(drainPps / 1e6).toFixed(2)} M captured packets/s turned into pcapng blocks with comments`);
log(`  rounds: ${JSON.stringify(Object.fromEntries(Object.entries(results).map(([k, v]) => [k, v.map((x) => +(x / 1e6).toFixed(2))])))}`);
