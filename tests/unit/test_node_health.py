"""The node agent's health checks: what each failure is counted as, and the command's defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
import pytest

from csi_client.errors import CSIError
from sidecarless import cli
from sidecarless.node import health
from sidecarless.node.agent import HealthSettings, sync_once
from sidecarless.node.metrics import PROBE_FAILURE_REASONS
from sidecarless.node.registration import DriverSocket, Registrar, is_socket


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"),
        (grpc.StatusCode.UNAVAILABLE, "unavailable"),
        (None, "unavailable"),  # the transport failed without a status
        (grpc.StatusCode.INTERNAL, "rpc_error"),
        (grpc.StatusCode.UNIMPLEMENTED, "rpc_error"),
    ],
)
def test_failure_reasons(code: grpc.StatusCode | None, reason: str) -> None:
    assert health.failure_reason(CSIError("Probe", code, "x")) == reason


def test_the_command_defaults_are_the_agents() -> None:
    parser = argparse.ArgumentParser()
    cli._node_parser(parser.add_subparsers())
    args = parser.parse_args(["node"])
    assert HealthSettings(args.health_address, args.health_port, args.probe_timeout) == HealthSettings()
    assert HealthSettings().probe_timeout == 3.0, "livenessprobe's default since v2.17"
    assert HealthSettings().address == "127.0.0.1"


def test_every_failure_reason_is_one_the_metrics_forget() -> None:
    reasons = {health.failure_reason(CSIError("Probe", code, "")) for code in grpc.StatusCode} | {"not_ready"}
    assert reasons == set(PROBE_FAILURE_REASONS)


def test_a_path_that_cannot_be_looked_at_is_no_socket() -> None:
    """A folder the agent may not enter (or a name too long) must not stop the scan."""
    assert is_socket(Path("/" + "x" * 5000)) is False


async def test_a_failing_scan_is_logged_and_the_agent_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def sockets() -> list[DriverSocket]:
        raise PermissionError("the plugins folder cannot be read")

    await sync_once(Registrar(Path("/nonexistent"), sockets))
    assert "scanning for driver sockets failed" in caplog.text
