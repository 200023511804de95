"""Storage capacity planning: segments, which classes get objects, the objects, and matching
existing ones (external-provisioner's pkg/capacity rules)."""

from __future__ import annotations

from typing import Any

from csi_client import csi
from sidecarless.capacity import plan

Body = dict[str, Any]
DRIVER = "a.csi"


def csinode(name: str, *drivers: tuple[str, list[str]]) -> Body:
    return {"metadata": {"name": name}, "spec": {"drivers": [{"name": d, "topologyKeys": k} for d, k in drivers]}}


def a_class(name: str, mode: str = "WaitForFirstConsumer", provisioner: str = DRIVER, **parameters: str) -> Body:
    return {"metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode, "parameters": parameters}


def test_segments_are_the_drivers_topology_labels_of_its_nodes() -> None:
    csinodes = [
        csinode("n1", (DRIVER, ["zone", "rack"])),
        csinode("n2", (DRIVER, ["rack", "zone"])),  # the same keys in another order
        csinode("n3", (DRIVER, ["zone", "rack"])),  # its node lacks "rack"
        csinode("n4", ("other.csi", ["zone"])),  # not the driver
        csinode("n5", (DRIVER, ["zone"])),  # no Node object
    ]
    labels = {
        "n1": {"zone": "a", "rack": "1"},
        "n2": {"zone": "a", "rack": "1", "extra": "x"},
        "n3": {"zone": "b"},
        "n4": {"zone": "c"},
    }
    assert plan.segments(DRIVER, csinodes, labels) == {(("rack", "1"), ("zone", "a"))}
    assert plan.segments(DRIVER, [csinode("n1", (DRIVER, []))], labels) == {()}, "no keys: one segment, every node"


def test_only_late_binding_classes_of_the_driver_get_objects_unless_asked() -> None:
    classes = [a_class("late"), a_class("now", "Immediate"), a_class("theirs", provisioner="b.csi")]
    found: set[plan.Segment] = {(("zone", "a"),), (("zone", "b"),)}
    late = {plan.Item("late", s) for s in found}
    assert plan.wanted(DRIVER, classes, found, immediate=False) == late
    assert plan.wanted(DRIVER, classes, found, immediate=True) == late | {plan.Item("now", s) for s in found}


def test_the_request_and_the_object() -> None:
    segment = (("zone", "a"),)
    request = plan.request(a_class("late", type="ssd"), segment)
    assert dict(request.parameters) == {"type": "ssd"}
    assert dict(request.accessible_topology.segments) == {"zone": "a"}
    assert not request.volume_capabilities
    response = csi.GetCapacityResponse(available_capacity=100 * 2**30)
    response.maximum_volume_size.value = 10**9
    values = plan.capacity_values(response)
    assert values == {"capacity": "100Gi", "maximumVolumeSize": "1000000000"}
    assert plan.capacity_values(csi.GetCapacityResponse(available_capacity=0)) == {
        "capacity": "0",
        "maximumVolumeSize": None,  # a merge patch removes an earlier one
    }
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "op-1", "uid": "u", "controller": True}
    body = plan.new_object(DRIVER, plan.Item("late", segment), values, owner)
    assert body["metadata"] == {
        "generateName": "csisc-",
        "labels": {"csi.storage.k8s.io/drivername": DRIVER, "csi.storage.k8s.io/managed-by": "external-provisioner"},
        "ownerReferences": [owner],
    }
    assert body["nodeTopology"] == {"matchLabels": {"zone": "a"}}
    assert body["storageClassName"] == "late"
    assert not plan.needs_update(body, values, owner)
    assert plan.needs_update(body, {"capacity": "1Gi"}, owner)
    canonical = {**body, "capacity": "100Gi", "maximumVolumeSize": "1G"}  # the API server's own form
    assert not plan.needs_update(canonical, values, owner), "the same quantities, written differently"
    assert plan.needs_update({**body, "metadata": {}}, values, owner), "an owner to add"


def test_existing_objects_are_adopted_once_and_the_rest_is_stale() -> None:
    want = {plan.Item("late", (("zone", "a"),))}

    def existing(name: str, class_name: str, labels: dict[str, str]) -> Body:
        return {"metadata": {"name": name}, "storageClassName": class_name, "nodeTopology": {"matchLabels": labels}}

    first, second = existing("csisc-1", "late", {"zone": "a"}), existing("csisc-2", "late", {"zone": "a"})
    gone_class, gone_zone = existing("csisc-3", "gone", {"zone": "a"}), existing("csisc-4", "late", {"zone": "z"})
    odd = {**existing("csisc-5", "late", {}), "nodeTopology": {"matchExpressions": []}}
    result = plan.reconcile(want, [second, gone_zone, first, gone_class, odd])
    assert result.adopted == {plan.Item("late", (("zone", "a"),)): first}
    assert [c["metadata"]["name"] for c in result.stale] == ["csisc-2", "csisc-3", "csisc-4", "csisc-5"]
