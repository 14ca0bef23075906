import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { request } from "node:http";
import {
  answerMetadata,
  normalizeSourceAddress,
  startMetadataServer,
  type MetadataServer,
} from "../../src/control/metadata.js";

// The seed's tenant: 10.0.0.2 has floating IP 9.186.100.129, 10.0.0.3 leaves as 9.186.100.2.
const instances = new Map<string, Record<string, string>>([
  ["10.0.0.2", { "instance-id": "i-00000001", hostname: "vm-1", project_id: "p-42", "ami-id": "ami-cirros" }],
  ["10.0.0.3", { "instance-id": "i-00000002", hostname: "vm-2" }],
]);
const floatingIps = new Map([["10.0.0.2", "9.186.100.129"]]);

interface Reply {
  status: number;
  type: string;
  body: string;
  allow: string | undefined;
}

/** One HTTP request to the test server, as the VM at `from` (sent in a test-only header). */
function get(server: MetadataServer, path: string, from: string, method = "GET"): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: "127.0.0.1", port: server.address.port, path, method, headers: { "x-test-source": from }, agent: false },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (body += chunk));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"]), body, allow: res.headers["allow"] as string | undefined }),
        );
      },
    );
    req.on("error", reject);
    req.end();
  });
}

describe("metadata proxy behind REDIRECT 169.254.169.254:80 -> 9697", () => {
  let server: MetadataServer;
  beforeAll(async () => {
    server = await startMetadataServer({
      port: 0,
      host: "127.0.0.1",
      instances,
      floatingIps,
      // Every loopback connection comes from 127.0.0.1: the test says which VM it plays.
      resolveSource: (req) => String(req.headers["x-test-source"]),
    });
  });
  afterAll(async () => {
    await server.close();
  });

  it("listens on an ephemeral loopback port", () => {
    expect(server.address.address).toBe("127.0.0.1");
    expect(server.address.port).toBeGreaterThan(0);
  });

  it("10.0.0.2 lists its EC2 meta-data keys, public-ipv4 included (it has a floating IP)", async () => {
    const reply = await get(server, "/latest/meta-data/", "10.0.0.2");
    expect(reply.status).toBe(200);
    expect(reply.type).toMatch(/^text\/plain/);
    expect(reply.body).toBe("hostname\ninstance-id\nlocal-ipv4\npublic-ipv4\nami-id");
  });

  it("10.0.0.3 has no floating IP: no public-ipv4 in its listing, 404 when asked", async () => {
    expect((await get(server, "/latest/meta-data/", "10.0.0.3")).body).toBe("hostname\ninstance-id\nlocal-ipv4");
    expect((await get(server, "/latest/meta-data/public-ipv4", "10.0.0.3")).status).toBe(404);
  });

  it("serves each key: instance-id, hostname, local-ipv4 (the source), public-ipv4 (the floating IP), extra fields", async () => {
    expect((await get(server, "/latest/meta-data/instance-id", "10.0.0.2")).body).toBe("i-00000001");
    expect((await get(server, "/latest/meta-data/hostname", "10.0.0.2")).body).toBe("vm-1");
    expect((await get(server, "/latest/meta-data/local-ipv4", "10.0.0.2")).body).toBe("10.0.0.2");
    expect((await get(server, "/latest/meta-data/public-ipv4", "10.0.0.2")).body).toBe("9.186.100.129");
    expect((await get(server, "/latest/meta-data/ami-id", "10.0.0.2")).body).toBe("ami-cirros");
    expect((await get(server, "/latest/meta-data/instance-id", "10.0.0.3")).body).toBe("i-00000002");
  });

  it("answers the EC2 and OpenStack listings, with or without the trailing slash", async () => {
    expect((await get(server, "/", "10.0.0.3")).body).toBe("latest");
    expect((await get(server, "/latest/", "10.0.0.3")).body).toBe("meta-data/");
    expect((await get(server, "/latest", "10.0.0.3")).body).toBe("meta-data/");
    expect((await get(server, "/latest/meta-data", "10.0.0.3")).body).toBe("hostname\ninstance-id\nlocal-ipv4");
    expect((await get(server, "/openstack/", "10.0.0.3")).body).toBe("latest");
    expect((await get(server, "/openstack/latest/", "10.0.0.3")).body).toBe("meta_data.json");
  });

  it("serves OpenStack meta_data.json as JSON with uuid, hostname, name, availability_zone, project_id", async () => {
    const reply = await get(server, "/openstack/latest/meta_data.json", "10.0.0.2");
    expect(reply.status).toBe(200);
    expect(reply.type).toBe("application/json");
    expect(JSON.parse(reply.body)).toEqual({
      uuid: "i-00000001",
      hostname: "vm-1",
      name: "vm-1",
      availability_zone: "nova",
      project_id: "p-42",
    });
    // project_id is OpenStack-only: not an EC2 key.
    expect((await get(server, "/latest/meta-data/project_id", "10.0.0.2")).status).toBe(404);
    expect(JSON.parse((await get(server, "/openstack/latest/meta_data.json", "10.0.0.3")).body)).not.toHaveProperty("project_id");
  });

  it("ignores the query string", async () => {
    expect((await get(server, "/latest/meta-data/hostname?x=1", "10.0.0.3")).body).toBe("vm-2");
  });

  it("an unknown address and an unknown path get the same fixed 404, echoing nothing the caller sent", async () => {
    const stranger = await get(server, "/latest/meta-data/instance-id", "10.0.0.99");
    expect(stranger.status).toBe(404);
    expect(stranger.type).toMatch(/^text\/plain/);
    expect(stranger.body).toBe("Not Found\n");
    const probe = "/latest/<script>alert(1)</script>%0d%0aX-Injected:%20yes";
    const unknownPath = await get(server, probe, "10.0.0.2");
    expect(unknownPath.status).toBe(404);
    expect(unknownPath.body).toBe("Not Found\n");
    expect((await get(server, "/latest/user-data", "10.0.0.2")).body).toBe("Not Found\n");
    expect((await get(server, probe, "10.0.0.99")).body).toBe("Not Found\n");
  });

  it("answers 405 with Allow: GET to anything but GET", async () => {
    const reply = await get(server, "/latest/meta-data/", "10.0.0.2", "POST");
    expect(reply.status).toBe(405);
    expect(reply.allow).toBe("GET");
    expect((await get(server, "/latest/meta-data/", "10.0.0.2", "PUT")).status).toBe(405);
  });

  it("counts requests served, not found and refused", async () => {
    const before = { ...server.counters };
    await get(server, "/latest/meta-data/hostname", "10.0.0.2");
    await get(server, "/latest/meta-data/hostname", "10.0.0.2");
    await get(server, "/latest/meta-data/hostname", "10.9.9.9");
    await get(server, "/", "10.0.0.2", "DELETE");
    expect(server.counters.served - before.served).toBe(2);
    expect(server.counters.notFound - before.notFound).toBe(1);
    expect(server.counters.methodNotAllowed - before.methodNotAllowed).toBe(1);
  });
});

describe("metadata proxy identifying the VM by the connection's source address", () => {
  it("without a resolveSource hook, a loopback client is the instance keyed 127.0.0.1", async () => {
    const server = await startMetadataServer({
      port: 0,
      host: "127.0.0.1",
      instances: new Map([["127.0.0.1", { "instance-id": "i-loop", hostname: "loop" }]]),
      floatingIps: new Map(),
    });
    try {
      expect((await get(server, "/latest/meta-data/instance-id", "ignored")).body).toBe("i-loop");
      expect((await get(server, "/latest/meta-data/local-ipv4", "ignored")).body).toBe("127.0.0.1");
    } finally {
      await server.close();
    }
  });

  it("does not trust a client's X-Forwarded-For", async () => {
    const server = await startMetadataServer({ port: 0, host: "127.0.0.1", instances, floatingIps });
    try {
      const reply = await new Promise<number>((resolve, reject) => {
        const req = request(
          { host: "127.0.0.1", port: server.address.port, path: "/latest/meta-data/instance-id", headers: { "x-forwarded-for": "10.0.0.2" }, agent: false },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        );
        req.on("error", reject);
        req.end();
      });
      expect(reply).toBe(404);
    } finally {
      await server.close();
    }
  });

  it("reads IPv4-mapped IPv6 source addresses as IPv4", () => {
    expect(normalizeSourceAddress("::ffff:10.0.0.2")).toBe("10.0.0.2");
    expect(normalizeSourceAddress("::FFFF:127.0.0.1")).toBe("127.0.0.1");
    expect(normalizeSourceAddress("10.0.0.3")).toBe("10.0.0.3");
    expect(normalizeSourceAddress("fe80::1")).toBe("fe80::1");
    expect(normalizeSourceAddress(undefined)).toBe("");
  });

  it("a port in use is a one-line error", async () => {
    const first = await startMetadataServer({ port: 0, host: "127.0.0.1", instances });
    try {
      await expect(startMetadataServer({ port: first.address.port, host: "127.0.0.1", instances })).rejects.toThrow(
        `metadata proxy cannot listen on 127.0.0.1:${first.address.port}: address already in use`,
      );
    } finally {
      await first.close();
    }
  });

  it("close() does not wait for keep-alive clients", async () => {
    const server = await startMetadataServer({ port: 0, host: "127.0.0.1", instances: new Map([["127.0.0.1", { "instance-id": "i-1" }]]) });
    await new Promise<void>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port: server.address.port, path: "/", headers: { connection: "keep-alive" } }, (res) => {
        res.resume();
        res.on("end", () => resolve());
      });
      req.on("error", reject);
      req.end();
    });
    await server.close();
  });
});

describe("answerMetadata (the pure part)", () => {
  it("collapses doubled slashes", () => {
    expect(answerMetadata("//latest//meta-data//hostname", "10.0.0.3", instances, floatingIps).body).toBe("vm-2");
  });
  it("an instance without a hostname lists no hostname", () => {
    const only = new Map([["10.0.0.5", { "instance-id": "i-5" }]]);
    expect(answerMetadata("/latest/meta-data/", "10.0.0.5", only, new Map()).body).toBe("instance-id\nlocal-ipv4");
    expect(JSON.parse(answerMetadata("/openstack/latest/meta_data.json", "10.0.0.5", only, new Map()).body)).toEqual({
      uuid: "i-5",
      availability_zone: "nova",
    });
  });
});

