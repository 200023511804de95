"""Differential compatibility: the same scenarios under the real kubernetes-csi sidecars and
under Sidecarless must leave the same objects behind, field by field.

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
from devcluster import DriverSpec, LocalCluster
from devcluster.operator import REPO, OperatorProcess
from sidecarless.kube import DRIVER_ENDPOINT, PV, STORAGE_CLASS, VOLUME_SNAPSHOT_CLASS, Kube, Resource
from tests.conftest import short_tmpdir
from tests.e2e.conftest import wait_ready
from tests.e2e.differential import Captured, Classes, Run, create_classes, differences

pytestmark = pytest.mark.cluster

SERVICE_ACCOUNT = Resource("", "v1", "serviceaccounts", "ServiceAccount", True)
DRIVER = "compat.csi.sidecarless.dev"
NODE_DRIVER = "compat-node.csi.sidecarless.dev"  # its volumes also need NodeExpandVolume

# "role path" glob -> why Sidecarless differs there. docs/compatibility.md explains each.
DELIBERATE: dict[str, str] = {}


@pytest.fixture(scope="module")
def drivers(cluster: LocalCluster) -> Iterator[dict[str, str]]:
    for spec in (DriverSpec(DRIVER), DriverSpec(NODE_DRIVER, node_expansion=True)):
        cluster.add_driver(spec)
    yield {name: cluster.driver_addresses[name] for name in (DRIVER, NODE_DRIVER)}
    for name in (DRIVER, NODE_DRIVER):
        cluster.remove_driver(name)


@pytest.fixture
async def classes(kube: Kube) -> AsyncIterator[Classes]:
    made = await create_classes(kube, DRIVER, NODE_DRIVER, "compat", "compat-node")
    yield made
    for name in (made.basic, made.retain, made.late, made.node_expansion):
        await kube.delete(STORAGE_CLASS, name)
    await kube.delete(VOLUME_SNAPSHOT_CLASS, made.snapshots)


async def one_run(kube: Kube, namespace: str, classes: Classes) -> tuple[Captured, Captured]:
    """Everything settled, then everything deleted: the objects at both points."""
    run = Run(kube, namespace, classes)
    await run.provision()
    await run.attach_and_detach()
    await run.detach()
    await run.expand()
    await run.snapshot_and_restore()
    await asyncio.sleep(2)  # events are posted asynchronously by both sides
    settled = await run.capture()
    await run.delete()
    await asyncio.sleep(2)
    return settled, await run.capture()


async def make_namespace(kube: Kube, name: str) -> str:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    await kube.request("POST", "/api/v1/namespaces", body=body)
    for _ in range(150):  # Pods are refused until the namespace has its default ServiceAccount
        if await kube.get_or_none(SERVICE_ACCOUNT, "default", name) is not None:
            return name
        await asyncio.sleep(0.2)
    raise AssertionError(f"namespace {name} got no default ServiceAccount")


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
    log_dir = short_tmpdir("slc-compat-")
    sidecars = SidecarsSide(
        cluster.kubeconfig,
        {name: address.removeprefix("unix://") for name, address in drivers.items()},
        SETTINGS["qps100"],
        log_dir,
    )
    try:
        sidecars.start()
        try:
            theirs = await one_run(kube, namespaces[0], classes)
        finally:
            sidecars.stop()

        for endpoint, driver in (("compat", DRIVER), ("compat-node", NODE_DRIVER)):
            body = {
                "apiVersion": DRIVER_ENDPOINT.api_version,
                "kind": "DriverEndpoint",
                "metadata": {"name": endpoint},
                "spec": {"driverName": driver, "address": drivers[driver]},
            }
            await kube.create(DRIVER_ENDPOINT, body)
        exclusive()
        for endpoint in ("compat", "compat-node"):
            await wait_ready(kube, endpoint)
        ours = await one_run(kube, namespaces[1], classes)
    finally:
        await cleanup(kube, namespaces)

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
    assert {"ProvisioningSucceeded", "VolumeResizeSuccessful"} <= reasons
    assert [k for k in deleted if not k.startswith("events")] == ["PersistentVolume of claim retained"]

    found = []
    for point, (a, b) in zip(("settled", "deleted"), zip(theirs, ours, strict=True), strict=True):
        for line in differences(a, b):
            if not any(fnmatch.fnmatch(line.split(":")[0], pattern) for pattern in DELIBERATE):
                found.append(f"[{point}] {line}")
    assert not found, "Sidecarless differs from the sidecars:\n" + "\n".join(found)


async def cleanup(kube: Kube, namespaces: list[str]) -> None:
    for volume in await kube.list(PV):
        if (volume["spec"].get("claimRef") or {}).get("namespace") in namespaces:
            await kube.delete(PV, volume["metadata"]["name"])  # the Retain ones: Released, kept
    for name in namespaces:
        await kube.request("DELETE", f"/api/v1/namespaces/{name}")
    for endpoint in ("compat", "compat-node"):
        await kube.delete(DRIVER_ENDPOINT, endpoint)


def test_every_deliberate_difference_is_documented() -> None:
    text = (REPO / "docs" / "compatibility.md").read_text()
    missing = [pattern for pattern in DELIBERATE if f"`{pattern}`" not in text]
    assert not missing, f"docs/compatibility.md does not explain: {missing}"
