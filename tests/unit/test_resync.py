"""Resync (SIDECARLESS_RESYNC_SECONDS): every informer hands its cached objects to the controllers
again every period, as client-go's resync does, and never cuts a backoff short."""

from __future__ import annotations

import asyncio
import itertools

import grpc

from sidecarless import kube as k
from sidecarless.informer import RESYNC_JITTER
from tests.unit.fakeworld import World, attachment, bound_volume_on_a_node, simulate

PERIOD = 60.0


def test_an_object_no_controller_was_told_of_is_handled_within_a_resync_period() -> None:
    async def main() -> list[float]:
        world = World(informers=True, resync_seconds=PERIOD)
        try:
            await world.endpoint("ep")
            bound_volume_on_a_node(world)
            world.start()
            await world.settle()
            # In the cache, but no controller heard of it (a change without an event of its own).
            world.api.watchers.pop("volumeattachments")
            world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
            world.context.stores.attachments.apply_event(None, world.stored(k.VOLUME_ATTACHMENT, "va-1"))
            await asyncio.sleep(PERIOD * (1 + RESYNC_JITTER) + 1)
            return [c.at for c in world.driver().calls_of("ControllerPublishVolume")]
        finally:
            await world.stop()

    calls = simulate(main)
    assert len(calls) == 1, calls
    assert PERIOD * (1 - RESYNC_JITTER) <= calls[0] <= PERIOD * (1 + RESYNC_JITTER) + 1, calls


def test_resyncs_do_not_cut_a_backoff_short_and_change_nothing() -> None:
    async def main() -> tuple[list[float], int]:
        world = World(informers=True, resync_seconds=5.0)
        try:
            await world.endpoint("ep")
            world.driver().answer("ControllerPublishVolume", grpc.StatusCode.INTERNAL)
            bound_volume_on_a_node(world)
            world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
            world.start()
            await asyncio.sleep(120)
            writes = len(world.api.writes)
            await asyncio.sleep(20)  # four more resyncs, and no retry due (the next is near 127 s)
            new_writes = [w for w in world.api.writes[writes:] if w.plural != "events"]
            return [c.at for c in world.driver().calls_of("ControllerPublishVolume")], len(new_writes)
        finally:
            await world.stop()

    times, writes = simulate(main)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.9, times
    for earlier, later in itertools.pairwise(gaps):
        assert later >= 1.6 * earlier, times
    assert writes <= 2, writes  # at most the one retry's error write


async def test_a_resync_of_settled_objects_costs_no_request_and_no_call() -> None:
    world = World()
    try:
        await world.endpoint("ep")
        bound_volume_on_a_node(world)
        world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
        world.start()
        await world.settle()
        await asyncio.sleep(0.1)  # the journal's and the events' writes too
        assert world.stored(k.VOLUME_ATTACHMENT, "va-1")["status"]["attached"] is True
        requests, calls = world.api.requests, len(world.driver().calls)
        for informer in world.informers:
            await informer.resync_once()
        await world.settle()
        await asyncio.sleep(0.1)
        assert (world.api.requests, len(world.driver().calls)) == (requests, calls)
    finally:
        await world.stop()
