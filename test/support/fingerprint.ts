/**
 * A digest of everything reachable from an object — the bytes of every typed array and every
 * primitive field, in a fixed walk order — so a test can say "byte for byte unchanged" about a
 * whole dataplane, a conntrack table or a rate limiter. Written independently of
 * src/control/state-snapshot.ts (which restores state), so that one checks the other.
 */
import { createHash, type Hash } from "node:crypto";

export function fingerprint(root: object, skip: readonly object[] = []): string {
  const hash = createHash("sha256");
  const ids = new Map<object, number>();
  // Objects left out (what other threads change, such as a shared table's lock): each hashes as
  // a reference, wherever the walk meets it.
  for (const object of skip) ids.set(object, ids.size);
  walk(root, hash, ids);
  return hash.digest("hex");
}

function walk(value: unknown, hash: Hash, ids: Map<object, number>): void {
  if (value === null || (typeof value !== "object" && typeof value !== "function")) {
    hash.update(`${typeof value}:${String(value)};`);
    return;
  }
  if (typeof value === "function") {
    hash.update("fn;");
    return;
  }
  const known = ids.get(value);
  if (known !== undefined) {
    hash.update(`ref${known};`);
    return;
  }
  ids.set(value, ids.size);
  if (ArrayBuffer.isView(value)) {
    hash.update(`${value.constructor.name}[${value.byteLength}]`);
    hash.update(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
    return;
  }
  if (value instanceof Map) {
    hash.update(`map${value.size}{`);
    for (const [k, v] of value) {
      walk(k, hash, ids);
      walk(v, hash, ids);
    }
    hash.update("}");
    return;
  }
  if (value instanceof Set) {
    hash.update(`set${value.size}{`);
    for (const item of value) walk(item, hash, ids);
    hash.update("}");
    return;
  }
  hash.update("{");
  for (const key of Object.getOwnPropertyNames(value)) {
    hash.update(`${key}=`);
    walk((value as Record<string, unknown>)[key], hash, ids);
  }
  hash.update("}");
}
