"""The snapshotter's (csi-snapshotter's half) content sync on the fake world, table by table,
and its retries on the backoff schedule."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from csi_client import csi
from sidecarless import kube as k
from sidecarless.workqueue import Requeue
from tests.unit.fakeworld import World, bound_pair, simulate, storage_class

BEING_CREATED = "snapshot.storage.kubernetes.io/volumesnapshot-being-created"


def snapshot_class() -> dict[str, Any]:
    return {
        "metadata": {"name": "snaps", "annotations": {"sidecarless.io/endpoint": "ep"}},
        "driver": "fake.csi.example.com",
        "deletionPolicy": "Delete",
    }


def content() -> dict[str, Any]:
    return {
        "metadata": {"name": "snapcontent-u1"},
        "spec": {
            "driver": "fake.csi.example.com",
            "deletionPolicy": "Delete",
            "source": {"volumeHandle": "handle-pv-1"},
            "volumeSnapshotClassName": "snaps",
            "volumeSnapshotRef": {"name": "snap", "namespace": "default", "uid": "u1"},
        },
    }


def taken(ready: bool) -> csi.CreateSnapshotResponse:
    snapshot = csi.Snapshot(
        snapshot_id="snap-id-1", source_volume_id="handle-pv-1", size_bytes=1024, ready_to_use=ready
    )
    snapshot.creation_time.seconds = 1_700_000_000
    return csi.CreateSnapshotResponse(snapshot=snapshot)


async def scene(world: World) -> None:
    await world.endpoint("ep")
    world.api.put(k.STORAGE_CLASS, storage_class("fast"))
    pvc, pv = bound_pair("data", "pv-1")
    world.api.put(k.PVC, pvc)
    world.api.put(k.PV, pv)
    world.api.put(k.VOLUME_SNAPSHOT_CLASS, snapshot_class())
    world.api.put(k.VOLUME_SNAPSHOT_CONTENT, content())
    await asyncio.sleep(0)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    world = World(snapshot_controller=False)  # only the driver half: the content is the whole scene
    await scene(world)
    yield world
    await world.stop()


@dataclass
class Case:
    name: str
    create: list[Any] = field(default_factory=lambda: [taken(True)])
    ready: bool | None = True
    handle: str | None = "snap-id-1"
    being_created: bool = False  # the annotation stays (the call may still be running)
    error: str = ""
    retried: bool = False


CASES = [
    Case("success"),
    Case("not ready yet", [taken(False)], ready=False, retried=True),
    Case("final error", [grpc.StatusCode.INTERNAL], ready=False, handle=None, error="Internal", retried=True),
    Case(
        "may still be in progress",
        [grpc.StatusCode.DEADLINE_EXCEEDED],
        ready=False,
        handle=None,
        being_created=True,
        error="DeadlineExceeded",
        retried=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_create(world: World, case: Case) -> None:
    world.driver().answer("CreateSnapshot", *case.create)
    outcome: Exception | None = None
    try:
        await world.controllers.snapshotter.sync_content("snapcontent-u1")
    except Exception as error:  # what the work queue retries on
        outcome = error
    await asyncio.sleep(0.01)

    assert (outcome is not None) == case.retried, outcome
    assert outcome is None or isinstance(outcome, Requeue)
    (call,) = world.driver().calls_of("CreateSnapshot")
    assert isinstance(call.request, csi.CreateSnapshotRequest)
    assert (call.request.name, call.request.source_volume_id) == ("snapshot-u1", "handle-pv-1")
    stored = world.stored(k.VOLUME_SNAPSHOT_CONTENT, "snapcontent-u1")
    status = stored.get("status") or {}
    assert status.get("readyToUse") is case.ready
    assert status.get("snapshotHandle") == case.handle
    assert case.error in (status.get("error") or {}).get("message", "")
    assert (BEING_CREATED in (stored["metadata"].get("annotations") or {})) == case.being_created


def test_a_failing_create_snapshot_is_retried_on_the_backoff_schedule() -> None:
    async def main() -> list[float]:
        world = World(snapshot_controller=False)
        try:
            await scene(world)
            world.driver().answer("CreateSnapshot", grpc.StatusCode.INTERNAL)
            world.start()
            world.controllers.snapshotter.contents.add("snapcontent-u1")
            await asyncio.sleep(120)
            return [c.at for c in world.driver().calls_of("CreateSnapshot")]
        finally:
            await world.stop()

    times = simulate(main)
    assert 6 <= len(times) <= 8, times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.9, times
    for earlier, later in itertools.pairwise(gaps):
        assert later >= 1.6 * earlier, times
