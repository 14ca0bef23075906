import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { parseConfig } from "../../src/config/config.js";
import { buildPacket } from "../../src/wire/build.js";
import { fragmentDatagram } from "../support/fragments.js";
import { TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";


const payload = new Uint8Array(3000).map((_, i) => (i * 13 + 7) & 0xff);

describe("edge cases a Linux router handles, and qnat too", () => {
  it("fragments whose first fragment was dropped are never translated with a connection that reused its slot", () => {
    const router = MemoryRouter.fromFile();
    const ttl1 = fragmentDatagram({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4000, dport: 53, payload, id: 0x1234, ttl: 1 }, 1480);
    router.send(QR, ttl1[0]!); // dropped: TTL exceeded; its unconfirmed entry is freed
    router.run();
    router.received(QR);
    router.send(QR, { protocol: "udp", src: "10.0.0.2", dst: "203.0.113.10", sport: 5000, dport: 80 }); // takes the freed slot
    router.run();
    expect(router.received(QG).map((p) => p.src)).toEqual(["9.186.100.129"]);
    const later = fragmentDatagram({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4000, dport: 53, payload, id: 0x1234 }, 1480);
    router.send(QR, later[1]!);
    router.run();
    expect(router.received(QG)).toEqual([]);
    expect(router.drops(QR)).toMatchObject({ "fragment-no-state": 1 });
  });

  it("a fragmented datagram whose first fragment is not tracked (an unsolicited echo reply) passes whole, untranslated", () => {
    const router = MemoryRouter.fromFile();
    for (const f of fragmentDatagram({ protocol: "icmp", src: "203.0.113.10", dst: "10.0.0.3", icmpType: 0, icmpId: 9, payload, id: 0x4321 }, 1480)) {
      router.send(QG, f);
    }
    router.run();
    expect(router.received(QR).map((p) => [p.src, p.dst, p.fragmentOffset])).toEqual([
      ["203.0.113.10", "10.0.0.3", 0],
      ["203.0.113.10", "10.0.0.3", 1480],
      ["203.0.113.10", "10.0.0.3", 2960],
    ]);
  });

  it("a packet from the wire claiming one of the router's own addresses as source is a martian (fib_validate_source)", () => {
    const router = MemoryRouter.fromFile();
    router.send(QG, { protocol: "udp", src: "9.186.100.129", dst: "10.0.0.3", sport: 53, dport: 4000 });
    router.send(QR, { protocol: "udp", src: "10.0.0.1", dst: "203.0.113.10", sport: 53, dport: 4000 });
    router.run();
    expect(router.received(QR)).toEqual([]);
    expect(router.received(QG)).toEqual([]);
    expect(router.drops(QG)).toEqual({ "martian-source": 1 });
    expect(router.drops(QR)).toEqual({ "martian-source": 1 });
  });

  it("an OUTPUT REDIRECT to loopback never leaves on a wire", () => {
    const yaml = readFileSync("examples/seed.yaml", "utf8").replace(
      "  -A neutron-vpn-agen-OUTPUT -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2\n",
      "  -A neutron-vpn-agen-OUTPUT -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2\n" +
        "  -A neutron-vpn-agen-OUTPUT -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697\n",
    );
    const router = new MemoryRouter(parseConfig(yaml, "redirect.yaml"));
    router.sendFromHost(QG, { protocol: "tcp", src: "9.186.100.2", dst: "203.0.113.10", sport: 40000, dport: 80, tcpFlags: TCP_SYN });
    router.run();
    expect(router.received(QG)).toEqual([]);
    expect(router.received(QR)).toEqual([]);
    expect(router.drops(QG)).toEqual({ "martian-destination": 1 });
  });

  it("bytes past the IPv4 total length are not forwarded", () => {
    const router = MemoryRouter.fromFile();
    const packet = buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 4000, dport: 53, payload: new Uint8Array(10) });
    const padded = new Uint8Array(packet.length + 30).fill(0xee);
    padded.set(packet);
    router.send(QR, padded);
    router.run();
    const out = router.receivedRaw(QG);
    expect(out.map((p) => p.length)).toEqual([packet.length]);
  });
});
