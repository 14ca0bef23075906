import { describe, expect, it } from "vitest";
import { envMicroseconds, envSwitch } from "../../src/control/router-process.js";

describe("qnat run's environment switches", () => {
  it("reads 0 and 1, falls back when unset or empty, and refuses anything else in one line", () => {
    expect(envSwitch("QNAT_WARMUP", true, {})).toBe(true);
    expect(envSwitch("QNAT_WARMUP", true, { QNAT_WARMUP: "" })).toBe(true);
    expect(envSwitch("QNAT_WARMUP", true, { QNAT_WARMUP: "0" })).toBe(false);
    expect(envSwitch("QNAT_PASSTHROUGH", false, { QNAT_PASSTHROUGH: "1" })).toBe(true);
    expect(() => envSwitch("QNAT_OFFLOAD", true, { QNAT_OFFLOAD: "yes" })).toThrow(/^QNAT_OFFLOAD must be 0 or 1, not 'yes'$/);
  });

  it("reads microseconds from 0 to 1000000 and refuses the rest", () => {
    expect(envMicroseconds("QNAT_SPIN_US", 0, {})).toBe(0);
    expect(envMicroseconds("QNAT_SPIN_US", 0, { QNAT_SPIN_US: "30000" })).toBe(30000);
    for (const bad of ["fast", "-5", "1.5", "2000000", "1e3"]) {
      expect(() => envMicroseconds("QNAT_SPIN_US", 0, { QNAT_SPIN_US: bad })).toThrow(`QNAT_SPIN_US must be a number of microseconds from 0 to 1000000, not '${bad}'`);
    }
  });
});
