"""external-attacher's rules as pure functions."""

from typing import Any

import grpc
import pytest

from csi_client import csi
from sidecarless import capabilities
from sidecarless.attacher import plan
from sidecarless.vocabulary import ParameterError

DRIVER = "hostpath.csi.k8s.io"
MODE = csi.VolumeCapability.AccessMode.Mode


def an_attachment(attached: bool = False, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "csi-1", **meta},
        "spec": {"attacher": DRIVER, "nodeName": "node-1", "source": {"persistentVolumeName": "pv-1"}},
        "status": {"attached": attached},
    }


def test_finalizer_name() -> None:
    assert plan.finalizer(DRIVER) == "external-attacher/hostpath-csi-k8s-io"


@pytest.mark.parametrize(
    ("attachment", "forced", "expected"),
    [
        (an_attachment(), False, plan.Attach),
        (an_attachment(attached=True), False, plan.Nothing),
        (an_attachment(attached=True), True, plan.Attach),
        (an_attachment(deletionTimestamp="now", finalizers=[plan.finalizer(DRIVER)]), False, plan.Detach),
        (an_attachment(deletionTimestamp="now"), False, plan.Nothing),
    ],
)
def test_attachment_decision(attachment: dict[str, Any], forced: bool, expected: type) -> None:
    assert isinstance(plan.attachment_decision(attachment, DRIVER, forced=forced), expected)


def test_other_attachers_are_ignored() -> None:
    assert isinstance(plan.attachment_decision(an_attachment(), "other"), plan.Nothing)


def test_node_id_from_csinode_then_annotation() -> None:
    csinode = {"spec": {"drivers": [{"name": DRIVER, "nodeID": "n-1"}]}}
    assert plan.node_id(an_attachment(), csinode, DRIVER) == "n-1"
    annotated = an_attachment(annotations={plan.ANN_NODE_ID: "from-annotation"})
    assert plan.node_id(annotated, None, DRIVER) == "from-annotation"
    with pytest.raises(ParameterError, match="CSINode node-1 does not contain driver"):
        plan.node_id(an_attachment(), {"spec": {"drivers": []}}, DRIVER)


def a_volume(modes: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "pv-1"},
        "spec": {"accessModes": modes, "csi": {"driver": DRIVER, "volumeHandle": "v-1", "fsType": "xfs"}, **spec},
    }


def test_publish_capability_and_request() -> None:
    volume = a_volume(["ReadWriteOnce"], mountOptions=["noatime"])
    volume["spec"]["csi"].update(readOnly=True, volumeAttributes={"k": "v"})
    capability = capabilities.publish_capability(volume, "ext4", frozenset())
    assert capability.access_mode.mode == MODE.SINGLE_NODE_WRITER
    assert capability.mount.fs_type == "xfs"
    assert list(capability.mount.mount_flags) == ["noatime"]
    request = plan.publish_request(volume, "n-1", capability, frozenset({"PUBLISH_READONLY"}))
    assert (request.volume_id, request.node_id, request.readonly) == ("v-1", "n-1", True)
    assert dict(request.volume_context) == {"k": "v"}
    assert not plan.publish_request(volume, "n-1", capability, frozenset()).readonly, "only with PUBLISH_READONLY"


def test_block_and_default_fstype() -> None:
    assert capabilities.publish_capability(a_volume(["ReadWriteMany"], volumeMode="Block"), "", frozenset()).HasField(
        "block"
    )
    volume = a_volume(["ReadOnlyMany"])
    del volume["spec"]["csi"]["fsType"]
    capability = capabilities.publish_capability(volume, "ext4", frozenset())
    assert capability.mount.fs_type == "ext4"
    assert capability.access_mode.mode == MODE.MULTI_NODE_READER_ONLY


@pytest.mark.parametrize(
    ("modes", "message"),
    [
        (["ReadOnlyMany", "ReadWriteOnce"], "both ReadOnlyMany and ReadWriteOnce"),
        (["ReadWriteOncePod", "ReadWriteMany"], "cannot be combined"),
        ([], "no access modes"),
    ],
)
def test_refused_access_modes(modes: list[str], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        capabilities.publish_capability(a_volume(modes), "", frozenset())


def test_volume_error_carries_the_grpc_code() -> None:
    error = plan.volume_error("boom", grpc.StatusCode.RESOURCE_EXHAUSTED, "2026-01-01T00:00:00Z")
    assert error["errorCode"] == 8
    assert error["message"] == "boom"
    assert "errorCode" not in plan.volume_error("no code", None, "2026-01-01T00:00:00Z")


def test_lost_attachments_only_requeue_attached_ones_the_driver_does_not_list() -> None:
    attached = an_attachment(attached=True)
    elsewhere = {**an_attachment(attached=True), "metadata": {"name": "csi-2"}}
    unlisted = {**an_attachment(attached=True), "metadata": {"name": "csi-3"}}
    not_attached = {**an_attachment(), "metadata": {"name": "csi-4"}}
    published = {"v-1": {"n-1"}, "v-2": {"n-9"}, "v-4": set()}
    node_ids = dict.fromkeys(("csi-1", "csi-2", "csi-3", "csi-4"), "n-1")
    volume_ids = {"csi-1": "v-1", "csi-2": "v-2", "csi-3": "v-3", "csi-4": "v-4"}
    lost = plan.lost_attachments([attached, elsewhere, unlisted, not_attached], published, node_ids, volume_ids)
    assert lost == ["csi-2"]


def test_backlog_per_lane() -> None:
    from datetime import UTC, datetime  # noqa: PLC0415

    now = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    waiting = an_attachment(creationTimestamp="2026-01-01T00:05:00Z")
    older = an_attachment(creationTimestamp="2026-01-01T00:00:00Z")
    done = an_attachment(attached=True, creationTimestamp="2026-01-01T00:00:00Z")
    leaving = an_attachment(
        attached=True, deletionTimestamp="2026-01-01T00:09:00Z", finalizers=[plan.finalizer(DRIVER)]
    )
    gone = an_attachment(deletionTimestamp="2026-01-01T00:01:00Z")
    assert plan.backlog([waiting, older, done, leaving, gone], DRIVER, now) == {
        "attach": (2, 600.0),
        "detach": (1, 60.0),
    }
    assert plan.backlog([waiting], "other", now) == {"attach": (0, 0.0), "detach": (0, 0.0)}
