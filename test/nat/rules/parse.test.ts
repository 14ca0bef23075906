import { describe, expect, it } from "vitest";
import { parseIpv4 } from "../../../src/core/addr.js";
import { checkRulesText } from "../../../src/nat/rules/check.js";
import { CtState, NatRangeFlag, PROTO_TCP, TargetKind } from "../../../src/nat/rules/model.js";
import { parseRules } from "../../../src/nat/rules/parse.js";
import { SEED_RULES } from "./seed-rules.js";

/** The errors of a text, as `LINE: message`. */
function errorsOf(text: string): string[] {
  return parseRules(text).errors.map((error) => `${error.line}: ${error.message}`);
}

/** The single error of a one-rule text. */
function onlyError(text: string): string {
  const errors = errorsOf(text);
  expect(errors, text).toHaveLength(1);
  return errors[0]!;
}

describe("the seed's rules as a typed model", () => {
  const { table, errors } = parseRules(SEED_RULES);

  it("parses with no errors", () => {
    expect(errors).toEqual([]);
  });

  it("has the four built-in chains with ACCEPT and Neutron's six chains", () => {
    expect([...table.chains.keys()].sort()).toEqual(
      [
        "INPUT", "OUTPUT", "POSTROUTING", "PREROUTING",
        "neutron-postrouting-bottom", "neutron-vpn-agen-OUTPUT", "neutron-vpn-agen-POSTROUTING",
        "neutron-vpn-agen-PREROUTING", "neutron-vpn-agen-float-snat", "neutron-vpn-agen-snat",
      ].sort(),
    );
    expect(table.chains.get("PREROUTING")!.policy).toBe("ACCEPT");
    expect(table.chains.get("neutron-vpn-agen-snat")!.policy).toBeUndefined();
  });

  it("keeps the floating IP DNAT as numbers", () => {
    const [rule] = table.chains.get("neutron-vpn-agen-OUTPUT")!.rules;
    expect(rule!.dst).toEqual({ addr: parseIpv4("9.186.100.129"), mask: 0xffffffff, invert: false });
    expect(rule!.target).toEqual({
      kind: TargetKind.Dnat,
      range: { flags: NatRangeFlag.MapIps, minAddr: parseIpv4("10.0.0.2"), maxAddr: parseIpv4("10.0.0.2"), minPort: 0, maxPort: 0 },
    });
    expect(rule!.line).toBe(16);
    expect(rule!.tokens).toEqual(["-d", "9.186.100.129/32", "-j", "DNAT", "--to-destination", "10.0.0.2"]);
  });

  it("keeps the 'not through the gateway, not DNATed' rule's negations", () => {
    const [rule] = table.chains.get("neutron-vpn-agen-POSTROUTING")!.rules;
    expect(rule!.inInterface).toEqual({ name: "qg-e76de35e-90", invert: true });
    expect(rule!.outInterface).toEqual({ name: "qg-e76de35e-90", invert: true });
    expect(rule!.matches).toEqual([{ kind: "conntrack", stateMask: CtState.Dnat, invert: true, given: true }]);
    expect(rule!.target.kind).toBe(TargetKind.Accept);
  });

  it("keeps the metadata REDIRECT's protocol and port", () => {
    const [rule] = table.chains.get("neutron-vpn-agen-PREROUTING")!.rules;
    expect(rule!.protocol).toBe(PROTO_TCP);
    expect(rule!.matches[0]).toMatchObject({ kind: "tcp", dport: { min: 80, max: 80 }, dportInvert: false });
    expect(rule!.target).toMatchObject({ kind: TargetKind.Redirect, range: { flags: NatRangeFlag.ProtoSpecified, minPort: 9697, maxPort: 9697 } });
  });

  it("knows the tenant subnet SNAT's source prefix", () => {
    const rules = table.chains.get("neutron-vpn-agen-snat")!.rules;
    expect(rules[0]!.target).toEqual({ kind: TargetKind.Jump, chain: "neutron-vpn-agen-float-snat" });
    expect(rules[1]!.src).toEqual({ addr: parseIpv4("10.0.0.0"), mask: 0xffffff00, invert: false });
  });
});

describe("every unsupported or invalid construct is reported with its line", () => {
  const cases: Array<[string, string]> = [
    ["-A PREROUTING -m mark --mark 0x1 -j ACCEPT", 'unsupported match "-m mark"'],
    ["-A PREROUTING -m addrtype --dst-type LOCAL -j ACCEPT", 'unsupported match "-m addrtype"'],
    ["-A PREROUTING -p tcp -j TPROXY --on-port 1 --tproxy-mark 0x1", 'unsupported target "TPROXY"'],
    ["-A PREROUTING -j MARK --set-mark 1", 'unsupported target "MARK"'],
    ["-A PREROUTING --foo 1 -j ACCEPT", 'unknown option "--foo"'],
    ["-A PREROUTING -p udp -j DNAT --to-destination 10.0.0.2 --bogus", 'unknown option "--bogus"'],
    ["-A PREROUTING --dport 80 -j ACCEPT", 'unknown option "--dport"'],
    ["-A PREROUTING -m conntrack --ctstatus ASSURED -j ACCEPT", 'unknown option "--ctstatus"'],
    ["-A PREROUTING -f -j ACCEPT", 'unsupported option "-f" (fragments never reach the nat table\'s rules in qnat)'],
    ["-A PREROUTING -s", 'option "-s" requires an argument'],
    ["-A PREROUTING -j", 'option "-j" requires an argument'],
    ["-A PREROUTING -j DNAT", "DNAT needs --to-destination"],
    ["-A POSTROUTING -j SNAT", "SNAT needs --to-source"],
    ["-A PREROUTING -s ! 10.0.0.1 -j ACCEPT", '"!" after the option ("-s ! X") is not supported: write "! -s X"'],
    ["-A PREROUTING -p tcp --dport ! 80 -j ACCEPT", '"!" after the option ("--dport ! X") is not supported: write "! --dport X"'],
    ["-A PREROUTING -s 10.0.0.300 -j ACCEPT", 'invalid address "10.0.0.300" (host names are not resolved)'],
    ["-A PREROUTING -s metadata.local -j ACCEPT", 'invalid address "metadata.local" (host names are not resolved)'],
    ["-A PREROUTING -p foo -j ACCEPT", 'unknown protocol "foo"'],
    ["-A PREROUTING ! -p all -j ACCEPT", 'rule would never match protocol ("! -p all")'],
    ["-A PREROUTING -p tcp --dport 70000 -j ACCEPT", 'invalid port "70000"'],
    ["-A PREROUTING -p tcp --dport 90:80 -j ACCEPT", 'invalid port range "90:80" (min > max)'],
    ["-A PREROUTING -p udp -m tcp --dport 80 -j ACCEPT", "-m tcp requires -p tcp"],
    ["-A PREROUTING -m multiport --dports 80 -j ACCEPT", "-m multiport requires -p tcp, -p udp, -p udplite, -p sctp or -p dccp"],
    ["-A PREROUTING -p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 -j ACCEPT", "too many ports specified (at most 15, a range counts as two)"],
    ["-A PREROUTING -m conntrack --ctstate NEW,BOGUS -j ACCEPT", 'bad state "BOGUS"'],
    ["-A PREROUTING -m state --state DNAT -j ACCEPT", 'bad state "DNAT"'],
    ["-A PREROUTING -m conntrack -j ACCEPT", "-m conntrack: at least one option is required (qnat supports --ctstate)"],
    ["-A PREROUTING -m comment -j ACCEPT", "-m comment requires --comment"],
    [`-A PREROUTING -m comment --comment ${"x".repeat(256)} -j ACCEPT`, "comment may not exceed 255 characters"],
    ["-A PREROUTING -j DROP", 'The "nat" table is not intended for filtering, the use of DROP is therefore inhibited.'],
    ["-A PREROUTING -p tcp -j REJECT --reject-with tcp-reset", 'The "nat" table is not intended for filtering, the use of REJECT is therefore inhibited.'],
    ["-A POSTROUTING -j DNAT --to-destination 10.0.0.2", "DNAT is only valid in PREROUTING and OUTPUT, not from POSTROUTING"],
    ["-A PREROUTING -j SNAT --to-source 9.186.100.2", "SNAT is only valid in POSTROUTING and INPUT, not from PREROUTING"],
    ["-A INPUT -j MASQUERADE", "MASQUERADE is only valid in POSTROUTING, not from INPUT"],
    ["-A POSTROUTING -j REDIRECT", "REDIRECT is only valid in PREROUTING and OUTPUT, not from POSTROUTING"],
    ["-A PREROUTING -d 9.186.100.129 -j DNAT --to-destination 10.0.0.2:80", "DNAT: a port in --to-destination needs -p tcp, udp, sctp, dccp or icmp"],
    ["-A PREROUTING -j REDIRECT --to-ports 9697", "REDIRECT: --to-ports needs -p tcp, udp, sctp or dccp"],
    ["-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.2:0", 'DNAT: port "0" not valid'],
    ["-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.9-10.0.0.2", 'DNAT: bad IP range "10.0.0.9-10.0.0.2" (first address above last)'],
    ["-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.2:80/8080", 'DNAT: port offsets ("80/8080") are not supported'],
    ["-A PREROUTING -j DNAT --to-destination 10.0.0.2 --to-destination 10.0.0.3", "DNAT: multiple --to-destination not supported"],
    ["-A PREROUTING -j nowhere", 'jump to undefined chain "nowhere"'],
    ["-A PREROUTING -j POSTROUTING", 'cannot jump to built-in chain "POSTROUTING"'],
    ["-A nowhere -j ACCEPT", '-A to unknown chain "nowhere" (create it with -N first)'],
    ["-A PREROUTING -o qg-e76de35e-90 -j ACCEPT", "can't use -o with PREROUTING"],
    ["-A POSTROUTING -i qr-694450d6-f6 -j ACCEPT", "can't use -i with POSTROUTING"],
    ["-A PREROUTING -i a-very-long-interface-name -j ACCEPT", 'interface name "a-very-long-interface-name" must be shorter than IFNAMSIZ (15)'],
    ["-A PREROUTING -s 10.0.0.1 -s 10.0.0.2 -j ACCEPT", "multiple -s flags not allowed"],
    ["-A PREROUTING -j ACCEPT -j RETURN", "multiple -j/-g flags not allowed"],
    ["-A PREROUTING ! -j ACCEPT", 'cannot have "!" before -j'],
    ["-A PREROUTING -s 10.0.0.1 extra -j ACCEPT", 'unexpected argument "extra"'],
    ['-A PREROUTING -m comment --comment "unterminated -j ACCEPT', "unterminated double quote"],
    ["-P PREROUTING DROP", 'policy DROP is not supported in the "nat" table (PREROUTING): the nat table translates, it does not filter'],
    ["-P PREROUTING QUEUE", 'invalid policy "QUEUE" for PREROUTING: the nat table only allows ACCEPT'],
    ["-P mychain ACCEPT", '-P is only valid for built-in chains, not "mychain"'],
    ["-N PREROUTING", 'chain "PREROUTING" already exists'],
    ["-N DNAT", 'chain name "DNAT" may not clash with a target name'],
    ["-N this-chain-name-is-far-too-long-for-x", 'chain name "this-chain-name-is-far-too-long-for-x" is too long (at most 28 characters)'],
    ["-I PREROUTING -j ACCEPT", 'unsupported command "-I": only -P, -N and -A describe a table'],
    ["-X neutron", 'unsupported command "-X": only -P, -N and -A describe a table'],
    ["hello world", 'unknown command "hello"'],
    ["-t filter -A INPUT -j ACCEPT", 'only the "nat" table is supported, not "filter"'],
  ];
  for (const [line, message] of cases) {
    it(`${line.length > 70 ? `${line.slice(0, 70)}...` : line} -> ${message}`, () => {
      // Put the rule on line 3 so the line number is tested too.
      expect(onlyError(`# a comment\n\n${line}\n`)).toBe(`3: ${message}`);
    });
  }

  it("names the path through which a user chain reaches a forbidden hook", () => {
    const text = ["-N outer", "-N inner", "-A POSTROUTING -j outer", "-A outer -g inner", "-A inner -j DNAT --to-destination 10.0.0.2"].join("\n");
    expect(errorsOf(text)).toEqual([
      "5: DNAT is only valid in PREROUTING and OUTPUT, not from POSTROUTING (reached as POSTROUTING -> outer -> inner)",
    ]);
  });

  it("allows a DNAT chain reached only from PREROUTING and OUTPUT, and an unreachable one", () => {
    const text = [
      "-N dnat", "-N orphan", "-A PREROUTING -j dnat", "-A OUTPUT -j dnat",
      "-A dnat -d 9.186.100.129 -j DNAT --to-destination 10.0.0.2", "-A orphan -j SNAT --to-source 1.2.3.4",
    ].join("\n");
    expect(errorsOf(text)).toEqual([]);
  });

  it("reports a loop in the chain graph once, and drops the closing jump", () => {
    const text = ["-N a", "-N b", "-N c", "-A PREROUTING -j a", "-A a -j b", "-A b -j c", "-A c -g a"].join("\n");
    const { table, errors } = parseRules(text);
    expect(errors.map((e) => `${e.line}: ${e.message}`)).toEqual(["7: loop in the chain graph: a -> b -> c -> a"]);
    expect(table.chains.get("c")!.rules).toEqual([]);
  });

  it("reports a chain jumping to itself and a duplicate -N", () => {
    expect(errorsOf("-N a\n-N a\n-A a -j a\n")).toEqual(['2: chain "a" already exists', "3: loop in the chain graph: a -> a"]);
  });

  it("collects all errors of a file, in line order, and keeps the valid rules", () => {
    const text = [
      "-P PREROUTING ACCEPT", // 1
      "-N neutron-vpn-agen-PREROUTING", // 2
      "-A PREROUTING -j neutron-vpn-agen-PREROUTING", // 3
      "-A neutron-vpn-agen-PREROUTING -m mark --mark 1 -j ACCEPT", // 4
      "-A neutron-vpn-agen-PREROUTING -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2", // 5
      "-A neutron-vpn-agen-PREROUTING -j TPROXY --on-port 9697", // 6
      "-A neutron-vpn-agen-PREROUTING --foo -j ACCEPT", // 7
      "-A POSTROUTING -j neutron-missing", // 8
    ].join("\n");
    const { table, errors } = parseRules(text);
    expect(errors).toEqual([
      { line: 4, message: 'unsupported match "-m mark"' },
      { line: 6, message: 'unsupported target "TPROXY"' },
      { line: 7, message: 'unknown option "--foo"' },
      { line: 8, message: 'jump to undefined chain "neutron-missing"' },
    ]);
    expect(table.chains.get("neutron-vpn-agen-PREROUTING")!.rules.map((rule) => rule.line)).toEqual([5]);
    expect(table.chains.get("PREROUTING")!.rules).toHaveLength(1);
  });

  it("checks iptables-save framing", () => {
    expect(errorsOf("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n*nat\n-A PREROUTING -j ACCEPT\n")).toEqual([
      '1: only the "nat" table is supported, not "filter"',
      "5: missing COMMIT at the end of the table",
    ]);
    expect(errorsOf("*nat\nCOMMIT\n-A PREROUTING -j ACCEPT\n")).toEqual(['3: line outside a table: expected "*nat" first']);
    expect(errorsOf("*nat\n:PREROUTING ACCEPT\n:mine - [x]\n:PREROUTING DROP [0:0]\n:other ACCEPT [0:0]\nCOMMIT\n")).toEqual([
      '3: malformed counters "[x]": expected [PACKETS:BYTES]',
      '4: policy DROP is not supported in the "nat" table (PREROUTING): the nat table translates, it does not filter',
      '5: user chain "other" cannot have a policy ("ACCEPT"): only built-in chains have one',
    ]);
  });

  it("formats errors as FILE:LINE: message for `qnat rules check`", () => {
    expect(checkRulesText(SEED_RULES, "seed.rules")).toEqual([]);
    expect(checkRulesText("-A PREROUTING -j ACCEPT\n-A PREROUTING -m mark --mark 1 -j ACCEPT\n", "/etc/qnat/nat.rules")).toEqual([
      '/etc/qnat/nat.rules:2: unsupported match "-m mark"',
    ]);
  });
});
