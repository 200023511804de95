"""When a Lease may be taken over."""

import asyncio
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from sidecarless.kube import KubeError
from sidecarless.leader import LeaderElector, Timing
from sidecarless.leases import Observations

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def a_lease(holder: str | None, renewed: datetime | None, duration: int = 15) -> dict[str, object]:
    spec: dict[str, object] = {"leaseDurationSeconds": duration}
    if holder:
        spec["holderIdentity"] = holder
    if renewed:
        spec["renewTime"] = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"name": "l"}, "spec": spec}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_renewed_as_watched_is_held() -> None:
    clock = Clock()
    seen = Observations(clock)
    for second in range(0, 60, 2):
        clock.now += 2
        seen.see(a_lease("a", NOW + timedelta(seconds=second)))
        assert not seen.free(a_lease("a", NOW + timedelta(seconds=second)), 15)


def test_a_silent_holder_can_be_replaced_after_its_duration_as_watched() -> None:
    clock = Clock()
    seen = Observations(clock)
    lease = a_lease("a", NOW)
    seen.see(lease)
    clock.now += 15
    assert not seen.free(lease, 15)
    clock.now += 1
    assert seen.free(lease, 15)


def test_the_holders_clock_does_not_matter() -> None:
    """A renewTime an hour old (the holder's clock is behind) is not taken for silence."""
    clock = Clock()
    seen = Observations(clock)
    lease = a_lease("a", NOW - timedelta(hours=1))
    seen.see(lease)
    clock.now += 5
    assert not seen.free(lease, 15)


def test_a_released_or_empty_lease_is_free() -> None:
    seen = Observations(Clock())
    assert seen.free(a_lease(None, NOW), 15)


def test_the_lease_says_its_own_duration() -> None:
    clock = Clock()
    seen = Observations(clock)
    lease = a_lease("a", NOW, duration=30)
    seen.see(lease)
    clock.now += 20
    assert not seen.free(lease, 15)


class FlakyLeaseAPI:
    """An in-memory Lease API that can be made to fail, standing in for the API server."""

    def __init__(self) -> None:
        self.lease: dict[str, object] | None = None
        self.failing = False
        self.version = 0

    async def get_or_none(self, resource: object, name: str, namespace: str) -> dict[str, object] | None:
        self._maybe_fail()
        return self.lease

    async def create(self, resource: object, body: dict[str, object], namespace: str) -> dict[str, object]:
        self._maybe_fail()
        self.version += 1
        self.lease = {**body, "metadata": {"name": "l", "resourceVersion": str(self.version)}}
        return self.lease

    async def patch(self, resource: object, name: str, patch: dict[str, object], namespace: str) -> dict[str, object]:
        self._maybe_fail()
        assert self.lease is not None
        self.version += 1
        spec: dict[str, object] = {**self.lease["spec"], **patch["spec"]}  # type: ignore[dict-item]
        self.lease = {"spec": spec, "metadata": {"name": "l", "resourceVersion": str(self.version)}}
        return self.lease

    def _maybe_fail(self) -> None:
        if self.failing:
            raise KubeError(503, "ServiceUnavailable", "the API server is overloaded")


async def test_a_lost_lease_stops_the_controllers_but_not_the_process() -> None:
    api = FlakyLeaseAPI()
    events: list[str] = []

    async def started() -> None:
        events.append("started")

    async def stopped() -> None:
        events.append("stopped")

    elector = LeaderElector(
        api,  # type: ignore[arg-type]
        "ns",
        "me",
        on_started=started,
        on_stopped=stopped,
        timing=Timing(lease_duration=0.4, renew_deadline=0.2, retry_period=0.05),
    )
    elector.start()
    await asyncio.sleep(0.1)
    assert events == ["started"]
    api.failing = True  # renewals fail: past the renew deadline the controllers stop
    await asyncio.sleep(0.4)
    assert events == ["started", "stopped"]
    assert not elector.leading
    assert elector._task is not None
    assert not elector._task.done(), "still running, a candidate again"
    api.failing = False
    await asyncio.sleep(0.2)
    assert events == ["started", "stopped", "started"]
    await elector.stop()
    assert events[-1] == "stopped"


async def test_a_candidate_says_it_does_not_lead() -> None:
    """`leader_election_master_status` is 0 on a replica that never led, so that with no
    leader `max()` over the replicas is 0 rather than empty (the SidecarlessNoLeader alert)."""
    api = FlakyLeaseAPI()
    api.failing = True  # the Lease cannot be had

    async def nothing() -> None:
        pass

    elector = LeaderElector(
        api,  # type: ignore[arg-type]
        "ns",
        "me",
        on_started=nothing,
        on_stopped=nothing,
        name="never-held",
        timing=Timing(lease_duration=0.4, renew_deadline=0.2, retry_period=0.05),
    )
    elector.start()
    await asyncio.sleep(0.1)
    assert REGISTRY.get_sample_value("leader_election_master_status", {"name": "never-held"}) == 0
    api.failing = False
    await asyncio.sleep(0.1)
    assert REGISTRY.get_sample_value("leader_election_master_status", {"name": "never-held"}) == 1
    await elector.stop()
