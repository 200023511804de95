"""Volume health end to end: the driver (behind driver_shim) reports a volume abnormal, the
claim gets external-health-monitor's VolumeConditionAbnormal warning, signed as its controller
signs; healthy again, VolumeConditionNormal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import DriverSpec, LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import EVENT, PV, PVC, Kube
from tests.conftest import short_tmpdir
from tests.e2e.conftest import claim, eventually, wait_ready
from tests.e2e.test_provisioner import bound_claim

pytestmark = pytest.mark.cluster

SICK = "sick.csi.sidecarless.dev"


@pytest.fixture
def sick_driver(cluster: LocalCluster) -> Iterator[Path]:
    """A driver whose ListVolumes reports the volumes a file names as abnormal; the file."""
    abnormal = short_tmpdir("slc-health-") / "abnormal"
    cluster.add_driver(DriverSpec(SICK, attach=False, abnormal_volumes=abnormal))
    yield abnormal
    cluster.remove_driver(SICK)


async def condition_event(kube: Kube, namespace: str, name: str, reason: str) -> dict[str, Any] | None:
    for event in await kube.list(EVENT, namespace):
        if event["involvedObject"].get("name") == name and event["reason"] == reason:
            return event
    return None


async def test_an_abnormal_volume_and_its_recovery_are_events_on_its_claim(
    kube: Kube,
    namespace: str,
    sick_driver: Path,
    exclusive: Callable[..., OperatorProcess],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    exclusive(SIDECARLESS_HEALTH_CHECK_SECONDS="1")
    endpoint = await make_endpoint(SICK)
    await wait_ready(kube, endpoint)
    class_name = await make_class(endpoint, provisioner=SICK)
    await kube.create(PVC, claim("data", class_name), namespace)
    volume = await kube.get(PV, (await bound_claim(kube, namespace, "data"))["spec"]["volumeName"])
    await asyncio.to_thread(sick_driver.write_text, f"{volume['spec']['csi']['volumeHandle']} the disk is on fire\n")

    abnormal = await eventually(
        lambda: condition_event(kube, namespace, "data", "VolumeConditionAbnormal"),
        what="a VolumeConditionAbnormal event on the claim",
        timeout=30,
    )
    assert abnormal["type"] == "Warning"
    assert abnormal["message"] == "the disk is on fire"
    assert abnormal["source"] == {"component": f"csi-pv-monitor-controller-{SICK}"}
    await asyncio.to_thread(sick_driver.write_text, "")
    recovered = await eventually(
        lambda: condition_event(kube, namespace, "data", "VolumeConditionNormal"),
        what="a VolumeConditionNormal event once it is healthy again",
        timeout=30,
    )
    assert recovered["type"] == "Normal"
    assert recovered["message"] == "The Volume returns to the healthy state"
