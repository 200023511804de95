"""The group snapshotter's sync on the fake world: CreateVolumeGroupSnapshot only where the endpoint's
snapshotter is on (a csi-snapshotter beside Sidecarless serves the others)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from sidecarless import kube as k
from tests.unit.fakeworld import FakeDriver, World

CAPABILITY = "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT"


def group_class() -> dict[str, Any]:
    return {
        "metadata": {"name": "groups", "annotations": {"sidecarless.io/endpoint": "ep"}},
        "driver": "fake.csi.example.com",
        "deletionPolicy": "Delete",
    }


def group_content() -> dict[str, Any]:
    return {
        "metadata": {"name": "groupsnapcontent-1"},
        "spec": {
            "driver": "fake.csi.example.com",
            "deletionPolicy": "Delete",
            "volumeGroupSnapshotClassName": "groups",
            "source": {"volumeHandles": ["handle-1", "handle-2"]},
            "volumeGroupSnapshotRef": {"name": "group", "namespace": "default", "uid": "u-1"},
        },
    }


@pytest.mark.parametrize(("snapshotter", "calls"), [(True, 1), (False, 0)])
async def test_group_snapshots_follow_the_snapshotter_switch(snapshotter: bool, calls: int) -> None:
    world = World()
    try:
        driver = FakeDriver(group_controller=frozenset({CAPABILITY}))
        await world.endpoint("ep", driver, controllers={"snapshotter": snapshotter})
        world.api.put(k.VOLUME_GROUP_SNAPSHOT_CLASS, group_class())
        world.api.put(k.VOLUME_GROUP_SNAPSHOT_CONTENT, group_content())
        await asyncio.sleep(0)
        # A retry afterwards is fine (the group is not ready yet): the calls are what is checked.
        with contextlib.suppress(Exception):
            await world.controllers.group_snapshotter.sync_content("groupsnapcontent-1")
        assert len(driver.calls_of("CreateVolumeGroupSnapshot")) == calls
    finally:
        await world.stop()
