"""WaitForFirstConsumer and topology, with the mock driver's VOLUME_ACCESSIBILITY_CONSTRAINTS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest

from devcluster import DriverSpec, LocalCluster
from sidecarless.kube import PV, PVC, Kube
from tests.e2e.conftest import claim, eventually, wait_ready
from tests.e2e.test_provisioner import bound_claim, event_reasons

pytestmark = pytest.mark.cluster

TOPOLOGY_DRIVER = "mock-topology.csi.sidecarless.dev"
MOCK_TOPOLOGY_KEY = "io.kubernetes.storage.mock/node"  # csi-test's mock: one fixed segment
MOCK_SEGMENT = "some-mock-node"


@pytest.fixture(scope="module")
def topology_driver(cluster: LocalCluster) -> Iterator[str]:
    cluster.add_driver(DriverSpec(TOPOLOGY_DRIVER, topology=True))
    yield TOPOLOGY_DRIVER
    cluster.remove_driver(TOPOLOGY_DRIVER)


async def test_wait_for_first_consumer(
    kube: Kube,
    namespace: str,
    topology_driver: str,
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    endpoint = await make_endpoint(topology_driver)
    status = (await wait_ready(kube, endpoint))["status"]
    assert "VOLUME_ACCESSIBILITY_CONSTRAINTS" in status["capabilities"]["plugin"]
    class_name = await make_class(endpoint, provisioner=topology_driver, volumeBindingMode="WaitForFirstConsumer")
    await kube.create(PVC, claim("late", class_name), namespace)

    async def waiting() -> bool:
        return "WaitForFirstConsumer" in await event_reasons(kube, namespace, "late")

    await eventually(waiting, what="kube-controller-manager's WaitForFirstConsumer event", timeout=30)
    current = await kube.get(PVC, "late", namespace)
    assert current["status"]["phase"] == "Pending"
    assert "ProvisioningFailed" not in await event_reasons(kube, namespace, "late"), "waiting is not a failure"

    # What the scheduler does when a pod using the claim is scheduled to node-1.
    await kube.patch(
        PVC, "late", {"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "node-1"}}}, namespace
    )
    uid = (await bound_claim(kube, namespace, "late"))["metadata"]["uid"]
    volume = await kube.get(PV, f"pvc-{uid}")
    assert volume["spec"]["nodeAffinity"] == {
        "required": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": MOCK_TOPOLOGY_KEY, "operator": "In", "values": [MOCK_SEGMENT]}]}
            ]
        }
    }


async def test_selected_node_without_the_driver_is_rescheduled(
    kube: Kube,
    namespace: str,
    topology_driver: str,
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    endpoint = await make_endpoint(topology_driver)
    await wait_ready(kube, endpoint)
    class_name = await make_class(endpoint, provisioner=topology_driver, volumeBindingMode="WaitForFirstConsumer")
    body = claim("wrong-node", class_name)
    body["metadata"]["annotations"] = {"volume.kubernetes.io/selected-node": "ghost-node"}
    await kube.create(PVC, body, namespace)

    async def rescheduled() -> bool:
        current = await kube.get(PVC, "wrong-node", namespace)
        return "volume.kubernetes.io/selected-node" not in (current["metadata"].get("annotations") or {})

    await eventually(rescheduled, what="selected-node removed so the scheduler picks again", timeout=30)
    messages = (await event_reasons(kube, namespace, "wrong-node")).get("ProvisioningFailed", [])
    assert any("ghost-node" in m for m in messages)
