import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { spawn } from "node:child_process";
import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  CONTROL_LIMITS,
  ControlError,
  MAX_REQUEST_BYTES,
  controlRequest,
  controlSocketPath,
  parseControlRequest,
  pidPathFor,
  probeControlSocket,
  serveControl,
  type ControlHandler,
  type ControlRequest,
  type ControlResponse,
  type ControlServer,
} from "../../src/control/socket.js";

const NAMESPACE = "qrouter-40fff075-d3a2-477b-942c-6b1adb42e35e";

let runDir: string;
const savedRunDir = process.env["QNAT_RUN_DIR"];
const open: ControlServer[] = [];

beforeAll(() => {
  runDir = mkdtempSync(join(tmpdir(), "qnat-run-"));
  process.env["QNAT_RUN_DIR"] = join(runDir, "run", "qnat"); // not there yet: serveControl creates it
});
afterEach(async () => {
  while (open.length > 0) await open.pop()!.close();
});
afterAll(() => {
  if (savedRunDir === undefined) delete process.env["QNAT_RUN_DIR"];
  else process.env["QNAT_RUN_DIR"] = savedRunDir;
  rmSync(runDir, { recursive: true, force: true });
});

/** A router's handler: answers `show ports` like the seed's router would. */
function seedHandler(request: ControlRequest): ControlResponse {
  if (request.cmd === "show" && request.what === "routes") {
    return { ok: true, text: "default via 9.186.100.1 dev qg-e76de35e-90", data: request.json ? [{ dst: "default" }] : undefined };
  }
  if (request.cmd === "trace") return { ok: false, error: `cannot parse packet "${request.packet}"` };
  throw new Error("show what?\nsecond line never reaches the client");
}

async function serve(path: string, handler: ControlHandler = seedHandler): Promise<ControlServer> {
  const server = await serveControl(path, handler);
  open.push(server);
  return server;
}

/** A router that crashed: a child process listens on `path` and is killed with SIGKILL. */
async function leaveStaleSocket(path: string): Promise<void> {
  const child = spawn(process.execPath, [
    "-e",
    `require("node:net").createServer().listen(${JSON.stringify(path)}, () => console.log("listening"))`,
  ]);
  await new Promise<void>((resolve, reject) => {
    child.stdout.on("data", () => resolve());
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`child exited ${code}`)));
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGKILL");
  await exited;
}

describe("control socket paths", () => {
  it("lives in QNAT_RUN_DIR (default /run/qnat) as <namespace>.sock, pid file beside it", () => {
    expect(controlSocketPath(NAMESPACE)).toBe(join(runDir, "run", "qnat", `${NAMESPACE}.sock`));
    expect(pidPathFor("/run/qnat/qrouter-x.sock")).toBe("/run/qnat/qrouter-x.pid");
    const saved = process.env["QNAT_RUN_DIR"];
    delete process.env["QNAT_RUN_DIR"];
    try {
      expect(controlSocketPath("qrouter-x")).toBe("/run/qnat/qrouter-x.sock");
    } finally {
      process.env["QNAT_RUN_DIR"] = saved;
    }
  });
});

describe("a running router answers on its control socket", () => {
  it("creates the directory 0755, the socket and a pid file with its pid", async () => {
    const path = controlSocketPath(NAMESPACE);
    const server = await serve(path);
    expect(lstatSync(path).isSocket()).toBe(true);
    expect(statSync(join(runDir, "run", "qnat")).mode & 0o777).toBe(0o755);
    expect(server.pidPath).toBe(join(runDir, "run", "qnat", `${NAMESPACE}.pid`));
    expect(readFileSync(server.pidPath, "utf8")).toBe(`${process.pid}\n`);
  });

  it("answers show through the handler, ping by itself with its pid", async () => {
    const path = controlSocketPath(NAMESPACE);
    await serve(path);
    expect(await controlRequest(path, { cmd: "show", what: "routes", json: true })).toEqual({
      ok: true,
      text: "default via 9.186.100.1 dev qg-e76de35e-90",
      data: [{ dst: "default" }],
    });
    expect(await controlRequest(path, { cmd: "ping" })).toEqual({ ok: true, text: "pong", data: { pid: process.pid } });
  });

  it("passes a handler's refusal through, and turns a handler's exception into one line", async () => {
    const path = controlSocketPath(NAMESPACE);
    await serve(path);
    expect(await controlRequest(path, { cmd: "trace", packet: "nonsense" })).toEqual({ ok: false, error: 'cannot parse packet "nonsense"' });
    expect(await controlRequest(path, { cmd: "show", what: "stats" })).toEqual({ ok: false, error: "show what?" });
  });

  it("answers several request lines on one connection in order, and refuses malformed ones", async () => {
    const path = controlSocketPath(NAMESPACE);
    await serve(path, async (request) => {
      // The first request answers last: responses must still come back in order.
      if (request.cmd === "show" && request.what === "ports") await new Promise((r) => setTimeout(r, 20));
      return { ok: true as const, text: request.cmd === "show" ? request.what : request.cmd };
    });
    const lines = await new Promise<string[]>((resolve, reject) => {
      const socket = createConnection(path);
      let text = "";
      socket.setEncoding("utf8");
      socket.on("data", (chunk: string) => {
        text += chunk;
        if (text.split("\n").length > 5) {
          socket.end();
          resolve(text.trim().split("\n"));
        }
      });
      socket.on("error", reject);
      socket.write('{"cmd":"show","what":"ports"}\n{"cmd":"show","what":"routes"}\n');
      socket.write('not json\n{"cmd":"reboot"}\n{"cmd":"show","what":"everything"}\n');
    });
    expect(lines.map((line) => JSON.parse(line))).toEqual([
      { ok: true, text: "ports" },
      { ok: true, text: "routes" },
      { ok: false, error: "request is not valid JSON" },
      { ok: false, error: 'unknown command "reboot" (expected show, trace, conntrack, top, capture or ping)' },
      { ok: false, error: "show what? expected one of ports, routes, rules, conntrack, stats, neigh" },
    ]);
  });

  it("removes its socket and pid files on close", async () => {
    const path = controlSocketPath(NAMESPACE);
    const server = await serveControl(path, seedHandler);
    await server.close();
    await server.close(); // twice is harmless
    expect(existsSync(path)).toBe(false);
    expect(existsSync(server.pidPath)).toBe(false);
  });
});

describe("qnat run twice, and after a crash", () => {
  it("a second router on the same live socket fails with one line naming the running pid", async () => {
    const path = controlSocketPath(NAMESPACE);
    await serve(path);
    const second = serveControl(path, seedHandler);
    const error = await second.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ControlError);
    expect((error as ControlError).message).toBe(`router ${NAMESPACE} is already running (pid ${process.pid})`);
    // ...and the first one still answers.
    expect((await controlRequest(path, { cmd: "ping" })).ok).toBe(true);
  });

  it("a stale socket file left by a crashed router is detected and replaced", async () => {
    const path = controlSocketPath("qrouter-crashed");
    await leaveStaleSocket(path);
    expect(lstatSync(path).isSocket()).toBe(true);
    expect(await probeControlSocket(path)).toEqual({ state: "stale" });
    await expect(controlRequest(path, { cmd: "ping" })).rejects.toThrow(
      `no qnat router is running for namespace qrouter-crashed (stale socket ${path})`,
    );

    await serve(path);
    expect(await controlRequest(path, { cmd: "ping" })).toEqual({ ok: true, text: "pong", data: { pid: process.pid } });
  });

  it("refuses to replace a file that is not a socket", async () => {
    const path = controlSocketPath("qrouter-file");
    await serve(controlSocketPath("qrouter-dir-exists")); // makes the directory
    writeFileSync(path, "not a socket");
    await expect(serveControl(path, seedHandler)).rejects.toThrow(`${path} exists and is not a socket`);
  });

  it("refuses a socket path longer than a unix socket allows", async () => {
    await expect(serveControl(join(runDir, "x".repeat(120) + ".sock"), seedHandler)).rejects.toThrow(/too long for a unix socket/);
  });
});

describe("qnat show when nothing runs", () => {
  it("says no router is running for the namespace, naming the socket", async () => {
    const path = controlSocketPath("qrouter-nobody");
    await expect(controlRequest(path, { cmd: "show", what: "ports" })).rejects.toThrow(
      `no qnat router is running for namespace qrouter-nobody (no ${path})`,
    );
    await expect(controlRequest(path, { cmd: "ping" })).rejects.toMatchObject({ code: "ENOENT", exitCode: 1 });
    expect(await probeControlSocket(path)).toEqual({ state: "none" });
  });

  it("times out with one line when the router never answers", async () => {
    const path = controlSocketPath("qrouter-silent");
    await serve(path, () => new Promise<ControlResponse>(() => {}));
    await expect(controlRequest(path, { cmd: "show", what: "conntrack" }, 100)).rejects.toThrow(
      `router qrouter-silent did not answer within 100 ms (${path})`,
    );
  });
});

describe("parseControlRequest", () => {
  it("accepts the three commands and checks their fields", () => {
    expect(parseControlRequest({ cmd: "show", what: "conntrack", json: true })).toEqual({ cmd: "show", what: "conntrack", json: true, verbose: false });
    expect(parseControlRequest({ cmd: "trace", packet: "qr-694450d6-f6 icmp 10.0.0.3 > 8.8.8.8" })).toEqual({
      cmd: "trace",
      packet: "qr-694450d6-f6 icmp 10.0.0.3 > 8.8.8.8",
      json: false,
    });
    expect(parseControlRequest({ cmd: "ping" })).toEqual({ cmd: "ping" });
    expect(parseControlRequest({ cmd: "show", what: "rules", verbose: "yes" })).toBe('"verbose" must be true or false');
    expect(parseControlRequest({ cmd: "trace" })).toBe('trace needs "packet": a packet spec');
    expect(parseControlRequest([1])).toBe("request must be a JSON object");
  });
});

// ---- the socket holds up against its clients ------------------------------------------------

/** A raw client: writes what it is given, collects the answer lines, knows when the server closed. */
function rawClient(path: string): { socket: Socket; lines: string[]; closed: Promise<void>; lineCount: (n: number) => Promise<string[]> } {
  const socket = createConnection(path);
  const lines: string[] = [];
  let partial = "";
  const waiters: (() => void)[] = [];
  socket.setEncoding("utf8");
  socket.on("data", (chunk: string) => {
    partial += chunk;
    const parts = partial.split("\n");
    partial = parts.pop()!;
    lines.push(...parts);
    for (const wake of waiters.splice(0)) wake();
  });
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  const lineCount = async (n: number): Promise<string[]> => {
    while (lines.length < n) {
      const more = new Promise<void>((resolve) => waiters.push(resolve));
      const ended = closed.then(() => {
        throw new Error(`closed after ${lines.length} of ${n} lines`);
      });
      await Promise.race([more, ended]);
    }
    return lines.slice(0, n).map((line) => JSON.parse(line));
  };
  return { socket, lines, closed, lineCount };
}

/** A handler whose `show ports` waits until `release()`; anything else answers at once. */
function gatedHandler(): { handler: ControlHandler; release: () => void; started: () => number } {
  let open: () => void = () => {};
  const gate = new Promise<void>((resolve) => (open = resolve));
  let started = 0;
  return {
    handler: async (request) => {
      if (request.cmd === "show" && request.what === "ports") {
        started++;
        await gate;
        return { ok: true, text: "ports" };
      }
      return { ok: true, text: "routes" };
    },
    release: () => open(),
    started: () => started,
  };
}

const SHOW_PORTS = '{"cmd":"show","what":"ports"}\n';
const SHOW_ROUTES = '{"cmd":"show","what":"routes"}\n';
const LIMITS = { ...CONTROL_LIMITS, inFlightPerClient: 2, inFlight: 3 };

/** A streamed answer of `count` pieces of `size` bytes; `made()` says how many were produced. */
function manyPieces(count: number, size: number): { handler: ControlHandler; made: () => number } {
  let made = 0;
  const piece = "x".repeat(size);
  return {
    handler: () => ({ ok: true, pieces: { next: () => (made < count ? (made++, piece) : undefined) } }),
    made: () => made,
  };
}

describe("the control socket holds up against its clients", () => {
  it("is mode 0600 and owned by the router's user even under a umask of 000", async () => {
    const path = controlSocketPath("qrouter-umask");
    const saved = process.umask(0);
    let umaskAfter: number;
    try {
      await serve(path);
    } finally {
      umaskAfter = process.umask(saved);
    }
    expect(umaskAfter).toBe(0); // the caller's umask is given back
    const stat = lstatSync(path);
    expect(stat.mode & 0o777).toBe(0o600);
    expect(stat.uid).toBe(process.getuid!());
    expect((await controlRequest(path, { cmd: "ping" })).ok).toBe(true);
  });

  it("refuses a request line over 64 KiB with one error line and closes the connection", async () => {
    const path = controlSocketPath("qrouter-big");
    await serve(path);
    const client = rawClient(path);
    client.socket.write(SHOW_ROUTES + `{"cmd":"trace","packet":"${"x".repeat(MAX_REQUEST_BYTES)}"}\n` + SHOW_ROUTES);
    expect(await client.lineCount(2)).toEqual([
      { ok: true, text: "default via 9.186.100.1 dev qg-e76de35e-90" },
      { ok: false, error: "request longer than 65536 bytes" },
    ]);
    await client.closed;
    expect(client.lines).toHaveLength(2); // the request after the long one is not answered

    // The same for a line that never ends: refused as soon as it is too long.
    const endless = rawClient(path);
    endless.socket.write('{"cmd":"trace","packet":"');
    for (let i = 0; i < 5 && !endless.socket.destroyed; i++) endless.socket.write("y".repeat(20_000));
    expect(await endless.lineCount(1)).toEqual([{ ok: false, error: "request longer than 65536 bytes" }]);
    await endless.closed;
    expect((await controlRequest(path, { cmd: "ping" })).ok).toBe(true);
  });

  it("answers a client that pipelines more small requests than the size limit at once, none of them 'too long'", async () => {
    const path = controlSocketPath("qrouter-pipeline");
    // 300 requests of 15 bytes in one write: 4.5 KiB against a 1 KiB limit per request, and
    // only 4 of them queued at a time.
    open.push(await serveControl(path, seedHandler, { ...CONTROL_LIMITS, requestBytes: 1024, queuedPerClient: 4 }));
    const client = rawClient(path);
    client.socket.write('{"cmd":"ping"}\n'.repeat(300));
    const answers = await client.lineCount(300);
    expect(answers.filter((a) => JSON.stringify(a).includes("longer than"))).toEqual([]);
    expect(answers[0]).toEqual({ ok: true, text: "pong", data: { pid: process.pid } });
    client.socket.destroy();
  });

  it("answers at most N requests in flight per client; the next ones get an error answer, in order", async () => {
    const path = controlSocketPath("qrouter-busy");
    const gated = gatedHandler();
    open.push(await serveControl(path, gated.handler, LIMITS));
    const client = rawClient(path);
    client.socket.write(SHOW_PORTS + SHOW_PORTS + SHOW_PORTS + SHOW_ROUTES);
    await vi.waitFor(() => expect(gated.started()).toBe(1));
    gated.release();
    expect(await client.lineCount(4)).toEqual([
      { ok: true, text: "ports" },
      { ok: true, text: "ports" },
      { ok: false, error: "too many requests in flight on this connection (at most 2)" },
      { ok: false, error: "too many requests in flight on this connection (at most 2)" },
    ]);
    // Once answered, the connection takes requests again.
    client.socket.write(SHOW_ROUTES);
    expect((await client.lineCount(5))[4]).toEqual({ ok: true, text: "routes" });
    client.socket.destroy();
  }, 10_000);

  it("answers at most N requests in flight over all clients", async () => {
    const path = controlSocketPath("qrouter-load");
    const gated = gatedHandler();
    open.push(await serveControl(path, gated.handler, LIMITS));
    const first = rawClient(path);
    first.socket.write(SHOW_PORTS + SHOW_PORTS);
    await vi.waitFor(() => expect(gated.started()).toBe(1));
    const second = rawClient(path);
    second.socket.write(SHOW_PORTS + SHOW_ROUTES);
    await vi.waitFor(() => expect(gated.started()).toBe(2));
    gated.release();
    expect(await first.lineCount(2)).toEqual([{ ok: true, text: "ports" }, { ok: true, text: "ports" }]);
    expect(await second.lineCount(2)).toEqual([
      { ok: true, text: "ports" },
      { ok: false, error: "router busy: too many control requests in flight (at most 3)" },
    ]);
    first.socket.destroy();
    second.socket.destroy();
  }, 10_000);

  it("answers garbage with one error line per line and goes on serving", async () => {
    const path = controlSocketPath("qrouter-garbage");
    await serve(path);
    const client = rawClient(path);
    client.socket.write(Buffer.from([0xff, 0xfe, 0x00, 0x7b, 0x0a, 0x80, 0x81, 0x0a]));
    client.socket.write('{"cmd":"show"}\n"just a string"\n{"cmd":"show","what":"ports","json":"yes"}\n');
    expect(await client.lineCount(5)).toEqual([
      { ok: false, error: "request is not valid JSON" },
      { ok: false, error: "request is not valid JSON" },
      { ok: false, error: "show what? expected one of ports, routes, rules, conntrack, stats, neigh" },
      { ok: false, error: "request must be a JSON object" },
      { ok: false, error: '"json" must be true or false' },
    ]);
    client.socket.write(SHOW_ROUTES);
    expect((await client.lineCount(6))[5]).toEqual({ ok: true, text: "default via 9.186.100.1 dev qg-e76de35e-90" });
    client.socket.destroy();
  });

  it("keeps serving others beside a half request, and closes that connection once it idles", async () => {
    const path = controlSocketPath("qrouter-half");
    open.push(await serveControl(path, seedHandler, { ...CONTROL_LIMITS, idleMs: 200 }));
    const half = rawClient(path);
    half.socket.write('{"cmd":"show","wh');
    expect(await controlRequest(path, { cmd: "show", what: "routes" })).toMatchObject({ ok: true });
    await half.closed;
    expect(half.lines).toEqual([]);
  });

  it("answers every request of a client that shuts down its side right after sending", async () => {
    const path = controlSocketPath("qrouter-halfclose");
    await serve(path);
    const client = rawClient(path);
    client.socket.end(SHOW_ROUTES + '{"cmd":"ping"}\n');
    await client.closed;
    expect(client.lines.map((line) => JSON.parse(line))).toEqual([
      { ok: true, text: "default via 9.186.100.1 dev qg-e76de35e-90" },
      { ok: true, text: "pong", data: { pid: process.pid } },
    ]);
  });

  it("forgets a client that vanished before its answer: its requests no longer count as in flight", async () => {
    const path = controlSocketPath("qrouter-vanish");
    const gated = gatedHandler();
    open.push(await serveControl(path, gated.handler, { ...LIMITS, inFlight: 2 }));
    const gone = rawClient(path);
    gone.socket.write(SHOW_PORTS + SHOW_ROUTES);
    await vi.waitFor(() => expect(gated.started()).toBe(1));
    gone.socket.destroy();
    await gone.closed;
    // Its answer cannot be written; once its handler returns, both its places are free again
    // (the server's whole in-flight allowance is 2).
    gated.release();
    await vi.waitFor(async () => {
      const client = rawClient(path);
      client.socket.write(SHOW_PORTS + SHOW_PORTS);
      try {
        expect(await client.lineCount(2)).toEqual([{ ok: true, text: "ports" }, { ok: true, text: "ports" }]);
      } finally {
        client.socket.destroy();
      }
    });
  });

  it("stops a streamed answer whose client vanished mid-stream, and serves the next client", async () => {
    const path = controlSocketPath("qrouter-midstream");
    const stream = manyPieces(100_000, 1000);
    open.push(await serveControl(path, stream.handler, { ...CONTROL_LIMITS, inFlight: 1 }));
    const client = rawClient(path);
    client.socket.write('{"cmd":"show","what":"conntrack"}\n');
    expect(await client.lineCount(1)).toEqual([{ ok: true, more: true, text: "x".repeat(1000) }]);
    client.socket.destroy();
    await client.closed;
    await new Promise((resolve) => setTimeout(resolve, 50));
    const made = stream.made();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(stream.made()).toBe(made);
    expect(made).toBeLessThan(100_000);
    // The listing released its place: the server (limit 1 in flight) answers the next one.
    expect(await controlRequest(path, { cmd: "ping" })).toMatchObject({ ok: true, text: "pong" });
  });

  it("makes the next piece only as the client reads: a client that stops reading holds a bounded amount", async () => {
    const path = controlSocketPath("qrouter-slow");
    const stream = manyPieces(2000, 16_384);
    await serve(path, stream.handler);
    const client = rawClient(path);
    client.socket.write('{"cmd":"show","what":"conntrack"}\n');
    await client.lineCount(1);
    client.socket.pause();
    await new Promise((resolve) => setTimeout(resolve, 300));
    const whilePaused = stream.made();
    expect(whilePaused).toBeLessThan(2000); // 32 MiB were not formatted into a socket nobody reads
    client.socket.resume();
    await client.lineCount(2001);
    expect(stream.made()).toBe(2000);
    expect(JSON.parse(client.lines[2000]!)).toEqual({ ok: true, text: "" });
    client.socket.destroy();
  });

  it("refuses connections beyond the limit with one error line", async () => {
    const path = controlSocketPath("qrouter-crowd");
    open.push(await serveControl(path, seedHandler, { ...CONTROL_LIMITS, connections: 2 }));
    const a = rawClient(path);
    const b = rawClient(path);
    await Promise.all([a, b].map((c) => new Promise((resolve) => c.socket.once("connect", resolve))));
    await new Promise((resolve) => setTimeout(resolve, 20));
    const third = rawClient(path);
    expect(await third.lineCount(1)).toEqual([{ ok: false, error: "too many control connections (at most 2)" }]);
    await third.closed;
    a.socket.destroy();
    await a.closed;
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await controlRequest(path, { cmd: "ping" })).toMatchObject({ ok: true });
    b.socket.destroy();
  });
});
