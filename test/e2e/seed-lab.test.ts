/**
 * The seed's router lab, end to end, in real namespaces (root only; CI runs as root): `qnat lab up`
 * builds qrouter-40fff075-..., qnat-tenant and qnat-external, and real programs (ping, traceroute,
 * curl, node servers) talk through qnat as the article's VMs talk through Neutron's router.
 *
 * One file on purpose: everything here shares the seed's fixed namespace names, so it runs in
 * order. If those namespaces exist before the test starts, it fails without touching them.
 * `lab down` always runs afterwards. Every command is bounded in time.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { isRoot as runningAsRoot } from "../../src/io/netns.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/seed-lab.test.ts: not root, so the end-to-end lab tests are skipped (CI runs them as root)");

const ROOT = resolve(import.meta.dirname, "../..");
const CLI = join(ROOT, "dist/src/cli/main.js");
const SEED = join(ROOT, "examples/seed.yaml");
const ROUTER_NS = "qrouter-40fff075-d3a2-477b-942c-6b1adb42e35e";
const TENANT = "qnat-tenant";
const EXTERNAL = "qnat-external";
const SEED_NAMESPACES = [ROUTER_NS, TENANT, EXTERNAL];
const COMMAND_LIMIT_MS = 30_000;

interface Result {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(command: string, args: readonly string[], options: { user?: string; timeoutMs?: number } = {}): Result {
  const [file, argv] = options.user === undefined ? [command, args] : ["runuser", ["-u", options.user, "--", command, ...args]];
  const result = spawnSync(file, argv, { encoding: "utf8", timeout: options.timeoutMs ?? COMMAND_LIMIT_MS });
  return { code: result.status, stdout: result.stdout ?? "", stderr: result.stderr ?? "" };
}

function qnat(args: readonly string[], options: { user?: string; timeoutMs?: number } = {}): Result {
  return run(process.execPath, [CLI, ...args], options);
}

function inNs(netns: string, command: string, args: readonly string[], timeoutMs = COMMAND_LIMIT_MS): Result {
  return run("ip", ["netns", "exec", netns, command, ...args], { timeoutMs });
}

function namespaces(): string[] {
  return run("ip", ["netns", "list"])
    .stdout.split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((name) => name !== "");
}

/** Collapses runs of blanks and drops trailing ones, so iproute2 versions compare equal. */
function normalized(text: string): string[] {
  return text
    .split("\n")
    .map((line) => line.replace(/\s+/g, " ").trim())
    .filter((line) => line !== "");
}

const WHO_AM_I = `
const [host, port] = process.argv.slice(1);
require("http").createServer((req, res) => res.end("seen " + req.socket.remoteAddress.replace(/^::ffff:/, "") + "\\n"))
  .listen(Number(port), host, () => console.log("ready"));
setTimeout(() => process.exit(0), 60000);`;

const SHA256_SINK = `
const hash = require("crypto").createHash("sha256");
let bytes = 0;
require("net").createServer((socket) => {
  socket.on("data", (chunk) => { hash.update(chunk); bytes += chunk.length; });
  socket.on("end", () => { console.log(bytes + " " + hash.digest("hex")); process.exit(0); });
}).listen(Number(process.argv[1]), () => console.log("ready"));
setTimeout(() => process.exit(1), 60000);`;

/** Starts a node script in a namespace; resolves once it printed "ready" (bounded). */
function startIn(netns: string, script: string, args: readonly string[], children: ChildProcess[]): Promise<ChildProcess> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn("ip", ["netns", "exec", netns, process.execPath, "-e", script, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    const timer = setTimeout(() => reject(new Error(`server in ${netns} did not start`)), 10_000);
    child.stdout!.once("data", () => {
      clearTimeout(timer);
      resolvePromise(child);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server in ${netns} exited (${code})`));
    });
  });
}

/** The next lines a child prints after "ready" (bounded). */
function nextOutput(child: ChildProcess, limitMs = 20_000): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    let text = "";
    const timer = setTimeout(() => reject(new Error(`no output within ${limitMs} ms`)), limitMs);
    child.stdout!.on("data", (chunk: Buffer) => {
      text += chunk.toString();
      if (text.includes("\n")) {
        clearTimeout(timer);
        resolvePromise(text.trim());
      }
    });
  });
}

describe.skipIf(!isRoot)("the seed's router lab, through qnat", () => {
  let labIsOurs = false;
  const children: ChildProcess[] = [];
  const scratch = mkdtempSync(join(tmpdir(), "qnat-e2e-"));

  beforeAll(() => {
    const present = SEED_NAMESPACES.filter((name) => namespaces().includes(name));
    if (present.length > 0) {
      throw new Error(`namespaces ${present.join(", ")} already exist (a lab left up?): the e2e tests do not touch them; run 'qnat lab down' first`);
    }
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
    labIsOurs = true;
    const up = qnat(["lab", "up", SEED], { timeoutMs: 60_000 });
    expect(up.stderr).toBe("");
    expect(up.code).toBe(0);
    expect(up.stdout).toContain(`router ${ROUTER_NS}`);
  }, 90_000);

  afterAll(() => {
    for (const child of children) child.kill("SIGKILL");
    rmSync(scratch, { recursive: true, force: true });
    if (!labIsOurs) return;
    const down = qnat(["lab", "down", SEED], { timeoutMs: 60_000 });
    expect(down.code).toBe(0);
    expect(namespaces().filter((name) => SEED_NAMESPACES.includes(name))).toEqual([]);
  }, 90_000);

  it("shows the seed's picture in the router namespace: two interfaces, the seed's addresses, three routes", () => {
    const addr = normalized(inNs(ROUTER_NS, "ip", ["addr"]).stdout);
    expect(addr).toContain("inet 10.0.0.1/24 brd 10.0.0.255 scope global qr-694450d6-f6");
    expect(addr).toContain("inet 9.186.100.2/24 brd 9.186.100.255 scope global qg-e76de35e-90");
    expect(addr).toContain("inet 9.186.100.129/32 brd 9.186.100.129 scope global qg-e76de35e-90");
    expect(addr.filter((line) => /^\d+: /.test(line)).map((line) => line.split(":")[1]!.trim())).toEqual([
      "lo",
      "qr-694450d6-f6",
      "qg-e76de35e-90",
    ]);
    expect(normalized(inNs(ROUTER_NS, "ip", ["route"]).stdout)).toEqual([
      "default via 9.186.100.1 dev qg-e76de35e-90",
      "9.186.100.0/24 dev qg-e76de35e-90 proto kernel scope link src 9.186.100.2",
      "10.0.0.0/24 dev qr-694450d6-f6 proto kernel scope link src 10.0.0.1",
    ]);
    expect(inNs(ROUTER_NS, "cat", ["/proc/sys/net/ipv4/ip_forward"]).stdout.trim()).toBe("0");
  });

  it("10.0.0.3 reaches the outside as 9.186.100.2, and 10.0.0.2 as its floating IP 9.186.100.129", async () => {
    await startIn(EXTERNAL, WHO_AM_I, ["0.0.0.0", "8080"], children);
    const from3 = inNs(TENANT, "curl", ["-s", "-m", "5", "--interface", "10.0.0.3", "http://203.0.113.10:8080/"]);
    expect(from3.stdout.trim()).toBe("seen 9.186.100.2");
    const from2 = inNs(TENANT, "curl", ["-s", "-m", "5", "--interface", "10.0.0.2", "http://9.186.100.1:8080/"]);
    expect(from2.stdout.trim()).toBe("seen 9.186.100.129");
  });

  it("a client outside that connects to 9.186.100.129 is answered by the server on 10.0.0.2", async () => {
    await startIn(TENANT, WHO_AM_I, ["10.0.0.2", "8081"], children);
    const reply = inNs(EXTERNAL, "curl", ["-s", "-m", "5", "http://9.186.100.129:8081/"]);
    expect(reply.stdout.trim()).toBe("seen 9.186.100.1");
  });

  it("the router's own host reaches the floating IP through OUTPUT DNAT", async () => {
    const reply = inNs(ROUTER_NS, "curl", ["-s", "-m", "5", "http://9.186.100.129:8081/"]);
    // Linux: the router host picks the local destination itself as source; no SNAT rule applies.
    expect(reply.stdout.trim()).toBe("seen 9.186.100.129");
  });

  it("10.0.0.2 fetches its instance id from 169.254.169.254 (REDIRECT to the metadata proxy)", () => {
    const id = inNs(TENANT, "curl", ["-s", "-m", "5", "--interface", "10.0.0.2", "http://169.254.169.254/latest/meta-data/instance-id"]);
    expect(id.stdout.trim()).toBe("i-00000001");
  });

  it("the metadata port is private: 10.0.0.3 connecting straight to 10.0.0.1:9697 gets no answer", () => {
    // The SYN is dropped before the router's host sees it (no RST, no reply): curl's timeout, 28.
    const direct = inNs(TENANT, "curl", ["-s", "-m", "2", "--interface", "10.0.0.3", "http://10.0.0.1:9697/latest/meta-data/instance-id"], 10_000);
    expect(direct.code).toBe(28);
    expect(direct.stdout).toBe("");
  });

  it("ping and traceroute from the tenant behave as through a Linux router", () => {
    const router = inNs(TENANT, "ping", ["-c", "2", "-W", "1", "10.0.0.1"]);
    expect(router.stdout).toMatch(/2 packets transmitted, 2 received/);
    const across = inNs(TENANT, "ping", ["-c", "2", "-W", "1", "203.0.113.10"]);
    expect(across.stdout).toMatch(/2 packets transmitted, 2 received/);
    expect(across.stdout).toMatch(/ttl=63/); // one router hop
    const trace = inNs(TENANT, "traceroute", ["-n", "-w", "1", "-q", "1", "-m", "5", "203.0.113.10"], 30_000);
    const hops = trace.stdout
      .split("\n")
      .slice(1)
      .map((line) => line.trim().split(/\s+/).slice(0, 2).join(" "))
      .filter((line) => line !== "");
    expect(hops).toEqual(["1 10.0.0.1", "2 203.0.113.10"]);
  });

  it("a TCP transfer of several MB arrives intact (sha256 at both ends)", async () => {
    const blob = randomBytes(6 * 1024 * 1024);
    const file = join(scratch, "blob.bin");
    writeFileSync(file, blob);
    const sink = await startIn(EXTERNAL, SHA256_SINK, ["9000"], children);
    const received = nextOutput(sink);
    const send = inNs(
      TENANT,
      process.execPath,
      ["-e", `const s = require("net").connect(9000, "203.0.113.10", () => s.end(require("fs").readFileSync(${JSON.stringify(file)})));`],
      30_000,
    );
    expect(send.code).toBe(0);
    expect(await received).toBe(`${blob.length} ${createHash("sha256").update(blob).digest("hex")}`);
  });

  it("qnat show conntrack lists the flows in conntrack -L format, the NAT in the reply tuple", () => {
    const table = qnat(["show", "conntrack", "--router", ROUTER_NS]);
    expect(table.code).toBe(0);
    const lines = table.stdout.split("\n");
    const snat = lines.find((l) => /^tcp\s+6 .*src=10\.0\.0\.3 dst=203\.0\.113\.10 .*dport=8080 src=203\.0\.113\.10 dst=9\.186\.100\.2 /.test(l));
    expect(snat).toBeDefined();
    const floatingOut = lines.find((l) => /src=10\.0\.0\.2 dst=9\.186\.100\.1 .* src=9\.186\.100\.1 dst=9\.186\.100\.129 /.test(l));
    expect(floatingOut).toBeDefined();
    const dnat = lines.find((l) => /src=9\.186\.100\.1 dst=9\.186\.100\.129 .* src=10\.0\.0\.2 dst=9\.186\.100\.1 /.test(l));
    expect(dnat).toBeDefined();
    const redirect = lines.find((l) => /dst=169\.254\.169\.254 .*dport=80 src=10\.0\.0\.1 dst=10\.0\.0\.2 sport=9697 /.test(l));
    expect(redirect).toBeDefined();
  });

  it("lab up a second time says it is already up and still forwards", () => {
    const again = qnat(["lab", "up", SEED], { timeoutMs: 60_000 });
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("is already up");
  });

  describe("bad input: one line, a non-zero exit, nothing half-built", () => {
    const badConfig = (name: string, edit: (text: string) => string): string => {
      // Other namespace names than the seed's, so a half-built router would show.
      const text = edit(readFileSync(SEED, "utf8"))
        .replace("id: 40fff075-d3a2-477b-942c-6b1adb42e35e", "id: qnt-e2e-bad")
        .replaceAll("qnat-tenant", "qnt-e2e-tenant")
        .replaceAll("qnat-external", "qnt-e2e-external");
      const path = join(scratch, name);
      writeFileSync(path, text);
      return path;
    };
    const expectOneLineFailure = (result: Result, code: number, pattern: RegExp): void => {
      expect(result.code).toBe(code);
      expect(result.stdout).toBe("");
      expect(result.stderr.trimEnd().split("\n")).toHaveLength(1);
      expect(result.stderr).toMatch(pattern);
    };

    it("a config with an error", () => {
      const before = namespaces();
      const path = badConfig("bad-mtu.yaml", (t) => t.replace("mtu: 1500", "mtu: 12"));
      expectOneLineFailure(qnat(["run", path]), 2, /bad-mtu\.yaml:\d+: mtu 12 is outside 68\.\.65535/);
      expect(namespaces()).toEqual(before);
    });

    it("an unsupported rule", () => {
      const before = namespaces();
      const path = badConfig("bad-rule.yaml", (t) => t.replace("  -A PREROUTING -j neutron-vpn-agen-PREROUTING", "  -A PREROUTING -j LOG\n  -A PREROUTING -j neutron-vpn-agen-PREROUTING"));
      expectOneLineFailure(qnat(["run", path]), 2, /bad-rule\.yaml:\d+: .*LOG/);
      expect(namespaces()).toEqual(before);
    });

    it("a port name longer than 15 characters", () => {
      const before = namespaces();
      const path = badConfig("long-name.yaml", (t) => t.replace("- name: qr-694450d6-f6", "- name: qr-694450d6-f6-x"));
      expectOneLineFailure(qnat(["run", path]), 2, /long-name\.yaml:\d+: .*15/);
      expect(namespaces()).toEqual(before);
    });

    it("no permission for namespaces (run as nobody)", async () => {
      const before = namespaces();
      const path = badConfig("fine.yaml", (t) => t);
      spawnSync("chmod", ["a+rx", scratch]);
      spawnSync("chmod", ["a+r", path]);
      const nobodyCanRun = run("runuser", ["-u", "nobody", "--", "test", "-r", CLI]).code === 0;
      if (nobodyCanRun) {
        expectOneLineFailure(qnat(["run", path], { user: "nobody" }), 1, /needs root.*run it as root/);
      } else {
        // The checkout is not readable by nobody (or there is no runuser): the same check in-process.
        console.warn("test/e2e: nobody cannot run the CLI from this checkout; checking the root test in-process");
        const { runCli } = await import("../../src/cli/main.js");
        const errors: string[] = [];
        const getuid = vi.spyOn(process, "getuid").mockReturnValue(65534);
        try {
          expect(await runCli(["run", path], { out: () => undefined, err: (text) => errors.push(text) })).toBe(1);
        } finally {
          getuid.mockRestore();
        }
        expect(errors.join("")).toMatch(/^qnat: run needs root .*run it as root\n$/);
      }
      expect(namespaces()).toEqual(before);
    });

    it("a second qnat run of the running router", () => {
      const before = namespaces();
      expectOneLineFailure(qnat(["run", SEED]), 1, new RegExp(`router ${ROUTER_NS} is already running \\(pid \\d+\\)`));
      expect(namespaces()).toEqual(before);
      // and the first one still forwards
      expect(inNs(TENANT, "ping", ["-c", "1", "-W", "1", "203.0.113.10"]).stdout).toMatch(/1 received/);
    });
  });

  it("lab down removes everything, even after the router was killed with -9; lab up brings it back", () => {
    const pid = Number.parseInt(readFileSync(`/run/qnat/${ROUTER_NS}.pid`, "utf8"), 10);
    process.kill(pid, "SIGKILL");
    const back = qnat(["lab", "up", SEED], { timeoutMs: 60_000 });
    expect(back.code).toBe(0);
    expect(inNs(TENANT, "curl", ["-s", "-m", "5", "--interface", "10.0.0.2", "http://169.254.169.254/latest/meta-data/instance-id"]).stdout.trim()).toBe("i-00000001");

    const newPid = Number.parseInt(readFileSync(`/run/qnat/${ROUTER_NS}.pid`, "utf8"), 10);
    process.kill(newPid, "SIGKILL");
    const down = qnat(["lab", "down", SEED], { timeoutMs: 60_000 });
    expect(down.code).toBe(0);
    expect(namespaces().filter((name) => SEED_NAMESPACES.includes(name))).toEqual([]);
    for (const suffix of ["sock", "pid", "log"]) expect(existsSync(`/run/qnat/${ROUTER_NS}.${suffix}`)).toBe(false);
    expect(run("pgrep", ["-f", `${CLI} run`]).stdout.trim()).toBe("");
    expect(qnat(["lab", "down", SEED]).stdout).toContain("already down");
  }, 90_000);
});
