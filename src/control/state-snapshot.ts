/**
 * A snapshot of everything reachable from one object, and a function that puts it all back:
 * what lets `qnat trace --router` run a packet through the live dataplane and leave it exactly as
 * it was (control/trace.ts).
 *
 * Why a snapshot of the whole graph and not a dry-run flag at each place that mutates state: a
 * flag has to be remembered at every mutation, and each one forgotten is a silent break of the
 * promise — it was so for the TIME_WAIT reopen (which deletes the old entry), the early drop on a
 * full table, the ICMP rate limiter's tokens and the ICMP errors' IP ids, and it would be so for
 * the next port-search cursor or cache anyone adds. The dataplane keeps its state in typed arrays
 * and plain fields (STYLE.md rule 2: no per-packet objects), so copying every typed array and
 * every own field of every object reachable from it covers any mutation, present or future,
 * without anyone having to name it. Objects a trace replaces (a lazily made staging batch) are
 * put back by reference; Maps, Sets and arrays get their contents back.
 *
 * What it does not see: state held in closures or `#private` fields (the dataplane has none; a
 * test fingerprints the whole dataplane around traces so that a new one would show), and the
 * world outside the process (the trace writes to no leg).
 *
 * Cost: one copy of every typed array it is not told to leave out, made and written back while the
 * packet loop waits. The big ones — the conntrack table's records, buckets and TCP window state and
 * the NAT's by-source index, 136 bytes per entry of capacity — are left out by the trace and put
 * back by their undo journal instead (src/core/undo-log.ts), at the cost of the words the packet
 * wrote: what remains is small (counters, rate limiter, fragment table, rule counters), and
 * `copiedBytes` says how much, so a test can hold it to that. It runs only for a trace, never per
 * packet.
 */

type TypedArray =
  | Int8Array
  | Uint8Array
  | Uint8ClampedArray
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;

/** Puts the saved state back; `copiedBytes`: the bytes of typed arrays the snapshot copied. */
export type RestoreState = (() => void) & { readonly copiedBytes: number };

/**
 * Saves the state of `root` and everything reachable from it; the function restores it.
 * `unchanged`: objects the caller knows a packet never writes (the routing table, 32 MiB of
 * DIR-24-8 arrays that only a route change touches), or that something else restores (arrays
 * covered by an undo journal); they and what hangs from them are neither copied nor restored.
 * The test that fingerprints the dataplane around traces covers them too, so a packet that
 * started writing one would be caught.
 */
export function snapshotState(root: object, unchanged: readonly object[] = []): RestoreState {
  let copiedBytes = 0;
  const restorers: Array<() => void> = [];
  const seen = new Set<object>(unchanged);
  const pending: object[] = [root];
  while (pending.length > 0) {
    const value = pending.pop()!;
    if (seen.has(value)) continue;
    seen.add(value);
    if (ArrayBuffer.isView(value)) {
      restorers.push(viewRestorer(value));
      copiedBytes += value.byteLength;
      continue;
    }
    if (value instanceof ArrayBuffer || typeof value === "function") continue;
    if (value instanceof Map) {
      const entries = [...value.entries()];
      restorers.push(() => {
        value.clear();
        for (const [k, v] of entries) value.set(k, v);
      });
      for (const [k, v] of entries) {
        if (isObject(k)) pending.push(k);
        if (isObject(v)) pending.push(v);
      }
      continue;
    }
    if (value instanceof Set) {
      const items = [...value];
      restorers.push(() => {
        value.clear();
        for (const item of items) value.add(item);
      });
      for (const item of items) if (isObject(item)) pending.push(item);
      continue;
    }
    // Plain objects, class instances and arrays: every own field (an array's `length` too).
    const keys = Object.getOwnPropertyNames(value);
    const had = new Set(keys);
    const record = value as Record<string, unknown>;
    const saved = keys.map((key) => record[key]);
    restorers.push(() => {
      for (const key of Object.getOwnPropertyNames(value)) {
        // A field (or array element) the trace added goes away again.
        if (!had.has(key)) delete record[key];
      }
      keys.forEach((key, i) => {
        // Only what changed is written back: frozen objects and read-only fields stay untouched.
        if (!Object.is(record[key], saved[i])) record[key] = saved[i];
      });
    });
    for (const field of saved) if (isObject(field)) pending.push(field);
  }
  // Typed arrays and fields in the order they were saved; objects before the views they hold.
  const restore = (): void => {
    for (const restorer of restorers) restorer();
  };
  return Object.assign(restore, { copiedBytes });
}

function isObject(value: unknown): value is object {
  return (typeof value === "object" && value !== null) || typeof value === "function";
}

/** A copy of a typed array's or DataView's bytes and the function that writes them back. */
function viewRestorer(view: ArrayBufferView): () => void {
  if (view instanceof DataView) {
    const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
    const copy = bytes.slice();
    return () => bytes.set(copy);
  }
  const array = view as TypedArray;
  const copy = array.slice() as TypedArray;
  return () => (array as Uint8Array).set(copy as Uint8Array);
}
