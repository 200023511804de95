"""`helm install` for real: the chart's two replicas run as pods from the image built from
the Dockerfile, one on each node, one leading by the Lease; `helm test` runs its pod; the
leader's pod deleted, the standby takes over; `helm upgrade` and `helm uninstall` work.

Figures (time to Ready, failover, RSS) are printed for docs/performance.md; nothing here
asserts a speed."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import LocalCluster, build
from devcluster.operator_image import OPERATOR_IMAGE, ensure_operator_image
from sidecarless.kube import POD, Kube, Resource
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.timeout(1800)

CHART = Path(__file__).resolve().parents[2] / "charts" / "sidecarless"
LEASE = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
RELEASE = "sl"
# One namespace for every install: the kept CRD records the release's namespace, and a release
# elsewhere could not adopt it.
NAMESPACE = "sidecarless-system"
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"


async def helm(cluster: LocalCluster, *args: str, timeout: float = 300) -> str:
    argv = [str(build.ensure_helm()), "--kubeconfig", str(cluster.kubeconfig), *args]
    result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, check=False, timeout=timeout)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def release_values(cluster: LocalCluster) -> list[str]:
    repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
    port = cluster.server.rsplit(":", 1)[1]
    values = {
        "image.repository": repository,
        "image.tag": tag,
        "hostNetwork": "true",
        "apiServer.host": "127.0.0.1",  # the node's loopback, where its API relay listens
        "apiServer.port": port,
        "operator.logFormat": "text",
    }
    return [item for key, value in values.items() for item in ("--set", f"{key}={value}")]


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
        *release_values(cluster),
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
    async def holder() -> str | None:
        lease = await kube.get_or_none(LEASE, "sidecarless-leader", namespace)
        holder: str | None = (lease or {}).get("spec", {}).get("holderIdentity")
        return holder

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
    assert {p["spec"]["nodeName"] for p in pods} == {"worker-1", "worker-2"}, "host ports keep one replica per node"
    for pod in pods:
        [container] = pod["spec"]["containers"]
        assert container["image"] == OPERATOR_IMAGE
        assert pod["spec"]["hostNetwork"] is True
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


async def test_helm_upgrade_rolls_the_pods(cluster: LocalCluster, kube: Kube, installed: tuple[str, float]) -> None:
    namespace, _ = installed
    before = {p["metadata"]["name"] for p in await ready_pods(kube, namespace, 2)}
    await helm(
        cluster,
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        *release_values(cluster),
        "--set",
        "operator.logLevel=DEBUG",
    )

    async def rolled() -> bool:
        pods = await ready_pods(kube, namespace, 2)
        return not before & {p["metadata"]["name"] for p in pods}

    await eventually(rolled, timeout=240, what="both replicas replaced")
    await leader(kube, namespace)
