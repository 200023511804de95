"""Expanding as pure functions: a claim and its PV -> the size to ask for, and the patches.

external-resizer's rules (shared/reference/sidecars.md §3 and §7.7), with
RecoverVolumeExpansionFailure: while an expansion is unfinished, the size asked for is
`status.allocatedResources`, not the claim's current request, so lowering the request
after a failure can never strand an operation the driver may still be doing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from csi_client import csi
from sidecarless.capabilities import publish_capability
from sidecarless.vocabulary import format_quantity, parse_quantity

Body = dict[str, Any]

ANN_PRE_RESIZE_CAPACITY = "volume.alpha.kubernetes.io/pre-resize-capacity"
ANN_NODE_EXPANSION_NOT_REQUIRED = "volume.kubernetes.io/node-expansion-not-required"

RESIZING = "Resizing"
FS_RESIZE_PENDING = "FileSystemResizePending"
CONTROLLER_RESIZE_ERROR = "ControllerResizeError"
NODE_RESIZE_ERROR = "NodeResizeError"
RESIZE_CONDITIONS = frozenset({RESIZING, FS_RESIZE_PENDING, CONTROLLER_RESIZE_ERROR, NODE_RESIZE_ERROR})

# status.allocatedResourceStatuses["storage"]
CONTROLLER_IN_PROGRESS = "ControllerResizeInProgress"
CONTROLLER_INFEASIBLE = "ControllerResizeInfeasible"
NODE_PENDING = "NodeResizePending"
NODE_IN_PROGRESS = "NodeResizeInProgress"
NODE_INFEASIBLE = "NodeResizeInfeasible"

FS_RESIZE_PENDING_MESSAGE = "Waiting for user to (re-)start a pod to finish file system resize of volume on node."


def _storage(resources: Body | None) -> int | None:
    value = (resources or {}).get("storage")
    return parse_quantity(str(value)) if value not in (None, "") else None


def requested(claim: Body) -> int:
    return _storage(((claim.get("spec") or {}).get("resources") or {}).get("requests")) or 0


def status_capacity(claim: Body) -> int:
    return _storage((claim.get("status") or {}).get("capacity")) or 0


def allocated(claim: Body) -> int | None:
    return _storage((claim.get("status") or {}).get("allocatedResources"))


def resize_status(claim: Body) -> str:
    return str(((claim.get("status") or {}).get("allocatedResourceStatuses") or {}).get("storage") or "")


def volume_capacity(volume: Body) -> int:
    return _storage((volume.get("spec") or {}).get("capacity")) or 0


def needs_resize(claim: Body) -> bool:
    """external-resizer's pvcNeedResize: a Bound claim asking for more than it has."""
    status, spec = claim.get("status") or {}, claim.get("spec") or {}
    if status.get("phase") != "Bound" or not spec.get("volumeName"):
        return False
    return requested(claim) > status_capacity(claim)


def bound_to(claim: Body, volume: Body) -> bool:
    """Whether the PV's claimRef points at this very claim (same namespace and UID)."""
    ref = (volume.get("spec") or {}).get("claimRef") or {}
    meta = claim.get("metadata") or {}
    return ref.get("namespace") == meta.get("namespace") and ref.get("uid") == meta.get("uid")


def node_expansion_complete(claim: Body, volume: Body) -> bool:
    """Kubelet has finished: the claim's capacity has caught up with the PV's."""
    return status_capacity(claim) >= volume_capacity(volume)


def has_condition(claim: Body, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True" for c in (claim.get("status") or {}).get("conditions") or []
    )


@dataclass(frozen=True)
class ExpansionPlan:
    size: int  # the bytes to ask the driver for
    update_status: bool  # False: allocatedResources already says `size`; keep the old resize status


def plan_expansion(claim: Body, volume: Body, *, final_error: bool, controller_expansion: bool) -> ExpansionPlan | None:
    """The size to expand to now, or None when the node side must finish first.

    `final_error`: this process saw the last ControllerExpandVolume of the claim fail with
    a final error (the driver is surely not still working on it). `controller_expansion`:
    the driver expands in the controller (else only kubelet's NodeExpandVolume does).
    The branches follow external-resizer's expandAndRecover, one for one.
    """
    request = requested(claim)
    pv_size = volume_capacity(volume)
    status = resize_status(claim)
    allocated_size = allocated(claim)
    size = request
    if pv_size < request:
        if status == NODE_INFEASIBLE:
            size = allocated_size if allocated_size is not None else request
        elif status in (NODE_PENDING, NODE_IN_PROGRESS):
            size = allocated_size if allocated_size is not None else request
            if pv_size >= size:
                return None  # let the node finish the expansion already under way
        elif status == CONTROLLER_IN_PROGRESS and not final_error and allocated_size is not None:
            size = allocated_size  # the last call may still be running in the driver
    else:
        # The PV is already big enough: a repeated event, an expansion whose bookkeeping
        # was lost, a node expansion to retry, or a request lowered after the fact.
        if status in (NODE_IN_PROGRESS, NODE_PENDING):
            return None
        if status == NODE_INFEASIBLE:
            size = allocated_size if controller_expansion and allocated_size is not None else request
        elif status in (CONTROLLER_IN_PROGRESS, CONTROLLER_INFEASIBLE):
            if allocated_size is not None:
                size = allocated_size
        elif status == "" and allocated_size is not None:
            size = allocated_size
        elif has_condition(claim, FS_RESIZE_PENDING):
            return None
    return ExpansionPlan(size=size, update_status=allocated_size != size)


def expand_request(volume: Body, size: int, capabilities: frozenset[str]) -> csi.ControllerExpandVolumeRequest:
    """ControllerExpandVolume for the PV, without secrets (the caller reads them live)."""
    return csi.ControllerExpandVolumeRequest(
        volume_id=volume["spec"]["csi"]["volumeHandle"],
        capacity_range=csi.CapacityRange(required_bytes=size),
        volume_capability=publish_capability(volume, "", capabilities),
    )


# --- conditions and patches ----------------------------------------------------------


def merge_resize_conditions(old: list[Body], new: list[Body], *, keep_old: bool) -> list[Body]:
    """external-resizer's MergeResizeConditionsOfPVC: other conditions stay; resize ones are
    replaced by `new` of the same type, and dropped unless `keep_old`."""
    fresh = {c["type"]: c for c in new}
    result = []
    for condition in old:
        kind = condition.get("type")
        if kind not in RESIZE_CONDITIONS:
            result.append(condition)
        elif kind in fresh:
            result.append(fresh.pop(kind))
        elif keep_old:
            result.append(condition)
    return [*result, *fresh.values()]


def _condition(kind: str, now: str, message: str = "") -> Body:
    condition: Body = {"type": kind, "status": "True", "lastTransitionTime": now}
    if message:
        condition["message"] = message
    return condition


def _conditions(claim: Body) -> list[Body]:
    return list((claim.get("status") or {}).get("conditions") or [])


def _annotations(claim: Body) -> Body:
    return dict((claim.get("metadata") or {}).get("annotations") or {})


def _without_not_required(claim: Body) -> Body:
    """The metadata part of a patch that removes the node-expansion-not-required annotation."""
    if ANN_NODE_EXPANSION_NOT_REQUIRED in _annotations(claim):
        return {"annotations": {ANN_NODE_EXPANSION_NOT_REQUIRED: None}}
    return {}


def _checked(claim: Body, metadata: Body) -> Body:
    """Add the claim's resourceVersion, so the patch fails if the claim changed meanwhile."""
    return {**metadata, "resourceVersion": claim["metadata"]["resourceVersion"]}


def in_progress_patch(claim: Body, plan: ExpansionPlan, now: str) -> Body:
    """Before the call: Resizing, allocatedResources = the size asked for, ControllerResizeInProgress."""
    status: Body = {
        "conditions": merge_resize_conditions(
            _conditions(claim), [_condition(RESIZING, now)], keep_old=not plan.update_status
        ),
        "allocatedResources": {"storage": format_quantity(plan.size)},
    }
    if plan.update_status:
        status["allocatedResourceStatuses"] = {"storage": CONTROLLER_IN_PROGRESS}
    return {"metadata": _checked(claim, _without_not_required(claim)), "status": status}


def failed_patch(claim: Body, message: str, *, infeasible: bool, now: str) -> Body:
    """After a final error: ControllerResizeError, and ControllerResizeInfeasible when the size cannot be had.

    No resourceVersion check: the failure must be recorded even over a slightly older claim.
    """
    status: Body = {
        "conditions": merge_resize_conditions(
            _conditions(claim),
            [_condition(CONTROLLER_RESIZE_ERROR, now, f"failed to expand pvc with {message}")],
            keep_old=True,
        )
    }
    if infeasible:
        status["allocatedResourceStatuses"] = {"storage": CONTROLLER_INFEASIBLE}
    return {"status": status}


def node_pending_patch(claim: Body, now: str) -> Body:
    """The controller part is done; kubelet finishes the file system (FileSystemResizePending)."""
    return {
        "metadata": _checked(claim, _without_not_required(claim)),
        "status": {
            "conditions": merge_resize_conditions(
                _conditions(claim), [_condition(FS_RESIZE_PENDING, now, FS_RESIZE_PENDING_MESSAGE)], keep_old=True
            ),
            "allocatedResourceStatuses": {"storage": NODE_PENDING},
        },
    }


def finished_patch(claim: Body, size: int) -> Body:
    """All done without the node: capacity set, resize conditions and status cleared, and
    node-expansion-not-required so kubelet does not expand again."""
    return {
        "metadata": _checked(claim, {"annotations": {ANN_NODE_EXPANSION_NOT_REQUIRED: "true"}}),
        "status": {
            "capacity": {"storage": format_quantity(size)},
            "conditions": merge_resize_conditions(_conditions(claim), [], keep_old=False),
            "allocatedResourceStatuses": {"storage": None},
        },
    }


def volume_capacity_patch(volume: Body, claim: Body, size: int, *, fs_resize_required: bool) -> Body:
    """The PV's new capacity; with a node expansion to come, the claim's old capacity in the
    pre-resize annotation (unless already there), which the PV controller reads."""
    patch: Body = {"spec": {"capacity": {"storage": format_quantity(size)}}}
    annotations = (volume.get("metadata") or {}).get("annotations") or {}
    if fs_resize_required and ANN_PRE_RESIZE_CAPACITY not in annotations:
        old = ((claim.get("status") or {}).get("capacity") or {}).get("storage") or "0"
        patch["metadata"] = {"annotations": {ANN_PRE_RESIZE_CAPACITY: str(old)}}
    return patch


def pre_resize_cleanup_patch() -> Body:
    return {"metadata": {"annotations": {ANN_PRE_RESIZE_CAPACITY: None}}}
