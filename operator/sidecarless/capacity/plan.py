"""Storage capacity tracking as pure functions, as external-provisioner's pkg/capacity (v6.3)
does it: one CSIStorageCapacity per (StorageClass of the driver, topology segment), with
GetCapacity's answer, found again by its labels and matched by class and node topology.

- A **segment** is the values of the driver's topology keys (its CSINode entry's
  `topologyKeys`, sorted) on a node whose CSINode lists the driver; a node missing any of
  those labels gives none. A driver without keys has one empty segment, matching every node.
- Only WaitForFirstConsumer classes get objects, unless immediate classes are asked for
  (`--capacity-for-immediate-binding`): the scheduler reads them for late binding only.
- The objects: `generateName: csisc-`, labels `csi.storage.k8s.io/drivername` and
  `csi.storage.k8s.io/managed-by: external-provisioner`, `nodeTopology.matchLabels` of the
  segment, `capacity` (BinarySI) and `maximumVolumeSize` when the driver says one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from csi_client import csi
from sidecarless.vocabulary import format_quantity, parse_quantity

Body = dict[str, Any]

DRIVER_LABEL = "csi.storage.k8s.io/drivername"
MANAGED_BY_LABEL = "csi.storage.k8s.io/managed-by"
MANAGED_BY = "external-provisioner"  # so the objects move over with the driver, and back
GENERATE_NAME = "csisc-"

Segment = tuple[tuple[str, str], ...]  # (topology key, value), sorted by key


@dataclass(frozen=True, order=True)
class Item:
    """One object's worth: a class and a segment."""

    class_name: str
    segment: Segment


def segments(driver: str, csinodes: Iterable[Body], node_labels: Mapping[str, Mapping[str, str]]) -> set[Segment]:
    """The driver's topology segments, from the CSINodes listing it and their Nodes' labels."""
    found: set[Segment] = set()
    for csinode in csinodes:
        name = csinode["metadata"]["name"]
        entry = next((d for d in (csinode.get("spec") or {}).get("drivers") or [] if d.get("name") == driver), None)
        labels = node_labels.get(name)
        if entry is None or labels is None:
            continue
        keys = sorted(entry.get("topologyKeys") or [])
        if all(key in labels for key in keys):
            found.add(tuple((key, labels[key]) for key in keys))
    return found


def wanted(driver: str, classes: Iterable[Body], found: set[Segment], *, immediate: bool) -> set[Item]:
    """Every (class, segment) that gets an object."""
    items = set()
    for storage_class in classes:
        if storage_class.get("provisioner") != driver:
            continue
        if not immediate and (storage_class.get("volumeBindingMode") or "Immediate") == "Immediate":
            continue
        for segment in found:
            items.add(Item(storage_class["metadata"]["name"], segment))
    return items


def request(storage_class: Body, segment: Segment) -> csi.GetCapacityRequest:
    """GetCapacity for a class in a segment: the class's parameters as they are, no capabilities
    ("the capacity is independent of the capabilities")."""
    return csi.GetCapacityRequest(
        parameters={str(k): str(v) for k, v in (storage_class.get("parameters") or {}).items()},
        accessible_topology=csi.Topology(segments=dict(segment)),
    )


def node_topology(segment: Segment) -> Body:
    return {"matchLabels": dict(segment)}


def item_of(capacity: Body) -> Item | None:
    """The (class, segment) an existing object stands for; None: not one of the shape we make."""
    selector = capacity.get("nodeTopology")
    if not isinstance(selector, dict) or set(selector) - {"matchLabels"}:
        return None
    labels = selector.get("matchLabels") or {}
    return Item(str(capacity.get("storageClassName") or ""), tuple(sorted((str(k), str(v)) for k, v in labels.items())))


def labels(driver: str) -> dict[str, str]:
    return {DRIVER_LABEL: driver, MANAGED_BY_LABEL: MANAGED_BY}


def capacity_values(response: csi.GetCapacityResponse) -> Body:
    """`capacity` and `maximumVolumeSize` from GetCapacity's answer (None: the driver says no
    maximum, and a merge patch removes an earlier one)."""
    maximum = response.maximum_volume_size.value if response.HasField("maximum_volume_size") else None
    return {
        "capacity": format_quantity(response.available_capacity),
        "maximumVolumeSize": format_quantity(maximum) if maximum is not None else None,
    }


def new_object(driver: str, item: Item, values: Body, owner: Body | None) -> Body:
    values = {k: v for k, v in values.items() if v is not None}
    body: Body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIStorageCapacity",
        "metadata": {"generateName": GENERATE_NAME, "labels": labels(driver)},
        "storageClassName": item.class_name,
        "nodeTopology": node_topology(item.segment),
        **values,
    }
    if owner is not None:
        body["metadata"]["ownerReferences"] = [owner]
    return body


def needs_update(existing: Body, values: Body, owner: Body | None) -> bool:
    """external-provisioner writes only when the values (or a missing owner) changed. As
    quantities: the API server keeps its own canonical form ("1500M" for 1500000000)."""
    same = all(_bytes(existing.get(k)) == _bytes(values.get(k)) for k in ("capacity", "maximumVolumeSize"))
    owners = existing.get("metadata", {}).get("ownerReferences") or []
    return not same or (owner is not None and not any(o.get("uid") == owner.get("uid") for o in owners))


def _bytes(quantity: Any) -> int | None:
    return parse_quantity(str(quantity)) if quantity is not None else None


@dataclass(frozen=True)
class Reconciled:
    adopted: dict[Item, Body]  # the existing object of each wanted item
    stale: list[Body]  # objects of no wanted item, or a second one of an item: to delete


def reconcile(want: set[Item], existing: Iterable[Body]) -> Reconciled:
    """Match our existing objects to the wanted items, as external-provisioner does at start:
    the first of each wanted item is kept, everything else goes."""
    adopted: dict[Item, Body] = {}
    stale = []
    for capacity in sorted(existing, key=lambda c: c["metadata"].get("name", "")):
        item = item_of(capacity)
        if item is not None and item in want and item not in adopted:
            adopted[item] = capacity
        else:
            stale.append(capacity)
    return Reconciled(adopted, stale)
