"""Volume health: external-health-monitor's controller folded in, as the upstream all-in-one
proposal plans (docs/reference/external-health-monitor-v0.18.0.md). The node half stays with
kubelet.

For each endpoint whose driver has VOLUME_CONDITION and LIST_VOLUMES (preferred) or
GET_VOLUME, every `health_check_seconds` (300 s, external-health-monitor's
--list-volumes-interval) the driver is asked about its volumes, and each Bound PV routed to
the endpoint is judged by its condition:

- abnormal: a Warning `VolumeConditionAbnormal` on its claim with the driver's message, at
  every check while it stays so (the recorder counts the repeats);
- healthy again: a Normal `VolumeConditionNormal`, "The Volume returns to the healthy state",
  at every check for as long as the last abnormal event lives (the API server's event TTL,
  1 h by default), as upstream looks for that event; a volume never abnormal says nothing.

A volume the driver does not list, or an answer without a condition, says nothing (upstream
counts the latter healthy, which says nothing either unless it was abnormal). The events are
signed `csi-pv-monitor-controller-<driver>` and go through a recorder on a budget of their
own (`health_api_qps`, `health_api_burst`: upstream's 5 and 10), so a sick backend's events
never crowd out provisioning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from csi_client import CSIClient, CSIError, csi
from sidecarless import routing
from sidecarless.context import Context
from sidecarless.endpoints.live import Endpoint
from sidecarless.events import EventRecorder, Sources
from sidecarless.periodic import Periodic
from sidecarless.vocabulary import ref_key

Body = dict[str, Any]

log = logging.getLogger("sidecarless.health")

ABNORMAL = "VolumeConditionAbnormal"
NORMAL = "VolumeConditionNormal"
RECOVERED = "The Volume returns to the healthy state"
RECOVERY_SECONDS = 3600.0  # how long an abnormal event lives (kube-apiserver --event-ttl)
NEEDED = "VOLUME_CONDITION"
WAYS = ("LIST_VOLUMES", "GET_VOLUME")  # in upstream's order of preference
# ControllerGetVolume calls at once (upstream's --worker-threads): a check never fills the
# endpoint's maxInFlight ahead of provisioning and attaching.
GET_VOLUME_AT_ONCE = 10


@dataclass(frozen=True)
class Condition:
    abnormal: bool
    message: str


@dataclass(frozen=True)
class Verdict:
    claim: Body
    abnormal: bool
    message: str


def monitors(controller_capabilities: frozenset[str]) -> str | None:
    """How the driver is asked ("LIST_VOLUMES" or "GET_VOLUME"); None: it cannot be."""
    if NEEDED not in controller_capabilities:
        return None
    return next((way for way in WAYS if way in controller_capabilities), None)


def judge(
    volumes: Iterable[Body],
    conditions: Mapping[str, Condition],
    claims: Mapping[str, Body],
    abnormal_at: Mapping[str, float],
    now: float,
) -> list[Verdict]:
    """What to say about each volume's claim: abnormal, recovered, or nothing."""
    verdicts = []
    for volume in volumes:
        spec = volume.get("spec") or {}
        condition = conditions.get(((spec.get("csi") or {}).get("volumeHandle")) or "")
        claim = claims.get(ref_key(spec.get("claimRef") or {}))
        if condition is None or claim is None:
            continue
        if condition.abnormal:
            verdicts.append(Verdict(claim, True, condition.message))
            continue
        since = abnormal_at.get(claim["metadata"].get("uid", ""))
        if since is not None and now - since < RECOVERY_SECONDS:
            verdicts.append(Verdict(claim, False, RECOVERED))
    return verdicts


class HealthMonitor:
    def __init__(self, context: Context) -> None:
        self.context = context
        settings = context.settings
        self.events = EventRecorder(
            context.kube.with_budget(settings.health_api_qps, settings.health_api_burst),
            component=context.events.component,
            instance=context.events.instance,
        )
        self._abnormal_at: dict[str, float] = {}  # claim UID -> when it was last abnormal (monotonic)
        self._checks = Periodic("health-monitor", settings.health_check_seconds, self._check_all)

    def start(self) -> None:
        self._checks.start()

    async def stop(self) -> None:
        await self._checks.stop()
        await self.events.close()

    def endpoint_changed(self, endpoint: str) -> None:
        """Nothing to do at once: the next check asks the driver."""

    async def _check_all(self) -> None:
        for endpoint in self.context.endpoints.all():
            try:
                await self.check(endpoint)
            except CSIError as error:
                log.warning("volume health of %s: %s", endpoint.spec.name, error)

    async def check(self, endpoint: Endpoint) -> list[Verdict]:
        usable = endpoint.here and endpoint.serving and endpoint.info is not None
        way = monitors(endpoint.info.controller) if usable and endpoint.info is not None else None
        if way is None:
            return []
        stores = self.context.stores
        drivers = self.context.endpoints.drivers()
        volumes = [
            v
            for v in stores.volumes.values()
            if (v.get("status") or {}).get("phase") == "Bound"
            and routing.volume_endpoint(stores, drivers, v) == endpoint.spec.name
        ]
        if way == "LIST_VOLUMES":
            conditions = await _listed_conditions(endpoint)
        else:
            conditions = await _asked_conditions(endpoint, volumes)
        claims = {key: claim for v in volumes if (claim := stores.claims.get(key := _claim_key(v))) is not None}
        now = time.monotonic()
        verdicts = judge(volumes, conditions, claims, self._abnormal_at, now)
        signed = self.events.signed(Sources.health_monitor(endpoint.spec.driver_name))
        for verdict in verdicts:
            if verdict.abnormal:
                self._abnormal_at[verdict.claim["metadata"].get("uid", "")] = now
                await signed.warning(verdict.claim, ABNORMAL, verdict.message)
            else:
                await signed.normal(verdict.claim, NORMAL, verdict.message)
        self._abnormal_at = {uid: at for uid, at in self._abnormal_at.items() if now - at < RECOVERY_SECONDS}
        return verdicts


def _claim_key(volume: Body) -> str:
    return ref_key((volume.get("spec") or {}).get("claimRef") or {})


def _condition(
    status: csi.ListVolumesResponse.VolumeStatus | csi.ControllerGetVolumeResponse.VolumeStatus,
) -> Condition | None:
    if not status.HasField("volume_condition"):
        return None
    return Condition(status.volume_condition.abnormal, status.volume_condition.message)


async def _listed_conditions(endpoint: Endpoint) -> dict[str, Condition]:
    conditions: dict[str, Condition] = {}
    token = ""
    while True:
        page = await endpoint.call(
            CSIClient.list_volumes, csi.ListVolumesRequest(starting_token=token), operation="ListVolumes", obj=""
        )
        for entry in page.entries:
            if entry.HasField("status") and (condition := _condition(entry.status)) is not None:
                conditions[entry.volume.volume_id] = condition
        token = page.next_token
        if not token:
            return conditions


async def _asked_conditions(endpoint: Endpoint, volumes: list[Body]) -> dict[str, Condition]:
    """ControllerGetVolume for each volume, within the endpoint's concurrency limit; a failed
    call is logged and says nothing (upstream: "wait for another call")."""

    workers = asyncio.Semaphore(GET_VOLUME_AT_ONCE)

    async def ask(handle: str) -> tuple[str, Condition | None]:
        async with workers:
            return await ask_one(handle)

    async def ask_one(handle: str) -> tuple[str, Condition | None]:
        try:
            response = await endpoint.call(
                CSIClient.controller_get_volume,
                csi.ControllerGetVolumeRequest(volume_id=handle),
                operation="ControllerGetVolume",
                obj=handle,
            )
        except CSIError as error:
            log.info("volume health: ControllerGetVolume %s: %s", handle, error)
            return handle, None
        return handle, _condition(response.status) if response.HasField("status") else None

    handles = [str(((v.get("spec") or {}).get("csi") or {}).get("volumeHandle") or "") for v in volumes]
    answers = await asyncio.gather(*(ask(h) for h in handles if h))
    return {handle: condition for handle, condition in answers if condition is not None}
