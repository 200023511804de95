"""The two sides of a benchmark: the real kubernetes-csi sidecars, and Sidecarless.

Each side runs as its own Kubernetes user (its requests are told apart in the audit log)
and is started fresh for every round, then stopped, so rounds never share warm caches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from devcluster.build import ensure_sidecars
from devcluster.operator import OperatorProcess
from devcluster.procs import ManagedProcess, wait_until


@dataclass(frozen=True)
class Setting:
    """The API rate limit both sides get: None keeps each side's own default. Every sidecar
    process has its own; Sidecarless gives its controllers one each (`scope` "controller")
    or one to share ("process")."""

    name: str
    qps: float | None
    burst: int | None
    scope: str = "process"

    def sidecar_flags(self) -> list[str]:
        if self.qps is None or self.burst is None:
            return []
        return [f"--kube-api-qps={self.qps:g}", f"--kube-api-burst={self.burst}"]

    def operator_env(self) -> dict[str, str]:
        if self.qps is None or self.burst is None:
            return {}
        return {
            "SIDECARLESS_API_QPS": f"{self.qps:g}",
            "SIDECARLESS_API_BURST": str(self.burst),
            "SIDECARLESS_API_QPS_SCOPE": self.scope,
        }


SETTINGS = {
    # The sidecars' defaults are QPS 5 / burst 10 each; Sidecarless' are 50 / 100 shared by
    # all its controllers and drivers (docs/performance.md says why).
    "defaults": Setting("defaults", None, None),
    # Equal budgets per client: each sidecar process 100, each Sidecarless controller 100.
    "qps100": Setting("qps100", 100, 100, scope="controller"),
    # One budget of 100 for all of Sidecarless, against 100 for each sidecar process.
    "qps100-shared": Setting("qps100-shared", 100, 100),
    # client-go and Sidecarless both treat a huge bucket as no limit at all.
    "unlimited": Setting("unlimited", 1_000_000, 1_000_000),
}

SIDECARS_USER = "bench-sidecars"
SIDECARLESS_USER = "bench-sidecarless"
SHARDED_USER = "bench-sharded"


class SidecarsSide:
    """Per driver: csi-provisioner, csi-attacher, csi-resizer, csi-snapshotter; one snapshot-controller."""

    name = "sidecars"
    user = SIDECARS_USER

    def __init__(
        self,
        kubeconfig: Path,
        sockets: dict[str, str],
        setting: Setting,
        log_dir: Path,
        *,
        provisioner_flags: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig, self.sockets, self.setting, self.log_dir = kubeconfig, sockets, setting, log_dir
        # e.g. --enable-capacity, which also needs env NAMESPACE (where its objects go)
        self.provisioner_flags, self.env = provisioner_flags, env or {}
        self.processes: dict[str, ManagedProcess] = {}

    def start(self) -> None:
        binaries = ensure_sidecars()
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-election=false", "-v=2", *self.setting.sidecar_flags()]
        for index, socket in enumerate(self.sockets[driver] for driver in sorted(self.sockets)):
            for binary in ("csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter"):
                label = f"{binary}-{index}" if len(self.sockets) > 1 else binary
                argv = [str(binaries[binary]), f"--csi-address={socket}", *common]
                if binary == "csi-provisioner":
                    argv += self.provisioner_flags
                self._spawn(label, argv)
        self._spawn("snapshot-controller", [str(binaries["snapshot-controller"]), *common])

    def _spawn(self, label: str, argv: list[str]) -> None:
        process = ManagedProcess(label, argv, self.log_dir / f"{label}.log", env=self.env)
        process.start(tied_to_parent=True)
        self.processes[label] = process

    def pids(self) -> dict[str, int]:
        return {label: process.pid for label, process in self.processes.items()}

    def check_alive(self) -> None:
        for process in self.processes.values():
            process.check_alive()

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()
        self.processes.clear()


class SidecarlessSide:
    """One operator process for every driver."""

    name = "sidecarless"
    user = SIDECARLESS_USER

    def __init__(self, kubeconfig: Path, setting: Setting, log_dir: Path, env: dict[str, str]) -> None:
        self.operator = OperatorProcess(
            kubeconfig,
            log_dir,
            env={
                "SIDECARLESS_LOG_LEVEL": "INFO",
                # The harness' test value (2 s) would be an unfair load: back to the default.
                "SIDECARLESS_ATTACHER_RECONCILE_SECONDS": "60",
                **setting.operator_env(),
                **env,  # bench --operator-env: experiments with Sidecarless' settings
            },
        )

    def start(self) -> None:
        self.operator.start()

    def pids(self) -> dict[str, int]:
        assert self.operator.process is not None
        return {"sidecarless": self.operator.process.pid}

    def check_alive(self) -> None:
        assert self.operator.process is not None
        self.operator.process.check_alive()

    def stop(self) -> None:
        self.operator.stop()


class ShardedSide:
    """Sidecarless sharded: `replicas` operator processes sharing the drivers out by Lease.

    The benchmark's cluster runs every process on one machine, so this measures what
    sharding costs (each replica keeps every watch) and how work spreads, not the speed-up
    of replicas on separate nodes."""

    name = "sharded"
    user = SHARDED_USER

    def __init__(
        self,
        kubeconfig: Path,
        setting: Setting,
        log_dir: Path,
        env: dict[str, str],
        *,
        replicas: int = 3,
        split_timeout: float = 90.0,
    ) -> None:
        self.split_timeout = split_timeout
        self.operators = [
            OperatorProcess(
                kubeconfig,
                log_dir,
                env={
                    "SIDECARLESS_LOG_LEVEL": "INFO",
                    "SIDECARLESS_ATTACHER_RECONCILE_SECONDS": "60",
                    "SIDECARLESS_LEADER_ELECTION": "true",
                    "SIDECARLESS_SHARDING": "true",
                    "SIDECARLESS_IDENTITY": f"bench-shard-{index}",
                    **setting.operator_env(),
                    **env,
                },
            )
            for index in range(replicas)
        ]
        for index, operator in enumerate(self.operators):
            operator.starts = 100 + index * 1000  # distinct log files in the shared folder

    def start(self) -> None:
        for operator in self.operators:
            operator.start(health_timeout=self.split_timeout)
        # The first replica takes every driver, and hands them over as the others join: a
        # round starts once each is served by one replica, the loads even.
        wait_until(
            "the drivers shared out evenly", self._split_even, timeout=self.split_timeout, watch=self._processes()
        )

    def _split_even(self) -> bool:
        served = [served_endpoints(operator.metrics()) for operator in self.operators]
        known = set().union(*(_shards(operator.metrics()) for operator in self.operators))
        loads = [len(s) for s in served]
        every = [e for s in served for e in s]
        return bool(known) and sorted(every) == sorted(known) and max(loads) - min(loads) <= 1

    def _processes(self) -> list[ManagedProcess]:
        return [operator.process for operator in self.operators if operator.process is not None]

    def pids(self) -> dict[str, int]:
        found = {}
        for index, operator in enumerate(self.operators):
            assert operator.process is not None
            found[f"sidecarless-{index}"] = operator.process.pid
        return found

    def check_alive(self) -> None:
        for operator in self.operators:
            assert operator.process is not None
            operator.process.check_alive()

    def stop(self) -> None:
        for operator in self.operators:
            operator.stop()


Side = SidecarsSide | SidecarlessSide | ShardedSide

_HELD = re.compile(r'^sidecarless_lease_held\{shard="([^"]+)"\} ([01])\.0$', re.MULTILINE)


def _shards(metrics: str) -> set[str]:
    """The DriverEndpoints a replica knows (the work of none, `shared`, left out)."""
    return {shard for shard, _ in _HELD.findall(metrics) if shard != "shared"}


def served_endpoints(metrics: str) -> set[str]:
    """The DriverEndpoints a replica serves now, by its `sidecarless_lease_held`."""
    return {shard for shard, held in _HELD.findall(metrics) if held == "1" and shard != "shared"}
