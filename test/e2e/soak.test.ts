/**
 * The soak (bench/soak.ts, `npm run soak -- --minutes N`), one minute of it as root: the seed's
 * router under fresh names with mixed traffic, a SYN flood, a router killed and started again,
 * and a wire device deleted; then everything is gone. Its verdicts are checked on made-up
 * figures too, so each criterion is seen to fail.
 */
import { describe, expect, it } from "vitest";
import { isRoot as runningAsRoot, netnsExists } from "../../src/io/netns.js";
import { EXPLAINED_DROPS, formatResult, memoryGrowth, runSoak, unexplainedDrops, type ActionRecord, type MemorySample } from "../../bench/soak.js";

const isRoot = runningAsRoot();
if (!isRoot) console.warn("test/e2e/soak.test.ts: not root, so the one-minute soak is skipped (its verdicts are still checked)");

const MiB = 1024 * 1024;

/** Samples of one router process: RSS and heap from `rss(i)` and `heap(i)` MiB at 5 s steps. */
function curve(pid: number, count: number, rss: (i: number) => number, heap: (i: number) => number): MemorySample[] {
  return Array.from({ length: count }, (_, i) => ({ t: i * 5, pid, rssBytes: rss(i) * MiB, heapUsedBytes: heap(i) * MiB, conntrackEntries: 10 }));
}

describe("the soak's verdicts", () => {
  it("a router whose RSS climbs from 120 MiB to 300 MiB over its life is growing memory; a flat one with noise is not", () => {
    expect(memoryGrowth(curve(7, 20, (i) => 120 + i * 9, () => 10))).toMatch(/^router pid 7: RSS grew from 1\d\d\.\d MiB .* to 2\d\d\.\d MiB/);
    expect(memoryGrowth(curve(7, 20, (i) => 120 + (i % 3) * 4, (i) => 10 + (i % 4)))).toBeNull();
  });

  it("a heap that climbs from 10 MiB to 60 MiB is growing memory even when RSS stays flat", () => {
    expect(memoryGrowth(curve(8, 20, () => 150, (i) => 10 + i * 2.5))).toMatch(/^router pid 8: heap grew/);
  });

  it("a restart starts a new curve: the new process's lower memory is not compared with the old one's", () => {
    const samples = [...curve(1, 10, () => 200, () => 20), ...curve(2, 10, () => 120, () => 10)];
    expect(memoryGrowth(samples)).toBeNull();
  });

  it("martian-source during a flood is explained; during quiet traffic, or conntrack-full during a leg failure, it is not", () => {
    const t0 = 1_000_000;
    const flood: ActionRecord = { kind: "flood", startedAt: t0 + 10_000, endedAt: t0 + 14_000, detail: "" };
    const leg: ActionRecord = { kind: "tenant-leg", startedAt: t0 + 40_000, endedAt: t0 + 43_000, detail: "" };
    expect(EXPLAINED_DROPS.flood).toContain("martian-source");
    expect(EXPLAINED_DROPS["tenant-leg"]).not.toContain("conntrack-full");
    const events = [
      { at: t0 + 19_000, reason: "martian-source", count: 900 },
      { at: t0 + 30_000, reason: "martian-source", count: 2 },
      { at: t0 + 45_000, reason: "conntrack-full", count: 1 },
    ];
    expect(unexplainedDrops(events, [flood, leg], t0)).toEqual(["martian-source 2 (near t=30 s)", "conntrack-full 1 (near t=45 s)"]);
  });
});

describe.skipIf(!isRoot)("one minute of soak through the seed's router", () => {
  it(
    "mixed traffic, a SYN flood, a SIGKILL and restart and a deleted wire device: memory flat, the conversations kept, every drop explained, nothing left behind",
    async () => {
      const lines: string[] = [];
      const result = await runSoak({ minutes: 1, log: (line) => lines.push(line) });
      const report = formatResult(result);
      console.log(`${lines.join("\n")}\n${report}`);

      expect(result.failure, report).toBeNull();
      expect(result.actions.map((a) => a.kind)).toEqual(expect.arrayContaining(["flood", "kill-restart", "tenant-leg"]));
      // The restart is a new router process, sampled on both sides.
      expect(new Set(result.samples.map((s) => s.pid)).size).toBeGreaterThanOrEqual(2);
      expect(result.samples.every((s) => s.rssBytes > 0 && s.heapUsedBytes > 0)).toBe(true);
      // The three conversations carried data all along and none was lost.
      expect(result.conversations).toHaveLength(3);
      for (const talk of result.conversations) {
        expect(talk.broken, talk.name).toBeNull();
        expect(talk.rounds, talk.name).toBeGreaterThan(100);
      }
      // With the state file, the restarted router had the conversations' entries back, the same translated ports.
      expect(result.stateFile).toBe(true);
      expect(result.restarts.length).toBeGreaterThanOrEqual(1);
      for (const restart of result.restarts) {
        expect(restart.changed).toEqual([]);
        expect(restart.kept).toBe(3);
        expect(restart.restored).toBeGreaterThan(0);
      }
      // Churn and pings went through (some fail while a leg is down or the router restarts).
      expect(result.churn.tcp!.ok).toBeGreaterThan(result.churn.tcp!.failed);
      expect(result.churn.udp!.ok).toBeGreaterThan(result.churn.udp!.failed);
      expect(result.churn.metadata!.ok).toBeGreaterThan(result.churn.metadata!.failed);
      expect(result.pings.received).toBeGreaterThan(result.pings.transmitted / 2);
      // The flood's spoofed sources were counted as the flood's own drops.
      expect(result.drops["martian-source"]).toBeGreaterThan(0);
      expect(result.unexplained).toEqual([]);
      // Everything removed.
      for (const name of result.namespaces) expect(netnsExists(name), name).toBe(false);
    },
    90_000,
  );
});
