"""The provisioner's deletion on the fake world: DeleteVolume, its secret, its failures.

A deletion Secret that is missing does not stop the deletion: external-provisioner v6.3.0 and
v6.4.0 (handleSecretsForDeletion) log "failed to get credentials" and call DeleteVolume without
secrets, "as the secret may have already been deleted"; Sidecarless sends the same call.
A driver that needs the secret fails it, and that failure is a VolumeFailedDelete event on
the PV, retried with backoff.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import grpc
import pytest

from csi_client import csi
from sidecarless import kube as k
from sidecarless.workqueue import Requeue
from tests.unit.fakeworld import World, bound_pair, storage_class

FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"


def released_volume() -> dict[str, Any]:
    _, pv = bound_pair("data", "pv-1")
    pv["metadata"]["finalizers"] = [FINALIZER]
    pv["metadata"]["annotations"].update(
        {
            "volume.kubernetes.io/provisioner-deletion-secret-name": "delete-me",
            "volume.kubernetes.io/provisioner-deletion-secret-namespace": "default",
        }
    )
    pv["status"] = {"phase": "Released"}
    return pv


async def delete(world: World) -> Exception | None:
    try:
        await world.controllers.provisioner.sync_volume("pv-1")
    except Exception as error:  # what the work queue retries on
        await asyncio.sleep(0.01)  # its event posted
        return error
    await asyncio.sleep(0.01)
    return None


@pytest.mark.parametrize("secret_exists", [True, False])
async def test_delete_volume_carries_the_deletion_secret_when_there_is_one(
    secret_exists: bool, caplog: pytest.LogCaptureFixture
) -> None:
    world = World()
    try:
        await world.endpoint("ep")
        world.api.put(k.STORAGE_CLASS, storage_class("fast"))
        if secret_exists:
            secret = {"metadata": {"name": "delete-me", "namespace": "default"}, "data": {}}
            secret["data"] = {"token": base64.b64encode(b"s3cret").decode()}
            world.api.put(k.SECRET, secret)
        world.api.put(k.PV, released_volume())
        await asyncio.sleep(0)
        assert await delete(world) is None
        (call,) = world.driver().calls_of("DeleteVolume")
        assert isinstance(call.request, csi.DeleteVolumeRequest)
        assert dict(call.request.secrets) == ({"token": "s3cret"} if secret_exists else {})
        assert world.api.get_object(k.PV, "pv-1") is None  # deleted, finalizer gone
        said = "failed to get credentials for volume pv-1: secret default/delete-me not found"
        assert (said in caplog.text) is not secret_exists
    finally:
        await world.stop()


async def test_a_failed_delete_volume_is_an_event_on_the_pv_and_retried() -> None:
    world = World()
    try:
        await world.endpoint("ep")
        world.driver().answer("DeleteVolume", grpc.StatusCode.PERMISSION_DENIED)
        world.api.put(k.STORAGE_CLASS, storage_class("fast"))
        world.api.put(k.PV, released_volume())
        await asyncio.sleep(0)
        outcome = await delete(world)
        assert isinstance(outcome, Requeue)
        assert (
            "Warning",
            "VolumeFailedDelete",
            "rpc error: code = PermissionDenied desc = scripted PERMISSION_DENIED",
        ) in (world.api.events("pv-1"))
        assert FINALIZER in world.stored(k.PV, "pv-1")["metadata"]["finalizers"]  # still there
    finally:
        await world.stop()
