/**
 * The running router's control socket: a unix stream socket at `/run/qnat/<namespace>.sock`
 * (directory overridable with QNAT_RUN_DIR), with a pid file beside it. `qnat show` and
 * `qnat trace --router` talk to it; `qnat run` refuses to start when another router already
 * answers on it. The socket is mode 0600, owned by the router's user (root), whatever the umask.
 *
 * Protocol: newline-delimited JSON. Each request line gets its answer, in order:
 *   {"cmd":"show","what":"ports"|"routes"|"rules"|"conntrack"|"stats"|"neigh","json":bool,"verbose":bool}
 *   {"cmd":"trace","packet":"qr-694450d6-f6 tcp 10.0.0.3:40000 > 8.8.8.8:53 syn","json":bool}
 *   {"cmd":"conntrack","op":"list"|"delete"|"flush","filter":{...}}   (conntrack-command.ts)
 *   {"cmd":"top","connections":N}   counters and a census for `qnat top` (top-view.ts), N <= 100
 *   {"cmd":"capture","ports":[...],"leg":"wire"|"mirror"|"both","count":N}   (capture.ts)
 *   {"cmd":"ping"}
 * ->{"ok":true,"text":"...","data":...} | {"ok":false,"error":"one line"}
 * `ping` is answered by the server itself with `data: { pid }`. A big answer (`show conntrack`)
 * comes in pieces: lines `{"ok":true,"more":true,"text":PIECE}`, then a last line without
 * `more` (`{"ok":true,"text":""}`, or `{"ok":false,...}` if it failed midway); the texts joined
 * are the answer. A capture answers one line, then the connection carries the pcapng stream
 * (binary) until the capture ends; the client half-closes its side to end it early.
 *
 * The router serves this socket on its packet thread, so nothing here may hold that thread for
 * long: a streamed answer is produced one piece (about a millisecond of work) per turn of the
 * event loop, written with backpressure (the next piece waits for the client to read), and
 * dropped as soon as the client goes away. Bounds (CONTROL_LIMITS): a request line of at most
 * 64 KiB (a longer one is refused and the connection closed), a few requests in flight per
 * client and in all (further ones get an error answer, in order), a bounded number of
 * connections; garbage gets one error line per request line.
 */
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { chmodSync, lstatSync, mkdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { ConntrackFilter } from "../conntrack/filter.js";
import { CONNTRACK_OPS, type ConntrackOp, parseConntrackFilter } from "./conntrack-command.js";
import { parseCaptureRequest, type CaptureRequest } from "./capture.js";

export const DEFAULT_RUN_DIR = "/run/qnat";
/** A request line longer than this is refused (and the connection closed). */
export const MAX_REQUEST_BYTES = 64 * 1024;

/** How much of the router one control client, and all of them, may hold. */
export interface ControlLimits {
  /** Bytes in one request line. */
  readonly requestBytes: number;
  /** Requests of one connection waiting for or receiving their answer. */
  readonly inFlightPerClient: number;
  /** The same, over all connections. */
  readonly inFlight: number;
  /** Request lines one connection may have queued (answered or refused in order); past this it is not read. */
  readonly queuedPerClient: number;
  /** Open connections; one more gets an error line and is closed. */
  readonly connections: number;
  /** A connection with nothing in flight that sends no complete request for this long is closed. */
  readonly idleMs: number;
}

export const CONTROL_LIMITS: ControlLimits = {
  requestBytes: MAX_REQUEST_BYTES,
  inFlightPerClient: 8,
  inFlight: 32,
  queuedPerClient: 64,
  connections: 64,
  idleMs: 60_000,
};
/** sockaddr_un.sun_path is 108 bytes including the NUL (include/uapi/linux/un.h). */
const MAX_SOCKET_PATH = 107;

export const SHOW_WHAT = ["ports", "routes", "rules", "conntrack", "stats", "neigh"] as const;
export type ShowWhat = (typeof SHOW_WHAT)[number];

export type ControlRequest =
  | { readonly cmd: "show"; readonly what: ShowWhat; readonly json?: boolean; readonly verbose?: boolean }
  | { readonly cmd: "trace"; readonly packet: string; readonly json?: boolean }
  | { readonly cmd: "conntrack"; readonly op: ConntrackOp; readonly filter: ConntrackFilter }
  | { readonly cmd: "ping" }
  | { readonly cmd: "top"; readonly connections: number }
  | CaptureRequest
  | LiveChangeRequest;

/** The most busiest connections one `top` request may ask for (census.ts MAX_BUSIEST). */
export const MAX_TOP_CONNECTIONS = 100;

/** Live changes (control/live-apply.ts): the text travels, so the router reads no client's file. */
export type LiveChangeRequest =
  | { readonly cmd: "apply"; readonly file: string; readonly text: string }
  | { readonly cmd: "rules"; readonly action: "save"; readonly counters: boolean }
  | { readonly cmd: "rules"; readonly action: "restore"; readonly file: string; readonly text: string };

export type ControlResponse =
  | { readonly ok: true; readonly text?: string; readonly data?: unknown }
  | { readonly ok: false; readonly error: string };

/** An answer given in pieces: `next()` returns the next piece of text, undefined after the last. */
export interface ControlPieces {
  next(): string | undefined;
}

/** A streamed answer (`show conntrack`): the server calls `pieces.next()` once per turn of the event loop. */
export interface ControlStream {
  readonly ok: true;
  readonly pieces: ControlPieces;
}

/**
 * An answer that takes the connection over (a capture): `text` is sent as the answer line, then
 * `takeover` has the socket until it resolves; the connection is closed after it.
 */
export interface ControlTakeover {
  readonly ok: true;
  readonly text: string;
  takeover(socket: Socket): Promise<void>;
}

export type ControlAnswer = ControlResponse | ControlStream | ControlTakeover;

export type ControlHandler = (request: ControlRequest) => Promise<ControlAnswer> | ControlAnswer;

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
    case "conntrack": {
      const op = request["op"];
      if (typeof op !== "string" || !(CONNTRACK_OPS as readonly string[]).includes(op)) return `conntrack op? expected one of ${CONNTRACK_OPS.join(", ")}`;
      const filter = parseConntrackFilter(request["filter"]);
      if (typeof filter === "string") return filter;
      return { cmd: "conntrack", op: op as ConntrackOp, filter };
    }
    case "top": {
      const connections = request["connections"] ?? 20;
      if (typeof connections !== "number" || !Number.isInteger(connections) || connections < 0 || connections > MAX_TOP_CONNECTIONS)
        return `top "connections" must be a whole number from 0 to ${MAX_TOP_CONNECTIONS}`;
      return { cmd: "top", connections };
    }
    case "apply":
    case "rules":
      return parseLiveChangeRequest(request);
    case "capture":
      return parseCaptureRequest(request);
    default:
      return `unknown command ${JSON.stringify(request["cmd"] ?? null)} (expected show, trace, conntrack, top, capture or ping)`;
  }
}

function parseLiveChangeRequest(request: Record<string, unknown>): LiveChangeRequest | string {
  const { cmd, action, file, text, counters } = request;
  if (cmd === "rules" && action === "save") {
    if (counters !== undefined && typeof counters !== "boolean") return `"counters" must be true or false`;
    return { cmd, action, counters: counters === true };
  }
  if (cmd === "rules" && action !== "restore") return `rules action must be "save" or "restore"`;
  if (typeof file !== "string" || typeof text !== "string") return `${String(cmd)} needs "file" and "text": a name and its text`;
  return cmd === "apply" ? { cmd, file, text } : { cmd: "rules", action: "restore", file, text };
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
export async function serveControl(path: string, handler: ControlHandler, limits: ControlLimits = CONTROL_LIMITS): Promise<ControlServer> {
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
  const load: ServerLoad = { inFlight: 0 };
  // allowHalfOpen: a client that sends its requests and then shuts down its side still gets
  // every answer; the connection ends when they are written.
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    if (connections.size >= limits.connections) {
      socket.on("error", () => socket.destroy());
      socket.end(`${JSON.stringify({ ok: false, error: `too many control connections (at most ${limits.connections})` })}\n`);
      return;
    }
    connections.add(socket);
    socket.on("close", () => connections.delete(socket));
    new ControlConnection(socket, handler, limits, load);
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

/**
 * Binds and listens with umask 0177, so the socket file is born mode 0600: a chmod after bind()
 * would leave a moment in which anyone could connect under a umask of 000. Node binds a unix
 * socket synchronously inside listen() (net.js setupListenHandle), so the umask is back before
 * anything else runs; the chmod afterwards only restates it.
 */
function listen(server: Server, path: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (error: Error): void => reject(error);
    server.once("error", onError);
    const saved = process.umask(0o177);
    try {
      server.listen(path, () => {
        server.off("error", onError);
        try {
          chmodSync(path, 0o600);
          resolve();
        } catch (error) {
          server.close();
          reject(error);
        }
      });
    } finally {
      process.umask(saved);
    }
  });
}

function unlinkIfExists(path: string): void {
  try {
    unlinkSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
}

/** Requests in flight over all connections of one server. */
interface ServerLoad {
  inFlight: number;
}

/** One request line of a connection, waiting for its turn; `refusal` answers it without the handler. */
interface QueuedRequest {
  readonly line: string;
  readonly refusal: string | undefined;
  /** Counted in the connection's and the server's in-flight numbers. */
  readonly counted: boolean;
  /** The connection is closed once this one is answered. */
  readonly last: boolean;
}

/** Yields to the event loop: setImmediate runs after the poll phase, so the legs' reads run first. */
function nextTurn(): Promise<void> {
  return new Promise<void>((resolve) => setImmediate(resolve));
}

/**
 * One client: reads request lines, answers them one at a time in order (a streamed answer piece
 * by piece), and enforces the limits. Nothing it does throws out of an event handler: a write
 * error or a vanished client just ends the connection and releases what it held.
 */
class ControlConnection {
  private input = "";
  private readonly queue: QueuedRequest[] = [];
  private inFlight = 0;
  private working = false;
  /** No more requests are read (a request was too long, or the client shut down its side). */
  private inputDone = false;
  /** The client went away (or the connection was destroyed): nothing more is written. */
  private gone = false;
  private drainWaiter: (() => void) | undefined;

  constructor(
    private readonly socket: Socket,
    private readonly handler: ControlHandler,
    private readonly limits: ControlLimits,
    private readonly load: ServerLoad,
  ) {
    socket.setEncoding("utf8");
    socket.setTimeout(limits.idleMs);
    socket.on("timeout", () => {
      if (this.queue.length === 0) socket.destroy();
    });
    socket.on("data", (chunk: string) => this.receive(chunk));
    socket.on("end", () => {
      this.takeLines();
      this.inputDone = true;
      this.input = "";
      if (!this.working) this.finish();
    });
    socket.on("drain", () => this.wakeWriter());
    socket.on("error", () => socket.destroy());
    socket.on("close", () => this.vanish());
  }

  private receive(chunk: string): void {
    if (this.inputDone) return;
    this.input += chunk;
    this.takeLines();
    if (!this.working && this.queue.length > 0) this.work().catch(() => this.socket.destroy());
  }

  /** Turns complete input lines into queued requests, as long as the queue has room. */
  private takeLines(): void {
    let newline: number;
    while (!this.inputDone && this.queue.length < this.limits.queuedPerClient && (newline = this.input.indexOf("\n")) >= 0) {
      const line = this.input.slice(0, newline);
      this.input = this.input.slice(newline + 1);
      if (Buffer.byteLength(line) > this.limits.requestBytes) {
        this.refuseTooLong();
        return;
      }
      if (line.trim() !== "") this.enqueue(line.trim());
    }
    // A partial line past the limit is refused now; complete lines waiting for room in the
    // queue are not a long request.
    if (!this.inputDone && this.input.indexOf("\n") < 0 && Buffer.byteLength(this.input) > this.limits.requestBytes) {
      this.refuseTooLong();
      return;
    }
    // Backpressure on a client that sends faster than it is answered: stop reading it.
    if (this.queue.length >= this.limits.queuedPerClient) this.socket.pause();
    else if (this.socket.isPaused()) this.socket.resume();
  }

  private refuseTooLong(): void {
    this.input = "";
    this.inputDone = true;
    this.queue.push({ line: "", refusal: `request longer than ${this.limits.requestBytes} bytes`, counted: false, last: true });
  }

  private enqueue(line: string): void {
    if (this.inFlight >= this.limits.inFlightPerClient) {
      this.queue.push({ line, refusal: `too many requests in flight on this connection (at most ${this.limits.inFlightPerClient})`, counted: false, last: false });
    } else if (this.load.inFlight >= this.limits.inFlight) {
      this.queue.push({ line, refusal: `router busy: too many control requests in flight (at most ${this.limits.inFlight})`, counted: false, last: false });
    } else {
      this.inFlight++;
      this.load.inFlight++;
      this.queue.push({ line, refusal: undefined, counted: true, last: false });
    }
  }

  private release(request: QueuedRequest): void {
    if (!request.counted) return;
    this.inFlight--;
    this.load.inFlight--;
  }

  /** Answers the queue in order, one request at a time. */
  private async work(): Promise<void> {
    this.working = true;
    this.socket.setTimeout(0);
    try {
      while (this.queue.length > 0 && !this.gone) {
        const request = this.queue[0]!;
        let handedOver = false;
        try {
          if (request.refusal !== undefined) this.send({ ok: false, error: request.refusal });
          else handedOver = await this.answerOne(request.line);
        } finally {
          // vanish() may have emptied the queue and released everything already.
          if (this.queue[0] === request) {
            this.queue.shift();
            this.release(request);
          }
        }
        if (request.last || handedOver) {
          this.socket.end();
          return;
        }
        if (!this.inputDone) this.takeLines();
      }
    } finally {
      this.working = false;
      if (!this.gone) this.socket.setTimeout(this.limits.idleMs);
    }
    this.finish();
  }

  /** Answers one request; true when the answer took the connection over (it is then closed). */
  private async answerOne(line: string): Promise<boolean> {
    const reply = await answer(line, this.handler);
    if ("takeover" in reply) {
      this.send({ ok: true, text: reply.text });
      // Queued requests are not answered on a connection that carries a capture.
      this.inputDone = true;
      await reply.takeover(this.socket);
      return true;
    }
    if (!("pieces" in reply)) {
      this.send(reply);
      return false;
    }
    // A streamed answer: one piece per turn of the event loop, and only when the client has
    // read the previous ones; a client that went away stops the listing.
    for (;;) {
      if (this.gone) return false;
      let piece: string | undefined;
      try {
        piece = reply.pieces.next();
      } catch (error) {
        this.send({ ok: false, error: oneLine(error) });
        return false;
      }
      if (piece === undefined) {
        this.send({ ok: true, text: "" });
        return false;
      }
      if (!this.send({ ok: true, more: true, text: piece })) await this.drained();
      await nextTurn();
    }
  }

  /** Writes one line; false when the socket's buffer is full (wait for `drained`). */
  private send(message: ControlResponse | { ok: true; more: true; text: string }): boolean {
    if (this.gone || this.socket.destroyed || !this.socket.writable) return true;
    let line: string;
    try {
      line = JSON.stringify(message);
    } catch (error) {
      line = JSON.stringify({ ok: false, error: `the answer cannot be sent: ${oneLine(error)}` });
    }
    return this.socket.write(`${line}\n`);
  }

  private drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      if (this.gone) resolve();
      else this.drainWaiter = resolve;
    });
  }

  private wakeWriter(): void {
    const waiter = this.drainWaiter;
    this.drainWaiter = undefined;
    waiter?.();
  }

  /** Input ended and every answer is written: close our side too. */
  private finish(): void {
    if (this.inputDone && this.queue.length === 0 && !this.gone) this.socket.end();
  }

  /** The connection closed: forget queued requests (the one being answered stops at its next piece). */
  private vanish(): void {
    if (this.gone) return;
    this.gone = true;
    const waiting = this.working ? this.queue.splice(1) : this.queue.splice(0);
    for (const request of waiting) this.release(request);
    this.wakeWriter();
  }
}

async function answer(line: string, handler: ControlHandler): Promise<ControlAnswer> {
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
 * response is a normal answer). A streamed answer's pieces go to `onText` as they arrive (the
 * resolved response then has no text), or are joined into the response's text. `timeoutMs`
 * bounds the silence before the first line and between two lines, not the whole answer.
 * Transport problems reject with a one-line ControlError.
 */
export function controlRequest(
  path: string,
  request: ControlRequest,
  timeoutMs = 5000,
  onText?: (text: string) => void,
): Promise<ControlResponse> {
  const namespace = namespaceOfSocket(path);
  return new Promise<ControlResponse>((resolve, reject) => {
    let settled = false;
    let received = "";
    const pieces: string[] = [];
    const socket = createConnection(path);
    const finish = (error: ControlError | undefined, response?: ControlResponse): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error !== undefined) reject(error);
      else resolve(response!);
    };
    const silence = (): ControlError =>
      new ControlError(`router ${namespace} did not answer within ${formatSeconds(timeoutMs)} (${path})`, "ETIMEDOUT");
    const timer = setTimeout(() => finish(silence()), timeoutMs);

    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on("data", (chunk: string) => {
      // Only the new chunk is searched for the end of a line: a long line arrives in many chunks.
      let newline = chunk.indexOf("\n");
      if (newline >= 0) newline += received.length;
      received += chunk;
      timer.refresh();
      for (; !settled && newline >= 0; newline = received.indexOf("\n")) {
        const line = decodeResponse(received.slice(0, newline));
        received = received.slice(newline + 1);
        if (line === undefined) {
          finish(new ControlError(`router ${namespace} sent a response that is not qnat's protocol (${path})`, "EPROTO"));
        } else if (line.more) {
          if (onText !== undefined) onText(line.text);
          else pieces.push(line.text);
        } else if (!line.response.ok || pieces.length === 0) {
          finish(undefined, line.response);
        } else {
          pieces.push(line.response.text ?? "");
          finish(undefined, { ...line.response, text: pieces.join("") });
        }
      }
      if (!settled && received.length > MAX_RESPONSE_LINE_CHARS) {
        finish(new ControlError(`router ${namespace} sent an oversized response`, "EPROTO"));
      }
    });
    socket.on("end", () => {
      finish(new ControlError(`router ${namespace} closed the control connection without answering`, "ECONNRESET"));
    });
    socket.on("error", (error: NodeJS.ErrnoException) => finish(connectError(error, path, namespace)));
  });
}

/** The longest response line a client accepts (a whole answer, or one piece of a streamed one). */
const MAX_RESPONSE_LINE_CHARS = 256 * 1024 * 1024;

type ResponseLine = { readonly more: true; readonly text: string } | { readonly more: false; readonly response: ControlResponse };

function decodeResponse(line: string): ResponseLine | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const response = value as Record<string, unknown>;
  const text = typeof response["text"] === "string" ? response["text"] : undefined;
  if (response["ok"] === true && response["more"] === true) return text === undefined ? undefined : { more: true, text };
  if (response["ok"] === true) return { more: false, response: { ok: true, text, data: response["data"] } };
  if (response["ok"] === false) {
    return { more: false, response: { ok: false, error: typeof response["error"] === "string" ? response["error"] : "error without a message" } };
  }
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
