"""Accessibility requirements, external-provisioner's rules."""

from typing import Any

import pytest

from sidecarless.provisioner.topology import NodeTopology, TopologyError, flatten_allowed, node_topologies, requirements

ZONE, RACK = "topology.example/zone", "topology.example/rack"
NODES = {
    "n1": NodeTopology("n1", (ZONE,), {ZONE: "a"}),
    "n2": NodeTopology("n2", (ZONE,), {ZONE: "b"}),
    "n3": NodeTopology("n3", (ZONE,), {ZONE: "c"}),
    "bare": NodeTopology("bare", (ZONE,), {}),
}


def segments(requirement: Any, field: str) -> list[dict[str, str]]:
    return [dict(t.segments) for t in getattr(requirement, field)]


def call(**overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "claim_name": "data",
        "selected_node": None,
        "allowed_topologies": [],
        "nodes": NODES,
        "strict": False,
        "immediate_topology": True,
    }
    return requirements(**{**arguments, **overrides})


def test_flatten_allowed_topologies() -> None:
    allowed = [
        {"matchLabelExpressions": [{"key": ZONE, "values": ["a", "b"]}, {"key": RACK, "values": ["1"]}]},
        {"matchLabelExpressions": [{"key": ZONE, "values": ["a"]}, {"key": RACK, "values": ["1"]}]},
    ]
    assert flatten_allowed(allowed) == [{ZONE: "a", RACK: "1"}, {ZONE: "b", RACK: "1"}]


def test_immediate_aggregates_node_segments_and_spreads_by_claim() -> None:
    requirement = call()
    assert segments(requirement, "requisite") == [{ZONE: "a"}, {ZONE: "b"}, {ZONE: "c"}]
    preferred = segments(requirement, "preferred")
    assert sorted(preferred, key=lambda s: s[ZONE]) == segments(requirement, "requisite")
    assert segments(call(), "preferred") == preferred, "deterministic per claim"
    firsts = {segments(call(claim_name=f"c{i}"), "preferred")[0][ZONE] for i in range(30)}
    assert firsts == {"a", "b", "c"}, "different claims start at different segments"


def test_immediate_without_topology_option_sends_none() -> None:
    assert call(immediate_topology=False) is None


def test_immediate_with_allowed_topologies() -> None:
    allowed = [{"matchLabelExpressions": [{"key": ZONE, "values": ["b"]}]}]
    assert segments(call(allowed_topologies=allowed, immediate_topology=False), "requisite") == [{ZONE: "b"}]


def test_selected_node_comes_first() -> None:
    requirement = call(selected_node="n2")
    assert segments(requirement, "requisite") == [{ZONE: "a"}, {ZONE: "b"}, {ZONE: "c"}]
    assert segments(requirement, "preferred") == [{ZONE: "b"}, {ZONE: "c"}, {ZONE: "a"}]


def test_strict_topology_is_only_the_selected_segment() -> None:
    requirement = call(selected_node="n3", strict=True)
    assert segments(requirement, "requisite") == segments(requirement, "preferred") == [{ZONE: "c"}]
    with pytest.raises(TopologyError, match="outside the StorageClass's allowedTopologies"):
        call(
            selected_node="n3",
            strict=True,
            allowed_topologies=[{"matchLabelExpressions": [{"key": ZONE, "values": ["a"]}]}],
        )


def test_selected_node_without_csinode_reschedules() -> None:
    with pytest.raises(TopologyError) as error:
        call(selected_node="ghost")
    assert error.value.reschedule


def test_selected_node_without_labels_is_retried_not_rescheduled() -> None:
    with pytest.raises(TopologyError, match="lacks the labels") as error:
        call(selected_node="bare")
    assert not error.value.reschedule


def test_node_topologies_take_only_nodes_running_the_driver() -> None:
    csinodes = [
        {"metadata": {"name": "n1"}, "spec": {"drivers": [{"name": "d", "topologyKeys": [ZONE]}]}},
        {"metadata": {"name": "n2"}, "spec": {"drivers": [{"name": "other", "topologyKeys": [ZONE]}]}},
    ]
    nodes = {"n1": {"metadata": {"labels": {ZONE: "a"}}}, "n2": {"metadata": {"labels": {ZONE: "b"}}}}
    assert node_topologies("d", csinodes, nodes) == {"n1": NodeTopology("n1", (ZONE,), {ZONE: "a"})}
