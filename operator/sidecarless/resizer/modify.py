"""VolumeAttributesClass changes as pure functions: a claim -> what to do, and the patches.

external-resizer's modify controller (shared/reference/sidecars.md §3 and §7.8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from csi_client import csi
from sidecarless.credentials import volume_secret
from sidecarless.vocabulary import SecretRef

Body = dict[str, Any]

MODIFYING = "ModifyingVolume"
MODIFY_ERROR = "ModifyVolumeError"
PENDING, IN_PROGRESS, INFEASIBLE = "Pending", "InProgress", "Infeasible"
ANN_MODIFY_SECRET_NAME = "volume.kubernetes.io/controller-modify-secret-name"
ANN_MODIFY_SECRET_NAMESPACE = "volume.kubernetes.io/controller-modify-secret-namespace"
# With extraModifyMetadata, like external-resizer's --extra-modify-metadata.
EXTRA_METADATA_KEYS = ("csi.storage.k8s.io/pvc/name", "csi.storage.k8s.io/pvc/namespace", "csi.storage.k8s.io/pv/name")


def spec_class(claim: Body) -> str:
    return str((claim.get("spec") or {}).get("volumeAttributesClassName") or "")


def current_class(claim: Body) -> str:
    return str((claim.get("status") or {}).get("currentVolumeAttributesClassName") or "")


def modify_status(claim: Body) -> Body | None:
    status = (claim.get("status") or {}).get("modifyVolumeStatus")
    return dict(status) if status else None


def wants_modification(claim: Body) -> bool:
    """Cheap filter for the queue: a Bound claim whose class differs, or with a modification on record."""
    if (claim.get("status") or {}).get("phase") != "Bound":
        return False
    return modify_status(claim) is not None or spec_class(claim) != current_class(claim)


@dataclass(frozen=True)
class Unchanged:
    pass


@dataclass(frozen=True)
class RollBack:
    """The user set the class back to "" before any modification started: cancel."""


@dataclass(frozen=True)
class ModifyTo:
    class_name: str
    start: bool  # a new modification: check the class, mark InProgress, post VolumeModify


ModifyDecision = Unchanged | RollBack | ModifyTo


def modify_decision(claim: Body, *, uncertain: bool) -> ModifyDecision:
    """What external-resizer's modify() would do now.

    `uncertain`: a modification is InProgress and its last call may still be running in
    the driver (it failed with a non-final error, or this process did not start it), so
    it continues to the class it was started for, whatever the spec now says.
    """
    wanted, status = spec_class(claim), modify_status(claim)
    if status is None and wanted == current_class(claim):
        return Unchanged()
    in_progress = status is not None and status.get("status") == IN_PROGRESS
    if wanted == "" and not in_progress:
        has_modifying = any(c.get("type") == MODIFYING for c in (claim.get("status") or {}).get("conditions") or [])
        return RollBack() if has_modifying else Unchanged()
    if status is not None and in_progress and (uncertain or wanted == ""):
        return ModifyTo(str(status.get("targetVolumeAttributesClassName") or ""), start=False)
    return ModifyTo(wanted, start=True)


def infeasible_for_current_spec(claim: Body) -> bool:
    """The spec still asks for the class the driver called infeasible: retry only slowly."""
    status = modify_status(claim)
    return (
        status is not None
        and status.get("status") == INFEASIBLE
        and status.get("targetVolumeAttributesClassName") == spec_class(claim)
    )


def mutable_parameters(
    attributes_class: Body, claim: Body, volume_name: str, *, extra_metadata: bool
) -> dict[str, str]:
    parameters = {str(k): str(v) for k, v in (attributes_class.get("parameters") or {}).items()}
    if extra_metadata:
        meta = claim["metadata"]
        parameters.update(zip(EXTRA_METADATA_KEYS, (meta["name"], meta["namespace"], volume_name), strict=True))
    return parameters


def request(volume: Body, parameters: dict[str, str]) -> csi.ControllerModifyVolumeRequest:
    """ControllerModifyVolume for the PV, without secrets (the caller reads them live)."""
    return csi.ControllerModifyVolumeRequest(
        volume_id=volume["spec"]["csi"]["volumeHandle"], mutable_parameters=parameters
    )


def secret_ref(volume: Body) -> SecretRef | None:
    """The modify secret: the PV's controller-modify-secret annotations, else its controllerExpandSecretRef."""
    annotations = (volume.get("metadata") or {}).get("annotations") or {}
    name, namespace = annotations.get(ANN_MODIFY_SECRET_NAME), annotations.get(ANN_MODIFY_SECRET_NAMESPACE)
    if name and namespace:
        return SecretRef(str(name), str(namespace))
    return volume_secret(volume, "controllerExpandSecretRef")


# --- patches -------------------------------------------------------------------------


def merge_conditions(old: list[Body], new: list[Body]) -> list[Body]:
    """external-resizer's MergePVCConditions: replace conditions of the same type; the
    transition time moves only when the status or reason does."""
    fresh = {c["type"]: c for c in new}
    result = []
    for condition in old:
        replacement = fresh.pop(condition.get("type", ""), None)
        if replacement is None:
            result.append(condition)
            continue
        changed = replacement.get("reason") != condition.get("reason") or replacement["status"] != condition.get(
            "status"
        )
        transition = replacement["lastProbeTime"] if changed else condition.get("lastTransitionTime")
        result.append({**replacement, "lastTransitionTime": transition})
    return [*result, *({**c, "lastTransitionTime": c["lastProbeTime"]} for c in fresh.values())]


def status_patch(
    claim: Body, state: str, now: str, *, error: tuple[str, str] | None = None, final: bool = True
) -> Body:
    """Mark the modification Pending / InProgress / Infeasible.

    `error`: (Go code name, message) of the failed call; `final`: whether it was a final error.
    """
    previous = modify_status(claim) or {}
    modify: Body = {"status": state}
    status: Body = {"modifyVolumeStatus": modify}
    if state != PENDING:
        target = str(previous.get("targetVolumeAttributesClassName") or "")
        if error is None:
            target = spec_class(claim)
            modify["targetVolumeAttributesClassName"] = target
            message = f'Modifying volume to "{target}" is in progress.'  # Go's %q, as external-resizer
        elif final:
            message = f'Modifying volume to "{target}" failed. Waiting for retry.'
        else:
            message = f'Modifying volume to "{target}" is still in progress.'
        conditions = [{"type": MODIFYING, "status": "True", "lastProbeTime": now, "message": message}]
        if error is not None:
            code, text = error
            conditions.append(
                {"type": MODIFY_ERROR, "status": "True", "reason": code, "message": text, "lastProbeTime": now}
            )
        status["conditions"] = merge_conditions(list((claim.get("status") or {}).get("conditions") or []), conditions)
    return {"metadata": {"resourceVersion": claim["metadata"]["resourceVersion"]}, "status": status}


def _without(claim: Body, kinds: set[str]) -> list[Body]:
    return [c for c in (claim.get("status") or {}).get("conditions") or [] if c.get("type") not in kinds]


def completed_patch(claim: Body, class_name: str) -> Body:
    return {
        "status": {
            "modifyVolumeStatus": None,
            "currentVolumeAttributesClassName": class_name,
            "conditions": _without(claim, {MODIFYING, MODIFY_ERROR}),
        }
    }


def volume_patch(class_name: str) -> Body:
    return {"spec": {"volumeAttributesClassName": class_name}}


def rolled_back_patch(claim: Body) -> Body:
    return {"status": {"conditions": _without(claim, {MODIFYING})}}
