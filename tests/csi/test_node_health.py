"""The node agent's health half (livenessprobe's job) over HTTP, against a real mock driver and
against scripted Probe answers for what the mock cannot be made to do (ready: false, a hang);
kubelet restarting a sick driver: tests/node/test_node_agent.py."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web

from csi_client import csi
from devcluster import DriverSpec, RunningDriver
from sidecarless.node import health
from tests.conftest import short_tmpdir

pytestmark = pytest.mark.driver

Serve = Callable[[dict[str, Path]], Awaitable[str]]


@pytest.fixture
def folder() -> Iterator[Path]:
    path = short_tmpdir("slc-hz-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve the agent's routes for a {driver name: socket} table on a free loopback port."""
    runners: list[web.AppRunner] = []

    async def start(sockets: dict[str, Path]) -> str:
        runner = await health.serve(health.application(sockets.get, timeout=1.0), "127.0.0.1", 0)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def scripted_probe(path: Path, answer: Callable[[], Awaitable[csi.ProbeResponse]]) -> grpc.aio.Server:
    """A CSI Identity service whose Probe answers as scripted."""

    async def probe(_: csi.ProbeRequest, context: grpc.aio.ServicerContext) -> csi.ProbeResponse:
        return await answer()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "csi.v1.Identity",
                {
                    "Probe": grpc.unary_unary_rpc_method_handler(
                        probe,
                        request_deserializer=csi.ProbeRequest.FromString,
                        response_serializer=csi.ProbeResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    return server


def failures(metrics: str, driver: str, reason: str) -> float:
    prefix = f'sidecarless_node_probe_failures_total{{driver_name="{driver}",reason="{reason}"}} '
    return next((float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix)), 0.0)


async def test_a_healthy_driver_answers_ok_and_a_dead_one_500(
    start_mock: Callable[[DriverSpec], RunningDriver], serve: Serve
) -> None:
    driver = start_mock(DriverSpec("healthy.csi.example"))
    socket = Path(driver.address.removeprefix("unix://"))
    base = await serve({"healthy.csi.example": socket})
    assert await get(f"{base}/healthz") == (200, "ok")
    assert await get(f"{base}/healthz/healthy.csi.example") == (200, "ok\n")
    status, text = await get(f"{base}/metrics")
    assert 'sidecarless_node_probe_duration_seconds_count{driver_name="healthy.csi.example"} 1.0' in text
    assert 'method_name="/csi.v1.Identity/Probe"' in text, "the CSI call histogram, as livenessprobe exports"

    driver.process.kill()  # crashed: its socket file stays behind, nothing listens on it
    status, text = await get(f"{base}/healthz/healthy.csi.example")
    assert status == 500
    assert "Unavailable" in text
    metrics = (await get(f"{base}/metrics"))[1]
    assert failures(metrics, "healthy.csi.example", "unavailable") == 1


async def test_an_unknown_driver_is_404(serve: Serve) -> None:
    status, text = await get(f"{await serve({})}/healthz/nobody.csi.example")
    assert status == 404
    assert "nobody.csi.example" in text


async def test_not_ready_and_a_hang_are_500_with_their_reason(folder: Path, serve: Serve) -> None:
    async def not_ready() -> csi.ProbeResponse:
        response = csi.ProbeResponse()
        response.ready.value = False
        return response

    async def hang() -> csi.ProbeResponse:
        await asyncio.sleep(30)
        return csi.ProbeResponse()

    async def unset() -> csi.ProbeResponse:
        return csi.ProbeResponse()  # no `ready`: ready, says the spec

    servers = [
        await scripted_probe(folder / "sick.sock", not_ready),
        await scripted_probe(folder / "hung.sock", hang),
        await scripted_probe(folder / "unset.sock", unset),
    ]
    try:
        base = await serve({name: folder / f"{name}.sock" for name in ("sick", "hung", "unset")})
        status, text = await get(f"{base}/healthz/sick")
        assert (status, text) == (500, "the driver answered Probe with ready: false\n")
        started = asyncio.get_running_loop().time()
        status, text = await get(f"{base}/healthz/hung")
        waited = asyncio.get_running_loop().time() - started
        assert status == 500
        assert "DeadlineExceeded" in text
        assert waited < 5, "the probe timeout (1 s here) bounds the answer"
        assert await get(f"{base}/healthz/unset") == (200, "ok\n")
        metrics = (await get(f"{base}/metrics"))[1]
        assert failures(metrics, "sick", "not_ready") == 1
        assert failures(metrics, "hung", "timeout") == 1
    finally:
        for server in servers:
            await server.stop(grace=0)


async def test_each_probe_dials_afresh(folder: Path, serve: Serve) -> None:
    """A driver restarted on the same socket is probed on a new connection: the old one's
    failure is not carried over, and the new process is the one asked."""
    answers: list[str] = []

    def answering(tag: str) -> Callable[[], Awaitable[csi.ProbeResponse]]:
        async def answer() -> csi.ProbeResponse:
            answers.append(tag)
            return csi.ProbeResponse()

        return answer

    path = folder / "restarted.sock"
    base = await serve({"restarted": path})
    first = await scripted_probe(path, answering("first"))
    assert (await get(f"{base}/healthz/restarted"))[0] == 200
    await first.stop(grace=0)
    assert (await get(f"{base}/healthz/restarted"))[0] == 500
    second = await scripted_probe(path, answering("second"))
    try:
        assert (await get(f"{base}/healthz/restarted"))[0] == 200
    finally:
        await second.stop(grace=0)
    assert answers == ["first", "second"]
