"""A driver that fails: every gRPC code, an answer lost after the volume was made, a hung
driver, a driver down for a while. Claims retry with backoff, users see the code, the
DriverEndpoint says what is wrong and recovers by itself, and the backend ends with one
volume per claim.

The mock's JavaScript hooks (csi-test's hooks-howto.md) fail the first CreateVolume of each
driver instance with the code under test, at its start (nothing made) or at its end (the
volume made, the answer lost).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator

import grpc
import pytest

from csi_client import CSIClient, csi
from csi_client.errors import GO_CODE_NAMES
from devcluster import DriverSpec, LocalCluster
from sidecarless.kube import EVENT, PV, PVC, Kube
from tests.e2e.conftest import claim, condition, eventually, wait_ready
from tests.e2e.test_provisioner import bound_claim, event_reasons

pytestmark = pytest.mark.cluster

# What external-provisioner (and Sidecarless) make of each code from CreateVolume.
IN_PROGRESS = {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
}
INFEASIBLE = {grpc.StatusCode.INVALID_ARGUMENT}  # retried after 5 minutes, not with backoff
# The CSI client retries UNAVAILABLE (a connection that failed) at once, a few times, before
# anything is told: the claim is simply provisioned.
RETRIED_AT_ONCE = {grpc.StatusCode.UNAVAILABLE}
CODES = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]
JS_NAMES = {c: GO_CODE_NAMES[c].upper() for c in CODES}  # the hooks' constants: CANCELED, INVALIDARGUMENT, ...


def first_call_fails(code: grpc.StatusCode, at: str = "createVolumeStart") -> dict[str, str]:
    return {"globals": "calls = 0;", at: f"calls = calls + 1; if (calls == 1) {{ {JS_NAMES[code]}; }} else {{ OK; }}"}


async def volumes_named(address: str) -> dict[str, int]:
    """How many volumes the driver holds for each CreateVolume name (the mock's own aside)."""
    async with CSIClient(address) as client:
        listed = await client.list_volumes(csi.ListVolumesRequest())
    counts: dict[str, int] = {}
    for entry in listed.entries:
        name = entry.volume.volume_context.get("name", entry.volume.volume_id)
        if name.startswith("pvc-"):
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.fixture
def driver_with(cluster: LocalCluster, unique_name: Callable[[str], str]) -> Iterator[Callable[..., str]]:
    """Start a mock driver with hooks; each is removed after the test."""
    started: list[str] = []

    def start(hooks: dict[str, str]) -> str:
        name = f"{unique_name('f')[:40]}.csi.sidecarless.dev"
        cluster.add_driver(DriverSpec(name, hooks=hooks))
        started.append(name)
        return name

    yield start
    for name in started:
        cluster.remove_driver(name)


@pytest.mark.parametrize("code", CODES, ids=lambda c: GO_CODE_NAMES[c])
async def test_each_grpc_code_from_create_volume(
    code: grpc.StatusCode,
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    driver_with: Callable[..., str],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    driver = driver_with(first_call_fails(code))
    _, class_name = await routed_class(driver)
    created = await kube.create(PVC, claim("data", class_name), namespace)

    async def told() -> str | None:
        messages = (await event_reasons(kube, namespace, "data")).get("ProvisioningFailed", [])
        return next((m for m in messages if f"code = {GO_CODE_NAMES[code]}" in m), None)

    if code in RETRIED_AT_ONCE:
        await bound_claim(kube, namespace, "data")
        assert not await told()
        assert len(cluster.driver_calls(driver, "CreateVolume")) == 2
    else:
        await eventually(told, what=f"ProvisioningFailed with code {GO_CODE_NAMES[code]}")
    if code in INFEASIBLE:
        await asyncio.sleep(3)
        assert (await kube.get(PVC, "data", namespace))["status"]["phase"] == "Pending", "not retried with backoff"
        assert len(cluster.driver_calls(driver, "CreateVolume")) == 1
        return
    await bound_claim(kube, namespace, "data")
    name = f"pvc-{created['metadata']['uid']}"
    assert (await volumes_named(cluster.driver_addresses[driver])).get(name) == 1


@pytest.mark.parametrize("code", [c for c in CODES if c in IN_PROGRESS], ids=lambda c: GO_CODE_NAMES[c])
async def test_volume_made_but_the_answer_lost(
    code: grpc.StatusCode,
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    driver_with: Callable[..., str],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    """The driver made the volume and then failed the call: the retry must find it, not make another."""
    driver = driver_with(first_call_fails(code, at="createVolumeEnd"))
    _, class_name = await routed_class(driver)
    created = await kube.create(PVC, claim("data", class_name), namespace)
    await bound_claim(kube, namespace, "data")
    name = f"pvc-{created['metadata']['uid']}"
    assert len(cluster.driver_calls(driver, "CreateVolume")) == 2
    assert await volumes_named(cluster.driver_addresses[driver]) == {name: 1}
    assert (await kube.get(PV, name))["spec"]["csi"]["volumeHandle"]


async def test_hung_driver(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    driver_with: Callable[..., str],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    """Frozen (SIGSTOP): calls pass their 2 s deadline, may still be in progress, and are
    retried; when the driver wakes it handles the old calls and the retries, and each claim
    still has exactly one volume."""
    driver = driver_with({})
    endpoint = await make_endpoint(driver, timeouts={"operation": "2s", "probe": "1s", "probeInterval": "1s"})
    await wait_ready(kube, endpoint)
    class_name = await make_class(endpoint, provisioner=driver, reclaimPolicy="Delete")
    cluster.pause_driver(driver)
    try:
        for i in range(5):
            await kube.create(PVC, claim(f"c{i}", class_name), namespace)

        async def timed_out() -> str | None:
            messages = (await event_reasons(kube, namespace, "c0")).get("ProvisioningFailed", [])
            return next((m for m in messages if "DeadlineExceeded" in m or "not ready" in m), None)

        await eventually(timed_out, what="a deadline or not-ready event", timeout=30)
        await asyncio.sleep(5)
    finally:
        cluster.resume_driver(driver)
    claims = [await bound_claim(kube, namespace, f"c{i}", timeout=90) for i in range(5)]
    held = await volumes_named(cluster.driver_addresses[driver])
    for current in claims:
        assert held.get(f"pvc-{current['metadata']['uid']}") == 1, held
    assert sum(held.values()) == 5, held


DOWN_SECONDS = float(os.environ.get("SIDECARLESS_DRIVER_DOWN_SECONDS", "60"))


async def test_driver_down_for_a_minute(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    driver_with: Callable[..., str],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    driver = driver_with({})
    endpoint = await make_endpoint(driver, timeouts={"probe": "1s", "probeInterval": "1s"})
    await wait_ready(kube, endpoint)
    class_name = await make_class(endpoint, provisioner=driver, reclaimPolicy="Delete")
    cluster.stop_driver(driver)
    for i in range(10):
        await kube.create(PVC, claim(f"c{i}", class_name), namespace)
    down = await wait_ready(kube, endpoint, status="False", reason="Unreachable", timeout=30)
    assert condition(down, "Connected")["status"] == "False"
    await asyncio.sleep(DOWN_SECONDS)

    # Each claim was told, and retried with backoff, not once a second.
    events = [e for e in await kube.list(EVENT, namespace) if e["reason"] == "ProvisioningFailed"]
    assert {e["involvedObject"]["name"] for e in events} == {f"c{i}" for i in range(10)}
    attempts = max(e.get("count", 1) for e in events)
    assert attempts <= 2 + DOWN_SECONDS / 8, f"{attempts} attempts in {DOWN_SECONDS:.0f} s"
    # "not ready" once the probe saw it down; "Unavailable" from a call made just before.
    assert all("not ready" in e["message"] or "Unavailable" in e["message"] for e in events), events

    cluster.restart_driver(driver)
    await wait_ready(kube, endpoint, timeout=30)  # by itself: nobody touched the endpoint
    claims = [await bound_claim(kube, namespace, f"c{i}", timeout=120) for i in range(10)]
    held = await volumes_named(cluster.driver_addresses[driver])
    for current in claims:
        assert held.get(f"pvc-{current['metadata']['uid']}") == 1, held
