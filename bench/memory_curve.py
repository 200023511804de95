"""Memory with many volumes in the cluster: the sidecars, Sidecarless and sharded Sidecarless.

external-provisioner keeps every PV, PVC and StorageClass of the cluster in informers, and
its memory grows with them (a container limit of 200 MiB per 5,000 volumes not to be
OOM-killed, external-provisioner #587);
Sidecarless keeps the same objects (without managedFields: docs/architecture.md), once for
all drivers; sharded, every replica keeps them all (watches are not sharded).

One cluster with D mock drivers. The population grows in steps to each size: claims (Bound,
by a Sidecarless process started for that and stopped after), then a VolumeSnapshot of each
(readyToUse). At each size, each side is started fresh on the populated cluster, left until
it has listed and watched everything (at least `--settle` s, then until its resident memory
has grown less than 2 MiB in 10 s), and its resident and peak memory are read from /proc,
per process; then it is stopped. Prints the table, writes the figures as JSON.

    make bench-memory                           # 1,000, 5,000, 10,000 volumes, 1 driver
    make bench-memory SIZES=1000,2000 DRIVERS=5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import cluster_options, on_a_local_cluster
from bench.proc import usage
from bench.sides import SETTINGS, ShardedSide, Side, SidecarlessSide, SidecarsSide
from bench.workload import Workload, driver_name
from devcluster import LocalCluster
from devcluster.build import ensure_sidecars
from devcluster.operator import REPO, OperatorProcess
from sidecarless.kube import Kube, connect

SETTING = SETTINGS["qps100"]  # the same API budget for every side: start-up work is never throttled apart
GROWTH_BATCH = 1000  # claims asked for at once while growing
# external-provisioner #587: the memory limit a sidecar container needed not to be OOM-killed,
# 200 MiB for 5,000 volumes, 400 for 10,000, 800 for 20,000 ("200Mi * n" per 5,000).
REFERENCE_MIB_PER_VOLUME = 200 / 5000


async def grow(workload: Workload, have: int, size: int) -> None:
    """Claims `have`..`size`, Bound, each with a ready VolumeSnapshot."""
    for start in range(have, size, GROWTH_BATCH):
        workload.claims = [f"data-{i:05d}" for i in range(start, min(start + GROWTH_BATCH, size))]
        for phase, done in (("provision", "Bound"), ("snapshot", "snapshotted")):
            result = await workload.run(phase)
            print(f"    {len(workload.claims)} more claims {done} in {result.seconds:.1f}s", flush=True)


async def settle(side: Side, minimum: float, limit: float = 300.0) -> dict[str, dict[str, float]]:
    """Each process' memory once the side is done listing: resident memory flat for 10 s."""
    started = time.monotonic()
    await asyncio.sleep(minimum)
    last = sum(usage(pid).rss_mib for pid in side.pids().values())
    while time.monotonic() - started < limit:
        await asyncio.sleep(10)
        side.check_alive()
        now = sum(usage(pid).rss_mib for pid in side.pids().values())
        if now - last < 2.0:
            break
        last = now
    found = {}
    for label, pid in side.pids().items():
        now_used = usage(pid)
        found[label] = {"rss_mib": now_used.rss_mib, "peak_mib": now_used.peak_mib}
    return found


async def run(args: argparse.Namespace, cluster: LocalCluster, workdir: Path) -> dict[str, Any]:
    addresses = {driver_name(i): cluster.driver_addresses[driver_name(i)] for i in range(args.drivers)}
    sockets = {name: address.removeprefix("unix://") for name, address in addresses.items()}
    kube = Kube(await connect(str(cluster.kubeconfig)), qps=0, burst=1)
    workload = Workload(kube, 0, args.drivers, 1800)
    sizes: list[dict[str, Any]] = []
    try:
        await workload.create_classes(addresses)
        have = 0
        for size in args.sizes:
            print(f"[{time.strftime('%H:%M:%S')}] growing to {size} volumes and snapshots", flush=True)
            filler = OperatorProcess(
                cluster.kubeconfig,
                workdir / "filler",
                env={"SIDECARLESS_LOG_LEVEL": "WARNING", **SETTINGS["unlimited"].operator_env()},
            )
            filler.starts = size  # a log file per size
            filler.start()
            try:
                await grow(workload, have, size)
            finally:
                filler.stop()
            have = size
            sides: list[Side] = [
                SidecarsSide(cluster.user_kubeconfig(SidecarsSide.user), sockets, SETTING, workdir / f"{size}"),
                SidecarlessSide(cluster.user_kubeconfig(SidecarlessSide.user), SETTING, workdir / f"{size}", {}),
                # Three replicas listing everything at once on 2 CPUs: at 10,000 volumes the
                # split took over 90 s (renewals late, keys dropped and taken again).
                ShardedSide(
                    cluster.user_kubeconfig(ShardedSide.user),
                    SETTING,
                    workdir / f"{size}",
                    {},
                    replicas=args.replicas,
                    split_timeout=600,
                ),
            ]
            figures: dict[str, Any] = {"volumes": size, "snapshots": size, "sides": {}}
            for side in (s for s in sides if s.name in args.sides):
                print(f"[{time.strftime('%H:%M:%S')}] {size} volumes: {side.name}", flush=True)
                side.start()
                try:
                    processes = await settle(side, args.settle)
                finally:
                    side.stop()
                figures["sides"][side.name] = {
                    "rss_mib": round(sum(p["rss_mib"] for p in processes.values()), 1),
                    "peak_mib": round(sum(p["peak_mib"] for p in processes.values()), 1),
                    "per_process": processes,
                }
                print(f"  {side.name}: {json.dumps(figures['sides'][side.name])}", flush=True)
            sizes.append(figures)
    finally:
        await kube.close()
    return {
        "command": " ".join(sys.argv),
        "drivers": args.drivers,
        "setting": SETTING.name,
        "versions": {name: path.parent.name for name, path in ensure_sidecars().items()}
        if "sidecars" in args.sides
        else {},
        "sizes": sizes,
    }


def _versions() -> dict[str, str]:
    return {name: path.parent.name for name, path in ensure_sidecars().items()}


def table(result: dict[str, Any]) -> str:
    """Resident memory once settled (peak in brackets), MiB, per size."""
    columns = [("sidecars", "sidecars (sum)"), ("csi-provisioner", "external-provisioner")]
    columns += [("sidecarless", "Sidecarless"), ("sharded", "sharded (sum)"), ("#587", "#587 limit")]
    lines = ["  " + f"{'volumes':>8}" + "".join(f"{title:>24}" for _, title in columns)]
    for figures in result["sizes"]:
        sides = figures["sides"]
        cells = []
        for key, _ in columns:
            if key == "#587":
                cells.append(f"~{figures['volumes'] * REFERENCE_MIB_PER_VOLUME:.0f}")
                continue
            if key == "csi-provisioner":  # the largest, with several drivers
                ones = (sides.get("sidecars") or {}).get("per_process", {})
                found = [p for label, p in ones.items() if label.startswith(key)]
                process = max(found, key=lambda p: p["rss_mib"], default=None)
                cells.append(f"{process['rss_mib']:.0f} ({process['peak_mib']:.0f})" if process else "-")
                continue
            side = sides.get(key)
            cells.append(f"{side['rss_mib']:.0f} ({side['peak_mib']:.0f})" if side else "-")
        lines.append("  " + f"{figures['volumes']:>8}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000", help="volumes (each with a claim and a snapshot)")
    parser.add_argument("--drivers", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=3, help="replicas of the sharded side")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds each side gets before it is read")
    parser.add_argument("--sides", default="sidecars,sidecarless,sharded")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "memory_curve.json")
    args = parser.parse_args()
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    args.sides = set(args.sides.split(","))
    if "sidecars" in args.sides:
        ensure_sidecars()  # before the cluster: a cold build takes minutes
    options = cluster_options(args.drivers, audit_log=False)
    result, _ = on_a_local_cluster("memory", options, lambda cluster, work: run(args, cluster, work), args.out)
    print(f"\nresident MiB once settled (peak), {args.drivers} driver(s), a claim and a snapshot per volume:")
    print(table(result))


if __name__ == "__main__":
    main()
