// A worker thread of the shared-tables stress test (test/dataplane/shared-tables-stress.test.ts):
// its own Dataplane over the main thread's shared tables, with the main thread's clock (one Int32
// word of seconds in a SharedArrayBuffer, which the main thread advances to expire connections).
// It runs the built JavaScript (dist/). workerData: { dist, configText, shared, clock, seed }.
//
// Message in: { port, established, fresh, start, batch, rounds, stop } — `rounds` batches of
// `batch` packets arriving on `port`'s wire: each batch the next `batch - 1` packets of
// `established` (cyclically, from index `start`) and one new connection made from `fresh` (a
// template whose source port is counted up, its server chosen among `fresh.servers`), then
// housekeeping; it stops early when stop[0] turns 1. Every established packet that leaves must
// leave on the other port as 9.186.100.2 with its own source port, toward its own server and port
// (SNAT keeps a free port; the test makes sure it is free). Answer: { packets, lockFree,
// forwarded, wrong: [first few mismatches], counters: { expired, earlyDrop, removed, created } }.
import { parentPort, workerData } from "node:worker_threads";

const { dist, configText, shared, clock, seed } = workerData;
const load = (path) => import(`${dist}/src/${path}`);
const [{ parseConfig }, { buildDataplane }, { XorShift32 }, { PacketBatch }, { buildPacket }, { parseIpv4 }] = await Promise.all([
  load("config/config.js"),
  load("dataplane/from-config.js"),
  load("core/rng.js"),
  load("core/batch.js"),
  load("wire/build.js"),
  load("core/addr.js"),
]);

const seconds = new Int32Array(clock);
const sharedClock = { now: () => Atomics.load(seconds, 0) };
const config = parseConfig(configText, "shared-tables.yaml");
const dataplane = buildDataplane(config, { clock: sharedClock, rng: new XorShift32(seed), shared });
const LEG_WIRE = 0;
const GATEWAY_ADDRESS = parseIpv4("9.186.100.2") | 0;

parentPort.on("message", (message) => {
  const { port, established, fresh, start, batch, rounds, stop } = message;
  const ingress = dataplane.ports.findIndex((p) => p.name === port);
  const other = dataplane.ports.findIndex((p) => p.name !== port);
  const built = established.map((spec) => buildPacket(spec));
  const want = established.map((spec) => ({ port: other, src: GATEWAY_ADDRESS, sport: spec.sport, dst: parseIpv4(spec.dst) | 0, dport: spec.dport }));
  const rx = new PacketBatch(batch, 2048);
  const verdicts = new Int32Array(batch);
  const generated = new PacketBatch(batch * 2, 2048);
  const generatedVerdicts = new Int32Array(batch * 2);
  const lockFreeBefore = dataplane.lockFreePackets;
  const counters = dataplane.conntrack.counters;
  const before = { expired: counters.expired, earlyDrop: counters.earlyDrop, removed: counters.removed, created: counters.created };
  const wrong = [];
  let packets = 0;
  let forwarded = 0;
  let next = start % built.length;
  let freshPort = fresh.sport;
  for (let round = 0; round < rounds && Atomics.load(stop, 0) === 0; round++) {
    rx.clear();
    generated.clear();
    const which = [];
    for (let k = 0; k < batch - 1; k++) {
      which.push(next);
      rx.push(built[next]);
      next = (next + 1) % built.length;
    }
    freshPort = freshPort >= 65000 ? fresh.sport : freshPort + 1;
    // `fresh.servers` ("198.51.100"): the new connection goes to one of 250 servers of that /24.
    const dst = `${fresh.servers}.${(freshPort % 250) + 1}`;
    rx.push(buildPacket({ protocol: fresh.protocol, src: fresh.src, dst, sport: freshPort, dport: fresh.dport }));
    dataplane.processBatch(rx, ingress, LEG_WIRE, verdicts, generated, generatedVerdicts);
    dataplane.housekeeping();
    packets += rx.count;
    for (let i = 0; i < which.length; i++) {
      const verdict = verdicts[i];
      if (verdict < 0) continue;
      forwarded++;
      const w = want[which[i]];
      const v = new DataView(rx.data.buffer, rx.data.byteOffset + rx.offsetOf(i));
      const got = { port: verdict >> 1, leg: verdict & 1, src: v.getInt32(12), dst: v.getInt32(16), sport: v.getUint16(20), dport: v.getUint16(22) };
      if (got.port !== w.port || got.leg !== LEG_WIRE || got.src !== w.src || got.sport !== w.sport || got.dst !== w.dst || got.dport !== w.dport) {
        if (wrong.length < 5) wrong.push({ sent: established[which[i]], got });
      }
    }
  }
  parentPort.postMessage({
    packets,
    forwarded,
    lockFree: dataplane.lockFreePackets - lockFreeBefore,
    wrong,
    counters: {
      expired: counters.expired - before.expired,
      earlyDrop: counters.earlyDrop - before.earlyDrop,
      removed: counters.removed - before.removed,
      created: counters.created - before.created,
    },
  });
});
parentPort.postMessage({ ready: true });
