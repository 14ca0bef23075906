/**
 * A count of the connection table by protocol and state, and of its NAT bindings, for the
 * Prometheus endpoint (metrics.ts) and `qnat top` (top.ts): a walk over the entries in pieces of
 * about a millisecond (EntryPieces, as the conntrack listing), one piece per turn of the event
 * loop, so a table of a million entries never holds the packet legs up. The packet path keeps no
 * per-state counts (that would be work per state change of every connection); the census is what
 * asks, at the rate someone asks.
 *
 * Activity, for `qnat top`'s busiest connections: qnat's conntrack keeps no per-connection
 * packet or byte counters (Linux's nf_conntrack_acct, off by default there too: work per packet).
 * What every packet does leave is its connection's timeout, refreshed to now + the state's
 * timeout (nf_ct_refresh_acct). So once activity is asked for, the census keeps each entry's
 * expiry time from the previous census: an entry whose expiry moved since then carried a packet
 * in between, and `streak` counts the censuses in a row in which it did. The busiest connections
 * are those with the longest such streak (the ones that kept sending), the later expiry first
 * among equals. 9 bytes per entry of the table, allocated on the first census that asks; that
 * first census only notes the expiries (no connection is called active on it).
 */
import { EntryPieces, type ListingBudget, conntrackEntryJson, isListed, type ConntrackEntryJson, protocolName } from "../conntrack/format.js";
import { CtStatus, type ConntrackTable } from "../conntrack/table.js";
import { TCP_STATE_NAMES } from "../conntrack/tcp.js";
import { IPPROTO_TCP } from "../wire/packet-info.js";

/** A piece of a census: cheap work per entry, so more entries than a listing's piece, still ~1 ms. */
export const CENSUS_BUDGET: ListingBudget = { entries: 16_384, slots: 65_536, ms: 1 };

/** The most busiest connections a census keeps. */
export const MAX_BUSIEST = 100;

export interface BusyConnection {
  readonly entry: ConntrackEntryJson;
  /** Censuses in a row (about one a second while `qnat top` runs) in which the connection carried packets. */
  readonly activeSamples: number;
}

export interface CensusResult {
  /** When the census finished (Date.now()). */
  readonly at: number;
  /** Live confirmed entries counted (what `conntrack -L` would list). */
  readonly entries: number;
  /** Entries by protocol name and state ("tcp" / "ESTABLISHED", "udp" / "ASSURED"...). */
  readonly byProtocolState: ReadonlyArray<{ readonly protocol: string; readonly state: string; readonly count: number }>;
  /** Entries whose source, resp. destination, was translated (IPS_SRC_NAT, IPS_DST_NAT). */
  readonly snat: number;
  readonly dnat: number;
  /** With activity: the busiest connections, busiest first. */
  readonly busiest: readonly BusyConnection[];
}

/**
 * The state label of an entry: the TCP state for TCP (conntrack -L's word), and for the others
 * the status conntrack -L shows: UNREPLIED (no reply yet), ASSURED, or REPLIED.
 */
export function entryStateName(table: ConntrackTable, id: number): string {
  return stateName(entryStateCode(table, id));
}

/** Codes of the states of non-TCP entries, after the TCP states (< STATE_CODES). */
const STATE_UNREPLIED = 29;
const STATE_REPLIED = 30;
const STATE_ASSURED = 31;
const STATE_CODES = 32;

/** The state as a small number: the TCP state, or one of STATE_UNREPLIED/REPLIED/ASSURED. */
function entryStateCode(table: ConntrackTable, id: number): number {
  if (table.protocol(id) === IPPROTO_TCP) return Math.min(table.tcpState(id), STATE_UNREPLIED - 1);
  const status = table.status(id);
  if ((status & CtStatus.SeenReply) === 0) return STATE_UNREPLIED;
  return (status & CtStatus.Assured) !== 0 ? STATE_ASSURED : STATE_REPLIED;
}

function stateName(code: number): string {
  if (code === STATE_UNREPLIED) return "UNREPLIED";
  if (code === STATE_REPLIED) return "REPLIED";
  if (code === STATE_ASSURED) return "ASSURED";
  return TCP_STATE_NAMES[code] ?? "NONE";
}

function nextTurn(): Promise<void> {
  return new Promise<void>((resolve) => setImmediate(resolve));
}

/** Censuses of one router's table, at most one running at a time. */
export class ConntrackCensus {
  private running: Promise<CensusResult> | undefined;
  private last: CensusResult | undefined;
  /** Activity tracking (see the file's comment), for the table they were made for. */
  private lastExpiry: Float64Array | undefined;
  private streak: Uint8Array | undefined;
  private trackedTable: ConntrackTable | undefined;
  /** A census has noted the expiries since tracking began: the next one can compare. */
  private primed = false;

  constructor(
    /** The live table (a live change may replace the dataplane that holds it). */
    private readonly table: () => ConntrackTable,
    private readonly budget: ListingBudget = CENSUS_BUDGET,
    private readonly yieldTurn: () => Promise<void> = nextTurn,
  ) {}

  /**
   * A census no older than `maxAgeMs`: the last one if it is recent enough, the one running if
   * any, else a new one. `activity`: track the busiest connections from now on.
   */
  latest(maxAgeMs: number, activity = false): Promise<CensusResult> {
    if (activity) this.trackActivity();
    if (this.last !== undefined && Date.now() - this.last.at < maxAgeMs && (!activity || this.trackedTable !== undefined)) {
      return Promise.resolve(this.last);
    }
    this.running ??= this.run().finally(() => (this.running = undefined));
    return this.running;
  }

  private trackActivity(): void {
    const table = this.table();
    if (this.trackedTable === table) return;
    this.trackedTable = table;
    this.lastExpiry = new Float64Array(table.capacity);
    this.streak = new Uint8Array(table.capacity);
    this.primed = false;
  }

  private async run(): Promise<CensusResult> {
    const table = this.table();
    const walk = new EntryPieces(table.capacity, this.budget);
    // [protocol * STATE_CODES + state]: numbers, no string per entry.
    const counts = new Float64Array(256 * STATE_CODES);
    const busiest: Candidate[] = [];
    const tracking = this.trackedTable === table;
    const comparing = tracking && this.primed;
    const lastExpiry = this.lastExpiry;
    const streak = this.streak;
    let entries = 0;
    let snat = 0;
    let dnat = 0;
    for (;;) {
      if (this.table() !== table) return this.run();
      const now = table.clock.now();
      // Each piece under the shared tables' lock: no entry is read while a worker writes it.
      table.lock();
      try {
        walk.piece((id) => {
          if (!isListed(table, id, now)) {
            if (tracking) streak![id] = 0;
            return false;
          }
          entries++;
          counts[table.protocol(id) * STATE_CODES + entryStateCode(table, id)]! += 1;
          const status = table.status(id);
          if ((status & CtStatus.SrcNat) !== 0) snat++;
          if ((status & CtStatus.DstNat) !== 0) dnat++;
          if (tracking) {
            const expiry = table.expiresAt(id);
            const active = comparing && expiry !== lastExpiry![id];
            lastExpiry![id] = expiry;
            const run = active ? Math.min(255, streak![id]! + 1) : 0;
            streak![id] = run;
            if (run > 0) keepBusiest(busiest, id, run, expiry);
          }
          return true;
        });
      } finally {
        table.unlock();
      }
      if (walk.finished) break;
      await this.yieldTurn();
    }
    if (tracking) this.primed = true;
    const now = table.clock.now();
    const result: CensusResult = {
      at: Date.now(),
      entries,
      byProtocolState: countsByName(counts),
      snat,
      dnat,
      busiest: table.locked(() =>
        busiest.filter((b) => isListed(table, b.id, now)).map((b) => ({ entry: conntrackEntryJson(table, b.id, now), activeSamples: b.streak })),
      ),
    };
    this.last = result;
    return result;
  }
}

/** The non-zero counts with their protocol and state names, sorted by name. */
function countsByName(counts: Float64Array): { protocol: string; state: string; count: number }[] {
  const out: { protocol: string; state: string; count: number }[] = [];
  counts.forEach((count, at) => {
    if (count > 0) out.push({ protocol: protocolName(Math.floor(at / STATE_CODES)), state: stateName(at % STATE_CODES), count });
  });
  return out.sort((a, b) => a.protocol.localeCompare(b.protocol) || a.state.localeCompare(b.state));
}

/**
 * Keeps the MAX_BUSIEST longest streaks, busiest first; among equal streaks the latest refreshed
 * (the later expiry) first. Insertion into a short sorted array: a census meets each entry once.
 */
interface Candidate {
  readonly id: number;
  readonly streak: number;
  readonly expiry: number;
}

function keepBusiest(busiest: Candidate[], id: number, streak: number, expiry: number): void {
  const before = (a: Candidate): boolean => streak > a.streak || (streak === a.streak && expiry > a.expiry);
  if (busiest.length >= MAX_BUSIEST && !before(busiest[busiest.length - 1]!)) return;
  let at = busiest.length;
  while (at > 0 && before(busiest[at - 1]!)) at--;
  busiest.splice(at, 0, { id, streak, expiry });
  if (busiest.length > MAX_BUSIEST) busiest.pop();
}
