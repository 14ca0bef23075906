/**
 * How long does `show conntrack` hold the serving thread at a time? No root, no packets: a
 * connection table of N entries (default 1,000,000) served on a control socket as the router
 * serves it (ConntrackCursor pieces), listed by a client in another process (this file, run with
 * `--client`), while a 1 ms timer on the server's event loop records the gaps between its ticks:
 * a gap is how long a leg's readable callback would have waited. Usage (docs/performance.md):
 *   node dist/bench/listing-gaps.js [entries]
 */
import { fork } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ConntrackCursor } from "../src/conntrack/format.js";
import { ConntrackTable } from "../src/conntrack/table.js";
import { systemClock } from "../src/core/clock.js";
import { controlRequest, serveControl } from "../src/control/socket.js";

const UDP = 17;
const SOURCES = 16;

async function client(path: string, json: boolean): Promise<void> {
  let chars = 0;
  const response = await controlRequest(path, { cmd: "show", what: "conntrack", json }, 60_000, (piece) => (chars += piece.length));
  process.stdout.write(`  client: ${response.ok ? "ok" : "failed"}, ${chars} characters\n`);
}

/** 10.0.0.3:20000-20015 -> 203.0.113.10:1.., SNATed to 9.186.100.2, confirmed, 300 s to live. */
function fill(entries: number): ConntrackTable {
  const table = new ConntrackTable({ capacity: Math.ceil(entries * 1.05), clock: systemClock });
  for (let i = 0; i < entries; i++) {
    const sport = 20000 + (i % SOURCES);
    const dport = 1 + Math.floor(i / SOURCES);
    const id = table.create(UDP, 0x0a000003, 0xcb00710a, sport, dport);
    table.setReplyTuple(id, 0xcb00710a, 0x09ba6402, dport, sport);
    table.confirm(id);
    table.refreshNow(id, 300);
  }
  return table;
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

async function main(): Promise<void> {
  const entries = Number(process.argv[2] ?? 1_000_000);
  if (!(Number.isInteger(entries) && entries > 0 && entries <= 1 << 24)) throw new Error("entries must be 1..16777216");
  const table = fill(entries);
  const dir = mkdtempSync(join(tmpdir(), "qnat-gaps-"));
  const path = join(dir, "qrouter-gaps.sock");
  const server = await serveControl(path, (request) => ({
    ok: true,
    pieces: new ConntrackCursor(table, request.cmd === "show" && request.json === true ? "json" : "text"),
  }));
  try {
    for (const json of [false, true]) {
      const gaps: number[] = [];
      let last = performance.now();
      const timer = setInterval(() => {
        const now = performance.now();
        gaps.push(now - last);
        last = now;
      }, 1);
      const started = performance.now();
      await new Promise<void>((resolve, reject) => {
        const child = fork(fileURLToPath(import.meta.url), ["--client", path, String(json)]);
        child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`client exited ${code}`))));
        child.on("error", reject);
      });
      const took = performance.now() - started;
      clearInterval(timer);
      gaps.sort((a, b) => a - b);
      process.stdout.write(
        `${entries} entries, show conntrack${json ? " --json" : ""}: listed in ${took.toFixed(0)} ms; gaps between 1 ms ticks of the server's loop: ` +
          `median ${percentile(gaps, 0.5).toFixed(2)} ms, p99 ${percentile(gaps, 0.99).toFixed(2)} ms, max ${gaps[gaps.length - 1]!.toFixed(1)} ms\n`,
      );
    }
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const run = process.argv[2] === "--client" ? client(process.argv[3]!, process.argv[4] === "true") : main();
run.catch((error: unknown) => {
  process.stderr.write(`listing-gaps: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
