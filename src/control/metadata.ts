/**
 * The instance metadata proxy that the seed's rule
 *   -A neutron-vpn-agen-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697
 * reaches: an HTTP server on the router's host (the qrouter namespace), port 9697.
 *
 * Neutron's namespace proxy (neutron/agent/metadata/namespace_proxy.py, later haproxy) forwards
 * the request to the metadata agent with the VM's address in X-Forwarded-For, and the agent
 * finds the instance by that fixed IP on the router's networks. qnat serves the answer itself
 * from the config's `metadata.instances`, identifying the instance by the TCP connection's
 * source address. REDIRECT only rewrites the destination (Linux nf_nat_redirect.c), so the
 * source is the VM's fixed IP. A client-sent X-Forwarded-For is never trusted: a VM could use it
 * to read another instance's metadata. The port is private: the dataplane delivers to it only
 * connections REDIRECTed from a `qr-` port (pipeline.ts finishLocalIn, DropReason
 * MetadataNotRedirected), as Neutron's mark and `--dport 9697 -j DROP` filter rules do; a 404
 * echoes nothing the caller sent.
 *
 * Paths (a modest subset of EC2's and OpenStack's metadata APIs, as nova serves them):
 *   /                                  "latest" (the API versions served)
 *   /latest/                           "meta-data/"
 *   /latest/meta-data/                 the keys this instance has, one a line
 *   /latest/meta-data/KEY              instance-id, hostname, local-ipv4, public-ipv4, extra fields
 *   /openstack/                        "latest"
 *   /openstack/latest/                 "meta_data.json"
 *   /openstack/latest/meta_data.json   { uuid, hostname, name, availability_zone, project_id? }
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface MetadataServerConfig {
  readonly port: number;
  /** Keyed by the instance's fixed IPv4 address (text); fields include `instance-id`, `hostname`. */
  readonly instances: ReadonlyMap<string, Readonly<Record<string, string>>>;
  /** Fixed IP -> floating IP (host-setup.ts floatingIpsOf reads it from the nat rules); gives `public-ipv4`. */
  readonly floatingIps?: ReadonlyMap<string, string>;
  /** Listen address; default "0.0.0.0" (every address of the router's host). */
  readonly host?: string;
  /**
   * Which instance asks: defaults to the connection's source address. Tests on loopback give
   * their own (every test connection comes from 127.0.0.1).
   */
  readonly resolveSource?: (req: IncomingMessage) => string;
}

/** Request counts for `qnat show stats`. */
export interface MetadataCounters {
  /** answered 200 */
  served: number;
  /** unknown instance or unknown path (404) */
  notFound: number;
  /** a method other than GET (405) */
  methodNotAllowed: number;
}

export interface MetadataServer {
  readonly address: AddressInfo;
  readonly counters: Readonly<MetadataCounters>;
  /** A live change (`qnat apply`): later requests are answered from these instances and floating IPs. */
  update(instances: MetadataServerConfig["instances"], floatingIps: ReadonlyMap<string, string>): void;
  close(): Promise<void>;
}

/** The EC2 keys qnat knows, listed first (in this order) when the instance has them. */
const EC2_BUILTIN_KEYS = ["hostname", "instance-id", "local-ipv4", "public-ipv4"] as const;

/** Fields of the config that only feed meta_data.json, not the EC2 tree. */
const OPENSTACK_ONLY_FIELDS = new Set(["name", "project_id", "project-id", "availability_zone", "availability-zone"]);

/** nova's default availability zone (nova.conf `default_availability_zone`). */
const DEFAULT_AVAILABILITY_ZONE = "nova";

const TEXT = "text/plain; charset=utf-8";
const JSON_TYPE = "application/json";

/** "::ffff:10.0.0.2" (a v4 client on a dual-stack socket) -> "10.0.0.2". */
export function normalizeSourceAddress(address: string | undefined): string {
  if (address === undefined) return "";
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  return mapped !== null ? mapped[1]! : address;
}

/** The EC2 meta-data of one instance, keyed as EC2 names them. */
export function ec2MetaData(
  fixedIp: string,
  fields: Readonly<Record<string, string>>,
  floatingIp: string | undefined,
): Map<string, string> {
  const data = new Map<string, string>();
  for (const [key, value] of Object.entries(fields)) {
    if (!OPENSTACK_ONLY_FIELDS.has(key)) data.set(key, value);
  }
  // The addresses come from the network, not from the config: the source is the fixed IP.
  data.set("local-ipv4", fixedIp);
  if (floatingIp !== undefined) data.set("public-ipv4", floatingIp);
  return data;
}

/** The listing of /latest/meta-data/: the built-in keys first (EC2 order), then extra fields sorted. */
export function ec2Listing(data: ReadonlyMap<string, string>): string {
  const builtin: string[] = EC2_BUILTIN_KEYS.filter((key) => data.has(key));
  const extra = [...data.keys()].filter((key) => !(EC2_BUILTIN_KEYS as readonly string[]).includes(key)).sort();
  return [...builtin, ...extra].join("\n");
}

/** OpenStack meta_data.json (nova/api/metadata/base.py InstanceMetadata, the fields qnat knows). */
export function openstackMetaData(fields: Readonly<Record<string, string>>): Record<string, string> {
  const json: Record<string, string> = {};
  const uuid = fields["instance-id"];
  if (uuid !== undefined) json["uuid"] = uuid;
  const hostname = fields["hostname"];
  if (hostname !== undefined) json["hostname"] = hostname;
  const name = fields["name"] ?? hostname;
  if (name !== undefined) json["name"] = name;
  json["availability_zone"] = fields["availability_zone"] ?? fields["availability-zone"] ?? DEFAULT_AVAILABILITY_ZONE;
  const project = fields["project_id"] ?? fields["project-id"];
  if (project !== undefined) json["project_id"] = project;
  return json;
}

interface Answer {
  readonly status: number;
  readonly type: string;
  readonly body: string;
}

/**
 * Every 404 is the same fixed page: it echoes nothing of the request (path, source address,
 * headers), so the proxy can never reflect what a caller sent.
 */
const NOT_FOUND: Answer = { status: 404, type: TEXT, body: "Not Found\n" };
const text = (body: string): Answer => ({ status: 200, type: TEXT, body });

/** The answer to GET `path` from the instance at `source` (pure; the HTTP part is below). */
export function answerMetadata(
  path: string,
  source: string,
  instances: ReadonlyMap<string, Readonly<Record<string, string>>>,
  floatingIps: ReadonlyMap<string, string>,
): Answer {
  // Listings answer with or without the trailing slash, as EC2 does; "//" collapses.
  const clean = path.replace(/\/{2,}/g, "/");
  const trimmed = clean.length > 1 && clean.endsWith("/") ? clean.slice(0, -1) : clean;

  const fields = instances.get(source);
  if (fields === undefined) return NOT_FOUND;

  switch (trimmed) {
    case "/":
      return text("latest");
    case "/latest":
      return text("meta-data/");
    case "/latest/meta-data":
      return text(ec2Listing(ec2MetaData(source, fields, floatingIps.get(source))));
    case "/openstack":
      return text("latest");
    case "/openstack/latest":
      return text("meta_data.json");
    case "/openstack/latest/meta_data.json":
      return { status: 200, type: JSON_TYPE, body: JSON.stringify(openstackMetaData(fields)) };
  }
  const prefix = "/latest/meta-data/";
  if (trimmed.startsWith(prefix)) {
    const value = ec2MetaData(source, fields, floatingIps.get(source)).get(trimmed.slice(prefix.length));
    if (value !== undefined) return text(value);
  }
  return NOT_FOUND;
}

/** Starts the metadata proxy; resolves once it listens (rejects with a one-line message otherwise). */
export async function startMetadataServer(config: MetadataServerConfig): Promise<MetadataServer> {
  const counters: MetadataCounters = { served: 0, notFound: 0, methodNotAllowed: 0 };
  let floatingIps = config.floatingIps ?? new Map<string, string>();
  let instances = config.instances;
  const resolveSource = config.resolveSource ?? ((req: IncomingMessage) => normalizeSourceAddress(req.socket.remoteAddress));
  const host = config.host ?? "0.0.0.0";

  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (req.method !== "GET") {
      counters.methodNotAllowed++;
      send(res, { status: 405, type: TEXT, body: "Method Not Allowed\n" }, { Allow: "GET" });
      return;
    }
    const url = req.url ?? "/";
    const query = url.indexOf("?");
    const path = query < 0 ? url : url.slice(0, query);
    const answer = answerMetadata(path, resolveSource(req), instances, floatingIps);
    if (answer.status === 200) counters.served++;
    else counters.notFound++;
    send(res, answer);
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      const why = error.code === "EADDRINUSE" ? "address already in use" : error.code === "EACCES" ? "permission denied" : error.message;
      reject(new Error(`metadata proxy cannot listen on ${host}:${config.port}: ${why}`));
    };
    server.once("error", onError);
    server.listen(config.port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });

  return {
    address: server.address() as AddressInfo,
    counters,
    update: (nextInstances, nextFloatingIps) => {
      instances = nextInstances;
      floatingIps = nextFloatingIps;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive clients must not hold the router's shutdown.
        server.closeAllConnections();
      }),
  };
}

function send(res: ServerResponse, answer: Answer, headers: Record<string, string> = {}): void {
  res.writeHead(answer.status, {
    "Content-Type": answer.type,
    "Content-Length": Buffer.byteLength(answer.body),
    ...headers,
  });
  res.end(answer.body);
}
