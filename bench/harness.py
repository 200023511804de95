"""What every benchmark script does around its own work: a fresh local cluster, figures as JSON."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.workload import driver_name
from devcluster import ClusterOptions, DriverSpec, LocalCluster
from devcluster.operator import REPO


def cluster_options(drivers: int, *, audit_log: bool) -> ClusterOptions:
    """A benchmark's cluster: its mock drivers, our CRDs, and a kube-controller-manager fast
    enough (1000/2000 QPS) that its binder and attach/detach controller hold no side back."""
    return ClusterOptions(
        drivers=tuple(DriverSpec(driver_name(i)) for i in range(drivers)),
        controller_manager_qps=1000,
        controller_manager_burst=2000,
        audit_log=audit_log,
        extra_crds=tuple(sorted((REPO / "crds").glob("*.yaml"))),
    )


def on_a_local_cluster(
    name: str,
    options: ClusterOptions,
    work: Callable[[LocalCluster, Path], Coroutine[Any, Any, dict[str, Any]]],
    out: Path,
) -> tuple[dict[str, Any], Path]:
    """Start a cluster in a new folder under /tmp, run `work` on it, stop it, write the figures
    `work` returns to `out`; returns them and the folder (its logs)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"slc-{name}-", dir="/tmp"))
    cluster = LocalCluster.start(workdir / "cluster", options)
    try:
        result = asyncio.run(work(cluster, workdir))
    finally:
        cluster.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result, workdir
