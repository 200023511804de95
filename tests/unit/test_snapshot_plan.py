"""snapshot-controller's and csi-snapshotter's rules as pure functions."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from csi_client import csi
from sidecarless.provisioner.sources import SNAPSHOT_PROTECTION_FINALIZER, snapshot_source
from sidecarless.snapshots import plan
from sidecarless.snapshots.plan import SnapshotError
from sidecarless.vocabulary import ParameterError, SecretRef


def a_snapshot(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "snap", "namespace": "team-a", "uid": "u-1", "resourceVersion": "3"},
        "spec": {"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "fast"},
        "status": status,
    }


def a_class(name: str = "fast", driver: str = "d", default: bool = False, **parameters: str) -> dict[str, Any]:
    annotations = {plan.ANN_DEFAULT_CLASS: "true"} if default else {}
    return {
        "metadata": {"name": name, "annotations": annotations},
        "driver": driver,
        "deletionPolicy": "Delete",
        "parameters": parameters,
    }


def a_volume() -> dict[str, Any]:
    return {
        "metadata": {"name": "pv-1"},
        "spec": {
            "csi": {"driver": "d", "volumeHandle": "vol-1"},
            "volumeMode": "Filesystem",
            "claimRef": {"name": "data", "namespace": "team-a", "uid": "c-1"},
        },
    }


def a_claim(phase: str = "Bound") -> dict[str, Any]:
    return {
        "metadata": {"name": "data", "namespace": "team-a", "uid": "c-1"},
        "spec": {"volumeName": "pv-1", "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": phase},
    }


def test_exactly_one_source() -> None:
    both = a_snapshot()
    both["spec"]["source"]["volumeSnapshotContentName"] = "c"
    with pytest.raises(SnapshotError) as error:
        plan.validate_source(both)
    assert error.value.reason == "SnapshotValidationError"


def test_default_class_needs_exactly_one_for_the_driver() -> None:
    assert (
        plan.default_class([a_class("a", default=True), a_class("b", driver="other", default=True)], "d")["metadata"][
            "name"
        ]
        == "a"
    )
    with pytest.raises(SnapshotError, match="cannot find default snapshot class"):
        plan.default_class([a_class("a")], "d")
    with pytest.raises(SnapshotError, match="2 default snapshot classes were found"):
        plan.default_class([a_class("a", default=True), a_class("b", default=True)], "d")


def test_claim_checks() -> None:
    with pytest.raises(SnapshotError, match="cannot get claim from snapshot"):
        plan.check_claim(a_snapshot(), None)
    with pytest.raises(SnapshotError, match="is not yet bound to a PV"):
        plan.check_claim_and_volume(a_snapshot(), a_claim("Pending"), a_volume())
    wrong = a_volume()
    wrong["spec"]["claimRef"]["uid"] = "another"
    with pytest.raises(SnapshotError, match="claim in dataSource not bound or invalid"):
        plan.check_claim_and_volume(a_snapshot(), a_claim(), wrong)
    plan.check_claim_and_volume(a_snapshot(), a_claim(), a_volume())


def test_new_content_is_bound_to_its_snapshot() -> None:
    content = plan.new_content(a_snapshot(), a_volume(), a_class(), SecretRef("s", "ns"))
    assert content["metadata"]["name"] == "snapcontent-u-1"
    assert content["metadata"]["annotations"] == {
        plan.ANN_DELETION_SECRET_NAME: "s",
        plan.ANN_DELETION_SECRET_NAMESPACE: "ns",
    }
    spec = content["spec"]
    assert spec["volumeSnapshotRef"]["uid"] == "u-1"
    assert spec["source"] == {"volumeHandle": "vol-1"}
    assert (spec["driver"], spec["deletionPolicy"], spec["sourceVolumeMode"]) == ("d", "Delete", "Filesystem")
    assert plan.bound_to(content, a_snapshot())


def test_content_made_here_says_being_created_from_the_start() -> None:
    content = plan.new_content(a_snapshot(), a_volume(), a_class(), None, being_created=True)
    assert content["metadata"]["annotations"] == {plan.ANN_BEING_CREATED: "yes"}
    assert "annotations" not in plan.new_content(a_snapshot(), a_volume(), a_class(), None)["metadata"]


@pytest.mark.parametrize(
    ("snapshot_class", "secret", "expected"),
    [
        (a_class(), None, True),
        (a_class(iops="5"), None, True),
        (a_class(), SecretRef("s", "ns"), False),  # a missing secret would stop the call
        ({**a_class(), "parameters": {"csi.storage.k8s.io/nonsense": "x"}}, None, False),  # so would a bad parameter
    ],
)
def test_takes_snapshot_at_once(snapshot_class: dict[str, Any], secret: SecretRef | None, expected: bool) -> None:
    assert plan.takes_snapshot_at_once(snapshot_class, secret) is expected


def test_first_status_waits_for_the_driver_a_little() -> None:
    now = datetime(2026, 11, 29, 10, 0, 1, tzinfo=UTC)
    being_created = a_content(creationTimestamp="2026-11-29T10:00:00Z", annotations={plan.ANN_BEING_CREATED: "yes"})
    assert plan.first_status_wait(a_snapshot(), being_created, now) == pytest.approx(1.0)
    assert plan.first_status_wait(a_snapshot(), being_created, now + timedelta(seconds=5)) == 0.0
    answered = {**being_created, "status": {"snapshotHandle": "s", "readyToUse": True}}
    assert plan.first_status_wait(a_snapshot(), answered, now) == 0.0
    bound = a_snapshot(boundVolumeSnapshotContentName="snapcontent-u-1")
    assert plan.first_status_wait(bound, being_created, now) == 0.0
    not_ours = a_content(creationTimestamp="2026-11-29T10:00:00Z")  # a csi-snapshotter's, not started yet
    assert plan.first_status_wait(a_snapshot(), not_ours, now) == 0.0


def test_snapshotter_secret_templates() -> None:
    parameters = {
        plan.SECRET_KEYS[0]: "${volumesnapshot.name}-${volumesnapshotcontent.name}",
        plan.SECRET_KEYS[1]: "${volumesnapshot.namespace}",
    }
    assert plan.snapshotter_secret(parameters, "snapcontent-u-1", a_snapshot()) == SecretRef(
        "snap-snapcontent-u-1", "team-a"
    )
    with pytest.raises(ParameterError, match="invalid tokens"):
        plan.snapshotter_secret({**parameters, plan.SECRET_KEYS[1]: "${volumesnapshot.name}"}, "c", a_snapshot())
    with pytest.raises(ParameterError, match="Both must be specified"):
        plan.snapshotter_secret({plan.SECRET_KEYS[0]: "x"}, "c", a_snapshot())
    assert plan.snapshotter_secret({}, "c", a_snapshot()) is None


def test_driver_parameters_drop_reserved_keys() -> None:
    assert plan.driver_parameters({plan.SECRET_KEYS[0]: "s", plan.SECRET_KEYS[1]: "n", "tier": "gold"}) == {
        "tier": "gold"
    }
    with pytest.raises(ParameterError, match=r'unknown parameter key "csi\.storage\.k8s\.io/fstype"'):
        plan.driver_parameters({"csi.storage.k8s.io/fstype": "ext4"})


def test_snapshot_status_from_the_content() -> None:
    content = {
        "metadata": {"name": "snapcontent-u-1"},
        "status": {"creationTime": 1_700_000_000_000_000_000, "readyToUse": True, "restoreSize": 1 << 30},
    }
    status, events = plan.snapshot_status(a_snapshot(), content)
    assert status == {
        "boundVolumeSnapshotContentName": "snapcontent-u-1",
        "creationTime": "2023-11-14T22:13:20Z",
        "readyToUse": True,
        "restoreSize": "1Gi",
        "error": None,
    }
    assert [reason for reason, _ in events] == ["SnapshotCreated", "SnapshotReady"]
    again, repeated = plan.snapshot_status(a_snapshot(**status), content)
    assert again["creationTime"] == status["creationTime"]
    assert repeated == []


def test_pvc_in_use_while_a_snapshot_is_not_ready() -> None:
    assert plan.claim_in_use("data", "team-a", [a_snapshot(readyToUse=False)])
    assert not plan.claim_in_use("data", "team-a", [a_snapshot(readyToUse=True)])
    assert not plan.claim_in_use("data", "team-b", [a_snapshot(readyToUse=False)])


def a_content(**meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "snapcontent-u-1", **meta},
        "spec": {
            "source": {"volumeHandle": "vol-1"},
            "deletionPolicy": "Delete",
            "volumeSnapshotRef": {"name": "snap", "namespace": "team-a", "uid": "u-1"},
        },
    }


@pytest.mark.parametrize(
    ("content", "status", "expected"),
    [
        (a_content(), {}, plan.Create()),
        (a_content(), {"readyToUse": False, "snapshotHandle": "s"}, plan.Create()),  # poll until ready
        (a_content(), {"readyToUse": True, "snapshotHandle": "s"}, plan.Ready()),
        (
            a_content(deletionTimestamp="t", annotations={plan.ANN_BEING_DELETED: "yes"}),
            {"snapshotHandle": "s"},
            plan.Delete(call=True),
        ),
        # A CreateSnapshot may be in flight: keep creating, delete after.
        (
            a_content(
                deletionTimestamp="t", annotations={plan.ANN_BEING_DELETED: "yes", plan.ANN_BEING_CREATED: "yes"}
            ),
            {},
            plan.Create(),
        ),
        (a_content(deletionTimestamp="t", annotations={plan.ANN_BEING_DELETED: "yes"}), {}, plan.Delete(call=False)),
    ],
)
def test_content_decision(content: dict[str, Any], status: dict[str, Any], expected: plan.ContentDecision) -> None:
    if status:
        content["status"] = status
    assert plan.content_decision(content) == expected


def test_content_deleted_under_its_snapshot() -> None:
    deleted = {**a_content(deletionTimestamp="t"), "status": {"snapshotHandle": "s", "readyToUse": True}}
    # Deleted while its VolumeSnapshot lives: the snapshot stays (csi-snapshotter's rule).
    assert plan.content_decision(deleted) == plan.Ready()
    # Its VolumeSnapshot is being deleted, seen here instead of through the annotation.
    assert plan.content_decision(deleted, snapshot_deleted=True) == plan.Delete(call=True)
    # A CreateSnapshot may still be running: that comes first, whoever says the snapshot goes.
    creating = a_content(deletionTimestamp="t", annotations={plan.ANN_BEING_CREATED: "yes"})
    assert plan.content_decision(creating, snapshot_deleted=True) == plan.Create()


def test_create_request() -> None:
    request = plan.create_request(a_content(), {"tier": "gold"}, extra_metadata=True)
    assert request.name == "snapshot-u-1"
    assert request.source_volume_id == "vol-1"
    assert dict(request.parameters) == {
        "tier": "gold",
        "csi.storage.k8s.io/volumesnapshot/name": "snap",
        "csi.storage.k8s.io/volumesnapshot/namespace": "team-a",
        "csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-u-1",
    }
    assert plan.snapshot_name("ab-cd-ef", uuid_length=4) == "snapshot-abcd"


def test_content_status_keeps_what_is_set() -> None:
    answer = csi.Snapshot(snapshot_id="s-1", ready_to_use=True, size_bytes=5)
    answer.creation_time.seconds = 10
    assert plan.content_status(answer, {}) == {
        "snapshotHandle": "s-1",
        "creationTime": 10_000_000_000,
        "readyToUse": True,
        "restoreSize": 5,
    }
    kept = plan.content_status(answer, {"snapshotHandle": "old", "creationTime": 1, "restoreSize": 9})
    assert (kept["snapshotHandle"], kept["creationTime"], kept["restoreSize"]) == ("old", 1, 9)


# --- restore (the provisioner's side) --------------------------------------------------


def a_restore(size: str = "1Gi", mode: str = "Filesystem") -> dict[str, Any]:
    return {
        "metadata": {"name": "restored", "namespace": "team-a"},
        "spec": {
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"},
            "resources": {"requests": {"storage": size}},
            "volumeMode": mode,
            "storageClassName": "sc",
        },
    }


def a_bound_content() -> dict[str, Any]:
    content = a_content()
    content["spec"]["driver"] = "d"
    content["spec"]["sourceVolumeMode"] = "Filesystem"
    content["status"] = {"snapshotHandle": "s-1", "readyToUse": True}
    return content


CAPS = frozenset({"CREATE_DELETE_SNAPSHOT"})


def test_restore_source() -> None:
    snapshot = a_snapshot(boundVolumeSnapshotContentName="snapcontent-u-1", readyToUse=True, restoreSize="1Gi")
    source = snapshot_source(a_restore(), snapshot, a_bound_content(), "d", CAPS)
    assert source.snapshot.snapshot_id == "s-1"


@pytest.mark.parametrize(
    ("claim", "snapshot_status", "message"),
    [
        (a_restore(), {}, "snapshot snap not bound"),
        (a_restore(), {"boundVolumeSnapshotContentName": "snapcontent-u-1", "readyToUse": False}, "is not Ready"),
        (
            a_restore("512Mi"),
            {"boundVolumeSnapshotContentName": "snapcontent-u-1", "readyToUse": True, "restoreSize": "1Gi"},
            "is less than the size",
        ),
        (
            a_restore(mode="Block"),
            {"boundVolumeSnapshotContentName": "snapcontent-u-1", "readyToUse": True},
            "allow-volume-mode-change annotation is not present",
        ),
    ],
)
def test_restore_refusals(claim: dict[str, Any], snapshot_status: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        snapshot_source(claim, a_snapshot(**snapshot_status), a_bound_content(), "d", CAPS)


def test_restore_of_a_snapshot_being_deleted_only_when_already_protected() -> None:
    snapshot = a_snapshot(boundVolumeSnapshotContentName="snapcontent-u-1", readyToUse=True)
    snapshot["metadata"]["deletionTimestamp"] = "t"
    with pytest.raises(ParameterError, match="is being deleted"):
        snapshot_source(a_restore(), snapshot, a_bound_content(), "d", CAPS)
    snapshot["metadata"]["finalizers"] = [SNAPSHOT_PROTECTION_FINALIZER]
    assert snapshot_source(a_restore(), snapshot, a_bound_content(), "d", CAPS).snapshot.snapshot_id == "s-1"
