"""The controllers under sharding, on the fake world: a replica does nothing at all for an
endpoint it does not hold (no CSI call, no write, no Event), picks its objects up the moment
it takes the Lease, and a call in flight when the Lease goes is cancelled and not retried here."""

from __future__ import annotations

import asyncio

from csi_client import CSIClient, csi
from sidecarless import kube as k
from sidecarless.endpoints.live import Endpoint
from sidecarless.shards import SHARED
from sidecarless.workqueue import Elsewhere, WorkQueue
from tests.unit.fakeworld import World, attachment, bound_pair, csinode, simulate, storage_class
from tests.unit.test_provisioner_sync import created, pending_claim


def claim_of(name: str, class_name: str) -> dict[str, object]:
    claim = pending_claim(storageClassName=class_name)
    claim["metadata"] = {**claim["metadata"], "name": name, "uid": f"uid-{name}"}
    return claim


def test_a_replica_leaves_the_endpoints_it_does_not_hold_alone() -> None:
    async def main() -> None:
        world = World()
        held = {"ep-a"}
        world.context.endpoints.holds = lambda name: (name or SHARED) in held
        try:
            await world.endpoint("ep-a")
            await world.endpoint("ep-b")
            for endpoint in ("ep-a", "ep-b"):
                world.driver(endpoint).answer("CreateVolume", created)
                world.api.put(k.STORAGE_CLASS, storage_class(f"class-{endpoint}", endpoint=endpoint))
            world.api.put(k.STORAGE_CLASS, storage_class("class-nowhere", endpoint="ep-missing"))
            world.api.put(k.PVC, claim_of("on-a", "class-ep-a"))
            world.api.put(k.PVC, claim_of("on-b", "class-ep-b"))
            world.api.put(k.PVC, claim_of("nowhere", "class-nowhere"))
            world.start()
            await world.settle()
            assert world.driver("ep-a").calls_of("CreateVolume")
            assert not world.driver("ep-b").calls_of("CreateVolume")
            touched = {w.key for w in world.api.writes if w.plural in ("persistentvolumeclaims", "persistentvolumes")}
            assert "default/on-b" not in touched
            assert world.api.events("on-b") == []
            # The claim routed to an endpoint that does not exist is the shared Lease's to report.
            assert world.api.events("nowhere") == []
            assert all(queue.failures(key) == 0 for queue in world.queues() for key in ("default/on-b",))

            held.update({"ep-b", SHARED})  # the Leases are taken: the shards tell the controllers
            await world.controllers.endpoint_changed("ep-b")
            for informer in world.informers:
                await informer.resync_once()
            await world.settle()
            assert world.driver("ep-b").calls_of("CreateVolume")
            assert any("does not exist" in message for _, _, message in world.api.events("nowhere"))
        finally:
            await world.stop()

    simulate(main)


def test_a_replica_not_holding_an_endpoint_does_not_attach_through_its_namesake() -> None:
    """Two endpoints of one driver: an attachment of ep-b's volume is not done through ep-a."""

    async def main() -> None:
        world = World()
        world.context.endpoints.holds = lambda name: name == "ep-a"
        try:
            await world.endpoint("ep-a")
            await world.endpoint("ep-b")
            world.api.put(k.STORAGE_CLASS, storage_class("fast", endpoint="ep-b"))
            pvc, pv = bound_pair("data", "pv-1")
            world.api.put(k.PVC, pvc)
            world.api.put(k.PV, pv)
            world.api.put(k.CSI_NODE, csinode("node-1"))
            world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
            world.start()
            await world.settle()
            assert not world.driver("ep-a").calls_of("ControllerPublishVolume")
            assert not world.driver("ep-b").calls_of("ControllerPublishVolume")
            assert not world.api.writes_to("volumeattachments")
        finally:
            await world.stop()

    simulate(main)


def test_a_call_in_flight_when_the_lease_goes_is_cancelled_and_dropped() -> None:
    async def main() -> None:
        world = World()
        held = {"ep": True}
        world.context.endpoints.holds = lambda name: held["ep"]
        try:
            endpoint: Endpoint = await world.endpoint("ep")
            driver = world.driver()
            driver.answer("CreateVolume", created)
            driver.hold = asyncio.Event()  # CreateVolume hangs: the driver is slow
            world.api.put(k.STORAGE_CLASS, storage_class("fast"))
            world.api.put(k.PVC, claim_of("data", "fast"))
            world.start()
            await asyncio.sleep(1)
            assert endpoint.in_flight == 1
            held["ep"] = False  # the Lease went
            await endpoint.abandon(grace=0.5)
            assert endpoint.in_flight == 0
            await asyncio.sleep(60)  # no retry here: the key was dropped, not backed off
            assert len(driver.calls_of("CreateVolume")) == 1
            assert not world.api.writes_to("persistentvolumes")
        finally:
            await world.stop()

    simulate(main)


async def test_no_csi_call_leaves_a_replica_that_does_not_hold_the_endpoint() -> None:
    world = World()
    try:
        endpoint = await world.endpoint("ep")
        world.context.endpoints.holds = lambda name: False
        calls = len(world.driver().calls)
        try:
            await endpoint.call(
                CSIClient.create_volume, pending_request(), operation="CreateVolume", obj="default/data"
            )
        except Elsewhere:
            pass
        else:
            raise AssertionError("the call went out")
        assert len(world.driver().calls) == calls
        assert not endpoint.active("provisioner")
    finally:
        await world.stop()


def pending_request() -> csi.CreateVolumeRequest:
    return csi.CreateVolumeRequest(name="pvc-1")


async def test_a_queue_drops_a_key_served_elsewhere() -> None:
    runs: list[str] = []

    async def handler(key: str) -> None:
        runs.append(key)
        raise Elsewhere("another replica's")

    queue: WorkQueue[str] = WorkQueue("t", handler, workers=1)
    queue.start()
    try:
        queue.add("a")
        await asyncio.sleep(0.05)
        assert runs == ["a"]
        assert queue.failures("a") == 0
        assert queue.idle
    finally:
        await queue.stop()
