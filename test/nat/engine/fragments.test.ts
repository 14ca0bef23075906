import { describe, expect, it } from "vitest";
import { PacketBatch } from "../../../src/core/batch.js";
import { DropReason } from "../../../src/core/drop-reason.js";
import { FragmentTable } from "../../../src/nat/fragments.js";
import { Manip, natRange } from "../../../src/nat/range.js";
import { buildPacket, type PacketSpec } from "../../../src/wire/build.js";
import { IPPROTO_UDP, PacketInfo } from "../../../src/wire/packet-info.js";
import { parsePacket } from "../../../src/wire/validate.js";
import { ip, makeFixture, snat, type Fixture } from "./setup.js";

const SNAT_ADDR = natRange(ip("9.186.100.2"));

/** A 3000-byte UDP datagram from 10.0.0.3:4000 to 203.0.113.10:53, IP id 4242, as three fragments. */
function datagram(src = "10.0.0.3", id = 4242): PacketSpec[] {
  const base = { protocol: "udp" as const, src, dst: "203.0.113.10", id };
  return [
    { ...base, sport: 4000, dport: 53, mf: true, payload: new Uint8Array(1472).fill(1) },
    { ...base, fragmentOffset: 1480, mf: true, payload: new Uint8Array(1480).fill(2) },
    { ...base, fragmentOffset: 2960, payload: new Uint8Array(48).fill(3) },
  ];
}

/** What the dataplane does with a fragment: the first is tracked and noted, the others looked up or held. */
class Dataplane {
  readonly info = new PacketInfo();
  readonly out: Uint8Array[] = [];
  readonly drops: DropReason[] = [];
  constructor(
    readonly f: Fixture,
    readonly frags: FragmentTable,
    readonly conn: number,
  ) {}

  receive(bytes: Uint8Array): void {
    const info = this.info;
    expect(parsePacket(bytes, 0, bytes.length, info)).toBe(DropReason.None);
    let ref: number;
    if (info.fragmentOffset === 0) {
      // conntrack classified it (here: the original direction of `conn`)
      ref = this.conn << 1;
      const reason = this.frags.noteFirstFragment(bytes, info, ref);
      if (reason !== DropReason.None) {
        this.drops.push(reason);
        return;
      }
    } else {
      ref = this.frags.lookupFragment(bytes, info);
      if (ref < 0) {
        const reason = this.frags.holdFragment(bytes, info);
        if (reason !== DropReason.None) this.drops.push(reason);
        return;
      }
    }
    this.f.nat.natPacket(bytes, info, ref >> 1, ref & 1, Manip.Src);
    this.out.push(bytes);
    this.drainReleased();
  }

  drainReleased(): void {
    const batch = new PacketBatch(8);
    while (this.frags.hasReleased) {
      batch.clear();
      this.frags.releaseHeld(batch);
      for (let i = 0; i < batch.count; i++) this.receive(batch.copyOut(i));
    }
  }
}

function setup(options: Partial<ConstructorParameters<typeof FragmentTable>[0]> = {}) {
  const f = makeFixture();
  const conn = snat(f, IPPROTO_UDP, "10.0.0.3", 4000, "203.0.113.10", 53, SNAT_ADDR);
  const frags = new FragmentTable({ clock: f.clock, ...options });
  return { f, frags, dp: new Dataplane(f, frags, conn) };
}

const translated = (spec: PacketSpec) => Array.from(buildPacket({ ...spec, src: "9.186.100.2" }));

describe("fragments of a SNATed datagram (virtual reassembly)", () => {
  it("first fragment then the rest: every fragment leaves as 9.186.100.2, checksums as built", () => {
    const { frags, dp } = setup();
    const specs = datagram();
    for (const spec of specs) dp.receive(buildPacket(spec));
    expect(dp.out.map((b) => Array.from(b))).toEqual(specs.map(translated));
    expect(frags.size).toBe(0); // complete: state freed
    expect(frags.counters.completed).toBe(1);
    expect(frags.counters.translated).toBe(2);
  });

  it("the rest before the first: held, then released in order when the first arrives", () => {
    const { frags, dp } = setup();
    const [first, second, third] = datagram();
    dp.receive(buildPacket(third!));
    dp.receive(buildPacket(second!));
    expect(dp.out).toHaveLength(0);
    expect(frags.heldFragments).toBe(2);
    expect(frags.heldBytes).toBe(buildPacket(third!).length + buildPacket(second!).length);
    dp.receive(buildPacket(first!));
    expect(dp.out.map((b) => Array.from(b))).toEqual([first!, third!, second!].map(translated));
    expect(frags.heldFragments).toBe(0);
    expect(frags.counters.released).toBe(2);
    expect(frags.size).toBe(0);
  });

  it("a fragment whose first never comes is dropped after 30 s (fragment-no-state)", () => {
    const { f, frags, dp } = setup();
    dp.receive(buildPacket(datagram()[1]!));
    f.clock.advance(29);
    expect(frags.expire()).toBe(0);
    expect(frags.heldFragments).toBe(1);
    f.clock.advance(1.5);
    expect(frags.expire()).toBe(1); // counted by the caller as DropReason.FragmentNoState
    expect(frags.heldFragments).toBe(0);
    expect(frags.size).toBe(0);
    // the first fragment arriving late starts a new datagram state and is forwarded
    dp.receive(buildPacket(datagram()[0]!));
    expect(dp.out).toHaveLength(1);
  });

  it("a first fragment arriving after the timeout finds the held fragments gone, and they are reported at the next expire()", () => {
    const { f, frags, dp } = setup();
    const [first, second] = datagram();
    dp.receive(buildPacket(second!));
    f.clock.advance(31);
    dp.receive(buildPacket(first!));
    expect(dp.out).toHaveLength(1); // only the first
    expect(frags.expire()).toBe(1);
    expect(frags.counters.expiredHeld).toBe(1);
  });

  it("fragments of another datagram (other IP id) are not translated with this one's state", () => {
    const { frags, dp } = setup();
    dp.receive(buildPacket(datagram()[0]!));
    dp.receive(buildPacket(datagram("10.0.0.3", 4243)[1]!));
    expect(dp.out).toHaveLength(1);
    expect(frags.heldFragments).toBe(1);
  });

  it("table full: no room for a new datagram, or no slot to hold a fragment (fragment-table-full)", () => {
    const { frags, dp } = setup({ maxDatagrams: 2, maxHeldFragments: 8 });
    dp.receive(buildPacket(datagram("10.0.0.3", 1)[1]!));
    dp.receive(buildPacket(datagram("10.0.0.3", 2)[1]!));
    dp.receive(buildPacket(datagram("10.0.0.3", 3)[1]!));
    expect(dp.drops).toEqual([DropReason.FragmentTableFull]);
    dp.receive(buildPacket(datagram("10.0.0.3", 3)[0]!)); // its first fragment cannot be tracked either
    expect(dp.drops).toEqual([DropReason.FragmentTableFull, DropReason.FragmentTableFull]);
    expect(frags.counters.tableFull).toBe(2);

    const small = setup({ maxHeldFragments: 1 });
    small.dp.receive(buildPacket(datagram()[2]!));
    small.dp.receive(buildPacket(datagram()[1]!));
    expect(small.dp.drops).toEqual([DropReason.FragmentTableFull]);

    const tiny = setup({ slotSize: 512 });
    tiny.dp.receive(buildPacket(datagram()[1]!)); // 1500 bytes do not fit a 512-byte slot
    expect(tiny.dp.drops).toEqual([DropReason.FragmentTableFull]);
  });

  it("expired datagrams free their entries for new ones when the table is full", () => {
    const { f, dp } = setup({ maxDatagrams: 1 });
    dp.receive(buildPacket(datagram("10.0.0.3", 1)[1]!));
    f.clock.advance(30);
    dp.receive(buildPacket(datagram("10.0.0.3", 2)[1]!));
    expect(dp.drops).toEqual([]);
  });

  it("a flood of fragments that never complete fills the pool to its bound, and the timeout empties it for new datagrams", () => {
    const { f, frags, dp } = setup(); // the router's defaults: 1024 datagrams, 256 held fragments
    for (let id = 1; id <= 1300; id++) dp.receive(buildPacket(datagram("10.0.0.3", id)[1]!));
    expect(frags.heldFragments).toBe(256);
    expect(frags.heldBytes).toBeLessThanOrEqual(256 * frags.slotSize);
    expect(frags.size).toBeLessThanOrEqual(frags.maxDatagrams);
    expect(dp.drops).toEqual(Array(1300 - 256).fill(DropReason.FragmentTableFull));

    f.clock.advance(30); // Linux ipfrag_time
    expect(frags.expire()).toBe(256); // counted by the caller as DropReason.FragmentNoState
    expect(frags.heldFragments).toBe(0);
    expect(frags.heldBytes).toBe(0);
    expect(frags.size).toBe(0);
    dp.receive(buildPacket(datagram("10.0.0.3", 2000)[1]!));
    expect(frags.heldFragments).toBe(1);
  });

  it("a duplicate fragment gets the same translation (per-datagram, not per-byte)", () => {
    const { dp } = setup();
    const [first, second, third] = datagram();
    dp.receive(buildPacket(first!));
    dp.receive(buildPacket(second!));
    dp.receive(buildPacket(second!));
    dp.receive(buildPacket(third!));
    expect(dp.out.map((b) => Array.from(b))).toEqual([first!, second!, second!, third!].map(translated));
  });

  it("a duplicate after the datagram looked complete is held (and times out), never sent untranslated", () => {
    const { f, frags, dp } = setup();
    const [first, second, third] = datagram();
    dp.receive(buildPacket(first!));
    dp.receive(buildPacket(third!));
    dp.receive(buildPacket(second!));
    expect(frags.size).toBe(0);
    dp.receive(buildPacket(second!));
    expect(dp.out.map((b) => Array.from(b))).toEqual([first!, third!, second!].map(translated));
    expect(frags.heldFragments).toBe(1);
    f.clock.advance(30);
    expect(frags.expire()).toBe(1);
  });
});
