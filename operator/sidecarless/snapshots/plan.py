"""Snapshots as pure functions: VolumeSnapshot, VolumeSnapshotContent, class, PVC and PV in;
the content to create, the CSI request, the status to write, or an error a user can act on.

The rules are snapshot-controller's and csi-snapshotter's (external-snapshotter v8.7.0,
docs/reference/external-snapshotter-v8.7.0.md), with their strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from csi_client import csi
from sidecarless.vocabulary import (
    ParameterError,
    SecretRef,
    UnknownTokens,
    expand,
    format_quantity,
    object_key,
    rfc3339,
    valid_namespace_name,
    valid_object_name,
)

Body = dict[str, Any]

GROUP_VERSION = "snapshot.storage.k8s.io/v1"
_PREFIX = "snapshot.storage.kubernetes.io/"
CONTENT_FINALIZER = _PREFIX + "volumesnapshotcontent-bound-protection"
BOUND_FINALIZER = _PREFIX + "volumesnapshot-bound-protection"
SOURCE_FINALIZER = _PREFIX + "volumesnapshot-as-source-protection"
PVC_FINALIZER = _PREFIX + "pvc-as-source-protection"
ANN_DEFAULT_CLASS = _PREFIX + "is-default-class"
ANN_BEING_DELETED = _PREFIX + "volumesnapshot-being-deleted"
ANN_BEING_CREATED = _PREFIX + "volumesnapshot-being-created"
ANN_DELETION_SECRET_NAME = _PREFIX + "deletion-secret-name"
ANN_DELETION_SECRET_NAMESPACE = _PREFIX + "deletion-secret-namespace"
ANN_GROUP_MEMBER = "groupsnapshot.storage.k8s.io/volumeGroupSnapshotHandle"
ANN_ALLOW_VOLUME_MODE_CHANGE = _PREFIX + "allow-volume-mode-change"
# How long a snapshot's first status write waits for the driver half's answer, so that one
# write says both "bound" and "ready" (see first_status_wait).
FIRST_STATUS_WAIT_SECONDS = 2.0

_CSI_PREFIX = "csi.storage.k8s.io/"
SECRET_KEYS = (_CSI_PREFIX + "snapshotter-secret-name", _CSI_PREFIX + "snapshotter-secret-namespace")
LIST_SECRET_KEYS = (_CSI_PREFIX + "snapshotter-list-secret-name", _CSI_PREFIX + "snapshotter-list-secret-namespace")
_RESERVED = {
    *SECRET_KEYS,
    *LIST_SECRET_KEYS,
    _CSI_PREFIX + "group-snapshotter-get-secret-name",
    _CSI_PREFIX + "group-snapshotter-get-secret-namespace",
    _CSI_PREFIX + "group-snapshotter-secret-name",
    _CSI_PREFIX + "group-snapshotter-secret-namespace",
}
EXTRA_METADATA_KEYS = (
    _CSI_PREFIX + "volumesnapshot/name",
    _CSI_PREFIX + "volumesnapshot/namespace",
    _CSI_PREFIX + "volumesnapshotcontent/name",
)


class SnapshotError(ValueError):
    """Something about a snapshot a user must fix: `reason` is the event reason, the message its text."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def _meta(obj: Body) -> Body:
    return obj.get("metadata") or {}


def _spec(obj: Body) -> Body:
    return obj.get("spec") or {}


def _status(obj: Body) -> Body:
    return obj.get("status") or {}


# --- VolumeSnapshot -------------------------------------------------------------------


def source_claim(snapshot: Body) -> str:
    return str((_spec(snapshot).get("source") or {}).get("persistentVolumeClaimName") or "")


def source_content(snapshot: Body) -> str:
    return str((_spec(snapshot).get("source") or {}).get("volumeSnapshotContentName") or "")


def is_dynamic(snapshot: Body) -> bool:
    return bool(source_claim(snapshot))


def dynamic_content_name(snapshot: Body) -> str:
    return f"snapcontent-{_meta(snapshot)['uid']}"


def bound_content_name(snapshot: Body) -> str:
    """The content the snapshot is bound to, or (dynamic) will be: status first, then the formula."""
    bound = str(_status(snapshot).get("boundVolumeSnapshotContentName") or "")
    if bound:
        return bound
    if is_dynamic(snapshot):
        return dynamic_content_name(snapshot)
    return source_content(snapshot)


def is_ready(snapshot: Body) -> bool:
    return _status(snapshot).get("readyToUse") is True


def validate_source(snapshot: Body) -> None:
    if bool(source_claim(snapshot)) == bool(source_content(snapshot)):
        raise SnapshotError(
            "SnapshotValidationError",
            "Exactly one of PersistentVolumeClaimName and VolumeSnapshotContentName should be specified",
        )


def default_class(classes: list[Body], driver: str) -> Body:
    """The one class annotated is-default-class "true" for `driver` (snapshot-controller's rule)."""
    defaults = [
        c
        for c in classes
        if (_meta(c).get("annotations") or {}).get(ANN_DEFAULT_CLASS) == "true" and c.get("driver") == driver
    ]
    if not defaults:
        raise SnapshotError(
            "SetDefaultSnapshotClassFailed",
            "Failed to set default snapshot class with error cannot find default snapshot class",
        )
    if len(defaults) > 1:
        raise SnapshotError(
            "SetDefaultSnapshotClassFailed",
            f"Failed to set default snapshot class with error {len(defaults)} default snapshot classes were found",
        )
    return defaults[0]


def check_claim(snapshot: Body, claim: Body | None) -> None:
    """Before the PVC finalizer goes on: the source claim exists and is not being deleted."""
    name = _meta(snapshot).get("name")
    if claim is None:
        raise SnapshotError(
            "SnapshotContentCreationFailed",
            "Failed to create snapshot content with error "
            f"snapshot controller failed to update {name} on API server: cannot get claim from snapshot",
        )
    if _meta(claim).get("deletionTimestamp"):
        raise SnapshotError(
            "SnapshotContentCreationFailed",
            "Failed to create snapshot content with error snapshot controller failed to update "
            f"{_meta(claim).get('name')} on API server: cannot add finalizer on claim because it is being deleted",
        )


def check_claim_and_volume(snapshot: Body, claim: Body, volume: Body | None) -> None:
    """The source PVC must be Bound to a CSI PV that points back at it."""
    name = source_claim(snapshot)
    prefix = f"failed to get input parameters to create snapshot {_meta(snapshot).get('name')}: "
    if _status(claim).get("phase") != "Bound":
        raise SnapshotError(
            "SnapshotContentCreationFailed",
            f"Failed to create snapshot content with error {prefix}"
            f'"the PVC {name} is not yet bound to a PV, will not attempt to take a snapshot"',
        )
    volume_name = _spec(claim).get("volumeName", "")
    if volume is None:
        raise SnapshotError(
            "SnapshotContentCreationFailed",
            f"Failed to create snapshot content with error {prefix}"
            f'"failed to retrieve PV {volume_name} from the API server"',
        )
    ref = _spec(volume).get("claimRef") or {}
    claim_meta = _meta(claim)
    if (
        ref.get("name") != claim_meta.get("name")
        or ref.get("namespace") != claim_meta.get("namespace")
        or (ref.get("uid") and ref.get("uid") != claim_meta.get("uid"))
    ):
        raise SnapshotError(
            "SnapshotContentCreationFailed",
            f'Failed to create snapshot content with error {prefix}"claim in dataSource not bound or invalid"',
        )
    if not _spec(volume).get("csi"):
        raise SnapshotError(
            "SnapshotContentCreationFailed",
            "Failed to create snapshot content with error "
            f"cannot find CSI PersistentVolumeSource for volume {volume_name}",
        )


def snapshotter_secret(parameters: Body, content_name: str, snapshot: Body | None) -> SecretRef | None:
    """The snapshotter secret a class names, its templates expanded (None: the class names none)."""
    namespace_values = {"volumesnapshotcontent.name": content_name}
    if snapshot is not None:
        namespace_values["volumesnapshot.namespace"] = _meta(snapshot).get("namespace", "")
    name_values = dict(namespace_values)
    if snapshot is not None:
        name_values["volumesnapshot.name"] = _meta(snapshot).get("name", "")
    return secret_from_templates(parameters, SECRET_KEYS, namespace_values, name_values, "Snapshotter")


def list_secret(parameters: Body, content_name: str) -> SecretRef | None:
    values = {"volumesnapshotcontent.name": content_name}
    return secret_from_templates(parameters, LIST_SECRET_KEYS, values, values, "SnapshotterList")


def secret_from_templates(
    parameters: Body,
    keys: tuple[str, str],
    namespace_values: dict[str, str],
    name_values: dict[str, str],
    what: str,
) -> SecretRef | None:
    """A secret named by a class's (name, namespace) parameter pair, with `${token}` templates."""
    name_key, namespace_key = keys
    has_name, has_namespace = name_key in parameters, namespace_key in parameters
    if not has_name and not has_namespace:
        return None
    if has_name != has_namespace:
        raise ParameterError(f"either name and namespace for {what} secrets specified, Both must be specified")
    if not parameters[name_key] or not parameters[namespace_key]:
        raise ParameterError(f"{what} secrets specified in parameters but value of either namespace or name is empty")
    namespace = _expand(str(parameters[namespace_key]), namespace_values)
    name = _expand(str(parameters[name_key]), name_values)
    if not valid_namespace_name(namespace):
        raise ParameterError(
            f'"{parameters[namespace_key]}" resolved to "{namespace}" which is not a valid namespace name'
        )
    if not valid_object_name(name):
        raise ParameterError(f'"{parameters[name_key]}" resolved to "{name}" which is not a valid secret name')
    return SecretRef(name, namespace)


def _expand(template: str, values: dict[str, str]) -> str:
    try:
        return expand(template, values)
    except UnknownTokens as unknown:
        raise ParameterError(f'error resolving value "{template}": invalid tokens: {unknown.tokens}') from None


def new_content(
    snapshot: Body, volume: Body, snapshot_class: Body, secret: SecretRef | None, *, being_created: bool = False
) -> Body:
    """The VolumeSnapshotContent snapshot-controller makes for a dynamic snapshot, with the
    bound-protection finalizer snapshot-controller adds right after (one write fewer).

    `being_created`: csi-snapshotter's being-created annotation is on from the start, where
    this process takes the snapshot itself (one write fewer again). It says a CreateSnapshot
    may be running, so it is only safe where nothing can stop the call from being made, which
    is what `takes_snapshot_at_once` decides."""
    meta = _meta(snapshot)
    content: Body = {
        "apiVersion": GROUP_VERSION,
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": dynamic_content_name(snapshot), "finalizers": [CONTENT_FINALIZER]},
        "spec": {
            "volumeSnapshotRef": {
                "kind": "VolumeSnapshot",
                "apiVersion": GROUP_VERSION,
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "source": {"volumeHandle": volume["spec"]["csi"]["volumeHandle"]},
            "volumeSnapshotClassName": _meta(snapshot_class)["name"],
            "deletionPolicy": snapshot_class.get("deletionPolicy", "Delete"),
            "driver": snapshot_class.get("driver", ""),
        },
    }
    if _spec(volume).get("volumeMode"):
        content["spec"]["sourceVolumeMode"] = volume["spec"]["volumeMode"]
    annotations: Body = {}
    if secret is not None:
        annotations |= {ANN_DELETION_SECRET_NAME: secret.name, ANN_DELETION_SECRET_NAMESPACE: secret.namespace}
    if being_created:
        annotations[ANN_BEING_CREATED] = "yes"
    if annotations:
        content["metadata"]["annotations"] = annotations
    return content


def takes_snapshot_at_once(snapshot_class: Body, secret: SecretRef | None) -> bool:
    """Whether the driver half will surely call CreateSnapshot for a content of this class: its
    parameters are valid and there is no secret to read (a missing one stops the call). Where
    it is not sure, the being-created annotation goes on just before the call, as upstream, so
    a content that never reaches the driver never waits for an answer."""
    if secret is not None:
        return False
    try:
        driver_parameters(snapshot_class.get("parameters") or {})
    except ParameterError:
        return False
    return True


def first_status_wait(snapshot: Body, content: Body, now: datetime | None = None) -> float:
    """Seconds to hold a dynamic snapshot's first status write (0: write now).

    snapshot-controller writes the snapshot's status when it has created the content
    (bound, not ready) and again when the content is ready. While the driver is taking the
    snapshot (the being-created annotation, no status on the content yet) and for at most
    FIRST_STATUS_WAIT_SECONDS after the content was made, the first write waits for the
    content's status, so that a snapshot taken quickly gets one write saying both."""
    if _status(snapshot).get("boundVolumeSnapshotContentName") or _status(content):
        return 0.0
    if ANN_BEING_CREATED not in (_meta(content).get("annotations") or {}):
        return 0.0
    created = _meta(content).get("creationTimestamp")
    if not created:
        return 0.0
    return max(0.0, FIRST_STATUS_WAIT_SECONDS - seconds_since(created, now))


def check_content_binding(snapshot: Body, content: Body) -> None:
    """A content found for a snapshot must be of the right kind and point back at it."""
    source = _spec(content).get("source") or {}
    name = _meta(content).get("name")
    if is_dynamic(snapshot) and not source.get("volumeHandle"):
        raise SnapshotError(
            "SnapshotContentMismatch",
            f"VolumeSnapshotContent {name} is pre-provisioned while expecting a dynamically provisioned one",
        )
    if not is_dynamic(snapshot) and not source.get("snapshotHandle"):
        raise SnapshotError(
            "SnapshotContentMismatch",
            "VolumeSnapshotContent is dynamically provisioned while expecting a pre-provisioned one",
        )
    ref = _spec(content).get("volumeSnapshotRef") or {}
    meta = _meta(snapshot)
    uid_ok = (
        ref.get("uid") == meta.get("uid") if is_dynamic(snapshot) else ref.get("uid") in ("", None, meta.get("uid"))
    )
    if ref.get("name") != meta.get("name") or ref.get("namespace") != meta.get("namespace") or not uid_ok:
        raise SnapshotError(
            "SnapshotContentMisbound", f"VolumeSnapshotContent [{name}] is bound to a different snapshot"
        )


def bound_to(content: Body, snapshot: Body) -> bool:
    ref = _spec(content).get("volumeSnapshotRef") or {}
    meta = _meta(snapshot)
    return bool(
        ref.get("uid") == meta.get("uid") and ref.get("name") == meta.get("name")
        and ref.get("namespace") == meta.get("namespace")
    )  # fmt: skip


def snapshot_status(snapshot: Body, content: Body) -> tuple[Body, list[tuple[str, str]]]:
    """The snapshot's status after copying its content's (snapshot-controller's updateSnapshotStatus),
    and the Normal events to post: [(reason, message)]."""
    old, source = _status(snapshot), _status(content)
    key = object_key(snapshot)
    status: Body = {
        "boundVolumeSnapshotContentName": old.get("boundVolumeSnapshotContentName") or _meta(content)["name"]
    }
    events: list[tuple[str, str]] = []
    created = source.get("creationTime")
    if old.get("creationTime"):
        status["creationTime"] = old["creationTime"]
    elif created is not None:
        status["creationTime"] = rfc3339_from_nanoseconds(int(created))
        events.append(("SnapshotCreated", f"Snapshot {key} was successfully created by the CSI driver."))
    ready = source.get("readyToUse") is True
    status["readyToUse"] = ready
    if ready and old.get("readyToUse") is not True:
        events.append(("SnapshotReady", f"Snapshot {key} is ready to use."))
    size = source.get("restoreSize")
    if old.get("restoreSize") and old.get("restoreSize") not in ("0", 0):
        status["restoreSize"] = old["restoreSize"]
    elif size:
        status["restoreSize"] = format_quantity(int(size))
    if source.get("error"):
        status["error"] = source["error"]
    elif not ready and old.get("error"):
        status["error"] = None
    if ready:
        status["error"] = None
    return status, events


def seconds_since(stamp: str, now: datetime | None = None) -> float:
    """Seconds since an RFC 3339 timestamp of the API ("2026-11-23T10:00:00Z"); 0 if unreadable."""
    try:
        then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return max(0.0, ((now or datetime.now(UTC)) - then).total_seconds())


def rfc3339_from_nanoseconds(nanoseconds: int) -> str:
    return rfc3339(datetime.fromtimestamp(nanoseconds / 1e9, UTC))


def error_status(message: str, now: str, *, ready_false: bool) -> Body:
    status: Body = {"error": {"time": now, "message": message}}
    if ready_false:
        status["readyToUse"] = False
    return status


def claim_in_use(claim_name: str, namespace: str, snapshots: list[Body]) -> bool:
    """Whether a dynamic snapshot of the claim is not ready yet (the pvc-as-source-protection rule)."""
    return any(
        _meta(s).get("namespace") == namespace and source_claim(s) == claim_name and not is_ready(s) for s in snapshots
    )


def restoring_from(snapshot: Body, claims: list[Body]) -> bool:
    """A Pending claim in the snapshot's namespace restores from it."""
    meta = _meta(snapshot)
    for claim in claims:
        source = _spec(claim).get("dataSource") or {}
        if (
            _meta(claim).get("namespace") == meta.get("namespace")
            and source.get("kind") == "VolumeSnapshot"
            and source.get("apiGroup") == "snapshot.storage.k8s.io"
            and source.get("name") == meta.get("name")
            and _status(claim).get("phase") in (None, "", "Pending")
        ):
            return True
    return False


# --- VolumeSnapshotContent (the driver half) -------------------------------------------


@dataclass(frozen=True)
class Delete:
    call: bool  # DeleteSnapshot first (deletionPolicy Delete and a handle to delete)


@dataclass(frozen=True)
class Create:
    pass


@dataclass(frozen=True)
class Check:
    """Pre-provisioned: ListSnapshots by handle for readiness, size and creation time."""


@dataclass(frozen=True)
class Ready:
    pass


ContentDecision = Delete | Create | Check | Ready


def content_decision(content: Body, *, snapshot_deleted: bool = False) -> ContentDecision:
    """What csi-snapshotter's syncContent would do with this content now.

    csi-snapshotter deletes a bound content's snapshot only once snapshot-controller has said
    its VolumeSnapshot is being deleted (the being-deleted annotation), never for a content
    deleted under a live VolumeSnapshot. `snapshot_deleted` says the same from the
    VolumeSnapshot itself, as this process sees it: the snapshot half here does not write the
    annotation on contents whose snapshot this driver half takes (one write fewer)."""
    meta, spec, status = _meta(content), _spec(content), _status(content)
    annotations = meta.get("annotations") or {}
    source = spec.get("source") or {}
    ref = spec.get("volumeSnapshotRef") or {}
    if meta.get("deletionTimestamp"):
        unbound_preprovisioned = bool(source.get("snapshotHandle")) and not ref.get("uid")
        told = ANN_BEING_DELETED in annotations or snapshot_deleted
        if unbound_preprovisioned or (told and ANN_BEING_CREATED not in annotations):
            handle = status.get("snapshotHandle")
            return Delete(
                call=spec.get("deletionPolicy") == "Delete"
                and bool(handle)
                and not status.get("volumeGroupSnapshotHandle")
            )
    if source.get("volumeHandle") and not status and ANN_GROUP_MEMBER not in annotations:
        return Create()
    if status.get("readyToUse") is True:
        return Ready()
    if source.get("snapshotHandle"):
        return Check()
    return Create()


def driver_parameters(parameters: Body) -> dict[str, str]:
    """A class's parameters for the driver: the reserved csi.storage.k8s.io/ keys removed."""
    result = {}
    for key, value in parameters.items():
        if key.startswith(_CSI_PREFIX):
            if key not in _RESERVED:
                raise ParameterError(
                    "failed to remove CSI Parameters of prefixed keys: "
                    f'found unknown parameter key "{key}" with reserved namespace {_CSI_PREFIX}'
                )
            continue
        result[str(key)] = str(value)
    return result


def snapshot_name(uid: str, prefix: str = "snapshot", uuid_length: int = -1) -> str:
    if uuid_length == -1:
        return f"{prefix}-{uid}"
    return f"{prefix}-{uid.replace('-', '')[:uuid_length]}"


def create_request(content: Body, parameters: dict[str, str], *, extra_metadata: bool) -> csi.CreateSnapshotRequest:
    spec = _spec(content)
    ref = spec.get("volumeSnapshotRef") or {}
    if not ref.get("uid"):
        raise ParameterError(
            f"cannot create snapshot. Snapshot content {_meta(content)['name']} not bound to a snapshot"
        )
    volume_id = (spec.get("source") or {}).get("volumeHandle")
    if not volume_id:
        raise ParameterError(
            f"cannot create snapshot. Volume handle not found in snapshot content {_meta(content)['name']}"
        )
    parameters = dict(parameters)
    if extra_metadata:
        parameters.update(
            zip(
                EXTRA_METADATA_KEYS,
                (ref.get("name", ""), ref.get("namespace", ""), _meta(content)["name"]),
                strict=True,
            )
        )
    return csi.CreateSnapshotRequest(
        name=snapshot_name(str(ref["uid"])), source_volume_id=str(volume_id), parameters=parameters
    )


def content_status(snapshot: csi.Snapshot, old: Body, *, handle: str = "") -> Body:
    """The content's status from a CreateSnapshot or ListSnapshots answer (csi-snapshotter's
    updateSnapshotContentStatus: fields once set stay; the error goes once ready)."""
    created = snapshot.creation_time.seconds * 1_000_000_000 + snapshot.creation_time.nanos
    status: Body = {
        "snapshotHandle": old.get("snapshotHandle") or handle or snapshot.snapshot_id,
        "creationTime": old.get("creationTime") or created,
        "readyToUse": snapshot.ready_to_use,
    }
    if old.get("restoreSize"):
        status["restoreSize"] = old["restoreSize"]
    elif snapshot.size_bytes > 0:
        status["restoreSize"] = snapshot.size_bytes
    if snapshot.group_snapshot_id or old.get("volumeGroupSnapshotHandle"):
        status["volumeGroupSnapshotHandle"] = old.get("volumeGroupSnapshotHandle") or snapshot.group_snapshot_id
    if old.get("error") and not (snapshot.ready_to_use and old.get("readyToUse") is not True):
        status["error"] = old["error"]
    return status


def deletion_secret(content: Body) -> SecretRef | None:
    annotations = _meta(content).get("annotations") or {}
    name, namespace = annotations.get(ANN_DELETION_SECRET_NAME), annotations.get(ANN_DELETION_SECRET_NAMESPACE)
    if name is None and namespace is None:
        return None
    if not name or not namespace:
        raise ParameterError(
            f'cannot retrieve secrets for snapshot content "{_meta(content)["name"]}", '
            "err: secret name or namespace not specified"
        )
    return SecretRef(str(name), str(namespace))
