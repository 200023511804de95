"""Attaching as pure functions: VolumeAttachment + PV + CSINode -> ControllerPublish / Unpublish.

external-attacher's rules (shared/reference/sidecars.md §2, §7.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from csi_client import csi
from csi_client.errors import GO_CODE_NAMES
from sidecarless.vocabulary import ParameterError

Body = dict[str, Any]

ANN_NODE_ID = "csi.alpha.kubernetes.io/node-id"


def finalizer(driver: str) -> str:
    """`external-attacher/<driver>` with every character outside [a-zA-Z0-9-] turned into '-'."""
    return "external-attacher/" + re.sub(r"[^a-zA-Z0-9-]", "-", driver)


@dataclass(frozen=True)
class Attach:
    pass


@dataclass(frozen=True)
class Detach:
    pass


@dataclass(frozen=True)
class Nothing:
    reason: str


AttachmentDecision = Attach | Detach | Nothing


def attachment_decision(attachment: Body, driver: str, *, forced: bool = False) -> AttachmentDecision:
    """What external-attacher's csiHandler would do with this VolumeAttachment now.

    `forced`: the driver's ListVolumes says an attached volume is not published on its
    node, so it is published again.
    """
    meta, spec = attachment.get("metadata", {}), attachment.get("spec") or {}
    if spec.get("attacher") != driver:
        return Nothing("another attacher's VolumeAttachment")
    if meta.get("deletionTimestamp"):
        if finalizer(driver) in (meta.get("finalizers") or []):
            return Detach()
        return Nothing("being deleted and already detached")
    if (attachment.get("status") or {}).get("attached") and not forced:
        return Nothing("already attached")
    return Attach()


def node_id(attachment: Body, csinode: Body | None, driver: str) -> str:
    """The driver's ID for the VA's node: from the CSINode, else the VA's node-id annotation."""
    node = (attachment.get("spec") or {}).get("nodeName", "")
    for entry in ((csinode or {}).get("spec") or {}).get("drivers") or []:
        if entry.get("name") == driver and entry.get("nodeID"):
            return str(entry["nodeID"])
    annotated = ((attachment.get("metadata") or {}).get("annotations") or {}).get(ANN_NODE_ID)
    if annotated:
        return str(annotated)
    raise ParameterError(f"CSINode {node} does not contain driver {driver}")


def publish_request(
    volume: Body, node: str, capability: csi.VolumeCapability, capabilities: frozenset[str]
) -> csi.ControllerPublishVolumeRequest:
    source = (volume.get("spec") or {}).get("csi") or {}
    return csi.ControllerPublishVolumeRequest(
        volume_id=source["volumeHandle"],
        node_id=node,
        volume_capability=capability,
        readonly=bool(source.get("readOnly")) and "PUBLISH_READONLY" in capabilities,
        volume_context=source.get("volumeAttributes") or {},
    )


def volume_error(message: str, code: grpc.StatusCode | None, now: str) -> Body:
    """A VolumeAttachment's attachError / detachError, stamped `now` (RFC 3339)."""
    error: Body = {"message": message, "time": now}
    if code is not None and code in GO_CODE_NAMES:
        error["errorCode"] = code.value[0]
    return error


def lost_attachments(
    attachments: list[Body], published: dict[str, set[str]], node_ids: dict[str, str], volume_ids: dict[str, str]
) -> list[str]:
    """Attached VolumeAttachments whose volume the driver no longer lists as published on their node.

    `published`: volume ID -> node IDs from ListVolumes; `node_ids` and `volume_ids`: by VA
    name; attachments whose volume ID ListVolumes did not return are left alone.
    """
    lost = []
    for attachment in attachments:
        name = attachment["metadata"]["name"]
        volume_id = volume_ids.get(name)
        if not (attachment.get("status") or {}).get("attached") or attachment["metadata"].get("deletionTimestamp"):
            continue
        if volume_id in published and node_ids.get(name) not in published[volume_id]:
            lost.append(name)
    return lost


def backlog(attachments: list[Body], driver: str, now: datetime) -> dict[str, tuple[int, float]]:
    """Per lane ("attach", "detach"): how many VolumeAttachments wait, and the oldest wait in seconds.

    Waiting to attach: not attached and not being deleted (since creation). Waiting to
    detach: being deleted and still carrying our finalizer (since the deletion).
    """
    lanes: dict[str, list[float]] = {"attach": [], "detach": []}
    for attachment in attachments:
        meta = attachment.get("metadata") or {}
        if (attachment.get("spec") or {}).get("attacher") != driver:
            continue
        if meta.get("deletionTimestamp"):
            if finalizer(driver) in (meta.get("finalizers") or []):
                lanes["detach"].append(_age(meta["deletionTimestamp"], now))
        elif not (attachment.get("status") or {}).get("attached"):
            lanes["attach"].append(_age(meta.get("creationTimestamp", ""), now))
    return {lane: (len(ages), max(ages, default=0.0)) for lane, ages in lanes.items()}


def _age(stamp: str, now: datetime) -> float:
    try:
        since = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return max(0.0, (now - since).total_seconds())


def references(attachments: list[Body], volume_name: str) -> list[Body]:
    """VolumeAttachments that use the PV `volume_name`."""
    return [
        a for a in attachments if ((a.get("spec") or {}).get("source") or {}).get("persistentVolumeName") == volume_name
    ]
