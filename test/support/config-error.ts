/** The one-line ConfigError (`FILE:LINE: ...`) that parsing `text` as config file `file` gives. */
import { expect } from "vitest";
import { ConfigError, parseConfig } from "../../src/config/config.js";

export function configErrorOf(text: string, file = "bad.yaml"): string {
  try {
    parseConfig(text, file);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error("expected a ConfigError");
}
