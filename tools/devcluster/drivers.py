"""Real CSI drivers on unix sockets: what a driver pod's controller container would run."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
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
TOOLS = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DriverSpec:
    """One driver instance. `name` is its CSI name (and its CSIDriver object's)."""

    name: str
    attach: bool = True  # the driver's PUBLISH_UNPUBLISH_VOLUME, and CSIDriver attachRequired
    topology: bool = False  # VOLUME_ACCESSIBILITY_CONSTRAINTS
    node_expansion: bool = False  # the driver also wants NodeExpandVolume
    controller_expansion: bool = True  # False: EXPAND_VOLUME only in the Node service
    # csi-test mock hooks: JavaScript run at points such as `createVolumeStart`, returning a
    # gRPC code to fail the call with (see csi-test's hooks-howto.md).
    hooks: dict[str, str] = field(default_factory=dict)
    attach_limit: int = 10_000  # the mock counts every attachment against one node
    # csi-driver-host-path's flags, served by driver_shim in front of the mock: the keys
    # ControllerModifyVolume accepts (None: no MODIFY_VOLUME), and the largest size
    # ControllerExpandVolume grants (0: no limit).
    accepted_mutable_parameters: tuple[str, ...] | None = None
    max_volume_size: int = 0
    group_snapshots: bool = False  # the GroupController service (CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT)
    # A file of "<volume id> <message>" lines: ListVolumes and ControllerGetVolume report those
    # volumes abnormal (the mock reports every volume healthy).
    abnormal_volumes: Path | None = None

    @property
    def shimmed(self) -> bool:
        return (
            self.accepted_mutable_parameters is not None
            or self.max_volume_size > 0
            or self.group_snapshots
            or self.abnormal_volumes is not None
        )

    def shim_args(self) -> list[str]:
        args = []
        if self.accepted_mutable_parameters is not None:
            args.append(f"--accepted-mutable-parameter-names={','.join(self.accepted_mutable_parameters)}")
        if self.max_volume_size:
            args.append(f"--max-volume-size={self.max_volume_size}")
        if self.group_snapshots:
            args.append("--enable-volume-group-snapshots")
        if self.abnormal_volumes is not None:
            args.append(f"--abnormal-volumes={self.abnormal_volumes}")
        return args

    def mock_args(self, hooks_file: Path | None) -> list[str]:
        # -v=3: the mock logs every gRPC call as one JSON line, which tests count (RunningDriver.calls).
        args = [f"--name={self.name}", f"--attach-limit={self.attach_limit}", "-v=3"]
        if not self.attach:
            args.append("--disable-attach")
        if self.topology:
            args.append("--enable-topology")
        if self.node_expansion:
            args.append("--node-expand-required")
        if not self.controller_expansion:
            args.append("--disable-controller-expansion")
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
    process: ManagedProcess  # the mock driver
    shim: ManagedProcess | None = None  # driver_shim in front of it, when the spec needs one

    @property
    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.shim, self.process) if p is not None]

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

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
    """Start `spec` as a mock driver (behind driver_shim if it needs hostpath's extras);
    return once it answers Probe.

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
    address = f"dns:///127.0.0.1:{tcp_port}" if tcp_port else f"unix://{socket}"
    mock_address = f"unix://{socket.with_suffix('.mock.sock')}" if spec.shimmed else address
    process = ManagedProcess(
        name=f"driver {spec.name}",
        argv=[str(binary), *spec.mock_args(hooks_file)],
        log_path=directory / f"{socket.stem}.log",
        env={"CSI_ENDPOINT": mock_address.replace("dns:///", "tcp://")},
    )
    shim = None
    if spec.shimmed:
        shim = ManagedProcess(
            name=f"driver shim {spec.name}",
            argv=[
                sys.executable,
                "-m",
                "devcluster.driver_shim",
                f"--listen={address}",
                f"--backend={mock_address}",
                *spec.shim_args(),
            ],
            log_path=directory / f"{socket.stem}.shim.log",
            env={"PYTHONPATH": os.pathsep.join([str(TOOLS), str(TOOLS.parent)])},
        )
    driver = RunningDriver(spec, address, process, shim)
    try:
        for started in reversed(driver.processes):  # the mock first
            started.start(tied_to_parent=tied_to_parent)
        wait_until(f"driver {spec.name}", lambda: _answers_probe(driver), timeout=30, watch=driver.processes)
    except BaseException:
        driver.stop()
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
