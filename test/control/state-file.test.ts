/**
 * The state file (src/control/state-file.ts, state-keeper.ts): the seed router's connections —
 * 10.0.0.3 and 10.0.0.4 behind the SNAT address 9.186.100.2 (the second one's port remapped), the
 * outside reaching 10.0.0.2 through the floating IP 9.186.100.129, a UDP flow and a ping — saved
 * by one router and read back by the next, built with another hash key; what no longer fits the
 * new config is dropped and counted; a file that cannot be used is one line of warning and an
 * empty table, never an exception.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { crc32 as zlibCrc32 } from "node:zlib";
import { parseConfig, type RouterConfig } from "../../src/config/config.js";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { CtStatus } from "../../src/conntrack/table.js";
import { XorShift32 } from "../../src/core/rng.js";
import { NetfilterNat } from "../../src/dataplane/netfilter-nat.js";
import { formatStats, collectStats } from "../../src/control/show.js";
import { StateKeeper } from "../../src/control/state-keeper.js";
import { checkChangeable } from "../../src/control/live-apply.js";
import {
  STATE_ENTRY_BYTES,
  STATE_FIXED_HEADER,
  crc32,
  crc32Table,
  decodeHeader,
  describeRestore,
  restoreState,
  type RestoreReport,
  type SnapshotBudget,
} from "../../src/control/state-file.js";
import { isRoot } from "../../src/io/netns.js";
import { TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const seedText = readFileSync("examples/seed.yaml", "utf8");
const SAVED_AT = Date.parse("2026-11-30T06:00:00Z");

const dirs: string[] = [];
function scratch(): string {
  const dir = mkdtempSync(join(tmpdir(), "qnat-state-"));
  dirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of dirs) {
    chmodSync(dir, 0o700);
    rmSync(dir, { recursive: true, force: true });
  }
});

function seedConfig(edit: (text: string) => string = (t) => t): RouterConfig {
  return parseConfig(edit(seedText), "seed.yaml");
}

/** The seed router in memory, with a small table (building 262,144 entries' arrays takes time). */
function router(config = seedConfig(), seed = 42): MemoryRouter {
  return new MemoryRouter(config, { rng: new XorShift32(seed), conntrackCapacity: Math.min(config.conntrack.max, 1024) });
}

/** A TCP handshake from `client` on port `from` to `server` on port `to`; returns the SYN as the server saw it. */
function connect(r: MemoryRouter, from: string, client: [string, number], to: string, server: [string, number], isn: number) {
  r.send(from, { protocol: "tcp", src: client[0], dst: server[0], sport: client[1], dport: server[1], tcpFlags: TCP_SYN, seq: isn, window: 64240 });
  r.run();
  const [syn] = r.received(to);
  expect(syn, `the SYN of ${client.join(":")} crosses the router`).toBeDefined();
  r.send(to, { protocol: "tcp", src: syn!.dst, dst: syn!.src, sport: syn!.dport, dport: syn!.sport, tcpFlags: TCP_SYN | TCP_ACK, seq: 9000, ack: isn + 1, window: 65535 });
  r.run();
  expect(r.received(from)).toHaveLength(1);
  r.send(from, { protocol: "tcp", src: client[0], dst: server[0], sport: client[1], dport: server[1], tcpFlags: TCP_ACK, seq: isn + 1, ack: 9001, window: 64240 });
  r.run();
  expect(r.received(to)).toHaveLength(1);
  return syn!;
}

/** One data segment of `len` bytes from the client at `seq`; returns what left the other side. */
function data(r: MemoryRouter, from: string, client: [string, number], to: string, server: [string, number], seq: number, len = 100) {
  r.send(from, { protocol: "tcp", src: client[0], dst: server[0], sport: client[1], dport: server[1], tcpFlags: TCP_ACK, seq, ack: 9001, window: 64240, payload: new Uint8Array(len) });
  r.run();
  return r.received(to);
}

/** The seed's story in memory: returns the router and the translated source ports. */
function seedTraffic(r: MemoryRouter): { vm3Port: number; vm4Port: number } {
  const vm3 = connect(r, QR, ["10.0.0.3", 40000], QG, ["203.0.113.10", 80], 1000);
  const vm4 = connect(r, QR, ["10.0.0.4", 40000], QG, ["203.0.113.10", 80], 2000);
  connect(r, QG, ["203.0.113.10", 50000], QR, ["9.186.100.129", 22], 3000);
  expect(data(r, QR, ["10.0.0.3", 40000], QG, ["203.0.113.10", 80], 1001)).toHaveLength(1);
  r.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5353, dport: 53 });
  r.send(QR, { protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 77, icmpSeq: 1 });
  r.run();
  expect(r.received(QG)).toHaveLength(2);
  return { vm3Port: vm3.sport!, vm4Port: vm4.sport! };
}

/** `conntrack -L` lines without the timeout column, sorted: what must survive a restart. */
function listing(r: MemoryRouter): string[] {
  return formatConntrackTable(r.dataplane.conntrack)
    .trimEnd()
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => line.replace(/^(\S+\s+\d+) \d+ /, "$1 "))
    .sort();
}

async function save(r: MemoryRouter, file: string, atStop = false, logs: string[] = [], budget?: SnapshotBudget): Promise<StateKeeper> {
  const keeper = new StateKeeper({ file, interval: 3600, line: 1 }, r.dataplane, { log: (line) => logs.push(line), wallClock: () => SAVED_AT, ...(budget ? { budget } : {}) });
  if (atStop) await keeper.stop();
  else await keeper.saveNow();
  return keeper;
}

function restore(r: MemoryRouter, file: string, downSeconds = 0): RestoreReport {
  return restoreState(r.dataplane, file, { wallClock: () => SAVED_AT + downSeconds * 1000 });
}

/** Rewrites a state file's checksums after a test changed its bytes on purpose. */
function resealed(bytes: Buffer): Buffer {
  const headerBytes = bytes.readUInt32LE(12);
  bytes.writeUInt32LE(crc32(bytes.subarray(headerBytes)), 36);
  bytes.writeUInt32LE(0, 40);
  bytes.writeUInt32LE(crc32(bytes.subarray(0, headerBytes)), 40);
  return bytes;
}

describe("a restart keeps the seed router's connections", () => {
  const dir = scratch();
  const file = join(dir, "seed.state");
  const before = router();
  const ports = seedTraffic(before);
  const expected = listing(before);

  it("10.0.0.4's SNAT port was remapped (10.0.0.3 holds 40000), so the port is the binding's, not a coincidence", () => {
    expect(ports.vm3Port).toBe(40000);
    expect(ports.vm4Port).not.toBe(40000);
    expect(expected).toHaveLength(5);
  });

  it("the next router, with another hash key, lists the same 5 connections (ASSURED, NAT, TCP state) with timeouts aged by the 10 s it was down", async () => {
    await save(before, file);
    const after = router(seedConfig(), 7);
    const report = restore(after, file, 10);
    expect(report).toMatchObject({ outcome: "restored", saved: 5, restored: 5, atStop: false, downSeconds: 10 });
    expect(listing(after)).toEqual(expected);
    const ttl = (r: MemoryRouter, match: string) => Number(formatConntrackTable(r.dataplane.conntrack).split("\n").find((l) => l.includes(match))!.split(/\s+/)[2]);
    expect(ttl(after, "sport=40000 dport=80 src=203.0.113.10")).toBe(ttl(before, "sport=40000 dport=80 src=203.0.113.10") - 10);
    expect(describeRestore(report)).toMatch(/^qnat: state: restored 5 of 5 connections from .*seed\.state \(saved by the interval 2026-11-30T06:00:00\.000Z, down 10\.0 s\)$/);
  });

  it("replies to 9.186.100.2's remapped port reach 10.0.0.4:40000, and in-window data goes on", async () => {
    const after = router(seedConfig(), 7);
    restore(after, file, 5);
    after.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.2", sport: 80, dport: ports.vm4Port, tcpFlags: TCP_ACK, seq: 9001, ack: 2001, window: 65535, payload: new Uint8Array(10) });
    after.run();
    expect(after.received(QR).map((p) => `${p.dst}:${p.dport}`)).toEqual(["10.0.0.4:40000"]);
    expect(data(after, QR, ["10.0.0.3", 40000], QG, ["203.0.113.10", 80], 1101).map((p) => `${p.src}:${p.sport}`)).toEqual(["9.186.100.2:40000"]);
    expect(after.dataplane.conntrack.counters.tcpOutOfWindow).toBe(0);
  });

  it("a restored connection learns its window anew (BE_LIBERAL, as conntrackd's entries): 10.0.0.3's segment far beyond the saved window, as a busy connection's are after an interval, still leaves as 9.186.100.2:40000", () => {
    const after = router(seedConfig(), 7);
    restore(after, file, 5);
    const invalid = after.dataplane.conntrack.counters.tcpOutOfWindow;
    const sent = data(after, QR, ["10.0.0.3", 40000], QG, ["203.0.113.10", 80], 1001 + 50_000_000);
    expect(sent.map((p) => `${p.src}:${p.sport}`)).toEqual(["9.186.100.2:40000"]);
    expect(after.dataplane.conntrack.counters.tcpOutOfWindow).toBe(invalid);
  });

  it("the NAT by-source index is rebuilt: a new connection from 10.0.0.4:40000 reuses its mapping 9.186.100.2:<remapped port>", () => {
    const after = router(seedConfig(), 7);
    restore(after, file, 5);
    const nat = after.dataplane.nat as NetfilterNat;
    const reused = nat.engine.counters.sourceMapReused;
    after.send(QR, { protocol: "tcp", src: "10.0.0.4", dst: "203.0.113.10", sport: 40000, dport: 443, tcpFlags: TCP_SYN, seq: 1 });
    after.run();
    expect(after.received(QG).map((p) => `${p.src}:${p.sport}`)).toEqual([`9.186.100.2:${ports.vm4Port}`]);
    expect(nat.engine.counters.sourceMapReused).toBe(reused + 1);
  });

  it("the table's counters go on from the saved ones; a file written at stop says so", async () => {
    const stopped = join(dir, "stopped.state");
    await save(before, stopped, true);
    const after = router(seedConfig(), 7);
    const report = restore(after, stopped);
    expect(report.atStop).toBe(true);
    expect(after.dataplane.conntrack.counters).toEqual(before.dataplane.conntrack.counters);
  });

  it("the write is atomic: no temporary file is left, and one left by a killed router is removed at the next start", async () => {
    const stale = join(dir, ".seed.state.999999999.3.tmp");
    writeFileSync(stale, "half a snapshot");
    await save(before, file);
    expect(readdirSync(dir).filter((name) => name.endsWith(".tmp"))).toEqual([stale.split("/").pop()]);
    const keeper = new StateKeeper({ file, interval: 3600, line: 1 }, router(seedConfig(), 7).dataplane, { log: () => undefined, wallClock: () => SAVED_AT });
    keeper.start();
    await keeper.stop();
    expect(readdirSync(dir).filter((name) => name.endsWith(".tmp"))).toEqual([]);
  });

  it("show stats says what the start restored and how saving goes", async () => {
    const after = router(seedConfig(), 7);
    const logs: string[] = [];
    const keeper = new StateKeeper({ file, interval: 3600, line: 1 }, after.dataplane, { log: (l) => logs.push(l), wallClock: () => SAVED_AT + 2000 });
    keeper.start();
    await keeper.stop();
    expect(logs).toHaveLength(1);
    const text = formatStats({ ...collectStats(after.dataplane), state: keeper.view() });
    expect(text).toContain(`state: ${file}, saved every 3600 s: 1 saves, 0 skipped (no packets), 0 failed`);
    expect(text).toContain("restored 5 of 5 at start (down 2.0 s); dropped: expired=0 port-gone=0 address-gone=0 impossible=0 clash=0 table-full=0");
    expect(text).toMatch(/last save \S+: 5 entries, \d+ bytes/);
  });
});

describe("entries that no longer fit the config are dropped and counted", () => {
  const dir = scratch();
  const file = join(dir, "seed.state");
  const before = router();
  seedTraffic(before);
  const saved = save(before, file);

  it("down longer than a UDP flow's 30 s and a ping's 30 s: those two expired, the three TCP connections are kept", async () => {
    await saved;
    const after = router(seedConfig(), 7);
    expect(restore(after, file, 31)).toMatchObject({ restored: 3, dropped: { expired: 2 } });
  });

  it("the tenant port renamed: its connections' ends were behind a port that is gone", async () => {
    await saved;
    const after = router(seedConfig((t) => t.replaceAll("qr-694450d6-f6", "qr-11111111-aa")), 7);
    expect(restore(after, file)).toMatchObject({ restored: 0, dropped: { "port-gone": 5 } });
  });

  it("the SNAT address 9.186.100.2 no longer the router's (now .3): the SNATed connections go, the floating IP's stays", async () => {
    await saved;
    const after = router(seedConfig((t) => t.replace("[9.186.100.2/24, 9.186.100.129/32]", "[9.186.100.3/24, 9.186.100.129/32]")), 7);
    const report = restore(after, file);
    expect(report).toMatchObject({ restored: 1, dropped: { "address-gone": 4 } });
    expect(listing(after)).toEqual([expect.stringContaining("src=203.0.113.10 dst=9.186.100.129 sport=50000 dport=22")]);
  });

  it("a smaller table: what does not fit is table-full", async () => {
    await saved;
    const after = router(seedConfig((t) => `${t}conntrack: { max: 3 }\n`), 7);
    expect(restore(after, file)).toMatchObject({ restored: 3, dropped: { "table-full": 2 } });
  });

  it("an impossible TCP state and the same connection twice: impossible and clash", async () => {
    await saved;
    const bytes = readFileSync(file);
    const header = decodeHeader(bytes, bytes.length);
    const first = header.bytes;
    // A copy of the first entry at the end (count + 1), and the second entry's state byte 0xee.
    const doubled = Buffer.concat([bytes, bytes.subarray(first, first + STATE_ENTRY_BYTES)]);
    doubled.writeUInt32LE(header.count + 1, 20);
    doubled.writeUInt8(0xee, first + STATE_ENTRY_BYTES + 1);
    writeFileSync(join(dir, "edited.state"), resealed(doubled));
    const after = router(seedConfig(), 7);
    expect(restore(after, join(dir, "edited.state"))).toMatchObject({ saved: 6, restored: 4, dropped: { impossible: 1, clash: 1 } });
  });

  it("status bits the tracker never sets together (ASSURED without SEEN_REPLY) are impossible", async () => {
    await saved;
    const bytes = Buffer.from(readFileSync(file));
    const first = decodeHeader(bytes, bytes.length).bytes;
    bytes.writeInt32LE((bytes.readInt32LE(first + 4) | CtStatus.Assured) & ~CtStatus.SeenReply, first + 4);
    writeFileSync(join(dir, "assured.state"), resealed(bytes));
    expect(restore(router(seedConfig(), 7), join(dir, "assured.state"))).toMatchObject({ restored: 4, dropped: { impossible: 1 } });
  });
});

describe("a file that cannot be used: one line of warning, an empty table, never an exception", () => {
  const dir = scratch();
  const file = join(dir, "seed.state");
  const before = router();
  seedTraffic(before);
  // Written in pieces of two entries: the file's piece boundaries are every other entry's.
  const written2 = save(before, file, false, [], { entries: 2, slots: 1 << 20, ms: Infinity });
  const good = written2.then(() => readFileSync(file));

  function refused(path: string): RestoreReport {
    const after = router(seedConfig(), 7);
    const report = restore(after, path);
    expect(report.outcome).toBe("refused");
    expect(after.dataplane.conntrack.count).toBe(0);
    const line = describeRestore(report);
    expect(line).not.toContain("\n");
    expect(line).toMatch(/^qnat: warning: state: .*; starting with an empty connection table$/);
    return report;
  }

  function written(name: string, bytes: Uint8Array): string {
    const path = join(dir, name);
    writeFileSync(path, bytes);
    return path;
  }

  it("random bytes", () => {
    const rng = new XorShift32(2026);
    for (const size of [1, 47, 48, 4096, 100_000]) {
      const bytes = Uint8Array.from({ length: size }, () => rng.next() & 0xff);
      expect(refused(written("random.state", bytes)).warning).toBe("not a qnat state file");
    }
  });

  it("truncated at every piece boundary, every entry boundary and inside the header", async () => {
    const bytes = await good;
    expect((await written2).view().last!.pieces).toBeGreaterThanOrEqual(3);
    const header = decodeHeader(bytes, bytes.length);
    const cuts = [0, 4, STATE_FIXED_HEADER - 1, STATE_FIXED_HEADER, header.bytes - 1];
    for (let entry = 0; entry < header.count; entry++) cuts.push(header.bytes + entry * STATE_ENTRY_BYTES, header.bytes + entry * STATE_ENTRY_BYTES + 7);
    for (const cut of cuts) {
      const path = written("cut.state", bytes);
      truncateSync(path, cut);
      expect(refused(path).warning, `cut at ${cut}`).toMatch(cut === 0 ? /^the file is empty$/ : /^truncated/);
    }
  });

  it("one bit flipped anywhere: in an entry, the count, the saved-at time, a port name", async () => {
    const bytes = await good;
    const header = decodeHeader(bytes, bytes.length);
    for (const at of [20, 24 + 5, STATE_FIXED_HEADER + 3, header.bytes, header.bytes + 2 * STATE_ENTRY_BYTES + 33, bytes.length - 1]) {
      for (const bit of [0, 7]) {
        const flipped = Buffer.from(bytes);
        flipped[at] ^= 1 << bit;
        expect(refused(written("flipped.state", flipped)).warning, `byte ${at} bit ${bit}`).toMatch(/corrupt|truncated/);
      }
    }
  });

  it("a wrong version", async () => {
    const bytes = Buffer.from(await good);
    bytes.writeUInt32LE(2, 8);
    expect(refused(written("v2.state", bytes)).warning).toBe("written in format version 2; this qnat reads version 1");
  });

  it("an empty file", () => {
    expect(refused(written("empty.state", new Uint8Array(0))).warning).toBe("the file is empty");
  });

  it("a directory in its place: refused at start, and each save fails, logged once, counted", async () => {
    const path = join(dir, "a-directory.state");
    mkdirSync(join(path, "inside"), { recursive: true });
    expect(refused(path).warning).toMatch(/^cannot read it \(EISDIR\)$/);
    const logs: string[] = [];
    const keeper = await save(before, path, false, logs);
    before.send(QR, { protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 78, icmpSeq: 1 });
    before.run();
    await keeper.saveNow();
    expect(keeper.view()).toMatchObject({ saves: 0, failures: 2 });
    expect(logs.filter((l) => l.includes("cannot save"))).toHaveLength(1);
    expect(logs[0]).toMatch(/^qnat: state: cannot save to .*a-directory\.state: rename: (EISDIR|ENOTEMPTY|EEXIST) \(the router goes on; retrying every 3600 s\)$/);
    expect(readdirSync(dir).filter((name) => name.endsWith(".tmp"))).toEqual([]);
  });

  it("a file that is not a qnat state file is never written over", async () => {
    const path = written("not-mine.state", Buffer.from("important notes of someone else\n"));
    const logs: string[] = [];
    const keeper = new StateKeeper({ file: path, interval: 3600, line: 1 }, before.dataplane, { log: (l) => logs.push(l) });
    keeper.start();
    await keeper.stop();
    expect(readFileSync(path, "utf8")).toBe("important notes of someone else\n");
    expect(logs).toEqual([expect.stringMatching(/not a qnat state file; starting with an empty connection table; it is not written over/)]);
  });

  it.skipIf(!isRoot())("no permission to read it (as a user without rights, in a child process)", async () => {
    const bytes = await good;
    const path = written("private.state", bytes);
    chmodSync(path, 0o600);
    const main = resolve("dist/src/control/state-file.js");
    expect(existsSync(main), "the build (npm run build) is needed for this test").toBe(true);
    const script = `import(${JSON.stringify(main)}).then(async (m) => {
      const { buildDataplane } = await import(${JSON.stringify(resolve("dist/src/dataplane/from-config.js"))});
      const { loadConfig } = await import(${JSON.stringify(resolve("dist/src/config/config.js"))});
      const dataplane = buildDataplane(loadConfig(${JSON.stringify(resolve("examples/seed.yaml"))}), { conntrackCapacity: 64 });
      const report = m.restoreState(dataplane, ${JSON.stringify(path)});
      console.log(JSON.stringify({ line: m.describeRestore(report), count: dataplane.conntrack.count }));
    });`;
    chmodSync(dir, 0o755);
    const child = spawnSync(process.execPath, ["--input-type=module", "-e", script], { uid: 65534, gid: 65534, encoding: "utf8", timeout: 20_000 });
    expect(child.status, child.stderr).toBe(0);
    const result = JSON.parse(child.stdout) as { line: string; count: number };
    expect(result.count).toBe(0);
    expect(result.line).toBe(`qnat: warning: state: ${path}: cannot open it (EACCES); starting with an empty connection table`);
  });
});

describe("the checksum and the pieces", () => {
  it("crc32 is zlib's CRC-32 (the table form agrees on random buffers)", () => {
    const rng = new XorShift32(10);
    for (let n = 0; n < 50; n++) {
      const bytes = Uint8Array.from({ length: rng.next() % 3000 }, () => rng.next() & 0xff);
      expect(crc32Table(bytes)).toBe(zlibCrc32(bytes));
      expect(crc32(bytes.subarray(100), crc32(bytes.subarray(0, 100)))).toBe(zlibCrc32(bytes));
    }
  });

  it("262,144 connections are saved in pieces of at most 4096 entries between which the packet loop runs, and read back", async () => {
    const config = seedConfig();
    const r = new MemoryRouter(config, { rng: new XorShift32(3) });
    const table = r.dataplane.conntrack;
    // Replied UDP flows from 10.0.0.0/24, as the tracker leaves them (filled directly: fast).
    for (let i = 0; table.count < table.capacity; i++) {
      const id = table.create(17, 0x0a000000 + (i & 0xff), 0xcb00710a, 1024 + (i >> 8), 53);
      table.setStatus(id, CtStatus.SeenReply | CtStatus.Assured);
      table.refresh(id, 120, table.now());
      expect(table.confirm(id)).toBe(true);
    }
    const dir = scratch();
    const file = join(dir, "big.state");
    const keeper = await save(r, file);
    const last = keeper.view().last!;
    expect(last.entries).toBe(table.count);
    expect(last.pieces).toBeGreaterThanOrEqual(Math.ceil(table.count / 4096));
    console.log(
      `state save of ${last.entries} entries: ${(last.bytes / 1e6).toFixed(1)} MB (${STATE_ENTRY_BYTES} bytes per entry), ` +
        `${last.ms.toFixed(0)} ms in ${last.pieces} pieces, longest piece ${last.longestPieceMs.toFixed(2)} ms`,
    );
    const after = new MemoryRouter(config, { rng: new XorShift32(4) });
    const started = performance.now();
    const report = restore(after, file);
    console.log(`state restore of ${report.restored} entries: ${(performance.now() - started).toFixed(0)} ms`);
    expect(report).toMatchObject({ outcome: "restored", restored: last.entries });
  });
});

describe("qnat apply and the state file", () => {
  it("a live change of state: is refused (the file and its interval are taken at a restart)", () => {
    const running = seedConfig((t) => `${t}state: { file: /var/lib/qnat/seed.state }\n`);
    expect(() => checkChangeable(running, running)).not.toThrow();
    expect(() => checkChangeable(running, seedConfig((t) => `${t}state: { file: /var/lib/qnat/seed.state, interval: 5 }\n`))).toThrow(
      "seed.yaml: state differs from the running router's; the state file and its interval are taken only at a restart",
    );
    expect(() => checkChangeable(running, seedConfig())).toThrow(/state differs/);
  });
});
