"""The provisioning journal: what CreateVolume calls may have done, kept where a restart finds it.

external-provisioner remembers in-flight CreateVolume calls only in memory, so a restart
between CreateVolume and the PV's creation, with the claim deleted meanwhile, leaks the
volume (external-provisioner #486, #1469). Sidecarless writes each plan to the ConfigMap
`sidecarless-journal` *before* the call and removes it once the PV exists (or the driver
said no). One ConfigMap serves every endpoint of the process (each entry names its own),
so five drivers cost no more writes than one.

Writes are group-committed: every record that arrives while one write is in flight goes
into the next one, and while claims arrive in a burst a write lingers 50 ms for more, so
a burst of N claims costs far fewer than N writes. Recording waits
until its write is durable. Removals wait too, but nobody waits for them: they ride along
with the next record's write, or go on their own after `REMOVAL_DELAY_SECONDS` of no
records (a removal lost in a crash is redone by recovery, which finds the PV).

Earlier versions kept one ConfigMap per endpoint (`sidecarless-journal-<endpoint>`); the
first recovery of an endpoint moves what such a ConfigMap holds into the shared one, then
deletes it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from csi_client import csi
from sidecarless.kube import CONFIGMAP, Conflict, Kube, NotFound
from sidecarless.provisioner.plan import ProvisionPlan
from sidecarless.vocabulary import SecretRef

Body = dict[str, Any]

log = logging.getLogger("sidecarless.journal")

JOURNAL_LABEL = "sidecarless.io/journal"
JOURNAL_NAME = "sidecarless-journal"
REMOVAL_DELAY_SECONDS = 2.0
# While claims arrive in a burst (the last write carried several records), a write waits
# this long for more to join it: fewer writes, for a little latency only under load.
BURST_LINGER_SECONDS = 0.05


def legacy_journal_name(endpoint_name: str) -> str:
    """The per-endpoint ConfigMap of versions before the shared journal."""
    return f"sidecarless-journal-{endpoint_name}"[:253]


@dataclass(frozen=True)
class Entry:
    """One CreateVolume that may have happened: enough to finish it without the claim."""

    volume_name: str
    endpoint: str  # the DriverEndpoint whose driver is asked
    claim: str  # namespace/name
    claim_uid: str
    request: csi.CreateVolumeRequest  # without secrets
    pv_template: Body
    provisioner_secret: SecretRef | None
    requested_bytes: int

    @classmethod
    def from_plan(cls, plan: ProvisionPlan, endpoint: str, claim: str, claim_uid: str) -> Entry:
        return cls(
            plan.volume_name,
            endpoint,
            claim,
            claim_uid,
            plan.request,
            plan.pv_template,
            plan.provisioner_secret,
            plan.requested_bytes,
        )

    def to_plan(self) -> ProvisionPlan:
        return ProvisionPlan(
            volume_name=self.volume_name,
            request=self.request,
            provisioner_secret=self.provisioner_secret,
            fstype="",
            requested_bytes=self.requested_bytes,
            pv_template=self.pv_template,
        )

    def encode(self) -> str:
        secret = self.provisioner_secret
        return json.dumps(
            {
                "endpoint": self.endpoint,
                "claim": self.claim,
                "claimUID": self.claim_uid,
                "request": base64.b64encode(self.request.SerializeToString()).decode(),
                "pv": self.pv_template,
                "secret": {"name": secret.name, "namespace": secret.namespace} if secret else None,
                "requestedBytes": self.requested_bytes,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, volume_name: str, text: str, endpoint: str = "") -> Entry:
        """`endpoint`: for entries of a per-endpoint ConfigMap, which do not name it."""
        raw = json.loads(text)
        secret = raw.get("secret")
        return cls(
            volume_name,
            raw.get("endpoint") or endpoint,
            raw["claim"],
            raw["claimUID"],
            csi.CreateVolumeRequest.FromString(base64.b64decode(raw["request"])),
            raw["pv"],
            SecretRef(secret["name"], secret["namespace"]) if secret else None,
            int(raw["requestedBytes"]),
        )


class Journal:
    """The process's journal: one ConfigMap in the operator's namespace, every endpoint's entries."""

    def __init__(self, kube: Kube, namespace: str, name: str = JOURNAL_NAME) -> None:
        self._kube = kube
        self.namespace = namespace
        self.name = name
        self._pending: dict[str, str | None] = {}  # volume name -> encoded entry, or None to remove
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._removal_timer: asyncio.TimerHandle | None = None
        self._in_burst = False
        self.writes = 0  # for status and benchmarks
        # volume name -> (endpoint, claim "namespace/name") of entries this process recorded
        self._claims: dict[str, tuple[str, str]] = {}
        self._legacy_checked: set[str] = set()  # endpoints whose per-endpoint ConfigMap is dealt with
        # Removed here, maybe not yet in the ConfigMap: recovery must not take them for orphans.
        self._forgotten: set[str] = set()

    async def record(self, entry: Entry) -> None:
        """Write the entry; return once it is stored (raise if it could not be)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._claims[entry.volume_name] = (entry.endpoint, entry.claim)
        self._forgotten.discard(entry.volume_name)
        self._pending[entry.volume_name] = entry.encode()
        self._waiters.append(waiter)
        self._kick()
        await waiter

    def forget(self, volume_name: str) -> None:
        """Remove an entry, with the next write; nobody waits for it."""
        self._claims.pop(volume_name, None)
        self._forgotten.add(volume_name)
        self._pending[volume_name] = None
        if self._removal_timer is None:
            self._removal_timer = asyncio.get_running_loop().call_later(REMOVAL_DELAY_SECONDS, self._kick)

    def in_flight(self, endpoint_name: str) -> int:
        """How many CreateVolume calls of this endpoint this process recorded and has not finished."""
        return sum(1 for endpoint, _ in self._claims.values() if endpoint == endpoint_name)

    def holds_claim(self, endpoint_name: str, claim: str) -> bool:
        """Whether this process recorded an entry for the claim ("namespace/name") and has not
        removed it. Entries of an earlier process are found by the periodic recovery."""
        return (endpoint_name, claim) in self._claims.values()

    async def entries(self, endpoint_name: str) -> list[Entry]:
        """The endpoint's entries (moving those of its per-endpoint ConfigMap in first, once)."""
        if endpoint_name not in self._legacy_checked:
            await self._adopt_legacy(endpoint_name)
            self._legacy_checked.add(endpoint_name)
        config_map = await self._kube.get_or_none(CONFIGMAP, self.name, self.namespace)
        entries = self._decode(config_map, self.name)
        return [e for e in entries if e.endpoint == endpoint_name and e.volume_name not in self._forgotten]

    async def _adopt_legacy(self, endpoint_name: str) -> None:
        name = legacy_journal_name(endpoint_name)
        legacy = await self._kube.get_or_none(CONFIGMAP, name, self.namespace)
        if legacy is None:
            return
        adopted = self._decode(legacy, name, endpoint_name)
        await asyncio.gather(*(self.record(entry) for entry in adopted))  # one write for all
        await self._kube.delete(CONFIGMAP, name, self.namespace)
        log.info("journal: moved %d entries of %s/%s into %s", len(adopted), self.namespace, name, self.name)

    def _decode(self, config_map: Body | None, name: str, endpoint: str = "") -> list[Entry]:
        result = []
        for volume_name, text in ((config_map or {}).get("data") or {}).items():
            try:
                result.append(Entry.decode(volume_name, text, endpoint))
            except (ValueError, KeyError) as error:
                log.error("journal %s/%s: entry %s is unreadable: %s", self.namespace, name, volume_name, error)
        return result

    async def close(self) -> None:
        """Stop; removals not yet written are written now, if the API server answers soon."""
        if self._removal_timer is not None:
            self._removal_timer.cancel()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        removals: dict[str, str | None] = {k: v for k, v in self._pending.items() if v is None}
        if removals:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._write(removals), 5.0)

    def _kick(self) -> None:
        self._wakeup.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="journal")

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            if self._in_burst and self._waiters:
                await asyncio.sleep(BURST_LINGER_SECONDS)
            self._wakeup.clear()
            if self._removal_timer is not None:
                self._removal_timer.cancel()
                self._removal_timer = None
            batch, self._pending = self._pending, {}
            waiters, self._waiters = self._waiters, []
            if not batch:
                continue
            self._in_burst = len(waiters) > 1
            try:
                await self._write(batch)
            except Exception as error:
                log.warning("journal %s/%s: write failed: %s", self.namespace, self.name, error)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                # Removals are retried with the next write; failed records were reported to their callers.
                for volume_name, value in batch.items():
                    if value is None:
                        self._pending.setdefault(volume_name, None)
                if self._pending and self._removal_timer is None:
                    self._removal_timer = asyncio.get_running_loop().call_later(REMOVAL_DELAY_SECONDS, self._kick)
                continue
            self._forgotten.difference_update(k for k, v in batch.items() if v is None)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _write(self, batch: dict[str, str | None]) -> None:
        self.writes += 1
        try:
            await self._kube.patch(CONFIGMAP, self.name, {"data": batch}, self.namespace)
            return
        except NotFound:
            pass
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": {JOURNAL_LABEL: "provisioning"}},
            "data": {k: v for k, v in batch.items() if v is not None},
        }
        try:
            await self._kube.create(CONFIGMAP, body, self.namespace)
        except Conflict:  # another operator process (embedded mode) created it meanwhile
            await self._kube.patch(CONFIGMAP, self.name, {"data": batch}, self.namespace)
