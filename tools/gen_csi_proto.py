"""Regenerate csi_client/generated from the CSI spec's csi.proto.

The proto comes from the Go module github.com/container-storage-interface/spec at
a pinned version: `go mod download` verifies the module against the Go checksum
database, and the file's own SHA-256 is pinned below as a second check.

    python tools/gen_csi_proto.py          # rewrite csi_client/generated
    python tools/gen_csi_proto.py --check  # exit 1 if the committed files are stale
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC_MODULE = "github.com/container-storage-interface/spec"
SPEC_VERSION = "v1.12.0"
CSI_PROTO_SHA256 = "5b81236a3809f3ff0b877ff9b82215d0b74a8e291d7f3ec6ee1a44f537c0f86a"

REPO = Path(__file__).resolve().parent.parent
GENERATED = REPO / "csi_client" / "generated"
# The proto is staged at this path so the generated imports read `csi_client.generated`.
PROTO_REL = Path("csi_client/generated/csi.proto")
GENERATED_FILES = ("csi.proto", "csi_pb2.py", "csi_pb2.pyi")

INIT_TEXT = f'''"""Generated from {SPEC_MODULE}@{SPEC_VERSION} csi.proto by tools/gen_csi_proto.py.

Do not edit: run `make gen` (or `python tools/gen_csi_proto.py`) instead.
"""
'''


def download_proto() -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{SPEC_MODULE}@{SPEC_VERSION}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    proto = Path(json.loads(out)["Dir"]) / "csi.proto"
    digest = hashlib.sha256(proto.read_bytes()).hexdigest()
    if digest != CSI_PROTO_SHA256:
        raise SystemExit(f"csi.proto at {SPEC_VERSION} has sha256 {digest}, expected {CSI_PROTO_SHA256}")
    return proto


def generate(into: Path) -> None:
    """Write the generated package (proto copy, _pb2 module, stubs) into `into`."""
    import grpc_tools  # noqa: PLC0415 - a dev dependency, needed only here

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "src" / PROTO_REL
        staged.parent.mkdir(parents=True)
        shutil.copyfile(download_proto(), staged)
        out = Path(tmp) / "out"
        out.mkdir()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{Path(tmp) / 'src'}",
                f"-I{well_known}",
                f"--python_out={out}",
                f"--mypy_out={out}",
                str(PROTO_REL),
            ],
            check=True,
        )
        into.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged, into / "csi.proto")
        for name in ("csi_pb2.py", "csi_pb2.pyi"):
            shutil.copyfile(out / PROTO_REL.parent / name, into / name)
        (into / "__init__.py").write_text(INIT_TEXT)


def stale_files(committed: Path) -> list[str]:
    """Names of generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "generated"
        generate(fresh)
        return [
            name
            for name in (*GENERATED_FILES, "__init__.py")
            if not (committed / name).exists() or not filecmp.cmp(fresh / name, committed / name, shallow=False)
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether the committed files are stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files(GENERATED)
        if stale:
            print(f"stale generated files: {', '.join(stale)}; run `make gen`", file=sys.stderr)
            return 1
        print("csi_client/generated is up to date")
        return 0
    generate(GENERATED)
    print(f"regenerated {GENERATED.relative_to(REPO)} from {SPEC_MODULE}@{SPEC_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
