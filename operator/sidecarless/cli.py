"""The `sidecarless` command: `run` the operator, or show the DriverEndpoints' `status`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import fields
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
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    return asyncio.run(_status(args.kubeconfig))


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
    from kubernetes_asyncio.client.api_client import ApiClient  # noqa: PLC0415

    from sidecarless.kube import DRIVER_ENDPOINT, Kube, load_configuration  # noqa: PLC0415

    settings = Settings.from_env(kubeconfig=kubeconfig)
    kube = Kube(ApiClient(await load_configuration(settings.kubeconfig)))
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
