"""The node agent's registration half against real mock drivers, speaking kubelet's side of
pluginregistration/v1 over its sockets (kubelet itself: tests/node/test_node_agent.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from devcluster import DriverSpec, RunningDriver
from devcluster.procs import free_port
from sidecarless.node.generated import pluginregistration_pb2 as reg
from sidecarless.node.registration import (
    SERVICE,
    DriverSocket,
    Registrar,
    registration_socket,
    scan_plugins,
)
from sidecarless.workqueue import Backoff
from tests.conftest import short_tmpdir

pytestmark = pytest.mark.driver

REPO = Path(__file__).resolve().parents[2]


async def get_info(path: Path) -> reg.PluginInfo:
    async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/GetInfo",
            request_serializer=reg.InfoRequest.SerializeToString,
            response_deserializer=reg.PluginInfo.FromString,
        )
        info: reg.PluginInfo = await call(reg.InfoRequest(), timeout=5)
        return info


async def notify(path: Path, registered: bool, error: str = "") -> None:
    async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/NotifyRegistrationStatus",
            request_serializer=reg.RegistrationStatus.SerializeToString,
            response_deserializer=reg.RegistrationStatusResponse.FromString,
        )
        await call(reg.RegistrationStatus(plugin_registered=registered, error=error), timeout=5)


def socket_of(driver: RunningDriver) -> Path:
    return Path(driver.address.removeprefix("unix://"))


def names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def registry() -> Iterator[Path]:
    folder = short_tmpdir("slc-reg-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_each_driver_gets_its_registration_socket(
    start_mock: Callable[[DriverSpec], RunningDriver], registry: Path
) -> None:
    first, second = start_mock(DriverSpec("one.csi.example")), start_mock(DriverSpec("two.csi.example"))
    sockets = [DriverSocket(socket_of(d), Path("/kubelet/sees") / d.spec.name / "csi.sock") for d in (first, second)]
    registrar = Registrar(registry, lambda: sockets)
    try:
        await registrar.sync()
        for driver in (first, second):
            path = registration_socket(registry, driver.spec.name)
            assert path.is_socket()
            assert path.stat().st_mode & 0o077 == 0, "only kubelet's user may dial it, as the registrar's umask 0077"
            info = await get_info(path)
            assert info.type == "CSIPlugin"
            assert info.name == driver.spec.name
            assert info.endpoint == f"/kubelet/sees/{driver.spec.name}/csi.sock"
            assert list(info.supported_versions) == ["1.0.0"]
        await notify(registration_socket(registry, "one.csi.example"), True)
        assert registrar.registrations[sockets[0].path].registered is True
    finally:
        await registrar.stop()
    assert names_in(registry) == ["one.csi.example-reg.sock", "two.csi.example-reg.sock"], (
        "a stopped agent leaves its sockets for the next one: kubelet keeps the drivers registered"
    )


async def test_a_socket_gone_is_unregistered_and_a_refusal_retried(
    start_mock: Callable[[DriverSpec], RunningDriver], registry: Path
) -> None:
    driver = start_mock(DriverSpec("three.csi.example"))
    present = [DriverSocket(socket_of(driver), socket_of(driver))]
    registrar = Registrar(registry, lambda: present, backoff=Backoff(initial=0.3, maximum=0.3, jitter=0))
    path = registration_socket(registry, "three.csi.example")
    try:
        await registrar.sync()
        first = registrar.registrations[present[0].path]
        await notify(path, False, "plugin already registered")
        await registrar.sync()
        assert present[0].path not in registrar.registrations, "refused: retried on the backoff schedule"
        assert "plugin already registered" in registrar.failures[present[0].path]
        await registrar.sync()
        assert present[0].path not in registrar.registrations, "not before it is due"
        await asyncio.sleep(0.4)
        await registrar.sync()
        again = registrar.registrations[present[0].path]
        assert again is not first, "a refused registration gets a new socket: kubelet's watcher tries again"
        assert again.registered is None
        assert present[0].path not in registrar.failures
        assert (await get_info(path)).name == "three.csi.example"
        present.clear()
        await registrar.sync()
        assert not path.exists(), "the driver socket gone: unregistered"
    finally:
        await registrar.stop()


async def test_a_socket_left_by_a_dead_driver_is_unregistered_after_a_while(
    start_mock: Callable[[DriverSpec], RunningDriver], registry: Path
) -> None:
    """Many drivers leave their socket file behind when their pod goes; with the driver's own
    registrar gone with the pod, kubelet would have dropped it. Nobody listening for
    `stale_after`: unregistered; before that, a restart in place keeps the registration."""
    driver = start_mock(DriverSpec("dies.csi.example"))
    sockets = [DriverSocket(socket_of(driver), socket_of(driver))]
    registrar = Registrar(registry, lambda: sockets, stale_after=0.5)
    path = registration_socket(registry, "dies.csi.example")
    try:
        await registrar.sync()
        assert path.is_socket()
        driver.process.kill()  # its socket file stays
        await registrar.sync()
        assert path.is_socket(), "not at once: a driver restarting in place keeps its registration"
        assert registrar.socket_of("dies.csi.example") is not None
        await asyncio.sleep(0.6)
        await registrar.sync()
        assert not path.exists(), "dead for stale_after: unregistered"
        assert registrar.socket_of("dies.csi.example") is None, "and no longer served at /healthz"
        await registrar.sync()
        assert registrar.registrations == {}, "not registered again while nobody listens"
    finally:
        await registrar.stop()


async def test_bad_sockets_affect_no_other_driver(
    start_mock: Callable[[DriverSpec], RunningDriver], registry: Path
) -> None:
    good = start_mock(DriverSpec("good.csi.example"))
    folder = short_tmpdir("slc-bad-")
    # A socket that accepts connections but speaks no gRPC at all.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "csi.sock"))
    listener.listen()
    # A second socket of the same driver (one name claimed twice).
    twin = folder / "twin.sock"
    twin.symlink_to(socket_of(good))
    sockets = [
        DriverSocket(folder / "csi.sock", folder / "csi.sock"),
        DriverSocket(socket_of(good), socket_of(good)),
        DriverSocket(twin, twin),
    ]
    registrar = Registrar(registry, lambda: sockets, name_timeout=1)
    try:
        await registrar.sync()
        assert (await get_info(registration_socket(registry, "good.csi.example"))).name == "good.csi.example"
        assert "not a CSI endpoint" in registrar.failures[folder / "csi.sock"]
        assert "already registered" in registrar.failures[twin]
        assert names_in(registry) == ["good.csi.example-reg.sock"]
    finally:
        await registrar.stop()
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_scan_finds_the_conventional_layout(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    (plugins / "a.csi.example").mkdir(parents=True)
    (plugins / "b.csi.example").mkdir()
    (plugins / "b.csi.example" / "not-a-socket.txt").write_text("")
    server = socket.socket(socket.AF_UNIX)
    path = plugins / "a.csi.example" / "csi.sock"
    if len(str(path)) > 100:
        pytest.skip("tmp path too long for a unix socket")
    server.bind(str(path))
    try:
        found = scan_plugins(plugins, Path("/var/lib/kubelet/plugins"))
        assert list(found) == [path]
        assert found[path].kubelet_path == Path("/var/lib/kubelet/plugins/a.csi.example/csi.sock")
    finally:
        server.close()


async def start_agent(driver: RunningDriver, registry: Path, port: int) -> asyncio.subprocess.Process:
    """`sidecarless node` as a process, serving one explicit driver socket."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecarless",
        "node",
        f"--registry-dir={registry}",
        f"--health-port={port}",
        # Generous: what is tested is the hand-over, not how fast a loaded machine's mock answers.
        "--probe-timeout=30",
        f"--driver-socket={socket_of(driver)}",
        "--plugins-dir=/nonexistent",
        "--scan-seconds=0.2",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": "operator:."},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def test_an_upgrade_hands_every_registration_and_the_health_port_over(
    start_mock: Callable[[DriverSpec], RunningDriver], registry: Path
) -> None:
    """The chart's surge update: the next agent starts beside the running one (the same health
    port, SO_REUSEPORT), leaves its live registration socket alone, and takes it over as soon
    as the old agent stops (SIGTERM, which leaves the socket for it: the driver is never
    unregistered); every health check in between answers 200."""
    driver = start_mock(DriverSpec("cmd.csi.example"))
    port = free_port()
    path = registration_socket(registry, "cmd.csi.example")
    old = await start_agent(driver, registry, port)
    new: asyncio.subprocess.Process | None = None
    answers: list[int] = []

    async def probe_all_along() -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(f"http://127.0.0.1:{port}/healthz/cmd.csi.example") as response:
                        answers.append(response.status)
                await asyncio.sleep(0.05)

    try:
        await wait_for(path.is_socket, "the first agent registered the driver")
        first_inode = path.stat().st_ino
        prober = asyncio.create_task(probe_all_along())
        await wait_for(lambda: len(answers) > 0, "the first agent answers health checks")
        new = await start_agent(driver, registry, port)
        assert new.stdout is not None
        while b"served by another process" not in (line := await asyncio.wait_for(new.stdout.readline(), 60)):
            assert line, "the new agent ended before it found the old one's socket"
        await asyncio.sleep(1)  # five more scans of the new agent
        assert path.stat().st_ino == first_inode, "the new agent leaves the old one's live socket alone"
        old.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(old.wait(), 60) == 0
        await wait_for(lambda: path.stat().st_ino != first_inode, "the new agent took the socket over")
        assert (await get_info(path)).name == "cmd.csi.example"
        seen = len(answers)
        await wait_for(lambda: len(answers) > seen + 5, "the new agent answers health checks")
        prober.cancel()
        assert set(answers) == {200}, answers
        new.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(new.wait(), 60) == 0
        assert path.is_socket(), "SIGTERM leaves the registration for the next agent"
    finally:
        outputs = []
        for agent in (old, new):
            if agent is not None:
                if agent.returncode is None:
                    agent.kill()
                outputs.append((await agent.communicate())[0].decode())
    assert "serving registration of cmd.csi.example" in outputs[0], outputs[0]
    assert "serving registration of cmd.csi.example" in outputs[1], "the new agent took it over"


async def test_a_stale_socket_from_an_earlier_run_is_replaced(
    start_mock: Callable[[DriverSpec], RunningDriver], registry: Path
) -> None:
    """After a reboot or a killed agent, the registration socket is still there and nothing
    answers on it: it is replaced at once (node-driver-registrar #206)."""
    driver = start_mock(DriverSpec("stale.csi.example"))
    path = registration_socket(registry, "stale.csi.example")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nothing listens
    registrar = Registrar(registry, lambda: [DriverSocket(socket_of(driver), socket_of(driver))])
    try:
        await registrar.sync()
        assert (await get_info(path)).name == "stale.csi.example"
        assert names_in(registry) == ["stale.csi.example-reg.sock"], "no hidden socket left behind"
    finally:
        await registrar.stop()


async def start_standin(driver: RunningDriver, registry: Path) -> asyncio.subprocess.Process:
    """devcluster's node-driver-registrar stand-in (its documented behaviour) for this driver."""
    standin = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devcluster.registrar_standin",
        f"--csi-address={driver.address}",
        "--kubelet-registration-path=/registrar/sees/csi.sock",
        f"--registration-dir={registry}",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": "operator:.:tools"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert standin.stdout is not None
    line = await asyncio.wait_for(standin.stdout.readline(), 30)
    assert b"registrar: serving" in line, line
    return standin


@pytest.fixture
def standins() -> Iterator[list[asyncio.subprocess.Process]]:
    """Stand-ins a test started; any still running at its end (a failed test) is killed."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()


async def test_node_driver_registrar_takes_the_registration_over_and_gives_it_back(
    start_mock: Callable[[DriverSpec], RunningDriver], registry: Path, standins: list[asyncio.subprocess.Process]
) -> None:
    """A migration: the driver's own registrar starts beside the agent (it replaces the socket,
    as the registrar does at start); the agent leaves it be, neither removing its socket nor
    fighting for it, and keeps the driver's health; the registrar stopped (SIGTERM removes its
    socket), the agent registers the driver again at its next scan. And the other way: an agent
    started while a registrar serves waits for it."""
    driver = start_mock(DriverSpec("moving.csi.example"))
    sockets = [DriverSocket(socket_of(driver), Path("/agent/sees/csi.sock"))]
    path = registration_socket(registry, "moving.csi.example")
    agent = Registrar(registry, lambda: sockets)
    try:
        await agent.sync()
        assert (await get_info(path)).endpoint == "/agent/sees/csi.sock"
        standin = await start_standin(driver, registry)
        standins.append(standin)
        assert (await get_info(path)).endpoint == "/registrar/sees/csi.sock"
        for _ in range(3):
            await agent.sync()
            assert (await get_info(path)).endpoint == "/registrar/sees/csi.sock", "no fight over the socket"
        assert agent.registrations == {}
        assert "served by another process" in agent.failures[socket_of(driver)]
        assert agent.socket_of("moving.csi.example") == socket_of(driver), "its health is still served"
        standin.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(standin.wait(), 10) == 0
        assert not path.exists()
        await agent.sync()
        assert (await get_info(path)).endpoint == "/agent/sees/csi.sock", "the agent registers it again"
        assert socket_of(driver) not in agent.failures
    finally:
        await agent.stop()

    standin = await start_standin(driver, registry)
    standins.append(standin)
    late = Registrar(registry, lambda: sockets)
    try:
        await late.sync()
        assert (await get_info(path)).endpoint == "/registrar/sees/csi.sock", "a live registrar's socket is kept"
        await late.stop()
        assert path.is_socket(), "stopping the agent leaves the registrar's socket alone"
    finally:
        standin.send_signal(signal.SIGTERM)
        await standin.wait()


def test_the_agent_imports_neither_kopf_nor_the_kubernetes_client() -> None:
    check = (
        "import sys, sidecarless.cli, sidecarless.node.agent\n"
        "real = [m for m in sys.modules if m.startswith('kopf') or m == 'kubernetes_asyncio.client.api_client']\n"
        "assert not real, real\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={"PYTHONPATH": "operator:."},
    )
    assert result.returncode == 0, result.stderr
