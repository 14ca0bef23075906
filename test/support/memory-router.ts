/**
 * A router from a config, on in-memory legs, for scenario tests: `send` puts a packet on a
 * port's wire (or mirror), `run` forwards until quiet, `received` returns what left each leg.
 */
import { ManualClock } from "../../src/core/clock.js";
import { XorShift32 } from "../../src/core/rng.js";
import { loadConfig, type RouterConfig } from "../../src/config/config.js";
import { buildDataplane, type BuildOptions } from "../../src/dataplane/from-config.js";
import type { Dataplane } from "../../src/dataplane/pipeline.js";
import { LEG_MIRROR, LEG_WIRE, egressOf } from "../../src/dataplane/port.js";
import { Forwarder } from "../../src/io/forwarder.js";
import { MemoryLeg } from "../../src/io/memory.js";
import { buildPacket, decodePacket, type DecodedPacket, type PacketSpec } from "../../src/wire/build.js";
import { dropReasonName, DROP_REASON_COUNT } from "../../src/core/drop-reason.js";

export class MemoryRouter {
  readonly clock = new ManualClock();
  readonly dataplane: Dataplane;
  readonly legs: MemoryLeg[];
  readonly forwarder: Forwarder;
  private readonly portIndex = new Map<string, number>();

  constructor(
    readonly config: RouterConfig,
    options: BuildOptions = {},
  ) {
    this.dataplane = buildDataplane(config, { clock: this.clock, rng: new XorShift32(42), ...options });
    this.legs = config.ports.flatMap(() => [new MemoryLeg(), new MemoryLeg()]);
    this.forwarder = new Forwarder(this.dataplane, this.legs);
    config.ports.forEach((p, i) => this.portIndex.set(p.name, i));
  }

  static fromFile(path = "examples/seed.yaml", options: BuildOptions = {}): MemoryRouter {
    return new MemoryRouter(loadConfig(path), options);
  }

  private leg(port: string, leg: number): MemoryLeg {
    const index = this.portIndex.get(port);
    if (index === undefined) throw new Error(`no port ${port}`);
    return this.legs[egressOf(index, leg)]!;
  }

  /** A packet arrives from the network on `port`'s wire. */
  send(port: string, spec: PacketSpec | Uint8Array): void {
    this.leg(port, LEG_WIRE).inject(spec instanceof Uint8Array ? spec : buildPacket(spec));
  }

  /** The router's own host sends a packet through `port`'s mirror. */
  sendFromHost(port: string, spec: PacketSpec | Uint8Array): void {
    this.leg(port, LEG_MIRROR).inject(spec instanceof Uint8Array ? spec : buildPacket(spec));
  }

  run(): void {
    this.forwarder.drain();
  }

  /** Packets the router wrote to `port`'s wire since the last call, decoded. */
  received(port: string): DecodedPacket[] {
    return this.leg(port, LEG_WIRE).take().map((p) => decodePacket(p));
  }

  receivedRaw(port: string): Uint8Array[] {
    return this.leg(port, LEG_WIRE).take();
  }

  /** Packets delivered to the router's own host through `port`'s mirror. */
  delivered(port: string): DecodedPacket[] {
    return this.leg(port, LEG_MIRROR).take().map((p) => decodePacket(p));
  }

  /** Drop counters of a port by reason name (non-zero only). */
  drops(port: string): Record<string, number> {
    const index = this.portIndex.get(port)!;
    const out: Record<string, number> = {};
    for (let r = 0; r < DROP_REASON_COUNT; r++) {
      const n = this.dataplane.drops[index * DROP_REASON_COUNT + r]!;
      if (n > 0) out[dropReasonName(r)] = n;
    }
    return out;
  }
}
