"""DriverEndpoint spec parsing and the status a user reads."""

from typing import Any

import pytest

from csi_client import DriverInfo
from sidecarless.endpoints.live import Endpoint, LastError
from sidecarless.endpoints.spec import SpecError, parse_duration, parse_spec
from sidecarless.endpoints.status import build_status


@pytest.mark.parametrize(("text", "seconds"), [("1s", 1), ("500ms", 0.5), ("1m30s", 90), ("2h", 7200), ("1.5m", 90)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["", "5", "1d", "s", "1s ", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(SpecError, match="not a duration"):
        parse_duration(text, "spec.timeouts.operation")


def test_spec_defaults() -> None:
    spec = parse_spec("ep", {"driverName": "d", "address": "/csi/csi.sock"})
    assert spec.operation_timeout == 60
    assert spec.retry_max == 300
    assert spec.max_in_flight == 50
    assert spec.controllers == {
        "provisioner": True,
        "attacher": True,
        "resizer": True,
        "snapshotter": True,
        "capacity": True,
    }
    assert spec.provisioner.volume_name_prefix == "pvc"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"address": "/csi.sock"}, "driverName is empty"),
        ({"driverName": "d", "address": "tcp://x:1"}, "unsupported scheme 'tcp'"),
        ({"driverName": "d", "address": "/csi.sock", "tls": {"secretName": "a", "secretNamespace": "b"}}, "no TLS"),
        ({"driverName": "d", "address": "/s", "timeouts": {"operation": "soon"}}, "spec.timeouts.operation"),
        ({"driverName": "d", "address": "/s", "retry": {"initialDelay": "10m", "maxDelay": "1m"}}, "longer than"),
    ],
)
def test_bad_specs_say_what_to_fix(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec("ep", spec)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_of_an_invalid_spec() -> None:
    status = build_status(None, spec_error="spec.address: bad", generation=3, counts={"volumes": 0}, previous={})
    assert conditions(status)["Ready"] == ("False", "InvalidSpec")
    assert status["observedGeneration"] == 3


def test_status_of_a_ready_endpoint_and_transition_times() -> None:
    endpoint = Endpoint(parse_spec("ep", {"driverName": "d", "address": "/s", "controllers": {"resizer": False}}))
    endpoint.info = DriverInfo(
        "d", "1.0", plugin=frozenset({"CONTROLLER_SERVICE"}), controller=frozenset({"CREATE_DELETE_VOLUME"})
    )
    endpoint.connected, endpoint.problem, endpoint.probe_time = True, None, "2026-01-01T00:00:00Z"
    status = build_status(endpoint, spec_error=None, generation=1, counts={"volumes": 2}, previous={})
    assert conditions(status) == {
        "Connected": ("True", "Connected"),
        "Ready": ("True", "Probed"),
        "Degraded": ("False", "AsExpected"),
    }
    assert status["controllers"] == {
        "provisioner": "Active",
        "attacher": "Unsupported",
        "resizer": "Disabled",
        "modifier": "Disabled",  # switched with the resizer
        "snapshotter": "Unsupported",
        "capacity": "Unsupported",
    }
    assert status["counts"] == {"volumes": 2, "operationsInFlight": 0, "failures": 0}
    assert status["driver"] == {"name": "d", "vendorVersion": "1.0"}

    previous = {"conditions": [{**c, "lastTransitionTime": "earlier"} for c in status["conditions"]]}
    endpoint.last_error = LastError("CreateVolume", "ns/pvc", "boom", "now")
    again = build_status(endpoint, spec_error=None, generation=1, counts={}, previous=previous)
    times = {c["type"]: c["lastTransitionTime"] for c in again["conditions"]}
    assert times["Ready"] == "earlier", "unchanged status keeps its transition time"
    assert times["Degraded"] != "earlier"
    assert conditions(again)["Degraded"] == ("True", "OperationsFailing")
    assert again["lastError"]["operation"] == "CreateVolume"


def test_driver_name_mismatch_is_the_problem() -> None:
    endpoint = Endpoint(parse_spec("ep", {"driverName": "expected", "address": "/s"}))
    endpoint.info = DriverInfo("actual", "1", plugin=frozenset({"CONTROLLER_SERVICE"}))
    problem = endpoint._check(True)
    assert problem is not None
    assert problem[0] == "DriverNameMismatch"
    assert "'actual'" in problem[1]
    assert "'expected'" in problem[1]
