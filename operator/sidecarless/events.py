"""Kubernetes Events as the sidecars post them, one place for every controller.

Repeats of the same (object, type, reason, message) within ten minutes update the first
Event's count and lastTimestamp instead of creating another, as client-go's recorder
does, so a claim retried for an hour leaves one Event, not hundreds. Posting an event
never fails the caller: a lost event is logged, not raised.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecarless.kube import EVENT, Kube, KubeError

Body = dict[str, Any]

log = logging.getLogger("sidecarless.events")

NORMAL = "Normal"
WARNING = "Warning"
_AGGREGATE_SECONDS = 600
_CACHE_SIZE = 4096
# Events of cluster-scoped objects (PVs, StorageClasses) go to "default", as client-go does.
_CLUSTER_EVENT_NAMESPACE = "default"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Posted:
    name: str
    namespace: str
    count: int
    first_seen: float


class EventRecorder:
    def __init__(self, kube: Kube, component: str, instance: str) -> None:
        self._kube = kube
        self.component = component
        self.instance = instance
        self._recent: OrderedDict[tuple[str, str, str, str], _Posted] = OrderedDict()

    async def normal(self, obj: Body, reason: str, message: str) -> None:
        await self.record(obj, NORMAL, reason, message)

    async def warning(self, obj: Body, reason: str, message: str) -> None:
        await self.record(obj, WARNING, reason, message)

    async def record(self, obj: Body, event_type: str, reason: str, message: str) -> None:
        meta = obj.get("metadata", {})
        key = (meta.get("uid", meta.get("name", "")), event_type, reason, message)
        try:
            posted = self._recent.get(key)
            if posted is not None and time.monotonic() - posted.first_seen < _AGGREGATE_SECONDS:
                posted.count += 1
                await self._kube.patch(
                    EVENT, posted.name, {"count": posted.count, "lastTimestamp": now_rfc3339()}, posted.namespace
                )
                self._recent.move_to_end(key)
                return
            namespace = meta.get("namespace") or _CLUSTER_EVENT_NAMESPACE
            created = await self._kube.create(
                EVENT, self._event(obj, namespace, event_type, reason, message), namespace
            )
            self._recent[key] = _Posted(created["metadata"]["name"], namespace, 1, time.monotonic())
            while len(self._recent) > _CACHE_SIZE:
                self._recent.popitem(last=False)
        except KubeError as error:
            self._recent.pop(key, None)
            log.warning("could not post event %s %s on %s: %s", event_type, reason, meta.get("name"), error)

    def _event(self, obj: Body, namespace: str, event_type: str, reason: str, message: str) -> Body:
        meta = obj.get("metadata", {})
        stamp = now_rfc3339()
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
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": self.component, "host": self.instance},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
