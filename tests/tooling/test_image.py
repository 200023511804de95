"""The Dockerfile's text: hadolint on it, and the shape the chart relies on. The image itself
is built for real and run by kubelet in tests/node/test_image.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
