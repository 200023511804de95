"""Soak: Sidecarless alone, waves of claims created, expanded, snapshotted and deleted, for
at least ten minutes and at least 1,000 claims. Its resident memory is sampled every 5 s:
a leak in a store, a cache or a queue shows as a rising line.

    make soak                                  # 10 waves of 100 claims, at least 10 minutes
    make soak CLAIMS=2000 MINUTES=30

Each wave is a full life (provision, attach, detach, expand, snapshot, unsnapshot,
delete) of `--wave` claims, every phase asking for all of them at once, so the stores,
queues and caches fill and empty again and again. At the end the driver must hold nothing
the waves made, and every wave must have converged; the figures (RSS at the end of the
first wave, at the end, the highest, per-wave times) print and go to a JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from bench.harness import cluster_options, on_a_local_cluster
from bench.proc import usage
from bench.side_by_side import wait_clean
from bench.sides import SETTINGS, SidecarlessSide
from bench.workload import PHASES, Workload, driver_name
from devcluster import LocalCluster
from devcluster.operator import REPO
from sidecarless.kube import Kube, connect

SAMPLE_SECONDS = 5.0


async def sample_memory(pid: int, samples: list[tuple[float, float]], started: float) -> None:
    while True:
        samples.append((round(time.monotonic() - started, 1), usage(pid).rss_mib))
        await asyncio.sleep(SAMPLE_SECONDS)


async def run(args: argparse.Namespace, cluster: LocalCluster, workdir: Path) -> dict[str, Any]:
    addresses = {driver_name(0): cluster.driver_addresses[driver_name(0)]}
    kube = Kube(await connect(str(cluster.kubeconfig)), qps=0, burst=1)
    workload = Workload(kube, args.wave, 1, timeout=600)
    side = SidecarlessSide(
        cluster.user_kubeconfig(SidecarlessSide.user), SETTINGS["defaults"], workdir, args.operator_env
    )
    samples: list[tuple[float, float]] = []
    waves: list[dict[str, float]] = []
    try:
        await workload.create_classes(addresses)
        before = await workload.backend(addresses)
        side.start()
        pid = side.pids()["sidecarless"]
        started = time.monotonic()
        sampler = asyncio.create_task(sample_memory(pid, samples, started))
        claims = 0
        after_first = 0.0
        while claims < args.claims or time.monotonic() - started < args.minutes * 60:
            wave: dict[str, float] = {}
            for phase in PHASES:
                result = await workload.run(phase)
                wave[phase] = result.summary()["seconds"]
            side.check_alive()
            claims += args.wave
            waves.append(wave)
            if len(waves) == 1:
                after_first = usage(pid).rss_mib
            print(
                f"[{time.monotonic() - started:6.0f} s] wave {len(waves)}: {claims} claims so far, "
                f"RSS {usage(pid).rss_mib:.1f} MiB; " + ", ".join(f"{k} {v:.1f}s" for k, v in wave.items()),
                flush=True,
            )
            workload.volumes.clear()
            await wait_clean(kube)
        sampler.cancel()
        end = usage(pid)
        left = sorted(await workload.backend(addresses) - before)
    finally:
        side.stop()
        await kube.close()
    return {
        "claims": claims,
        "waves": len(waves),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "rss_after_first_wave_mib": after_first,
        "rss_end_mib": end.rss_mib,
        "rss_peak_mib": end.peak_mib,
        "cpu_seconds": end.cpu_seconds,
        "left_on_the_driver": left,
        "per_wave_seconds": waves,
        "rss_samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=1000, help="at least this many claims in all")
    parser.add_argument("--minutes", type=float, default=10.0, help="and for at least this long")
    parser.add_argument("--wave", type=int, default=100, help="claims per wave")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for Sidecarless",
    )
    args = parser.parse_args()
    args.operator_env = dict(item.split("=", 1) for item in args.operator_env)
    options = cluster_options(1, audit_log=False)
    result, workdir = on_a_local_cluster("soak", options, lambda cluster, work: run(args, cluster, work), args.out)
    print(
        f"\n{result['claims']} claims in {result['waves']} waves over {result['minutes']} minutes; "
        f"RSS after the first wave {result['rss_after_first_wave_mib']:.1f} MiB, at the end "
        f"{result['rss_end_mib']:.1f} MiB, highest {result['rss_peak_mib']:.1f} MiB; "
        f"{result['cpu_seconds']:.0f} CPU s; left on the driver: {result['left_on_the_driver'] or 'nothing'}"
    )
    print(f"figures: {args.out}; logs: {workdir}")
    if result["left_on_the_driver"]:
        raise SystemExit("the driver holds volumes or snapshots the soak made")


if __name__ == "__main__":
    main()
