"""In-memory copies of watched objects, kept current by the Kopf event handlers (an informer cache).

Stored bodies drop `metadata.managedFields`, the largest part of most objects and one
no controller here reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Body = dict[str, Any]


def object_key(body: Body) -> str:
    meta = body.get("metadata", {})
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def slim(body: Body) -> Body:
    meta = body.get("metadata", {})
    if "managedFields" not in meta:
        return body
    return {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def labels_only(body: Body) -> Body:
    meta = body.get("metadata", {})
    return {"metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})}}


def drivers_only(body: Body) -> Body:
    return {
        "metadata": {"name": body["metadata"]["name"]},
        "spec": {"drivers": (body.get("spec") or {}).get("drivers") or []},
    }


class Store:
    """Objects of one kind by key. `project` keeps only what the controllers read (e.g. a
    Node's labels), so large clusters cost little memory."""

    def __init__(self, kind: str, project: Callable[[Body], Body] = slim) -> None:
        self.kind = kind
        self._objects: dict[str, Body] = {}
        self._project = project

    def apply_event(self, event_type: str | None, body: Body) -> str:
        """Record a watch event (None: the initial listing); return the object's key."""
        key = object_key(body)
        if event_type == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = self._project(dict(body))
        return key

    def get(self, key: str) -> Body | None:
        return self._objects.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def values(self) -> Iterator[Body]:
        return iter(list(self._objects.values()))
