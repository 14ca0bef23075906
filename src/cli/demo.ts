/**
 * `qnat demo [CONFIG]` (what `sudo npm start` runs after `lab up`): a short guided tour of the
 * seed's router for the reader to compare with the article. It prints the router namespace's
 * `ip addr` and `ip route`, qnat's NAT rules, then real traffic through qnat (ping and HTTP from
 * 10.0.0.3 and 10.0.0.2 to the outside, HTTP from the outside to the floating IP, the metadata
 * fetch) and the conntrack table. Every command is bounded in time; the servers it starts are
 * stopped at the end. The lab stays up for exploring.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { formatIpv4 } from "../core/addr.js";
import { loadConfig, type RouterConfig } from "../config/config.js";
import { netnsExecAsync } from "../io/netns.js";
import { controlRequest, controlSocketPath } from "../control/socket.js";
import { labUp } from "../control/lab.js";
import { OperationalError } from "./errors.js";

type Out = (text: string) => void;

/** A tiny HTTP server that tells each client the address it saw (run with `node -e`). */
const WHO_AM_I_SERVER = `
const [host, port, name] = process.argv.slice(1);
require("http").createServer((req, res) => {
  const seen = (req.socket.remoteAddress || "").replace(/^::ffff:/, "");
  res.end(name + " saw your request come from " + seen + "\\n");
}).listen(Number(port), host, () => console.log("ready"));
setTimeout(() => process.exit(0), 120000);
`;
const SERVER_START_LIMIT_MS = 5000;
const HTTP_PORT = "8080";

function firstAddress(config: RouterConfig, namespace: string, loopback: boolean): string | undefined {
  const host = config.lab.find((h) => h.namespace === namespace);
  const cidr = loopback ? (host?.loopback[0] ?? host?.addresses[0]) : host?.addresses[0];
  return cidr === undefined ? undefined : formatIpv4(cidr.addr);
}

export async function runDemo(configPath: string, out: Out): Promise<number> {
  const config = loadConfig(configPath);
  const router = config.namespace;
  const [tenant, external] = [config.lab[0]?.namespace, config.lab[1]?.namespace];
  const tenantHost = config.lab[0];
  if (tenant === undefined || external === undefined || tenantHost === undefined || tenantHost.addresses.length < 2) {
    throw new OperationalError(`the guided demo follows the seed's lab (two tenant addresses, one external host); ${configPath} has another shape`);
  }
  const fixedIp = formatIpv4(tenantHost.addresses[0]!.addr); // 10.0.0.2, has the floating IP
  const otherIp = formatIpv4(tenantHost.addresses[1]!.addr); // 10.0.0.3
  const outside = firstAddress(config, external, true)!; // 203.0.113.10
  const gatewayPort = config.ports.find((p) => p.wire.namespace === external)!;
  const floating = gatewayPort.addresses.find((a) => a.prefixLength === 32);
  const floatingIp = floating === undefined ? formatIpv4(gatewayPort.addresses[0]!.addr) : formatIpv4(floating.addr);

  const heading = (text: string): void => out(`\n=== ${text}\n`);
  const show = async (netns: string, command: string, args: string[]): Promise<string> => {
    out(`$ ip netns exec ${netns} ${[command, ...args].join(" ")}\n`);
    try {
      const text = await netnsExecAsync(netns, command, args, { timeoutMs: 10_000 });
      out(text.endsWith("\n") || text === "" ? text : `${text}\n`);
      return text;
    } catch (error) {
      out(`(failed: ${(error as Error).message.split("\n")[0]})\n`);
      return "";
    }
  };
  const qnatShow = async (what: "rules" | "conntrack"): Promise<void> => {
    out(`$ qnat show ${what}\n`);
    const response = await controlRequest(controlSocketPath(router), { cmd: "show", what });
    out(response.ok ? (response.text ?? "") : `(failed: ${response.error})\n`);
  };

  heading("qnat lab up: the seed's router with its two networks");
  await labUp(configPath, out);

  heading(`the router namespace, as in the article (compare with its "ip addr" and "ip route")`);
  await show(router, "ip", ["addr"]);
  await show(router, "ip", ["route"]);
  out("(the kernel there has ip_forward=0: it is only the router's own host; qnat forwards)\n");

  heading("qnat's NAT rules: the L3 agent's iptables -t nat -S, verbatim");
  await qnatShow("rules");

  const servers: ChildProcess[] = [];
  try {
    heading(`servers: HTTP on ${external} (${outside}:${HTTP_PORT}) and on the VM ${fixedIp}:${HTTP_PORT} in ${tenant}`);
    servers.push(await startServer(external, "0.0.0.0", `the outside (${external})`));
    servers.push(await startServer(tenant, fixedIp, `the VM ${fixedIp}`));
    out("(each answers with the source address it saw)\n");

    heading(`${otherIp} (no floating IP) goes out: SNAT to the router's address`);
    await show(tenant, "ping", ["-c", "2", "-W", "1", "-I", otherIp, outside]);
    await show(tenant, "curl", ["-s", "-m", "5", "--interface", otherIp, `http://${outside}:${HTTP_PORT}/`]);

    heading(`${fixedIp} (floating IP ${floatingIp}) goes out: SNAT to its floating IP`);
    await show(tenant, "ping", ["-c", "2", "-W", "1", "-I", fixedIp, outside]);
    await show(tenant, "curl", ["-s", "-m", "5", "--interface", fixedIp, `http://${outside}:${HTTP_PORT}/`]);

    heading(`the outside connects to the floating IP ${floatingIp}: DNAT to ${fixedIp}`);
    await show(external, "curl", ["-s", "-m", "5", `http://${floatingIp}:${HTTP_PORT}/`]);

    if (config.metadata !== undefined) {
      heading(`${fixedIp} asks the metadata service: REDIRECT to qnat's proxy on port ${config.metadata.port}`);
      await show(tenant, "curl", ["-s", "-m", "5", "--interface", fixedIp, "http://169.254.169.254/latest/meta-data/instance-id"]);
      out("\n");
    }

    heading("the connections qnat tracked (conntrack -L format: the NAT shows in the reply tuple)");
    await qnatShow("conntrack");
  } finally {
    for (const server of servers) server.kill("SIGKILL");
  }

  heading("explore further");
  out(
    [
      "  node dist/src/cli/main.js show ports|routes|rules|conntrack|stats [--json]",
      `  node dist/src/cli/main.js trace --router ${router} 'qr-694450d6-f6 tcp ${otherIp}:40000 > ${outside}:80 syn'`,
      `  ip netns exec ${tenant} ping ${outside}        (also: traceroute -n ${outside})`,
      `  ip netns exec ${router} ip addr                 (the router's own host)`,
      "take the lab down:",
      "  sudo npm run lab:down      (or: node dist/src/cli/main.js lab down)",
      "",
    ].join("\n"),
  );
  return 0;
}

/** Starts the who-am-I server in `netns`; resolves once it listens (bounded). */
function startServer(netns: string, host: string, name: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn("ip", ["netns", "exec", netns, process.execPath, "-e", WHO_AM_I_SERVER, host, HTTP_PORT, name], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let errors = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new OperationalError(`the demo's HTTP server in ${netns} did not start: ${errors.split("\n")[0] ?? ""}`));
    }, SERVER_START_LIMIT_MS);
    child.stderr!.on("data", (chunk: Buffer) => (errors += chunk.toString()));
    child.stdout!.once("data", () => {
      clearTimeout(timer);
      resolve(child);
    });
    child.once("exit", () => {
      clearTimeout(timer);
      reject(new OperationalError(`the demo's HTTP server in ${netns} exited: ${errors.trim().split("\n").pop() ?? ""}`));
    });
  });
}
