"""The node agent's registration half against real mock drivers, speaking kubelet's side of
pluginregistration/v1 over its sockets (kubelet itself: tests/node/test_registration.py)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from devcluster import DriverSpec, RunningDriver
from sidecarless.node.generated import pluginregistration_pb2 as reg
from sidecarless.node.registration import (
    SERVICE,
    DriverSocket,
    Registrar,
    registration_socket,
    scan_plugins,
)
from tests.conftest import short_tmpdir

pytestmark = pytest.mark.driver


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
    assert names_in(registry) == [], "stopping removes every registration socket"


async def test_a_socket_gone_is_unregistered_and_a_refusal_retried(
    start_mock: Callable[[DriverSpec], RunningDriver], registry: Path
) -> None:
    driver = start_mock(DriverSpec("three.csi.example"))
    present = [DriverSocket(socket_of(driver), socket_of(driver))]
    registrar = Registrar(registry, lambda: present)
    path = registration_socket(registry, "three.csi.example")
    try:
        await registrar.sync()
        first = registrar.registrations[present[0].path]
        await notify(path, False, "plugin already registered")
        await registrar.sync()
        again = registrar.registrations[present[0].path]
        assert again is not first, "a refused registration gets a new socket: kubelet's watcher tries again"
        assert again.registered is None
        assert (await get_info(path)).name == "three.csi.example"
        present.clear()
        await registrar.sync()
        assert not path.exists()
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


def test_the_agent_imports_neither_kopf_nor_the_kubernetes_client() -> None:
    check = (
        "import sys, sidecarless.cli, sidecarless.node.registration\n"
        "real = [m for m in sys.modules if m.startswith('kopf') or m == 'kubernetes_asyncio.client.api_client']\n"
        "assert not real, real\n"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        check=False,
        cwd=repo,
        env={"PYTHONPATH": "operator:."},
    )
    assert result.returncode == 0, result.stderr
