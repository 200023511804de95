"""Volume group snapshot rules as pure functions."""

import hashlib
from typing import Any

import pytest

from csi_client import csi
from sidecarless.snapshots import group_plan as gplan
from sidecarless.snapshots.plan import ANN_GROUP_MEMBER, SnapshotError


def a_group(**match_labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "db", "namespace": "team-a", "uid": "g-1"},
        "spec": {"source": {"selector": {"matchLabels": match_labels}}, "volumeGroupSnapshotClassName": "groups"},
    }


def a_claim(name: str, phase: str = "Bound", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "team-a", "labels": labels},
        "spec": {"volumeName": f"pv-{name}"},
        "status": {"phase": phase},
    }


def a_volume(name: str, driver: str = "d") -> dict[str, Any]:
    return {
        "metadata": {"name": f"pv-{name}"},
        "spec": {
            "csi": {"driver": driver, "volumeHandle": f"vol-{name}"},
            "claimRef": {"name": name},
            "volumeMode": "Filesystem",
        },
    }


@pytest.mark.parametrize(
    ("labels", "selector", "expected"),
    [
        ({"app": "db"}, {"matchLabels": {"app": "db"}}, True),
        ({"app": "web"}, {"matchLabels": {"app": "db"}}, False),
        ({"app": "db"}, {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "cache"]}]}, True),
        ({"app": "db"}, {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}, False),
        ({}, {"matchExpressions": [{"key": "app", "operator": "Exists"}]}, False),
        ({"tier": "x"}, {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, True),
    ],
)
def test_label_selector(labels: dict[str, str], selector: dict[str, Any], expected: bool) -> None:
    assert gplan.matches(labels, selector) is expected


def test_selected_claims_and_their_volumes() -> None:
    claims = [a_claim("db-1", app="db"), a_claim("web", app="web"), a_claim("db-0", app="db")]
    chosen = gplan.selected_claims(a_group(app="db"), claims)
    assert [c["metadata"]["name"] for c in chosen] == ["db-0", "db-1"]
    volumes = {v["metadata"]["name"]: v for v in (a_volume("db-0"), a_volume("db-1"))}
    assert gplan.volume_handles(a_group(), chosen, volumes, "d") == ["vol-db-0", "vol-db-1"]
    with pytest.raises(SnapshotError, match="not applied to any PVC"):
        gplan.selected_claims(a_group(app="nothing"), claims)


@pytest.mark.parametrize(
    ("claim", "volume", "message"),
    [
        (a_claim("x", phase="Pending"), a_volume("x"), "is not yet bound to a PV"),
        (a_claim("x"), a_volume("x", driver="other"), r"Volume CSI driver \(other\) mismatch"),
    ],
)
def test_one_unfit_claim_fails_the_group(claim: dict[str, Any], volume: dict[str, Any], message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        gplan.volume_handles(a_group(), [claim], {volume["metadata"]["name"]: volume}, "d")


def test_members_are_named_after_the_group_and_volume() -> None:
    content = {
        "metadata": {"name": "groupsnapcontent-g-1"},
        "spec": {"deletionPolicy": "Delete", "driver": "d"},
        "status": {
            "volumeGroupSnapshotHandle": "group-1",
            "volumeSnapshotInfoList": [
                {"volumeHandle": "vol-db-0", "snapshotHandle": "s-1", "readyToUse": True, "creationTime": 5}
            ],
        },
    }
    [(snapshot, member_content, status)] = gplan.members(a_group(), content, {"vol-db-0": a_volume("db-0")})
    digest = hashlib.sha256(b"g-1vol-db-0").hexdigest()
    assert snapshot["metadata"]["name"] == f"snapshot-{digest}"
    assert snapshot["metadata"]["ownerReferences"][0]["uid"] == "g-1"
    assert snapshot["spec"]["source"] == {"persistentVolumeClaimName": "db-0"}
    assert member_content["metadata"]["name"] == f"snapcontent-{digest}"
    assert member_content["metadata"]["annotations"] == {ANN_GROUP_MEMBER: "group-1"}
    assert member_content["spec"]["sourceVolumeMode"] == "Filesystem"
    assert status == {
        "snapshotHandle": "s-1",
        "volumeGroupSnapshotHandle": "group-1",
        "readyToUse": True,
        "creationTime": 5,
    }
    assert gplan.group_of(snapshot) == "db"


def test_group_content_status_from_the_driver() -> None:
    answer = csi.VolumeGroupSnapshot(group_snapshot_id="group-1", ready_to_use=True)
    member = answer.snapshots.add(snapshot_id="s-1", source_volume_id="vol-1", ready_to_use=True, size_bytes=7)
    member.creation_time.seconds = 2
    answer.creation_time.seconds = 2
    status = gplan.content_status(answer, {})
    assert status["volumeGroupSnapshotHandle"] == "group-1"
    assert status["creationTime"] == "1970-01-01T00:00:02Z"
    assert status["volumeSnapshotInfoList"] == [
        {
            "volumeHandle": "vol-1",
            "snapshotHandle": "s-1",
            "readyToUse": True,
            "creationTime": 2_000_000_000,
            "restoreSize": 7,
        }
    ]
    group_status, events = gplan.group_status(a_group(), {"metadata": {"name": "c"}, "status": status})
    assert group_status["readyToUse"] is True
    assert [reason for reason, _ in events] == ["GroupSnapshotCreated", "GroupSnapshotReady"]


def test_exactly_one_group_source() -> None:
    neither = a_group()
    neither["spec"]["source"] = {}
    with pytest.raises(SnapshotError, match="Exactly one of Selector"):
        gplan.validate_source(neither)
