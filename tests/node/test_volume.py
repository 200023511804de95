"""A pod mounts a volume, everything as pods: the operator installed by helm, the mock driver
as a DaemonSet (devcluster.workloads: controller on TCP, node service behind driver_shim)
with `sidecarless node` registering it, and kubelet attaching (through the operator's
ControllerPublish), staging and publishing the volume; the claim grows, and kubelet finishes
the expansion on the node (NodeExpandVolume), clearing FileSystemResizePending.

The mock keeps its volumes in its own memory, so each node's instance is its own backend:
the DriverEndpoint names worker-1's, and the pod goes to worker-1."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.workloads import (
    CONTROLLER_PORT,
    MOCK_DRIVER,
    csi_driver,
    driver_endpoint,
    mock_driver_daemon_set,
    pod_with_claim,
)
from sidecarless.kube import CSI_DRIVER, DRIVER_ENDPOINT, POD, PV, PVC, STORAGE_CLASS, VOLUME_ATTACHMENT, Kube
from tests.e2e.conftest import claim, eventually, storage_class, wait_ready
from tests.node.test_helm import DAEMON_SET_RESOURCE, image, installed  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(1800)


async def attachments_of(kube: Kube, volume: str) -> list[dict[str, Any]]:
    return [a for a in await kube.list(VOLUME_ATTACHMENT) if a["spec"]["source"].get("persistentVolumeName") == volume]


async def test_a_pod_mounts_a_volume_provisioned_and_attached_by_the_operator_pods(
    cluster: LocalCluster,
    kube: Kube,
    installed: tuple[str, float],  # noqa: F811
) -> None:
    namespace, _ = installed
    worker = cluster.real_nodes[0]
    await kube.create(CSI_DRIVER, csi_driver())
    await kube.create(DAEMON_SET_RESOURCE, mock_driver_daemon_set(), namespace)
    await kube.create(
        DRIVER_ENDPOINT,
        driver_endpoint("mock-mounted", MOCK_DRIVER, f"dns:///{worker.network.node_ip}:{CONTROLLER_PORT}"),
    )
    try:
        await wait_ready(kube, "mock-mounted", timeout=120)
        await kube.create(STORAGE_CLASS, storage_class("mock-mounted", "mock-mounted", allowVolumeExpansion=True))
        created = time.monotonic()
        await kube.create(PVC, claim("data", "mock-mounted"), namespace)
        command = "echo written > /data/file && cat /data/file && sleep 3600"
        writer = pod_with_claim("writer", "data", worker.name, command)
        await kube.create(POD, writer, namespace)

        async def running() -> dict[str, Any] | None:
            found = await kube.get(POD, "writer", namespace)
            return found if found.get("status", {}).get("phase") == "Running" else None

        found = await eventually(running, timeout=180, what="the pod with the volume Running")
        print(f"\nPVC and pod created to the pod Running with the volume: {time.monotonic() - created:.1f}s")
        volume = (await kube.get(PVC, "data", namespace))["spec"]["volumeName"]
        assert [a["status"].get("attached") for a in await attachments_of(kube, volume)] == [True]

        async def logged() -> bool:
            return "written" in worker.container_log(namespace, "writer", found["metadata"]["uid"], "main")

        await eventually(logged, what="the pod wrote to its volume")

        asked = time.monotonic()
        await kube.patch(PVC, "data", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}, namespace)

        async def expanded_on_the_node() -> dict[str, Any] | None:
            found = await kube.get(PVC, "data", namespace)
            status = found.get("status") or {}
            pending = [c for c in status.get("conditions") or [] if c["type"] == "FileSystemResizePending"]
            return found if status.get("capacity", {}).get("storage") == "2Gi" and not pending else None

        grown = await eventually(expanded_on_the_node, timeout=180, what="the expansion finished by kubelet")
        print(f"claim grown to expansion finished on the node: {time.monotonic() - asked:.1f}s")
        assert (await kube.get(PV, volume))["spec"]["capacity"]["storage"] == "2Gi"
        assert not grown["status"].get("allocatedResourceStatuses"), grown["status"]
        await kube.delete(POD, "writer", namespace)
        await kube.delete(PVC, "data", namespace)

        async def detached_and_deleted() -> bool:
            left = await attachments_of(kube, volume)
            return not left and await kube.get_or_none(PVC, "data", namespace) is None

        await eventually(detached_and_deleted, timeout=180, what="the volume detached and deleted")
    finally:
        await kube.delete(DRIVER_ENDPOINT, "mock-mounted")
        await kube.delete(STORAGE_CLASS, "mock-mounted")
        await kube.delete(DAEMON_SET_RESOURCE, "mock-driver", namespace)
        await kube.delete(CSI_DRIVER, MOCK_DRIVER)
