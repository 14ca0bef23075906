/**
 * The state file: a router's connections kept across a restart (issue 10, "Restarts that keep
 * connections"; docs/state.md). What Linux's conntrackd does for a failover pair — dump the
 * kernel's entries, inject them through ctnetlink into the next one — done by qnat for itself.
 *
 * Format, version 1, little-endian (docs/state.md has the picture):
 *
 *   0  "QNATSTAT"      magic, 8 bytes
 *   8  u32 version     STATE_VERSION
 *  12  u32 header      bytes before the first entry (a multiple of 4)
 *  16  u32 words       32-bit words per entry (STATE_ENTRY_WORDS): the entry layout's size
 *  20  u32 count       entries
 *  24  f64 saved at    wall clock, ms since the epoch, when the snapshot began
 *  32  u32 flags       STATE_FLAG_AT_STOP: written when the router stopped (else by the interval)
 *  36  u32 body crc    CRC-32 (zlib's) of the entries
 *  40  u32 header crc  CRC-32 of the header with this field zero
 *  44  u32 0
 *  48  the saving router's port names (u16 count, then u8 length + name each) and its table
 *      counters (u16 count, then u8 length + name + f64 value each), zero-padded to 4 bytes
 *  then `count` entries of STATE_ENTRY_WORDS words (E_* below).
 *
 * An entry is written from the table's accessors and restored through its own API (`create`,
 * `setReplyTuple`, ..., `confirm`), never as raw memory: the hash key, the table's layout and
 * its ids are the new run's. Timeouts are stored as what was left at the save and aged on load by
 * the time the router was down (the wall clock: the saved-at time against the loading time).
 *
 * Entries that no longer fit the router are dropped and counted by RestoreDrop: expired while
 * down; an endpoint reached through a port the config no longer has; an address the entry held as
 * the router's own (the SNAT address, a floating IP, a REDIRECT target) that the router no longer
 * has — the case Linux's MASQUERADE handles by flushing a vanished address's connections
 * (nf_nat_masquerade.c, masq_inet_event); a state the tracker can never produce; two entries with
 * one tuple; more entries than the table holds.
 *
 * A file that is missing is a first start. One that cannot be read, is not a state file, is of
 * another version, truncated, or fails a checksum gives one line of warning and an empty table,
 * never an exception out of `restoreState`.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { crc32 as zlibCrc32 } from "node:zlib";
import { CtStatus, TCP_WINDOW_WORDS, type ConntrackTable } from "../conntrack/table.js";
import { TcpState, tcpSetBeLiberal } from "../conntrack/tcp.js";
import { icmpInverseDport, icmpMayCreate } from "../conntrack/tuple.js";
import type { Dataplane } from "../dataplane/pipeline.js";
import { NetfilterNat } from "../dataplane/netfilter-nat.js";
import { IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP } from "../wire/packet-info.js";

export const STATE_MAGIC = "QNATSTAT";
export const STATE_VERSION = 1;
/** Written on stop (the router had stopped reading: the file is exact), not by the interval. */
export const STATE_FLAG_AT_STOP = 1;
export const STATE_FIXED_HEADER = 48;
const H_VERSION = 8;
const H_HEADER_BYTES = 12;
const H_WORDS = 16;
const H_COUNT = 20;
const H_SAVED_AT = 24;
const H_FLAGS = 32;
const H_BODY_CRC = 36;
const H_HEADER_CRC = 40;

/** Entry words. */
const E_META = 0; // protocol | TCP state << 8 | TCP private flags << 16
const E_STATUS = 1; // Linux IPS_* bits, IPS_CONFIRMED included
const E_MARK = 2;
const E_ORIG = 3; // src, dst, sport << 16 | dport
const E_REPLY = 6; // src, dst, sport << 16 | dport
const E_TIMEOUT_MS = 9; // what was left of the timeout at the save, ms (uint32)
const E_AGE_MS = 10; // ms since the first packet at the save (UDP's stream rule), uint32
const E_PLACES = 11; // where the endpoints were: PLACE_* below
const E_TCP_LAST = 12; // TCP last_end, last_ack
const E_TCP_WINDOW = 14; // TCP window tracking, TCP_WINDOW_WORDS words (table.ts)
export const STATE_ENTRY_WORDS = E_TCP_WINDOW + TCP_WINDOW_WORDS;
export const STATE_ENTRY_BYTES = STATE_ENTRY_WORDS * 4;

/**
 * E_PLACES: bits 0-3 say which of (orig src, orig dst, reply src, reply dst) were the router's own
 * addresses; bits 8-15 the index (in the header's port names) of the port the original source was
 * routed to, bits 16-23 that of the reply source (the other end), PLACE_NO_PORT when local or
 * unroutable.
 */
const PLACE_NO_PORT = 0xff;
const PLACE_ORIG_PORT_SHIFT = 8;
const PLACE_REPLY_PORT_SHIFT = 16;

/** Why a saved entry was not restored; names as `qnat show stats` prints them. */
export enum RestoreDrop {
  Expired = 0,
  PortGone,
  AddressGone,
  Impossible,
  Clash,
  TableFull,
  Count,
}
export const RESTORE_DROP_NAMES: readonly string[] = ["expired", "port-gone", "address-gone", "impossible", "clash", "table-full"];

/** What `restoreState` did: shown by `qnat show stats` and logged once at start. */
export interface RestoreReport {
  readonly file: string;
  /** absent: no file (a first start); restored: read (maybe with drops); refused: warning, empty table. */
  readonly outcome: "absent" | "restored" | "refused";
  /** The one line of warning of a refused file. */
  readonly warning?: string;
  /** Wall-clock ms when the snapshot was taken; seconds the router was down. */
  readonly savedAt?: number;
  readonly downSeconds?: number;
  /** Whether the file was written at a clean stop (else by the interval: up to one interval old). */
  readonly atStop?: boolean;
  /** Entries in the file, entries restored, and the others by RestoreDrop name. */
  readonly saved: number;
  readonly restored: number;
  readonly dropped: Readonly<Record<string, number>>;
}

// ---- CRC-32 ----------------------------------------------------------------------------------

/** zlib's CRC-32 (node:zlib has it from Node 20.15; the table form below for older 20.x). */
export const crc32: (data: Uint8Array, value?: number) => number =
  typeof zlibCrc32 === "function" ? (data, value = 0) => zlibCrc32(data, value) : crc32Table;

let crcTable: Uint32Array | undefined;
/** CRC-32 (IEEE 802.3, reflected, as zlib) by table: the reference the native one is tested against. */
export function crc32Table(data: Uint8Array, value = 0): number {
  if (crcTable === undefined) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = ~value >>> 0;
  for (let i = 0; i < data.length; i++) crc = crcTable[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
  return ~crc >>> 0;
}

// ---- header ----------------------------------------------------------------------------------

/** The names in a header, known when a snapshot starts (values are filled in at its end). */
export interface StateHeaderLayout {
  readonly ports: readonly string[];
  readonly counters: readonly string[];
  readonly bytes: number;
}

export function headerLayout(ports: readonly string[], counters: readonly string[]): StateHeaderLayout {
  let bytes = STATE_FIXED_HEADER + 2;
  for (const name of ports) bytes += 1 + Buffer.byteLength(shortName(name));
  bytes += 2;
  for (const name of counters) bytes += 1 + Buffer.byteLength(shortName(name)) + 8;
  return { ports, counters, bytes: (bytes + 3) & ~3 };
}

function shortName(name: string): string {
  return name.length > 255 ? name.slice(0, 255) : name;
}

export interface StateHeaderValues {
  readonly count: number;
  readonly savedAt: number;
  readonly flags: number;
  readonly bodyCrc: number;
  readonly counterValues: readonly number[];
}

export function encodeHeader(layout: StateHeaderLayout, values: StateHeaderValues): Buffer {
  const header = Buffer.alloc(layout.bytes);
  header.write(STATE_MAGIC, 0, "latin1");
  header.writeUInt32LE(STATE_VERSION, H_VERSION);
  header.writeUInt32LE(layout.bytes, H_HEADER_BYTES);
  header.writeUInt32LE(STATE_ENTRY_WORDS, H_WORDS);
  header.writeUInt32LE(values.count, H_COUNT);
  header.writeDoubleLE(values.savedAt, H_SAVED_AT);
  header.writeUInt32LE(values.flags, H_FLAGS);
  header.writeUInt32LE(values.bodyCrc >>> 0, H_BODY_CRC);
  let at = STATE_FIXED_HEADER;
  header.writeUInt16LE(layout.ports.length, at);
  at += 2;
  for (const name of layout.ports) at = writeName(header, name, at);
  header.writeUInt16LE(layout.counters.length, at);
  at += 2;
  layout.counters.forEach((name, i) => {
    at = writeName(header, name, at);
    header.writeDoubleLE(values.counterValues[i] ?? 0, at);
    at += 8;
  });
  header.writeUInt32LE(crc32(header), H_HEADER_CRC);
  return header;
}

function writeName(buffer: Buffer, name: string, at: number): number {
  const bytes = Buffer.from(shortName(name), "utf8");
  buffer.writeUInt8(bytes.length, at);
  bytes.copy(buffer, at + 1);
  return at + 1 + bytes.length;
}

/** A header read back and checked. */
export interface StateHeader {
  readonly bytes: number;
  readonly count: number;
  readonly savedAt: number;
  readonly flags: number;
  readonly bodyCrc: number;
  readonly ports: readonly string[];
  readonly counters: ReadonlyMap<string, number>;
}

/** A file refused, with the reason as the warning says it. */
export class StateFileError extends Error {}

/** Checks the header of a file of `size` bytes whose first bytes are `head`; throws StateFileError. */
export function decodeHeader(head: Buffer, size: number): StateHeader {
  if (size === 0) throw new StateFileError("the file is empty");
  if (size < STATE_FIXED_HEADER || head.length < STATE_FIXED_HEADER) {
    if (head.subarray(0, Math.min(head.length, 8)).toString("latin1") === STATE_MAGIC.slice(0, Math.min(head.length, 8))) {
      throw new StateFileError(`truncated: ${size} bytes, shorter than a header`);
    }
    throw new StateFileError("not a qnat state file");
  }
  if (head.toString("latin1", 0, 8) !== STATE_MAGIC) throw new StateFileError("not a qnat state file");
  const version = head.readUInt32LE(H_VERSION);
  if (version !== STATE_VERSION) throw new StateFileError(`written in format version ${version}; this qnat reads version ${STATE_VERSION}`);
  const bytes = head.readUInt32LE(H_HEADER_BYTES);
  if (bytes < STATE_FIXED_HEADER + 4 || bytes % 4 !== 0 || bytes > head.length) {
    if (bytes > size) throw new StateFileError(`truncated: ${size} bytes, the header alone announces ${bytes}`);
    throw new StateFileError(`corrupt header (header length ${bytes})`);
  }
  const copy = Buffer.from(head.subarray(0, bytes));
  const headerCrc = copy.readUInt32LE(H_HEADER_CRC);
  copy.writeUInt32LE(0, H_HEADER_CRC);
  if (crc32(copy) !== headerCrc) throw new StateFileError("corrupt header (checksum mismatch)");
  const words = copy.readUInt32LE(H_WORDS);
  if (words !== STATE_ENTRY_WORDS) throw new StateFileError(`entries of ${words} words; this qnat reads ${STATE_ENTRY_WORDS}`);
  const count = copy.readUInt32LE(H_COUNT);
  const expected = bytes + count * STATE_ENTRY_BYTES;
  if (size !== expected) {
    throw new StateFileError(size < expected ? `truncated: ${size} bytes of ${expected} (${count} entries)` : `${size - expected} bytes after the last of ${count} entries`);
  }
  let at = STATE_FIXED_HEADER;
  const readName = (): string => {
    const length = copy.readUInt8(at);
    const name = copy.toString("utf8", at + 1, at + 1 + length);
    at += 1 + length;
    return name;
  };
  try {
    const ports: string[] = [];
    for (let n = copy.readUInt16LE((at += 2) - 2); n > 0; n--) ports.push(readName());
    const counters = new Map<string, number>();
    for (let n = copy.readUInt16LE((at += 2) - 2); n > 0; n--) {
      const name = readName();
      counters.set(name, copy.readDoubleLE(at));
      at += 8;
    }
    return {
      bytes,
      count,
      savedAt: copy.readDoubleLE(H_SAVED_AT),
      flags: copy.readUInt32LE(H_FLAGS),
      bodyCrc: copy.readUInt32LE(H_BODY_CRC),
      ports,
      counters,
    };
  } catch {
    throw new StateFileError("corrupt header (names overrun it)");
  }
}

// ---- writing ---------------------------------------------------------------------------------

/** What one piece of a snapshot may do: entries and slots at most, and about `ms` of time. */
export interface SnapshotBudget {
  readonly entries: number;
  readonly slots: number;
  readonly ms: number;
}

/** About a millisecond of the packet thread per piece (as `qnat show conntrack`'s pieces). */
export const SNAPSHOT_BUDGET: SnapshotBudget = { entries: 4096, slots: 65_536, ms: 1 };
/** When the router has stopped reading there is nothing to share the thread with. */
export const STOP_BUDGET: SnapshotBudget = { entries: 65_536, slots: 1 << 25, ms: Infinity };
/** Entries written between two looks at the clock. */
const CLOCK_EVERY = 64;

/** The table counters the file keeps (`qnat show stats` counts across restarts). */
export function counterNames(table: ConntrackTable): string[] {
  return Object.keys(table.counters);
}

/**
 * A snapshot of a dataplane's live confirmed entries, taken in pieces between batches: each
 * `fill` encodes entries from a cursor over ids until the budget is spent. Consistency is that of
 * `qnat show conntrack` (ConntrackCursor): an entry live from the first piece to the last is
 * written once, each with its state when its piece was taken.
 */
export class SnapshotCursor {
  private id = 0;
  /** Entries written so far. */
  count = 0;
  /** The longest piece so far, ms (the packet loop waited that long at most). */
  longestPieceMs = 0;
  pieces = 0;
  readonly layout: StateHeaderLayout;

  constructor(
    private readonly dataplane: Dataplane,
    private readonly budget: SnapshotBudget = SNAPSHOT_BUDGET,
  ) {
    this.layout = headerLayout(
      dataplane.ports.map((p) => p.name),
      counterNames(dataplane.conntrack),
    );
  }

  get done(): boolean {
    return this.id >= this.dataplane.conntrack.capacity;
  }

  /** Bytes a piece may need. */
  get pieceBytes(): number {
    return this.budget.entries * STATE_ENTRY_BYTES;
  }

  /** Encodes the next piece into `out` (at least `pieceBytes` long); returns the bytes written. */
  fill(out: Uint8Array): number {
    const started = performance.now();
    const table = this.dataplane.conntrack;
    const words = new Int32Array(out.buffer, out.byteOffset, out.byteLength >> 2);
    const now = table.clock.now();
    const slotEnd = Math.min(table.capacity, this.id + this.budget.slots);
    const maxEntries = Math.min(this.budget.entries, words.length / STATE_ENTRY_WORDS);
    let written = 0;
    let id = this.id;
    // The piece under the shared tables' lock (docs/multi-core.md): entries are read whole.
    table.lock();
    try {
      for (; id < slotEnd && written < maxEntries; id++) {
        if (!table.isAllocated(id) || !table.isConfirmed(id)) continue;
        const remaining = table.expiresAt(id) - now;
        if (!(remaining > 0) || (table.status(id) & CtStatus.Dying) !== 0) continue;
        this.encode(id, remaining, now, words, written * STATE_ENTRY_WORDS);
        written++;
        if (written % CLOCK_EVERY === 0 && performance.now() - started >= this.budget.ms) {
          id++;
          break;
        }
      }
    } finally {
      table.unlock();
    }
    this.id = id;
    this.count += written;
    this.pieces++;
    const took = performance.now() - started;
    if (took > this.longestPieceMs) this.longestPieceMs = took;
    return written * STATE_ENTRY_BYTES;
  }

  private encode(id: number, remaining: number, now: number, w: Int32Array, at: number): void {
    const table = this.dataplane.conntrack;
    const protocol = table.protocol(id);
    w[at + E_META] = protocol | (table.tcpState(id) << 8) | (table.tcpFlags(id) << 16);
    w[at + E_STATUS] = table.status(id);
    w[at + E_MARK] = table.mark(id);
    for (let dir = 0; dir < 2; dir++) {
      const base = at + (dir === 0 ? E_ORIG : E_REPLY);
      w[base] = table.tupleSrcBits(id, dir);
      w[base + 1] = table.tupleDstBits(id, dir);
      w[base + 2] = table.tuplePortsBits(id, dir);
    }
    w[at + E_TIMEOUT_MS] = Math.min(0xffffffff, Math.ceil(remaining * 1000)) | 0;
    w[at + E_AGE_MS] = protocol === IPPROTO_UDP ? Math.min(0xffffffff, Math.max(0, Math.round((now - table.startedAt(id)) * 1000))) | 0 : 0;
    w[at + E_PLACES] = this.places(id);
    if (protocol === IPPROTO_TCP) {
      w[at + E_TCP_LAST] = table.tcpLastEnd(id);
      w[at + E_TCP_LAST + 1] = table.tcpLastAck(id);
      w.set(table.tcpWindow.subarray(id * TCP_WINDOW_WORDS, (id + 1) * TCP_WINDOW_WORDS), at + E_TCP_WINDOW);
    } else {
      w.fill(0, at + E_TCP_LAST, at + STATE_ENTRY_WORDS);
    }
  }

  /** E_PLACES of entry `id`: the router's own addresses among its tuples, the ports of its two ends. */
  private places(id: number): number {
    const table = this.dataplane.conntrack;
    const addresses = this.dataplane.addresses;
    let bits = 0;
    if (addresses.isOwn(table.tupleSrcBits(id, 0))) bits |= 1;
    if (addresses.isOwn(table.tupleDstBits(id, 0))) bits |= 2;
    if (addresses.isOwn(table.tupleSrcBits(id, 1))) bits |= 4;
    if (addresses.isOwn(table.tupleDstBits(id, 1))) bits |= 8;
    bits |= ((bits & 1) !== 0 ? PLACE_NO_PORT : this.portOf(table.tupleSrcBits(id, 0))) << PLACE_ORIG_PORT_SHIFT;
    bits |= ((bits & 4) !== 0 ? PLACE_NO_PORT : this.portOf(table.tupleSrcBits(id, 1))) << PLACE_REPLY_PORT_SHIFT;
    return bits;
  }

  /** The port `addr` is routed to, PLACE_NO_PORT when none (or past 254 ports). */
  private portOf(addr: number): number {
    const routes = this.dataplane.routes;
    const route = routes.lookup(addr >>> 0);
    const port = route < 0 ? -1 : routes.routePort(route);
    return port >= 0 && port < PLACE_NO_PORT ? port : PLACE_NO_PORT;
  }
}

// ---- reading ---------------------------------------------------------------------------------

export interface RestoreOptions {
  /** The wall clock, ms since the epoch (tests inject one). */
  readonly wallClock?: () => number;
  /** Bytes read at a time. */
  readonly readChunk?: number;
}

/** Status bits a confirmed entry may carry (IPS_EXPECTED .. IPS_FIXED_TIMEOUT, Dying excluded). */
const KNOWN_STATUS = (CtStatus.FixedTimeout << 1) - 1;

/**
 * Reads `path` into `dataplane`'s (empty) connection table. Never throws: a file that cannot be
 * used is a warning in the report and leaves the table empty.
 */
export function restoreState(dataplane: Dataplane, path: string, options: RestoreOptions = {}): RestoreReport {
  const dropped = new Float64Array(RestoreDrop.Count);
  const report = (outcome: RestoreReport["outcome"], fields: Partial<RestoreReport> = {}): RestoreReport => ({
    file: path,
    outcome,
    saved: 0,
    restored: 0,
    dropped: Object.fromEntries(RESTORE_DROP_NAMES.map((name, i) => [name, dropped[i]!])),
    ...fields,
  });
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return report("absent");
    return report("refused", { warning: `cannot open it (${code ?? String(error)})` });
  }
  const table = dataplane.conntrack;
  // The whole restore under the shared tables' lock: entries are created, NAT-indexed and confirmed
  // as a batch does it.
  table.lock();
  try {
    const size = fstatSync(fd).size;
    const chunk = Buffer.alloc(Math.max(STATE_ENTRY_BYTES, Math.floor((options.readChunk ?? 1 << 20) / STATE_ENTRY_BYTES) * STATE_ENTRY_BYTES));
    const headLength = readFully(fd, chunk, 0, Math.min(chunk.length, size));
    const header = decodeHeader(chunk.subarray(0, headLength), size);
    // Pass 1: the checksum, before anything enters the table.
    let crc = 0;
    for (let at = header.bytes; at < size; ) {
      const n = readFully(fd, chunk, at, Math.min(chunk.length, size - at));
      crc = crc32(chunk.subarray(0, n), crc);
      at += n;
    }
    if (crc !== header.bodyCrc) throw new StateFileError("corrupt (the entries' checksum does not match)");
    // Pass 2: the entries.
    const wallNow = (options.wallClock ?? Date.now)();
    const downSeconds = Math.max(0, (wallNow - header.savedAt) / 1000);
    const restorer = new EntryRestorer(dataplane, header.ports, downSeconds, dropped);
    for (let at = header.bytes; at < size; ) {
      const n = readFully(fd, chunk, at, Math.min(chunk.length, size - at));
      const words = new Int32Array(chunk.buffer, chunk.byteOffset, n >> 2);
      for (let e = 0; e < words.length; e += STATE_ENTRY_WORDS) restorer.restore(words, e);
      at += n;
    }
    // The table's counters go on from the saved ones (`qnat show stats` counts across restarts);
    // the creates and inserts of the restore itself are not events of the traffic.
    const counters = table.counters as unknown as Record<string, number>;
    for (const [name, value] of header.counters) if (name in counters && Number.isFinite(value) && value >= 0) counters[name] = value;
    return report("restored", {
      savedAt: header.savedAt,
      downSeconds,
      atStop: (header.flags & STATE_FLAG_AT_STOP) !== 0,
      saved: header.count,
      restored: restorer.restored,
    });
  } catch (error) {
    // Whatever went in before the failure goes: a refused file means an empty table.
    table.flush();
    dropped.fill(0);
    const warning = error instanceof StateFileError ? error.message : `cannot read it (${(error as NodeJS.ErrnoException).code ?? String(error)})`;
    return report("refused", { warning });
  } finally {
    table.unlock();
    closeSync(fd);
  }
}

/** The one line a router logs about a restore (a refused file: the warning). */
export function describeRestore(r: RestoreReport): string {
  if (r.outcome === "absent") return `qnat: state: ${r.file} does not exist yet; starting with an empty connection table`;
  if (r.outcome === "refused") return `qnat: warning: state: ${r.file}: ${r.warning}; starting with an empty connection table`;
  const drops = Object.entries(r.dropped).filter(([, n]) => n > 0);
  return (
    `qnat: state: restored ${r.restored} of ${r.saved} connections from ${r.file} ` +
    `(saved ${r.atStop ? "at stop" : "by the interval"} ${new Date(r.savedAt!).toISOString()}, down ${r.downSeconds!.toFixed(1)} s)` +
    (drops.length > 0 ? `; dropped: ${drops.map(([name, n]) => `${name} ${n}`).join(", ")}` : "")
  );
}

function readFully(fd: number, buffer: Buffer, position: number, length: number): number {
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buffer, done, length - done, position + done);
    if (n === 0) throw new StateFileError(`truncated while reading (the file shrank at byte ${position + done})`);
    done += n;
  }
  return done;
}

/** Puts saved entries back into a table through its API, dropping those that no longer fit. */
class EntryRestorer {
  restored = 0;
  private readonly table: ConntrackTable;
  private readonly now: number;
  private readonly maxTimeout: number;
  /** Saved port index -> whether the config still has that port (by name). */
  private readonly portKept: boolean[];

  constructor(
    private readonly dataplane: Dataplane,
    savedPorts: readonly string[],
    private readonly downSeconds: number,
    private readonly dropped: Float64Array,
  ) {
    this.table = dataplane.conntrack;
    this.now = this.table.now();
    this.maxTimeout = Math.max(...Object.values(this.table.timeouts));
    const names = new Set(dataplane.ports.map((p) => p.name));
    this.portKept = savedPorts.map((name) => names.has(name));
  }

  restore(w: Int32Array, at: number): void {
    const drop = this.check(w, at);
    if (drop >= 0) {
      this.dropped[drop]!++;
      return;
    }
    const table = this.table;
    if (table.count >= table.capacity) {
      this.dropped[RestoreDrop.TableFull]!++;
      return;
    }
    const meta = w[at + E_META]!;
    const protocol = meta & 0xff;
    const ports = w[at + E_ORIG + 2]!;
    const id = table.create(protocol, w[at + E_ORIG]!, w[at + E_ORIG + 1]!, ports >>> 16, ports & 0xffff);
    if (id < 0) {
      this.dropped[RestoreDrop.TableFull]!++;
      return;
    }
    const replyPorts = w[at + E_REPLY + 2]!;
    table.setReplyTuple(id, w[at + E_REPLY]!, w[at + E_REPLY + 1]!, replyPorts >>> 16, replyPorts & 0xffff);
    table.setTcpState(id, (meta >>> 8) & 0xff);
    table.setTcpFlags(id, (meta >>> 16) & 0xff);
    table.setStatus(id, w[at + E_STATUS]! & ~CtStatus.Confirmed);
    table.setMark(id, w[at + E_MARK]!);
    table.setExpiresAt(id, this.now + (w[at + E_TIMEOUT_MS]! >>> 0) / 1000 - this.downSeconds);
    if (protocol === IPPROTO_TCP) {
      table.setTcpLast(id, w[at + E_TCP_LAST]!, w[at + E_TCP_LAST + 1]!);
      table.tcpWindow.set(w.subarray(at + E_TCP_WINDOW, at + STATE_ENTRY_WORDS), id * TCP_WINDOW_WORDS);
      // The saved window is up to an interval old: the connection's later segments must not be INVALID.
      tcpSetBeLiberal(table, id);
    } else if (protocol === IPPROTO_UDP) {
      table.setStartedAt(id, this.now - this.downSeconds - (w[at + E_AGE_MS]! >>> 0) / 1000);
    }
    if (!table.confirm(id)) {
      this.dropped[RestoreDrop.Clash]!++;
      return;
    }
    const nat = this.dataplane.nat;
    if (nat instanceof NetfilterNat) nat.engine.restoreBySource(id);
    this.restored++;
  }

  /** The RestoreDrop of a saved entry, or -1 when it fits. */
  private check(w: Int32Array, at: number): number {
    const status = w[at + E_STATUS]!;
    const meta = w[at + E_META]!;
    const protocol = meta & 0xff;
    const state = (meta >>> 8) & 0xff;
    if (!isPossible(w, at, protocol, state, status) || (w[at + E_TIMEOUT_MS]! >>> 0) / 1000 > this.maxTimeout + 1) return RestoreDrop.Impossible;
    if ((w[at + E_TIMEOUT_MS]! >>> 0) / 1000 - this.downSeconds <= 0) return RestoreDrop.Expired;
    const places = w[at + E_PLACES]!;
    for (const port of [(places >>> PLACE_ORIG_PORT_SHIFT) & 0xff, (places >>> PLACE_REPLY_PORT_SHIFT) & 0xff]) {
      if (port === PLACE_NO_PORT) continue;
      const kept = this.portKept[port];
      if (kept === undefined) return RestoreDrop.Impossible;
      if (!kept) return RestoreDrop.PortGone;
    }
    const addresses = this.dataplane.addresses;
    const tupleAddress = [at + E_ORIG, at + E_ORIG + 1, at + E_REPLY, at + E_REPLY + 1];
    for (let i = 0; i < 4; i++) {
      if ((places & (1 << i)) !== 0 && !addresses.isOwn(w[tupleAddress[i]!]!)) return RestoreDrop.AddressGone;
    }
    return -1;
  }
}

/**
 * Whether the tracker could have produced this entry: a confirmed, not dying entry with known
 * status bits; ASSURED only after a reply was seen (Linux sets it no earlier, nf_conntrack_proto_*);
 * a NAT bit only with its DONE bit; a TCP state of tcp_conntracks (SYN_SENT .. SYN_SENT2, never
 * NONE) and none for other protocols; an ICMP query type that may open a connection; and a reply
 * tuple that is the inverse of the original except where a NAT bit says it was translated.
 */
function isPossible(w: Int32Array, at: number, protocol: number, state: number, status: number): boolean {
  if ((status & ~KNOWN_STATUS) !== 0 || (status & CtStatus.Confirmed) === 0) return false;
  if ((status & CtStatus.Assured) !== 0 && (status & CtStatus.SeenReply) === 0) return false;
  if ((status & CtStatus.SrcNat) !== 0 && (status & CtStatus.SrcNatDone) === 0) return false;
  if ((status & CtStatus.DstNat) !== 0 && (status & CtStatus.DstNatDone) === 0) return false;
  if (protocol === IPPROTO_TCP ? state < TcpState.SynSent || state > TcpState.SynSent2 : state !== 0) return false;
  const [oSrc, oDst, oPorts, rSrc, rDst, rPorts] = [w[at + E_ORIG]!, w[at + E_ORIG + 1]!, w[at + E_ORIG + 2]!, w[at + E_REPLY]!, w[at + E_REPLY + 1]!, w[at + E_REPLY + 2]!];
  const oSport = oPorts >>> 16;
  const oDport = oPorts & 0xffff;
  const rSport = rPorts >>> 16;
  const rDport = rPorts & 0xffff;
  if (protocol === IPPROTO_ICMP) {
    if (!icmpMayCreate(oDport >>> 8) || rDport !== icmpInverseDport(oDport)) return false;
  } else if (protocol !== IPPROTO_TCP && protocol !== IPPROTO_UDP && (oPorts !== 0 || rPorts !== 0)) {
    return false;
  }
  // The side no NAT touched keeps the original's inverse (ICMP: the id travels in sport both ways).
  const srcTranslated = (status & CtStatus.SrcNat) !== 0;
  const dstTranslated = (status & CtStatus.DstNat) !== 0;
  if (protocol === IPPROTO_ICMP) {
    if (!srcTranslated && rDst !== oSrc) return false;
    if (!dstTranslated && rSrc !== oDst) return false;
    if (!srcTranslated && !dstTranslated && rSport !== oSport) return false;
    return true;
  }
  if (!srcTranslated && (rDst !== oSrc || rDport !== oSport)) return false;
  if (!dstTranslated && (rSrc !== oDst || rSport !== oDport)) return false;
  return true;
}
