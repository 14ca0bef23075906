/**
 * `qnat show ports` from a running router says which leg is down, why (the errno name and what
 * failed) and since when, and for a leg that came back, how often it went down.
 */
import { describe, expect, it } from "vitest";
import { collectPorts, formatPorts } from "../../src/control/show.js";
import type { LegHealth } from "../../src/io/leg-supervisor.js";
import { MemoryRouter } from "../support/memory-router.js";

const SINCE = Date.UTC(2026, 10, 30, 4, 40, 0);

function health(index: number): LegHealth {
  if (index === 0) {
    return { up: false, fault: { code: "ENOENT", message: "namespace qnat-tenant was deleted", since: SINCE }, failures: 1, recoveries: 0, droppedWhileDown: 3 };
  }
  if (index === 3) return { up: true, fault: null, failures: 2, recoveries: 2, droppedWhileDown: 0 };
  return { up: true, fault: null, failures: 0, recoveries: 0, droppedWhileDown: 0 };
}

describe("show ports: the state of each leg", () => {
  const router = MemoryRouter.fromFile();
  const wires = router.config.ports.map((p) => p.wire);
  const view = collectPorts(router.dataplane, wires, health);

  it("--json: the tenant's wire leg is down with ENOENT since 04:40 UTC; the gateway's mirror is up after two failures", () => {
    expect(view[0]!.legs).toEqual({
      wire: { state: "down", error: "ENOENT", reason: "namespace qnat-tenant was deleted", since: "2026-11-30T04:40:00.000Z", failures: 1, recoveries: 0, droppedWhileDown: 3 },
      mirror: { state: "up", failures: 0, recoveries: 0, droppedWhileDown: 0 },
    });
    expect(view[1]!.legs!.mirror).toEqual({ state: "up", failures: 2, recoveries: 2, droppedWhileDown: 0 });
  });

  it("text: one line for the down leg and one for the leg that came back, none for healthy legs", () => {
    const text = formatPorts(view);
    expect(text).toContain("    wire leg DOWN since 2026-11-30T04:40:00.000Z: ENOENT (namespace qnat-tenant was deleted), 3 packets dropped");
    expect(text).toContain("    mirror leg up: went down 2 times, re-created 2 times");
    expect(text.match(/ leg /g)).toHaveLength(2);
  });

  it("without a running router's leg states (offline views) nothing is added", () => {
    expect(collectPorts(router.dataplane, wires)[0]!.legs).toBeUndefined();
  });
});
