"""Kubernetes Events as the sidecars post them, one place for every controller.

Repeats of the same (object, type, reason, message) within ten minutes update the first
Event's count and lastTimestamp instead of creating another, as client-go's recorder
does, so a claim retried for an hour leaves one Event, not hundreds.

Each event is signed as the sidecar that would have posted it signs its own (`Sources`,
docs/compatibility.md "Event sources"): `source.component` and `reportingComponent` name
that sidecar, so `kubectl get events --field-selector source=...`, dashboards and alert
rules keep working after a move; `reportingInstance` says `sidecarless/<replica>`. Events
of Sidecarless' own objects (DriverEndpoints) are signed `sidecarless`.

Two more of client-go's EventCorrelator rules, with its defaults, keep a noisy object from
flooding the API server: after 10 different messages of one (object, component, type,
reason) within 10 minutes, the next ones count into one "(combined from similar events): ..."
Event (`SimilarEvents`); and each (object, component, type) may post 25 events at once, then
one every 5 minutes (`SpamFilter`); repeats held back still count, so the next one that goes
out carries the true count.

Recording never waits for the API server and never fails the caller, as client-go's
broadcaster: the event is stamped and queued, and a few posters send the queue in order,
each object's events by one poster (so they arrive in the order they were recorded, and
two repeats never race to create one Event). A controller's next step no longer waits a
round trip per event (two per provisioned volume). An event that cannot be posted is
logged; one that does not fit the queue (the API server unreachable for long) is dropped,
logged and counted, where client-go drops it silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import Counter

from sidecarless.kube import EVENT, Kube, KubeError, NotFound
from sidecarless.vocabulary import now_rfc3339

Body = dict[str, Any]

log = logging.getLogger("sidecarless.events")

NORMAL = "Normal"
WARNING = "Warning"
_AGGREGATE_SECONDS = 600
_CACHE_SIZE = 4096
POSTERS = 4
MAX_QUEUED = 10_000  # events waiting to be posted, over all posters
EVENTS_DROPPED = Counter("sidecarless_events_dropped_total", "Events not posted because too many were waiting")
EVENTS_THROTTLED = Counter(
    "sidecarless_events_throttled_total", "Events held back by the spam filter (25 per object, then one per 5 min)"
)
# client-go tools/record/events_cache.go
SIMILAR_MAX_MESSAGES = 10
SIMILAR_SECONDS = 600.0
SPAM_BURST = 25
SPAM_REFILL_SECONDS = 300.0
COMBINED_PREFIX = "(combined from similar events): "
# Events of cluster-scoped objects (PVs, StorageClasses) go to "default", as client-go does.
_CLUSTER_EVENT_NAMESPACE = "default"


SNAPSHOT_CONTROLLER = "snapshot-controller"  # snapshot-controller's fixed component


@dataclass(frozen=True)
class Sources:
    """The `source.component` each sidecar's recorder signs with (read from v6.3, v2.2, v8.6).
    external-attacher posts no events."""

    process: str  # "<host>_<uuid>": sig-storage-lib-external-provisioner's per-process id

    def provisioner(self, driver: str) -> str:
        return f"{driver}_{self.process}"

    @staticmethod
    def resizer(driver: str) -> str:
        return f"external-resizer {driver}"

    @staticmethod
    def snapshotter(driver: str) -> str:
        return f"csi-snapshotter {driver}"

    @staticmethod
    def health_monitor(driver: str) -> str:
        return f"csi-pv-monitor-controller-{driver}"


class SimilarEvents:
    """client-go's EventAggregator: the message to post for an event, given the distinct
    messages its (object, component, type, reason) had in the last 10 minutes."""

    def __init__(self) -> None:
        self._records: OrderedDict[tuple[str, ...], tuple[set[str], float]] = OrderedDict()

    def message(self, key: tuple[str, ...], message: str, now: float) -> tuple[str, bool]:
        """(the message to post, whether it is the combined one)."""
        messages, last = self._records.pop(key, (set(), now))
        if now - last > SIMILAR_SECONDS:
            messages = set()
        messages.add(message)
        if len(messages) >= SIMILAR_MAX_MESSAGES:
            messages.discard(message)  # client-go's PopAny: the set stays at its maximum
            self._records[key] = (messages, now)
            result = (COMBINED_PREFIX + message, True)
        else:
            self._records[key] = (messages, now)
            result = (message, False)
        while len(self._records) > _CACHE_SIZE:
            self._records.popitem(last=False)
        return result


class SpamFilter:
    """client-go's EventSourceObjectSpamFilter: a token bucket per (object, component, type)."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[tuple[str, ...], tuple[float, float]] = OrderedDict()

    def allow(self, key: tuple[str, ...], now: float) -> bool:
        tokens, updated = self._buckets.pop(key, (float(SPAM_BURST), now))
        tokens = min(float(SPAM_BURST), tokens + (now - updated) / SPAM_REFILL_SECONDS)
        allowed = tokens >= 1
        self._buckets[key] = (tokens - 1 if allowed else tokens, now)
        while len(self._buckets) > _CACHE_SIZE:
            self._buckets.popitem(last=False)
        return allowed


@dataclass
class _Posted:
    name: str
    namespace: str
    count: int
    first_seen: float


@dataclass(frozen=True)
class _Pending:
    obj: Body
    event_type: str
    reason: str
    message: str
    stamp: str
    component: str


class EventRecorder:
    def __init__(self, kube: Kube, component: str, instance: str) -> None:
        self._kube = kube
        self.component = component
        self.instance = instance
        self.sources = Sources(f"{instance}_{uuid.uuid4()}")
        self._recent: OrderedDict[tuple[str, str, str, str, str], _Posted] = OrderedDict()
        self._similar = SimilarEvents()
        self._spam = SpamFilter()
        self.clock: Callable[[], float] = time.monotonic  # tests move it
        self._queues: list[asyncio.Queue[_Pending]] = []
        self._posters: list[asyncio.Task[None]] = []
        self._queued = 0

    async def normal(self, obj: Body, reason: str, message: str, *, source: str | None = None) -> None:
        self.record(obj, NORMAL, reason, message, source=source)

    async def warning(self, obj: Body, reason: str, message: str, *, source: str | None = None) -> None:
        self.record(obj, WARNING, reason, message, source=source)

    def signed(self, source: str) -> SignedEvents:
        """This recorder, signing every event with `source` (a sidecar's component)."""
        return SignedEvents(self, source)

    def record(self, obj: Body, event_type: str, reason: str, message: str, *, source: str | None = None) -> None:
        """Queue the event for posting, signed `source` (None: this recorder's own); return at once."""
        meta = obj.get("metadata", {})
        if self._queued >= MAX_QUEUED:
            EVENTS_DROPPED.inc()
            log.warning(
                "dropped event %s %s on %s: %d events wait to be posted",
                event_type,
                reason,
                meta.get("name"),
                self._queued,
            )
            return
        if not self._posters:
            self._start()
        shard = zlib.crc32(str(meta.get("uid") or meta.get("name") or "").encode()) % len(self._queues)
        self._queued += 1
        pending = _Pending(obj, event_type, reason, message, now_rfc3339(), source or self.component)
        self._queues[shard].put_nowait(pending)

    def _start(self) -> None:
        self._queues = [asyncio.Queue() for _ in range(POSTERS)]
        self._posters = [
            asyncio.create_task(self._post_loop(q), name=f"events-{i}") for i, q in enumerate(self._queues)
        ]

    async def _post_loop(self, queue: asyncio.Queue[_Pending]) -> None:
        while True:
            pending = await queue.get()
            try:
                await self._post(pending)
            finally:
                self._queued -= 1
                queue.task_done()

    async def flush(self) -> None:
        """Wait until every event recorded so far has been posted (or given up on)."""
        for queue in self._queues:
            await queue.join()

    async def close(self, timeout: float = 5.0) -> None:
        """Post what is queued (for at most `timeout` s), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        for poster in self._posters:
            poster.cancel()
        for poster in self._posters:
            with contextlib.suppress(asyncio.CancelledError):
                await poster
        self._posters, self._queues = [], []
        self._queued = 0  # what was still queued is dropped with the posters

    async def _post(self, pending: _Pending) -> None:
        event_type, reason = pending.event_type, pending.reason
        meta = pending.obj.get("metadata", {})
        uid, now = str(meta.get("uid", meta.get("name", ""))), self.clock()
        message, combined = self._similar.message((uid, pending.component, event_type, reason), pending.message, now)
        if combined:
            pending = replace(pending, message=message)
        key = (uid, pending.component, event_type, reason, COMBINED_PREFIX if combined else message)
        posted = self._recent.get(key)
        if posted is None or now - posted.first_seen >= _AGGREGATE_SECONDS:
            # A new Event (or a new one after ten minutes), not posted yet: name "".
            posted = self._recent[key] = _Posted("", meta.get("namespace") or _CLUSTER_EVENT_NAMESPACE, 0, now)
            while len(self._recent) > _CACHE_SIZE:
                self._recent.popitem(last=False)
        self._recent.move_to_end(key)
        posted.count += 1  # held back or not: the next one posted says how many there were
        if not self._spam.allow((uid, pending.component, event_type), now):
            EVENTS_THROTTLED.inc()
            return
        try:
            if posted.name:
                try:
                    await self._kube.patch(
                        EVENT,
                        posted.name,
                        {"count": posted.count, "lastTimestamp": pending.stamp, "message": pending.message[:1024]},
                        posted.namespace,
                    )
                    return
                except NotFound:
                    pass  # expired (the API server's event TTL): post it again, as client-go does
            created = await self._kube.create(
                EVENT, self._event(pending, posted.namespace, posted.count), posted.namespace
            )
            posted.name = created["metadata"]["name"]
        except KubeError as error:
            # Kept: the next repeat posts it, with every occurrence counted.
            log.warning("could not post event %s %s on %s: %s", event_type, reason, meta.get("name"), error)
        except Exception:
            log.exception("could not post event %s %s on %s", event_type, reason, meta.get("name"))

    def _event(self, pending: _Pending, namespace: str, count: int = 1) -> Body:
        obj, stamp = pending.obj, pending.stamp
        meta = obj.get("metadata", {})
        involved = {
            "apiVersion": obj.get("apiVersion", ""),
            "kind": obj.get("kind", ""),
            "name": meta.get("name", ""),
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if meta.get("namespace"):
            involved["namespace"] = meta["namespace"]
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name', 'object')}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": involved,
            "reason": pending.reason,
            "message": pending.message[:1024],
            "type": pending.event_type,
            **self._signature(pending.component),
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": count,
        }

    def _signature(self, component: str) -> Body:
        if component == self.component:
            return {
                "source": {"component": component, "host": self.instance},
                "reportingComponent": component,
                "reportingInstance": self.instance,
            }
        # As a sidecar's client-go recorder: no host; the instance shows who really posted it.
        return {
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": f"{self.component}/{self.instance}",
        }


class SignedEvents:
    """An EventRecorder that signs with one sidecar's component: what a controller holds."""

    def __init__(self, recorder: EventRecorder, source: str) -> None:
        self._recorder = recorder
        self.source = source

    async def normal(self, obj: Body, reason: str, message: str) -> None:
        self._recorder.record(obj, NORMAL, reason, message, source=self.source)

    async def warning(self, obj: Body, reason: str, message: str) -> None:
        self._recorder.record(obj, WARNING, reason, message, source=self.source)
