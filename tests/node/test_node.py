"""The real node: kubelet registers it, kube-scheduler places pods on it, containerd and runc
run them, and everything the node makes stays inside what the project owns: its cgroups
under this run's own, its pods' network namespaces with no route off the machine."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from devcluster import LocalCluster, versions
from devcluster.addresses import OWNED_NETWORK, SERVICE_NETWORK
from devcluster.images import BUSYBOX_IMAGE, PAUSE_IMAGE
from devcluster.node import CgroupTree, RealNode, pod_routes
from devcluster.operator_image import OPERATOR_IMAGE, ensure_operator_image
from sidecarless.kube import EVENT, NODE, POD, Kube, Resource
from tests.e2e.conftest import eventually
from tests.node.conftest import WORKER, WORKERS

SERVICE = Resource("", "v1", "services", "Service", True)


def pod(name: str, *, host_network: bool = False, command: tuple[str, ...] = ()) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": BUSYBOX_IMAGE if command else PAUSE_IMAGE,
        "imagePullPolicy": "IfNotPresent",
    }
    if command:
        container["command"] = list(command)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "hostNetwork": host_network,
            "containers": [container],
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
        },
    }


async def running(kube: Kube, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found = await kube.get(POD, name, namespace)
        return found if found.get("status", {}).get("phase") == "Running" else None

    found: dict[str, Any] = await eventually(check, timeout=timeout, what=f"pod {name} Running")
    return found


def cgroup_paths(pid: int) -> list[str]:
    return [line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]


def real_node(cluster: LocalCluster, pod: dict[str, Any] | None = None) -> RealNode:
    """The node a pod runs on (default: the first one)."""
    name = pod["spec"]["nodeName"] if pod else WORKER
    return next(n for n in cluster.real_nodes if n.name == name)


async def test_kubelet_registers_the_node_ready(kube: Kube, cluster: LocalCluster) -> None:
    node = await kube.get(NODE, WORKER)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready["message"]
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == versions.KUBERNETES
    assert info["containerRuntimeVersion"].startswith(f"containerd://{versions.CONTAINERD.lstrip('v')}")
    internal = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    assert internal == real_node(cluster).network.node_ip
    assert not ipaddress.ip_address(internal).is_loopback
    # The node lifecycle controller lifted the not-ready taint kubelet registers with.
    assert not [t for t in node["spec"].get("taints", []) if t["key"].startswith("node.kubernetes.io/")]


async def test_the_scheduler_places_a_pod_and_it_runs(kube: Kube, namespace: str) -> None:
    await kube.create(POD, pod("sleeper", command=("sleep", "3600")), namespace)
    found = await running(kube, namespace, "sleeper")
    assert found["spec"]["nodeName"] in WORKERS
    events = [e for e in await kube.list(EVENT, namespace) if e["involvedObject"]["name"] == "sleeper"]
    scheduled = [e for e in events if e["reason"] == "Scheduled"]
    assert scheduled, [e["reason"] for e in events]
    assert "default-scheduler" in (scheduled[0].get("reportingComponent"), scheduled[0]["source"].get("component"))


@pytest.mark.parametrize("host_network", [False, True], ids=["pod-network", "host-network"])
async def test_no_route_off_the_machine(kube: Kube, cluster: LocalCluster, namespace: str, host_network: bool) -> None:
    """A pod's network namespace, or with host networking the node's own, leads nowhere but
    the node's subnet."""
    await kube.create(POD, pod("net", host_network=host_network, command=("sleep", "3600")), namespace)
    found = await running(kube, namespace, "net")
    node = real_node(cluster, found)
    assert ipaddress.ip_address(found["status"]["podIP"]) in node.network.subnet
    pids = node.pod_pids(found["metadata"]["uid"])
    assert pids, "no process of the pod found in the node's cgroups"
    for pid in pids:
        routes = pod_routes(pid)
        assert routes
        for route in routes:
            assert route_stays_on_machine(route, OWNED_NETWORK), (
                f"pod process {pid} has a route off the machine: {route}"
            )


def route_stays_on_machine(route: dict[str, Any], owned: ipaddress.IPv4Network) -> bool:
    """A route of a pod's or node's network namespace leads only into the cluster's own
    addresses (the nodes' pod subnets and the wire between them), or is local."""
    if route.get("table") == "local" or route.get("type") in {"local", "broadcast", "multicast"}:
        return True
    destination = route.get("dst", "")
    if destination == "default":
        return False
    network = ipaddress.ip_network(destination, strict=False)
    if network.version == 6:
        return network.is_link_local  # fe80::/64 on the pod's interface: the link only
    return network.subnet_of(owned) if isinstance(network, ipaddress.IPv4Network) else False


@pytest.mark.parametrize(
    ("route", "stays"),
    [
        ({"dst": "default", "dev": "eth0"}, False),
        ({"dst": "10.217.3.0/24", "dev": "eth0"}, True),
        ({"dst": "10.216.0.0/15", "gateway": "10.217.3.1", "dev": "eth0"}, True),
        ({"dst": "10.216.0.0/14", "gateway": "10.217.3.1", "dev": "eth0"}, False),
        ({"dst": "10.0.0.0/24", "dev": "eth0"}, False),
        ({"dst": "192.0.2.0/24", "dev": "eth0"}, False),
        ({"dst": "fe80::/64", "dev": "eth0"}, True),
        ({"dst": "fd00::/64", "dev": "eth0"}, False),
        ({"dst": "10.217.3.7", "dev": "eth0", "table": "local", "type": "local"}, True),
    ],
)
def test_the_route_check_itself(route: dict[str, Any], stays: bool) -> None:
    assert route_stays_on_machine(route, OWNED_NETWORK) is stays


async def test_containers_live_in_the_nodes_cgroups(kube: Kube, cluster: LocalCluster, namespace: str) -> None:
    await kube.create(POD, pod("host", host_network=True, command=("sleep", "3600")), namespace)
    found = await running(kube, namespace, "host")
    node = real_node(cluster, found)
    assert node.cgroups is not None
    own = CgroupTree.own_paths()
    pids = node.pod_pids(found["metadata"]["uid"])
    assert pids
    for pid in pids:
        for path in cgroup_paths(pid):
            assert path.startswith(node.cgroups.path + "/pods/"), f"pid {pid} is in {path}"
    # Nothing at any hierarchy's root (containerd's default /k8s.io, kubelet's default /kubepods).
    for mount in own:
        assert not (mount / "k8s.io").exists()
        assert not (mount / "kubepods").exists()


async def test_pods_reach_each_other_across_nodes(kube: Kube, namespace: str) -> None:
    """The fabric: a pod on one node answers a pod on the other (busybox nc, one round trip)."""
    listener = pod("listener", command=("sh", "-c", "echo pong | nc -l -p 7000"))
    listener["spec"]["nodeSelector"] = {"kubernetes.io/hostname": WORKERS[0]}
    listener["spec"]["restartPolicy"] = "Never"  # so that serving once ends it: Succeeded
    await kube.create(POD, listener, namespace)
    found = await running(kube, namespace, "listener")
    client = pod("client", command=("sh", "-c", f"nc {found['status']['podIP']} 7000 && sleep 3600"))
    client["spec"]["nodeSelector"] = {"kubernetes.io/hostname": WORKERS[1]}
    await kube.create(POD, client, namespace)

    async def answered() -> bool:
        done = await kube.get(POD, "listener", namespace)
        return bool(done["status"].get("phase") == "Succeeded")

    await eventually(answered, timeout=60, what="the listener served the other node's pod")


# In-cluster config as client libraries do it: the Service's address from kubelet's environment,
# the ServiceAccount's token and CA from their projected volume.
IN_CLUSTER_REQUEST = """
import json, os, ssl, urllib.request
base = "/var/run/secrets/kubernetes.io/serviceaccount"
url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/version"
request = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(base + "/token").read()})
context = ssl.create_default_context(cafile=base + "/ca.crt")
print("reached", json.load(urllib.request.urlopen(request, context=context, timeout=10))["gitVersion"], flush=True)
"""


async def test_a_pod_on_the_pod_network_reaches_the_api_through_the_kubernetes_service(
    kube: Kube, cluster: LocalCluster, namespace: str
) -> None:
    """What the chart's defaults need: no hostNetwork, in-cluster config. The `kubernetes`
    Service's ClusterIP is the cluster's own address, held by each node (devcluster.addresses)."""
    manifest = pod("in-cluster", command=("python3", "-c", IN_CLUSTER_REQUEST))
    manifest["spec"]["containers"][0]["image"] = OPERATOR_IMAGE
    manifest["spec"]["restartPolicy"] = "Never"
    del manifest["spec"]["automountServiceAccountToken"]
    cluster.import_image(ensure_operator_image())
    await kube.create(POD, manifest, namespace)

    async def finished() -> dict[str, Any] | None:
        found = await kube.get(POD, "in-cluster", namespace)
        return found if found.get("status", {}).get("phase") in {"Succeeded", "Failed"} else None

    found = await eventually(finished, timeout=120, what="the in-cluster request done")
    log = real_node(cluster, found).container_log(namespace, "in-cluster", found["metadata"]["uid"], "main")
    assert f"reached {versions.KUBERNETES}" in log, log
    assert found["status"]["phase"] == "Succeeded"
    service = await kube.get(SERVICE, "kubernetes", "default")
    assert ipaddress.ip_address(service["spec"]["clusterIP"]) in SERVICE_NETWORK


async def test_a_pod_writes_to_an_empty_dir(kube: Kube, cluster: LocalCluster, namespace: str) -> None:
    manifest = pod("writer", command=("sh", "-c", "echo written > /data/file && cat /data/file && sleep 3600"))
    manifest["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    manifest["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    await kube.create(POD, manifest, namespace)
    found = await running(kube, namespace, "writer")
    node = real_node(cluster, found)

    async def logged() -> bool:
        return "written" in node.container_log(namespace, "writer", found["metadata"]["uid"], "main")

    await eventually(logged, what="the pod's log line")
