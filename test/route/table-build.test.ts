/**
 * A routing table built in pieces (route/table-build.ts, for `qnat apply` of a full table) is the
 * table built at once from the same lines, its biggest single steps (the repaint of tbl24 under a
 * default route, 16M entries) cut in pieces too, and the work returns to the event loop between
 * pieces.
 */
import { describe, expect, it } from "vitest";
import { formatIpv4, parseIpv4 } from "../../src/core/addr.js";
import { inPieces } from "../../src/core/pieces.js";
import { XorShift32 } from "../../src/core/rng.js";
import { Lpm4 } from "../../src/route/lpm.js";
import { buildTableInPieces, RouteLineError } from "../../src/route/table-build.js";
import { RoutingTable } from "../../src/route/table.js";
import { syntheticInternetTable } from "../../src/route/synthetic-table.js";
import { turnsDuring } from "../support/turns.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
/** The seed's addresses (qr 10.0.0.1/24; qg 9.186.100.2/24 and the floating IP .129/32). */
const ADDRESSES = [
  { port: 0, addr: parseIpv4("10.0.0.1"), prefixLength: 24 },
  { port: 1, addr: parseIpv4("9.186.100.2"), prefixLength: 24 },
  { port: 1, addr: parseIpv4("9.186.100.129"), prefixLength: 32 },
];

/** The seed's default route, then 20,000 synthetic prefixes via 9.186.100.1, some /1-/7 among them. */
function routeLines(): string[] {
  const prefixes = syntheticInternetTable(20_000, new XorShift32(11)).filter((p) => p.prefix >>> 24 !== 9 && p.prefix >>> 24 !== 10);
  return [
    `default via 9.186.100.1 dev ${QG}`,
    "64.0.0.0/2 via 9.186.100.7",
    "blackhole 192.0.0.0/4",
    ...prefixes.map((p) => `${formatIpv4(p.prefix)}/${p.prefixLength} via 9.186.100.${1 + (p.value % 200)} dev ${QG}`),
  ];
}

function builtAtOnce(lines: readonly string[]): RoutingTable {
  const table = new RoutingTable([QR, QG]);
  for (const a of ADDRESSES) table.addConnected(a.port, a.addr, a.prefixLength);
  for (const line of lines) table.addRoute(line);
  return table;
}

describe("a routing table built in pieces", () => {
  it("is the table built at once: the same `ip route` text and the same route for every address probed", async () => {
    const lines = routeLines();
    let pieces = 0;
    const table = await buildTableInPieces(
      { portNames: [QR, QG], addresses: ADDRESSES, routes: lines.map((value) => ({ value })) },
      { yieldToLoop: async () => void pieces++ },
    );
    const reference = builtAtOnce(lines);
    expect(pieces).toBeGreaterThan(2);
    expect(table.format()).toBe(reference.format());
    const rng = new XorShift32(3);
    for (let i = 0; i < 50_000; i++) {
      const dst = rng.next() >>> 0;
      expect(table.describeRoute(table.lookup(dst)), formatIpv4(dst)).toBe(reference.describeRoute(reference.lookup(dst)));
    }
    expect(table.describeRoute(table.lookup(parseIpv4("10.0.0.3")))).toBe(`10.0.0.0/24 dev ${QR} proto kernel scope link src 10.0.0.1`);
  });

  it("returns to the event loop between pieces: a setImmediate callback runs while it builds", async () => {
    const { result: table, turns } = await turnsDuring(buildTableInPieces({ portNames: [QR, QG], addresses: ADDRESSES, routes: routeLines().map((value) => ({ value })) }));
    expect(turns).toBeGreaterThan(1);
    expect(table.describeRoute(table.lookup(parseIpv4("240.1.2.3")))).toBe(`default via 9.186.100.1 dev ${QG}`);
  });

  it("stops at the first line refused, naming its index", async () => {
    const lines = [...routeLines().slice(0, 500), "100.64.0.0/10 via 192.0.2.1", ...routeLines().slice(500, 600)];
    const build = buildTableInPieces({ portNames: [QR, QG], addresses: ADDRESSES, routes: lines.map((value) => ({ value })) });
    await expect(build).rejects.toThrow(RouteLineError);
    await expect(build).rejects.toMatchObject({ index: 500, message: "Error: Nexthop has invalid gateway." });
  });
});

describe("tbl24 repaints left for later (Lpm4.deferLargeFills)", () => {
  it("a /3, a /6 and a /0 painted a /8 at a time give the lookups of an LPM painted at once, longer prefixes kept", () => {
    const deferred = new Lpm4();
    const direct = new Lpm4();
    deferred.deferLargeFills();
    const steps: Array<[number, number, number]> = [
      [parseIpv4("100.1.2.0"), 24, 4],
      [parseIpv4("100.1.2.128"), 25, 5],
      [parseIpv4("96.0.0.0"), 3, 2],
      [parseIpv4("100.0.0.0"), 6, 3],
      [0, 0, 1], // last: its repaint goes around the longer prefixes
    ];
    for (const [prefix, length, value] of steps) {
      deferred.insert(prefix, length, value); // finishes the previous repaints first
      direct.insert(prefix, length, value);
    }
    let rounds = 0;
    while (!deferred.paintPending(1 << 16)) rounds++;
    expect(rounds).toBeGreaterThan(100); // the /0's repaint outside the /3: 14M entries, 224 rounds
    const rng = new XorShift32(9);
    for (let i = 0; i < 100_000; i++) {
      const dst = i % 2 === 0 ? rng.next() >>> 0 : (parseIpv4("100.0.0.0") + (rng.next() & 0x3ffffff)) >>> 0;
      expect(deferred.lookup(dst), formatIpv4(dst)).toBe(direct.lookup(dst));
    }
    expect(deferred.lookup(parseIpv4("100.1.2.200"))).toBe(5);
    expect(deferred.lookup(parseIpv4("100.1.2.7"))).toBe(4);
  });

  it("a change while repaints wait finishes them first; a deleted /1's addresses go back to the /0", () => {
    const lpm = new Lpm4();
    lpm.deferLargeFills();
    lpm.insert(0, 0, 1);
    lpm.insert(parseIpv4("128.0.0.0"), 1, 2);
    expect(lpm.lookup(parseIpv4("20.1.1.1"))).toBe(1); // the /0's repaint was finished by the insert
    lpm.delete(parseIpv4("128.0.0.0"), 1);
    expect(lpm.paintPending(1 << 16)).toBe(false);
    lpm.stopDeferringFills();
    expect(lpm.paintPending(0)).toBe(true);
    expect(lpm.lookup(parseIpv4("200.1.1.1"))).toBe(1);
    expect(lpm.lookup(parseIpv4("20.1.1.1"))).toBe(1);
  });
});

describe("work in pieces (core/pieces.ts)", () => {
  it("runs every step once, in order, and rejects with what a step throws", async () => {
    const seen: number[] = [];
    let next = 0;
    const pieces = await inPieces(() => {
      if (next === 5000) return true;
      seen.push(next++);
      return false;
    }, { pieceMs: 0, yieldToLoop: async () => undefined });
    expect(seen).toEqual(Array.from({ length: 5000 }, (_, i) => i));
    expect(pieces).toBeGreaterThan(100); // pieceMs 0: a yield every 16 steps
    await expect(inPieces(() => { throw new Error("step failed"); })).rejects.toThrow("step failed");
  });
});
