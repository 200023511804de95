"""The operator as a real process (`python -m sidecarless run`), for end-to-end tests and the demo."""

from __future__ import annotations

import http.client
import os
import sys
import urllib.request
from pathlib import Path

from devcluster.netns_relay import connect_in
from devcluster.procs import ManagedProcess, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]


class OperatorProcess:
    def __init__(
        self, kubeconfig: Path, log_dir: Path, *, env: dict[str, str] | None = None, netns: Path | None = None
    ) -> None:
        """`netns`: run in that network namespace (its kubeconfig's 127.0.0.1 is then that of
        the namespace, where a relay must listen); its ports are reached inside it."""
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.extra_env = env or {}
        self.netns = netns
        self.health_port = 0
        self.metrics_port = 0
        self.process: ManagedProcess | None = None
        self.starts = 0

    def start(
        self, *, tied_to_parent: bool = True, sandboxed: bool = False, health_timeout: float = 60.0, **env: str
    ) -> None:
        """`sandboxed` runs it as the chart's securityContext would: see devcluster/sandbox.py."""
        self.starts += 1
        command = [sys.executable, "-m", "sidecarless", "run"]
        if sandboxed:
            # -I: the script's folder holds a module named `operator`, which would shadow the stdlib's.
            command = [sys.executable, "-I", str(Path(__file__).with_name("sandbox.py")), "--", *command]
        self.health_port, self.metrics_port = free_port(), free_port()
        self.process = ManagedProcess(
            "sidecarless",
            command,
            self.log_dir / f"operator-{self.starts}.log",
            env={
                "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO)]),
                "SIDECARLESS_KUBECONFIG": str(self.kubeconfig),
                "SIDECARLESS_LISTEN_ADDRESS": "127.0.0.1",
                "SIDECARLESS_HEALTH_PORT": str(self.health_port),
                "SIDECARLESS_METRICS_PORT": str(self.metrics_port),
                "SIDECARLESS_NAMESPACE": "default",
                "SIDECARLESS_LOG_LEVEL": "DEBUG",
                # Tests look for the ListVolumes reconcile without waiting a minute.
                "SIDECARLESS_ATTACHER_RECONCILE_SECONDS": "2",
                # One process at a time: a killed one's Lease would hold the next back 15 s.
                # The failover test turns it on.
                "SIDECARLESS_LEADER_ELECTION": "false",
                **self.extra_env,
                **env,
            },
            netns=self.netns,
        )
        self.process.start(tied_to_parent=tied_to_parent)
        wait_until("the operator's /healthz", self.healthy, timeout=health_timeout, watch=[self.process])

    def healthy(self) -> bool:
        try:
            return self._get(self.health_port, "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    def metrics(self) -> str:
        return self._get(self.metrics_port, "/metrics", timeout=5)[1]

    def _get(self, port: int, path: str, *, timeout: float) -> tuple[int, str]:
        if self.netns is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
                return int(response.status), str(response.read().decode())
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.sock = connect_in(str(self.netns), port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
