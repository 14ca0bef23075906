/**
 * The running router's control socket against real clients, while it forwards: a copy of the
 * seed's lab under unique namespace names (never the seed's own), linked to nothing, removed
 * afterwards even on failure. Root only. The router is started under a umask of 000; the table
 * gets 6,000 connections by real packets (UDP from 10.0.0.3, bounded); then clients send
 * garbage, leave half a request, vanish in the middle of a listing, and stop reading one, while
 * 10.0.0.3 pings the outside through the router: no ping is lost, and the router still lists
 * its table in conntrack -L format.
 */
import { spawn } from "node:child_process";
import { lstatSync, readFileSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import type { StatsView } from "../../src/control/show.js";
import { controlRequest, controlSocketPath } from "../../src/control/socket.js";
import { randomTag, retagConfigText } from "../../src/control/twin.js";
import { isRoot as runningAsRoot } from "../../src/io/netns.js";
import { startQnatLab, type Lab } from "../../bench/e2e-lab.js";
import { sendUdpFlows } from "../../bench/lib/udp-flows.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/control/router-control.test.ts: not root, so the control socket tests against a running router are skipped");

const SEED = resolve(import.meta.dirname, "../../examples/seed.yaml");
const CONNECTIONS = 6000;
const SOURCE_PORTS = [21000, 21001, 21002];

/** A bounded ping from 10.0.0.3 to the outside host; resolves with its summary line's counts. */
function ping(namespace: string, count: number): Promise<{ transmitted: number; received: number }> {
  return new Promise((done, fail) => {
    const child = spawn("ip", ["netns", "exec", namespace, "ping", "-n", "-c", String(count), "-i", "0.05", "-W", "2", "-I", "10.0.0.3", "203.0.113.10"], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("error", fail);
    child.on("exit", () => {
      clearTimeout(timer);
      const match = /(\d+) packets transmitted, (\d+) received/.exec(output);
      if (match === null) fail(new Error(`no ping summary in: ${output}`));
      else done({ transmitted: Number(match[1]), received: Number(match[2]) });
    });
  });
}

function connect(path: string): Promise<Socket> {
  return new Promise((done, fail) => {
    const socket = createConnection(path, () => done(socket));
    socket.on("error", fail);
  });
}

describe.skipIf(!isRoot)("the router's control socket never holds up forwarding", () => {
  const text = retagConfigText(readFileSync(SEED, "utf8"), SEED, randomTag());
  const config = parseConfig(text, SEED);
  const tenant = config.ports[0]!.wire.namespace;
  const path = controlSocketPath(config.namespace);
  const clients: Socket[] = [];
  let lab: Lab | undefined;

  beforeAll(async () => {
    // The router inherits this umask: its socket must still be 0600.
    const saved = process.umask(0);
    let starting: Promise<Lab>;
    try {
      starting = startQnatLab(text, config);
    } finally {
      process.umask(saved);
    }
    lab = await starting;
  }, 60_000);

  afterAll(async () => {
    for (const client of clients) client.destroy();
    await lab?.stop();
  }, 30_000);

  it("creates its socket mode 0600, owned by root, although it was started under umask 000", () => {
    const stat = lstatSync(path);
    expect(stat.isSocket()).toBe(true);
    expect(stat.mode & 0o777).toBe(0o600);
    expect(stat.uid).toBe(0);
  });

  it("10.0.0.3 pings the outside without a loss while clients send garbage, half requests, and vanish mid-listing", async () => {
    // A burst loses some datagrams in the TUN queue; sending the same ones again fills the gaps.
    let count = 0;
    for (let round = 0; round < 3 && count <= CONNECTIONS * 0.9; round++) {
      await sendUdpFlows(tenant, "10.0.0.3", "203.0.113.10", CONNECTIONS / SOURCE_PORTS.length, SOURCE_PORTS);
      const stats = await controlRequest(path, { cmd: "show", what: "stats", json: true }, 10_000);
      count = stats.ok ? (stats.data as StatsView).conntrack.count : 0;
    }
    expect(count).toBeGreaterThan(CONNECTIONS * 0.9);

    const pinging = ping(tenant, 40);
    // Garbage, then half a request left hanging.
    const garbage = await connect(path);
    clients.push(garbage);
    garbage.write(Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x0a, 0x7b, 0x0a, 0x00, 0xff, 0x0a]));
    const half = await connect(path);
    clients.push(half);
    half.write('{"cmd":"show","what":"conn');
    // Listings abandoned after their first piece, and one client that never reads.
    for (let i = 0; i < 5; i++) {
      const vanishing = await connect(path);
      await new Promise<void>((done) => {
        vanishing.once("data", () => done());
        vanishing.write('{"cmd":"show","what":"conntrack","json":true}\n');
      });
      vanishing.destroy();
      await sleep(50);
    }
    const stalled = await connect(path);
    clients.push(stalled);
    stalled.pause();
    stalled.write('{"cmd":"show","what":"conntrack"}\n');

    // Meanwhile the router lists its whole table to a client that reads.
    const listing = await controlRequest(path, { cmd: "show", what: "conntrack" }, 10_000);
    expect(listing.ok).toBe(true);
    const lines = listing.ok ? listing.text!.trimEnd().split("\n") : [];
    expect(lines.length).toBeGreaterThan(CONNECTIONS * 0.9);
    expect(lines).toContainEqual(
      expect.stringMatching(/^udp {6}17 \d+ src=10\.0\.0\.3 dst=203\.0\.113\.10 sport=21000 dport=1 \[UNREPLIED\] src=203\.0\.113\.10 dst=9\.186\.100\.2 sport=1 dport=21000 mark=0 use=1$/),
    );

    expect(await pinging).toEqual({ transmitted: 40, received: 40 });
    expect(await controlRequest(path, { cmd: "ping" }, 5000)).toMatchObject({ ok: true, text: "pong" });
  }, 90_000);
});
