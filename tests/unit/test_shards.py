"""Sharded leadership on a fake API in simulated time: the split, hand-overs, deaths, partitions
and hand edits, with one invariant watched throughout: no key is held by two replicas at once."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from sidecarless import kube as k
from sidecarless.leases import LEASE, Timing, parse_stamp, stamp
from sidecarless.shards import SHARED, Replica, Shards, assign, endpoint_lease_name
from tests.unit.fakeworld import FakeKube, simulate


def held_series(shard: str) -> float | None:
    return REGISTRY.get_sample_value("sidecarless_lease_held", {"shard": shard})


ENDPOINTS = [f"ep-{i}" for i in range(6)]
TIMING = Timing(lease_duration=15, renew_deadline=10, retry_period=2)
NAMESPACE = "sidecarless-system"


def replicas(*names: str, endpoints: frozenset[str] | None = None) -> list[Replica]:
    return [Replica(name, endpoints, frozenset({SHARED})) for name in names]


# --- the rule --------------------------------------------------------------------------


def test_six_endpoints_on_three_replicas_are_two_each() -> None:
    split = assign([*ENDPOINTS, SHARED], replicas("a", "b", "c"))
    load = collections.Counter(owner for key, owner in split.items() if key != SHARED)
    assert sorted(load.values()) == [2, 2, 2]
    assert SHARED in split


def test_loads_differ_by_one_at_most_whatever_the_counts() -> None:
    for endpoints in range(0, 12):
        for count in range(1, 6):
            names = [f"r{i}" for i in range(count)]
            split = assign([f"e{i}" for i in range(endpoints)], replicas(*names))
            load = collections.Counter(split.values())
            counts = [load.get(name, 0) for name in names]
            assert max(counts) - min(counts) <= 1, (endpoints, count, counts)
            assert sum(counts) == endpoints


def test_every_replica_computes_the_same_split() -> None:
    one = assign(ENDPOINTS, replicas("a", "b", "c"))
    other = assign(reversed(ENDPOINTS), list(reversed(replicas("a", "b", "c"))))
    assert one == other


def test_a_replica_joining_moves_a_share_not_everything() -> None:
    endpoints = [f"e{i}" for i in range(30)]
    before = assign(endpoints, replicas("a", "b", "c"))
    after = assign(endpoints, replicas("a", "b", "c", "d"))
    moved = sum(1 for e in endpoints if before[e] != after[e])
    assert 7 <= moved <= 15, moved  # d takes its 7 or 8; the bound shuffles a few more at most


def test_a_replica_serves_only_the_endpoints_it_may() -> None:
    limited = Replica("a", frozenset({"ep-0"}), frozenset())
    split = assign(ENDPOINTS, [limited, *replicas("b")])
    assert split["ep-0"] in ("a", "b")
    assert all(owner == "b" for key, owner in split.items() if key != "ep-0")


def test_lease_names_are_valid_for_any_endpoint_name() -> None:
    assert endpoint_lease_name("fast") == "sidecarless-endpoint-fast"
    long = endpoint_lease_name("x" * 253)
    assert len(long) <= 253
    assert long != endpoint_lease_name("x" * 252)
    assert endpoint_lease_name(SHARED) == "sidecarless-shared"


# --- the replicas ----------------------------------------------------------------------


class ReplicaAPI(k.Kube):
    """One replica's view of the shared fake API server; `cut` makes every request hang;
    `skew` shifts the times it writes into Leases, as a replica whose clock is off would."""

    def __init__(self, api: FakeKube, skew: float = 0.0) -> None:
        self.api = api
        self.transport = None  # type: ignore[assignment]
        self.written = None
        self.cut = False
        self.skew = skew

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self.cut:
            await asyncio.Event().wait()  # a partition: no answer, ever
        spec = (kwargs.get("body") or {}).get("spec") if self.skew else None
        for field in ("renewTime", "acquireTime"):
            if isinstance(spec, dict) and spec.get(field):
                moment = parse_stamp(spec[field])
                assert moment is not None
                spec[field] = stamp(moment + timedelta(seconds=self.skew))
        return await self.api.request(method, path, **kwargs)


class Cluster:
    def __init__(self, endpoints: list[str]) -> None:
        self.api = FakeKube()
        self.endpoints = endpoints
        self.replicas: dict[str, Shards] = {}
        self.views: dict[str, ReplicaAPI] = {}
        self.log: list[tuple[float, str, str, str]] = []  # (time, replica, acquired/lost, key)
        self.double: list[tuple[float, str, list[str]]] = []
        self._watch: asyncio.Task[None] | None = None

    def start(self, name: str, *, skew: float = 0.0, **options: Any) -> Shards:
        view = self.views[name] = ReplicaAPI(self.api, skew)
        loop = asyncio.get_running_loop()

        def note(what: str) -> Callable[..., Awaitable[None]]:
            async def record(key: str, *_: Any) -> None:
                self.log.append((loop.time(), name, what, key))

            return record

        shards = Shards(
            view,
            NAMESPACE,
            name,
            endpoints=lambda: self.endpoints,
            singletons=[SHARED],
            on_acquired=note("acquired"),
            on_lost=note("lost"),
            timing=options.pop("timing", TIMING),
            clock=loop.time,
            **options,
        )
        self.replicas[name] = shards
        shards.start()
        if self._watch is None:
            self._watch = asyncio.create_task(self._invariant())
        return shards

    async def settled(self, *names: str) -> None:
        """Start these replicas and give them 30 s to share the endpoints out."""
        for name in names:
            self.start(name)
        await asyncio.sleep(30)

    async def crash(self, name: str) -> None:
        """SIGKILL: its tasks end, nothing is released."""
        shards = self.replicas.pop(name)
        for task in shards._tasks:
            task.cancel()
        await asyncio.gather(*shards._tasks, return_exceptions=True)

    async def _invariant(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            held = {key for shards in self.replicas.values() for key in shards.held()}
            for key in {*self.endpoints, SHARED} | held:  # gone endpoints too, while anyone holds them
                holders = [n for n, s in self.replicas.items() if s.holds(key)]
                if len(holders) > 1:
                    self.double.append((loop.time(), key, holders))
            await asyncio.sleep(0.05)

    def holders(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {key: [] for key in [*self.endpoints, SHARED]}
        for name, shards in self.replicas.items():
            for key in shards.held():
                if shards.holds(key):
                    found.setdefault(key, []).append(name)
        return found

    def loads(self) -> dict[str, int]:
        return {name: sum(1 for k in s.held() if k != SHARED) for name, s in self.replicas.items()}

    async def stop(self) -> None:
        for shards in list(self.replicas.values()):
            await shards.stop()
        if self._watch is not None:
            self._watch.cancel()


def run(scenario: Callable[[Cluster], Awaitable[None]]) -> None:
    async def main() -> None:
        cluster = Cluster(list(ENDPOINTS))
        try:
            await scenario(cluster)
        finally:
            await cluster.stop()
        assert not cluster.double, f"held twice: {cluster.double[:5]}"

    simulate(main)


def test_three_replicas_share_six_endpoints_fairly() -> None:
    async def scenario(cluster: Cluster) -> None:
        await cluster.settled("a", "b", "c")
        assert all(len(holders) == 1 for holders in cluster.holders().values()), cluster.holders()
        assert sorted(cluster.loads().values()) == [2, 2, 2]
        # Leases: one per endpoint, the shared one, and one per replica.
        names = {lease["metadata"]["name"] for lease in cluster.api.objects["leases"].values()}
        assert {endpoint_lease_name(e) for e in ENDPOINTS} | {"sidecarless-shared"} <= names
        assert {"sidecarless-replica-a", "sidecarless-replica-b", "sidecarless-replica-c"} <= names

    run(scenario)


def test_a_killed_replicas_endpoints_move_within_the_lease_time() -> None:
    async def scenario(cluster: Cluster) -> None:
        await cluster.settled("a", "b", "c")
        loop = asyncio.get_running_loop()
        lost = [key for key, holders in cluster.holders().items() if holders == ["c"]]
        assert lost
        killed_at = loop.time()
        await cluster.crash("c")
        await asyncio.sleep(30)
        assert all(len(holders) == 1 for holders in cluster.holders().values()), cluster.holders()
        assert sorted(cluster.loads().values()) == [3, 3]
        taken = [t for t, _, what, key in cluster.log if what == "acquired" and key in lost and t > killed_at]
        # Free once unchanged for the lease duration as watched, taken at the next round.
        assert max(taken) - killed_at <= TIMING.lease_duration + 2 * TIMING.retry_period + 0.5

    run(scenario)


def test_a_replica_added_takes_its_share_without_a_gap() -> None:
    async def scenario(cluster: Cluster) -> None:
        await cluster.settled("a", "b")
        assert sorted(cluster.loads().values()) == [3, 3]
        cluster.start("c")
        await asyncio.sleep(30)
        assert sorted(cluster.loads().values()) == [2, 2, 2]
        moved = [key for key, holders in cluster.holders().items() if holders == ["c"] and key != SHARED]
        for key in moved:
            lost = max(t for t, _, what, k in cluster.log if what == "lost" and k == key)
            taken = max(t for t, who, what, k in cluster.log if what == "acquired" and k == key and who == "c")
            # The old holder stops, lets go; the newcomer takes it at its next round.
            assert 0 < taken - lost <= 2 * TIMING.retry_period + 0.5, (key, lost, taken)

    run(scenario)


def test_a_partitioned_replica_stops_before_its_leases_can_be_taken() -> None:
    async def scenario(cluster: Cluster) -> None:
        await cluster.settled("a", "b", "c")
        loop = asyncio.get_running_loop()
        mine = [key for key, holders in cluster.holders().items() if holders == ["c"]]
        cut_at = loop.time()
        cluster.views["c"].cut = True
        await asyncio.sleep(40)
        stopped = [t for t, who, what, key in cluster.log if who == "c" and what == "lost" and t > cut_at]
        taken = [
            t for t, who, what, key in cluster.log if who != "c" and what == "acquired" and key in mine and t > cut_at
        ]
        assert len(stopped) == len(mine)
        assert max(stopped) - cut_at <= TIMING.renew_deadline + 0.5
        assert min(taken) > max(stopped)
        assert not any(cluster.replicas["c"].holds(key) for key in mine)
        await cluster.crash("c")  # its stop() could not reach the API either

    run(scenario)


def test_a_lease_edited_by_hand_is_let_go_and_taken_after_its_duration() -> None:
    async def scenario(cluster: Cluster) -> None:
        await cluster.settled("a", "b", "c")
        loop = asyncio.get_running_loop()
        key, holders = next((k, h) for k, h in cluster.holders().items() if k != SHARED)
        edited_at = loop.time()
        cluster.api.edit(LEASE, f"{NAMESPACE}/{endpoint_lease_name(key)}", {"spec": {"holderIdentity": "intruder"}})
        await asyncio.sleep(TIMING.retry_period + 0.5)
        assert not cluster.replicas[holders[0]].holds(key), "let go at its next round"
        await asyncio.sleep(30)
        assert len(cluster.holders()[key]) == 1
        taken = max(t for t, _, what, k in cluster.log if what == "acquired" and k == key)
        assert taken - edited_at <= TIMING.lease_duration + 2 * TIMING.retry_period + 0.5

    run(scenario)


def test_no_lease_is_taken_while_a_replica_without_sharding_leads() -> None:
    async def scenario(cluster: Cluster) -> None:
        cluster.api.put(
            LEASE,
            {
                "metadata": {"name": "sidecarless-leader", "namespace": NAMESPACE},
                "spec": {"holderIdentity": "old-leader", "leaseDurationSeconds": 15},
            },
        )

        async def renew_forever() -> None:
            beat = 0
            while True:
                beat += 1
                cluster.api.edit(LEASE, f"{NAMESPACE}/sidecarless-leader", {"spec": {"renewTime": str(beat)}})
                await asyncio.sleep(2)

        leader = asyncio.create_task(renew_forever())
        cluster.start("a")
        await asyncio.sleep(30)
        assert cluster.replicas["a"].held() == []
        leader.cancel()  # the old leader stops: its Lease expires, the shards take over
        await asyncio.sleep(30)
        assert len(cluster.replicas["a"].held()) == len(ENDPOINTS) + 1

    run(scenario)


def test_two_processes_with_one_identity_do_not_both_serve(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(cluster: Cluster) -> None:
        cluster.start("a")
        await asyncio.sleep(20)
        first = cluster.replicas["a"]
        twin = Shards(
            ReplicaAPI(cluster.api),
            NAMESPACE,
            "a",
            endpoints=lambda: cluster.endpoints,
            singletons=[SHARED],
            on_acquired=_nothing,
            on_lost=_nothing,
            timing=TIMING,
            clock=asyncio.get_running_loop().time,
        )
        twin.start()
        await asyncio.sleep(30)
        assert twin.held() == []
        assert len(first.held()) == len(ENDPOINTS) + 1
        await twin.stop()

    run(scenario)
    assert "another process runs with this replica's identity 'a'" in caplog.text
    assert "give every replica its own identity (POD_NAME)" in caplog.text


def test_a_replica_whose_clock_is_off_is_logged_and_breaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(cluster: Cluster) -> None:
        cluster.start("a")
        cluster.start("b", skew=60.0)  # its Leases say it renewed a minute from now
        await asyncio.sleep(30)
        assert sorted(cluster.loads().values()) == [3, 3]
        assert all(len(holders) == 1 for holders in cluster.holders().values()), cluster.holders()
        await cluster.crash("b")  # judged by a's own clock: free 15 s after, not a minute later
        await asyncio.sleep(TIMING.lease_duration + 2 * TIMING.retry_period + 0.5)
        assert cluster.loads() == {"a": 6}

    with caplog.at_level(logging.ERROR, logger="sidecarless.shards"):
        run(scenario)
    assert "replica b's clock is +60 s off this one's" in caplog.text
    assert "check NTP" in caplog.text


def test_replicas_with_different_lease_timing_say_so(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(cluster: Cluster) -> None:
        cluster.start("a")
        cluster.start("b", timing=Timing(lease_duration=8, renew_deadline=5, retry_period=1))
        await asyncio.sleep(30)
        assert sorted(cluster.loads().values()) == [3, 3]

    with caplog.at_level(logging.ERROR, logger="sidecarless.shards"):
        run(scenario)
    assert "replica b runs with lease timing 8/5/1, this one with 15/10/2" in caplog.text
    assert "replica a runs with lease timing 15/10/2, this one with 8/5/1" in caplog.text


def test_a_gone_endpoints_lease_is_let_go() -> None:
    async def scenario(cluster: Cluster) -> None:
        cluster.start("a")
        await asyncio.sleep(20)
        cluster.endpoints.remove("ep-0")
        await asyncio.sleep(5)
        assert "ep-0" not in cluster.replicas["a"].held()
        assert cluster.api.get_object(LEASE, f"{NAMESPACE}/{endpoint_lease_name('ep-0')}") is None
        # No series left at 0 for it, which would say that nobody serves it (an alert).
        assert held_series("ep-0") is None
        assert held_series("ep-1") == 1

    run(scenario)


def test_an_endpoint_renamed_during_a_hand_over_is_served_under_its_new_name_once() -> None:
    """DriverEndpoints cannot be renamed: the old one deleted and a new one made, while a
    replica joins and endpoints are being handed over."""

    async def scenario(cluster: Cluster) -> None:
        await cluster.settled("a", "b")
        cluster.start("c")
        await asyncio.sleep(TIMING.retry_period)  # the hand-overs have begun
        cluster.endpoints[cluster.endpoints.index("ep-0")] = "ep-0-renamed"
        loop = asyncio.get_running_loop()
        renamed_at = loop.time()
        await asyncio.sleep(30)
        holders = cluster.holders()
        assert len(holders["ep-0-renamed"]) == 1, holders
        assert holders.get("ep-0", []) == []
        assert cluster.api.get_object(LEASE, f"{NAMESPACE}/{endpoint_lease_name('ep-0')}") is None
        assert sorted(cluster.loads().values()) == [2, 2, 2]
        taken = min(t for t, _, what, key in cluster.log if what == "acquired" and key == "ep-0-renamed")
        assert taken - renamed_at <= 2 * TIMING.retry_period + 0.5  # a new endpoint's Lease is free

    run(scenario)


async def _nothing(*_: Any) -> None:
    pass


@pytest.mark.parametrize("bad", [Timing(15, 15, 2), Timing(15, 10, 10), Timing(10, 15, 2)])
def test_lease_timing_must_be_ordered(bad: Timing) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        bad.check()
