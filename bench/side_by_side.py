"""The real kubernetes-csi sidecars and Sidecarless, side by side on one local cluster.

Starts one cluster (kube-apiserver writing an audit log, kube-controller-manager with a
raised API rate limit so its PV binder and attach/detach controller never hold a side
back) and D csi-test mock drivers. Then, for each setting and round, each side in turn
(alternating who goes first) is started fresh, lives through the phases of
bench/workload.py with N claims, and is stopped. Prints medians and Sidecarless /
sidecars ratios, and writes every figure of every round as JSON.

    make bench                                   # N=100, 1 driver, 3 rounds, defaults and qps100
    make bench N=1000 DRIVERS=5 ROUNDS=3 SETTINGS=qps100,unlimited SCENARIO=provision
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench import report
from bench.audit import AuditLog, Requests
from bench.harness import cluster_options, on_a_local_cluster
from bench.proc import connections_to, machine_busy_seconds, usage
from bench.sides import SETTINGS, Setting, ShardedSide, Side, SidecarlessSide, SidecarsSide
from bench.workload import NAMESPACE, PHASES, Workload, driver_name
from devcluster import LocalCluster
from devcluster.build import ensure_sidecars
from devcluster.operator import REPO
from sidecarless.kube import POD, PVC, VOLUME_SNAPSHOT, Kube, connect

SHARED_PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager")
SCENARIOS = {
    "all": PHASES,
    "provision": ("provision", "delete"),
    "attach": ("provision", "attach", "detach", "delete"),
    "expand": ("provision", "expand", "delete"),
    "snapshot": ("provision", "snapshot", "unsnapshot", "delete"),
}


async def one_round(
    side: Side,
    workload: Workload,
    audit: AuditLog,
    phases: tuple[str, ...],
    *,
    settle: float,
    api_port: int,
    control_plane: dict[str, int],
    profile: Path | None = None,
) -> dict[str, Any]:
    audit.advance()  # whatever came before is not this side's
    side.start()
    profiler = _profile(side, profile) if profile else None
    await asyncio.sleep(settle)  # caches filled, watches open: both sides get the same time
    startup = audit.advance().get(side.user, Requests())
    figures: dict[str, Any] = {"side": side.name, "phases": {}, "startup_requests": startup.total}
    requests = Requests()
    for phase in phases:
        cpu_before = _cpu(side)
        shared_before = _shared_cpu(control_plane)
        result = await workload.run(phase)
        shared = {name: round(seconds - shared_before[name], 2) for name, seconds in _shared_cpu(control_plane).items()}
        machine = shared.pop("machine")
        counts = await _until_quiet(audit, side.user)
        requests.total += counts.total
        requests.by_kind.update(counts.by_kind)
        figures["phases"][phase] = {
            **result.summary(),
            "requests": counts.total,
            "cpu_seconds": round(_cpu(side) - cpu_before, 2),
            # While the phase ran (until converged): what the shared parts spent, and how
            # busy the machine was (1.0: every CPU busy), to see what holds a phase back.
            "shared_cpu_seconds": shared,
            "machine_busy": round(machine / max(result.seconds, 0.01) / (os.cpu_count() or 1), 2),
        }
        side.check_alive()
    processes = {label: usage(pid) for label, pid in side.pids().items()}
    figures.update(
        {
            "requests_total": requests.total,
            "requests_by_kind": dict(requests.by_kind.most_common()),
            "requests_per_volume": round(figures["phases"]["provision"]["requests"] / workload.n, 3),
            "cpu_seconds": round(sum(p["cpu_seconds"] for p in figures["phases"].values()), 2),
            "peak_rss_mib": round(sum(u.peak_mib for u in processes.values()), 1),
            "processes": len(processes),
            "per_process": {label: u.__dict__ for label, u in processes.items()},
            "watches_held": audit.watches_held(side.user),
            "connections": sum(connections_to(pid, api_port) for pid in side.pids().values()),
        }
    )
    side.stop()
    if profiler is not None:
        profiler.wait(timeout=60)
    return figures


def _profile(side: Side, folder: Path) -> subprocess.Popen[bytes] | None:
    """py-spy samples Sidecarless until it exits: collapsed stacks for flame graphs or grep."""
    if not isinstance(side, SidecarlessSide):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    pid = side.pids()["sidecarless"]
    out = folder / f"sidecarless-{pid}.txt"
    py_spy = Path(sys.executable).parent / "py-spy"
    argv = [str(py_spy), "record", "--format", "raw", "--rate", "50", "--pid", str(pid), "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_clean(kube: Kube, timeout: float = 120) -> None:
    """Nothing of the last round left in the namespace (names are reused)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any([await kube.list(r, NAMESPACE) for r in (PVC, POD, VOLUME_SNAPSHOT)]):
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"namespace {NAMESPACE} still holds objects of the last round")


async def run(args: argparse.Namespace, cluster: LocalCluster, workdir: Path) -> dict[str, Any]:
    addresses = {driver_name(i): cluster.driver_addresses[driver_name(i)] for i in range(args.drivers)}
    sockets = {name: address.removeprefix("unix://") for name, address in addresses.items()}
    api_port = int(urlparse(cluster.server).port or 443)
    sidecars_kubeconfig = cluster.user_kubeconfig(SidecarsSide.user)
    sidecarless_kubeconfig = cluster.user_kubeconfig(SidecarlessSide.user)
    sharded_kubeconfig = cluster.user_kubeconfig(ShardedSide.user)
    kube = Kube(
        await connect(str(cluster.kubeconfig)), qps=0, burst=1
    )  # the benchmark's own requests are never held back
    audit = AuditLog(cluster.audit_log)
    control_plane = {p.name: p.pid for p in cluster.processes if p.name in SHARED_PROCESSES}
    workload = Workload(kube, args.n, args.drivers, args.timeout)
    rounds: list[dict[str, Any]] = []
    try:
        await workload.create_classes(addresses)
        before = await workload.backend(addresses)  # csi-test's mock starts with a few of its own
        for setting in args.settings:
            for number in range(1, args.rounds + 1):
                sides: list[Side] = [
                    SidecarsSide(sidecars_kubeconfig, sockets, setting, workdir / f"{setting.name}-{number}"),
                    SidecarlessSide(
                        sidecarless_kubeconfig, setting, workdir / f"{setting.name}-{number}", args.operator_env
                    ),
                    ShardedSide(
                        sharded_kubeconfig,
                        setting,
                        workdir / f"{setting.name}-{number}",
                        args.operator_env,
                        replicas=args.replicas,
                    ),
                ]
                if number % 2 == 0:
                    sides.reverse()  # neither side always runs on the fresher cluster
                for side in (s for s in sides if s.name in args.sides):
                    print(f"[{time.strftime('%H:%M:%S')}] {setting.name} round {number}: {side.name}", flush=True)
                    figures = await one_round(
                        side,
                        workload,
                        audit,
                        args.phases,
                        settle=args.settle,
                        api_port=api_port,
                        control_plane=control_plane,
                        profile=args.profile,
                    )
                    figures.update({"setting": setting.name, "round": number})
                    figures["leftovers"] = sorted(await workload.backend(addresses) - before)
                    figures["left_behind"] = len(figures["leftovers"])
                    if figures["leftovers"]:
                        # A leak is a finding, reported in the table; the next round starts clean.
                        print(f"  LEAK: {side.name} left {figures['leftovers']} on the driver", flush=True)
                        await workload.remove(addresses, figures["leftovers"])
                    rounds.append(figures)
                    print(_one_line(figures), flush=True)
                    await wait_clean(kube)
    finally:
        await kube.close()
    summary = report.summarize(rounds)
    return {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "machine": _machine(),
        "n": args.n,
        "drivers": args.drivers,
        "rounds_per_setting": args.rounds,
        "phases": list(args.phases),
        "versions": {name: path.parent.name for name, path in ensure_sidecars().items()},
        "summary": summary,
        "ratios": report.ratios(summary),
        "rounds": rounds,
    }


async def _until_quiet(audit: AuditLog, user: str, quiet: float = 1.0, limit: float = 60.0) -> Requests:
    """The user's requests until it made none for `quiet` seconds: a phase's trailing writes
    (events, finalizer removals) count for that phase, not the next one. Its time is
    already taken; this only delays the next phase."""
    total = Requests()
    last_request = time.monotonic()
    deadline = last_request + limit
    while time.monotonic() - last_request < quiet and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        counts = audit.advance().get(user, Requests())
        if counts.total:
            last_request = time.monotonic()
            total.total += counts.total
            total.by_kind.update(counts.by_kind)
    return total


def _shared_cpu(control_plane: dict[str, int]) -> dict[str, float]:
    return {**{name: usage(pid).cpu_seconds for name, pid in control_plane.items()}, "machine": machine_busy_seconds()}


def _cpu(side: Side) -> float:
    return sum(usage(pid).cpu_seconds for pid in side.pids().values())


def _one_line(figures: dict[str, Any]) -> str:
    phases = ", ".join(f"{name} {values['seconds']}s" for name, values in figures["phases"].items())
    return (
        f"    {phases}; {figures['requests_total']} requests, {figures['cpu_seconds']} CPU s, "
        f"{figures['peak_rss_mib']} MiB peak, {figures['watches_held']} watches"
    )


def _machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    kernel = platform.release()
    go = subprocess.run(["go", "version"], capture_output=True, text=True, check=False).stdout.strip()
    return f"{os.cpu_count()} CPUs ({model}), {memory} GiB, Linux {kernel}, Python {sys.version.split()[0]}, {go}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="claims per round (spread over the drivers)")
    parser.add_argument("--drivers", type=int, default=1, help="mock driver instances, each with its own name")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting; figures are medians")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="all")
    parser.add_argument(
        "--settings",
        default="defaults,qps100",
        help=f"comma-separated API rate limits to run under: {', '.join(SETTINGS)}",
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds each side gets to start before a round")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one phase may take")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "side_by_side.json")
    parser.add_argument("--plot", type=Path, help="also draw the medians into this PNG")
    parser.add_argument(
        "--sides",
        default="sidecars,sidecarless",
        help="the sides to run: sidecars, sidecarless (one process) and sharded (--replicas sharing the drivers)",
    )
    parser.add_argument("--replicas", type=int, default=3, help="replicas of the sharded side")
    parser.add_argument("--profile", type=Path, help="sample Sidecarless with py-spy into this folder")
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra environment variable for Sidecarless (e.g. SIDECARLESS_LOG_LEVEL=DEBUG); repeatable",
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.settings.split(",") if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    settings: list[Setting] = [SETTINGS[s] for s in args.settings.split(",")]
    args.settings = settings
    args.phases = SCENARIOS[args.scenario]
    args.sides = set(args.sides.split(","))
    args.operator_env = dict(item.split("=", 1) for item in args.operator_env)
    return args


def main() -> None:
    args = parse_args()
    ensure_sidecars()  # before the cluster: a cold build takes minutes
    options = cluster_options(args.drivers, audit_log=True)
    result, workdir = on_a_local_cluster("bench", options, lambda cluster, work: run(args, cluster, work), args.out)
    print(f"\n{result['n']} claims, {result['drivers']} driver(s), phases {', '.join(result['phases'])}")
    print(f"machine: {result['machine']}")
    print(report.table(result["summary"], args.rounds))
    print(f"\nevery round's figures: {args.out}; logs: {workdir}")
    if args.plot:
        title = f"N={args.n}, {args.drivers} driver(s), median of {args.rounds} rounds; {result['machine']}"
        report.plot(result["summary"], title, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
