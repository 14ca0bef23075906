/**
 * Many UDP connections through a lab router, quickly, by real packets: a node script run in a
 * host's namespace sends one datagram from each of `sourcePorts` on `source` to each port
 * 1..`perPort` of `target` (a connection each, SNATed on the way out), paced in batches of 64
 * per source port per millisecond, bounded by count and by a 60 s deadline. Sending the same
 * datagrams again refreshes the same connections. Used by bench/control-stall.ts and the
 * control-plane namespace test.
 */
import { spawn } from "node:child_process";

const SCRIPT = `
const dgram = require("node:dgram");
const [source, target, perPort, ...ports] = process.argv.slice(1);
const sockets = ports.map((port) => { const s = dgram.createSocket("udp4"); s.bind(Number(port), source); return s; });
const payload = Buffer.from("x");
const deadline = Date.now() + 60000;
let port = 1;
function batch() {
  for (let i = 0; i < 64 && port <= Number(perPort); i++, port++) for (const s of sockets) s.send(payload, port, target);
  if (port <= Number(perPort) && Date.now() < deadline) setTimeout(batch, 1);
  else setTimeout(() => { for (const s of sockets) s.close(); }, 200);
}
Promise.all(sockets.map((s) => new Promise((r) => s.once("listening", r)))).then(batch);
`;

/** Runs the sender in `namespace` to completion (killed after 90 s at the latest). */
export function sendUdpFlows(namespace: string, source: string, target: string, perPort: number, sourcePorts: readonly number[]): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const args = ["netns", "exec", namespace, process.execPath, "-e", SCRIPT, source, target, String(perPort), ...sourcePorts.map(String)];
    const child = spawn("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
    child.on("error", reject);
    child.on("exit", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`UDP sender in ${namespace} exited ${code}: ${stderr.trim().split("\n").pop() ?? ""}`));
    });
  });
}
