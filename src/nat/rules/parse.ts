/**
 * Parses `iptables -t nat -S` text or `iptables-save` text (nat table only) into a NatTable.
 *
 * Nothing is silently ignored: every unsupported module, option or target, every missing argument
 * and every semantic error iptables or the kernel would refuse is collected as `{ line, message }`
 * and parsing goes on, so one run reports all of them. Rules with an error are left out of the
 * returned table, which therefore is always safe to compile.
 *
 * Decisions where qnat is stricter than, or differs from, iptables (documented here on purpose):
 * - Policies: only ACCEPT. The nat table only translates; a DROP policy there would filter, which
 *   iptables refuses for DROP rules in nat ("not intended for filtering"), so qnat refuses it too.
 * - The legacy intrapositioned negation `-s ! X` is rejected (modern iptables rejects it too).
 * - Host names are not resolved: addresses must be numeric.
 * - Comma lists in -s/-d expand into one rule per pair, as iptables does.
 * - Chain references are resolved after the whole text is read, so `-N` may follow the `-A` that
 *   jumps to it; jumping to an undefined chain, a loop in the chain graph, a second `-N` of the
 *   same chain, `-A` to an unknown chain are errors.
 * - Target hooks are checked by reachability once the table is complete (x_tables checks them at
 *   rule insertion, net/netfilter/x_tables.c xt_check_target + mark_source_chains in ip_tables.c):
 *   DNAT and REDIRECT only from PREROUTING/OUTPUT, SNAT only from POSTROUTING/INPUT (xt_nat.c),
 *   MASQUERADE only from POSTROUTING (xt_MASQUERADE.c).
 */
import { parseIpv4, prefixMask } from "../../core/addr.js";
import {
  ANY_ADDRESS,
  BUILTIN_CHAIN_NAMES,
  CT_STATE_NAMES,
  Hook,
  HOOK_COUNT,
  NatRangeFlag,
  PROTOCOL_NAMES,
  PROTO_DCCP,
  PROTO_ICMP,
  PROTO_SCTP,
  PROTO_TCP,
  PROTO_UDP,
  PROTO_UDPLITE,
  STATE_MATCH_MASK,
  TargetKind,
  createNatTable,
  type AddressMatch,
  type InterfaceMatch,
  type MultiportMatch,
  type NatChain,
  type NatRange,
  type NatRule,
  type NatTable,
  type PortRange,
  type PortsMatch,
  type RuleMatch,
  type RuleTarget,
} from "./model.js";
import { tokenizeLine } from "./tokenize.js";

export interface RuleError {
  /** 1-based line in the parsed text. */
  readonly line: number;
  readonly message: string;
}

export interface ParseResult {
  readonly table: NatTable;
  /** Sorted by line. Empty when the whole text is valid. */
  readonly errors: RuleError[];
}

/** xt_comment.h XT_MAX_COMMENT_LEN (256 with the NUL). */
const MAX_COMMENT_LENGTH = 255;
/** XT_EXTENSION_MAXNAMELEN 29 with the NUL: chain names are at most 28 characters. */
const MAX_CHAIN_NAME_LENGTH = 28;
/** IFNAMSIZ 16 with the NUL. */
const MAX_INTERFACE_NAME_LENGTH = 15;
/** libxt_multiport.c XT_MULTI_PORTS. */
const MAX_MULTIPORT_PORTS = 15;

/** Targets iptables has but qnat does not implement: named as "unsupported", not "undefined chain". */
const KNOWN_UNSUPPORTED_TARGETS = new Set([
  "AUDIT", "CHECKSUM", "CLASSIFY", "CLUSTERIP", "CONNMARK", "CONNSECMARK", "CT", "DSCP", "ECN", "HMARK",
  "IDLETIMER", "LED", "LOG", "MARK", "NETMAP", "NFLOG", "NFQUEUE", "NOTRACK", "QUEUE", "RATEEST", "SECMARK",
  "SET", "SYNPROXY", "TCPMSS", "TCPOPTSTRIP", "TEE", "TOS", "TPROXY", "TRACE", "TTL", "ULOG",
]);
const FILTER_TARGETS = new Set(["DROP", "REJECT"]);
const TARGET_NAMES = new Set(["ACCEPT", "RETURN", "DNAT", "SNAT", "REDIRECT", "MASQUERADE", ...FILTER_TARGETS, ...KNOWN_UNSUPPORTED_TARGETS]);

/** Common service names iptables would resolve through getservbyname (netbase /etc/services). */
const SERVICE_PORTS: ReadonlyMap<string, number> = new Map([
  ["ftp", 21], ["ssh", 22], ["telnet", 23], ["smtp", 25], ["domain", 53], ["bootps", 67], ["bootpc", 68],
  ["tftp", 69], ["http", 80], ["www", 80], ["pop3", 110], ["ntp", 123], ["imap", 143], ["snmp", 161],
  ["ldap", 389], ["https", 443], ["isakmp", 500], ["syslog", 514], ["imaps", 993], ["pop3s", 995],
  ["openvpn", 1194], ["mysql", 3306], ["postgresql", 5432],
]);

/** ICMP type names (libipt_icmp.c icmp_codes): type and code range. */
const ICMP_TYPE_NAMES: ReadonlyMap<string, readonly [number, number, number]> = new Map([
  ["any", [0xff, 0, 0xff]],
  ["echo-reply", [0, 0, 0xff]],
  ["pong", [0, 0, 0xff]],
  ["destination-unreachable", [3, 0, 0xff]],
  ["network-unreachable", [3, 0, 0]],
  ["host-unreachable", [3, 1, 1]],
  ["protocol-unreachable", [3, 2, 2]],
  ["port-unreachable", [3, 3, 3]],
  ["fragmentation-needed", [3, 4, 4]],
  ["source-route-failed", [3, 5, 5]],
  ["network-prohibited", [3, 9, 9]],
  ["host-prohibited", [3, 10, 10]],
  ["communication-prohibited", [3, 13, 13]],
  ["source-quench", [4, 0, 0xff]],
  ["redirect", [5, 0, 0xff]],
  ["echo-request", [8, 0, 0xff]],
  ["ping", [8, 0, 0xff]],
  ["router-advertisement", [9, 0, 0xff]],
  ["router-solicitation", [10, 0, 0xff]],
  ["time-exceeded", [11, 0, 0xff]],
  ["ttl-exceeded", [11, 0, 0xff]],
  ["ttl-zero-during-transit", [11, 0, 0]],
  ["ttl-zero-during-reassembly", [11, 1, 1]],
  ["parameter-problem", [12, 0, 0xff]],
  ["timestamp-request", [13, 0, 0xff]],
  ["timestamp-reply", [14, 0, 0xff]],
  ["address-mask-request", [17, 0, 0xff]],
  ["address-mask-reply", [18, 0, 0xff]],
]);

/** TCP flag names (libxt_tcp.c tcp_flag_names). */
const TCP_FLAG_NAMES: ReadonlyMap<string, number> = new Map([
  ["FIN", 0x01], ["SYN", 0x02], ["RST", 0x04], ["PSH", 0x08], ["ACK", 0x10], ["URG", 0x20], ["ALL", 0x3f], ["NONE", 0],
]);

const SUPPORTED_MATCHES = new Set(["tcp", "udp", "multiport", "icmp", "conntrack", "state", "comment"]);

/** Options that are not extension options; never swallowed by an unsupported match or target. */
const GENERIC_OPTIONS = new Set([
  "-s", "--source", "--src", "-d", "--destination", "--dst", "-p", "--protocol", "-i", "--in-interface",
  "-o", "--out-interface", "-m", "--match", "-j", "--jump", "-g", "--goto", "-c", "--set-counters",
  "-f", "--fragment",
]);

/** A rule as read, before chain references are resolved. */
interface PendingRule {
  readonly rule: NatRule;
  readonly expandedFrom: number;
}

class TableBuilder {
  readonly table: NatTable = createNatTable();
  readonly errors: RuleError[] = [];
  readonly pending: PendingRule[] = [];
  /** Chains declared by -N or `:NAME -`, with their line. */
  readonly declared = new Map<string, number>();

  error(line: number, message: string): void {
    this.errors.push({ line, message });
  }
}

export function parseRules(text: string): ParseResult {
  const builder = new TableBuilder();
  const lines = text.split("\n");
  /** iptables-save framing: undefined before `*nat`, "nat" inside it, "skip" inside another table. */
  let section: "nat" | "skip" | undefined;
  let sawTableHeader = false;
  let sectionLine = 0;
  lines.forEach((rawLine, index) => {
    const line = index + 1;
    const trimmed = rawLine.trim();
    if (trimmed === "" || trimmed.startsWith("#")) return;
    if (trimmed.startsWith("*")) {
      if (section !== undefined) builder.error(line, `table "${trimmed}" starts before COMMIT of the previous table`);
      sawTableHeader = true;
      sectionLine = line;
      if (trimmed === "*nat") section = "nat";
      else {
        builder.error(line, `only the "nat" table is supported, not "${trimmed.slice(1)}"`);
        section = "skip";
      }
      return;
    }
    if (trimmed === "COMMIT") {
      if (section === undefined) builder.error(line, "COMMIT without a table (\"*nat\")");
      section = undefined;
      return;
    }
    if (section === "skip") return;
    if (sawTableHeader && section === undefined) {
      builder.error(line, "line outside a table: expected \"*nat\" first");
      return;
    }
    if (trimmed.startsWith(":")) {
      parseChainDeclaration(builder, trimmed, line);
      return;
    }
    const tokenized = tokenizeLine(trimmed);
    if (tokenized.error !== undefined) {
      builder.error(line, tokenized.error);
      return;
    }
    parseCommand(builder, tokenized.tokens, line);
  });
  if (section !== undefined) builder.error(sectionLine, "missing COMMIT at the end of the table");
  resolveTable(builder);
  const seen = new Set<string>();
  const errors = builder.errors
    .filter((error) => {
      const key = `${error.line}\u0000${error.message}`;
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    })
    .sort((a, b) => a.line - b.line);
  return { table: builder.table, errors };
}

// ---------------------------------------------------------------------------------------------
// Chains and commands

function parseChainDeclaration(builder: TableBuilder, text: string, line: number): void {
  const tokens = text.slice(1).trim().split(/\s+/);
  const [name, policy, counters] = tokens;
  if (name === undefined || name === "" || policy === undefined) {
    builder.error(line, `malformed chain line "${text}": expected ":CHAIN POLICY [PACKETS:BYTES]"`);
    return;
  }
  if (tokens.length > 3) builder.error(line, `unexpected text after the counters in "${text}"`);
  let packets = 0;
  let bytes = 0;
  if (counters !== undefined) {
    const parsed = parseBracketCounters(counters);
    if (parsed === undefined) {
      builder.error(line, `malformed counters "${counters}": expected [PACKETS:BYTES]`);
    } else {
      [packets, bytes] = parsed;
    }
  }
  const builtin = builder.table.chains.get(name);
  if (builtin !== undefined && builtin.hook !== undefined) {
    if (policy === "-") {
      builder.error(line, `built-in chain ${name} needs a policy, not "-"`);
      return;
    }
    if (setPolicy(builder, builtin, policy, line)) {
      builtin.packets = packets;
      builtin.bytes = bytes;
      builtin.line = line;
    }
    return;
  }
  if (policy !== "-") {
    builder.error(line, `user chain "${name}" cannot have a policy ("${policy}"): only built-in chains have one`);
  }
  declareChain(builder, name, line);
}

function declareChain(builder: TableBuilder, name: string, line: number): void {
  const problem = chainNameProblem(name);
  if (problem !== undefined) {
    builder.error(line, problem);
    return;
  }
  if (builder.table.chains.has(name)) {
    builder.error(line, `chain "${name}" already exists`);
    return;
  }
  builder.declared.set(name, line);
  builder.table.chains.set(name, { name, hook: undefined, policy: undefined, packets: 0, bytes: 0, line, rules: [] });
}

/** iptables.c: chain name length, leading '-' or '!', clashes with target names. */
function chainNameProblem(name: string): string | undefined {
  if (name.length > MAX_CHAIN_NAME_LENGTH) {
    return `chain name "${name}" is too long (at most ${MAX_CHAIN_NAME_LENGTH} characters)`;
  }
  if (name.startsWith("-") || name.startsWith("!")) return `chain name "${name}" may not start with "${name[0]}"`;
  if (/\s/.test(name)) return `chain name "${name}" may not contain blanks`;
  // `iptables -S` and iptables-save print chain names bare, and their readers take quotes and
  // backslashes as quoting (iptables-restore add_param_to_argv): such a name could not be read back.
  if (/["'\\]/.test(name)) return `chain name ${JSON.stringify(name)} may not contain quotes or backslashes`;
  if (TARGET_NAMES.has(name)) return `chain name "${name}" may not clash with a target name`;
  return undefined;
}

function setPolicy(builder: TableBuilder, chain: NatChain, policy: string, line: number): boolean {
  if (policy === "ACCEPT") {
    chain.policy = policy;
    return true;
  }
  if (policy === "DROP") {
    builder.error(
      line,
      `policy DROP is not supported in the "nat" table (${chain.name}): the nat table translates, it does not filter`,
    );
  } else {
    builder.error(line, `invalid policy "${policy}" for ${chain.name}: the nat table only allows ACCEPT`);
  }
  return false;
}

function parseBracketCounters(text: string): [number, number] | undefined {
  const match = /^\[(\d+):(\d+)\]$/.exec(text);
  if (match === null) return undefined;
  return [Number(match[1]), Number(match[2])];
}

const UNSUPPORTED_COMMANDS = new Map([
  ["-I", "-I"], ["--insert", "-I"], ["-D", "-D"], ["--delete", "-D"], ["-R", "-R"], ["--replace", "-R"],
  ["-F", "-F"], ["--flush", "-F"], ["-X", "-X"], ["--delete-chain", "-X"], ["-Z", "-Z"], ["--zero", "-Z"],
  ["-E", "-E"], ["--rename-chain", "-E"], ["-L", "-L"], ["--list", "-L"], ["-S", "-S"], ["--list-rules", "-S"],
  ["-C", "-C"], ["--check", "-C"],
]);

function parseCommand(builder: TableBuilder, allTokens: string[], line: number): void {
  let tokens = allTokens;
  // Accept a pasted command line: `iptables -t nat -A ...`.
  if (tokens[0] !== undefined && /^iptables(-legacy|-nft)?$/.test(tokens[0])) {
    tokens = tokens.slice(1);
  }
  let counters: [number, number] | undefined;
  if (tokens[0] !== undefined && tokens[0].startsWith("[")) {
    counters = parseBracketCounters(tokens[0]);
    if (counters === undefined) {
      builder.error(line, `malformed counters "${tokens[0]}": expected [PACKETS:BYTES]`);
      return;
    }
    tokens = tokens.slice(1);
  }
  while (tokens[0] === "-t" || tokens[0] === "--table") {
    const table = tokens[1];
    if (table !== "nat") {
      builder.error(line, table === undefined ? `option "${tokens[0]}" requires an argument` : `only the "nat" table is supported, not "${table}"`);
      return;
    }
    tokens = tokens.slice(2);
  }
  const command = tokens[0];
  if (command === undefined) {
    builder.error(line, "missing command");
    return;
  }
  switch (command) {
    case "-P":
    case "--policy": {
      const [, chainName, policy, ...rest] = tokens;
      if (chainName === undefined || policy === undefined) {
        builder.error(line, `option "${command}" requires a chain and a policy`);
        return;
      }
      const chain = builder.table.chains.get(chainName);
      if (chain === undefined || chain.hook === undefined) {
        builder.error(line, `-P is only valid for built-in chains, not "${chainName}"`);
        return;
      }
      let policyCounters: [number, number] | undefined;
      if (rest.length > 0) {
        policyCounters = parseDashCounters(builder, rest, 0, line);
        if (policyCounters === undefined) return;
        if (rest.length > 3) {
          builder.error(line, `unexpected argument "${rest[3]}"`);
          return;
        }
      }
      if (setPolicy(builder, chain, policy, line)) {
        chain.line = line;
        if (policyCounters !== undefined) [chain.packets, chain.bytes] = policyCounters;
      }
      return;
    }
    case "-N":
    case "--new-chain":
    case "--new": {
      const name = tokens[1];
      if (name === undefined) {
        builder.error(line, `option "${command}" requires a chain name`);
        return;
      }
      if (tokens.length > 2) builder.error(line, `unexpected argument "${tokens[2]}"`);
      declareChain(builder, name, line);
      return;
    }
    case "-A":
    case "--append": {
      const chainName = tokens[1];
      if (chainName === undefined || chainName.startsWith("-")) {
        builder.error(line, `option "${command}" requires a chain name`);
        return;
      }
      parseRule(builder, chainName, tokens.slice(2), line, counters);
      return;
    }
    default: {
      const unsupported = UNSUPPORTED_COMMANDS.get(command);
      if (unsupported !== undefined) builder.error(line, `unsupported command "${unsupported}": only -P, -N and -A describe a table`);
      else builder.error(line, `unknown command "${command}"`);
    }
  }
}

/** `-c PACKETS BYTES` at tokens[at]. */
function parseDashCounters(builder: TableBuilder, tokens: readonly string[], at: number, line: number): [number, number] | undefined {
  const option = tokens[at]!;
  if (option !== "-c" && option !== "--set-counters") {
    builder.error(line, `unexpected argument "${option}"`);
    return undefined;
  }
  const packets = tokens[at + 1];
  const bytes = tokens[at + 2];
  if (packets === undefined || bytes === undefined) {
    builder.error(line, `option "${option}" requires PACKETS and BYTES`);
    return undefined;
  }
  if (!/^\d+$/.test(packets) || !/^\d+$/.test(bytes)) {
    builder.error(line, `invalid counters "${packets} ${bytes}" for "${option}"`);
    return undefined;
  }
  return [Number(packets), Number(bytes)];
}

// ---------------------------------------------------------------------------------------------
// Rules

type TargetName = "DNAT" | "SNAT" | "REDIRECT" | "MASQUERADE";

interface TargetState {
  readonly name: string;
  kind: TargetKind;
  chain: string;
  /** NAT range under construction; flags collect --random etc. */
  range: NatRange;
  /** Was --to-destination / --to-source / --to-ports given. */
  rangeGiven: boolean;
  /** Unsupported or refused target: its options are swallowed, not reported one by one. */
  swallow: boolean;
}

interface RuleState {
  readonly builder: TableBuilder;
  readonly line: number;
  readonly chainName: string;
  ok: boolean;
  sources: AddressMatch[] | undefined;
  destinations: AddressMatch[] | undefined;
  inInterface: InterfaceMatch | undefined;
  outInterface: InterfaceMatch | undefined;
  protocol: number | undefined;
  protocolInvert: boolean;
  matches: RuleMatch[];
  /** The match the latest `-m` loaded; "swallow" after an unsupported `-m`. */
  current: RuleMatch | "swallow" | undefined;
  target: TargetState | undefined;
  counters: [number, number] | undefined;
}

function parseRule(
  builder: TableBuilder,
  chainName: string,
  tokens: string[],
  line: number,
  bracketCounters: [number, number] | undefined,
): void {
  const state: RuleState = {
    builder,
    line,
    chainName,
    ok: true,
    sources: undefined,
    destinations: undefined,
    inInterface: undefined,
    outInterface: undefined,
    protocol: undefined,
    protocolInvert: false,
    matches: [],
    current: undefined,
    target: undefined,
    counters: bracketCounters,
  };
  const fail = (message: string): void => {
    state.ok = false;
    builder.error(line, message);
  };
  let invert = false;
  let i = 0;
  while (i < tokens.length) {
    const token = tokens[i]!;
    if (token === "!") {
      if (invert) fail('multiple "!" flags not allowed');
      invert = true;
      i++;
      continue;
    }
    if (!token.startsWith("-") || token === "-") {
      fail(`unexpected argument "${token}"`);
      invert = false;
      i++;
      continue;
    }
    const consumed = parseOption(state, tokens, i, invert, fail);
    invert = false;
    i += consumed;
  }
  if (invert) fail('"!" at the end of the rule: it must precede an option');
  finishRule(state, tokens, fail);
}

/** Handles the option at tokens[i]; returns how many tokens it consumed (at least 1). */
function parseOption(
  state: RuleState,
  tokens: string[],
  i: number,
  invert: boolean,
  fail: (message: string) => void,
): number {
  const option = tokens[i]!;
  const arg = tokens[i + 1];
  /** `-s ! X`: the X is part of the refused option, not a stray argument. */
  let legacyNegation = false;
  const skip = (): number => (legacyNegation ? 3 : 2);
  const needArg = (): string | undefined => {
    if (arg === undefined) {
      fail(`option "${option}" requires an argument`);
      return undefined;
    }
    if (arg === "!") {
      fail(`"!" after the option ("${option} ! X") is not supported: write "! ${option} X"`);
      legacyNegation = true;
      return undefined;
    }
    return arg;
  };
  switch (option) {
    case "-s":
    case "--source":
    case "--src":
    case "-d":
    case "--destination":
    case "--dst": {
      const isSource = option === "-s" || option === "--source" || option === "--src";
      const value = needArg();
      if (value === undefined) return skip();
      if ((isSource ? state.sources : state.destinations) !== undefined) {
        fail(`multiple ${isSource ? "-s" : "-d"} flags not allowed`);
        return 2;
      }
      const list: AddressMatch[] = [];
      for (const part of value.split(",")) {
        const parsed = parseAddressMatch(part, invert);
        if (typeof parsed === "string") {
          fail(parsed);
          return 2;
        }
        list.push(parsed);
      }
      if (invert && list.length > 1) {
        fail(`"!" not allowed with multiple ${isSource ? "source" : "destination"} addresses`);
        return 2;
      }
      if (isSource) state.sources = list;
      else state.destinations = list;
      return 2;
    }
    case "-p":
    case "--protocol": {
      const value = needArg();
      if (value === undefined) return skip();
      if (state.protocol !== undefined) {
        fail("multiple -p flags not allowed");
        return 2;
      }
      const protocol = parseProtocol(value);
      if (protocol === undefined) {
        fail(`unknown protocol "${value}"`);
        return 2;
      }
      if (protocol === 0 && invert) {
        fail("rule would never match protocol (\"! -p all\")");
        return 2;
      }
      state.protocol = protocol;
      state.protocolInvert = invert;
      return 2;
    }
    case "-i":
    case "--in-interface":
    case "-o":
    case "--out-interface": {
      const isIn = option === "-i" || option === "--in-interface";
      const value = needArg();
      if (value === undefined) return skip();
      if ((isIn ? state.inInterface : state.outInterface) !== undefined) {
        fail(`multiple ${isIn ? "-i" : "-o"} flags not allowed`);
        return 2;
      }
      if (value.length > MAX_INTERFACE_NAME_LENGTH) {
        fail(`interface name "${value}" must be shorter than IFNAMSIZ (${MAX_INTERFACE_NAME_LENGTH})`);
        return 2;
      }
      if (value === "" || /[\s/]/.test(value) || value.slice(0, -1).includes("+")) {
        fail(`invalid interface name "${value}"`);
        return 2;
      }
      const match: InterfaceMatch = { name: value, invert };
      if (isIn) state.inInterface = match;
      else state.outInterface = match;
      return 2;
    }
    case "-m":
    case "--match": {
      if (invert) fail('unexpected "!" before --match');
      const name = needArg();
      if (name === undefined) return skip();
      if (!SUPPORTED_MATCHES.has(name)) {
        fail(`unsupported match "-m ${name}"`);
        state.current = "swallow";
        return 2;
      }
      const match = newMatch(name);
      state.matches.push(match);
      state.current = match;
      return 2;
    }
    case "-j":
    case "--jump":
    case "-g":
    case "--goto": {
      const isGoto = option === "-g" || option === "--goto";
      if (invert) fail(`cannot have "!" before ${isGoto ? "-g" : "-j"}`);
      const name = needArg();
      if (name === undefined) return skip();
      if (state.target !== undefined) {
        fail("multiple -j/-g flags not allowed");
        return 2;
      }
      state.target = newTarget(state, name, isGoto, fail);
      return 2;
    }
    case "-c":
    case "--set-counters": {
      if (invert) fail('cannot have "!" before -c');
      const counters = parseDashCounters(state.builder, tokens, i, state.line);
      if (counters === undefined) state.ok = false;
      else state.counters = counters;
      return 3;
    }
    case "-f":
    case "--fragment":
      fail(`unsupported option "${option}" (fragments never reach the nat table's rules in qnat)`);
      return 1;
    default:
      break;
  }
  // Extension options: the target's first, then the matches', then an implicit protocol match.
  const target = state.target;
  if (target !== undefined && target.swallow && !GENERIC_OPTIONS.has(option)) return swallowOption(tokens, i);
  if (target !== undefined) {
    const consumed = parseTargetOption(target, option, arg, invert, fail);
    if (consumed > 0) return consumed;
  }
  if (state.current === "swallow") return swallowOption(tokens, i);
  const candidates: RuleMatch[] = [];
  if (state.current !== undefined) candidates.push(state.current);
  for (let m = state.matches.length - 1; m >= 0; m--) if (state.matches[m] !== state.current) candidates.push(state.matches[m]!);
  for (const match of candidates) {
    if (matchKnowsOption(match, option)) return parseMatchOption(match, option, arg, tokens[i + 2], invert, fail);
  }
  // `-p tcp --dport 80` without `-m tcp`: iptables loads the protocol's match implicitly.
  const implicitName = state.protocolInvert ? undefined : implicitMatchName(state.protocol);
  if (implicitName !== undefined) {
    const implicit = newMatch(implicitName);
    if (matchKnowsOption(implicit, option)) {
      state.matches.push(implicit);
      return parseMatchOption(implicit, option, arg, tokens[i + 2], invert, fail);
    }
  }
  fail(`unknown option "${option}"`);
  return swallowOption(tokens, i);
}

/** Skips an option and its arguments (words up to the next option). */
function swallowOption(tokens: string[], i: number): number {
  let j = i + 1;
  while (j < tokens.length && !tokens[j]!.startsWith("-") && tokens[j] !== "!") j++;
  return j - i;
}

function implicitMatchName(protocol: number | undefined): string | undefined {
  if (protocol === PROTO_TCP) return "tcp";
  if (protocol === PROTO_UDP) return "udp";
  if (protocol === PROTO_ICMP) return "icmp";
  return undefined;
}

function newMatch(name: string): RuleMatch {
  switch (name) {
    case "tcp":
    case "udp":
      return { kind: name, sport: undefined, sportInvert: false, dport: undefined, dportInvert: false, tcpFlags: undefined };
    case "multiport":
      return { kind: "multiport", direction: undefined, ranges: [], invert: false };
    case "icmp":
      return { kind: "icmp", type: 0xff, codeMin: 0, codeMax: 0xff, invert: false };
    case "conntrack":
    case "state":
      return { kind: name, stateMask: 0, invert: false, given: false };
    default:
      return { kind: "comment", text: undefined };
  }
}

const MATCH_OPTIONS: Record<RuleMatch["kind"], ReadonlySet<string>> = {
  tcp: new Set(["--sport", "--source-port", "--dport", "--destination-port", "--tcp-flags", "--syn"]),
  udp: new Set(["--sport", "--source-port", "--dport", "--destination-port"]),
  multiport: new Set(["--sports", "--source-ports", "--dports", "--destination-ports", "--ports"]),
  icmp: new Set(["--icmp-type"]),
  conntrack: new Set(["--ctstate"]),
  state: new Set(["--state"]),
  comment: new Set(["--comment"]),
};

function matchKnowsOption(match: RuleMatch, option: string): boolean {
  return MATCH_OPTIONS[match.kind].has(option);
}

function parseMatchOption(
  match: RuleMatch,
  option: string,
  arg: string | undefined,
  arg2: string | undefined,
  invert: boolean,
  fail: (message: string) => void,
): number {
  if (option === "--syn") {
    const tcp = match as PortsMatch;
    if (tcp.tcpFlags !== undefined) fail("multiple --tcp-flags/--syn not allowed");
    // libxt_tcp.c: --syn is --tcp-flags SYN,RST,ACK,FIN SYN.
    else tcp.tcpFlags = { mask: 0x17, comp: 0x02, invert };
    return 1;
  }
  if (arg === undefined) {
    fail(`option "${option}" requires an argument`);
    return 1;
  }
  if (arg === "!") {
    fail(`"!" after the option ("${option} ! X") is not supported: write "! ${option} X"`);
    return 3;
  }
  switch (match.kind) {
    case "tcp":
    case "udp": {
      if (option === "--tcp-flags") {
        const compText = arg2;
        if (compText === undefined || compText.startsWith("-")) {
          fail('option "--tcp-flags" requires two arguments: MASK COMP');
          return 2;
        }
        const mask = parseFlagList(arg);
        const comp = parseFlagList(compText);
        if (mask === undefined || comp === undefined) fail(`unknown TCP flag in "--tcp-flags ${arg} ${compText}"`);
        else if (match.tcpFlags !== undefined) fail("multiple --tcp-flags/--syn not allowed");
        else match.tcpFlags = { mask, comp, invert };
        return 3;
      }
      const isSource = option === "--sport" || option === "--source-port";
      const range = parsePortRange(arg);
      if (typeof range === "string") {
        fail(range);
        return 2;
      }
      if (isSource) {
        if (match.sport !== undefined) fail("multiple --sport flags not allowed");
        match.sport = range;
        match.sportInvert = invert;
      } else {
        if (match.dport !== undefined) fail("multiple --dport flags not allowed");
        match.dport = range;
        match.dportInvert = invert;
      }
      return 2;
    }
    case "multiport":
      parseMultiport(match, option, arg, invert, fail);
      return 2;
    case "icmp": {
      const parsed = parseIcmpType(arg);
      if (parsed === undefined) {
        fail(`invalid ICMP type "${arg}"`);
        return 2;
      }
      [match.type, match.codeMin, match.codeMax] = parsed;
      match.invert = invert;
      return 2;
    }
    case "conntrack":
    case "state": {
      if (match.given) fail(`multiple ${option} flags not allowed`);
      const mask = parseStateList(arg, match.kind === "state" ? STATE_MATCH_MASK : 0x7f);
      if (typeof mask === "string") {
        fail(mask);
        return 2;
      }
      match.stateMask = mask;
      match.invert = invert;
      match.given = true;
      return 2;
    }
    case "comment": {
      if (invert) fail('"!" is not allowed with --comment');
      if (match.text !== undefined) fail("multiple --comment flags not allowed");
      if (arg.length > MAX_COMMENT_LENGTH) fail(`comment may not exceed ${MAX_COMMENT_LENGTH} characters`);
      match.text = arg;
      return 2;
    }
  }
}

function parseFlagList(text: string): number | undefined {
  let flags = 0;
  for (const name of text.split(",")) {
    const bit = TCP_FLAG_NAMES.get(name.toUpperCase());
    if (bit === undefined) return undefined;
    flags |= bit;
  }
  return flags;
}

function parseMultiport(
  match: MultiportMatch,
  option: string,
  arg: string,
  invert: boolean,
  fail: (message: string) => void,
): void {
  if (match.direction !== undefined) {
    fail("multiport can only have one option (--sports, --dports or --ports)");
    return;
  }
  const direction =
    option === "--sports" || option === "--source-ports" ? "sports" : option === "--ports" ? "ports" : "dports";
  const ranges: PortRange[] = [];
  let slots = 0;
  for (const part of arg.split(",")) {
    const range = parsePortRange(part);
    if (typeof range === "string") {
      fail(range);
      return;
    }
    slots += range.min === range.max ? 1 : 2;
    ranges.push(range);
  }
  if (slots > MAX_MULTIPORT_PORTS) {
    fail(`too many ports specified (at most ${MAX_MULTIPORT_PORTS}, a range counts as two)`);
    return;
  }
  match.direction = direction;
  match.ranges = ranges;
  match.invert = invert;
}

/** A port or range as libxt_tcp accepts it: `P`, `A:B`, `:B` (0:B), `A:` (A:65535). */
function parsePortRange(text: string): PortRange | string {
  const colon = text.indexOf(":");
  if (colon < 0) {
    const port = parsePort(text);
    return port === undefined ? `invalid port "${text}"` : { min: port, max: port };
  }
  const minText = text.slice(0, colon);
  const maxText = text.slice(colon + 1);
  const min = minText === "" ? 0 : parsePort(minText);
  const max = maxText === "" ? 65535 : parsePort(maxText);
  if (min === undefined || max === undefined) return `invalid port range "${text}"`;
  if (min > max) return `invalid port range "${text}" (min > max)`;
  return { min, max };
}

function parsePort(text: string): number | undefined {
  if (/^\d{1,5}$/.test(text)) {
    const port = Number(text);
    return port <= 65535 ? port : undefined;
  }
  return SERVICE_PORTS.get(text);
}

function parseIcmpType(text: string): [number, number, number] | undefined {
  const named = ICMP_TYPE_NAMES.get(text.toLowerCase());
  if (named !== undefined) return [named[0], named[1], named[2]];
  const match = /^(\d{1,3})(?:\/(\d{1,3}))?$/.exec(text);
  if (match === null) return undefined;
  const type = Number(match[1]);
  if (type > 255) return undefined;
  if (match[2] === undefined) return [type, 0, 0xff];
  const code = Number(match[2]);
  if (code > 255) return undefined;
  return [type, code, code];
}

function parseStateList(text: string, allowed: number): number | string {
  let mask = 0;
  for (const name of text.split(",")) {
    const entry = CT_STATE_NAMES.find(([stateName]) => stateName === name.toUpperCase());
    if (entry === undefined || (entry[1] & allowed) === 0) return `bad state "${name}"`;
    mask |= entry[1];
  }
  return mask;
}

// ---------------------------------------------------------------------------------------------
// Targets

function newTarget(state: RuleState, name: string, isGoto: boolean, fail: (message: string) => void): TargetState {
  const target: TargetState = {
    name,
    kind: TargetKind.None,
    chain: "",
    range: { flags: 0, minAddr: 0, maxAddr: 0, minPort: 0, maxPort: 0 },
    rangeGiven: false,
    swallow: false,
  };
  const builtinTarget = isGoto ? undefined : name;
  switch (builtinTarget) {
    case "ACCEPT":
      target.kind = TargetKind.Accept;
      return target;
    case "RETURN":
      target.kind = TargetKind.Return;
      return target;
    case "DNAT":
      target.kind = TargetKind.Dnat;
      return target;
    case "SNAT":
      target.kind = TargetKind.Snat;
      return target;
    case "REDIRECT":
      target.kind = TargetKind.Redirect;
      return target;
    case "MASQUERADE":
      target.kind = TargetKind.Masquerade;
      return target;
    default:
      break;
  }
  if (FILTER_TARGETS.has(name)) {
    // iptables.c (and xt_REJECT.c's table restriction): nat never filters.
    fail(`The "nat" table is not intended for filtering, the use of ${name} is therefore inhibited.`);
    target.swallow = true;
    return target;
  }
  if (TARGET_NAMES.has(name) || (!state.builder.table.chains.has(name) && /^[A-Z][A-Z0-9_]*$/.test(name))) {
    fail(isGoto ? `cannot goto target "${name}": -g takes a user chain` : `unsupported target "${name}"`);
    target.swallow = true;
    return target;
  }
  target.kind = isGoto ? TargetKind.Goto : TargetKind.Jump;
  target.chain = name;
  return target;
}

const TARGET_OPTIONS: Record<TargetName, ReadonlySet<string>> = {
  DNAT: new Set(["--to-destination", "--random", "--persistent"]),
  SNAT: new Set(["--to-source", "--random", "--random-fully", "--persistent"]),
  MASQUERADE: new Set(["--to-ports", "--random", "--random-fully"]),
  REDIRECT: new Set(["--to-ports", "--random"]),
};

function targetOptionSet(target: TargetState): ReadonlySet<string> | undefined {
  switch (target.kind) {
    case TargetKind.Dnat:
      return TARGET_OPTIONS.DNAT;
    case TargetKind.Snat:
      return TARGET_OPTIONS.SNAT;
    case TargetKind.Masquerade:
      return TARGET_OPTIONS.MASQUERADE;
    case TargetKind.Redirect:
      return TARGET_OPTIONS.REDIRECT;
    default:
      return undefined;
  }
}

/** Returns tokens consumed, 0 when the option is not the target's. */
function parseTargetOption(
  target: TargetState,
  option: string,
  arg: string | undefined,
  invert: boolean,
  fail: (message: string) => void,
): number {
  const options = targetOptionSet(target);
  if (options === undefined || !options.has(option)) return 0;
  if (invert) fail(`"!" is not allowed with ${option}`);
  const range = target.range;
  switch (option) {
    case "--random":
      range.flags |= NatRangeFlag.ProtoRandom;
      return 1;
    case "--random-fully":
      range.flags |= NatRangeFlag.ProtoRandomFully;
      return 1;
    case "--persistent":
      range.flags |= NatRangeFlag.Persistent;
      return 1;
    default:
      break;
  }
  if (arg === undefined || arg.startsWith("-")) {
    fail(`option "${option}" requires an argument`);
    return 1;
  }
  if (target.rangeGiven) {
    fail(`${target.name}: multiple ${option} not supported`);
    return 2;
  }
  target.rangeGiven = true;
  const problem = option === "--to-ports" ? parseToPorts(range, arg) : parseNatRange(range, arg);
  if (problem !== undefined) fail(`${target.name}: ${problem}`);
  return 2;
}

/** `IP[-IP][:PORT[-PORT]]` (libxt_DNAT.c parse_to). */
function parseNatRange(range: NatRange, text: string): string | undefined {
  const colon = text.indexOf(":");
  const addrText = colon < 0 ? text : text.slice(0, colon);
  if (addrText !== "") {
    const dash = addrText.indexOf("-");
    const minAddr = parseIpv4(dash < 0 ? addrText : addrText.slice(0, dash));
    const maxAddr = dash < 0 ? minAddr : parseIpv4(addrText.slice(dash + 1));
    if (minAddr < 0 || maxAddr < 0) return `bad IP address "${addrText}"`;
    if (minAddr > maxAddr) return `bad IP range "${addrText}" (first address above last)`;
    range.flags |= NatRangeFlag.MapIps;
    range.minAddr = minAddr;
    range.maxAddr = maxAddr;
  } else if (colon < 0) {
    return "empty address";
  }
  if (colon >= 0) return parseToPorts(range, text.slice(colon + 1));
  return undefined;
}

/** `PORT[-PORT]`; NAT ports are 1..65535 (libxt_DNAT.c: "Port `%s' not valid"). */
function parseToPorts(range: NatRange, text: string): string | undefined {
  const match = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(text);
  if (match === null) {
    if (text.includes("/")) return `port offsets ("${text}") are not supported`;
    return `bad port "${text}"`;
  }
  const minPort = Number(match[1]);
  const maxPort = match[2] === undefined ? minPort : Number(match[2]);
  if (minPort < 1 || minPort > 65535 || maxPort < 1 || maxPort > 65535) return `port "${text}" not valid`;
  if (minPort > maxPort) return `bad port range "${text}" (min > max)`;
  range.flags |= NatRangeFlag.ProtoSpecified;
  range.minPort = minPort;
  range.maxPort = maxPort;
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Finishing a rule

function finishRule(state: RuleState, tokens: string[], fail: (message: string) => void): void {
  const protocol = state.protocol ?? 0;
  const protoOk = (allowed: readonly number[]): boolean => !state.protocolInvert && allowed.includes(protocol);
  /** A missing mandatory option is only worth reporting when the options themselves were fine. */
  const optionsOk = state.ok;
  for (const match of state.matches) {
    switch (match.kind) {
      case "tcp":
      case "udp":
        // xt_tcpudp.c: the match registers for its protocol only.
        if (!protoOk([match.kind === "tcp" ? PROTO_TCP : PROTO_UDP])) fail(`-m ${match.kind} requires -p ${match.kind}`);
        break;
      case "icmp":
        if (!protoOk([PROTO_ICMP])) fail("-m icmp requires -p icmp");
        break;
      case "multiport":
        if (!protoOk([PROTO_TCP, PROTO_UDP, PROTO_UDPLITE, PROTO_SCTP, PROTO_DCCP])) {
          fail("-m multiport requires -p tcp, -p udp, -p udplite, -p sctp or -p dccp");
        }
        if (match.direction === undefined && optionsOk) fail("-m multiport needs --sports, --dports or --ports");
        break;
      case "conntrack":
        if (!match.given && optionsOk) fail("-m conntrack: at least one option is required (qnat supports --ctstate)");
        break;
      case "state":
        if (!match.given && optionsOk) fail("-m state requires --state");
        break;
      case "comment":
        if (match.text === undefined && optionsOk) fail("-m comment requires --comment");
        break;
    }
  }
  // iptables.c: -o cannot be used where there is no output device yet, -i where there is no input.
  if ((state.chainName === "PREROUTING" || state.chainName === "INPUT") && state.outInterface !== undefined) {
    fail(`can't use -o with ${state.chainName}`);
  }
  if ((state.chainName === "POSTROUTING" || state.chainName === "OUTPUT") && state.inInterface !== undefined) {
    fail(`can't use -i with ${state.chainName}`);
  }
  const target = state.target;
  let ruleTarget: RuleTarget = { kind: TargetKind.None };
  if (target !== undefined && !target.swallow) {
    ruleTarget = buildTarget(target, protoOk, fail);
  }
  if (!state.ok) return;
  const [packets, bytes] = state.counters ?? [0, 0];
  const sources = state.sources ?? [ANY_ADDRESS];
  const destinations = state.destinations ?? [ANY_ADDRESS];
  let expanded = 0;
  for (const src of sources) {
    for (const dst of destinations) {
      const rule: NatRule = {
        chain: state.chainName,
        line: state.line,
        tokens,
        src,
        dst,
        inInterface: state.inInterface,
        outInterface: state.outInterface,
        protocol,
        protocolInvert: state.protocolInvert,
        matches: state.matches,
        target: ruleTarget,
        packets,
        bytes,
      };
      state.builder.pending.push({ rule, expandedFrom: expanded++ });
    }
  }
}

function buildTarget(
  target: TargetState,
  protoOk: (allowed: readonly number[]) => boolean,
  fail: (message: string) => void,
): RuleTarget {
  switch (target.kind) {
    case TargetKind.Accept:
    case TargetKind.Return:
    case TargetKind.None:
      return { kind: target.kind };
    case TargetKind.Jump:
    case TargetKind.Goto:
      return { kind: target.kind, chain: target.chain };
    case TargetKind.Dnat:
    case TargetKind.Snat: {
      const option = target.kind === TargetKind.Dnat ? "--to-destination" : "--to-source";
      if (!target.rangeGiven) fail(`${target.name} needs ${option}`);
      // libxt_DNAT.c / libxt_SNAT.c: "Need TCP, UDP, SCTP or DCCP with port specification".
      if ((target.range.flags & NatRangeFlag.ProtoSpecified) !== 0 && !protoOk([PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_DCCP, PROTO_ICMP])) {
        fail(`${target.name}: a port in ${option} needs -p tcp, udp, sctp, dccp or icmp`);
      }
      return { kind: target.kind, range: target.range };
    }
    case TargetKind.Redirect:
    case TargetKind.Masquerade:
      if ((target.range.flags & NatRangeFlag.ProtoSpecified) !== 0 && !protoOk([PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_DCCP])) {
        fail(`${target.name}: --to-ports needs -p tcp, udp, sctp or dccp`);
      }
      return { kind: target.kind, range: target.range };
  }
}

// ---------------------------------------------------------------------------------------------
// Addresses and protocols

/** `A.B.C.D`, `A.B.C.D/N` or `A.B.C.D/M.M.M.M`; the address is masked as iptables stores it. */
function parseAddressMatch(text: string, invert: boolean): AddressMatch | string {
  const slash = text.indexOf("/");
  const addr = parseIpv4(slash < 0 ? text : text.slice(0, slash));
  if (addr < 0) return `invalid address "${text}" (host names are not resolved)`;
  let mask = 0xffffffff;
  if (slash >= 0) {
    const maskText = text.slice(slash + 1);
    if (/^\d{1,2}$/.test(maskText) && Number(maskText) <= 32) mask = prefixMask(Number(maskText));
    else {
      const dotted = parseIpv4(maskText);
      if (dotted < 0) return `invalid mask in "${text}"`;
      mask = dotted;
    }
  }
  return { addr: (addr & mask) >>> 0, mask: mask >>> 0, invert };
}

function parseProtocol(text: string): number | undefined {
  const lower = text.toLowerCase();
  if (lower === "all") return 0;
  if (/^\d{1,3}$/.test(lower)) {
    const value = Number(lower);
    return value <= 255 ? value : undefined;
  }
  if (lower === "icmpv6") return 58;
  for (const [number, name] of PROTOCOL_NAMES) if (name === lower) return number;
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Whole-table checks: chain references, loops, hooks

const NAT_TARGET_HOOKS: ReadonlyMap<TargetKind, { name: string; hooks: number; where: string }> = new Map([
  [TargetKind.Dnat, { name: "DNAT", hooks: (1 << Hook.Prerouting) | (1 << Hook.Output), where: "PREROUTING and OUTPUT" }],
  [TargetKind.Redirect, { name: "REDIRECT", hooks: (1 << Hook.Prerouting) | (1 << Hook.Output), where: "PREROUTING and OUTPUT" }],
  [TargetKind.Snat, { name: "SNAT", hooks: (1 << Hook.Postrouting) | (1 << Hook.Input), where: "POSTROUTING and INPUT" }],
  [TargetKind.Masquerade, { name: "MASQUERADE", hooks: 1 << Hook.Postrouting, where: "POSTROUTING" }],
]);

function resolveTable(builder: TableBuilder): void {
  const { table } = builder;
  for (const { rule, expandedFrom } of builder.pending) {
    const chain = table.chains.get(rule.chain);
    const report = expandedFrom === 0;
    if (chain === undefined) {
      if (report) builder.error(rule.line, `-A to unknown chain "${rule.chain}" (create it with -N first)`);
      continue;
    }
    const target = rule.target;
    if (target.kind === TargetKind.Jump || target.kind === TargetKind.Goto) {
      const jumped = table.chains.get(target.chain);
      if (jumped === undefined) {
        if (report) builder.error(rule.line, `jump to undefined chain "${target.chain}"`);
        continue;
      }
      if (jumped.hook !== undefined) {
        if (report) builder.error(rule.line, `cannot jump to built-in chain "${target.chain}"`);
        continue;
      }
    }
    chain.rules.push(rule);
  }
  removeLoops(builder);
  checkTargetHooks(builder);
}

/** Jump edges of a chain: [rule, target chain name]. */
function jumpsOf(chain: NatChain): Array<[NatRule, string]> {
  const edges: Array<[NatRule, string]> = [];
  for (const rule of chain.rules) {
    if (rule.target.kind === TargetKind.Jump || rule.target.kind === TargetKind.Goto) edges.push([rule, rule.target.chain]);
  }
  return edges;
}

/**
 * Depth-first search from every chain; an edge back into the current path closes a loop
 * (ip_tables.c mark_source_chains refuses such tables with ELOOP). The closing rule is reported
 * and removed so the rest of the table stays usable.
 */
function removeLoops(builder: TableBuilder): void {
  const { table } = builder;
  const color = new Map<string, 0 | 1 | 2>();
  const path: string[] = [];
  const reported = new Set<number>();
  const visit = (chain: NatChain): void => {
    color.set(chain.name, 1);
    path.push(chain.name);
    for (const [rule, next] of jumpsOf(chain)) {
      const nextColor = color.get(next) ?? 0;
      if (nextColor === 1) {
        const cycle = path.slice(path.indexOf(next)).concat(next);
        if (!reported.has(rule.line)) builder.error(rule.line, `loop in the chain graph: ${cycle.join(" -> ")}`);
        reported.add(rule.line);
        chain.rules.splice(chain.rules.indexOf(rule), 1);
      } else if (nextColor === 0) {
        visit(table.chains.get(next)!);
      }
    }
    path.pop();
    color.set(chain.name, 2);
  };
  for (const chain of table.chains.values()) if ((color.get(chain.name) ?? 0) === 0) visit(chain);
}

/** Which hooks reach each chain, then every NAT target against its allowed hooks. */
function checkTargetHooks(builder: TableBuilder): void {
  const { table } = builder;
  const reachedFrom = new Map<string, number>();
  /** For messages: one path from a hook to the chain. */
  const pathTo = new Map<string, string[]>();
  for (let hook = 0; hook < HOOK_COUNT; hook++) {
    const start = BUILTIN_CHAIN_NAMES[hook]!;
    const stack: Array<[string, string[]]> = [[start, [start]]];
    const seen = new Set<string>();
    while (stack.length > 0) {
      const [name, path] = stack.pop()!;
      if (seen.has(name)) continue;
      seen.add(name);
      reachedFrom.set(name, (reachedFrom.get(name) ?? 0) | (1 << hook));
      if (!pathTo.has(`${name}@${hook}`)) pathTo.set(`${name}@${hook}`, path);
      for (const [, next] of jumpsOf(table.chains.get(name)!)) stack.push([next, path.concat(next)]);
    }
  }
  for (const chain of table.chains.values()) {
    const hooks = reachedFrom.get(chain.name) ?? 0;
    for (let r = chain.rules.length - 1; r >= 0; r--) {
      const rule = chain.rules[r]!;
      const allowed = NAT_TARGET_HOOKS.get(rule.target.kind);
      if (allowed === undefined) continue;
      const bad = hooks & ~allowed.hooks;
      if (bad === 0) continue;
      const hook = Math.log2(bad & -bad);
      const path = pathTo.get(`${chain.name}@${hook}`) ?? [chain.name];
      const via = path.length > 1 ? ` (reached as ${path.join(" -> ")})` : "";
      builder.error(rule.line, `${allowed.name} is only valid in ${allowed.where}, not from ${BUILTIN_CHAIN_NAMES[hook]}${via}`);
      chain.rules.splice(r, 1);
    }
  }
}
