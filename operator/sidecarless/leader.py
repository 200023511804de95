"""Leader election with a coordination.k8s.io Lease: of several replicas, one runs the controllers.

Every replica watches (its stores stay warm, so a failover needs no relisting), but only the
holder of the Lease `sidecarless-leader` in the operator's namespace runs the work queues and
writes DriverEndpoint status. The Lease has its own API client and rate limit, so a busy
operator cannot starve its renewals (the sidecars use a separate clientset for the same
reason). A lost Lease stops the controllers and makes the replica a candidate again; the
process never exits for it (csi-lib-utils #66: restart storms on a slow API server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Gauge

from sidecarless.kube import Conflict, Kube, KubeError, Resource

Body = dict[str, Any]

log = logging.getLogger("sidecarless.leader")

LEASE = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
LEADER = Gauge("leader_election_master_status", "1 while this replica holds the Lease", ["name"])


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0  # a holder silent this long may be replaced (the sidecars' default)
    renew_deadline: float = 10.0  # a holder that cannot renew for this long steps down
    retry_period: float = 2.0  # how often candidates try, and the holder renews


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    for layout in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(stamp, layout).replace(tzinfo=UTC)
    return None


def expired(lease: Body, now: datetime, default_duration: float) -> bool:
    """Whether the Lease's holder has not renewed within its lease duration (or there is none)."""
    spec = lease.get("spec") or {}
    if not spec.get("holderIdentity"):
        return True
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    duration = float(spec.get("leaseDurationSeconds") or default_duration)
    return renewed is None or (now - renewed).total_seconds() > duration


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        identity: str,
        *,
        on_started: Callable[[], Awaitable[None]],
        on_stopped: Callable[[], Awaitable[None]],
        name: str = "sidecarless-leader",
        timing: Timing | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.timing = timing or Timing()
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.leading = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # 0 from the start on every candidate, not only on one that led and stepped down: with
        # the leader gone and no other replica taking over, `max(leader_election_master_status)`
        # must say 0, not nothing (the chart's SidecarlessNoLeader alert).
        LEADER.labels(self.name).set(0)
        self._task = asyncio.create_task(self._run(), name="leader-election")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.leading:
            await self._step_down(release=True)

    async def _run(self) -> None:
        last_renewal = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                held = await self._try_acquire_or_renew()
            except KubeError as error:
                log.warning("Lease %s/%s: %s", self.namespace, self.name, error)
                held = False
            if held:
                last_renewal = loop.time()
                if not self.leading:
                    self.leading = True
                    LEADER.labels(self.name).set(1)
                    log.info("became the leader (Lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
                    await self.on_started()
            elif self.leading and loop.time() - last_renewal > self.timing.renew_deadline:
                log.error(
                    "lost the Lease %s/%s: stopping the controllers, staying a candidate", self.namespace, self.name
                )
                await self._step_down(release=False)
            await asyncio.sleep(self.timing.retry_period)

    async def _step_down(self, *, release: bool) -> None:
        self.leading = False
        LEADER.labels(self.name).set(0)
        await self.on_stopped()
        if release:
            # A clean shutdown hands over at once instead of after the lease duration.
            with contextlib.suppress(KubeError):
                await self.kube.patch(
                    LEASE, self.name, {"spec": {"holderIdentity": None, "renewTime": None}}, self.namespace
                )

    async def _try_acquire_or_renew(self) -> bool:
        now = _now()
        lease = await self.kube.get_or_none(LEASE, self.name, self.namespace)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, acquired=True, transitions=0),
            }
            try:
                await self.kube.create(LEASE, body, self.namespace)
            except Conflict:
                return False  # another replica created it first
            return True
        spec = lease.get("spec") or {}
        mine = spec.get("holderIdentity") == self.identity
        if not mine and not expired(lease, now, self.timing.lease_duration):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        patch = {
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": self._spec(now, acquired=not mine, transitions=transitions),
        }
        try:
            await self.kube.patch(LEASE, self.name, patch, self.namespace)
        except Conflict:
            return False  # somebody else renewed or took it meanwhile
        return True

    def _spec(self, now: datetime, *, acquired: bool, transitions: int) -> Body:
        spec: Body = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.timing.lease_duration),
            "renewTime": _stamp(now),
            "leaseTransitions": transitions,
        }
        if acquired:
            spec["acquireTime"] = _stamp(now)
        return spec
