"""The long-lived objects every controller shares, built once at startup (Kopf's memo holds it)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from sidecarless.config import Settings
from sidecarless.endpoints.live import EndpointRegistry
from sidecarless.events import EventRecorder
from sidecarless.kube import Kube, Resource
from sidecarless.store import Store, drivers_only, labels_only

Body = dict[str, Any]


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

    def remember(self, resource: Resource, body: Body) -> None:
        """Put the result of our own create or patch into the store of its kind, if one keeps it."""
        store = self.by_kind.get(resource.kind)
        if store is not None:
            store.remember(body)


@dataclass
class Context:
    settings: Settings
    kube: Kube
    events: EventRecorder
    endpoints: EndpointRegistry
    stores: Stores
