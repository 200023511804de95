"""Regenerate the generated protobuf code: csi_client/generated from the CSI spec's csi.proto,
and sidecarless/node/generated from kubelet's plugin registration API (the node agent's).

Each proto comes from a Go module at a pinned version: `go mod download` verifies the module
against the Go checksum database, and the file's own SHA-256 is pinned below as a second check.

    python tools/gen_csi_proto.py          # rewrite the generated folders
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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Proto:
    module: str
    version: str
    path: str  # inside the module
    sha256: str
    staged: Path  # where it is compiled from, so the generated imports read as the package
    package_root: Path  # the source root `staged` is relative to

    @property
    def generated(self) -> Path:
        return REPO / self.package_root / self.staged.parent

    @property
    def files(self) -> tuple[str, ...]:
        stem = self.staged.stem
        return (self.staged.name, f"{stem}_pb2.py", f"{stem}_pb2.pyi")

    def init_text(self) -> str:
        return f'''"""Generated from {self.module}@{self.version} {self.path} by tools/gen_csi_proto.py.

Do not edit: run `make gen` (or `python tools/gen_csi_proto.py`) instead.
"""
'''


CSI = Proto(
    "github.com/container-storage-interface/spec",
    "v1.12.0",
    "csi.proto",
    "5b81236a3809f3ff0b877ff9b82215d0b74a8e291d7f3ec6ee1a44f537c0f86a",
    Path("csi_client/generated/csi.proto"),
    Path(),
)
REGISTRATION = Proto(
    "k8s.io/kubelet",
    "v0.36.3",  # the kubelet release the local cluster runs
    "pkg/apis/pluginregistration/v1/api.proto",
    "7a67a0000a1a167c155286834bc9ccb489f8bcdb394e006daba270189c272afa",
    Path("sidecarless/node/generated/pluginregistration.proto"),
    Path("operator"),
)
PROTOS = (CSI, REGISTRATION)
# Kept for the tests and the Makefile's wording: the CSI package.
GENERATED = CSI.generated
SPEC_MODULE, SPEC_VERSION = CSI.module, CSI.version


def download_proto(proto: Proto) -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{proto.module}@{proto.version}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    source = Path(json.loads(out)["Dir"]) / proto.path
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != proto.sha256:
        raise SystemExit(f"{proto.path} at {proto.version} has sha256 {digest}, expected {proto.sha256}")
    return source


def generate(into: Path, proto: Proto = CSI) -> None:
    """Write the generated package (proto copy, _pb2 module, stubs) into `into`."""
    import grpc_tools  # noqa: PLC0415 - a dev dependency, needed only here

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "src" / proto.staged
        staged.parent.mkdir(parents=True)
        shutil.copyfile(download_proto(proto), staged)
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
                str(proto.staged),
            ],
            check=True,
        )
        into.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged, into / proto.staged.name)
        for name in proto.files[1:]:
            shutil.copyfile(out / proto.staged.parent / name, into / name)
        (into / "__init__.py").write_text(proto.init_text())


def stale_files(committed: Path, proto: Proto = CSI) -> list[str]:
    """Names of generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "generated"
        generate(fresh, proto)
        return [
            name
            for name in (*proto.files, "__init__.py")
            if not (committed / name).exists() or not filecmp.cmp(fresh / name, committed / name, shallow=False)
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether the committed files are stale")
    args = parser.parse_args()
    for proto in PROTOS:
        where = proto.generated.relative_to(REPO)
        if args.check:
            stale = stale_files(proto.generated, proto)
            if stale:
                print(f"stale generated files in {where}: {', '.join(stale)}; run `make gen`", file=sys.stderr)
                return 1
            print(f"{where} is up to date")
            continue
        generate(proto.generated, proto)
        print(f"regenerated {where} from {proto.module}@{proto.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
