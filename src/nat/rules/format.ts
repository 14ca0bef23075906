/**
 * Prints a NatTable as `iptables -t nat -S [-v]` or `iptables-save [-c]` would.
 *
 * Order and spelling follow iptables' own printers so that text round-trips: print_rule4 /
 * save_ipv4 (`-s -d -i -o -p`, then the matches in load order, then `-c P B`, then `-j`),
 * print_ip (address/prefix, or address/dotted-mask when the mask is not contiguous), print_proto
 * (names from /etc/protocols), and each extension's save function (libxt_tcp.c tcp_save,
 * libxt_multiport.c, libipt_icmp.c, libxt_conntrack.c, libxt_comment.c, libxt_DNAT.c, libxt_SNAT.c,
 * libxt_REDIRECT.c, libxt_MASQUERADE.c). `-S -v` adds `-c PKTS BYTES` to `-P` lines and rules.
 */
import { formatIpv4 } from "../../core/addr.js";
import {
  CT_STATE_NAMES,
  NatRangeFlag,
  PROTOCOL_NAMES,
  TargetKind,
  chainsInOrder,
  type AddressMatch,
  type InterfaceMatch,
  type NatRange,
  type NatRule,
  type NatTable,
  type PortRange,
  type RuleMatch,
  type RuleTarget,
} from "./model.js";
import { quoteForSave } from "./tokenize.js";

export interface FormatOptions {
  /** `-S -v` / `iptables-save -c`: print packet and byte counters. */
  readonly counters?: boolean;
}

/** `iptables -t nat -S` (with `counters`: `-S -v`). Ends with a newline. */
export function formatRules(table: NatTable, options: FormatOptions = {}): string {
  const lines: string[] = [];
  const chains = chainsInOrder(table);
  for (const chain of chains) {
    if (chain.hook !== undefined) {
      lines.push(`-P ${chain.name} ${chain.policy ?? "ACCEPT"}${options.counters ? ` -c ${chain.packets} ${chain.bytes}` : ""}`);
    } else {
      lines.push(`-N ${chain.name}`);
    }
  }
  for (const chain of chains) for (const rule of chain.rules) lines.push(formatRule(rule, options));
  return lines.join("\n") + "\n";
}

/** `iptables-save -t nat` (with `counters`: `-c`). Chain counters print as [0:0] without `counters`. */
export function formatSave(table: NatTable, options: FormatOptions = {}): string {
  const lines: string[] = ["*nat"];
  const chains = chainsInOrder(table);
  for (const chain of chains) {
    const counters = options.counters && chain.hook !== undefined ? `[${chain.packets}:${chain.bytes}]` : "[0:0]";
    lines.push(`:${chain.name} ${chain.hook !== undefined ? (chain.policy ?? "ACCEPT") : "-"} ${counters}`);
  }
  for (const chain of chains) {
    for (const rule of chain.rules) {
      const text = formatRule(rule);
      lines.push(options.counters ? `[${rule.packets}:${rule.bytes}] ${text}` : text);
    }
  }
  lines.push("COMMIT");
  return lines.join("\n") + "\n";
}

/** One rule as `-A CHAIN ...` (with `counters`: `-c P B` before the target, as `-S -v`). */
export function formatRule(rule: NatRule, options: FormatOptions = {}): string {
  let text = `-A ${rule.chain}`;
  text += formatAddress("-s", rule.src);
  text += formatAddress("-d", rule.dst);
  text += formatInterface("-i", rule.inInterface);
  text += formatInterface("-o", rule.outInterface);
  if (rule.protocol !== 0) {
    text += `${rule.protocolInvert ? " !" : ""} -p ${PROTOCOL_NAMES.get(rule.protocol) ?? String(rule.protocol)}`;
  }
  for (const match of rule.matches) text += formatMatch(match);
  if (options.counters) text += ` -c ${rule.packets} ${rule.bytes}`;
  text += formatTarget(rule.target);
  return text;
}

function formatAddress(option: string, match: AddressMatch): string {
  if (match.mask === 0 && match.addr === 0 && !match.invert) return "";
  return `${match.invert ? " !" : ""} ${option} ${formatIpv4(match.addr)}/${formatMask(match.mask)}`;
}

/** Prefix length when the mask is contiguous, dotted quad otherwise (print_ip in iptables.c). */
function formatMask(mask: number): string {
  for (let length = 32; length >= 0; length--) {
    const prefix = length === 0 ? 0 : (0xffffffff << (32 - length)) >>> 0;
    if (prefix === mask >>> 0) return String(length);
  }
  return formatIpv4(mask);
}

function formatInterface(option: string, match: InterfaceMatch | undefined): string {
  if (match === undefined) return "";
  return `${match.invert ? " !" : ""} ${option} ${match.name}`;
}

function formatPortRange(range: PortRange, separator: string): string {
  return range.min === range.max ? String(range.min) : `${range.min}${separator}${range.max}`;
}

/** libxt_tcp.c print_tcpf: lowest flag first, NONE when empty. */
function formatTcpFlags(flags: number): string {
  const names = ["FIN", "SYN", "RST", "PSH", "ACK", "URG"];
  const parts: string[] = [];
  names.forEach((name, bit) => {
    if ((flags & (1 << bit)) !== 0) parts.push(name);
  });
  return parts.length === 0 ? "NONE" : parts.join(",");
}

export function formatStateMask(mask: number): string {
  return CT_STATE_NAMES.filter(([, bit]) => (mask & bit) !== 0)
    .map(([name]) => name)
    .join(",");
}

function formatMatch(match: RuleMatch): string {
  switch (match.kind) {
    case "tcp":
    case "udp": {
      let text = ` -m ${match.kind}`;
      // tcp_save/udp_save skip the full range 0:65535.
      if (match.sport !== undefined && !(match.sport.min === 0 && match.sport.max === 65535)) {
        text += `${match.sportInvert ? " !" : ""} --sport ${formatPortRange(match.sport, ":")}`;
      }
      if (match.dport !== undefined && !(match.dport.min === 0 && match.dport.max === 65535)) {
        text += `${match.dportInvert ? " !" : ""} --dport ${formatPortRange(match.dport, ":")}`;
      }
      if (match.tcpFlags !== undefined) {
        const flags = match.tcpFlags;
        text += `${flags.invert ? " !" : ""} --tcp-flags ${formatTcpFlags(flags.mask)} ${formatTcpFlags(flags.comp)}`;
      }
      return text;
    }
    case "multiport":
      return ` -m multiport${match.invert ? " !" : ""} --${match.direction ?? "dports"} ${match.ranges
        .map((range) => formatPortRange(range, ":"))
        .join(",")}`;
    case "icmp": {
      const invert = match.invert ? " !" : "";
      if (match.type === 0xff) return ` -m icmp${invert} --icmp-type any`;
      const code = match.codeMin !== 0 || match.codeMax !== 0xff ? `/${match.codeMin}` : "";
      return ` -m icmp${invert} --icmp-type ${match.type}${code}`;
    }
    case "conntrack":
      return ` -m conntrack${match.invert ? " !" : ""} --ctstate ${formatStateMask(match.stateMask)}`;
    case "state":
      return ` -m state${match.invert ? " !" : ""} --state ${formatStateMask(match.stateMask)}`;
    case "comment":
      return ` -m comment --comment ${quoteForSave(match.text ?? "")}`;
  }
}

/** `IP[-IP][:PORT[-PORT]]` as libxt_DNAT.c print_range. */
export function formatNatRange(range: NatRange): string {
  let text = "";
  if ((range.flags & NatRangeFlag.MapIps) !== 0) {
    text += formatIpv4(range.minAddr);
    if (range.maxAddr !== range.minAddr) text += `-${formatIpv4(range.maxAddr)}`;
  }
  if ((range.flags & NatRangeFlag.ProtoSpecified) !== 0) text += `:${formatPorts(range)}`;
  return text;
}

function formatPorts(range: NatRange): string {
  return `${range.minPort}${range.maxPort !== range.minPort ? `-${range.maxPort}` : ""}`;
}

function formatRandomFlags(flags: number, allowFully: boolean, allowPersistent: boolean): string {
  let text = "";
  if ((flags & NatRangeFlag.ProtoRandom) !== 0) text += " --random";
  if (allowFully && (flags & NatRangeFlag.ProtoRandomFully) !== 0) text += " --random-fully";
  if (allowPersistent && (flags & NatRangeFlag.Persistent) !== 0) text += " --persistent";
  return text;
}

export function formatTarget(target: RuleTarget): string {
  switch (target.kind) {
    case TargetKind.None:
      return "";
    case TargetKind.Accept:
      return " -j ACCEPT";
    case TargetKind.Return:
      return " -j RETURN";
    case TargetKind.Jump:
      return ` -j ${target.chain}`;
    case TargetKind.Goto:
      return ` -g ${target.chain}`;
    case TargetKind.Dnat:
      return ` -j DNAT --to-destination ${formatNatRange(target.range)}${formatRandomFlags(target.range.flags, false, true)}`;
    case TargetKind.Snat:
      return ` -j SNAT --to-source ${formatNatRange(target.range)}${formatRandomFlags(target.range.flags, true, true)}`;
    case TargetKind.Redirect: {
      const ports = (target.range.flags & NatRangeFlag.ProtoSpecified) !== 0 ? ` --to-ports ${formatPorts(target.range)}` : "";
      return ` -j REDIRECT${ports}${formatRandomFlags(target.range.flags, false, false)}`;
    }
    case TargetKind.Masquerade: {
      const ports = (target.range.flags & NatRangeFlag.ProtoSpecified) !== 0 ? ` --to-ports ${formatPorts(target.range)}` : "";
      return ` -j MASQUERADE${ports}${formatRandomFlags(target.range.flags, true, false)}`;
    }
  }
}

/** A date as ctime(3) prints it (local time): `Mon Nov 30 04:59:42 2026` (iptables-save's header). */
export function formatCtime(date: Date): string {
  const days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
  const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const two = (n: number): string => String(n).padStart(2, "0");
  const time = `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
  return `${days[date.getDay()]} ${months[date.getMonth()]} ${String(date.getDate()).padStart(2, " ")} ${time} ${date.getFullYear()}`;
}

/**
 * `iptables-save -t nat [-c]` as a whole: formatSave between the comment lines iptables-save
 * prints (iptables/iptables-save.c do_output: `# Generated by ... on DATE`, `# Completed on DATE`),
 * with qnat named as the generator.
 */
export function formatSaveDocument(table: NatTable, generator: string, date: Date, options: FormatOptions = {}): string {
  const when = formatCtime(date);
  return `# Generated by ${generator} on ${when}\n${formatSave(table, options)}# Completed on ${when}\n`;
}
