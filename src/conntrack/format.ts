/**
 * `conntrack -L` text, as conntrack-tools prints it through libnetfilter_conntrack
 * (src/conntrack/snprintf_default.c): protocol name left-justified in 8 columns and its number
 * ("%-8s %u "), remaining seconds ("%u ", ctnetlink_dump_timeout: nf_ct_expires / HZ, rounded
 * down), the TCP state, the original tuple, "[UNREPLIED]" without IPS_SEEN_REPLY, the reply
 * tuple, "[ASSURED]", "mark=%u", "use=%u". Tuples: "src= dst= sport= dport=" for TCP/UDP,
 * "src= dst= type= code= id=" for ICMP, "src= dst=" for other protocols.
 * Plus a JSON form for `--json`. Control plane only: strings are fine here.
 */
import { formatIpv4 } from "../core/addr.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../wire/packet-info.js";
import { CtStatus, type ConntrackTable } from "./table.js";
import { TCP_STATE_NAMES } from "./tcp.js";

/** libnetfilter_conntrack l4proto2str. */
const PROTOCOL_NAMES: Readonly<Record<number, string>> = {
  1: "icmp",
  6: "tcp",
  17: "udp",
  33: "dccp",
  47: "gre",
  58: "icmpv6",
  132: "sctp",
  136: "udplite",
};

export function protocolName(protocol: number): string {
  return PROTOCOL_NAMES[protocol] ?? "unknown";
}

/** Whole seconds left, as ctnetlink reports them (never negative). */
export function remainingSeconds(table: ConntrackTable, id: number, now = table.clock.now()): number {
  const left = Math.floor(table.expiresAt(id) - now);
  return left > 0 ? left : 0;
}

function formatTuple(table: ConntrackTable, id: number, dir: number): string {
  const protocol = table.protocol(id);
  const head = `src=${formatIpv4(table.tupleSrcOf(id, dir))} dst=${formatIpv4(table.tupleDstOf(id, dir))}`;
  const sport = table.tupleSportOf(id, dir);
  const dport = table.tupleDportOf(id, dir);
  if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) return `${head} sport=${sport} dport=${dport}`;
  if (protocol === IPPROTO_ICMP) return `${head} type=${dport >>> 8} code=${dport & 0xff} id=${sport}`;
  return head;
}

/** One `conntrack -L` line (no trailing newline). */
export function formatConntrackEntry(table: ConntrackTable, id: number, now = table.clock.now()): string {
  const protocol = table.protocol(id);
  const status = table.status(id);
  const parts: string[] = [`${protocolName(protocol).padEnd(8)} ${protocol}`, String(remainingSeconds(table, id, now))];
  if (protocol === IPPROTO_TCP) parts.push(TCP_STATE_NAMES[table.tcpState(id)] ?? "NONE");
  parts.push(formatTuple(table, id, 0));
  if ((status & CtStatus.SeenReply) === 0) parts.push("[UNREPLIED]");
  parts.push(formatTuple(table, id, 1));
  if (status & CtStatus.Assured) parts.push("[ASSURED]");
  parts.push(`mark=${table.mark(id)}`, "use=1");
  return parts.join(" ");
}

/** The whole table as `conntrack -L` prints it, one line per live confirmed entry. */
export function formatConntrackTable(table: ConntrackTable): string {
  const now = table.clock.now();
  return table.entries().map((id) => formatConntrackEntry(table, id, now) + "\n").join("");
}

export interface ConntrackTupleJson {
  src: string;
  dst: string;
  sport?: number;
  dport?: number;
  type?: number;
  code?: number;
  id?: number;
}

export interface ConntrackEntryJson {
  id: number;
  protocol: string;
  protonum: number;
  timeout: number;
  /** TCP only */
  state?: string;
  original: ConntrackTupleJson;
  reply: ConntrackTupleJson;
  /** IPS_* names that are set, e.g. ["SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "SRC_NAT_DONE"] */
  status: string[];
  mark: number;
  use: number;
}

const STATUS_NAMES: readonly [number, string][] = [
  [CtStatus.Expected, "EXPECTED"],
  [CtStatus.SeenReply, "SEEN_REPLY"],
  [CtStatus.Assured, "ASSURED"],
  [CtStatus.Confirmed, "CONFIRMED"],
  [CtStatus.SrcNat, "SRC_NAT"],
  [CtStatus.DstNat, "DST_NAT"],
  [CtStatus.SeqAdjust, "SEQ_ADJUST"],
  [CtStatus.SrcNatDone, "SRC_NAT_DONE"],
  [CtStatus.DstNatDone, "DST_NAT_DONE"],
  [CtStatus.Dying, "DYING"],
  [CtStatus.FixedTimeout, "FIXED_TIMEOUT"],
];

export function statusNames(status: number): string[] {
  return STATUS_NAMES.filter(([bit]) => (status & bit) !== 0).map(([, name]) => name);
}

function tupleJson(table: ConntrackTable, id: number, dir: number): ConntrackTupleJson {
  const protocol = table.protocol(id);
  const tuple: ConntrackTupleJson = { src: formatIpv4(table.tupleSrcOf(id, dir)), dst: formatIpv4(table.tupleDstOf(id, dir)) };
  const sport = table.tupleSportOf(id, dir);
  const dport = table.tupleDportOf(id, dir);
  if (protocol === IPPROTO_TCP || protocol === IPPROTO_UDP) {
    tuple.sport = sport;
    tuple.dport = dport;
  } else if (protocol === IPPROTO_ICMP) {
    tuple.type = dport >>> 8;
    tuple.code = dport & 0xff;
    tuple.id = sport;
  }
  return tuple;
}

export function conntrackEntryJson(table: ConntrackTable, id: number, now = table.clock.now()): ConntrackEntryJson {
  const protocol = table.protocol(id);
  const entry: ConntrackEntryJson = {
    id,
    protocol: protocolName(protocol),
    protonum: protocol,
    timeout: remainingSeconds(table, id, now),
    original: tupleJson(table, id, 0),
    reply: tupleJson(table, id, 1),
    status: statusNames(table.status(id)),
    mark: table.mark(id),
    use: 1,
  };
  if (protocol === IPPROTO_TCP) entry.state = TCP_STATE_NAMES[table.tcpState(id)] ?? "NONE";
  return entry;
}

export function conntrackTableJson(table: ConntrackTable): ConntrackEntryJson[] {
  const now = table.clock.now();
  return table.entries().map((id) => conntrackEntryJson(table, id, now));
}

// ---- the listing in pieces (control plane: `qnat show conntrack` of a big table) --------------

/** How much one piece of a listing may do (ConntrackCursor.next). */
export interface ListingBudget {
  /** Entries formatted per piece at most. */
  readonly entries: number;
  /** Slots looked at per piece at most: a sparse table has long runs of free slots. */
  readonly slots: number;
  /** Milliseconds per piece at most (looked at every 64 entries). */
  readonly ms: number;
}

/** About 1 ms of the packet thread per piece, whatever the table's size. */
export const LISTING_BUDGET: ListingBudget = { entries: 1024, slots: 65_536, ms: 1 };

/** Entries handled between two looks at the clock (listing, `qnat conntrack -D/-F`). */
const LISTING_CLOCK_EVERY = 64;

/**
 * `formatConntrackTable` (or the `--json` text, `JSON.stringify(conntrackTableJson(table), null,
 * 2)`) in pieces: a cursor over entry ids that formats up to one budget per `next()` call, so the
 * caller can hand the event loop back to the packet legs between pieces. The pieces, joined,
 * are exactly the one-shot text when nothing changes meanwhile.
 *
 * Consistency is that of Linux's `conntrack -L` (a ctnetlink dump, ctnetlink_dump_table, which
 * walks the hash a bucket at a time between netlink messages): every entry live and confirmed
 * from the first piece to the last is listed exactly once (an entry keeps its id for its whole
 * life, and the cursor only moves forward over ids); an entry created meanwhile is listed if
 * its id is past the cursor; one that died before the cursor reached it is not listed; each
 * line is the entry's state, timeout included, when its piece was formatted. A slot freed and
 * reused meanwhile lists the new connection if the cursor has not passed it yet.
 */
export class ConntrackCursor {
  private readonly walk: EntryPieces;
  private listed = 0;
  /** Pieces produced so far. */
  pieces = 0;

  constructor(
    private readonly table: ConntrackTable,
    private readonly form: "text" | "json",
    budget: ListingBudget = LISTING_BUDGET,
  ) {
    this.walk = new EntryPieces(table.capacity, budget);
  }

  /** The next piece of text, or undefined after the last one. */
  next(): string | undefined {
    if (this.walk.finished) return undefined;
    const table = this.table;
    const now = table.clock.now();
    let text = this.pieces === 0 && this.form === "json" ? "[" : "";
    // Under the shared tables' lock: no entry is read while a worker writes it.
    table.locked(() =>
      this.walk.piece((id) => {
        if (!isListed(table, id, now)) return false;
        if (this.form === "text") text += formatConntrackEntry(table, id, now) + "\n";
        else text += (this.listed === 0 ? "\n" : ",\n") + indentJson(JSON.stringify(conntrackEntryJson(table, id, now), null, 2));
        this.listed++;
        return true;
      }),
    );
    if (this.walk.finished && this.form === "json") text += this.listed === 0 ? "]" : "\n]";
    this.pieces++;
    return text;
  }
}

/**
 * A walk over entry ids in pieces of at most `budget` (entries handled, slots looked at,
 * milliseconds): the listing's and `qnat conntrack -D/-F`'s. The cursor only moves forward (an
 * entry keeps its id for its life), so each live entry present from the first piece to the last
 * is visited once.
 */
export class EntryPieces {
  private id = 0;
  finished = false;

  constructor(
    private readonly capacity: number,
    private readonly budget: ListingBudget,
  ) {}

  /** One piece: `visit(id)` for the next ids, true when it handled that entry (counted against the budget). */
  piece(visit: (id: number) => boolean): void {
    const started = performance.now();
    const slotEnd = Math.min(this.capacity, this.id + this.budget.slots);
    let handled = 0;
    let id = this.id;
    for (; id < slotEnd && handled < this.budget.entries; id++) {
      if (!visit(id)) continue;
      handled++;
      if (handled % LISTING_CLOCK_EVERY === 0 && performance.now() - started >= this.budget.ms) {
        id++;
        break;
      }
    }
    this.id = id;
    if (id >= this.capacity) this.finished = true;
  }
}

/** What `ConntrackTable.entries()` lists: allocated, confirmed, not expired, not dying. */
export function isListed(table: ConntrackTable, id: number, now: number): boolean {
  return (
    table.isAllocated(id) && table.isConfirmed(id) && table.expiresAt(id) > now && (table.status(id) & CtStatus.Dying) === 0
  );
}

/** An array element of `JSON.stringify(array, null, 2)`: its own text indented one level. */
function indentJson(text: string): string {
  return "  " + text.replace(/\n/g, "\n  ");
}
