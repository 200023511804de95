"""csi_client/generated must be exactly what tools/gen_csi_proto.py makes from the pinned csi.proto."""

from pathlib import Path

import gen_csi_proto


def test_generated_code_is_up_to_date() -> None:
    assert gen_csi_proto.stale_files(gen_csi_proto.GENERATED) == []


def test_a_changed_file_is_reported_stale(tmp_path: Path) -> None:
    copy = tmp_path / "generated"
    gen_csi_proto.generate(copy)
    (copy / "csi_pb2.py").write_text((copy / "csi_pb2.py").read_text() + "\n# edited by hand\n")
    assert gen_csi_proto.stale_files(copy) == ["csi_pb2.py"]
