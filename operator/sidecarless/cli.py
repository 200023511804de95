"""The `sidecarless` command: `run` the operator, show the DriverEndpoints' `status`, or run the
`node` agent (kubelet registration and health for every CSI driver on the node)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from sidecarless import __version__
from sidecarless.config import Settings


def _run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run", help="run the operator", description="Run the operator. Flags override SIDECARLESS_* variables."
    )
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        convert = {"int": int, "float": float}.get(kind, str)
        run.add_argument(
            flag,
            dest=f.name,
            type=convert,
            default=None,
            help=f"default {f.default!r}; env SIDECARLESS_{f.name.upper()}",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sidecarless", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sidecarless {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    status = sub.add_parser("status", help="a table of DriverEndpoints with their conditions and counts")
    status.add_argument("--kubeconfig", default=None)
    _node_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "node":
        return _node(args)
    return asyncio.run(_status(args.kubeconfig))


def _node_parser(sub: Any) -> None:
    node = sub.add_parser(
        "node",
        help="register every CSI driver on this node with kubelet and serve their health",
        description="Register every CSI driver socket on this node with kubelet (node-driver-registrar's job) "
        "and serve /healthz/<driver> from each driver's Probe (livenessprobe's job).",
    )
    node.add_argument(
        "--plugins-dir",
        type=Path,
        default=Path("/var/lib/kubelet/plugins"),
        help="scanned for <driver>/csi.sock (default %(default)s)",
    )
    node.add_argument(
        "--kubelet-plugins-dir",
        type=Path,
        default=None,
        help="the plugins folder as kubelet sees it, if mounted elsewhere here (default: --plugins-dir)",
    )
    node.add_argument(
        "--registry-dir",
        type=Path,
        default=Path("/var/lib/kubelet/plugins_registry"),
        help="kubelet's plugin registry, where <driver>-reg.sock goes (default %(default)s)",
    )
    node.add_argument(
        "--driver-socket",
        type=Path,
        action="append",
        default=[],
        help="also register this CSI socket (repeatable; kubelet must see it at the same path)",
    )
    node.add_argument("--scan-seconds", type=float, default=1.0, help="how often sockets are looked for")
    node.add_argument(
        "--health-address",
        default="127.0.0.1",
        help="where /healthz/<driver> and /metrics listen (default %(default)s: kubelet probes from the node)",
    )
    node.add_argument("--health-port", type=int, default=9880, help="(default %(default)s)")
    node.add_argument("--probe-timeout", type=float, default=3.0, help="seconds per Probe (default %(default)s)")
    node.add_argument("--log-level", default="INFO")


def _node(args: argparse.Namespace) -> int:
    from sidecarless import logs  # noqa: PLC0415
    from sidecarless.node.agent import HealthSettings, run_until_terminated  # noqa: PLC0415
    from sidecarless.node.registration import DriverSocket, Registrar, scan_plugins  # noqa: PLC0415

    logs.configure(args.log_level, "text")
    kubelet_plugins = args.kubelet_plugins_dir or args.plugins_dir
    explicit = [DriverSocket(path, path) for path in args.driver_socket]

    def sockets() -> list[DriverSocket]:
        return [*scan_plugins(args.plugins_dir, kubelet_plugins).values(), *(s for s in explicit if s.path.is_socket())]

    health = HealthSettings(args.health_address, args.health_port, args.probe_timeout)
    asyncio.run(run_until_terminated(Registrar(args.registry_dir, sockets), args.scan_seconds, health))
    return 0


def _run(args: argparse.Namespace) -> int:
    from sidecarless import handlers, logs  # noqa: PLC0415 - keep `status` light

    try:
        settings = Settings.from_env(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    except ValueError as error:
        print(f"sidecarless: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(handlers.run(settings))
    return 0


async def _status(kubeconfig: str | None) -> int:
    from sidecarless.kube import DRIVER_ENDPOINT, Kube, connect  # noqa: PLC0415

    settings = Settings.from_env(kubeconfig=kubeconfig)
    kube = Kube(await connect(settings.kubeconfig))
    try:
        endpoints = await kube.list(DRIVER_ENDPOINT)
    finally:
        await kube.close()
    print(format_status(endpoints))
    return 0


def format_status(endpoints: list[dict[str, Any]]) -> str:
    """The DriverEndpoints as a table: one row each, the Ready condition's reason and message."""
    rows = [("NAME", "DRIVER", "READY", "REASON", "VOLUMES", "FAILURES", "MESSAGE")]
    for endpoint in sorted(endpoints, key=lambda e: e["metadata"]["name"]):
        status = endpoint.get("status") or {}
        ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        counts = status.get("counts") or {}
        rows.append(
            (
                endpoint["metadata"]["name"],
                endpoint.get("spec", {}).get("driverName", ""),
                ready.get("status", "Unknown"),
                ready.get("reason", ""),
                str(counts.get("volumes", 0)),
                str(counts.get("failures", 0)),
                ready.get("message", ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1] for row in rows
    )
