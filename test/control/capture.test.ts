/**
 * The router's side of a capture without namespaces: the config's `capture:` written to files
 * by the router (on the seed's router with in-memory legs), -G rotation and its file names, and
 * `qnat capture`'s command line.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { PcapngFileWriter, rotatedFileName, strftime } from "../../src/control/capture-file.js";
import { RouterCaptures } from "../../src/control/capture.js";
import { parseCaptureArgs } from "../../src/cli/capture.js";
import { UsageError } from "../../src/cli/errors.js";
import { BLOCK_ENHANCED_PACKET, BLOCK_INTERFACE_DESCRIPTION, BLOCK_SECTION_HEADER, enhancedPacketBlock, interfaceDescriptionBlock, LINKTYPE_RAW, sectionHeaderBlock } from "../../src/io/pcapng.js";
import { buildPacket } from "../../src/wire/build.js";
import { MemoryRouter } from "../support/memory-router.js";
import { readPcapng } from "../support/pcapng-reader.js";

const dir = mkdtempSync(join(tmpdir(), "qnat-capture-unit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("the config's capture: the router writes the file itself", () => {
  it("captures qg-'s wire leg until its count, then writes the statistics and says so", async () => {
    const router = MemoryRouter.fromFile();
    const log: string[] = [];
    const captures = new RouterCaptures(64, () => router.config, () => router.dataplane, (line) => log.push(line));
    captures.attach(router.forwarder);
    const file = join(dir, "config.pcapng");
    captures.startFromConfig({ file, ports: ["qg-e76de35e-90"], leg: "wire", count: 2, rotate: 0, line: 1 });
    for (let i = 0; i < 3; i++) router.send("qr-694450d6-f6", { protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 100 + i, dport: 53 });
    router.run();
    const started = Date.now();
    while (!log.some((l) => l.includes("ended")) && Date.now() - started < 5000) await new Promise((r) => setTimeout(r, 10));
    expect(log.at(-1)).toBe(`qnat: capture to ${file} ended: 2 packets captured, 0 lost`);
    const read = readPcapng(readFileSync(file));
    expect(read.packets.map((p) => p.comments[0])).toEqual([
      "SNAT 10.0.0.3:100 -> 9.186.100.2:100 (rule neutron-vpn-agen-snat #2)",
      "SNAT 10.0.0.3:101 -> 9.186.100.2:101 (rule neutron-vpn-agen-snat #2)",
    ]);
    expect(read.statistics).toEqual([{ interfaceId: 0, received: 2n, dropped: 0n }]);
    expect(captures.stats()).toEqual({ running: 0, captured: 2, lost: 0 });
    // The capture is gone from the loop: the dataplane records nothing any more.
    expect(router.dataplane.decisions).toBeNull();
  });
});

describe("-G: a new file every N seconds, each whole on its own", () => {
  it("names files by strftime fields, or by index before the extension", () => {
    const at = new Date(2026, 10, 30, 7, 5, 9);
    expect(strftime("qg-%Y%m%d-%H%M%S.pcapng", at)).toBe("qg-20261130-070509.pcapng");
    expect(strftime("%s-100%%", at)).toBe(`${Math.floor(at.getTime() / 1000)}-100%`);
    expect(rotatedFileName("/tmp/snat.pcapng", 3, at)).toBe("/tmp/snat.3.pcapng");
    expect(rotatedFileName("/tmp/d.x/snat", 0, at)).toBe("/tmp/d.x/snat.0");
    expect(rotatedFileName("/tmp/qg-%H%M%S.pcapng", 7, at)).toBe("/tmp/qg-070509.pcapng");
  });

  it("rotates on the first packet after the interval, repeating the section and interface blocks", async () => {
    let now = 1_000_000;
    const writer = new PcapngFileWriter(join(dir, "rot.pcapng"), 10, () => now);
    const packet = buildPacket({ protocol: "icmp", src: "10.0.0.3", dst: "203.0.113.10" });
    const epb = (n: number) => ({ type: BLOCK_ENHANCED_PACKET, bytes: enhancedPacketBlock(0, n, packet, 0, packet.length, `packet ${n}`) });
    writer.write([
      { type: BLOCK_SECTION_HEADER, bytes: sectionHeaderBlock("qnat capture") },
      { type: BLOCK_INTERFACE_DESCRIPTION, bytes: interfaceDescriptionBlock({ linkType: LINKTYPE_RAW, name: "qg-e76de35e-90" }) },
      epb(1),
    ]);
    now += 9_999;
    writer.write([epb(2)]);
    now += 1;
    writer.write([epb(3)]);
    await writer.close();
    expect(writer.files).toEqual([join(dir, "rot.0.pcapng"), join(dir, "rot.1.pcapng")]);
    const files = writer.files.map((f) => readPcapng(readFileSync(f)));
    expect(files.map((f) => f.packets.map((p) => p.comments[0]))).toEqual([["packet 1", "packet 2"], ["packet 3"]]);
    expect(files.map((f) => f.interfaces.map((i) => i.name))).toEqual([["qg-e76de35e-90"], ["qg-e76de35e-90"]]);
    expect(existsSync(join(dir, "rot.pcapng"))).toBe(false);
  });
});

describe("qnat capture's command line (tcpdump's words)", () => {
  it("ports, --leg, -c, -G, -B, --router and -w", () => {
    expect(parseCaptureArgs(["qr-694450d6-f6", "qg-e76de35e-90", "--leg", "both", "-c", "10", "-G", "60", "-B", "64", "--router", "qrouter-x", "-w", "snat.pcapng"])).toEqual({
      ports: ["qr-694450d6-f6", "qg-e76de35e-90"],
      leg: "both",
      count: 10,
      rotateSeconds: 60,
      ringBytes: 65536,
      router: "qrouter-x",
      file: "snat.pcapng",
    });
    expect(parseCaptureArgs(["qg-e76de35e-90", "-w", "-"])).toEqual({ ports: ["qg-e76de35e-90"], leg: "wire", count: 0, rotateSeconds: 0, file: "-" });
  });

  it("each mistake is one usage line", () => {
    const mistake = (argv: string[]): string => {
      try {
        parseCaptureArgs(argv);
      } catch (error) {
        expect(error).toBeInstanceOf(UsageError);
        return (error as Error).message;
      }
      throw new Error("expected a UsageError");
    };
    expect(mistake(["qg-e76de35e-90"])).toMatch(/^usage: qnat capture PORT/);
    expect(mistake(["-w", "x"])).toMatch(/^usage: qnat capture PORT/);
    expect(mistake(["qg-e76de35e-90", "-w", "-", "-G", "5"])).toBe("-G rotates files: it needs -w FILE, not -w -");
    expect(mistake(["qg-e76de35e-90", "-w", "x", "-c", "ten"])).toBe("-c needs a whole number");
    expect(mistake(["qg-e76de35e-90", "-w", "x", "--leg", "tap"])).toBe("--leg must be wire, mirror, both");
    expect(mistake(["qg-e76de35e-90", "-w", "x", "-s", "96"])).toBe("qnat capture: unknown option -s");
  });
});

describe("the drain's comment cache", () => {
  it("a flow's packets share one composed comment; another connection gets its own", async () => {
    const { CommentCache } = await import("../../src/control/capture.js");
    const { Rec } = await import("../../src/io/capture.js");
    const router = MemoryRouter.fromFile();
    const { commentContextOf } = await import("../../src/control/capture.js");
    const context = commentContextOf(router.dataplane);
    const records = new Int32Array(Rec.Words * 3).fill(-1);
    // An egress copy on qg-'s wire leg (leg 2) of an established UDP connection from qr-'s (leg 0).
    const snat = (r: number, sport: number): void => {
      records[r + Rec.Kind] = 1;
      records[r + Rec.Verdict] = 2;
      records[r + Rec.Reason] = 0;
      records[r + Rec.Flags] = 0;
      records[r + Rec.CtState] = 1;
      records[r + Rec.Connection] = 8;
      records[r + Rec.Protocol] = 17;
      records[r + Rec.Status] = 0x10 | 0x80 | 0x100;
      records[r + Rec.OrigSrc] = 0x0a000003;
      records[r + Rec.OrigDst] = 0xcb00710a | 0;
      records[r + Rec.OrigPorts] = (sport << 16) | 53;
      records[r + Rec.ReplySrc] = 0xcb00710a | 0;
      records[r + Rec.ReplyDst] = 0x09ba6402;
      records[r + Rec.ReplyPorts] = (53 << 16) | sport;
      records[r + Rec.IngressLeg] = 0;
    };
    snat(0, 40000);
    snat(Rec.Words, 40000);
    snat(2 * Rec.Words, 40001);
    const cache = new CommentCache();
    const first = cache.commentOf(records, 0, context);
    expect(first.toString()).toBe("SNAT 10.0.0.3:40000 -> 9.186.100.2:40000 (conntrack ESTABLISHED)");
    expect(cache.commentOf(records, Rec.Words, context)).toBe(first);
    expect(cache.commentOf(records, 2 * Rec.Words, context).toString()).toBe("SNAT 10.0.0.3:40001 -> 9.186.100.2:40001 (conntrack ESTABLISHED)");
  });
});
