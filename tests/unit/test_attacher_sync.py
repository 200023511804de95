"""The attacher's sync on the fake world, table by table (external-attacher's csi_handler_test.go)."""

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
from tests.unit.fakeworld import World, attachment, bound_pair, csinode, storage_class

FINALIZER = "external-attacher/fake-csi-example-com"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    world = World()
    await world.endpoint("ep")
    world.api.put(k.STORAGE_CLASS, storage_class("fast"))
    pvc, pv = bound_pair("data", "pv-1")
    world.api.put(k.PVC, pvc)
    world.api.put(k.PV, pv)
    world.api.put(k.CSI_NODE, csinode("node-1"))
    await asyncio.sleep(0)
    yield world
    await world.stop()


async def sync(world: World, name: str) -> Exception | None:
    """One pass of the attacher's sync, as a worker runs it, and the watch events it caused.
    Returns what the worker would retry on (a Requeue, or any error: the queue's backoff)."""
    outcome: Exception | None = None
    try:
        await world.controllers.attacher.sync_attachment(name)
    except Exception as error:  # what the work queue catches
        outcome = error
    await asyncio.sleep(0)
    return outcome


@dataclass
class Case:
    name: str
    publish: list[Any] = field(default_factory=list)  # the driver's answers
    drop_volume: bool = False
    conflicts: int = 0  # VolumeAttachment patches answered 409 first
    calls: int = 1
    attached: bool | None = True
    error_code: int | None = None
    error_text: str = ""
    retried: bool = False


CASES = [
    Case("success"),
    Case(
        "final error",
        publish=[grpc.StatusCode.INTERNAL],
        attached=None,
        error_code=grpc.StatusCode.INTERNAL.value[0],
        error_text="rpc error: code = Internal",
        retried=True,
    ),
    Case(
        "may still be in progress",
        publish=[grpc.StatusCode.DEADLINE_EXCEEDED],
        attached=None,
        error_code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
        error_text="code = DeadlineExceeded",
        retried=True,
    ),
    Case(
        "invalid argument",
        publish=[grpc.StatusCode.INVALID_ARGUMENT],
        attached=None,
        error_code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        retried=True,
    ),
    Case("a conflict on the finalizer write", conflicts=1, calls=0, attached=None, retried=True),
    Case(
        "its PV missing",
        drop_volume=True,
        calls=0,
        attached=None,
        error_text="persistentvolume pv-1 not found",
        retried=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_attach(world: World, case: Case) -> None:
    driver = world.driver()
    if case.publish:
        driver.answer("ControllerPublishVolume", *case.publish)
    if case.drop_volume:
        world.api.objects["persistentvolumes"].clear()
        world.context.stores.volumes.apply_event("DELETED", {"metadata": {"name": "pv-1"}})
    if case.conflicts:
        world.api.fail_next("PATCH", "volumeattachments", 409, case.conflicts)
    world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
    await asyncio.sleep(0)

    outcome = await sync(world, "va-1")

    assert (outcome is not None) == case.retried, outcome
    if case.conflicts:
        assert isinstance(outcome, k.Conflict)
    elif outcome is not None:
        assert isinstance(outcome, Requeue)
    assert len(driver.calls_of("ControllerPublishVolume")) == case.calls
    status = world.stored(k.VOLUME_ATTACHMENT, "va-1").get("status") or {}
    assert status.get("attached") is case.attached
    error = status.get("attachError") or {}
    assert error.get("errorCode") == case.error_code
    assert case.error_text in error.get("message", "")
    if case.attached:
        va = world.stored(k.VOLUME_ATTACHMENT, "va-1")
        assert FINALIZER in va["metadata"]["finalizers"]
        assert va["metadata"]["annotations"]["csi.alpha.kubernetes.io/node-id"] == "id-node-1"
        assert FINALIZER in world.stored(k.PV, "pv-1")["metadata"]["finalizers"]
        request = driver.calls_of("ControllerPublishVolume")[0].request
        assert isinstance(request, csi.ControllerPublishVolumeRequest)
        assert (request.volume_id, request.node_id) == ("handle-pv-1", "id-node-1")


async def test_a_failed_attach_succeeds_on_its_retry_and_clears_the_error(world: World) -> None:
    world.driver().answer("ControllerPublishVolume", grpc.StatusCode.UNAVAILABLE, csi.ControllerPublishVolumeResponse())
    world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
    await asyncio.sleep(0)
    assert await sync(world, "va-1") is not None
    assert await sync(world, "va-1") is None
    status = world.stored(k.VOLUME_ATTACHMENT, "va-1")["status"]
    assert status == {"attached": True}


async def test_detach(world: World) -> None:
    world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
    await asyncio.sleep(0)
    assert await sync(world, "va-1") is None
    await world.api.request("DELETE", k.VOLUME_ATTACHMENT.path("va-1"))
    await asyncio.sleep(0)
    assert await sync(world, "va-1") is None
    assert len(world.driver().calls_of("ControllerUnpublishVolume")) == 1
    assert world.api.get_object(k.VOLUME_ATTACHMENT, "va-1") is None  # its last finalizer went


async def test_an_attachment_gone_from_the_store_is_nothing_to_do(world: World) -> None:
    assert await sync(world, "va-gone") is None
    assert world.driver().calls_of("ControllerPublishVolume") == []
