/**
 * qnat's TUN legs: two namespaces, each with a TUN `eth0` held open by this process, and this
 * process relaying between them, as the router relays between its wire legs. Needs root (it
 * creates namespaces qnt-a-*, qnt-b-*, linked to nothing, and deletes them afterwards).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseIpv4 } from "../../src/core/addr.js";
import { PacketBatch } from "../../src/core/batch.js";
import { createNetns, deleteNetns, ip, isRoot, netnsExecAsync, netnsExists, setSysctl } from "../../src/io/netns.js";
import { loadTunAddon, TunAddonNotBuiltError, TunDevice, type TunError } from "../../src/io/tun.js";

const root = isRoot();
if (!root) console.warn("test/io/tun.test.ts: not root, so the TUN tests in network namespaces are skipped");

const suffix = randomBytes(3).toString("hex");
const nsA = `qnt-a-${suffix}`;
const nsB = `qnt-b-${suffix}`;
const RELAY_LIMIT_MS = 10_000;

function thrown(action: () => unknown): TunError {
  try {
    action();
  } catch (error) {
    return error as TunError;
  }
  throw new Error("expected an error");
}

/** Runs a small node script inside a namespace; resolves to its stdout. */
function nodeIn(netns: string, script: string): Promise<string> {
  return netnsExecAsync(netns, process.execPath, ["-e", script], { timeoutMs: RELAY_LIMIT_MS });
}

/** Sends `count` UDP datagrams "qnat-batch-<i>" from inside `netns` to `to:port`, then exits. */
function sendDatagrams(netns: string, to: string, port: number, count: number): Promise<string> {
  return nodeIn(
    netns,
    `const s = require("dgram").createSocket("udp4");
     let sent = 0;
     const next = () => { if (sent === ${count}) { s.close(); return; } s.send("qnat-batch-" + sent++, ${port}, "${to}", next); };
     next();`,
  );
}

function waitUntil(condition: () => boolean, limitMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const started = Date.now();
    const check = (): void => {
      if (condition()) resolve(true);
      else if (Date.now() - started > limitMs) resolve(false);
      else setTimeout(check, 20);
    };
    check();
  });
}

function isUdpTo(batch: PacketBatch, index: number, destination: number, port: number): boolean {
  const at = batch.offsetOf(index);
  const d = batch.data;
  const headerLength = (d[at]! & 0x0f) * 4;
  const dst = ((d[at + 16]! << 24) | (d[at + 17]! << 16) | (d[at + 18]! << 8) | d[at + 19]!) >>> 0;
  const dport = (d[at + headerLength + 2]! << 8) | d[at + headerLength + 3]!;
  return d[at]! >> 4 === 4 && d[at + 9] === 17 && dst === destination && dport === port;
}

describe("the TUN addon's errors", () => {
  it("says in one line that the addon is not built when it is missing", () => {
    const empty = mkdtempSync(join(tmpdir(), "qnat-no-addon-"));
    try {
      const error = thrown(() => loadTunAddon(empty));
      expect(error).toBeInstanceOf(TunAddonNotBuiltError);
      expect(error.message).toBe("qnat's TUN addon is not built: run npm install");
      expect(error.code).toBe("ERR_QNAT_TUN_ADDON_NOT_BUILT");
    } finally {
      rmSync(empty, { recursive: true });
    }
  });

  it("rejects a device name longer than IFNAMSIZ - 1 = 15 bytes", () => {
    const error = thrown(() => TunDevice.open("qr-694450d6-f6-x"));
    expect(error.code).toBe("ENAMETOOLONG");
    expect(error.message).toContain('"qr-694450d6-f6-x"');
    expect(error.message).toContain("1..15 bytes");
  });

  it("reports a namespace that does not exist as ENOENT, naming it", () => {
    const error = thrown(() => TunDevice.open("eth0", { netns: `qnt-missing-${suffix}` }));
    expect(error.code).toBe("ENOENT");
    expect(error.errno).toBe(-2);
    expect(error.message).toBe(`open netns /run/netns/qnt-missing-${suffix}: No such file or directory`);
  });
});

describe.skipIf(!root)("two namespaces joined by qnat's TUN legs", () => {
  const devices: TunDevice[] = [];
  const children: ChildProcess[] = [];
  let wireA: TunDevice;
  let wireB: TunDevice;

  beforeAll(() => {
    for (const ns of [nsA, nsB]) {
      createNetns(ns);
      // Keep IPv6 router solicitations off the legs so the batches hold only the test's packets.
      try {
        setSysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1);
        setSysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1);
      } catch {
        // a kernel without IPv6 has nothing to silence
      }
    }
    wireA = TunDevice.open("eth0", { netns: nsA });
    wireB = TunDevice.open("eth0", { netns: nsB });
    devices.push(wireA, wireB);
    ip(nsA, "addr", "add", "10.99.0.1/24", "dev", "eth0");
    ip(nsB, "addr", "add", "10.99.0.2/24", "dev", "eth0");
    wireA.setMtu(1400);
    wireA.setUp();
    wireB.setUp();
  });

  afterAll(() => {
    for (const child of children) child.kill("SIGKILL");
    for (const device of devices) {
      try {
        device.close();
      } catch {
        // deleting the namespaces below removes what is left
      }
    }
    for (const ns of [nsA, nsB]) {
      if (netnsExists(ns)) deleteNetns(ns);
    }
  });

  it("creates eth0 inside each namespace, up, with the MTU it was given", () => {
    expect(ip(nsA, "-o", "link", "show", "eth0")).toMatch(/<POINTOPOINT,MULTICAST,NOARP,UP,LOWER_UP> mtu 1400 /);
    expect(ip(nsB, "-o", "addr", "show", "eth0")).toContain("inet 10.99.0.2/24");
    // this process stayed in its own namespace: no TUN eth0 appeared there
    expect(ip(null, "-o", "link", "show")).not.toMatch(/ eth0: <POINTOPOINT/);
  });

  it("refuses a second open of an attached device with EBUSY", () => {
    const error = thrown(() => TunDevice.open("eth0", { netns: nsA }));
    expect(error.code).toBe("EBUSY");
    expect(error.message).toBe("TUNSETIFF eth0: Device or resource busy");
  });

  it("10.99.0.1 and 10.99.0.2 talk over UDP and ping through the relay", async () => {
    const batchAtoB = new PacketBatch(64);
    const batchBtoA = new PacketBatch(64);
    let relayed = 0;
    const relay = (from: TunDevice, to: TunDevice, batch: PacketBatch): void => {
      from.onReadable((error) => {
        if (error) throw error;
        while (from.readInto(batch) > 0) relayed += to.write(batch);
      });
    };
    relay(wireA, wireB, batchAtoB);
    relay(wireB, wireA, batchBtoA);
    const limit = setTimeout(() => {
      wireA.stopReadable();
      wireB.stopReadable();
    }, RELAY_LIMIT_MS);

    const echo = spawn(
      "ip",
      [
        "netns", "exec", nsB, process.execPath, "-e",
        `const s = require("dgram").createSocket("udp4");
         s.on("message", (m, r) => s.send("echo: " + m, r.port, r.address));
         s.bind(7007, "10.99.0.2", () => console.log("ready"));
         setTimeout(() => process.exit(0), ${RELAY_LIMIT_MS});`,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    children.push(echo);
    try {
      await new Promise<void>((resolve, reject) => {
        echo.stdout!.once("data", () => resolve());
        echo.once("exit", () => reject(new Error("the echo server in qnt-b stopped")));
      });
      const reply = await nodeIn(
        nsA,
        `const c = require("dgram").createSocket("udp4");
         let tries = 0;
         const send = () => { if (++tries > 20) { console.error("no reply"); process.exit(1); } c.send("hello from 10.99.0.1", 7007, "10.99.0.2"); };
         c.on("message", (m, r) => { console.log(r.address + " " + m); process.exit(0); });
         c.bind(0, "10.99.0.1", () => { send(); setInterval(send, 250); });`,
      );
      expect(reply.trim()).toBe("10.99.0.2 echo: hello from 10.99.0.1");

      const pingable = await netnsExecAsync(nsA, "sh", ["-c", "command -v ping || true"]);
      if (pingable.trim() === "") {
        console.warn("test/io/tun.test.ts: ping is not installed (Debian iputils-ping), so only UDP was checked");
      } else {
        const ping = await netnsExecAsync(nsA, "ping", ["-c", "3", "-W", "1", "10.99.0.2"]);
        expect(ping).toMatch(/3 packets transmitted, 3 received/);
      }
      expect(relayed).toBeGreaterThanOrEqual(2);
    } finally {
      clearTimeout(limit);
      wireA.stopReadable();
      wireB.stopReadable();
      echo.kill("SIGKILL");
    }
  });

  it("reads several queued packets in one batched call and writes them on in one", async () => {
    const batch = new PacketBatch(32);
    while (wireA.readInto(batch) > 0) {
      // drain what earlier tests left queued
    }
    await sendDatagrams(nsA, "10.99.0.2", 7008, 8);

    const count = wireA.readInto(batch);
    expect(count).toBe(batch.count);
    expect(count).toBeGreaterThanOrEqual(8);
    const toEcho: number[] = [];
    for (let i = 0; i < count; i++) {
      if (isUdpTo(batch, i, parseIpv4("10.99.0.2"), 7008)) toEcho.push(i);
    }
    expect(toEcho.length).toBe(8);
    const payload = (i: number): string => {
      const at = batch.offsetOf(i);
      return Buffer.from(batch.data.subarray(at + 28, at + batch.lengths[i]!)).toString();
    };
    expect(toEcho.map(payload)).toEqual([0, 1, 2, 3, 4, 5, 6, 7].map((i) => `qnat-batch-${i}`));
    expect(wireA.readInto(batch)).toBe(0); // nothing left: a non-blocking read returns 0, not an error

    expect(wireB.write(batch)).toBe(0); // an empty batch writes nothing
    await sendDatagrams(nsA, "10.99.0.2", 7008, 8);
    wireA.readInto(batch);
    expect(wireB.write(batch)).toBe(batch.count);
    expect(wireB.writeErrors).toBe(0);
  });

  it("skips a packet the kernel refuses and writes the rest of the batch", async () => {
    const batch = new PacketBatch(8);
    await sendDatagrams(nsA, "10.99.0.2", 7009, 2);
    expect(wireA.readInto(batch)).toBe(2);
    batch.data[batch.offsetOf(1)] = 0x00; // version 0: tun_get_user cannot tell the protocol (EINVAL)
    batch.lengths[1] = 20;
    expect(wireB.write(batch)).toBe(1);
    expect(wireB.writeErrors).toBe(1);
    expect(wireB.lastWriteError?.code).toBe("EINVAL");
    expect(wireB.lastWriteError?.message).toMatch(/^write fd \d+: Invalid argument$/);
  });

  it("close stops polling and removes the device", async () => {
    const probe = TunDevice.open("probe0", { netns: nsA });
    devices.push(probe);
    ip(nsA, "addr", "add", "10.99.2.1/24", "dev", "probe0");
    probe.setUp();
    const batch = new PacketBatch(16);
    let wakeups = 0;
    probe.onReadable(() => {
      wakeups++;
      probe.readInto(batch);
    });
    expect(probe.isPolling).toBe(true);
    await sendDatagrams(nsA, "10.99.2.2", 7010, 1);
    expect(await waitUntil(() => wakeups > 0, 5_000)).toBe(true);

    probe.close();
    expect(probe.isPolling).toBe(false);
    expect(probe.isClosed).toBe(true);
    expect(ip(nsA, "-o", "link", "show")).not.toContain("probe0");
    expect(thrown(() => probe.readInto(batch)).code).toBe("EBADF");
    probe.close(); // idempotent
  });

  it("plumbs IFF_VNET_HDR: each packet arrives behind a 10-byte virtio_net_hdr", async () => {
    const vnet = TunDevice.open("vnet0", { netns: nsA, vnetHdr: true });
    devices.push(vnet);
    expect(vnet.vnetHeaderLength).toBe(10);
    ip(nsA, "addr", "add", "10.99.1.1/24", "dev", "vnet0");
    vnet.setUp();
    await sendDatagrams(nsA, "10.99.1.2", 7011, 1);
    // A batch without room for the header is refused.
    expect(thrown(() => vnet.readInto(new PacketBatch(4))).code).toBe("ERR_INVALID_ARG_VALUE");
    const batch = new PacketBatch(4, 2048 + 10, 10);
    expect(vnet.readInto(batch)).toBe(1);
    const at = batch.offsetOf(0);
    expect(at).toBe(10);
    expect(batch.data[at]).toBe(0x45); // IPv4, IHL 5, right after the header
    expect(batch.lengths[0]).toBe(20 + 8 + "qnat-batch-0".length); // the header is not counted
    expect(batch.gsoSizeOf(0)).toBe(0); // no offloads negotiated: a plain packet
    vnet.close();
  });
});
