/**
 * The end-to-end benches' traffic tools: a command in a lab namespace with a hard time limit,
 * and one iperf3 test (a one-shot server, a client, the client's JSON). Every run is bounded:
 * `timeout -k 2 SECONDS` around the tool, the tool's own duration inside it.
 */
import { spawn } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";

/** Slack on top of a tool's own duration before it is killed. */
export const SLACK_MS = 15_000;

/** Runs a command inside a namespace, killed after `limitMs`; resolves with stdout (rejects on failure). */
export function inNs(netns: string, command: string, args: readonly string[], limitMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn("ip", ["netns", "exec", netns, "timeout", "-k", "2", String(Math.ceil(limitMs / 1000)), command, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout!.on("data", (c: Buffer) => (out += c.toString()));
    child.stderr!.on("data", (c: Buffer) => (err += c.toString()));
    child.once("error", reject);
    child.once("exit", (code) => {
      if (code === 0) resolve(out);
      else reject(new Error(`${command} ${args.join(" ")} in ${netns}: exit ${code}: ${(err || out).trim().split("\n").slice(-3).join(" | ")}`));
    });
  });
}

export interface IperfJson {
  end: {
    sum_sent?: { bits_per_second: number; retransmits?: number };
    sum_received?: { bits_per_second: number };
    sum?: { packets: number; lost_packets: number; seconds: number; lost_percent: number };
  };
}

/** Where an iperf3 test runs: the server bound to `serverAddress` in `serverNs`, the client from `clientAddress` in `clientNs`. */
export interface IperfPath {
  readonly serverNs: string;
  readonly serverAddress: string;
  readonly clientNs: string;
  readonly clientAddress: string;
}

/** One iperf3 test on `path` (port `port`, `seconds` long); the client's JSON. */
export async function iperf3(path: IperfPath, port: number, clientArgs: readonly string[], seconds: number): Promise<IperfJson> {
  const limit = seconds * 1000 + SLACK_MS;
  const server = inNs(path.serverNs, "iperf3", ["-s", "-1", "-B", path.serverAddress, "-p", String(port)], limit + 5000).catch(() => "");
  await sleep(300);
  let json: string;
  try {
    json = await inNs(path.clientNs, "iperf3", ["-c", path.serverAddress, "-B", path.clientAddress, "-p", String(port), "-t", String(seconds), "-J", ...clientArgs], limit);
  } finally {
    await server;
  }
  return JSON.parse(json) as IperfJson;
}

/** UDP packets/s that arrived (iperf3's end sum: sent minus lost, over its seconds). */
export function udpReceivedPerSecond(result: IperfJson): number {
  const sum = result.end.sum!;
  return (sum.packets - sum.lost_packets) / sum.seconds;
}
