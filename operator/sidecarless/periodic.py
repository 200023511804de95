"""Work a controller repeats on a timer (reconciles, sweeps, polls, checks): one way to run it.

The first round comes one period after `start` (the watches' first listings feed the
controllers meanwhile). A round that raises is logged and the next one comes anyway: a timer
that died of one bad round would silently stop a sweep for the rest of the process's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("sidecarless.periodic")


class Periodic:
    def __init__(self, name: str, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.seconds = seconds  # 0 or less: never
        self._action = action
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.seconds > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            try:
                await self._action()
            except Exception:
                log.exception("%s: this round failed; the next comes in %.0f s", self.name, self.seconds)
