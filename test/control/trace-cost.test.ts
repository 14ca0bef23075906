/**
 * A trace against a live router costs what its packet touches, not the size of the connection
 * table (issue 10: the control plane never stalls forwarding). Structural, not timed: with the
 * default 262,144-entry table (tens of MiB of records, TCP window state and NAT index) a trace
 * copies less than 1 MiB and journals a few dozen words, however full the table is.
 */
import { describe, expect, it } from "vitest";
import { runTrace, type TraceCost } from "../../src/control/trace.js";
import { TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";
import { fingerprint } from "../support/fingerprint.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const MiB = 1 << 20;

describe("a trace's cost does not grow with the connection table", () => {
  it("on a 262,144-entry table, tracing a new SNAT connection and an ACK of a live one copies under 1 MiB", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 262_144 });
    const table = router.dataplane.conntrack;
    // 10.0.0.3 opens 2,000 connections to 9.186.100.1:80 (SNAT to 9.186.100.2, ports kept).
    for (let sport = 30000; sport < 32000; sport++) {
      router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport, dport: 80, tcpFlags: TCP_SYN, seq: 1 });
      router.send(QG, { protocol: "tcp", src: "9.186.100.1", dst: "9.186.100.2", sport: 80, dport: sport, tcpFlags: TCP_SYN | TCP_ACK, seq: 7, ack: 2 });
    }
    router.run();
    router.received(QR);
    router.received(QG);
    expect(table.count).toBe(2000);
    expect(table.memoryBytes).toBeGreaterThan(25 * MiB);

    const before = fingerprint(router.dataplane);
    const cost: TraceCost = { copiedBytes: 0, journaledWords: 0 };
    // 10.0.0.4:30000 clashes with 10.0.0.3:30000's SNAT tuple: the port is searched.
    const fresh = runTrace(router.dataplane, `${QR} tcp 10.0.0.4:30000 > 9.186.100.1:80 syn`, cost);
    expect(fresh.out?.packet).not.toBe("tcp 9.186.100.2:30000 > 9.186.100.1:80");
    expect(cost.copiedBytes).toBeGreaterThan(0);
    expect(cost.copiedBytes).toBeLessThan(MiB);
    expect(cost.journaledWords).toBeGreaterThan(0);
    expect(cost.journaledWords).toBeLessThan(200);

    const ack = runTrace(router.dataplane, `${QR} tcp 10.0.0.3:31000 > 9.186.100.1:80 ack`, cost);
    expect(ack.verdict).toBe("forward");
    expect(cost.copiedBytes).toBeLessThan(MiB);
    expect(cost.journaledWords).toBeGreaterThan(0);
    expect(cost.journaledWords).toBeLessThan(200);
    expect(fingerprint(router.dataplane)).toBe(before);
  });
});
