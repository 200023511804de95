"""A real Kubernetes control plane on 127.0.0.1, with real CSI drivers, for tests and people.

    cluster = LocalCluster.start(Path("/tmp/slc-x"))   # etcd, kube-apiserver, kube-controller-manager,
    ...                                              # Nodes, CSINodes, CSIDrivers, snapshot CRDs
    cluster.stop()

There is no kubelet and no scheduler: Nodes and CSINodes are written by hand (from each
driver's own NodeGetInfo answer, as kubelet would), and pods are given `spec.nodeName`.
kube-controller-manager runs the PV binder and the attach/detach controller for real.
`cluster.json` in the work folder records every PID, so `make cluster-down` (or another
process) can stop exactly what was started.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devcluster import build
from devcluster.addresses import SERVICE_NETWORK
from devcluster.drivers import DriverSpec, RunningDriver, driver_calls, socket_name, start_driver
from devcluster.images import busybox_image, mock_driver_image, pause_image, write_archive
from devcluster.kube import KubeError, KubeREST
from devcluster.node import NodeFabric, RealNode, make_mount_points, remove_mount_points
from devcluster.pki import ClusterPKI, KeyPair, load_authority, load_cluster_pki, make_cluster_pki
from devcluster.procs import ManagedProcess, free_port, stop_pid, wait_until

log = logging.getLogger("devcluster")

STATE_FILE = "cluster.json"
# Metadata only (no bodies), and no RequestReceived stage: one line per request, two per
# watch (ResponseStarted when it opens, ResponseComplete when it closes).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}
DEFAULT_NODES = ("node-1", "node-2")
DEFAULT_DRIVERS = (
    DriverSpec("mock.csi.sidecarless.dev"),  # publishes: VolumeAttachments get ControllerPublishVolume
    DriverSpec("mock-noattach.csi.sidecarless.dev", attach=False),  # attachRequired: false
)
# The attach/detach controller creates VolumeAttachments only for nodes that say so.
ATTACH_DETACH_ANNOTATION = "volumes.kubernetes.io/controller-managed-attach-detach"


@dataclass
class ClusterOptions:
    nodes: tuple[str, ...] = DEFAULT_NODES
    drivers: tuple[DriverSpec, ...] = DEFAULT_DRIVERS
    # kube-controller-manager's own API rate limit caps PV binding (~4 claims/s at its
    # default QPS 20); raised so the binder never becomes the bottleneck of a test.
    controller_manager_qps: int = 100
    controller_manager_burst: int = 200
    tied_to_parent: bool = True  # tests: components die with the test process
    extra_crds: tuple[Path, ...] = ()
    # Benchmarks: kube-apiserver writes every request's metadata (user, verb, resource) to
    # logs/audit.log, so each client's requests and watches can be counted.
    audit_log: bool = False
    # Nodes with a real kubelet, containerd and runc (devcluster.node), and kube-scheduler to
    # place pods on them. Empty: no kubelet at all, every Node is hand-made (the fast cluster).
    kubelet_nodes: tuple[str, ...] = ()
    kubelet_config: dict[str, Any] = field(default_factory=dict)  # merged into each KubeletConfiguration


@dataclass
class LocalCluster:
    workdir: Path
    options: ClusterOptions
    server: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)
    foreign_drivers: dict[str, str] = field(default_factory=dict)
    drivers: dict[str, RunningDriver] = field(default_factory=dict)
    pki: ClusterPKI | None = None
    # False when attached to a cluster another process started: stop() then leaves it running.
    owned: bool = True
    nodes: tuple[str, ...] = ()
    real_nodes: list[RealNode] = field(default_factory=list)
    fabric: str = ""  # the network namespace joining the real nodes
    mount_points: list[Path] = field(default_factory=list)  # folders made for the nodes' mounts

    @classmethod
    def attach(cls, workdir: Path) -> LocalCluster | None:
        """The cluster recorded in `workdir`, if it is still running (drivers it started stay its own)."""
        state = ClusterState.load(workdir)
        if state is None or not state.alive():
            return None
        cluster = cls(workdir, ClusterOptions(nodes=tuple(state.nodes), drivers=()), owned=False)
        cluster.server = state.server
        cluster.pki = load_cluster_pki(workdir / "pki")
        cluster.nodes = tuple(state.nodes)
        cluster.foreign_drivers = {name: d["address"] for name, d in state.drivers.items()}
        cluster.real_nodes = [RealNode.from_json(node) for node in state.real_nodes]
        return cluster

    @property
    def driver_addresses(self) -> dict[str, str]:
        """Every driver's address, by CSI name: those started here and those of the attached cluster."""
        return {**self.foreign_drivers, **{name: d.address for name, d in self.drivers.items()}}

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def driver_dir(self) -> Path:
        return self.workdir / "drivers"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "logs" / "audit.log"

    def user_kubeconfig(self, user: str) -> Path:
        """A kubeconfig for a cluster-admin client named `user` (so its requests can be told apart)."""
        assert self.pki is not None
        pki_dir = self.pki.ca.cert.parent
        pair = load_authority(pki_dir, "ca").issue(
            pki_dir, f"user-{user}", user, organizations=("system:masters",), client=True
        )
        path = self.workdir / f"{user}.kubeconfig"
        self._write_kubeconfig(path, user, pair)
        return path

    @property
    def rest(self) -> KubeREST:
        assert self.pki is not None
        return KubeREST(self.server, str(self.pki.ca.cert), str(self.pki.admin.cert), str(self.pki.admin.key))

    # --- lifecycle -------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, options: ClusterOptions | None = None) -> LocalCluster:
        options = options or ClusterOptions()
        cluster = cls(workdir, options, nodes=options.nodes)
        try:
            cluster._start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self) -> None:
        started = time.monotonic()
        binaries = build.ensure_kubernetes()
        build.ensure_mock_driver()
        crd_files = [*build.snapshot_crd_files(), *self.options.extra_crds]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = make_cluster_pki(self.workdir / "pki")

        etcd_port, api_port, kcm_port = free_port(), free_port(), free_port()
        etcd = self._spawn("etcd", [str(binaries.etcd), *self._etcd_args(etcd_port)])
        wait_until("etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), timeout=30, watch=[etcd])

        self.server = f"https://127.0.0.1:{api_port}"
        apiserver = self._spawn(
            "kube-apiserver", [str(binaries.kube_apiserver), *self._apiserver_args(etcd_port, api_port)]
        )
        rest = self.rest
        wait_until("kube-apiserver", rest.healthy, timeout=90, watch=[etcd, apiserver])
        self._write_kubeconfig(self.kubeconfig, "sidecarless-admin", self.pki.admin)
        kcm_kubeconfig = self.workdir / "controller-manager.kubeconfig"
        self._write_kubeconfig(kcm_kubeconfig, "system:kube-controller-manager", self.pki.controller_manager)

        self._spawn(
            "kube-controller-manager",
            [str(binaries.kube_controller_manager), *self._controller_manager_args(kcm_kubeconfig, kcm_port)],
        )
        wait_until(
            "kube-controller-manager",
            lambda: _https_ok(f"https://127.0.0.1:{kcm_port}/healthz"),
            timeout=60,
            watch=self.processes,
        )
        crds = _documents(crd_files)
        for crd in crds:
            rest.create(crd)
        self.wait_crds_served(crds)
        for node in self.nodes:
            rest.create(_node(node))
            rest.create(
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "CSINode",
                    "metadata": {"name": node},
                    "spec": {"drivers": []},
                }
            )
        for spec in self.options.drivers:
            self.add_driver(spec)
        if self.options.kubelet_nodes:
            self._start_real_nodes(binaries)
        self._wait_default_service_account()
        self.save_state()
        log.info("local cluster up at %s in %.1fs", self.server, time.monotonic() - started)

    def _start_real_nodes(self, binaries: build.KubernetesBinaries) -> None:
        assert self.pki is not None
        runtime = build.ensure_node_runtime()
        images = [
            write_archive(pause_image(build.ensure_pause()), self.workdir / "images" / "pause.tar"),
            write_archive(busybox_image(Path("/bin/busybox")), self.workdir / "images" / "busybox.tar"),
            write_archive(mock_driver_image(build.ensure_mock_driver()), self.workdir / "images" / "mock-driver.tar"),
        ]
        self.mount_points = make_mount_points()
        scheduler_port = free_port()
        self._spawn("kube-scheduler", [str(binaries.kube_scheduler), *self._scheduler_args(scheduler_port)])
        for index, name in enumerate(self.options.kubelet_nodes, start=1):
            node = RealNode.create(
                self.workdir / "nodes" / name,
                name,
                cluster_id=self.workdir.name,
                index=index,
                kubelet_config=self.options.kubelet_config,
            )
            self.real_nodes.append(node)
            self.save_state()  # so `make cluster-down` finds the node's cgroups and bridge if we die here
            node.start(
                server=self.server,
                pki=self.pki,
                kubernetes=binaries,
                runtime=runtime,
                images=images,
                tied_to_parent=self.options.tied_to_parent,
                cluster_id=self.workdir.name,
                relay=Path(__file__).resolve().parent / "netns_relay.py",
            )
        fabric = NodeFabric.for_cluster(self.workdir.name)
        self.fabric = fabric.netns
        self.save_state()
        fabric.connect([node.network for node in self.real_nodes])
        wait_until(
            "kube-scheduler",
            lambda: _https_ok(f"https://127.0.0.1:{scheduler_port}/healthz"),
            timeout=60,
            watch=self.processes,
        )
        rest = self.rest
        for node in self.real_nodes:
            node.wait_ready(rest)

    def import_image(self, archive: Path) -> None:
        """Make an image (an OCI archive) present on every real node: nothing here is pulled."""
        for node in self.real_nodes:
            node.import_image(archive)

    def stop(self) -> None:
        """Stop every process this object started, drivers first, etcd last."""
        for name in list(self.drivers):
            if self.owned:
                self.drivers.pop(name).stop()
            else:
                self.remove_driver(name)
        for node in reversed(self.real_nodes if self.owned else []):
            node.stop()
        if self.fabric and self.owned:
            NodeFabric(self.fabric).remove()
        if self.owned:
            remove_mount_points(self.mount_points)
        for process in reversed(self.processes):
            process.stop()
        if self.owned:
            (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def restart_apiserver(self, *, down_seconds: float = 0.0) -> None:
        """Stop kube-apiserver (SIGTERM), wait `down_seconds`, start it again with the same
        flags and port; return once it is healthy. Only for a cluster this object started."""
        apiserver = next(p for p in self.processes if p.name == "kube-apiserver")
        apiserver.stop()
        time.sleep(down_seconds)
        apiserver.start(tied_to_parent=self.options.tied_to_parent)
        wait_until("kube-apiserver again", self.rest.healthy, timeout=90, watch=[apiserver])

    # --- drivers ---------------------------------------------------------------------

    def add_driver(self, spec: DriverSpec) -> RunningDriver:
        """Start a driver, create its CSIDriver, and register it on every node's CSINode."""
        driver = start_driver(spec, self.driver_dir, tied_to_parent=self.options.tied_to_parent)
        self.drivers[spec.name] = driver
        identity = driver.node_identity()
        rest = self.rest
        rest.create(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "CSIDriver",
                "metadata": {"name": spec.name},
                "spec": {"attachRequired": spec.attach, "podInfoOnMount": False, "fsGroupPolicy": "File"},
            }
        )
        for node in self.nodes:
            entry = {"name": spec.name, "nodeID": identity.node_id, "topologyKeys": sorted(identity.topology)}
            # CSINode drivers merge by name: a strategic merge patch adds or replaces ours.
            rest.request(
                "PATCH",
                f"/apis/storage.k8s.io/v1/csinodes/{node}",
                {"spec": {"drivers": [entry]}},
                content_type="application/strategic-merge-patch+json",
            )
            if identity.topology:
                rest.request(
                    "PATCH",
                    f"/api/v1/nodes/{node}",
                    {"metadata": {"labels": identity.topology}},
                    content_type="application/merge-patch+json",
                )
        return driver

    def stop_driver(self, name: str) -> None:
        """Stop a driver this object started, leaving its cluster objects (the driver is 'down')."""
        self.drivers[name].stop()

    def pause_driver(self, name: str) -> None:
        """Freeze the driver (SIGSTOP): connected, but answering nothing, like a hung backend."""
        os.kill(self.drivers[name].process.pid, signal.SIGSTOP)

    def resume_driver(self, name: str) -> None:
        os.kill(self.drivers[name].process.pid, signal.SIGCONT)

    def restart_driver(self, name: str) -> RunningDriver:
        """Start a stopped driver again on the same socket (csi-test's mock starts with no volumes)."""
        spec = self.drivers[name].spec
        self.drivers[name] = start_driver(spec, self.driver_dir, tied_to_parent=self.options.tied_to_parent)
        return self.drivers[name]

    def driver_calls(self, name: str, method: str) -> list[dict[str, Any]]:
        """The CSI calls of `method` that driver `name` logged (started here or by the attached cluster)."""
        return driver_calls(self.driver_dir / f"{Path(socket_name(name)).stem}.log", method)

    def shim_calls(self, name: str, method: str) -> list[dict[str, Any]]:
        """The calls of `method` that driver `name`'s driver_shim answered or checked itself."""
        return driver_calls(self.driver_dir / f"{Path(socket_name(name)).stem}.shim.log", method)

    def remove_driver(self, name: str) -> None:
        """Stop a driver started by :meth:`add_driver` and remove its cluster objects."""
        driver = self.drivers.pop(name)
        driver.stop()
        rest = self.rest
        for node in self.nodes:
            csinode = rest.get(f"/apis/storage.k8s.io/v1/csinodes/{node}")
            drivers = [d for d in csinode["spec"]["drivers"] if d["name"] != name]
            rest.request(
                "PATCH",
                f"/apis/storage.k8s.io/v1/csinodes/{node}",
                {"spec": {"drivers": drivers}},
                content_type="application/merge-patch+json",
            )
        try:
            rest.request("DELETE", f"/apis/storage.k8s.io/v1/csidrivers/{name}")
        except KubeError as error:
            if error.status != 404:
                raise

    # --- state for other processes ---------------------------------------------------

    def save_state(self) -> None:
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "processes": [
                {"name": p.name, "pid": p.pid, "exe": p.argv[0], "log": str(p.log_path)}
                for p in [
                    *(p for d in self.drivers.values() for p in d.processes),
                    *(p for n in self.real_nodes for p in reversed(n.processes)),
                    *reversed(self.processes),
                ]
            ],
            "drivers": {name: {"address": d.address, "attach": d.spec.attach} for name, d in self.drivers.items()},
            "nodes": list(self.nodes),
            "real_nodes": [node.to_json() for node in self.real_nodes],
            "fabric": self.fabric,
            "mount_points": [str(p) for p in self.mount_points],
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    # --- component flags -------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.workdir / "logs" / f"{name}.log")
        process.start(tied_to_parent=self.options.tied_to_parent)
        self.processes.append(process)
        return process

    def _etcd_args(self, client_port: int) -> list[str]:
        peer = f"http://127.0.0.1:{free_port()}"
        client = f"http://127.0.0.1:{client_port}"
        return [
            "--name=devcluster",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=devcluster={peer}",
            "--unsafe-no-fsync",  # a throwaway test store: durability buys nothing here
            "--log-level=warn",
        ]

    def _apiserver_args(self, etcd_port: int, port: int) -> list[str]:
        pki = self.pki
        assert pki is not None
        issuer = "https://kubernetes.default.svc.cluster.local"
        return [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'pki'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={issuer}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_NETWORK}",
            # The only endpoint would be 127.0.0.1, which Endpoints refuse; nothing in
            # this cluster reaches the API through the `kubernetes` Service anyway.
            "--endpoint-reconciler-type=none",
            # The aggregation layer's flags, as kubeadm sets them; without them
            # kube-controller-manager logs errors about extension-apiserver-authentication.
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-username-headers=X-Remote-User",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            "--allow-privileged=true",
            "--profiling=false",
            *self._audit_args(),
        ]

    def _audit_args(self) -> list[str]:
        if not self.options.audit_log:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            # Never rotated (0 would mean lumberjack's 100 MB): a benchmark reads it by offset.
            "--audit-log-maxsize=1000000",
        ]

    def _scheduler_args(self, port: int) -> list[str]:
        assert self.pki is not None
        pki_dir = self.pki.ca.cert.parent
        pair = load_authority(pki_dir, "ca").issue(pki_dir, "scheduler", "system:kube-scheduler", client=True)
        kubeconfig = self.workdir / "scheduler.kubeconfig"
        self._write_kubeconfig(kubeconfig, "system:kube-scheduler", pair)
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _controller_manager_args(self, kubeconfig: Path, port: int) -> list[str]:
        pki = self.pki
        assert pki is not None
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'pki' / 'controller-manager'}",
            f"--client-ca-file={pki.ca.cert}",
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca.cert}",
            # No kubelet keeps the hand-made Nodes' status fresh: the lifecycle controller
            # would taint them and evict everything. With real nodes only, it runs: it is what
            # lifts the not-ready taint kubelet registers with.
            "--controllers=*" if not self.nodes else "--controllers=*,-node-lifecycle-controller",
            "--leader-elect=false",
            f"--kube-api-qps={self.options.controller_manager_qps}",
            f"--kube-api-burst={self.options.controller_manager_burst}",
            "--profiling=false",
        ]

    def _write_kubeconfig(self, path: Path, user: str, pair: KeyPair) -> None:
        assert self.pki is not None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "devcluster",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki.ca.cert)},
                }
            ],
            "users": [{"name": user, "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)}}],
            "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": user}}],
            "current-context": "devcluster",
        }
        path.write_text(yaml.safe_dump(config))

    # --- waits -----------------------------------------------------------------------

    def wait_crds_served(self, crds: list[dict[str, Any]]) -> None:
        # "Established" comes before the watch cache is ready (lists answer 429 "storage is
        # (re)initializing" for a moment), so wait until every version's collection lists.
        rest = self.rest
        collections = [
            f"/apis/{crd['spec']['group']}/{version['name']}/{crd['spec']['names']['plural']}"
            for crd in crds
            for version in crd["spec"]["versions"]
            if version.get("served")
        ]

        def served() -> bool:
            try:
                return all(rest.get(collection) is not None for collection in collections)
            except KubeError:
                return False

        wait_until("CRDs served", served, timeout=60, watch=self.processes)

    def _wait_default_service_account(self) -> None:
        # Pods are refused until the service-account controller has made `default`.
        rest = self.rest
        wait_until(
            "default ServiceAccount",
            lambda: rest.get("/api/v1/namespaces/default/serviceaccounts/default") is not None,
            timeout=30,
            watch=self.processes,
        )


@dataclass(frozen=True)
class ClusterState:
    """A running cluster as another process sees it, read from its `cluster.json`."""

    workdir: Path
    server: str
    kubeconfig: Path
    drivers: dict[str, dict[str, Any]]
    nodes: list[str]
    processes: list[dict[str, Any]]
    real_nodes: list[dict[str, Any]] = field(default_factory=list)
    fabric: str = ""
    mount_points: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, workdir: Path) -> ClusterState | None:
        path = workdir / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(
            workdir,
            raw["server"],
            Path(raw["kubeconfig"]),
            raw["drivers"],
            raw["nodes"],
            raw["processes"],
            raw.get("real_nodes", []),
            raw.get("fabric", ""),
            raw.get("mount_points", []),
        )

    def alive(self) -> bool:
        return all(Path(f"/proc/{p['pid']}").exists() for p in self.processes)

    def stop(self) -> list[str]:
        """Stop the recorded processes by PID (only if each PID is still that program), then
        clear what the real nodes left: their containers, mounts, bridges and cgroups."""
        kubelets = [p for p in self.processes if p["name"].startswith("kubelet-")]
        stopped = [p["name"] for p in kubelets if stop_pid(p["pid"], p["exe"])]
        stopped += [p["name"] for p in self.processes if p not in kubelets and stop_pid(p["pid"], p["exe"])]
        for node in self.real_nodes:
            RealNode.from_json(node).stop()
        if self.fabric:
            NodeFabric(self.fabric).remove()
        remove_mount_points([Path(p) for p in self.mount_points])
        (self.workdir / STATE_FILE).unlink(missing_ok=True)
        return stopped


def _documents(files: list[Path]) -> list[dict[str, Any]]:
    return [doc for f in files for doc in yaml.safe_load_all(f.read_text()) if doc]


def _node(name: str) -> dict[str, Any]:
    capacity = {"cpu": "4", "memory": "8Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            "annotations": {ATTACH_DETACH_ANNOTATION: "true"},
        },
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "hand-made node"}],
        },
    }


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _https_ok(url: str) -> bool:
    import ssl  # noqa: PLC0415

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # kube-controller-manager's self-signed serving cert
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
