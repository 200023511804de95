"""A real node's start and stop on their own: a node that cannot start fails at once with
kubelet's reason, and stopping leaves nothing behind (processes, mounts, bridge, cgroups)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from devcluster import LocalCluster
from devcluster.cluster import ClusterOptions
from devcluster.node import RealNode
from devcluster.procs import ProcessDiedError, is_zombie
from tests.conftest import short_tmpdir


def leftovers(node: RealNode, workdir: Path, pids: set[int]) -> list[str]:
    # A killed container whose shim died with it is reparented to PID 1, which may reap it a moment later.
    found = [f"process {pid}" for pid in pids if Path(f"/proc/{pid}").exists() and not is_zombie(pid)]
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount {line.split()[4]}" for line in mountinfo if line.split()[4].startswith(str(workdir))]
    found += [f"network namespace {node.network.netns}"] if node.network.netns_path.exists() else []
    assert node.cgroups is not None
    found += [f"cgroup {folder}" for folder in [*node.cgroups.folders(), *node.cgroups.created] if folder.exists()]
    return found


def test_stop_leaves_nothing_behind() -> None:
    workdir = short_tmpdir("slcs-")
    cluster = LocalCluster.start(workdir, ClusterOptions(nodes=(), drivers=(), kubelet_nodes=("worker-stop",)))
    try:
        node = cluster.real_nodes[0]
        # A pod with a volume: kubelet mounts it, containerd mounts the rootfs and the netns.
        cluster.rest.request(
            "POST",
            "/api/v1/namespaces/default/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "mounted", "namespace": "default"},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "localhost/busybox:1.35",
                            "command": ["sleep", "3600"],
                            "imagePullPolicy": "IfNotPresent",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [{"name": "data", "emptyDir": {"medium": "Memory"}}],
                    "terminationGracePeriodSeconds": 0,
                },
            },
        )
        deadline = time.monotonic() + 60
        while (cluster.rest.get("/api/v1/namespaces/default/pods/mounted") or {}).get("status", {}).get(
            "phase"
        ) != "Running":
            assert time.monotonic() < deadline, "the pod did not start"
            time.sleep(0.5)
        assert node.cgroups is not None
        pids = node.cgroups.pids()
        assert len(pids) >= 4  # containerd, kubelet, a shim, pause and sleep
    finally:
        cluster.stop()
    try:
        deadline = time.monotonic() + 10
        while (left := leftovers(node, workdir, pids)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_kubelet_that_refuses_its_configuration_fails_at_once() -> None:
    workdir = short_tmpdir("slcf-")
    started = time.monotonic()
    options = ClusterOptions(nodes=(), drivers=(), kubelet_nodes=("worker-bad",), kubelet_config={"failCgroupV1": True})
    try:
        with pytest.raises(ProcessDiedError, match="cgroup v1") as raised:
            LocalCluster.start(workdir, options)
        assert time.monotonic() - started < 45, "the failure took as long as a timeout"
        assert "kubelet-worker-bad" in str(raised.value)
        assert not list(Path("/run/netns").glob(f"*{workdir.name}*")), "its network namespace is left"
        assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(workdir) in line]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
