import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { CtStatus } from "../../src/conntrack/table.js";
import { ConntrackArgsError, conntrackSummary, parseConntrackArgs } from "../../src/cli/conntrack.js";
import { runCli } from "../../src/cli/main.js";

const ip = (text: string): number => parseIpv4(text);

/** The one-line message `qnat conntrack` prints for these words. */
function refusal(words: string[]): string {
  try {
    parseConntrackArgs(words);
  } catch (error) {
    expect(error).toBeInstanceOf(ConntrackArgsError);
    return (error as Error).message;
  }
  throw new Error(`${words.join(" ")} was accepted`);
}

describe("qnat conntrack's command line, as conntrack-tools 1.4.7 reads it", () => {
  it("Neutron's disassociation: -D -d 9.186.100.129 and -D -q 9.186.100.129 select by original destination and reply destination", () => {
    expect(parseConntrackArgs(["-D", "-d", "9.186.100.129"])).toEqual({ op: "delete", filter: { origDst: { addr: ip("9.186.100.129"), prefixLength: 32 } }, router: undefined });
    expect(parseConntrackArgs(["-D", "-q", "9.186.100.129"]).filter).toEqual({ replyDst: { addr: ip("9.186.100.129"), prefixLength: 32 } });
  });

  it("every filter option, short and long, with ADDR/LEN and --opt=value", () => {
    const command = parseConntrackArgs([
      "-L", "conntrack", "-p", "tcp", "-s", "10.0.0.0/24", "--orig-dst", "9.186.100.1", "-r", "9.186.100.1",
      "--reply-dst=9.186.100.2", "--sport", "40000", "--orig-port-dst", "80", "--reply-port-src", "80",
      "--reply-port-dst", "40000", "--state", "ESTABLISHED", "--status", "ASSURED,seen_reply", "--router", "qrouter-x",
    ]);
    expect(command).toEqual({
      op: "list",
      router: "qrouter-x",
      filter: {
        protocol: 6,
        origSrc: { addr: ip("10.0.0.0"), prefixLength: 24 },
        origDst: { addr: ip("9.186.100.1"), prefixLength: 32 },
        replySrc: { addr: ip("9.186.100.1"), prefixLength: 32 },
        replyDst: { addr: ip("9.186.100.2"), prefixLength: 32 },
        origSport: 40000,
        origDport: 80,
        replySport: 80,
        replyDport: 40000,
        tcpState: 3,
        status: CtStatus.Assured | CtStatus.SeenReply,
      },
    });
    expect(parseConntrackArgs(["--dump", "--src", "10.0.0.3", "--dst", "9.186.100.1"]).filter).toEqual({
      origSrc: { addr: ip("10.0.0.3"), prefixLength: 32 },
      origDst: { addr: ip("9.186.100.1"), prefixLength: 32 },
    });
    expect(parseConntrackArgs(["-L", "-p", "17", "--dport", "53"]).filter).toEqual({ protocol: 17, origDport: 53 });
    expect(parseConntrackArgs(["-L", "-p", "ICMP"]).filter).toEqual({ protocol: 1 });
    expect(parseConntrackArgs(["-L", "-p", "tcp", "--state", "LISTEN"]).filter).toEqual({ protocol: 6, tcpState: 9 });
  });

  it("Neutron's calls with -f ipv4 (ip_conntrack.py) are IPv4's; -f ipv6 selects nothing, -F -f ipv6 empties nothing", () => {
    expect(parseConntrackArgs(["-D", "-f", "ipv4", "-p", "tcp", "--dport", "22", "-d", "10.0.0.2"]).filter).toEqual({
      family: 2,
      protocol: 6,
      origDport: 22,
      origDst: { addr: ip("10.0.0.2"), prefixLength: 32 },
    });
    expect(parseConntrackArgs(["-F", "--family", "ipv6"])).toEqual({ op: "flush", filter: { family: 10 }, router: undefined });
    expect(refusal(["-L", "-f", "inet"])).toBe("`inet' unsupported protocol");
    expect(refusal(["-L", "-f", "IPV4"])).toBe("`IPV4' unsupported protocol");
  });

  it("after -p icmp: --icmp-type, --icmp-code, --icmp-id of the original tuple", () => {
    expect(parseConntrackArgs(["-L", "-p", "icmp", "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", "4242"]).filter).toEqual({ protocol: 1, icmpType: 8, icmpCode: 0, icmpId: 4242 });
    expect(refusal(["-L", "--icmp-type", "8"])).toBe("unknown option `--icmp-type'");
    expect(refusal(["-L", "-p", "tcp", "--icmp-id", "1"])).toBe("unknown option `--icmp-id'");
    expect(refusal(["-L", "-p", "icmp", "--icmp-type", "300"])).toBe("invalid icmp-type `300'");
    expect(refusal(["-L", "-p", "icmp", "--icmp-id", "x"])).toBe("invalid icmp-id `x'");
  });

  it("an option given twice counts once, the last, as getopt leaves it", () => {
    expect(parseConntrackArgs(["-L", "-s", "10.0.0.2", "-s", "10.0.0.3"]).filter).toEqual({ origSrc: { addr: ip("10.0.0.3"), prefixLength: 32 } });
    expect(parseConntrackArgs(["-L", "-p", "tcp", "-p", "udp"]).filter).toEqual({ protocol: 17 });
  });

  it("-F empties everything and takes no filter; -D and -L without a filter take every entry", () => {
    expect(parseConntrackArgs(["-F"])).toEqual({ op: "flush", filter: {}, router: undefined });
    expect(parseConntrackArgs(["--flush", "conntrack", "--router", "qrouter-y"]).router).toBe("qrouter-y");
    expect(parseConntrackArgs(["-D"]).filter).toEqual({});
    expect(refusal(["-F", "-p", "tcp"])).toBe("Illegal option `--protonum' with this command");
    expect(refusal(["-F", "-d", "9.186.100.129"])).toBe("Illegal option `--dst' with this command");
  });

  it("refuses what the tool refuses, with its words", () => {
    expect(refusal(["-L", "--foo"])).toBe("unknown option `--foo'");
    expect(refusal(["-L", "-s", "foo"])).toBe("Invalid IP address `foo'");
    expect(refusal(["-L", "-s", "10.9.0.1/33"])).toBe("Invalid netmask");
    expect(refusal(["-L", "-d", "10.9.0.2/255.255.255.0"])).toBe("Invalid netmask");
    expect(refusal(["-L", "-p", "bogus"])).toBe("`bogus' unsupported protocol");
    expect(refusal(["-L", "-p", "300"])).toBe("`300' unsupported protocol");
    expect(refusal(["-L", "--state", "TIME_WAIT"])).toBe("unknown option `--state'");
    expect(refusal(["-L", "-p", "udp", "--state", "ESTABLISHED"])).toBe("unknown option `--state'");
    expect(refusal(["-L", "--dport", "8080"])).toBe("unknown option `--dport'");
    expect(refusal(["-L", "-p", "icmp", "--sport", "1"])).toBe("unknown option `--sport'");
    expect(refusal(["-L", "-p", "tcp", "--sport", "80", "-p", "icmp"])).toBe("unknown option `--sport'");
    expect(refusal(["-L", "-p", "tcp", "--state", "time_wait"])).toBe("unknown TCP state `time_wait'");
    expect(refusal(["-L", "--status", "CONFIRMED"])).toBe("Bad parameter `CONFIRMED'");
    expect(refusal(["-L", "--status", "ASSURED,"])).toBe("Bad parameter `'");
    expect(refusal(["-L", "-p", "tcp", "--sport"])).toBe("option `--sport' requires an argument");
    expect(refusal(["-L", "-p"])).toBe("option `-p' requires an argument");
    expect(refusal(["-L", "-D"])).toBe("Invalid commands combination");
    expect(refusal(["-L", "extra"])).toBe("unknown type `extra'");
    expect(refusal(["-L", "expect"])).toBe("table `expect' is not supported");
    expect(refusal(["-E"])).toBe("-E is not supported (qnat conntrack does -L, -D and -F)");
    expect(refusal(["-s", "10.0.0.2"])).toBe("no command: give -L, -D or -F");
  });

  it("is stricter than the tool where it would guess: ports are numbers 0-65535, stray words are refused", () => {
    expect(refusal(["-L", "-p", "tcp", "--sport", "abc"])).toBe("invalid port `abc'");
    expect(refusal(["-L", "-p", "tcp", "--dport", "70000"])).toBe("invalid port `70000'");
    expect(refusal(["-L", "-p", "tcp", "80"])).toBe("unknown argument `80'");
  });

  it("prints the tool's summary lines", () => {
    expect(conntrackSummary("list", 3)).toBe("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.");
    expect(conntrackSummary("delete", 0)).toBe("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.");
    expect(conntrackSummary("flush", 12)).toBe("conntrack v1.4.7 (conntrack-tools): connection tracking table has been emptied.");
  });

  it("-h prints qnat's usage with the conntrack line, exit 0", async () => {
    const out: string[] = [];
    expect(await runCli(["conntrack", "-h"], { out: (t) => out.push(t), err: (t) => out.push(t) })).toBe(0);
    expect(out.join("")).toContain("qnat conntrack -L|-D|-F [-f ipv4|ipv6] [-p PROTO] [-s|-d|-r|-q ADDR[/LEN]]");
  });

  it("a mistake is one line on stderr and exit 2, before any router is asked", async () => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCli(["conntrack", "-L", "-s", "10.0.0.300", "--router", "qrouter-none"], { out: (t) => out.push(t), err: (t) => err.push(t) });
    expect(code).toBe(2);
    expect(out).toEqual([]);
    expect(err).toEqual(["qnat conntrack: Invalid IP address `10.0.0.300'\n"]);
  });
});
