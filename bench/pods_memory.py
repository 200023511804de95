"""Resizer memory with many Pods in the cluster: Sidecarless beside the real external-resizer.

external-resizer keeps every Pod of the cluster in an informer so it can tell whether a
volume is in use after a driver answers FAILED_PRECONDITION (external-resizer #211).
Sidecarless keeps no Pods: it lists one namespace's Pods, a page at a time, only then.

On one fresh local cluster this starts both (external-resizer built from the module proxy,
on a driver of its own so the two never touch the same claims), measures each one's
resident memory, creates N Pods that mount a claim, waits, measures again, then makes
Sidecarless run its in-use check over all N Pods and measures its peak. It prints a table
and writes the figures as JSON.

    make bench-pods              # 5,000 Pods
    make bench-pods PODS=20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.harness import on_a_local_cluster
from bench.proc import usage
from devcluster import DriverSpec, LocalCluster
from devcluster.build import ensure_external_resizer
from devcluster.cluster import DEFAULT_DRIVERS, ClusterOptions
from devcluster.operator import REPO, OperatorProcess
from devcluster.procs import ManagedProcess
from sidecarless.kube import DRIVER_ENDPOINT, POD, PVC, STORAGE_CLASS, Kube, connect

OURS = "mock.csi.sidecarless.dev"
THEIRS = "mock-noattach.csi.sidecarless.dev"  # external-resizer's own driver: no claims of ours
OFFLINE = "mock-offline.csi.sidecarless.dev"  # answers FAILED_PRECONDITION once: the in-use check
NAMESPACE = "bench"


def memory(pid: int) -> dict[str, float]:
    """Resident and peak resident memory of a process, in MiB."""
    now = usage(pid)
    return {"rss_mib": now.rss_mib, "peak_mib": now.peak_mib}


def a_pod(index: int, claim: str) -> dict[str, Any]:
    """A Pod of about the size of a small real one (labels, env, resources, a claim)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"app-{index:06d}",
            "labels": {"app": "bench", "tier": "backend", "pod-template-hash": f"{index:010x}"},
            "annotations": {"example.com/owner": "team-storage", "example.com/revision": str(index)},
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.invalid/team/app:1.2.3",
                    "args": ["--listen=:8080", "--data=/data"],
                    "env": [{"name": f"SETTING_{n}", "value": f"value-{n}-{index}"} for n in range(8)],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


async def create_pods(kube: Kube, count: int, claim: str) -> float:
    started = time.monotonic()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            await kube.create(POD, a_pod(queue.get_nowait(), claim), NAMESPACE)

    await asyncio.gather(*(worker() for _ in range(32)))
    return time.monotonic() - started


async def bound(kube: Kube, name: str) -> dict[str, Any]:
    for _ in range(300):
        claim = await kube.get(PVC, name, NAMESPACE)
        if (claim.get("status") or {}).get("phase") == "Bound":
            return claim
        await asyncio.sleep(0.2)
    raise RuntimeError(f"claim {name} never Bound")


async def routed_claim(kube: Kube, cluster: LocalCluster, driver: str, name: str) -> None:
    endpoint = name + "-ep"
    await kube.create(
        DRIVER_ENDPOINT,
        {
            "apiVersion": "sidecarless.io/v1alpha1",
            "kind": "DriverEndpoint",
            "metadata": {"name": endpoint},
            "spec": {"driverName": driver, "address": cluster.driver_addresses[driver]},
        },
    )
    await kube.create(
        STORAGE_CLASS,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name, "annotations": {"sidecarless.io/endpoint": endpoint}},
            "provisioner": driver,
            "allowVolumeExpansion": True,
        },
    )
    await kube.create(
        PVC,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        NAMESPACE,
    )
    await bound(kube, name)


async def run(cluster: LocalCluster, workdir: Path, pods: int, settle: float) -> dict[str, Any]:
    kube = Kube(await connect(str(cluster.kubeconfig)), qps=0, burst=1)
    try:
        await kube.request(
            "POST",
            "/api/v1/namespaces",
            body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        )
        for path in sorted((REPO / "crds").glob("*.yaml")):
            cluster.rest.create(yaml.safe_load(path.read_text()))
        cluster.wait_crds_served([yaml.safe_load(p.read_text()) for p in (REPO / "crds").glob("*.yaml")])

        operator = OperatorProcess(cluster.kubeconfig, workdir, env={"SIDECARLESS_LOG_LEVEL": "INFO"})
        operator.start()
        assert operator.process is not None
        ours = operator.process.pid
        resizer = ManagedProcess(
            "external-resizer",
            [
                str(ensure_external_resizer()),
                f"--csi-address={cluster.driver_addresses[THEIRS].removeprefix('unix://')}",
                f"--kubeconfig={cluster.kubeconfig}",
                "--leader-election=false",
                "--handle-volume-inuse-error=true",
                "-v=2",
            ],
            workdir / "external-resizer.log",
        )
        resizer.start(tied_to_parent=True)
        await routed_claim(kube, cluster, OURS, "data")
        await routed_claim(kube, cluster, OFFLINE, "offline")
        await asyncio.sleep(settle)
        figures: dict[str, Any] = {"before": {"sidecarless": memory(ours), "external-resizer": memory(resizer.pid)}}

        seconds = await create_pods(kube, pods, "data")
        sample = json.dumps(a_pod(0, "data"))
        await asyncio.sleep(settle)
        figures["with_pods"] = {"sidecarless": memory(ours), "external-resizer": memory(resizer.pid)}

        # The in-use check over every Pod of the namespace: expand the claim no Pod uses on
        # a driver that first says FAILED_PRECONDITION.
        await kube.patch(PVC, "offline", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}, NAMESPACE)
        for _ in range(600):
            claim = await kube.get(PVC, "offline", NAMESPACE)
            if ((claim.get("status") or {}).get("capacity") or {}).get("storage") == "2Gi":
                break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError("the in-use check never let the expansion through")
        figures["after_in_use_check"] = {"sidecarless": memory(ours)}
        resizer.check_alive()
        resizer.stop()
        operator.stop()
        return {
            "pods": pods,
            "pod_json_bytes": len(sample),
            "pod_create_seconds": round(seconds, 1),
            "settle_seconds": settle,
            "machine": f"{platform.machine()} {platform.system()} {platform.release()}, {os.cpu_count()} CPUs",
            "python": sys.version.split()[0],
            "memory": figures,
        }
    finally:
        await kube.close()


def table(result: dict[str, Any]) -> str:
    rows = [f"{'phase':<22}{'process':<20}{'RSS MiB':>10}{'peak MiB':>10}"]
    for phase, sides in result["memory"].items():
        for side, values in sides.items():
            rows.append(f"{phase:<22}{side:<20}{values['rss_mib']:>10}{values['peak_mib']:>10}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to let watches catch up")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pods_memory.json")
    args = parser.parse_args()
    offline = DriverSpec(
        OFFLINE,
        hooks={
            "globals": "calls = 0;",
            "controllerExpandVolumeStart": "calls++; calls == 1 ? FAILEDPRECONDITION : OK;",
        },
    )
    options = ClusterOptions(drivers=(*DEFAULT_DRIVERS, offline))
    result, _ = on_a_local_cluster(
        "bench", options, lambda cluster, work: run(cluster, work, args.pods, args.settle), args.out
    )
    print(f"{result['pods']} Pods of {result['pod_json_bytes']} bytes each, created in {result['pod_create_seconds']}s")
    print(table(result))
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
