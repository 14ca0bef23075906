/**
 * `qnat trace` and TCP window tracking: a packet spec can give seq=, ack= and win=, and a segment
 * of a live connection traced without them gets in-window numbers from the connection's window
 * state, so the trace shows what a real segment of that connection would meet.
 */
import { describe, expect, it } from "vitest";
import { parseTraceSpec, runTrace, TraceSpecError } from "../../src/control/trace.js";
import { TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

/** 10.0.0.3:40000 -> 9.186.100.1:80, handshake done: with initial sequence numbers far from 0 (as real ones are): the tenant has sent up to 3000000001, the server up to 1500000001. */
function routerWithConnection(): MemoryRouter {
  const router = MemoryRouter.fromFile();
  router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 80, tcpFlags: TCP_SYN, seq: 3000000000 });
  router.run();
  router.send(QG, { protocol: "tcp", src: "9.186.100.1", dst: "9.186.100.2", sport: 80, dport: 40000, tcpFlags: TCP_SYN | TCP_ACK, seq: 1500000000, ack: 3000000001 });
  router.run();
  router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 80, tcpFlags: TCP_ACK, seq: 3000000001, ack: 1500000001 });
  router.run();
  expect(router.received(QG)).toHaveLength(2);
  expect(router.received(QR)).toHaveLength(1);
  return router;
}

function texts(result: ReturnType<typeof runTrace>): string {
  return result.steps.map((s) => `${s.stage}: ${s.text}`).join("\n");
}

describe("trace packet spec: seq=, ack=, win=", () => {
  it("puts the numbers in the TCP header", () => {
    const { packet } = parseTraceSpec(`${QR} tcp 10.0.0.3:40000 > 9.186.100.1:80 ack seq=4294967295 ack=17 win=512`);
    expect(packet).toMatchObject({ seq: 4294967295, ack: 17, window: 512, tcpFlags: TCP_ACK });
  });

  it("refuses them on other protocols and out of range, in one line", () => {
    expect(() => parseTraceSpec(`${QR} udp 10.0.0.3:5000 > 9.186.100.1:53 seq=1`)).toThrow(TraceSpecError);
    expect(() => parseTraceSpec(`${QR} tcp 10.0.0.3:5000 > 9.186.100.1:80 seq=4294967296`)).toThrow(/expected seq=0\.\.4294967295/);
    expect(() => parseTraceSpec(`${QR} tcp 10.0.0.3:5000 > 9.186.100.1:80 win=65536`)).toThrow(/expected win=0\.\.65535/);
  });
});

describe("tracing a segment of a live TCP connection", () => {
  it("10.0.0.3's ACK without numbers is sent with seq 3000000001 ack 1500000001 from the window, and passes as ESTABLISHED", () => {
    const router = routerWithConnection();
    const result = runTrace(router.dataplane, `${QR} tcp 10.0.0.3:40000 > 9.186.100.1:80 ack`);
    const steps = texts(result);
    expect(steps).toContain("seq 3000000001 (td_end of the original direction), ack 1500000001 (td_end of the reply direction) taken from the connection's window");
    expect(steps).not.toMatch(/INVALID/);
    expect(result.verdict).toBe("forward");
    expect(result.out?.packet).toBe("tcp 9.186.100.2:40000 > 9.186.100.1:80");
  });

  it("the server's ACK from outside takes the reply direction's numbers: seq 1500000001 ack 3000000001", () => {
    const router = routerWithConnection();
    const result = runTrace(router.dataplane, `${QG} tcp 9.186.100.1:80 > 9.186.100.2:40000 ack`);
    expect(texts(result)).toContain("seq 1500000001 (td_end of the reply direction), ack 3000000001 (td_end of the original direction)");
    expect(texts(result)).not.toMatch(/INVALID/);
    expect(result.out?.packet).toBe("tcp 9.186.100.1:80 > 10.0.0.3:40000");
  });

  it("numbers given in the spec are used as they are: seq=0 ack=0, what every trace sent before, is out of window", () => {
    const router = routerWithConnection();
    const result = runTrace(router.dataplane, `${QR} tcp 10.0.0.3:40000 > 9.186.100.1:80 ack seq=0 ack=0`);
    expect(texts(result)).not.toContain("taken from the connection's window");
    expect(texts(result)).toMatch(/INVALID/);
  });

  it("a SYN, or a segment of no connection, keeps seq 0 and ack 0", () => {
    const router = routerWithConnection();
    for (const spec of [`${QR} tcp 10.0.0.3:40000 > 9.186.100.1:80 syn`, `${QR} tcp 10.0.0.3:40001 > 9.186.100.1:80 ack`]) {
      expect(texts(runTrace(router.dataplane, spec))).not.toContain("taken from the connection's window");
    }
  });
});
