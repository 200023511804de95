"""Volume group snapshots as pure functions (external-snapshotter v8.7.0's v1 API,
docs/reference/external-snapshotter-v8.7.0-groups.md): selecting the claims, the group
content to create, its members, the CSI requests and the statuses."""

from __future__ import annotations

import hashlib
from typing import Any

from csi_client import csi
from sidecarless.snapshots.plan import ANN_GROUP_MEMBER, GROUP_VERSION, SnapshotError, rfc3339_from_nanoseconds
from sidecarless.vocabulary import SecretRef, now_rfc3339, object_key

Body = dict[str, Any]

GROUP_API_VERSION = "groupsnapshot.storage.k8s.io/v1"
_PREFIX = "groupsnapshot.storage.kubernetes.io/"
GROUP_FINALIZER = _PREFIX + "volumegroupsnapshot-bound-protection"
GROUP_CONTENT_FINALIZER = _PREFIX + "volumegroupsnapshotcontent-bound-protection"
MEMBER_FINALIZER = "snapshot.storage.kubernetes.io/volumesnapshot-in-group-protection"
ANN_DEFAULT_GROUP_CLASS = _PREFIX + "is-default-class"
ANN_GROUP_BEING_CREATED = _PREFIX + "volumegroupsnapshot-being-created"
ANN_GROUP_BEING_DELETED = _PREFIX + "volumegroupsnapshot-being-deleted"
ANN_GROUP_SECRET_NAME = _PREFIX + "deletion-secret-name"
ANN_GROUP_SECRET_NAMESPACE = _PREFIX + "deletion-secret-namespace"
GROUP_SECRET_KEYS = (
    "csi.storage.k8s.io/group-snapshotter-secret-name",
    "csi.storage.k8s.io/group-snapshotter-secret-namespace",
)
CAPABILITY = "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT"


def selector(group: Body) -> Body | None:
    source = (group.get("spec") or {}).get("source") or {}
    return source.get("selector")


def content_name(group: Body) -> str:
    return f"groupsnapcontent-{group['metadata']['uid']}"


def validate_source(group: Body) -> None:
    source = (group.get("spec") or {}).get("source") or {}
    if (source.get("selector") is None) == (not source.get("volumeGroupSnapshotContentName")):
        raise SnapshotError(
            "GroupSnapshotValidationError",
            "Exactly one of Selector and VolumeGroupSnapshotContentName should be specified",
        )


def matches(labels: dict[str, str], label_selector: Body) -> bool:
    """A Kubernetes label selector, matchLabels and matchExpressions both (snapshot-controller
    honours only matchLabels, so a selector of expressions alone selects every claim)."""
    for key, value in (label_selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in label_selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def selected_claims(group: Body, claims: list[Body]) -> list[Body]:
    namespace, label_selector = group["metadata"]["namespace"], selector(group) or {}
    chosen = [
        c
        for c in claims
        if c["metadata"].get("namespace") == namespace and matches(c["metadata"].get("labels") or {}, label_selector)
    ]
    if not chosen:
        raise SnapshotError(
            "GroupSnapshotContentCreationFailed",
            "failed to create group snapshot content with error label selector "
            f"{_format_selector(label_selector)} for group snapshot not applied to any PVC",
        )
    return sorted(chosen, key=lambda c: str(c["metadata"]["name"]))


def _format_selector(label_selector: Body) -> str:
    parts = [f"{k}={v}" for k, v in sorted((label_selector.get("matchLabels") or {}).items())]
    for e in label_selector.get("matchExpressions") or []:
        parts.append(f"{e.get('key')} {str(e.get('operator')).lower()} ({','.join(e.get('values') or [])})")
    return ",".join(parts) or "<none>"


def volume_handles(group: Body, claims: list[Body], volumes: dict[str, Body], driver: str) -> list[str]:
    """Each selected claim's volume handle; any claim that cannot be snapshotted fails the group."""
    handles = []
    for claim in claims:
        name = claim["metadata"]["name"]
        if (claim.get("status") or {}).get("phase") != "Bound":
            raise _content_error(f"the PVC {name} is not yet bound to a PV, will not attempt to take a group snapshot")
        volume = volumes.get((claim.get("spec") or {}).get("volumeName") or "")
        if volume is None:
            raise _content_error(
                f"failed to retrieve PV {(claim.get('spec') or {}).get('volumeName')} from the API server"
            )
        source = (volume.get("spec") or {}).get("csi")
        if not source:
            raise _content_error(f"Cannot snapshot a non-CSI volume: {volume['metadata']['name']}")
        if source.get("driver") != driver:
            raise _content_error(
                f"Volume CSI driver ({source.get('driver')}) mismatch with VolumeGroupSnapshotClass ({driver}) "
                f"{object_key(group)}: {volume['metadata']['name']}"
            )
        handles.append(str(source["volumeHandle"]))
    return handles


def _content_error(message: str) -> SnapshotError:
    return SnapshotError(
        "GroupSnapshotContentCreationFailed", f"failed to create group snapshot content with error {message}"
    )


def new_content(group: Body, handles: list[str], group_class: Body, secret: SecretRef | None) -> Body:
    meta = group["metadata"]
    content: Body = {
        "apiVersion": GROUP_API_VERSION,
        "kind": "VolumeGroupSnapshotContent",
        "metadata": {"name": content_name(group)},
        "spec": {
            "volumeGroupSnapshotRef": {
                "kind": "VolumeGroupSnapshot",
                "apiVersion": GROUP_API_VERSION,
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "source": {"volumeHandles": handles},
            "volumeGroupSnapshotClassName": group_class["metadata"]["name"],
            "deletionPolicy": group_class.get("deletionPolicy", "Delete"),
            "driver": group_class.get("driver", ""),
        },
    }
    if secret is not None:
        content["metadata"]["annotations"] = {
            ANN_GROUP_SECRET_NAME: secret.name,
            ANN_GROUP_SECRET_NAMESPACE: secret.namespace,
        }
    return content


def member_hash(group_uid: str, volume_handle: str) -> str:
    return hashlib.sha256((group_uid + volume_handle).encode()).hexdigest()


def members(group: Body, content: Body, volumes_by_handle: dict[str, Body]) -> list[tuple[Body, Body, Body]]:
    """For each snapshot of the group: (VolumeSnapshot, VolumeSnapshotContent, content status)."""
    status = content.get("status") or {}
    group_handle = status.get("volumeGroupSnapshotHandle")
    result = []
    for info in status.get("volumeSnapshotInfoList") or []:
        digest = member_hash(group["metadata"]["uid"], info["volumeHandle"])
        volume = volumes_by_handle.get(info["volumeHandle"])
        snapshot_name, content_name_ = f"snapshot-{digest}", f"snapcontent-{digest}"
        member_content: Body = {
            "apiVersion": GROUP_VERSION,
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": content_name_, "annotations": {ANN_GROUP_MEMBER: group_handle}},
            "spec": {
                "volumeSnapshotRef": {
                    "kind": "VolumeSnapshot",
                    "name": snapshot_name,
                    "namespace": group["metadata"]["namespace"],
                },
                "deletionPolicy": content["spec"].get("deletionPolicy", "Delete"),
                "driver": content["spec"].get("driver", ""),
                "source": {"volumeHandle": info["volumeHandle"]},
            },
        }
        secret = content["metadata"].get("annotations") or {}
        if ANN_GROUP_SECRET_NAME in secret:
            member_content["metadata"]["annotations"].update(
                {
                    "snapshot.storage.kubernetes.io/deletion-secret-name": secret[ANN_GROUP_SECRET_NAME],
                    "snapshot.storage.kubernetes.io/deletion-secret-namespace": secret.get(
                        ANN_GROUP_SECRET_NAMESPACE, ""
                    ),
                }
            )
        if volume is not None and (volume.get("spec") or {}).get("volumeMode"):
            member_content["spec"]["sourceVolumeMode"] = volume["spec"]["volumeMode"]
        claim_name = (((volume or {}).get("spec") or {}).get("claimRef") or {}).get("name", "")
        member_snapshot: Body = {
            "apiVersion": GROUP_VERSION,
            "kind": "VolumeSnapshot",
            "metadata": {
                "name": snapshot_name,
                "namespace": group["metadata"]["namespace"],
                "ownerReferences": [
                    {
                        "apiVersion": GROUP_API_VERSION,
                        "kind": "VolumeGroupSnapshot",
                        "name": group["metadata"]["name"],
                        "uid": group["metadata"]["uid"],
                    }
                ],
                "finalizers": [MEMBER_FINALIZER],
            },
            "spec": {"source": {"persistentVolumeClaimName": claim_name}},
        }
        member_status: Body = {
            "snapshotHandle": info.get("snapshotHandle"),
            "volumeGroupSnapshotHandle": group_handle,
            "readyToUse": bool(info.get("readyToUse")),
        }
        if info.get("creationTime"):
            member_status["creationTime"] = info["creationTime"]
        if info.get("restoreSize"):
            member_status["restoreSize"] = info["restoreSize"]
        result.append((member_snapshot, member_content, member_status))
    return result


def group_of(snapshot: Body) -> str:
    """The VolumeGroupSnapshot owning a member VolumeSnapshot ("" if none)."""
    for owner in (snapshot.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == "VolumeGroupSnapshot":
            return str(owner.get("name") or "")
    return ""


def group_status(group: Body, content: Body) -> tuple[Body, list[tuple[str, str]]]:
    """The group snapshot's status from its content's, and the Normal events to post."""
    old, source = group.get("status") or {}, content.get("status") or {}
    key = object_key(group)
    status: Body = {
        "boundVolumeGroupSnapshotContentName": old.get("boundVolumeGroupSnapshotContentName")
        or content["metadata"]["name"]
    }
    events: list[tuple[str, str]] = []
    if old.get("creationTime"):
        status["creationTime"] = old["creationTime"]
    elif source.get("creationTime"):
        status["creationTime"] = source["creationTime"]
        events.append(("GroupSnapshotCreated", f"GroupSnapshot {key} was successfully created by the CSI driver."))
    ready = source.get("readyToUse") is True
    status["readyToUse"] = ready
    if ready and old.get("readyToUse") is not True:
        events.append(("GroupSnapshotReady", f"GroupSnapshot {key} is ready to use."))
    status["error"] = None if ready else source.get("error")
    return status, events


def create_request(content: Body, parameters: dict[str, str]) -> csi.CreateVolumeGroupSnapshotRequest:
    ref = (content.get("spec") or {}).get("volumeGroupSnapshotRef") or {}
    return csi.CreateVolumeGroupSnapshotRequest(
        name=f"groupsnapshot-{ref.get('uid')}",
        source_volume_ids=list(((content.get("spec") or {}).get("source") or {}).get("volumeHandles") or []),
        parameters=parameters,
    )


def content_status(group: csi.VolumeGroupSnapshot, old: Body) -> Body:
    """The group content's status from CreateVolumeGroupSnapshot's answer (the list is written once)."""
    created = group.creation_time.seconds * 1_000_000_000 + group.creation_time.nanos
    stamp = rfc3339_from_nanoseconds(created) if created else now_rfc3339()
    status: Body = {
        "volumeGroupSnapshotHandle": old.get("volumeGroupSnapshotHandle") or group.group_snapshot_id,
        "creationTime": old.get("creationTime") or stamp,
        "readyToUse": group.ready_to_use,
    }
    if group.ready_to_use:
        status["error"] = None
    infos = old.get("volumeSnapshotInfoList") or []
    if not infos:
        infos = []
        for snapshot in group.snapshots:
            info: Body = {
                "volumeHandle": snapshot.source_volume_id,
                "snapshotHandle": snapshot.snapshot_id,
                "readyToUse": snapshot.ready_to_use,
            }
            nanos = snapshot.creation_time.seconds * 1_000_000_000 + snapshot.creation_time.nanos
            if nanos:
                info["creationTime"] = nanos
            if snapshot.size_bytes:
                info["restoreSize"] = snapshot.size_bytes
            infos.append(info)
    status["volumeSnapshotInfoList"] = infos
    return status
