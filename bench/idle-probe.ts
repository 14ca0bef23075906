/**
 * What a pause costs (not part of `npm run bench`; docs/performance-e2e.md, latency): one ICMP
 * echo from 10.0.0.3 and its reply through the seed's Dataplane.processBatch, in memory, `count`
 * times, with a pause of `gap` ms between pings, and the median time of each. Usage:
 *   node dist/bench/idle-probe.js [gap-ms] [count] [sleep|busy|skip|evict]
 * sleep: Atomics.wait (the CPU idles, as a router in epoll does); busy: a JS busy-wait; skip: no
 * real pause, the dataplane's clock moved by `gap` instead; evict: no pause, a 64 MiB buffer
 * touched instead (caches evicted). The ping's connection exists from the first round on, so
 * every later packet takes the established fast path.
 */
import { buildPacket } from "../src/wire/build.js";
import { Driver, GATEWAY_PORT, TENANT_PORT, seedRouter } from "./lib/scenario.js";

const gap = Number(process.argv[2] ?? 10);
const count = Number(process.argv[3] ?? 300);
const mode = process.argv[4] ?? "sleep";
if (!["sleep", "busy", "skip", "evict"].includes(mode)) {
  process.stderr.write(`idle-probe: unknown mode ${mode} (sleep, busy, skip or evict)\n`);
  process.exit(2);
}
const router = seedRouter(262_144);
const driver = new Driver(router.dataplane);
const sleeper = new Int32Array(new SharedArrayBuffer(4));
const junk = new Uint8Array(mode === "evict" ? 64 << 20 : 0);
const payload = new Uint8Array(56);
const request: number[] = [];
const reply: number[] = [];
let sink = 0;

for (let i = 0; i < count; i++) {
  const echo = buildPacket({ protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 77, icmpSeq: i, payload });
  let t0 = performance.now();
  const out = driver.runPackets([echo], TENANT_PORT).out[0]!;
  request.push((performance.now() - t0) * 1000);
  const id = (out[24]! << 8) | out[25]!;
  const answer = buildPacket({ protocol: "icmp", src: "203.0.113.10", dst: "9.186.100.2", icmpType: 0, icmpId: id, icmpSeq: i, payload });
  t0 = performance.now();
  driver.runPackets([answer], GATEWAY_PORT);
  reply.push((performance.now() - t0) * 1000);
  if (mode === "sleep") Atomics.wait(sleeper, 0, 0, gap);
  else if (mode === "busy") {
    const end = performance.now() + gap;
    while (performance.now() < end);
  } else if (mode === "skip") router.clock.offset += gap / 1000;
  else for (let j = 0; j < junk.length; j += 64) sink += junk[j]!++;
}

const median = (values: number[]): string => [...values].sort((a, b) => a - b)[values.length >> 1]!.toFixed(1);
const last = Math.min(100, count);
process.stdout.write(
  `${mode}, ${gap} ms between ${count} pings: median us over the last ${last}: echo request ${median(request.slice(-last))}, reply ${median(reply.slice(-last))}` +
    ` (all: ${median(request)}, ${median(reply)})${sink < 0 ? "" : ""}\n`,
);
