"""kubelet plugin registration (pluginregistration/v1) for every CSI driver on the node.

For each driver socket found under the plugins folder (`<kubelet>/plugins/<dir>/csi.sock`,
the convention) or named on the command line, the agent asks the driver its name
(GetPluginInfo) and serves `<name>-reg.sock` in kubelet's `plugins_registry` folder, as
node-driver-registrar does: GetInfo answers `CSIPlugin`, the name, the driver's socket as
kubelet reaches it and the versions `1.0.0`; NotifyRegistrationStatus is logged and kept.
kubelet's plugin watcher sees the socket, calls GetInfo, then the driver's NodeGetInfo, and
writes the node's CSINode.

A driver socket that goes away is unregistered (its registration socket removed); one that
appears later is picked up at the next scan. A socket that fails (not a CSI endpoint, a name
already taken, a registration kubelet refused) is retried on a backoff schedule and touches no
other driver. A registration socket served by another live process (a driver's own
node-driver-registrar during a migration, or the next agent during an upgrade) is left alone,
never replaced or removed; the agent registers the driver once that socket goes or dies. When
the agent itself stops it leaves its registration sockets in place: kubelet keeps the drivers
registered, and the next agent replaces the sockets at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from csi_client import CSIClient
from sidecarless.node.generated import pluginregistration_pb2 as reg
from sidecarless.node.metrics import REGISTERED, forget_driver
from sidecarless.workqueue import Backoff

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
    try:
        folders = sorted(plugins_dir.iterdir())
    except OSError as error:  # missing, or not readable: no drivers yet, said once a scan
        if plugins_dir.exists():
            log.error("cannot list %s: %s", plugins_dir, error)
        return found
    for folder in folders:
        candidate = folder / SOCKET_NAME
        if is_socket(candidate):
            found[candidate] = DriverSocket(candidate, kubelet_plugins_dir / folder.name / SOCKET_NAME)
    return found


def is_socket(path: Path) -> bool:
    """False also for a folder the agent may not enter (a driver's, owned by another user, with
    every capability dropped): one such folder must not stop the scan for every driver."""
    try:
        return path.is_socket()
    except OSError as error:
        log.debug("cannot look at %s: %s", path, error)
        return False


async def is_live(path: Path, timeout: float = 1.0) -> bool:
    """Whether a process listens on this unix socket: a bare connect, no RPC, so a registrar
    that serves it sees nothing of the check."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


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
    inode: int | None = None  # of the socket this agent made; another's replaces it

    async def start(self) -> None:
        """Serve the registration socket, unless another live process serves it: then raise
        SocketTakenError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if await is_live(self.path):
            raise SocketTakenError(f"{self.path} is served by another process (node-driver-registrar?)")
        # Bound at a short hidden name (kubelet's plugin watcher skips dot files), then renamed
        # into place. The rename replaces a socket left by an earlier run (the agent stopped or
        # killed, the node rebooted) at once, so kubelet re-registers quickly
        # (node-driver-registrar #206); and gRPC, which unlinks a unix socket's path when its
        # server stops, unlinks the hidden name, never a socket that has since replaced ours.
        hidden = self.path.with_name(f".{secrets.token_hex(4)}.sock")
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._handlers(),))
        # node-driver-registrar makes its socket under umask 0077: only kubelet's user (root) may dial it.
        old = os.umask(0o077)
        try:
            server.add_insecure_port(f"unix://{hidden}")
            await server.start()
        finally:
            os.umask(old)
        try:
            inode = hidden.stat().st_ino  # before the rename: the path may be taken just after
            hidden.rename(self.path)
        except BaseException:
            await server.stop(grace=0)
            raise
        self.server, self.inode = server, inode
        REGISTERED.labels(self.driver_name).set(0)
        log.info("serving registration of %s at %s (driver socket %s)", self.driver_name, self.path, self.socket.path)

    def owns_socket(self) -> bool:
        """Whether the registration socket is still the one this agent made: a registrar
        starting for the same driver replaces it, and someone may remove it."""
        try:
            return self.path.stat().st_ino == self.inode
        except OSError:
            return False

    async def stop(self, *, unregister: bool = True) -> None:
        """Stop serving. With `unregister`, remove the socket, so kubelet drops the driver, if
        it is still ours (a registrar that took it over keeps the driver registered);
        without, leave it for the next agent to replace."""
        if self.server is not None:
            await self.server.stop(grace=0.5)
        # Checked after the grace period, during which another registrar may take the path;
        # our server held the inode until now, so it cannot have been reused.
        if unregister and self.owns_socket():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        with contextlib.suppress(KeyError):
            REGISTERED.remove(self.driver_name)

    def info(self) -> reg.PluginInfo:
        return reg.PluginInfo(
            type="CSIPlugin",
            name=self.driver_name,
            endpoint=str(self.socket.kubelet_path),
            supported_versions=list(SUPPORTED_VERSIONS),
        )

    def notified(self, status: reg.RegistrationStatus) -> None:
        self.registered, self.error = status.plugin_registered, status.error
        REGISTERED.labels(self.driver_name).set(1 if status.plugin_registered else 0)
        if status.plugin_registered:
            log.info("kubelet registered %s", self.driver_name)
        else:
            # node-driver-registrar exits here so that its container restarts; one agent serves
            # every driver, so it retries this one (on a backoff) and leaves the others alone.
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


class SocketTakenError(Exception):
    """Another live process serves the driver's registration socket."""


async def driver_name_of(socket: Path, timeout: float) -> str:
    """The driver's own name (GetPluginInfo), over a connection of its own."""
    async with CSIClient(f"unix://{socket}", timeout=timeout, connect_attempts=1, own_connection=True) as client:
        info = await client.get_plugin_info()
        return str(info.name)


@dataclass
class Registrar:
    """Keeps one Registration per driver socket the node has, as sockets come and go."""

    registry_dir: Path
    sockets: Callable[[], Iterable[DriverSocket]]
    name_timeout: float = 3.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=60.0))
    registrations: dict[Path, Registration] = field(default_factory=dict)  # by driver socket path
    failures: dict[Path, str] = field(default_factory=dict)  # sockets that are not (yet) registered
    names: dict[Path, str] = field(default_factory=dict)  # each present socket's driver, once it answered
    retries: dict[Path, tuple[int, float]] = field(default_factory=dict)  # failed sockets: (failures, when due)
    # A driver socket nobody listens on this long counts as gone: many drivers leave the file
    # behind when their pod is deleted, where node-driver-registrar, dying with the pod,
    # would have removed its registration. A driver restarting in place is back well before.
    stale_after: float = 30.0
    dead_since: dict[Path, float] = field(default_factory=dict)

    def socket_of(self, driver_name: str) -> Path | None:
        """The socket of the driver of this name, for its health checks: also while another
        registrar holds its registration (a migration), since its livenessProbe may point here."""
        return next((path for path, name in self.names.items() if name == driver_name), None)

    async def sync(self) -> None:
        """One pass: register new sockets, unregister vanished ones, retry failed ones when due."""
        scanned = {s.path: s for s in self.sockets()}
        present = {path: socket for path, socket in scanned.items() if not await self._dead_too_long(path)}
        for path in [p for p in self.dead_since if p not in scanned]:
            del self.dead_since[path]
        for path in [p for p in self.registrations if p not in present]:
            registration = self.registrations.pop(path)
            log.info("driver socket %s is gone: unregistering %s", path, registration.driver_name)
            await registration.stop()
        for path in [p for p in self.names if p not in present]:
            forget_driver(self.names.pop(path))
        for table in (self.failures, self.retries):
            for path in [p for p in table if p not in present]:
                del table[path]
        for path, socket in present.items():
            current = self.registrations.get(path)
            if current is not None and current.registered is False:
                # A new socket makes kubelet's plugin watcher try again, on our schedule.
                self._failed(path, f"kubelet refused to register {current.driver_name}: {current.error}")
                await current.stop()
                del self.registrations[path]
            elif current is not None and not current.owns_socket():
                log.warning(
                    "the registration socket of %s was removed or replaced by another process", current.driver_name
                )
                await current.stop()
                del self.registrations[path]
            elif current is None and self._due(path):
                await self._register(socket)

    async def _dead_too_long(self, path: Path) -> bool:
        """Whether a registered driver's socket has had nobody listening for `stale_after`
        (a bare connect, only for registered sockets and those already found dead)."""
        if path not in self.registrations and path not in self.dead_since:
            return False
        if await is_live(path):
            if self.dead_since.pop(path, None) is not None:
                self.retries.pop(path, None)  # back: register it at once
            return False
        since = self.dead_since.setdefault(path, time.monotonic())
        if time.monotonic() - since < self.stale_after:
            return False
        if path in self.registrations:
            log.info("nobody has listened on %s for %.0f s: the driver is gone", path, self.stale_after)
        return True

    def _due(self, path: Path) -> bool:
        retry = self.retries.get(path)
        return retry is None or time.monotonic() >= retry[1]

    async def _register(self, socket: DriverSocket) -> None:
        name = self.names.get(socket.path)
        if name is None:
            try:
                name = await driver_name_of(socket.path, self.name_timeout)
            except Exception as error:
                self._failed(socket.path, f"not a CSI endpoint that answers GetPluginInfo: {error}")
                return
            if not name:
                self._failed(socket.path, "GetPluginInfo answered an empty name")
                return
            twin = next((p for p, n in self.names.items() if n == name), None)
            if twin is not None:
                self._failed(socket.path, f"driver name {name} is already registered from {twin}")
                return
            self.names[socket.path] = name
        registration = Registration(name, socket, registration_socket(self.registry_dir, name))
        try:
            await registration.start()
        except SocketTakenError as error:
            # Not a failure to back off from: checked again at every scan (a bare connect), so the
            # driver is registered within a scan of that socket going.
            self._note(socket.path, f"{error}: registering {name} when it goes", logging.WARNING)
            return
        except Exception as error:
            self._failed(socket.path, f"cannot serve {registration.path}: {error}")
            return
        self.failures.pop(socket.path, None)
        self.retries.pop(socket.path, None)
        self.registrations[socket.path] = registration

    def _failed(self, path: Path, reason: str) -> None:
        failures = self.retries.get(path, (0, 0.0))[0] + 1
        self.retries[path] = (failures, time.monotonic() + self.backoff.delay(failures))
        self._note(path, reason, logging.ERROR)

    def _note(self, path: Path, reason: str, level: int) -> None:
        if self.failures.get(path) != reason:
            log.log(level, "driver socket %s: %s", path, reason)
        self.failures[path] = reason

    async def stop(self, *, unregister: bool = False) -> None:
        """Stop every registration: by default leaving the sockets for the next agent (an
        upgrade or a restart must not unregister every driver on the node)."""
        for registration in self.registrations.values():
            await registration.stop(unregister=unregister)
        self.registrations.clear()
