"""Secret stripping is driven by the proto's csi_secret option, at any depth."""

from google.protobuf.descriptor import Descriptor

from csi_client.generated import csi_pb2 as csi
from csi_client.redact import STRIPPED, loggable


def _secret_field_names(descriptor: Descriptor) -> set[str]:
    return {
        f"{descriptor.name}.{field.name}"
        for field in descriptor.fields
        if field.GetOptions().Extensions[csi.csi_secret]
    }


def test_secret_fields_come_from_descriptors() -> None:
    marked = set().union(*(_secret_field_names(d) for d in csi.DESCRIPTOR.message_types_by_name.values()))
    # The spec marks every `secrets` map, and nothing else at the top level, at v1.12.0.
    assert "CreateVolumeRequest.secrets" in marked
    assert "ControllerPublishVolumeRequest.secrets" in marked
    assert "CreateSnapshotRequest.secrets" in marked
    assert all(name.endswith(".secrets") for name in marked)


def test_top_level_secrets_are_stripped_and_the_rest_kept() -> None:
    request = csi.CreateVolumeRequest(
        name="pvc-1",
        parameters={"type": "fast"},
        secrets={"password": "hunter2"},
        capacity_range=csi.CapacityRange(required_bytes=1 << 30),
    )
    request.volume_capabilities.add().mount.fs_type = "ext4"
    rendered = loggable(request)
    assert rendered["secrets"] == STRIPPED
    assert rendered["name"] == "pvc-1"
    assert rendered["parameters"] == {"type": "fast"}
    assert rendered["capacity_range"] == {"required_bytes": str(1 << 30)}
    assert rendered["volume_capabilities"] == [{"mount": {"fs_type": "ext4"}}]
    assert "hunter2" not in repr(rendered)
    assert request.secrets["password"] == "hunter2", "the caller's message must not be changed"


def test_messages_without_secrets_render_normally() -> None:
    assert loggable(csi.ProbeRequest()) == {}
    assert loggable(csi.DeleteVolumeRequest(volume_id="v")) == {"volume_id": "v"}


def test_unset_secrets_are_not_invented() -> None:
    assert "secrets" not in loggable(csi.DeleteVolumeRequest(volume_id="v"))
