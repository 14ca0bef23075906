import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConntrackCursor, conntrackTableJson, formatConntrackTable } from "../../src/conntrack/format.js";
import { formatJson } from "../../src/control/show.js";
import { controlRequest, controlSocketPath, serveControl, type ControlServer } from "../../src/control/socket.js";
import { runCli } from "../../src/cli/main.js";
import { MemoryRouter } from "../support/memory-router.js";

const QR = "qr-694450d6-f6";
const QG = "qg-e76de35e-90";
/** Small pieces, so a few thousand connections make many of them. */
const SMALL = { entries: 500, slots: 65_536, ms: 1000 };

/** The seed's router after 10.0.0.3 sent one datagram from each of `count` source ports. */
function routerWithConnections(count: number): MemoryRouter {
  const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 8192 });
  for (let i = 0; i < count; i++) {
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 20000 + i, dport: 53 });
    if (i % 64 === 63) router.run();
  }
  router.run();
  expect(router.received(QG)).toHaveLength(count);
  return router;
}

function collect(cursor: ConntrackCursor): string[] {
  const pieces: string[] = [];
  for (let piece = cursor.next(); piece !== undefined; piece = cursor.next()) pieces.push(piece);
  return pieces;
}

describe("show conntrack in pieces", () => {
  it("lists 3,000 SNATed connections in several pieces that join into exactly conntrack -L's text", () => {
    const router = routerWithConnections(3000);
    const pieces = collect(new ConntrackCursor(router.dataplane.conntrack, "text", SMALL));
    expect(pieces.length).toBeGreaterThanOrEqual(6);
    expect(pieces.join("")).toBe(formatConntrackTable(router.dataplane.conntrack));
    expect(pieces.join("")).toContain("udp      17 30 src=10.0.0.3 dst=203.0.113.10 sport=20000 dport=53 [UNREPLIED] src=203.0.113.10 dst=9.186.100.2 sport=53 dport=20000 mark=0 use=1\n");
  });

  it("--json in pieces is exactly the one-shot JSON text, and valid JSON", () => {
    const router = routerWithConnections(1200);
    const pieces = collect(new ConntrackCursor(router.dataplane.conntrack, "json", SMALL));
    expect(pieces.length).toBeGreaterThanOrEqual(3);
    const text = pieces.join("");
    expect(text).toBe(formatJson(conntrackTableJson(router.dataplane.conntrack)));
    expect(JSON.parse(text)).toHaveLength(1200);
  });

  it("an empty table is no text, and [] with --json", () => {
    const router = MemoryRouter.fromFile("examples/seed.yaml", { conntrackCapacity: 1024 });
    expect(collect(new ConntrackCursor(router.dataplane.conntrack, "text")).join("")).toBe("");
    expect(collect(new ConntrackCursor(router.dataplane.conntrack, "json")).join("")).toBe("[]");
  });

  it("bounds the slots one piece looks at, so a sparse table also comes in pieces", () => {
    const router = routerWithConnections(3);
    const pieces = collect(new ConntrackCursor(router.dataplane.conntrack, "text", { entries: 4096, slots: 1024, ms: 1000 }));
    expect(pieces).toHaveLength(8); // 8192 slots, 1024 per piece
    expect(pieces.join("")).toBe(formatConntrackTable(router.dataplane.conntrack));
  });

  it("as conntrack -L: connections live throughout are listed once, one gone before its turn is not, one created meanwhile past the cursor is", () => {
    const router = routerWithConnections(2000);
    const table = router.dataplane.conntrack;
    const cursor = new ConntrackCursor(table, "text", SMALL);
    const first = cursor.next()!;
    expect(first).toContain("sport=20000 ");
    // While the listing is under way: the connection from port 21999 (the table's last id) ends...
    const last = table.lookup(17, 0x0a000003, 0xcb00710a, 21999, 53);
    expect(last).toBeGreaterThanOrEqual(0);
    table.remove(last >> 1);
    // ...and 10.0.0.3 opens a new one, from port 30000 (the free slot it takes is past the cursor).
    router.send(QR, { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 30000, dport: 53 });
    router.run();
    const text = first + collect(cursor).join("");
    const lines = text.trimEnd().split("\n");
    expect(lines).toHaveLength(2000);
    expect(new Set(lines).size).toBe(2000);
    expect(text).not.toContain("sport=21999 ");
    expect(text).toContain("sport=30000 ");
  });
});

describe("show conntrack through the control socket lets the event loop run between pieces", () => {
  let runDir: string;
  const open: ControlServer[] = [];
  beforeAll(() => {
    runDir = mkdtempSync(join(tmpdir(), "qnat-listing-"));
  });
  afterEach(async () => {
    while (open.length > 0) await open.pop()!.close();
  });
  afterAll(() => rmSync(runDir, { recursive: true, force: true }));

  it("10.0.0.3's ping leaves as 9.186.100.2 while the table is still being listed, and the listing equals the one-shot text", async () => {
    const router = routerWithConnections(3000);
    const table = router.dataplane.conntrack;
    let cursor: ConntrackCursor | undefined;
    let piecesWhenPingLeft = -1;
    let pingLeftAs: string | undefined;
    const path = join(runDir, "qrouter-listing.sock");
    open.push(
      await serveControl(path, () => {
        cursor = new ConntrackCursor(table, "text", SMALL);
        const pieces = cursor;
        return {
          ok: true,
          pieces: {
            next: () => {
              // Scheduled during the listing, as a leg's readable callback would be: it must run
              // before the listing is over.
              if (pieces.pieces === 0) {
                setImmediate(() => {
                  router.send(QR, { protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10", icmpType: 8, icmpId: 7, icmpSeq: 1 });
                  router.run();
                  pingLeftAs = router.received(QG)[0]?.src;
                  piecesWhenPingLeft = pieces.pieces;
                });
              }
              return pieces.next();
            },
          },
        };
      }),
    );
    const response = await controlRequest(path, { cmd: "show", what: "conntrack" });
    // The ping's connection, created during the listing in a slot past the cursor, is listed
    // too: the listing is the one-shot text of the table as it is at the end.
    expect(response).toEqual({ ok: true, text: formatConntrackTable(table), data: undefined });
    expect(response.ok && response.text!.split("\n")).toHaveLength(3002);
    expect(cursor!.pieces).toBeGreaterThanOrEqual(6);
    expect(pingLeftAs).toBe("9.186.100.2");
    expect(piecesWhenPingLeft).toBeGreaterThan(0);
    expect(piecesWhenPingLeft).toBeLessThan(cursor!.pieces);
  });

  it("--json arrives in pieces to a client that prints them as they come, and parses", async () => {
    const router = routerWithConnections(1500);
    const path = join(runDir, "qrouter-json.sock");
    open.push(await serveControl(path, () => ({ ok: true, pieces: new ConntrackCursor(router.dataplane.conntrack, "json", SMALL) })));
    const printed: string[] = [];
    const response = await controlRequest(path, { cmd: "show", what: "conntrack", json: true }, 5000, (piece) => printed.push(piece));
    expect(response).toEqual({ ok: true, text: "", data: undefined });
    expect(printed.length).toBeGreaterThanOrEqual(3);
    expect(printed.join("")).toBe(formatJson(conntrackTableJson(router.dataplane.conntrack)));
    expect(JSON.parse(printed.join(""))[0]).toMatchObject({ protocol: "udp", original: { src: "10.0.0.3", sport: 20000 }, reply: { dst: "9.186.100.2" } });
  });

  it("qnat show conntrack prints the listing piece by piece as it arrives, --json with a final newline", async () => {
    const router = routerWithConnections(2000);
    const table = router.dataplane.conntrack;
    const savedRunDir = process.env["QNAT_RUN_DIR"];
    process.env["QNAT_RUN_DIR"] = runDir;
    try {
      const namespace = "qrouter-cli";
      open.push(await serveControl(controlSocketPath(namespace), (request) => ({ ok: true, pieces: new ConntrackCursor(table, request.cmd === "show" && request.json ? "json" : "text", SMALL) })));
      const text: string[] = [];
      expect(await runCli(["show", "conntrack", "--router", namespace], { out: (t) => text.push(t), err: (t) => text.push(`ERR ${t}`) })).toBe(0);
      expect(text.length).toBeGreaterThanOrEqual(4);
      expect(text.join("")).toBe(formatConntrackTable(table));
      const json: string[] = [];
      expect(await runCli(["show", "conntrack", "--json", "--router", namespace], { out: (t) => json.push(t), err: (t) => json.push(`ERR ${t}`) })).toBe(0);
      expect(json.join("")).toBe(formatJson(conntrackTableJson(table)) + "\n");
    } finally {
      if (savedRunDir === undefined) delete process.env["QNAT_RUN_DIR"];
      else process.env["QNAT_RUN_DIR"] = savedRunDir;
    }
  });
});
