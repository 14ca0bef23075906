/**
 * A documented difference allows only the records it names: the rest of its section is still
 * compared. Each test takes a real scenario of scenarios.ts, shows that its documented difference
 * alone agrees, then plants an unrelated difference in the same section and shows that it fails.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { compareObservations, finRetransmitted, formatScenario, ROOT, type CtEntry, type Observation, type Plan } from "./harness.js";
import { plansFor } from "./scenarios.js";

function plansOf(example: string): Plan[] {
  const path = join(ROOT, "examples", example);
  return plansFor(parseConfig(readFileSync(path, "utf8"), path));
}

function plan(example: string, prefix: string): Plan {
  const found = plansOf(example).find((p) => p.name.startsWith(prefix));
  if (found === undefined) throw new Error(`no scenario "${prefix}..." for ${example}`);
  return found;
}

type Packet = Record<string, unknown>;

function observation(packets: Record<string, Packet[]>, conntrack: CtEntry[] = [], clients: Array<Array<Record<string, unknown>>> = [], actions: Observation["actions"] = []): Observation {
  return { agents: Object.fromEntries(Object.entries(packets).map(([ns, list]) => [ns, { events: [], packets: list }])), clients, actions, conntrack };
}

const udpEntry = (src: string, sport: number, dst: string, nat: string, unreplied = false): CtEntry => ({
  protocol: "udp",
  original: { src, dst, sport, dport: 7001 },
  reply: { src: dst, dst: nat, sport: 7001, dport: sport },
  unreplied,
  assured: false,
  timeout: 30,
});

describe("the fragment scenario's allowance (the seed's router)", () => {
  const fragments = plan("seed.yaml", "fragmented UDP");
  // Each datagram as it leaves toward 203.0.113.10: 512 + 512 + 184 bytes of UDP, its id kept.
  const leaving = (id: number, sport: number, skip = -1): Packet[] =>
    [
      { src: "9.186.100.129", dst: "203.0.113.10", proto: 17, ttl: 63, id, len: 532, mf: true, sport, dport: 7001 },
      { src: "9.186.100.129", dst: "203.0.113.10", proto: 17, ttl: 63, id, len: 532, mf: true, offset: 512 },
      { src: "9.186.100.129", dst: "203.0.113.10", proto: 17, ttl: 63, id, len: 204, offset: 1024 },
    ].filter((_, i) => i !== skip);
  const overlapping = [
    { src: "9.186.100.129", dst: "203.0.113.10", proto: 17, ttl: 63, id: 0x5103, len: 532, mf: true, sport: 43802, dport: 7001 },
    { src: "9.186.100.129", dst: "203.0.113.10", proto: 17, ttl: 63, id: 0x5103, len: 540, mf: true, offset: 504 },
  ];
  const entries = [udpEntry("10.0.0.2", 43800, "203.0.113.10", "9.186.100.129"), udpEntry("10.0.0.2", 43801, "203.0.113.10", "9.186.100.129")];
  const kernel = observation({ "qnat-external": [...leaving(0x5101, 43800), ...leaving(0x5102, 43801)] }, entries);

  it("agrees when only the overlapping datagram differs (forwarded and tracked by qnat, dropped by Linux)", () => {
    const qnat = observation(
      { "qnat-external": [...leaving(0x5101, 43800), ...leaving(0x5102, 43801), ...overlapping] },
      [...entries, udpEntry("10.0.0.2", 43802, "203.0.113.10", "9.186.100.129", true)],
    );
    const result = compareObservations(fragments, kernel, qnat, 1);
    expect(result.agree).toBe(true);
    expect(result.sections.filter((s) => !s.equal).map((s) => [s.section, s.allowed.length])).toEqual([
      ["wire into qnat-external", 2],
      ["conntrack", 1],
    ]);
    // The allowed lines are marked `~`, not `!`.
    expect(formatScenario(result)).toMatch(/^~ +~ 9\.186\.100\.129 > 203\.0\.113\.10 p17 ttl 63 len 540 id 20739 MF off 504$/m);
  });

  it("fails when the reversed datagram's middle fragment is missing, though the in-order one has the same size and offset", () => {
    const qnat = observation({ "qnat-external": [...leaving(0x5101, 43800), ...leaving(0x5102, 43801, 1), ...overlapping] }, entries);
    const result = compareObservations(fragments, kernel, qnat, 1);
    expect(result.agree).toBe(false);
    const wire = result.sections.find((s) => s.section === "wire into qnat-external")!;
    expect(wire.documented).toBeUndefined();
    expect(wire.kernel.filter((line) => !wire.qnat.includes(line))).toEqual(["9.186.100.129 > 203.0.113.10 p17 ttl 63 len 532 id 20738 MF off 512"]);
  });

  it("fails when the in-order datagram leaves with another source address", () => {
    const moved = leaving(0x5101, 43800).map((p) => ({ ...p, src: "9.186.100.2" }));
    const qnat = observation({ "qnat-external": [...moved, ...leaving(0x5102, 43801), ...overlapping] }, entries);
    expect(compareObservations(fragments, kernel, qnat, 1).agree).toBe(false);
  });

  it("fails when an in-order datagram's conntrack entry differs, though conntrack is an allowed section", () => {
    const qnat = observation({ "qnat-external": kernel.agents["qnat-external"]!.packets }, [entries[0]!, { ...entries[1]!, unreplied: true }]);
    const result = compareObservations(fragments, kernel, qnat, 1);
    expect(result.agree).toBe(false);
    expect(result.sections.find((s) => s.section === "conntrack")!.documented).toBeUndefined();
  });
});

describe("DF and oversize (two-subnets: gateway MTU 1400), which has no allowance since qnat fragments on output", () => {
  const oversize = plan("two-subnets.yaml", "DF and oversize");
  const actions = [[
    { kind: "udp" as const, src: "192.168.10.11", sport: 43901, dst: "192.0.2.80", dport: 7001, size: 1472, df: false },
    { kind: "udp" as const, src: "192.168.10.11", sport: 43900, dst: "192.0.2.80", dport: 7001, size: 1472, df: true },
  ]];
  const needFrag = { kind: "udp", error: { errno: "EMSGSIZE", type: 3, code: 4, from: "192.168.10.1", info: 1400 } };
  const kernel = observation({}, [], [[{ kind: "udp", reply: "seen 172.16.50.21:43901 1472" }, needFrag]], actions);

  it("has no documented difference left", () => {
    expect(oversize.documented ?? []).toEqual([]);
  });

  it("fails when the datagram without DF is lost", () => {
    const qnat = observation({}, [], [[{ kind: "udp" }, needFrag]], actions);
    expect(compareObservations(oversize, kernel, qnat, 1).agree).toBe(false);
  });
});

describe("the TSO allowance (TCP transfers with window scaling)", () => {
  const transfer = plan("seed.yaml", "TCP transfers of 60000 bytes");
  const segment = (flags: string, len: number, tcpseq: number): Packet => ({ src: "9.186.100.129", dst: "203.0.113.10", proto: 6, ttl: 63, len, df: true, sport: 43630, dport: 7002, flags, tcpseq });
  const kernel = observation({ "qnat-external": [segment("S", 60, 1), segment("PA", 1500, 2), segment("PA", 684, 1462), segment("FA", 52, 60002)] });

  it("agrees when the data segments toward the server have other sizes", () => {
    const qnat = observation({ "qnat-external": [segment("S", 60, 1), segment("PA", 14532, 2), segment("PA", 10188, 14482), segment("FA", 52, 60002)] });
    expect(compareObservations(transfer, kernel, qnat, 1).agree).toBe(true);
  });

  it("agrees when the FIN rides on the last data super-packet instead of coming alone", () => {
    const qnat = observation({ "qnat-external": [segment("S", 60, 1), segment("PA", 14532, 2), segment("FPA", 16612, 14482)] });
    expect(compareObservations(transfer, kernel, qnat, 1).agree).toBe(true);
  });

  it("fails when the SYN leaves with another TTL, in the same allowed section", () => {
    const qnat = observation({ "qnat-external": [{ ...segment("S", 60, 1), ttl: 64 }, segment("PA", 14532, 2), segment("FA", 52, 60002)] });
    expect(compareObservations(transfer, kernel, qnat, 1).agree).toBe(false);
  });
});

describe("a teardown decided by a retransmitted FIN to the router's own host (OUTPUT DNAT)", () => {
  // The router's own host 172.26.244.104 closes a connection to the floating IP, DNATed to
  // 192.168.15.61:7002. Through the loaded router the server's FIN is probed again (tail loss
  // probe), the router host ACKs it twice, the server answers the late ACK with a RST: CLOSE.
  const fin = { src: "192.168.15.61", dst: "172.26.244.104", proto: 6, ttl: 64, len: 52, df: true, sport: 7002, dport: 43411, flags: "FA", tcpseq: 900 };
  const entry = (state: string): CtEntry => ({
    protocol: "tcp",
    state,
    original: { src: "172.26.244.104", dst: "172.26.244.104", sport: 43411, dport: 7002 },
    reply: { src: "192.168.15.61", dst: "172.26.244.104", sport: 7002, dport: 43411 },
    unreplied: false,
    assured: true,
    timeout: 10,
  });
  const outputDnat: Plan = { name: "OUTPUT DNAT", steps: [], knownPorts: [43411, 7002], sniffRouterHost: ["qr-f9295532-1"] };
  const kernel: Observation = { ...observation({}, [entry("TIME_WAIT")]), routerHost: [fin] };

  it("is compared as timing when the router host's sniffer saw the FIN twice, and says so", () => {
    const result = compareObservations(outputDnat, kernel, { ...observation({}, [entry("CLOSE")]), routerHost: [fin, fin] }, 1);
    expect(result.agree).toBe(true);
    expect(result.notes).toEqual([expect.stringContaining("retransmitted on the qnat side")]);
    expect(result.timelines?.qnat.filter((line) => line.includes("into the router's own host") && line.includes("[FA]"))).toHaveLength(2);
  });

  it("differs without that evidence", () => {
    expect(compareObservations(outputDnat, kernel, { ...observation({}, [entry("CLOSE")]), routerHost: [fin] }, 1).agree).toBe(false);
  });

  it("a FIN forwarded without NAT past two sniffers once each is not a retransmission", () => {
    const twoPlaces: Observation = { ...observation({ "tenant-b": [fin] }), routerHost: [fin] };
    expect(finRetransmitted(twoPlaces)).toBe(false);
  });
});

describe("retries", () => {
  it("a scenario that agrees only on its second attempt is reported FLAKY, not AGREE", () => {
    const p: Plan = { name: "UDP request/reply", steps: [], knownPorts: [] };
    const same = observation({});
    expect(formatScenario(compareObservations(p, same, same, 1000, 1))).toMatch(/^AGREE {2}UDP request\/reply \(1\.0 s\)$/);
    expect(formatScenario(compareObservations(p, same, same, 1000, 2))).toMatch(/^FLAKY {2}UDP request\/reply \(1\.0 s, attempt 2: the earlier attempts differed\)$/);
  });
});

describe("ports a router picked", () => {
  // --random-fully: 10.0.0.2:41000 leaves as 9.186.100.2:41005 through one router (a port the
  // scenario chose for another client) and as 9.186.100.2:23456 through the other.
  const p: Plan = { name: "random-fully", steps: [], knownPorts: [41000, 41005, 7001] };
  const side = (picked: number): Observation =>
    observation(
      { "qnat-external": [{ src: "9.186.100.2", dst: "203.0.113.10", proto: 17, ttl: 63, len: 128, sport: picked, dport: 7001 }] },
      [{ protocol: "udp", original: { src: "10.0.0.2", dst: "203.0.113.10", sport: 41000, dport: 7001 }, reply: { src: "203.0.113.10", dst: "9.186.100.2", sport: 7001, dport: picked }, unreplied: true, assured: false, timeout: 30 }],
    );

  it("are '~' on both sides even when one pick equals a port the scenario chose, because that side's table says it was picked", () => {
    const result = compareObservations(p, side(41005), side(23456), 1);
    expect(result.agree).toBe(true);
    expect(result.sections.map((s) => s.kernel)).toEqual([
      [],
      ["9.186.100.2 > 203.0.113.10 p17 ttl 63 len 128 ~ > 7001"],
      ["udp 10.0.0.2:41000 > 203.0.113.10:7001 | 203.0.113.10:7001 > 9.186.100.2:~ [UNREPLIED]"],
    ]);
  });

  it("while a port kept on one side and picked on the other still differs", () => {
    expect(compareObservations(p, side(41000), side(23456), 1).agree).toBe(false);
  });
});
