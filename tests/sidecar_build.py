"""The real sidecars built in the background while the tests that do not need them run.

`start` (at collection, when a selected test is marked `sidecars`) spawns
`python -m devcluster build --sidecars=only` at the lowest CPU priority, unless they are
cached; `wait` (in the fixture of those tests) waits for it. Builds take a file lock per
binary, so a test that gets there first simply waits for, or does, the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devcluster import build

REPO = Path(__file__).resolve().parents[1]
_process: subprocess.Popen[bytes] | None = None


def log_path() -> Path:
    return build.cache_root() / "logs" / "sidecars-build.log"


def start() -> None:
    global _process  # noqa: PLW0603 - one build per test session
    if _process is not None or build.sidecars_built():
        return
    log_path().parent.mkdir(parents=True, exist_ok=True)
    with log_path().open("wb") as log:
        _process = subprocess.Popen(
            ["nice", "-n", "19", sys.executable, "-m", "devcluster", "build", "--sidecars=only"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tools"), str(REPO)])},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait() -> None:
    """Wait for the background build; whatever it did not finish is built by the caller."""
    if _process is not None:
        _process.wait()


def stop() -> None:
    """At the end of the session: a build still running (its tests deselected or failed early)
    is stopped; a half-built binary is never cached, so the next run builds it again."""
    if _process is not None and _process.poll() is None:
        os.killpg(_process.pid, signal.SIGTERM)  # its own session: `go build` and its compilers too
        _process.wait(30)
