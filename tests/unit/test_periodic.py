"""Timers of the controllers: a round that fails does not end the timer; 0 seconds is never."""

from __future__ import annotations

import asyncio

from sidecarless.periodic import Periodic
from tests.unit.fakeworld import simulate


def test_a_failing_round_is_logged_and_the_next_comes() -> None:
    async def main() -> list[float]:
        rounds: list[float] = []
        loop = asyncio.get_running_loop()

        async def action() -> None:
            rounds.append(loop.time())
            if len(rounds) == 1:
                raise RuntimeError("a bad round")

        periodic = Periodic("t", 10.0, action)
        periodic.start()
        await asyncio.sleep(35)
        await periodic.stop()
        return rounds

    assert [round(t) for t in simulate(main)] == [10, 20, 30]


def test_zero_seconds_never_runs() -> None:
    async def main() -> int:
        calls = 0

        async def action() -> None:
            nonlocal calls
            calls += 1

        periodic = Periodic("t", 0, action)
        periodic.start()
        await asyncio.sleep(100)
        await periodic.stop()
        return calls

    assert simulate(main) == 0
