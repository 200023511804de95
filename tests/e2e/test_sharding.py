"""Three sharded replicas and six DriverEndpoints on the real API server and mock driver: the
split is fair, each endpoint's status names its replica, and a replica killed mid-burst has
its endpoints served again within the Lease time, every claim Bound once, none made twice;
a replica that joins takes its share over without a gap, and one whose API access is cut
(in a network namespace of the test's) stops serving before its Leases can be taken."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from devcluster.partition import Partitionable
from sidecarless.kube import DRIVER_ENDPOINT, LEASE, PV, PVC, Kube, NotFound
from sidecarless.leases import parse_stamp
from sidecarless.shards import SHARD_LABEL, endpoint_lease_name
from tests.conftest import short_tmpdir
from tests.e2e.conftest import MOCK, claim, eventually
from tests.e2e.test_provisioner import backend_volume_ids

pytestmark = pytest.mark.cluster

ENDPOINTS = 6
REPLICAS = ("shard-a", "shard-b", "shard-c")
# The Lease is 15 s, a round 2 s: a dead replica's endpoints are taken within 15 + 2 x 2 s.
TAKEOVER_BOUND_SECONDS = 21.0
SHARDED = {"SIDECARLESS_LEADER_ELECTION": "true", "SIDECARLESS_SHARDING": "true", "SIDECARLESS_LOG_LEVEL": "INFO"}


@pytest.fixture(autouse=True)
async def no_leases_left(kube: Kube) -> AsyncIterator[None]:
    """A killed replica's Leases would stay for their garbage time: later tests start clean."""
    yield
    for lease in await kube.list(LEASE, "default", label_selector=SHARD_LABEL):
        await kube.delete(LEASE, lease["metadata"]["name"], "default")
    with contextlib.suppress(NotFound):
        await kube.delete(LEASE, "sidecarless-leader", "default")


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


# Shorter Leases than the defaults keep the test short: 8 s, renewed every 1 s, given up after 5 s.
FAST = {
    "SIDECARLESS_LEASE_DURATION_SECONDS": "8",
    "SIDECARLESS_RENEW_DEADLINE_SECONDS": "5",
    "SIDECARLESS_RETRY_PERIOD_SECONDS": "1",
}
LEASE_SECONDS, RENEW_DEADLINE, RETRY_PERIOD = 8.0, 5.0, 1.0
# A hand-over: the old holder stops (waiting up to a retry period for calls in flight), lets
# the Lease go, and the newcomer takes it in its next round. Waiting for the Lease to expire
# instead would leave the endpoint unserved for a whole Lease duration.
HANDOVER_GAP_BOUND = 2 * RETRY_PERIOD + 2.0
# Calls that only look (every replica probes every endpoint, to know its health when it takes it).
LOOKING = ("Probe", "GetPluginInfo", "GetPluginCapabilities", "ControllerGetCapabilities")
HELD_LINE = re.compile(r'^sidecarless_lease_held\{shard="([^"]+)"\} 1\.0$', re.MULTILINE)
CSI_COUNT_LINE = re.compile(r"^csi_sidecar_operations_seconds_count\{(.*)\} ([0-9.e+]+)$", re.MULTILINE)


def served(metrics: str) -> set[str]:
    return set(HELD_LINE.findall(metrics))


def working_calls(metrics: str) -> int:
    """CSI calls made, less those that only look."""
    total = 0
    for labels, count in CSI_COUNT_LINE.findall(metrics):
        method = re.search(r'method_name="[^"]*/([^"/]+)"', labels)
        if method is None or method.group(1) not in LOOKING:
            total += int(float(count))
    return total


@dataclass
class ServiceLog:
    """Who serves each endpoint, sampled from every replica's `sidecarless_lease_held`."""

    replicas: dict[str, OperatorProcess]
    endpoints: list[str]
    samples: list[tuple[float, dict[str, set[str]]]] = field(default_factory=list)  # (when, endpoint -> replicas)

    async def run(self) -> None:
        while True:
            found: dict[str, set[str]] = {e: set() for e in self.endpoints}
            for name, process in list(self.replicas.items()):
                with contextlib.suppress(OSError):
                    for endpoint in served(await asyncio.to_thread(process.metrics)) & set(found):
                        found[endpoint].add(name)
            self.samples.append((time.time(), found))
            await asyncio.sleep(0.1)

    def served_twice(self) -> list[str]:
        """Endpoints two replicas said they serve in two samples running (one sample may straddle a hand-over)."""
        twice = []
        for (when, before), (_, after) in zip(self.samples, self.samples[1:], strict=False):
            twice += [
                f"{e} at {when:.1f}: {sorted(before[e])}" for e in self.endpoints if len(before[e] & after[e]) > 1
            ]
        return twice

    def longest_gap(self, endpoint: str, since: float, until: float) -> float:
        longest, unserved_since = 0.0, None
        for when, found in self.samples:
            if not since <= when <= until:
                continue
            if found[endpoint]:
                if unserved_since is not None:
                    longest = max(longest, when - unserved_since)
                unserved_since = None
            elif unserved_since is None:
                unserved_since = when
        return longest

    def stopped(self, replica: str, endpoint: str, since: float) -> float | None:
        """When `replica` was first seen not serving `endpoint` after `since`."""
        return next((w for w, found in self.samples if w >= since and replica not in found[endpoint]), None)

    def taken(self, endpoint: str, since: float, by: set[str]) -> float | None:
        return next((w for w, found in self.samples if w >= since and found[endpoint] & by), None)


@contextlib.asynccontextmanager
async def sampling(log: ServiceLog) -> AsyncIterator[ServiceLog]:
    task = asyncio.create_task(log.run())
    try:
        yield log
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_replica_joins_without_a_gap_and_a_partitioned_one_stops_before_its_leases_expire(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    before = await backend_volume_ids(cluster.driver_addresses[MOCK])
    with Partitionable.create(cluster.server, short_tmpdir("slc-part-")) as room:
        await _join_and_partition(kube, namespace, cluster, exclusive, routed_class, room, before)


async def _join_and_partition(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
    room: Partitionable,
    before: set[str],
) -> None:
    replicas = {name: exclusive(SIDECARLESS_IDENTITY=name, **SHARDED, **FAST) for name in REPLICAS[:2]}
    routed = [await routed_class(MOCK) for _ in range(ENDPOINTS)]
    endpoints = [endpoint for endpoint, _ in routed]

    def split_is(wanted: list[int]) -> Callable[[], Awaitable[dict[str, str] | None]]:
        async def check() -> dict[str, str] | None:
            found = await holders(kube, endpoints)
            load = collections.Counter(found.values())
            return found if sorted(load.get(r, 0) for r in replicas) == wanted else None

        return check

    await eventually(split_is([3, 3]), what="three endpoints on each of two replicas", timeout=60)
    claims: list[str] = []

    async def make_claims(prefix: str) -> None:
        for i, (_, class_name) in enumerate(routed):
            claims.append(f"{prefix}-{i}")
            await kube.create(PVC, claim(claims[-1], class_name), namespace)

    async with sampling(ServiceLog(replicas, endpoints)) as service:
        # A third replica joins, API access through a relay the test can cut; work goes on meanwhile.
        joined_at = time.time()
        newcomer = "shard-c"
        replicas[newcomer] = exclusive(SIDECARLESS_IDENTITY=newcomer, netns=room.netns_path, **SHARDED, **FAST)
        await make_claims("join")
        split = await eventually(split_is([2, 2, 2]), what="two endpoints on each of three replicas", timeout=60)
        settled_at = time.time()
        gaps = {e: service.longest_gap(e, joined_at, settled_at) for e in endpoints}
        print(f"\njoin: longest time an endpoint went unserved {max(gaps.values()):.2f}s ({gaps})")
        assert max(gaps.values()) <= HANDOVER_GAP_BOUND, f"a hand-over left an endpoint unserved: {gaps}"

        # Cut the newcomer off the API server. It still reaches the driver, so only its own
        # deadline can stop its work: before the Leases expire, which is when others may take them.
        theirs = [e for e, r in split.items() if r == newcomer]
        calls_before = working_calls(replicas[newcomer].metrics())
        await asyncio.sleep(3 * RETRY_PERIOD)
        calls_at_cut = working_calls(replicas[newcomer].metrics())
        last_renewals = {}
        for endpoint in theirs:
            lease = await kube.get(LEASE, endpoint_lease_name(endpoint), "default")
            renewed = parse_stamp(lease["spec"].get("renewTime"))
            assert renewed is not None
            last_renewals[endpoint] = renewed.timestamp()
        room.cut()
        cut_at = time.time()
        await make_claims("cut")
        others = set(REPLICAS[:2])

        async def stopped_all() -> bool:
            return all(service.stopped(newcomer, e, cut_at) for e in theirs)

        await eventually(stopped_all, what="the cut replica to stop serving", timeout=30, interval=0.05)
        await asyncio.sleep(0.5)  # calls cancelled at the stop are counted as they end
        calls_at_stop = working_calls(replicas[newcomer].metrics())

        async def taken_over() -> bool:
            return all(service.taken(e, cut_at, others) for e in theirs)

        await eventually(taken_over, what="the cut replica's endpoints served by the others", timeout=60)
        for endpoint in theirs:
            stopped, taken = service.stopped(newcomer, endpoint, cut_at), service.taken(endpoint, cut_at, others)
            assert stopped is not None
            assert taken is not None
            # No other replica may take it before this (a renewal after it was read only adds time).
            expiry = last_renewals[endpoint] + LEASE_SECONDS
            print(
                f"partition: {endpoint} stopped {stopped - cut_at:.1f}s after the cut, Lease expiring at "
                f"+{expiry - cut_at:.1f}s, taken at +{taken - cut_at:.1f}s"
            )
            assert stopped < expiry, "the cut replica served on past its Lease"
            assert stopped < taken, "an endpoint was served by two replicas"
        # Cut off, it calls the driver for no endpoint (it may still probe them), though it did
        # all along before the cut (the ListVolumes reconcile of its attacher, every 2 s here).
        assert calls_at_cut > calls_before, "the replica made no periodic calls to stop"
        await asyncio.sleep(3 * RETRY_PERIOD)
        assert working_calls(replicas[newcomer].metrics()) == calls_at_stop, "the cut replica kept calling the driver"

        room.heal()
        healed_at = time.time()
        await eventually(split_is([2, 2, 2]), what="the healed replica serving its share again", timeout=60)
        print(f"heal: two endpoints each again {time.time() - healed_at:.1f}s after the heal")
        assert service.served_twice() == [], "an endpoint served by two replicas at once"

    async def all_bound() -> list[dict[str, Any]] | None:
        found = [c for c in await kube.list(PVC, namespace) if c["metadata"]["name"] in claims]
        done = [c for c in found if (c.get("status") or {}).get("phase") == "Bound"]
        return done if len(done) == len(claims) else None

    bound = await eventually(all_bound, what=f"all {len(claims)} claims Bound", timeout=120)
    volume_names = {c["spec"]["volumeName"] for c in bound}
    assert len(volume_names) == len(claims), "one PV per claim"
    handles = {(await kube.get(PV, name))["spec"]["csi"]["volumeHandle"] for name in volume_names}
    backend = await backend_volume_ids(cluster.driver_addresses[MOCK]) - before
    assert handles == backend, "every backend volume has its PV, and no other was made"
    for name in claims:
        await kube.delete(PVC, name, namespace)


async def test_replicas_started_with_different_sharding_settings_never_both_serve(
    kube: Kube,
    namespace: str,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    """A rolling change of `sharding.enabled`: a replica without sharding does not lead while a
    sharded one holds endpoints, leads once they are let go, and then no sharded replica takes one."""
    single = {**SHARDED, "SIDECARLESS_SHARDING": "false", **FAST}
    sharded = exclusive(SIDECARLESS_IDENTITY="shard-a", **SHARDED, **FAST)
    routed = [await routed_class(MOCK) for _ in range(2)]
    endpoints = [endpoint for endpoint, _ in routed]

    async def held_by(wanted: str) -> bool:
        return set((await holders(kube, endpoints)).values()) == {wanted}

    await eventually(lambda: held_by("shard-a"), what="shard-a serving both endpoints", timeout=30)
    leader = exclusive(SIDECARLESS_IDENTITY="single-b", **single)
    refusal = "not leading (Lease default/sidecarless-leader): sharded replicas (shard-a) hold DriverEndpoint Leases"

    async def refused() -> bool:
        return refusal in leader.log_text()

    await eventually(refused, what="the replica without sharding refusing to lead", timeout=20)
    assert 'leader_election_master_status{name="sidecarless-leader"} 0.0' in leader.metrics()
    assert served(leader.metrics()) == set(), "a replica that does not lead serves nothing"
    await kube.create(PVC, claim("while-sharded", routed[0][1]), namespace)
    await eventually(lambda: _bound(kube, namespace, "while-sharded"), what="the claim Bound by shard-a")

    # The sharded replica stops cleanly (its pod replaced): it lets its Leases go, the other leads.
    assert sharded.process is not None
    sharded.process.stop()
    stopped_at = time.monotonic()

    async def leading() -> bool:
        return served(leader.metrics()) == set(endpoints)

    await eventually(leading, what="the replica without sharding leading", timeout=30)
    print(f"\nmixed settings: the single leader served both endpoints {time.monotonic() - stopped_at:.1f}s after")
    await kube.create(PVC, claim("while-single", routed[1][1]), namespace)
    await eventually(lambda: _bound(kube, namespace, "while-single"), what="the claim Bound by the leader")

    # A sharded replica started now takes nothing while the single leader holds its Lease.
    late = exclusive(SIDECARLESS_IDENTITY="shard-c", **SHARDED, **FAST)
    blocked = "replica single-b holds the Lease sidecarless-leader (it runs without sharding"

    async def blocked_said() -> bool:
        return blocked in late.log_text()

    await eventually(blocked_said, what="the late sharded replica refusing to take endpoints", timeout=20)
    await asyncio.sleep(3 * RETRY_PERIOD)
    assert served(late.metrics()) == set()
    assert set((await holders(kube, endpoints)).values()) <= {"", "shard-a"}, "no endpoint Lease taken"
    for name in ("while-sharded", "while-single"):
        await kube.delete(PVC, name, namespace)


async def _bound(kube: Kube, namespace: str, name: str) -> bool:
    found = await kube.get_or_none(PVC, name, namespace)
    return bool(found and (found.get("status") or {}).get("phase") == "Bound")
