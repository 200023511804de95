"""The provisioner's claim sync on the fake world, table by table."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from csi_client import csi
from sidecarless import kube as k
from sidecarless.workqueue import Requeue
from tests.unit.fakeworld import World, storage_class

GIB = 1024**3
UID = str(uuid.UUID(int=1))


def pending_claim(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "data",
            "namespace": "default",
            "uid": UID,
            "annotations": {"volume.kubernetes.io/storage-provisioner": "fake.csi.example.com"},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "fast",
            "volumeMode": "Filesystem",
            **spec,
        },
        "status": {"phase": "Pending"},
    }


def created(request: Any) -> csi.CreateVolumeResponse:
    return csi.CreateVolumeResponse(volume=csi.Volume(volume_id=f"id-{request.name}", capacity_bytes=GIB))


@pytest.fixture
async def world() -> AsyncIterator[World]:
    world = World()
    await world.endpoint("ep")
    world.api.put(k.STORAGE_CLASS, storage_class("fast"))
    await asyncio.sleep(0)
    yield world
    await world.stop()


@dataclass
class Case:
    name: str
    create: list[Any] = field(default_factory=lambda: [created])  # the driver's answers
    claim: dict[str, Any] = field(default_factory=pending_claim)
    conflicts: int = 0  # PV creations answered 409 (it exists already) first
    calls: int = 1
    volume: bool = False  # a PV exists afterwards
    event: str = "ProvisioningSucceeded"
    retry_after: float | str | None = "none"  # "none": no retry; None: the backoff; or seconds
    journal_kept: bool = False


CASES = [
    Case("success", volume=True),
    Case("final error", [grpc.StatusCode.INTERNAL], event="ProvisioningFailed", retry_after=None),
    Case("infeasible", [grpc.StatusCode.INVALID_ARGUMENT], event="ProvisioningFailed", retry_after=300.0),
    Case(
        "may still be in progress",
        [grpc.StatusCode.DEADLINE_EXCEEDED],
        event="ProvisioningFailed",
        retry_after=None,
        journal_kept=True,  # the driver may still make it: the journal must keep it
    ),
    Case("the PV exists already (a retry after a crash)", conflicts=1, volume=False),
    Case(
        "a selector",
        claim=pending_claim(selector={"matchLabels": {"a": "b"}}),
        calls=0,
        event="ProvisioningFailed",
        retry_after=300.0,
    ),
    Case(
        "another provisioner's claim",
        claim={**pending_claim(), "metadata": {**pending_claim()["metadata"], "annotations": {}}},
        calls=0,
        event="",
        retry_after="none",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_provision(world: World, case: Case) -> None:
    driver = world.driver()
    driver.answer("CreateVolume", *case.create)
    world.api.put(k.PVC, case.claim)
    await asyncio.sleep(0)
    if case.conflicts:
        world.api.fail_next("POST", "persistentvolumes", 409, case.conflicts)

    outcome: Exception | None = None
    try:
        await world.controllers.provisioner.sync_claim("default/data")
    except Exception as error:  # what the work queue retries on
        outcome = error
    await asyncio.sleep(0.05)  # events posted, the journal written

    if case.retry_after == "none":
        assert outcome is None, outcome
    else:
        assert isinstance(outcome, Requeue), outcome
        assert outcome.delay == case.retry_after
    calls = driver.calls_of("CreateVolume")
    assert len(calls) == case.calls
    name = f"pvc-{UID}"
    if calls:
        request = calls[0].request
        assert isinstance(request, csi.CreateVolumeRequest)
        assert (request.name, request.capacity_range.required_bytes) == (name, GIB)
    volume = world.api.get_object(k.PV, name)
    assert (volume is not None) == case.volume
    if volume is not None:
        assert volume["spec"]["csi"]["volumeHandle"] == f"id-{name}"
        assert volume["spec"]["claimRef"]["uid"] == UID
    reasons = {reason for _, reason, _ in world.api.events("data")}
    assert (case.event in reasons) if case.event else not reasons
    assert world.controllers.provisioner.journal_holds("ep", "default/data") == case.journal_kept
