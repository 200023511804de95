"""`sidecarless node` put together: the registrar's scan loop and the health server, on one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from sidecarless.node import health
from sidecarless.node.registration import Registrar

log = logging.getLogger("sidecarless.node")


@dataclass(frozen=True)
class HealthSettings:
    address: str = "127.0.0.1"  # the node's loopback: kubelet probes from the node
    port: int = health.DEFAULT_PORT
    probe_timeout: float = health.PROBE_TIMEOUT_SECONDS


async def run(registrar: Registrar, interval: float = 1.0, settings: HealthSettings | None = None) -> None:
    """Scan once (so that health knows the drivers' names), serve health, then scan every
    `interval` seconds until cancelled; on the way out stop serving, leaving the registration
    sockets for the next agent."""
    settings = settings or HealthSettings()
    await sync_once(registrar)
    app = health.application(registrar.socket_of, settings.probe_timeout)
    runner = await health.serve(app, settings.address, settings.port)
    try:
        while True:
            await asyncio.sleep(interval)
            await sync_once(registrar)
    finally:
        await registrar.stop()
        await runner.cleanup()


async def sync_once(registrar: Registrar) -> None:
    """One scan; a scan that fails is logged and the next one tried: one agent serves every
    driver on the node, and its exit would leave all of them without health checks."""
    try:
        await registrar.sync()
    except Exception:
        log.exception("scanning for driver sockets failed; trying again at the next scan")


async def run_until_terminated(registrar: Registrar, interval: float, settings: HealthSettings) -> None:
    """`run` until SIGTERM or SIGINT, then stop cleanly: the servers closed and the registration
    sockets left for the next agent (unlike node-driver-registrar, which removes its own: one
    agent serves every driver on the node, and removing them would unregister all of them)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await run(registrar, interval, settings)
