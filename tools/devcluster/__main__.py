"""`python -m devcluster build|up|down|status`: the local cluster for people (`make cluster`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from devcluster.build import (
    BuildError,
    cache_root,
    ensure_helm,
    ensure_kubernetes,
    ensure_mock_driver,
    ensure_node_runtime,
    ensure_pause,
    ensure_promtool,
    ensure_sidecars,
    prometheus_operator_crd_files,
    snapshot_crd_files,
)
from devcluster.cluster import ClusterOptions, ClusterState, LocalCluster
from devcluster.node import NodeStartError
from devcluster.operator_image import ensure_base_image
from devcluster.procs import ProcessDiedError


def default_dir() -> Path:
    return Path(os.environ.get("SIDECARLESS_CLUSTER_DIR", cache_root() / "clusters" / "default"))


def up(workdir: Path, real_nodes: int = 0) -> int:
    existing = ClusterState.load(workdir)
    if existing is not None and existing.alive():
        print(f"a cluster is already running from {workdir}")
        _print_how_to_reach(existing)
        return 0
    if existing is not None:
        existing.stop()  # a half-dead earlier cluster: clear what is left of it
    try:
        options = ClusterOptions(
            tied_to_parent=False, kubelet_nodes=tuple(f"worker-{n + 1}" for n in range(real_nodes))
        )
        if real_nodes:
            # What the `node` tests expect: no hand-made Nodes (they would need the node
            # lifecycle controller off) and no drivers on the host (drivers run as pods).
            options.nodes = ()
            options.drivers = ()
        LocalCluster.start(workdir, options)
    except (BuildError, ProcessDiedError, TimeoutError, NodeStartError) as error:
        print(f"the local cluster did not start: {error}", file=sys.stderr)
        return 1
    state = ClusterState.load(workdir)
    assert state is not None
    _print_how_to_reach(state)
    return 0


def _print_how_to_reach(state: ClusterState) -> None:
    print(f"API server:  {state.server}")
    print(f"kubeconfig:  {state.kubeconfig}")
    for name, driver in state.drivers.items():
        print(f"CSI driver:  {name} at {driver['address']}")
    print(f"logs:        {state.workdir / 'logs'}")
    print(f"\ntry:  kubectl --kubeconfig {state.kubeconfig} get nodes,csinodes,csidrivers,crd")
    print("stop: make cluster-down")


def down(workdir: Path) -> int:
    state = ClusterState.load(workdir)
    if state is None:
        print(f"no cluster recorded in {workdir}")
        return 0
    stopped = state.stop()
    print(f"stopped {len(stopped)} processes: {', '.join(stopped) or 'none were still running'}")
    return 0


def status(workdir: Path) -> int:
    state = ClusterState.load(workdir)
    if state is None:
        print(f"no cluster recorded in {workdir}")
        return 1
    for process in state.processes:
        alive = Path(f"/proc/{process['pid']}").exists()
        print(f"{process['name']:<45} pid {process['pid']:<8} {'running' if alive else 'DEAD'}  {process['log']}")
    return 0 if state.alive() else 1


def build_all(_: Path, sidecars: str = "with") -> int:
    """Build (or find in the cache) every binary the cluster runs, so tests start without
    waiting; `sidecars`: `with` them, `without` (the test suite builds them in the background
    while its first tests run), or `only` them."""
    try:
        if sidecars != "only":
            build_cluster_binaries()
        if sidecars != "without":
            # The real sidecars: the compatibility tests and `make bench` run them beside Sidecarless.
            for name, path in ensure_sidecars().items():
                print(f"{name}: {path}", flush=True)
    except BuildError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def build_cluster_binaries() -> None:
    binaries = ensure_kubernetes()
    print(f"kubernetes: {binaries.kube_apiserver.parent}")
    print(f"mock driver: {ensure_mock_driver()}")
    runtime = ensure_node_runtime()
    print(f"node runtime: {runtime.containerd.parent}, {runtime.runc}, CNI {runtime.cni_bin_dir}")
    print(f"pause: {ensure_pause()}")
    print(f"operator image base: {ensure_base_image()}")
    print(f"snapshot CRDs: {snapshot_crd_files()[0].parent}")
    print(f"helm: {ensure_helm()}")
    # The chart's monitoring objects: promtool checks the alert rules (tests/tooling), and the
    # Prometheus Operator CRDs its ServiceMonitor and PrometheusRule (tests/e2e/test_monitoring.py).
    print(f"promtool: {ensure_promtool()}")
    print(f"Prometheus Operator CRDs: {prometheus_operator_crd_files()[0].parent}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=default_dir(), help="work folder (default: %(default)s)")
    parser.add_argument(
        "--sidecars",
        choices=["with", "without", "only"],
        default="with",
        help="build: the real sidecars too, not, or only them (default: %(default)s)",
    )
    parser.add_argument(
        "--real-nodes", type=int, default=0, help="up: nodes with a real kubelet, containerd and runc (default: none)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "up":
        return up(args.dir, args.real_nodes)
    if args.command == "build":
        return build_all(args.dir, args.sidecars)
    return {"down": down, "status": status}[args.command](args.dir)


if __name__ == "__main__":
    sys.exit(main())
