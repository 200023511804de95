"""The `node` group: a cluster with a real kubelet node (containerd, runc, kube-scheduler).

`cluster` is overridden here, so the shared `api`, `namespace` and `unique_name` fixtures
work unchanged against this cluster. It is separate from the fast cluster the other layers
use: no hand-made Nodes, no drivers on the host; pods are scheduled, not given a nodeName.
With SIDECARLESS_NODE_KUBECONFIG pointing at the kubeconfig of a `make cluster NODES=2`
cluster, that one is reused and left running.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devcluster import LocalCluster
from devcluster.cluster import ClusterOptions
from tests.conftest import session_cluster

WORKER = "worker-1"
WORKERS = (WORKER, "worker-2")  # two: the chart's two replicas in the nodes' networks need a node each


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith("tests/node/"):
            item.add_marker(pytest.mark.node)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    options = ClusterOptions(nodes=(), drivers=(), kubelet_nodes=WORKERS)
    yield from session_cluster("SIDECARLESS_NODE_KUBECONFIG", "slcn-", options)
