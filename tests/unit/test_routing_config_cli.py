"""Routing, settings from the environment, API budgets, and the `sidecarless status` table."""

import pytest
from kubernetes_asyncio.client import Configuration
from prometheus_client import REGISTRY

from sidecarless.cli import format_status
from sidecarless.config import Settings
from sidecarless.kube import DRIVER_ENDPOINT, PV, SECRET, Kube, Transport, Unreachable
from sidecarless.routing import endpoint_of_class, endpoint_of_volume, endpoint_serving_driver
from sidecarless.vocabulary import shown, valid_object_name

ROUTED = {"metadata": {"name": "fast", "annotations": {"sidecarless.io/endpoint": "ep-a"}}}
UNROUTED = {"metadata": {"name": "slow", "annotations": {}}}


def test_routing() -> None:
    assert endpoint_of_class(ROUTED) == "ep-a"
    assert endpoint_of_class(UNROUTED) is None
    assert endpoint_of_class(None) is None
    assert endpoint_of_volume({"metadata": {}}, ROUTED) == "ep-a", "PVs follow their class, whoever made them"
    assert endpoint_of_volume({"metadata": {}}, None) is None
    legacy = {"metadata": {"annotations": {"sidecarless.io/endpoint": "ep-b"}}}
    assert endpoint_of_volume(legacy, ROUTED) == "ep-b", "PVs made by earlier versions keep the endpoint they recorded"
    serving = {"ep-a": "a.csi", "ep-b": "b.csi", "ep-c": "b.csi"}
    assert endpoint_serving_driver("a.csi", serving) == "ep-a"
    assert endpoint_serving_driver("b.csi", serving) is None, "two endpoints: which one made it is unknown"
    assert endpoint_serving_driver("c.csi", serving) is None


def test_settings_from_environment_and_overrides() -> None:
    settings = Settings.from_env(
        {"SIDECARLESS_API_QPS": "20", "SIDECARLESS_LOG_FORMAT": "json", "POD_NAMESPACE": "storage"}, api_burst=7
    )
    assert settings.api_qps == 20
    assert settings.api_burst == 7
    assert settings.log_format == "json"
    assert settings.namespace == "storage"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SIDECARLESS_API_QPS": "fast"}, "not a number"),
        (
            {"SIDECARLESS_METRICS_PORT": "tcp://10.216.128.123:8080"},
            "Service named sidecarless-metrics: give the pod enableServiceLinks: false",
        ),
        ({"SIDECARLESS_LOG_FORMAT": "xml"}, "text or json"),
        ({"SIDECARLESS_API_QPS_SCOPE": "driver"}, "process or controller, not 'driver'"),
    ],
)
def test_bad_settings(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(environ)


def test_status_table() -> None:
    table = format_status(
        [
            {
                "metadata": {"name": "b"},
                "spec": {"driverName": "d2"},
                "status": {
                    "conditions": [{"type": "Ready", "status": "False", "reason": "Unreachable", "message": "no"}],
                    "counts": {"volumes": 0, "failures": 3},
                },
            },
            {"metadata": {"name": "a"}, "spec": {"driverName": "d1"}},
        ]
    )
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["NAME", "DRIVER", "READY", "REASON"]
    assert lines[1].split()[:3] == ["a", "d1", "Unknown"]
    assert lines[2].split() == ["b", "d2", "False", "Unreachable", "0", "3", "no"]


def test_fault_points_parse_targets() -> None:
    from sidecarless.faults import _parse  # noqa: PLC0415 - the module reads the environment at import

    assert _parse("a, b@team-1/ ,a@x") == {"a": ("", "x"), "b": ("team-1/",)}
    assert _parse("") == {}


async def test_a_budget_of_its_own_shares_connections_and_store_updates() -> None:
    transport = await Transport.of(Configuration(host="https://127.0.0.1:1"))
    shared = Kube(transport, qps=50, burst=100)
    shared.written = lambda resource, body: None
    own = shared.with_budget(5, 10)
    assert own.transport is shared.transport
    assert own.written is shared.written
    assert own.bucket is not shared.bucket
    assert (own.bucket.qps, own.bucket.burst) == (5, 10)
    await own.close()
    assert not transport.closed, "a budget's close leaves the shared connection open"
    await shared.close()
    assert transport.closed


async def test_no_answer_from_the_api_server_is_a_kube_error() -> None:
    """Callers handle one failure type: a refused connection is `Unreachable`, not an OSError."""
    kube = Kube(await Transport.of(Configuration(host="https://127.0.0.1:1")), qps=0)
    counted = REGISTRY.get_sample_value("sidecarless_api_errors_total", {"method": "GET", "code": "0"}) or 0
    try:
        with pytest.raises(Unreachable) as refused:
            await kube.get(PV, "pv-1")
        assert refused.value.status == 0
        assert REGISTRY.get_sample_value("sidecarless_api_errors_total", {"method": "GET", "code": "0"}) == counted + 1
        assert "GET /api/v1/persistentvolumes/pv-1" in str(refused.value)
        with pytest.raises(Unreachable):
            async for _ in kube.watch(PV, "1"):
                pass
    finally:
        await kube.close()


def test_a_name_from_a_users_object_is_one_path_segment() -> None:
    assert DRIVER_ENDPOINT.path("../../api/v1/secrets") == (
        "/apis/sidecarless.io/v1alpha1/driverendpoints/..%2F..%2Fapi%2Fv1%2Fsecrets"
    )
    assert SECRET.path("..", "kube-system") == "/api/v1/namespaces/kube-system/secrets/%2E%2E"
    assert SECRET.path("creds", "team-a") == "/api/v1/namespaces/team-a/secrets/creds"
    assert not valid_object_name("../x")
    assert not valid_object_name("e" * 254)
    assert valid_object_name("fast.csi-driver")
    assert shown("e" * 5000).endswith("...(5000 characters)'")
    assert len(shown("e" * 5000)) < 100
