/**
 * `qnat conntrack -D` at the dataplane: a deleted connection's next packet finds no entry, is
 * NEW again (a TCP ACK picked up loosely, nf_conntrack_tcp_loose), and is NATed by the rules as
 * they are at that moment; deletion releases the entry's NAT binding (onRemove), so its
 * address and port are free for the next connection.
 */
import { describe, expect, it } from "vitest";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { ConntrackWork } from "../../src/control/conntrack-command.js";
import { parseConntrackArgs } from "../../src/cli/conntrack.js";
import { runTrace } from "../../src/control/trace.js";
import { TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

/** Runs `qnat conntrack WORDS` against the router's table, in pieces; returns the lines printed. */
function conntrack(router: MemoryRouter, words: string[]): string[] {
  const { op, filter } = parseConntrackArgs(words);
  const text = new ConntrackWork(router.dataplane.conntrack, op, filter).drain();
  return text === "" ? [] : text.trimEnd().split("\n");
}

/** 10.0.0.3:40000 -> 9.186.100.1:80 opened through SNAT (SYN, SYN/ACK, ACK). */
function openSnatConnection(router: MemoryRouter, src = "10.0.0.3", sport = 40000): void {
  router.send(QR, { protocol: "tcp", src, dst: "9.186.100.1", sport, dport: 80, tcpFlags: TCP_SYN });
  router.run();
  const out = router.received(QG);
  expect(out).toHaveLength(1);
  router.send(QG, { protocol: "tcp", src: "9.186.100.1", dst: out[0]!.src, sport: 80, dport: out[0]!.sport, tcpFlags: TCP_SYN | TCP_ACK });
  router.run();
  expect(router.received(QR)).toHaveLength(1);
  router.send(QR, { protocol: "tcp", src, dst: "9.186.100.1", sport, dport: 80, tcpFlags: TCP_ACK });
  router.run();
  expect(router.received(QG)).toHaveLength(1);
}

describe("conntrack -D at the dataplane", () => {
  it("10.0.0.3's deleted connection: its next ACK is NEW, picked up loosely, and leaves again as 9.186.100.2 by the snat rule", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 1024 });
    openSnatConnection(router);
    const table = router.dataplane.conntrack;
    expect(formatConntrackTable(table)).toContain("ESTABLISHED src=10.0.0.3 dst=9.186.100.1 sport=40000 dport=80 src=9.186.100.1 dst=9.186.100.2 sport=80 dport=40000 [ASSURED]");

    const deleted = conntrack(router, ["-D", "-p", "tcp", "-s", "10.0.0.3", "--dport", "80"]);
    expect(deleted).toHaveLength(1);
    expect(deleted[0]).toContain("src=10.0.0.3 dst=9.186.100.1 sport=40000 dport=80");
    expect(table.count).toBe(0);
    expect(table.counters.removed).toBe(1);

    // The trace says it before the packet goes: no connection matches, the nat rules run.
    const trace = runTrace(router.dataplane, `${QR} tcp 10.0.0.3:40000 > 9.186.100.1:80 ack`);
    expect(trace.steps.find((step) => step.stage === "conntrack")?.text).toMatch(/^NEW: no connection matches/);
    expect(trace.steps.some((step) => step.text.includes("-A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2  => SNAT to 9.186.100.2"))).toBe(true);

    router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 80, tcpFlags: TCP_ACK });
    router.run();
    expect(router.received(QG)).toMatchObject([{ src: "9.186.100.2", dst: "9.186.100.1", sport: 40000, dport: 80 }]);
    const lines = formatConntrackTable(table).trimEnd().split("\n");
    expect(lines).toHaveLength(1);
    // Loose pickup (tcp_new with nf_conntrack_tcp_loose): ESTABLISHED, not yet answered.
    expect(lines[0]).toMatch(/^tcp {6}6 \d+ ESTABLISHED src=10\.0\.0\.3 dst=9\.186\.100\.1 sport=40000 dport=80 \[UNREPLIED\] src=9\.186\.100\.1 dst=9\.186\.100\.2 sport=80 dport=40000 mark=0 use=1$/);
    // The answer is translated back through the new entry.
    router.send(QG, { protocol: "tcp", src: "9.186.100.1", dst: "9.186.100.2", sport: 80, dport: 40000, tcpFlags: TCP_ACK });
    router.run();
    expect(router.received(QR)).toMatchObject([{ src: "9.186.100.1", dst: "10.0.0.3", sport: 80, dport: 40000 }]);
  });

  it("the floating IP's connections: -D -q 9.186.100.129 removes 10.0.0.2's and leaves 10.0.0.3's; 203.0.113.10's next packet to the floating IP is DNATed anew", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 1024 });
    openSnatConnection(router, "10.0.0.3", 40000);
    openSnatConnection(router, "10.0.0.2", 40001); // leaves as 9.186.100.129 (float-snat)
    router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.129", sport: 50000, dport: 22, tcpFlags: TCP_SYN });
    router.run();
    expect(router.received(QR)).toMatchObject([{ src: "203.0.113.10", dst: "10.0.0.2", dport: 22 }]);

    expect(conntrack(router, ["-L", "-d", "9.186.100.129"])).toHaveLength(1);
    const deleted = conntrack(router, ["-D", "-q", "9.186.100.129"]);
    expect(deleted).toHaveLength(1);
    expect(deleted[0]).toContain("src=10.0.0.2 dst=9.186.100.1 sport=40001 dport=80");
    expect(conntrack(router, ["-D", "-d", "9.186.100.129"])).toHaveLength(1);
    expect(conntrack(router, ["-L"]).map((line) => line.includes("src=10.0.0.3 "))).toEqual([true]);

    router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.129", sport: 50000, dport: 22, tcpFlags: TCP_ACK });
    router.run();
    expect(router.received(QR)).toMatchObject([{ src: "203.0.113.10", dst: "10.0.0.2", sport: 50000, dport: 22 }]);
    expect(conntrack(router, ["-L", "-d", "9.186.100.129"])[0]).toMatch(/ESTABLISHED src=203\.0\.113\.10 dst=9\.186\.100\.129 sport=50000 dport=22 \[UNREPLIED\] src=10\.0\.0\.2 dst=203\.0\.113\.10 sport=22 dport=50000/);
  });

  it("deleting frees the NAT binding's tuple: the port 10.0.0.3 held is kept by 10.0.0.5's next connection instead of being remapped", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 1024 });
    openSnatConnection(router, "10.0.0.3", 40000);
    // While 10.0.0.3 holds 9.186.100.2:40000 toward 9.186.100.1:80, 10.0.0.5's same port is remapped...
    router.send(QR, { protocol: "tcp", src: "10.0.0.5", dst: "9.186.100.1", sport: 40000, dport: 80, tcpFlags: TCP_SYN });
    router.run();
    expect(router.received(QG)[0]!.sport).not.toBe(40000);
    expect(conntrack(router, ["-D", "-p", "tcp", "--orig-port-src", "40000"])).toHaveLength(2);
    // ...and once both are deleted, 10.0.0.5 keeps it.
    router.send(QR, { protocol: "tcp", src: "10.0.0.5", dst: "9.186.100.1", sport: 40000, dport: 80, tcpFlags: TCP_SYN });
    router.run();
    expect(router.received(QG)).toMatchObject([{ src: "9.186.100.2", sport: 40000 }]);
  });
});
