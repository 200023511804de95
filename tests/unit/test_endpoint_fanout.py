"""An endpoint that serves again (or is changed) hands every controller its keys again at once:
none waits out a backoff it built up while the driver was away."""

from __future__ import annotations

import asyncio

import grpc

from csi_client import csi
from sidecarless import kube as k
from sidecarless.watches import Controller
from sidecarless.workqueue import WorkQueue
from tests.unit.fakeworld import World, attachment, bound_pair, csinode, simulate, storage_class


def ready() -> csi.ProbeResponse:
    response = csi.ProbeResponse()
    response.ready.value = True
    return response


def test_an_endpoint_serving_again_requeues_attachments_and_expansions_at_once() -> None:
    async def main() -> tuple[list[float], list[float], float]:
        world = World()
        try:
            await world.endpoint("ep")
            driver = world.driver()
            driver.answer("Probe", grpc.StatusCode.UNAVAILABLE)
            await world.context.endpoints.refresh("ep")
            assert not world.context.endpoints.get("ep").serving  # type: ignore[union-attr]
            world.api.put(k.STORAGE_CLASS, storage_class("fast"))
            pvc, pv = bound_pair("data", "pv-1")
            world.api.put(k.PVC, pvc)
            world.api.put(k.PV, pv)
            world.api.put(k.CSI_NODE, csinode("node-1"))
            world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
            world.start()
            await world.settle()
            world.api.edit(k.PVC, "default/data", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}})
            await asyncio.sleep(100)  # retries while it is away: at 1, 3, 7, ..., 63 s; the next near 127 s
            driver.answer("Probe", ready())
            back = asyncio.get_running_loop().time()
            await world.context.endpoints.refresh("ep")
            await asyncio.sleep(2)
            publish = [c.at for c in driver.calls_of("ControllerPublishVolume")]
            expand = [c.at for c in driver.calls_of("ControllerExpandVolume")]
            return publish, expand, back
        finally:
            await world.stop()

    publish, expand, back = simulate(main)
    assert publish, "never published"
    assert publish[0] - back < 1, (publish, back)
    assert expand, "never expanded"
    assert expand[0] - back < 1, (expand, back)


async def test_every_controller_is_told_of_an_endpoint_change() -> None:
    world = World()
    try:
        controllers = world.controllers.all()
        assert len(controllers) == 10  # leaks, health, capacity, provisioner, attacher, resizer, snapshots, groups
        for controller in controllers:
            assert isinstance(controller, Controller), controller
        stores = world.context.stores
        pvc, pv = bound_pair("data", "pv-1")
        for store, body in [
            (stores.classes, storage_class("fast")),
            (stores.claims, pvc),
            (stores.volumes, pv),
            (stores.attachments, attachment("va-1", "pv-1")),
            (stores.snapshots, {"metadata": {"name": "snap", "namespace": "default"}}),
            (stores.contents, {"metadata": {"name": "snapcontent-1"}}),
            (stores.group_snapshots, {"metadata": {"name": "group", "namespace": "default"}}),
            (stores.group_contents, {"metadata": {"name": "groupsnapcontent-1"}}),
        ]:
            store.apply_event(None, body)  # in the stores, in no queue yet
        await world.endpoint("ep")  # configured: EndpointRegistry.on_change
        for controller in controllers:
            if controller in (world.controllers.leaks, world.controllers.health):
                continue  # no queue: its next periodic check looks anyway
            depth = sum(q.depth for q in vars(controller).values() if isinstance(q, WorkQueue))
            assert depth > 0, type(controller).__name__
    finally:
        await world.stop()
