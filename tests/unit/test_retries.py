"""Retries really back off: a controller's own writes must not cut a key's backoff short.

external-attacher filters the VolumeAttachment updates that only change its error fields
(`shouldEnqueueVAChange`), because "if they were enqueued, Attach()/Detach() would be
called again, breaking exponential backoff". These tests run on simulated time: two
minutes of the default schedule (1 s doubling to 5 min) pass in milliseconds, and the
stamps the controllers write change every simulated second, as they would.
"""

from __future__ import annotations

import asyncio
import itertools

import grpc

from sidecarless import kube as k
from tests.unit.fakeworld import World, attachment, bound_volume_on_a_node, simulate

# Failures at 0, 1, 3, 7, 15, 31, 63 s (and, with -10 % jitter, at about 114 s).
MOST_CALLS_IN_TWO_MINUTES = 8


def assert_backed_off(times: list[float]) -> None:
    """No call again at once, each wait about twice the one before, no more calls than the schedule has."""
    assert 6 <= len(times) <= MOST_CALLS_IN_TWO_MINUTES, times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.9, times  # the first retry waits the initial delay (1 s, -10 % jitter)
    for earlier, later in itertools.pairwise(gaps):
        assert later >= 1.6 * earlier, times  # doubling, give or take the jitter


def test_a_failing_publish_is_retried_on_the_backoff_schedule() -> None:
    async def main() -> list[float]:
        world = World()
        try:
            await world.endpoint("ep")
            world.driver().answer("ControllerPublishVolume", grpc.StatusCode.INTERNAL)
            bound_volume_on_a_node(world)
            world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
            world.start()
            await asyncio.sleep(120)
            # Each failure was still written where a user looks.
            error = world.stored(k.VOLUME_ATTACHMENT, "va-1")["status"]["attachError"]
            assert error["errorCode"] == grpc.StatusCode.INTERNAL.value[0]
            return [c.at for c in world.driver().calls_of("ControllerPublishVolume")]
        finally:
            await world.stop()

    assert_backed_off(simulate(main))


def test_a_failing_expansion_is_retried_on_the_backoff_schedule() -> None:
    async def main() -> list[float]:
        world = World()
        try:
            await world.endpoint("ep")
            world.driver().answer("ControllerExpandVolume", grpc.StatusCode.INTERNAL)
            bound_volume_on_a_node(world)
            world.start()
            await world.settle()
            world.api.edit(k.PVC, "default/data", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}})
            await asyncio.sleep(120)
            reasons = [reason for _, reason, _ in world.api.events("data")]
            assert "VolumeResizeFailed" in reasons
            return [c.at for c in world.driver().calls_of("ControllerExpandVolume")]
        finally:
            await world.stop()

    assert_backed_off(simulate(main))
