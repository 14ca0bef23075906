/**
 * One broken leg is one leg down: a leg whose read or write throws (EIO, EBADFD...) is taken out
 * of the loop and reported once, the other ports go on forwarding, packets for it are counted
 * as dropped, and the supervisor re-creates it — also when its namespace was deleted, which no
 * syscall reports — once its namespace exists again. In memory: the legs here are doubles.
 */
import { describe, expect, it } from "vitest";
import type { PacketBatch } from "../../src/core/batch.js";
import { buildPacket, decodePacket } from "../../src/wire/build.js";
import { LegSupervisor, type LegSpec } from "../../src/io/leg-supervisor.js";
import { MemoryLeg } from "../../src/io/memory.js";
import { MemoryRouter } from "../support/memory-router.js";

const QG = "qg-e76de35e-90";
/** Legs of the seed's router: port * 2 + leg. */
const TENANT_WIRE = 0;
const GATEWAY_WIRE = 2;

function errnoError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** A leg whose device is gone: every read and write fails with `code`. */
class BrokenLeg extends MemoryLeg {
  constructor(private readonly code: string) {
    super();
  }
  override readInto(_batch: PacketBatch): number {
    throw errnoError(this.code, `read eth0: ${this.code}`);
  }
  override writeSelected(_batch: PacketBatch, _verdicts: Int32Array, _want: number): number {
    throw errnoError(this.code, `write eth0: ${this.code}`);
  }
}

/** A leg that reads fine but whose writes fail with `code`. */
class UnwritableLeg extends MemoryLeg {
  constructor(private readonly code: string) {
    super();
  }
  override writeSelected(_batch: PacketBatch, _verdicts: Int32Array, _want: number): number {
    throw errnoError(this.code, `write eth0: ${this.code}`);
  }
}

class ClosableMemoryLeg extends MemoryLeg {
  closed = false;
  close(): void {
    this.closed = true;
  }
}

describe("a failing leg is taken out; the router goes on", () => {
  it("the tenant wire fails to read (EIO): reported once, and 9.186.100.1 still reaches the router's 9.186.100.2", () => {
    const router = MemoryRouter.fromFile();
    const failures: string[] = [];
    router.forwarder.slots.onFailure = (index, error) => failures.push(`${index} ${(error as { code: string }).code}`);
    router.forwarder.slots.replace(TENANT_WIRE, new BrokenLeg("EIO"));
    router.run();
    router.run();
    expect(failures).toEqual([`${TENANT_WIRE} EIO`]);
    expect(router.forwarder.slots.isDown(TENANT_WIRE)).toBe(true);
    router.send(QG, { protocol: "icmp", src: "9.186.100.1", dst: "9.186.100.2", icmpType: 8, icmpId: 9, icmpSeq: 1 });
    router.run();
    expect(router.delivered(QG).map((p) => `${p.src} > ${p.dst}`)).toEqual(["9.186.100.1 > 9.186.100.2"]);
  });

  it("a write that fails with EBADFD takes the leg out; what is routed to it later is counted as dropped", () => {
    const router = MemoryRouter.fromFile();
    const failures: number[] = [];
    router.forwarder.slots.onFailure = (index) => failures.push(index);
    router.forwarder.slots.replace(TENANT_WIRE, new UnwritableLeg("EBADFD"));
    // From the outside to the floating IP: DNATed to 10.0.0.2, out of the (broken) tenant wire.
    for (let i = 0; i < 3; i++) {
      router.send(QG, { protocol: "udp", src: "203.0.113.10", dst: "9.186.100.129", sport: 7000 + i, dport: 53 });
      router.run();
    }
    expect(failures).toEqual([TENANT_WIRE]);
    // The datagram whose write failed and the two after it.
    expect(router.forwarder.slots.droppedWhileDown(TENANT_WIRE)).toBe(3);
    expect(router.forwarder.slots.isDown(GATEWAY_WIRE)).toBe(false);
  });
});

describe("the supervisor re-creates a leg when it can", () => {
  function setup(open?: () => ClosableMemoryLeg): {
    router: MemoryRouter;
    supervisor: LegSupervisor<ClosableMemoryLeg>;
    lines: string[];
    clock: { ms: number };
    namespaces: Map<string, number>;
    opened: ClosableMemoryLeg[];
    reopened: number[];
  } {
    const router = MemoryRouter.fromFile();
    const config = router.config;
    const specs: LegSpec[] = config.ports.flatMap((port) => [
      { device: port.wire.device, netns: port.wire.namespace, vnetHdr: false, offloadFlags: 0, mtu: port.mtu },
      { device: port.name, netns: config.namespace, vnetHdr: false, offloadFlags: 0, mtu: port.mtu },
    ]);
    const namespaces = new Map<string, number>([...new Set(specs.map((s) => s.netns))].map((name, i) => [name, 100 + i]));
    const legs = specs.map(() => new ClosableMemoryLeg());
    legs.forEach((leg, index) => router.forwarder.slots.replace(index, leg));
    const clock = { ms: 1_000_000 };
    const lines: string[] = [];
    const opened: ClosableMemoryLeg[] = [];
    const reopened: number[] = [];
    const supervisor = new LegSupervisor(router.forwarder.slots, specs, legs, {
      log: (line) => lines.push(line),
      now: () => clock.ms,
      namespaceId: (name) => namespaces.get(name) ?? null,
      open: () => {
        const leg = open?.() ?? new ClosableMemoryLeg();
        opened.push(leg);
        return leg;
      },
      reopened: (index) => reopened.push(index),
    });
    return { router, supervisor, lines, clock, namespaces, opened, reopened };
  }

  it("qnat-tenant deleted under the router: its leg goes down (ENOENT) and comes back when the namespace is made anew", () => {
    const { router, supervisor, lines, clock, namespaces, opened, reopened } = setup();
    const tenant = router.config.ports[0]!.wire.namespace;
    const old = router.forwarder.slots.legs[TENANT_WIRE] as ClosableMemoryLeg;
    namespaces.delete(tenant);
    supervisor.tick();
    expect(supervisor.health(TENANT_WIRE)).toMatchObject({ up: false, fault: { code: "ENOENT", message: `namespace ${tenant} was deleted` }, failures: 1 });
    expect(old.closed).toBe(true);
    expect(lines).toEqual([expect.stringMatching(new RegExp(`^qnat: leg eth0 in ${tenant} is down \\(ENOENT: namespace ${tenant} was deleted\\)`))]);
    // Nothing to retry while the namespace is missing.
    clock.ms += 60_000;
    supervisor.tick();
    expect(opened).toHaveLength(0);
    // `qnat lab up` makes it anew (another inode): the next tick re-creates the leg.
    namespaces.set(tenant, 999);
    supervisor.tick();
    expect(opened).toHaveLength(1);
    expect(reopened).toEqual([TENANT_WIRE]);
    expect(router.forwarder.slots.legs[TENANT_WIRE]).toBe(opened[0]);
    expect(supervisor.health(TENANT_WIRE)).toMatchObject({ up: true, fault: null, failures: 1, recoveries: 1 });
    expect(lines[1]).toMatch(/is back \(re-created after 60\.0 s down\)$/);
    // And traffic flows through it again: 10.0.0.3 reaches the outside as 9.186.100.2.
    opened[0]!.inject(buildPacket({ protocol: "udp", src: "10.0.0.3", dst: "203.0.113.10", sport: 5000, dport: 53 }));
    router.run();
    const gateway = router.forwarder.slots.legs[GATEWAY_WIRE] as ClosableMemoryLeg;
    expect(gateway.take().map((p) => decodePacket(p))).toMatchObject([{ src: "9.186.100.2", dst: "203.0.113.10", sport: 5000 }]);
  });

  it("a namespace replaced by a new one of the same name (ESTALE) is noticed too, and failed re-creations back off", () => {
    let refuse = true;
    const opens: number[] = [];
    // Opening fails until told otherwise (the device name is taken, say).
    const { router, supervisor, lines, clock, namespaces, reopened } = setup(() => {
      opens.push(clock.ms);
      if (refuse) throw errnoError("EBUSY", "TUNSETIFF eth0: Device or resource busy");
      return new ClosableMemoryLeg();
    });
    const external = router.config.ports[1]!.wire.namespace;
    namespaces.set(external, 555);
    supervisor.tick();
    expect(supervisor.health(GATEWAY_WIRE).fault?.code).toBe("ESTALE");
    for (let i = 0; i < 40; i++) {
      clock.ms += 100;
      supervisor.tick();
    }
    // 4 s of ticks: tries at 0.1, 0.6, 1.6 and 3.6 s (RETRY_FIRST_MS doubling), not one per tick.
    expect(opens.length).toBe(4);
    expect(lines.filter((l) => l.includes("re-creating it failed"))).toHaveLength(1);
    refuse = false;
    clock.ms += 10_000;
    supervisor.tick();
    expect(reopened).toEqual([GATEWAY_WIRE]);
    expect(supervisor.health(GATEWAY_WIRE).up).toBe(true);
  });
});
