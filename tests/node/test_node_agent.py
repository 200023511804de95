"""The node agent as the chart runs it (`node.enabled`), on the real kubelet, in place of each
driver's node-driver-registrar and livenessprobe: node plugin DaemonSets with only their
driver containers, whose livenessProbes point at the agent.

- kubelet writes the driver into each node's CSINode with NodeGetInfo's node ID and topology
  keys, and removes it with the DaemonSet (a pod mounting a volume through a driver the agent
  registered: test_volume.py);
- a driver whose Probe turns `ready: false` has its container restarted by kubelet;
- kubelet restarted: the agent's drivers are registered again;
- a driver socket removed: unregistered; the driver back: registered again;
- five drivers on one node from one agent, each healthy at its own /healthz/<driver>;
- a node plugin moved to node-driver-registrar (devcluster's stand-in, written from its
  documented behaviour: the binary is not on the module proxy) and back: the same
  registration socket, the same CSINode entry.

The times are printed for docs/deployment.md; nothing asserts a speed."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from csi_client import CSIClient
from devcluster import LocalCluster
from devcluster.images import MOCK_DRIVER_IMAGE
from devcluster.node import RealNode
from devcluster.operator_image import OPERATOR_IMAGE
from devcluster.workloads import (
    AGENT_HEALTH_PORT,
    CHART,
    KUBELET,
    MOCK_DRIVER,
    PLUGINS,
    REPO,
    agent_liveness,
    agent_pods,
    chart_values,
    daemon_set,
    host_path,
    mock_driver_daemon_set,
)
from sidecarless.kube import CSI_NODE, EVENT, NODE, POD, Kube
from tests.e2e.conftest import eventually
from tests.node.conftest import WORKER, WORKERS
from tests.node.test_helm import DAEMON_SET_RESOURCE, NAMESPACE, RELEASE, helm, image, is_ready, rss_mib  # noqa: F401

pytestmark = pytest.mark.timeout(1800)

FIVE = tuple(f"d{n}.csi.sidecarless.dev" for n in range(1, 6))


@pytest.fixture
async def agents(cluster: LocalCluster, kube: Kube, image: str) -> AsyncIterator[dict[str, dict[str, Any]]]:  # noqa: F811
    """The chart installed with its node agent (one operator replica: the agent is what is
    tested); the agent's pod on each node, by node name."""
    values = chart_values(cluster.server, extra={"replicaCount": "1"})
    await helm(cluster, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", *values)
    try:
        yield await agent_pods_ready(kube)
    finally:
        await remove_node_plugins(kube)
        await helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait")


async def remove_node_plugins(kube: Kube) -> None:
    """The tests' node plugin DaemonSets (a failed test leaves its own), and their pods gone:
    the next test's driver may use the same socket folder and port."""
    # Theirs select by `app`; the chart's agent by app.kubernetes.io/ labels.
    ours = [d for d in await kube.list(DAEMON_SET_RESOURCE, NAMESPACE) if "app" in d["spec"]["selector"]["matchLabels"]]
    apps = {d["spec"]["selector"]["matchLabels"]["app"] for d in ours}
    for name in {d["metadata"]["name"] for d in ours}:
        await kube.delete(DAEMON_SET_RESOURCE, name, NAMESPACE)

    async def pods_gone() -> bool:
        pods = await kube.list(POD, NAMESPACE)
        return not [p for p in pods if p["metadata"].get("labels", {}).get("app") in apps]

    await eventually(pods_gone, timeout=120, what="the node plugins' pods gone")


async def agent_pods_ready(kube: Kube) -> dict[str, dict[str, Any]]:
    async def ready() -> dict[str, dict[str, Any]] | None:
        pods = await kube.list(POD, NAMESPACE, label_selector=agent_pods(RELEASE))
        by_node = {p["spec"]["nodeName"]: p for p in pods if is_ready(p) and not p["metadata"].get("deletionTimestamp")}
        return by_node if set(by_node) == set(WORKERS) else None

    found: dict[str, dict[str, Any]] = await eventually(ready, timeout=180, what="the node agent Ready on every node")
    return found


def node_named(cluster: LocalCluster, name: str) -> RealNode:
    return next(n for n in cluster.real_nodes if n.name == name)


def agent_get(node: RealNode, path: str) -> tuple[int, str]:
    """GET the agent's HTTP path on the node's loopback, where kubelet's probes go."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        f"try: r = urllib.request.urlopen('http://127.0.0.1:{AGENT_HEALTH_PORT}{path}', timeout=10)\n"
        "except urllib.error.HTTPError as e: r = e\n"
        "print(r.status); print(r.read().decode())\n"
    )
    result = subprocess.run(
        ["ip", "netns", "exec", node.network.netns, sys.executable, "-I", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    status, _, body = result.stdout.partition("\n")
    return int(status), body.strip()


def agent_log(node: RealNode, pod: dict[str, Any]) -> str:
    return node.container_log(NAMESPACE, pod["metadata"]["name"], pod["metadata"]["uid"], "node")


async def csinode_entry(kube: Kube, node: str, driver: str) -> dict[str, Any] | None:
    csinode = await kube.get_or_none(CSI_NODE, node)
    drivers: list[dict[str, Any]] = ((csinode or {}).get("spec") or {}).get("drivers") or []
    return next((d for d in drivers if d["name"] == driver), None)


async def registered_on(kube: Kube, nodes: tuple[str, ...], driver: str, timeout: float = 120) -> dict[str, Any]:
    async def entries() -> dict[str, Any] | None:
        found = {node: await csinode_entry(kube, node, driver) for node in nodes}
        return found if all(found.values()) else None

    result: dict[str, Any] = await eventually(entries, timeout=timeout, what=f"{driver} in the CSINodes of {nodes}")
    return result


async def gone_from(kube: Kube, node: str, driver: str, timeout: float = 120) -> None:
    async def gone() -> bool:
        return await csinode_entry(kube, node, driver) is None

    await eventually(gone, timeout=timeout, what=f"{driver} gone from {node}'s CSINode")


def node_plugin(name: str, drivers: tuple[str, ...]) -> dict[str, Any]:
    """A node plugin DaemonSet of mock drivers and nothing else: each at the conventional
    `plugins/<driver>/csi.sock`, each with its livenessProbe on the agent."""
    containers = [
        {
            "name": f"driver-{index}",
            "image": MOCK_DRIVER_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "args": [f"--name={driver}", "--enable-topology", "-v=3"],
            "env": [{"name": "CSI_ENDPOINT", "value": "unix:///csi/csi.sock"}],
            "volumeMounts": [{"name": f"plugin-{index}", "mountPath": "/csi"}],
            "livenessProbe": agent_liveness(driver),
        }
        for index, driver in enumerate(drivers)
    ]
    volumes = [
        host_path(f"plugin-{index}", f"{PLUGINS}/{driver}", "DirectoryOrCreate") for index, driver in enumerate(drivers)
    ]
    return daemon_set(name, {"terminationGracePeriodSeconds": 1, "containers": containers, "volumes": volumes})


async def test_kubelet_registers_a_driver_without_sidecars_on_every_node(
    cluster: LocalCluster, kube: Kube, agents: dict[str, dict[str, Any]]
) -> None:
    driver = FIVE[0]
    started = time.monotonic()
    await kube.create(DAEMON_SET_RESOURCE, node_plugin("one-driver", (driver,)), NAMESPACE)
    entries = await registered_on(kube, WORKERS, driver)
    print(f"\nDaemonSet created to the driver in both CSINodes: {time.monotonic() - started:.1f}s")
    for name, entry in entries.items():
        node = node_named(cluster, name)
        socket = node.kubelet_dir / "plugins" / driver / "csi.sock"
        async with CSIClient(f"unix://{socket}", timeout=10) as client:
            info = await client.node_get_info()
        assert entry["nodeID"] == info.node_id
        assert sorted(entry["topologyKeys"]) == sorted(info.accessible_topology.segments)
        labels = (await kube.get(NODE, name))["metadata"]["labels"]
        assert info.accessible_topology.segments.items() <= labels.items(), "kubelet labels the node with it"
        status, body = await asyncio.to_thread(agent_get, node, f"/healthz/{driver}")
        assert (status, body) == (200, "ok")
        _, metrics = await asyncio.to_thread(agent_get, node, "/metrics")
        assert f'sidecarless_node_driver_registered{{driver_name="{driver}"}} 1.0' in metrics
    assert (await asyncio.to_thread(agent_get, node_named(cluster, WORKER), "/healthz/nobody"))[0] == 404

    await kube.delete(DAEMON_SET_RESOURCE, "one-driver", NAMESPACE)
    deleted = time.monotonic()
    for name in WORKERS:
        await gone_from(kube, name, driver)
    print(f"DaemonSet deleted to the driver gone from both CSINodes: {time.monotonic() - deleted:.1f}s")


def restarts(pod: dict[str, Any], container: str) -> tuple[int, str]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    found: dict[str, Any] = next((s for s in statuses if s["name"] == container), {})
    return found.get("restartCount", 0), (found.get("state", {}).get("running") or {}).get("startedAt", "")


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_a_driver_gone_sick_is_restarted_by_kubelet(
    cluster: LocalCluster, kube: Kube, agents: dict[str, dict[str, Any]]
) -> None:
    """The shim in front of the mock answers Probe `ready: false` 15 s after each start; its
    livenessProbe (csi-driver-host-path's timings: every 2 s, 5 failures) goes to the agent."""
    await kube.create(DAEMON_SET_RESOURCE, mock_driver_daemon_set("sick", probe_unready_after=15), NAMESPACE)
    await registered_on(kube, (WORKER,), MOCK_DRIVER)

    async def restarted() -> dict[str, Any] | None:
        pods = [p for p in await kube.list(POD, NAMESPACE) if p["spec"].get("nodeName") == WORKER]
        sick = next((p for p in pods if p["metadata"]["name"].startswith("sick-")), None)
        return sick if sick is not None and restarts(sick, "shim")[0] >= 1 and restarts(sick, "shim")[1] else None

    pod = await eventually(restarted, timeout=180, what="kubelet restarting the sick driver's container")
    events = [
        e
        for e in await kube.list(EVENT, NAMESPACE)
        if e["involvedObject"].get("name") == pod["metadata"]["name"] and e["reason"] == "Unhealthy"
    ]
    assert events, "kubelet's Unhealthy events for the failed probes"
    assert any("statuscode: 500" in e["message"] for e in events), [e["message"] for e in events]
    first_failure = min(seconds(e.get("firstTimestamp") or e["eventTime"]) for e in events)
    _, started_again = restarts(pod, "shim")
    print(f"\nfirst failed probe to the container running again: {seconds(started_again) - first_failure:.0f}s")
    node = node_named(cluster, WORKER)
    # (Its metric series went with its socket when the container stopped: the log tells.)
    logged = await asyncio.to_thread(agent_log, node, agents[WORKER])
    assert f"health check of {MOCK_DRIVER} failed (not_ready)" in logged
    # The shim's socket goes with its process and comes back with the new one: registered again.
    await registered_on(kube, (WORKER,), MOCK_DRIVER)
    await kube.delete(DAEMON_SET_RESOURCE, "sick", NAMESPACE)
    await gone_from(kube, WORKER, MOCK_DRIVER)


async def test_kubelet_restarted_registers_the_drivers_again(
    cluster: LocalCluster, kube: Kube, agents: dict[str, dict[str, Any]]
) -> None:
    drivers = FIVE[:2]
    node = node_named(cluster, WORKER)
    if not node.kubelet_owned:
        pytest.skip("kubelet is restarted only on a cluster this session started (CI's), not a reused one")
    await kube.create(DAEMON_SET_RESOURCE, node_plugin("two-drivers", drivers), NAMESPACE)
    for driver in drivers:
        await registered_on(kube, (WORKER,), driver)
    agent = agents[WORKER]

    async def registrations() -> int:
        return (await asyncio.to_thread(agent_log, node, agent)).count("kubelet registered ")

    async def answered(count: int) -> bool:
        return await registrations() >= count

    await eventually(lambda: answered(len(drivers)), what="kubelet's answers in the agent's log")
    before = await registrations()
    restarted = time.monotonic()
    node.restart_kubelet()  # on this thread, which outlives the test (see restart_kubelet)

    async def answered_again() -> bool:
        return await answered(before + len(drivers))

    await eventually(answered_again, timeout=120, what="kubelet registering both drivers again")
    print(f"\nkubelet restarted to both drivers registered again: {time.monotonic() - restarted:.1f}s")

    async def node_ready() -> bool:
        conditions = (await kube.get(NODE, WORKER)).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    await eventually(node_ready, timeout=120, what=f"{WORKER} Ready again")
    for driver in drivers:
        assert await csinode_entry(kube, WORKER, driver)
    await kube.delete(DAEMON_SET_RESOURCE, "two-drivers", NAMESPACE)


async def test_a_driver_socket_removed_and_back(
    cluster: LocalCluster, kube: Kube, agents: dict[str, dict[str, Any]]
) -> None:
    driver = FIVE[2]
    await kube.create(DAEMON_SET_RESOURCE, node_plugin("comes-and-goes", (driver,)), NAMESPACE)
    await registered_on(kube, (WORKER,), driver)
    node = node_named(cluster, WORKER)
    socket = node.kubelet_dir / "plugins" / driver / "csi.sock"
    registration = node.kubelet_dir / "plugins_registry" / f"{driver}-reg.sock"
    assert registration.is_socket()
    removed = time.monotonic()
    socket.unlink()
    await gone_from(kube, WORKER, driver)
    print(f"\ndriver socket removed to the driver gone from the CSINode: {time.monotonic() - removed:.1f}s")
    assert not registration.exists()
    # The driver's pod restarted makes its socket again.
    [pod] = [
        p
        for p in await kube.list(POD, NAMESPACE)
        if p["metadata"]["name"].startswith("comes-and-goes-") and p["spec"]["nodeName"] == WORKER
    ]
    back = time.monotonic()
    await kube.delete(POD, pod["metadata"]["name"], NAMESPACE)
    await registered_on(kube, (WORKER,), driver)
    print(f"driver pod replaced to the driver registered again: {time.monotonic() - back:.1f}s")
    await kube.delete(DAEMON_SET_RESOURCE, "comes-and-goes", NAMESPACE)


async def test_five_drivers_on_one_node_from_one_agent(
    cluster: LocalCluster, kube: Kube, agents: dict[str, dict[str, Any]]
) -> None:
    started = time.monotonic()
    await kube.create(DAEMON_SET_RESOURCE, node_plugin("five-drivers", FIVE), NAMESPACE)
    for driver in FIVE:
        await registered_on(kube, WORKERS, driver)
    print(f"\nDaemonSet of five drivers to all five in both CSINodes: {time.monotonic() - started:.1f}s")
    node = node_named(cluster, WORKER)
    for driver in FIVE:
        assert await asyncio.to_thread(agent_get, node, f"/healthz/{driver}") == (200, "ok")
    agent = agents[WORKER]
    [container] = agent["spec"]["containers"]
    assert container["image"] == OPERATOR_IMAGE, "the agent is the operator's image"
    print(f"one agent for five drivers: RSS {await asyncio.to_thread(rss_mib, cluster, agent):.1f} MiB")
    await kube.delete(DAEMON_SET_RESOURCE, "five-drivers", NAMESPACE)
    for driver in FIVE:
        await gone_from(kube, WORKER, driver)


STANDIN = REPO / "tools" / "devcluster" / "registrar_standin.py"


def with_registrar(plugin: dict[str, Any], driver: str) -> dict[str, Any]:
    """The node plugin with a registrar container beside its driver, as drivers ship today."""
    changed = copy.deepcopy(plugin)
    pod = changed["spec"]["template"]["spec"]
    pod["containers"].append(
        {
            "name": "node-driver-registrar",
            "image": OPERATOR_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            # -I: the stand-in's folder has an operator.py that would shadow the standard library.
            "command": ["python3", "-I", "/standin/registrar_standin.py"],
            "args": [
                "--csi-address=unix:///csi/csi.sock",
                f"--kubelet-registration-path={PLUGINS}/{driver}/csi.sock",
                "--registration-dir=/registration",
            ],
            "securityContext": {"runAsUser": 0},
            "volumeMounts": [
                {"name": "plugin-0", "mountPath": "/csi"},
                {"name": "registration", "mountPath": "/registration"},
                {"name": "standin", "mountPath": "/standin/registrar_standin.py", "readOnly": True},
            ],
        }
    )
    pod["volumes"] += [
        host_path("registration", f"{KUBELET}/plugins_registry", "DirectoryOrCreate"),
        host_path("standin", str(STANDIN), "File"),
    ]
    return changed


async def replaced_pod(kube: Kube, prefix: str, old_uid: str) -> dict[str, Any]:
    async def replaced() -> dict[str, Any] | None:
        pods = [p for p in await kube.list(POD, NAMESPACE) if p["metadata"]["name"].startswith(prefix)]
        new = [p for p in pods if p["spec"].get("nodeName") == WORKER and p["metadata"]["uid"] != old_uid]
        return new[0] if new and is_ready(new[0]) else None

    found: dict[str, Any] = await eventually(replaced, timeout=180, what="the node plugin's pod replaced and Ready")
    return found


async def test_a_node_plugin_moves_to_node_driver_registrar_and_back(
    cluster: LocalCluster, kube: Kube, agents: dict[str, dict[str, Any]]
) -> None:
    driver = FIVE[3]
    node = node_named(cluster, WORKER)
    plugin = node_plugin("moving", (driver,))
    await kube.create(DAEMON_SET_RESOURCE, plugin, NAMESPACE)
    before = (await registered_on(kube, (WORKER,), driver))[WORKER]
    [pod] = [
        p
        for p in await kube.list(POD, NAMESPACE)
        if p["metadata"]["name"].startswith("moving-") and p["spec"].get("nodeName") == WORKER
    ]

    async def registered_by_agent(expected: bool) -> bool:
        _, metrics = await asyncio.to_thread(agent_get, node, "/metrics")
        return (f'sidecarless_node_driver_registered{{driver_name="{driver}"}} 1.0' in metrics) is expected

    await eventually(lambda: registered_by_agent(True), what="the agent holding the registration")

    moved = time.monotonic()
    spec = with_registrar(plugin, driver)["spec"]["template"]["spec"]
    await kube.patch(DAEMON_SET_RESOURCE, "moving", {"spec": {"template": {"spec": spec}}}, NAMESPACE)
    pod = await replaced_pod(kube, "moving-", pod["metadata"]["uid"])

    async def registrar_holds() -> bool:
        log = node.container_log(NAMESPACE, pod["metadata"]["name"], pod["metadata"]["uid"], "node-driver-registrar")
        return f"registrar: kubelet registered {driver}" in log and await registered_by_agent(False)

    await eventually(registrar_holds, timeout=60, what="kubelet registering the driver through the registrar")
    await eventually(lambda: csinode_entry(kube, WORKER, driver), what=f"{driver} in the CSINode")
    print(f"\nto node-driver-registrar: registered by it {time.monotonic() - moved:.1f}s after the DaemonSet's change")
    assert await csinode_entry(kube, WORKER, driver) == before
    assert await asyncio.to_thread(agent_get, node, f"/healthz/{driver}") == (200, "ok"), "health still served"

    back = time.monotonic()
    await kube.patch(
        DAEMON_SET_RESOURCE, "moving", {"spec": {"template": {"spec": plugin["spec"]["template"]["spec"]}}}, NAMESPACE
    )
    await replaced_pod(kube, "moving-", pod["metadata"]["uid"])
    await eventually(lambda: registered_by_agent(True), timeout=60, what="the agent registering the driver again")
    await eventually(lambda: csinode_entry(kube, WORKER, driver), what=f"{driver} in the CSINode")
    print(f"back to the agent: registered by it {time.monotonic() - back:.1f}s after the DaemonSet's change")
    assert await csinode_entry(kube, WORKER, driver) == before
    await kube.delete(DAEMON_SET_RESOURCE, "moving", NAMESPACE)
