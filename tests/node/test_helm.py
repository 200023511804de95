"""`helm install` for real: the chart's two replicas run as pods from the image built from
the Dockerfile, on the pod network with the chart's defaults (in-cluster config through the
`kubernetes` Service), one leading by the Lease; `helm test` runs its pod; the leader's pod
deleted, the standby takes over; `helm upgrade` into the nodes' network (`hostNetwork`, one
replica per node) and `helm uninstall` work.

Figures (time to Ready, failover, RSS) are printed for docs/performance.md; nothing here
asserts a speed."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import LocalCluster, workloads
from devcluster.addresses import POD_NETWORK
from devcluster.images import MOCK_DRIVER_IMAGE
from devcluster.operator_image import OPERATOR_IMAGE, ensure_operator_image
from devcluster.workloads import CHART, chart_values, driver_endpoint
from sidecarless.kube import CSI_DRIVER, DRIVER_ENDPOINT, POD, PV, PVC, STORAGE_CLASS, Kube, Resource
from tests.e2e.conftest import claim, eventually, storage_class, wait_ready

pytestmark = pytest.mark.timeout(1800)

LEASE = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
DEPLOYMENT = Resource("apps", "v1", "deployments", "Deployment", True)
DAEMON_SET_RESOURCE = Resource("apps", "v1", "daemonsets", "DaemonSet", True)
MOCK = "mock.csi.sidecarless.dev"
MOCK_PORT = 10000
RELEASE = "sl"
# One namespace for every install: the kept CRD records the release's namespace, and a release
# elsewhere could not adopt it.
NAMESPACE = "sidecarless-system"
SELECTOR = workloads.operator_pods(RELEASE)


async def helm(cluster: LocalCluster, *args: str, timeout: float = 300) -> str:
    return await asyncio.to_thread(workloads.helm, cluster.kubeconfig, *args, timeout=timeout)


@pytest.fixture(scope="module")
def image(cluster: LocalCluster) -> str:
    cluster.import_image(ensure_operator_image())
    return OPERATOR_IMAGE


@pytest.fixture
async def installed(cluster: LocalCluster, kube: Kube, image: str) -> AsyncIterator[tuple[str, float]]:
    namespace = NAMESPACE
    started = time.monotonic()
    await helm(
        cluster,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        *chart_values(cluster.server),
    )
    try:
        pods = await ready_pods(kube, namespace, 2)
        took = time.monotonic() - started
        print(f"\nhelm install to both replicas Ready: {took:.1f}s on {sorted(p['spec']['nodeName'] for p in pods)}")
        yield namespace, took
    finally:
        await helm(cluster, "uninstall", RELEASE, "--namespace", namespace, "--wait")


async def ready_pods(kube: Kube, namespace: str, count: int, timeout: float = 180) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        pods = await kube.list(POD, namespace, label_selector=SELECTOR)
        ready = [p for p in pods if is_ready(p) and not p["metadata"].get("deletionTimestamp")]
        return ready if len(ready) == count else None

    found: list[dict[str, Any]] = await eventually(check, timeout=timeout, what=f"{count} operator pods Ready")
    return found


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def leader(kube: Kube, namespace: str) -> str:
    """The operator pod holding the Lease. Only a live pod of this release counts: the Lease
    outlives `helm uninstall`, so a new release first finds an earlier release's pod in it."""

    async def holder() -> str | None:
        lease = await kube.get_or_none(LEASE, "sidecarless-leader", namespace)
        holder: str | None = (lease or {}).get("spec", {}).get("holderIdentity")
        pods = await kube.list(POD, namespace, label_selector=SELECTOR)
        live = {p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")}
        return holder if holder in live else None

    name: str = await eventually(holder, timeout=60, what="a leader")
    return name


def rss_mib(cluster: LocalCluster, pod: dict[str, Any]) -> float:
    """The operator container's resident memory, read from its processes on the node."""
    node = next(n for n in cluster.real_nodes if n.name == pod["spec"]["nodeName"])
    kib = 0
    for pid in node.pod_pids(pod["metadata"]["uid"]):
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        kib += next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
    return kib / 1024


async def test_two_replicas_as_pods_one_leads_and_helm_test_passes(
    cluster: LocalCluster, kube: Kube, installed: tuple[str, float]
) -> None:
    namespace, _ = installed
    pods = await ready_pods(kube, namespace, 2)
    for pod in pods:
        [container] = pod["spec"]["containers"]
        assert container["image"] == OPERATOR_IMAGE
        assert not pod["spec"].get("hostNetwork"), "the chart's default: the pod network"
        assert ipaddress.ip_address(pod["status"]["podIP"]) in POD_NETWORK
    name = await leader(kube, namespace)
    assert name in {p["metadata"]["name"] for p in pods}
    for pod in pods:
        print(f"{pod['metadata']['name']} RSS {await asyncio.to_thread(rss_mib, cluster, pod):.1f} MiB")
    await helm(cluster, "test", RELEASE, "--namespace", namespace)


async def test_the_standby_takes_over_when_the_leaders_pod_is_deleted(kube: Kube, installed: tuple[str, float]) -> None:
    namespace, _ = installed
    first = await leader(kube, namespace)
    deleted = time.monotonic()
    await kube.delete(POD, first, namespace)

    async def taken_over() -> str | None:
        name = await leader(kube, namespace)
        return name if name != first else None

    second = await eventually(taken_over, timeout=60, what="the standby leading")
    print(f"\nleader pod deleted to {second} leading: {time.monotonic() - deleted:.1f}s")
    await ready_pods(kube, namespace, 2)  # the Deployment replaced the deleted pod


async def test_helm_upgrade_into_the_nodes_network_rolls_the_pods(
    cluster: LocalCluster, kube: Kube, installed: tuple[str, float]
) -> None:
    namespace, _ = installed
    before = {p["metadata"]["name"] for p in await ready_pods(kube, namespace, 2)}
    await helm(
        cluster,
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        *chart_values(cluster.server, host_network=True),
        "--set",
        "operator.logLevel=DEBUG",
    )

    async def rolled() -> list[dict[str, Any]] | None:
        pods = await ready_pods(kube, namespace, 2)
        return None if before & {p["metadata"]["name"] for p in pods} else pods

    pods = await eventually(rolled, timeout=240, what="both replicas replaced")
    assert all(p["spec"]["hostNetwork"] for p in pods)
    assert {p["spec"]["nodeName"] for p in pods} == {"worker-1", "worker-2"}, "host ports keep one replica per node"
    await leader(kube, namespace)


def mock_driver_deployment(node: str) -> dict[str, Any]:
    """The mock driver's controller as a pod in `node`'s network, on TCP: central mode."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mock-controller"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "mock-controller"}},
            "template": {
                "metadata": {"labels": {"app": "mock-controller"}},
                "spec": {
                    "hostNetwork": True,
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [
                        {
                            "name": "mock",
                            "image": MOCK_DRIVER_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "args": [f"--name={MOCK}", "--attach-limit=10000", "-v=3"],
                            "env": [{"name": "CSI_ENDPOINT", "value": f"tcp://0.0.0.0:{MOCK_PORT}"}],
                            "ports": [{"name": "csi", "containerPort": MOCK_PORT}],
                        }
                    ],
                },
            },
        },
    }


async def test_the_operator_in_pods_serves_a_driver_in_a_pod(
    cluster: LocalCluster, kube: Kube, installed: tuple[str, float]
) -> None:
    """Central mode, all of it as pods: the DriverEndpoint (TCP to the driver's pod on the other
    node's address, over the fabric) turns Ready, a claim is provisioned, and `helm uninstall`
    leaves the volume in place."""
    namespace, install_took = installed
    node = cluster.real_nodes[0]
    await kube.create(
        CSI_DRIVER,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": {"name": MOCK},
            "spec": {"attachRequired": True},
        },
    )
    await kube.create(DEPLOYMENT, mock_driver_deployment(node.name), namespace)
    started = time.monotonic()
    await kube.create(
        DRIVER_ENDPOINT, driver_endpoint("mock-in-a-pod", MOCK, f"dns:///{node.network.node_ip}:{MOCK_PORT}")
    )
    try:
        await wait_ready(kube, "mock-in-a-pod", timeout=120)
        took = time.monotonic() - started
        print(f"\nDriverEndpoint Ready {took:.1f}s after it was created (helm install took {install_took:.1f}s)")
        await kube.create(STORAGE_CLASS, storage_class("mock-in-a-pod", "mock-in-a-pod"))
        created = time.monotonic()
        await kube.create(PVC, claim("data", "mock-in-a-pod"), namespace)

        async def bound() -> dict[str, Any] | None:
            found = await kube.get(PVC, "data", namespace)
            return found if found.get("status", {}).get("phase") == "Bound" else None

        pvc = await eventually(bound, timeout=60, what="the claim Bound")
        print(f"PVC created to Bound: {time.monotonic() - created:.1f}s")
        volume = pvc["spec"]["volumeName"]
        assert (await kube.get(PV, volume))["spec"]["csi"]["driver"] == MOCK
        await helm(cluster, "uninstall", RELEASE, "--namespace", namespace, "--wait")
        assert (await kube.get(PVC, "data", namespace))["status"]["phase"] == "Bound"
        assert await kube.get_or_none(PV, volume) is not None, "helm uninstall must keep every volume"
        # Installed again, the operator takes the volume up where it was: deleting the claim deletes it.
        await helm(cluster, "install", RELEASE, str(CHART), "--namespace", namespace, *chart_values(cluster.server))
        await kube.delete(PVC, "data", namespace)

        async def deleted() -> bool:
            return await kube.get_or_none(PV, volume) is None

        await eventually(deleted, timeout=120, what="the volume deleted through the reinstalled operator")
    finally:
        await kube.delete(DRIVER_ENDPOINT, "mock-in-a-pod")
        await kube.delete(STORAGE_CLASS, "mock-in-a-pod")
        await kube.delete(CSI_DRIVER, MOCK)
        await kube.delete(DEPLOYMENT, "mock-controller", namespace)
