/**
 * The seed's router with Ethernet (tap) ports on in-memory legs, for tests of the Ethernet stage,
 * ARP and the neighbour table with a manual clock: `sendFrame` puts a frame on a port's wire (or
 * mirror), `run` forwards until quiet, `frames` returns what left a leg, whole frames.
 */
import { readFileSync } from "node:fs";
import { ETH_HLEN, type PacketBatch } from "../../src/core/batch.js";
import { ManualClock } from "../../src/core/clock.js";
import { XorShift32 } from "../../src/core/rng.js";
import { parseConfig, type RouterConfig } from "../../src/config/config.js";
import { ethernetPortsOf } from "../../src/control/router-process.js";
import { buildDataplane } from "../../src/dataplane/from-config.js";
import type { Dataplane } from "../../src/dataplane/pipeline.js";
import { EthernetStage, type FrameLeg } from "../../src/io/ethernet-leg.js";
import { Forwarder } from "../../src/io/forwarder.js";
import type { Leg } from "../../src/io/leg.js";
import { NeighbourTable, type NeighbourParams } from "../../src/neigh/table.js";
import { ARPOP_REQUEST, writeArp, ZERO_MAC } from "../../src/wire/arp.js";
import { ETH_P_ARP, ETH_P_IP, parseMac, writeEthernetHeader } from "../../src/wire/ethernet.js";
import { buildPacket, type PacketSpec } from "../../src/wire/build.js";

export const QR_MAC = "fa:16:3e:5d:18:10";
export const QG_MAC = "fa:16:3e:70:24:92";

/** The seed's config text with both ports in tap mode and the article's MACs. */
export function seedTapText(): string {
  return withTapPorts(readFileSync("examples/seed.yaml", "utf8"));
}

/** A text of the seed's config (renamed or not) with both ports in tap mode and the article's MACs. */
export function withTapPorts(text: string): string {
  return text
    .replace(/(- name: qr-694450d6-f6\n)/, `$1    mac: ${QR_MAC}\n`)
    .replace(/(- name: qg-e76de35e-90\n)/, `$1    mac: ${QG_MAC}\n`)
    .replace(/device: eth0 \}/g, "device: eth0, mode: tap }");
}

/** A leg that holds frames in memory and passes them through the Ethernet stage, as EthernetLeg does with a TAP device. */
export class MemoryFrameLeg implements Leg, FrameLeg {
  private inbound: Uint8Array[] = [];
  private outbound: Uint8Array[] = [];

  constructor(
    readonly stage: EthernetStage,
    readonly port: number,
    readonly role: number,
  ) {}

  inject(frame: Uint8Array): void {
    this.inbound.push(frame);
  }

  take(): Uint8Array[] {
    const out = this.outbound;
    this.outbound = [];
    return out;
  }

  readInto(batch: PacketBatch): number {
    batch.clear();
    while (this.inbound.length > 0 && batch.count < batch.capacity) {
      const frame = this.inbound.shift()!;
      const slot = batch.count++;
      const at = batch.offsetOf(slot) - ETH_HLEN;
      batch.data.fill(0, slot * batch.slotSize, at);
      batch.data.set(frame, at);
      batch.lengths[slot] = frame.length > ETH_HLEN ? frame.length - ETH_HLEN : 0;
    }
    if (batch.count === 0) return 0;
    return this.stage.receive(this, batch, batch.count);
  }

  writeSelected(batch: PacketBatch, verdicts: Int32Array, want: number): number {
    return this.stage.send(this, batch, verdicts, want);
  }

  writeFrames(batch: PacketBatch, verdicts: Int32Array, want: number): number {
    let written = 0;
    for (let i = 0; i < batch.count; i++) {
      if (verdicts[i] !== want) continue;
      const at = batch.offsetOf(i) - ETH_HLEN;
      this.outbound.push(batch.data.slice(at, at + ETH_HLEN + batch.lengths[i]!));
      written++;
    }
    return written;
  }
}

/** An Ethernet frame: `dest`, `source`, EtherType, payload. */
export function frame(dest: string, source: string, type: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(ETH_HLEN + payload.length);
  writeEthernetHeader(out, 0, parseMac(dest), 0, parseMac(source), type);
  out.set(payload, ETH_HLEN);
  return out;
}

/** An IPv4 packet in a frame. */
export function ipFrame(dest: string, source: string, spec: PacketSpec): Uint8Array {
  return frame(dest, source, ETH_P_IP, buildPacket(spec));
}

/** An ARP packet (28 bytes) in a frame padded to 60 bytes. */
export function arpFrame(
  dest: string,
  source: string,
  op: number,
  sender: { mac: string; ip: number },
  target: { mac?: string; ip: number },
): Uint8Array {
  const payload = new Uint8Array(46);
  writeArp(payload, 0, op, parseMac(sender.mac), sender.ip, target.mac === undefined ? ZERO_MAC : parseMac(target.mac), 0, target.ip);
  return frame(dest, source, ETH_P_ARP, payload);
}

export { ARPOP_REQUEST };

export class EthernetRouter {
  readonly clock = new ManualClock();
  readonly config: RouterConfig;
  readonly dataplane: Dataplane;
  readonly table: NeighbourTable;
  readonly stage: EthernetStage;
  readonly legs: MemoryFrameLeg[];
  readonly forwarder: Forwarder;

  /** `slotSize`: the batches' slot size; larger than 2 KiB, the neighbour table gets a pool of slots that size (as an offloading router's). */
  constructor(params: Partial<NeighbourParams> = {}, text = seedTapText(), slotSize = 2048 + ETH_HLEN) {
    this.config = parseConfig(text, "seed-tap.yaml");
    this.dataplane = buildDataplane(this.config, { clock: this.clock, rng: new XorShift32(42) });
    this.table = new NeighbourTable({
      clock: this.clock, rng: new XorShift32(7), headroom: ETH_HLEN, slotSize: 2048 + ETH_HLEN, params,
      ...(slotSize > 2048 + ETH_HLEN ? { superSlotSize: slotSize } : {}),
    });
    this.stage = new EthernetStage(this.table, this.config.ports.length, ethernetPortsOf(this.config), ETH_HLEN, this.clock);
    this.stage.addOwnAddresses(this.config.ports.flatMap((p) => p.addresses.map((a) => a.addr)));
    this.stage.sources = this.dataplane;
    this.legs = this.config.ports.flatMap((_, port) => [new MemoryFrameLeg(this.stage, port, 0), new MemoryFrameLeg(this.stage, port, 1)]);
    for (const leg of this.legs) this.stage.attach(leg);
    this.forwarder = new Forwarder(this.dataplane, this.legs, 64, slotSize, ETH_HLEN);
    this.stage.onUnreachable = (buf, off, length, port) => this.forwarder.hostUnreachable(buf, off, length, port);
  }

  /** Leg `port * 2 + role`. */
  leg(port: number, role = 0): MemoryFrameLeg {
    return this.legs[port * 2 + role]!;
  }

  run(): void {
    this.forwarder.drain();
  }

  /** Advances the clock in 100 ms steps, running the neighbour timers as the router does. */
  advance(seconds: number): void {
    for (let t = 0; t < Math.round(seconds * 10); t++) {
      this.clock.advance(0.1);
      this.stage.tick();
    }
  }
}
