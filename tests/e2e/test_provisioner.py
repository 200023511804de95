"""The provisioner end to end: a real kube-apiserver and kube-controller-manager, the real mock
driver, and the operator as its own process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from csi_client import CSIClient, csi
from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import DRIVER_ENDPOINT, EVENT, PV, PVC, SECRET, STORAGE_CLASS, VOLUME_ATTACHMENT, Kube
from tests.e2e.conftest import MOCK, MOCK_NOATTACH, claim, condition, eventually, volume_attachment, wait_ready

pytestmark = pytest.mark.cluster

KCM_CLAIM_ANNOTATIONS = {
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
}


async def bound_claim(kube: Kube, namespace: str, name: str, timeout: float = 30.0) -> dict[str, Any]:
    async def bound() -> dict[str, Any] | None:
        current = await kube.get(PVC, name, namespace)
        return current if (current.get("status") or {}).get("phase") == "Bound" else None

    result: dict[str, Any] = await eventually(bound, timeout=timeout, what=f"claim {namespace}/{name} Bound")
    return result


async def has_event(kube: Kube, namespace: str, name: str, reason: str, timeout: float = 10.0) -> None:
    """Wait for an event `reason` on `name` (events follow the status writes they explain)."""

    async def found() -> bool:
        return reason in await event_reasons(kube, namespace, name)

    await eventually(found, what=f"a {reason} event on {name}", timeout=timeout)


async def event_reasons(kube: Kube, namespace: str, name: str) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {}
    for event in await kube.list(EVENT, namespace):
        if event["involvedObject"].get("name") == name:
            reasons.setdefault(event["reason"], []).append(event["message"])
    return reasons


async def backend_volume_ids(address: str) -> set[str]:
    async with CSIClient(address) as client:
        listed = await client.list_volumes(csi.ListVolumesRequest())
    return {entry.volume.volume_id for entry in listed.entries}


async def test_endpoint_reports_driver_and_capabilities(
    kube: Kube, make_endpoint: Callable[..., Awaitable[str]]
) -> None:
    name = await make_endpoint()
    endpoint = await wait_ready(kube, name)
    status = endpoint["status"]
    assert status["driver"]["name"] == MOCK
    assert {"CREATE_DELETE_VOLUME", "PUBLISH_UNPUBLISH_VOLUME", "EXPAND_VOLUME"} <= set(
        status["capabilities"]["controller"]
    )
    assert "CONTROLLER_SERVICE" in status["capabilities"]["plugin"]
    assert status["controllers"] == {
        "provisioner": "Active",
        "attacher": "Active",
        "resizer": "Active",
        "modifier": "Unsupported",  # csi-test's mock has no ControllerModifyVolume
        "snapshotter": "Active",
        "capacity": "NotRequired",  # the mock has GET_CAPACITY; its CSIDriver does not ask (storageCapacity)
    }
    assert status["probe"]["ready"] is True
    assert condition(endpoint, "Connected")["status"] == "True"
    assert condition(endpoint, "Degraded")["status"] == "False"
    assert status["observedGeneration"] == endpoint["metadata"]["generation"]


async def test_disabled_controller_is_reported(kube: Kube, make_endpoint: Callable[..., Awaitable[str]]) -> None:
    name = await make_endpoint(controllers={"attacher": False})
    endpoint = await wait_ready(kube, name)
    assert endpoint["status"]["controllers"]["attacher"] == "Disabled"


async def test_driver_name_that_disagrees_is_not_ready(
    kube: Kube, make_endpoint: Callable[..., Awaitable[str]], cluster: LocalCluster
) -> None:
    name = await make_endpoint("wrong.csi.example", address=cluster.driver_addresses[MOCK])
    endpoint = await wait_ready(kube, name, status="False", reason="DriverNameMismatch")
    message = condition(endpoint, "Ready")["message"]
    assert MOCK in message
    assert "wrong.csi.example" in message


async def test_unreachable_address_is_not_ready(kube: Kube, make_endpoint: Callable[..., Awaitable[str]]) -> None:
    name = await make_endpoint(address="unix:///tmp/slc-nothing-listens-here.sock")
    endpoint = await wait_ready(kube, name, status="False", reason="Unreachable")
    assert condition(endpoint, "Connected")["status"] == "False"
    assert "slc-nothing-listens-here.sock" in condition(endpoint, "Ready")["message"]


async def test_bad_address_is_refused_at_admission(kube: Kube) -> None:
    from sidecarless.kube import KubeError  # noqa: PLC0415

    with pytest.raises(KubeError) as refused:
        await kube.create(
            DRIVER_ENDPOINT,
            {
                "apiVersion": "sidecarless.io/v1alpha1",
                "kind": "DriverEndpoint",
                "metadata": {"name": "bad-address"},
                "spec": {"driverName": MOCK, "address": "tcp://10.0.0.1:1234"},
            },
        )
    assert refused.value.status == 422
    assert "address must be unix:///path/to/csi.sock" in refused.value.message


async def test_provision_bind_and_delete(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    operator: OperatorProcess,
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    endpoint = await make_endpoint()
    await wait_ready(kube, endpoint)
    class_name = await make_class(
        endpoint,
        reclaimPolicy="Delete",
        mountOptions=["noatime"],
        parameters={"type": "fast", "csi.storage.k8s.io/fstype": "xfs"},
    )
    await kube.create(PVC, claim("data", class_name, "1Gi"), namespace)
    bound = await bound_claim(kube, namespace, "data")
    uid = bound["metadata"]["uid"]
    volume = await kube.get(PV, f"pvc-{uid}")

    assert volume["spec"]["claimRef"]["uid"] == uid
    assert volume["spec"]["claimRef"]["name"] == "data"
    assert volume["spec"]["capacity"] == {"storage": "1Gi"}
    assert volume["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert volume["spec"]["storageClassName"] == class_name
    assert volume["spec"]["mountOptions"] == ["noatime"]
    assert volume["spec"]["volumeMode"] == "Filesystem"
    source = volume["spec"]["csi"]
    assert source["driver"] == MOCK
    assert source["fsType"] == "xfs"
    assert source["volumeHandle"]
    assert source["volumeAttributes"]["storage.kubernetes.io/csiProvisionerIdentity"].endswith(f"-{MOCK}")
    assert volume["metadata"]["annotations"] == {
        "pv.kubernetes.io/provisioned-by": MOCK,
        "volume.kubernetes.io/provisioner-deletion-secret-name": "",
        "volume.kubernetes.io/provisioner-deletion-secret-namespace": "",
    }
    assert sorted(volume["metadata"]["finalizers"]) == [
        "external-provisioner.volume.kubernetes.io/finalizer",
        "kubernetes.io/pv-protection",
    ]
    # Only what kube-controller-manager writes on the claim, nothing of Kopf's or ours.
    assert set(bound["metadata"].get("annotations") or {}) <= KCM_CLAIM_ANNOTATIONS
    assert bound["metadata"].get("finalizers") == ["kubernetes.io/pvc-protection"]
    reasons = await event_reasons(kube, namespace, "data")
    assert "Provisioning" in reasons
    assert reasons["ProvisioningSucceeded"] == [f"Successfully provisioned volume pvc-{uid}"]
    handle = source["volumeHandle"]
    assert handle in await backend_volume_ids(cluster.driver_addresses[MOCK])

    async def counted() -> bool:
        status = (await kube.get(DRIVER_ENDPOINT, endpoint)).get("status") or {}
        return bool((status.get("counts") or {}).get("volumes") == 1)

    await eventually(counted, what="DriverEndpoint counts.volumes == 1", timeout=30)
    provisioned = f'controller_persistentvolumeclaim_provision_total{{class="{class_name}",source=""}} 1.0'

    async def metric() -> bool:
        return provisioned in operator.metrics()

    await eventually(metric, what="the provisioning counted", timeout=10)
    metrics = operator.metrics()
    assert (
        f'csi_sidecar_operations_seconds_count{{driver_name="{MOCK}",grpc_status_code="OK",method_name="/csi.v1.Controller/CreateVolume"}}'
        in metrics
    )
    sc = await kube.get(STORAGE_CLASS, class_name)
    assert sc["metadata"]["annotations"] == {"sidecarless.io/endpoint": endpoint}, "no Kopf marks on the class"
    assert not sc["metadata"].get("finalizers")

    await kube.delete(PVC, "data", namespace)

    async def volume_gone() -> bool:
        return await kube.get_or_none(PV, f"pvc-{uid}") is None

    await eventually(volume_gone, what="PV deleted after its claim", timeout=60)
    assert handle not in await backend_volume_ids(cluster.driver_addresses[MOCK])


async def test_retain_keeps_the_volume(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class(reclaimPolicy="Retain")
    await kube.create(PVC, claim("kept", class_name), namespace)
    uid = (await bound_claim(kube, namespace, "kept"))["metadata"]["uid"]
    volume = await kube.get(PV, f"pvc-{uid}")
    assert "external-provisioner.volume.kubernetes.io/finalizer" not in volume["metadata"]["finalizers"]
    await kube.delete(PVC, "kept", namespace)

    async def released() -> bool:
        current = await kube.get(PV, f"pvc-{uid}")
        return bool((current.get("status") or {}).get("phase") == "Released")

    await eventually(released, what="PV Released", timeout=30)
    assert volume["spec"]["csi"]["volumeHandle"] in await backend_volume_ids(cluster.driver_addresses[MOCK])
    await kube.delete(PV, f"pvc-{uid}")


async def test_volume_whose_class_was_deleted_is_still_deleted(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    """PVs carry nothing of Sidecarless' (they follow their class); without a class, the one
    endpoint serving the PV's driver deletes it, as external-provisioner does by driver name."""
    _, class_name = await routed_class()
    await kube.create(PVC, claim("orphaned", class_name), namespace)
    uid = (await bound_claim(kube, namespace, "orphaned"))["metadata"]["uid"]
    handle = (await kube.get(PV, f"pvc-{uid}"))["spec"]["csi"]["volumeHandle"]
    await kube.delete(STORAGE_CLASS, class_name)
    await kube.delete(PVC, "orphaned", namespace)

    async def gone() -> bool:
        return await kube.get_or_none(PV, f"pvc-{uid}") is None

    await eventually(gone, what="the PV of a deleted class deleted", timeout=30)
    assert handle not in await backend_volume_ids(cluster.driver_addresses[MOCK])


async def test_volume_whose_deletion_secret_is_gone_is_still_deleted(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    """As external-provisioner (handleSecretsForDeletion: "the secret may have already been
    deleted"): DeleteVolume goes without the secret, and the driver's answer decides."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"key": "v"}}
    await kube.create(SECRET, secret, namespace)
    _, class_name = await routed_class(
        parameters={
            "csi.storage.k8s.io/provisioner-secret-name": "creds",
            "csi.storage.k8s.io/provisioner-secret-namespace": namespace,
        }
    )
    await kube.create(PVC, claim("secretive", class_name), namespace)
    uid = (await bound_claim(kube, namespace, "secretive"))["metadata"]["uid"]
    volume = await kube.get(PV, f"pvc-{uid}")
    assert volume["metadata"]["annotations"]["volume.kubernetes.io/provisioner-deletion-secret-name"] == "creds"
    await kube.delete(SECRET, "creds", namespace)
    await kube.delete(PVC, "secretive", namespace)

    async def gone() -> bool:
        return await kube.get_or_none(PV, f"pvc-{uid}") is None

    await eventually(gone, what="the PV deleted without its deletion secret", timeout=30)
    assert volume["spec"]["csi"]["volumeHandle"] not in await backend_volume_ids(cluster.driver_addresses[MOCK])


async def test_block_volume(
    kube: Kube,
    namespace: str,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class(parameters={"csi.storage.k8s.io/fstype": "ext4"})
    await kube.create(PVC, claim("raw", class_name, volumeMode="Block"), namespace)
    uid = (await bound_claim(kube, namespace, "raw"))["metadata"]["uid"]
    volume = await kube.get(PV, f"pvc-{uid}")
    assert volume["spec"]["volumeMode"] == "Block"
    assert "fsType" not in volume["spec"]["csi"]


# --- what a user sees when something is wrong ---------------------------------------------


async def failed_event(kube: Kube, namespace: str, name: str, *, contains: str) -> str:
    async def find() -> str | None:
        messages = (await event_reasons(kube, namespace, name)).get("ProvisioningFailed", [])
        return next((m for m in messages if contains in m), None)

    message: str = await eventually(find, what=f"ProvisioningFailed containing {contains!r}", timeout=30)
    return message


async def test_unknown_endpoint_is_reported_on_claim_and_class(
    kube: Kube, namespace: str, make_class: Callable[..., Awaitable[str]]
) -> None:
    class_name = await make_class("no-such-endpoint")
    await kube.create(PVC, claim("orphan", class_name), namespace)
    message = await failed_event(kube, namespace, "orphan", contains="does not exist")
    assert "no-such-endpoint" in message
    class_events = await event_reasons(kube, "default", class_name)
    assert any("no-such-endpoint" in m for m in class_events.get("ProvisioningFailed", []))


async def test_class_for_another_driver_is_refused(
    kube: Kube, namespace: str, make_endpoint: Callable[..., Awaitable[str]], make_class: Callable[..., Awaitable[str]]
) -> None:
    endpoint = await make_endpoint()
    await wait_ready(kube, endpoint)
    class_name = await make_class(endpoint, provisioner="other.csi.example")
    await kube.create(PVC, claim("misrouted", class_name), namespace)
    message = await failed_event(kube, namespace, "misrouted", contains="other.csi.example")
    assert f"serves driver {MOCK!r}" in message


async def test_size_the_driver_refuses(
    kube: Kube,
    namespace: str,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class()
    await kube.create(PVC, claim("huge", class_name, "4Ei"), namespace)
    await failed_event(kube, namespace, "huge", contains="code = OutOfRange")
    claim_now = await kube.get(PVC, "huge", namespace)
    assert (claim_now.get("status") or {}).get("phase") == "Pending"

    async def aggregated() -> bool:
        events = [e for e in await kube.list(EVENT, namespace) if e["reason"] == "ProvisioningFailed"]
        return len(events) == 1 and events[0].get("count", 1) >= 2

    await eventually(aggregated, what="retries counted on one ProvisioningFailed event", timeout=30)


async def test_address_change_reconnects(
    kube: Kube, make_endpoint: Callable[..., Awaitable[str]], cluster: LocalCluster
) -> None:
    name = await make_endpoint(address="unix:///tmp/slc-wrong-place.sock")
    await wait_ready(kube, name, status="False", reason="Unreachable")
    await kube.patch(DRIVER_ENDPOINT, name, {"spec": {"address": cluster.driver_addresses[MOCK]}})
    endpoint = await wait_ready(kube, name)
    assert endpoint["status"]["observedGeneration"] == 2


async def test_deleted_endpoint_stops_serving(
    kube: Kube,
    namespace: str,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    endpoint, class_name = await routed_class()
    await kube.delete(DRIVER_ENDPOINT, endpoint)

    async def gone() -> bool:
        return await kube.get_or_none(DRIVER_ENDPOINT, endpoint) is None

    await eventually(gone, what="DriverEndpoint deleted (Kopf's finalizer released)", timeout=30)
    await kube.create(PVC, claim("after", class_name), namespace)
    await failed_event(kube, namespace, "after", contains="does not exist")


async def test_an_endpoint_in_use_stays_terminating_until_its_volumes_are_gone(
    kube: Kube, namespace: str, routed_class: Callable[..., Awaitable[tuple[str, str]]]
) -> None:
    endpoint, class_name = await routed_class()
    await kube.create(PVC, claim("held", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "held"))["spec"]["volumeName"]
    await kube.delete(DRIVER_ENDPOINT, endpoint)

    async def held() -> dict[str, Any] | None:
        current = await kube.get_or_none(DRIVER_ENDPOINT, endpoint)
        return current if current and condition(current, "Terminating").get("reason") == "InUse" else None

    terminating = await eventually(held, what="the DriverEndpoint held by its volume", timeout=30)
    assert "still needed by 1 PersistentVolumes" in condition(terminating, "Terminating")["message"]
    assert terminating["metadata"].get("deletionTimestamp")
    # It still serves what holds it: the claim's deletion goes through its driver.
    await kube.delete(PVC, "held", namespace)

    async def all_gone() -> bool:
        return (
            await kube.get_or_none(PV, volume_name) is None
            and await kube.get_or_none(DRIVER_ENDPOINT, endpoint) is None
        )

    await eventually(all_gone, what="the volume deleted, then the DriverEndpoint", timeout=60)


async def test_an_endpoint_deleted_in_use_on_purpose_leaves_its_volume_waiting_with_an_event(
    kube: Kube, namespace: str, cluster: LocalCluster, routed_class: Callable[..., Awaitable[tuple[str, str]]]
) -> None:
    endpoint, class_name = await routed_class()
    await kube.create(PVC, claim("orphan", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "orphan"))["spec"]["volumeName"]
    spec = (await kube.get(DRIVER_ENDPOINT, endpoint))["spec"]
    allow = {"metadata": {"annotations": {"sidecarless.io/allow-deletion-in-use": "true"}}}
    await kube.patch(DRIVER_ENDPOINT, endpoint, allow)
    await kube.delete(DRIVER_ENDPOINT, endpoint)

    async def gone() -> bool:
        return await kube.get_or_none(DRIVER_ENDPOINT, endpoint) is None

    await eventually(gone, what="the DriverEndpoint deleted at once", timeout=30)
    await kube.delete(PVC, "orphan", namespace)
    message = await eventually(
        lambda: waiting_event(kube, volume_name), what="an event naming the missing endpoint", timeout=30
    )
    assert f"DriverEndpoint {endpoint!r} does not exist" in message
    assert await kube.get_or_none(PV, volume_name) is not None
    # The endpoint comes back: the volume is deleted.
    body = {"apiVersion": "sidecarless.io/v1alpha1", "kind": "DriverEndpoint", "metadata": {"name": endpoint}}
    await kube.create(DRIVER_ENDPOINT, {**body, "spec": spec})

    async def deleted() -> bool:
        return await kube.get_or_none(PV, volume_name) is None

    await eventually(deleted, what="the volume deleted through the endpoint that came back", timeout=60)


async def waiting_event(kube: Kube, volume_name: str) -> str | None:
    for event in await kube.list(EVENT, "default"):  # a PV's events go to default
        if event["involvedObject"].get("name") == volume_name and event["reason"] == "WaitingForDriverEndpoint":
            return str(event["message"])
    return None


async def test_deletion_waits_for_attachments(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    operator: OperatorProcess,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class(MOCK_NOATTACH)
    await kube.create(PVC, claim("attached", class_name), namespace)
    uid = (await bound_claim(kube, namespace, "attached"))["metadata"]["uid"]
    volume_name = f"pvc-{uid}"
    attachment = f"csi-{uid}"
    await kube.create(
        VOLUME_ATTACHMENT,
        volume_attachment(attachment, MOCK_NOATTACH, volume_name),
    )
    await kube.delete(PVC, "attached", namespace)

    async def refused() -> bool:
        events = await event_reasons(kube, "default", volume_name)
        return any("is still attached to node node-1" in m for m in events.get("VolumeFailedDelete", []))

    await eventually(refused, what="VolumeFailedDelete: still attached", timeout=30)
    assert await kube.get_or_none(PV, volume_name) is not None
    await kube.delete(VOLUME_ATTACHMENT, attachment)

    async def deleted() -> bool:
        return await kube.get_or_none(PV, volume_name) is None

    await eventually(deleted, what="PV deleted once the attachment is gone", timeout=30)
    counted = f'controller_persistentvolume_delete_total{{class="{class_name}"}} 1.0'

    async def metric() -> bool:
        return counted in operator.metrics()

    try:
        await eventually(metric, what="the delete counted", timeout=10)
    except AssertionError as error:
        lines = [line for line in operator.metrics().splitlines() if class_name in line]
        raise AssertionError(f"{error}; metrics for the class: {lines}") from None
