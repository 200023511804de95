"""A real node: containerd, runc and kubelet on this machine, kept inside what the cluster owns.

    node = RealNode.create(workdir / "nodes" / "worker-1", "worker-1", cluster_id="c1", index=1)
    node.start(server=..., pki=..., kubernetes=..., runtime=..., images=[...], ...)
    ...
    node.stop()   # kills its containers, unmounts what kubelet and containerd mounted,
                  # removes its network namespace and its cgroups

What it owns, and nothing else:
- **cgroups**: one folder per hierarchy, under the cgroup this process is in
  (`/proc/self/cgroup`). kubelet takes a single cgroup root for every hierarchy, so the
  node's root is the deepest of this process's own paths (each other hierarchy's own path
  must lie on the way to it) plus a leaf of its own. containerd, its shims and kubelet run
  in `<root>/runtime`, pods in kubelet's QoS tree under `<root>/pods` (its `cgroupRoot`),
  so teardown finds every process of the node in that tree.
- **a network namespace**: loopback and a bridge holding the node IP `10.217.<N>.1/24`,
  also the pods' gateway; kubelet, containerd and host-network pods live in it. Routes lead
  only to 10.216.0.0/15 (the nodes' pod subnets, and the fabric that joins the nodes), so
  nothing a pod or the node sends can leave the machine. kubelet reaches the API server on
  the namespace's own loopback, through netns_relay.py; pods on the pod network reach it at
  the `kubernetes` Service's ClusterIP (10.216.128.1:443), which the node holds on its
  loopback and where the same relay listens.
- **listeners**: kubelet on the namespace's 127.0.0.1, containerd on unix sockets under the
  node's folder.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devcluster.addresses import (
    FABRIC_NETWORK,
    KUBERNETES_SERVICE_IP,
    KUBERNETES_SERVICE_PORT,
    OWNED_NETWORK,
    POD_NETWORK,
)
from devcluster.build import KubernetesBinaries, NodeRuntime
from devcluster.kube import KubeREST
from devcluster.pki import ClusterPKI, load_authority
from devcluster.procs import ManagedProcess, tail, wait_until

log = logging.getLogger("devcluster.node")


class NodeStartError(RuntimeError):
    """The node cannot start on this machine; the message says why and what to change."""


# --- cgroups ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupTree:
    """The node's cgroup folder in every hierarchy: `<mount>/<path>` for each mount."""

    path: str  # the same path in every hierarchy, as kubelet and runc need it
    mounts: tuple[Path, ...]
    created: tuple[Path, ...]  # folders this tree made, parents first (removed in reverse)

    @classmethod
    def own_paths(cls) -> dict[Path, str]:
        """This process's cgroup in each mounted hierarchy: mount point -> path."""
        by_controllers = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            by_controllers[controllers] = path
        mounts: dict[Path, str] = {}
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            separator = fields.index("-")
            fstype, options = fields[separator + 1], fields[separator + 3].split(",")
            point = Path(fields[4])
            if fstype == "cgroup2":
                mounts[point] = by_controllers.get("", "/")
            elif fstype == "cgroup":
                names = [o for o in options if o in _v1_controllers() or o.startswith("name=")]
                key = next((k for k in by_controllers if sorted(k.split(",")) == sorted(names)), None)
                if key is not None:
                    mounts[point] = by_controllers[key]
        return mounts

    @classmethod
    def make(cls, leaf: str) -> CgroupTree:
        own = cls.own_paths()
        node_path = f"{common_cgroup_path(own).rstrip('/')}/{leaf}"
        created: list[Path] = []
        for mount in own:
            folder = mount
            for part in node_path.strip("/").split("/"):
                folder = folder / part
                if not folder.exists():
                    try:
                        _make_cgroup(folder)
                    except OSError as error:
                        cls(node_path, tuple(own), tuple(created)).remove()
                        raise NodeStartError(f"cannot create cgroup {folder}: {error}") from error
                    created.append(folder)
        tree = cls(node_path, tuple(own), tuple(created))
        for folder in [*tree.folders("runtime"), *tree.folders("pods")]:
            if not folder.exists():
                _make_cgroup(folder)
        return tree

    def folders(self, sub: str = "") -> list[Path]:
        return [mount / self.path.strip("/") / sub for mount in self.mounts]

    def procs_files(self, sub: str) -> list[Path]:
        return [folder / "cgroup.procs" for folder in self.folders(sub)]

    def pids(self, sub: str = "") -> set[int]:
        """Every process in the node's folder `sub` (default: all of it), in any hierarchy."""
        found: set[int] = set()
        for top in self.folders(sub):
            for folder in _folders_under(top):
                with contextlib.suppress(OSError):  # gone meanwhile: kubelet and runc remove theirs
                    found.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
        return found

    def remove(self) -> None:
        """Remove the node's folders, deepest first; the processes in them must be gone."""
        for top in self.folders():
            if top.exists():
                for folder in sorted(_folders_under(top), key=lambda p: -len(p.parts)):
                    _rmdir_cgroup(folder)
        for folder in reversed(self.created):
            _rmdir_cgroup(folder)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "mounts": [str(m) for m in self.mounts], "created": [str(c) for c in self.created]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CgroupTree:
        return cls(raw["path"], tuple(Path(m) for m in raw["mounts"]), tuple(Path(c) for c in raw["created"]))


def _folders_under(top: Path) -> list[Path]:
    """`top` and every folder below it. os.walk skips what vanishes while it walks (a
    container's cgroup that runc removes at that moment); Path.rglob raised, and a demo's
    teardown died halfway."""
    return [Path(root) for root, _, _ in os.walk(top)]


def common_cgroup_path(own: dict[Path, str]) -> str:
    """One cgroup path under this process's own cgroup in every hierarchy: the deepest own
    path, which every other hierarchy's own path must lead to."""
    if not own:
        raise NodeStartError("no cgroup hierarchy is mounted under /sys/fs/cgroup: kubelet needs cgroups")
    deepest = max(own.values(), key=lambda p: len(p.rstrip("/").split("/")))
    for mount, path in own.items():
        if not (deepest.rstrip("/") + "/").startswith(path.rstrip("/") + "/"):
            raise NodeStartError(
                f"this process is in cgroup {path} of {mount} but in {deepest} elsewhere: kubelet needs one "
                "cgroup path for every hierarchy, and none lies under both"
            )
    return deepest


def _v1_controllers() -> set[str]:
    return {line.split()[0] for line in Path("/proc/cgroups").read_text().splitlines()[1:] if line.strip()}


def _make_cgroup(folder: Path) -> None:
    folder.mkdir()
    # A new cpuset v1 cgroup has no CPUs or memory nodes, and takes no process until it has.
    for name in ("cpuset.cpus", "cpuset.mems"):
        if (folder / name).exists():
            (folder / name).write_text((folder.parent / name).read_text())


def _rmdir_cgroup(folder: Path) -> None:
    for _ in range(50):
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)  # a process that was just killed may still be leaving it
    log.warning("could not remove cgroup %s", folder)


# --- network ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeNetwork:
    """The node's own network namespace: loopback and a bridge holding the node IP, nothing else."""

    netns: str
    subnet: ipaddress.IPv4Network
    bridge: str = "slcbr0"

    @property
    def node_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @property
    def index(self) -> int:
        return int(self.subnet.network_address.packed[2])

    @property
    def fabric_ip(self) -> str:
        return str(FABRIC_NETWORK.network_address + self.index)

    @classmethod
    def for_node(cls, cluster_id: str, name: str, index: int) -> NodeNetwork:
        # Each node's namespace is closed, so subnets only need to differ between one cluster's nodes.
        return cls(f"sidecarless-{cluster_id}-{name}", list(POD_NETWORK.subnets(new_prefix=24))[index])

    def create(self) -> None:
        if self.netns_path.exists():
            raise NodeStartError(f"network namespace {self.netns} exists already: is another cluster using it?")
        _ip("netns", "add", self.netns)
        _ip("-n", self.netns, "link", "set", "lo", "up")
        _ip("-n", self.netns, "addr", "add", f"{KUBERNETES_SERVICE_IP}/32", "dev", "lo")
        _ip("-n", self.netns, "link", "add", self.bridge, "type", "bridge")
        _ip("-n", self.netns, "addr", "add", f"{self.node_ip}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("-n", self.netns, "link", "set", self.bridge, "up")

    def remove(self) -> None:
        if self.netns_path.exists():
            with contextlib.suppress(NodeStartError):
                _ip("netns", "del", self.netns)

    def cni_config(self) -> dict[str, Any]:
        """bridge + host-local: the node IP is the gateway, and the only route leads to the cluster's own addresses."""
        return {
            "cniVersion": "1.0.0",
            "name": "sidecarless-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,  # the bridge keeps the node IP; no default route is added
                    "ipMasq": False,
                    "hairpinMode": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.subnet), "gateway": self.node_ip}]],
                        # The other nodes and their pods, through this node: no default route.
                        "routes": [{"dst": str(OWNED_NETWORK), "gw": self.node_ip}],
                        "dataDir": "",  # set by RealNode: host-local's state stays in the node's folder
                    },
                },
                {"type": "loopback"},
            ],
        }


@dataclass(frozen=True)
class NodeFabric:
    """The wire between the nodes' namespaces: a namespace of its own with one bridge, a veth
    from each node (`10.216.0.<N>`), and in each node a route to every other node's pod subnet
    through it. Nodes forward for their pods; nothing leads anywhere else."""

    netns: str

    @classmethod
    def for_cluster(cls, cluster_id: str) -> NodeFabric:
        return cls(f"sidecarless-{cluster_id}-fabric")

    def connect(self, networks: list[NodeNetwork]) -> None:
        _ip("netns", "add", self.netns)
        _ip("-n", self.netns, "link", "set", "lo", "up")
        _ip("-n", self.netns, "link", "add", "fabric", "type", "bridge")
        _ip("-n", self.netns, "link", "set", "fabric", "up")
        for network in networks:
            port = f"node{network.index}"
            _ip("link", "add", "fabric0", "netns", network.netns, "type", "veth", "peer", port, "netns", self.netns)
            _ip("-n", self.netns, "link", "set", port, "master", "fabric", "up")
            _ip("-n", network.netns, "addr", "add", f"{network.fabric_ip}/{FABRIC_NETWORK.prefixlen}", "dev", "fabric0")
            _ip("-n", network.netns, "link", "set", "fabric0", "up")
            subprocess.run(
                ["nsenter", f"--net={network.netns_path}", "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
                check=True,
            )
        for network in networks:
            for other in networks:
                if other is not network:
                    _ip("-n", network.netns, "route", "add", str(other.subnet), "via", other.fabric_ip)

    def remove(self) -> None:
        if (Path("/run/netns") / self.netns).exists():
            with contextlib.suppress(NodeStartError):
                _ip("netns", "del", self.netns)


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NodeStartError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def pod_routes(pid: int) -> list[dict[str, Any]]:
    """The IPv4 and IPv6 routes of the network namespace process `pid` is in."""
    routes: list[dict[str, Any]] = []
    for family in ("-4", "-6"):
        result = subprocess.run(
            ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-j", family, "route", "show", "table", "all"],
            capture_output=True,
            text=True,
            check=True,
        )
        routes += json.loads(result.stdout or "[]")
    return routes


# --- mounts ----------------------------------------------------------------------------

# Where kubelet, CNI and the runtime keep a node's state whatever their flags say (kubelet's
# device manager always uses /var/lib/kubelet/device-plugins, libcni caches in /var/lib/cni):
# in the node's own mount namespace each of these is a folder of the node's. So two nodes on
# one machine do not share them, node plugins' DaemonSets use the usual /var/lib/kubelet
# paths on every node, and everything kubelet and the runtime mount stays in that namespace.
NODE_PATHS = {
    "/var/lib/kubelet": "kubelet",
    "/var/lib/cni": "cni-cache",
    "/var/log/pods": "pod-logs",
    "/run/containerd": "run-containerd",
}


def make_mount_points() -> list[Path]:
    """The folders NODE_PATHS mount over, made where missing (for every node of a cluster at
    once: one node's teardown must not remove them under another); returns those it made."""
    made = []
    for target in map(Path, NODE_PATHS):
        if not target.exists():
            target.mkdir(parents=True)
            made.append(target)
    return made


def remove_mount_points(made: list[Path]) -> None:
    for target in reversed(made):
        with contextlib.suppress(OSError):
            target.rmdir()  # only while empty: never anything anyone else put there


@dataclass(frozen=True)
class NodeMounts:
    """The node's mount namespace, kept by a bind mount of its file in the node's folder."""

    folder: Path

    @property
    def file(self) -> Path:
        return self.folder / "mnt"

    @classmethod
    def create(cls, workdir: Path) -> NodeMounts:
        folder = workdir / "ns"
        folder.mkdir(parents=True, exist_ok=True)
        # A namespace can be bound only onto a file of a private mount: make one of our own folder.
        _run("mount", "--bind", str(folder), str(folder))
        _run("mount", "--make-private", str(folder))
        mounts = cls(folder)
        mounts.file.touch()
        # Slave: the machine's mounts show inside, the node's never show outside.
        _run("unshare", f"--mount={mounts.file}", "--propagation", "slave", "true")
        for target, name in NODE_PATHS.items():
            source = workdir / name
            source.mkdir(exist_ok=True)
            _run("nsenter", f"--mount={mounts.file}", "mount", "--bind", str(source), target)
            # Shared, as every folder is on a systemd node: a pod's HostToContainer or
            # Bidirectional mount of kubelet's folders needs it (the runtime refuses a private
            # one), and it stays within the node's namespace (the bind was made inside it).
            _run("nsenter", f"--mount={mounts.file}", "mount", "--make-shared", target)
        return mounts

    def remove(self) -> None:
        """Drop the namespace (its processes must be gone: then every mount in it goes too)."""
        for point in (self.file, self.folder):
            if _is_mount_point(point):
                _run("umount", "-l", str(point))


def _is_mount_point(path: Path) -> bool:
    resolved = str(path.resolve())
    return any(line.split()[4] == resolved for line in Path("/proc/self/mountinfo").read_text().splitlines())


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NodeStartError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


# --- the node --------------------------------------------------------------------------


@dataclass
class RealNode:
    name: str
    workdir: Path
    network: NodeNetwork
    cgroups: CgroupTree | None = None
    mounts: NodeMounts | None = None
    processes: list[ManagedProcess] = field(default_factory=list)
    kubelet_config: dict[str, Any] = field(default_factory=dict)  # merged into the KubeletConfiguration
    ctr_binary: Path | None = None

    @property
    def kubelet_dir(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def pod_logs_dir(self) -> Path:
        return self.workdir / "pod-logs"

    def pod_pids(self, uid: str) -> set[int]:
        """The processes of one pod on this node: kubelet names each pod's cgroup after its UID."""
        assert self.cgroups is not None
        top = self.cgroups.folders("pods")[0]  # every process is in every hierarchy: one is enough
        return {
            int(pid)
            for pod_folder in top.rglob(f"pod{uid}")
            for procs in pod_folder.rglob("cgroup.procs")
            for pid in procs.read_text().split()
        }

    def container_log(self, namespace: str, pod: str, uid: str, container: str) -> str:
        """What a container wrote, from kubelet's log files: kubelet listens on 127.0.0.1 only,
        so the API server cannot reach it at the node IP for `kubectl logs`."""
        folder = self.pod_logs_dir / f"{namespace}_{pod}_{uid}" / container
        lines = [line for path in sorted(folder.glob("*.log")) for line in path.read_text().splitlines()]
        # CRI log format: <time> <stream> <P|F> <text>
        return "\n".join(line.split(" ", 3)[3] for line in lines if line.count(" ") >= 3)

    @classmethod
    def create(
        cls, workdir: Path, name: str, *, cluster_id: str, index: int, kubelet_config: dict[str, Any] | None = None
    ) -> RealNode:
        network = NodeNetwork.for_node(cluster_id, name, index)
        return cls(name, workdir, network, kubelet_config=kubelet_config or {})

    def start(
        self,
        *,
        server: str,
        pki: ClusterPKI,
        kubernetes: KubernetesBinaries,
        runtime: NodeRuntime,
        images: list[Path],
        tied_to_parent: bool,
        cluster_id: str,
        relay: Path,
    ) -> None:
        _check_machine()
        for binary in (kubernetes.kubelet, runtime.containerd, runtime.runc, runtime.cni_bin_dir / "bridge"):
            if not binary.exists():
                raise NodeStartError(f"{binary} is missing: run `make binaries`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cgroups = CgroupTree.make(f"sidecarless-{cluster_id}-{self.name}")
        self.mounts = NodeMounts.create(self.workdir)
        self.network.create()
        self._write_cni(runtime)
        api_port = int(server.rsplit(":", 1)[1])
        relay_process = self._spawn(
            "api-relay",
            # -I: the script's folder (which has an operator.py) must not shadow the standard library.
            [
                sys.executable,
                "-I",
                str(relay),
                f"--netns={self.network.netns_path}",
                f"--port={api_port}",
                f"--also-listen={KUBERNETES_SERVICE_IP}:{KUBERNETES_SERVICE_PORT}",
            ],
            tied_to_parent,
            in_netns=False,
        )
        containerd = self._spawn(
            "containerd",
            [str(runtime.containerd), f"--config={self._write_containerd_config(runtime)}"],
            tied_to_parent,
            env={"PATH": f"{runtime.shim_dir}:{os.environ.get('PATH', '')}"},
        )
        wait_until(
            f"containerd on {self.name}", self.containerd_socket.exists, timeout=30, watch=[relay_process, containerd]
        )
        self.ctr_binary = runtime.ctr
        for archive in images:
            self.import_image(archive)
        kubeconfig = self._write_kubelet_kubeconfig(server, pki)
        config = self._write_kubelet_config(pki)
        kubelet = self._spawn(
            "kubelet",
            [
                str(kubernetes.kubelet),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                "--root-dir=/var/lib/kubelet",  # the node's own (NODE_PATHS)
                f"--cert-dir={self.workdir / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.network.node_ip}",
                "--v=2",
            ],
            tied_to_parent,
        )
        # kubelet's healthz is on the node's own loopback: its Node turning Ready (wait_ready) says it is up.
        kubelet.check_alive()

    def ctr(self, *args: str) -> str:
        assert self.ctr_binary is not None, f"{self.name} was not started"
        result = subprocess.run(
            [str(self.ctr_binary), f"--address={self.containerd_socket}", "--namespace=k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            raise NodeStartError(f"ctr {' '.join(args)} on {self.name} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def import_image(self, archive: Path) -> None:
        """Import an OCI archive into the node's containerd, where kubelet's CRI finds it."""
        self.ctr("images", "import", str(archive))

    def wait_ready(self, rest: KubeREST, timeout: float = 60) -> None:
        def ready() -> bool:
            node = rest.get(f"/api/v1/nodes/{self.name}")
            conditions = (node or {}).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        try:
            wait_until(f"node {self.name} Ready", ready, timeout=timeout, watch=self.processes)
        except TimeoutError as error:
            node = rest.get(f"/api/v1/nodes/{self.name}") or {}
            conditions = node.get("status", {}).get("conditions", [])
            said = "; ".join(f"{c['type']}={c['status']} {c.get('message', '')}" for c in conditions)
            raise NodeStartError(f"{error}\nnode conditions: {said or 'none (not registered)'}") from error

    def stop(self) -> None:
        """Stop kubelet, every container, containerd and the shims; unmount; remove the bridge
        and cgroups. Every step is tried even when one before it failed (then the first
        failure is raised): a teardown that stops halfway leaves processes and namespaces."""
        steps: list[tuple[str, Callable[[], None]]] = [
            ("stop kubelet", lambda: self._stop_processes(only="kubelet")),
            ("kill the containers", lambda: self._kill("pods")),
            ("stop the node's processes", self._stop_processes),
            ("kill what is left", lambda: self._kill("")),
            ("leave the mount namespace", lambda: self.mounts.remove() if self.mounts else None),
            ("unmount", lambda: unmount_under(self.workdir)),
            ("remove the network namespace", self.network.remove),
            ("remove the cgroups", lambda: self.cgroups.remove() if self.cgroups else None),
        ]
        failures: list[BaseException] = []
        for what, step in steps:
            try:
                step()
            except Exception as error:  # every step must run; the first failure is raised after
                log.exception("%s on %s failed", what, self.name)
                failures.append(error)
        if failures:
            raise failures[0]

    def _stop_processes(self, only: str = "") -> None:
        for process in reversed(self.processes):
            if not only or process.name == f"{only}-{self.name}":
                process.stop()

    @property
    def kubelet_owned(self) -> bool:
        """Whether this process started the node's kubelet (and so may restart it)."""
        return any(p.name == f"kubelet-{self.name}" for p in self.processes)

    def restart_kubelet(self) -> None:
        """Stop kubelet and start it again with the same command line; the containers and
        containerd run on, as when kubelet is restarted on a real node. Only on a node this
        process started (a cluster reused from `make cluster` records kubelet's PID, which a
        restart would change), and from the main thread: the new kubelet dies with the thread
        that starts it (PR_SET_PDEATHSIG), and a worker thread ends before the tests do."""
        owned = next((p for p in self.processes if p.name == f"kubelet-{self.name}"), None)
        if owned is None:
            raise NodeStartError(f"kubelet on {self.name} was not started by this process")
        if threading.current_thread() is not threading.main_thread():
            raise NodeStartError("restart kubelet from the main thread: it would die with this one")
        owned.stop()
        self.processes.remove(owned)
        self._spawn("kubelet", owned.argv, tied_to_parent=True).check_alive()

    def _kill(self, sub: str) -> None:
        if self.cgroups is not None:
            _kill_all(self.cgroups, sub)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "workdir": str(self.workdir),
            "netns": self.network.netns,
            "subnet": str(self.network.subnet),
            "cgroups": self.cgroups.to_json() if self.cgroups else None,
            "mounts": str(self.mounts.folder) if self.mounts else None,
            "ctr": str(self.ctr_binary) if self.ctr_binary else None,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RealNode:
        network = NodeNetwork(raw["netns"], ipaddress.IPv4Network(raw["subnet"]))
        cgroups = CgroupTree.from_json(raw["cgroups"]) if raw["cgroups"] else None
        ctr = Path(raw["ctr"]) if raw.get("ctr") else None
        mounts = NodeMounts(Path(raw["mounts"])) if raw.get("mounts") else None
        return cls(raw["name"], Path(raw["workdir"]), network, cgroups, mounts, ctr_binary=ctr)

    # --- configuration ---------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        argv: list[str],
        tied_to_parent: bool,
        env: dict[str, str] | None = None,
        *,
        in_netns: bool = True,
    ) -> ManagedProcess:
        assert self.cgroups is not None
        assert self.mounts is not None
        process = ManagedProcess(
            f"{name}-{self.name}",
            argv,
            self.workdir / "logs" / f"{name}.log",
            env=env or {},
            cgroup_procs=self.cgroups.procs_files("runtime"),
            netns=self.network.netns_path if in_netns else None,
            mntns=self.mounts.file if in_netns else None,
        )
        process.start(tied_to_parent=tied_to_parent)
        self.processes.append(process)
        return process

    def _write_cni(self, runtime: NodeRuntime) -> None:
        conf_dir = self.workdir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        config = self.network.cni_config()
        config["plugins"][0]["ipam"]["dataDir"] = str(self.workdir / "cni" / "ipam")
        (conf_dir / "10-sidecarless.conflist").write_text(json.dumps(config, indent=2))

    def _write_containerd_config(self, runtime: NodeRuntime) -> Path:
        folder = self.workdir / "containerd"
        cni = self.workdir / "cni"
        # Plugins that would listen, write outside the node's folder or need what this machine lacks.
        disabled = [
            "io.containerd.nri.v1.nri",
            "io.containerd.tracing.processor.v1.otlp",
            "io.containerd.internal.v1.tracing",
            "io.containerd.snapshotter.v1.blockfile",
            "io.containerd.snapshotter.v1.erofs",
            "io.containerd.differ.v1.erofs",
        ]
        config = f"""version = 3
root = "{folder / "root"}"
state = "{folder / "state"}"
disabled_plugins = {json.dumps(disabled)}

[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

# containerd refuses a shim socket folder longer than 42 characters, and the node's folder
# may be deeper than that: /run/containerd is the node's own in its mount namespace.
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = "/run/containerd/s"

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/pause:3.10"

[plugins.'io.containerd.cri.v1.runtime']
  # This machine lacks CAP_SYS_RESOURCE: a container may not get a lower oom_score_adj than containerd's.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{runtime.cni_bin_dir}"]
    conf_dir = "{cni / "net.d"}"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runtime.runc}"
        Root = "{folder / "runc"}"
        SystemdCgroup = false
"""
        path = self.workdir / "containerd.toml"
        path.write_text(config)
        return path

    def _write_kubelet_kubeconfig(self, server: str, pki: ClusterPKI) -> Path:
        pki_dir = pki.ca.cert.parent
        (self.workdir / "pki").mkdir(exist_ok=True)
        pair = load_authority(pki_dir, "ca").issue(
            self.workdir / "pki",
            "kubelet-client",
            f"system:node:{self.name}",
            organizations=("system:nodes",),
            client=True,
        )
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(pki.ca.cert)}}],
            "users": [{"name": "kubelet", "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "kubelet"}}],
            "current-context": "local",
        }
        path = self.workdir / "kubelet.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    def _write_kubelet_config(self, pki: ClusterPKI) -> Path:
        assert self.cgroups is not None
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # kubelet's own ports: each node's network namespace has its own loopback.
            "address": "127.0.0.1",
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            # This kind of machine mounts cgroup v1 only, which kubelet v1.36 refuses by default.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            # kubelet's QoS tree (kubepods/...) under the node's own folder: with
            # cgroupsPerQOS off kubelet names no cgroup parent, and containerd would then put
            # every container under /k8s.io at each hierarchy's root.
            "cgroupsPerQOS": True,
            "cgroupRoot": f"{self.cgroups.path}/pods",
            "enforceNodeAllocatable": ["pods"],
            "failSwapOn": False,
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            "staticPodPath": "",
            "registerNode": True,
            "serializeImagePulls": False,
            # Nothing here is pulled: images are imported, so never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "kubeAPIQPS": 50,
            "kubeAPIBurst": 100,
            "makeIPTablesUtilChains": False,  # no iptables on this machine, and no kube-proxy
            "localStorageCapacityIsolation": True,
            "shutdownGracePeriod": "0s",
            # kubelet looks at a mounted volume's size again only when it syncs the pod, every
            # syncFrequency (1m by default, plus jitter): node expansion then took 89 s here.
            "syncFrequency": "10s",
            **self.kubelet_config,
        }
        path = self.workdir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        return path


def _check_machine() -> None:
    """Fail at once, with the reason, on what a node cannot do without."""
    if os.geteuid() != 0:
        raise NodeStartError("a real node needs root (kubelet mounts volumes, runc makes namespaces and cgroups)")
    missing = [tool for tool in ("ip", "mount", "umount", "nsenter") if shutil.which(tool) is None]
    if missing:
        raise NodeStartError(f"a real node needs {', '.join(missing)} on PATH (apt-get install iproute2 util-linux)")


def _kill_all(tree: CgroupTree, sub: str) -> None:
    """SIGKILL every process in the node's cgroup folder `sub` (its containers, or everything)."""
    for _ in range(50):
        pids = tree.pids(sub) - {os.getpid()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    log.warning("processes still in %s after SIGKILL", tree.path)


def unmount_under(folder: Path) -> None:
    """Unmount every mount at or below `folder`, deepest first (kubelet's and containerd's)."""
    prefix = str(folder.resolve())
    for _ in range(5):
        points = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4] == prefix or line.split()[4].startswith(prefix + "/")
        ]
        if not points:
            return
        for point in sorted(set(points), key=lambda p: -p.count("/")):
            result = subprocess.run(["umount", point], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    log.warning("mounts left under %s", folder)


def describe_failure(node: RealNode) -> str:
    """The last lines of the node's logs, for an error message."""
    return "\n".join(f"--- {p.name}: {p.log_path}\n{tail(p.log_path, 20)}" for p in node.processes)
