"""Backend volumes and snapshots that nothing in the cluster references: reported, never deleted.

The sidecars never look: a volume whose PV was deleted by hand, or made by a provisioner
that died before writing its PV, stays on the backend unseen. For each endpoint whose
driver can list (LIST_VOLUMES, LIST_SNAPSHOTS), the reporter compares what the driver holds
with what PersistentVolumes and VolumeSnapshotContents of that driver reference, every
`leak_check_seconds`. Only what was unreferenced in two checks in a row is reported, so a
volume between CreateVolume and its PV is not taken for a leak. The result goes into the
DriverEndpoint's `status.unreferenced`, a metric, and a Warning event when it grows.
Deleting is left to a person: an unreferenced volume may be one someone imported by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Gauge

from csi_client import CSIClient, CSIError, csi
from sidecarless.context import Context
from sidecarless.endpoints.live import Endpoint
from sidecarless.kube import DRIVER_ENDPOINT
from sidecarless.periodic import Periodic
from sidecarless.store import Stores
from sidecarless.vocabulary import now_rfc3339

Body = dict[str, Any]

log = logging.getLogger("sidecarless.leaks")

LISTED_IN_STATUS = 50  # IDs named in the status (the counts are complete)
UNREFERENCED = Gauge(
    "sidecarless_unreferenced_total",
    "Backend volumes or snapshots no PersistentVolume or VolumeSnapshotContent references",
    ["endpoint", "kind"],
)


@dataclass
class Findings:
    """One endpoint's last check. None: the driver cannot list that kind."""

    volumes: set[str] | None = None
    snapshots: set[str] | None = None
    checked: str = ""
    # Unreferenced in the last check, not yet confirmed by a second one.
    suspect_volumes: set[str] = field(default_factory=set)
    suspect_snapshots: set[str] = field(default_factory=set)

    def status(self) -> Body:
        """`status.unreferenced` of the DriverEndpoint."""
        body: Body = {"lastCheck": self.checked}
        if self.volumes is not None:
            body["volumeCount"] = len(self.volumes)
            body["volumes"] = sorted(self.volumes)[:LISTED_IN_STATUS]
        if self.snapshots is not None:
            body["snapshotCount"] = len(self.snapshots)
            body["snapshots"] = sorted(self.snapshots)[:LISTED_IN_STATUS]
        return body


def referenced_volumes(stores: Stores, driver: str) -> set[str]:
    return {
        str(((v.get("spec") or {}).get("csi") or {}).get("volumeHandle"))
        for v in stores.volumes.values()
        if ((v.get("spec") or {}).get("csi") or {}).get("driver") == driver
    }


def referenced_snapshots(stores: Stores, driver: str) -> set[str]:
    handles = set()
    for content in stores.contents.values():
        spec = content.get("spec") or {}
        if spec.get("driver") != driver:
            continue
        for handle in (
            (content.get("status") or {}).get("snapshotHandle"),
            (spec.get("source") or {}).get("snapshotHandle"),
        ):
            if handle:
                handles.add(str(handle))
    return handles


def confirm(listed: Iterable[str], referenced: set[str], suspects: set[str]) -> tuple[set[str], set[str]]:
    """(confirmed, suspects): unreferenced now and in the previous check, and unreferenced now."""
    now = set(listed) - referenced
    return now & suspects, now


class LeakReporter:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.findings: dict[str, Findings] = {}
        self._checks = Periodic("leak-reporter", context.settings.leak_check_seconds, self._check_all)

    def start(self) -> None:
        self._checks.start()

    async def stop(self) -> None:
        await self._checks.stop()

    def endpoint_changed(self, endpoint: str) -> None:
        """Nothing to do at once: the next periodic check lists the endpoint's backend."""

    async def _check_all(self) -> None:
        for endpoint in self.context.endpoints.all():
            if not endpoint.here or not endpoint.serving or endpoint.info is None:
                continue
            try:
                await self.check(endpoint)
            except CSIError as error:
                log.warning("unreferenced check of %s: listing failed: %s", endpoint.spec.name, error)

    async def check(self, endpoint: Endpoint) -> Findings:
        assert endpoint.info is not None
        driver = endpoint.spec.driver_name
        stores = self.context.stores
        previous = self.findings.get(endpoint.spec.name) or Findings()
        found = Findings(checked=now_rfc3339())
        if "LIST_VOLUMES" in endpoint.info.controller:
            listed = await _list_volumes(endpoint)
            # Read the references after listing: a PV made meanwhile is then counted.
            found.volumes, found.suspect_volumes = confirm(
                listed, referenced_volumes(stores, driver), previous.suspect_volumes
            )
        if "LIST_SNAPSHOTS" in endpoint.info.controller:
            listed = await _list_snapshots(endpoint)
            found.snapshots, found.suspect_snapshots = confirm(
                listed, referenced_snapshots(stores, driver), previous.suspect_snapshots
            )
        self.findings[endpoint.spec.name] = found
        await self._tell(endpoint, previous, found)
        return found

    async def _tell(self, endpoint: Endpoint, previous: Findings, found: Findings) -> None:
        name = endpoint.spec.name
        for kind, now, before, referrer in (
            ("volumes", found.volumes, previous.volumes, "PersistentVolume"),
            ("snapshots", found.snapshots, previous.snapshots, "VolumeSnapshotContent"),
        ):
            if now is None:
                continue
            UNREFERENCED.labels(endpoint=name, kind=kind).set(len(now))
            new = now - (before or set())
            if not new:
                continue
            shown = ", ".join(sorted(new)[:10]) + (", ..." if len(new) > 10 else "")
            message = (
                f"{len(new)} {kind} of driver {endpoint.spec.driver_name} exist that no {referrer} references "
                f"({len(now)} in all): {shown}. Sidecarless never deletes them; see status.unreferenced"
            )
            log.warning("DriverEndpoint %s: %s", name, message)
            body = {"apiVersion": DRIVER_ENDPOINT.api_version, "kind": DRIVER_ENDPOINT.kind, "metadata": {"name": name}}
            current = await self.context.kube.get_or_none(DRIVER_ENDPOINT, name)
            await self.context.events.warning(current or body, f"Unreferenced{kind.capitalize()}", message)


async def _list_volumes(endpoint: Endpoint) -> list[str]:
    ids, token = [], ""
    while True:
        page = await endpoint.call(
            CSIClient.list_volumes, csi.ListVolumesRequest(starting_token=token), operation="ListVolumes", obj=""
        )
        ids += [entry.volume.volume_id for entry in page.entries]
        token = page.next_token
        if not token:
            return ids


async def _list_snapshots(endpoint: Endpoint) -> list[str]:
    ids, token = [], ""
    while True:
        page = await endpoint.call(
            CSIClient.list_snapshots,
            csi.ListSnapshotsRequest(starting_token=token),
            operation="ListSnapshots",
            obj="",
        )
        ids += [entry.snapshot.snapshot_id for entry in page.entries]
        token = page.next_token
        if not token:
            return ids
