/**
 * A lab router that carries a full Internet table: a million `ip route` lines from a
 * `routes_file:` load and route like a reference longest-prefix match, the old 32,767-route
 * limit is gone, a routes file's errors point at its own lines, and connections follow a
 * reloaded table at once (their cached next hop is checked against the table's version). A new
 * full table applied live is built in pieces while the running one forwards, then swapped in.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig, parseConfig, parseConfigInPieces, type RouterConfig } from "../../src/config/config.js";
import { diffConfigsInPieces, formatDifference, inPlaceRouting, routingForChange } from "../../src/control/live-apply.js";
import { parseConfigRules } from "../../src/control/host-setup.js";
import { formatIpv4, parseIpv4, prefixMask } from "../../src/core/addr.js";
import { XorShift32 } from "../../src/core/rng.js";
import { buildDataplane, buildRoutingTable } from "../../src/dataplane/from-config.js";
import { syntheticInternetTable, type SyntheticPrefix } from "../../src/route/synthetic-table.js";
import { MemoryRouter } from "../support/memory-router.js";
import { turnsDuring } from "../support/turns.js";

const QR = "qr-tenant";
const QA = "qa-upstream";
const QB = "qb-upstream";
/** Next hops: four gateways on each upstream port. */
const GATEWAYS = [
  ...[11, 12, 13, 14].map((host) => ({ port: QA, gateway: `198.51.100.${host}` })),
  ...[11, 12, 13, 14].map((host) => ({ port: QB, gateway: `203.0.113.${host}` })),
];

const dir = mkdtempSync(join(tmpdir(), "qnat-full-table-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A router with a tenant port and two upstream ports, its routes in `routes.txt` beside it. */
function configText(extra = ""): string {
  return `router:
  id: full-table
ports:
  - name: ${QR}
    addresses: [10.0.0.1/24]
    wire: { namespace: qnat-tenant, device: eth0 }
  - name: ${QA}
    addresses: [198.51.100.1/24]
    wire: { namespace: qnat-upstream-a, device: eth0 }
  - name: ${QB}
    addresses: [203.0.113.1/24]
    wire: { namespace: qnat-upstream-b, device: eth0 }
${extra}`;
}

function writeConfig(name: string, routeLines: readonly string[], extra = ""): string {
  const routesFile = `${name}.routes`;
  writeFileSync(join(dir, routesFile), routeLines.join("\n") + "\n");
  const configFile = join(dir, `${name}.yaml`);
  writeFileSync(configFile, configText(`routes_file: ${routesFile}\n${extra}`));
  return configFile;
}

/** Synthetic Internet prefixes clear of the router's own subnets (10/8, 198/8, 203/8). */
function internetPrefixes(count: number, seed: number): SyntheticPrefix[] {
  const first = syntheticInternetTable(count + count / 50, new XorShift32(seed));
  return first.filter((p) => ![10, 198, 203].includes(p.prefix >>> 24) && p.prefixLength >= 8).slice(0, count);
}

function routeLine(p: SyntheticPrefix, nexthop: number): string {
  const { port, gateway } = GATEWAYS[nexthop % GATEWAYS.length]!;
  return `${formatIpv4(p.prefix)}/${p.prefixLength} via ${gateway} dev ${port}`;
}

/** Reference: per length an exact-match map to the line's index; tried from /32 down. */
function reference(prefixes: readonly SyntheticPrefix[]): (dst: number) => number {
  const byLength = Array.from({ length: 33 }, () => new Map<number, number>());
  prefixes.forEach((p, index) => byLength[p.prefixLength]!.set(p.prefix, index));
  return (dst) => {
    for (let length = 32; length >= 0; length--) {
      const index = byLength[length]!.get((dst & prefixMask(length)) >>> 0);
      if (index !== undefined) return index;
    }
    return -1;
  };
}

describe("a full Internet table", () => {
  it("1,000,000 routes from a routes file route every address as a reference longest-prefix match", () => {
    const prefixes = internetPrefixes(1_000_000, 20261130);
    expect(prefixes.length).toBe(1_000_000);
    const lines = prefixes.map((p) => routeLine(p, p.value));
    const config = loadConfig(writeConfig("million", ["# a full table, as `ip route` prints it", "", ...lines]));
    expect(config.routes.length).toBe(1_000_000);
    const table = buildRoutingTable(config);

    const expected = reference(prefixes);
    const rng = new XorShift32(7);
    let highestId = 0;
    let routed = 0;
    for (let i = 0; i < 40_000; i++) {
      let dst: number;
      if (i % 2 === 0) {
        dst = rng.next() >>> 0;
      } else {
        const p = prefixes[rng.next() % prefixes.length]!;
        dst = (p.prefix + (rng.next() % 2 ** (32 - p.prefixLength))) >>> 0;
      }
      const index = expected(dst);
      const id = table.lookup(dst);
      // Addresses in the router's own subnets have their connected routes; no other route covers them.
      if ([10, 198, 203].includes(dst >>> 24) && id >= 0 && table.routeGateway(id) === 0) continue;
      if (index < 0) {
        expect(id, formatIpv4(dst)).toBe(-1);
        continue;
      }
      const { port, gateway } = GATEWAYS[prefixes[index]!.value % GATEWAYS.length]!;
      expect([formatIpv4(dst), table.portNames[table.routePort(id)], formatIpv4(table.routeGateway(id))]).toEqual([formatIpv4(dst), port, gateway]);
      highestId = Math.max(highestId, id);
      routed++;
    }
    expect(routed).toBeGreaterThan(20_000);
    expect(highestId).toBeGreaterThan(900_000); // route ids far beyond the old 15-bit limit
  });

  it("40,000 routes in the config's routes: list are all taken (the old limit was 32,767)", () => {
    const prefixes = internetPrefixes(40_000, 4);
    const lines = prefixes.map((p, i) => routeLine(p, i));
    const config = parseConfig(configText(`routes:\n${lines.map((l) => `  - ${l}\n`).join("")}`), join(dir, "forty.yaml"));
    const table = buildRoutingTable(config);
    expect(table.routes().filter((r) => r.gateway !== 0).length).toBe(40_000);
    const last = prefixes[prefixes.length - 1]!;
    const id = table.lookup(last.prefix);
    expect(id).toBeGreaterThan(32_767);
    expect(table.describeRoute(id)).toBe(lines[lines.length - 1]);
  });

  it("a routes file's mistake is reported at its own file and line, after comments and blank lines", () => {
    const file = writeConfig("broken", [
      "# upstream A",
      "",
      "1.0.0.0/24 via 198.51.100.11 dev qa-upstream",
      "  # a comment line",
      "2.0.0.0/24 via 192.0.2.9 dev qa-upstream   # an unreachable gateway",
    ]);
    const config = loadConfig(file);
    expect(config.routes.map((r) => r.line)).toEqual([3, 5]);
    expect(() => buildRoutingTable(config)).toThrow(ConfigError);
    expect(() => buildRoutingTable(config)).toThrow(
      `${join(dir, "broken.routes")}:5: route "2.0.0.0/24 via 192.0.2.9 dev qa-upstream": Error: Nexthop has invalid gateway.`,
    );
  });

  it("a missing routes file is the config's error at its routes_file line", () => {
    const configFile = join(dir, "missing.yaml");
    writeFileSync(configFile, configText("routes_file: nowhere.routes\n"));
    expect(() => loadConfig(configFile)).toThrow(new RegExp(`^${configFile}:13: cannot read routes file ${join(dir, "nowhere.routes")}$`));
  });

  it("parseConfigInPieces (`qnat apply`, SIGHUP) reads a routes file as parseConfig does, returning to the event loop between pieces", async () => {
    // 30,000 lines (1.5 MB: lines cross the reader's 64 KiB chunks), comments, blank and CRLF lines, no final newline.
    const lines = internetPrefixes(30_000, 8).map((p, i) => (i % 1000 === 7 ? "# a comment\r" : i % 997 === 3 ? "" : `${routeLine(p, i)}${i % 5 === 0 ? "\r" : ""}   # next hop ${i % 8}`));
    const file = writeConfig("pieces", lines);
    writeFileSync(join(dir, "pieces.routes"), lines.join("\n")); // no newline after the last line
    const { result: inPieces, turns } = await turnsDuring(parseConfigInPieces(readFileSync(file, "utf8"), file));
    expect(turns).toBeGreaterThan(1);
    const atOnce = loadConfig(file);
    expect(inPieces.routes.length).toBeGreaterThan(29_000);
    expect(inPieces.routes).toEqual(atOnce.routes);
    expect(inPieces).toEqual(atOnce);
    const missing = join(dir, "pieces-missing.yaml");
    writeFileSync(missing, configText("routes_file: nowhere.routes\n"));
    await expect(parseConfigInPieces(readFileSync(missing, "utf8"), missing)).rejects.toThrow(`${missing}:13: cannot read routes file ${join(dir, "nowhere.routes")}`);
  });

  it("routes: lines come first, then the routes file's (a file route may use a gateway a routes: line makes reachable)", () => {
    const file = writeConfig("both", ["100.64.1.0/24 via 100.64.0.9"], "routes:\n  - 100.64.0.0/24 dev qb-upstream\n");
    const table = buildRoutingTable(loadConfig(file));
    const id = table.lookup(parseIpv4("100.64.1.7"));
    expect(table.portNames[table.routePort(id)]).toBe(QB);
    expect(formatIpv4(table.routeGateway(id))).toBe("100.64.0.9");
  });
});

describe("connections across a reload of the table", () => {
  /**
   * 40 flows of 10.0.0.2 to destinations whose routes have ids beyond 32,767 in table A (40,000
   * routes, all by upstream A), established and answered from the route cache; then `reload`
   * installs table B, in which `changed` of the prefixes go by upstream B (their routes removed
   * and added anew, so freed route ids now name other prefixes' routes).
   */
  async function flowsAcrossReload(
    name: string,
    changed: (index: number) => boolean,
    reload: (router: MemoryRouter, running: RouterConfig, next: RouterConfig) => void | Promise<void>,
  ): Promise<void> {
    const prefixes = internetPrefixes(40_000, 99);
    const before = prefixes.map((p, i) => routeLine(p, i % 4));
    // The lines that stay, then the changed ones (a live change adds its lines last, live-apply.ts).
    const after = [
      ...before.filter((_, i) => !changed(i)),
      ...prefixes.flatMap((p, i) => (changed(i) ? [routeLine(p, 4 + (i % 4))] : [])),
    ];
    const running = loadConfig(writeConfig(`${name}-before`, before, "nat: \"\"\n"));
    const next = loadConfig(writeConfig(`${name}-after`, after, "nat: \"\"\n"));
    const router = new MemoryRouter(running);
    const fresh = buildRoutingTable(next);
    const flows = prefixes.slice(35_000, 35_040).map((p, i) => ({ dst: formatIpv4((p.prefix + 1) >>> 0), sport: 40_000 + i }));
    const portOf = (dst: string): string => fresh.portNames[fresh.routePort(fresh.lookup(parseIpv4(dst)))]!;
    const sendAll = (): void => {
      for (const f of flows) router.send(QR, { protocol: "udp", src: "10.0.0.2", dst: f.dst, sport: f.sport, dport: 53, payload: new Uint8Array(16) });
      router.run();
    };
    sendAll();
    for (const f of flows) router.send(QA, { protocol: "udp", src: f.dst, dst: "10.0.0.2", sport: 53, dport: f.sport, payload: new Uint8Array(8) });
    router.run();
    expect(router.received(QR).length).toBe(flows.length); // the replies: every flow is established
    expect(router.received(QA).length).toBe(flows.length);
    const fastBefore = router.forwarder.dataplane.fastPathPackets;
    sendAll(); // from the route cache
    expect(router.forwarder.dataplane.fastPathPackets - fastBefore).toBe(flows.length);
    expect(router.received(QA).map((p) => p.dst)).toEqual(flows.map((f) => f.dst));

    await reload(router, running, next);
    sendAll();
    const leftA = router.received(QA).map((p) => p.dst);
    const leftB = router.received(QB).map((p) => p.dst);
    expect(leftB.length).toBeGreaterThan(0);
    expect(leftA.length).toBeGreaterThan(0);
    expect(leftA).toEqual(flows.filter((f) => portOf(f.dst) === QA).map((f) => f.dst));
    expect(leftB).toEqual(flows.filter((f) => portOf(f.dst) === QB).map((f) => f.dst));
    // Each flow's route is the new table's, gateway included.
    const table = router.forwarder.dataplane.routes;
    for (const f of flows) {
      expect(table.describeRoute(table.lookup(parseIpv4(f.dst)))).toBe(fresh.describeRoute(fresh.lookup(parseIpv4(f.dst))));
    }
    expect(router.drops(QR)).toEqual({});
  }

  it("20 of 40,000 routes changed in place: 10.0.0.2's flows follow at their next packet, the table's version alone voiding their cached next hop", async () => {
    await flowsAcrossReload("twenty", (i) => i >= 35_000 && i < 35_040 && i % 2 === 1, (router, running, next) => {
      const change = inPlaceRouting(running, next, router.dataplane.routes);
      expect(change).toBeDefined();
      change!(); // route caches are not cleared here: the version check must do it
    });
  });

  it("half of the table replaced (built anew in pieces, as `qnat apply` does): the flows go on by the new routes", async () => {
    await flowsAcrossReload("half", (i) => i % 2 === 0, async (router, running, next) => {
      const runningTable = router.dataplane.routes;
      const difference = await diffConfigsInPieces(running, parseConfigRules(running), next, parseConfigRules(next));
      const routing = await routingForChange(running, next, runningTable, difference);
      expect(routing.change).toBeUndefined();
      expect(routing.routes).not.toBe(runningTable);
      // router-process.ts applyNow's swap: a successor keeps the connections, their cached routes forgotten.
      const successor = buildDataplane(next, { successorOf: router.dataplane, routes: routing.routes });
      successor.conntrack.clearRouteCaches();
      router.forwarder.dataplane = successor;
    });
  });
});

describe("`qnat apply` of a new full table, built in pieces while the running one forwards", () => {
  const COUNT = 100_000;
  const prefixes = internetPrefixes(COUNT, 31);
  const taken = new Set(prefixes.map((p) => p.prefix * 64 + p.prefixLength));
  const replacements = internetPrefixes(COUNT, 32).filter((p) => !taken.has(p.prefix * 64 + p.prefixLength)).slice(0, COUNT / 2);
  /** The running file: every prefix by upstream A. */
  const runningLines = prefixes.map((p) => routeLine(p, 0));
  /** The new file: every other prefix replaced by another one, every route by upstream B. */
  const nextLines = prefixes.map((p, i) => routeLine(i % 2 === 0 ? p : replacements[i >> 1]!, 4 + (i % 4)));
  const DEFAULT = "routes:\n  - default via 198.51.100.254 dev qa-upstream\n";

  it("100,000 routes: lookups answer from the new table (next hops changed, replaced prefixes gone), the running table answers until the swap", async () => {
    const running = loadConfig(writeConfig("apply-a", runningLines, DEFAULT));
    const next = loadConfig(writeConfig("apply-b", nextLines, DEFAULT));
    const runningTable = buildRoutingTable(running);
    const version = runningTable.version;
    const difference = await diffConfigsInPieces(running, parseConfigRules(running), next, parseConfigRules(next));
    expect([difference.routesRemoved.length, difference.routesAdded.length]).toEqual([COUNT, COUNT]);
    // `qnat apply` prints two counts, not 200,000 lines.
    expect(formatDifference(difference, next)).toEqual([
      `- ${COUNT} routes (not listed: more than 1000 route lines changed)`,
      `+ ${COUNT} routes (not listed: more than 1000 route lines changed)`,
    ]);
    const { routes, change } = await routingForChange(running, next, runningTable, difference);
    expect(change).toBeUndefined();

    const reference = buildRoutingTable(next);
    const rng = new XorShift32(5);
    for (let i = 0; i < 20_000; i++) {
      const p = (i % 2 === 0 ? prefixes : replacements)[rng.next() % (i % 2 === 0 ? prefixes.length : replacements.length)]!;
      const dst = i % 3 === 0 ? rng.next() >>> 0 : (p.prefix + (rng.next() % 2 ** (32 - p.prefixLength))) >>> 0;
      expect(routes.describeRoute(routes.lookup(dst)), formatIpv4(dst)).toBe(reference.describeRoute(reference.lookup(dst)));
    }
    // A replaced prefix is gone from the new table (its addresses fall to a shorter route or the default).
    const gone = prefixes[1]!;
    expect(routes.routesOf(gone.prefix, gone.prefixLength)).toEqual([]);
    expect(runningTable.routesOf(gone.prefix, gone.prefixLength).map((r) => formatIpv4(r.gateway))).toEqual(["198.51.100.11"]);
    // A kept prefix's next hop is the new file's.
    const kept = prefixes[2]!;
    expect(routes.describeRoute(routes.lookup(kept.prefix))).toBe(nextLines[2]);
    // The running table was never touched: the swap replaces it whole.
    expect(runningTable.version).toBe(version);
    expect(runningTable.describeRoute(runningTable.lookup(kept.prefix))).toBe(runningLines[2]);
  });

  it("the build yields to the event loop: the running table forwards between its pieces", async () => {
    const running = loadConfig(writeConfig("yield-a", runningLines, DEFAULT));
    const next = loadConfig(writeConfig("yield-b", nextLines, DEFAULT));
    const runningTable = buildRoutingTable(running);
    const difference = await diffConfigsInPieces(running, parseConfigRules(running), next, parseConfigRules(next));
    // A stand-in for the packet loop: one lookup in the running table per turn of the event loop.
    const kept = prefixes[2]!;
    const answers: string[] = [];
    const { result: { routes }, turns } = await turnsDuring(routingForChange(running, next, runningTable, difference), () => {
      answers.push(runningTable.describeRoute(runningTable.lookup(kept.prefix)));
    });
    expect(turns).toBeGreaterThan(10); // turns of the loop ran while the table was built
    expect(new Set(answers)).toEqual(new Set([runningLines[2]])); // each from the running table
    expect(routes.describeRoute(routes.lookup(kept.prefix))).toBe(nextLines[2]);
  });

  it("floating IP 198.51.100.130 added to a router holding 100,000 routes: checked in pieces, made in place at the swap", async () => {
    const running = loadConfig(writeConfig("fip-a", runningLines, DEFAULT));
    const nextFile = writeConfig("fip-b", runningLines, DEFAULT);
    writeFileSync(nextFile, readFileSync(nextFile, "utf8").replace("addresses: [198.51.100.1/24]", "addresses: [198.51.100.1/24, 198.51.100.130/32]"));
    const next = loadConfig(nextFile);
    const runningTable = buildRoutingTable(running);
    const difference = await diffConfigsInPieces(running, parseConfigRules(running), next, parseConfigRules(next));
    expect(formatDifference(difference, next)).toEqual([`+ address 198.51.100.130/32 on ${QA}`]);
    const { result: { routes, change }, turns } = await turnsDuring(routingForChange(running, next, runningTable, difference));
    expect(turns).toBeGreaterThan(1); // the 100,000 lines were walked in pieces
    expect(routes).toBe(runningTable);
    expect(runningTable.localAddressPort(parseIpv4("198.51.100.130"))).toBe(-1);
    change!();
    expect(runningTable.localAddressPort(parseIpv4("198.51.100.130"))).toBe(1);
    expect(runningTable.describeRoute(runningTable.lookup(prefixes[2]!.prefix))).toBe(runningLines[2]);
  });

  it("a bad line in the new routes file is one FILE:LINE error and leaves the running table as it was", async () => {
    const broken = [...nextLines];
    broken[70_000] = "100.99.0.0/16 via 192.0.2.9 dev qa-upstream";
    const running = loadConfig(writeConfig("bad-a", runningLines, DEFAULT));
    const next = loadConfig(writeConfig("bad-b", ["# the new table", ...broken], DEFAULT));
    const runningTable = buildRoutingTable(running);
    const version = runningTable.version;
    const before = runningTable.routes().length;
    const difference = await diffConfigsInPieces(running, parseConfigRules(running), next, parseConfigRules(next));
    const failed = routingForChange(running, next, runningTable, difference);
    await expect(failed).rejects.toThrow(ConfigError);
    await expect(failed).rejects.toThrow(`${join(dir, "bad-b.routes")}:70002: route "100.99.0.0/16 via 192.0.2.9 dev qa-upstream": Error: Nexthop has invalid gateway.`);
    expect(runningTable.version).toBe(version);
    expect(runningTable.routes().length).toBe(before);
    expect(runningTable.describeRoute(runningTable.lookup(prefixes[1]!.prefix))).toBe(runningLines[1]);
  });
});
