"""Volume group snapshots end to end, with the mock behind driver_shim's GroupController
(csi-driver-host-path offers one; csi-test's mock does not), and the refusal for a driver
without CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from devcluster import DriverSpec, LocalCluster
from sidecarless.kube import (
    PV,
    PVC,
    VOLUME_GROUP_SNAPSHOT,
    VOLUME_GROUP_SNAPSHOT_CONTENT,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
    Kube,
    Resource,
)
from sidecarless.snapshots import group_plan as gplan
from sidecarless.snapshots import plan
from tests.e2e.conftest import MOCK, claim, eventually
from tests.e2e.test_provisioner import bound_claim, event_reasons, has_event
from tests.e2e.test_snapshots import gone

pytestmark = pytest.mark.cluster

GROUPED = "mock-groups.csi.sidecarless.dev"
GROUP_CLASS = Resource(
    "groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshotclasses", "VolumeGroupSnapshotClass", False
)
Routed = Callable[..., Awaitable[tuple[str, str]]]


@pytest.fixture(scope="module")
def group_driver(cluster: LocalCluster) -> Iterator[None]:
    cluster.add_driver(DriverSpec(GROUPED, group_snapshots=True))
    yield
    cluster.remove_driver(GROUPED)


@pytest.fixture
async def make_group_class(
    kube: Kube, unique_name: Callable[[str], str]
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    made: list[str] = []

    async def make(driver: str = GROUPED, policy: str = "Delete") -> str:
        name = unique_name("vgsclass")
        await kube.create(
            GROUP_CLASS,
            {
                "apiVersion": gplan.GROUP_API_VERSION,
                "kind": "VolumeGroupSnapshotClass",
                "metadata": {"name": name},
                "driver": driver,
                "deletionPolicy": policy,
            },
        )
        made.append(name)
        return name

    yield make
    for name in made:
        await kube.delete(GROUP_CLASS, name)


def group_snapshot(name: str, class_name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": gplan.GROUP_API_VERSION,
        "kind": "VolumeGroupSnapshot",
        "metadata": {"name": name},
        "spec": {"volumeGroupSnapshotClassName": class_name, "source": {"selector": {"matchLabels": labels}}},
    }


async def labelled_claims(kube: Kube, namespace: str, class_name: str, names: list[str], **labels: str) -> list[str]:
    handles = []
    for name in names:
        body = claim(name, class_name)
        body["metadata"]["labels"] = labels
        await kube.create(PVC, body, namespace)
    for name in names:
        bound = await bound_claim(kube, namespace, name)
        handles.append((await kube.get(PV, bound["spec"]["volumeName"]))["spec"]["csi"]["volumeHandle"])
    return handles


async def group_where(kube: Kube, namespace: str, name: str, check: Callable[[dict[str, Any]], bool], what: str) -> Any:
    async def matches() -> dict[str, Any] | None:
        current = await kube.get_or_none(VOLUME_GROUP_SNAPSHOT, name, namespace)
        return current if current is not None and check(current) else None

    return await eventually(matches, what=what, timeout=60)


async def test_group_snapshot_of_labelled_claims_and_its_deletion(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    group_driver: None,
    routed_class: Routed,
    make_group_class: Callable[..., Awaitable[str]],
) -> None:
    _, class_name = await routed_class(GROUPED)
    handles = await labelled_claims(kube, namespace, class_name, ["db-0", "db-1"], app="db")
    await labelled_claims(kube, namespace, class_name, ["web-0"], app="web")
    group_class = await make_group_class()
    await kube.create(VOLUME_GROUP_SNAPSHOT, group_snapshot("db", group_class, app="db"), namespace)
    group = await group_where(
        kube, namespace, "db", lambda g: (g.get("status") or {}).get("readyToUse") is True, "ready"
    )
    uid = group["metadata"]["uid"]
    assert group["metadata"]["finalizers"] == [gplan.GROUP_FINALIZER]
    assert not group["metadata"].get("annotations"), "no Kopf (or other) marks on the user's object"
    content = await kube.get(VOLUME_GROUP_SNAPSHOT_CONTENT, f"groupsnapcontent-{uid}")
    assert content["metadata"]["finalizers"] == [gplan.GROUP_CONTENT_FINALIZER]
    assert not content["metadata"].get("annotations")
    assert sorted(content["spec"]["source"]["volumeHandles"]) == sorted(handles)
    infos = content["status"]["volumeSnapshotInfoList"]
    assert sorted(i["volumeHandle"] for i in infos) == sorted(handles)
    created = cluster.shim_calls(GROUPED, "CreateVolumeGroupSnapshot")
    assert [c["Request"]["name"] for c in created if c["Request"]["name"].endswith(uid)] == [f"groupsnapshot-{uid}"]
    assert {"CreatingGroupSnapshot", "GroupSnapshotCreated", "GroupSnapshotReady"} <= set(
        await event_reasons(kube, namespace, "db")
    )

    # One ready VolumeSnapshot per volume, owned by the group, bound to its own content.
    async def members_ready() -> list[dict[str, Any]] | None:
        members = [s for s in await kube.list(VOLUME_SNAPSHOT, namespace) if gplan.group_of(s) == "db"]
        ready = len(members) == 2 and all(plan.is_ready(s) for s in members)
        return members if ready else None

    members = await eventually(members_ready, what="two ready member snapshots", timeout=60)
    for member in members:
        assert member["metadata"]["name"].startswith("snapshot-")
        assert member["status"]["volumeGroupSnapshotName"] == "db"
        assert gplan.MEMBER_FINALIZER in member["metadata"]["finalizers"]
        member_content = await kube.get(VOLUME_SNAPSHOT_CONTENT, member["status"]["boundVolumeSnapshotContentName"])
        assert (
            member_content["metadata"]["annotations"][plan.ANN_GROUP_MEMBER]
            == content["status"]["volumeGroupSnapshotHandle"]
        )
        assert member_content["status"]["snapshotHandle"] in {i["snapshotHandle"] for i in infos}
    cut = [c["Request"]["name"] for c in cluster.driver_calls(GROUPED, "CreateSnapshot")]
    assert sorted(cut) == sorted(f"groupsnapshot-{uid}-{h}" for h in handles), "cut by the group call only"

    # A member alone cannot be deleted while its group lives.
    await kube.delete(VOLUME_SNAPSHOT, members[0]["metadata"]["name"], namespace)

    async def refused() -> bool:
        return "SnapshotDeletePending" in await event_reasons(kube, namespace, members[0]["metadata"]["name"])

    await eventually(refused, what="SnapshotDeletePending on a member")

    await kube.delete(VOLUME_GROUP_SNAPSHOT, "db", namespace)
    await gone(kube, VOLUME_GROUP_SNAPSHOT, "db", namespace)
    await gone(kube, VOLUME_GROUP_SNAPSHOT_CONTENT, f"groupsnapcontent-{uid}")
    for member in members:
        await gone(kube, VOLUME_SNAPSHOT, member["metadata"]["name"], namespace)
        await gone(kube, VOLUME_SNAPSHOT_CONTENT, member["status"]["boundVolumeSnapshotContentName"])
    deleted = cluster.shim_calls(GROUPED, "DeleteVolumeGroupSnapshot")
    assert [c["Request"]["group_snapshot_id"] for c in deleted] == [content["status"]["volumeGroupSnapshotHandle"]]


async def test_group_snapshot_refused_when_the_driver_cannot(
    kube: Kube,
    namespace: str,
    routed_class: Routed,
    make_group_class: Callable[..., Awaitable[str]],
) -> None:
    _, class_name = await routed_class(MOCK)
    await labelled_claims(kube, namespace, class_name, ["db-0"], app="db")
    group_class = await make_group_class(MOCK)
    await kube.create(VOLUME_GROUP_SNAPSHOT, group_snapshot("db", group_class, app="db"), namespace)
    failed = await group_where(
        kube, namespace, "db", lambda g: bool((g.get("status") or {}).get("error")), "an error on the group snapshot"
    )
    assert "cannot take group snapshots" in failed["status"]["error"]["message"]
    assert gplan.CAPABILITY in failed["status"]["error"]["message"]
    await has_event(kube, namespace, "db", "GroupSnapshotNotSupported")
    assert (
        await kube.get_or_none(VOLUME_GROUP_SNAPSHOT_CONTENT, f"groupsnapcontent-{failed['metadata']['uid']}") is None
    )
    await kube.delete(VOLUME_GROUP_SNAPSHOT, "db", namespace)
    await gone(kube, VOLUME_GROUP_SNAPSHOT, "db", namespace)
