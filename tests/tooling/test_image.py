"""The Dockerfile, without a container engine: hadolint on it, and its build steps replayed
(the locked requirements with hashes, the project wheel, both installed into a clean venv
that then runs `sidecarless`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def run(*argv: str | Path, cwd: Path = REPO) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_dockerfile_passes_hadolint() -> None:
    run(Path(sys.executable).parent / "hadolint", "--failure-threshold", "info", DOCKERFILE)


def test_dockerfile_runs_as_non_root_with_the_cli_as_entry_point() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert 'ENTRYPOINT ["sidecarless"]' in text
    assert text.count("FROM ") == 2, "multi-stage: build, then a runtime without the build tools"


@pytest.mark.timeout(900)
def test_the_image_build_steps_make_a_working_install(tmp_path: Path) -> None:
    found = shutil.which("uv")
    uv = [found] if found else ["python3", "-m", "uv"]  # as the Makefile finds it
    requirements = tmp_path / "requirements.txt"
    run(*uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--format", "requirements-txt", "-o", requirements)
    assert "--hash=sha256:" in requirements.read_text()
    dist = tmp_path / "dist"
    run(*uv, "build", "--wheel", "--out-dir", dist)
    [wheel] = list(dist.glob("sidecarless-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "csi_client/generated/csi_pb2.py" in names, "the generated code ships in the wheel"
    assert "sidecarless/handlers.py" in names
    assert not [n for n in names if n.startswith(("tests/", "tools/", "operator/"))]

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    pip = venv / "bin" / "pip"
    run(pip, "install", "--quiet", "--require-hashes", "-r", requirements)
    run(pip, "install", "--quiet", "--no-deps", wheel)
    assert "run" in run(venv / "bin" / "sidecarless", "--help")
    run(venv / "bin" / "python", "-c", "import sidecarless.handlers, csi_client.generated.csi_pb2")
