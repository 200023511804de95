"""Health of every driver on the node (livenessprobe's job), served over HTTP with the metrics.

`/healthz/<driver>` dials the driver's socket afresh and calls Probe with a timeout (3 s, as
livenessprobe since v2.17): 200 `ok`, or 500 with the reason when the connection fails, the
call fails or times out, or the driver answers `ready: false`; 404 for a driver this agent
does not know. `/healthz` is the agent's own liveness, `/metrics` its Prometheus metrics. A
driver container's `livenessProbe` points at its `/healthz/<driver>` on the node's loopback,
so kubelet restarts a driver that stops answering, as it does with livenessprobe beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from csi_client import CSIClient, CSIError
from csi_client.capabilities import probe_ready
from sidecarless.node.metrics import PROBE_FAILURES, PROBE_SECONDS

log = logging.getLogger("sidecarless.node.health")

PROBE_TIMEOUT_SECONDS = 3.0
# Not livenessprobe's 9808: a node plugin still on livenessprobe with host networking holds
# that port while its neighbours move to the agent.
DEFAULT_PORT = 9880


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    reason: str = ""  # a PROBE_FAILURES reason when not healthy
    message: str = "ok"


def failure_reason(error: CSIError) -> str:
    if error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timeout"
    if error.code in (None, grpc.StatusCode.UNAVAILABLE):
        return "unavailable"
    return "rpc_error"


async def probe_driver(socket: Path, timeout: float = PROBE_TIMEOUT_SECONDS, driver_name: str = "") -> ProbeResult:
    """Probe the driver over a connection of its own: one that an earlier call left open
    would hide a driver that no longer accepts connections."""
    client = CSIClient(
        f"unix://{socket}", timeout=timeout, driver_name=driver_name, connect_attempts=1, own_connection=True
    )
    try:
        async with client:
            ready = await probe_ready(client)
    except CSIError as error:
        return ProbeResult(False, failure_reason(error), error.status_text)
    if not ready:
        return ProbeResult(False, "not_ready", "the driver answered Probe with ready: false")
    return ProbeResult(True)


async def check(driver_name: str, socket: Path, timeout: float) -> ProbeResult:
    """One health check, counted and timed; failures are logged with their reason."""
    started = time.monotonic()
    result = await probe_driver(socket, timeout, driver_name)
    PROBE_SECONDS.labels(driver_name).observe(time.monotonic() - started)
    if not result.healthy:
        PROBE_FAILURES.labels(driver_name, result.reason).inc()
        log.warning("health check of %s failed (%s): %s", driver_name, result.reason, result.message)
    return result


def application(socket_of: Callable[[str], Path | None], timeout: float = PROBE_TIMEOUT_SECONDS) -> web.Application:
    """The HTTP routes; `socket_of` maps a driver name to its socket, None when unknown."""

    async def agent(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def driver(request: web.Request) -> web.Response:
        name = request.match_info["driver"]
        socket = socket_of(name)
        if socket is None:
            return web.Response(status=404, text=f"this agent knows no CSI driver named {name} on this node\n")
        result = await check(name, socket, timeout)
        return web.Response(status=200 if result.healthy else 500, text=result.message + "\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", agent)
    app.router.add_get("/healthz/{driver}", driver)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application, address: str, port: int) -> web.AppRunner:
    """Listen with SO_REUSEPORT: during the DaemonSet's surge update the next agent serves the
    same port beside this one, so kubelet's probes never find it closed."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port, reuse_port=True).start()
    log.info("serving /healthz/<driver> and /metrics on %s:%d", address, port)
    return runner
