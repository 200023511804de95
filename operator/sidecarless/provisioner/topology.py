"""Accessibility requirements for CreateVolume, as external-provisioner computes them. Pure functions.

Only for drivers with VOLUME_ACCESSIBILITY_CONSTRAINTS. Segments are maps of topology key
to value; "requisite" lists where the volume may be, "preferred" the order to try.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any

from csi_client import csi

Body = dict[str, Any]
Segment = dict[str, str]


class TopologyError(ValueError):
    """The requirements cannot be computed now; `reschedule` asks the scheduler to pick another node."""

    def __init__(self, message: str, *, reschedule: bool = False) -> None:
        self.reschedule = reschedule
        super().__init__(message)


@dataclass(frozen=True)
class NodeTopology:
    """A node's topology for one driver: its CSINode keys and its labels."""

    name: str
    keys: tuple[str, ...]
    labels: dict[str, str]

    def segment(self) -> Segment | None:
        if not self.keys or any(key not in self.labels for key in self.keys):
            return None
        return {key: self.labels[key] for key in self.keys}


def node_topologies(driver: str, csinodes: list[Body], nodes: dict[str, Body]) -> dict[str, NodeTopology]:
    """Each node that runs `driver`, with the keys its CSINode lists and its labels."""
    result = {}
    for csinode in csinodes:
        name = csinode["metadata"]["name"]
        entry = next((d for d in (csinode.get("spec") or {}).get("drivers") or [] if d.get("name") == driver), None)
        if entry is None:
            continue
        labels = ((nodes.get(name) or {}).get("metadata") or {}).get("labels") or {}
        result[name] = NodeTopology(name, tuple(entry.get("topologyKeys") or ()), dict(labels))
    return result


def flatten_allowed(allowed_topologies: list[Body]) -> list[Segment]:
    """StorageClass allowedTopologies as segments: each term is the product of its expressions' values."""
    segments: list[Segment] = []
    for term in allowed_topologies:
        expressions = term.get("matchLabelExpressions") or []
        keys = [e["key"] for e in expressions]
        for values in itertools.product(*(e.get("values") or [] for e in expressions)):
            segment = dict(zip(keys, values, strict=True))
            if segment and segment not in segments:
                segments.append(segment)
    return segments


def _sorted(segments: list[Segment]) -> list[Segment]:
    unique = {tuple(sorted(s.items())): s for s in segments}
    return [unique[k] for k in sorted(unique)]


def _rotate_to(segments: list[Segment], first: int) -> list[Segment]:
    return segments[first:] + segments[:first]


def requirements(
    *,
    claim_name: str,
    selected_node: str | None,
    allowed_topologies: list[Body],
    nodes: dict[str, NodeTopology],
    strict: bool,
    immediate_topology: bool,
) -> csi.TopologyRequirement | None:
    """external-provisioner's GenerateAccessibilityRequirements."""
    if selected_node is None:
        if allowed_topologies:
            requisite = _sorted(flatten_allowed(allowed_topologies))
        elif immediate_topology:
            requisite = _sorted([s for n in nodes.values() if (s := n.segment()) is not None])
        else:
            return None
        if not requisite:
            return None
        # Spread immediate claims over the segments, deterministically per claim.
        start = int(hashlib.sha256(claim_name.encode()).hexdigest(), 16) % len(requisite)
        return _requirement(requisite, _rotate_to(requisite, start))

    node = nodes.get(selected_node)
    if node is None:
        raise TopologyError(f"selected node {selected_node!r} has no CSINode entry for the driver", reschedule=True)
    selected = node.segment()
    if selected is None:
        raise TopologyError(f"selected node {selected_node!r} lacks the labels {list(node.keys)} of its topology keys")
    allowed = flatten_allowed(allowed_topologies)
    if strict:
        if allowed and not any(_within(selected, a) for a in allowed):
            raise TopologyError(f"selected node {selected_node!r} is outside the StorageClass's allowedTopologies")
        return _requirement([selected], [selected])
    if allowed:
        requisite = _sorted(allowed)
    else:
        keys = set(node.keys)
        requisite = _sorted([s for n in nodes.values() if (s := n.segment()) is not None and set(s) == keys])
    if selected not in requisite:
        requisite = _sorted([*requisite, selected]) if not allowed else requisite
    first = next((i for i, s in enumerate(requisite) if _within(selected, s)), 0)
    return _requirement(requisite, _rotate_to(requisite, first))


def _within(segment: Segment, allowed: Segment) -> bool:
    return all(segment.get(k) == v for k, v in allowed.items())


def _requirement(requisite: list[Segment], preferred: list[Segment]) -> csi.TopologyRequirement:
    return csi.TopologyRequirement(
        requisite=[csi.Topology(segments=s) for s in requisite],
        preferred=[csi.Topology(segments=s) for s in preferred],
    )
