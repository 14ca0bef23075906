/**
 * `qnat conntrack -L|-D|-F` on the running router's side: the control request
 * `{"cmd":"conntrack","op":"list"|"delete"|"flush","filter":{...}}` (filter: ConntrackFilter in
 * src/conntrack/filter.ts, numbers only) and its streamed answer.
 *
 * As `qnat show conntrack`, the work is cut in pieces of about a millisecond (LISTING_BUDGET:
 * at most 1024 entries formatted or removed, 65,536 slots looked at), one per turn of the event loop
 * (socket.ts), so the legs' batches run between pieces: deleting or flushing a table of a
 * million connections never holds the packet loop for more than a few milliseconds at a time.
 * Entries are removed with ConntrackTable.remove, whose onRemove releases their NAT binding
 * (nf_nat_cleanup_conntrack), as Linux's ctnetlink_del_conntrack -> nf_ct_delete does; the next
 * packet of a deleted connection finds no entry and is NEW, NATed by the rules of that moment.
 *
 * The answer's text is the `conntrack -L` line of every entry listed or deleted (conntrack-tools
 * prints the deleted ones too); the CLI counts the lines for the summary (`N flow entries have
 * been shown.`). A flush answers nothing.
 */
import { EntryPieces, LISTING_BUDGET, type ListingBudget, formatConntrackEntry, isListed } from "../conntrack/format.js";
import { AF_INET, AF_INET6, type AddressMatch, type ConntrackFilter, matchesFilter } from "../conntrack/filter.js";
import type { ConntrackTable } from "../conntrack/table.js";
import type { ControlPieces } from "./socket.js";

export const CONNTRACK_OPS = ["list", "delete", "flush"] as const;
export type ConntrackOp = (typeof CONNTRACK_OPS)[number];


const FILTER_KEYS: readonly (keyof ConntrackFilter)[] = [
  "family",
  "protocol",
  "origSrc",
  "origDst",
  "replySrc",
  "replyDst",
  "origSport",
  "origDport",
  "replySport",
  "replyDport",
  "icmpType",
  "icmpCode",
  "icmpId",
  "tcpState",
  "status",
];
const ADDRESS_KEYS = new Set<string>(["origSrc", "origDst", "replySrc", "replyDst"]);
const PORT_KEYS = new Set<string>(["origSport", "origDport", "replySport", "replyDport", "icmpId"]);

function isInteger(value: unknown, max: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= max;
}

function addressMatch(value: unknown): AddressMatch | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const { addr, prefixLength } = value as Record<string, unknown>;
  return isInteger(addr, 0xffffffff) && isInteger(prefixLength, 32) ? { addr, prefixLength } : undefined;
}

/** Checks a request's `filter` (from JSON); returns it, or a one-line reason it is not one. */
export function parseConntrackFilter(value: unknown): ConntrackFilter | string {
  if (value === undefined) return {};
  if (typeof value !== "object" || value === null || Array.isArray(value)) return `"filter" must be an object`;
  const filter: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(value as Record<string, unknown>)) {
    if (!(FILTER_KEYS as readonly string[]).includes(key)) return `unknown filter field "${key}"`;
    if (ADDRESS_KEYS.has(key)) {
      const match = addressMatch(field);
      if (match === undefined) return `filter "${key}" must be {"addr": uint32, "prefixLength": 0-32}`;
      filter[key] = match;
    } else if (PORT_KEYS.has(key)) {
      if (!isInteger(field, 0xffff)) return `filter "${key}" must be a port 0-65535`;
      filter[key] = field;
    } else if (key === "protocol") {
      if (!isInteger(field, 255)) return `filter "protocol" must be 0-255`;
      filter[key] = field;
    } else if (key === "family") {
      if (field !== AF_INET && field !== AF_INET6) return `filter "family" must be ${AF_INET} or ${AF_INET6}`;
      filter[key] = field;
    } else if (key === "tcpState" || key === "icmpType" || key === "icmpCode") {
      if (!isInteger(field, 255)) return `filter "${key}" must be 0-255`;
      filter[key] = field;
    } else {
      if (!isInteger(field, 0x7fffffff)) return `filter "status" must be a bit mask`;
      filter[key] = field;
    }
  }
  return filter as ConntrackFilter;
}

/**
 * The answer to one conntrack request, in pieces: a cursor over entry ids that only moves
 * forward (an entry keeps its id for its life), so each live entry present from the first piece
 * to the last is listed or deleted once, as a ctnetlink dump walks the hash between messages.
 */
export class ConntrackWork implements ControlPieces {
  private readonly walk: EntryPieces;
  /** Entries listed or removed so far. */
  count = 0;

  constructor(
    private readonly table: ConntrackTable,
    private readonly op: ConntrackOp,
    private readonly filter: ConntrackFilter,
    budget: ListingBudget = LISTING_BUDGET,
  ) {
    this.walk = new EntryPieces(table.capacity, budget);
  }

  next(): string | undefined {
    if (this.walk.finished) return undefined;
    const table = this.table;
    const now = table.clock.now();
    let text = "";
    // Each piece under the shared tables' lock (docs/multi-core.md): a removal unlinks chains and
    // the NAT index that the workers walk.
    table.locked(() =>
      this.walk.piece((id) => {
        if (this.op === "flush") {
          // conntrack -F (ctnetlink_flush_conntrack -> nf_ct_iterate_cleanup): every confirmed
          // entry of the family, expired ones not yet collected included.
          if (!table.isAllocated(id) || !table.isConfirmed(id) || !matchesFilter(table, id, this.filter)) return false;
          table.remove(id);
        } else {
          if (!isListed(table, id, now) || !matchesFilter(table, id, this.filter)) return false;
          text += formatConntrackEntry(table, id, now) + "\n";
          if (this.op === "delete") table.remove(id);
        }
        this.count++;
        return true;
      }),
    );
    return text;
  }

  /** Runs every piece at once (tests, and a router that is not forwarding). */
  drain(): string {
    let text = "";
    for (let piece = this.next(); piece !== undefined; piece = this.next()) text += piece;
    return text;
  }
}
