"""How driver errors reach the user, with mock drivers whose hooks fail calls on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from devcluster import DriverSpec, LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import DRIVER_ENDPOINT, EVENT, PVC, VOLUME_ATTACHMENT, Kube
from tests.e2e.conftest import attach_error, claim, eventually, volume_attachment
from tests.e2e.test_provisioner import bound_claim, failed_event

pytestmark = pytest.mark.cluster

INVALID = "mock-invalid.csi.sidecarless.dev"
EXHAUSTED = "mock-exhausted.csi.sidecarless.dev"
UNPUBLISHABLE = "mock-unpublishable.csi.sidecarless.dev"


@pytest.fixture(scope="module")
def failing_drivers(cluster: LocalCluster) -> Iterator[None]:
    cluster.add_driver(DriverSpec(INVALID, hooks={"createVolumeStart": "INVALIDARGUMENT"}))
    cluster.add_driver(DriverSpec(EXHAUSTED, topology=True, hooks={"createVolumeStart": "RESOURCEEXHAUSTED"}))
    cluster.add_driver(DriverSpec(UNPUBLISHABLE, hooks={"controllerPublishVolumeStart": "INTERNAL"}))
    yield
    for name in (INVALID, EXHAUSTED, UNPUBLISHABLE):
        cluster.remove_driver(name)


async def test_invalid_argument_is_infeasible_and_retried_slowly(
    kube: Kube,
    namespace: str,
    failing_drivers: None,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class(INVALID)
    await kube.create(PVC, claim("infeasible", class_name), namespace)
    await failed_event(kube, namespace, "infeasible", contains="code = InvalidArgument")
    # With the 1 s backoff there would be three more attempts in the next 7 s; an
    # infeasible claim waits 5 minutes instead.
    await asyncio.sleep(7)
    events = [e for e in await kube.list(EVENT, namespace) if e["reason"] == "ProvisioningFailed"]
    assert [e.get("count", 1) for e in events] == [1]


async def test_resource_exhausted_on_a_selected_node_reschedules(
    kube: Kube,
    namespace: str,
    failing_drivers: None,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class(EXHAUSTED, volumeBindingMode="WaitForFirstConsumer")
    body = claim("full", class_name)
    body["metadata"]["annotations"] = {"volume.kubernetes.io/selected-node": "node-1"}
    await kube.create(PVC, body, namespace)
    await failed_event(kube, namespace, "full", contains="code = ResourceExhausted")

    async def rescheduled() -> bool:
        current = await kube.get(PVC, "full", namespace)
        return "volume.kubernetes.io/selected-node" not in (current["metadata"].get("annotations") or {})

    await eventually(rescheduled, what="selected-node removed after ResourceExhausted", timeout=30)


async def test_failed_publish_is_an_attach_error_with_the_code(
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    failing_drivers: None,
    unique_name: Callable[[str], str],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    endpoint, class_name = await routed_class(UNPUBLISHABLE)
    await kube.create(PVC, claim("unlucky", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "unlucky"))["spec"]["volumeName"]
    name = unique_name("va")
    await kube.create(
        VOLUME_ATTACHMENT,
        volume_attachment(name, UNPUBLISHABLE, volume_name),
    )

    error = await attach_error(kube, name, what="attachError")
    assert error["message"].startswith("rpc error: code = Internal desc = ")
    assert error["errorCode"] == 13
    attachment = await kube.get(VOLUME_ATTACHMENT, name)
    assert attachment["status"]["attached"] is False
    assert attachment["metadata"]["finalizers"] == ["external-attacher/mock-unpublishable-csi-sidecarless-dev"]

    async def reported() -> dict[str, Any] | None:
        status = (await kube.get(DRIVER_ENDPOINT, endpoint)).get("status") or {}
        return status if (status.get("lastError") or {}).get("operation") == "ControllerPublishVolume" else None

    status = await eventually(reported, what="the failure in the DriverEndpoint status", timeout=15)
    waiting = f'sidecarless_attacher_backlog{{endpoint="{endpoint}",lane="attach"}} 1.0'
    assert waiting in operator.metrics(), "the stuck attachment shows in the backlog"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "OperationsFailing")
    await kube.delete(VOLUME_ATTACHMENT, name)
