"""Which DriverEndpoint serves an object (shared/design.md, "Routing"). Pure functions."""

from __future__ import annotations

from typing import Any

from sidecarless.provisioner.plan import ANN_ENDPOINT

Body = dict[str, Any]


def endpoint_of_class(storage_class: Body | None) -> str | None:
    """The endpoint a StorageClass opts into with `sidecarless.io/endpoint`; None: not ours."""
    if storage_class is None:
        return None
    name = (storage_class.get("metadata", {}).get("annotations") or {}).get(ANN_ENDPOINT)
    return name or None


def endpoint_of_volume(volume: Body, storage_class: Body | None) -> str | None:
    """A PV's own annotation (written at provisioning) wins; else its StorageClass's, so
    volumes the sidecars provisioned can be moved over."""
    own = (volume.get("metadata", {}).get("annotations") or {}).get(ANN_ENDPOINT)
    return own or endpoint_of_class(storage_class)
