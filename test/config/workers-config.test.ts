/**
 * `workers: N|auto`: how many threads forward (one queue of every leg each). Absent is one, the
 * main thread alone; `auto` is one per core, at most the 256 queues a TUN device has; every
 * mistake is one line `FILE:LINE: ...` at the line that has it.
 */
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { describe, expect, it } from "vitest";
import { loadConfig, MAX_WORKERS, parseConfig, withWorkersFromEnvironment, workersOf } from "../../src/config/config.js";
import { configErrorOf } from "../support/config-error.js";

const seedText = readFileSync("examples/seed.yaml", "utf8");
/** The line `workers:` lands on when appended to the seed's config. */
const line = seedText.split("\n").length;

const errorOf = configErrorOf;

const withWorkers = (value: string): string => `${seedText}workers: ${value}\n`;

describe("workers: the threads that forward", () => {
  it("the seed's router forwards on one thread: no workers key is one worker", () => {
    const seed = loadConfig("examples/seed.yaml");
    expect(seed.workers).toBeUndefined();
    expect(workersOf(seed)).toBe(1);
  });

  it("a number is that many workers, at the line that says so", () => {
    expect(parseConfig(withWorkers("2"), "x.yaml").workers).toEqual({ count: 2, auto: false, line });
    expect(workersOf(parseConfig(withWorkers("1"), "x.yaml"))).toBe(1);
    expect(workersOf(parseConfig(withWorkers(String(MAX_WORKERS)), "x.yaml"))).toBe(256);
  });

  it("auto is one per core of this machine, at most the TUN queue limit", () => {
    const config = parseConfig(withWorkers("auto"), "x.yaml");
    expect(config.workers).toEqual({ count: Math.min(availableParallelism(), 256), auto: true, line });
  });

  it("QNAT_WORKERS gives the workers of a config without a workers line; the config's own line wins", () => {
    const seed = parseConfig(seedText, "seed.yaml");
    expect(withWorkersFromEnvironment(seed, undefined)).toBe(seed);
    expect(withWorkersFromEnvironment(seed, "")).toBe(seed);
    expect(withWorkersFromEnvironment(seed, "2").workers).toEqual({ count: 2, auto: false, line: 0 });
    expect(workersOf(withWorkersFromEnvironment(seed, "auto"))).toBe(Math.min(availableParallelism(), 256));
    const three = parseConfig(withWorkers("3"), "x.yaml");
    expect(workersOf(withWorkersFromEnvironment(three, "2"))).toBe(3);
    for (const bad of ["0", "257", "two", "1.5", "-1", " 2"]) {
      expect(() => withWorkersFromEnvironment(seed, bad)).toThrow(`seed.yaml:0: QNAT_WORKERS=${bad}: give a whole number of threads 1..256 or auto`);
    }
  });

  it("each mistake is one line at its place", () => {
    expect(errorOf(withWorkers("0"))).toBe(`bad.yaml:${line}: workers 0 is outside 1..256 (a TUN device has at most 256 queues)`);
    expect(errorOf(withWorkers("257"))).toBe(`bad.yaml:${line}: workers 257 is outside 1..256 (a TUN device has at most 256 queues)`);
    expect(errorOf(withWorkers("-2"))).toBe(`bad.yaml:${line}: workers -2 is outside 1..256 (a TUN device has at most 256 queues)`);
    expect(errorOf(withWorkers("1.5"))).toBe(`bad.yaml:${line}: workers must be a whole number of threads or auto, not 1.5`);
    expect(errorOf(withWorkers("all"))).toBe(`bad.yaml:${line}: workers must be a whole number of threads or auto, not "all"`);
    expect(errorOf(withWorkers("Auto"))).toBe(`bad.yaml:${line}: workers must be a whole number of threads or auto, not "Auto"`);
    expect(errorOf(withWorkers("[2]"))).toBe(`bad.yaml:${line}: workers must be a whole number of threads or auto, not a list`);
    expect(errorOf(withWorkers("{ count: 2 }"))).toBe(`bad.yaml:${line}: workers must be a whole number of threads or auto, not a mapping`);
  });

  it("tap ports run on every thread too (workers: 2 with the seed's Ethernet router); a capture from the start runs on every thread", () => {
    const ethernetText = readFileSync("examples/seed-ethernet.yaml", "utf8");
    const ethernet = parseConfig(`${ethernetText}workers: 2\n`, "x.yaml");
    expect(workersOf(ethernet)).toBe(2);
    expect(ethernet.ports.map((p) => p.wire.mode)).toEqual(["tap", "tap"]);
    expect(workersOf(parseConfig(`${ethernetText}workers: 1\n`, "x.yaml"))).toBe(1);
    const capture = `${seedText}capture:\n  file: /var/tmp/q.pcapng\nworkers: 2\n`;
    const parsed = parseConfig(capture, "x.yaml");
    expect(workersOf(parsed)).toBe(2);
    expect(parsed.capture?.file).toBe("/var/tmp/q.pcapng");
  });
});
