"""What JSON costs kube-apiserver, against the protobuf every sidecar asks for.

The sidecars set `ContentType = application/vnd.kubernetes.protobuf` for core objects;
kubernetes-asyncio speaks JSON only. This measures kube-apiserver's CPU seconds for the same
reads and the same watched writes in each format, on one local cluster, alternating formats
over several rounds:

- reads: GET of 100 PersistentVolumes, `--gets` times in all, 8 at a time;
- watch: one watch on PersistentVolumes in the format, while 100 PVs are patched
  `--patches` times in all (the patches are JSON both times; only the watch's format differs).

    python -m bench.wire_format            # make bench-wire

It answers "is a request of Sidecarless dearer for the API server than one of the sidecars",
which the side-by-side benchmark's kube-apiserver CPU figures raise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client.api_client import ApiClient

from bench.harness import cluster_options, on_a_local_cluster
from bench.proc import usage
from devcluster import LocalCluster
from devcluster.operator import REPO
from sidecarless.kube import PV, Kube, Transport, load_configuration

FORMATS = {"json": "application/json", "protobuf": "application/vnd.kubernetes.protobuf"}
VOLUMES = 100
CONCURRENCY = 8


def volume(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"wire-{index}", "labels": {"bench": "wire"}},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "csi": {"driver": "wire.csi.sidecarless.dev", "volumeHandle": f"handle-{index}", "fsType": "ext4"},
        },
    }


async def call(api: ApiClient, method: str, path: str, accept: str, body: Any = None, **options: Any) -> Any:
    response = await api.call_api(
        path,
        method,
        header_params={"Accept": accept, "Content-Type": "application/merge-patch+json"},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
        **options,
    )
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: HTTP {response.status}")
    return response


async def reads(api: ApiClient, accept: str, total: int) -> None:
    names = iter([f"wire-{i % VOLUMES}" for i in range(total)])

    async def worker() -> None:
        for name in names:
            response = await call(api, "GET", PV.path(name), accept)
            await response.read()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def watched_writes(api: ApiClient, accept: str, total: int) -> None:
    stream_type = accept + (";stream=watch" if "protobuf" in accept else "")
    query = [("watch", "true"), ("labelSelector", "bench=wire")]
    watch = await call(api, "GET", PV.path(), stream_type, query_params=query, _request_timeout=600)
    received = 0

    async def drain() -> None:
        nonlocal received
        async for chunk in watch.content.iter_any():
            received += len(chunk)

    reader = asyncio.create_task(drain())
    await asyncio.sleep(1)  # the initial ADDED events go by before the measured writes
    counter = iter(range(total))

    async def worker() -> None:
        for number in counter:
            patch = {"metadata": {"annotations": {"wire": str(number)}}}
            response = await call(api, "PATCH", PV.path(f"wire-{number % VOLUMES}"), "application/json", patch)
            await response.read()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    await asyncio.sleep(1)  # the last events reach the watch
    reader.cancel()
    watch.close()


async def run(args: argparse.Namespace, cluster: LocalCluster) -> dict[str, Any]:
    apiserver = next(p.pid for p in cluster.processes if p.name == "kube-apiserver")
    api = ApiClient(await load_configuration(str(cluster.kubeconfig)))
    kube = Kube(await Transport.of(api.configuration), qps=0, burst=1)
    results: dict[str, dict[str, list[float]]] = {"reads": {}, "watched_writes": {}}
    try:
        for index in range(VOLUMES):
            await kube.create(PV, volume(index))
        tests = (("reads", reads, args.gets), ("watched_writes", watched_writes, args.patches))
        for _ in range(args.rounds):
            for name, accept in FORMATS.items():
                for test, action, count in tests:
                    before = usage(apiserver).cpu_seconds
                    await action(api, accept, count)
                    spent = usage(apiserver).cpu_seconds - before
                    results[test].setdefault(name, []).append(round(spent, 2))
                    print(f"{test} {name}: {spent:.2f} CPU s", flush=True)
    finally:
        for index in range(VOLUMES):
            await kube.delete(PV, f"wire-{index}")
        await api.close()
        await kube.close()
    medians = {test: {name: statistics.median(v) for name, v in by.items()} for test, by in results.items()}
    return {"gets": args.gets, "patches": args.patches, "rounds": args.rounds, "medians": medians, "all": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=5000)
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "wire_format.json")
    args = parser.parse_args()
    options = cluster_options(0, audit_log=False)
    result, _ = on_a_local_cluster("wire", options, lambda cluster, _: run(args, cluster), args.out)
    for test, by in result["medians"].items():
        ratio = by["json"] / by["protobuf"] if by["protobuf"] else float("nan")
        print(f"{test}: kube-apiserver CPU s, JSON {by['json']:.2f}, protobuf {by['protobuf']:.2f}, ratio {ratio:.2f}")
    print(f"figures: {args.out}")


if __name__ == "__main__":
    main()
