"""The resizer's expansion sync on the fake world, table by table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from csi_client import csi
from sidecarless import kube as k
from sidecarless.workqueue import Requeue
from tests.unit.fakeworld import World, bound_pair, storage_class

GIB = 1024**3


@pytest.fixture
async def world() -> AsyncIterator[World]:
    world = World()
    await world.endpoint("ep")
    world.api.put(k.STORAGE_CLASS, storage_class("fast"))
    pvc, pv = bound_pair("data", "pv-1")
    pvc["spec"]["resources"]["requests"]["storage"] = "2Gi"  # asked to grow from 1Gi
    world.api.put(k.PVC, pvc)
    world.api.put(k.PV, pv)
    await asyncio.sleep(0)
    yield world
    await world.stop()


async def sync(world: World) -> Exception | None:
    outcome: Exception | None = None
    try:
        await world.controllers.resizer.sync_expansion("default/data")
    except Exception as error:  # what the work queue retries on
        outcome = error
    await asyncio.sleep(0.01)  # watch events delivered, events posted
    return outcome


@dataclass
class Case:
    name: str
    expand: list[Any] = field(default_factory=list)  # the driver's answers
    drop_volume: bool = False
    conflicts: int = 0  # claim status patches answered 409 first
    calls: int = 1
    allocated_status: str | None = None  # status.allocatedResourceStatuses.storage after the sync
    capacity: str = "1Gi"  # the claim's status.capacity after the sync
    event: str = ""
    condition: str = ""
    retry: type[Exception] | None = Requeue


CASES = [
    Case("success", capacity="2Gi", event="VolumeResizeSuccessful", retry=None),
    Case(
        "final error",
        [grpc.StatusCode.INTERNAL],
        allocated_status="ControllerResizeInProgress",  # with a ControllerResizeError condition
        condition="ControllerResizeError",
        event="VolumeResizeFailed",
    ),
    Case(
        "infeasible",
        [grpc.StatusCode.OUT_OF_RANGE],
        allocated_status="ControllerResizeInfeasible",
        event="VolumeResizeFailed",
    ),
    Case(
        "may still be in progress",
        [grpc.StatusCode.DEADLINE_EXCEEDED],
        allocated_status="ControllerResizeInProgress",
        event="VolumeResizeFailed",
    ),
    Case("a conflict on the claim", conflicts=1, calls=0),
    Case("its PV not seen yet", drop_volume=True, calls=0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_expansion(world: World, case: Case) -> None:
    driver = world.driver()
    driver.answer(
        "ControllerExpandVolume", *(case.expand or [csi.ControllerExpandVolumeResponse(capacity_bytes=2 * GIB)])
    )
    if case.drop_volume:
        world.context.stores.volumes.apply_event("DELETED", {"metadata": {"name": "pv-1"}})
    if case.conflicts:
        world.api.fail_next("PATCH", "persistentvolumeclaims", 409, case.conflicts)

    outcome = await sync(world)

    if case.retry is None:
        assert outcome is None, outcome
    else:
        assert isinstance(outcome, case.retry), outcome
    calls = driver.calls_of("ControllerExpandVolume")
    assert len(calls) == case.calls
    if calls:
        request = calls[0].request
        assert isinstance(request, csi.ControllerExpandVolumeRequest)
        assert (request.volume_id, request.capacity_range.required_bytes) == ("handle-pv-1", 2 * GIB)
    status = world.stored(k.PVC, "default/data")["status"]
    assert (status.get("allocatedResourceStatuses") or {}).get("storage") == case.allocated_status
    assert status["capacity"]["storage"] == case.capacity
    if case.condition:
        assert case.condition in {c["type"] for c in status.get("conditions") or []}
    if case.capacity == "2Gi":
        assert world.stored(k.PV, "pv-1")["spec"]["capacity"]["storage"] == "2Gi"
    reasons = {reason for _, reason, _ in world.api.events("data")}
    assert (case.event in reasons) if case.event else not reasons & {"VolumeResizeFailed", "VolumeResizeSuccessful"}
