/**
 * A RoutingTable built in pieces of about a millisecond, one piece per turn of the event loop, so
 * that `qnat apply` of a new full Internet table (a million `ip route` lines, ~3.5 s of work) never
 * holds the packet loop that shares the thread for more than a piece (control/live-apply.ts). The
 * running table keeps forwarding meanwhile; the caller swaps the finished table in between two
 * batches, in O(1).
 *
 * The result is the table buildRoutingTable (dataplane/from-config.ts) makes from the same lines:
 * the same steps in the same order (every address, then each route line), only spread over turns
 * of the event loop. The one step that could take longer than a piece, the repaint of tbl24 under
 * a short prefix (a default route paints 16M entries, tens of ms), is itself cut in pieces
 * (RoutingTable.deferLargeFills).
 *
 * Why on the loop's thread rather than in a worker thread: see docs/performance.md ("qnat apply
 * of a full table without stopping the packet loop").
 */
import { inPieces, type PieceOptions } from "../core/pieces.js";
import { RouteError, RoutingTable } from "./table.js";

/** What a table is built from: its ports, their addresses in order, then its route lines. */
export interface TableSource {
  readonly portNames: readonly string[];
  readonly addresses: ReadonlyArray<{ readonly port: number; readonly addr: number; readonly prefixLength: number }>;
  readonly routes: ReadonlyArray<{ readonly value: string }>;
}

/** A route line the table refuses: its index in TableSource.routes and iproute2's message. */
export class RouteLineError extends Error {
  constructor(
    readonly index: number,
    readonly error: RouteError,
  ) {
    super(error.message);
    this.name = "RouteLineError";
  }
}

/** tbl24 entries of a deferred repaint painted per step (a /8's worth: a fraction of a ms). */
const PAINT_PER_STEP = 1 << 16;

/**
 * Builds the table in pieces. Rejects with RouteLineError at the first route line refused (the
 * partly built table is dropped; nothing else changed), or with a RouteError for an address.
 */
export async function buildTableInPieces(source: TableSource, options: PieceOptions = {}): Promise<RoutingTable> {
  const table = new RoutingTable(source.portNames);
  table.deferLargeFills();
  // First the room: the prefix lengths counted from the lines' text, a piece at a time.
  const perLength = new Uint32Array(33);
  let counted = 0;
  await inPieces(() => {
    if (counted >= source.routes.length) return true;
    const length = prefixLengthOf(source.routes[counted++]!.value);
    if (length >= 0) perLength[length]!++;
    return false;
  }, options);
  table.reserve(source.routes.length, perLength);
  for (const a of source.addresses) table.addConnected(a.port, a.addr, a.prefixLength);
  let next = 0;
  await inPieces(() => {
    if (!table.paintPending(PAINT_PER_STEP)) return false;
    if (next >= source.routes.length) return true;
    const index = next++;
    try {
      table.addRoute(source.routes[index]!.value);
    } catch (error) {
      if (error instanceof RouteError) throw new RouteLineError(index, error);
      throw error;
    }
    return false;
  }, options);
  table.stopDeferringFills();
  return table;
}

/**
 * The prefix length of an `ip route` line's destination, as far as its text says at a glance (the
 * first word with a `/`, or an address word: /32), -1 if none; a hint for RoutingTable.reserve.
 */
function prefixLengthOf(line: string): number {
  const slash = line.indexOf("/");
  if (slash >= 0) {
    const length = Number.parseInt(line.slice(slash + 1, slash + 3), 10);
    return length >= 0 && length <= 32 ? length : -1;
  }
  return /^(?:\S+ )?\d+\.\d+\.\d+\.\d+(?: |$)/.test(line) ? 32 : -1;
}
