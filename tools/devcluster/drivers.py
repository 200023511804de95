"""Real CSI drivers on unix sockets: what a driver pod's controller container would run."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from csi_client import CSIClient, csi, probe_ready
from devcluster import build
from devcluster.procs import ManagedProcess, wait_until

T = TypeVar("T")


@dataclass(frozen=True)
class DriverSpec:
    """One driver instance. `name` is its CSI name (and its CSIDriver object's)."""

    name: str
    attach: bool = True  # the driver's PUBLISH_UNPUBLISH_VOLUME, and CSIDriver attachRequired
    topology: bool = False  # VOLUME_ACCESSIBILITY_CONSTRAINTS
    node_expansion: bool = False  # the driver also wants NodeExpandVolume
    # csi-test mock hooks: JavaScript run at points such as `createVolumeStart`, returning a
    # gRPC code to fail the call with (see csi-test's hooks-howto.md).
    hooks: dict[str, str] = field(default_factory=dict)
    attach_limit: int = 10_000  # the mock counts every attachment against one node

    def mock_args(self, hooks_file: Path | None) -> list[str]:
        # -v=3: the mock logs every gRPC call as one JSON line, which tests count (RunningDriver.calls).
        args = [f"--name={self.name}", f"--attach-limit={self.attach_limit}", "-v=3"]
        if not self.attach:
            args.append("--disable-attach")
        if self.topology:
            args.append("--enable-topology")
        if self.node_expansion:
            args.append("--node-expand-required")
        if hooks_file is not None:
            args.append(f"--hooks-file={hooks_file}")
        return args


@dataclass(frozen=True)
class NodeIdentity:
    """What kubelet would learn from NodeGetInfo and write into the CSINode."""

    node_id: str
    topology: dict[str, str]


@dataclass
class RunningDriver:
    spec: DriverSpec
    address: str  # unix:///... or, for a driver listening on TCP, dns:///127.0.0.1:PORT
    process: ManagedProcess

    def node_identity(self) -> NodeIdentity:
        async def ask() -> NodeIdentity:
            async with CSIClient(self.address, timeout=5) as client:
                info = await client.node_get_info(csi.NodeGetInfoRequest())
                return NodeIdentity(info.node_id, dict(info.accessible_topology.segments))

        return run_sync(ask)


def driver_calls(log_path: Path, method: str) -> list[dict[str, Any]]:
    """The calls of `method` ("ControllerPublishVolume") a mock driver logged, oldest first."""
    calls = []
    for line in log_path.read_text(errors="replace").splitlines():
        _, marker, payload = line.partition("gRPCCall: ")
        if marker and payload.strip():
            call = json.loads(payload)
            if call.get("Method", "").endswith(f"/{method}"):
                calls.append(call)
    return calls


def run_sync(coroutine_function: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when the caller's thread has a running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine_function()).result()


def socket_name(driver_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", driver_name) + ".sock"


def start_driver(
    spec: DriverSpec, directory: Path, *, tied_to_parent: bool = True, tcp_port: int | None = None
) -> RunningDriver:
    """Start `spec` as a mock driver; return once it answers Probe.

    It listens on a unix socket in `directory`, or on 127.0.0.1:`tcp_port` when given.
    """
    binary = build.ensure_mock_driver()
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / socket_name(spec.name)
    if len(str(socket)) > 100:
        raise ValueError(f"socket path {socket} is too long for a unix socket; use a shorter folder")
    hooks_file = None
    if spec.hooks:
        hooks_file = directory / f"{socket.stem}.hooks.yaml"
        hooks_file.write_text(yaml.safe_dump(spec.hooks))
    process = ManagedProcess(
        name=f"driver {spec.name}",
        argv=[str(binary), *spec.mock_args(hooks_file)],
        log_path=directory / f"{socket.stem}.log",
        env={"CSI_ENDPOINT": f"tcp://127.0.0.1:{tcp_port}" if tcp_port else f"unix://{socket}"},
    )
    process.start(tied_to_parent=tied_to_parent)
    address = f"dns:///127.0.0.1:{tcp_port}" if tcp_port else f"unix://{socket}"
    driver = RunningDriver(spec, address, process)
    try:
        wait_until(f"driver {spec.name}", lambda: _answers_probe(driver), timeout=30, watch=[process])
    except BaseException:
        process.stop()
        raise
    return driver


def _answers_probe(driver: RunningDriver) -> bool:
    async def probe() -> bool:
        async with CSIClient(driver.address, timeout=2, connect_attempts=1) as client:
            return await probe_ready(client)

    try:
        return run_sync(probe)
    except Exception:  # not listening yet
        return False
