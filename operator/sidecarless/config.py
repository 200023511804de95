"""Operator settings, from the environment (12-factor) with command-line overrides.

Every setting has an environment variable `SIDECARLESS_<NAME>`; `sidecarless run --help`
lists them with their defaults.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0  # a holder silent this long may be replaced (the sidecars' default)
    renew_deadline: float = 10.0  # a holder that cannot renew for this long steps down
    retry_period: float = 2.0  # how often candidates try, and the holder renews

    def check(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leases need 0 < retry period < renew deadline < lease duration, not "
                f"{self.retry_period} < {self.renew_deadline} < {self.lease_duration}"
            )


@dataclass(frozen=True)
class Settings:
    log_level: str = "INFO"
    log_format: str = "text"  # text for people, json for machines
    kubeconfig: str = ""  # empty: in-cluster credentials, else $KUBECONFIG / ~/.kube/config
    namespace: str = ""  # the operator's own namespace (leases, journals); default from POD_NAMESPACE
    identity: str = ""  # this replica's name in events and leases; default the host name
    listen_address: str = "0.0.0.0"  # where /healthz and /metrics listen (a pod's own address)
    health_port: int = 8081  # /healthz; 0 turns it off
    metrics_port: int = 8080  # /metrics; 0 turns it off
    api_qps: float = 50.0  # every Kubernetes request of the controllers shares this budget
    api_burst: int = 100
    # "process": one budget (api_qps, api_burst) for everything; "controller": one each for
    # the provisioner, attacher, resizer, snapshotter and snapshot controllers, as every
    # sidecar process has its own (the budget the sidecars' --kube-api-qps gives).
    api_qps_scope: str = "process"
    provisioner_workers: int = 100  # claims handled at once, as external-provisioner --worker-threads
    volume_workers: int = 20  # PVs (deletion) handled at once
    attacher_workers: int = 10  # VolumeAttachments handled at once, in each of the attach and detach lanes
    resizer_workers: int = 10  # claims expanded or modified at once (external-resizer --workers)
    snapshot_workers: int = 10  # snapshots and contents handled at once, per queue (--worker-threads)
    # Do snapshot-controller's half too (binding VolumeSnapshots to contents, for every
    # driver). Turn it off where the upstream snapshot-controller runs.
    snapshot_controller: bool = True
    # A VolumeSnapshot deleted while its CreateSnapshot may still be running waits this long
    # for the driver's answer; then it goes, and its content (still Terminating) finishes
    # the call and deletes the snapshot (external-snapshotter #1388).
    snapshot_deletion_wait_seconds: float = 60.0
    # Of several replicas, only the holder of the Lease `sidecarless-leader` in `namespace`
    # runs the controllers; the others watch and wait. Off: this process runs them at once.
    leader_election: bool = True
    lease_name: str = "sidecarless-leader"  # one per operator deployment (embedded: one per driver)
    # Every replica active: each DriverEndpoint is served by the replica holding its own Lease
    # (sidecarless.shards), the endpoints shared out evenly among the live replicas.
    sharding: bool = False
    # The Leases' timing (leader and shards), as the sidecars' --leader-election-lease-duration,
    # --leader-election-renew-deadline and --leader-election-retry-period.
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0
    # The DriverEndpoints this process serves, comma-separated; empty: all of them. An
    # operator embedded in a driver's controller pod serves that driver's endpoint only.
    endpoints: str = ""

    def serves(self, endpoint_name: str) -> bool:
        wanted = self.endpoint_names()
        return wanted is None or endpoint_name in wanted

    def endpoint_names(self) -> frozenset[str] | None:
        """The endpoints this process may serve (SIDECARLESS_ENDPOINTS); None: all."""
        wanted = frozenset(name.strip() for name in self.endpoints.split(",") if name.strip())
        return wanted or None

    def lease_timing(self) -> Timing:
        return Timing(self.lease_duration_seconds, self.renew_deadline_seconds, self.retry_period_seconds)

    attacher_reconcile_seconds: float = (
        60.0  # ListVolumes check of attached volumes (external-attacher --reconcile-sync)
    )
    # Every watched object is handed to its controllers again this often (+-10 %), events or
    # not, as the sidecars' --resync-period; 0 turns it off.
    resync_seconds: float = 600.0
    # How often backend volumes and snapshots are compared with the PVs and contents that
    # reference them (drivers with LIST_VOLUMES / LIST_SNAPSHOTS); 0 turns it off.
    leak_check_seconds: float = 300.0
    # Volume health (external-health-monitor's controller): how often drivers with
    # VOLUME_CONDITION are asked about their volumes (0 turns it off), and the budget of its events.
    health_check_seconds: float = 300.0
    health_api_qps: float = 5.0
    health_api_burst: int = 10
    # Storage capacity (external-provisioner --enable-capacity, for CSIDrivers with
    # storageCapacity: true): how often GetCapacity is asked again, the budget of its writes
    # (--kube-api-capacity-qps/-burst), and whether Immediate classes get objects too.
    capacity_poll_seconds: float = 60.0
    capacity_api_qps: float = 1.0
    capacity_api_burst: int = 5
    capacity_for_immediate_binding: bool = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"SIDECARLESS_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f.type, raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        defaults: dict[str, Any] = {}
        if not settings.namespace:
            defaults["namespace"] = env.get("POD_NAMESPACE", "sidecarless-system")
        if not settings.identity:
            defaults["identity"] = env.get("POD_NAME", socket.gethostname())
        if not settings.kubeconfig and env.get("KUBECONFIG"):
            defaults["kubeconfig"] = env["KUBECONFIG"]
        settings = cls(**{**settings.__dict__, **defaults})
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log format must be text or json, not {self.log_format!r}")
        if self.api_qps_scope not in ("process", "controller"):
            raise ValueError(f"API QPS scope must be process or controller, not {self.api_qps_scope!r}")
        if self.provisioner_workers < 1 or self.volume_workers < 1:
            raise ValueError("worker counts must be at least 1")
        self.lease_timing().check()
        if self.sharding and not self.leader_election:
            raise ValueError("sharding shares endpoints out by Leases: it needs leader election on")


def _convert(kind: Any, raw: str, name: str) -> Any:
    kind_name = kind if isinstance(kind, str) else kind.__name__
    if kind_name == "bool":
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"SIDECARLESS_{name.upper()}={raw!r} is not true or false")
        return raw.lower() in ("true", "1", "yes")
    try:
        if kind_name == "int":
            return int(raw)
        if kind_name == "float":
            return float(raw)
    except ValueError as error:
        hint = ""
        if raw.startswith(("tcp://", "udp://")) and name.endswith("_port"):
            # kubelet's service links: <SERVICE>_PORT for a Service sidecarless-<name> in the namespace.
            service = "sidecarless-" + name.removesuffix("_port").replace("_", "-")
            hint = f" (kubelet sets it for a Service named {service}: give the pod enableServiceLinks: false)"
        raise ValueError(f"SIDECARLESS_{name.upper()}={raw!r} is not a number{hint}") from error
    return raw
