"""The objects a benchmark makes and the phases it times, the same for both sides.

One round is a volume's whole life, N at a time: provision (PVCs until every one is
Bound), attach (Pods with a node: kube-controller-manager makes VolumeAttachments) and
detach, expand, snapshot (until readyToUse) and delete the snapshots, then delete the
claims until the driver holds nothing. Each phase asks for all N objects at once and
reports when each one got there.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.watch import Body, Milestones, Reached
from csi_client import CSIClient, csi
from sidecarless.kube import (
    DRIVER_ENDPOINT,
    POD,
    PV,
    PVC,
    STORAGE_CLASS,
    VOLUME_ATTACHMENT,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    VOLUME_SNAPSHOT_CONTENT,
    Kube,
    NotFound,
)

NAMESPACE = "bench"
PHASES = ("provision", "attach", "detach", "expand", "snapshot", "unsnapshot", "delete")
CONCURRENCY = 32  # the benchmark's own requests in flight: creating N objects "at once"


def driver_name(index: int) -> str:
    return f"bench-{index}.csi.sidecarless.dev"


def class_name(index: int) -> str:
    return f"bench-{index}"


@dataclass
class PhaseResult:
    name: str
    seconds: float  # from the first request until the last object got there
    latencies: list[float] = field(repr=False)
    milestones: dict[str, float] = field(default_factory=dict)  # other "all done by" times, e.g. pv_created

    def summary(self) -> dict[str, float]:
        return {
            "seconds": round(self.seconds, 2),
            "p50": round(percentile(self.latencies, 50), 3),
            "p99": round(percentile(self.latencies, 99), 3),
            **{key: round(value, 2) for key, value in self.milestones.items()},
        }


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


async def all_at_once(items: Iterable[str], act: Callable[[str], Awaitable[Any]]) -> None:
    queue = list(items)

    async def worker() -> None:
        while queue:
            await act(queue.pop(0))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


class Workload:
    """N claims spread over the benchmark's drivers, and the phases of their lives."""

    def __init__(self, kube: Kube, n: int, drivers: int, timeout: float) -> None:
        self.kube, self.n, self.drivers, self.timeout = kube, n, drivers, timeout
        self.claims = [f"data-{i:05d}" for i in range(n)]
        self.volumes: dict[str, str] = {}  # claim -> PV name, learnt while provisioning

    def driver_of(self, claim: str) -> int:
        return int(claim.removeprefix("data-")) % self.drivers

    # --- the cluster objects every round shares -------------------------------------

    async def create_classes(self, addresses: dict[str, str]) -> None:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        await self.kube.request("POST", "/api/v1/namespaces", body=namespace)
        for index in range(self.drivers):
            name, driver = class_name(index), driver_name(index)
            route = {"sidecarless.io/endpoint": name}
            await self.kube.create(
                DRIVER_ENDPOINT,
                {
                    "apiVersion": DRIVER_ENDPOINT.api_version,
                    "kind": "DriverEndpoint",
                    "metadata": {"name": name},
                    "spec": {"driverName": driver, "address": addresses[driver]},
                },
            )
            await self.kube.create(
                STORAGE_CLASS,
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "metadata": {"name": name, "annotations": route},
                    "provisioner": driver,
                    "allowVolumeExpansion": True,
                },
            )
            await self.kube.create(
                VOLUME_SNAPSHOT_CLASS,
                {
                    "apiVersion": VOLUME_SNAPSHOT_CLASS.api_version,
                    "kind": "VolumeSnapshotClass",
                    "metadata": {"name": name, "annotations": route},
                    "driver": driver,
                    "deletionPolicy": "Delete",
                },
            )
        for _ in range(150):  # Pods are refused until the namespace's default ServiceAccount exists
            try:
                await self.kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default")
                return
            except NotFound:
                await asyncio.sleep(0.2)
        raise TimeoutError(f"no default ServiceAccount in namespace {NAMESPACE}")

    # --- phases ----------------------------------------------------------------------

    async def run(self, phase: str) -> PhaseResult:
        runner: Callable[[], Awaitable[PhaseResult]] = getattr(self, f"_{phase}")
        return await runner()

    async def _timed(
        self,
        name: str,
        watched: Milestones,
        act: Callable[[str], Awaitable[Any]],
        keys: dict[str, str],
    ) -> PhaseResult:
        """Ask for every object (`keys`: object -> the name its milestone carries) and wait."""
        started = time.monotonic()
        async with watched:
            watched.expect(set(keys.values()))

            async def ask(item: str) -> None:
                watched.ask(keys[item])
                await act(item)

            await all_at_once(keys, ask)
            await watched.wait(self.timeout)
        return PhaseResult(name, watched.finished_at() - started, watched.latencies())

    async def _provision(self) -> PhaseResult:
        claims = set(self.claims)
        pv_created = Milestones(self.kube, PV, None, _pv_of(claims))
        started = time.monotonic()
        async with pv_created:
            pv_created.expect(claims)

            async def create(claim: str) -> None:
                await self.kube.create(PVC, _claim(claim, class_name(self.driver_of(claim))), NAMESPACE)

            bound = Milestones(self.kube, PVC, NAMESPACE, _bound)
            result = await self._timed("provision", bound, create, {c: c for c in self.claims})
            await pv_created.wait(self.timeout)
        for claim in await self.kube.list(PVC, NAMESPACE):
            self.volumes[claim["metadata"]["name"]] = claim["spec"]["volumeName"]
        result.milestones["pv_created"] = pv_created.finished_at() - started
        return result

    async def _attach(self) -> PhaseResult:
        def create(claim: str) -> Awaitable[Body]:
            index = int(claim.removeprefix("data-"))
            return self.kube.create(POD, _pod(claim, f"node-{index % 2 + 1}"), NAMESPACE)

        attached = Milestones(self.kube, VOLUME_ATTACHMENT, None, _attached)
        return await self._timed("attach", attached, create, self.volumes)

    async def _detach(self) -> PhaseResult:
        async def delete(claim: str) -> None:
            # No kubelet: only a Pod deleted at once goes (a graceful one would wait forever).
            await self.kube.request("DELETE", POD.path(f"app-{claim}", NAMESPACE), body={"gracePeriodSeconds": 0})

        gone = Milestones(self.kube, VOLUME_ATTACHMENT, None, _attachment_gone)
        return await self._timed("detach", gone, delete, self.volumes)

    async def _expand(self) -> PhaseResult:
        def grow(claim: str) -> Awaitable[Body]:
            return self.kube.patch(PVC, claim, {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}, NAMESPACE)

        expanded = Milestones(self.kube, PVC, NAMESPACE, _expanded_to("2Gi"))
        return await self._timed("expand", expanded, grow, {c: c for c in self.claims})

    async def _snapshot(self) -> PhaseResult:
        def create(claim: str) -> Awaitable[Body]:
            return self.kube.create(
                VOLUME_SNAPSHOT, _snapshot(f"snap-{claim}", claim, class_name(self.driver_of(claim))), NAMESPACE
            )

        ready = Milestones(self.kube, VOLUME_SNAPSHOT, NAMESPACE, _ready)
        return await self._timed("snapshot", ready, create, {c: f"snap-{c}" for c in self.claims})

    async def _unsnapshot(self) -> PhaseResult:
        def delete(claim: str) -> Awaitable[Body | None]:
            return self.kube.delete(VOLUME_SNAPSHOT, f"snap-{claim}", NAMESPACE)

        gone = Milestones(self.kube, VOLUME_SNAPSHOT_CONTENT, None, _content_gone)
        return await self._timed("unsnapshot", gone, delete, {c: f"snap-{c}" for c in self.claims})

    async def _delete(self) -> PhaseResult:
        def delete(claim: str) -> Awaitable[Body | None]:
            return self.kube.delete(PVC, claim, NAMESPACE)

        gone = Milestones(self.kube, PV, None, _pv_gone)
        return await self._timed("delete", gone, delete, {c: c for c in self.claims})

    async def backend(self, addresses: dict[str, str]) -> set[str]:
        """Every volume and snapshot the drivers hold, as "driver volume|snapshot ID"."""
        held = set()
        for index in range(self.drivers):
            driver = driver_name(index)
            async with CSIClient(addresses[driver]) as client:
                volumes = await client.list_volumes(csi.ListVolumesRequest())
                snapshots = await client.list_snapshots(csi.ListSnapshotsRequest())
            held |= {f"{driver} volume {entry.volume.volume_id}" for entry in volumes.entries}
            held |= {f"{driver} snapshot {entry.snapshot.snapshot_id}" for entry in snapshots.entries}
        return held

    async def remove(self, addresses: dict[str, str], held: list[str]) -> None:
        """Delete what `backend` listed, straight through CSI (what a side left behind)."""
        for item in held:
            driver, kind, object_id = item.split(" ", 2)
            async with CSIClient(addresses[driver]) as client:
                if kind == "snapshot":
                    await client.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=object_id))
                else:
                    await client.delete_volume(csi.DeleteVolumeRequest(volume_id=object_id))


# --- objects -----------------------------------------------------------------------


def _claim(name: str, storage_class: str) -> Body:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


def _pod(claim: str, node: str) -> Body:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"app-{claim}"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


def _snapshot(name: str, claim: str, snapshot_class: str) -> Body:
    return {
        "apiVersion": VOLUME_SNAPSHOT.api_version,
        "kind": "VolumeSnapshot",
        "metadata": {"name": name},
        "spec": {"volumeSnapshotClassName": snapshot_class, "source": {"persistentVolumeClaimName": claim}},
    }


# --- milestones: (event, object) -> the name of what it completes -----------------


def _pv_of(claims: set[str]) -> Reached:
    def reached(kind: str, pv: Body) -> str | None:
        claim = (pv["spec"].get("claimRef") or {}).get("name")
        return claim if kind != "DELETED" and claim in claims else None

    return reached


def _bound(kind: str, claim: Body) -> str | None:
    return claim["metadata"]["name"] if (claim.get("status") or {}).get("phase") == "Bound" else None


def _attached(kind: str, attachment: Body) -> str | None:
    if kind != "DELETED" and (attachment.get("status") or {}).get("attached"):
        return str(attachment["spec"]["source"].get("persistentVolumeName"))
    return None


def _attachment_gone(kind: str, attachment: Body) -> str | None:
    return str(attachment["spec"]["source"].get("persistentVolumeName")) if kind == "DELETED" else None


def _expanded_to(size: str) -> Reached:
    def reached(kind: str, claim: Body) -> str | None:
        capacity = ((claim.get("status") or {}).get("capacity") or {}).get("storage")
        return claim["metadata"]["name"] if capacity == size else None

    return reached


def _ready(kind: str, snapshot: Body) -> str | None:
    return snapshot["metadata"]["name"] if (snapshot.get("status") or {}).get("readyToUse") else None


def _content_gone(kind: str, content: Body) -> str | None:
    return str(content["spec"]["volumeSnapshotRef"].get("name")) if kind == "DELETED" else None


def _pv_gone(kind: str, pv: Body) -> str | None:
    claim = (pv["spec"].get("claimRef") or {}).get("name")
    return str(claim) if kind == "DELETED" and claim else None
