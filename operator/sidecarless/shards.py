"""Sharded leadership: every replica active, each DriverEndpoint served by the holder of its Lease.

With `sharding` on, no replica stands by. Each DriverEndpoint has a Lease of its own,
`sidecarless-endpoint-<name>`, and each replica one that says it is alive,
`sidecarless-replica-<identity>`; the work of no endpoint is one more Lease,
`sidecarless-shared`: the snapshot controller's half (binding snapshots to contents, for
every driver), objects routed to an endpoint that does not exist (reported once, not by
every replica), and what an endpoint gone left behind. Every `retry_period` a replica lists
these Leases (one request), renews its own and those it holds, and computes who should serve
each endpoint: rendezvous hashing over the live replicas, bounded so that loads differ by
one at most (:func:`assign`). It takes the free Leases assigned to it, and hands over
those assigned to another live replica: it stops their work first, then lets the Lease go,
so the newcomer takes it within a retry period and never while the old holder still works.

A replica serves an endpoint only while it holds its Lease *and* renewed it within the
renew deadline, which every CSI call checks (:meth:`Shards.holds`), so a replica cut off
from the API server stops calling drivers before anyone may take its Leases (lease
duration > renew deadline), and a watchdog cancels its calls in flight at that moment.
Leases are judged by this process's own observations (:mod:`sidecarless.leases`), so an
off clock breaks nothing; it is logged.

Safe beside the rest: watches stay shared per replica (every replica keeps every store);
the journal is one ConfigMap whose entries name their endpoint, written by merge patches
of distinct keys (no replica overwrites another's), and recovered only by the endpoint's
holder; the snapshot controller's half runs in the one holder of the shared Lease, and
its writes carry resourceVersions, so even a moment's overlap in a hand-over cannot lose
one. A replica started without sharding (the single leader) and sharded ones do not serve
at once: sharded replicas take no Lease while the leader's is held, and a single leader
steps down while endpoint Leases are held. (Both starting in the same second can overlap
for one retry period: the Leases are separate objects, with no write that takes both.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from sidecarless import leases
from sidecarless.kube import Kube, KubeError, NotFound
from sidecarless.leases import LEASE, Observations, Timing

Body = dict[str, Any]

log = logging.getLogger("sidecarless.shards")

SHARD_LABEL = "sidecarless.io/shard"  # endpoint, singleton or replica
ANN_KEY = "sidecarless.io/shard-key"  # the endpoint's name (Lease names are cut to fit)
ANN_PROCESS = "sidecarless.io/process"  # a replica Lease's writer: two processes with one identity show
ANN_SERVES = "sidecarless.io/serves"  # what a replica may serve (SIDECARLESS_ENDPOINTS, the snapshot half)
ANN_TIMING = "sidecarless.io/timing"  # its lease timing, to tell replicas started with different settings
# The work of no endpoint (the snapshot controller's half; objects routed to endpoints that do
# not exist, reported once; what endpoints gone left behind): one replica's, by this Lease.
SHARED = "@shared"  # its key ("@" is in no object name)
ENDPOINT_LEASE_PREFIX = "sidecarless-endpoint-"
SHARED_LEASE = "sidecarless-shared"
REPLICA_LEASE_PREFIX = "sidecarless-replica-"
# A Lease left free this many lease durations although its assigned replica is alive (that
# replica cannot take it: its API access, a bug) is taken by any replica that may serve it.
ORPHAN_DURATIONS = 2.0
# Leases of endpoints gone, and of replicas gone, are deleted after this many durations unchanged.
GARBAGE_DURATIONS = 20.0
WATCHDOG_SECONDS = 0.25

HELD = Gauge(
    "sidecarless_lease_held",
    "1 while this replica serves the DriverEndpoint (holds its Lease, or leads), else 0; `shared`: the shared Lease",
    ["shard"],
)
REPLICAS = Gauge("sidecarless_shard_replicas", "Live replicas this replica sees (sharding)")


@dataclass(frozen=True)
class Replica:
    identity: str
    endpoints: frozenset[str] | None  # None: every endpoint (SIDECARLESS_ENDPOINTS empty)
    singletons: frozenset[str]

    def may_serve(self, key: str) -> bool:
        if key.startswith("@"):
            return key in self.singletons
        return self.endpoints is None or key in self.endpoints

    def annotation(self) -> str:
        endpoints = sorted(self.endpoints) if self.endpoints is not None else None
        return json.dumps({"endpoints": endpoints, "singletons": sorted(self.singletons)}, separators=(",", ":"))

    @classmethod
    def from_lease(cls, lease: Body) -> Replica:
        annotations = lease["metadata"].get("annotations") or {}
        try:
            serves = json.loads(annotations.get(ANN_SERVES) or "{}")
        except ValueError:
            serves = {}
        endpoints = serves.get("endpoints")
        return cls(
            identity=leases.holder(lease),
            endpoints=frozenset(endpoints) if isinstance(endpoints, list) else None,
            singletons=frozenset(serves.get("singletons") or ()),
        )


def rank(key: str, identity: str) -> int:
    """Rendezvous hashing's weight of replica `identity` for `key`: the same in every process."""
    return int.from_bytes(hashlib.sha256(f"{key}\0{identity}".encode()).digest()[:8], "big")


def assign(keys: Iterable[str], replicas: Iterable[Replica]) -> dict[str, str]:
    """Who should serve each key: its highest-ranked replica that may serve it and is not full.

    Endpoints, in name order, fill replicas up to an even share (`floor(n / r)`, and one more
    for the first `n % r` to reach it), so loads differ by one at most; singletons go to the
    least loaded of their best-ranked replicas. The same inputs give the same answer in
    every replica, and a replica joining or leaving moves only a share of the endpoints.
    """
    everyone = sorted(replicas, key=lambda r: r.identity)
    if not everyone:
        return {}
    ordered = sorted(set(keys))
    endpoints = [k for k in ordered if not k.startswith("@")]
    share, extra = divmod(len(endpoints), len(everyone))
    load = dict.fromkeys((r.identity for r in everyone), 0)
    result: dict[str, str] = {}
    for key in endpoints:
        candidates = sorted(
            (r for r in everyone if r.may_serve(key)), key=lambda r: rank(key, r.identity), reverse=True
        )
        if not candidates:
            continue
        room = [r for r in candidates if load[r.identity] < share or (load[r.identity] == share and extra > 0)]
        chosen = (room or candidates)[0]
        if load[chosen.identity] == share and room:
            extra -= 1
        load[chosen.identity] += 1
        result[key] = chosen.identity
    for key in (k for k in ordered if k.startswith("@")):
        candidates = [r for r in everyone if r.may_serve(key)]
        if candidates:
            chosen = min(candidates, key=lambda r: (load[r.identity], -rank(key, r.identity)))
            load[chosen.identity] += 1
            result[key] = chosen.identity
    return result


def forget_served(key: str) -> None:
    """Drop a gone key's `sidecarless_lease_held` series: left at 0, it would say nobody serves it."""
    with contextlib.suppress(KeyError):
        HELD.remove(key.lstrip("@"))


def endpoint_lease_name(key: str) -> str:
    return SHARED_LEASE if key == SHARED else leases.lease_name(ENDPOINT_LEASE_PREFIX, key)


class Shards:
    """This replica's share: takes, renews and hands over Leases; says what it holds."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        identity: str,
        *,
        endpoints: Callable[[], Iterable[str]],
        only: Iterable[str] | None = None,
        singletons: Iterable[str] = (),
        on_acquired: Callable[[str], Awaitable[None]],
        on_lost: Callable[[str, float], Awaitable[None]],
        timing: Timing | None = None,
        leader_lease: str = "sidecarless-leader",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.identity = identity
        self.timing = timing or Timing()
        self.timing.check()
        self._endpoints = endpoints
        self._me = Replica(identity, frozenset(only) if only is not None else None, frozenset(singletons))
        self._singletons = self._me.singletons
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._leader_lease = leader_lease
        self._clock = clock
        self._observations = Observations(clock)
        self._process = uuid.uuid4().hex
        self._replica_lease = leases.lease_name(REPLICA_LEASE_PREFIX, identity)
        self._held: dict[str, float] = {}  # key -> when its Lease was last written by us (monotonic)
        self._written: dict[str, Body] = {}  # key -> its Lease as we last wrote it
        self._assigned: dict[str, str] = {}
        self._warned: set[str] = set()  # problems logged once, until they go
        self._tasks: list[asyncio.Task[None]] = []
        self._losing: set[asyncio.Task[None]] = set()
        self._adopted: dict[str, float] = {}  # keys taken as orphans -> when (not handed over for a while)

    # --- what the rest of the operator asks --------------------------------------------

    def holds(self, key: str) -> bool:
        """Whether this replica may do `key`'s work now: it holds the Lease, renewed in time."""
        renewed = self._held.get(key)
        return renewed is not None and self._clock() - renewed < self.timing.renew_deadline

    def held(self) -> list[str]:
        return sorted(self._held)

    def assigned(self) -> dict[str, str]:
        """Who should serve each key, as this replica last computed it."""
        return dict(self._assigned)

    # --- running -----------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="shards"),
            asyncio.create_task(self._watchdog(), name="shards-watchdog"),
        ]

    async def stop(self) -> None:
        """Stop the work of every Lease held, then let the Leases go (the others take them at once)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for key in list(self._held):
            await self._lose(key, grace=0.0)
            with contextlib.suppress(KubeError, TimeoutError):
                await asyncio.wait_for(self._release(key), self.timing.retry_period)
        with contextlib.suppress(KubeError, TimeoutError):
            await asyncio.wait_for(self._release_membership(), self.timing.retry_period)
        for task in list(self._losing):
            with contextlib.suppress(Exception):
                await task

    async def _run(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancellation that
                # comes as the round ends (python/cpython#86296), and stop() would wait for ever.
                async with asyncio.timeout(self.timing.retry_period * 2):
                    await self.cycle()
            except (KubeError, TimeoutError) as error:
                log.warning("shards: could not read or write Leases: %s", str(error) or "no answer in time")
            except Exception:
                log.exception("shards: this round failed; the next comes in %.0f s", self.timing.retry_period)
            await asyncio.sleep(self.timing.retry_period)

    async def _watchdog(self) -> None:
        """Stop a Lease's work the moment its renewal is overdue, even while the API hangs."""
        while True:
            await asyncio.sleep(WATCHDOG_SECONDS)
            for key in [k for k in self._held if not self.holds(k)]:
                log.error(
                    "shards: could not renew the Lease of %s within %.0f s: stopped serving it, before the "
                    "Lease (%.0f s) lets another replica take it",
                    _shown(key),
                    self.timing.renew_deadline,
                    self.timing.lease_duration,
                )
                self._spawn_loss(key, grace=0.0)

    # --- one round -----------------------------------------------------------------------

    async def cycle(self) -> None:
        listed = await self.kube.list(LEASE, self.namespace, label_selector=SHARD_LABEL)
        # A GET of its own, not a label on the leader's Lease: a leader of a version before
        # sharding writes no label, and must be seen during a rolling upgrade all the same.
        leader = await self.kube.get_or_none(LEASE, self._leader_lease, self.namespace)
        read_at = leases.now()
        by_name: dict[str, Body] = {}
        for lease in listed:
            by_name[lease["metadata"]["name"]] = lease
            if self._observations.see(lease):
                self._check_clock(lease, read_at)
        if leader is not None:
            self._observations.see(leader)
        registered = await self._renew_membership(by_name.get(self._replica_lease))
        replicas = self._live_replicas(listed, registered)
        REPLICAS.set(len(replicas))
        self._check_settings(listed)
        keys = {name for name in self._endpoints() if self._me.may_serve(name)} | self._singletons
        self._assigned = assign(keys, replicas)
        blocked = self._single_leader(leader) if registered else "this replica is not registered"
        await asyncio.gather(
            *(
                self._one(key, by_name.get(endpoint_lease_name(key)), key in keys, blocked)
                for key in sorted(keys | set(self._held))
            )
        )
        await self._collect_garbage(listed, keys)

    async def _one(self, key: str, lease: Body | None, wanted: bool, blocked: str | None) -> None:
        owner = self._assigned.get(key)
        duration = self.timing.lease_duration
        if key in self._held:
            if lease is None or leases.holder(lease) != self.identity:
                log.error(
                    "shards: the Lease of %s was %s: stopped serving it",
                    _shown(key),
                    "deleted" if lease is None else f"taken by {leases.holder(lease) or 'nobody'} (edited by hand?)",
                )
                await self._lose(key, grace=0.0)
            elif not wanted:
                log.info("shards: %s is gone; letting its Lease go", _shown(key))
                await self._lose(key, grace=0.0)
                forget_served(key)
                await self._release(key, delete=True)
            elif owner is not None and owner != self.identity and not self._recently_adopted(key):
                log.info("shards: handing %s over to %s", _shown(key), owner)
                await self._lose(key, grace=self.timing.retry_period)
                await self._release(key)
            else:
                await self._take(key, lease)
            return
        if not wanted or blocked is not None:
            return
        orphaned = lease is not None and self._observations.unchanged_for(lease) > ORPHAN_DURATIONS * duration
        if owner != self.identity and not orphaned:
            return
        if lease is not None and not self._observations.free(lease, duration):
            return
        if await self._take(key, lease):
            if orphaned and owner != self.identity:
                self._adopted[key] = self._clock()
            log.info(
                "shards: serving %s%s", _shown(key), " (left unserved by its assigned replica)" if orphaned else ""
            )
            HELD.labels(key.lstrip("@")).set(1)
            await self._on_acquired(key)

    async def _take(self, key: str, lease: Body | None) -> bool:
        name = endpoint_lease_name(key)
        kind = "singleton" if key.startswith("@") else "endpoint"
        metadata = {"labels": {SHARD_LABEL: kind}, "annotations": {ANN_KEY: key}}
        written = await leases.take(
            self.kube, self.namespace, name, lease, identity=self.identity, timing=self.timing, metadata=metadata
        )
        if written is None:
            return False
        self._held[key] = self._clock()
        self._written[key] = written
        self._observations.see(written)
        return True

    async def _lose(self, key: str, *, grace: float) -> None:
        """Stop the key's work: no new CSI call from now, calls in flight cancelled after `grace`."""
        if self._held.pop(key, None) is None:
            return
        HELD.labels(key.lstrip("@")).set(0)
        await self._on_lost(key, grace)

    def _spawn_loss(self, key: str, *, grace: float) -> None:
        if self._held.pop(key, None) is None:
            return
        HELD.labels(key.lstrip("@")).set(0)
        task = asyncio.ensure_future(self._on_lost(key, grace))
        self._losing.add(task)
        task.add_done_callback(self._losing.discard)

    async def _release(self, key: str, *, delete: bool = False) -> None:
        written = self._written.pop(key, None)
        if delete and written is not None:
            with contextlib.suppress(NotFound):
                await self.kube.delete(
                    LEASE,
                    endpoint_lease_name(key),
                    self.namespace,
                    preconditions={"resourceVersion": written["metadata"]["resourceVersion"]},
                )
            return
        await leases.release(self.kube, self.namespace, endpoint_lease_name(key), written)

    # --- membership ----------------------------------------------------------------------

    def _recently_adopted(self, key: str) -> bool:
        """An orphan taken is kept a while: its assigned replica did not take it, and handing it
        back at once would leave it unserved again."""
        adopted = self._adopted.get(key)
        return adopted is not None and self._clock() - adopted < GARBAGE_DURATIONS * self.timing.lease_duration

    async def _renew_membership(self, lease: Body | None) -> bool:
        """Say this replica is alive; False when another process runs with its identity."""
        annotations = (lease or {}).get("metadata", {}).get("annotations") or {}
        other = annotations.get(ANN_PROCESS)
        if (
            lease is not None
            and other not in (None, self._process)
            and not self._observations.free(lease, self.timing.lease_duration)
        ):
            self._warn_once(
                "identity",
                "shards: another process runs with this replica's identity %r (its Lease %s is renewed by "
                "process %s): serving nothing until it stops, or its Lease expires after a restart; give "
                "every replica its own identity (POD_NAME)",
                self.identity,
                self._replica_lease,
                other,
            )
            return False
        self._warned.discard("identity")
        metadata = {
            "labels": {SHARD_LABEL: "replica"},
            "annotations": {
                ANN_PROCESS: self._process,
                ANN_SERVES: self._me.annotation(),
                ANN_TIMING: _timing_text(self.timing),
            },
        }
        written = await leases.take(
            self.kube,
            self.namespace,
            self._replica_lease,
            lease,
            identity=self.identity,
            timing=self.timing,
            metadata=metadata,
        )
        if written is not None:
            self._written["@replica"] = written
            self._observations.see(written)
        return written is not None

    async def _release_membership(self) -> None:
        written = self._written.pop("@replica", None)
        if written is not None:
            with contextlib.suppress(NotFound):
                await self.kube.delete(
                    LEASE,
                    self._replica_lease,
                    self.namespace,
                    preconditions={"resourceVersion": written["metadata"]["resourceVersion"]},
                )

    def _live_replicas(self, listed: list[Body], registered: bool) -> list[Replica]:
        found: dict[str, Replica] = {}
        for lease in listed:
            labels = lease["metadata"].get("labels") or {}
            if labels.get(SHARD_LABEL) != "replica" or not leases.holder(lease):
                continue
            if lease["metadata"]["name"] == self._replica_lease:
                continue  # ours: counted below, from what we know
            if not self._observations.free(lease, self.timing.lease_duration):
                replica = Replica.from_lease(lease)
                found[replica.identity] = replica
        if registered:
            found[self.identity] = self._me
        return list(found.values())

    # --- what is logged ------------------------------------------------------------------

    def _single_leader(self, leader: Body | None) -> str | None:
        """A reason to take no Lease: a replica without sharding leads (it serves every endpoint)."""
        if leader is None or self._observations.free(leader, self.timing.lease_duration):
            self._warned.discard("leader")
            return None
        reason = (
            f"replica {leases.holder(leader)} holds the Lease {self._leader_lease} (it runs without sharding "
            "and serves every endpoint): taking no endpoint until it stops; start every replica with the "
            "same sharding setting"
        )
        self._warn_once("leader", "shards: %s", reason)
        return reason

    def _check_clock(self, lease: Body, read_at: Any) -> None:
        holder = leases.holder(lease)
        if not holder or holder == self.identity:
            return
        skew = leases.clock_skew(lease, read_at)
        # A renewal is at most a retry period old when it is first seen changed, plus the round trip.
        if abs(skew) > leases.CLOCK_SKEW_WARNING_SECONDS + self.timing.retry_period:
            self._warn_once(
                f"clock:{holder}",
                "shards: replica %s's clock is %+.0f s off this one's (by its Lease %s): Leases are judged "
                "by each replica's own clock, so sharding is not broken, but timestamps are; check NTP",
                holder,
                skew,
                lease["metadata"]["name"],
            )

    def _check_settings(self, listed: list[Body]) -> None:
        ours = _timing_text(self.timing)
        for lease in listed:
            labels = lease["metadata"].get("labels") or {}
            theirs = (lease["metadata"].get("annotations") or {}).get(ANN_TIMING)
            if labels.get(SHARD_LABEL) == "replica" and theirs and theirs != ours:
                self._warn_once(
                    f"timing:{leases.holder(lease)}",
                    "shards: replica %s runs with lease timing %s, this one with %s: each Lease is judged by "
                    "the duration its holder wrote, but give every replica the same settings",
                    leases.holder(lease),
                    theirs,
                    ours,
                )

    def _warn_once(self, topic: str, message: str, *args: object) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            log.error(message, *args)

    # --- garbage ---------------------------------------------------------------------------

    async def _collect_garbage(self, listed: list[Body], keys: set[str]) -> None:
        """Delete the Leases of endpoints gone and of replicas gone, long unchanged."""
        for lease in listed:
            meta = lease["metadata"]
            kind = (meta.get("labels") or {}).get(SHARD_LABEL)
            key = (meta.get("annotations") or {}).get(ANN_KEY, "")
            if (kind == "endpoint" and key in keys) or meta["name"] == self._replica_lease:
                continue
            if kind not in ("endpoint", "replica"):
                continue
            if self._observations.unchanged_for(lease) > GARBAGE_DURATIONS * self.timing.lease_duration:
                with contextlib.suppress(KubeError):
                    await self.kube.delete(
                        LEASE, meta["name"], self.namespace, preconditions={"resourceVersion": meta["resourceVersion"]}
                    )
                self._observations.forget(meta["name"])


async def sharded_holders(kube: Kube, namespace: str, observations: Observations, timing: Timing) -> str | None:
    """For a replica without sharding, before it leads: the sharded replicas serving, in words; None: none."""
    try:
        listed = await kube.list(LEASE, namespace, label_selector=f"{SHARD_LABEL}=endpoint")
    except KubeError as error:
        if error.status != 403:
            raise
        # RBAC of a version before sharding (get, create, patch): sharded replicas, which need
        # list, cannot run beside it either. Lead, as before.
        return None
    holders = set()
    for lease in listed:
        observations.see(lease)
        if not observations.free(lease, timing.lease_duration):
            holders.add(leases.holder(lease))
    if not holders:
        return None
    return (
        f"sharded replicas ({', '.join(sorted(holders))}) hold DriverEndpoint Leases: this replica runs "
        "without sharding and would serve every endpoint twice; start every replica with the same sharding setting"
    )


def _timing_text(timing: Timing) -> str:
    return f"{timing.lease_duration:g}/{timing.renew_deadline:g}/{timing.retry_period:g}"


def _shown(key: str) -> str:
    return "the work of no endpoint" if key == SHARED else f"DriverEndpoint {key}"
