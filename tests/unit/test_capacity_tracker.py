"""The capacity tracker on the fake world: objects made, updated in place, removed with their
class or when the CSIDriver stops asking; a failing GetCapacity keeps the last values and retries."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from csi_client import csi
from sidecarless import kube as k
from sidecarless.endpoints.status import conditions_for
from sidecarless.workqueue import Requeue
from tests.unit.fakeworld import FakeDriver, World, storage_class

Body = dict[str, Any]
DRIVER = "fake.csi.example.com"


def capacity(size: int) -> csi.GetCapacityResponse:
    return csi.GetCapacityResponse(available_capacity=size)


async def scene(*, asks: bool = True) -> World:
    world = World()
    driver = FakeDriver()
    driver.controller = frozenset({*driver.controller, "GET_CAPACITY"})
    await world.endpoint("ep", driver)
    world.api.put(k.CSI_DRIVER, {"metadata": {"name": DRIVER}, "spec": {"storageCapacity": asks}})
    world.api.put(
        k.STORAGE_CLASS, storage_class("late", volumeBindingMode="WaitForFirstConsumer", parameters={"a": "b"})
    )
    world.api.put(k.STORAGE_CLASS, storage_class("now"))
    world.api.put(
        k.CSI_NODE, {"metadata": {"name": "n1"}, "spec": {"drivers": [{"name": DRIVER, "topologyKeys": ["zone"]}]}}
    )
    world.api.put(k.NODE, {"metadata": {"name": "n1", "labels": {"zone": "a"}}})
    await asyncio.sleep(0)
    return world


def objects(world: World) -> list[Body]:
    return list(world.api.objects.get("csistoragecapacities", {}).values())


async def test_made_updated_and_removed_with_its_class() -> None:
    world = await scene()
    try:
        tracker = world.controllers.capacity
        world.driver().answer("GetCapacity", capacity(2**30), capacity(2 * 2**30))
        await tracker.sync("ep")
        (made,) = objects(world)
        assert made["storageClassName"] == "late"
        assert made["nodeTopology"] == {"matchLabels": {"zone": "a"}}
        assert made["capacity"] == "1Gi"
        assert made["metadata"]["labels"] == {
            "csi.storage.k8s.io/drivername": DRIVER,
            "csi.storage.k8s.io/managed-by": "external-provisioner",
        }
        (call,) = world.driver().calls_of("GetCapacity")
        assert isinstance(call.request, csi.GetCapacityRequest)
        assert dict(call.request.parameters) == {"a": "b"}
        assert dict(call.request.accessible_topology.segments) == {"zone": "a"}
        assert tracker.state("ep") == "Active"
        assert tracker.objects["ep"] == 1
        await tracker.sync("ep")
        (updated,) = objects(world)
        assert updated["metadata"]["name"] == made["metadata"]["name"], "updated in place"
        assert updated["capacity"] == "2Gi"
        await world.api.request("DELETE", k.STORAGE_CLASS.path("late"))
        await asyncio.sleep(0)
        await tracker.sync("ep")
        assert objects(world) == []
    finally:
        await world.stop()


async def test_a_failing_get_capacity_keeps_the_last_values_and_retries() -> None:
    world = await scene()
    try:
        tracker = world.controllers.capacity
        world.driver().answer("GetCapacity", capacity(2**30), grpc.StatusCode.INTERNAL)
        await tracker.sync("ep")
        with pytest.raises(Requeue, match="GetCapacity failed for 1 of 1"):
            await tracker.sync("ep")
        (kept,) = objects(world)
        assert kept["capacity"] == "1Gi"
        assert tracker.objects["ep"] == 1
        # Where the user looks: the DriverEndpoint's lastError and Degraded condition.
        endpoint = world.context.endpoints.get("ep")
        assert endpoint is not None
        assert endpoint.last_error is not None
        assert (endpoint.last_error.operation, endpoint.last_error.object) == ("GetCapacity", "late")
        degraded = next(c for c in conditions_for(endpoint, None) if c.type == "Degraded")
        assert degraded.status
        assert degraded.reason == "OperationsFailing"
    finally:
        await world.stop()


async def test_a_csidriver_that_does_not_ask_gets_no_objects() -> None:
    world = await scene(asks=False)
    try:
        tracker = world.controllers.capacity
        await tracker.sync("ep")
        assert objects(world) == []
        assert tracker.state("ep") == "NotRequired"
        assert world.driver().calls_of("GetCapacity") == []
    finally:
        await world.stop()


async def test_two_endpoints_of_one_driver_keep_each_their_own_classes_objects() -> None:
    world = await scene()
    try:
        second = FakeDriver()
        second.controller = frozenset({*second.controller, "GET_CAPACITY"})
        await world.endpoint("ep2", second)
        other = storage_class("other", endpoint="ep2", volumeBindingMode="WaitForFirstConsumer")
        world.api.put(k.STORAGE_CLASS, other)
        await asyncio.sleep(0)
        tracker = world.controllers.capacity
        world.driver("ep").answer("GetCapacity", capacity(2**30))
        world.driver("ep2").answer("GetCapacity", capacity(3 * 2**30))
        for _ in range(2):  # each pass of one must leave the other's object alone
            await tracker.sync("ep")
            await tracker.sync("ep2")
        by_class = {o["storageClassName"]: o["capacity"] for o in objects(world)}
        assert by_class == {"late": "1Gi", "other": "3Gi"}
        assert tracker.objects == {"ep": 1, "ep2": 1}
    finally:
        await world.stop()
