"""The node agent registers a driver's node plugin with the real kubelet: a DaemonSet of the
mock driver (node service) and `sidecarless node` in place of node-driver-registrar, and
kubelet writes the driver into every node's CSINode with NodeGetInfo's node ID."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.images import MOCK_DRIVER_IMAGE
from devcluster.operator_image import ensure_operator_image
from devcluster.workloads import MOCK_DRIVER as DRIVER
from devcluster.workloads import NODE_AGENT, node_plugin_volumes
from sidecarless.kube import CSI_NODE, Kube
from tests.e2e.conftest import eventually
from tests.node.conftest import WORKERS
from tests.node.test_helm import DAEMON_SET_RESOURCE

pytestmark = pytest.mark.timeout(1800)


def drivers_of(csinode: dict[str, Any] | None) -> list[dict[str, Any]]:
    drivers: list[dict[str, Any]] = ((csinode or {}).get("spec") or {}).get("drivers") or []
    return drivers


def node_plugin() -> dict[str, Any]:
    """The mock driver's node plugin with the agent beside it, as a driver's DaemonSet would be."""
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "mock-node"},
        "spec": {
            "selector": {"matchLabels": {"app": "mock-node"}},
            "template": {
                "metadata": {"labels": {"app": "mock-node"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "mock",
                            "image": MOCK_DRIVER_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "args": [f"--name={DRIVER}", "-v=3"],
                            "env": [{"name": "CSI_ENDPOINT", "value": "unix:///csi/csi.sock"}],
                            "volumeMounts": [{"name": "plugin-dir", "mountPath": "/csi"}],
                        },
                        NODE_AGENT,
                    ],
                    "volumes": node_plugin_volumes(),
                },
            },
        },
    }


async def test_kubelet_registers_the_driver_on_every_node(cluster: LocalCluster, kube: Kube, namespace: str) -> None:
    cluster.import_image(ensure_operator_image())
    started = time.monotonic()
    await kube.create(DAEMON_SET_RESOURCE, node_plugin(), namespace)

    async def registered() -> dict[str, dict[str, Any]] | None:
        found = {}
        for node in WORKERS:
            csinode = await kube.get_or_none(CSI_NODE, node)
            entry = next(
                (d for d in ((csinode or {}).get("spec") or {}).get("drivers") or [] if d["name"] == DRIVER), None
            )
            if entry is None:
                return None
            found[node] = entry
        return found

    entries = await eventually(registered, timeout=120, what="the driver in every node's CSINode")
    print(f"\nDaemonSet created to the driver in both CSINodes: {time.monotonic() - started:.1f}s")
    for entry in entries.values():
        assert entry["nodeID"], entry
    await kube.delete(DAEMON_SET_RESOURCE, "mock-node", namespace)

    async def unregistered() -> bool:
        for node in WORKERS:
            if any(d["name"] == DRIVER for d in drivers_of(await kube.get(CSI_NODE, node))):
                return False
        return True

    await eventually(unregistered, timeout=120, what="the driver gone from the CSINodes with its pods")
