"""When a Lease may be taken over."""

from datetime import UTC, datetime, timedelta

from sidecarless.leader import expired

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def a_lease(holder: str | None, renewed: datetime | None, duration: int = 15) -> dict[str, object]:
    spec: dict[str, object] = {"leaseDurationSeconds": duration}
    if holder:
        spec["holderIdentity"] = holder
    if renewed:
        spec["renewTime"] = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"spec": spec}


def test_a_fresh_lease_is_held() -> None:
    assert not expired(a_lease("a", NOW - timedelta(seconds=10)), NOW, 15)


def test_a_silent_holder_can_be_replaced() -> None:
    assert expired(a_lease("a", NOW - timedelta(seconds=16)), NOW, 15)


def test_a_released_or_empty_lease_is_free() -> None:
    assert expired(a_lease(None, NOW), NOW, 15)
    assert expired(a_lease("a", None), NOW, 15)


def test_the_lease_says_its_own_duration() -> None:
    assert not expired(a_lease("a", NOW - timedelta(seconds=20), duration=30), NOW, 15)
