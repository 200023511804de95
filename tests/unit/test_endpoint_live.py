"""A DriverEndpoint's timeouts.operation and maxInFlight apply to the live connection, without a restart."""

from __future__ import annotations

import asyncio

from csi_client import CSIClient, csi
from tests.unit.fakeworld import FakeDriver, World


async def test_a_changed_operation_timeout_and_max_in_flight_apply_to_the_live_endpoint() -> None:
    world = World()
    driver = FakeDriver()
    try:
        endpoint = await world.endpoint("ep", driver, timeouts={"operation": "60s"}, maxInFlight=1)
        driver.hold = asyncio.Event()

        async def publish(n: int) -> None:
            request = csi.ControllerPublishVolumeRequest(volume_id=f"v{n}", node_id="n")
            await endpoint.call(CSIClient.controller_publish_volume, request, operation="Publish", obj=str(n))

        calls = [asyncio.create_task(publish(n)) for n in range(3)]
        await asyncio.sleep(0.01)
        assert endpoint.in_flight == 1  # maxInFlight: 1

        same = await world.endpoint("ep", driver, timeouts={"operation": "5s"}, maxInFlight=3)
        assert same is endpoint  # only non-connection fields changed: the connection is kept
        await asyncio.sleep(0.01)
        assert endpoint.in_flight == 3  # the waiting calls went at once under the new limit
        driver.hold.set()
        await asyncio.gather(*calls)

        before = len(driver.timeouts)
        await publish(9)
        assert driver.timeouts[before:] == [5.0]
    finally:
        await world.stop()


async def test_a_lowered_max_in_flight_holds_new_calls_until_enough_have_finished() -> None:
    world = World()
    driver = FakeDriver()
    try:
        endpoint = await world.endpoint("ep", driver, maxInFlight=2)
        driver.hold = asyncio.Event()

        async def capabilities() -> None:
            request = csi.ControllerGetCapabilitiesRequest()
            await endpoint.call(CSIClient.controller_get_capabilities, request, operation="Capabilities", obj="")

        first = [asyncio.create_task(capabilities()) for _ in range(2)]
        await asyncio.sleep(0.01)
        await world.endpoint("ep", driver, maxInFlight=1)
        later = asyncio.create_task(capabilities())
        await asyncio.sleep(0.01)
        assert endpoint.in_flight == 2  # the new call waits: two are in flight, one is allowed
        driver.hold.set()
        await asyncio.gather(*first, later)
        assert endpoint.in_flight == 0
    finally:
        await world.stop()
