"""Volume content sources: cloning a claim and restoring a VolumeSnapshot. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from csi_client import csi
from sidecarless.vocabulary import ParameterError, parse_quantity

Body = dict[str, Any]

CLONE_PROTECTION_FINALIZER = "provisioner.storage.kubernetes.io/cloning-protection"
# external-provisioner's own finalizer on a VolumeSnapshot being restored (v6.4), kept until the PV exists.
SNAPSHOT_PROTECTION_FINALIZER = "provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection"
ANN_ALLOW_VOLUME_MODE_CHANGE = "snapshot.storage.kubernetes.io/allow-volume-mode-change"


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


def is_snapshot(source: DataSource | None) -> bool:
    return source is not None and source.kind == "VolumeSnapshot" and source.api_group == "snapshot.storage.k8s.io"


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


def snapshot_source(
    claim: Body,
    snapshot: Body | None,
    content: Body | None,
    driver: str,
    controller_capabilities: frozenset[str],
) -> csi.VolumeContentSource:
    """The content source for restoring `snapshot` into `claim` (external-provisioner's
    getSnapshotSource, with its messages), or why it cannot be done."""
    source = data_source(claim)
    assert source is not None
    if "CREATE_DELETE_SNAPSHOT" not in controller_capabilities:
        raise ParameterError(f"driver {driver} does not support snapshots (no CREATE_DELETE_SNAPSHOT capability)")
    if snapshot is None:
        raise ParameterError(f"error getting snapshot {source.name} from api server: not found")
    meta, status = snapshot["metadata"], snapshot.get("status") or {}
    if meta.get("deletionTimestamp") and SNAPSHOT_PROTECTION_FINALIZER not in (meta.get("finalizers") or []):
        raise ParameterError(f"snapshot {source.name} is being deleted")
    bound = status.get("boundVolumeSnapshotContentName")
    if not bound:
        raise ParameterError(f"snapshot {source.name} not bound")
    if content is None:
        raise ParameterError(f"error getting snapshotcontent {bound} for snapshot {source.name}")
    ref = (content.get("spec") or {}).get("volumeSnapshotRef") or {}
    if (ref.get("uid"), ref.get("namespace"), ref.get("name")) != (
        meta.get("uid"),
        meta.get("namespace"),
        meta.get("name"),
    ):
        raise ParameterError(f"snapshotcontent {bound} for snapshot {source.name} is bound to a different snapshot")
    if (content.get("spec") or {}).get("driver") != driver:
        raise ParameterError(
            f"snapshotcontent {bound} for snapshot {source.name} is not handled by CSI driver of StorageClass "
            f"{(claim.get('spec') or {}).get('storageClassName')}"
        )
    if status.get("readyToUse") is not True:
        raise ParameterError(f"snapshot {source.name} is not Ready")
    handle = (content.get("status") or {}).get("snapshotHandle")
    if not handle:
        raise ParameterError(f"snapshot handle {source.name} is not available")
    restore_size = status.get("restoreSize")
    if restore_size:
        size = parse_quantity(str(restore_size))
        if _requested(claim) < size:
            raise ParameterError(
                f"requested volume size {_requested(claim)} is less than the size {size} "
                f"for the source snapshot {source.name}"
            )
    _check_volume_mode(claim, content)
    return csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=str(handle)))


def _check_volume_mode(claim: Body, content: Body) -> None:
    """A restore may change the volume mode only if the content allows it (prevent-volume-mode-conversion)."""
    source_mode = (content.get("spec") or {}).get("sourceVolumeMode")
    mode = (claim.get("spec") or {}).get("volumeMode")
    if not source_mode or not mode or source_mode == mode:
        return
    meta = claim["metadata"]
    allowed = (content["metadata"].get("annotations") or {}).get(ANN_ALLOW_VOLUME_MODE_CHANGE)
    denied = (
        f"requested volume {meta['namespace']}/{meta['name']} modifies the mode of the source volume "
        "but does not have permission to do so. "
    )
    if allowed is None:
        raise ParameterError(
            denied + f"{ANN_ALLOW_VOLUME_MODE_CHANGE} annotation is not present on snapshotcontent "
            f"{content['metadata']['name']}"
        )
    if allowed.lower() not in ("true", "1", "t"):
        raise ParameterError(
            denied + f"{ANN_ALLOW_VOLUME_MODE_CHANGE} is set to false on snapshotcontent {content['metadata']['name']}"
        )


def pending_uses_of(source_key: str, claims: list[Body], *, snapshot: bool = False) -> list[Body]:
    """Claims still waiting to be cloned from the claim (or restored from the VolumeSnapshot) `namespace/name`."""
    namespace, name = source_key.split("/", 1)
    kind_matches = is_snapshot if snapshot else is_clone
    return [
        c
        for c in claims
        if c["metadata"]["namespace"] == namespace
        and not (c.get("spec") or {}).get("volumeName")
        and not c["metadata"].get("deletionTimestamp")
        and (source := data_source(c)) is not None
        and kind_matches(source)
        and source.name == name
    ]
