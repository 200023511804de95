"""Which DriverEndpoint serves an object (shared/design.md, "Routing"). Pure functions.

Every rule reads the watches' stores and `drivers`, the endpoints that exist and the driver
each serves (`EndpointRegistry.drivers()`), and answers an endpoint's name, or None: the
object is not Sidecarless' (the sidecars', or nobody's). A rule that names an endpoint
has checked that the endpoint serves the object's driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sidecarless.store import Stores
from sidecarless.vocabulary import ANN_ENDPOINT, key_of, ref_key

Body = dict[str, Any]
Drivers = Mapping[str, str]  # DriverEndpoint name -> the driver it serves

# The snapshot half's field: the VolumeSnapshot's source claim.
_SOURCE_CLAIM = "persistentVolumeClaimName"


def endpoint_of_class(storage_class: Body | None) -> str | None:
    """The endpoint a StorageClass (or a snapshot class) opts into with `sidecarless.io/endpoint`; None: not ours."""
    if storage_class is None:
        return None
    name = (storage_class.get("metadata", {}).get("annotations") or {}).get(ANN_ENDPOINT)
    return name or None


def endpoint_of_volume(volume: Body, storage_class: Body | None) -> str | None:
    """A PV follows its StorageClass, whoever provisioned it (so the sidecars' volumes move
    over with their class, and back). PVs carry only what the sidecars write; the
    `sidecarless.io/endpoint` annotation that earlier versions put on PVs is still
    honoured, so their volumes keep their endpoint."""
    legacy = (volume.get("metadata", {}).get("annotations") or {}).get(ANN_ENDPOINT)
    return legacy or endpoint_of_class(storage_class)


def endpoint_serving_driver(driver: str, drivers: Drivers) -> str | None:
    """For a PV whose StorageClass is gone: the one endpoint serving its driver; None when
    there is none, or several (which one made it cannot be told)."""
    names = [name for name, serving in drivers.items() if serving == driver]
    return names[0] if len(names) == 1 else None


def _driver_of(volume: Body) -> str:
    return str(((volume.get("spec") or {}).get("csi") or {}).get("driver") or "")


def _serving(name: str | None, driver: str | None, drivers: Drivers) -> str | None:
    return name if name is not None and drivers.get(name) == driver else None


def volume_route(stores: Stores, volume: Body) -> str | None:
    """The endpoint a PV is routed to, whether or not it exists (its class's, or its legacy annotation)."""
    class_name = (volume.get("spec") or {}).get("storageClassName") or ""
    return endpoint_of_volume(volume, stores.classes.get(class_name))


def volume_endpoint(stores: Stores, drivers: Drivers, volume: Body) -> str | None:
    """A PV's endpoint, if that endpoint serves the PV's driver (the resizer's rule)."""
    return _serving(volume_route(stores, volume), _driver_of(volume), drivers)


def deleting_endpoint(stores: Stores, drivers: Drivers, volume: Body) -> str | None:
    """The endpoint that deletes a PV: its class's; for a PV whose class was deleted, the one
    endpoint serving its driver, as external-provisioner still deletes those by driver name."""
    class_name = (volume.get("spec") or {}).get("storageClassName") or ""
    storage_class = stores.classes.get(class_name)
    if storage_class is None and class_name:
        return endpoint_of_volume(volume, None) or endpoint_serving_driver(_driver_of(volume), drivers)
    return endpoint_of_volume(volume, storage_class)


def attachment_endpoint(stores: Stores, drivers: Drivers, attachment: Body, volume: Body | None) -> str | None:
    """The PV's endpoint when it serves the attacher's driver; a PV not routed here is the
    sidecars'; else (no PV yet, or its endpoint serves another driver) one serving that driver."""
    driver = (attachment.get("spec") or {}).get("attacher")
    if volume is not None:
        name = volume_route(stores, volume)
        if name is None:
            return None
        if drivers.get(name) == driver:
            return name
    return next((name for name, serving in drivers.items() if serving == driver), None)


def volume_by_handle(volumes: Iterable[Body], driver: str, handle: str) -> Body | None:
    """The PV of `driver` with volume handle `handle`."""
    for volume in volumes:
        source = (volume.get("spec") or {}).get("csi") or {}
        if source.get("volumeHandle") == handle and source.get("driver") == driver:
            return volume
    return None


def awaits_volume(stores: Stores, drivers: Drivers, driver: str, handle: str) -> bool:
    """A (group) content cannot be routed yet: its driver is served here but its source PV is
    not in the store. After a restart contents may arrive before the PVs that route them; they
    must be retried, not dropped."""
    served = driver in drivers.values()
    return served and bool(handle) and volume_by_handle(stores.volumes.values(), driver, handle) is None


def content_endpoint(stores: Stores, drivers: Drivers, content: Body) -> str | None:
    """A VolumeSnapshotContent's: its class's annotation, else its source PV's endpoint."""
    spec = content.get("spec") or {}
    name = endpoint_of_class(stores.snapshot_classes.get(spec.get("volumeSnapshotClassName") or ""))
    if name is None:
        volume = _source_volume(stores, content)
        name = volume_route(stores, volume) if volume is not None else None
    return _serving(name, spec.get("driver"), drivers)


def _source_volume(stores: Stores, content: Body) -> Body | None:
    """The PV a dynamic content snapshots: through its VolumeSnapshot's claim, else by volume handle."""
    spec = content.get("spec") or {}
    handle = (spec.get("source") or {}).get("volumeHandle")
    if not handle:
        return None
    ref = spec.get("volumeSnapshotRef") or {}
    snapshot = stores.snapshots.get(ref_key(ref))
    claim_name = (((snapshot or {}).get("spec") or {}).get("source") or {}).get(_SOURCE_CLAIM)
    if claim_name:
        claim = stores.claims.get(key_of(ref.get("namespace"), claim_name))
        volume = stores.volumes.get(((claim or {}).get("spec") or {}).get("volumeName") or "")
        if volume is not None and ((volume.get("spec") or {}).get("csi") or {}).get("volumeHandle") == handle:
            return volume
    return volume_by_handle(stores.volumes.values(), str(spec.get("driver") or ""), str(handle))


def group_content_endpoint(
    stores: Stores, drivers: Drivers, group_class: Body | None, handles: list[str], driver: str
) -> str | None:
    """A group snapshot's: its class's annotation, else the endpoint of its first volume's PV."""
    name = endpoint_of_class(group_class)
    if name is None and handles:
        volume = volume_by_handle(stores.volumes.values(), driver, handles[0])
        name = volume_route(stores, volume) if volume is not None else None
    return _serving(name, driver, drivers)


def served_by(stores: Stores, name: str) -> dict[str, int]:
    """What endpoint `name` serves: PVs routed to it (through their class), how many of them are
    attached, and snapshot and group snapshot contents with a handle (of those volumes, or of a
    class routed to it). Its status counts, and what holds it while it is being deleted."""
    volumes = {
        v["metadata"]["name"]: ((v.get("spec") or {}).get("csi") or {}).get("volumeHandle")
        for v in stores.volumes.values()
        if volume_route(stores, v) == name
    }
    attachments = sum(
        1
        for a in stores.attachments.values()
        if ((a.get("spec") or {}).get("source") or {}).get("persistentVolumeName") in volumes
        and (a.get("status") or {}).get("attached")
    )
    handles = set(volumes.values())
    routed_classes = {c["metadata"]["name"] for c in stores.snapshot_classes.values() if endpoint_of_class(c) == name}
    snapshots = sum(
        1
        for c in stores.contents.values()
        if (c.get("status") or {}).get("snapshotHandle")
        and (
            ((c.get("spec") or {}).get("source") or {}).get("volumeHandle") in handles
            or (c.get("spec") or {}).get("volumeSnapshotClassName") in routed_classes
        )
    )
    routed_group_classes = {
        c["metadata"]["name"] for c in stores.group_classes.values() if endpoint_of_class(c) == name
    }
    group_snapshots = sum(
        1
        for c in stores.group_contents.values()
        if (c.get("status") or {}).get("volumeGroupSnapshotHandle")
        and (
            handles & set(((c.get("spec") or {}).get("source") or {}).get("volumeHandles") or [])
            or (c.get("spec") or {}).get("volumeGroupSnapshotClassName") in routed_group_classes
        )
    )
    return {
        "volumes": len(volumes),
        "attachments": attachments,
        "snapshots": snapshots,
        "groupSnapshots": group_snapshots,
    }
