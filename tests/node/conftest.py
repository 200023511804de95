"""The `node` group: a cluster with a real kubelet node (containerd, runc, kube-scheduler).

`cluster` is overridden here, so the shared `api`, `namespace` and `unique_name` fixtures
work unchanged against this cluster. It is separate from the fast cluster the other layers
use: no hand-made Nodes, no drivers on the host; pods are scheduled, not given a nodeName.
With SIDECARLESS_NODE_KUBECONFIG pointing at the kubeconfig of a `make cluster NODES=1`
cluster, that one is reused and left running.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client.api_client import ApiClient

from devcluster import LocalCluster
from devcluster.cluster import ClusterOptions
from sidecarless.kube import Kube
from tests.conftest import short_tmpdir

WORKER = "worker-1"
WORKERS = (WORKER, "worker-2")  # two: the chart's two replicas in the nodes' networks need a node each


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith("tests/node/"):
            item.add_marker(pytest.mark.node)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    kubeconfig = os.environ.get("SIDECARLESS_NODE_KUBECONFIG", "")
    if kubeconfig:
        existing = LocalCluster.attach(Path(kubeconfig).parent)
        if existing is not None:
            yield existing
            return
    workdir = short_tmpdir("slcn-")
    running = LocalCluster.start(workdir, ClusterOptions(nodes=(), drivers=(), kubelet_nodes=WORKERS))
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def kube(api: ApiClient) -> Kube:
    return Kube(api, qps=0, burst=1)
