import { describe, expect, it } from "vitest";
import { formatTrace, parseTraceSpec, runTrace, TraceSpecError } from "../../src/control/trace.js";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

describe("qnat trace explains one packet, hop by hop", () => {
  it("10.0.0.3's SYN: which rule SNATs it, why its port is kept, and how it leaves", () => {
    const router = MemoryRouter.fromFile();
    const result = runTrace(router.dataplane, `${QR} tcp 10.0.0.3:40000 > 9.186.100.1:80 syn`);
    expect(result.verdict).toBe("forward");
    expect(result.out).toEqual({ port: QG, packet: "tcp 9.186.100.2:40000 > 9.186.100.1:80" });
    const text = formatTrace(result);
    expect(text).toContain("NEW: no connection matches");
    expect(text).toContain("-A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2  => SNAT to 9.186.100.2");
    expect(text).toContain("-A neutron-vpn-agen-float-snat -s 10.0.0.2/32 -j SNAT --to-source 9.186.100.129  (no match)");
    expect(text).toContain("source port 40000 is free: kept");
    expect(text).toContain("9.186.100.0/24 dev qg-e76de35e-90 proto kernel scope link src 9.186.100.2");
    expect(text).toMatch(/verdict: forward — leaves on qg-e76de35e-90 as tcp 9\.186\.100\.2:40000 > 9\.186\.100\.1:80\n$/);
  });

  it("the metadata request is local: REDIRECTed to 10.0.0.1:9697 on the qr- mirror", () => {
    const result = runTrace(MemoryRouter.fromFile().dataplane, `${QR} tcp 10.0.0.2:40000 > 169.254.169.254:80`);
    expect(result.verdict).toBe("local");
    expect(result.out).toEqual({ port: QR, packet: "tcp 10.0.0.2:40000 > 10.0.0.1:9697" });
  });

  it("rp_filter: 10.0.0.5 arriving on the gateway port is dropped after DNAT, and the trace says why", () => {
    const spoofed = runTrace(MemoryRouter.fromFile().dataplane, `${QG} udp 10.0.0.5:5000 > 9.186.100.129:53`);
    expect(spoofed.verdict).toBe("drop");
    expect(spoofed.reason).toBe("reverse-path-filter");
    expect(formatTrace(spoofed)).toContain(
      "rp_filter    strict on qg-e76de35e-90: the route back to 10.0.0.5 is 10.0.0.0/24 dev qr-694450d6-f6 proto kernel scope link src 10.0.0.1; " +
        "it does not leave by qg-e76de35e-90, the arrival port: dropped (IPReversePathFilter)",
    );
    const outside = formatTrace(runTrace(MemoryRouter.fromFile().dataplane, `${QG} udp 203.0.113.10:5000 > 9.186.100.129:53`));
    expect(outside).toContain("rp_filter    strict on qg-e76de35e-90: the route back to 203.0.113.10 is default via 9.186.100.1 dev qg-e76de35e-90; source valid");
  });

  it("a direct connection to the metadata port is dropped, and the trace names Neutron's filter rule", () => {
    const result = runTrace(MemoryRouter.fromFile().dataplane, `${QR} tcp 10.0.0.3:40000 > 10.0.0.1:9697 syn`);
    expect(result.verdict).toBe("drop");
    expect(result.reason).toBe("metadata-not-redirected");
    expect(formatTrace(result)).toContain("filter       tcp to port 9697 that was not REDIRECTed from a qr- port: the metadata proxy is private (Neutron: INPUT --dport 9697 -j DROP)");
  });

  it("TTL 1 is dropped, and the router's time exceeded is shown as it leaves", () => {
    const result = runTrace(MemoryRouter.fromFile().dataplane, `${QR} udp 10.0.0.3:5000 > 203.0.113.10:53 ttl=1`);
    expect(result.verdict).toBe("drop");
    expect(result.reason).toBe("ttl-exceeded");
    expect(result.responses).toEqual([{ port: QR, packet: "icmp 10.0.0.1 > 10.0.0.3 11/0" }]);
  });

  it("ICMP echo, DNAT to the floating IP, and router-originated packets (host)", () => {
    const dp = MemoryRouter.fromFile().dataplane;
    expect(runTrace(dp, `${QR} icmp 10.0.0.3 > 9.186.100.1 id=7`).out).toEqual({ port: QG, packet: "icmp 9.186.100.2 > 9.186.100.1 8/0 id 7" });
    expect(runTrace(dp, `${QG} tcp 203.0.113.10:5555 > 9.186.100.129:22`).out).toEqual({ port: QR, packet: "tcp 203.0.113.10:5555 > 10.0.0.2:22" });
    expect(runTrace(dp, `host icmp 9.186.100.2 > 9.186.100.129`).out).toEqual({ port: QR, packet: "icmp 9.186.100.2 > 10.0.0.2 8/0 id 1" });
  });

  it("changes nothing: no connection is left behind, counters and an existing connection's state are as before", () => {
    const router = MemoryRouter.fromFile();
    router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 80, tcpFlags: TCP_SYN });
    router.run();
    router.received(QG);
    const before = formatConntrackTable(router.dataplane.conntrack);
    const counters = router.dataplane.portCounters.slice();
    const established = runTrace(router.dataplane, `${QG} tcp 9.186.100.1:80 > 9.186.100.2:40000 syn ack`);
    expect(established.verdict).toBe("forward");
    expect(established.out).toEqual({ port: QR, packet: "tcp 9.186.100.1:80 > 10.0.0.3:40000" });
    expect(established.steps.find((s) => s.stage === "conntrack")!.text).toMatch(/^ESTABLISHED: reply direction of tcp +6 \d+ [A-Z_]+ src=10\.0\.0\.3 /);
    runTrace(router.dataplane, `${QR} udp 10.0.0.3:1 > 9.186.100.1:2`);
    expect(formatConntrackTable(router.dataplane.conntrack)).toBe(before);
    expect(router.dataplane.portCounters).toEqual(counters);
  });

  it("bad specs get a one-line reason", () => {
    expect(() => parseTraceSpec("qr tcp 10.0.0.3")).toThrow(TraceSpecError);
    expect(() => parseTraceSpec(`${QR} tcp 10.0.0.300:1 > 1.2.3.4:5`)).toThrow('source "10.0.0.300" is not an IPv4 address');
    expect(() => parseTraceSpec(`${QR} icmp 10.0.0.3:5 > 1.2.3.4`)).toThrow("only tcp and udp have ports");
    expect(() => parseTraceSpec(`${QR} udp 10.0.0.3:1 > 1.2.3.4:5 syn`)).toThrow('flag "syn" is for tcp packets');
    expect(() => runTrace(MemoryRouter.fromFile().dataplane, "eth9 udp 1.2.3.4:1 > 5.6.7.8:2")).toThrow('no port "eth9"');
  });
});
