/**
 * The running router's control socket: a unix stream socket at `/run/qnat/<namespace>.sock`
 * (directory overridable with QNAT_RUN_DIR), with a pid file beside it. `qnat show` and
 * `qnat trace --router` talk to it; `qnat run` refuses to start when another router already
 * answers on it.
 *
 * Protocol: newline-delimited JSON. Each request line gets one response line, in order:
 *   {"cmd":"show","what":"ports"|"routes"|"rules"|"conntrack"|"stats","json":bool,"verbose":bool}
 *   {"cmd":"trace","packet":"qr-694450d6-f6 tcp 10.0.0.3:40000 > 8.8.8.8:53 syn","json":bool}
 *   {"cmd":"ping"}
 * ->{"ok":true,"text":"...","data":...} | {"ok":false,"error":"one line"}
 * `ping` is answered by the server itself with `data: { pid }`.
 */
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { lstatSync, mkdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";

export const DEFAULT_RUN_DIR = "/run/qnat";
/** A request line longer than this is refused (and the connection closed). */
export const MAX_REQUEST_BYTES = 64 * 1024;
/** sockaddr_un.sun_path is 108 bytes including the NUL (include/uapi/linux/un.h). */
const MAX_SOCKET_PATH = 107;

export const SHOW_WHAT = ["ports", "routes", "rules", "conntrack", "stats"] as const;
export type ShowWhat = (typeof SHOW_WHAT)[number];

export type ControlRequest =
  | { readonly cmd: "show"; readonly what: ShowWhat; readonly json?: boolean; readonly verbose?: boolean }
  | { readonly cmd: "trace"; readonly packet: string; readonly json?: boolean }
  | { readonly cmd: "ping" };

export type ControlResponse =
  | { readonly ok: true; readonly text?: string; readonly data?: unknown }
  | { readonly ok: false; readonly error: string };

export type ControlHandler = (request: ControlRequest) => Promise<ControlResponse> | ControlResponse;

export interface ControlServer {
  readonly path: string;
  readonly pidPath: string;
  close(): Promise<void>;
}

/**
 * A control-socket problem a user can act on (router not running, already running, timeout):
 * printed as its one-line message, exit 1, like the CLI's OperationalError.
 */
export class ControlError extends Error {
  readonly exitCode = 1;
  constructor(
    message: string,
    /** errno name when a system call failed (ENOENT, ECONNREFUSED...), or "ETIMEDOUT". */
    readonly code?: string,
  ) {
    super(message);
    this.name = "ControlError";
  }
}

export function runDir(): string {
  const fromEnv = process.env["QNAT_RUN_DIR"];
  return fromEnv !== undefined && fromEnv !== "" ? fromEnv : DEFAULT_RUN_DIR;
}

export function controlSocketPath(namespace: string): string {
  return join(runDir(), `${namespace}.sock`);
}

/** The pid file beside a control socket: `<dir>/<namespace>.pid`. */
export function pidPathFor(socketPath: string): string {
  return socketPath.endsWith(".sock") ? `${socketPath.slice(0, -5)}.pid` : `${socketPath}.pid`;
}

/** The router namespace a control socket belongs to (its file name without `.sock`). */
export function namespaceOfSocket(socketPath: string): string {
  const name = basename(socketPath);
  return name.endsWith(".sock") ? name.slice(0, -5) : name;
}

/** Checks a decoded request line; returns the request or a one-line reason it is not one. */
export function parseControlRequest(value: unknown): ControlRequest | string {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "request must be a JSON object";
  const request = value as Record<string, unknown>;
  const flag = (key: string): boolean | string => {
    const v = request[key];
    if (v === undefined) return false;
    return typeof v === "boolean" ? v : `"${key}" must be true or false`;
  };
  switch (request["cmd"]) {
    case "ping":
      return { cmd: "ping" };
    case "show": {
      const what = request["what"];
      if (typeof what !== "string" || !(SHOW_WHAT as readonly string[]).includes(what))
        return `show what? expected one of ${SHOW_WHAT.join(", ")}`;
      const json = flag("json");
      if (typeof json === "string") return json;
      const verbose = flag("verbose");
      if (typeof verbose === "string") return verbose;
      return { cmd: "show", what: what as ShowWhat, json, verbose };
    }
    case "trace": {
      const packet = request["packet"];
      if (typeof packet !== "string" || packet.trim() === "") return `trace needs "packet": a packet spec`;
      const json = flag("json");
      if (typeof json === "string") return json;
      return { cmd: "trace", packet, json };
    }
    default:
      return `unknown command ${JSON.stringify(request["cmd"] ?? null)} (expected show, trace or ping)`;
  }
}

/** First line of an error's message: responses and CLI errors are one line. */
function oneLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split("\n", 1)[0]!.trim() || "internal error";
}

/**
 * What answers on `path`: "none" (no file), "stale" (a socket file nobody listens on: a crashed
 * router), or "live" with the pid it reports.
 */
export async function probeControlSocket(path: string, timeoutMs = 2000): Promise<{ state: "none" | "stale" } | { state: "live"; pid: number | undefined }> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { state: "none" };
    throw new ControlError(`cannot check ${path}: ${code ?? oneLine(error)}${code === "EACCES" ? " (run as root)" : ""}`, code);
  }
  if (!isSocket) throw new ControlError(`${path} exists and is not a socket: remove it or set QNAT_RUN_DIR`, "EEXIST");
  try {
    const response = await controlRequest(path, { cmd: "ping" }, timeoutMs);
    const data = response.ok ? (response.data as { pid?: unknown } | undefined) : undefined;
    return { state: "live", pid: typeof data?.pid === "number" ? data.pid : readPidFile(pidPathFor(path)) };
  } catch (error) {
    const code = error instanceof ControlError ? error.code : undefined;
    if (code === "ECONNREFUSED") return { state: "stale" };
    if (code === "ENOENT") return { state: "none" };
    // Something accepted the connection but did not answer: treat it as running.
    if (code === "ETIMEDOUT" || code === "ECONNRESET" || code === "EPROTO") return { state: "live", pid: readPidFile(pidPathFor(path)) };
    throw error;
  }
}

function readPidFile(pidPath: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(pidPath, "utf8").trim(), 10);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function alreadyRunning(path: string, pid: number | undefined): ControlError {
  return new ControlError(`router ${namespaceOfSocket(path)} is already running (pid ${pid ?? "unknown"})`, "EADDRINUSE");
}

/**
 * Listens on `path` and answers each request line with `handler`. A stale socket file (from a
 * router that crashed) is replaced; a live one means another router runs: ControlError
 * `router <namespace> is already running (pid N)`. Writes the pid file beside the socket;
 * `close()` removes both (when they are still this server's).
 */
export async function serveControl(path: string, handler: ControlHandler): Promise<ControlServer> {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    throw new ControlError(`control socket path is too long for a unix socket (${Buffer.byteLength(path)} > ${MAX_SOCKET_PATH} bytes): ${path}`, "ENAMETOOLONG");
  }
  const dir = dirname(path);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const hint = code === "EACCES" ? " (run as root, or set QNAT_RUN_DIR)" : "";
    throw new ControlError(`cannot create ${dir}: ${code ?? oneLine(error)}${hint}`, code);
  }

  const connections = new Set<Socket>();
  const server = createServer((socket) => {
    connections.add(socket);
    socket.on("close", () => connections.delete(socket));
    serveConnection(socket, handler);
  });

  // Two attempts: the second after removing a stale file, or after losing a start-up race.
  for (let attempt = 0; ; attempt++) {
    const found = await probeControlSocket(path);
    if (found.state === "live") throw alreadyRunning(path, found.pid);
    if (found.state === "stale") unlinkIfExists(path);
    try {
      await listen(server, path);
      break;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "EADDRINUSE" && attempt === 0) continue;
      if (code === "EADDRINUSE") throw alreadyRunning(path, readPidFile(pidPathFor(path)));
      const hint = code === "EACCES" ? " (run as root, or set QNAT_RUN_DIR)" : "";
      throw new ControlError(`cannot listen on ${path}: ${code ?? oneLine(error)}${hint}`, code);
    }
  }

  const socketInode = statSync(path).ino;
  const pidPath = pidPathFor(path);
  writeFileSync(pidPath, `${process.pid}\n`, { mode: 0o644 });

  let closing: Promise<void> | undefined;
  return {
    path,
    pidPath,
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        // Node unlinks the socket file when it closes a unix server; check before and after so a
        // successor's socket is never removed.
        let ours = false;
        try {
          ours = statSync(path).ino === socketInode;
        } catch {
          ours = false;
        }
        server.close(() => {
          if (ours) unlinkIfExists(path);
          if (readPidFile(pidPath) === process.pid) unlinkIfExists(pidPath);
          resolve();
        });
        for (const socket of connections) socket.destroy();
      });
      return closing;
    },
  };
}

function listen(server: Server, path: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (error: Error): void => reject(error);
    server.once("error", onError);
    server.listen(path, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

function unlinkIfExists(path: string): void {
  try {
    unlinkSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
}

/** Reads request lines from one client and writes one response line for each, in order. */
function serveConnection(socket: Socket, handler: ControlHandler): void {
  socket.setEncoding("utf8");
  let buffered = "";
  let queue: Promise<void> = Promise.resolve();
  const respond = (response: ControlResponse): void => {
    if (!socket.destroyed && socket.writable) socket.write(`${JSON.stringify(response)}\n`);
  };
  socket.on("data", (chunk: string) => {
    buffered += chunk;
    let newline: number;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (line === "") continue;
      queue = queue.then(() => answer(line, handler).then(respond));
    }
    if (Buffer.byteLength(buffered) > MAX_REQUEST_BYTES) {
      buffered = "";
      queue = queue.then(() => {
        respond({ ok: false, error: `request longer than ${MAX_REQUEST_BYTES} bytes` });
        socket.end();
      });
    }
  });
  socket.on("error", () => socket.destroy());
}

async function answer(line: string, handler: ControlHandler): Promise<ControlResponse> {
  let decoded: unknown;
  try {
    decoded = JSON.parse(line);
  } catch {
    return { ok: false, error: "request is not valid JSON" };
  }
  const request = parseControlRequest(decoded);
  if (typeof request === "string") return { ok: false, error: request };
  if (request.cmd === "ping") return { ok: true, text: "pong", data: { pid: process.pid } };
  try {
    const response = await handler(request);
    return response.ok ? response : { ok: false, error: oneLine(response.error) };
  } catch (error) {
    return { ok: false, error: oneLine(error) };
  }
}

/**
 * Sends one request to the router at `path` and resolves with its response (an `ok: false`
 * response is a normal answer). Transport problems reject with a one-line ControlError.
 */
export function controlRequest(path: string, request: ControlRequest, timeoutMs = 5000): Promise<ControlResponse> {
  const namespace = namespaceOfSocket(path);
  return new Promise<ControlResponse>((resolve, reject) => {
    let settled = false;
    let received = "";
    const socket = createConnection(path);
    const finish = (error: ControlError | undefined, response?: ControlResponse): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error !== undefined) reject(error);
      else resolve(response!);
    };
    const timer = setTimeout(() => {
      finish(new ControlError(`router ${namespace} did not answer within ${formatSeconds(timeoutMs)} (${path})`, "ETIMEDOUT"));
    }, timeoutMs);

    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on("data", (chunk: string) => {
      received += chunk;
      const newline = received.indexOf("\n");
      if (newline < 0) {
        if (Buffer.byteLength(received) > 256 * 1024 * 1024) finish(new ControlError(`router ${namespace} sent an oversized response`, "EPROTO"));
        return;
      }
      const response = decodeResponse(received.slice(0, newline));
      if (response === undefined) finish(new ControlError(`router ${namespace} sent a response that is not qnat's protocol (${path})`, "EPROTO"));
      else finish(undefined, response);
    });
    socket.on("end", () => {
      finish(new ControlError(`router ${namespace} closed the control connection without answering`, "ECONNRESET"));
    });
    socket.on("error", (error: NodeJS.ErrnoException) => finish(connectError(error, path, namespace)));
  });
}

function decodeResponse(line: string): ControlResponse | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const response = value as Record<string, unknown>;
  if (response["ok"] === true) return { ok: true, text: typeof response["text"] === "string" ? response["text"] : undefined, data: response["data"] };
  if (response["ok"] === false) return { ok: false, error: typeof response["error"] === "string" ? response["error"] : "error without a message" };
  return undefined;
}

function connectError(error: NodeJS.ErrnoException, path: string, namespace: string): ControlError {
  switch (error.code) {
    case "ENOENT":
      return new ControlError(`no qnat router is running for namespace ${namespace} (no ${path})`, "ENOENT");
    case "ECONNREFUSED":
      return new ControlError(`no qnat router is running for namespace ${namespace} (stale socket ${path})`, "ECONNREFUSED");
    case "EACCES":
    case "EPERM":
      return new ControlError(`cannot connect to ${path}: permission denied (run as root)`, error.code);
    case "ECONNRESET":
    case "EPIPE":
      return new ControlError(`router ${namespace} closed the control connection without answering`, "ECONNRESET");
    default:
      return new ControlError(`cannot talk to router ${namespace} at ${path}: ${error.code ?? oneLine(error)}`, error.code);
  }
}

function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}
