/** Shared fixtures for the NAT engine tests: a conntrack table on a manual clock and a seeded engine. */
import { parseIpv4 } from "../../../src/core/addr.js";
import { ManualClock } from "../../../src/core/clock.js";
import { XorShift32 } from "../../../src/core/rng.js";
import { ConntrackTable } from "../../../src/conntrack/table.js";
import { NatEngine } from "../../../src/nat/binding.js";
import { Manip, type NatRange } from "../../../src/nat/range.js";
import { IPPROTO_ICMP } from "../../../src/wire/packet-info.js";

export const ip = (text: string): number => {
  const addr = parseIpv4(text);
  if (addr < 0) throw new Error(`bad address ${text}`);
  return addr;
};

export interface Fixture {
  clock: ManualClock;
  table: ConntrackTable;
  nat: NatEngine;
}

export function makeFixture(capacity = 4096, seed = 42): Fixture {
  const clock = new ManualClock();
  let nat: NatEngine | undefined;
  const table = new ConntrackTable({ capacity, clock, onRemove: (id) => nat?.forget(id) });
  nat = new NatEngine(table, new XorShift32(seed));
  return { clock, table, nat };
}

/**
 * A NEW connection as the dataplane creates it: allocated, given a timeout (so it is live),
 * NATed by the caller's `bind`, then confirmed. Returns the id, or -1 when NAT refused.
 */
export function connect(
  f: Fixture,
  protocol: number,
  src: string,
  sport: number,
  dst: string,
  dport: number,
  bind: (id: number) => boolean,
): number {
  const id = f.table.create(protocol, ip(src), ip(dst), sport, dport);
  if (id < 0) throw new Error("conntrack full");
  f.table.refresh(id, 3600, f.clock.now());
  if (!bind(id)) {
    f.table.release(id);
    return -1;
  }
  if (!f.table.confirm(id)) throw new Error("confirm clashed");
  return id;
}

/** A connection SNATed by `range` in POSTROUTING (a DNAT binding, if any, is given first). */
export function snat(f: Fixture, protocol: number, src: string, sport: number, dst: string, dport: number, range: NatRange): number {
  return connect(f, protocol, src, sport, dst, dport, (id) => f.nat.setupNat(id, Manip.Src, range));
}

export function ping(f: Fixture, src: string, dst: string, icmpId: number, range: NatRange): number {
  return connect(f, IPPROTO_ICMP, src, icmpId, dst, 8 << 8, (id) => f.nat.setupNat(id, Manip.Src, range));
}

/** "9.186.100.2:40000" as the world sees the original direction leave (the reply tuple inverted). */
export function translatedSource(f: Fixture, id: number): string {
  const t = f.table;
  const a = t.replyDst(id);
  const port = t.protocol(id) === IPPROTO_ICMP ? t.replySport(id) : t.replyDport(id);
  return `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}:${port}`;
}

export function translatedDestination(f: Fixture, id: number): string {
  const t = f.table;
  const a = t.replySrc(id);
  return `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}:${t.replySport(id)}`;
}
