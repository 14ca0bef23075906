// A worker thread with its own Dataplane over the shared tables of the test's main thread
// (test/dataplane/shared-tables-workers.test.ts). It runs the built JavaScript (dist/): worker
// threads cannot load the TypeScript sources. workerData: { dist, configText, shared, seed, now }.
//
// Messages in: { port, packets: PacketSpec[], batch, rounds?, lockFree?, gate? } — the packets
// arrive on `port`'s wire in batches of `batch`, all of them `rounds` times (default 1), with the
// lock-free established path on or off (default on); with `gate` (an Int32Array over a
// SharedArrayBuffer) the worker first waits until gate[0] is 1, so that two workers start
// together. Answer: { out, drops, lockFree }: per packet null (dropped) or { port, leg, packet }
// (where it left, decoded), the drops of this message by reason name, and how many packets the
// lock-free path forwarded.
import { parentPort, workerData } from "node:worker_threads";

const { dist, configText, shared, seed, now } = workerData;
const load = (path) => import(`${dist}/src/${path}`);
const [{ parseConfig }, { buildDataplane }, { ManualClock }, { XorShift32 }, { PacketBatch }, { buildPacket, decodePacket }, drop] = await Promise.all([
  load("config/config.js"),
  load("dataplane/from-config.js"),
  load("core/clock.js"),
  load("core/rng.js"),
  load("core/batch.js"),
  load("wire/build.js"),
  load("core/drop-reason.js"),
]);

const config = parseConfig(configText, "shared-tables.yaml");
const dataplane = buildDataplane(config, { clock: new ManualClock(now), rng: new XorShift32(seed), shared });
const LEG_WIRE = 0;

function dropsByName() {
  const out = {};
  const drops = dataplane.drops;
  for (let i = 0; i < drops.length; i++) {
    if (drops[i] === 0) continue;
    const name = drop.dropReasonName(i % drop.DROP_REASON_COUNT);
    out[name] = (out[name] ?? 0) + drops[i];
  }
  return out;
}

parentPort.on("message", (message) => {
  const { port, packets, batch, gate } = message;
  const rounds = message.rounds ?? 1;
  dataplane.lockFreeFastPath = message.lockFree ?? true;
  const lockFreeBefore = dataplane.lockFreePackets;
  if (gate !== undefined) {
    while (Atomics.load(gate, 0) === 0) Atomics.wait(gate, 0, 0);
  }
  const ingress = dataplane.ports.findIndex((p) => p.name === port);
  const before = dropsByName();
  const rx = new PacketBatch(batch, 2048);
  const verdicts = new Int32Array(batch);
  const generated = new PacketBatch(batch * 2, 2048);
  const generatedVerdicts = new Int32Array(batch * 2);
  const out = [];
  const built = packets.map((spec) => buildPacket(spec));
  for (let n = 0; n < rounds * packets.length; n += batch) {
    rx.clear();
    generated.clear();
    for (let k = n; k < n + batch && k < rounds * packets.length; k++) rx.push(built[k % packets.length]);
    dataplane.processBatch(rx, ingress, LEG_WIRE, verdicts, generated, generatedVerdicts);
    dataplane.housekeeping();
    for (let i = 0; i < rx.count; i++) {
      const verdict = verdicts[i];
      if (verdict < 0) out.push(null);
      else {
        const at = rx.offsetOf(i);
        out.push({ port: dataplane.ports[verdict >> 1].name, leg: verdict & 1, packet: decodePacket(rx.data.subarray(at, at + rx.lengths[i])) });
      }
    }
  }
  const after = dropsByName();
  const drops = {};
  for (const [name, n] of Object.entries(after)) if (n !== (before[name] ?? 0)) drops[name] = n - (before[name] ?? 0);
  parentPort.postMessage({ out, drops, lockFree: dataplane.lockFreePackets - lockFreeBefore });
});
parentPort.postMessage({ ready: true });
