"""Leader election with a coordination.k8s.io Lease: of several replicas, one runs the controllers.

Every replica watches (its stores stay warm, so a failover needs no relisting), but only the
holder of the Lease `sidecarless-leader` in the operator's namespace runs the work queues and
writes DriverEndpoint status. The Lease has its own API client and rate limit, so a busy
operator cannot starve its renewals (the sidecars use a separate clientset for the same
reason). A lost Lease stops the controllers and makes the replica a candidate again; the
process never exits for it (csi-lib-utils #66: restart storms on a slow API server).
How Leases are read and written, and when one is free: :mod:`sidecarless.leases`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Gauge

from sidecarless import leases
from sidecarless.kube import Kube, KubeError
from sidecarless.leases import LEASE, Timing

Body = dict[str, Any]

log = logging.getLogger("sidecarless.leader")

__all__ = ["LEADER", "LEASE", "LeaderElector", "Timing"]

LEADER = Gauge("leader_election_master_status", "1 while this replica holds the Lease", ["name"])


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
        may_lead: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.timing = timing or Timing()
        self.on_started = on_started
        self.on_stopped = on_stopped
        # Asked before every attempt: a reason not to lead (sharded replicas serve already), or None.
        self.may_lead = may_lead
        self.leading = False
        self._observations = leases.Observations()
        self._lease: Body | None = None  # as last written by this replica
        self._renewed_at = 0.0  # monotonic
        self._task: asyncio.Task[None] | None = None
        self._refusal = ""

    def holds(self) -> bool:
        """Whether this replica may act as the leader now: it leads, and renewed within the
        renew deadline (checked at every CSI call, so a stuck renewal stops calls in time)."""
        return self.leading and time.monotonic() - self._renewed_at < self.timing.renew_deadline

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
        while True:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow stop()'s cancellation.
                async with asyncio.timeout(self.timing.retry_period * 2):
                    held = await self._try_acquire_or_renew()
            except (KubeError, TimeoutError) as error:
                log.warning("Lease %s/%s: %s", self.namespace, self.name, str(error) or "no answer in time")
                held = False
            if held:
                self._renewed_at = time.monotonic()
                if not self.leading:
                    self.leading = True
                    LEADER.labels(self.name).set(1)
                    log.info("became the leader (Lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
                    await self.on_started()
            elif self.leading and not self.holds():
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
                await leases.release(self.kube, self.namespace, self.name, self._lease)

    async def _try_acquire_or_renew(self) -> bool:
        if self.may_lead is not None:
            refusal = await self.may_lead()
            if refusal is not None:
                if refusal != self._refusal:
                    log.error("not leading (Lease %s/%s): %s", self.namespace, self.name, refusal)
                self._refusal = refusal
                if self.leading:
                    await self._step_down(release=True)
                return False
            self._refusal = ""
        lease = await self.kube.get_or_none(LEASE, self.name, self.namespace)
        if lease is not None:
            self._observations.see(lease)
            mine = leases.holder(lease) == self.identity
            if not mine and self.leading:
                # Taken (or edited by hand) under us: stop now, not at the renew deadline.
                log.error(
                    "Lease %s/%s now names %r: stopping the controllers",
                    self.namespace,
                    self.name,
                    leases.holder(lease) or None,
                )
                await self._step_down(release=False)
            if not mine and not self._observations.free(lease, self.timing.lease_duration):
                return False
        written = await leases.take(
            self.kube, self.namespace, self.name, lease, identity=self.identity, timing=self.timing
        )
        if written is None:
            return False
        self._lease = written
        self._observations.see(written)
        return True
