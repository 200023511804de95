"""The DriverEndpoint reports backend volumes and snapshots nothing references, and deletes none.

csi-test's mock starts with three volumes and three snapshots of its own: no PV or content
references them, so they are the first unreferenced objects every fresh mock reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from csi_client import CSIClient, csi
from devcluster import DriverSpec, LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import DRIVER_ENDPOINT, EVENT, PV, PVC, Kube
from tests.e2e.conftest import claim, eventually, wait_ready
from tests.e2e.test_provisioner import bound_claim

pytestmark = pytest.mark.cluster

LEAKY = "mock-leaky.csi.sidecarless.dev"


@pytest.fixture(scope="module")
def leaky_driver(cluster: LocalCluster) -> Iterator[str]:
    cluster.add_driver(DriverSpec(LEAKY))
    yield cluster.driver_addresses[LEAKY]
    cluster.remove_driver(LEAKY)


async def unreferenced(kube: Kube, endpoint: str) -> dict[str, Any]:
    return dict(((await kube.get(DRIVER_ENDPOINT, endpoint)).get("status") or {}).get("unreferenced") or {})


async def backend(address: str) -> tuple[set[str], set[str]]:
    async with CSIClient(address) as client:
        volumes = await client.list_volumes(csi.ListVolumesRequest())
        snapshots = await client.list_snapshots(csi.ListSnapshotsRequest())
    return {e.volume.volume_id for e in volumes.entries}, {e.snapshot.snapshot_id for e in snapshots.entries}


async def test_unreferenced_volumes_and_snapshots_are_reported_never_deleted(
    kube: Kube,
    namespace: str,
    leaky_driver: str,
    exclusive: Callable[..., OperatorProcess],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    exclusive(SIDECARLESS_LEAK_CHECK_SECONDS="1")
    own_volumes, own_snapshots = await backend(leaky_driver)
    endpoint = await make_endpoint(LEAKY)
    await wait_ready(kube, endpoint)

    async def reported(volumes: set[str], snapshots: set[str]) -> dict[str, Any] | None:
        found = await unreferenced(kube, endpoint)
        return (
            found
            if set(found.get("volumes") or []) == volumes and set(found.get("snapshots") or []) == snapshots
            else None
        )

    found = await eventually(
        lambda: reported(own_volumes, own_snapshots), what="the mock's own objects reported", timeout=30
    )
    assert found["volumeCount"] == len(own_volumes)
    assert found["snapshotCount"] == len(own_snapshots)

    # A claim provisioned through Sidecarless: its volume is referenced, so never reported.
    class_name = await make_class(endpoint, provisioner=LEAKY, reclaimPolicy="Retain")
    await kube.create(PVC, claim("kept", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "kept"))["spec"]["volumeName"]
    handle = (await kube.get(PV, volume_name))["spec"]["csi"]["volumeHandle"]

    # A volume made behind everyone's back, and a PV deleted by hand (Retain): both leaks.
    async with CSIClient(leaky_driver) as client:
        made = await client.create_volume(
            csi.CreateVolumeRequest(
                name="made-by-hand",
                volume_capabilities=[
                    csi.VolumeCapability(
                        mount=csi.VolumeCapability.MountVolume(),
                        access_mode=csi.VolumeCapability.AccessMode(
                            mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
                        ),
                    )
                ],
            )
        )
    await kube.delete(PVC, "kept", namespace)
    await kube.delete(PV, volume_name)
    leaks = own_volumes | {made.volume.volume_id, handle}
    await eventually(lambda: reported(leaks, own_snapshots), what="the new leaks reported", timeout=30)

    events = [e for e in await kube.list(EVENT, "default") if e["involvedObject"].get("name") == endpoint]
    messages = [e["message"] for e in events if e["reason"] == "UnreferencedVolumes"]
    assert any(made.volume.volume_id in m and "never deletes" in m for m in messages), messages
    assert await backend(leaky_driver) == (leaks, own_snapshots), "nothing was deleted"
