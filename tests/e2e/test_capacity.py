"""Storage capacity tracking end to end: a CSIDriver that asks for it (storageCapacity: true)
gets one CSIStorageCapacity per WaitForFirstConsumer class, shaped as external-provisioner
writes it; a class that goes takes its object along."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from devcluster import DriverSpec, LocalCluster
from sidecarless.kube import CSI_DRIVER, CSI_STORAGE_CAPACITY, DRIVER_ENDPOINT, STORAGE_CLASS, Kube
from tests.e2e.conftest import eventually, wait_ready

pytestmark = pytest.mark.cluster

TRACKED = "capacity.csi.sidecarless.dev"
LABELS = f"csi.storage.k8s.io/drivername={TRACKED},csi.storage.k8s.io/managed-by=external-provisioner"


@pytest.fixture
def tracked_driver(cluster: LocalCluster) -> Iterator[str]:
    cluster.add_driver(DriverSpec(TRACKED, attach=False))
    cluster.rest.request(
        "PATCH",
        f"/apis/storage.k8s.io/v1/csidrivers/{TRACKED}",
        {"spec": {"storageCapacity": True}},
        content_type="application/merge-patch+json",
    )
    yield TRACKED
    cluster.remove_driver(TRACKED)


async def capacities(kube: Kube) -> list[dict[str, Any]]:
    return await kube.list(CSI_STORAGE_CAPACITY, "default", label_selector=LABELS)


async def test_a_late_binding_class_gets_its_capacity_object_and_takes_it_along(
    kube: Kube,
    tracked_driver: str,
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    assert (await kube.get(CSI_DRIVER, tracked_driver))["spec"]["storageCapacity"] is True
    endpoint = await make_endpoint(tracked_driver)
    await wait_ready(kube, endpoint)
    late = await make_class(endpoint, provisioner=tracked_driver, volumeBindingMode="WaitForFirstConsumer")
    await make_class(endpoint, provisioner=tracked_driver)  # Immediate: no object

    async def one() -> dict[str, Any] | None:
        found = await capacities(kube)
        return found[0] if len(found) == 1 and found[0]["storageClassName"] == late else None

    capacity = await eventually(one, what="one CSIStorageCapacity for the late-binding class", timeout=60)
    assert capacity["metadata"]["name"].startswith("csisc-")
    assert capacity["nodeTopology"] == {}, "no topology keys: one segment, every node"
    assert capacity["capacity"], capacity

    async def reported() -> bool:
        status = (await kube.get(DRIVER_ENDPOINT, endpoint)).get("status") or {}
        counts, controllers = status.get("counts") or {}, status.get("controllers") or {}
        return controllers.get("capacity") == "Active" and counts.get("capacityObjects") == 1

    await eventually(reported, what="capacity: Active and one object in the endpoint's status", timeout=30)
    await kube.delete(STORAGE_CLASS, late)

    async def none() -> bool:
        return not await capacities(kube)

    await eventually(none, what="the class's object deleted with it", timeout=60)
