"""Kubernetes Leases (coordination.k8s.io), as client-go's leaderelection uses them: one place
for how a Lease is read, taken, renewed and let go, shared by the single leader
(:mod:`sidecarless.leader`) and the shards (:mod:`sidecarless.shards`).

A Lease is free when nobody holds it, or when its record has not changed for its duration
*as this process watched it* (client-go's observedTime): the holder's `renewTime` is never
compared with this machine's clock, so a replica whose clock is off can neither make the
others take its Leases early nor hold theirs late. It only costs a newcomer one Lease
duration of watching before it takes a Lease whose holder died before it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sidecarless.config import Timing
from sidecarless.kube import LEASE, Conflict, Kube, NotFound

Body = dict[str, Any]

__all__ = ["LEASE", "Observations", "Timing"]

# A clock further off than this from the API server's holders is logged (it breaks nothing).
CLOCK_SKEW_WARNING_SECONDS = 5.0


def now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(text: str | None) -> datetime | None:
    if not text:
        return None
    for layout in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, layout).replace(tzinfo=UTC)
    return None


def holder(lease: Body | None) -> str:
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def lease_name(prefix: str, key: str) -> str:
    """A valid Lease name for `key` (an endpoint's or a replica's name): readable when it fits,
    else cut and told apart by a hash."""
    clean = re.sub(r"[^a-z0-9.-]+", "-", key.lower()).strip("-.") or "x"
    name = f"{prefix}{clean}"
    if len(name) <= 253 and clean == key:
        return name
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{prefix}{clean[: 253 - len(prefix) - 11]}-{digest}"


def _record(lease: Body) -> tuple[Any, ...]:
    spec = lease.get("spec") or {}
    return (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"), spec.get("leaseTransitions"))


class Observations:
    """When each Lease's record last changed, on this process's monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, tuple[tuple[Any, ...], float]] = {}

    def see(self, lease: Body) -> bool:
        """Note the Lease as read now; True when its record changed since the last look."""
        name = lease["metadata"]["name"]
        record = _record(lease)
        previous = self._seen.get(name)
        if previous is not None and previous[0] == record:
            return False
        self._seen[name] = (record, self._clock())
        return True

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)

    def unchanged_for(self, lease: Body) -> float:
        seen = self._seen.get(lease["metadata"]["name"])
        return self._clock() - seen[1] if seen is not None else 0.0

    def free(self, lease: Body, default_duration: float) -> bool:
        """Nobody holds it, or its holder has not renewed it for its duration, as watched here."""
        if not holder(lease):
            return True
        duration = float((lease.get("spec") or {}).get("leaseDurationSeconds") or default_duration)
        return self.unchanged_for(lease) > duration


def clock_skew(lease: Body, at: datetime) -> float:
    """How far the holder's clock, by its last renewTime, is ahead of ours (read just after
    the renewal: the round trip and the renew period make a few seconds of it)."""
    renewed = parse_stamp((lease.get("spec") or {}).get("renewTime"))
    return (renewed - at).total_seconds() if renewed is not None else 0.0


def record_for(identity: str, timing: Timing, *, acquired: bool, transitions: int, at: datetime) -> Body:
    spec: Body = {
        "holderIdentity": identity,
        "leaseDurationSeconds": int(timing.lease_duration),
        "renewTime": stamp(at),
        "leaseTransitions": transitions,
    }
    if acquired:
        spec["acquireTime"] = stamp(at)
    return spec


async def take(
    kube: Kube,
    namespace: str,
    name: str,
    lease: Body | None,
    *,
    identity: str,
    timing: Timing,
    metadata: Body | None = None,
) -> Body | None:
    """Create, take or renew Lease `name` as `identity`, from `lease` as last read (None: it
    does not exist). The write names the read's resourceVersion, so of two replicas taking
    it at once one wins; None for the other (or when the Lease went meanwhile)."""
    at = now()
    if lease is None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, **(metadata or {})},
            "spec": record_for(identity, timing, acquired=True, transitions=0, at=at),
        }
        try:
            return await kube.create(LEASE, body, namespace)
        except Conflict:
            return None  # another replica created it first
    spec = lease.get("spec") or {}
    mine = spec.get("holderIdentity") == identity
    transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
    patch = {
        "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"], **(metadata or {})},
        "spec": record_for(identity, timing, acquired=not mine, transitions=transitions, at=at),
    }
    try:
        return await kube.patch(LEASE, name, patch, namespace)
    except (Conflict, NotFound):
        return None  # somebody else renewed, took or deleted it meanwhile


async def release(kube: Kube, namespace: str, name: str, lease: Body | None) -> None:
    """Let the Lease go at once (a clean stop, a hand-over), if it is still as last written."""
    if lease is None:
        return
    patch = {
        "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
        "spec": {"holderIdentity": None, "renewTime": None},
    }
    with contextlib.suppress(Conflict, NotFound):
        await kube.patch(LEASE, name, patch, namespace)
