/**
 * The traffic of the workers tests (test/e2e/workers*.test.ts), run as node scripts inside the
 * lab's namespaces: a UDP echo of the peer's address, and a bounded set of UDP flows; and the
 * count of TUN queues a router holds open.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readlinkSync } from "node:fs";

/** How long a script may take to say it is ready. */
const WAIT_MS = 10_000;

/** A UDP server on HOST:PORT that answers every datagram with the address and port it came from. */
export const UDP_WHO_AM_I = `
const socket = require("dgram").createSocket("udp4");
socket.on("message", (m, from) => socket.send(from.address + ":" + from.port, from.port, from.address));
socket.bind(Number(process.argv[2]), process.argv[1], () => console.log("ready"));
setTimeout(() => process.exit(0), 60000);`;

/**
 * FLOWS sockets bound to SOURCE, each sending PER_FLOW datagrams to DEST:PORT one after the other
 * (the next when the last was answered: at most FLOWS in flight, so no socket buffer overflows);
 * prints one JSON line: the datagrams sent and answered, and per local port the address:port the
 * server saw.
 */
export const UDP_FLOWS = `
const dgram = require("dgram");
const [flows, perFlow, source, dest, port] = process.argv.slice(1).map((v, i) => (i < 2 ? Number(v) : v));
const seen = {};
let sent = 0, answered = 0, bound = 0;
const sockets = [];
const done = () => { console.log(JSON.stringify({ sent, answered, seen })); process.exit(0); };
setTimeout(done, 8000);
const send = (s) => s.send("x", Number(port), dest, () => sent++);
for (let i = 0; i < flows; i++) {
  const s = dgram.createSocket("udp4");
  sockets.push(s);
  let mine = 0;
  s.on("message", (m) => {
    seen[s.address().port] = m.toString();
    answered++;
    if (++mine < perFlow) send(s);
    else if (answered === flows * perFlow) done();
  });
  s.bind(0, source, () => {
    if (++bound === flows) for (const t of sockets) send(t);
  });
}`;

/** Starts a node script in a namespace; resolves once it printed its first line (bounded). */
export function startIn(netns: string, script: string, args: readonly string[], children: ChildProcess[]): Promise<ChildProcess> {
  return new Promise((done, reject) => {
    const child = spawn("ip", ["netns", "exec", netns, process.execPath, "-e", script, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    const timer = setTimeout(() => reject(new Error(`script in ${netns} did not start`)), WAIT_MS);
    child.stdout!.once("data", () => {
      clearTimeout(timer);
      done(child);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`script in ${netns} exited (${code})`));
    });
  });
}

/** The TUN and TAP queues process `pid` holds open (its fds that are /dev/net/tun). */
export function tunQueuesOf(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).filter((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`) === "/dev/net/tun";
    } catch {
      return false; // closed between the listing and the readlink
    }
  }).length;
}
