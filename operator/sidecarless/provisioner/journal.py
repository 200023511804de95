"""The provisioning journal: what CreateVolume calls may have done, kept where a restart finds it.

external-provisioner remembers in-flight CreateVolume calls only in memory, so a restart
between CreateVolume and the PV's creation, with the claim deleted meanwhile, leaks the
volume (external-provisioner #486, #1469). Sidecarless writes each plan to a per-endpoint
ConfigMap *before* the call and removes it once the PV exists (or the driver said no).

Writes are group-committed: every record or removal that arrives while one write is in
flight goes into the next one, so a burst of N claims costs far fewer than N writes.
Recording waits until its write is durable; removal does not wait (a removal lost in a
crash is redone by recovery, which finds the PV).
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
from sidecarless.kube import CONFIGMAP, Kube, NotFound
from sidecarless.provisioner.parameters import SecretRef
from sidecarless.provisioner.plan import ProvisionPlan

Body = dict[str, Any]

log = logging.getLogger("sidecarless.journal")

JOURNAL_LABEL = "sidecarless.io/journal"


def journal_name(endpoint_name: str) -> str:
    return f"sidecarless-journal-{endpoint_name}"[:253]


@dataclass(frozen=True)
class Entry:
    """One CreateVolume that may have happened: enough to finish it without the claim."""

    volume_name: str
    claim: str  # namespace/name
    claim_uid: str
    request: csi.CreateVolumeRequest  # without secrets
    pv_template: Body
    provisioner_secret: SecretRef | None
    requested_bytes: int

    @classmethod
    def from_plan(cls, plan: ProvisionPlan, claim: str, claim_uid: str) -> Entry:
        return cls(
            plan.volume_name,
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
    def decode(cls, volume_name: str, text: str) -> Entry:
        raw = json.loads(text)
        secret = raw.get("secret")
        return cls(
            volume_name,
            raw["claim"],
            raw["claimUID"],
            csi.CreateVolumeRequest.FromString(base64.b64decode(raw["request"])),
            raw["pv"],
            SecretRef(secret["name"], secret["namespace"]) if secret else None,
            int(raw["requestedBytes"]),
        )


class Journal:
    def __init__(self, kube: Kube, namespace: str, endpoint_name: str) -> None:
        self._kube = kube
        self.namespace = namespace
        self.name = journal_name(endpoint_name)
        self.endpoint_name = endpoint_name
        self._pending: dict[str, str | None] = {}  # volume name -> encoded entry, or None to remove
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.writes = 0  # for status and benchmarks
        self._claims: dict[str, str] = {}  # volume name -> its claim ("namespace/name"), recorded here

    async def record(self, entry: Entry) -> None:
        """Write the entry; return once it is stored (raise if it could not be)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._claims[entry.volume_name] = entry.claim
        self._pending[entry.volume_name] = entry.encode()
        self._waiters.append(waiter)
        self._kick()
        await waiter

    def forget(self, volume_name: str) -> None:
        """Remove an entry, in the next write; nobody waits for it."""
        self._claims.pop(volume_name, None)
        self._pending[volume_name] = None
        self._kick()

    def holds_claim(self, claim: str) -> bool:
        """Whether this process recorded an entry for the claim ("namespace/name") and has not
        removed it. Entries of an earlier process are found by the periodic recovery."""
        return claim in self._claims.values()

    async def entries(self) -> list[Entry]:
        config_map = await self._kube.get_or_none(CONFIGMAP, self.name, self.namespace)
        data = (config_map or {}).get("data") or {}
        result = []
        for volume_name, text in data.items():
            try:
                result.append(Entry.decode(volume_name, text))
            except (ValueError, KeyError) as error:
                log.error("journal %s/%s: entry %s is unreadable: %s", self.namespace, self.name, volume_name, error)
        return result

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher

    def _kick(self) -> None:
        self._wakeup.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name=f"journal-{self.endpoint_name}")

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, {}
            waiters, self._waiters = self._waiters, []
            if not batch:
                continue
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
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _write(self, batch: dict[str, str | None]) -> None:
        self.writes += 1
        try:
            await self._kube.patch(CONFIGMAP, self.name, {"data": batch}, self.namespace)
        except NotFound:
            await self._kube.create(
                CONFIGMAP,
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": self.name,
                        "namespace": self.namespace,
                        "labels": {JOURNAL_LABEL: self.endpoint_name},
                    },
                    "data": {k: v for k, v in batch.items() if v is not None},
                },
                self.namespace,
            )
