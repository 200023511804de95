"""The chart's RBAC, proven: the operator runs as the chart's ServiceAccount (a token from the
TokenRequest API) against the RBAC-enforcing local cluster, through provision, attach,
expand, snapshot, restore and delete, and no request of it may be forbidden. The same run
with one rule removed must be caught, so the check itself is known to work."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import LocalCluster, build
from devcluster.operator import OperatorProcess
from sidecarless.kube import (
    DRIVER_ENDPOINT,
    PV,
    PVC,
    STORAGE_CLASS,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    Kube,
    Resource,
)
from tests.conftest import short_tmpdir
from tests.e2e.conftest import MOCK, claim, eventually, storage_class, volume_snapshot_class
from tests.e2e.test_attacher import POD, SERVICE_ACCOUNT, pod
from tests.e2e.test_provisioner import bound_claim

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "sidecarless"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
# "HTTP 403" is how kube.py words a refusal; a bare 403 also matched log timestamps (",403 ").
FORBIDDEN = re.compile(r"HTTP 403|forbidden", re.IGNORECASE)
NAMESPACE_RESOURCE = Resource("", "v1", "namespaces", "Namespace", False)


def chart_rbac(release: str, namespace: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(build.ensure_helm()), "template", release, str(CHART), "--namespace", namespace],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] in RBAC_KINDS]


async def install_rbac(kube: Kube, documents: list[dict[str, Any]]) -> None:
    for document in documents:
        group_version = document["apiVersion"]
        base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
        plural = {"ServiceAccount": "serviceaccounts"}.get(document["kind"], document["kind"].lower() + "s")
        namespace = document["metadata"].get("namespace")
        path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
        await kube.request("POST", path, body=document)


async def token_kubeconfig(kube: Kube, cluster: LocalCluster, namespace: str, account: str, path: Path) -> Path:
    answer = await kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    admin = yaml.safe_load(await asyncio.to_thread(cluster.kubeconfig.read_text))
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": answer["status"]["token"]}}],
        "contexts": [{"name": "chart", "context": {"cluster": admin["clusters"][0]["name"], "user": account}}],
        "current-context": "chart",
    }
    await asyncio.to_thread(path.write_text, yaml.safe_dump(config))
    return path


async def lifecycle(kube: Kube, namespace: str, endpoint: str, unique_name: Callable[[str], str]) -> None:
    """Provision, attach, expand, snapshot, restore and delete, as a user would."""
    class_name = unique_name("sc")
    await kube.create(STORAGE_CLASS, storage_class(class_name, endpoint, allowVolumeExpansion=True))
    await kube.create(PVC, claim("data", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "data", timeout=60))["spec"]["volumeName"]
    await eventually(lambda: kube.get_or_none(SERVICE_ACCOUNT, "default", namespace), what="default ServiceAccount")
    await kube.create(POD, pod("app", "data"), namespace)

    async def attached() -> bool:
        attachments = await kube.list(Resource("storage.k8s.io", "v1", "volumeattachments", "VolumeAttachment", False))
        return any(
            a["spec"]["source"].get("persistentVolumeName") == volume_name and (a.get("status") or {}).get("attached")
            for a in attachments
        )

    await eventually(attached, what="attached", timeout=60)
    await kube.patch(PVC, "data", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}, namespace)

    async def expanded() -> bool:
        capacity = ((await kube.get(PVC, "data", namespace)).get("status") or {}).get("capacity") or {}
        return bool(capacity.get("storage") == "2Gi")

    await eventually(expanded, what="expanded", timeout=60)
    snapshot_class = unique_name("vsc")
    await kube.create(
        VOLUME_SNAPSHOT_CLASS,
        volume_snapshot_class(snapshot_class),
    )
    await kube.create(
        VOLUME_SNAPSHOT,
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": "snap"},
            "spec": {"volumeSnapshotClassName": snapshot_class, "source": {"persistentVolumeClaimName": "data"}},
        },
        namespace,
    )

    async def snapshot_ready() -> bool:
        return bool(((await kube.get(VOLUME_SNAPSHOT, "snap", namespace)).get("status") or {}).get("readyToUse"))

    await eventually(snapshot_ready, what="snapshot ready", timeout=60)
    restored = claim("restored", class_name, "2Gi")
    restored["spec"]["dataSource"] = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}
    await kube.create(PVC, restored, namespace)
    restored_volume = (await bound_claim(kube, namespace, "restored", timeout=60))["spec"]["volumeName"]
    await kube.request("DELETE", POD.path("app", namespace), query=[("gracePeriodSeconds", "0")])
    await kube.delete(VOLUME_SNAPSHOT, "snap", namespace)
    await kube.delete(PVC, "restored", namespace)
    await kube.delete(PVC, "data", namespace)
    for name in (volume_name, restored_volume):

        async def volume_gone(name: str = name) -> bool:
            return await kube.get_or_none(PV, name) is None

        await eventually(volume_gone, what=f"PV {name} deleted", timeout=90)
    await kube.delete(VOLUME_SNAPSHOT_CLASS, snapshot_class)
    await kube.delete(STORAGE_CLASS, class_name)


async def operator_as_chart(
    kube: Kube,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    unique_name: Callable[[str], str],
    *,
    drop: tuple[str, str] | None = None,
) -> tuple[OperatorProcess, str]:
    """Install the chart's RBAC (less one verb on one resource, with `drop`) in a namespace of
    its own, start the operator with the ServiceAccount's token, and declare a
    DriverEndpoint for the mock driver. Returns the operator and the endpoint's name."""
    home = unique_name("chart")
    await kube.create(NAMESPACE_RESOURCE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": home}})
    documents = chart_rbac(home, home)
    if drop is not None:
        resource, verb = drop
        [role] = [d for d in documents if d["kind"] == "ClusterRole"]
        for rule in role["rules"]:
            if resource in rule["resources"] and verb in rule["verbs"]:
                rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    await install_rbac(kube, documents)
    [account] = [d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount"]
    kubeconfig = await token_kubeconfig(kube, cluster, home, account, short_tmpdir("slc-rbac-") / "kubeconfig")
    operator = exclusive(
        SIDECARLESS_KUBECONFIG=str(kubeconfig), SIDECARLESS_NAMESPACE=home, SIDECARLESS_LEADER_ELECTION="true"
    )
    endpoint = unique_name("ep")
    await kube.create(
        DRIVER_ENDPOINT,
        {
            "apiVersion": "sidecarless.io/v1alpha1",
            "kind": "DriverEndpoint",
            "metadata": {"name": endpoint},
            "spec": {"driverName": MOCK, "address": cluster.driver_addresses[MOCK]},
        },
    )
    return operator, endpoint


def forbidden_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if FORBIDDEN.search(line)]


async def test_the_chart_rbac_is_enough_for_a_whole_lifecycle(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    unique_name: Callable[[str], str],
) -> None:
    operator, endpoint = await operator_as_chart(kube, cluster, exclusive, unique_name)
    try:
        await lifecycle(kube, namespace, endpoint, unique_name)
    finally:
        await kube.delete(DRIVER_ENDPOINT, endpoint)
    forbidden = forbidden_lines(operator.log_text())
    assert forbidden == [], "requests the chart's RBAC forbids:\n" + "\n".join(forbidden[:20])


async def test_a_missing_rule_is_caught(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    unique_name: Callable[[str], str],
) -> None:
    """Without `create` on PersistentVolumes nothing is provisioned, and the check above sees it."""
    operator, endpoint = await operator_as_chart(
        kube, cluster, exclusive, unique_name, drop=("persistentvolumes", "create")
    )
    try:
        class_name = unique_name("sc")
        await kube.create(STORAGE_CLASS, storage_class(class_name, endpoint))
        await kube.create(PVC, claim("data", class_name), namespace)

        async def refused() -> list[str]:
            return [line for line in forbidden_lines(operator.log_text()) if "persistentvolumes" in line]

        await eventually(refused, what="a forbidden PersistentVolume create in the operator's log", timeout=60)
        assert (await kube.get(PVC, "data", namespace))["status"].get("phase") == "Pending"
        await kube.delete(STORAGE_CLASS, class_name)
    finally:
        await kube.delete(DRIVER_ENDPOINT, endpoint)
