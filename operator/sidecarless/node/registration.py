"""kubelet plugin registration (pluginregistration/v1) for every CSI driver on the node.

For each driver socket found under the plugins folder (`<kubelet>/plugins/<dir>/csi.sock`,
the convention) or named on the command line, the agent asks the driver its name
(GetPluginInfo) and serves `<name>-reg.sock` in kubelet's `plugins_registry` folder, as
node-driver-registrar does: GetInfo answers `CSIPlugin`, the name, the driver's socket as
kubelet reaches it and the versions `1.0.0`; NotifyRegistrationStatus is logged and kept.
kubelet's plugin watcher sees the socket, calls GetInfo, then the driver's NodeGetInfo, and
writes the node's CSINode. A socket that goes away is unregistered (its registration socket
removed); one that appears later is picked up at the next scan. One driver's failure (not a
CSI endpoint, a name already taken, a refused registration) touches no other driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from csi_client import CSIClient
from sidecarless.node.generated import pluginregistration_pb2 as reg

log = logging.getLogger("sidecarless.node")

SERVICE = "pluginregistration.Registration"
SUPPORTED_VERSIONS = ("1.0.0",)  # node-driver-registrar's answer: the CSI plugin API kubelet speaks
SOCKET_NAME = "csi.sock"


@dataclass(frozen=True)
class DriverSocket:
    """A driver's CSI socket as the agent opens it and as kubelet reaches it."""

    path: Path  # in the agent's filesystem
    kubelet_path: Path  # the same socket as kubelet sees it (hostPath mounts may differ)


def scan_plugins(plugins_dir: Path, kubelet_plugins_dir: Path) -> dict[Path, DriverSocket]:
    """The CSI sockets in `<plugins_dir>/<driver>/csi.sock`, by path."""
    found: dict[Path, DriverSocket] = {}
    if not plugins_dir.is_dir():
        return found
    for folder in sorted(plugins_dir.iterdir()):
        candidate = folder / SOCKET_NAME
        if candidate.is_socket():
            found[candidate] = DriverSocket(candidate, kubelet_plugins_dir / folder.name / SOCKET_NAME)
    return found


def registration_socket(registry_dir: Path, driver_name: str) -> Path:
    return registry_dir / f"{driver_name}-reg.sock"


@dataclass
class Registration:
    """One driver's registration socket and what kubelet said of it."""

    driver_name: str
    socket: DriverSocket
    path: Path
    server: grpc.aio.Server | None = None
    registered: bool | None = None  # None: kubelet has not answered yet
    error: str = ""

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A socket left by an earlier run (the agent killed, the node rebooted) would refuse the
        # bind; kubelet re-registers as soon as the new one appears (node-driver-registrar #206).
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._handlers(),))
        # node-driver-registrar makes its socket under umask 0077: only kubelet's user (root) may dial it.
        old = os.umask(0o077)
        try:
            server.add_insecure_port(f"unix://{self.path}")
            await server.start()
        finally:
            os.umask(old)
        self.server = server
        log.info("serving registration of %s at %s (driver socket %s)", self.driver_name, self.path, self.socket.path)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0.5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def info(self) -> reg.PluginInfo:
        return reg.PluginInfo(
            type="CSIPlugin",
            name=self.driver_name,
            endpoint=str(self.socket.kubelet_path),
            supported_versions=list(SUPPORTED_VERSIONS),
        )

    def notified(self, status: reg.RegistrationStatus) -> None:
        self.registered, self.error = status.plugin_registered, status.error
        if status.plugin_registered:
            log.info("kubelet registered %s", self.driver_name)
        else:
            # node-driver-registrar exits here so that its container restarts; one agent serves
            # every driver, so it retries this one and leaves the others alone.
            log.error("kubelet refused to register %s: %s", self.driver_name, status.error)

    def _handlers(self) -> grpc.GenericRpcHandler:
        async def get_info(_: reg.InfoRequest, context: grpc.aio.ServicerContext) -> reg.PluginInfo:
            return self.info()

        async def notify(
            status: reg.RegistrationStatus, context: grpc.aio.ServicerContext
        ) -> reg.RegistrationStatusResponse:
            self.notified(status)
            return reg.RegistrationStatusResponse()

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetInfo": grpc.unary_unary_rpc_method_handler(
                    get_info,
                    request_deserializer=reg.InfoRequest.FromString,
                    response_serializer=reg.PluginInfo.SerializeToString,
                ),
                "NotifyRegistrationStatus": grpc.unary_unary_rpc_method_handler(
                    notify,
                    request_deserializer=reg.RegistrationStatus.FromString,
                    response_serializer=reg.RegistrationStatusResponse.SerializeToString,
                ),
            },
        )


async def driver_name_of(socket: Path, timeout: float) -> str:
    """The driver's own name (GetPluginInfo), over a connection of its own."""
    async with CSIClient(f"unix://{socket}", timeout=timeout, connect_attempts=1) as client:
        info = await client.get_plugin_info()
        return str(info.name)


@dataclass
class Registrar:
    """Keeps one Registration per driver socket the node has, as sockets come and go."""

    registry_dir: Path
    sockets: Callable[[], Iterable[DriverSocket]]
    name_timeout: float = 3.0
    registrations: dict[Path, Registration] = field(default_factory=dict)  # by driver socket path
    failures: dict[Path, str] = field(default_factory=dict)  # sockets that are not (yet) registrable

    async def sync(self) -> None:
        """One pass: register new sockets, unregister vanished ones, retry refused ones."""
        present = {s.path: s for s in self.sockets()}
        for path in [p for p in self.registrations if p not in present]:
            registration = self.registrations.pop(path)
            log.info("driver socket %s is gone: unregistering %s", path, registration.driver_name)
            await registration.stop()
        for path in [p for p in self.failures if p not in present]:
            del self.failures[path]
        for path, socket in present.items():
            current = self.registrations.get(path)
            if current is not None and current.registered is False:
                # A new socket makes kubelet's plugin watcher try again.
                await current.stop()
                del self.registrations[path]
                current = None
            if current is None:
                await self._register(socket)

    async def _register(self, socket: DriverSocket) -> None:
        try:
            name = await driver_name_of(socket.path, self.name_timeout)
        except Exception as error:
            self._failed(socket.path, f"not a CSI endpoint that answers GetPluginInfo: {error}")
            return
        if not name:
            self._failed(socket.path, "GetPluginInfo answered an empty name")
            return
        taken = next((r for r in self.registrations.values() if r.driver_name == name), None)
        if taken is not None:
            self._failed(socket.path, f"driver name {name} is already registered from {taken.socket.path}")
            return
        registration = Registration(name, socket, registration_socket(self.registry_dir, name))
        try:
            await registration.start()
        except Exception as error:
            self._failed(socket.path, f"cannot serve {registration.path}: {error}")
            return
        self.failures.pop(socket.path, None)
        self.registrations[socket.path] = registration

    def _failed(self, path: Path, reason: str) -> None:
        if self.failures.get(path) != reason:
            log.error("driver socket %s: %s", path, reason)
        self.failures[path] = reason

    async def stop(self) -> None:
        for registration in self.registrations.values():
            await registration.stop()
        self.registrations.clear()


async def run(registrar: Registrar, interval: float = 1.0) -> None:
    """Scan every `interval` seconds until cancelled; unregister everything on the way out."""
    try:
        while True:
            await registrar.sync()
            await asyncio.sleep(interval)
    finally:
        await registrar.stop()
