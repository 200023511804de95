"""csi_client against csi-test's real mock driver: every RPC the controllers use, and the failures."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from csi_client import (
    CSIClient,
    FinalError,
    InfeasibleError,
    MaybeInProgressError,
    csi,
    discover,
    probe_ready,
)
from devcluster import DriverSpec, RunningDriver, start_driver
from devcluster.procs import free_port
from tests.csi.conftest import MOCK_NAME

pytestmark = pytest.mark.driver

GIB = 1 << 30


def mount_capability(fs_type: str = "ext4") -> csi.VolumeCapability:
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type=fs_type),
        access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )


def create_request(name: str, size: int = GIB) -> csi.CreateVolumeRequest:
    return csi.CreateVolumeRequest(
        name=name,
        capacity_range=csi.CapacityRange(required_bytes=size),
        volume_capabilities=[mount_capability()],
        parameters={"type": "test"},
    )


async def test_identity(client: CSIClient) -> None:
    info = await client.get_plugin_info()
    assert info.name == MOCK_NAME
    assert info.vendor_version
    assert await probe_ready(client)


async def test_discover_reports_capability_names(client: CSIClient) -> None:
    driver = await discover(client)
    assert driver.name == MOCK_NAME
    assert client.driver_name == MOCK_NAME, "discovery names the driver for the call metrics"
    assert driver.has_controller_service
    assert {
        "CREATE_DELETE_VOLUME",
        "PUBLISH_UNPUBLISH_VOLUME",
        "LIST_VOLUMES",
        "LIST_VOLUMES_PUBLISHED_NODES",
        "GET_CAPACITY",
        "CREATE_DELETE_SNAPSHOT",
        "LIST_SNAPSHOTS",
        "EXPAND_VOLUME",
        "CLONE_VOLUME",
        "GET_VOLUME",
    } <= driver.controller
    assert "VOLUME_ACCESSIBILITY_CONSTRAINTS" not in driver.plugin


async def test_create_volume_is_idempotent(client: CSIClient) -> None:
    first = await client.create_volume(create_request("pvc-idempotent"))
    again = await client.create_volume(create_request("pvc-idempotent"))
    assert first.volume.volume_id == again.volume.volume_id
    assert first.volume.capacity_bytes >= GIB


async def test_incompatible_repeat_is_a_final_error(client: CSIClient) -> None:
    await client.create_volume(create_request("pvc-incompatible", GIB))
    with pytest.raises(FinalError) as caught:
        await client.create_volume(create_request("pvc-incompatible", 10 * GIB))
    assert caught.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.method == "CreateVolume"


async def test_size_the_driver_refuses_is_final(client: CSIClient) -> None:
    with pytest.raises(FinalError) as caught:
        await client.create_volume(create_request("pvc-huge", 1 << 62))
    assert caught.value.code is grpc.StatusCode.OUT_OF_RANGE


async def test_delete_missing_volume_is_ok(client: CSIClient) -> None:
    await client.delete_volume(csi.DeleteVolumeRequest(volume_id="no-such-volume"))


async def test_delete_volume_removes_it(client: CSIClient) -> None:
    volume = (await client.create_volume(create_request("pvc-delete"))).volume
    await client.delete_volume(csi.DeleteVolumeRequest(volume_id=volume.volume_id))
    listed = await client.list_volumes(csi.ListVolumesRequest())
    assert volume.volume_id not in {entry.volume.volume_id for entry in listed.entries}


async def test_publish_and_unpublish(client: CSIClient) -> None:
    volume = (await client.create_volume(create_request("pvc-publish"))).volume
    node_id = (await client.node_get_info()).node_id
    published = await client.controller_publish_volume(
        csi.ControllerPublishVolumeRequest(
            volume_id=volume.volume_id, node_id=node_id, volume_capability=mount_capability()
        )
    )
    assert published.publish_context, "the mock returns a device path in publish_context"
    # The mock reports every volume as published everywhere in published_node_ids; what it
    # really tracks is the device it handed out, kept in the volume's context.
    device_key = f"{node_id}/dev"
    status = await client.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=volume.volume_id))
    assert status.status.volume_condition is not None
    assert device_key in status.volume.volume_context
    await client.controller_unpublish_volume(
        csi.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id, node_id=node_id)
    )
    status = await client.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=volume.volume_id))
    assert device_key not in status.volume.volume_context


async def test_publish_to_unknown_node_is_final(client: CSIClient) -> None:
    volume = (await client.create_volume(create_request("pvc-wrong-node"))).volume
    with pytest.raises(FinalError) as caught:
        await client.controller_publish_volume(
            csi.ControllerPublishVolumeRequest(
                volume_id=volume.volume_id, node_id="no-such-node", volume_capability=mount_capability()
            )
        )
    assert caught.value.code is grpc.StatusCode.NOT_FOUND


async def test_expand(client: CSIClient) -> None:
    volume = (await client.create_volume(create_request("pvc-expand"))).volume
    expanded = await client.controller_expand_volume(
        csi.ControllerExpandVolumeRequest(
            volume_id=volume.volume_id,
            capacity_range=csi.CapacityRange(required_bytes=3 * GIB),
            volume_capability=mount_capability(),
        )
    )
    assert expanded.capacity_bytes == 3 * GIB


async def test_snapshots(client: CSIClient) -> None:
    volume = (await client.create_volume(create_request("pvc-snap-source"))).volume
    created = await client.create_snapshot(
        csi.CreateSnapshotRequest(name="snapshot-1", source_volume_id=volume.volume_id)
    )
    snapshot = created.snapshot
    assert snapshot.source_volume_id == volume.volume_id
    assert snapshot.ready_to_use
    again = await client.create_snapshot(
        csi.CreateSnapshotRequest(name="snapshot-1", source_volume_id=volume.volume_id)
    )
    assert again.snapshot.snapshot_id == snapshot.snapshot_id
    listed = await client.list_snapshots(csi.ListSnapshotsRequest(snapshot_id=snapshot.snapshot_id))
    assert [entry.snapshot.snapshot_id for entry in listed.entries] == [snapshot.snapshot_id]
    restored = await client.create_volume(
        csi.CreateVolumeRequest(
            name="pvc-restored",
            capacity_range=csi.CapacityRange(required_bytes=GIB),
            volume_capabilities=[mount_capability()],
            volume_content_source=csi.VolumeContentSource(
                snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snapshot.snapshot_id)
            ),
        )
    )
    # The mock fills content_source with its internal index, not the snapshot ID.
    assert restored.volume.content_source.HasField("snapshot")
    await client.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id))
    listed = await client.list_snapshots(csi.ListSnapshotsRequest(snapshot_id=snapshot.snapshot_id))
    assert not listed.entries


async def test_capacity_and_paged_listing(client: CSIClient) -> None:
    capacity = await client.get_capacity(csi.GetCapacityRequest(volume_capabilities=[mount_capability()]))
    assert capacity.available_capacity > 0
    for index in range(3):
        await client.create_volume(create_request(f"pvc-page-{index}"))
    seen: list[str] = []
    token = ""
    while True:
        page = await client.list_volumes(csi.ListVolumesRequest(max_entries=2, starting_token=token))
        assert len(page.entries) <= 2
        seen += [entry.volume.volume_id for entry in page.entries]
        token = page.next_token
        if not token:
            break
    assert len(seen) == len(set(seen)) >= 3


async def test_node_service(client: CSIClient) -> None:
    info = await client.node_get_info()
    assert info.node_id == MOCK_NAME
    capabilities = await client.node_get_capabilities()
    assert capabilities.capabilities


async def test_tcp_endpoint(driver_dir: Path) -> None:
    port = free_port()
    driver = start_driver(DriverSpec("mock.csi.tcp-test"), driver_dir, tcp_port=port)
    try:
        assert driver.address == f"dns:///127.0.0.1:{port}"
        async with CSIClient(driver.address) as tcp_client:
            assert (await tcp_client.get_plugin_info()).name == "mock.csi.tcp-test"
    finally:
        driver.process.stop()


# --- failures ------------------------------------------------------------------------


def _count(driver_name: str, method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "csi_sidecar_operations_seconds_count",
        {"driver_name": driver_name, "method_name": method, "grpc_status_code": code},
    )
    return value or 0.0


async def test_socket_without_server_may_be_in_progress_and_is_retried_a_bounded_number_of_times() -> None:
    async with CSIClient("unix:///tmp/slc-no-such-driver.sock", driver_name="absent", connect_attempts=3) as absent:
        with pytest.raises(MaybeInProgressError) as caught:
            await absent.create_volume(create_request("pvc-nowhere"))
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert _count("absent", "/csi.v1.Controller/CreateVolume", "Unavailable") == 3


async def test_deadline_that_expires_may_be_in_progress(start_mock: Callable[[DriverSpec], RunningDriver]) -> None:
    slow = start_mock(
        DriverSpec(
            "mock.csi.slow-test",
            hooks={"createVolumeStart": "var t = Date.now(); while (Date.now() - t < 3000) {}; OK;"},
        )
    )
    async with CSIClient(slow.address, timeout=0.5) as slow_client:
        with pytest.raises(MaybeInProgressError) as caught:
            await slow_client.create_volume(create_request("pvc-slow"))
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    ("hook_code", "exception", "code"),
    [
        ("INTERNAL", FinalError, grpc.StatusCode.INTERNAL),
        ("INVALIDARGUMENT", InfeasibleError, grpc.StatusCode.INVALID_ARGUMENT),
        ("ABORTED", MaybeInProgressError, grpc.StatusCode.ABORTED),
    ],
)
async def test_driver_errors_are_classified(
    start_mock: Callable[[DriverSpec], RunningDriver], hook_code: str, exception: type[Exception], code: grpc.StatusCode
) -> None:
    failing = start_mock(DriverSpec(f"mock.csi.fail-{hook_code.lower()}", hooks={"createVolumeStart": hook_code}))
    async with CSIClient(failing.address) as failing_client:
        with pytest.raises(exception) as caught:
            await failing_client.create_volume(create_request("pvc-fails"))
    assert type(caught.value) is exception
    assert caught.value.code is code  # type: ignore[attr-defined]


async def test_expansion_out_of_range_is_infeasible(start_mock: Callable[[DriverSpec], RunningDriver]) -> None:
    failing = start_mock(DriverSpec("mock.csi.expand-fail", hooks={"controllerExpandVolumeStart": "OUTOFRANGE"}))
    async with CSIClient(failing.address) as failing_client:
        volume = (await failing_client.create_volume(create_request("pvc-expand-fail"))).volume
        with pytest.raises(InfeasibleError):
            await failing_client.controller_expand_volume(
                csi.ControllerExpandVolumeRequest(
                    volume_id=volume.volume_id, capacity_range=csi.CapacityRange(required_bytes=2 * GIB)
                )
            )


async def test_secrets_never_reach_the_log(client: CSIClient, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-value-that-must-not-leak"
    request = create_request("pvc-with-secret")
    request.secrets["password"] = secret
    with caplog.at_level(logging.DEBUG, logger="csi_client.calls"):
        await client.create_volume(request)
    records = [r for r in caplog.records if getattr(r, "csi_method", "") == "/csi.v1.Controller/CreateVolume"]
    assert records, "the call was logged"
    for record in records:
        assert secret not in record.getMessage()
        assert secret not in repr(vars(record))
    assert records[-1].csi_request["secrets"] == "***stripped***"  # type: ignore[attr-defined]
    assert records[-1].csi_request["name"] == "pvc-with-secret"  # type: ignore[attr-defined]


async def test_calls_are_counted_in_the_sidecar_histogram(client: CSIClient) -> None:
    await discover(client)
    before = _count(MOCK_NAME, "/csi.v1.Identity/Probe", "OK")
    await client.probe()
    assert _count(MOCK_NAME, "/csi.v1.Identity/Probe", "OK") == before + 1
