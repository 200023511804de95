"""Child processes of the local cluster: started with their own log file, stopped by PID."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_CLONE_NEWNET = 0x40000000
_CLONE_NEWNS = 0x00020000


class ProcessDiedError(RuntimeError):
    """A component exited while the cluster needed it; the message carries its last log lines."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: when the test process dies, so does the child.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _enter_namespace(path: Path, kind: int) -> None:
    # Between fork and exec: the child (and all it starts) lives in this namespace.
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, kind) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def _enter_cgroups(procs_files: list[Path]) -> None:
    # Between fork and exec too: the child (and all it starts) lives in these cgroups.
    pid = str(os.getpid())
    for procs in procs_files:
        procs.write_text(pid)


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cgroup_procs: list[Path] = field(default_factory=list)  # `cgroup.procs` files to start in
    netns: Path | None = None  # a network namespace (its /run/netns file) to start in
    mntns: Path | None = None  # a mount namespace (a file it is bound to) to start in
    popen: subprocess.Popen[bytes] | None = None

    def start(self, *, tied_to_parent: bool) -> None:
        """Start detached from the terminal; `tied_to_parent` kills it when its parent dies (tests)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cgroups, netns, mntns = self.cgroup_procs, self.netns, self.mntns

        def before_exec() -> None:
            if tied_to_parent:
                _die_with_parent()
            _enter_cgroups(cgroups)
            if netns is not None:
                _enter_namespace(netns, _CLONE_NEWNET)
            if mntns is not None:
                _enter_namespace(mntns, _CLONE_NEWNS)

        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**_base_env(), **self.env},
                start_new_session=True,
                preexec_fn=before_exec if tied_to_parent or cgroups or netns or mntns else None,  # noqa: PLW1509
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise ProcessDiedError(
                f"{self.name} (pid {self.popen.pid}) exited with code {self.popen.returncode}; "
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, for tests that need a crash rather than a clean stop."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def _base_env() -> dict[str, str]:
    # Each component gets only what it needs: a stray KUBECONFIG in the caller's
    # environment must not redirect a component to another cluster.
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "GOTRACEBACK")
    return {key: os.environ[key] for key in keep if key in os.environ}


def stop_pid(pid: int, expected_exe: str, timeout: float = 10.0) -> bool:
    """Stop a process this package started earlier, by PID, if it is still that program."""
    try:
        exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if Path(exe).name != Path(expected_exe).name:
        return False  # the PID was reused by something else: not ours to stop
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or is_zombie(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def wait_until(
    what: str, ready: Callable[[], bool], *, timeout: float, watch: list[ManagedProcess], interval: float = 0.2
) -> None:
    """Poll `ready` until it is true; fail fast with its logs if a watched process dies."""
    deadline = time.monotonic() + timeout
    while True:
        for process in watch:
            process.check_alive()
        if ready():
            return
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}: {p.log_path}\n{tail(p.log_path, 15)}" for p in watch)
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s\n{logs}")
        time.sleep(interval)
