/**
 * src/ is layered (STYLE.md rule 1): wire formats -> routing / conntrack / nat / config / neigh ->
 * dataplane -> I/O ports -> control -> CLI. A lower layer never imports a higher one; in
 * particular src/control never imports from src/cli (errors both use live in src/control/errors.ts).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const SRC = resolve(import.meta.dirname, "../../src");

const LAYER: Readonly<Record<string, number>> = {
  core: 0,
  wire: 1,
  route: 2,
  conntrack: 2,
  nat: 2,
  config: 2,
  neigh: 2,
  dataplane: 3,
  io: 4,
  control: 5,
  cli: 6,
};

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith(".ts") ? [path] : [];
  });
}

/** Every `src/FOLDER` a file imports (static imports, re-exports and dynamic import()). */
function importedFolders(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const folders: string[] = [];
  for (const match of text.matchAll(/(?:from|import)\s*\(?\s*"(\.[^"]+)"/g)) {
    const target = resolve(join(file, ".."), match[1]!);
    if (!target.startsWith(SRC + "/")) continue;
    folders.push(target.slice(SRC.length + 1).split("/")[0]!);
  }
  return folders;
}

describe("src/ layering", () => {
  it("every folder of src/ has a layer", () => {
    const folders = readdirSync(SRC, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
    expect(folders.filter((name) => LAYER[name] === undefined)).toEqual([]);
  });

  it("no file imports from a higher layer (src/control never imports src/cli)", () => {
    const violations: string[] = [];
    for (const file of sourceFiles(SRC)) {
      const own = file.slice(SRC.length + 1).split("/")[0]!;
      for (const folder of importedFolders(file)) {
        if (LAYER[folder]! > LAYER[own]!) violations.push(`${file.slice(SRC.length + 1)} imports src/${folder}`);
      }
    }
    expect(violations).toEqual([]);
  });
});
