"""external-resizer's expansion and modification rules as pure functions."""

from typing import Any

import pytest

from csi_client import csi
from sidecarless.resizer import expand, modify
from sidecarless.vocabulary import SecretRef

GI = 1 << 30
NOW = "2026-11-23T10:00:00Z"


def a_claim(
    request: str = "2Gi",
    capacity: str = "1Gi",
    *,
    status: str = "",
    allocated: str = "",
    conditions: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "metadata": {
            "name": "data",
            "namespace": "team-a",
            "uid": "uid-1",
            "resourceVersion": "7",
            "annotations": annotations or {},
        },
        "spec": {"resources": {"requests": {"storage": request}}, "volumeName": "pvc-1"},
        "status": {"phase": "Bound", "capacity": {"storage": capacity}, "conditions": conditions or []},
    }
    if status:
        claim["status"]["allocatedResourceStatuses"] = {"storage": status}
    if allocated:
        claim["status"]["allocatedResources"] = {"storage": allocated}
    return claim


def a_volume(capacity: str = "1Gi", **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "pvc-1", "annotations": annotations},
        "spec": {
            "capacity": {"storage": capacity},
            "claimRef": {"namespace": "team-a", "name": "data", "uid": "uid-1"},
            "accessModes": ["ReadWriteOnce"],
            "csi": {"driver": "mock", "volumeHandle": "vol-1", "fsType": "ext4"},
        },
    }


def test_needs_resize_only_when_bound_and_asking_for_more() -> None:
    assert expand.needs_resize(a_claim("2Gi", "1Gi"))
    assert not expand.needs_resize(a_claim("1Gi", "1Gi"))
    pending = a_claim()
    pending["status"]["phase"] = "Pending"
    assert not expand.needs_resize(pending)


def test_bound_to_checks_the_claim_uid() -> None:
    claim, volume = a_claim(), a_volume()
    assert expand.bound_to(claim, volume)
    volume["spec"]["claimRef"]["uid"] = "an-older-claim"
    assert not expand.bound_to(claim, volume)


@pytest.mark.parametrize(
    ("claim", "volume", "final_error", "expected"),
    [
        # A first expansion asks for the request and records it.
        (a_claim("2Gi"), a_volume("1Gi"), False, expand.ExpansionPlan(2 * GI, True)),
        # A call that may still be running: keep asking for what it asked, not the new request.
        (
            a_claim("3Gi", status=expand.CONTROLLER_IN_PROGRESS, allocated="2Gi"),
            a_volume("1Gi"),
            False,
            expand.ExpansionPlan(2 * GI, False),
        ),
        # ... unless it ended in a final error: then the new request is safe.
        (
            a_claim("3Gi", status=expand.CONTROLLER_IN_PROGRESS, allocated="2Gi"),
            a_volume("1Gi"),
            True,
            expand.ExpansionPlan(3 * GI, True),
        ),
        # Recovery: infeasible at 100Gi, the user lowered the request to 2Gi.
        (
            a_claim("2Gi", status=expand.CONTROLLER_INFEASIBLE, allocated="100Gi"),
            a_volume("1Gi"),
            True,
            expand.ExpansionPlan(2 * GI, True),
        ),
        # Infeasible and unchanged: the same size again (the controller retries it slowly).
        (
            a_claim("100Gi", status=expand.CONTROLLER_INFEASIBLE, allocated="100Gi"),
            a_volume("1Gi"),
            True,
            expand.ExpansionPlan(100 * GI, False),
        ),
        # The node is expanding to 2Gi already: nothing to do.
        (a_claim("2Gi", status=expand.NODE_PENDING, allocated="2Gi"), a_volume("2Gi"), False, None),
        # PV expanded but the bookkeeping was lost: finish at the recorded size.
        (
            a_claim("2Gi", status=expand.CONTROLLER_IN_PROGRESS, allocated="2Gi"),
            a_volume("2Gi"),
            False,
            expand.ExpansionPlan(2 * GI, False),
        ),
        # FileSystemResizePending without a status (an older API server): the node's job.
        (
            a_claim("2Gi", conditions=[{"type": expand.FS_RESIZE_PENDING, "status": "True"}]),
            a_volume("2Gi"),
            False,
            None,
        ),
    ],
)
def test_plan_expansion(
    claim: dict[str, Any], volume: dict[str, Any], final_error: bool, expected: expand.ExpansionPlan | None
) -> None:
    assert expand.plan_expansion(claim, volume, final_error=final_error, controller_expansion=True) == expected


def test_expand_request_carries_the_volume_capability() -> None:
    request = expand.expand_request(a_volume(), 2 * GI, frozenset())
    assert request.volume_id == "vol-1"
    assert request.capacity_range.required_bytes == 2 * GI
    assert request.volume_capability.mount.fs_type == "ext4"
    assert request.volume_capability.access_mode.mode == csi.VolumeCapability.AccessMode.Mode.SINGLE_NODE_WRITER


def test_merge_resize_conditions_keeps_other_conditions() -> None:
    old = [{"type": "Other"}, {"type": expand.CONTROLLER_RESIZE_ERROR}, {"type": expand.RESIZING, "status": "old"}]
    new = [{"type": expand.RESIZING, "status": "new"}]
    assert expand.merge_resize_conditions(old, new, keep_old=False) == [{"type": "Other"}, new[0]]
    assert expand.merge_resize_conditions(old, new, keep_old=True) == [old[0], old[1], new[0]]


def test_in_progress_patch() -> None:
    claim = a_claim(annotations={expand.ANN_NODE_EXPANSION_NOT_REQUIRED: "true"})
    patch = expand.in_progress_patch(claim, expand.ExpansionPlan(2 * GI, True), NOW)
    assert patch["metadata"] == {
        "annotations": {expand.ANN_NODE_EXPANSION_NOT_REQUIRED: None},
        "resourceVersion": "7",
    }
    assert patch["status"]["allocatedResources"] == {"storage": "2Gi"}
    assert patch["status"]["allocatedResourceStatuses"] == {"storage": expand.CONTROLLER_IN_PROGRESS}
    assert [c["type"] for c in patch["status"]["conditions"]] == [expand.RESIZING]
    unchanged = expand.in_progress_patch(claim, expand.ExpansionPlan(2 * GI, False), NOW)
    assert "allocatedResourceStatuses" not in unchanged["status"]


def test_failed_patch_marks_infeasible_only_when_so() -> None:
    infeasible = expand.failed_patch(a_claim(), "rpc error: code = OutOfRange desc = too big", infeasible=True, now=NOW)
    assert infeasible["status"]["allocatedResourceStatuses"] == {"storage": expand.CONTROLLER_INFEASIBLE}
    condition = infeasible["status"]["conditions"][0]
    assert condition["type"] == expand.CONTROLLER_RESIZE_ERROR
    assert condition["message"] == "failed to expand pvc with rpc error: code = OutOfRange desc = too big"
    other = expand.failed_patch(a_claim(), "boom", infeasible=False, now=NOW)
    assert "allocatedResourceStatuses" not in other["status"]
    assert "metadata" not in other  # recorded even over an older claim


def test_finished_and_node_pending_patches() -> None:
    claim = a_claim(conditions=[{"type": expand.RESIZING, "status": "True"}, {"type": "Other"}])
    finished = expand.finished_patch(claim, 2 * GI)
    assert finished["status"]["capacity"] == {"storage": "2Gi"}
    assert finished["status"]["conditions"] == [{"type": "Other"}]
    assert finished["status"]["allocatedResourceStatuses"] == {"storage": None}
    assert finished["metadata"]["annotations"] == {expand.ANN_NODE_EXPANSION_NOT_REQUIRED: "true"}
    pending = expand.node_pending_patch(claim, NOW)
    assert pending["status"]["allocatedResourceStatuses"] == {"storage": expand.NODE_PENDING}
    assert {c["type"] for c in pending["status"]["conditions"]} == {expand.RESIZING, "Other", expand.FS_RESIZE_PENDING}


def test_volume_capacity_patch_records_the_old_capacity_once() -> None:
    patch = expand.volume_capacity_patch(a_volume(), a_claim(), 2 * GI, fs_resize_required=True)
    assert patch == {
        "spec": {"capacity": {"storage": "2Gi"}},
        "metadata": {"annotations": {expand.ANN_PRE_RESIZE_CAPACITY: "1Gi"}},
    }
    annotated = a_volume(**{expand.ANN_PRE_RESIZE_CAPACITY: "1Gi"})
    assert "metadata" not in expand.volume_capacity_patch(annotated, a_claim(), 3 * GI, fs_resize_required=True)
    assert "metadata" not in expand.volume_capacity_patch(a_volume(), a_claim(), 2 * GI, fs_resize_required=False)


# --- modification ----------------------------------------------------------------


def a_modified_claim(spec: str = "", current: str = "", status: dict[str, str] | None = None, **extra: Any) -> Any:
    claim = a_claim("1Gi", "1Gi", **extra)
    if spec:
        claim["spec"]["volumeAttributesClassName"] = spec
    if current:
        claim["status"]["currentVolumeAttributesClassName"] = current
    if status:
        claim["status"]["modifyVolumeStatus"] = status
    return claim


@pytest.mark.parametrize(
    ("claim", "uncertain", "expected"),
    [
        (a_modified_claim("gold", "gold"), False, modify.Unchanged()),
        (a_modified_claim("gold", "silver"), False, modify.ModifyTo("gold", start=True)),
        # A call that may still be running keeps its target even if the spec moved on.
        (
            a_modified_claim("platinum", "silver", {"status": "InProgress", "targetVolumeAttributesClassName": "gold"}),
            True,
            modify.ModifyTo("gold", start=False),
        ),
        (
            a_modified_claim("platinum", "silver", {"status": "InProgress", "targetVolumeAttributesClassName": "gold"}),
            False,
            modify.ModifyTo("platinum", start=True),
        ),
        # Set back to "" after an infeasible try: cancel (the event only if a modification showed).
        (
            a_modified_claim(
                "",
                "",
                {"status": "Infeasible", "targetVolumeAttributesClassName": "gold"},
                conditions=[{"type": modify.MODIFYING}],
            ),
            False,
            modify.RollBack(),
        ),
        (
            a_modified_claim("", "", {"status": "Infeasible", "targetVolumeAttributesClassName": "gold"}),
            False,
            modify.Unchanged(),
        ),
        # Set back to "" while in progress: the started modification must finish first.
        (
            a_modified_claim("", "", {"status": "InProgress", "targetVolumeAttributesClassName": "gold"}),
            False,
            modify.ModifyTo("gold", start=False),
        ),
    ],
)
def test_modify_decision(claim: dict[str, Any], uncertain: bool, expected: modify.ModifyDecision) -> None:
    assert modify.modify_decision(claim, uncertain=uncertain) == expected


def test_status_patches() -> None:
    claim = a_modified_claim("gold", "silver")
    started = modify.status_patch(claim, modify.IN_PROGRESS, NOW)
    assert started["status"]["modifyVolumeStatus"] == {
        "status": "InProgress",
        "targetVolumeAttributesClassName": "gold",
    }
    assert started["status"]["conditions"][0]["message"] == 'Modifying volume to "gold" is in progress.'
    assert started["metadata"] == {"resourceVersion": "7"}
    claim["status"]["modifyVolumeStatus"] = {"status": "InProgress", "targetVolumeAttributesClassName": "gold"}
    failed = modify.status_patch(claim, modify.INFEASIBLE, NOW, error=("InvalidArgument", "bad key"))
    kinds = {c["type"]: c for c in failed["status"]["conditions"]}
    assert kinds[modify.MODIFY_ERROR]["reason"] == "InvalidArgument"
    assert kinds[modify.MODIFYING]["message"] == 'Modifying volume to "gold" failed. Waiting for retry.'
    assert failed["status"]["modifyVolumeStatus"] == {"status": "Infeasible"}
    pending = modify.status_patch(a_modified_claim("gold"), modify.PENDING, NOW)
    assert pending["status"] == {"modifyVolumeStatus": {"status": "Pending"}}


def test_completed_and_rolled_back_patches() -> None:
    claim = a_modified_claim(conditions=[{"type": modify.MODIFYING}, {"type": modify.MODIFY_ERROR}, {"type": "Other"}])
    done = modify.completed_patch(claim, "gold")
    assert done["status"] == {
        "modifyVolumeStatus": None,
        "currentVolumeAttributesClassName": "gold",
        "conditions": [{"type": "Other"}],
    }
    assert modify.rolled_back_patch(claim)["status"]["conditions"] == [{"type": modify.MODIFY_ERROR}, {"type": "Other"}]


def test_modify_secret_prefers_the_volume_annotations() -> None:
    volume = a_volume(**{modify.ANN_MODIFY_SECRET_NAME: "m", modify.ANN_MODIFY_SECRET_NAMESPACE: "ns"})
    volume["spec"]["csi"]["controllerExpandSecretRef"] = {"name": "e", "namespace": "ns2"}
    assert modify.secret_ref(volume) == SecretRef("m", "ns")
    del volume["metadata"]["annotations"][modify.ANN_MODIFY_SECRET_NAME]
    assert modify.secret_ref(volume) == SecretRef("e", "ns2")
    assert modify.secret_ref(a_volume()) is None


def test_mutable_parameters_with_extra_metadata() -> None:
    parameters = modify.mutable_parameters({"parameters": {"iops": "3000"}}, a_claim(), "pvc-1", extra_metadata=True)
    assert parameters == {
        "iops": "3000",
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "team-a",
        "csi.storage.k8s.io/pv/name": "pvc-1",
    }
