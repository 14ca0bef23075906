/**
 * Source validation (reverse-path filtering), as Linux fib_validate_source /
 * __fib_validate_source (net/ipv4/fib_frontend.c) with net.ipv4.conf.*.rp_filter:
 *
 *   strict (1)  the best route back to the source must leave by the port the packet came in on;
 *   loose (2)   some route back to the source must exist;
 *   off (0)     no check.
 *
 * The route back is looked up in the routing table with the source as destination. No route at
 * all fails both modes (`last_resort` -> -EXDEV); a route back that is not unicast (blackhole,
 * unreachable, prohibit) is a martian source whatever the mode (`e_inval` -> -EINVAL). Linux
 * counts -EXDEV as LINUX_MIB_IPRPFILTER ("IPReversePathFilter", ip_rcv_finish_core); qnat counts
 * it as DropReason.ReversePathFilter and -EINVAL as DropReason.MartianSource.
 *
 * Where: in the input route lookup (ip_route_input_slow), i.e. after PREROUTING (so after DNAT),
 * for packets delivered locally (RTN_LOCAL, broadcast) and for packets forwarded by a unicast
 * route (__mkroute_input); a packet with no usable route to its destination gets its ICMP error
 * without source validation (ip_route_input_slow's `no_route`). The mode on a port is the larger of
 * the router-wide value (conf/all) and the port's (conf/DEV), as IN_DEV_RPFILTER (IN_DEV_MAXCONF)
 * — config.ts effectiveRpFilter.
 */
import { DropReason } from "../core/drop-reason.js";
import type { RoutingTable } from "../route/table.js";
import { RouteType } from "../route/table.js";

export const RP_FILTER_OFF = 0;
export const RP_FILTER_STRICT = 1;
export const RP_FILTER_LOOSE = 2;

const ROUTE_UNICAST = RouteType.Unicast;

/** "off" | "strict" | "loose" (config) -> RP_FILTER_*. */
export function rpFilterValue(mode: string): number {
  return mode === "strict" ? RP_FILTER_STRICT : mode === "loose" ? RP_FILTER_LOOSE : RP_FILTER_OFF;
}

export function rpFilterName(value: number): string {
  return value === RP_FILTER_STRICT ? "strict" : value === RP_FILTER_LOOSE ? "loose" : "off";
}

/**
 * Validates `src` of a packet that arrived on port `ingress` under `mode` (RP_FILTER_*): None,
 * ReversePathFilter or MartianSource. No allocation.
 */
export function validateSource(routes: RoutingTable, mode: number, src: number, ingress: number): DropReason {
  if (mode === RP_FILTER_OFF) return DropReason.None;
  const route = routes.lookup(src);
  if (route < 0) return DropReason.ReversePathFilter;
  if (routes.routeType(route) !== ROUTE_UNICAST) return DropReason.MartianSource;
  if (mode === RP_FILTER_STRICT && routes.routePort(route) !== ingress) return DropReason.ReversePathFilter;
  return DropReason.None;
}
