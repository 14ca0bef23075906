/**
 * The hot-path workloads of `npm run bench`, loaded from any built qnat tree (its
 * dist/bench/lib/scenario.js), so that two builds of qnat — this one and one from before a change —
 * run the same traffic: bench/compare-trees.ts (two trees in one process) and bench/tree-rate.ts
 * (one tree per process, for bench/defences.ts). Every tree from 3264a9f on has this scenario API.
 */
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";
import type * as Scenario from "./scenario.js";

/** established UDP with SNAT at 64k / 1M flows, inbound TCP through the floating IP, new connections; e64shared: e64 over a sharable table. */
export const TREE_WORKLOADS = ["e64", "e1m", "inbound", "new", "e64shared"] as const;
export type TreeWorkload = (typeof TREE_WORKLOADS)[number];

export function isTreeWorkload(name: string | undefined): name is TreeWorkload {
  return (TREE_WORKLOADS as readonly string[]).includes(name ?? "");
}

/** One step of a workload: one batch of `packets` packets through the tree's dataplane. */
export interface WorkloadSteps {
  readonly step: () => void;
  readonly packets: number;
}

/** Builds `workload` in `tree`'s code; `flows` replaces the established workloads' flow count. */
export async function loadTreeWorkload(tree: string, workload: TreeWorkload, flows?: number): Promise<WorkloadSteps> {
  const s = (await import(pathToFileURL(resolve(tree, "dist/bench/lib/scenario.js")).href)) as typeof Scenario;
  let next = 0;
  if (workload === "new") {
    const { router, template, driver } = s.newConnectionWorkload(131_072);
    return {
      packets: s.BATCH,
      step: () => {
        driver.run(template.views[next]!, s.TENANT_PORT);
        if (++next === template.batches) {
          next = 0;
          router.clock.offset += 31;
        }
      },
    };
  }
  const count = flows ?? (workload === "e1m" ? 1_000_000 : 65_536);
  const router = s.seedRouter(Math.max(262_144, Math.ceil(count * 1.05)), false, workload === "e64shared" ? { sharable: true } : {});
  const inbound = workload === "inbound";
  const packets = inbound ? s.establishInboundTcp(router, s.inboundFlows(count, 0xbeef)) : s.establishTenantFlows(router, s.tenantFlows(count, 0xc0ffee));
  const template = new s.PacketTemplate(packets, s.shuffled(count, inbound ? 0xfeed : 0x5eed));
  const driver = new s.Driver(router.dataplane);
  const port = inbound ? s.GATEWAY_PORT : s.TENANT_PORT;
  return {
    packets: s.BATCH,
    step: () => {
      driver.run(template.views[next]!, port);
      if (++next === template.batches) next = 0;
    },
  };
}
