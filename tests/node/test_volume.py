"""A pod mounts a volume, everything as pods: the operator installed by helm, the mock driver
as a DaemonSet (controller on TCP, node service behind driver_shim, which makes the target
folders as csi-driver-host-path does) with `sidecarless node` registering it, and kubelet
attaching (through the operator's ControllerPublish), staging and publishing the volume.

The mock keeps its volumes in its own memory, so each node's instance is its own backend:
the DriverEndpoint names worker-1's, and the pod goes to worker-1."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.images import BUSYBOX_IMAGE, MOCK_DRIVER_IMAGE
from devcluster.operator_image import OPERATOR_IMAGE
from sidecarless.kube import CSI_DRIVER, DRIVER_ENDPOINT, POD, PVC, STORAGE_CLASS, VOLUME_ATTACHMENT, Kube
from tests.e2e.conftest import claim, eventually, storage_class, wait_ready
from tests.node.test_helm import DAEMON_SET_RESOURCE, image, installed  # noqa: F401 - fixtures
from tests.node.test_registration import DRIVER, NODE_AGENT, NODE_PLUGIN_VOLUMES, host_path

pytestmark = pytest.mark.timeout(1800)

SHIM = Path(__file__).resolve().parents[2] / "tools" / "devcluster" / "driver_shim.py"
CONTROLLER_PORT = 10000
KUBELET = "/var/lib/kubelet"


async def attachments_of(kube: Kube, volume: str) -> list[dict[str, Any]]:
    return [a for a in await kube.list(VOLUME_ATTACHMENT) if a["spec"]["source"].get("persistentVolumeName") == volume]


def driver_daemon_set() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "mock-driver"},
        "spec": {
            "selector": {"matchLabels": {"app": "mock-driver"}},
            "template": {
                "metadata": {"labels": {"app": "mock-driver"}},
                "spec": {
                    "hostNetwork": True,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "mock",
                            "image": MOCK_DRIVER_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "args": [f"--name={DRIVER}", "--attach-limit=10000", "-v=3"],
                            "env": [
                                {"name": "CSI_ENDPOINT", "value": "unix:///csi/mock.sock"},
                                {"name": "CSI_CONTROLLER_ENDPOINT", "value": f"tcp://0.0.0.0:{CONTROLLER_PORT}"},
                            ],
                            # kubelet's folder at kubelet's path, as node plugins mount it: the mock
                            # checks that the staging and target paths kubelet names exist.
                            "volumeMounts": [
                                {"name": "plugin-dir", "mountPath": "/csi"},
                                {"name": "kubelet", "mountPath": KUBELET},
                            ],
                        },
                        {
                            "name": "shim",
                            "image": OPERATOR_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            # -I: the shim's folder has an operator.py that would shadow the standard library.
                            "command": ["python3", "-I", "/shim/driver_shim.py"],
                            "args": [
                                "--listen=unix:///csi/csi.sock",
                                "--backend=unix:///csi/mock.sock",
                                "--create-target-paths",
                            ],
                            "securityContext": {"runAsUser": 0},
                            "volumeMounts": [
                                {"name": "plugin-dir", "mountPath": "/csi"},
                                {"name": "shim", "mountPath": "/shim/driver_shim.py", "readOnly": True},
                                {"name": "kubelet", "mountPath": KUBELET},
                            ],
                        },
                        NODE_AGENT,
                    ],
                    "volumes": [
                        *NODE_PLUGIN_VOLUMES,
                        host_path("kubelet", KUBELET),
                        host_path("shim", str(SHIM), "File"),
                    ],
                },
            },
        },
    }


async def test_a_pod_mounts_a_volume_provisioned_and_attached_by_the_operator_pods(
    cluster: LocalCluster,
    kube: Kube,
    installed: tuple[str, float],  # noqa: F811
) -> None:
    namespace, _ = installed
    worker = cluster.real_nodes[0]
    driver = {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVER}}
    await kube.create(CSI_DRIVER, {**driver, "spec": {"attachRequired": True}})
    await kube.create(DAEMON_SET_RESOURCE, driver_daemon_set(), namespace)
    endpoint = {
        "apiVersion": "sidecarless.io/v1alpha1",
        "kind": "DriverEndpoint",
        "metadata": {"name": "mock-mounted"},
        "spec": {"driverName": DRIVER, "address": f"dns:///{worker.network.node_ip}:{CONTROLLER_PORT}"},
    }
    await kube.create(DRIVER_ENDPOINT, endpoint)
    try:
        await wait_ready(kube, "mock-mounted", timeout=120)
        await kube.create(STORAGE_CLASS, storage_class("mock-mounted", "mock-mounted"))
        created = time.monotonic()
        await kube.create(PVC, claim("data", "mock-mounted"), namespace)
        writer = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "writer"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": worker.name},
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "main",
                        "image": BUSYBOX_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", "echo written > /data/file && cat /data/file && sleep 3600"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            },
        }
        await kube.create(POD, writer, namespace)

        async def running() -> dict[str, Any] | None:
            found = await kube.get(POD, "writer", namespace)
            return found if found.get("status", {}).get("phase") == "Running" else None

        found = await eventually(running, timeout=180, what="the pod with the volume Running")
        print(f"\nPVC and pod created to the pod Running with the volume: {time.monotonic() - created:.1f}s")
        volume = (await kube.get(PVC, "data", namespace))["spec"]["volumeName"]
        assert [a["status"].get("attached") for a in await attachments_of(kube, volume)] == [True]

        async def logged() -> bool:
            return "written" in worker.container_log(namespace, "writer", found["metadata"]["uid"], "main")

        await eventually(logged, what="the pod wrote to its volume")
        await kube.delete(POD, "writer", namespace)
        await kube.delete(PVC, "data", namespace)

        async def detached_and_deleted() -> bool:
            left = await attachments_of(kube, volume)
            return not left and await kube.get_or_none(PVC, "data", namespace) is None

        await eventually(detached_and_deleted, timeout=180, what="the volume detached and deleted")
    finally:
        await kube.delete(DRIVER_ENDPOINT, "mock-mounted")
        await kube.delete(STORAGE_CLASS, "mock-mounted")
        await kube.delete(DAEMON_SET_RESOURCE, "mock-driver", namespace)
        await kube.delete(CSI_DRIVER, DRIVER)
