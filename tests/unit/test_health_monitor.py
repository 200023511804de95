"""Volume health on the fake world: abnormal volumes are a VolumeConditionAbnormal warning on
their claim, a recovery a VolumeConditionNormal while the abnormal event lives, signed as
external-health-monitor's controller; ListVolumes preferred, ControllerGetVolume otherwise."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from csi_client import csi
from sidecarless import health_monitor
from sidecarless import kube as k
from tests.unit.fakeworld import FakeDriver, World, bound_pair, storage_class

Body = dict[str, Any]
DRIVER = "fake.csi.example.com"


def listed(abnormal: bool, message: str = "") -> csi.ListVolumesResponse:
    response = csi.ListVolumesResponse()
    entry = response.entries.add()
    entry.volume.volume_id = "handle-pv-1"
    entry.status.volume_condition.abnormal = abnormal
    entry.status.volume_condition.message = message
    return response


def got(abnormal: bool, message: str = "") -> csi.ControllerGetVolumeResponse:
    response = csi.ControllerGetVolumeResponse()
    response.volume.volume_id = "handle-pv-1"
    response.status.volume_condition.abnormal = abnormal
    response.status.volume_condition.message = message
    return response


async def scene(way: str) -> World:
    world = World()
    driver = FakeDriver()
    driver.controller = frozenset({*driver.controller, "VOLUME_CONDITION", way})
    await world.endpoint("ep", driver)
    world.api.put(k.STORAGE_CLASS, storage_class("fast"))
    pvc, pv = bound_pair("data", "pv-1")
    pv["status"] = {"phase": "Bound"}
    world.api.put(k.PVC, pvc)
    world.api.put(k.PV, pv)
    await asyncio.sleep(0)
    return world


@pytest.mark.parametrize("way", ["LIST_VOLUMES", "GET_VOLUME"])
async def test_abnormal_then_recovered(way: str) -> None:
    world = await scene(way)
    try:
        answer = listed if way == "LIST_VOLUMES" else got
        method = "ListVolumes" if way == "LIST_VOLUMES" else "ControllerGetVolume"
        world.driver().answer(method, answer(True, "disk on fire"), answer(True, "disk on fire"), answer(False))
        monitor = world.controllers.health
        endpoint = world.context.endpoints.get("ep")
        assert endpoint is not None
        for _ in range(3):
            await monitor.check(endpoint)
        await monitor.events.flush()
        events = {(reason, message) for _, reason, message in world.api.events("data")}
        assert events == {
            ("VolumeConditionAbnormal", "disk on fire"),
            ("VolumeConditionNormal", "The Volume returns to the healthy state"),
        }
        assert set(world.api.event_sources("data").values()) == {f"csi-pv-monitor-controller-{DRIVER}"}
        assert world.driver().calls_of(method), "asked the preferred way"
    finally:
        await world.stop()


async def test_a_healthy_volume_never_abnormal_says_nothing_and_a_driver_without_the_capability_is_not_asked() -> None:
    world = await scene("LIST_VOLUMES")
    try:
        world.driver().answer("ListVolumes", listed(False))
        endpoint = world.context.endpoints.get("ep")
        assert endpoint is not None
        assert await world.controllers.health.check(endpoint) == []
        assert endpoint.info is not None
        endpoint.info = replace(endpoint.info, controller=endpoint.info.controller - {"VOLUME_CONDITION"})
        calls = len(world.driver().calls_of("ListVolumes"))
        assert await world.controllers.health.check(endpoint) == []
        assert len(world.driver().calls_of("ListVolumes")) == calls
    finally:
        await world.stop()


def test_how_a_driver_is_asked() -> None:
    assert health_monitor.monitors(frozenset({"VOLUME_CONDITION", "LIST_VOLUMES", "GET_VOLUME"})) == "LIST_VOLUMES"
    assert health_monitor.monitors(frozenset({"VOLUME_CONDITION", "GET_VOLUME"})) == "GET_VOLUME"
    assert health_monitor.monitors(frozenset({"LIST_VOLUMES", "GET_VOLUME"})) is None
    assert health_monitor.monitors(frozenset({"VOLUME_CONDITION"})) is None


def test_recovery_is_told_only_while_the_abnormal_event_lives() -> None:
    claim: Body = {"metadata": {"name": "data", "namespace": "default", "uid": "u"}}
    volume: Body = {"spec": {"csi": {"volumeHandle": "h"}, "claimRef": {"namespace": "default", "name": "data"}}}
    healthy = {"h": health_monitor.Condition(False, "")}
    claims = {"default/data": claim}
    assert health_monitor.judge([volume], healthy, claims, {"u": 0.0}, now=10.0)[0].message.startswith("The Volume")
    assert health_monitor.judge([volume], healthy, claims, {"u": 0.0}, now=3601.0) == []
    assert health_monitor.judge([volume], {}, claims, {"u": 0.0}, now=10.0) == [], "not listed: nothing"
