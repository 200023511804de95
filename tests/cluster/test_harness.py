"""Smoke tests of the local control plane: the real components do their real jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from devcluster import LocalCluster
from devcluster.procs import ManagedProcess, ProcessDiedError, wait_until

pytestmark = pytest.mark.cluster

MOCK = "mock.csi.sidecarless.dev"


async def eventually(check: Callable[[], object], *, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.2)


async def test_rbac_is_enforced(api: ApiClient, cluster: LocalCluster, namespace: str) -> None:
    core = k8s.CoreV1Api(api)
    await core.create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="nobody"))
    )
    token = await core.create_namespaced_service_account_token(
        "nobody", namespace, k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))
    )
    configuration = k8s.Configuration(host=cluster.server)
    configuration.ssl_ca_cert = str(cluster.workdir / "pki" / "ca.crt")
    configuration.api_key = {"BearerToken": token.status.token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    async with ApiClient(configuration) as as_nobody:
        with pytest.raises(ApiException) as denied:
            await k8s.CoreV1Api(as_nobody).list_namespaced_pod(namespace)
    assert denied.value.status == 403
    assert "system:serviceaccount:" in str(denied.value.body)


async def test_controller_manager_marks_claims_for_the_csi_provisioner(
    api: ApiClient, namespace: str, unique_name: Callable[[str], str]
) -> None:
    storage_class = unique_name("sc")
    await k8s.StorageV1Api(api).create_storage_class(
        k8s.V1StorageClass(metadata=k8s.V1ObjectMeta(name=storage_class), provisioner=MOCK)
    )
    core = k8s.CoreV1Api(api)
    try:
        await core.create_namespaced_persistent_volume_claim(
            namespace,
            k8s.V1PersistentVolumeClaim(
                metadata=k8s.V1ObjectMeta(name="data"),
                spec=k8s.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadWriteOnce"],
                    storage_class_name=storage_class,
                    resources=k8s.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
                ),
            ),
        )

        async def annotated() -> bool:
            claim = await core.read_namespaced_persistent_volume_claim("data", namespace)
            return (claim.metadata.annotations or {}).get("volume.kubernetes.io/storage-provisioner") == MOCK

        await eventually(annotated, what="the PV controller's storage-provisioner annotation")
    finally:
        await k8s.StorageV1Api(api).delete_storage_class(storage_class)


async def test_snapshot_crds_are_served(api: ApiClient, namespace: str) -> None:
    custom = k8s.CustomObjectsApi(api)
    for plural in ("volumesnapshots", "volumesnapshotcontents", "volumesnapshotclasses"):
        if plural == "volumesnapshots":
            listed = await custom.list_namespaced_custom_object("snapshot.storage.k8s.io", "v1", namespace, plural)
        else:
            listed = await custom.list_cluster_custom_object("snapshot.storage.k8s.io", "v1", plural)
        assert listed["items"] == [] or isinstance(listed["items"], list)
    groups = await custom.list_namespaced_custom_object(
        "groupsnapshot.storage.k8s.io", "v1beta2", namespace, "volumegroupsnapshots"
    )
    assert "items" in groups


async def test_nodes_carry_what_kubelet_would_have_written(api: ApiClient, cluster: LocalCluster) -> None:
    for node_name in cluster.nodes:
        node = await k8s.CoreV1Api(api).read_node(node_name)
        assert node.metadata.annotations["volumes.kubernetes.io/controller-managed-attach-detach"] == "true"
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
        csinode = await k8s.StorageV1Api(api).read_csi_node(node_name)
        by_name = {d.name: d for d in csinode.spec.drivers}
        assert by_name[MOCK].node_id == MOCK, "the mock driver's NodeGetInfo answer"
    driver = await k8s.StorageV1Api(api).read_csi_driver("mock-noattach.csi.sidecarless.dev")
    assert driver.spec.attach_required is False


def test_a_dying_component_is_reported_with_its_log(tmp_path: Path) -> None:
    process = ManagedProcess("doomed", ["sh", "-c", "echo disk on fire; exit 3"], tmp_path / "doomed.log")
    process.start(tied_to_parent=True)
    with pytest.raises(ProcessDiedError, match=r"(?s)doomed .* exited with code 3.*disk on fire"):
        wait_until("never", lambda: False, timeout=10, watch=[process])
