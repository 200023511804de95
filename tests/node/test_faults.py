"""Faults as pods meet them: the driver's controller pod dies in the middle of provisioning,
after the backend made the volume and before the operator heard of it. The claim must still
be Bound exactly once, to the volume the backend made, with nothing left over (the backend's
own call log is the witness)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.node import RealNode
from devcluster.operator_image import OPERATOR_IMAGE
from devcluster.workloads import (
    CHART,
    CONTROLLER_PORT,
    MOCK_DRIVER,
    SHIM,
    chart_values,
    csi_driver,
    driver_endpoint,
    host_path,
    mock_driver_daemon_set,
)
from sidecarless.kube import CSI_DRIVER, DRIVER_ENDPOINT, POD, PV, PVC, STORAGE_CLASS, Kube
from tests.e2e.conftest import claim, eventually, storage_class, wait_ready
from tests.node.test_helm import (  # noqa: F401 - fixtures
    DAEMON_SET_RESOURCE,
    DEPLOYMENT,
    RELEASE,
    SELECTOR,
    helm,
    image,
    installed,
)

pytestmark = pytest.mark.timeout(1800)

SLOW_PORT = CONTROLLER_PORT + 1
HOLD_SECONDS = 8


def slow_controller(node: str) -> dict[str, Any]:
    """The driver's controller pod: driver_shim on the node's address, in front of the mock's
    controller (the backend, which outlives this pod), holding every CreateVolume answer back."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "slow-controller"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "slow-controller"}},
            "template": {
                "metadata": {"labels": {"app": "slow-controller"}},
                "spec": {
                    "hostNetwork": True,
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "shim",
                            "image": OPERATOR_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["python3", "-I", "/shim/driver_shim.py"],
                            "args": [
                                f"--listen=dns:///0.0.0.0:{SLOW_PORT}",
                                f"--backend=dns:///127.0.0.1:{CONTROLLER_PORT}",
                                f"--hold-create-volume-answers={HOLD_SECONDS}",
                            ],
                            "volumeMounts": [{"name": "shim", "mountPath": "/shim/driver_shim.py", "readOnly": True}],
                        }
                    ],
                    "volumes": [host_path("shim", str(SHIM), "File")],
                },
            },
        },
    }


def container_logs(node: RealNode, pods: list[dict[str, Any]], container: str) -> str:
    return "\n".join(
        node.container_log(p["metadata"]["namespace"], p["metadata"]["name"], p["metadata"]["uid"], container)
        for p in pods
    )


def created_volume_ids(mock_log: str) -> set[str]:
    """The volumes the mock answered CreateVolume with, from its `gRPCCall: {json}` lines."""
    found = set()
    for line in mock_log.splitlines():
        if "gRPCCall: " not in line:
            continue
        call = json.loads(line.split("gRPCCall: ", 1)[1])
        if call["Method"].endswith("/CreateVolume") and call.get("Response"):
            found.add(call["Response"]["volume"]["volume_id"])
    return found


async def test_the_driver_pod_restarted_mid_provisioning(
    cluster: LocalCluster,
    kube: Kube,
    installed: tuple[str, float],  # noqa: F811
) -> None:
    namespace, _ = installed
    node = cluster.real_nodes[0]
    await kube.create(CSI_DRIVER, csi_driver())
    await kube.create(DAEMON_SET_RESOURCE, mock_driver_daemon_set(), namespace)
    await kube.create(DEPLOYMENT, slow_controller(node.name), namespace)
    await kube.create(
        DRIVER_ENDPOINT, driver_endpoint("slow", MOCK_DRIVER, f"dns:///{node.network.node_ip}:{SLOW_PORT}")
    )
    try:
        await wait_ready(kube, "slow", timeout=120)
        await kube.create(STORAGE_CLASS, storage_class("slow", "slow"))
        await kube.create(PVC, claim("data", "slow"), namespace)
        [first] = await kube.list(POD, namespace, label_selector="app=slow-controller")

        async def held() -> bool:
            return "holding CreateVolume answer" in container_logs(node, [first], "shim")

        await eventually(held, timeout=60, what="CreateVolume made by the backend, its answer held")
        killed = time.monotonic()
        await kube.delete(POD, first["metadata"]["name"], namespace)

        async def bound() -> dict[str, Any] | None:
            found = await kube.get(PVC, "data", namespace)
            return found if found.get("status", {}).get("phase") == "Bound" else None

        found = await eventually(bound, timeout=180, what="the claim Bound after the driver pod's restart")
        print(f"\ndriver pod deleted mid-CreateVolume to the claim Bound: {time.monotonic() - killed:.1f}s")
        volume = await kube.get(PV, found["spec"]["volumeName"])
        pvs = [v for v in await kube.list(PV) if (v["spec"].get("claimRef") or {}).get("name") == "data"]
        assert len(pvs) == 1
        [mock] = [
            p
            for p in await kube.list(POD, namespace, label_selector="app=mock-driver")
            if p["spec"]["nodeName"] == node.name
        ]
        made = created_volume_ids(container_logs(node, [mock], "mock"))
        assert made == {volume["spec"]["csi"]["volumeHandle"]}, f"the backend made {made}"
        controllers = await kube.list(POD, namespace, label_selector="app=slow-controller")
        assert first["metadata"]["uid"] not in {p["metadata"]["uid"] for p in controllers}
        await kube.delete(PVC, "data", namespace)

        async def deleted() -> bool:
            return await kube.get_or_none(PV, volume["metadata"]["name"]) is None

        await eventually(deleted, timeout=120, what="the volume deleted")
    finally:
        await kube.delete(DRIVER_ENDPOINT, "slow")
        await kube.delete(STORAGE_CLASS, "slow")
        await kube.delete(DEPLOYMENT, "slow-controller", namespace)
        await kube.delete(DAEMON_SET_RESOURCE, "mock-driver", namespace)
        await kube.delete(CSI_DRIVER, MOCK_DRIVER)


# Measured here (2026-12-04, one HTTP/2 connection to the API server): under 64 MiB the
# leader serves all 600 claims; under 56 MiB it is killed near the end (595 Bound), under
# 52 MiB in the middle (114 Bound), which is the case this test is for.
OOM_LIMIT = "52Mi"
OOM_CLAIMS = 600


def memory_peak_mib(node: RealNode, pod: dict[str, Any]) -> float:
    """The highest memory use the pod's container cgroup saw (cgroup v1 max_usage_in_bytes)."""
    peak = 0
    for pid in node.pod_pids(pod["metadata"]["uid"]):
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                usage = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.max_usage_in_bytes"
                if usage.exists():
                    peak = max(peak, int(usage.read_text()))
    return peak / 2**20


def limits(memory: str) -> dict[str, str]:
    return {"replicaCount": "1", "resources.limits.memory": memory, "resources.requests.memory": memory}


async def test_the_operator_oom_killed_under_a_low_limit_converges(
    cluster: LocalCluster,
    kube: Kube,
    installed: tuple[str, float],  # noqa: F811
) -> None:
    """The operator's container killed by the kernel, as often as it takes, in the middle of
    provisioning 600 claims; the administrator then raises the limit. Every claim is Bound to
    exactly one volume, and the backend made no volume that no PV holds."""
    namespace, _ = installed
    node = cluster.real_nodes[0]
    upgrade = ("upgrade", RELEASE, str(CHART), "-n", namespace)
    await helm(cluster, *upgrade, *chart_values(cluster.server, extra=limits(OOM_LIMIT)))
    await kube.create(CSI_DRIVER, csi_driver())
    await kube.create(DAEMON_SET_RESOURCE, mock_driver_daemon_set(), namespace)
    await kube.create(
        DRIVER_ENDPOINT, driver_endpoint("oom", MOCK_DRIVER, f"dns:///{node.network.node_ip}:{CONTROLLER_PORT}")
    )
    try:
        await wait_ready(kube, "oom", timeout=120)
        await kube.create(STORAGE_CLASS, storage_class("oom", "oom"))
        started = time.monotonic()
        for first in range(0, OOM_CLAIMS, 50):
            batch = range(first, min(first + 50, OOM_CLAIMS))
            await asyncio.gather(*(kube.create(PVC, claim(f"c{i}", "oom"), namespace) for i in batch))

        async def oom_killed() -> str | None:
            for pod in await kube.list(POD, namespace, label_selector=SELECTOR):
                for status in pod.get("status", {}).get("containerStatuses") or []:
                    terminated = (status.get("lastState") or {}).get("terminated") or {}
                    if terminated.get("reason") == "OOMKilled":
                        return str(pod["metadata"]["name"])
            return None

        killed = await eventually(oom_killed, timeout=300, what=f"the operator OOM-killed under {OOM_LIMIT}")
        bound_then = sum(1 for c in await kube.list(PVC, namespace) if c.get("status", {}).get("phase") == "Bound")
        print(f"\n{killed} OOM-killed {time.monotonic() - started:.1f}s after the claims, {bound_then} Bound by then")
        raised = time.monotonic()
        await helm(cluster, *upgrade, *chart_values(cluster.server, extra=limits("512Mi")))

        async def all_bound() -> list[dict[str, Any]] | None:
            claims = await kube.list(PVC, namespace)
            done = len(claims) == OOM_CLAIMS and all(c.get("status", {}).get("phase") == "Bound" for c in claims)
            return claims if done else None

        claims = await eventually(all_bound, timeout=600, what="every claim Bound", interval=2)
        print(f"limit raised to every claim Bound: {time.monotonic() - raised:.1f}s")
        pvs = [v for v in await kube.list(PV) if v["spec"].get("storageClassName") == "oom"]
        assert sorted(v["metadata"]["name"] for v in pvs) == sorted(c["spec"]["volumeName"] for c in claims)
        [mock] = [
            p
            for p in await kube.list(POD, namespace, label_selector="app=mock-driver")
            if p["spec"]["nodeName"] == node.name
        ]
        made = created_volume_ids(container_logs(node, [mock], "mock"))
        held = {v["spec"]["csi"]["volumeHandle"] for v in pvs}
        assert made == held, f"volumes the backend made that no PV holds: {sorted(made - held)}"
        for i in range(OOM_CLAIMS):
            await kube.delete(PVC, f"c{i}", namespace)

        async def deleted() -> bool:
            return not [v for v in await kube.list(PV) if v["spec"].get("storageClassName") == "oom"]

        await eventually(deleted, timeout=600, what="every volume deleted", interval=2)
    finally:
        await kube.delete(DRIVER_ENDPOINT, "oom")
        await kube.delete(STORAGE_CLASS, "oom")
        await kube.delete(DAEMON_SET_RESOURCE, "mock-driver", namespace)
        await kube.delete(CSI_DRIVER, MOCK_DRIVER)
