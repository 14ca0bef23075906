import { describe, expect, it } from "vitest";
import { XorShift32 } from "../../src/core/rng.js";
import { prepareRouter } from "../../src/control/router-process.js";
import { loadConfig } from "../../src/config/config.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import type { Dataplane } from "../../src/dataplane/pipeline.js";
import { LEG_WIRE, egressOf } from "../../src/dataplane/port.js";
import { Forwarder } from "../../src/io/forwarder.js";
import { MemoryLeg } from "../../src/io/memory.js";
import { buildPacket, decodePacket } from "../../src/wire/build.js";
import { TCP_SYN } from "../../src/wire/packet-info.js";

const SEED = "examples/seed.yaml";
const TENANT_PORT = 0;
const GATEWAY_PORT = 1;
const STARTS = 6;

/**
 * 10.0.0.3 and 10.0.0.4 both open a connection from source port 40000 to 203.0.113.10:80. Both
 * leave as 9.186.100.2, so the second clashes with the first and gets another source port (the
 * NAT's null binding or SNAT port search, nf_nat_core.c). Returns that port.
 */
function portOfTheSecond(dataplane: Dataplane): number {
  const legs = dataplane.ports.flatMap(() => [new MemoryLeg(), new MemoryLeg()]);
  const forwarder = new Forwarder(dataplane, legs);
  for (const src of ["10.0.0.3", "10.0.0.4"]) {
    legs[egressOf(TENANT_PORT, LEG_WIRE)]!.inject(buildPacket({ protocol: "tcp", src, dst: "203.0.113.10", sport: 40000, dport: 80, tcpFlags: TCP_SYN }));
    forwarder.drain();
  }
  const out = legs[egressOf(GATEWAY_PORT, LEG_WIRE)]!.take().map((p) => decodePacket(p));
  expect(out.map((p) => [p.src, p.dst, p.dport])).toEqual([
    ["9.186.100.2", "203.0.113.10", 80],
    ["9.186.100.2", "203.0.113.10", 80],
  ]);
  expect(out[0]!.sport).toBe(40000); // the first keeps its port
  expect(out[1]!.sport).not.toBe(40000);
  return out[1]!.sport!;
}

describe("NAT ports differ from one router start to the next", () => {
  it(`the router as \`qnat run\` prepares it: the clashing connection's port is not the same in ${STARTS} starts`, () => {
    const ports = Array.from({ length: STARTS }, () => portOfTheSecond(prepareRouter(SEED).dataplane));
    // With fresh random keys each port is one of 64512 (1024-65535), nearly uniformly: all six
    // equal by chance has probability about 64512^-5, i.e. 2^-80.
    expect(new Set(ports).size).toBeGreaterThan(1);
  });

  it("a router built with a seeded Rng (tests, `qnat trace`) gives the same port every time", () => {
    const config = loadConfig(SEED);
    const ports = Array.from({ length: 3 }, () => portOfTheSecond(buildDataplane(config, { rng: new XorShift32(42), conntrackCapacity: 1024 })));
    expect(new Set(ports).size).toBe(1);
  });
});
