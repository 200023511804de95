"""`make demo`: Sidecarless as pods on a local cluster with real kubelet nodes, end to end.

Builds what it needs (Kubernetes, containerd, runc, the CNI plugins, pause, the mock driver,
helm, and the operator's image from the project's Dockerfile; not the real sidecars), starts
the control plane and two kubelet nodes, and `helm install`s the chart: two replicas, one
leading, and the node agent (`sidecarless node`) on every node. csi-test's mock driver runs
as a node plugin DaemonSet without sidecars (its node service behind driver_shim, registered
with kubelet by the agent, its livenessProbe on the agent; its controller service is the
backend).

`--mode embedded` (the default): the driver's controller Deployment of docs/deployment.md,
with the `sidecarless` container on the driver's unix socket, serves the driver; the chart's
replicas do snapshot-controller's half. `--mode central`: the chart's replicas serve the
driver over TCP. Then a StorageClass routed to the DriverEndpoint, a claim and a pod that
mounts it (kubelet stages and publishes), an expansion that kubelet finishes on the node, a
VolumeSnapshot restored into a second pod, `helm test`, and everything deleted again, with
the objects shown along the way. `--keep` (or SIDECARLESS_DEMO_KEEP=1) leaves the cluster
running and says how to reach it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devcluster import ClusterOptions, ClusterState, LocalCluster, build, workloads
from devcluster.operator_image import ensure_operator_image
from devcluster.workloads import (
    CHART,
    CONTROLLER_PORT,
    EMBEDDED_CONTROLLER,
    EMBEDDED_DRIVER,
    EMBEDDED_ENDPOINT,
    EMBEDDED_LEASE,
    EMBEDDED_NAMESPACE,
    MOCK_DRIVER,
    chart_values,
    embedded_controller,
    embedded_examples,
    embedded_rbac,
    pod_with_claim,
)
from sidecarless.cli import format_status
from sidecarless.kube import (
    CSI_DRIVER,
    CSI_NODE,
    DRIVER_ENDPOINT,
    POD,
    PV,
    PVC,
    STORAGE_CLASS,
    VOLUME_ATTACHMENT,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    Kube,
    Resource,
    connect,
)

NODES = ("worker-1", "worker-2")
RELEASE, OPERATOR_NAMESPACE = "sidecarless", "sidecarless-system"
CLASS, CLAIM, APP = "sidecarless-demo", "demo-data", "demo-app"
SNAPSHOT_CLASS, SNAPSHOT, RESTORED, RESTORED_APP = "sidecarless-demo", "demo-snapshot", "demo-restored", "demo-reader"
DAEMON_SET = Resource("apps", "v1", "daemonsets", "DaemonSet", True)
DEPLOYMENT = Resource("apps", "v1", "deployments", "Deployment", True)
RBAC = "rbac.authorization.k8s.io"
RBAC_RESOURCES = {
    "ServiceAccount": Resource("", "v1", "serviceaccounts", "ServiceAccount", True),
    "ClusterRoleBinding": Resource(RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    "Role": Resource(RBAC, "v1", "roles", "Role", True),
    "RoleBinding": Resource(RBAC, "v1", "rolebindings", "RoleBinding", True),
}


@dataclass(frozen=True)
class Mode:
    """Where the driver is served from, and the names that go with it."""

    name: str
    driver: str
    endpoint: str
    namespace: str  # the driver's


MODES = {
    "embedded": Mode("embedded", EMBEDDED_DRIVER, EMBEDDED_ENDPOINT, EMBEDDED_NAMESPACE),  # docs/deployment.md's
    "central": Mode("central", MOCK_DRIVER, "mock", "csi-mock"),
}
LEASE = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
NAMESPACE = Resource("", "v1", "namespaces", "Namespace", False)
RESIZE_PENDING = "FileSystemResizePending"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", default=os.environ.get("SIDECARLESS_DEMO_KEEP") == "1")
    parser.add_argument("--dir", type=Path, default=build.cache_root() / "clusters" / "demo")
    parser.add_argument("--mode", choices=sorted(MODES), default=os.environ.get("SIDECARLESS_DEMO_MODE") or "embedded")
    args = parser.parse_args()
    mode = MODES[args.mode]
    previous = ClusterState.load(args.dir)
    if previous is not None:
        previous.stop()  # a demo kept from an earlier run
    shutil.rmtree(args.dir, ignore_errors=True)

    started = time.monotonic()
    step("building what the demo runs (cached after the first run)")
    image = ensure_operator_image()
    step(f"starting the local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, {NODES}")
    options = ClusterOptions(nodes=(), drivers=(), kubelet_nodes=NODES, tied_to_parent=not args.keep)
    cluster = LocalCluster.start(args.dir, options)
    try:
        cluster.import_image(image)
        asyncio.run(demo(cluster, mode))
    except BaseException:
        print(f"\nthe demo failed; logs are in {args.dir / 'logs'} and {args.dir / 'nodes'}/*/logs", file=sys.stderr)
        cluster.stop()
        raise
    step(f"demo finished in {time.monotonic() - started:.1f}s")
    if args.keep:
        print(f"\nLeft running. kubeconfig: {cluster.kubeconfig}")
        print(f"  {build.ensure_kubectl()} --kubeconfig {cluster.kubeconfig} get pods,driverendpoints,pvc,pv -A")
        print("  stop it: make demo-down")
    else:
        cluster.stop()
    return 0


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


async def demo(cluster: LocalCluster, mode: Mode) -> None:
    kube = Kube(await connect(str(cluster.kubeconfig)), qps=0, burst=1)
    try:
        installed = await install(cluster, kube, mode)
        await node_plugin(kube, mode)
        backend = f"dns:///{worker(cluster).network.node_ip}:{CONTROLLER_PORT}"
        if mode.name == "embedded":
            await embedded(kube, backend)
        else:
            step(f"DriverEndpoint {mode.endpoint}: the chart's replicas reach the driver at {backend}")
            await kube.create(
                DRIVER_ENDPOINT,
                {
                    "apiVersion": "sidecarless.io/v1alpha1",
                    "kind": "DriverEndpoint",
                    "metadata": {"name": mode.endpoint},
                    "spec": {"driverName": mode.driver, "address": backend},
                },
            )
        await wait_until(lambda: endpoint_ready(kube, mode.endpoint), "DriverEndpoint Ready", timeout=180)
        step(f"DriverEndpoint {mode.endpoint} Ready {time.monotonic() - installed:.1f}s after helm install")
        await volume_life(cluster, kube, mode)
        step("helm test")
        print(await asyncio.to_thread(workloads.helm, cluster.kubeconfig, "test", RELEASE, "-n", OPERATOR_NAMESPACE))
        await clean_up(kube, mode)
    finally:
        await kube.close()


async def embedded(kube: Kube, backend: str) -> None:
    step(
        f"docs/deployment.md's embedded mode: Deployment {EMBEDDED_NAMESPACE}/{EMBEDDED_CONTROLLER} (the driver and "
        "the sidecarless container on its unix socket), its RBAC and its DriverEndpoint"
    )
    for document in embedded_rbac(RELEASE):  # the chart's ClusterRole is named after the release
        await kube.create(RBAC_RESOURCES[document["kind"]], document, document["metadata"].get("namespace"))
    await kube.create(DEPLOYMENT, embedded_controller(backend), EMBEDDED_NAMESPACE)
    await kube.create(DRIVER_ENDPOINT, embedded_examples()[("DriverEndpoint", EMBEDDED_ENDPOINT)])

    async def leading() -> bool:
        lease = await kube.get_or_none(LEASE, EMBEDDED_LEASE, EMBEDDED_NAMESPACE)
        return bool(((lease or {}).get("spec") or {}).get("holderIdentity"))

    await wait_until(leading, "an embedded replica leading", timeout=180)
    lease = await kube.get(LEASE, EMBEDDED_LEASE, EMBEDDED_NAMESPACE)
    step(f"{lease['spec']['holderIdentity']} leads by the Lease {EMBEDDED_NAMESPACE}/{EMBEDDED_LEASE}")


def worker(cluster: LocalCluster) -> Any:
    """The node whose mock instance is the backend: the mock keeps volumes in its own memory."""
    return cluster.real_nodes[0]


async def install(cluster: LocalCluster, kube: Kube, mode: Mode) -> float:
    # Embedded, the chart's replicas serve no endpoint of their own (the driver's pod serves
    # its own) and do snapshot-controller's half for the cluster.
    extra = {"operator.endpoints": "{none}"} if mode.name == "embedded" else {}
    serving = "snapshot-controller's half" if extra else "every DriverEndpoint"
    step(
        f"helm install {RELEASE} charts/sidecarless: two replicas from the image built from the Dockerfile "
        f"({serving}), and `sidecarless node` on every node"
    )
    installed = time.monotonic()
    await asyncio.to_thread(
        workloads.helm,
        cluster.kubeconfig,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        *chart_values(cluster.server, extra=extra),
    )

    async def both_ready() -> bool:
        pods = await kube.list(POD, OPERATOR_NAMESPACE, label_selector=workloads.operator_pods(RELEASE))
        return len([p for p in pods if is_ready(p)]) == 2

    await wait_until(both_ready, "both replicas Ready", timeout=180)
    lease = await kube.get(LEASE, "sidecarless-leader", OPERATOR_NAMESPACE)
    step(
        f"both replicas Ready {time.monotonic() - installed:.1f}s after helm install; "
        f"{lease['spec']['holderIdentity']} leads"
    )
    return installed


async def node_plugin(kube: Kube, mode: Mode) -> None:
    step(
        f"csi-test's mock driver as {mode.driver}: a DaemonSet in {mode.namespace} without sidecars, the chart's "
        "`sidecarless node` registering it with kubelet and serving its livenessProbe (worker-1's is the backend)"
    )
    await kube.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": mode.namespace}})
    await kube.create(CSI_DRIVER, workloads.csi_driver(mode.driver))
    created = time.monotonic()
    await kube.create(DAEMON_SET, workloads.mock_driver_daemon_set(driver=mode.driver), mode.namespace)

    async def registered() -> bool:
        for node in NODES:
            csinode = await kube.get_or_none(CSI_NODE, node)
            if not any(d["name"] == mode.driver for d in ((csinode or {}).get("spec") or {}).get("drivers") or []):
                return False
        return True

    await wait_until(registered, "the driver in every node's CSINode", timeout=180)
    took = time.monotonic() - created
    step(f"kubelet registered {mode.driver} on {', '.join(NODES)} {took:.1f}s after the DaemonSet")


async def volume_life(cluster: LocalCluster, kube: Kube, mode: Mode) -> None:
    node = worker(cluster).name
    step(f"StorageClass {CLASS}, annotated sidecarless.io/endpoint: {mode.endpoint}")
    await kube.create(
        STORAGE_CLASS,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": CLASS, "annotations": {"sidecarless.io/endpoint": mode.endpoint}},
            "provisioner": mode.driver,
            "reclaimPolicy": "Delete",
            "allowVolumeExpansion": True,
        },
    )
    step(f"PersistentVolumeClaim default/{CLAIM} (1Gi) and Pod default/{APP} on {node} writing to it")
    created = time.monotonic()
    await kube.create(PVC, claim_manifest(CLAIM, "1Gi"), "default")
    await kube.create(POD, pod_with_claim(APP, CLAIM, node, "echo hello > /data/greeting && sleep 3600"), "default")
    await wait_until(lambda: pod_running(kube, APP), f"pod {APP} Running", timeout=180)
    step(
        f"pod {APP} Running {time.monotonic() - created:.1f}s after the claim: provisioned, attached "
        "(ControllerPublish), staged and published by kubelet"
    )
    step(f"claim {CLAIM} asks for 2Gi")
    asked = time.monotonic()
    await kube.patch(PVC, CLAIM, {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}, "default")
    await wait_until(lambda: expanded_on_node(kube), "the expansion finished by kubelet", timeout=180)
    step(
        f"claim {CLAIM} is 2Gi {time.monotonic() - asked:.1f}s later: ControllerExpandVolume, "
        f"then NodeExpandVolume by kubelet (no {RESIZE_PENDING} left)"
    )
    await snapshot(kube, mode)
    step(f"PersistentVolumeClaim default/{RESTORED} from {SNAPSHOT}, and Pod default/{RESTORED_APP} reading it")
    restored = claim_manifest(RESTORED, "2Gi")
    restored["spec"]["dataSource"] = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": SNAPSHOT}
    await kube.create(PVC, restored, "default")
    await kube.create(POD, pod_with_claim(RESTORED_APP, RESTORED, node, "ls /data && sleep 3600"), "default")
    await wait_until(lambda: pod_running(kube, RESTORED_APP), f"pod {RESTORED_APP} Running", timeout=180)
    step(f"pod {RESTORED_APP} Running on the restored volume")
    show(cluster.kubeconfig, mode)
    print("$ sidecarless status")
    print(format_status(await kube.list(DRIVER_ENDPOINT)))


async def snapshot(kube: Kube, mode: Mode) -> None:
    step(f"VolumeSnapshotClass {SNAPSHOT_CLASS} and VolumeSnapshot default/{SNAPSHOT} of {CLAIM}")
    await kube.create(
        VOLUME_SNAPSHOT_CLASS,
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotClass",
            "metadata": {"name": SNAPSHOT_CLASS, "annotations": {"sidecarless.io/endpoint": mode.endpoint}},
            "driver": mode.driver,
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

    async def ready() -> bool:
        found = await kube.get(VOLUME_SNAPSHOT, SNAPSHOT, "default")
        return bool((found.get("status") or {}).get("readyToUse"))

    await wait_until(ready, f"VolumeSnapshot {SNAPSHOT} readyToUse")
    step("CreateSnapshot done: the VolumeSnapshot is bound to its content and readyToUse")


async def clean_up(kube: Kube, mode: Mode) -> None:
    step("deleting the pods, the claims and the snapshot")
    volumes = {(await kube.get(PVC, name, "default"))["spec"]["volumeName"] for name in (CLAIM, RESTORED)}
    for pod in (APP, RESTORED_APP):
        await kube.delete(POD, pod, "default")
    await kube.delete(VOLUME_SNAPSHOT, SNAPSHOT, "default")
    for claim in (CLAIM, RESTORED):
        await kube.delete(PVC, claim, "default")

    async def gone() -> bool:
        attachments = await kube.list(VOLUME_ATTACHMENT)
        pvs = [await kube.get_or_none(PV, volume) for volume in volumes]
        return not attachments and not any(pvs) and not await kube.list(VOLUME_SNAPSHOT, "default")

    deleted = time.monotonic()
    await wait_until(gone, "the volumes detached and deleted", timeout=180)
    took = time.monotonic() - deleted
    step(f"detached (ControllerUnpublish) and deleted (DeleteVolume, DeleteSnapshot) in {took:.1f}s")

    async def uncounted() -> bool:  # counts are written at most every 5 s
        counts = (await kube.get(DRIVER_ENDPOINT, mode.endpoint)).get("status", {}).get("counts") or {}
        return counts.get("volumes") == 0 and counts.get("attachments") == 0

    await wait_until(uncounted, "the DriverEndpoint counting no volumes", timeout=30)
    counts = (await kube.get(DRIVER_ENDPOINT, mode.endpoint))["status"]["counts"]
    print(f"DriverEndpoint {mode.endpoint} counts: {counts}")


def claim_manifest(name: str, size: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": CLASS,
            "resources": {"requests": {"storage": size}},
        },
    }


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.2)


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


async def endpoint_ready(kube: Kube, name: str) -> bool:
    conditions = (await kube.get(DRIVER_ENDPOINT, name)).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def pod_running(kube: Kube, name: str) -> bool:
    return bool((await kube.get(POD, name, "default")).get("status", {}).get("phase") == "Running")


async def expanded_on_node(kube: Kube) -> bool:
    status = (await kube.get(PVC, CLAIM, "default")).get("status") or {}
    pending = [c for c in status.get("conditions") or [] if c["type"] == RESIZE_PENDING]
    return status.get("capacity", {}).get("storage") == "2Gi" and not pending


def show(kubeconfig: Path, mode: Mode) -> None:
    kubectl = str(build.ensure_kubectl())
    for args in (
        ["get", "pods,pvc,pv,volumeattachments,driverendpoints", "-A", "-o", "wide"],
        ["get", "volumesnapshots,volumesnapshotcontents", "-A"],
        ["get", "driverendpoint", mode.endpoint, "-o", "jsonpath={.status}"],
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
