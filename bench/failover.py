"""How long a replica's death stalls the drivers: one leader and a standby, against sharded replicas.

    make bench-failover                      # 5 drivers, 3 rounds each way
    PYTHONPATH=tools:operator uv run python -m bench.failover --drivers 5 --rounds 3

One cluster, D mock drivers, each with a DriverEndpoint and a StorageClass. A round starts
the replicas (single: two with leader election, one leads; sharded: three sharing the
drivers out), waits until every driver is served, SIGKILLs a serving replica (the leader;
the sharded replica serving the most drivers), and at that moment asks for one claim per
driver. It times, from the kill: each driver served again (a live replica's
`sidecarless_lease_held` 1) and each claim Bound. With one leader every driver waits a
Lease duration; sharded, only the dead replica's share does. Prints the medians, writes
every figure as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import cluster_options, on_a_local_cluster
from bench.sides import served_endpoints
from bench.workload import NAMESPACE, Workload, _claim, class_name, driver_name
from devcluster import LocalCluster
from devcluster.operator import REPO, OperatorProcess
from devcluster.procs import wait_until
from sidecarless.kube import LEASE, PVC, Kube, connect
from sidecarless.shards import SHARD_LABEL

MODES = {"single": 2, "sharded": 3}  # replicas started in each mode


def served(operator: OperatorProcess) -> set[str]:
    try:
        return served_endpoints(operator.metrics())
    except OSError:
        return set()


def environment(mode: str, identity: str) -> dict[str, str]:
    return {
        "SIDECARLESS_LOG_LEVEL": "INFO",
        "SIDECARLESS_ATTACHER_RECONCILE_SECONDS": "60",
        "SIDECARLESS_LEADER_ELECTION": "true",
        "SIDECARLESS_SHARDING": "true" if mode == "sharded" else "false",
        "SIDECARLESS_IDENTITY": identity,
    }


async def one_round(
    mode: str, number: int, *, kube: Kube, cluster: LocalCluster, endpoints: list[str], log_dir: Path
) -> dict[str, Any]:
    replicas = []
    for index in range(MODES[mode]):
        operator = OperatorProcess(cluster.kubeconfig, log_dir, env=environment(mode, f"{mode}-{number}-{index}"))
        operator.starts = number * 100 + index * 10  # distinct log files
        operator.start()
        replicas.append(operator)

    def settled() -> bool:
        loads = [served(r) for r in replicas]
        every = sorted(e for load in loads for e in load)
        sizes = [len(load) for load in loads if load or mode == "sharded"]
        return every == sorted(endpoints) and max(sizes) - min(sizes) <= (1 if mode == "sharded" else len(endpoints))

    wait_until("every driver served", settled, timeout=120, watch=[r.process for r in replicas if r.process])
    try:
        victim = max(replicas, key=lambda r: len(served(r)))
        orphaned = sorted(served(victim))
        survivors = [r for r in replicas if r is not victim]
        assert victim.process is not None
        os.kill(victim.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        claims = {f"failover-{number}-{i}": endpoint for i, endpoint in enumerate(endpoints)}
        await asyncio.gather(*(kube.create(PVC, _claim(name, cls), NAMESPACE) for name, cls in claims.items()))
        served_again: dict[str, float] = {}
        bound: dict[str, float] = {}
        deadline = killed_at + 120
        while (len(served_again) < len(endpoints) or len(bound) < len(claims)) and time.monotonic() < deadline:
            now = time.monotonic() - killed_at
            for survivor in survivors:
                for endpoint in await asyncio.to_thread(served, survivor):
                    served_again.setdefault(endpoint, now)
            for found in await kube.list(PVC, NAMESPACE):
                name = found["metadata"]["name"]
                if name in claims and (found.get("status") or {}).get("phase") == "Bound":
                    bound.setdefault(claims[name], now)
            await asyncio.sleep(0.1)
        if len(bound) < len(claims):
            raise TimeoutError(f"{mode} round {number}: claims of {sorted(set(endpoints) - set(bound))} not Bound")
        # Served all along by a survivor: 0 (it was seen at the first poll).
        figures = {
            "mode": mode,
            "round": number,
            "replicas": len(replicas),
            "drivers_of_the_dead": len(orphaned),
            "served_again_seconds": round(max(served_again[e] for e in orphaned), 2),
            "bound_seconds": {e: round(bound[e], 2) for e in endpoints},
            "stalled_drivers": sum(1 for e in endpoints if bound[e] > 5.0),
            # None with one leader: its death leaves no driver served.
            "others_bound_max_seconds": max((round(bound[e], 2) for e in endpoints if e not in orphaned), default=None),
            "orphans_bound_max_seconds": round(max(bound[e] for e in orphaned), 2),
        }
    finally:
        for replica in replicas:
            replica.stop()
    for name in claims:
        await kube.delete(PVC, name, NAMESPACE)
    # The dead replica's Leases would hold the next round back a Lease duration.
    for lease in await kube.list(LEASE, "default", label_selector=SHARD_LABEL):
        await kube.delete(LEASE, lease["metadata"]["name"], "default")
    if await kube.get_or_none(LEASE, "sidecarless-leader", "default") is not None:
        await kube.delete(LEASE, "sidecarless-leader", "default")
    return figures


async def run(args: argparse.Namespace, cluster: LocalCluster, workdir: Path) -> dict[str, Any]:
    kube = Kube(await connect(str(cluster.kubeconfig)), qps=0, burst=1)
    workload = Workload(kube, 0, args.drivers, 600)
    addresses = {driver_name(i): cluster.driver_addresses[driver_name(i)] for i in range(args.drivers)}
    endpoints = [class_name(i) for i in range(args.drivers)]
    rounds = []
    try:
        await workload.create_classes(addresses)
        for number in range(1, args.rounds + 1):
            for mode in MODES:
                print(f"[{time.strftime('%H:%M:%S')}] round {number}: {mode}", flush=True)
                figures = await one_round(
                    mode, number, kube=kube, cluster=cluster, endpoints=endpoints, log_dir=workdir / "logs"
                )
                print(f"  {json.dumps(figures)}", flush=True)
                rounds.append(figures)
    finally:
        await kube.close()
    summary: dict[str, dict[str, float | None]] = {}
    for mode in MODES:
        of_mode = [r for r in rounds if r["mode"] == mode]
        summary[mode] = {}
        for key in ("served_again_seconds", "orphans_bound_max_seconds", "others_bound_max_seconds", "stalled_drivers"):
            values = [r[key] for r in of_mode if r[key] is not None]
            summary[mode][key] = round(statistics.median(values), 2) if values else None
    return {"command": " ".join(sys.argv), "drivers": args.drivers, "summary": summary, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "failover.json")
    args = parser.parse_args()
    options = cluster_options(args.drivers, audit_log=False)
    result, _ = on_a_local_cluster("failover", options, lambda cluster, work: run(args, cluster, work), args.out)
    print(f"\n{args.drivers} drivers, median of {args.rounds} rounds, seconds from the kill:")
    print(f"  {'':<40}{'single leader':>15}{'sharded':>10}")
    for key, label in (
        ("served_again_seconds", "the dead replica's drivers served again"),
        ("orphans_bound_max_seconds", "  their claims Bound"),
        ("others_bound_max_seconds", "the other drivers' claims Bound"),
        ("stalled_drivers", "drivers stalled (claim > 5 s)"),
    ):
        single, sharded = (result["summary"][mode][key] for mode in MODES)
        print(f"  {label:<40}{single if single is not None else '-':>15}{sharded if sharded is not None else '-':>10}")


if __name__ == "__main__":
    main()
