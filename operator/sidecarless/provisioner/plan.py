"""Provisioning as pure functions: PVC + StorageClass + endpoint settings -> CreateVolume -> PV.

Nothing here does I/O. The controller gathers the objects, calls these, talks to the
driver and writes the results.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from typing import Any

from csi_client import csi
from sidecarless.capabilities import access_mode
from sidecarless.endpoints.spec import ProvisionerSettings
from sidecarless.provisioner.parameters import (
    EXTRA_METADATA_KEYS,
    PV_SECRET_REF_FIELDS,
    TemplateContext,
    parse_class_parameters,
    resolve_secret,
)
from sidecarless.vocabulary import ParameterError, SecretRef, format_quantity, parse_quantity

Body = dict[str, Any]

ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_STORAGE_PROVISIONER_BETA = "volume.beta.kubernetes.io/storage-provisioner"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_DELETION_SECRET_NAME = "volume.kubernetes.io/provisioner-deletion-secret-name"
ANN_DELETION_SECRET_NAMESPACE = "volume.kubernetes.io/provisioner-deletion-secret-namespace"
PV_FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"
PROVISIONER_IDENTITY_KEY = "storage.kubernetes.io/csiProvisionerIdentity"


@dataclass(frozen=True)
class DriverFacts:
    name: str
    controller_capabilities: frozenset[str] = frozenset()
    identity: str = ""  # storage.kubernetes.io/csiProvisionerIdentity


def provisioner_identity(driver_name: str) -> str:
    """`<epoch-ms>-<random>-<driver>`, one per process, as external-provisioner makes it."""
    return f"{int(time.time() * 1000)}-{random.randint(1000, 9999)}-{driver_name}"


# --- what to do with a claim ---------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    reason: str


@dataclass(frozen=True)
class Refuse:
    """The claim asks for something this provisioner will not do; tell the user."""

    message: str


@dataclass(frozen=True)
class Provision:
    pass


ClaimDecision = Skip | Refuse | Provision


def claim_decision(claim: Body, storage_class: Body | None, driver: str) -> ClaimDecision:
    """Whether `claim` is one this driver should provision now (external-provisioner's shouldProvision)."""
    meta, spec = claim.get("metadata", {}), claim.get("spec", {})
    annotations = meta.get("annotations") or {}
    if meta.get("deletionTimestamp"):
        return Skip("claim is being deleted")
    if spec.get("volumeName"):
        return Skip("claim is already bound or pre-bound to a volume")
    wanted = annotations.get(ANN_STORAGE_PROVISIONER) or annotations.get(ANN_STORAGE_PROVISIONER_BETA)
    if wanted != driver:
        return Skip(f"claim is for provisioner {wanted!r}, not {driver!r}")
    if storage_class is None:
        return Skip("storage class not found")
    if spec.get("selector"):
        return Refuse("claim Selector is not supported")
    if storage_class.get("volumeBindingMode") == "WaitForFirstConsumer" and not annotations.get(ANN_SELECTED_NODE):
        return Skip("waiting for a node to be selected (WaitForFirstConsumer)")
    return Provision()


# --- the request ---------------------------------------------------------------------


def volume_name(claim_uid: str, settings: ProvisionerSettings) -> str:
    if settings.volume_name_uuid_length < 0:
        return f"{settings.volume_name_prefix}-{claim_uid}"
    return f"{settings.volume_name_prefix}-{claim_uid.replace('-', '')[: settings.volume_name_uuid_length]}"


def volume_capabilities(
    access_modes: list[str], volume_mode: str, fstype: str, mount_options: list[str], capabilities: frozenset[str]
) -> list[csi.VolumeCapability]:
    """One capability per access mode, Block or Mount as the claim's volumeMode says."""
    if not access_modes:
        raise ParameterError("claim has no access modes")
    result = []
    for mode in access_modes:
        capability = csi.VolumeCapability(
            access_mode=csi.VolumeCapability.AccessMode(mode=access_mode(mode, capabilities))
        )
        if volume_mode == "Block":
            capability.block.SetInParent()
        elif volume_mode in ("", "Filesystem"):
            capability.mount.fs_type = fstype
            capability.mount.mount_flags.extend(mount_options)
        else:
            raise ParameterError(f"unsupported volume mode {volume_mode!r}")
        result.append(capability)
    return result


@dataclass(frozen=True)
class ProvisionPlan:
    """Everything decided before CreateVolume: the request (without secrets) and the PV to make."""

    volume_name: str
    request: csi.CreateVolumeRequest
    provisioner_secret: SecretRef | None
    fstype: str
    requested_bytes: int
    pv_template: Body = field(default_factory=dict)  # the PV, less what the response fills in


def plan_provision(
    claim: Body,
    storage_class: Body,
    *,
    endpoint_name: str,
    driver: DriverFacts,
    settings: ProvisionerSettings,
    accessibility: csi.TopologyRequirement | None = None,
    content_source: csi.VolumeContentSource | None = None,
    attributes_class: Body | None = None,
) -> ProvisionPlan:
    """Plan a CreateVolume for `claim`; raise ParameterError for anything a user must fix."""
    meta, spec = claim["metadata"], claim.get("spec", {})
    name = volume_name(meta["uid"], settings)
    parameters = parse_class_parameters(storage_class.get("parameters") or {})
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    if not storage:
        raise ParameterError("claim requests no storage size")
    try:
        requested = parse_quantity(str(storage))
    except ValueError as error:
        raise ParameterError(str(error)) from error
    volume_mode = spec.get("volumeMode") or "Filesystem"
    fstype = "" if volume_mode == "Block" else (parameters.fstype or settings.default_fstype)
    mount_options = list(storage_class.get("mountOptions") or [])
    context = TemplateContext(
        pv_name=name,
        pvc_name=meta["name"],
        pvc_namespace=meta["namespace"],
        pvc_annotations=dict(meta.get("annotations") or {}),
    )
    secrets = {kind: resolve_secret(kind, template, context) for kind, template in parameters.secrets.items()}
    driver_parameters = dict(parameters.driver_parameters)
    if settings.extra_create_metadata:
        driver_parameters.update(zip(EXTRA_METADATA_KEYS, (meta["name"], meta["namespace"], name), strict=True))
    request = csi.CreateVolumeRequest(
        name=name,
        capacity_range=csi.CapacityRange(required_bytes=requested),
        volume_capabilities=volume_capabilities(
            list(spec.get("accessModes") or []), volume_mode, fstype, mount_options, driver.controller_capabilities
        ),
        parameters=driver_parameters,
    )
    if accessibility is not None:
        request.accessibility_requirements.CopyFrom(accessibility)
    if content_source is not None:
        request.volume_content_source.CopyFrom(content_source)
    class_name = spec.get("volumeAttributesClassName") or ""
    if class_name:
        request.mutable_parameters.update(_mutable_parameters(class_name, attributes_class, driver.name))
    return ProvisionPlan(
        volume_name=name,
        request=request,
        provisioner_secret=secrets.get("provisioner"),
        fstype=fstype,
        requested_bytes=requested,
        pv_template=_pv_template(
            claim=claim,
            storage_class=storage_class,
            name=name,
            endpoint_name=endpoint_name,
            driver=driver,
            settings=settings,
            secrets=secrets,
            fstype=fstype,
        ),
    )


def _mutable_parameters(class_name: str, attributes_class: Body | None, driver: str) -> dict[str, str]:
    """A VolumeAttributesClass's parameters, which CreateVolume takes as mutable_parameters."""
    if attributes_class is None:
        raise ParameterError(f'volumeattributesclass.storage.k8s.io "{class_name}" not found')
    if attributes_class.get("driverName") != driver:
        raise ParameterError(
            f"VAC {class_name} referenced in PVC is for driver {attributes_class.get('driverName')} "
            f"which does not match driver name {driver}"
        )
    return {str(k): str(v) for k, v in (attributes_class.get("parameters") or {}).items()}


def _pv_template(
    *,
    claim: Body,
    storage_class: Body,
    name: str,
    endpoint_name: str,
    driver: DriverFacts,
    settings: ProvisionerSettings,
    secrets: dict[str, SecretRef],
    fstype: str,
) -> Body:
    meta, spec = claim["metadata"], claim.get("spec", {})
    deletion = secrets.get("provisioner")
    reclaim = storage_class.get("reclaimPolicy") or "Delete"
    access_modes = list(spec.get("accessModes") or [])
    csi_source: Body = {"driver": driver.name}
    if fstype:
        csi_source["fsType"] = fstype
    for kind, ref_field in PV_SECRET_REF_FIELDS.items():
        if kind in secrets:
            csi_source[ref_field] = secrets[kind].as_ref()
    if settings.controller_publish_readonly and access_modes == ["ReadOnlyMany"]:
        csi_source["readOnly"] = True
    pv: Body = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {
                ANN_PROVISIONED_BY: driver.name,
                ANN_DELETION_SECRET_NAME: deletion.name if deletion else "",
                ANN_DELETION_SECRET_NAMESPACE: deletion.namespace if deletion else "",
            },
        },
        "spec": {
            "accessModes": access_modes,
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": storage_class["metadata"]["name"],
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "csi": csi_source,
        },
    }
    if spec.get("volumeAttributesClassName"):
        pv["spec"]["volumeAttributesClassName"] = spec["volumeAttributesClassName"]
    if reclaim == "Delete":
        pv["metadata"]["finalizers"] = [PV_FINALIZER]
    if storage_class.get("mountOptions"):
        pv["spec"]["mountOptions"] = list(storage_class["mountOptions"])
    return pv


class CapacityTooSmall(ParameterError):  # noqa: N818
    """The driver made a volume smaller than the claim asked for."""


def pv_from_response(plan: ProvisionPlan, volume: csi.Volume, identity: str) -> Body:
    """The PV for a successful CreateVolume: the template plus what the driver answered."""
    capacity = volume.capacity_bytes or plan.requested_bytes  # 0 means "unknown": use the request
    if capacity < plan.requested_bytes:
        raise CapacityTooSmall(
            f"created volume capacity {capacity} less than requested capacity {plan.requested_bytes}"
        )
    pv: Body = copy.deepcopy(plan.pv_template)
    pv["spec"]["capacity"] = {"storage": format_quantity(capacity)}
    csi_source = pv["spec"]["csi"]
    csi_source["volumeHandle"] = volume.volume_id
    csi_source["volumeAttributes"] = {**dict(volume.volume_context), PROVISIONER_IDENTITY_KEY: identity}
    terms = [
        {"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(t.segments.items())]}
        for t in volume.accessible_topology
        if t.segments
    ]
    if terms:
        pv["spec"]["nodeAffinity"] = {"required": {"nodeSelectorTerms": terms}}
    return pv


# --- what to do with a volume --------------------------------------------------------


@dataclass(frozen=True)
class DeleteVolume:
    pass


@dataclass(frozen=True)
class AddFinalizer:
    pass


@dataclass(frozen=True)
class RemoveFinalizer:
    pass


VolumeDecision = Skip | DeleteVolume | AddFinalizer | RemoveFinalizer


def is_provisioned_by(volume: Body, driver: str) -> bool:
    annotations = volume.get("metadata", {}).get("annotations") or {}
    return bool(annotations.get(ANN_PROVISIONED_BY) == driver)


def volume_decision(volume: Body, driver: str) -> VolumeDecision:
    """external-provisioner's shouldDelete and its PV finalizer rules (HonorPVReclaimPolicy)."""
    meta, spec = volume.get("metadata", {}), volume.get("spec", {})
    if (spec.get("csi") or {}).get("driver") != driver:
        return Skip("not this driver's volume")
    finalizers = meta.get("finalizers") or []
    has_finalizer = PV_FINALIZER in finalizers
    deleting = bool(meta.get("deletionTimestamp"))
    reclaim = spec.get("persistentVolumeReclaimPolicy")
    phase = (volume.get("status") or {}).get("phase")
    if reclaim != "Delete":
        return RemoveFinalizer() if has_finalizer else Skip(f"reclaim policy {reclaim}")
    if phase == "Released" and is_provisioned_by(volume, driver) and (has_finalizer or not deleting):
        return DeleteVolume()
    if not has_finalizer and not deleting and phase == "Bound":
        return AddFinalizer()
    return Skip(f"volume is {phase or 'new'}")
