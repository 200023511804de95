"""Snapshots end to end: both halves (snapshot-controller's and csi-snapshotter's) in the one
operator, restore through the provisioner, and the failures a user should see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from csi_client import CSIClient, csi
from devcluster import DriverSpec, LocalCluster
from devcluster.operator import OperatorProcess
from devcluster.procs import wait_until
from sidecarless.kube import (
    DRIVER_ENDPOINT,
    PV,
    PVC,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    VOLUME_SNAPSHOT_CONTENT,
    Kube,
)
from sidecarless.provisioner.sources import SNAPSHOT_PROTECTION_FINALIZER
from sidecarless.snapshots import plan
from tests.e2e.conftest import MOCK, MOCK_NOATTACH, claim, eventually, killed, volume_snapshot_class
from tests.e2e.test_provisioner import bound_claim, event_reasons, has_event

pytestmark = pytest.mark.cluster

UNSNAPPABLE = "mock-unsnappable.csi.sidecarless.dev"  # CreateSnapshot fails with INTERNAL
SLOW = "mock-slow-snapshots.csi.sidecarless.dev"  # CreateSnapshot times out 25 times, then works
Routed = Callable[..., Awaitable[tuple[str, str]]]


@pytest.fixture(scope="module")
def failing_snapshots(cluster: LocalCluster) -> Iterator[None]:
    cluster.add_driver(DriverSpec(UNSNAPPABLE, hooks={"createSnapshotStart": "INTERNAL"}))
    cluster.add_driver(
        DriverSpec(
            SLOW,
            hooks={
                "globals": "calls = 0;",
                "createSnapshotStart": "calls++; calls <= 25 ? DEADLINEEXCEEDED : OK;",
            },
        )
    )
    yield
    cluster.remove_driver(UNSNAPPABLE)
    cluster.remove_driver(SLOW)


@pytest.fixture
async def make_snapshot_class(
    kube: Kube, unique_name: Callable[[str], str]
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    made: list[str] = []

    async def make(
        driver: str = MOCK, *, policy: str = "Delete", endpoint: str = "", default: bool = False, **parameters: str
    ) -> str:
        name = unique_name("vsc")
        body = volume_snapshot_class(
            name, driver, endpoint=endpoint, policy=policy, parameters=parameters, default=default
        )
        await kube.create(VOLUME_SNAPSHOT_CLASS, body)
        made.append(name)
        return name

    yield make
    for name in made:
        await kube.delete(VOLUME_SNAPSHOT_CLASS, name)


def volume_snapshot(name: str, *, claim_name: str = "", content: str = "", class_name: str = "") -> dict[str, Any]:
    source = {"persistentVolumeClaimName": claim_name} if claim_name else {"volumeSnapshotContentName": content}
    spec: dict[str, Any] = {"source": source}
    if class_name:
        spec["volumeSnapshotClassName"] = class_name
    return {"apiVersion": plan.GROUP_VERSION, "kind": "VolumeSnapshot", "metadata": {"name": name}, "spec": spec}


def snapshot_content(
    name: str, source: dict[str, str], class_name: str, policy: str, ref: dict[str, str]
) -> dict[str, Any]:
    """A VolumeSnapshotContent as a user (pre-provisioned) or another snapshot-controller makes one."""
    return {
        "apiVersion": plan.GROUP_VERSION,
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": name},
        "spec": {
            "deletionPolicy": policy,
            "driver": MOCK,
            "source": source,
            "volumeSnapshotClassName": class_name,
            "volumeSnapshotRef": ref,
        },
    }


async def snapshot_where(
    kube: Kube, namespace: str, name: str, check: Callable[[dict[str, Any]], bool], what: str
) -> Any:
    async def matches() -> dict[str, Any] | None:
        current = await kube.get_or_none(VOLUME_SNAPSHOT, name, namespace)
        return current if current is not None and check(current) else None

    return await eventually(matches, what=what, timeout=60)


async def ready_snapshot(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = await snapshot_where(kube, namespace, name, plan.is_ready, f"snapshot {name} readyToUse")
    return result


async def snapshot_taken(kube: Kube, namespace: str, name: str, snapshot_class: str) -> tuple[dict[str, Any], str, str]:
    """A snapshot of claim `data`, once ready: the VolumeSnapshot, its content's name and its handle."""
    await kube.create(VOLUME_SNAPSHOT, volume_snapshot(name, claim_name="data", class_name=snapshot_class), namespace)
    snapshot = await ready_snapshot(kube, namespace, name)
    content_name = snapshot["status"]["boundVolumeSnapshotContentName"]
    handle = (await kube.get(VOLUME_SNAPSHOT_CONTENT, content_name))["status"]["snapshotHandle"]
    return snapshot, content_name, str(handle)


async def gone(kube: Kube, resource: Any, name: str, namespace: str | None = None) -> None:
    async def absent() -> bool:
        return await kube.get_or_none(resource, name, namespace) is None

    await eventually(absent, what=f"{resource.kind} {name} deleted", timeout=60)


async def source_claim(kube: Kube, namespace: str, routed_class: Routed, driver: str = MOCK) -> dict[str, Any]:
    _, class_name = await routed_class(driver)
    await kube.create(PVC, claim("data", class_name), namespace)
    return await bound_claim(kube, namespace, "data")


def calls(cluster: LocalCluster, driver: str, method: str, **fields: str) -> list[dict[str, Any]]:
    return [
        c["Request"]
        for c in cluster.driver_calls(driver, method)
        if all(c["Request"].get(k) == v for k, v in fields.items())
    ]


async def test_snapshot_restore_and_delete(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    operator: OperatorProcess,
    routed_class: Routed,
    make_snapshot_class: Callable[..., Awaitable[str]],
) -> None:
    source = await source_claim(kube, namespace, routed_class)
    volume_id = (await kube.get(PV, source["spec"]["volumeName"]))["spec"]["csi"]["volumeHandle"]
    snapshot_class = await make_snapshot_class(color="blue")
    await kube.create(VOLUME_SNAPSHOT, volume_snapshot("snap", claim_name="data", class_name=snapshot_class), namespace)
    snapshot = await ready_snapshot(kube, namespace, "snap")
    uid = snapshot["metadata"]["uid"]

    # snapshot-controller's half: the content, both ways bound, and the finalizers.
    content_name = f"snapcontent-{uid}"
    assert snapshot["status"]["boundVolumeSnapshotContentName"] == content_name
    assert snapshot["status"]["creationTime"].endswith("Z")
    assert set(snapshot["metadata"]["finalizers"]) == {plan.SOURCE_FINALIZER, plan.BOUND_FINALIZER}
    content = await kube.get(VOLUME_SNAPSHOT_CONTENT, content_name)
    assert content["spec"]["volumeSnapshotRef"]["uid"] == uid
    assert content["spec"]["source"] == {"volumeHandle": volume_id}
    assert content["spec"]["deletionPolicy"] == "Delete"
    assert content["metadata"]["finalizers"] == [plan.CONTENT_FINALIZER]
    assert not content["metadata"].get("annotations"), "the content carries only what the sidecars write"
    assert not snapshot["metadata"].get("annotations")
    handle = content["status"]["snapshotHandle"]
    assert content["status"]["readyToUse"] is True

    # csi-snapshotter's half: one CreateSnapshot, named after the VolumeSnapshot, reserved keys gone.
    created = calls(cluster, MOCK, "CreateSnapshot", name=f"snapshot-{uid}")
    assert len(created) == 1
    assert created[0]["source_volume_id"] == volume_id
    assert created[0]["parameters"] == {"color": "blue"}
    reasons = await event_reasons(kube, namespace, "snap")
    assert {"CreatingSnapshot", "SnapshotCreated", "SnapshotReady"} <= set(reasons)
    metric = (
        'snapshot_controller_operation_total_seconds_count{driver_name="mock.csi.sidecarless.dev",'
        'operation_name="CreateSnapshotAndReady",operation_status="Success",snapshot_type="Dynamic"}'
    )
    assert metric in operator.metrics()

    async def claim_released() -> bool:
        current = await kube.get(PVC, "data", namespace)
        return plan.PVC_FINALIZER not in (current["metadata"].get("finalizers") or [])

    await eventually(claim_released, what="pvc-as-source-protection removed once the snapshot is ready")

    # Restore: the provisioner asks the driver for a volume made from that snapshot handle.
    _, class_name = await routed_class(MOCK)
    restored_body = claim("restored", class_name)
    restored_body["spec"]["dataSource"] = {
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": "snap",
    }
    await kube.create(PVC, restored_body, namespace)
    restored = await bound_claim(kube, namespace, "restored")
    restored_pv = await kube.get(PV, restored["spec"]["volumeName"])
    create_calls = calls(cluster, MOCK, "CreateVolume", name=restored_pv["metadata"]["name"])
    assert [c["volume_content_source"] for c in create_calls] == [{"Type": {"Snapshot": {"snapshot_id": handle}}}]
    await snapshot_where(
        kube,
        namespace,
        "snap",
        lambda s: SNAPSHOT_PROTECTION_FINALIZER not in s["metadata"].get("finalizers", []),
        "restore protection removed once the PV exists",
    )

    # Delete (policy Delete): the content goes, DeleteSnapshot with its handle, the snapshot goes.
    await kube.delete(VOLUME_SNAPSHOT, "snap", namespace)
    await gone(kube, VOLUME_SNAPSHOT, "snap", namespace)
    await gone(kube, VOLUME_SNAPSHOT_CONTENT, content_name)
    assert len(calls(cluster, MOCK, "DeleteSnapshot", snapshot_id=handle)) == 1


async def test_retain_keeps_the_content_and_the_snapshot(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    routed_class: Routed,
    make_snapshot_class: Callable[..., Awaitable[str]],
) -> None:
    await source_claim(kube, namespace, routed_class)
    retain = await make_snapshot_class(policy="Retain")
    snapshot, content_name, handle = await snapshot_taken(kube, namespace, "kept", retain)
    assert snapshot["metadata"]["finalizers"] == [plan.SOURCE_FINALIZER], "no bound-protection for Retain"
    await kube.delete(VOLUME_SNAPSHOT, "kept", namespace)
    await gone(kube, VOLUME_SNAPSHOT, "kept", namespace)
    content = await kube.get(VOLUME_SNAPSHOT_CONTENT, content_name)
    assert content["metadata"].get("deletionTimestamp") is None
    assert content["metadata"]["annotations"][plan.ANN_BEING_DELETED] == "yes"
    # Removing the retained content by hand drops the finalizer, and the snapshot stays in the backend.
    await kube.delete(VOLUME_SNAPSHOT_CONTENT, content_name)
    await gone(kube, VOLUME_SNAPSHOT_CONTENT, content_name)
    assert calls(cluster, MOCK, "DeleteSnapshot", snapshot_id=handle) == []


async def test_content_deleted_under_a_live_snapshot_keeps_its_snapshot(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    routed_class: Routed,
    make_snapshot_class: Callable[..., Awaitable[str]],
) -> None:
    """csi-snapshotter's rule, kept without its annotation: a content deleted by hand while its
    VolumeSnapshot lives keeps the backend snapshot, Terminating, until the VolumeSnapshot goes."""
    await source_claim(kube, namespace, routed_class)
    _, content_name, handle = await snapshot_taken(kube, namespace, "live", await make_snapshot_class())
    await kube.delete(VOLUME_SNAPSHOT_CONTENT, content_name)
    await asyncio.sleep(3)  # long enough for a wrong DeleteSnapshot (the driver half answers in milliseconds)
    content = await kube.get(VOLUME_SNAPSHOT_CONTENT, content_name)
    assert content["metadata"]["deletionTimestamp"]
    assert content["status"]["snapshotHandle"] == handle
    assert calls(cluster, MOCK, "DeleteSnapshot", snapshot_id=handle) == []

    await kube.delete(VOLUME_SNAPSHOT, "live", namespace)
    await gone(kube, VOLUME_SNAPSHOT_CONTENT, content_name)
    await gone(kube, VOLUME_SNAPSHOT, "live", namespace)
    assert len(calls(cluster, MOCK, "DeleteSnapshot", snapshot_id=handle)) == 1


async def test_preprovisioned_snapshot_is_imported(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    routed_class: Routed,
    make_snapshot_class: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
) -> None:
    endpoint, _ = await routed_class(MOCK)
    source = await source_claim(kube, namespace, routed_class)
    volume_id = (await kube.get(PV, source["spec"]["volumeName"]))["spec"]["csi"]["volumeHandle"]
    async with CSIClient(cluster.driver_addresses[MOCK]) as client:
        made = await client.create_snapshot(
            csi.CreateSnapshotRequest(name=unique_name("import"), source_volume_id=volume_id)
        )
    handle = made.snapshot.snapshot_id
    snapshot_class = await make_snapshot_class(policy="Retain", endpoint=endpoint)
    content_name = unique_name("imported")
    await kube.create(
        VOLUME_SNAPSHOT_CONTENT,
        snapshot_content(
            content_name,
            {"snapshotHandle": handle},
            snapshot_class,
            "Retain",
            {"name": "imported", "namespace": namespace},
        ),
    )
    await kube.create(
        VOLUME_SNAPSHOT, volume_snapshot("imported", content=content_name, class_name=snapshot_class), namespace
    )
    snapshot = await ready_snapshot(kube, namespace, "imported")
    assert snapshot["status"]["boundVolumeSnapshotContentName"] == content_name
    content = await kube.get(VOLUME_SNAPSHOT_CONTENT, content_name)
    assert content["spec"]["volumeSnapshotRef"]["uid"] == snapshot["metadata"]["uid"]
    assert content["status"]["snapshotHandle"] == handle
    assert calls(cluster, MOCK, "ListSnapshots", snapshot_id=handle), "readiness asked with ListSnapshots"

    async def counted() -> bool:
        status = (await kube.get(DRIVER_ENDPOINT, endpoint)).get("status") or {}
        return bool((status.get("counts") or {}).get("snapshots") == 1)

    await eventually(counted, what="the snapshot counted in the DriverEndpoint's status")
    await kube.delete(VOLUME_SNAPSHOT, "imported", namespace)
    await kube.delete(VOLUME_SNAPSHOT_CONTENT, content_name)
    await gone(kube, VOLUME_SNAPSHOT_CONTENT, content_name)


async def test_default_class_is_filled_in(
    kube: Kube,
    namespace: str,
    routed_class: Routed,
    make_snapshot_class: Callable[..., Awaitable[str]],
) -> None:
    # The only default class of this driver in the suite (two would be an error).
    default = await make_snapshot_class(MOCK_NOATTACH, default=True)
    await source_claim(kube, namespace, routed_class, MOCK_NOATTACH)
    await kube.create(VOLUME_SNAPSHOT, volume_snapshot("defaulted", claim_name="data"), namespace)
    snapshot = await ready_snapshot(kube, namespace, "defaulted")
    assert snapshot["spec"]["volumeSnapshotClassName"] == default


async def test_class_of_another_driver_is_refused(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    routed_class: Routed,
    make_snapshot_class: Callable[..., Awaitable[str]],
) -> None:
    await source_claim(kube, namespace, routed_class)
    foreign = await make_snapshot_class(MOCK_NOATTACH)
    await kube.create(VOLUME_SNAPSHOT, volume_snapshot("crossed", claim_name="data", class_name=foreign), namespace)
    failed = await snapshot_where(
        kube, namespace, "crossed", lambda s: bool((s.get("status") or {}).get("error")), "an error on the snapshot"
    )
    message = failed["status"]["error"]["message"]
    assert MOCK in message
    assert MOCK_NOATTACH in message
    await has_event(kube, namespace, "crossed", "SnapshotContentCreationFailed")
    assert await kube.get_or_none(VOLUME_SNAPSHOT_CONTENT, f"snapcontent-{failed['metadata']['uid']}") is None


async def test_snapshot_of_a_missing_claim(
    kube: Kube, namespace: str, make_snapshot_class: Callable[..., Awaitable[str]]
) -> None:
    snapshot_class = await make_snapshot_class()
    await kube.create(
        VOLUME_SNAPSHOT, volume_snapshot("orphan", claim_name="nothing", class_name=snapshot_class), namespace
    )
    failed = await snapshot_where(
        kube, namespace, "orphan", lambda s: bool((s.get("status") or {}).get("error")), "an error on the snapshot"
    )
    assert "cannot get claim from snapshot" in failed["status"]["error"]["message"]
    assert failed["status"]["readyToUse"] is False
    await kube.delete(VOLUME_SNAPSHOT, "orphan", namespace)
    await gone(kube, VOLUME_SNAPSHOT, "orphan", namespace)


async def test_snapshot_with_a_missing_class(kube: Kube, namespace: str, routed_class: Routed) -> None:
    await source_claim(kube, namespace, routed_class)
    await kube.create(
        VOLUME_SNAPSHOT, volume_snapshot("classless", claim_name="data", class_name="no-such-class"), namespace
    )
    failed = await snapshot_where(
        kube, namespace, "classless", lambda s: bool((s.get("status") or {}).get("error")), "an error on the snapshot"
    )
    assert '"no-such-class" not found' in failed["status"]["error"]["message"]
    await has_event(kube, namespace, "classless", "GetSnapshotClassFailed")
    assert await kube.get_or_none(VOLUME_SNAPSHOT_CONTENT, f"snapcontent-{failed['metadata']['uid']}") is None


async def test_driver_failing_create_snapshot(
    kube: Kube,
    namespace: str,
    failing_snapshots: None,
    routed_class: Routed,
    make_snapshot_class: Callable[..., Awaitable[str]],
) -> None:
    await source_claim(kube, namespace, routed_class, UNSNAPPABLE)
    snapshot_class = await make_snapshot_class(UNSNAPPABLE)
    await kube.create(
        VOLUME_SNAPSHOT, volume_snapshot("doomed", claim_name="data", class_name=snapshot_class), namespace
    )
    failed = await snapshot_where(
        kube,
        namespace,
        "doomed",
        lambda s: bool((s.get("status") or {}).get("error")),
        "the driver's error on the snapshot",
    )
    assert "code = Internal" in failed["status"]["error"]["message"]
    content_name = failed["status"]["boundVolumeSnapshotContentName"]
    content = await kube.get(VOLUME_SNAPSHOT_CONTENT, content_name)
    assert "code = Internal" in content["status"]["error"]["message"]

    async def annotation_cleared() -> bool:
        # Set again by each retry for the length of its call, and cleared by its final error.
        current = await kube.get(VOLUME_SNAPSHOT_CONTENT, content_name)
        return plan.ANN_BEING_CREATED not in (current["metadata"].get("annotations") or {})

    await eventually(annotation_cleared, what="being-created cleared after a final error", interval=0.05)
    content_events = await event_reasons(kube, "default", content_name)
    assert "SnapshotCreationFailed" in content_events
    # Deleting it leaves nothing behind: no snapshot was made, so nothing to delete.
    await kube.delete(VOLUME_SNAPSHOT, "doomed", namespace)
    await gone(kube, VOLUME_SNAPSHOT, "doomed", namespace)
    await gone(kube, VOLUME_SNAPSHOT_CONTENT, content_name)


async def test_operator_killed_between_create_snapshot_and_status(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Routed,
    make_snapshot_class: Callable[..., Awaitable[str]],
) -> None:
    healthy = exclusive()
    source = await source_claim(kube, namespace, routed_class)
    volume_id = (await kube.get(PV, source["spec"]["volumeName"]))["spec"]["csi"]["volumeHandle"]
    snapshot_class = await make_snapshot_class()
    healthy.stop()
    faulty = exclusive(SIDECARLESS_FAULT_POINTS=f"after-create-snapshot@/{namespace}/crash")
    await kube.create(
        VOLUME_SNAPSHOT, volume_snapshot("crash", claim_name="data", class_name=snapshot_class), namespace
    )
    wait_until("the operator killed after CreateSnapshot", killed(faulty), timeout=60, watch=[])
    uid = (await kube.get(VOLUME_SNAPSHOT, "crash", namespace))["metadata"]["uid"]
    content = await kube.get(VOLUME_SNAPSHOT_CONTENT, f"snapcontent-{uid}")
    assert content["metadata"]["annotations"][plan.ANN_BEING_CREATED] == "yes"
    assert not content.get("status"), "the crash came before the status write"

    exclusive()
    await ready_snapshot(kube, namespace, "crash")
    assert len(calls(cluster, MOCK, "CreateSnapshot", name=f"snapshot-{uid}")) == 2, "the same call again"
    async with CSIClient(cluster.driver_addresses[MOCK]) as client:
        listed = await client.list_snapshots(csi.ListSnapshotsRequest(source_volume_id=volume_id))
    assert len(listed.entries) == 1, "one snapshot in the backend, not two"


async def test_driver_half_only_beside_an_upstream_snapshot_controller(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Routed,
    make_snapshot_class: Callable[..., Awaitable[str]],
) -> None:
    """With SIDECARLESS_SNAPSHOT_CONTROLLER=false, VolumeSnapshots are left to another
    snapshot-controller; contents it makes are still cut by the driver half."""
    exclusive(SIDECARLESS_SNAPSHOT_CONTROLLER="false")
    source = await source_claim(kube, namespace, routed_class)
    volume_id = (await kube.get(PV, source["spec"]["volumeName"]))["spec"]["csi"]["volumeHandle"]
    snapshot_class = await make_snapshot_class()
    snapshot = await kube.create(
        VOLUME_SNAPSHOT, volume_snapshot("theirs", claim_name="data", class_name=snapshot_class), namespace
    )
    uid = snapshot["metadata"]["uid"]
    # What the upstream snapshot-controller would make:
    content_name = f"snapcontent-{uid}"
    await kube.create(
        VOLUME_SNAPSHOT_CONTENT,
        snapshot_content(
            content_name,
            {"volumeHandle": volume_id},
            snapshot_class,
            "Delete",
            {"name": "theirs", "namespace": namespace, "uid": uid},
        ),
    )

    async def cut() -> bool:
        content = await kube.get(VOLUME_SNAPSHOT_CONTENT, content_name)
        return bool((content.get("status") or {}).get("readyToUse"))

    await eventually(cut, what="the content's snapshot cut by the driver half")
    current = await kube.get(VOLUME_SNAPSHOT, "theirs", namespace)
    assert not current.get("status"), "the VolumeSnapshot is the other controller's business"
    assert not current["metadata"].get("finalizers")
    content = await kube.get(VOLUME_SNAPSHOT_CONTENT, content_name)
    assert not content["metadata"].get("finalizers"), "the content finalizer is snapshot-controller's to add"
    await kube.delete(VOLUME_SNAPSHOT_CONTENT, content_name)
    await kube.delete(VOLUME_SNAPSHOT, "theirs", namespace)


async def test_snapshot_deleted_while_the_driver_does_not_answer(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    failing_snapshots: None,
    exclusive: Callable[..., OperatorProcess],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
    make_snapshot_class: Callable[..., Awaitable[str]],
) -> None:
    """external-snapshotter #1388: the VolumeSnapshot goes after a bounded wait; its content
    stays until CreateSnapshot is answered, then deletes the snapshot: nothing wedged, nothing leaked."""
    exclusive(SIDECARLESS_SNAPSHOT_DELETION_WAIT_SECONDS="3")
    endpoint = await make_endpoint(SLOW, retry={"initialDelay": "200ms", "maxDelay": "500ms"})
    class_name = await make_class(endpoint, provisioner=SLOW)
    await kube.create(PVC, claim("data", class_name), namespace)
    source = await bound_claim(kube, namespace, "data")
    volume_id = (await kube.get(PV, source["spec"]["volumeName"]))["spec"]["csi"]["volumeHandle"]
    snapshot_class = await make_snapshot_class(SLOW)
    snapshot = await kube.create(
        VOLUME_SNAPSHOT, volume_snapshot("hurried", claim_name="data", class_name=snapshot_class), namespace
    )
    content_name = f"snapcontent-{snapshot['metadata']['uid']}"

    async def creating() -> bool:
        content = await kube.get_or_none(VOLUME_SNAPSHOT_CONTENT, content_name)
        return content is not None and plan.ANN_BEING_CREATED in (content["metadata"].get("annotations") or {})

    await eventually(creating, what="CreateSnapshot in flight")
    await kube.delete(VOLUME_SNAPSHOT, "hurried", namespace)
    waiting = await snapshot_where(
        kube,
        namespace,
        "hurried",
        lambda s: "waiting up to 3s" in ((s.get("status") or {}).get("error") or {}).get("message", ""),
        "the wait shown in the snapshot's status",
    )
    assert waiting["metadata"]["deletionTimestamp"]
    await gone(kube, VOLUME_SNAPSHOT, "hurried", namespace)
    await has_event(kube, namespace, "hurried", "SnapshotDeleteDeferred")
    content = await kube.get(VOLUME_SNAPSHOT_CONTENT, content_name)
    assert content["metadata"]["deletionTimestamp"], "the content stays, Terminating, to finish the call"
    assert "waits for this call to end" in content["status"]["error"]["message"]

    await gone(kube, VOLUME_SNAPSHOT_CONTENT, content_name)
    async with CSIClient(cluster.driver_addresses[SLOW]) as client:
        listed = await client.list_snapshots(csi.ListSnapshotsRequest(source_volume_id=volume_id))
    assert len(listed.entries) == 0, "the snapshot the driver finally made was deleted"
    assert len(cluster.driver_calls(SLOW, "DeleteSnapshot")) == 1


async def test_restore_protection_orphaned_by_a_crash_is_swept(
    kube: Kube,
    namespace: str,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Routed,
    make_snapshot_class: Callable[..., Awaitable[str]],
) -> None:
    """The operator dies mid-restore (after CreateVolume, so the snapshot carries the
    provisioner's restore protection); the restoring claim is deleted while no operator runs,
    so no event will ever say it went. The next operator's sweep releases the snapshot, which
    can then be deleted (external-provisioner #1507: such snapshots stuck Terminating)."""
    faulty = exclusive(SIDECARLESS_FAULT_POINTS=f"after-create-volume@{namespace}/restored")
    _, class_name = await routed_class(MOCK)
    await kube.create(PVC, claim("data", class_name), namespace)
    await bound_claim(kube, namespace, "data")
    snapshot_class = await make_snapshot_class()
    await kube.create(VOLUME_SNAPSHOT, volume_snapshot("snap", claim_name="data", class_name=snapshot_class), namespace)
    await ready_snapshot(kube, namespace, "snap")
    restored = claim("restored", class_name)
    restored["spec"]["dataSource"] = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}
    await kube.create(PVC, restored, namespace)
    wait_until("the operator killed at after-create-volume", killed(faulty), timeout=60, watch=[])
    protected = await kube.get(VOLUME_SNAPSHOT, "snap", namespace)
    assert SNAPSHOT_PROTECTION_FINALIZER in protected["metadata"]["finalizers"]
    await kube.delete(PVC, "restored", namespace)
    await gone(kube, PVC, "restored", namespace)

    exclusive()  # a healthy operator: no DELETED event of the claim reaches it

    async def released() -> bool:
        current = await kube.get(VOLUME_SNAPSHOT, "snap", namespace)
        return SNAPSHOT_PROTECTION_FINALIZER not in (current["metadata"].get("finalizers") or [])

    await eventually(released, what="the orphaned restore protection swept", timeout=150)
    await kube.delete(VOLUME_SNAPSHOT, "snap", namespace)
    await gone(kube, VOLUME_SNAPSHOT, "snap", namespace)
