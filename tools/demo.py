"""`make demo`: Sidecarless provisioning a volume on a local cluster, end to end.

Builds what it needs, starts the local control plane with the csi-test mock driver,
installs the CRD, runs the operator, declares a DriverEndpoint, routes a StorageClass to
it, creates a PVC, waits for it to be Bound, attaches it to a Pod, expands it, takes a
VolumeSnapshot and restores it into a new PVC, shows the objects, then tears everything
down. `--keep` (or SIDECARLESS_DEMO_KEEP=1) leaves it running and says how to reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from kubernetes_asyncio.client.api_client import ApiClient

from devcluster import ClusterOptions, ClusterState, LocalCluster
from devcluster.build import cache_root
from devcluster.operator import REPO, OperatorProcess
from sidecarless.cli import format_status
from sidecarless.kube import (
    DRIVER_ENDPOINT,
    PVC,
    STORAGE_CLASS,
    VOLUME_ATTACHMENT,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    Kube,
    Resource,
    load_configuration,
)

DRIVER = "mock.csi.sidecarless.dev"
ENDPOINT, CLASS, CLAIM, POD = "mock", "sidecarless-demo", "demo-data", "demo-app"
SNAPSHOT_CLASS, SNAPSHOT, RESTORED = "sidecarless-demo", "demo-snapshot", "demo-restored"
POD_RESOURCE = Resource("", "v1", "pods", "Pod", True)
SERVICE_ACCOUNT = Resource("", "v1", "serviceaccounts", "ServiceAccount", True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", default=os.environ.get("SIDECARLESS_DEMO_KEEP") == "1")
    parser.add_argument("--dir", type=Path, default=cache_root() / "clusters" / "demo")
    args = parser.parse_args()
    previous = ClusterState.load(args.dir)
    if previous is not None:
        previous.stop()  # a demo kept from an earlier run
    shutil.rmtree(args.dir, ignore_errors=True)

    started = time.monotonic()
    step("starting the local cluster (etcd, kube-apiserver, kube-controller-manager, mock CSI driver)")
    cluster = LocalCluster.start(args.dir, ClusterOptions(tied_to_parent=not args.keep))
    operator = OperatorProcess(cluster.kubeconfig, args.dir / "logs")
    try:
        step("installing the DriverEndpoint CRD")
        crds = [yaml.safe_load(path.read_text()) for path in sorted((REPO / "crds").glob("*.yaml"))]
        for crd in crds:
            cluster.rest.create(crd)
        cluster.wait_crds_served(crds)
        step("starting the operator: python -m sidecarless run")
        operator.start(tied_to_parent=not args.keep)
        cluster.processes.append(operator.process)  # type: ignore[arg-type]
        cluster.save_state()
        bound_after = asyncio.run(provision(cluster.kubeconfig, cluster.driver_addresses[DRIVER]))
        step(f"claim {CLAIM} Bound {bound_after:.1f}s after it was created")
        show(cluster.kubeconfig)
    except BaseException:
        print(f"\nthe demo failed; logs are in {args.dir / 'logs'}", file=sys.stderr)
        operator.stop()
        cluster.stop()
        raise
    step(f"demo finished in {time.monotonic() - started:.1f}s")
    if args.keep:
        print(f"\nLeft running. kubeconfig: {cluster.kubeconfig}")
        print(f"  kubectl --kubeconfig {cluster.kubeconfig} get driverendpoints,pvc,pv -A")
        print(f"  operator log: {args.dir / 'logs' / 'operator-1.log'}")
        print("  stop it: make demo-down")
    else:
        operator.stop()
        cluster.stop()
    return 0


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


async def provision(kubeconfig: Path, address: str) -> float:
    kube = Kube(ApiClient(await load_configuration(str(kubeconfig))), qps=0, burst=1)
    try:
        step(f"DriverEndpoint {ENDPOINT}: driver {DRIVER} at {address}")
        await kube.create(
            DRIVER_ENDPOINT,
            {
                "apiVersion": "sidecarless.io/v1alpha1",
                "kind": "DriverEndpoint",
                "metadata": {"name": ENDPOINT},
                "spec": {"driverName": DRIVER, "address": address},
            },
        )
        await wait_until(lambda: endpoint_ready(kube), "DriverEndpoint Ready")
        step(f"DriverEndpoint {ENDPOINT} is Ready")
        step(f"StorageClass {CLASS}, annotated sidecarless.io/endpoint: {ENDPOINT}")
        await kube.create(
            STORAGE_CLASS,
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": CLASS, "annotations": {"sidecarless.io/endpoint": ENDPOINT}},
                "provisioner": DRIVER,
                "reclaimPolicy": "Delete",
                "allowVolumeExpansion": True,
            },
        )
        step(f"PersistentVolumeClaim default/{CLAIM} (1Gi)")
        created = time.monotonic()
        await kube.create(
            PVC,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": CLAIM},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": CLASS,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
            "default",
        )
        await wait_until(lambda: claim_bound(kube), f"claim {CLAIM} Bound")
        bound_after = time.monotonic() - created
        await wait_until(lambda: volumes_counted(kube), "DriverEndpoint status counting the volume")
        step(f"Pod default/{POD} on node-1 uses the claim: kube-controller-manager asks for an attachment")
        await wait_until(lambda: service_account_ready(kube), "default ServiceAccount")
        await kube.create(
            POD_RESOURCE,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": POD},
                "spec": {
                    "nodeName": "node-1",
                    "containers": [{"name": "app", "image": "registry.invalid/demo:1"}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}],
                },
            },
            "default",
        )
        await wait_until(lambda: attached(kube), "VolumeAttachment attached")
        step("ControllerPublishVolume done: the VolumeAttachment is attached")
        step(f"PersistentVolumeClaim default/{CLAIM} asks for 2Gi")
        await kube.patch(PVC, CLAIM, {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}, "default")
        await wait_until(lambda: claim_expanded(kube), f"claim {CLAIM} expanded to 2Gi")
        step("ControllerExpandVolume done: the PV and the claim say 2Gi")
        await snapshot_and_restore(kube)
        print("\n$ sidecarless status")
        print(format_status(await kube.list(DRIVER_ENDPOINT)))
        return bound_after
    finally:
        await kube.close()


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def endpoint_ready(kube: Kube) -> bool:
    conditions = (await kube.get(DRIVER_ENDPOINT, ENDPOINT)).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def service_account_ready(kube: Kube) -> bool:
    return await kube.get_or_none(SERVICE_ACCOUNT, "default", "default") is not None


async def attached(kube: Kube) -> bool:
    return any((a.get("status") or {}).get("attached") for a in await kube.list(VOLUME_ATTACHMENT))


async def claim_bound(kube: Kube, name: str = CLAIM) -> bool:
    return bool((await kube.get(PVC, name, "default")).get("status", {}).get("phase") == "Bound")


async def snapshot_and_restore(kube: Kube) -> None:
    step(f"VolumeSnapshotClass {SNAPSHOT_CLASS} and VolumeSnapshot default/{SNAPSHOT} of {CLAIM}")
    await kube.create(
        VOLUME_SNAPSHOT_CLASS,
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotClass",
            "metadata": {"name": SNAPSHOT_CLASS},
            "driver": DRIVER,
            "deletionPolicy": "Delete",
        },
    )
    await kube.create(
        VOLUME_SNAPSHOT,
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": SNAPSHOT},
            "spec": {"volumeSnapshotClassName": SNAPSHOT_CLASS, "source": {"persistentVolumeClaimName": CLAIM}},
        },
        "default",
    )
    await wait_until(lambda: snapshot_ready(kube), f"VolumeSnapshot {SNAPSHOT} readyToUse")
    step("CreateSnapshot done: the VolumeSnapshot is bound to its content and readyToUse")
    step(f"PersistentVolumeClaim default/{RESTORED} restored from {SNAPSHOT}")
    await kube.create(
        PVC,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": RESTORED},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": CLASS,
                "resources": {"requests": {"storage": "2Gi"}},
                "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": SNAPSHOT},
            },
        },
        "default",
    )
    await wait_until(lambda: claim_bound(kube, RESTORED), f"claim {RESTORED} Bound")
    step("CreateVolume from the snapshot done: the restored claim is Bound")


async def snapshot_ready(kube: Kube) -> bool:
    return bool(((await kube.get(VOLUME_SNAPSHOT, SNAPSHOT, "default")).get("status") or {}).get("readyToUse"))


async def claim_expanded(kube: Kube) -> bool:
    capacity = ((await kube.get(PVC, CLAIM, "default")).get("status") or {}).get("capacity") or {}
    return bool(capacity.get("storage") == "2Gi")


async def volumes_counted(kube: Kube) -> bool:
    return bool((await kube.get(DRIVER_ENDPOINT, ENDPOINT)).get("status", {}).get("counts", {}).get("volumes") == 1)


def show(kubeconfig: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("(kubectl is not installed; skipping its views)")
        return
    for args in (
        ["get", "driverendpoints,pvc,pv,volumeattachments,volumesnapshots,volumesnapshotcontents", "-A", "-o", "wide"],
        ["get", "driverendpoint", ENDPOINT, "-o", "jsonpath={.status}"],
    ):
        print(f"\n$ kubectl {' '.join(args)}")
        output = subprocess.run(
            [kubectl, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, check=False
        )
        text = output.stdout or output.stderr
        if args[-1].startswith("jsonpath"):
            text = yaml.safe_dump(yaml.safe_load(text) or {}, sort_keys=False)
        print(text)


if __name__ == "__main__":
    sys.exit(main())
