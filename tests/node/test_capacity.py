"""kube-scheduler places a pod whose claim waits for its first consumer where the operator's
CSIStorageCapacity objects say there is room, and nowhere when no node has enough.

The mock driver runs on both nodes with a topology segment of its own a node (kubelet puts
`TOPOLOGY_KEY: <node>` on each Node from NodeGetInfo) and a controller that answers GetCapacity
0 bytes for one node's segment and 5 GiB for the other's (devcluster.workloads). The operator,
installed by helm, publishes one CSIStorageCapacity per segment; the scheduler's VolumeBinding
plugin reads them (the CSIDriver says `storageCapacity: true`).
"""

from __future__ import annotations

from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.workloads import (
    CONTROLLER_PORT,
    TOPOLOGY_KEY,
    csi_driver,
    driver_endpoint,
    mock_driver_daemon_set,
    pod_with_claim,
)
from sidecarless.kube import CSI_DRIVER, CSI_STORAGE_CAPACITY, DRIVER_ENDPOINT, EVENT, POD, PV, PVC, STORAGE_CLASS, Kube
from tests.e2e.conftest import claim, eventually, storage_class, wait_ready
from tests.node.test_helm import DAEMON_SET_RESOURCE, image, installed  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(1200)

DRIVER = "capacity.csi.sidecarless.dev"  # the mock answers to any name
NAME = "mock-capacity"  # the DaemonSet, DriverEndpoint and StorageClass
GIB = 1024**3
SELECTED_NODE = "volume.kubernetes.io/selected-node"
FITTING = 3  # claims of 1 GiB: a guess between two nodes would put one on the full node, 7 in 8


async def capacity_by_node(kube: Kube, namespace: str) -> dict[str, str]:
    objects = await kube.list(CSI_STORAGE_CAPACITY, namespace, label_selector=f"csi.storage.k8s.io/drivername={DRIVER}")
    return {
        ((o.get("nodeTopology") or {}).get("matchLabels") or {}).get(TOPOLOGY_KEY, ""): o.get("capacity", "")
        for o in objects
        if o.get("storageClassName") == NAME
    }


async def test_the_scheduler_puts_late_binding_claims_where_the_capacity_objects_say_there_is_room(
    cluster: LocalCluster,
    kube: Kube,
    installed: tuple[str, float],  # noqa: F811
) -> None:
    namespace, _ = installed
    full, roomy = (node.name for node in cluster.real_nodes[:2])
    await kube.create(CSI_DRIVER, csi_driver(DRIVER, storage_capacity=True))
    daemons = mock_driver_daemon_set(NAME, driver=DRIVER, capacity_by_node={full: 0, roomy: 5 * GIB})
    await kube.create(DAEMON_SET_RESOURCE, daemons, namespace)
    address = f"dns:///{cluster.real_nodes[0].network.node_ip}:{CONTROLLER_PORT}"  # either node's controller
    await kube.create(DRIVER_ENDPOINT, driver_endpoint(NAME, DRIVER, address))
    pods = [f"fits-{i}" for i in range(FITTING)]
    try:
        await wait_ready(kube, NAME, timeout=180)
        late = storage_class(NAME, NAME, provisioner=DRIVER, volumeBindingMode="WaitForFirstConsumer")
        await kube.create(STORAGE_CLASS, late)

        async def published() -> dict[str, str] | None:
            found = await capacity_by_node(kube, namespace)
            return found if set(found) == {full, roomy} else None

        found = await eventually(published, timeout=180, what="a CSIStorageCapacity for each node's segment")
        assert found == {full: "0", roomy: "5Gi"}

        for name in pods:
            await kube.create(PVC, claim(name, NAME, "1Gi"), namespace)
            await kube.create(POD, pod_with_claim(name, name, None, "sleep 3600"), namespace)

        async def placed() -> dict[str, str] | None:
            nodes = {}
            for name in pods:
                annotations = (await kube.get(PVC, name, namespace))["metadata"].get("annotations") or {}
                nodes[name] = annotations.get(SELECTED_NODE, "")
            return nodes if all(nodes.values()) else None

        chosen = await eventually(placed, timeout=120, what="the scheduler choosing a node for each claim")
        assert chosen == dict.fromkeys(pods, roomy), f"{full} has no room: {chosen}"

        async def bound_there() -> list[str] | None:
            names = [((await kube.get(POD, name, namespace)).get("spec") or {}).get("nodeName", "") for name in pods]
            return names if all(names) else None

        assert await eventually(bound_there, timeout=120, what="the pods bound") == [roomy] * FITTING

        # 10 GiB fits neither node: the scheduler says why, and the claim is never provisioned.
        await kube.create(PVC, claim("too-big", NAME, "10Gi"), namespace)
        await kube.create(POD, pod_with_claim("too-big", "too-big", None, "sleep 3600"), namespace)

        async def refused() -> dict[str, Any] | None:
            events = await kube.list(EVENT, namespace)
            return next(
                (
                    e
                    for e in events
                    if e["involvedObject"].get("name") == "too-big"
                    and e["reason"] == "FailedScheduling"
                    and "did not have enough free storage" in (e.get("message") or "")
                ),
                None,
            )

        event = await eventually(refused, timeout=120, what="FailedScheduling: not enough free storage")
        print(f"\nthe scheduler on a 10 GiB claim: {event['message']}")
        big = await kube.get(PVC, "too-big", namespace)
        assert SELECTED_NODE not in (big["metadata"].get("annotations") or {})
        assert big["status"].get("phase") == "Pending"
    finally:
        for name in [*pods, "too-big"]:
            await kube.delete(POD, name, namespace)
            await kube.delete(PVC, name, namespace)

        async def volumes_gone() -> bool:
            claims = [await kube.get_or_none(PVC, name, namespace) for name in [*pods, "too-big"]]
            volumes = [v for v in await kube.list(PV) if v["spec"].get("storageClassName") == NAME]
            return not any(claims) and not volumes

        # Before the driver goes: DeleteVolume needs it (and the DriverEndpoint would wait).
        await eventually(volumes_gone, timeout=180, what="the claims and their volumes deleted")
        await kube.delete(STORAGE_CLASS, NAME)
        await kube.delete(DRIVER_ENDPOINT, NAME)
        await kube.delete(DAEMON_SET_RESOURCE, NAME, namespace)
        await kube.delete(CSI_DRIVER, DRIVER)
