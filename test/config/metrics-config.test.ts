/**
 * `metrics: { listen: ADDR:PORT }`: the Prometheus endpoint is off unless configured, and every
 * mistake in it is one line `FILE:LINE: ...` at the line that has it.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { loadConfig, parseConfig } from "../../src/config/config.js";
import { configErrorOf } from "../support/config-error.js";

const seedText = readFileSync("examples/seed.yaml", "utf8");
/** The line `metrics:` lands on when appended to the seed's config. */
const line = seedText.split("\n").length;

const errorOf = configErrorOf;

const withMetrics = (block: string): string => `${seedText}metrics:\n${block}\n`;

describe("metrics: the Prometheus endpoint's address", () => {
  it("is off unless configured; listen gives the address and port in the router namespace", () => {
    expect(loadConfig("examples/seed.yaml").metrics).toBeUndefined();
    expect(parseConfig(withMetrics("  listen: 0.0.0.0:9100"), "x.yaml").metrics).toEqual({ host: "0.0.0.0", port: 9100, line: line + 1 });
    expect(parseConfig(`${seedText}metrics: { listen: "10.0.0.1:9464" }\n`, "x.yaml").metrics).toMatchObject({ host: "10.0.0.1", port: 9464 });
  });

  it("each mistake is one line at its place", () => {
    expect(errorOf(withMetrics("  listen: 9100"))).toBe(`bad.yaml:${line + 1}: metrics.listen must be ADDR:PORT, e.g. 0.0.0.0:9100`);
    expect(errorOf(withMetrics("  listen: localhost:9100"))).toBe(`bad.yaml:${line + 1}: metrics.listen "localhost:9100": "localhost" is not an IPv4 address`);
    expect(errorOf(withMetrics("  listen: 10.0.0.1"))).toBe(`bad.yaml:${line + 1}: metrics.listen "10.0.0.1" needs a port: ADDR:PORT, e.g. 0.0.0.0:9100`);
    expect(errorOf(withMetrics("  listen: 10.0.0.1:70000"))).toBe(`bad.yaml:${line + 1}: metrics.listen "10.0.0.1:70000": port "70000" is not 1..65535`);
    expect(errorOf(withMetrics("  listen: 10.0.0.1:0"))).toBe(`bad.yaml:${line + 1}: metrics.listen "10.0.0.1:0": port "0" is not 1..65535`);
    expect(errorOf(withMetrics("  listen: 10.0.0.1:http"))).toBe(`bad.yaml:${line + 1}: metrics.listen "10.0.0.1:http": port "http" is not 1..65535`);
    expect(errorOf(withMetrics("  port: 9100"))).toBe(`bad.yaml:${line + 1}: unknown metrics key "port" (expected listen)`);
    expect(errorOf(`${seedText}metrics: 0.0.0.0:9100\n`)).toBe(`bad.yaml:${line}: metrics must be a mapping, e.g. { listen: 0.0.0.0:9100 }`);
    expect(errorOf(`${seedText}metrics: {}\n`)).toBe(`bad.yaml:${line}: metrics needs listen: ADDR:PORT, e.g. 0.0.0.0:9100`);
  });
});
