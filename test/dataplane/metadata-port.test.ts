import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { parseConfig } from "../../src/config/config.js";
import { TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";

describe("the metadata port is private: only the REDIRECT from a qr- port reaches it", () => {
  it("10.0.0.2's request to 169.254.169.254:80 is REDIRECTed to 10.0.0.1:9697 and delivered, its whole connection", () => {
    const router = MemoryRouter.fromFile();
    router.send(QR, { protocol: "tcp", src: "10.0.0.2", dst: "169.254.169.254", sport: 40000, dport: 80, tcpFlags: TCP_SYN });
    router.run();
    expect(router.delivered(QR)).toMatchObject([{ src: "10.0.0.2", dst: "10.0.0.1", sport: 40000, dport: 9697 }]);
    // The proxy answers through the mirror; the client's ACK follows on the same connection.
    router.sendFromHost(QR, { protocol: "tcp", src: "10.0.0.1", dst: "10.0.0.2", sport: 9697, dport: 40000, tcpFlags: TCP_SYN | TCP_ACK });
    router.run();
    expect(router.received(QR)).toMatchObject([{ src: "169.254.169.254", sport: 80, dst: "10.0.0.2" }]);
    router.send(QR, { protocol: "tcp", src: "10.0.0.2", dst: "169.254.169.254", sport: 40000, dport: 80, tcpFlags: TCP_ACK });
    router.run();
    expect(router.delivered(QR)).toMatchObject([{ dst: "10.0.0.1", dport: 9697 }]);
    expect(router.drops(QR)).toEqual({});
  });

  it("a SYN from the tenant straight to 10.0.0.1:9697 is dropped and counted; no connection is left", () => {
    const router = MemoryRouter.fromFile();
    router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "10.0.0.1", sport: 40001, dport: 9697, tcpFlags: TCP_SYN });
    router.run();
    expect(router.delivered(QR)).toEqual([]);
    expect(router.received(QR)).toEqual([]);
    expect(router.drops(QR)).toEqual({ "metadata-not-redirected": 1 });
    expect(router.dataplane.conntrack.count).toBe(0);
  });

  it("from the outside, to 9.186.100.2:9697 or the floating IP's 9697, nothing is delivered", () => {
    const router = MemoryRouter.fromFile();
    router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.2", sport: 40002, dport: 9697, tcpFlags: TCP_SYN });
    router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "10.0.0.1", sport: 40003, dport: 9697, tcpFlags: TCP_SYN });
    router.run();
    expect(router.delivered(QG)).toEqual([]);
    expect(router.drops(QG)).toEqual({ "metadata-not-redirected": 2 });
  });

  it("other local TCP ports and UDP to 9697 are not the filter's business", () => {
    const router = MemoryRouter.fromFile();
    router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "10.0.0.1", sport: 40004, dport: 22, tcpFlags: TCP_SYN });
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "10.0.0.1", sport: 40005, dport: 9697 });
    router.run();
    expect(router.delivered(QR)).toMatchObject([{ dport: 22 }, { protocol: "udp", dport: 9697 }]);
  });

  it("the filter follows metadata.port, and a router without metadata: has none", () => {
    const text = readFileSync("examples/seed.yaml", "utf8");
    const moved = new MemoryRouter(parseConfig(text.replace("port: 9697", "port: 9800").replace("--to-ports 9697", "--to-ports 9800"), "seed.yaml"));
    moved.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "10.0.0.1", sport: 40006, dport: 9800, tcpFlags: TCP_SYN });
    moved.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "169.254.169.254", sport: 40007, dport: 80, tcpFlags: TCP_SYN });
    moved.run();
    expect(moved.delivered(QR)).toMatchObject([{ sport: 40007, dport: 9800 }]);
    expect(moved.drops(QR)).toEqual({ "metadata-not-redirected": 1 });

    const withoutMetadata = new MemoryRouter(parseConfig(text.replace(/^metadata:\n(?: {2}.*\n)+/m, ""), "seed.yaml"));
    expect(withoutMetadata.config.metadata).toBeUndefined();
    withoutMetadata.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "10.0.0.1", sport: 40008, dport: 9697, tcpFlags: TCP_SYN });
    withoutMetadata.run();
    expect(withoutMetadata.delivered(QR)).toMatchObject([{ dport: 9697 }]);
  });
});
