"""How driver errors reach the user, with mock drivers whose hooks fail calls on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest

from devcluster import DriverSpec, LocalCluster
from sidecarless.kube import EVENT, PVC, Kube
from tests.e2e.conftest import claim, eventually, wait_ready
from tests.e2e.test_provisioner import failed_event

pytestmark = pytest.mark.cluster

INVALID = "mock-invalid.csi.sidecarless.dev"
EXHAUSTED = "mock-exhausted.csi.sidecarless.dev"


@pytest.fixture(scope="module")
def failing_drivers(cluster: LocalCluster) -> Iterator[None]:
    cluster.add_driver(DriverSpec(INVALID, hooks={"createVolumeStart": "INVALIDARGUMENT"}))
    cluster.add_driver(DriverSpec(EXHAUSTED, topology=True, hooks={"createVolumeStart": "RESOURCEEXHAUSTED"}))
    yield
    cluster.remove_driver(INVALID)
    cluster.remove_driver(EXHAUSTED)


async def test_invalid_argument_is_infeasible_and_retried_slowly(
    kube: Kube,
    namespace: str,
    failing_drivers: None,
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    endpoint = await make_endpoint(INVALID)
    await wait_ready(kube, endpoint)
    class_name = await make_class(endpoint, provisioner=INVALID)
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
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    endpoint = await make_endpoint(EXHAUSTED)
    await wait_ready(kube, endpoint)
    class_name = await make_class(endpoint, provisioner=EXHAUSTED, volumeBindingMode="WaitForFirstConsumer")
    body = claim("full", class_name)
    body["metadata"]["annotations"] = {"volume.kubernetes.io/selected-node": "node-1"}
    await kube.create(PVC, body, namespace)
    await failed_event(kube, namespace, "full", contains="code = ResourceExhausted")

    async def rescheduled() -> bool:
        current = await kube.get(PVC, "full", namespace)
        return "volume.kubernetes.io/selected-node" not in (current["metadata"].get("annotations") or {})

    await eventually(rescheduled, what="selected-node removed after ResourceExhausted", timeout=30)
