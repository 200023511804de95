"""The attacher end to end: kube-controller-manager's attach/detach controller makes the
VolumeAttachments for pods given a node; the operator publishes them on the real mock driver."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from csi_client import CSIClient, csi
from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import DRIVER_ENDPOINT, PV, PVC, VOLUME_ATTACHMENT, Kube, Resource
from tests.e2e.conftest import MOCK, MOCK_NOATTACH, attach_error, claim, eventually, volume_attachment, wait_ready
from tests.e2e.test_provisioner import bound_claim

pytestmark = pytest.mark.cluster

POD = Resource("", "v1", "pods", "Pod", True)
SERVICE_ACCOUNT = Resource("", "v1", "serviceaccounts", "ServiceAccount", True)
FINALIZER = "external-attacher/mock-csi-sidecarless-dev"


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


def pod(name: str, claim_name: str, node: str = "node-1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}],
        },
    }


async def attachment_of(kube: Kube, volume_name: str) -> dict[str, Any] | None:
    for attachment in await kube.list(VOLUME_ATTACHMENT):
        if attachment["spec"]["source"].get("persistentVolumeName") == volume_name:
            return attachment
    return None


async def device_published(address: str, volume_id: str, node_id: str) -> bool:
    async with CSIClient(address) as client:
        volume = await client.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=volume_id))
    return f"{node_id}/dev" in volume.volume.volume_context


async def test_pod_on_a_node_attaches_and_detaches(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    operator: OperatorProcess,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    endpoint, class_name = await routed_class()
    await kube.create(PVC, claim("data", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "data"))["spec"]["volumeName"]
    volume_id = (await kube.get(PV, volume_name))["spec"]["csi"]["volumeHandle"]
    await eventually(
        lambda: kube.get_or_none(SERVICE_ACCOUNT, "default", namespace), what="default ServiceAccount", timeout=30
    )
    await kube.create(POD, pod("app", "data"), namespace)

    async def attached() -> dict[str, Any] | None:
        attachment = await attachment_of(kube, volume_name)
        return attachment if attachment and (attachment.get("status") or {}).get("attached") else None

    attachment = await eventually(attached, what="VolumeAttachment attached", timeout=60)
    assert attachment["spec"]["attacher"] == MOCK
    assert attachment["spec"]["nodeName"] == "node-1"
    assert attachment["metadata"]["finalizers"] == [FINALIZER]
    # Only what external-attacher writes: no Kopf annotations or finalizers.
    assert attachment["metadata"]["annotations"] == {"csi.alpha.kubernetes.io/node-id": MOCK}
    assert attachment["status"]["attachmentMetadata"], "the mock's publish_context"
    assert not attachment["status"].get("attachError")
    assert FINALIZER in (await kube.get(PV, volume_name))["metadata"]["finalizers"]
    address = cluster.driver_addresses[MOCK]
    assert await device_published(address, volume_id, MOCK)

    async def counted() -> bool:
        counts = ((await kube.get(DRIVER_ENDPOINT, endpoint)).get("status") or {}).get("counts") or {}
        return counts.get("attachments") == 1

    await eventually(counted, what="DriverEndpoint counts.attachments == 1", timeout=30)

    # The ListVolumes reconcile (every 2 s in tests) runs and leaves a healthy attachment alone.
    listed = len(cluster.driver_calls(MOCK, "ListVolumes"))
    await eventually(
        _async(lambda: len(cluster.driver_calls(MOCK, "ListVolumes")) > listed),
        what="ListVolumes reconcile",
        timeout=15,
    )
    assert (await attachment_of(kube, volume_name) or {}).get("status", {}).get("attached") is True

    await kube.request("DELETE", POD.path("app", namespace), body={"gracePeriodSeconds": 0})

    async def detached() -> bool:
        return await attachment_of(kube, volume_name) is None

    await eventually(detached, what="VolumeAttachment gone after the pod", timeout=60)
    assert not await device_published(address, volume_id, MOCK)

    counts = (await kube.get(DRIVER_ENDPOINT, endpoint))["status"]["counts"]
    assert counts["attaches"] >= 1
    metrics = operator.metrics()
    assert f'sidecarless_attacher_backlog{{endpoint="{endpoint}",lane="attach"}} 0.0' in metrics
    assert f'sidecarless_attacher_backlog_oldest_seconds{{endpoint="{endpoint}",lane="detach"}}' in metrics

    # As external-attacher: its PV finalizer stays until the PV is deleted, then goes (with no
    # VolumeAttachment left), so the deletion completes.
    assert FINALIZER in (await kube.get(PV, volume_name))["metadata"]["finalizers"]
    await kube.delete(PVC, "data", namespace)

    async def pv_gone() -> bool:
        return await kube.get_or_none(PV, volume_name) is None

    await eventually(pv_gone, what="the PV deleted, external-attacher's finalizer removed", timeout=30)


async def test_driver_without_publish(
    kube: Kube,
    namespace: str,
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
) -> None:
    endpoint = await make_endpoint(MOCK_NOATTACH)
    status = (await wait_ready(kube, endpoint))["status"]
    assert status["controllers"]["attacher"] == "NotRequired", "its CSIDriver says attachRequired: false"
    class_name = await make_class(endpoint, provisioner=MOCK_NOATTACH)
    await kube.create(PVC, claim("plain", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "plain"))["spec"]["volumeName"]
    # Kubernetes makes no VolumeAttachment for it; one made by hand takes the trivial path.
    name = unique_name("va")
    await kube.create(
        VOLUME_ATTACHMENT,
        volume_attachment(name, MOCK_NOATTACH, volume_name),
    )

    async def attached() -> dict[str, Any] | None:
        attachment = await kube.get(VOLUME_ATTACHMENT, name)
        return attachment if (attachment.get("status") or {}).get("attached") else None

    attachment = await eventually(attached, what="trivially attached", timeout=30)
    assert not attachment["metadata"].get("finalizers")
    await kube.delete(VOLUME_ATTACHMENT, name)


async def test_node_without_the_driver_is_an_attach_error(
    kube: Kube,
    namespace: str,
    unique_name: Callable[[str], str],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class()
    await kube.create(PVC, claim("lost", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "lost"))["spec"]["volumeName"]
    name = unique_name("va")
    await kube.create(
        VOLUME_ATTACHMENT,
        volume_attachment(name, MOCK, volume_name, "node-ghost"),
    )

    error = await attach_error(kube, name, what="attachError")
    assert error["message"] == f"CSINode node-ghost does not contain driver {MOCK}"
    await kube.delete(VOLUME_ATTACHMENT, name)


async def test_volume_being_deleted_is_not_attached(
    kube: Kube,
    namespace: str,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
    unique_name: Callable[[str], str],
) -> None:
    _, class_name = await routed_class()
    await kube.create(PVC, claim("doomed", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "doomed"))["spec"]["volumeName"]
    await kube.delete(PV, volume_name)  # stays, Terminating, while the claim holds it (pv-protection)
    name = unique_name("va")
    await kube.create(VOLUME_ATTACHMENT, volume_attachment(name, MOCK, volume_name))

    error = await attach_error(kube, name, what="attachError for a PV being deleted")
    assert error["message"] == f"PersistentVolume {volume_name} is marked for deletion"
    await kube.delete(VOLUME_ATTACHMENT, name)


async def test_inline_volumes_are_refused_with_an_attach_error(
    kube: Kube, make_endpoint: Callable[..., Awaitable[str]], unique_name: Callable[[str], str]
) -> None:
    endpoint = await make_endpoint()
    await wait_ready(kube, endpoint)
    name = unique_name("va")
    await kube.create(
        VOLUME_ATTACHMENT,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "VolumeAttachment",
            "metadata": {"name": name},
            "spec": {
                "attacher": MOCK,
                "nodeName": "node-1",
                "source": {
                    "inlineVolumeSpec": {
                        "accessModes": ["ReadWriteOnce"],
                        "csi": {"driver": MOCK, "volumeHandle": "inline-1"},
                    }
                },
            },
        },
    )

    error = await attach_error(kube, name, what="attachError for an inline volume")
    assert "inline volumes" in error["message"]
    await kube.delete(VOLUME_ATTACHMENT, name)
