import { describe, expect, it } from "vitest";
import { formatIpv4 } from "../../src/core/addr.js";
import { XorShift32 } from "../../src/core/rng.js";
import { RouteListing } from "../../src/route/route-listing.js";
import { syntheticInternetTable } from "../../src/route/synthetic-table.js";
import { RoutingTable } from "../../src/route/table.js";

/** The seed's table, plus `count` Internet prefixes by its gateway (some with a second, metric 100 route). */
function table(count: number): RoutingTable {
  const t = new RoutingTable(["qr-694450d6-f6", "qg-e76de35e-90"]);
  t.addConnected(0, 0x0a000001, 24);
  t.addConnected(1, 0x09ba6402, 24);
  t.addConnected(1, 0x09ba6481, 32);
  t.addRoute("default via 9.186.100.1 dev qg-e76de35e-90");
  const prefixes = syntheticInternetTable(count, new XorShift32(5)).filter((p) => p.prefix >>> 24 !== 10 && p.prefix >>> 24 !== 9);
  prefixes.forEach((p, i) => {
    t.addRoute(`${formatIpv4(p.prefix)}/${p.prefixLength} via 9.186.100.1`);
    if (i % 10 === 0) t.addRoute(`${formatIpv4(p.prefix)}/${p.prefixLength} via 9.186.100.7 metric 100`);
  });
  return t;
}

function drain(listing: RouteListing): string[] {
  const pieces: string[] = [];
  for (let piece = listing.next(); piece !== undefined; piece = listing.next()) pieces.push(piece);
  return pieces;
}

describe("qnat show routes in pieces", () => {
  it("prints the seed's routes as `ip route` and `ip -j route` do", () => {
    const t = table(0);
    expect(drain(new RouteListing(t, "text")).join("")).toBe(t.format({ trailingSpace: false }));
    expect(drain(new RouteListing(t, "json")).join("")).toBe(JSON.stringify(t.toJSON()) + "\n");
  });

  it("lists 50,000 routes in the kernel's dump order, a bounded number of prefixes per piece", () => {
    const t = table(45_000);
    const pieces = drain(new RouteListing(t, "text"));
    expect(pieces.join("")).toBe(t.format({ trailingSpace: false }));
    expect(pieces.length).toBeGreaterThan(20);
    // No piece formats more than 1000 prefixes (a prefix has at most two routes here).
    for (const piece of pieces) expect(piece.split("\n").length - 1).toBeLessThanOrEqual(2000);
    const json = drain(new RouteListing(t, "json")).join("");
    expect(json).toBe(JSON.stringify(t.toJSON()) + "\n");
  });
});
