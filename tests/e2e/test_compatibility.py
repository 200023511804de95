"""Differential compatibility: the same scenarios under the real kubernetes-csi sidecars and
under Sidecarless must leave the same objects behind, field by field. And migration: volumes
one side provisioned are attached, expanded, snapshotted and deleted by the other.

Both runs use the same driver builds, StorageClasses and snapshot class, in namespaces of
their own, one after the other (never both at once). What differs on purpose is listed in
DELIBERATE with its reason, and each entry is explained in docs/compatibility.md; any other
difference fails the test. See tests/e2e/differential.py for the scenarios and what is
scrubbed (UIDs, timestamps, resource versions, driver IDs: what differs between any two runs).
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from bench.sides import SETTINGS, SidecarsSide
from csi_client import CSIClient, csi
from devcluster import DriverSpec, LocalCluster
from devcluster.build import ensure_sidecars
from devcluster.operator import REPO, OperatorProcess
from sidecarless.kube import (
    CSI_DRIVER,
    CSI_STORAGE_CAPACITY,
    DRIVER_ENDPOINT,
    PV,
    SECRET,
    STORAGE_CLASS,
    VOLUME_ATTRIBUTES_CLASS,
    VOLUME_SNAPSHOT_CLASS,
    Kube,
)
from tests import sidecar_build
from tests.conftest import short_tmpdir
from tests.e2e.conftest import eventually, wait_ready
from tests.e2e.differential import SECRET_NAME, Captured, Classes, Run, create_classes, differences, scrub
from tests.e2e.test_attacher import SERVICE_ACCOUNT

# `sidecars`: run last, while the real sidecars build in the background (tests/sidecar_build);
# the first test may wait for that build, hence the longer limit.
pytestmark = [pytest.mark.cluster, pytest.mark.sidecars, pytest.mark.timeout(1500)]

DRIVER = "compat.csi.sidecarless.dev"
NODE_DRIVER = "compat-node.csi.sidecarless.dev"  # its volumes also need NodeExpandVolume
TOPOLOGY_DRIVER = "compat-zones.csi.sidecarless.dev"  # VOLUME_ACCESSIBILITY_CONSTRAINTS
DRIVERS = (DRIVER, NODE_DRIVER, TOPOLOGY_DRIVER)

# "role path" glob -> why Sidecarless differs there. docs/compatibility.md explains each.
DELIBERATE: dict[str, str] = {
    "CSIStorageCapacity of class * in {}": "external-provisioner v6.4.0 churns the object of a segment without "
    "topology keys when several nodes have it; Sidecarless keeps one",
}


@pytest.fixture(scope="module")
def drivers(cluster: LocalCluster) -> Iterator[dict[str, str]]:
    sidecar_build.wait()
    ensure_sidecars()  # whatever the background build left, here, before any side starts
    # DRIVER behind driver_shim, which adds csi-driver-host-path's ControllerModifyVolume.
    for spec in (
        DriverSpec(DRIVER, accepted_mutable_parameters=("iops",)),
        DriverSpec(NODE_DRIVER, node_expansion=True),
        DriverSpec(TOPOLOGY_DRIVER, topology=True),
    ):
        cluster.add_driver(spec)
    yield {name: cluster.driver_addresses[name] for name in DRIVERS}
    for name in DRIVERS:
        cluster.remove_driver(name)


@pytest.fixture
async def classes(kube: Kube, unique_name: Callable[[str], str]) -> AsyncIterator[Classes]:
    endpoints = (unique_name("compat"), unique_name("compat-node"), unique_name("compat-zones"))
    made = await create_classes(kube, DRIVERS, endpoints)
    yield made
    for name in (made.basic, made.retain, made.late, made.node_expansion, made.zoned):
        await kube.delete(STORAGE_CLASS, name)
    await kube.delete(VOLUME_SNAPSHOT_CLASS, made.snapshots)
    for attributes in (made.attributes, made.infeasible):
        await kube.delete(VOLUME_ATTRIBUTES_CLASS, attributes)


async def one_run(kube: Kube, namespace: str, classes: Classes) -> tuple[Captured, Captured]:
    """Everything settled, then everything deleted: the objects at both points."""
    run = Run(kube, namespace, classes)
    await run.provision()
    await run.attach()
    await run.detach()
    await run.expand()
    await run.modify()
    await run.snapshot_and_restore()
    await asyncio.sleep(2)  # events are posted asynchronously by both sides
    settled = await run.capture(passing=True)
    await run.delete()
    await asyncio.sleep(2)
    return settled, await run.capture()


async def make_namespace(kube: Kube, name: str) -> str:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    await kube.request("POST", "/api/v1/namespaces", body=body)
    # Pods are refused until the namespace has its default ServiceAccount.
    await eventually(lambda: kube.get_or_none(SERVICE_ACCOUNT, "default", name), what="default ServiceAccount")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME}, "stringData": {"key": "v"}}
    await kube.create(SECRET, secret, name)
    return name


async def test_sidecars_and_sidecarless_leave_the_same_objects(
    kube: Kube,
    cluster: LocalCluster,
    drivers: dict[str, str],
    classes: Classes,
    exclusive: Callable[..., OperatorProcess],
    unique_name: Callable[[str], str],
) -> None:
    namespaces = [
        await make_namespace(kube, unique_name("compat-sidecars")),
        await make_namespace(kube, unique_name("compat-ours")),
    ]
    sidecars = sidecars_for(cluster, drivers)
    try:
        sidecars.start()
        try:
            theirs = await one_run(kube, namespaces[0], classes)
        finally:
            sidecars.stop()

        await serve(kube, classes, drivers)
        exclusive()
        ours = await one_run(kube, namespaces[1], classes)  # claims made at once: before the first probe
    finally:
        await cleanup(kube, namespaces, classes)

    # Both captures hold what the scenarios made (an empty capture would compare equal).
    settled, deleted = theirs
    for role in (
        "PersistentVolumeClaim basic",
        "PersistentVolume of claim clone",
        "PersistentVolume of claim restored",
        "VolumeSnapshotContent of snapshot snap",
    ):
        assert role in settled, f"the sidecars' run made no {role}"
    reasons = {event.split(":")[0] for event in settled["events of PersistentVolumeClaim basic"]}
    assert {"ProvisioningSucceeded", "VolumeResizeSuccessful", "VolumeModifySuccessful"} <= reasons
    reasons = {event.split(":")[0] for event in settled["events of PersistentVolumeClaim retained"]}
    assert {"VolumeModifyFailed", "VolumeModifyCanceled"} <= reasons
    assert "PersistentVolumeClaim retained, modification infeasible" in settled
    assert [k for k in deleted if not k.startswith("events")] == ["PersistentVolume of claim retained"]
    assert "nodeAffinity" in settled["PersistentVolume of claim zoned"]["spec"]
    csi = settled["PersistentVolume of claim basic"]["spec"]["csi"]
    assert {"controllerPublishSecretRef", "nodeStageSecretRef", "nodePublishSecretRef"} <= set(csi)

    found = [
        f"[{point}] {line}"
        for point, (a, b) in zip(("settled", "deleted"), zip(theirs, ours, strict=True), strict=True)
        for line in unexplained(differences(a, b))
    ]
    assert not found, "Sidecarless differs from the sidecars:\n" + "\n".join(found)


def unexplained(lines: list[str]) -> list[str]:
    """The differences DELIBERATE does not explain."""
    return [line for line in lines if not any(fnmatch.fnmatch(line.split(":")[0], p) for p in DELIBERATE)]


async def serve(kube: Kube, classes: Classes, drivers: dict[str, str]) -> None:
    """DriverEndpoints for the classes' endpoint names: Sidecarless serves them once it runs."""
    for driver, endpoint in classes.endpoints.items():
        body = {
            "apiVersion": DRIVER_ENDPOINT.api_version,
            "kind": "DriverEndpoint",
            "metadata": {"name": endpoint},
            "spec": {"driverName": driver, "address": drivers[driver]},
        }
        await kube.create(DRIVER_ENDPOINT, body)


async def ready(kube: Kube, classes: Classes) -> None:
    for endpoint in classes.endpoints.values():
        await wait_ready(kube, endpoint)


async def cleanup(kube: Kube, namespaces: list[str], classes: Classes) -> None:
    for volume in await kube.list(PV):
        if (volume["spec"].get("claimRef") or {}).get("namespace") in namespaces:
            await kube.delete(PV, volume["metadata"]["name"])  # the Retain ones: Released, kept
    for name in namespaces:
        await kube.request("DELETE", f"/api/v1/namespaces/{name}")
    for endpoint in classes.endpoints.values():
        await kube.delete(DRIVER_ENDPOINT, endpoint)


def sidecars_for(
    cluster: LocalCluster,
    drivers: dict[str, str],
    *,
    provisioner_flags: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> SidecarsSide:
    sockets = {name: address.removeprefix("unix://") for name, address in drivers.items()}
    return SidecarsSide(
        cluster.kubeconfig,
        sockets,
        SETTINGS["qps100"],
        short_tmpdir("slc-compat-"),
        provisioner_flags=provisioner_flags,
        env=env,
    )


async def after_the_switch(run: Run, cluster: LocalCluster) -> dict[str, str]:
    """Everything but provisioning, by whichever side now runs; the volume IDs it had."""
    published = len(cluster.driver_calls(DRIVER, "ControllerPublishVolume"))
    await run.attach()
    await run.detach()
    assert len(cluster.driver_calls(DRIVER, "ControllerPublishVolume")) > published
    await run.expand()
    await run.snapshot_and_restore()
    handles = await run.handles()
    await run.delete()
    return handles


async def backend_volumes(cluster: LocalCluster) -> set[str]:
    held = set()
    for driver in DRIVERS:
        async with CSIClient(cluster.driver_addresses[driver]) as client:
            listed = await client.list_volumes(csi.ListVolumesRequest())
        held |= {entry.volume.volume_id for entry in listed.entries}
    return held


async def test_volumes_move_from_the_sidecars_to_sidecarless(
    kube: Kube,
    cluster: LocalCluster,
    drivers: dict[str, str],
    classes: Classes,
    exclusive: Callable[..., OperatorProcess],
    unique_name: Callable[[str], str],
) -> None:
    namespace = await make_namespace(kube, unique_name("moved-over"))
    run = Run(kube, namespace, classes)
    sidecars = sidecars_for(cluster, drivers)
    try:
        sidecars.start()
        try:
            await run.provision()
        finally:
            sidecars.stop()
        await serve(kube, classes, drivers)
        exclusive()
        await ready(kube, classes)
        handles = await after_the_switch(run, cluster)
        left = await backend_volumes(cluster)
    finally:
        await cleanup(kube, [namespace], classes)
    assert {name for name, handle in handles.items() if handle in left} == {"retained"}


async def test_volumes_move_back_to_the_sidecars(
    kube: Kube,
    cluster: LocalCluster,
    drivers: dict[str, str],
    classes: Classes,
    exclusive: Callable[..., OperatorProcess],
    unique_name: Callable[[str], str],
) -> None:
    namespace = await make_namespace(kube, unique_name("moved-back"))
    run = Run(kube, namespace, classes)
    sidecars = sidecars_for(cluster, drivers)
    try:
        await serve(kube, classes, drivers)
        operator = exclusive()
        await ready(kube, classes)
        await run.provision()
        operator.stop()  # docs/migration.md: no Sidecarless serves the endpoint any more
        sidecars.start()
        try:
            handles = await after_the_switch(run, cluster)
        finally:
            sidecars.stop()
        left = await backend_volumes(cluster)
        operator.start()  # to let the DriverEndpoints go (their finalizer is its own)
    finally:
        await cleanup(kube, [namespace], classes)
    assert {name for name, handle in handles.items() if handle in left} == {"retained"}


CAPACITY_LABELS = "csi.storage.k8s.io/managed-by=external-provisioner"


async def capacity_objects(kube: Kube, namespace: str, classes: Classes) -> Captured:
    """The CSIStorageCapacity objects of the run's classes, by class and segment, scrubbed."""
    found: Captured = {}
    for item in await kube.list(CSI_STORAGE_CAPACITY, namespace, label_selector=CAPACITY_LABELS):
        if item["storageClassName"] not in (classes.late, classes.zoned):
            continue
        role = f"CSIStorageCapacity of class {item['storageClassName']} in {item.get('nodeTopology')}"
        item["metadata"] = {k: v for k, v in item["metadata"].items() if k not in ("name", "namespace")}
        found[role] = scrub(item, namespace)
    return found


async def settled_capacity(kube: Kube, namespace: str, classes: Classes, *, roles: int) -> Captured:
    async def made() -> Captured | None:
        found = await capacity_objects(kube, namespace, classes)
        return found if len(found) >= roles and any(classes.zoned in role for role in found) else None

    await eventually(made, what=f"capacity objects of the late-binding classes in {namespace}", timeout=90)
    await asyncio.sleep(3)  # nothing more comes (a duplicate, an update)
    return await capacity_objects(kube, namespace, classes)


async def test_sidecars_and_sidecarless_publish_the_same_capacity_objects(
    kube: Kube,
    cluster: LocalCluster,
    drivers: dict[str, str],
    classes: Classes,
    exclusive: Callable[..., OperatorProcess],
    unique_name: Callable[[str], str],
) -> None:
    """external-provisioner --enable-capacity and Sidecarless' capacity tracking, one after the
    other: the same objects for the same classes and segments (names, namespaces aside)."""
    tracked = (DRIVER, TOPOLOGY_DRIVER)
    for driver in tracked:
        await kube.patch(CSI_DRIVER, driver, {"spec": {"storageCapacity": True}})
    theirs_namespace = await make_namespace(kube, unique_name("capacity-sidecars"))
    # Not in a Pod: no owner on either side (-1 for external-provisioner, no Pod for us).
    flags = ("--enable-capacity", "--capacity-ownerref-level=-1")
    sidecars = sidecars_for(cluster, drivers, provisioner_flags=flags, env={"NAMESPACE": theirs_namespace})
    ours_namespace = "default"  # the test operator's SIDECARLESS_NAMESPACE
    try:
        sidecars.start()
        try:
            # The zoned class's object; the late one's comes and goes (DELIBERATE).
            theirs = await settled_capacity(kube, theirs_namespace, classes, roles=1)
        finally:
            sidecars.stop()
        await serve(kube, classes, drivers)
        exclusive()
        ours = await settled_capacity(kube, ours_namespace, classes, roles=2)
    finally:
        await cleanup(kube, [theirs_namespace], classes)
        for driver in tracked:
            await kube.patch(CSI_DRIVER, driver, {"spec": {"storageCapacity": False}})
    assert any(classes.zoned in role for role in theirs), "external-provisioner made the zoned class's object"
    assert len(ours) == 2, ours
    found = unexplained(differences(theirs, ours))
    assert not found, "Sidecarless' capacity objects differ from external-provisioner's:\n" + "\n".join(found)


def test_every_deliberate_difference_is_documented() -> None:
    text = (REPO / "docs" / "compatibility.md").read_text()
    missing = [pattern for pattern in DELIBERATE if f"`{pattern}`" not in text]
    assert not missing, f"docs/compatibility.md does not explain: {missing}"
