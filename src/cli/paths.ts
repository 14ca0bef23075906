/**
 * Where the CLI finds things: the default config (`examples/seed.yaml`, in the current folder
 * or else in qnat's own package) and the router namespace a `show`/`trace` talks to.
 */
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig } from "../config/config.js";

export const DEFAULT_CONFIG = join("examples", "seed.yaml");

/** qnat's package folder: the first folder above this module with examples/seed.yaml. */
export function packageRoot(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let level = 0; level < 5; level++) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, DEFAULT_CONFIG))) return dir;
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return undefined;
}

export function defaultConfigPath(): string {
  if (existsSync(DEFAULT_CONFIG)) return resolve(DEFAULT_CONFIG);
  const root = packageRoot();
  return root === undefined ? resolve(DEFAULT_CONFIG) : join(root, DEFAULT_CONFIG);
}

/** `--router NS`, else the namespace of `--config CONFIG`, else the default config's. */
export function resolveRouterNamespace(router: string | undefined, config: string | undefined): string {
  if (router !== undefined) return router;
  return loadConfig(config ?? defaultConfigPath()).namespace;
}
