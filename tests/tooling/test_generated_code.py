"""The generated packages must be exactly what tools/gen_csi_proto.py makes from the pinned
protos: csi_client/generated (csi.proto) and sidecarless/node/generated (kubelet's plugin
registration API)."""

from pathlib import Path

import pytest

import gen_csi_proto


@pytest.mark.parametrize("proto", gen_csi_proto.PROTOS, ids=lambda p: p.staged.stem)
def test_generated_code_is_up_to_date(proto: gen_csi_proto.Proto) -> None:
    assert gen_csi_proto.stale_files(proto.generated, proto) == []


def test_a_changed_file_is_reported_stale(tmp_path: Path) -> None:
    copy = tmp_path / "generated"
    gen_csi_proto.generate(copy)
    (copy / "csi_pb2.py").write_text((copy / "csi_pb2.py").read_text() + "\n# edited by hand\n")
    assert gen_csi_proto.stale_files(copy) == ["csi_pb2.py"]
