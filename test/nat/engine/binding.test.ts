import { describe, expect, it } from "vitest";
import { CtStatus } from "../../../src/conntrack/table.js";
import { Manip, NF_NAT_RANGE_PERSISTENT, NF_NAT_RANGE_PROTO_RANDOM, NF_NAT_RANGE_PROTO_RANDOM_FULLY, natRange, redirectRange, masqueradeRange } from "../../../src/nat/range.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_GRE } from "../../../src/wire/packet-info.js";
import { connect, ip, makeFixture, ping, snat, translatedDestination, translatedSource } from "./setup.js";

const SNAT_ADDR = natRange(ip("9.186.100.2"));
const FLOATING = ip("9.186.100.129");

describe("SNAT source port selection (nf_nat_core.c get_unique_tuple)", () => {
  it("10.0.0.3:40000 reaches 203.0.113.10:80 as 9.186.100.2:40000: the source port is kept when free", () => {
    const f = makeFixture();
    const explain: string[] = [];
    const id = connect(f, IPPROTO_TCP, "10.0.0.3", 40000, "203.0.113.10", 80, (c) => f.nat.setupNat(c, Manip.Src, SNAT_ADDR, explain));
    expect(translatedSource(f, id)).toBe("9.186.100.2:40000");
    expect(f.table.status(id) & (CtStatus.SrcNat | CtStatus.SrcNatDone)).toBe(CtStatus.SrcNat | CtStatus.SrcNatDone);
    expect(f.nat.manipDone(id, Manip.Src)).toBe(true);
    expect(f.nat.manipDone(id, Manip.Dst)).toBe(false);
    expect(explain.join("\n")).toContain("source port 40000 is free: kept");
  });

  it("10.0.0.2 and 10.0.0.3 both using port 40000 towards the same server get distinct tuples; the second is remapped into 1024-65535", () => {
    const f = makeFixture();
    const a = snat(f, IPPROTO_TCP, "10.0.0.2", 40000, "203.0.113.10", 443, SNAT_ADDR);
    const explain: string[] = [];
    const b = connect(f, IPPROTO_TCP, "10.0.0.3", 40000, "203.0.113.10", 443, (c) => f.nat.setupNat(c, Manip.Src, SNAT_ADDR, explain));
    expect(translatedSource(f, a)).toBe("9.186.100.2:40000");
    const port = f.table.replyDport(b);
    expect(port).not.toBe(40000);
    expect(port).toBeGreaterThanOrEqual(1024);
    expect(port).toBeLessThanOrEqual(65535);
    expect(explain.join("\n")).toMatch(/source port 40000 is taken; searching 1024-65535 from offset \d+: chose \d+ after \d+ tr/);
    // the reply to each finds its own connection
    expect(f.table.lookup(IPPROTO_TCP, ip("203.0.113.10"), ip("9.186.100.2"), 443, 40000)).toBe((a << 1) | 1);
    expect(f.table.lookup(IPPROTO_TCP, ip("203.0.113.10"), ip("9.186.100.2"), 443, port)).toBe((b << 1) | 1);
  });

  it("a privileged source port stays privileged: 80 is remapped into 1-511, 600 into 600-1023", () => {
    const f = makeFixture();
    snat(f, IPPROTO_UDP, "10.0.0.2", 80, "203.0.113.10", 53, SNAT_ADDR);
    const low = snat(f, IPPROTO_UDP, "10.0.0.3", 80, "203.0.113.10", 53, SNAT_ADDR);
    expect(f.table.replyDport(low)).toBeGreaterThanOrEqual(1);
    expect(f.table.replyDport(low)).toBeLessThanOrEqual(511);
    expect(f.table.replyDport(low)).not.toBe(80);
    snat(f, IPPROTO_UDP, "10.0.0.2", 600, "203.0.113.10", 53, SNAT_ADDR);
    const mid = snat(f, IPPROTO_UDP, "10.0.0.3", 600, "203.0.113.10", 53, SNAT_ADDR);
    expect(f.table.replyDport(mid)).toBeGreaterThanOrEqual(600);
    expect(f.table.replyDport(mid)).toBeLessThanOrEqual(1023);
    expect(f.table.replyDport(mid)).not.toBe(600);
  });

  it("many tenants on one source port: every binding is unique and in its class (seeded property)", () => {
    for (const [sport, lo, hi] of [
      [40000, 1024, 65535],
      [100, 1, 511],
      [700, 600, 1023],
    ] as const) {
      const f = makeFixture(8192, sport);
      const seen = new Set<number>();
      for (let host = 1; host <= 300; host++) {
        const id = snat(f, IPPROTO_TCP, `10.0.${host >> 8}.${host & 255}`, sport, "203.0.113.10", 80, SNAT_ADDR);
        expect(id).toBeGreaterThanOrEqual(0);
        const port = f.table.replyDport(id);
        if (host > 1) {
          expect(port).toBeGreaterThanOrEqual(lo);
          expect(port).toBeLessThanOrEqual(hi);
        }
        expect(seen.has(port)).toBe(false);
        seen.add(port);
      }
    }
  });

  it("a connection that no rule NATs gets a null binding: it keeps its tuple when free, and a clashing source port is remapped", () => {
    const f = makeFixture();
    // 10.0.0.3:40000 leaves as 9.186.100.2:40000 ...
    snat(f, IPPROTO_UDP, "10.0.0.3", 40000, "203.0.113.10", 53, SNAT_ADDR);
    // ... then the router's own host sends from 9.186.100.2:40000 to the same server (no rule: null binding)
    const own = connect(f, IPPROTO_UDP, "9.186.100.2", 40000, "203.0.113.10", 53, (c) => f.nat.nullBinding(c, Manip.Src));
    expect(f.table.replyDst(own)).toBe(ip("9.186.100.2"));
    expect(f.table.replyDport(own)).not.toBe(40000);
    expect(f.table.replyDport(own)).toBeGreaterThanOrEqual(1024);
    expect(f.table.status(own) & CtStatus.SrcNat).toBe(CtStatus.SrcNat);
    // a free tuple is left alone: only the DONE bit
    const free = connect(f, IPPROTO_UDP, "9.186.100.2", 41000, "203.0.113.10", 53, (c) => f.nat.nullBinding(c, Manip.Src));
    expect(translatedSource(f, free)).toBe("9.186.100.2:41000");
    expect(f.table.status(free) & (CtStatus.SrcNat | CtStatus.SrcNatDone)).toBe(CtStatus.SrcNatDone);
  });

  it("an existing mapping of the same source is reused towards another server (find_appropriate_src)", () => {
    const f = makeFixture();
    snat(f, IPPROTO_UDP, "10.0.0.2", 40000, "203.0.113.10", 53, SNAT_ADDR);
    const first = snat(f, IPPROTO_UDP, "10.0.0.3", 40000, "203.0.113.10", 53, SNAT_ADDR);
    const mapped = f.table.replyDport(first);
    const explain: string[] = [];
    const second = connect(f, IPPROTO_UDP, "10.0.0.3", 40000, "198.51.100.7", 53, (c) => f.nat.setupNat(c, Manip.Src, SNAT_ADDR, explain));
    expect(f.table.replyDport(second)).toBe(mapped);
    expect(explain.join("\n")).toContain(`already maps to 9.186.100.2:${mapped}`);
    // once the mapping's connection is gone, the next connection starts from its own port again
    f.table.remove(first);
    const third = snat(f, IPPROTO_UDP, "10.0.0.3", 40000, "192.0.2.99", 53, SNAT_ADDR);
    expect(f.table.replyDport(third)).toBe(mapped); // still mapped by `second`
    f.table.remove(second);
    f.table.remove(third);
    const fourth = snat(f, IPPROTO_UDP, "10.0.0.3", 40000, "192.0.2.98", 53, SNAT_ADDR);
    expect(f.table.replyDport(fourth)).toBe(40000);
  });
});

describe("DNAT and REDIRECT (destination manip)", () => {
  it("9.186.100.129:22 is DNATed to 10.0.0.2:22: without a port range the port is not changed", () => {
    const f = makeFixture();
    const id = connect(f, IPPROTO_TCP, "198.51.100.7", 5555, "9.186.100.129", 22, (c) => f.nat.setupNat(c, Manip.Dst, natRange(ip("10.0.0.2"))));
    expect(translatedDestination(f, id)).toBe("10.0.0.2:22");
    expect(f.table.status(id) & (CtStatus.DstNat | CtStatus.DstNatDone)).toBe(CtStatus.DstNat | CtStatus.DstNatDone);
    expect(f.table.lookup(IPPROTO_TCP, ip("10.0.0.2"), ip("198.51.100.7"), 22, 5555)).toBe((id << 1) | 1);
  });

  it("DNAT with a port: 9.186.100.129:2222 -> 10.0.0.2:22", () => {
    const f = makeFixture();
    const id = connect(f, IPPROTO_TCP, "198.51.100.7", 5555, "9.186.100.129", 2222, (c) => f.nat.setupNat(c, Manip.Dst, natRange(ip("10.0.0.2"), ip("10.0.0.2"), 22, 22)));
    expect(translatedDestination(f, id)).toBe("10.0.0.2:22");
  });

  it("DNAT then the null SRC binding: the reply leaves as the floating IP", () => {
    const f = makeFixture();
    const id = connect(f, IPPROTO_TCP, "198.51.100.7", 5555, "9.186.100.129", 22, (c) =>
      f.nat.setupNat(c, Manip.Dst, natRange(ip("10.0.0.2"))) && f.nat.nullBinding(c, Manip.Src),
    );
    expect(f.table.status(id) & (CtStatus.SrcNat | CtStatus.DstNat)).toBe(CtStatus.DstNat);
    expect(f.nat.manipDone(id, Manip.Src) && f.nat.manipDone(id, Manip.Dst)).toBe(true);
    expect(f.table.replySrc(id)).toBe(ip("10.0.0.2"));
    expect(f.table.replyDst(id)).toBe(ip("198.51.100.7"));
    expect(f.table.origDst(id)).toBe(FLOATING);
  });

  it("the metadata REDIRECT: 169.254.169.254:80 becomes 10.0.0.1:9697 (the ingress port's primary address)", () => {
    const f = makeFixture();
    const rule = natRange(0, 0, 9697, 9697);
    const id = connect(f, IPPROTO_TCP, "10.0.0.3", 51000, "169.254.169.254", 80, (c) => f.nat.setupNat(c, Manip.Dst, redirectRange(ip("10.0.0.1"), rule)));
    expect(translatedDestination(f, id)).toBe("10.0.0.1:9697");
  });

  it("a DNAT onto a destination that is already taken keeps it, and the source null binding that follows remaps the source port (nf_nat_edemux.sh)", () => {
    const f = makeFixture();
    const direct = connect(f, IPPROTO_TCP, "198.51.100.7", 5555, "10.0.0.2", 22, (c) => f.nat.nullBinding(c, Manip.Dst) && f.nat.nullBinding(c, Manip.Src));
    const explain: string[] = [];
    // Linux get_unique_tuple cannot fail: the DNAT keeps the clashing 10.0.0.2:22, and the null
    // binding at POSTROUTING (nf_nat_alloc_null_binding) then finds a free source port.
    const id = connect(f, IPPROTO_TCP, "198.51.100.7", 5555, "9.186.100.129", 22, (c) => f.nat.setupNat(c, Manip.Dst, natRange(ip("10.0.0.2")), explain) && f.nat.nullBinding(c, Manip.Src));
    expect(id).toBeGreaterThanOrEqual(0);
    expect(f.nat.counters.noFreeTuple).toBe(0);
    expect(explain.join("\n")).toContain("destination 10.0.0.2:22 is taken: kept");
    expect(translatedDestination(f, id)).toBe("10.0.0.2:22");
    expect(f.table.replyDport(id)).not.toBe(5555);
    expect(f.table.status(id) & CtStatus.SrcNat).toBe(CtStatus.SrcNat);
    // both reply directions find their own connection
    expect(f.table.lookup(IPPROTO_TCP, ip("10.0.0.2"), ip("198.51.100.7"), 22, 5555)).toBe((direct << 1) | 1);
    expect(f.table.lookup(IPPROTO_TCP, ip("10.0.0.2"), ip("198.51.100.7"), 22, f.table.replyDport(id))).toBe((id << 1) | 1);
  });

  it("a DNAT whose clash nothing resolves is refused when the connection is confirmed (conntrack insert failed)", () => {
    const f = makeFixture();
    connect(f, IPPROTO_TCP, "198.51.100.7", 5555, "10.0.0.2", 22, (c) => f.nat.nullBinding(c, Manip.Dst));
    const id = f.table.create(IPPROTO_TCP, ip("198.51.100.7"), FLOATING, 5555, 22);
    f.table.refresh(id, 3600, f.clock.now());
    expect(f.nat.setupNat(id, Manip.Dst, natRange(ip("10.0.0.2")))).toBe(true);
    expect(f.table.confirm(id)).toBe(false);
    expect(f.table.counters.insertFailed).toBe(1);
  });
});

describe("ICMP identifiers and other protocols", () => {
  it("two hosts pinging 203.0.113.10 with id 7 get distinct identifiers", () => {
    const f = makeFixture();
    const a = ping(f, "10.0.0.2", "203.0.113.10", 7, SNAT_ADDR);
    const b = ping(f, "10.0.0.3", "203.0.113.10", 7, SNAT_ADDR);
    expect(translatedSource(f, a)).toBe("9.186.100.2:7");
    const id = f.table.replySport(b);
    expect(id).not.toBe(7);
    // the echo reply (type 0) finds each connection
    expect(f.table.lookup(IPPROTO_ICMP, ip("203.0.113.10"), ip("9.186.100.2"), 7, 0)).toBe((a << 1) | 1);
    expect(f.table.lookup(IPPROTO_ICMP, ip("203.0.113.10"), ip("9.186.100.2"), id, 0)).toBe((b << 1) | 1);
  });

  it("GRE (no ports): the address alone; a second tenant to the same peer cannot be bound", () => {
    const f = makeFixture();
    const a = connect(f, IPPROTO_GRE, "10.0.0.2", 0, "203.0.113.10", 0, (c) => f.nat.setupNat(c, Manip.Src, SNAT_ADDR));
    expect(f.table.replyDst(a)).toBe(ip("9.186.100.2"));
    const b = connect(f, IPPROTO_GRE, "10.0.0.3", 0, "203.0.113.10", 0, (c) => f.nat.setupNat(c, Manip.Src, SNAT_ADDR));
    expect(b).toBe(-1);
  });
});

describe("range exhaustion, --random, --persistent", () => {
  it("a 4-port range serves four tenants and refuses the fifth", () => {
    const f = makeFixture();
    const range = natRange(ip("9.186.100.2"), ip("9.186.100.2"), 1000, 1003);
    const ports = new Set<number>();
    for (let host = 2; host <= 5; host++) {
      const id = snat(f, IPPROTO_UDP, `10.0.0.${host}`, 5353, "203.0.113.10", 53, range);
      expect(id).toBeGreaterThanOrEqual(0);
      ports.add(f.table.replyDport(id));
    }
    expect([...ports].sort()).toEqual([1000, 1001, 1002, 1003]);
    const explain: string[] = [];
    const id = connect(f, IPPROTO_UDP, "10.0.0.6", 5353, "203.0.113.10", 53, (c) => f.nat.setupNat(c, Manip.Src, range, explain));
    expect(id).toBe(-1);
    expect(explain.join("\n")).toContain("no free port in 1000-1003 after 4 tries");
    // another destination still has the whole range
    expect(snat(f, IPPROTO_UDP, "10.0.0.6", 5353, "203.0.113.11", 53, range)).toBeGreaterThanOrEqual(0);
  });

  it("a single-port range that is taken fails; the connection table is unchanged", () => {
    const f = makeFixture();
    const range = natRange(ip("9.186.100.2"), ip("9.186.100.2"), 7000, 7000);
    snat(f, IPPROTO_TCP, "10.0.0.2", 1234, "203.0.113.10", 80, range);
    const before = f.table.count;
    expect(snat(f, IPPROTO_TCP, "10.0.0.3", 1234, "203.0.113.10", 80, range)).toBe(-1);
    expect(f.table.count).toBe(before);
  });

  it("--random remaps even a free port, reproducibly for the same seed; --random-fully too", () => {
    for (const flag of [NF_NAT_RANGE_PROTO_RANDOM, NF_NAT_RANGE_PROTO_RANDOM_FULLY]) {
      const ports: number[][] = [];
      for (let run = 0; run < 2; run++) {
        const f = makeFixture(4096, 7);
        const list: number[] = [];
        for (let i = 0; i < 20; i++) {
          const id = snat(f, IPPROTO_TCP, "10.0.0.3", 40000 + i, "203.0.113.10", 80, natRange(ip("9.186.100.2"), ip("9.186.100.2"), 0, 0, flag));
          list.push(f.table.replyDport(id));
        }
        ports.push(list);
      }
      expect(ports[0]).toEqual(ports[1]);
      const kept = ports[0]!.filter((p, i) => p === 40000 + i).length;
      expect(kept).toBeLessThan(3);
      for (const p of ports[0]!) expect(p).toBeGreaterThanOrEqual(1024);
    }
  });

  it("--persistent gives a client the same address whatever the destination; without it addresses spread", () => {
    const pool = (flags: number) => natRange(ip("9.186.100.10"), ip("9.186.100.19"), 0, 0, flags);
    const f = makeFixture();
    const persistent = new Set<number>();
    const spread = new Set<number>();
    for (let d = 1; d <= 60; d++) {
      const a = snat(f, IPPROTO_TCP, "10.0.0.3", 30000 + d, `198.51.100.${d}`, 80, pool(NF_NAT_RANGE_PERSISTENT));
      persistent.add(f.table.replyDst(a));
      const b = snat(f, IPPROTO_TCP, "10.0.0.4", 30000 + d, `198.51.100.${d}`, 80, pool(0));
      spread.add(f.table.replyDst(b));
    }
    expect(persistent.size).toBe(1);
    expect(spread.size).toBeGreaterThan(3);
    for (const a of [...persistent, ...spread]) {
      expect(a).toBeGreaterThanOrEqual(ip("9.186.100.10"));
      expect(a).toBeLessThanOrEqual(ip("9.186.100.19"));
    }
  });

  it("MASQUERADE binds to the egress address with the rule's ports", () => {
    const f = makeFixture();
    const id = snat(f, IPPROTO_UDP, "10.0.0.3", 5000, "203.0.113.10", 53, masqueradeRange(ip("9.186.100.2"), natRange(0, 0, 20000, 20010)));
    expect(f.table.replyDst(id)).toBe(ip("9.186.100.2"));
    expect(f.table.replyDport(id)).toBeGreaterThanOrEqual(20000);
    expect(f.table.replyDport(id)).toBeLessThanOrEqual(20010);
  });
});

describe("setup rules", () => {
  it("a confirmed connection, or a manip already done, keeps its binding", () => {
    const f = makeFixture();
    const id = snat(f, IPPROTO_TCP, "10.0.0.3", 40000, "203.0.113.10", 80, SNAT_ADDR);
    const explain: string[] = [];
    expect(f.nat.setupNat(id, Manip.Src, natRange(ip("9.186.100.3")), explain)).toBe(true);
    expect(f.table.replyDst(id)).toBe(ip("9.186.100.2"));
    expect(explain).toEqual(["connection already confirmed: binding unchanged"]);
    const fresh = f.table.create(IPPROTO_TCP, ip("10.0.0.4"), ip("203.0.113.10"), 1, 80);
    f.table.refresh(fresh, 60, f.clock.now());
    expect(f.nat.setupNat(fresh, Manip.Src, SNAT_ADDR)).toBe(true);
    expect(f.nat.setupNat(fresh, Manip.Src, natRange(ip("9.186.100.3")))).toBe(true);
    expect(f.table.replyDst(fresh)).toBe(ip("9.186.100.2"));
  });
});
