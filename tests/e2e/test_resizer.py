"""Expansion end to end: bigger claims -> ControllerExpandVolume -> the PV's and claim's
capacity, conditions and events, as external-resizer leaves them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from devcluster import DriverSpec, LocalCluster
from devcluster.operator import OperatorProcess
from devcluster.procs import wait_until
from sidecarless.kube import PV, PVC, Kube, KubeError
from sidecarless.resizer import expand
from tests.e2e.conftest import MOCK, claim, eventually, killed
from tests.e2e.test_attacher import POD, SERVICE_ACCOUNT, pod
from tests.e2e.test_provisioner import bound_claim, event_reasons, has_event

pytestmark = pytest.mark.cluster

GI = 1 << 30
LIMITED = "mock-limited.csi.sidecarless.dev"  # hostpath's --max-volume-size: 100Gi
NODE = "mock-node-expand.csi.sidecarless.dev"  # node_expansion_required after the controller's part
NODE_ONLY = "mock-node-only.csi.sidecarless.dev"  # EXPAND_VOLUME only in the Node service
OFFLINE = "mock-offline.csi.sidecarless.dev"  # FAILED_PRECONDITION (in use) on the first expansion
HUNG = "mock-hung.csi.sidecarless.dev"  # frozen with SIGSTOP mid-test


@pytest.fixture(scope="module")
def resize_drivers(cluster: LocalCluster) -> Iterator[None]:
    specs = [
        DriverSpec(LIMITED, max_volume_size=100 * GI),
        DriverSpec(NODE, node_expansion=True),
        DriverSpec(NODE_ONLY, controller_expansion=False, node_expansion=True),
        DriverSpec(
            OFFLINE,
            hooks={
                "globals": "expansions = 0;",
                "controllerExpandVolumeStart": "expansions++; expansions == 1 ? FAILEDPRECONDITION : OK;",
            },
        ),
        DriverSpec(HUNG),
    ]
    for spec in specs:
        cluster.add_driver(spec)
    yield
    for spec in specs:
        cluster.remove_driver(spec.name)


Routed = Callable[..., Awaitable[tuple[str, str]]]


async def expandable_claim(
    kube: Kube, namespace: str, routed_class: Routed, driver: str, name: str = "data"
) -> dict[str, Any]:
    _, class_name = await routed_class(driver, allowVolumeExpansion=True)
    await kube.create(PVC, claim(name, class_name, "1Gi"), namespace)
    return await bound_claim(kube, namespace, name)


async def ask_for(kube: Kube, namespace: str, name: str, size: str) -> None:
    await kube.patch(PVC, name, {"spec": {"resources": {"requests": {"storage": size}}}}, namespace)


async def claim_where(kube: Kube, namespace: str, name: str, check: Callable[[dict[str, Any]], bool], what: str) -> Any:
    async def matches() -> dict[str, Any] | None:
        current = await kube.get(PVC, name, namespace)
        return current if check(current) else None

    return await eventually(matches, what=what, timeout=60)


def expand_calls(cluster: LocalCluster, driver: str, volume_id: str) -> list[int]:
    """The sizes ControllerExpandVolume was asked for, in order, as the driver logged them."""
    return [
        int(call["Request"]["capacity_range"]["required_bytes"])
        for call in cluster.driver_calls(driver, "ControllerExpandVolume")
        if call["Request"].get("volume_id") == volume_id
    ]


async def volume_of(kube: Kube, bound: dict[str, Any]) -> dict[str, Any]:
    return await kube.get(PV, bound["spec"]["volumeName"])


async def test_expansion_in_the_controller_only(
    kube: Kube, namespace: str, cluster: LocalCluster, routed_class: Routed
) -> None:
    bound = await expandable_claim(kube, namespace, routed_class, MOCK)
    await ask_for(kube, namespace, "data", "2Gi")
    done = await claim_where(
        kube, namespace, "data", lambda c: expand.status_capacity(c) == 2 * GI, "claim capacity 2Gi"
    )
    volume = await volume_of(kube, bound)
    assert volume["spec"]["capacity"]["storage"] == "2Gi"
    assert expand.ANN_PRE_RESIZE_CAPACITY not in (volume["metadata"].get("annotations") or {})
    status = done["status"]
    assert status["allocatedResources"] == {"storage": "2Gi"}
    assert "allocatedResourceStatuses" not in status
    assert not [c for c in status.get("conditions") or [] if c["type"] in expand.RESIZE_CONDITIONS]
    assert done["metadata"]["annotations"][expand.ANN_NODE_EXPANSION_NOT_REQUIRED] == "true"
    assert expand_calls(cluster, MOCK, volume["spec"]["csi"]["volumeHandle"]) == [2 * GI]
    reasons = await event_reasons(kube, namespace, "data")
    assert reasons["Resizing"] == [f"External resizer is resizing volume {volume['metadata']['name']}"]
    assert reasons["VolumeResizeSuccessful"] == ["Resize volume succeeded"]


async def test_expansion_that_needs_the_node(
    kube: Kube, namespace: str, cluster: LocalCluster, resize_drivers: None, routed_class: Routed
) -> None:
    bound = await expandable_claim(kube, namespace, routed_class, NODE)
    await ask_for(kube, namespace, "data", "2Gi")
    pending = await claim_where(
        kube, namespace, "data", lambda c: expand.resize_status(c) == expand.NODE_PENDING, "NodeResizePending"
    )
    assert expand.status_capacity(pending) == GI, "kubelet finishes; the claim's capacity waits for it"
    assert expand.has_condition(pending, expand.FS_RESIZE_PENDING)
    volume = await volume_of(kube, bound)
    assert volume["spec"]["capacity"]["storage"] == "2Gi"
    assert volume["metadata"]["annotations"][expand.ANN_PRE_RESIZE_CAPACITY] == "1Gi"
    await has_event(kube, namespace, "data", "FileSystemResizeRequired")

    # Kubelet's part, done by hand (no kubelet here): then the annotation goes.
    await kube.patch(
        PVC,
        "data",
        {"status": {"capacity": {"storage": "2Gi"}, "allocatedResourceStatuses": None, "conditions": []}},
        namespace,
        subresource="status",
    )

    async def annotation_gone() -> bool:
        current = await volume_of(kube, bound)
        return expand.ANN_PRE_RESIZE_CAPACITY not in (current["metadata"].get("annotations") or {})

    await eventually(annotation_gone, what="pre-resize-capacity removed after the node's expansion", timeout=30)


async def test_driver_that_expands_only_on_the_node(
    kube: Kube, namespace: str, cluster: LocalCluster, resize_drivers: None, routed_class: Routed
) -> None:
    bound = await expandable_claim(kube, namespace, routed_class, NODE_ONLY)
    await ask_for(kube, namespace, "data", "3Gi")
    await claim_where(
        kube, namespace, "data", lambda c: expand.resize_status(c) == expand.NODE_PENDING, "NodeResizePending"
    )
    volume = await volume_of(kube, bound)
    assert volume["spec"]["capacity"]["storage"] == "3Gi"
    assert cluster.driver_calls(NODE_ONLY, "ControllerExpandVolume") == []


async def test_infeasible_size_then_recovered_by_a_smaller_request(
    kube: Kube, namespace: str, cluster: LocalCluster, resize_drivers: None, routed_class: Routed
) -> None:
    bound = await expandable_claim(kube, namespace, routed_class, LIMITED)
    volume_id = (await volume_of(kube, bound))["spec"]["csi"]["volumeHandle"]
    await ask_for(kube, namespace, "data", "200Gi")
    failed = await claim_where(
        kube,
        namespace,
        "data",
        lambda c: expand.resize_status(c) == expand.CONTROLLER_INFEASIBLE,
        "ControllerResizeInfeasible",
    )
    error = next(c for c in failed["status"]["conditions"] if c["type"] == expand.CONTROLLER_RESIZE_ERROR)
    assert "code = OutOfRange" in error["message"]
    assert failed["status"]["allocatedResources"] == {"storage": "200Gi"}
    assert any("OutOfRange" in m for m in (await event_reasons(kube, namespace, "data"))["VolumeResizeFailed"])

    # RecoverVolumeExpansionFailure: a smaller request goes out at once, not after the
    # infeasible size's 5-minute pause.
    await ask_for(kube, namespace, "data", "2Gi")
    done = await claim_where(kube, namespace, "data", lambda c: expand.status_capacity(c) == 2 * GI, "2Gi")
    assert done["status"]["allocatedResources"] == {"storage": "2Gi"}
    assert not [c for c in done["status"].get("conditions") or [] if c["type"] in expand.RESIZE_CONDITIONS]
    refused = [
        int(c["Request"]["capacity_range"]["required_bytes"])
        for c in cluster.shim_calls(LIMITED, "ControllerExpandVolume")
    ]
    assert refused == [200 * GI], "the infeasible size was asked for once, not retried"
    assert expand_calls(cluster, LIMITED, volume_id) == [2 * GI]


async def test_class_without_allow_volume_expansion_is_refused_by_kubernetes(
    kube: Kube, namespace: str, cluster: LocalCluster, routed_class: Routed
) -> None:
    _, class_name = await routed_class(MOCK)
    await kube.create(PVC, claim("fixed", class_name, "1Gi"), namespace)
    bound = await bound_claim(kube, namespace, "fixed")
    with pytest.raises(KubeError) as refused:
        await ask_for(kube, namespace, "fixed", "2Gi")
    assert refused.value.status == 403
    assert "storageclass that provisions the pvc must support resize" in refused.value.message
    volume_id = (await volume_of(kube, bound))["spec"]["csi"]["volumeHandle"]
    assert expand_calls(cluster, MOCK, volume_id) == []


async def test_volume_in_use_waits_for_its_pods(
    kube: Kube, namespace: str, cluster: LocalCluster, resize_drivers: None, routed_class: Routed
) -> None:
    bound = await expandable_claim(kube, namespace, routed_class, OFFLINE)
    volume_id = (await volume_of(kube, bound))["spec"]["csi"]["volumeHandle"]
    await eventually(
        lambda: kube.get_or_none(SERVICE_ACCOUNT, "default", namespace), what="default ServiceAccount", timeout=30
    )
    await kube.create(POD, pod("app", "data"), namespace)
    await ask_for(kube, namespace, "data", "2Gi")

    async def waiting_for_the_pod() -> bool:
        messages = (await event_reasons(kube, namespace, "data")).get("VolumeResizeFailed") or []
        return any("currently in-use" in m for m in messages)

    await eventually(waiting_for_the_pod, what="'volume is currently in-use' event", timeout=60)
    assert expand_calls(cluster, OFFLINE, volume_id) == [2 * GI], "no call while a Pod uses the volume"
    await kube.request("DELETE", POD.path("app", namespace), query=[("gracePeriodSeconds", "0")])
    await claim_where(
        kube, namespace, "data", lambda c: expand.status_capacity(c) == 2 * GI, "2Gi once the Pod is gone"
    )
    assert expand_calls(cluster, OFFLINE, volume_id) == [2 * GI, 2 * GI]


async def test_driver_hung_during_expansion_is_retried(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    resize_drivers: None,
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    endpoint = await make_endpoint(HUNG, timeouts={"operation": "2s", "probe": "1s", "probeInterval": "1s"})
    class_name = await make_class(endpoint, provisioner=HUNG, allowVolumeExpansion=True)
    await kube.create(PVC, claim("data", class_name, "1Gi"), namespace)
    await bound_claim(kube, namespace, "data")
    cluster.pause_driver(HUNG)
    try:
        await ask_for(kube, namespace, "data", "2Gi")
        await claim_where(
            kube,
            namespace,
            "data",
            lambda c: expand.resize_status(c) == expand.CONTROLLER_IN_PROGRESS,
            "ControllerResizeInProgress while the driver hangs",
        )
        await has_event(kube, namespace, "data", "VolumeResizeFailed", timeout=30)
    finally:
        cluster.resume_driver(HUNG)
    done = await claim_where(kube, namespace, "data", lambda c: expand.status_capacity(c) == 2 * GI, "2Gi")
    assert "allocatedResourceStatuses" not in done["status"]


@pytest.mark.parametrize("point", ["before-controller-expand", "after-controller-expand"])
async def test_operator_killed_mid_expansion_converges(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    point: str,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Routed,
) -> None:
    healthy = exclusive()
    bound = await expandable_claim(kube, namespace, routed_class, MOCK)
    volume_id = (await volume_of(kube, bound))["spec"]["csi"]["volumeHandle"]
    healthy.stop()
    faulty = exclusive(SIDECARLESS_FAULT_POINTS=f"{point}@{namespace}/data")
    await ask_for(kube, namespace, "data", "2Gi")
    wait_until(f"the operator killed at {point}", killed(faulty), timeout=60, watch=[])
    stopped = await kube.get(PVC, "data", namespace)
    assert expand.resize_status(stopped) == expand.CONTROLLER_IN_PROGRESS
    assert stopped["status"]["allocatedResources"] == {"storage": "2Gi"}

    exclusive()
    await claim_where(kube, namespace, "data", lambda c: expand.status_capacity(c) == 2 * GI, "2Gi after the restart")
    assert (await volume_of(kube, bound))["spec"]["capacity"]["storage"] == "2Gi"
    # Before the call: one call after the restart. After it: the same call again, idempotently.
    expected = [2 * GI] if point.startswith("before") else [2 * GI, 2 * GI]
    assert expand_calls(cluster, MOCK, volume_id) == expected
