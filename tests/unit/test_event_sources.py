"""Each controller signs its Events as the sidecar it replaces signs them (docs/compatibility.md
"Event sources"), on the fake world."""

from __future__ import annotations

import asyncio
import re

import grpc

from sidecarless import kube as k
from tests.unit.fakeworld import World, bound_pair, bound_volume_on_a_node, simulate
from tests.unit.test_snapshotter_sync import snapshot_class

DRIVER = "fake.csi.example.com"


def test_the_provisioner_signs_as_external_provisioner_and_the_resizer_as_external_resizer() -> None:
    async def main() -> tuple[dict[str, str], dict[str, str]]:
        world = World()
        try:
            await world.endpoint("ep")
            world.driver().answer("ControllerExpandVolume", grpc.StatusCode.INTERNAL)
            bound_volume_on_a_node(world)  # the class too
            claim, _ = bound_pair("new", "unused")
            claim["spec"].pop("volumeName")
            claim["status"] = {"phase": "Pending"}
            claim["metadata"]["annotations"] = {"volume.kubernetes.io/storage-provisioner": DRIVER}
            world.api.put(k.PVC, claim)
            world.start()
            await world.settle()
            world.api.edit(k.PVC, "default/data", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}})
            await asyncio.sleep(5)
            return world.api.event_sources("new"), world.api.event_sources("data")
        finally:
            await world.stop()

    provisioned, resized = simulate(main)
    # sig-storage-lib-external-provisioner's `<driver>_<host>_<uuid>`
    assert re.fullmatch(rf"{DRIVER}_fakeworld_[0-9a-f-]{{36}}", provisioned["ProvisioningSucceeded"]), provisioned
    assert provisioned["Provisioning"] == provisioned["ProvisioningSucceeded"]
    assert resized["VolumeResizeFailed"] == f"external-resizer {DRIVER}"
    assert resized["Resizing"] == f"external-resizer {DRIVER}"


def test_the_snapshot_halves_sign_as_snapshot_controller_and_csi_snapshotter() -> None:
    async def main() -> tuple[dict[str, str], dict[str, str]]:
        world = World()
        try:
            await world.endpoint("ep")
            world.driver().answer("CreateSnapshot", grpc.StatusCode.INTERNAL)
            bound_volume_on_a_node(world)
            world.api.put(k.VOLUME_SNAPSHOT_CLASS, snapshot_class())
            snapshot = {
                "metadata": {"name": "snap", "namespace": "default", "uid": "u1"},
                "spec": {"volumeSnapshotClassName": "snaps", "source": {"persistentVolumeClaimName": "data"}},
            }
            world.api.put(k.VOLUME_SNAPSHOT, snapshot)
            world.start()
            await asyncio.sleep(5)
            return world.api.event_sources("snap"), world.api.event_sources("snapcontent-u1")
        finally:
            await world.stop()

    on_snapshot, on_content = simulate(main)
    assert on_snapshot, "snapshot-controller posted events on the VolumeSnapshot"
    assert set(on_snapshot.values()) == {"snapshot-controller"}, on_snapshot
    assert on_content["SnapshotCreationFailed"] == f"csi-snapshotter {DRIVER}", on_content
