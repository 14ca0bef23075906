/**
 * Measurement, not an assertion: how many fresh SNAT connections per second setupNat binds with
 * 64k connections already in the table (printed; no timing is asserted).
 */
import { describe, expect, it } from "vitest";
import { XorShift32 } from "../../../src/core/rng.js";
import { Manip, natRange } from "../../../src/nat/range.js";
import { IPPROTO_TCP } from "../../../src/wire/packet-info.js";
import { ip, makeFixture } from "./setup.js";

describe("setupNat rate with 64k existing connections (measurement)", () => {
  it("prints conns/s for fresh SNAT connections", () => {
    const range = natRange(ip("9.186.100.2"));
    const results: string[] = [];
    for (const [name, destinations, sourcePorts] of [
      ["64 destinations, random source ports", 64, 28000],
      ["4 destinations, 16 shared source ports (nearly every binding searched)", 4, 16],
    ] as const) {
      const f = makeFixture(1 << 18, 11);
      const rng = new XorShift32(99);
      const tenant = ip("10.0.0.0");
      const dstBase = ip("203.0.113.0");
      const open = (): boolean => {
        const src = tenant + (rng.next() % 65000) + 1;
        const sport = 32768 + (rng.next() % sourcePorts);
        const dst = dstBase + (rng.next() % destinations);
        const id = f.table.create(IPPROTO_TCP, src, dst, sport, 443);
        if (id < 0) return false;
        f.table.refresh(id, 3600, f.clock.now());
        if (!f.nat.setupNat(id, Manip.Src, range)) {
          f.table.release(id);
          return false;
        }
        return f.table.confirm(id);
      };
      let existing = 0;
      for (let attempt = 0; existing < 65536 && attempt < 200_000; attempt++) if (open()) existing++;
      const n = 50_000;
      let ok = 0;
      const start = performance.now();
      for (let i = 0; i < n; i++) if (open()) ok++;
      const seconds = (performance.now() - start) / 1000;
      const c = f.nat.counters;
      results.push(
        `${name}: ${Math.round(n / seconds).toLocaleString("en-US")} conns/s ` +
          `(${ok}/${n} bound, table ${f.table.count}, searches ${c.searches}, no free tuple ${c.noFreeTuple}, tries/search ${(c.searchTries / Math.max(1, c.searches)).toFixed(1)})`,
      );
      expect(ok).toBeGreaterThan(0);
    }
    console.log(`setupNat rate, 64k existing entries:\n  ${results.join("\n  ")}`);
  });
});
