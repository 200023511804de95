"""VolumeAttributesClass end to end: provisioning with one, changing it (ControllerModifyVolume),
an infeasible change, a rollback, a missing class, and the operator killed mid-modify.

The driver is csi-test's mock behind driver_shim, which adds csi-driver-host-path's
ControllerModifyVolume (accepted keys: iops, throughput); see tools/devcluster/driver_shim.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from devcluster import DriverSpec, LocalCluster
from devcluster.operator import OperatorProcess
from devcluster.procs import wait_until
from sidecarless.kube import PV, PVC, VOLUME_ATTRIBUTES_CLASS, Kube
from sidecarless.resizer import modify
from tests.e2e.conftest import claim, eventually, killed
from tests.e2e.test_provisioner import bound_claim, event_reasons, has_event

pytestmark = pytest.mark.cluster

MODIFIABLE = "mock-modify.csi.sidecarless.dev"


@pytest.fixture(scope="module")
def modify_driver(cluster: LocalCluster) -> Iterator[None]:
    cluster.add_driver(DriverSpec(MODIFIABLE, accepted_mutable_parameters=("iops", "throughput")))
    yield
    cluster.remove_driver(MODIFIABLE)


@pytest.fixture
async def make_attributes_class(
    kube: Kube, unique_name: Callable[[str], str]
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    made: list[str] = []

    async def make(driver: str = MODIFIABLE, **parameters: str) -> str:
        name = unique_name("vac")
        await kube.create(
            VOLUME_ATTRIBUTES_CLASS,
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "VolumeAttributesClass",
                "metadata": {"name": name},
                "driverName": driver,
                "parameters": parameters,
            },
        )
        made.append(name)
        return name

    yield make
    for name in made:
        await kube.delete(VOLUME_ATTRIBUTES_CLASS, name)


Routed = Callable[..., Awaitable[tuple[str, str]]]


async def modifiable_claim(kube: Kube, namespace: str, routed_class: Routed, **spec: Any) -> dict[str, Any]:
    _, class_name = await routed_class(MODIFIABLE)
    await kube.create(PVC, claim("data", class_name, **spec), namespace)
    return await bound_claim(kube, namespace, "data")


async def set_class(kube: Kube, namespace: str, name: str | None) -> None:
    await kube.patch(PVC, "data", {"spec": {"volumeAttributesClassName": name}}, namespace)


async def claim_where(kube: Kube, namespace: str, check: Callable[[dict[str, Any]], bool], what: str) -> Any:
    async def matches() -> dict[str, Any] | None:
        current = await kube.get(PVC, "data", namespace)
        return current if check(current) else None

    return await eventually(matches, what=what, timeout=60)


def modify_calls(cluster: LocalCluster, volume_id: str) -> list[dict[str, str]]:
    """The mutable parameters of each ControllerModifyVolume the driver answered for the volume."""
    return [
        call["Request"].get("mutable_parameters") or {}
        for call in cluster.shim_calls(MODIFIABLE, "ControllerModifyVolume")
        if call["Request"].get("volume_id") == volume_id
    ]


async def test_provisioning_with_a_class_passes_its_parameters(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    modify_driver: None,
    routed_class: Routed,
    make_attributes_class: Callable[..., Awaitable[str]],
) -> None:
    gold = await make_attributes_class(iops="5000")
    bound = await modifiable_claim(kube, namespace, routed_class, volumeAttributesClassName=gold)
    volume = await kube.get(PV, bound["spec"]["volumeName"])
    assert volume["spec"]["volumeAttributesClassName"] == gold
    created = [
        c["Request"]
        for c in cluster.shim_calls(MODIFIABLE, "CreateVolume")
        if c["Request"]["name"] == volume["metadata"]["name"]
    ]
    assert [c["mutable_parameters"] for c in created] == [{"iops": "5000"}]
    await claim_where(kube, namespace, lambda c: modify.current_class(c) == gold, "currentVolumeAttributesClassName")


async def test_modify_succeeds(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    modify_driver: None,
    routed_class: Routed,
    make_attributes_class: Callable[..., Awaitable[str]],
) -> None:
    gold = await make_attributes_class(iops="5000", throughput="200")
    bound = await modifiable_claim(kube, namespace, routed_class)
    await set_class(kube, namespace, gold)
    done = await claim_where(kube, namespace, lambda c: modify.current_class(c) == gold, "current class gold")
    assert "modifyVolumeStatus" not in done["status"]
    assert not [
        c for c in done["status"].get("conditions") or [] if c["type"] in (modify.MODIFYING, modify.MODIFY_ERROR)
    ]
    volume = await kube.get(PV, bound["spec"]["volumeName"])
    assert volume["spec"]["volumeAttributesClassName"] == gold
    assert modify_calls(cluster, volume["spec"]["csi"]["volumeHandle"]) == [{"iops": "5000", "throughput": "200"}]
    reasons = await event_reasons(kube, namespace, "data")
    assert reasons["VolumeModify"] == [f"external resizer is modifying volume data with vac {gold}"]
    assert reasons["VolumeModifySuccessful"] == [f"external resizer modified volume data with vac {gold} successfully"]


async def test_infeasible_modify_then_rolled_back(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    modify_driver: None,
    routed_class: Routed,
    make_attributes_class: Callable[..., Awaitable[str]],
) -> None:
    colourful = await make_attributes_class(colour="blue")  # a key the driver does not accept
    await modifiable_claim(kube, namespace, routed_class)
    await set_class(kube, namespace, colourful)
    failed = await claim_where(
        kube,
        namespace,
        lambda c: (modify.modify_status(c) or {}).get("status") == modify.INFEASIBLE,
        "modifyVolumeStatus Infeasible",
    )
    error = next(c for c in failed["status"]["conditions"] if c["type"] == modify.MODIFY_ERROR)
    assert error["reason"] == "InvalidArgument"
    assert "invalid parameter key: colour" in error["message"]
    await has_event(kube, namespace, "data", "VolumeModifyFailed")

    await set_class(kube, namespace, None)
    rolled_back = await claim_where(
        kube,
        namespace,
        lambda c: not [x for x in c["status"].get("conditions") or [] if x["type"] == modify.MODIFYING],
        "ModifyingVolume removed by the rollback",
    )
    assert modify.current_class(rolled_back) == ""
    assert (await event_reasons(kube, namespace, "data"))["VolumeModifyCanceled"] == ["Cancelled modify."]


async def test_missing_class_is_pending_until_created(
    kube: Kube,
    namespace: str,
    modify_driver: None,
    routed_class: Routed,
    make_attributes_class: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
) -> None:
    await modifiable_claim(kube, namespace, routed_class)
    await set_class(kube, namespace, "not-yet")
    await claim_where(
        kube, namespace, lambda c: (modify.modify_status(c) or {}).get("status") == modify.PENDING, "Pending"
    )
    assert 'VAC "not-yet" does not exist.' in (await event_reasons(kube, namespace, "data"))["VolumeModifyFailed"]
    await kube.create(
        VOLUME_ATTRIBUTES_CLASS,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "VolumeAttributesClass",
            "metadata": {"name": "not-yet"},
            "driverName": MODIFIABLE,
            "parameters": {"iops": "100"},
        },
    )
    try:
        await claim_where(kube, namespace, lambda c: modify.current_class(c) == "not-yet", "modified once it exists")
    finally:
        await kube.delete(VOLUME_ATTRIBUTES_CLASS, "not-yet")


async def test_operator_killed_mid_modify_converges(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    modify_driver: None,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Routed,
    make_attributes_class: Callable[..., Awaitable[str]],
) -> None:
    healthy = exclusive()
    gold = await make_attributes_class(iops="7000")
    bound = await modifiable_claim(kube, namespace, routed_class)
    volume_id = (await kube.get(PV, bound["spec"]["volumeName"]))["spec"]["csi"]["volumeHandle"]
    healthy.stop()
    faulty = exclusive(SIDECARLESS_FAULT_POINTS=f"after-controller-modify@{namespace}/data")
    await set_class(kube, namespace, gold)
    wait_until("the operator killed after ControllerModifyVolume", killed(faulty), timeout=60, watch=[])
    stopped = await kube.get(PVC, "data", namespace)
    assert modify.modify_status(stopped) == {"status": "InProgress", "targetVolumeAttributesClassName": gold}

    exclusive()
    await claim_where(kube, namespace, lambda c: modify.current_class(c) == gold, "modified after the restart")
    assert (await kube.get(PV, bound["spec"]["volumeName"]))["spec"]["volumeAttributesClassName"] == gold
    assert modify_calls(cluster, volume_id) == [{"iops": "7000"}] * 2, "the same call again, idempotently"
