/**
 * Bench results: `bench/results/latest.json` (the hot path under `hotpath`, merged so that the
 * `e2e` key bench:e2e writes survives), a readable table `latest.md` and a bar chart
 * `hotpath.svg` (hand-written SVG, no dependency).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname } from "node:path";

export interface Machine {
  cpu: string;
  cores: number;
  memoryGiB: number;
  node: string;
  v8: string;
  platform: string;
}

export function machine(): Machine {
  const list = cpus();
  return {
    cpu: list[0]?.model.trim() ?? "unknown",
    cores: list.length,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    v8: process.versions.v8,
    platform: `${process.platform} ${process.arch}`,
  };
}

/** One measured figure, compared with its target (`higher`: at least, else at most). */
export interface Figure {
  key: string;
  label: string;
  value: number;
  unit: string;
  target?: number;
  higher?: boolean;
  /** ± relative margin of error (benchmark.js rme, percent), when measured with benchmark.js. */
  rme?: number;
  note?: string;
}

export interface HotpathResults {
  date: string;
  machine: Machine;
  figures: Figure[];
  /** Per-stage costs (ns/packet) from micro-benchmarks, for docs/performance.md. */
  stages: Figure[];
}

/** The middle value (the mean of the two middle ones for an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function met(f: Figure): boolean | undefined {
  if (f.target === undefined) return undefined;
  return f.higher === false ? f.value <= f.target : f.value >= f.target;
}

/** Sets `key` in the JSON object at `path` (created if missing): both benches share latest.json. */
export function mergeResults(path: string, key: string, value: unknown): void {
  mkdirSync(dirname(path), { recursive: true });
  let existing: Record<string, unknown> = {};
  if (existsSync(path)) {
    try {
      existing = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
    } catch {
      existing = {};
    }
  }
  existing[key] = value;
  writeFileSync(path, JSON.stringify(existing, null, 2) + "\n");
}

export function formatValue(value: number, unit: string): string {
  if (unit === "packets/s" || unit === "connections/s" || unit === "lookups/s") {
    if (value >= 1e6) return `${(value / 1e6).toFixed(2)} M`;
    return `${(value / 1e3).toFixed(0)} k`;
  }
  if (unit === "bytes" && value >= 1 << 20) return `${(value / 2 ** 20).toFixed(1)} MiB`;
  if (Math.abs(value) < 10 && value !== Math.round(value)) return value.toFixed(3);
  return value.toFixed(value >= 100 ? 0 : 1);
}

function targetText(f: Figure): string {
  if (f.target === undefined) return "";
  return `${f.higher === false ? "<=" : ">="} ${formatValue(f.target, f.unit)}`;
}

export function markdown(results: HotpathResults): string {
  const m = results.machine;
  const lines = [
    "# qnat hot path — `npm run bench`",
    "",
    `Run ${results.date} on ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, Node ${m.node} (V8 ${m.v8}), ${m.platform}.`,
    "One core, in memory, the seed's rules (examples/seed.yaml), batches of 256 pre-built 64-byte IPv4 packets",
    "(each batch copied into the receive buffer before processing, as a TUN read would; included in the figure).",
    "",
    "| measurement | value | unit | target | met |",
    "|---|---:|---|---|---|",
  ];
  for (const f of results.figures) {
    const ok = met(f);
    const rme = f.rme !== undefined ? ` ±${f.rme.toFixed(1)}%` : "";
    lines.push(`| ${f.label} | ${formatValue(f.value, f.unit)}${rme} | ${f.unit} | ${targetText(f)} | ${ok === undefined ? "" : ok ? "yes" : "**no**"} |`);
  }
  lines.push("", "## Cost per packet, stage by stage (micro-benchmarks, 64k established flows)", "", "| stage | ns/packet |", "|---|---:|");
  for (const s of results.stages) lines.push(`| ${s.label} | ${s.value.toFixed(1)} |`);
  lines.push("", "![hot path](hotpath.svg)", "");
  return lines.join("\n");
}

export function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** Horizontal bars: each figure as a percentage of its target (100% line drawn), value printed. */
export function svgChart(results: HotpathResults): string {
  const rows = results.figures.filter((f) => f.target !== undefined);
  const width = 1100;
  const left = 420;
  const barMax = 400;
  const rowHeight = 34;
  const top = 58;
  const height = top + rows.length * rowHeight + 40;
  const scaleMax = 2; // 200% of target fills the bar area
  const m = results.machine;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="13">`);
  parts.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  parts.push(`<text x="16" y="24" font-size="16" font-weight="bold">qnat hot path vs targets (npm run bench)</text>`);
  parts.push(`<text x="16" y="44" fill="#555">${escapeXml(`${results.date} · ${m.cpu} · ${m.cores} cores · Node ${m.node} · one core`)}</text>`);
  const hundred = left + barMax / scaleMax;
  parts.push(`<line x1="${hundred}" y1="${top - 6}" x2="${hundred}" y2="${top + rows.length * rowHeight}" stroke="#333" stroke-dasharray="4 3"/>`);
  parts.push(`<text x="${hundred}" y="${top + rows.length * rowHeight + 16}" text-anchor="middle" fill="#333">target</text>`);
  rows.forEach((f, i) => {
    const y = top + i * rowHeight;
    // "at most" targets: the bar shows target/value, so longer is better for every row.
    const ratio = f.higher === false ? (f.value > 0 ? f.target! / f.value : scaleMax) : f.value / f.target!;
    const w = Math.max(2, Math.min(scaleMax, ratio) * (barMax / scaleMax));
    const ok = met(f);
    parts.push(`<text x="${left - 8}" y="${y + 18}" text-anchor="end">${escapeXml(f.label)}</text>`);
    parts.push(`<rect x="${left}" y="${y + 4}" width="${w.toFixed(1)}" height="20" fill="${ok ? "#2e7d32" : "#c62828"}"/>`);
    const text = `${formatValue(f.value, f.unit)} ${f.unit} (target ${targetText(f)})`;
    parts.push(`<text x="${left + w + 6}" y="${y + 18}" fill="#222">${escapeXml(text)}</text>`);
  });
  parts.push(`</svg>`);
  return parts.join("\n") + "\n";
}
