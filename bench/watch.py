"""When did each object reach a state? A list-then-watch that timestamps the first time it did.

A benchmark phase starts a :class:`Milestones` on one resource with a function that names
the object an event completes (or None), records when it asked for each object, and waits
until every expected name has been seen. Times are the benchmark's own monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from sidecarless.kube import Gone, Kube, Resource

Body = dict[str, Any]
# (event type, object) -> the name of what this event completes, or None
Reached = Callable[[str, Body], str | None]


async def list_and_watch(kube: Kube, resource: Resource, namespace: str | None) -> AsyncIterator[tuple[str, Body]]:
    """Every object as ADDED, then every change, for as long as the caller iterates.

    A watch whose resourceVersion etcd no longer keeps (410, a listing of thousands of
    objects outlasting compaction) lists again: every object again as ADDED, which only
    repeats what a milestone already has."""
    while True:
        listing = await kube.request("GET", resource.path(namespace=namespace))
        for item in listing["items"]:
            yield "ADDED", item
        version = listing["metadata"]["resourceVersion"]
        try:
            while True:
                async for kind, obj in kube.watch(resource, version, namespace=namespace):
                    version = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        yield kind, obj
        except Gone:
            continue


class Milestones:
    """First time each expected object reached a state, and when it was asked to."""

    def __init__(self, kube: Kube, resource: Resource, namespace: str | None, reached: Reached) -> None:
        self.kube, self.resource, self.namespace, self.reached = kube, resource, namespace, reached
        self.asked: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.expected: set[str] = set()
        self._complete = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Milestones:
        self._task = asyncio.create_task(self._follow(), name=f"watch-{self.resource.plural}")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def expect(self, names: set[str]) -> None:
        self.expected = set(names)
        self._check()

    def ask(self, name: str) -> None:
        self.asked.setdefault(name, time.monotonic())

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._complete.wait(), timeout)
        except TimeoutError:
            missing = sorted(self.expected - set(self.done))
            raise TimeoutError(
                f"{len(missing)} of {len(self.expected)} {self.resource.plural} not done after {timeout:.0f}s, "
                f"e.g. {missing[:5]}"
            ) from None
        if self._task is not None and self._task.done():
            self._task.result()  # the watch failed: say how

    def latencies(self) -> list[float]:
        """Seconds from asking to done, for every expected object."""
        return [self.done[name] - self.asked[name] for name in self.expected if name in self.asked]

    def finished_at(self) -> float:
        return max(self.done[name] for name in self.expected)

    async def _follow(self) -> None:
        try:
            async for kind, obj in list_and_watch(self.kube, self.resource, self.namespace):
                name = self.reached(kind, obj)
                if name is not None and name not in self.done:
                    self.done[name] = time.monotonic()
                    self._check()
        finally:
            self._complete.set()  # a failed watch wakes the waiter, who re-raises

    def _check(self) -> None:
        if self.expected and self.expected <= set(self.done):
            self._complete.set()
