"""One volume life, run the same way under the real sidecars and under Sidecarless, captured
in a form where the two can be compared field by field.

`run_scenarios` makes claims of every kind (StorageClass options, WaitForFirstConsumer,
clone, restore), attaches, expands (with and without node expansion), changes a claim's
VolumeAttributesClass (ControllerModifyVolume), snapshots, then
deletes, capturing every object the controllers touched at two points: all settled, and
all deleted. `scrub` removes what always differs between two runs (names made of UIDs,
UIDs, timestamps, resource versions, the driver's volume and snapshot IDs) and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sidecarless.kube import (
    EVENT,
    POD,
    PV,
    PVC,
    STORAGE_CLASS,
    VOLUME_ATTACHMENT,
    VOLUME_ATTRIBUTES_CLASS,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    VOLUME_SNAPSHOT_CONTENT,
    Kube,
)
from tests.e2e.conftest import eventually, volume_snapshot_class
from tests.e2e.test_attacher import attachment_of, pod
from tests.e2e.test_provisioner import bound_claim
from tests.e2e.test_topology import MOCK_SEGMENT, MOCK_TOPOLOGY_KEY

Body = dict[str, Any]
Drivers = tuple[str, str, str]  # the plain, the node-expansion and the topology driver (or their endpoints)
SECRET_NAME = "compat-creds"  # in each run's namespace: the classes' secrets
Captured = dict[str, Any]  # role ("PersistentVolume of claim basic") -> scrubbed object or reasons

DROPPED_KEYS = {"uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "deletionTimestamp"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HASH = re.compile(r"\b[0-9a-f]{64}\b")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_HANDLE_KEYS = {"volumeHandle", "snapshotHandle"}
_TIME_KEYS = {"lastTransitionTime", "lastProbeTime", "creationTime", "time", "lastPhaseTransitionTime"}
# external-provisioner's identity of one process: "<start time in ms>-<random>-<driver>"
_IDENTITY = re.compile(r"^\d+-\d+-")
# sig-storage-lib-external-provisioner's event component: "<driver>_<host>_<uuid>"
_PROVISIONER_COMPONENT = re.compile(r"_[^_]+_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class Classes:
    """The StorageClasses and VolumeSnapshotClass both runs use (created once)."""

    basic: str
    retain: str
    late: str
    node_expansion: str
    snapshots: str
    attributes: str  # a VolumeAttributesClass of the driver (iops), for ControllerModifyVolume
    infeasible: str  # a VolumeAttributesClass with a key the driver refuses (INVALID_ARGUMENT)
    zoned: str  # WaitForFirstConsumer and allowedTopologies, on the topology driver
    endpoints: dict[str, str]  # driver -> the DriverEndpoint its classes route to (while Sidecarless serves)


def scrub(value: Any, namespace: str, key: str = "") -> Any:
    """`value` without what differs between two identical runs."""
    if isinstance(value, dict):
        return {k: scrub(v, namespace, k) for k, v in value.items() if k not in DROPPED_KEYS}
    if isinstance(value, list):
        return [scrub(v, namespace) for v in value]
    if key in _TIME_KEYS:
        return "<time>"  # strings, or VolumeSnapshotContent's nanoseconds
    if isinstance(value, str):
        if key in _HANDLE_KEYS:
            return "<handle>"
        if key == "storage.kubernetes.io/csiProvisionerIdentity":
            return _IDENTITY.sub("<start>-<random>-", value)
        if _TIME.match(value):
            return "<time>"
        value = _UUID.sub("<uid>", value)
        value = _HASH.sub("<hash>", value)
        return value.replace(namespace, "<namespace>") if namespace else value
    if isinstance(value, int | float) and key in ("count",):
        return "<count>"
    return value


def differences(theirs: Any, ours: Any, path: str = "") -> list[str]:
    """Every path where the two differ, with both values."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        found = []
        for key in sorted(set(theirs) | set(ours)):
            where = f"{path}.{key}" if path else key
            if key not in ours:
                found.append(f"{where}: sidecars {theirs[key]!r}, Sidecarless has none")
            elif key not in theirs:
                found.append(f"{where}: Sidecarless {ours[key]!r}, sidecars have none")
            else:
                found += differences(theirs[key], ours[key], where)
        return found
    if theirs != ours:
        return [f"{path}: sidecars {theirs!r}, Sidecarless {ours!r}"]
    return []


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    return await eventually(check, what=what, timeout=60)


class Run:
    """The scenarios in one namespace, under whichever side is running."""

    def __init__(self, kube: Kube, namespace: str, classes: Classes) -> None:
        self.kube, self.namespace, self.classes = kube, namespace, classes
        self.passing: Captured = {}  # states on the way that the end state no longer shows

    # --- waits -----------------------------------------------------------------------

    async def claim(self, name: str) -> Body:
        return await self.kube.get(PVC, name, self.namespace)

    async def bound(self, name: str) -> Body:
        return await bound_claim(self.kube, self.namespace, name, timeout=60)

    async def handles(self) -> dict[str, str]:
        """The driver's volume ID of each claim of the run."""
        handles = {}
        for name in self.claim_names:
            volume = await self.volume_of(name)
            if volume is not None:
                handles[name] = volume["spec"]["csi"]["volumeHandle"]
        return handles

    async def volume_of(self, claim_name: str) -> Body | None:
        volume_name = ((await self.claim(claim_name)).get("spec") or {}).get("volumeName")
        return await self.kube.get_or_none(PV, volume_name) if volume_name else None

    async def attachment_of(self, volume_name: str) -> Body | None:
        return await attachment_of(self.kube, volume_name)

    # --- the scenarios ---------------------------------------------------------------

    async def provision(self) -> None:
        """Each StorageClass option, WaitForFirstConsumer, and a clone."""
        await self._claim("basic", self.classes.basic)
        await self._claim("retained", self.classes.retain)
        await self._claim("late", self.classes.late)
        await self._claim("zoned", self.classes.zoned)
        await self._claim("grows-on-node", self.classes.node_expansion)
        for name in ("basic", "retained", "grows-on-node"):
            await self.bound(name)
        # No scheduler here: pick the node as it would.
        selected = {"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "node-1"}}}
        for name in ("late", "zoned"):
            await self.kube.patch(PVC, name, selected, self.namespace)
            await self.bound(name)
        await self._claim("clone", self.classes.basic, source={"kind": "PersistentVolumeClaim", "name": "basic"})
        await self.bound("clone")

    async def attach(self) -> None:
        volume = await self.volume_of("basic")
        assert volume is not None
        await self.kube.create(POD, pod("app", "basic"), self.namespace)

        async def attached() -> Body | None:
            attachment = await self.attachment_of(volume["metadata"]["name"])
            return attachment if attachment and (attachment.get("status") or {}).get("attached") else None

        await until(attached, "VolumeAttachment attached")

    async def detach(self) -> None:
        volume = await self.volume_of("basic")
        assert volume is not None
        await self.kube.request("DELETE", POD.path("app", self.namespace), body={"gracePeriodSeconds": 0})

        async def detached() -> bool:
            return await self.attachment_of(volume["metadata"]["name"]) is None

        await until(detached, "VolumeAttachment gone")

    async def expand(self) -> None:
        grow = {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
        await self.kube.patch(PVC, "basic", grow, self.namespace)
        await self.kube.patch(PVC, "grows-on-node", grow, self.namespace)

        async def expanded() -> bool:
            claim = await self.claim("basic")
            return bool(((claim.get("status") or {}).get("capacity") or {}).get("storage") == "2Gi")

        async def node_pending() -> bool:
            claim = await self.claim("grows-on-node")
            return "FileSystemResizePending" in [c["type"] for c in (claim.get("status") or {}).get("conditions") or []]

        await until(expanded, "claim basic expanded to 2Gi")
        await until(node_pending, "claim grows-on-node waiting for the node (FileSystemResizePending)")

    async def modify(self) -> None:
        """Claim basic moves to the driver's VolumeAttributesClass: ControllerModifyVolume.
        Claim retained asks for one the driver refuses (Infeasible), then rolls back."""
        await self._set_attributes_class("basic", self.classes.attributes)

        async def modified() -> bool:
            claim = await self.claim("basic")
            return bool((claim.get("status") or {}).get("currentVolumeAttributesClassName") == self.classes.attributes)

        await until(modified, f"claim basic modified to {self.classes.attributes}")

        await self._set_attributes_class("retained", self.classes.infeasible)

        async def infeasible() -> Body | None:
            claim = await self.claim("retained")
            status = (claim.get("status") or {}).get("modifyVolumeStatus") or {}
            return claim if status.get("status") == "Infeasible" else None

        claim = await until(infeasible, "claim retained's modification Infeasible")
        self.passing["PersistentVolumeClaim retained, modification infeasible"] = scrub(claim, self.namespace)
        await self._set_attributes_class("retained", None)

        async def rolled_back() -> bool:
            # external-resizer's rollback takes the ModifyingVolume condition away and leaves
            # the rest (the last attempt's modifyVolumeStatus): the capture compares that.
            conditions = ((await self.claim("retained")).get("status") or {}).get("conditions") or []
            return not [c for c in conditions if c["type"] == "ModifyingVolume"]

        await until(rolled_back, "claim retained's modification rolled back")

    async def _set_attributes_class(self, claim: str, name: str | None) -> None:
        await self.kube.patch(PVC, claim, {"spec": {"volumeAttributesClassName": name}}, self.namespace)

    async def snapshot_and_restore(self) -> None:
        snapshot = {
            "apiVersion": VOLUME_SNAPSHOT.api_version,
            "kind": "VolumeSnapshot",
            "metadata": {"name": "snap"},
            "spec": {
                "volumeSnapshotClassName": self.classes.snapshots,
                "source": {"persistentVolumeClaimName": "basic"},
            },
        }
        await self.kube.create(VOLUME_SNAPSHOT, snapshot, self.namespace)

        async def ready() -> bool:
            current = await self.kube.get(VOLUME_SNAPSHOT, "snap", self.namespace)
            return bool((current.get("status") or {}).get("readyToUse"))

        await until(ready, "snapshot readyToUse")
        source = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}
        await self._claim("restored", self.classes.basic, size="2Gi", source=source)
        await self.bound("restored")

    async def delete(self) -> None:
        await self.kube.delete(VOLUME_SNAPSHOT, "snap", self.namespace)

        async def no_contents() -> bool:
            return not [c for c in await self.kube.list(VOLUME_SNAPSHOT_CONTENT) if self._ours(c)]

        await until(no_contents, "VolumeSnapshotContent deleted")
        volumes = {name: await self.volume_of(name) for name in self.claim_names}
        for name in self.claim_names:
            await self.kube.delete(PVC, name, self.namespace)
        for name, volume in volumes.items():
            assert volume is not None
            volume_name = volume["metadata"]["name"]
            if name == "retained":
                await until(self._phase_is(volume_name, "Released"), "the Retain volume Released")
            else:
                await until(self._phase_is(volume_name, None), f"the volume of claim {name} deleted")

    def _phase_is(self, volume_name: str, phase: str | None) -> Callable[[], Awaitable[bool]]:
        """A check that the PV is in `phase` (None: gone)."""

        async def check() -> bool:
            current = await self.kube.get_or_none(PV, volume_name)
            if phase is None:
                return current is None
            return bool(current and (current.get("status") or {}).get("phase") == phase)

        return check

    claim_names = ("basic", "retained", "late", "zoned", "grows-on-node", "clone", "restored")

    async def _claim(self, name: str, storage_class: str, size: str = "1Gi", source: Body | None = None) -> None:
        spec: Body = {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": size}},
        }
        if source:
            spec["dataSource"] = source
        body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec}
        await self.kube.create(PVC, body, self.namespace)

    def _ours(self, obj: Body) -> bool:
        spec = obj.get("spec") or {}
        ref = spec.get("claimRef") or spec.get("volumeSnapshotRef") or {}
        return bool(ref.get("namespace") == self.namespace)

    # --- capture ---------------------------------------------------------------------

    async def capture(self, *, passing: bool = False) -> Captured:
        """Every object of this run, by role, scrubbed; and the event reasons of each; with
        `passing`, also the states recorded on the way."""
        captured: Captured = {}
        names: dict[str, str] = {}  # object name -> role, for events
        for claim in await self.kube.list(PVC, self.namespace):
            role = f"PersistentVolumeClaim {claim['metadata']['name']}"
            captured[role] = claim
            names[claim["metadata"]["name"]] = role
        volumes = [v for v in await self.kube.list(PV) if self._ours(v)]
        for volume in volumes:
            role = f"PersistentVolume of claim {volume['spec']['claimRef']['name']}"
            captured[role] = volume
            names[volume["metadata"]["name"]] = role
        by_volume = {v["metadata"]["name"]: names[v["metadata"]["name"]] for v in volumes}
        for attachment in await self.kube.list(VOLUME_ATTACHMENT):
            owner = by_volume.get(attachment["spec"]["source"].get("persistentVolumeName", ""))
            if owner:
                role = f"VolumeAttachment of {owner} on {attachment['spec']['nodeName']}"
                captured[role] = attachment
                names[attachment["metadata"]["name"]] = role
        for snapshot in await self.kube.list(VOLUME_SNAPSHOT, self.namespace):
            role = f"VolumeSnapshot {snapshot['metadata']['name']}"
            captured[role] = snapshot
            names[snapshot["metadata"]["name"]] = role
        for content in await self.kube.list(VOLUME_SNAPSHOT_CONTENT):
            if self._ours(content):
                role = f"VolumeSnapshotContent of snapshot {content['spec']['volumeSnapshotRef']['name']}"
                captured[role] = content
                names[content["metadata"]["name"]] = role
        captured = {role: scrub(obj, self.namespace) for role, obj in captured.items()}
        if passing:
            captured |= self.passing
        for role, reasons in (await self._event_reasons(names)).items():
            captured[f"events of {role}"] = sorted(reasons)
        return captured

    async def _event_reasons(self, names: dict[str, str]) -> dict[str, set[str]]:
        """Per role: "reason: message [source]". A repeat must update its Event's count, not
        post another: an Event twice for the same object, source, reason and message is
        recorded as "(posted twice)"."""
        reasons: dict[str, set[str]] = {}
        seen: set[tuple[str, str, str]] = set()
        for namespace in (self.namespace, "default"):  # events of cluster-scoped objects go to default
            for event in await self.kube.list(EVENT, namespace):
                involved = event.get("involvedObject") or {}
                if involved.get("kind") == "Pod":
                    continue  # the benchmark's own Pod: kube-controller-manager's events
                role = names.get(involved.get("name", ""))
                if role and (involved.get("namespace") or "") in ("", self.namespace):
                    message = scrub(event.get("message", ""), self.namespace)
                    component = (event.get("source") or {}).get("component", "")
                    source = _PROVISIONER_COMPONENT.sub("_<host>_<uuid>", component)
                    entry = f"{event['reason']}: {message} [{source}]"
                    if (involved.get("uid", ""), entry, event.get("type", "")) in seen:
                        entry += " (posted twice)"
                    seen.add((involved.get("uid", ""), entry, event.get("type", "")))
                    reasons.setdefault(role, set()).add(entry)
        return reasons


async def create_classes(kube: Kube, drivers: Drivers, endpoints: Drivers) -> Classes:
    """Classes routed to the endpoints both runs use (the sidecars ignore the annotation)."""
    prefix = "compat"
    driver, node_driver, topology_driver = drivers
    endpoint, node_endpoint, topology_endpoint = endpoints
    classes = Classes(
        f"{prefix}-basic",
        f"{prefix}-retain",
        f"{prefix}-late",
        f"{prefix}-node",
        f"{prefix}-snap",
        f"{prefix}-gold",
        f"{prefix}-bad",
        f"{prefix}-zoned",
        dict(zip(drivers, endpoints, strict=True)),
    )

    def storage_class(name: str, provisioner: str, route: str, **fields: Any) -> Body:
        return {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name, "annotations": {"sidecarless.io/endpoint": route}},
            "provisioner": provisioner,
            "allowVolumeExpansion": True,
            **fields,
        }

    # Every kind of secret the sidecars pass on: they show in the PV's spec and annotations.
    secrets = {
        f"csi.storage.k8s.io/{kind}-secret-{field}": value
        for kind in ("provisioner", "controller-publish", "node-stage", "node-publish", "controller-expand")
        for field, value in (("name", SECRET_NAME), ("namespace", "${pvc.namespace}"))
    }
    await kube.create(
        STORAGE_CLASS, storage_class(classes.basic, driver, endpoint, parameters={"type": "fast", **secrets})
    )
    await kube.create(
        STORAGE_CLASS,
        storage_class(
            classes.retain,
            driver,
            endpoint,
            reclaimPolicy="Retain",
            mountOptions=["noatime"],
            parameters={"csi.storage.k8s.io/fstype": "xfs"},
        ),
    )
    await kube.create(
        STORAGE_CLASS, storage_class(classes.late, driver, endpoint, volumeBindingMode="WaitForFirstConsumer")
    )
    await kube.create(STORAGE_CLASS, storage_class(classes.node_expansion, node_driver, node_endpoint))
    await kube.create(
        STORAGE_CLASS,
        storage_class(
            classes.zoned,
            topology_driver,
            topology_endpoint,
            volumeBindingMode="WaitForFirstConsumer",
            allowedTopologies=[{"matchLabelExpressions": [{"key": MOCK_TOPOLOGY_KEY, "values": [MOCK_SEGMENT]}]}],
        ),
    )
    await kube.create(
        VOLUME_SNAPSHOT_CLASS,
        volume_snapshot_class(
            classes.snapshots,
            driver,
            endpoint=endpoint,
            parameters={
                "csi.storage.k8s.io/snapshotter-secret-name": SECRET_NAME,
                "csi.storage.k8s.io/snapshotter-secret-namespace": "${volumesnapshot.namespace}",
            },
        ),
    )
    # The driver accepts the key "iops" only: "colour" makes the modification infeasible.
    attributes_classes = ((classes.attributes, {"iops": "500"}), (classes.infeasible, {"colour": "blue"}))
    for attributes_class, parameters in attributes_classes:
        await kube.create(
            VOLUME_ATTRIBUTES_CLASS,
            {
                "apiVersion": VOLUME_ATTRIBUTES_CLASS.api_version,
                "kind": "VolumeAttributesClass",
                "metadata": {"name": attributes_class},
                "driverName": driver,
                "parameters": parameters,
            },
        )
    return classes
