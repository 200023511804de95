"""The embedded mode for real: docs/deployment.md's controller Deployment, applied as written
(only the images, and the driver container, which here is driver_shim in front of the mock's
controller), runs `sidecarless` in the driver's pod on its unix socket, two replicas electing
one by their own Lease. A volume's whole life goes through it; then the driver moves to the
central release (the chart's pods, over TCP) and back again, its volumes staying put.

The backend is the mock driver's DaemonSet instance on worker-1 (its node service mounts the
volumes there): the controller pod's shim forwards to its controller port, and the central
DriverEndpoint names that port directly, so both modes reach the same volumes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.workloads import (
    CHART,
    CONTROLLER_PORT,
    EMBEDDED_CONTROLLER,
    EMBEDDED_DRIVER,
    EMBEDDED_ENDPOINT,
    EMBEDDED_LEASE,
    EMBEDDED_NAMESPACE,
    chart_values,
    csi_driver,
    driver_endpoint,
    embedded_controller,
    embedded_examples,
    embedded_rbac,
    mock_driver_daemon_set,
    pod_with_claim,
)
from sidecarless.kube import (
    CSI_DRIVER,
    CSI_NODE,
    DRIVER_ENDPOINT,
    POD,
    PV,
    PVC,
    STORAGE_CLASS,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    Kube,
    Resource,
)
from tests.e2e.conftest import claim, eventually, storage_class, volume_snapshot_class, wait_ready
from tests.node.test_helm import (  # noqa: F401 - fixtures
    DAEMON_SET_RESOURCE,
    DEPLOYMENT,
    LEASE,
    RELEASE,
    helm,
    image,
    installed,
    is_ready,
)

pytestmark = pytest.mark.timeout(1800)

DRIVER, NAMESPACE_NAME, CONTROLLER = EMBEDDED_DRIVER, EMBEDDED_NAMESPACE, EMBEDDED_CONTROLLER
EMBEDDED, CENTRAL, CLASS = EMBEDDED_ENDPOINT, "hostpath", "hostpath-embedded"
NAMESPACE = Resource("", "v1", "namespaces", "Namespace", False)
RBAC = "rbac.authorization.k8s.io"
RESOURCES = {
    "ServiceAccount": Resource("", "v1", "serviceaccounts", "ServiceAccount", True),
    "ClusterRoleBinding": Resource(
        "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
    ),
    "Role": Resource(RBAC, "v1", "roles", "Role", True),
    "RoleBinding": Resource(RBAC, "v1", "rolebindings", "RoleBinding", True),
    "Deployment": DEPLOYMENT,
    "DriverEndpoint": DRIVER_ENDPOINT,
}


async def pods_report(cluster: LocalCluster, kube: Kube, namespace: str, app: str) -> str:
    """The pods' container states and their logs' last lines (kubectl logs cannot reach kubelet here)."""
    lines = []
    for pod in await kube.list(POD, namespace, label_selector=f"app={app}"):
        node = next((n for n in cluster.real_nodes if n.name == pod["spec"].get("nodeName")), None)
        for status in pod.get("status", {}).get("containerStatuses") or []:
            lines.append(
                f"{pod['metadata']['name']}/{status['name']}: {status.get('state')} restarts {status['restartCount']}"
            )
            if node is not None:
                log = node.container_log(namespace, pod["metadata"]["name"], pod["metadata"]["uid"], status["name"])
                lines += log.splitlines()[-25:]
    return "\n".join(lines)


def pod_template(deployment: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that sets the pod template (lists such as containers are replaced whole)."""
    return {"spec": {"template": deployment["spec"]["template"]}}


async def rolled_out(kube: Kube, name: str, namespace: str, timeout: float = 240) -> None:
    async def done() -> bool:
        found = await kube.get(DEPLOYMENT, name, namespace)
        status, replicas = found.get("status") or {}, found["spec"]["replicas"]
        return bool(
            status.get("observedGeneration") == found["metadata"]["generation"]
            and status.get("updatedReplicas") == replicas
            and status.get("readyReplicas") == replicas
            and status.get("replicas") == replicas
        )

    await eventually(done, timeout=timeout, what=f"Deployment {name} rolled out")


async def running(kube: Kube, name: str, namespace: str) -> None:
    async def check() -> bool:
        return bool((await kube.get(POD, name, namespace)).get("status", {}).get("phase") == "Running")

    await eventually(check, timeout=180, what=f"pod {name} Running")


async def grown_on_node(kube: Kube, name: str, namespace: str, size: str) -> None:
    await kube.patch(PVC, name, {"spec": {"resources": {"requests": {"storage": size}}}}, namespace)

    async def done() -> bool:
        status = (await kube.get(PVC, name, namespace)).get("status") or {}
        pending = [c for c in status.get("conditions") or [] if c["type"] == "FileSystemResizePending"]
        return status.get("capacity", {}).get("storage") == size and not pending

    await eventually(done, timeout=180, what=f"claim {name} {size}, expanded on the node")


async def route_class(kube: Kube, endpoint: str) -> None:
    annotations = {"sidecarless.io/endpoint": endpoint}
    await kube.patch(STORAGE_CLASS, CLASS, {"metadata": {"annotations": annotations}})
    await kube.patch(VOLUME_SNAPSHOT_CLASS, CLASS, {"metadata": {"annotations": annotations}})


async def test_embedded_in_the_drivers_pod_then_central_and_back(
    cluster: LocalCluster,
    kube: Kube,
    installed: tuple[str, float],  # noqa: F811
) -> None:
    operator_namespace, _ = installed
    node = cluster.real_nodes[0]
    backend = f"dns:///{node.network.node_ip}:{CONTROLLER_PORT}"
    ns = NAMESPACE_NAME
    # The central release serves only its own endpoint, beside the embedded one (docs/deployment.md).
    await helm(
        cluster,
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        operator_namespace,
        *chart_values(cluster.server, extra={"operator.endpoints": "{" + CENTRAL + "}"}),
    )
    await rolled_out(kube, f"{RELEASE}-sidecarless", operator_namespace)
    await kube.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    examples = embedded_examples()
    try:
        await kube.create(CSI_DRIVER, csi_driver(DRIVER))
        await kube.create(DAEMON_SET_RESOURCE, mock_driver_daemon_set("hostpath-node", driver=DRIVER), ns)
        for document in embedded_rbac(f"{RELEASE}-sidecarless"):  # the chart's ClusterRole, named by its release
            await kube.create(RESOURCES[document["kind"]], document, document["metadata"].get("namespace"))
        await kube.create(DEPLOYMENT, embedded_controller(backend), ns)
        await kube.create(DRIVER_ENDPOINT, examples[("DriverEndpoint", EMBEDDED)])

        # --- embedded: the sidecarless container in the driver's pod serves its endpoint ---
        started = time.monotonic()
        try:
            await wait_ready(kube, EMBEDDED, timeout=240)
        except AssertionError as error:
            status = (await kube.get(DRIVER_ENDPOINT, EMBEDDED)).get("status")
            report = await pods_report(cluster, kube, ns, CONTROLLER)
            raise AssertionError(f"{error}\nstatus: {status}\n{report}") from None
        print(f"\nembedded DriverEndpoint Ready {time.monotonic() - started:.1f}s after the Deployment")
        lease = await kube.get(LEASE, EMBEDDED_LEASE, ns)
        assert lease["spec"]["holderIdentity"].startswith(f"{CONTROLLER}-"), lease["spec"]

        async def registered() -> bool:
            csinode = await kube.get_or_none(CSI_NODE, node.name)
            return any(d["name"] == DRIVER for d in ((csinode or {}).get("spec") or {}).get("drivers") or [])

        await eventually(registered, timeout=120, what="the node plugin registered")
        await kube.create(
            STORAGE_CLASS,
            storage_class(
                CLASS, EMBEDDED, provisioner=DRIVER, allowVolumeExpansion=True, volumeBindingMode="WaitForFirstConsumer"
            ),
        )
        await kube.create(VOLUME_SNAPSHOT_CLASS, volume_snapshot_class(CLASS, DRIVER, endpoint=EMBEDDED))
        await kube.create(PVC, claim("first", CLASS), ns)
        await kube.create(POD, pod_with_claim("first", "first", node.name, "echo one > /data/f && sleep 3600"), ns)
        await running(kube, "first", ns)
        await grown_on_node(kube, "first", ns, "2Gi")
        snapshot = {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": "first"},
            "spec": {"volumeSnapshotClassName": CLASS, "source": {"persistentVolumeClaimName": "first"}},
        }
        await kube.create(VOLUME_SNAPSHOT, snapshot, ns)

        async def snapshot_ready() -> bool:
            return bool(((await kube.get(VOLUME_SNAPSHOT, "first", ns)).get("status") or {}).get("readyToUse"))

        await eventually(snapshot_ready, timeout=120, what="the snapshot readyToUse")
        await kube.delete(VOLUME_SNAPSHOT, "first", ns)

        async def snapshot_gone() -> bool:
            return await kube.get_or_none(VOLUME_SNAPSHOT, "first", ns) is None

        await eventually(snapshot_gone, timeout=120, what="the snapshot deleted")
        first_volume = (await kube.get(PVC, "first", ns))["spec"]["volumeName"]

        # --- central: the chart's pods serve the driver over TCP; the embedded container goes ---
        moved = time.monotonic()
        await kube.create(DRIVER_ENDPOINT, driver_endpoint(CENTRAL, DRIVER, backend))
        await wait_ready(kube, CENTRAL, timeout=120)
        await route_class(kube, CENTRAL)
        await kube.patch(DEPLOYMENT, CONTROLLER, pod_template(embedded_controller(backend, embedded=False)), ns)
        await rolled_out(kube, CONTROLLER, ns)
        print(f"moved to central in {time.monotonic() - moved:.1f}s")
        await kube.create(PVC, claim("second", CLASS), ns)
        await kube.create(POD, pod_with_claim("second", "second", node.name, "sleep 3600"), ns)
        await running(kube, "second", ns)
        await grown_on_node(kube, "first", ns, "3Gi")  # a volume the embedded copy made, grown centrally
        assert (await kube.get(POD, "first", ns))["status"]["phase"] == "Running"

        # --- and back: the docs' Deployment as written again, the class routed to it ---
        moved = time.monotonic()
        await kube.patch(DEPLOYMENT, CONTROLLER, pod_template(embedded_controller(backend)), ns)
        await rolled_out(kube, CONTROLLER, ns)
        await route_class(kube, EMBEDDED)
        await kube.delete(DRIVER_ENDPOINT, CENTRAL)
        await wait_ready(kube, EMBEDDED, timeout=120)
        print(f"moved back to embedded in {time.monotonic() - moved:.1f}s")
        volumes = [first_volume, (await kube.get(PVC, "second", ns))["spec"]["volumeName"]]
        for name in ("first", "second"):  # the central copy's volume too: deleted by the embedded one
            await kube.delete(POD, name, ns)
            await kube.delete(PVC, name, ns)

        async def deleted() -> bool:
            return all([await kube.get_or_none(PV, volume) is None for volume in volumes])

        await eventually(deleted, timeout=180, what="both volumes detached and deleted through the embedded copy")
    finally:
        for kind, name in (("Deployment", CONTROLLER), ("DriverEndpoint", EMBEDDED), ("DriverEndpoint", CENTRAL)):
            await kube.delete(RESOURCES[kind], name, ns if kind == "Deployment" else None)
        await kube.delete(STORAGE_CLASS, CLASS)
        await kube.delete(VOLUME_SNAPSHOT_CLASS, CLASS)
        await kube.delete(RESOURCES["ClusterRoleBinding"], "csi-hostpath-controller-sidecarless")
        await kube.delete(DAEMON_SET_RESOURCE, "hostpath-node", ns)
        await kube.delete(CSI_DRIVER, DRIVER)
        await kube.delete(NAMESPACE, ns)

        async def namespace_gone() -> bool:
            return await kube.get_or_none(NAMESPACE, ns) is None

        await eventually(namespace_gone, timeout=120, what="namespace storage gone")
