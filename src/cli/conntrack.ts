/**
 * `qnat conntrack -L|-D|-F [FILTERS] [--router NAMESPACE]`: conntrack-tools' command line
 * (conntrack(8), src/conntrack.c of conntrack-tools 1.4.7) against the running router.
 *
 * Filters, combined with AND: `-f ipv4|ipv6` (qnat has IPv4 connections only: `ipv6` selects
 * none, and `-F -f ipv6` empties nothing, as Neutron's dual-stack calls expect), `-p PROTO` (name or number), `-s/--src/--orig-src`,
 * `-d/--dst/--orig-dst`, `-r/--reply-src`, `-q/--reply-dst` (ADDR or ADDR/LEN, as 1.4.6+),
 * after `-p tcp|udp`: `--sport/--orig-port-src`, `--dport/--orig-port-dst`, `--reply-port-src`,
 * `--reply-port-dst`; after `-p tcp`: `--state STATE`; after `-p icmp`: `--icmp-type`,
 * `--icmp-code`, `--icmp-id`; `--status ASSURED,SEEN_REPLY,...`.
 * An option given twice counts once, the last one (getopt). `-F` takes no filter but `-f`.
 *
 * Output as the tool's: the entries listed or deleted on stdout as `conntrack -L` lines, then on
 * stderr `conntrack v1.4.7 (conntrack-tools): N flow entries have been shown.` (`deleted.`,
 * or `connection tracking table has been emptied.`). Exit 0, or 1 when `-D` deleted nothing (as
 * the tool; Neutron's ip_conntrack accepts 1). A mistake is one line `qnat conntrack: ...` with
 * the tool's wording (`unknown option `--foo'`, `Invalid IP address `foo'`...), exit 2.
 *
 * Stricter than the tool, on purpose: a port or ICMP id must be a number 0-65535 and an ICMP
 * type or code 0-255 (the tool takes `abc` as 0), an address a dotted quad (the tool's inet_aton
 * takes `1.2.3`), a status name whole (the tool takes a prefix), and a stray word is refused
 * (the tool ignores it).
 */
import { parseCidr } from "../core/addr.js";
import { AF_INET, AF_INET6, type ConntrackFilter } from "../conntrack/filter.js";
import { CtStatus } from "../conntrack/table.js";
import { TCP_STATE_NAMES } from "../conntrack/tcp.js";
import type { ConntrackOp } from "../control/conntrack-command.js";

/** The conntrack-tools release whose wording qnat's summary lines follow (Debian bookworm's). */
export const CONNTRACK_TOOLS_PREFIX = "conntrack v1.4.7 (conntrack-tools)";

/** A conntrack command line qnat refuses: printed as `qnat conntrack: MESSAGE`, exit 2. */
export class ConntrackArgsError extends Error {}

export interface ConntrackCommand {
  readonly op: ConntrackOp;
  readonly filter: ConntrackFilter;
  readonly router: string | undefined;
}

const COMMANDS = new Map<string, ConntrackOp>([
  ["-L", "list"],
  ["--dump", "list"],
  ["-D", "delete"],
  ["--delete", "delete"],
  ["-F", "flush"],
  ["--flush", "flush"],
]);
/** conntrack-tools commands qnat does not offer. */
const OTHER_COMMANDS = new Set(["-G", "--get", "-I", "--create", "-U", "--update", "-E", "--event", "-C", "--count", "-S", "--stats"]);

type FilterField = "family" | "protocol" | "origSrc" | "origDst" | "replySrc" | "replyDst" | "origSport" | "origDport" | "replySport" | "replyDport" | "tcpState" | "icmpType" | "icmpCode" | "icmpId" | "status";

interface OptionSpec {
  readonly field: FilterField | "router";
  /** The name `Illegal option `--NAME' with this command` gives (conntrack-tools' optflags). */
  readonly flag: string;
  /** Only after `-p` of one of these protocols (the tool registers them with the protocol). */
  readonly protocols?: readonly number[];
}

const ICMP = 1;
const TCP = 6;
const UDP = 17;
const address = (field: FilterField, flag: string): OptionSpec => ({ field, flag });
const port = (field: FilterField): OptionSpec => ({ field, flag: "", protocols: [TCP, UDP] });
const OPTIONS = new Map<string, OptionSpec>([
  ["-s", address("origSrc", "src")],
  ["--src", address("origSrc", "src")],
  ["--orig-src", address("origSrc", "src")],
  ["-d", address("origDst", "dst")],
  ["--dst", address("origDst", "dst")],
  ["--orig-dst", address("origDst", "dst")],
  ["-r", address("replySrc", "reply-src")],
  ["--reply-src", address("replySrc", "reply-src")],
  ["-q", address("replyDst", "reply-dst")],
  ["--reply-dst", address("replyDst", "reply-dst")],
  ["-f", { field: "family", flag: "" }],
  ["--family", { field: "family", flag: "" }],
  ["-p", { field: "protocol", flag: "protonum" }],
  ["--protonum", { field: "protocol", flag: "protonum" }],
  ["-u", { field: "status", flag: "status" }],
  ["--status", { field: "status", flag: "status" }],
  ["--sport", port("origSport")],
  ["--orig-port-src", port("origSport")],
  ["--dport", port("origDport")],
  ["--orig-port-dst", port("origDport")],
  ["--reply-port-src", port("replySport")],
  ["--reply-port-dst", port("replyDport")],
  ["--state", { field: "tcpState", flag: "", protocols: [TCP] }],
  ["--icmp-type", { field: "icmpType", flag: "", protocols: [ICMP] }],
  ["--icmp-code", { field: "icmpCode", flag: "", protocols: [ICMP] }],
  ["--icmp-id", { field: "icmpId", flag: "", protocols: [ICMP] }],
  ["--router", { field: "router", flag: "" }],
]);

/** libnetfilter_conntrack's protocol names (and getprotobyname's), lower case. */
const PROTOCOLS = new Map<string, number>([
  ["icmp", 1],
  ["tcp", 6],
  ["udp", 17],
  ["dccp", 33],
  ["gre", 47],
  ["icmpv6", 58],
  ["sctp", 132],
  ["udplite", 136],
]);

/** conntrack-tools' --status names (parse_parameter), with Linux's IPS_* bits. */
const STATUS_BITS = new Map<string, number>([
  ["EXPECTED", CtStatus.Expected],
  ["SEEN_REPLY", CtStatus.SeenReply],
  ["ASSURED", CtStatus.Assured],
  ["FIXED_TIMEOUT", CtStatus.FixedTimeout],
  ["OFFLOAD", 1 << 14], // IPS_OFFLOAD: qnat never sets it
  ["HW_OFFLOAD", 1 << 15], // IPS_HW_OFFLOAD
]);

function parseProtocol(text: string): number {
  const named = PROTOCOLS.get(text.toLowerCase());
  if (named !== undefined) return named;
  if (/^\d{1,3}$/.test(text) && Number(text) <= 255) return Number(text);
  throw new ConntrackArgsError(`\`${text}' unsupported protocol`);
}

/** `-f ipv4|ipv6` (the tool's words, lower case only). */
function parseFamily(text: string): number {
  if (text === "ipv4") return AF_INET;
  if (text === "ipv6") return AF_INET6;
  throw new ConntrackArgsError(`\`${text}' unsupported protocol`);
}

function parseAddress(text: string): { addr: number; prefixLength: number } {
  const slash = text.indexOf("/");
  const cidr = parseCidr(text);
  if (cidr !== undefined) return { addr: cidr.addr, prefixLength: cidr.prefixLength };
  if (slash >= 0 && parseCidr(text.slice(0, slash)) !== undefined) throw new ConntrackArgsError("Invalid netmask");
  throw new ConntrackArgsError(`Invalid IP address \`${text}'`);
}

/** A port, or (for `--icmp-id`) an ICMP echo id: 0-65535. */
function parsePort(option: string, text: string): number {
  const what = option === "--icmp-id" ? "icmp-id" : "port";
  if (!/^\d{1,5}$/.test(text) || Number(text) > 65535) throw new ConntrackArgsError(`invalid ${what} \`${text}'`);
  return Number(text);
}

function parseByte(option: string, text: string): number {
  if (!/^\d{1,3}$/.test(text) || Number(text) > 255) throw new ConntrackArgsError(`invalid ${option.slice(2)} \`${text}'`);
  return Number(text);
}

function parseTcpState(text: string): number {
  // LISTEN is conntrack-tools' old name of state 9 (SYN_SENT2).
  const state = text === "LISTEN" ? 9 : TCP_STATE_NAMES.indexOf(text);
  if (state < 0) throw new ConntrackArgsError(`unknown TCP state \`${text}'`);
  return state;
}

function parseStatus(text: string): number {
  let bits = 0;
  for (const name of text.split(",")) {
    const bit = STATUS_BITS.get(name.toUpperCase());
    if (bit === undefined) throw new ConntrackArgsError(`Bad parameter \`${name}'`);
    bits |= bit;
  }
  return bits;
}

/** Parses the words after `qnat conntrack`. */
export function parseConntrackArgs(argv: readonly string[]): ConntrackCommand {
  let op: ConntrackOp | undefined;
  let router: string | undefined;
  const filter: Record<string, unknown> = {};
  /** Options given, by the name the tool's "Illegal option" message uses. */
  const given: string[] = [];
  const protocolOnly: { word: string; protocols: readonly number[] }[] = [];
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    const command = COMMANDS.get(word);
    if (command !== undefined) {
      if (op !== undefined) throw new ConntrackArgsError("Invalid commands combination");
      op = command;
      // An optional table name follows the command (check_type).
      const table = argv[i + 1];
      if (table !== undefined && !table.startsWith("-")) {
        if (table !== "conntrack") throw new ConntrackArgsError(table === "expect" || table === "dying" || table === "unconfirmed" ? `table \`${table}' is not supported` : `unknown type \`${table}'`);
        i++;
      }
      continue;
    }
    if (OTHER_COMMANDS.has(word)) throw new ConntrackArgsError(`${word} is not supported (qnat conntrack does -L, -D and -F)`);
    if (!word.startsWith("-")) throw new ConntrackArgsError(`unknown argument \`${word}'`);
    const eq = word.startsWith("--") ? word.indexOf("=") : -1;
    const name = eq > 0 ? word.slice(0, eq) : word;
    const spec = OPTIONS.get(name);
    if (spec === undefined) throw new ConntrackArgsError(`unknown option \`${name}'`);
    if (spec.protocols !== undefined) {
      const protocol = filter["protocol"] as number | undefined;
      if (protocol === undefined || !spec.protocols.includes(protocol)) throw new ConntrackArgsError(`unknown option \`${name}'`);
      protocolOnly.push({ word: name, protocols: spec.protocols });
    }
    const value = eq > 0 ? word.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new ConntrackArgsError(`option \`${name}' requires an argument`);
    if (spec.flag !== "") given.push(spec.flag);
    switch (spec.field) {
      case "router":
        if (value === "") throw new ConntrackArgsError("option `--router' requires an argument");
        router = value;
        break;
      case "family":
        filter["family"] = parseFamily(value);
        break;
      case "protocol":
        filter["protocol"] = parseProtocol(value);
        break;
      case "origSrc":
      case "origDst":
      case "replySrc":
      case "replyDst":
        filter[spec.field] = parseAddress(value);
        break;
      case "tcpState":
        filter["tcpState"] = parseTcpState(value);
        break;
      case "status":
        filter["status"] = parseStatus(value);
        break;
      case "icmpType":
      case "icmpCode":
        filter[spec.field] = parseByte(name, value);
        break;
      default:
        filter[spec.field] = parsePort(name, value);
    }
  }
  if (op === undefined) throw new ConntrackArgsError("no command: give -L, -D or -F");
  // A later -p of another protocol leaves earlier protocol options meaningless: refused.
  for (const option of protocolOnly) {
    if (!option.protocols.includes(filter["protocol"] as number)) throw new ConntrackArgsError(`unknown option \`${option.word}'`);
  }
  if (op === "flush" && given.length > 0) throw new ConntrackArgsError(`Illegal option \`--${given[0]}' with this command`);
  if (op === "flush" && protocolOnly.length > 0) throw new ConntrackArgsError(`Illegal option \`${protocolOnly[0]!.word}' with this command`);
  return { op, filter: filter as ConntrackFilter, router };
}

/** The summary line the tool prints on stderr after its work. */
export function conntrackSummary(op: ConntrackOp, count: number): string {
  if (op === "flush") return `${CONNTRACK_TOOLS_PREFIX}: connection tracking table has been emptied.`;
  return `${CONNTRACK_TOOLS_PREFIX}: ${count} flow entries have been ${op === "list" ? "shown" : "deleted"}.`;
}
