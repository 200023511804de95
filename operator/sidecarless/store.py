"""In-memory copies of watched objects, kept current by the informers (an informer cache).

Stored bodies drop `metadata.managedFields`, the largest part of most objects and one
no controller here reads.

Our own writes go in too, as soon as the API server answers (:meth:`Store.remember`), so
the next step of a controller never works from the copy its last write replaced: that
stale copy's resourceVersion would make the next patch conflict and wait a retry (about
one conflict per snapshot and per expansion before this). Like client-go's
MutationCache, the newer of two copies wins by comparing resourceVersions as integers,
which etcd-backed API servers hand out; a non-integer one is always taken as newer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Protocol

from sidecarless.vocabulary import object_key

Body = dict[str, Any]


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


def _beyond_status(body: Body) -> Body:
    """What an object says besides its status and the bookkeeping every write changes."""
    meta = {k: v for k, v in body.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
    return {**{k: v for k, v in body.items() if k != "status"}, "metadata": meta}


def _version(body: Body) -> int | None:
    raw = body.get("metadata", {}).get("resourceVersion", "")
    return int(raw) if isinstance(raw, str) and raw.isdigit() else None


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
        elif not self._older_than_stored(key, body):
            self._objects[key] = self._project(dict(body))
        return key

    def unchanged_but_status(self, event_type: str | None, body: Body) -> bool:
        """Whether an event brings nothing but a new status of an object already held: or
        nothing at all, as the echo of our own write (already remembered), a listing again
        or an event older than the copy held. Such an event must not cut a retry short."""
        if event_type == "DELETED":
            return False
        stored = self._objects.get(object_key(body))
        if stored is None:
            return False
        new, old = _version(body), _version(stored)
        if new is not None and old is not None and new < old:
            return True
        return _beyond_status(self._project(dict(body))) == _beyond_status(stored)

    def remember(self, body: Body) -> None:
        """Our own write's result: keep it unless the watch already brought something newer.

        Only objects the watch has shown us are updated: one it reported DELETED (or never
        reported yet) stays out, so a late answer cannot bring back a ghost.
        """
        key = object_key(body)
        if key not in self._objects or self._older_than_stored(key, body):
            return
        meta = body.get("metadata", {})
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._objects.pop(key)  # the write removed the last finalizer: it is gone
            return
        self._objects[key] = self._project(dict(body))

    def _older_than_stored(self, key: str, body: Body) -> bool:
        stored = self._objects.get(key)
        if stored is None:
            return False
        new, old = _version(body), _version(stored)
        return new is not None and old is not None and new < old

    def get(self, key: str) -> Body | None:
        return self._objects.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def values(self) -> Iterator[Body]:
        return iter(list(self._objects.values()))


class HasKind(Protocol):
    """What a write names (kube.Resource): the kind decides which store keeps its result."""

    @property
    def kind(self) -> str: ...


@dataclass
class Stores:
    """What the watches have seen, by kind."""

    claims: Store = field(default_factory=lambda: Store("PersistentVolumeClaim"))
    volumes: Store = field(default_factory=lambda: Store("PersistentVolume"))
    classes: Store = field(default_factory=lambda: Store("StorageClass"))
    attachments: Store = field(default_factory=lambda: Store("VolumeAttachment"))
    drivers: Store = field(default_factory=lambda: Store("CSIDriver"))
    attribute_classes: Store = field(default_factory=lambda: Store("VolumeAttributesClass"))
    snapshots: Store = field(default_factory=lambda: Store("VolumeSnapshot"))
    contents: Store = field(default_factory=lambda: Store("VolumeSnapshotContent"))
    snapshot_classes: Store = field(default_factory=lambda: Store("VolumeSnapshotClass"))
    group_snapshots: Store = field(default_factory=lambda: Store("VolumeGroupSnapshot"))
    group_contents: Store = field(default_factory=lambda: Store("VolumeGroupSnapshotContent"))
    group_classes: Store = field(default_factory=lambda: Store("VolumeGroupSnapshotClass"))
    nodes: Store = field(default_factory=lambda: Store("Node", labels_only))
    csinodes: Store = field(default_factory=lambda: Store("CSINode", drivers_only))

    @cached_property
    def by_kind(self) -> dict[str, Store]:
        return {store.kind: store for store in (getattr(self, f.name) for f in fields(self))}

    def remember(self, resource: HasKind, body: Body) -> None:
        """Put the result of our own create or patch into the store of its kind, if one keeps it."""
        store = self.by_kind.get(resource.kind)
        if store is not None:
            store.remember(body)
