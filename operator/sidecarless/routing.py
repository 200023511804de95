"""Which DriverEndpoint serves an object (shared/design.md, "Routing"). Pure functions."""

from __future__ import annotations

from typing import Any

from sidecarless.vocabulary import ANN_ENDPOINT

Body = dict[str, Any]


def endpoint_of_class(storage_class: Body | None) -> str | None:
    """The endpoint a StorageClass opts into with `sidecarless.io/endpoint`; None: not ours."""
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


def endpoint_serving_driver(driver: str, endpoints: list[tuple[str, str]]) -> str | None:
    """For a PV whose StorageClass is gone: the one endpoint (name, driver) serving its
    driver; None when there is none, or several (which one made it cannot be told)."""
    names = [name for name, serving in endpoints if serving == driver]
    return names[0] if len(names) == 1 else None
