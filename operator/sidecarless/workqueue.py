"""A keyed work queue with per-key exponential backoff, like client-go's rate-limited queue.

- A key added while waiting is not added twice; a key added while a worker handles it is
  handled again afterwards (nothing is lost, nothing runs twice at once).
- The handler returns normally when done (the key's backoff is forgotten), raises
  :class:`Requeue` to come back after a chosen delay, :class:`Elsewhere` to drop a key
  another replica serves (sharding), or raises anything else to come back after the
  key's next backoff step (initial x 2^failures, capped, with jitter).
  Whose schedule: `backoff_of(key)`'s, the retry settings of the DriverEndpoint that
  serves the key's object, else the queue's own.
- A *quiet* add (an event that changed nothing but the object's status, or only what
  we had written ourselves) does not cut a pending retry short, and does not run a key
  again whose run is ending in a retry: otherwise each failure's own status write would
  re-run it at once and defeat the backoff (external-attacher's shouldEnqueueVAChange).
  Otherwise a quiet add is an add.
- Depth and the age of the oldest waiting key are exported, per queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

K = TypeVar("K", bound=Hashable)

log = logging.getLogger("sidecarless.workqueue")

QUEUE_DEPTH = Gauge("sidecarless_workqueue_depth", "Keys waiting to be handled", ["name"])
QUEUE_OLDEST = Gauge("sidecarless_workqueue_oldest_seconds", "Age of the oldest waiting key", ["name"])
QUEUE_ADDS = Counter("sidecarless_workqueue_adds_total", "Keys added", ["name"])
QUEUE_RETRIES = Counter("sidecarless_workqueue_retries_total", "Keys re-queued after a failure", ["name"])


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 300.0
    jitter: float = 0.1  # +-10 %

    def delay(self, failures: int) -> float:
        # In floating point with a capped exponent, as client-go's ItemExponentialFailureRateLimiter:
        # 2 ** 1024 overflows a float, and a stuck key gets there.
        exponent = min(max(0, failures - 1), _MAX_EXPONENT)
        base = min(self.maximum, self.initial * 2.0**exponent)
        return float(base * (1 + random.uniform(-self.jitter, self.jitter)))


_MAX_EXPONENT = 62  # past any maximum / initial a schedule has
# A key whose retry could not be scheduled (a bug in the queue's own bookkeeping) comes back
# after this, rather than never.
FALLBACK_RETRY_SECONDS = 300.0


@dataclass(frozen=True)
class Quiet:
    """How quietly a watch event adds keys (see :meth:`WorkQueue.add`)."""

    own: bool = False  # the object's own keys: nothing but its status changed, or nothing we did not know
    others: bool = False  # keys woken through it (claims of a class, a content's snapshot): nothing changed at all


LOUD = Quiet()


class Requeue(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Handle this key again after `delay` seconds (None: the key's next backoff step)."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        self.delay = delay
        super().__init__(reason or "requeue")


class Elsewhere(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Drop this key: another replica does its work (it holds the Lease of the DriverEndpoint
    that serves the key's object). The key comes back when this replica takes that Lease."""


class WorkQueue(Generic[K]):
    def __init__(
        self,
        name: str,
        handler: Callable[[K], Awaitable[None]],
        *,
        workers: int,
        backoff: Backoff | None = None,
        backoff_of: Callable[[K], Backoff | None] | None = None,
    ) -> None:
        self.name = name
        self._handler = handler
        self._workers = workers
        self.backoff = backoff or Backoff()
        self._backoff_of = backoff_of
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._waiting: dict[K, float] = {}  # key -> when it was queued (in _ready)
        self._active: set[K] = set()
        self._dirty: set[K] = set()  # added again while active
        self._quietly_dirty: set[K] = set()  # added quietly while active
        self._retrying: set[K] = set()  # keys whose timer is a retry's (not an add_after's)
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Read when /metrics is scraped, not kept up to date at every add and take.
        QUEUE_DEPTH.labels(name).set_function(lambda: len(self._waiting))
        QUEUE_OLDEST.labels(name).set_function(self._oldest_wait)
        self._adds = QUEUE_ADDS.labels(name)

    # --- adding ----------------------------------------------------------------------

    def add(self, key: K, *, quiet: bool = False) -> None:
        """Handle `key` soon. `quiet`: nothing the key's sync acts on changed (see the module's
        docstring), so a retry that is pending, or that the running sync ends in, stands."""
        if quiet and key in self._retrying:
            return
        self._adds.inc()
        if quiet and key in self._active:
            self._quietly_dirty.add(key)
            return
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._retrying.discard(key)
        if key in self._active:
            self._dirty.add(key)
            return
        if key not in self._waiting:
            self._waiting[key] = time.monotonic()
            self._ready.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` after `delay` seconds, unless it is added sooner."""
        if delay <= 0:
            self.add(key)
            return
        if key in self._timers or key in self._waiting:
            return  # it comes back sooner anyway
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self._retrying.discard(key)
        self.add(key)

    def forget(self, key: K) -> None:
        """Reset the key's backoff (it succeeded, or its object is gone)."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    # --- running ---------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"{self.name}-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._retrying.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._active

    async def _worker(self) -> None:
        # A worker that died would silently take a share of the queue's capacity with it:
        # nothing a handler or the queue's own bookkeeping raises may end this loop.
        while True:
            key = await self._ready.get()
            try:
                await self._handle(key)
            except Exception:
                log.exception("%s: the queue failed around %s; retrying it", self.name, key)
                self._fallback(key)

    def _fallback(self, key: K) -> None:
        if key not in self._timers and key not in self._waiting:
            self._timers[key] = asyncio.get_running_loop().call_later(FALLBACK_RETRY_SECONDS, self._fire, key)

    async def _handle(self, key: K) -> None:
        self._waiting.pop(key, None)
        self._active.add(key)
        try:
            try:
                await self._handler(key)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                # Something the handler awaited was cancelled, not this worker: a failure.
                log.warning("%s: handling %s was cancelled; retrying it", self.name, key)
                self._retry(key, None)
            except Requeue as requeue:
                log.debug("%s: %s again later: %s", self.name, key, requeue)
                self._retry(key, requeue.delay)
            except Elsewhere as elsewhere:
                log.debug("%s: %s is not ours: %s", self.name, key, elsewhere)
                self.forget(key)
            except Exception:
                log.exception("%s: handling %s failed", self.name, key)
                self._retry(key, None)
            else:
                self.forget(key)
        finally:
            self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._quietly_dirty.discard(key)
                self.add(key)
            elif key in self._quietly_dirty:
                self._quietly_dirty.discard(key)
                self.add(key, quiet=True)  # nothing, if this run ended in a retry

    def _retry(self, key: K, delay: float | None) -> None:
        try:
            self._schedule_retry(key, delay)
        except Exception:
            log.exception("%s: could not schedule the retry of %s; trying it again later", self.name, key)
            self._fallback(key)

    def _schedule_retry(self, key: K, delay: float | None) -> None:
        QUEUE_RETRIES.labels(self.name).inc()
        if delay is None:
            self._failures[key] = self._failures.get(key, 0) + 1
            schedule = (self._backoff_of(key) if self._backoff_of is not None else None) or self.backoff
            delay = schedule.delay(self._failures[key])
        self.add_after(key, delay)
        if key in self._timers:
            self._retrying.add(key)

    def _oldest_wait(self) -> float:
        # Keys enter _waiting in time order and keep their first time: the first is the oldest.
        oldest = next(iter(self._waiting.values()), None)
        return time.monotonic() - oldest if oldest is not None else 0.0


def _being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (stop()), not just something it awaited."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
