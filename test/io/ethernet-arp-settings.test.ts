/**
 * The seed's router with Ethernet ports, in memory (test/support/ethernet-router.ts), under the
 * ARP settings Linux has per device: arp_ignore (which requests qr- answers), arp_announce (which
 * source address a request qnat sends carries), rp_filter applied to ARP requests (arp_process
 * routes the sender back), the Ethernet metrics a scrape shows, and a live change that renumbers
 * the ports keeping the neighbours of the ports that stay.
 */
import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { ETH_HLEN, PacketBatch } from "../../src/core/batch.js";
import { parseConfig } from "../../src/config/config.js";
import { MetricsExporter } from "../../src/control/metrics.js";
import { portRenumbering } from "../../src/control/router-process.js";
import { EthCounter } from "../../src/io/ethernet-leg.js";
import { NUD_REACHABLE } from "../../src/neigh/table.js";
import { ARPOP_REPLY, ARPOP_REQUEST, arpOperation, arpSenderIp, arpTargetIp } from "../../src/wire/arp.js";
import { buildPacket, decodePacket } from "../../src/wire/build.js";
import { formatMac as formatMacAt, parseMac } from "../../src/wire/ethernet.js";
import { EthernetRouter, QR_MAC, arpFrame, ipFrame, seedTapText } from "../support/ethernet-router.js";

const QR = 0;
const QG = 1;
const VM1_MAC = "02:00:0a:00:00:02"; // 10.0.0.2
const VM2_MAC = "02:00:0a:00:00:03"; // 10.0.0.3
const GW_MAC = "02:00:09:ba:64:01"; // 9.186.100.1
const BROADCAST = "ff:ff:ff:ff:ff:ff";
const ip = parseIpv4;

/** The seed with both ports in tap mode, `lines` added to qr-'s port mapping, and `top` at the end. */
function withQr(lines: string, top = ""): string {
  return seedTapText().replace(/(- name: qr-694450d6-f6\n)/, `$1${lines}`) + top;
}

/** `sender` (with `mac`) asks who has `target`, on qr-'s wire. */
function whoHas(r: EthernetRouter, target: string, sender: string, mac = VM2_MAC): void {
  r.leg(QR).inject(arpFrame(BROADCAST, mac, ARPOP_REQUEST, { mac, ip: ip(sender) }, { ip: ip(target) }));
}

/** The targets qr- answered, as "target for sender". */
function answered(r: EthernetRouter): string[] {
  return r
    .leg(QR)
    .take()
    .filter((f) => arpOperation(f, ETH_HLEN) === ARPOP_REPLY)
    .map((f) => `${formatIpv4(arpSenderIp(f, ETH_HLEN))} for ${formatIpv4(arpTargetIp(f, ETH_HLEN))}`);
}

function formatIpv4(a: number): string {
  return [a >>> 24, (a >>> 16) & 255, (a >>> 8) & 255, a & 255].join(".");
}

describe("arp_ignore on qr- (net/ipv4/arp.c arp_ignore)", () => {
  /**
   * With rp_filter off (so only arp_ignore decides): 10.0.0.3 asks for qr-'s 10.0.0.1 and for
   * qg-'s 9.186.100.2; 192.0.2.9, off qr-'s subnet, asks for 10.0.0.1; an address probe from
   * 0.0.0.0 asks for 10.0.0.1.
   */
  const asked = (value: number): { answers: string[]; ignored: number; learnt: string[] } => {
    const r = new EthernetRouter({}, withQr(`    arp_ignore: ${value}\n`, "rp_filter: off\n"));
    whoHas(r, "10.0.0.1", "10.0.0.3");
    whoHas(r, "9.186.100.2", "10.0.0.3");
    whoHas(r, "10.0.0.1", "192.0.2.9", "02:00:c0:00:02:09");
    whoHas(r, "10.0.0.1", "0.0.0.0", "02:00:0a:00:00:63");
    r.run();
    return { answers: answered(r), ignored: r.stage.counter(QR, EthCounter.ArpIgnored), learnt: r.table.view().map((v) => v.dst) };
  };

  it("0 (Linux's default): every router address is answered, whoever asks", () => {
    expect(asked(0)).toEqual({
      answers: ["10.0.0.1 for 10.0.0.3", "9.186.100.2 for 10.0.0.3", "10.0.0.1 for 192.0.2.9", "10.0.0.1 for 0.0.0.0"],
      ignored: 0,
      learnt: ["10.0.0.3", "192.0.2.9"],
    });
  });

  it("1: only qr-'s own address 10.0.0.1; the request for qg-'s 9.186.100.2 is ignored and teaches nothing", () => {
    expect(asked(1)).toEqual({
      answers: ["10.0.0.1 for 10.0.0.3", "10.0.0.1 for 192.0.2.9", "10.0.0.1 for 0.0.0.0"],
      ignored: 1,
      learnt: ["10.0.0.3", "192.0.2.9"],
    });
  });

  it("2: only qr-'s own address, and only to a sender on its subnet 10.0.0.0/24 (an address probe from 0.0.0.0 too)", () => {
    expect(asked(2)).toEqual({
      answers: ["10.0.0.1 for 10.0.0.3", "10.0.0.1 for 0.0.0.0"],
      ignored: 2,
      learnt: ["10.0.0.3"],
    });
  });

  it("3 answers as 0: qnat's addresses are all scope global, none scope host", () => {
    expect(asked(3)).toEqual(asked(0));
  });

  it("8: nothing is answered, the address probe neither, nobody is learnt", () => {
    expect(asked(8)).toEqual({ answers: [], ignored: 4, learnt: [] });
  });

  it("the router-wide value applies to every tap port, the larger one winning (conf/all and conf/DEV)", () => {
    const r = new EthernetRouter({}, withQr("    arp_ignore: 2\n", "arp_ignore: 1\nrp_filter: off\n"));
    r.leg(QG).inject(arpFrame(BROADCAST, GW_MAC, ARPOP_REQUEST, { mac: GW_MAC, ip: ip("9.186.100.1") }, { ip: ip("10.0.0.1") }));
    whoHas(r, "10.0.0.1", "192.0.2.9", "02:00:c0:00:02:09");
    r.run();
    // qg- (1 from conf/all): 10.0.0.1 is not its address. qr- (max(1, 2) = 2): 192.0.2.9 is off its subnet.
    expect(r.leg(QG).take()).toEqual([]);
    expect(answered(r)).toEqual([]);
    expect([r.stage.counter(QG, EthCounter.ArpIgnored), r.stage.counter(QR, EthCounter.ArpIgnored)]).toEqual([1, 1]);
  });
});

describe("arp_announce: the sender address of qnat's ARP requests (arp_solicit)", () => {
  /** A packet from `src` for 9.186.100.77 (nobody answers) queued on qg-; the requests' sender address. */
  const senderFor = (announce: number, src: string): string[] => {
    const r = new EthernetRouter({}, seedTapText().replace(/(- name: qg-e76de35e-90\n)/, `$1    arp_announce: ${announce}\n`));
    const batch = new PacketBatch(1, 2048 + ETH_HLEN, ETH_HLEN);
    batch.push(buildPacket({ protocol: "udp", src, dst: "9.186.100.77", sport: 4000, dport: 53 }));
    r.table.resolve(QG, ip("9.186.100.77"), r.clock.now(), batch, 0);
    r.advance(1.05);
    return r
      .leg(QG)
      .take()
      .map((f) => formatIpv4(arpSenderIp(f, ETH_HLEN)));
  };

  it("0 (Linux's default): the waiting packet's source when it is a router address: 9.186.100.129 (10.0.0.2's floating IP), even 10.0.0.1 of qr-", () => {
    expect(senderFor(0, "9.186.100.129")).toEqual(["9.186.100.129", "9.186.100.129"]);
    expect(senderFor(0, "10.0.0.1")).toEqual(["10.0.0.1", "10.0.0.1"]);
  });

  it("1: that source only if it is on the target's subnet of qg-: 9.186.100.129 yes, 10.0.0.1 no (9.186.100.2 instead)", () => {
    expect(senderFor(1, "9.186.100.129")).toEqual(["9.186.100.129", "9.186.100.129"]);
    expect(senderFor(1, "10.0.0.1")).toEqual(["9.186.100.2", "9.186.100.2"]);
  });

  it("2: always qg-'s address on the target's subnet, 9.186.100.2", () => {
    expect(senderFor(2, "9.186.100.129")).toEqual(["9.186.100.2", "9.186.100.2"]);
  });

  it("a forwarded packet's source is not the router's: 9.186.100.2 under any value", () => {
    for (const announce of [0, 1, 2]) expect(senderFor(announce, "10.0.0.3")).toEqual(["9.186.100.2", "9.186.100.2"]);
  });

  it("through the pipeline: 10.0.0.2's packet to the dead 9.186.100.77 leaves SNATed to its floating IP, and the requests carry 9.186.100.129", () => {
    const r = new EthernetRouter();
    r.table.update(QR, ip("10.0.0.2"), parseMac(VM1_MAC), 0, NUD_REACHABLE, true, false);
    r.leg(QR).inject(ipFrame(QR_MAC, VM1_MAC, { protocol: "udp", src: "10.0.0.2", dst: "9.186.100.77", sport: 4000, dport: 53 }));
    r.run();
    const [request] = r.leg(QG).take();
    expect(arpTargetIp(request!, ETH_HLEN)).toBe(ip("9.186.100.77"));
    expect(formatIpv4(arpSenderIp(request!, ETH_HLEN))).toBe("9.186.100.129");
  });
});

describe("rp_filter and ARP requests (arp_process: ip_route_input_noref validates the sender)", () => {
  it("strict (the default): 9.186.100.1, whose route back leaves by qg-, asking qr- for 10.0.0.1 gets no answer and is not learnt; counted", () => {
    const r = new EthernetRouter();
    whoHas(r, "10.0.0.1", "9.186.100.1", GW_MAC);
    r.run();
    expect(answered(r)).toEqual([]);
    expect(r.table.size).toBe(0);
    expect(r.stage.counter(QR, EthCounter.ArpRpFilter)).toBe(1);
    expect(r.stage.counter(QR, EthCounter.ArpReplies)).toBe(0);
  });

  it("a known entry of that sender on qr- is still refreshed (STALE, arp_process's update part), but not answered", () => {
    const r = new EthernetRouter();
    r.table.update(QR, ip("9.186.100.1"), parseMac(GW_MAC), 0, NUD_REACHABLE, true, false);
    const moved = "02:00:09:ba:64:99";
    r.clock.advance(2);
    whoHas(r, "10.0.0.1", "9.186.100.1", moved);
    r.run();
    expect(answered(r)).toEqual([]);
    expect(r.table.view().find((v) => v.port === QR)).toMatchObject({ dst: "9.186.100.1", lladdr: moved, state: "STALE" });
  });

  it("loose, or off, on qr-: the route back exists, so 9.186.100.1 is answered", () => {
    for (const text of [withQr("    rp_filter: loose\n"), `${seedTapText()}rp_filter: off\n`]) {
      const r = new EthernetRouter({}, text);
      whoHas(r, "10.0.0.1", "9.186.100.1", GW_MAC);
      r.run();
      expect(answered(r)).toEqual(["10.0.0.1 for 9.186.100.1"]);
    }
  });

  it("a martian sender (127.0.0.5) is not answered whatever rp_filter says", () => {
    const r = new EthernetRouter({}, `${seedTapText()}rp_filter: off\n`);
    whoHas(r, "10.0.0.1", "127.0.0.5");
    r.run();
    expect(answered(r)).toEqual([]);
    expect(r.stage.counter(QR, EthCounter.ArpRpFilter)).toBe(1);
  });
});

describe("Ethernet metrics (qnat_arp_*, qnat_ethernet_*, qnat_neighbour_*)", () => {
  it("a scrape shows the ARP exchanged, the drops by reason, the neighbours by state, the queue and the host unreachable sent", async () => {
    const r = new EthernetRouter();
    const exporter = new MetricsExporter({ dataplane: () => r.dataplane, ethernet: () => r.stage, censusMaxAgeMs: 0 });
    whoHas(r, "10.0.0.1", "10.0.0.3"); // answered, 10.0.0.3 learnt
    whoHas(r, "10.0.0.1", "9.186.100.1", GW_MAC); // rp_filter
    r.leg(QR).inject(ipFrame("02:00:00:00:00:99", VM2_MAC, { protocol: "udp", src: "10.0.0.3", dst: "9.186.100.77", sport: 1, dport: 2 })); // another host's
    r.leg(QR).inject(ipFrame(QR_MAC, VM2_MAC, { protocol: "udp", src: "10.0.0.3", dst: "9.186.100.77", sport: 40000, dport: 53 })); // waits, fails
    r.run();
    r.advance(3.2);
    const text = await exporter.scrape();
    const sample = (line: string): number => {
      const found = text.split("\n").find((l) => l.startsWith(`${line} `));
      if (found === undefined) throw new Error(`no sample ${line}`);
      return Number(found.slice(line.length + 1));
    };
    const qr = 'port="qr-694450d6-f6"';
    const qg = 'port="qg-e76de35e-90"';
    expect(sample(`qnat_arp_received_total{${qr},op="request"}`)).toBe(2);
    expect(sample(`qnat_arp_received_total{${qr},op="reply"}`)).toBe(0);
    expect(sample(`qnat_arp_sent_total{${qr},kind="reply"}`)).toBe(1);
    expect(sample(`qnat_arp_sent_total{${qg},kind="request"}`)).toBe(3);
    expect(sample(`qnat_arp_sent_total{${qg},kind="gratuitous"}`)).toBe(0);
    expect(sample(`qnat_ethernet_drops_total{${qr},reason="arp-rp-filter"}`)).toBe(1);
    expect(sample(`qnat_ethernet_drops_total{${qr},reason="other-host"}`)).toBe(1);
    // 10.0.0.3, learnt STALE from its request, went to DELAY when the host unreachable was sent to it.
    expect(sample(`qnat_neighbour_entries{state="DELAY"}`)).toBe(1);
    expect(sample(`qnat_neighbour_entries{state="STALE"}`)).toBe(0);
    expect(sample(`qnat_neighbour_entries{state="FAILED"}`)).toBe(1);
    expect(sample("qnat_neighbour_queued_total")).toBe(1);
    expect(sample(`qnat_neighbour_queue_drops_total{reason="unresolved"}`)).toBe(1);
    expect(sample(`qnat_neighbour_queue_drops_total{reason="overflow"}`)).toBe(0);
    expect(sample("qnat_neighbour_resolution_failures_total")).toBe(1);
    expect(sample(`qnat_host_unreachable_sent_total{${qg}}`)).toBe(1);
    expect(text).toContain("# TYPE qnat_neighbour_entries gauge");
  });

  it("a router without tap ports has no per-port Ethernet series, and no neighbours", async () => {
    const r = new EthernetRouter();
    const text = await new MetricsExporter({ dataplane: () => r.dataplane, censusMaxAgeMs: 0 }).scrape();
    expect(text).not.toMatch(/^qnat_(arp|ethernet|host_unreachable)_\w+\{/m);
    expect(text).not.toMatch(/^qnat_neighbour_\w+\{/m);
  });
});

describe("a packet larger than a queue slot waiting for its neighbour", () => {
  it("a 9000-byte datagram from 10.0.0.3 (jumbo MTUs; a GSO super-packet takes the same way) waits whole for the gateway's reply, then leaves to its MAC", () => {
    const r = new EthernetRouter({}, seedTapText().replace(/mtu: 1500/g, "mtu: 9000"), 9216 + ETH_HLEN);
    r.table.update(QR, ip("10.0.0.3"), parseMac(VM2_MAC), 0, NUD_REACHABLE, true, false);
    const payload = new Uint8Array(8972).fill(0x5a);
    r.leg(QR).inject(ipFrame(QR_MAC, VM2_MAC, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 40000, dport: 9, payload }));
    r.run();
    const [request] = r.leg(QG).take();
    expect(arpTargetIp(request!, ETH_HLEN)).toBe(ip("9.186.100.1"));
    expect(r.table.counters).toMatchObject({ queued: 1, queuedSuper: 1, queuePoolFull: 0 });
    r.leg(QG).inject(arpFrame(BROADCAST, GW_MAC, ARPOP_REPLY, { mac: GW_MAC, ip: ip("9.186.100.1") }, { mac: BROADCAST, ip: ip("9.186.100.2") }));
    r.run();
    const [datagram, ...rest] = r.leg(QG).take();
    expect(rest).toEqual([]);
    expect(formatMacAt(datagram!, 0)).toBe(GW_MAC);
    const packet = decodePacket(datagram!.subarray(ETH_HLEN));
    expect(packet).toMatchObject({ protocol: "udp", src: "9.186.100.2", dst: "203.0.113.10", dport: 9 });
    expect(datagram!.length).toBe(ETH_HLEN + 20 + 8 + 8972);
    expect(datagram!.subarray(ETH_HLEN + 28).every((b) => b === 0x5a)).toBe(true);
  });
});

describe("a live change that renumbers the ports keeps the neighbours of the ports that stay", () => {
  it("a new port before qg- moves it to index 2: 9.186.100.1 stays known there, qr-'s 10.0.0.3 stays on 0, a removed port's entries go", () => {
    const r = new EthernetRouter();
    r.table.update(QR, ip("10.0.0.3"), parseMac(VM2_MAC), 0, NUD_REACHABLE, true, false);
    r.table.update(QG, ip("9.186.100.1"), parseMac(GW_MAC), 0, NUD_REACHABLE, true, false);
    whoHas(r, "10.0.0.1", "10.0.0.3");
    r.run();
    r.leg(QR).take();
    const next = parseConfig(
      seedTapText().replace(
        "  - name: qg-e76de35e-90\n",
        "  - name: qr-11111111-aa\n    addresses: [10.1.0.1/24]\n    wire: { namespace: qnat-tenant2, device: eth0, mode: tap }\n  - name: qg-e76de35e-90\n",
      ),
      "next.yaml",
    );
    const renumbering = portRenumbering(r.config, next);
    expect(renumbering).toEqual([0, 2]);
    r.stage.renumberPorts(renumbering, next.ports.length);
    expect(r.table.view().map((v) => [v.dst, v.port, v.lladdr, v.state])).toEqual([
      ["10.0.0.3", 0, VM2_MAC, "REACHABLE"],
      ["9.186.100.1", 2, GW_MAC, "REACHABLE"],
    ]);
    expect(r.table.lookup(2, ip("9.186.100.1"))).toBeGreaterThanOrEqual(0);
    expect(r.table.lookup(QG, ip("9.186.100.1"))).toBe(-1);
    expect(r.stage.counter(0, EthCounter.ArpReplies)).toBe(1);
    // Back to the seed: the new port goes, with what it had learnt.
    r.table.update(1, ip("10.1.0.5"), parseMac(VM1_MAC), 0, NUD_REACHABLE, true, false);
    const back = portRenumbering(next, r.config);
    expect(back).toEqual([0, -1, 1]);
    r.stage.renumberPorts(back, r.config.ports.length);
    expect(r.table.view().map((v) => [v.dst, v.port])).toEqual([
      ["10.0.0.3", 0],
      ["9.186.100.1", 1],
    ]);
  });

  it("a port whose wire changed is a new device: its neighbours go", () => {
    const r = new EthernetRouter();
    const next = parseConfig(seedTapText().replace("namespace: qnat-external, device: eth0", "namespace: qnat-external, device: eth1"), "next.yaml");
    expect(portRenumbering(r.config, next)).toEqual([0, -1]);
  });
});

