import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ControlError,
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
      { ok: false, error: 'unknown command "reboot" (expected show, trace or ping)' },
      { ok: false, error: "show what? expected one of ports, routes, rules, conntrack, stats" },
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
