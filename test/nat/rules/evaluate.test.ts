import { describe, expect, it } from "vitest";
import { formatIpv4, parseIpv4 } from "../../../src/core/addr.js";
import { XorShift32 } from "../../../src/core/rng.js";
import {
  NatDecisionKind,
  RuleInput,
  RuleTrace,
  compile,
  describeDecision,
  interfaceMatches,
  type CompiledRules,
} from "../../../src/nat/rules/evaluate.js";
import { formatRules } from "../../../src/nat/rules/format.js";
import { CtState, Hook, NatRangeFlag, PROTO_ICMP, PROTO_TCP, PROTO_UDP } from "../../../src/nat/rules/model.js";
import { parseRules } from "../../../src/nat/rules/parse.js";
import { GATEWAY_PORT, OTHER_TENANT_PORT, SEED_RULES, TENANT_PORT } from "./seed-rules.js";

const PORTS = [TENANT_PORT, GATEWAY_PORT, OTHER_TENANT_PORT];
const TENANT = 0;
const GATEWAY = 1;
const OTHER_TENANT = 2;

function compileText(text: string, ports: readonly string[] = PORTS): CompiledRules {
  const { table, errors } = parseRules(text);
  expect(errors).toEqual([]);
  return compile(table, ports);
}

interface PacketSpec {
  protocol?: number;
  src: string;
  dst: string;
  sport?: number;
  dport?: number;
  inPort?: number;
  outPort?: number;
  ctstate?: number;
  length?: number;
  icmpType?: number;
  icmpCode?: number;
  tcpFlags?: number;
}

/** Fills the reused input like the engine does for one NEW packet. */
function fill(input: RuleInput, spec: PacketSpec): RuleInput {
  input.protocol = spec.protocol ?? PROTO_TCP;
  input.src = parseIpv4(spec.src);
  input.dst = parseIpv4(spec.dst);
  input.sport = spec.sport ?? 40000;
  input.dport = spec.dport ?? 80;
  input.inPort = spec.inPort ?? -1;
  input.outPort = spec.outPort ?? -1;
  input.ctstate = spec.ctstate ?? CtState.New;
  input.length = spec.length ?? 60;
  input.icmpType = spec.icmpType ?? 0;
  input.icmpCode = spec.icmpCode ?? 0;
  input.tcpFlags = spec.tcpFlags ?? 0x02;
  return input;
}

describe("the seed's nat rules decide like the kernel's", () => {
  const rules = compileText(SEED_RULES);
  const input = new RuleInput();
  const decide = (hook: Hook, spec: PacketSpec): string => describeDecision(rules.traverse(hook, fill(input, spec)));

  it("10.0.0.3 reaches the outside as 9.186.100.2", () => {
    expect(decide(Hook.Postrouting, { src: "10.0.0.3", dst: "9.186.100.1", inPort: TENANT, outPort: GATEWAY })).toBe("SNAT 9.186.100.2");
    const decision = rules.decision;
    expect(decision.kind).toBe(NatDecisionKind.Snat);
    expect(decision.minAddr).toBe(parseIpv4("9.186.100.2"));
    expect(decision.maxAddr).toBe(parseIpv4("9.186.100.2"));
    expect(decision.flags).toBe(NatRangeFlag.MapIps);
    expect(rules.ruleTextOf(decision.ruleIndex)).toBe("-A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2");
  });

  it("10.0.0.2, the floating IP's VM, reaches the outside as 9.186.100.129", () => {
    expect(decide(Hook.Postrouting, { src: "10.0.0.2", dst: "9.186.100.1", inPort: TENANT, outPort: GATEWAY })).toBe("SNAT 9.186.100.129");
  });

  it("traffic between two tenant ports is not NATed (ACCEPT)", () => {
    expect(decide(Hook.Postrouting, { src: "10.0.1.5", dst: "10.0.0.5", inPort: OTHER_TENANT, outPort: TENANT })).toBe("ACCEPT");
    expect(rules.decision.kind).toBe(NatDecisionKind.Accept);
  });

  it("a tenant reaching the floating IP of its neighbour is SNATed back through the router (hairpin)", () => {
    const hairpin = { src: "10.0.0.3", dst: "10.0.0.2", inPort: TENANT, outPort: TENANT, ctstate: CtState.New | CtState.Dnat };
    expect(decide(Hook.Postrouting, hairpin)).toBe("SNAT 9.186.100.2");
  });

  it("169.254.169.254:80/tcp is redirected to the metadata proxy on 9697; port 81 is not", () => {
    expect(decide(Hook.Prerouting, { src: "10.0.0.3", dst: "169.254.169.254", dport: 80, inPort: TENANT })).toBe("REDIRECT :9697");
    expect(rules.decision.flags).toBe(NatRangeFlag.ProtoSpecified);
    expect(rules.decision.minPort).toBe(9697);
    expect(rules.decision.maxPort).toBe(9697);
    expect(decide(Hook.Prerouting, { src: "10.0.0.3", dst: "169.254.169.254", dport: 81, inPort: TENANT })).toBe("policy ACCEPT");
    expect(rules.decision.kind).toBe(NatDecisionKind.None);
    expect(rules.decision.ruleIndex).toBe(-1);
    expect(decide(Hook.Prerouting, { protocol: PROTO_UDP, src: "10.0.0.3", dst: "169.254.169.254", dport: 80, inPort: TENANT })).toBe("policy ACCEPT");
  });

  it("the outside reaches the floating IP 9.186.100.129 as 10.0.0.2", () => {
    expect(decide(Hook.Prerouting, { src: "203.0.113.10", dst: "9.186.100.129", inPort: GATEWAY })).toBe("DNAT 10.0.0.2");
  });

  it("the router itself reaches the floating IP as 10.0.0.2 (OUTPUT DNAT)", () => {
    expect(decide(Hook.Output, { src: "9.186.100.2", dst: "9.186.100.129", outPort: GATEWAY })).toBe("DNAT 10.0.0.2");
  });

  it("INPUT has no rules: policy", () => {
    expect(decide(Hook.Input, { src: "10.0.0.3", dst: "10.0.0.1", inPort: TENANT })).toBe("policy ACCEPT");
  });

  it("counts every matching rule, jumps included, and the policies, like iptables -S -v", () => {
    const counted = compileText(SEED_RULES);
    const packet = new RuleInput();
    const run = (hook: Hook, spec: PacketSpec): void => {
      counted.traverse(hook, fill(packet, spec));
    };
    run(Hook.Postrouting, { src: "10.0.0.3", dst: "9.186.100.1", inPort: TENANT, outPort: GATEWAY, length: 60 });
    run(Hook.Postrouting, { src: "10.0.0.2", dst: "9.186.100.1", inPort: TENANT, outPort: GATEWAY, length: 100 });
    run(Hook.Postrouting, { src: "10.0.1.5", dst: "10.0.0.5", inPort: OTHER_TENANT, outPort: TENANT, length: 84 });
    run(Hook.Postrouting, { src: "10.0.0.3", dst: "10.0.0.2", inPort: TENANT, outPort: TENANT, ctstate: CtState.New | CtState.Dnat, length: 52 });
    run(Hook.Prerouting, { src: "10.0.0.3", dst: "169.254.169.254", dport: 80, inPort: TENANT, length: 60 });
    run(Hook.Prerouting, { src: "10.0.0.3", dst: "169.254.169.254", dport: 81, inPort: TENANT, length: 40 });
    run(Hook.Prerouting, { src: "203.0.113.10", dst: "9.186.100.129", inPort: GATEWAY, length: 60 });
    run(Hook.Output, { src: "9.186.100.2", dst: "9.186.100.129", outPort: GATEWAY, length: 60 });
    const { table } = parseRules(SEED_RULES);
    const fresh = compile(table, PORTS);
    // Copy the counters of `counted` into a model and print it.
    fresh.packets.set(counted.packets);
    fresh.bytes.set(counted.bytes);
    fresh.policyPackets.set(counted.policyPackets);
    fresh.policyBytes.set(counted.policyBytes);
    fresh.copyCountersToModel();
    expect(formatRules(table, { counters: true })).toBe(
      [
        "-P PREROUTING ACCEPT -c 1 40",
        "-P INPUT ACCEPT -c 0 0",
        "-P OUTPUT ACCEPT -c 0 0",
        "-P POSTROUTING ACCEPT -c 0 0",
        "-N neutron-postrouting-bottom",
        "-N neutron-vpn-agen-OUTPUT",
        "-N neutron-vpn-agen-POSTROUTING",
        "-N neutron-vpn-agen-PREROUTING",
        "-N neutron-vpn-agen-float-snat",
        "-N neutron-vpn-agen-snat",
        "-A PREROUTING -c 3 160 -j neutron-vpn-agen-PREROUTING",
        "-A OUTPUT -c 1 60 -j neutron-vpn-agen-OUTPUT",
        "-A POSTROUTING -c 4 296 -j neutron-vpn-agen-POSTROUTING",
        "-A POSTROUTING -c 3 212 -j neutron-postrouting-bottom",
        "-A neutron-postrouting-bottom -c 3 212 -j neutron-vpn-agen-snat",
        "-A neutron-vpn-agen-OUTPUT -d 9.186.100.129/32 -c 1 60 -j DNAT --to-destination 10.0.0.2",
        "-A neutron-vpn-agen-POSTROUTING ! -i qg-e76de35e-90 ! -o qg-e76de35e-90 -m conntrack ! --ctstate DNAT -c 1 84 -j ACCEPT",
        "-A neutron-vpn-agen-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -c 1 60 -j REDIRECT --to-ports 9697",
        "-A neutron-vpn-agen-PREROUTING -d 9.186.100.129/32 -c 1 60 -j DNAT --to-destination 10.0.0.2",
        "-A neutron-vpn-agen-float-snat -s 10.0.0.2/32 -c 1 100 -j SNAT --to-source 9.186.100.129",
        "-A neutron-vpn-agen-snat -c 3 212 -j neutron-vpn-agen-float-snat",
        "-A neutron-vpn-agen-snat -s 10.0.0.0/24 -c 2 112 -j SNAT --to-source 9.186.100.2",
        "",
      ].join("\n"),
    );
    counted.resetCounters();
    expect(counted.packets.every((value) => value === 0)).toBe(true);
  });

  it("traces each rule visited, for qnat trace", () => {
    const trace = new RuleTrace();
    rules.traverse(Hook.Postrouting, fill(input, { src: "10.0.0.3", dst: "9.186.100.1", inPort: TENANT, outPort: GATEWAY }), trace);
    expect(trace.steps.map((step) => `${step.chain}#${step.ruleNumber} ${step.matched ? "match" : "no"} ${step.action}`)).toEqual([
      "POSTROUTING#1 match jump neutron-vpn-agen-POSTROUTING",
      "neutron-vpn-agen-POSTROUTING#1 no ",
      "neutron-vpn-agen-POSTROUTING#0 match RETURN",
      "POSTROUTING#2 match jump neutron-postrouting-bottom",
      "neutron-postrouting-bottom#1 match jump neutron-vpn-agen-snat",
      "neutron-vpn-agen-snat#1 match jump neutron-vpn-agen-float-snat",
      "neutron-vpn-agen-float-snat#1 no ",
      "neutron-vpn-agen-float-snat#0 match RETURN",
      "neutron-vpn-agen-snat#2 match SNAT to 9.186.100.2",
    ]);
    expect(trace.steps[1]!.text).toBe(
      "-A neutron-vpn-agen-POSTROUTING ! -i qg-e76de35e-90 ! -o qg-e76de35e-90 -m conntrack ! --ctstate DNAT -j ACCEPT",
    );
    expect(trace.verdict).toBe("SNAT 9.186.100.2");

    const policyTrace = new RuleTrace();
    rules.traverse(Hook.Prerouting, fill(input, { src: "10.0.0.3", dst: "8.8.8.8", inPort: TENANT }), policyTrace);
    expect(policyTrace.steps.at(-1)).toEqual({
      kind: "policy", chain: "PREROUTING", ruleNumber: 0, text: "-P PREROUTING ACCEPT", matched: true, action: "policy ACCEPT",
    });
    expect(policyTrace.verdict).toBe("policy ACCEPT");
  });
});

describe("xt traversal semantics", () => {
  const input = new RuleInput();

  it("RETURN in a built-in chain applies the policy; rules after it are not reached", () => {
    const rules = compileText("-A PREROUTING -j RETURN\n-A PREROUTING -j DNAT --to-destination 10.0.0.9\n");
    expect(rules.traverse(Hook.Prerouting, fill(input, { src: "1.1.1.1", dst: "2.2.2.2" })).kind).toBe(NatDecisionKind.None);
    expect(Array.from(rules.packets)).toEqual([1, 0]);
    expect(rules.policyPackets[0]).toBe(1);
  });

  it("a rule without a target only counts, and evaluation goes on", () => {
    const rules = compileText("-A PREROUTING -d 2.2.2.2\n-A PREROUTING -j DNAT --to-destination 10.0.0.9\n");
    expect(describeDecision(rules.traverse(Hook.Prerouting, fill(input, { src: "1.1.1.1", dst: "2.2.2.2" })))).toBe("DNAT 10.0.0.9");
    expect(Array.from(rules.packets)).toEqual([1, 1]);
  });

  it("-g does not push a return point: RETURN from the goto'd chain returns to the jumper's caller", () => {
    const text = [
      "-N a", "-N b", "-N c",
      "-A PREROUTING -j a",
      "-A PREROUTING -j DNAT --to-destination 10.0.0.1",
      "-A a -g b",
      "-A a -j DNAT --to-destination 10.0.0.2",
      "-A b -j RETURN",
      "-A c -j ACCEPT",
    ].join("\n");
    const rules = compileText(text);
    expect(describeDecision(rules.traverse(Hook.Prerouting, fill(input, { src: "1.1.1.1", dst: "2.2.2.2" })))).toBe("DNAT 10.0.0.1");
    const withJump = compileText(text.replace("-A a -g b", "-A a -j b"));
    expect(describeDecision(withJump.traverse(Hook.Prerouting, fill(input, { src: "1.1.1.1", dst: "2.2.2.2" })))).toBe("DNAT 10.0.0.2");
  });

  it("-g from a built-in chain: the end of the goto'd chain is the policy", () => {
    const rules = compileText("-N b\n-A PREROUTING -g b\n-A PREROUTING -j DNAT --to-destination 10.0.0.1\n");
    expect(rules.traverse(Hook.Prerouting, fill(input, { src: "1.1.1.1", dst: "2.2.2.2" })).kind).toBe(NatDecisionKind.None);
  });

  it("deep chains of jumps unwind in order", () => {
    const lines = ["-A PREROUTING -j c0", "-A PREROUTING -j DNAT --to-destination 10.9.9.9"];
    const depth = 40;
    for (let level = 0; level < depth; level++) {
      lines.unshift(`-N c${level}`);
      if (level + 1 < depth) lines.push(`-A c${level} -j c${level + 1}`);
      lines.push(`-A c${level} -s 10.0.0.${level}/32 -j DNAT --to-destination 10.1.0.${level}`);
    }
    const rules = compileText(lines.join("\n"));
    expect(describeDecision(rules.traverse(Hook.Prerouting, fill(input, { src: "10.0.0.7", dst: "2.2.2.2" })))).toBe("DNAT 10.1.0.7");
    expect(describeDecision(rules.traverse(Hook.Prerouting, fill(input, { src: "10.0.0.39", dst: "2.2.2.2" })))).toBe("DNAT 10.1.0.39");
    expect(describeDecision(rules.traverse(Hook.Prerouting, fill(input, { src: "10.0.0.99", dst: "2.2.2.2" })))).toBe("DNAT 10.9.9.9");
  });

  it("interface names: exact, + wildcard, negation, and no device", () => {
    expect(interfaceMatches("qr-694450d6-f6", false, "qr-694450d6-f6")).toBe(true);
    expect(interfaceMatches("qr+", false, "qr-aaaa0000-00")).toBe(true);
    expect(interfaceMatches("qr+", false, "qg-e76de35e-90")).toBe(false);
    expect(interfaceMatches("+", false, "")).toBe(true);
    expect(interfaceMatches("qg-e76de35e-90", true, "")).toBe(true);
    expect(interfaceMatches("qg-e76de35e-90", false, "")).toBe(false);
    const rules = compileText("-A PREROUTING ! -i qr+ -j DNAT --to-destination 10.0.0.2\n");
    expect(rules.traverse(Hook.Prerouting, fill(input, { src: "1.1.1.1", dst: "2.2.2.2", inPort: TENANT })).kind).toBe(NatDecisionKind.None);
    expect(rules.traverse(Hook.Prerouting, fill(input, { src: "1.1.1.1", dst: "2.2.2.2", inPort: OTHER_TENANT })).kind).toBe(NatDecisionKind.None);
    expect(rules.traverse(Hook.Prerouting, fill(input, { src: "1.1.1.1", dst: "2.2.2.2", inPort: GATEWAY })).kind).toBe(NatDecisionKind.Dnat);
    // An out-of-range port index is treated as "no device", never read past the rule's row.
    expect(rules.traverse(Hook.Prerouting, fill(input, { src: "1.1.1.1", dst: "2.2.2.2", inPort: 99 })).kind).toBe(NatDecisionKind.Dnat);
  });

  it("ports, ranges, multiport, tcp flags, icmp types and ctstate lists", () => {
    const rules = compileText(
      [
        "-A PREROUTING -p tcp -m tcp --sport 1000:2000 ! --dport 22 -j DNAT --to-destination 10.0.0.1",
        "-A PREROUTING -p udp -m multiport --dports 53,5000:5010 -j DNAT --to-destination 10.0.0.2:5353 --random",
        "-A PREROUTING -p tcp -m tcp ! --syn -j ACCEPT",
        "-A PREROUTING -p icmp -m icmp --icmp-type 3/1 -j DNAT --to-destination 10.0.0.3",
        "-A PREROUTING -p icmp -m icmp --icmp-type echo-request -j DNAT --to-destination 10.0.0.4",
        "-A PREROUTING -m conntrack --ctstate RELATED,INVALID -j ACCEPT",
        "-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.5-10.0.0.6:8000-8100",
      ].join("\n"),
    );
    const verdict = (spec: PacketSpec): string => describeDecision(rules.traverse(Hook.Prerouting, fill(input, spec)));
    expect(verdict({ src: "1.1.1.1", dst: "2.2.2.2", sport: 1500, dport: 80 })).toBe("DNAT 10.0.0.1");
    expect(verdict({ src: "1.1.1.1", dst: "2.2.2.2", sport: 1500, dport: 22 })).toBe("DNAT 10.0.0.5-10.0.0.6 :8000-8100");
    expect(verdict({ src: "1.1.1.1", dst: "2.2.2.2", sport: 2001, dport: 80, tcpFlags: 0x12 })).toBe("ACCEPT");
    expect(verdict({ protocol: PROTO_UDP, src: "1.1.1.1", dst: "2.2.2.2", dport: 5005 })).toBe("DNAT 10.0.0.2 :5353");
    expect(rules.decision.flags).toBe(NatRangeFlag.MapIps | NatRangeFlag.ProtoSpecified | NatRangeFlag.ProtoRandom);
    expect(verdict({ protocol: PROTO_UDP, src: "1.1.1.1", dst: "2.2.2.2", dport: 5011 })).toBe("policy ACCEPT");
    expect(verdict({ protocol: PROTO_UDP, src: "1.1.1.1", dst: "2.2.2.2", dport: 5011, ctstate: CtState.Related })).toBe("ACCEPT");
    expect(verdict({ protocol: PROTO_ICMP, src: "1.1.1.1", dst: "2.2.2.2", icmpType: 3, icmpCode: 1 })).toBe("DNAT 10.0.0.3");
    expect(verdict({ protocol: PROTO_ICMP, src: "1.1.1.1", dst: "2.2.2.2", icmpType: 3, icmpCode: 3 })).toBe("policy ACCEPT");
    expect(verdict({ protocol: PROTO_ICMP, src: "1.1.1.1", dst: "2.2.2.2", icmpType: 8, icmpCode: 0 })).toBe("DNAT 10.0.0.4");
  });
});

describe("compiled evaluation agrees with a naive reading of the rules", () => {
  /** A straightforward evaluator over the model, written independently of the compiled form. */
  it("on 20000 seeded random packets against the seed and a varied table", () => {
    const text =
      SEED_RULES.replace("-N neutron-postrouting-bottom", "-N extra\n-N neutron-postrouting-bottom").replace(
        "-A PREROUTING -j neutron-vpn-agen-PREROUTING",
        "-A PREROUTING -j extra\n-A PREROUTING -j neutron-vpn-agen-PREROUTING",
      ) + "-A extra -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.53\n";
    const rules = compileText(text);
    const rng = new XorShift32(42);
    const addresses = ["10.0.0.2", "10.0.0.3", "10.0.1.5", "9.186.100.1", "9.186.100.129", "169.254.169.254", "203.0.113.10"];
    const packet = new RuleInput();
    for (let i = 0; i < 20000; i++) {
      const hook = (rng.next() % 4) as Hook;
      const spec: PacketSpec = {
        protocol: [PROTO_TCP, PROTO_UDP, PROTO_ICMP][rng.next() % 3]!,
        src: addresses[rng.next() % addresses.length]!,
        dst: addresses[rng.next() % addresses.length]!,
        dport: [53, 80, 81][rng.next() % 3]!,
        inPort: hook === Hook.Output ? -1 : (rng.next() % 3),
        outPort: hook === Hook.Prerouting || hook === Hook.Input ? -1 : (rng.next() % 3),
        ctstate: CtState.New | (rng.next() % 2 === 0 ? CtState.Dnat : 0),
      };
      const got = describeDecision(rules.traverse(hook, fill(packet, spec)));
      expect(got, JSON.stringify({ hook, ...spec })).toBe(naiveSeedDecision(hook, spec));
    }
  });
});

/** The seed's (plus the extra DNS rule's) meaning, read off DESIGN.md by hand. */
function naiveSeedDecision(hook: Hook, spec: PacketSpec): string {
  const dst = spec.dst;
  if (hook === Hook.Prerouting) {
    if (spec.protocol === PROTO_UDP && spec.dport === 53) return "DNAT 10.0.0.53";
    if (dst === "169.254.169.254" && spec.protocol === PROTO_TCP && spec.dport === 80) return "REDIRECT :9697";
    if (dst === "9.186.100.129") return "DNAT 10.0.0.2";
    return "policy ACCEPT";
  }
  if (hook === Hook.Output) return dst === "9.186.100.129" ? "DNAT 10.0.0.2" : "policy ACCEPT";
  if (hook === Hook.Input) return "policy ACCEPT";
  const viaGateway = spec.inPort === GATEWAY || spec.outPort === GATEWAY;
  if (!viaGateway && ((spec.ctstate ?? 0) & CtState.Dnat) === 0) return "ACCEPT";
  if (spec.src === "10.0.0.2") return "SNAT 9.186.100.129";
  if (formatIpv4(parseIpv4(spec.src) & 0xffffff00) === "10.0.0.0") return "SNAT 9.186.100.2";
  return "policy ACCEPT";
}
