import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatConntrackTable } from "../../src/conntrack/format.js";
import { matchesFilter } from "../../src/conntrack/filter.js";
import { ConntrackWork, parseConntrackFilter } from "../../src/control/conntrack-command.js";
import { controlSocketPath, parseControlRequest, serveControl, type ControlServer } from "../../src/control/socket.js";
import { parseConntrackArgs } from "../../src/cli/conntrack.js";
import { runCli } from "../../src/cli/main.js";
import { TCP_ACK, TCP_SYN } from "../../src/wire/packet-info.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
const SMALL = { entries: 500, slots: 65_536, ms: 1000 };

/**
 * The seed's router with: 10.0.0.3:40000 -> 9.186.100.1:80 (tcp, answered, SNAT .2), 10.0.0.2's
 * DNS to 203.0.113.10 (udp, unanswered, SNAT to the floating IP), 203.0.113.10 -> 9.186.100.129:22
 * (tcp SYN, DNAT to 10.0.0.2), 10.0.0.3's ping to 203.0.113.10 (icmp, answered).
 */
function seedTable(): MemoryRouter {
  const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 1024 });
  router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 80, tcpFlags: TCP_SYN });
  router.run();
  router.send(QG, { protocol: "tcp", src: "9.186.100.1", dst: "9.186.100.2", sport: 80, dport: 40000, tcpFlags: TCP_SYN | TCP_ACK });
  router.run();
  router.send(QR, { protocol: "tcp", src: "10.0.0.3", dst: "9.186.100.1", sport: 40000, dport: 80, tcpFlags: TCP_ACK });
  router.send(QR, { protocol: "udp", src: "10.0.0.2", dst: "203.0.113.10", sport: 5353, dport: 53 });
  router.send(QG, { protocol: "tcp", src: "203.0.113.10", dst: "9.186.100.129", sport: 50000, dport: 22, tcpFlags: TCP_SYN });
  router.send(QR, { protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 7, icmpSeq: 1 });
  router.run();
  router.send(QG, { protocol: "icmp", src: "203.0.113.10", dst: "9.186.100.2", icmpType: 0, icmpId: 7, icmpSeq: 1 });
  router.run();
  expect(router.dataplane.conntrack.count).toBe(4);
  return router;
}

/** Which of the four connections `qnat conntrack -L WORDS` selects, by a word of each. */
function selected(router: MemoryRouter, words: string[]): string[] {
  const table = router.dataplane.conntrack;
  const { filter } = parseConntrackArgs(["-L", ...words]);
  const names: string[] = [];
  for (const id of table.entries()) {
    if (!matchesFilter(table, id, filter)) continue;
    const protocol = table.protocol(id);
    names.push(protocol === 1 ? "ping" : protocol === 17 ? "dns" : table.tupleDportOf(id, 0) === 80 ? "http" : "ssh");
  }
  return names.sort();
}

describe("conntrack filters over the seed's connections (AND, as conntrack-tools)", () => {
  const router = seedTable();
  it.each([
    [[], ["dns", "http", "ping", "ssh"]],
    [["-p", "tcp"], ["http", "ssh"]],
    [["-p", "udp"], ["dns"]],
    [["-p", "icmp"], ["ping"]],
    [["-s", "10.0.0.0/24"], ["dns", "http", "ping"]],
    [["-s", "10.0.0.2"], ["dns"]],
    [["-d", "9.186.100.129"], ["ssh"]],
    [["-q", "9.186.100.129"], ["dns"]],
    [["-r", "10.0.0.2"], ["ssh"]],
    [["-q", "9.186.100.2"], ["http", "ping"]],
    [["-q", "9.186.100.0/24"], ["dns", "http", "ping"]],
    [["-s", "0.0.0.0/0", "-d", "203.0.113.10"], ["dns", "ping"]],
    [["-p", "tcp", "--dport", "80"], ["http"]],
    [["-p", "tcp", "--sport", "50000", "--reply-port-src", "22"], ["ssh"]],
    [["-p", "udp", "--reply-port-dst", "5353"], ["dns"]],
    [["-p", "tcp", "--state", "ESTABLISHED"], ["http"]],
    [["-p", "tcp", "--state", "SYN_SENT"], ["ssh"]],
    [["--status", "ASSURED"], ["http"]],
    [["--status", "SEEN_REPLY"], ["http", "ping"]],
    [["--status", "SEEN_REPLY", "-p", "icmp"], ["ping"]],
    [["-p", "tcp", "-d", "9.186.100.1", "--dport", "22"], []],
    [["-f", "ipv4", "-p", "udp"], ["dns"]],
    [["-f", "ipv6"], []],
    [["-p", "icmp", "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", "7"], ["ping"]],
    [["-p", "icmp", "--icmp-type", "0"], []],
    [["-p", "icmp", "--icmp-id", "8"], []],
  ])("-L %j selects %j", (words, names) => {
    expect(selected(router, words)).toEqual(names);
  });
});

describe("conntrack -D and -F in pieces", () => {
  /** The seed's router after 10.0.0.3 sent one datagram from each of `count` ports, plus 10.0.0.2's from as many. */
  function routerWithFlows(count: number): MemoryRouter {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 8192 });
    for (let i = 0; i < count; i++) {
      router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 20000 + i, dport: 53 });
      router.send(QR, { protocol: "udp", src: "10.0.0.2", dst: "203.0.113.10", sport: 20000 + i, dport: 53 });
      if (i % 32 === 31) router.run();
    }
    router.run();
    expect(router.received(QG)).toHaveLength(2 * count);
    return router;
  }

  it("-D -q 9.186.100.129 removes 10.0.0.2's 2,000 floating-IP flows in pieces of at most 500, prints each, and leaves 10.0.0.3's", () => {
    const router = routerWithFlows(2000);
    const table = router.dataplane.conntrack;
    const work = new ConntrackWork(table, "delete", parseConntrackArgs(["-D", "-q", "9.186.100.129"]).filter, SMALL);
    const pieces: string[] = [];
    for (let piece = work.next(); piece !== undefined; piece = work.next()) pieces.push(piece);
    expect(pieces.length).toBeGreaterThanOrEqual(4);
    for (const piece of pieces) expect(piece.split("\n").length - 1).toBeLessThanOrEqual(500);
    const printed = pieces.join("").trimEnd().split("\n");
    expect(printed).toHaveLength(2000);
    expect(printed.every((line) => line.includes("src=10.0.0.2 ") && line.includes("dst=9.186.100.129 "))).toBe(true);
    expect(work.count).toBe(2000);
    expect(table.count).toBe(2000);
    expect(table.counters.removed).toBe(2000);
    expect(formatConntrackTable(table)).not.toContain("9.186.100.129");
  });

  it("-F empties a table of 6,000 flows in pieces and prints nothing", () => {
    const router = routerWithFlows(3000);
    const work = new ConntrackWork(router.dataplane.conntrack, "flush", {}, SMALL);
    const pieces: string[] = [];
    for (let piece = work.next(); piece !== undefined; piece = work.next()) pieces.push(piece);
    expect(pieces.length).toBeGreaterThanOrEqual(12);
    expect(pieces.join("")).toBe("");
    expect(router.dataplane.conntrack.count).toBe(0);
    expect(work.count).toBe(6000);
  });

  it("-F -f ipv6 empties nothing of an IPv4 table; -F -f ipv4 everything", () => {
    const router = routerWithFlows(100);
    const table = router.dataplane.conntrack;
    expect(new ConntrackWork(table, "flush", parseConntrackArgs(["-F", "-f", "ipv6"]).filter).drain()).toBe("");
    expect(table.count).toBe(200);
    new ConntrackWork(table, "flush", parseConntrackArgs(["-F", "-f", "ipv4"]).filter).drain();
    expect(table.count).toBe(0);
  });

  it("a piece looks at a bounded number of slots, so a sparse table is also cut", () => {
    const router = routerWithFlows(2);
    const work = new ConntrackWork(router.dataplane.conntrack, "delete", {}, { entries: 4096, slots: 1024, ms: 1000 });
    let pieces = 0;
    while (work.next() !== undefined) pieces++;
    expect(pieces).toBe(8); // 8192 slots, 1024 per piece
    expect(router.dataplane.conntrack.count).toBe(0);
  });
});

describe("the conntrack control request", () => {
  it("carries the filter as numbers and refuses anything else with one line", () => {
    const filter = parseConntrackArgs(["-D", "-p", "tcp", "-q", "9.186.100.129", "--dport", "22"]).filter;
    expect(parseControlRequest(JSON.parse(JSON.stringify({ cmd: "conntrack", op: "delete", filter })))).toEqual({ cmd: "conntrack", op: "delete", filter });
    expect(parseControlRequest({ cmd: "conntrack", op: "list" })).toEqual({ cmd: "conntrack", op: "list", filter: {} });
    expect(parseControlRequest({ cmd: "conntrack", op: "drop" })).toBe("conntrack op? expected one of list, delete, flush");
    expect(parseConntrackFilter({ origSrc: "10.0.0.2" })).toBe('filter "origSrc" must be {"addr": uint32, "prefixLength": 0-32}');
    expect(parseConntrackFilter({ origSrc: { addr: 1, prefixLength: 33 } })).toBe('filter "origSrc" must be {"addr": uint32, "prefixLength": 0-32}');
    expect(parseConntrackFilter({ origDport: 65536 })).toBe('filter "origDport" must be a port 0-65535');
    expect(parseConntrackFilter({ protocol: "tcp" })).toBe('filter "protocol" must be 0-255');
    expect(parseConntrackFilter({ zone: 1 })).toBe('unknown filter field "zone"');
    expect(parseConntrackFilter([])).toBe('"filter" must be an object');
  });
});

describe("qnat conntrack against a router's control socket", () => {
  let runDir: string;
  const open: ControlServer[] = [];
  let savedRunDir: string | undefined;
  beforeAll(() => {
    runDir = mkdtempSync(join(tmpdir(), "qnat-conntrack-"));
    savedRunDir = process.env["QNAT_RUN_DIR"];
    process.env["QNAT_RUN_DIR"] = runDir;
  });
  afterEach(async () => {
    while (open.length > 0) await open.pop()!.close();
  });
  afterAll(() => {
    if (savedRunDir === undefined) delete process.env["QNAT_RUN_DIR"];
    else process.env["QNAT_RUN_DIR"] = savedRunDir;
    rmSync(runDir, { recursive: true, force: true });
  });

  async function qnat(words: string[]): Promise<{ code: number; out: string; err: string }> {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCli(["conntrack", ...words], { out: (t) => out.push(t), err: (t) => err.push(t) });
    return { code, out: out.join(""), err: err.join("") };
  }

  it("-L -d, -D -q, -L, -D again and -F print what conntrack-tools prints, with its exit codes", async () => {
    const router = seedTable();
    const table = router.dataplane.conntrack;
    const namespace = "qrouter-ctcli";
    open.push(
      await serveControl(controlSocketPath(namespace), (request) =>
        request.cmd === "conntrack" ? { ok: true, pieces: new ConntrackWork(table, request.op, request.filter, SMALL) } : { ok: false, error: "not here" },
      ),
    );
    const before = formatConntrackTable(table);
    const ssh = before.split("\n").find((line) => line.includes("dport=22 "))!;
    expect(await qnat(["-L", "-d", "9.186.100.129", "--router", namespace])).toEqual({
      code: 0,
      out: `${ssh}\n`,
      err: "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n",
    });
    const deleted = await qnat(["-D", "-q", "9.186.100.129", "--router", namespace]);
    expect(deleted.code).toBe(0);
    expect(deleted.out).toMatch(/^udp {6}17 \d+ src=10\.0\.0\.2 dst=203\.0\.113\.10 sport=5353 dport=53 \[UNREPLIED\] src=203\.0\.113\.10 dst=9\.186\.100\.129 sport=53 dport=5353 mark=0 use=1\n$/);
    expect(deleted.err).toBe("conntrack v1.4.7 (conntrack-tools): 1 flow entries have been deleted.\n");
    expect(await qnat(["-D", "-q", "9.186.100.129", "--router", namespace])).toEqual({
      code: 1,
      out: "",
      err: "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n",
    });
    const listed = await qnat(["-L", "--router", namespace]);
    expect(listed.out.trimEnd().split("\n")).toHaveLength(3);
    expect(listed.err).toBe("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n");
    expect(await qnat(["-F", "--router", namespace])).toEqual({
      code: 0,
      out: "",
      err: "conntrack v1.4.7 (conntrack-tools): connection tracking table has been emptied.\n",
    });
    expect(table.count).toBe(0);
    expect(await qnat(["-L", "--router", namespace])).toEqual({ code: 0, out: "", err: "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n" });
  });

  it("-F of 6,000 flows over the socket: 10.0.0.3's ping leaves as 9.186.100.2 while the table is still being emptied", async () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 8192 });
    for (let i = 0; i < 6000; i++) {
      router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 20000 + i, dport: 53 });
      if (i % 64 === 63) router.run();
    }
    router.run();
    router.received(QG);
    const table = router.dataplane.conntrack;
    expect(table.count).toBe(6000);
    let pieces = 0;
    let piecesWhenPingLeft = -1;
    let pingLeftAs: string | undefined;
    const namespace = "qrouter-ctflush";
    open.push(
      await serveControl(controlSocketPath(namespace), () => {
        const work = new ConntrackWork(table, "flush", {}, SMALL);
        return {
          ok: true,
          pieces: {
            next: () => {
              // Scheduled as a leg's readable callback would be: it must run before the flush ends.
              if (pieces === 0) {
                setImmediate(() => {
                  router.send(QR, { protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 9, icmpSeq: 1 });
                  router.run();
                  pingLeftAs = router.received(QG)[0]?.src;
                  piecesWhenPingLeft = pieces;
                });
              }
              const piece = work.next();
              if (piece !== undefined) pieces++;
              return piece;
            },
          },
        };
      }),
    );
    expect(await qnat(["-F", "--router", namespace])).toEqual({ code: 0, out: "", err: "conntrack v1.4.7 (conntrack-tools): connection tracking table has been emptied.\n" });
    expect(pieces).toBeGreaterThanOrEqual(12);
    expect(pingLeftAs).toBe("9.186.100.2");
    expect(piecesWhenPingLeft).toBeGreaterThan(0);
    expect(piecesWhenPingLeft).toBeLessThan(pieces);
  });

  it("without a router: one line, exit 1", async () => {
    const result = await qnat(["-L", "--router", "qrouter-nobody"]);
    expect(result.code).toBe(1);
    expect(result.err).toBe(`qnat: no qnat router is running for namespace qrouter-nobody (no ${join(runDir, "qrouter-nobody.sock")})\n`);
  });
});
