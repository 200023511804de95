"""The operator killed mid-attach and mid-detach, and the driver down mid-detach: the VolumeAttachment
converges, and the driver's own log shows no Unpublish that should not have happened."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from devcluster import DriverSpec, LocalCluster
from devcluster.operator import OperatorProcess
from devcluster.procs import wait_until
from sidecarless.kube import PV, PVC, Kube
from tests.e2e.conftest import MOCK, claim, eventually, killed
from tests.e2e.test_attacher import POD, SERVICE_ACCOUNT, attachment_of, device_published, pod
from tests.e2e.test_provisioner import bound_claim

pytestmark = pytest.mark.cluster


def calls_for(cluster: LocalCluster, method: str, volume_id: str) -> int:
    return sum(1 for c in cluster.driver_calls(MOCK, method) if (c.get("Request") or {}).get("volume_id") == volume_id)


async def attached(kube: Kube, volume_name: str) -> dict[str, Any] | None:
    current = await attachment_of(kube, volume_name)
    return current if current and (current.get("status") or {}).get("attached") else None


async def bound_volume_with_pod(
    kube: Kube, namespace: str, routed_class: Callable[..., Awaitable[tuple[str, str]]]
) -> tuple[str, str]:
    _, class_name = await routed_class()
    await kube.create(PVC, claim("data", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "data"))["spec"]["volumeName"]
    await eventually(
        lambda: kube.get_or_none(SERVICE_ACCOUNT, "default", namespace), what="default ServiceAccount", timeout=30
    )
    return volume_name, (await kube.get(PV, volume_name))["spec"]["csi"]["volumeHandle"]


async def test_killed_after_publish_before_status(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    healthy = exclusive()
    volume_name, volume_id = await bound_volume_with_pod(kube, namespace, routed_class)
    healthy.stop()
    faulty = exclusive(SIDECARLESS_FAULT_POINTS=f"after-controller-publish@{volume_name}")
    await kube.create(POD, pod("app", "data"), namespace)
    wait_until("the operator killed after ControllerPublish", killed(faulty), timeout=60, watch=[])
    current = await attachment_of(kube, volume_name)
    assert current is not None
    assert not (current.get("status") or {}).get("attached"), "the crash came before the status write"
    assert await device_published(cluster.driver_addresses[MOCK], volume_id, MOCK)

    exclusive()
    await eventually(lambda: attached(kube, volume_name), what="attached after the restart", timeout=60)
    assert calls_for(cluster, "ControllerPublishVolume", volume_id) == 2, "published again, idempotently"
    assert calls_for(cluster, "ControllerUnpublishVolume", volume_id) == 0


async def test_killed_before_unpublish(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    healthy = exclusive()
    volume_name, volume_id = await bound_volume_with_pod(kube, namespace, routed_class)
    await kube.create(POD, pod("app", "data"), namespace)
    await eventually(lambda: attached(kube, volume_name), what="attached", timeout=60)
    healthy.stop()

    faulty = exclusive(SIDECARLESS_FAULT_POINTS=f"before-controller-unpublish@{volume_name}")
    await kube.request("DELETE", POD.path("app", namespace), body={"gracePeriodSeconds": 0})
    wait_until("the operator killed before ControllerUnpublish", killed(faulty), timeout=60, watch=[])
    assert calls_for(cluster, "ControllerUnpublishVolume", volume_id) == 0

    exclusive()

    async def detached() -> bool:
        return await attachment_of(kube, volume_name) is None

    await eventually(detached, what="detached after the restart", timeout=60)
    assert calls_for(cluster, "ControllerUnpublishVolume", volume_id) == 1
    assert not await device_published(cluster.driver_addresses[MOCK], volume_id, MOCK)


FLAKY = "mock-flaky.csi.sidecarless.dev"


@pytest.fixture
def flaky_driver(cluster: LocalCluster) -> Iterator[str]:
    cluster.add_driver(DriverSpec(FLAKY))
    yield FLAKY
    cluster.remove_driver(FLAKY)


async def test_driver_down_during_detach_is_retried(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    flaky_driver: str,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class(flaky_driver)
    await kube.create(PVC, claim("data", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "data"))["spec"]["volumeName"]
    await eventually(
        lambda: kube.get_or_none(SERVICE_ACCOUNT, "default", namespace), what="default ServiceAccount", timeout=30
    )
    await kube.create(POD, pod("app", "data"), namespace)
    await eventually(lambda: attached(kube, volume_name), what="attached", timeout=60)

    cluster.stop_driver(flaky_driver)
    await kube.request("DELETE", POD.path("app", namespace), body={"gracePeriodSeconds": 0})

    async def detach_failed() -> dict[str, Any] | None:
        current = await attachment_of(kube, volume_name)
        return ((current or {}).get("status") or {}).get("detachError")

    error = await eventually(detach_failed, what="detachError while the driver is down", timeout=60)
    assert "code = Unavailable" in error["message"]

    cluster.restart_driver(flaky_driver)

    async def detached() -> bool:
        return await attachment_of(kube, volume_name) is None

    await eventually(detached, what="detached once the driver is back", timeout=90)
