/**
 * The router the shared-table tests run in worker threads: the seed's two ports, and SNAT of the
 * tenant's UDP to ONE address and 77 ports (9.186.100.2:1024-1100), so workers opening flows at
 * once are forced to clash on translated tuples.
 */
export const SHARED_TENANT = "qr-694450d6-f6";
export const SHARED_GATEWAY = "qg-e76de35e-90";
/** Ports of the SNAT range: at most this many flows to one server:port can be translated. */
export const SHARED_SNAT_PORTS = 1100 - 1024 + 1;

/** The config text, with `conntrack.max` = `max`. */
export function sharedSnatConfig(max: number): string {
  return `router:
  id: 40fff075-d3a2-477b-942c-6b1adb42e35e
ports:
  - name: ${SHARED_TENANT}
    addresses: [10.0.0.1/24]
    wire: { namespace: qnat-tenant, device: eth0 }
  - name: ${SHARED_GATEWAY}
    addresses: [9.186.100.2/24]
    wire: { namespace: qnat-external, device: eth0 }
routes:
  - default via 9.186.100.1 dev ${SHARED_GATEWAY}
conntrack:
  max: ${max}
nat: |
  -A POSTROUTING -s 10.0.0.0/24 -o ${SHARED_GATEWAY} -p udp -j SNAT --to-source 9.186.100.2:1024-1100
`;
}
