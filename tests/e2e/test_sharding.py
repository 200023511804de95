"""Three sharded replicas and six DriverEndpoints on the real API server and mock driver: the
split is fair, each endpoint's status names its replica, and a replica killed mid-burst has
its endpoints served again within the Lease time, every claim Bound once, none made twice."""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import DRIVER_ENDPOINT, LEASE, PV, PVC, Kube
from sidecarless.shards import SHARD_LABEL, endpoint_lease_name
from tests.e2e.conftest import MOCK, claim, eventually
from tests.e2e.test_provisioner import backend_volume_ids

pytestmark = pytest.mark.cluster

ENDPOINTS = 6
REPLICAS = ("shard-a", "shard-b", "shard-c")
# The Lease is 15 s, a round 2 s: a dead replica's endpoints are taken within 15 + 2 x 2 s.
TAKEOVER_BOUND_SECONDS = 21.0
SHARDED = {"SIDECARLESS_LEADER_ELECTION": "true", "SIDECARLESS_SHARDING": "true", "SIDECARLESS_LOG_LEVEL": "INFO"}


async def holders(kube: Kube, endpoints: list[str]) -> dict[str, str]:
    found = {}
    for endpoint in endpoints:
        lease = await kube.get_or_none(LEASE, endpoint_lease_name(endpoint), "default")
        found[endpoint] = str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")
    return found


async def test_three_replicas_share_six_endpoints_and_survive_a_kill(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    before = await backend_volume_ids(cluster.driver_addresses[MOCK])
    try:
        await _run(kube, namespace, cluster, exclusive, routed_class, before)
    finally:
        # The killed replica's Lease would stay for its garbage time: later tests start clean.
        for lease in await kube.list(LEASE, "default", label_selector=SHARD_LABEL):
            await kube.delete(LEASE, lease["metadata"]["name"], "default")


async def _run(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
    before: set[str],
) -> None:
    replicas = {name: exclusive(SIDECARLESS_IDENTITY=name, **SHARDED) for name in REPLICAS}
    routed = [await routed_class(MOCK) for _ in range(ENDPOINTS)]
    endpoints = [endpoint for endpoint, _ in routed]

    async def fair() -> dict[str, str] | None:
        found = await holders(kube, endpoints)
        load = collections.Counter(found.values())
        return found if sorted(load.get(r, 0) for r in REPLICAS) == [2, 2, 2] else None

    split = await eventually(fair, what="two endpoints per replica", timeout=60)

    async def statuses_say_who() -> bool:
        for endpoint, replica in split.items():
            status = (await kube.get(DRIVER_ENDPOINT, endpoint)).get("status") or {}
            if status.get("servedBy") != replica:
                return False
        return True

    await eventually(statuses_say_who, what="status.servedBy naming each endpoint's holder", timeout=30)

    claims = [(f"c{i}-{j}", class_name) for i, (_, class_name) in enumerate(routed) for j in range(3)]
    for name, class_name in claims[: len(claims) // 2]:
        await kube.create(PVC, claim(name, class_name), namespace)
    victim = "shard-c"
    process = replicas[victim].process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for name, class_name in claims[len(claims) // 2 :]:
        await kube.create(PVC, claim(name, class_name), namespace)
    orphaned = [endpoint for endpoint, replica in split.items() if replica == victim]

    async def taken_over() -> dict[str, str] | None:
        found = await holders(kube, endpoints)
        return found if all(found[e] not in ("", victim) for e in orphaned) else None

    await eventually(taken_over, what="the killed replica's endpoints taken", timeout=60, interval=0.2)
    takeover = time.monotonic() - killed_at

    async def even() -> bool:  # the survivors may still hand one over between them, a Lease free a moment
        found = await holders(kube, endpoints)
        return sorted(collections.Counter(found.values()).items()) == [("shard-a", 3), ("shard-b", 3)]

    await eventually(even, what="three endpoints each on the two survivors", timeout=30)

    async def all_bound() -> list[dict[str, Any]] | None:
        found = await kube.list(PVC, namespace)
        done = [c for c in found if (c.get("status") or {}).get("phase") == "Bound"]
        return found if len(done) == len(claims) else None

    bound = await eventually(all_bound, what=f"all {len(claims)} claims Bound", timeout=120)
    print(f"\nsharding: the killed replica's {len(orphaned)} endpoints served again {takeover:.1f}s after the kill")
    assert takeover <= TAKEOVER_BOUND_SECONDS

    volume_names = {c["spec"]["volumeName"] for c in bound}
    assert len(volume_names) == len(claims), "one PV per claim"
    handles = {(await kube.get(PV, name))["spec"]["csi"]["volumeHandle"] for name in volume_names}
    backend = await backend_volume_ids(cluster.driver_addresses[MOCK]) - before
    assert handles == backend, "every backend volume has its PV, and no other was made"
    for name, _ in claims:
        await kube.delete(PVC, name, namespace)
