"""The sweep of orphaned source-protection finalizers (external-provisioner #1507): a snapshot
or a clone source whose last claim went while no operator ran keeps our finalizer, and no
event will ever bring it back to the provisioner. The sweep finds it; one still in use keeps it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecarless import kube as k
from sidecarless.provisioner import sources
from tests.unit.fakeworld import World, bound_pair, simulate, storage_class

Body = dict[str, Any]


def snapshot(*, deleting: bool) -> Body:
    meta: Body = {"name": "snap", "namespace": "default", "uid": "u1"}
    meta["finalizers"] = [sources.SNAPSHOT_PROTECTION_FINALIZER]
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "spec": {"source": {"persistentVolumeClaimName": "data"}}}


def restoring_claim() -> Body:
    claim, _ = bound_pair("restored", "unused")
    claim["spec"].pop("volumeName")
    claim["spec"]["dataSource"] = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}
    claim["status"] = {"phase": "Pending"}
    return claim


def clone_source(*, deleting: bool) -> Body:
    claim, _ = bound_pair("source", "pv-src")
    claim["metadata"]["finalizers"] = [sources.CLONE_PROTECTION_FINALIZER]
    if deleting:
        claim["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return claim


@pytest.mark.parametrize("deleting", [True, False], ids=["being deleted", "living"])
@pytest.mark.parametrize("in_use", [False, True], ids=["orphaned", "still restoring"])
def test_an_orphaned_restore_protection_is_swept(deleting: bool, in_use: bool) -> None:
    async def main() -> Body | None:
        world = World(snapshot_controller=False)  # only the provisioner's finalizer is in play
        try:
            await world.endpoint("ep")
            world.api.put(k.STORAGE_CLASS, storage_class("fast"))
            # What the API holds when the operator starts again: the claim that was
            # restored from the snapshot was deleted while no operator ran.
            world.api.put(k.VOLUME_SNAPSHOT, snapshot(deleting=deleting))
            if in_use:
                world.api.put(k.PVC, restoring_claim())
            world.start()
            await asyncio.sleep(61 if not deleting else 1)  # a deletion is looked at at once
            return world.api.get_object(k.VOLUME_SNAPSHOT, "default/snap")
        finally:
            await world.stop()

    left = simulate(main)
    if in_use:
        assert left is not None
        assert sources.SNAPSHOT_PROTECTION_FINALIZER in left["metadata"]["finalizers"], "a restore still needs it"
    elif deleting:
        assert left is None, "its deletion went through once our finalizer was gone"
    else:
        assert left is not None
        assert sources.SNAPSHOT_PROTECTION_FINALIZER not in (left["metadata"].get("finalizers") or [])


def test_an_orphaned_clone_protection_on_a_claim_being_deleted_is_released_when_the_operator_starts() -> None:
    async def main() -> Body | None:
        world = World(snapshot_controller=False)
        try:
            await world.endpoint("ep")
            world.api.put(k.STORAGE_CLASS, storage_class("fast"))
            world.api.put(k.PVC, clone_source(deleting=True))
            world.start()
            await asyncio.sleep(61)
            return world.api.get_object(k.PVC, "default/source")
        finally:
            await world.stop()

    left = simulate(main)
    assert left is None or sources.CLONE_PROTECTION_FINALIZER not in (left["metadata"].get("finalizers") or [])
