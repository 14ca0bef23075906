/**
 * SNAT/MASQUERADE with --random or --random-fully for a protocol without ports (GRE without
 * keys, and SCTP, which qnat tracks by address pair): Linux's get_unique_tuple skips its "already
 * unique" check for those flags and calls nf_nat_l4proto_unique_tuple, which leaves a port-less
 * tuple as it is, so the packet leaves with the new address. Found by the conformance harness on
 * examples/port-forwarding.yaml (Neutron's `-j SNAT --to-source ... --random-fully`).
 */
import { describe, expect, it } from "vitest";
import { Manip, NF_NAT_RANGE_PROTO_RANDOM, NF_NAT_RANGE_PROTO_RANDOM_FULLY, natRange } from "../../../src/nat/range.js";
import { IPPROTO_GRE } from "../../../src/wire/packet-info.js";
import { connect, ip, makeFixture } from "./setup.js";

const SCTP = 132;

describe("--random / --random-fully for a protocol without ports", () => {
  for (const [flag, name] of [
    [NF_NAT_RANGE_PROTO_RANDOM_FULLY, "--random-fully"],
    [NF_NAT_RANGE_PROTO_RANDOM, "--random"],
  ] as const) {
    it(`GRE and SCTP from 10.20.0.11 leave as 100.80.5.2 with SNAT ${name}; a second tenant's GRE to the same peer is refused`, () => {
      const f = makeFixture();
      const range = natRange(ip("100.80.5.2"), ip("100.80.5.2"), 0, 0, flag);
      const explain: string[] = [];
      const gre = connect(f, IPPROTO_GRE, "10.20.0.11", 0, "192.0.2.80", 0, (c) => f.nat.setupNat(c, Manip.Src, range, explain));
      expect(gre).toBeGreaterThanOrEqual(0);
      expect(f.table.replyDst(gre)).toBe(ip("100.80.5.2"));
      expect(explain.join("\n")).toContain("is free (47 has no ports): kept");
      const sctp = connect(f, SCTP, "10.20.0.11", 0, "192.0.2.80", 0, (c) => f.nat.setupNat(c, Manip.Src, range));
      expect(f.table.replyDst(sctp)).toBe(ip("100.80.5.2"));
      // The same tuple again is taken: refused, as Linux refuses it at confirmation.
      expect(connect(f, IPPROTO_GRE, "10.20.0.12", 0, "192.0.2.80", 0, (c) => f.nat.setupNat(c, Manip.Src, range))).toBe(-1);
    });
  }
});
