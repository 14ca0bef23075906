/**
 * The tutorials never go stale: every `$ ` command of docs/tutorial.md and docs/tutorial.zh.md is
 * run, and its output must still be what the tutorial shows, after the normalisation
 * test/support/tutorial-commands.ts documents (ports, times, ids, counters, conntrack order).
 *
 * The commands that need neither root nor a lab (trace from a config, rules generate and check)
 * run always. The others run as root on the seed's lab under fresh names: the test copies
 * examples/ to a scratch folder with seed.yaml retagged (every namespace X becomes X-<tag>,
 * retagConfigText), runs each command there with bash (`qnat` on the PATH is this checkout's
 * build; the tutorial's namespace names get the tag, its outputs lose it), one after another as
 * a reader would, each bounded to 60 s. Each tutorial starts without a lab, and whatever happens
 * the lab is taken down at the end and the processes left in its namespaces (the tutorial's HTTP
 * servers) are killed by pid.
 *
 * Every command found is run (their number is asserted, so an empty extraction cannot pass), and
 * each must use only qnat subcommands this build has.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { USAGE } from "../../src/cli/main.js";
import { retagConfigText, randomTag } from "../../src/control/twin.js";
import { isRoot, netnsExists } from "../../src/io/netns.js";
import {
  extractCommands,
  isOffline,
  namespaceRenames,
  normaliseOutput,
  qnatSubcommands,
  retag,
  untag,
  type TutorialCommand,
} from "../support/tutorial-commands.js";

const ROOT = resolve(import.meta.dirname, "../..");
const TUTORIALS = ["docs/tutorial.md", "docs/tutorial.zh.md"];
/** How many `$ ` commands each tutorial has; both walk the same steps. */
const COMMANDS_PER_TUTORIAL = 38;
const NAMESPACES = ["qrouter-40fff075-d3a2-477b-942c-6b1adb42e35e", "qnat-tenant", "qnat-external"];
const COMMAND_LIMIT_MS = 60_000;

/** The qnat subcommands this build has, from its usage text. */
const AVAILABLE = new Set([...USAGE.matchAll(/^ {2}qnat (\S+)/gm)].map((m) => m[1]!));

function tutorial(path: string): TutorialCommand[] {
  return extractCommands(readFileSync(join(ROOT, path), "utf8"));
}

function unknownSubcommands(command: string): string[] {
  return qnatSubcommands(command).filter((sub) => !AVAILABLE.has(sub));
}

/** A scratch folder with examples/ (seed.yaml retagged) and `qnat` on a PATH of its own. */
function workspace(tag: string): { dir: string; env: NodeJS.ProcessEnv } {
  const dir = mkdtempSync(join(tmpdir(), "qnat-tutorial-"));
  cpSync(join(ROOT, "examples"), join(dir, "examples"), { recursive: true });
  const seed = join(ROOT, "examples", "seed.yaml");
  writeFileSync(join(dir, "examples", "seed.yaml"), retagConfigText(readFileSync(seed, "utf8"), seed, tag));
  mkdirSync(join(dir, "bin"));
  const shim = join(dir, "bin", "qnat");
  writeFileSync(shim, `#!/bin/sh\nexec "${process.execPath}" "${join(ROOT, "dist", "src", "cli", "main.js")}" "$@"\n`);
  chmodSync(shim, 0o755);
  const env = { ...process.env, PATH: `${join(dir, "bin")}:${dirname(process.execPath)}:${process.env["PATH"] ?? "/usr/bin:/bin"}` };
  return { dir, env };
}

/** Runs one command line with bash, stdout and stderr together as a terminal shows them. */
function run(command: string, dir: string, env: NodeJS.ProcessEnv): string {
  const result = spawnSync("bash", ["-c", `exec 2>&1\n${command}`], { cwd: dir, env, encoding: "utf8", timeout: COMMAND_LIMIT_MS });
  if (result.error !== undefined) return `(failed to run: ${result.error.message})`;
  return result.stdout;
}

describe("the tutorials' commands", () => {
  for (const path of TUTORIALS) {
    it(`${path} has its ${COMMANDS_PER_TUTORIAL} commands, each with the output the reader should see`, () => {
      const commands = tutorial(path);
      expect(commands.map((c) => c.command).length).toBe(COMMANDS_PER_TUTORIAL);
      for (const command of commands) {
        expect(command.command, `${path}:${command.line}`).not.toBe("");
      }
    });
  }

  it("walk the same commands in English and in Chinese", () => {
    const [english, chinese] = TUTORIALS.map((path) => tutorial(path));
    expect(chinese!.map((c) => c.command)).toEqual(english!.map((c) => c.command));
    expect(chinese!.map((c) => normaliseOutput(c.expected))).toEqual(english!.map((c) => normaliseOutput(c.expected)));
  });

  it("normalise what varies and nothing else", () => {
    expect(normaliseOutput("64 bytes from 203.0.113.10: icmp_seq=1 ttl=63 time=0.544 ms  \n\n")).toBe(
      "64 bytes from 203.0.113.10: icmp_seq=1 ttl=63 time=T ms",
    );
    expect(
      normaliseOutput(
        "tcp      6 119 TIME_WAIT src=10.0.0.3 dst=203.0.113.10 sport=35828 dport=8080 src=203.0.113.10 dst=9.186.100.2 sport=8080 dport=35828 [ASSURED] mark=0 use=1\n" +
          "icmp     1 29 src=10.0.0.3 dst=203.0.113.10 type=8 code=0 id=11206 src=203.0.113.10 dst=9.186.100.2 type=0 code=0 id=11206 mark=0 use=1",
      ),
    ).toBe(
      "icmp     1 T src=10.0.0.3 dst=203.0.113.10 type=8 code=0 id=ID src=203.0.113.10 dst=9.186.100.2 type=0 code=0 id=ID mark=0 use=1\n" +
        "tcp      6 T TIME_WAIT src=10.0.0.3 dst=203.0.113.10 sport=PORT dport=8080 src=203.0.113.10 dst=9.186.100.2 sport=8080 dport=PORT [ASSURED] mark=0 use=1",
    );
    // An address, a well-known port, a different state: still differences.
    expect(normaliseOutput("src=10.0.0.3 sport=40000 dport=80")).not.toBe(normaliseOutput("src=10.0.0.2 sport=40000 dport=80"));
    expect(normaliseOutput("sport=40000 dport=80")).not.toBe(normaliseOutput("sport=40000 dport=8080"));
    expect(normaliseOutput("tcp      6 119 SYN_SENT")).not.toBe(normaliseOutput("tcp      6 119 TIME_WAIT"));
    // A multi-queue TUN device (workers > 1) has the mq root qdisc; any other qdisc stays itself.
    expect(normaliseOutput("2: qr-1: <UP> mtu 1500 qdisc mq state UNKNOWN")).toBe("2: qr-1: <UP> mtu 1500 qdisc pfifo_fast state UNKNOWN");
    expect(normaliseOutput("2: qr-1: <UP> mtu 1500 qdisc noqueue state UNKNOWN")).not.toBe(normaliseOutput("2: qr-1: <UP> mtu 1500 qdisc pfifo_fast state UNKNOWN"));
  });

  it("rename the lab's namespaces only where they stand alone", () => {
    const renames = namespaceRenames(NAMESPACES, "qnt123456");
    expect(retag("ip netns exec qnat-tenant ping -c 1 203.0.113.10", renames)).toBe("ip netns exec qnat-tenant-qnt123456 ping -c 1 203.0.113.10");
    expect(untag("wire eth0 in qnat-external-qnt123456, mirror", renames)).toBe("wire eth0 in qnat-external, mirror");
    expect(qnatSubcommands("qnat capture qg-e76de35e-90 -w - | tcpdump -r -")).toEqual(["capture"]);
  });

  for (const path of TUTORIALS) {
    it(`${path}: the offline commands (trace from a config, rules generate) print what it shows`, () => {
      const { dir, env } = workspace(randomTag());
      try {
        const offline = tutorial(path).filter((c) => isOffline(c.command));
        expect(offline.length).toBeGreaterThanOrEqual(8);
        for (const command of offline) {
          expect(normaliseOutput(run(command.command, dir, env)), `${path}:${command.line}: ${command.command}`).toBe(normaliseOutput(command.expected));
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});

describe.skipIf(!isRoot())("the tutorials on the lab, command by command (root)", () => {
  if (!isRoot()) console.warn("test/e2e/tutorial.test.ts: not root, so the tutorials' lab commands are skipped");
  const tag = randomTag();
  const renames = namespaceRenames(NAMESPACES, tag);
  let space: { dir: string; env: NodeJS.ProcessEnv } | undefined;

  /** No lab and no server of a tutorial left: the next one starts as a reader would. */
  function removeLab(): void {
    const { dir, env } = space!;
    try {
      run("qnat lab down", dir, env);
    } finally {
      for (const [, name] of renames) {
        if (!netnsExists(name)) continue;
        // The tutorial's servers, started in the lab's namespaces: ended by pid.
        for (const pid of execFileSync("ip", ["netns", "pids", name], { encoding: "utf8" }).split(/\s+/).filter(Boolean)) {
          try {
            process.kill(Number(pid), "SIGKILL");
          } catch {
            // already gone
          }
        }
        spawnSync("ip", ["netns", "del", name]);
      }
    }
  }

  beforeAll(() => {
    space = workspace(tag);
  });
  afterAll(() => {
    if (space === undefined) return;
    try {
      removeLab();
    } finally {
      rmSync(space.dir, { recursive: true, force: true });
    }
  }, 60_000);

  for (const path of TUTORIALS) {
    it(`${path}: every command prints what the tutorial shows`, () => {
      const { dir, env } = space!;
      removeLab();
      const commands = tutorial(path);
      let ran = 0;
      for (const command of commands) {
        const where = `${path}:${command.line}: ${command.command}`;
        expect(unknownSubcommands(command.command), where).toEqual([]);
        const output = untag(run(retag(command.command, renames), dir, env), renames);
        expect(normaliseOutput(output), where).toBe(normaliseOutput(command.expected));
        ran++;
      }
      expect(ran).toBe(COMMANDS_PER_TUTORIAL);
    }, 600_000);
  }
});
