"""A network namespace whose only way to the API server is a relay a test can cut.

    with Partitionable.create(server, log_dir) as room:
        operator = OperatorProcess(kubeconfig, log_dir, netns=room.netns_path)
        room.cut()    # the API server stops answering; the process sees no error, only silence
        room.heal()   # spoiled connections close, new ones get through

The namespace has nothing but its loopback, so a process in it reaches the API server only
through the relay (netns_relay.py, listening on the namespace's 127.0.0.1 at the server's
port), and the unix sockets of the CSI drivers, which no network namespace hides: its API
access can be cut while it can still call drivers, as a partitioned controller could.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from devcluster.procs import ManagedProcess, wait_until

RELAY = Path(__file__).resolve().with_name("netns_relay.py")


@dataclass
class Partitionable:
    netns: str
    relay: ManagedProcess

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @classmethod
    def create(cls, server: str, log_dir: Path, *, tied_to_parent: bool = True) -> Partitionable:
        netns = f"slc-part-{os.getpid()}"
        _ip("netns", "add", netns)
        try:
            _ip("-n", netns, "link", "set", "lo", "up")
            port = int(server.rsplit(":", 1)[1])
            # -I: the script's folder (which has an operator.py) must not shadow the standard library.
            relay = ManagedProcess(
                "partition-relay",
                [sys.executable, "-I", str(RELAY), f"--netns=/run/netns/{netns}", f"--port={port}"],
                log_dir / f"relay-{netns}.log",
            )
            relay.start(tied_to_parent=tied_to_parent)
            wait_until(
                "the partition relay",
                lambda: "relaying" in relay.log_path.read_text(errors="replace"),
                timeout=10,
                watch=[relay],
            )
        except BaseException:
            _ip("netns", "del", netns)
            raise
        return cls(netns, relay)

    def cut(self) -> None:
        self._signal(signal.SIGUSR1, "cut:")

    def heal(self) -> None:
        self._signal(signal.SIGUSR2, "healed:")

    def _signal(self, number: signal.Signals, said: str) -> None:
        before = self.relay.log_path.read_text(errors="replace").count(said)
        os.kill(self.relay.pid, number)
        wait_until(
            f"the relay to say {said!r}",
            lambda: self.relay.log_path.read_text(errors="replace").count(said) > before,
            timeout=5,
            watch=[self.relay],
            interval=0.02,
        )

    def close(self) -> None:
        self.relay.stop()
        if self.netns_path.exists():
            _ip("netns", "del", self.netns)

    def __enter__(self) -> Partitionable:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
