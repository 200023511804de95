"""Two replicas with leader election: the active one is killed during a burst of provisioning;
the standby takes the Lease and finishes, with no volume made twice and none leaked."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import PV, PVC, Kube
from sidecarless.leader import LEASE
from tests.e2e.conftest import MOCK, claim, eventually
from tests.e2e.test_provisioner import backend_volume_ids

pytestmark = pytest.mark.cluster

CLAIMS = 30
LEASE_NAME = "sidecarless-leader"
# The Lease is 15 s; a standby tries every 2 s: it must lead within 15 + 2 s of the last renewal.
TAKEOVER_BOUND_SECONDS = 20.0


async def holder(kube: Kube) -> str:
    lease = await kube.get_or_none(LEASE, LEASE_NAME, "default")
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


async def test_the_standby_takes_over_a_killed_leader(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    election = {"SIDECARLESS_LEADER_ELECTION": "true", "SIDECARLESS_LOG_LEVEL": "INFO"}
    active = exclusive(SIDECARLESS_IDENTITY="replica-a", **election)

    async def a_leads() -> bool:
        return await holder(kube) == "replica-a"

    await eventually(a_leads, what="replica-a holding the Lease", timeout=30)
    exclusive(SIDECARLESS_IDENTITY="replica-b", **election)
    _, class_name = await routed_class(MOCK)
    for index in range(CLAIMS):
        await kube.create(PVC, claim(f"data-{index}", class_name), namespace)

    async def some_bound() -> bool:
        claims = await kube.list(PVC, namespace)
        return sum(1 for c in claims if (c.get("status") or {}).get("phase") == "Bound") >= 3

    await eventually(some_bound, what="a few claims Bound by replica-a", timeout=60, interval=0.05)
    assert active.process is not None
    os.kill(active.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    async def b_leads() -> bool:
        return await holder(kube) == "replica-b"

    await eventually(b_leads, what="replica-b holding the Lease", timeout=60, interval=0.2)
    takeover = time.monotonic() - killed_at

    async def all_bound() -> list[dict[str, Any]] | None:
        claims = await kube.list(PVC, namespace)
        done = [c for c in claims if (c.get("status") or {}).get("phase") == "Bound"]
        return claims if len(done) == CLAIMS else None

    claims = await eventually(all_bound, what=f"all {CLAIMS} claims Bound", timeout=120)
    converged = time.monotonic() - killed_at
    print(
        f"\nfailover: replica-b led {takeover:.1f}s after the kill; all {CLAIMS} claims Bound {converged:.1f}s after it"
    )
    assert takeover <= TAKEOVER_BOUND_SECONDS

    volume_names = {c["spec"]["volumeName"] for c in claims}
    assert len(volume_names) == CLAIMS, "one PV per claim"
    handles = {(await kube.get(PV, name))["spec"]["csi"]["volumeHandle"] for name in volume_names}
    backend = await backend_volume_ids(cluster.driver_addresses[MOCK])
    assert handles <= backend
    created = [c for c in cluster.driver_calls(MOCK, "CreateVolume") if c["Request"]["name"] in volume_names]
    assert len({c["Response"]["volume"]["volume_id"] for c in created if c.get("Response")}) == CLAIMS, (
        "each claim's volume made once in the backend, however often CreateVolume was asked"
    )
