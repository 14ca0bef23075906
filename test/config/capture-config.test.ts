import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/config.js";
import { configErrorOf } from "../support/config-error.js";

const seedText = readFileSync("examples/seed.yaml", "utf8");
const seedLines = seedText.split("\n").length;
const withCapture = (block: string): string => `${seedText}capture:\n${block}\n`;

const errorOf = (text: string): string => configErrorOf(text, "/etc/qnat/bad.yaml");

describe("capture: a pcapng capture the router writes from its start", () => {
  it("the seed's router captures its gateway port's wire leg to a file beside the config, rotated every minute", () => {
    const config = parseConfig(withCapture("  file: captures/qg-%H%M%S.pcapng\n  ports: [qg-e76de35e-90]\n  rotate: 60"), "/etc/qnat/seed.yaml");
    expect(config.capture).toEqual({ file: "/etc/qnat/captures/qg-%H%M%S.pcapng", ports: ["qg-e76de35e-90"], leg: "wire", count: 0, rotate: 60, line: seedLines + 1 });
  });

  it("without ports every port is captured; leg and count as given", () => {
    const config = parseConfig(withCapture("  file: /tmp/all.pcapng\n  leg: both\n  count: 100"), "/etc/qnat/seed.yaml");
    expect(config.capture?.ports).toEqual(["qr-694450d6-f6", "qg-e76de35e-90"]);
    expect(config.capture?.leg).toBe("both");
    expect(config.capture?.count).toBe(100);
  });

  it("each mistake is one line FILE:LINE", () => {
    const line = seedLines + 1;
    expect(errorOf(`${seedText}capture: /tmp/x.pcapng\n`)).toBe(`/etc/qnat/bad.yaml:${seedLines}: capture must be a mapping, e.g. { file: /var/tmp/qnat.pcapng, ports: [qg-e76de35e-90], leg: wire }`);
    expect(errorOf(withCapture("  ports: [qg-e76de35e-90]"))).toBe(`/etc/qnat/bad.yaml:${line}: capture needs a file: PATH`);
    expect(errorOf(withCapture("  file: /tmp/x.pcapng\n  ports: [qg-nope]"))).toBe(`/etc/qnat/bad.yaml:${line + 1}: capture.ports: no port qg-nope in this config`);
    expect(errorOf(withCapture("  file: /tmp/x.pcapng\n  leg: tap"))).toBe(`/etc/qnat/bad.yaml:${line + 1}: capture.leg must be wire, mirror or both, not "tap"`);
    expect(errorOf(withCapture("  file: /tmp/x.pcapng\n  count: -1"))).toBe(`/etc/qnat/bad.yaml:${line + 1}: capture.count must be a whole number in 0..4294967296`);
    expect(errorOf(withCapture("  file: /tmp/x.pcapng\n  snaplen: 96"))).toBe(`/etc/qnat/bad.yaml:${line + 1}: unknown capture key "snaplen" (expected file, ports, leg, count, rotate)`);
    expect(errorOf(withCapture("  file: /tmp/\n"))).toBe(`/etc/qnat/bad.yaml:${line}: capture.file "/tmp/" must name a file, not a directory`);
  });
});
