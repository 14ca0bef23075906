import { describe, expect, it } from "vitest";
import { ConntrackTable, CtState, CtStatus } from "../../src/conntrack/table.js";
import { TcpState } from "../../src/conntrack/tcp.js";
import { TrackResult, track } from "../../src/conntrack/track.js";
import { ManualClock } from "../../src/core/clock.js";
import { XorShift32 } from "../../src/core/rng.js";
import { IPPROTO_TCP, IPPROTO_UDP, PacketInfo } from "../../src/wire/packet-info.js";
import { ip, newTable } from "./packets.js";

const VM = ip("10.0.0.3");
const WEB = ip("9.186.100.1");
const GW = ip("9.186.100.2");
const TCP = IPPROTO_TCP;
const UDP = IPPROTO_UDP;

describe("ConntrackTable: both tuples indexed", () => {
  it("an unconfirmed entry is invisible; once confirmed it is found by either tuple", () => {
    const { table } = newTable();
    const id = table.create(TCP, VM, WEB, 40000, 80);
    table.refresh(id, 120, table.clock.now());
    expect(table.lookup(TCP, VM, WEB, 40000, 80)).toBe(-1);
    expect(table.count).toBe(1);
    expect(table.confirm(id)).toBe(true);
    expect(table.lookup(TCP, VM, WEB, 40000, 80)).toBe(id << 1);
    expect(table.lookup(TCP, WEB, VM, 80, 40000)).toBe((id << 1) | 1);
    expect(table.status(id) & CtStatus.Confirmed).toBeTruthy();
    expect([table.replySrc(id), table.replyDst(id), table.replySport(id), table.replyDport(id)]).toEqual([WEB, VM, 80, 40000]);
  });

  it("release frees an unconfirmed entry and is a no-op afterwards", () => {
    const { table } = newTable();
    const id = table.create(UDP, VM, WEB, 5000, 53);
    table.release(id);
    table.release(id);
    expect(table.count).toBe(0);
    expect(table.counters.released).toBe(1);
    expect(table.create(UDP, VM, WEB, 5000, 53)).toBe(id);
  });

  it("SNAT rewrites the reply tuple before confirm: 10.0.0.3 leaves as 9.186.100.2", () => {
    const { table } = newTable();
    const id = table.create(TCP, VM, WEB, 40000, 80);
    table.refresh(id, 120, table.clock.now());
    table.setReplyTuple(id, WEB, GW, 80, 40000);
    table.setStatus(id, CtStatus.SrcNat | CtStatus.SrcNatDone);
    table.confirm(id);
    expect(table.lookup(TCP, WEB, GW, 80, 40000)).toBe((id << 1) | 1);
    expect(table.lookup(TCP, WEB, VM, 80, 40000)).toBe(-1);
    expect(table.status(id) & CtStatus.SrcNat).toBeTruthy();
    table.clearStatus(id, CtStatus.SrcNatDone);
    expect(table.status(id) & CtStatus.SrcNatDone).toBe(0);
    // re-hashed when changed after confirm
    table.setReplyTuple(id, WEB, GW, 80, 1024);
    expect(table.lookup(TCP, WEB, GW, 80, 40000)).toBe(-1);
    expect(table.lookup(TCP, WEB, GW, 80, 1024)).toBe((id << 1) | 1);
  });

  it("isTupleTaken sees either direction of confirmed entries, except the ignored one", () => {
    const { table } = newTable();
    const id = table.create(TCP, VM, WEB, 40000, 80);
    table.refresh(id, 120, table.clock.now());
    table.setReplyTuple(id, WEB, GW, 80, 40000);
    expect(table.isTupleTaken(TCP, WEB, GW, 80, 40000)).toBe(false); // unconfirmed
    table.confirm(id);
    expect(table.isTupleTaken(TCP, WEB, GW, 80, 40000)).toBe(true);
    expect(table.isTupleTaken(TCP, VM, WEB, 40000, 80)).toBe(true);
    expect(table.isTupleTaken(TCP, WEB, GW, 80, 40000, id)).toBe(false);
    expect(table.isTupleTaken(TCP, WEB, GW, 80, 40001)).toBe(false);
    expect(table.isTupleTaken(UDP, WEB, GW, 80, 40000)).toBe(false);
  });

  it("confirm fails when a racing entry took the tuple first (insert_failed)", () => {
    const { table } = newTable();
    const first = table.create(UDP, VM, WEB, 5000, 53);
    const second = table.create(UDP, VM, WEB, 5000, 53);
    table.refresh(first, 30, table.clock.now());
    table.refresh(second, 30, table.clock.now());
    expect(table.confirm(first)).toBe(true);
    expect(table.confirm(second)).toBe(false);
    expect(table.clashWith).toBe(first << 1);
    expect(table.counters.insertFailed).toBe(1);
    expect(table.count).toBe(1);
    table.release(second); // harmless after a failed confirm
    expect(table.count).toBe(1);
  });
});

describe("ConntrackTable: expiry", () => {
  it("an expired entry is removed by the lookup that meets it", () => {
    const { table, clock } = newTable();
    const id = table.create(UDP, VM, WEB, 5000, 53);
    table.refresh(id, 30, clock.now());
    table.confirm(id);
    clock.advance(29.5);
    expect(table.lookup(UDP, WEB, VM, 53, 5000)).toBe((id << 1) | 1);
    clock.advance(0.5);
    expect(table.lookup(UDP, WEB, VM, 53, 5000)).toBe(-1);
    expect(table.count).toBe(0);
    expect(table.counters.expired).toBe(1);
    expect(table.isTupleTaken(UDP, VM, WEB, 5000, 53)).toBe(false);
  });

  it("gc sweeps `budget` slots per call and reclaims every expired entry over a full turn", () => {
    const { table, clock } = newTable(256);
    for (let i = 0; i < 200; i++) {
      const id = table.create(UDP, VM, WEB, 1000 + i, 53);
      table.refresh(id, i < 100 ? 30 : 120, clock.now());
      table.confirm(id);
    }
    expect(table.gc(256)).toBe(0);
    clock.advance(30);
    let removed = 0;
    for (let call = 0; call < 256 / 16; call++) {
      const n = table.gc(16);
      expect(n).toBeLessThanOrEqual(16);
      removed += n;
    }
    expect(removed).toBe(100);
    expect(table.count).toBe(100);
    expect(table.entries()).toHaveLength(100);
  });

  it("kill marks an entry dying: it stays readable but is gone for lookups", () => {
    const { table } = newTable();
    const id = table.create(TCP, VM, WEB, 40000, 80);
    table.refresh(id, 120, table.clock.now());
    table.confirm(id);
    table.kill(id);
    expect(table.origSport(id)).toBe(40000);
    expect(table.isTupleTaken(TCP, VM, WEB, 40000, 80)).toBe(false);
    expect(table.lookup(TCP, VM, WEB, 40000, 80)).toBe(-1);
    expect(table.count).toBe(0);
  });
});

describe("ConntrackTable: bounded, with early drop (nf_conntrack_core.c early_drop)", () => {
  function fill(table: ConntrackTable, assured: (i: number) => boolean): number[] {
    const ids: number[] = [];
    for (let i = 0; i < table.capacity; i++) {
      const id = table.create(UDP, VM + i, WEB, 5000, 53);
      table.refresh(id, 30, table.clock.now());
      if (assured(i)) table.setStatus(id, CtStatus.Assured | CtStatus.SeenReply);
      table.confirm(id);
      ids.push(id);
    }
    return ids;
  }

  it("a full table evicts a non-ASSURED entry for the new connection", () => {
    const { table } = newTable(16);
    fill(table, () => false);
    const id = table.create(UDP, WEB, VM, 53, 5000);
    expect(id).toBeGreaterThanOrEqual(0);
    expect(table.counters.earlyDrop).toBe(1);
    expect(table.count).toBe(16);
  });

  it("ASSURED entries are kept: new connections evict only unassured ones", () => {
    const { table } = newTable(16);
    const ids = fill(table, (i) => i % 4 === 0);
    const assured = ids.filter((_, i) => i % 4 === 0);
    for (let n = 0; n < 12; n++) {
      const id = table.create(UDP, GW, WEB + n, 6000, 53);
      expect(id).toBeGreaterThanOrEqual(0);
      table.refresh(id, 30, table.clock.now());
      table.confirm(id);
    }
    expect(table.counters.earlyDrop).toBe(12);
    for (const id of assured) {
      expect(table.lookup(UDP, table.origSrc(id), WEB, 5000, 53)).toBe(id << 1);
    }
  });

  it("when every entry is ASSURED nothing is dropped and the refusal is counted", () => {
    const { table } = newTable(16);
    fill(table, () => true);
    expect(table.create(UDP, WEB, VM, 53, 5000)).toBe(-1);
    expect(table.counters.dropFull).toBe(1);
    expect(table.counters.earlyDrop).toBe(0);
    expect(table.count).toBe(16);
  });

  it("an expired entry is reclaimed first, even if ASSURED", () => {
    const { table, clock } = newTable(16);
    fill(table, () => true);
    clock.advance(31);
    expect(table.create(UDP, WEB, VM, 53, 5000)).toBeGreaterThanOrEqual(0);
    expect(table.counters.expired).toBe(1);
  });
});

describe("ConntrackTable: property test against a reference model", () => {
  interface ModelEntry {
    p: number;
    tuples: [number, number, number, number][]; // [src, dst, sport, dport] per direction
    expires: number;
  }

  it("random create/confirm/remove/expire/evict keeps both indexes exact (20,000 steps)", () => {
    const rng = new XorShift32(7);
    const clock = new ManualClock();
    const table = new ConntrackTable({ capacity: 20, clock, seed: 1 });
    const model = new Map<number, ModelEntry>();
    const liveHolder = (p: number, t: [number, number, number, number]): boolean => {
      for (const entry of model.values()) {
        if (entry.p !== p || entry.expires <= clock.now()) continue;
        for (const u of entry.tuples) if (u[0] === t[0] && u[1] === t[1] && u[2] === t[2] && u[3] === t[3]) return true;
      }
      return false;
    };
    for (let step = 0; step < 20_000; step++) {
      const op = rng.next() % 10;
      if (op < 5) {
        const p = rng.next() % 2 ? TCP : UDP;
        const orig: [number, number, number, number] = [VM + (rng.next() % 6), WEB, 1000 + (rng.next() % 6), 80];
        const reply: [number, number, number, number] =
          rng.next() % 3 === 0 ? [WEB, GW, 80, 2000 + (rng.next() % 6)] : [orig[1], orig[0], orig[3], orig[2]];
        const id = table.create(p, orig[0], orig[1], orig[2], orig[3]);
        if (id < 0) {
          expect(table.count).toBe(table.capacity);
          continue;
        }
        model.delete(id); // a reused slot: its entry was evicted or had expired
        table.setReplyTuple(id, reply[0], reply[1], reply[2], reply[3]);
        const expires = clock.now() + 1 + (rng.next() % 20);
        table.setExpiresAt(id, expires);
        const expected = !liveHolder(p, orig) && !liveHolder(p, reply);
        expect(table.confirm(id)).toBe(expected);
        if (expected) model.set(id, { p, tuples: [orig, reply], expires });
      } else if (op < 7) {
        const ids = [...model.keys()];
        if (ids.length === 0) continue;
        const id = ids[rng.next() % ids.length]!;
        table.remove(id);
        model.delete(id);
      } else if (op < 8) {
        clock.advance(rng.next() % 4);
        table.gc(rng.next() % 16);
      } else {
        for (const [id, entry] of [...model]) {
          const alive = entry.expires > clock.now();
          if (!table.isAllocated(id)) {
            expect(alive).toBe(false); // only dead entries disappear on their own
            model.delete(id);
            continue;
          }
          for (let dir = 0; dir < 2; dir++) {
            const [s, d, sp, dp] = entry.tuples[dir]!;
            const handle = table.lookup(entry.p, s, d, sp, dp);
            if (alive) expect(handle).toBe((id << 1) | dir);
            else expect(handle).toBe(-1);
          }
          if (!alive) model.delete(id);
        }
      }
      // every entry the table dropped on its own was dead; everything else is still there
      let allocated = 0;
      for (const [id, entry] of model) {
        if (table.isAllocated(id)) allocated++;
        else expect(entry.expires).toBeLessThanOrEqual(clock.now());
      }
      expect(table.count).toBe(allocated);
    }
    expect(table.counters.inserted).toBeGreaterThan(1000);
    expect(table.counters.insertFailed).toBeGreaterThan(100);
    expect(table.counters.earlyDrop).toBeGreaterThan(0);
  });
});

describe("ConntrackTable: one million connections", () => {
  it("holds 1,000,000 entries at a small measured cost per entry", () => {
    const entries = 1_000_000;
    const clock = new ManualClock();
    const before = process.memoryUsage();
    const table = new ConntrackTable({ capacity: entries, clock, seed: 3 });
    const start = performance.now();
    const now = clock.now();
    const tenant = ip("10.0.0.0");
    for (let i = 0; i < entries; i++) {
      // 10.0.0.0/16 hosts x ports toward one server, as a busy tenant network would
      const id = table.create(TCP, tenant + (i & 0xffff), WEB, 1024 + (i >>> 16), 80);
      table.refresh(id, 432_000, now);
      table.setTcpState(id, TcpState.Established);
      table.confirm(id);
    }
    const insertSeconds = (performance.now() - start) / 1000;
    const after = process.memoryUsage();
    const grown = after.heapUsed + after.arrayBuffers - (before.heapUsed + before.arrayBuffers);
    const measured = grown / entries;
    const declared = table.memoryBytes / entries;
    let found = 0;
    const lookStart = performance.now();
    for (let i = 0; i < entries; i += 7) {
      if (table.lookup(TCP, WEB, tenant + (i & 0xffff), 80, 1024 + (i >>> 16)) >= 0) found++;
    }
    const lookSeconds = (performance.now() - lookStart) / 1000;
    console.log(
      `conntrack 1M: ${measured.toFixed(1)} bytes/entry measured (arrays ${declared.toFixed(1)}), ` +
        `${Math.round(entries / insertSeconds).toLocaleString("en")} inserts/s, ` +
        `${Math.round(Math.ceil(entries / 7) / lookSeconds).toLocaleString("en")} reply lookups/s`,
    );
    // the per-packet path: track() for reply-direction ACKs spread over all connections
    const info = new PacketInfo();
    info.protocol = TCP;
    info.hasL4 = true;
    info.src = WEB;
    info.sport = 80;
    info.tcpFlags = 0x10;
    // the segment itself (window tracking reads it): a 20-byte TCP header, seq 0, ack 0
    info.buf = new Uint8Array(40);
    info.l4Offset = 20;
    info.l4Length = 20;
    info.buf[20 + 12] = 5 << 4;
    const result = new TrackResult();
    let established = 0;
    const trackStart = performance.now();
    for (let i = 0; i < entries; i++) {
      const flow = Math.imul(i, 2654435761) >>> 12; // scattered, not sequential
      const j = flow % entries;
      info.dst = tenant + (j & 0xffff);
      info.dport = 1024 + (j >>> 16);
      track(table, info, result);
      if (result.state === CtState.Established) established++;
    }
    const trackSeconds = (performance.now() - trackStart) / 1000;
    console.log(`conntrack 1M: ${Math.round(entries / trackSeconds).toLocaleString("en")} track() calls/s on established flows`);
    expect(established).toBe(entries);
    expect(table.count).toBe(entries);
    expect(found).toBe(Math.ceil(entries / 7));
    expect(declared).toBeLessThanOrEqual(128);
    expect(measured).toBeLessThanOrEqual(160);
    // full: a new connection evicts one of the unassured entries
    expect(table.create(TCP, WEB, VM, 1, 2)).toBeGreaterThanOrEqual(0);
    expect(table.counters.earlyDrop).toBe(1);
  });
});
