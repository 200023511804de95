"""Volume content sources: cloning a claim (and, later, restoring a snapshot). Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from csi_client import csi
from sidecarless.provisioner.parameters import ParameterError, parse_quantity

Body = dict[str, Any]

CLONE_PROTECTION_FINALIZER = "provisioner.storage.kubernetes.io/cloning-protection"


@dataclass(frozen=True)
class DataSource:
    kind: str
    name: str
    api_group: str


def data_source(claim: Body) -> DataSource | None:
    """The claim's dataSourceRef (or dataSource); None for an empty one."""
    spec = claim.get("spec") or {}
    ref = spec.get("dataSourceRef") or spec.get("dataSource")
    if not ref:
        return None
    return DataSource(ref.get("kind", ""), ref.get("name", ""), ref.get("apiGroup") or "")


def is_clone(source: DataSource | None) -> bool:
    return source is not None and source.kind == "PersistentVolumeClaim" and source.api_group == ""


def _requested(claim: Body) -> int:
    return parse_quantity(
        str(((claim.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "0"))
    )


def clone_source(
    claim: Body,
    source_claim: Body | None,
    source_volume: Body | None,
    driver: str,
    controller_capabilities: frozenset[str],
) -> csi.VolumeContentSource:
    """The content source for cloning `source_claim` into `claim`, or why it cannot be done."""
    source = data_source(claim)
    assert source is not None
    namespace = claim["metadata"]["namespace"]
    if "CLONE_VOLUME" not in controller_capabilities:
        raise ParameterError(f"driver {driver} does not support cloning (no CLONE_VOLUME capability)")
    if source_claim is None:
        raise ParameterError(f"source PVC {namespace}/{source.name} not found")
    if source_claim["metadata"].get("deletionTimestamp"):
        raise ParameterError(f"source PVC {namespace}/{source.name} is being deleted")
    if (source_claim.get("status") or {}).get("phase") != "Bound" or source_volume is None:
        raise ParameterError(f"source PVC {namespace}/{source.name} is not Bound")
    source_driver = (source_volume.get("spec") or {}).get("csi", {}).get("driver")
    if source_driver != driver:
        raise ParameterError(
            f"source PVC {namespace}/{source.name} is a volume of driver {source_driver!r}, not {driver!r}: "
            "the source and the clone must be handled by the same driver"
        )
    source_mode = (source_claim.get("spec") or {}).get("volumeMode") or "Filesystem"
    mode = (claim.get("spec") or {}).get("volumeMode") or "Filesystem"
    if source_mode != mode:
        raise ParameterError(
            f"the source PVC and the clone must have the same volume mode: source is {source_mode}, clone is {mode}"
        )
    capacity = (source_volume.get("spec") or {}).get("capacity", {}).get("storage")
    source_size = parse_quantity(str(capacity)) if capacity else _requested(source_claim)
    if source_size > _requested(claim):
        raise ParameterError(
            f"the clone must request at least the size of its source: requested {_requested(claim)} bytes, "
            f"source {namespace}/{source.name} has {source_size}"
        )
    return csi.VolumeContentSource(
        volume=csi.VolumeContentSource.VolumeSource(volume_id=source_volume["spec"]["csi"]["volumeHandle"])
    )


def pending_clones_of(source_key: str, claims: list[Body]) -> list[Body]:
    """Claims still waiting to be cloned from the claim `namespace/name`."""
    namespace, name = source_key.split("/", 1)
    return [
        c
        for c in claims
        if c["metadata"]["namespace"] == namespace
        and not (c.get("spec") or {}).get("volumeName")
        and not c["metadata"].get("deletionTimestamp")
        and (source := data_source(c)) is not None
        and is_clone(source)
        and source.name == name
    ]
