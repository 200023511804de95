"""Medians over rounds, Sidecarless / sidecars ratios, the printed table and the plot.

A run with the sharded side (replicas sharing the drivers out) adds its column, and its
ratio to the one Sidecarless process."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

SIDES = ("sidecars", "sidecarless", "sharded")

# (key in a round's figures, what the table calls it); a key "phase.field[.field]" reads a phase's figure.
METRICS = (
    ("provision.pv_created", "all PVs created, s"),
    ("provision.seconds", "all PVCs Bound, s"),
    ("provision.p50", "  Bound p50, s"),
    ("provision.p99", "  Bound p99, s"),
    ("provision.machine_busy", "  machine busy (1: both CPUs)"),
    ("provision.shared_cpu_seconds.kube-apiserver", "  kube-apiserver CPU s"),
    ("attach.seconds", "all attached, s"),
    ("attach.p99", "  attached p99, s"),
    ("detach.seconds", "all detached, s"),
    ("expand.seconds", "all expanded, s"),
    ("expand.p99", "  expanded p99, s"),
    ("snapshot.seconds", "all snapshots ready, s"),
    ("snapshot.p99", "  ready p99, s"),
    ("snapshot.machine_busy", "  machine busy (1: both CPUs)"),
    ("snapshot.shared_cpu_seconds.kube-apiserver", "  kube-apiserver CPU s"),
    ("snapshot.shared_cpu_seconds.etcd", "  etcd CPU s"),
    ("unsnapshot.seconds", "all snapshots deleted, s"),
    ("delete.seconds", "all volumes deleted, s"),
    ("delete.p99", "  deleted p99, s"),
    ("requests_per_volume", "API requests / provisioned volume"),
    ("requests_total", "API requests, whole round"),
    ("provision.cpu_seconds", "CPU s, provisioning"),
    ("cpu_seconds", "CPU s, whole round"),
    ("peak_rss_mib", "peak RSS MiB (sum of processes)"),
    ("watches_held", "watches held"),
    ("connections", "TCP connections to the API"),
    ("processes", "processes"),
    ("left_behind", "volumes + snapshots left on the driver"),
)


def figure(round_figures: dict[str, Any], key: str) -> float | None:
    phase, _, path = key.partition(".")
    if not path:
        value = round_figures.get(key)
    else:
        value = round_figures["phases"].get(phase, {})
        for name in path.split("."):
            value = value.get(name) if isinstance(value, dict) else None
    return None if value is None else float(value)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """setting -> side -> metric -> median over that setting's rounds."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for setting in dict.fromkeys(r["setting"] for r in rounds):
        summary[setting] = {}
        for side in SIDES:
            of_side = [r for r in rounds if r["setting"] == setting and r["side"] == side]
            medians = {}
            for key, _ in METRICS:
                values = [v for r in of_side if (v := figure(r, key)) is not None]
                if values:
                    medians[key] = round(statistics.median(values), 3)
            summary[setting][side] = medians
    return summary


def ratios(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for setting, sides in summary.items():
        theirs, ours = sides.get("sidecars", {}), sides.get("sidecarless", {})
        out[setting] = {key: round(ours[key] / theirs[key], 3) for key in ours if theirs.get(key)}
    return out


def _rows(sides: dict[str, dict[str, float]]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The table's header and rows: each side's median, Sidecarless / sidecars, and sharded / Sidecarless."""
    sharded = bool(sides.get("sharded"))
    header = ["sidecars", "sidecarless", "ratio"] + (["sharded", "sh/1"] if sharded else [])
    rows = []
    for key, label in METRICS:
        values = [sides.get(side, {}).get(key) for side in SIDES]
        if all(v is None for v in values):
            continue
        theirs, ours, shards = values
        cells = [_cell(theirs), _cell(ours), _ratio(ours, theirs)]
        rows.append((label, cells + ([_cell(shards), _ratio(shards, ours)] if sharded else [])))
    return header, rows


def table(summary: dict[str, dict[str, dict[str, float]]], rounds: int) -> str:
    lines = []
    for setting, sides in summary.items():
        header, rows = _rows(sides)
        lines.append(f"\n{setting} (median of {rounds} rounds)")
        lines.append(f"  {'':<36}" + "".join(f"{h:>13}" for h in header))
        lines += [f"  {label:<36}" + "".join(f"{c:>13}" for c in cells) for label, cells in rows]
    return "\n".join(lines)


def markdown(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """The same table as :func:`table`, one per setting, for docs/performance.md."""
    lines = []
    for setting, sides in summary.items():
        header, rows = _rows(sides)
        names = [{"sidecarless": "Sidecarless", "sh/1": "sharded / one"}.get(h, h) for h in header]
        lines += [f"\n**{setting}**\n", "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {label.strip()} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines)


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return f"{numerator / denominator:.2f}" if denominator and numerator is not None else ""


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}"


PLOTTED_TIMES = (
    ("provision.pv_created", "PVs created"),
    ("provision.seconds", "PVCs Bound"),
    ("attach.seconds", "attached"),
    ("detach.seconds", "detached"),
    ("expand.seconds", "expanded"),
    ("snapshot.seconds", "snapshots ready"),
    ("unsnapshot.seconds", "snapshots deleted"),
    ("delete.seconds", "volumes deleted"),
)
PLOTTED_COSTS = (
    ("peak_rss_mib", "peak RSS, MiB"),
    ("cpu_seconds", "CPU, s"),
    ("requests_total", "API requests"),
    ("watches_held", "watches held"),
)


def plot(summary: dict[str, dict[str, dict[str, float]]], title: str, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only `--plot` needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    settings = list(summary)
    fig, axes = plt.subplots(len(settings), 2, figsize=(13, 3.6 * len(settings)), squeeze=False)
    for row, setting in enumerate(settings):
        for column, (metrics, unit) in enumerate(((PLOTTED_TIMES, "seconds to converge"), (PLOTTED_COSTS, ""))):
            axis = axes[row][column]
            shown = [(k, label) for k, label in metrics if any(k in summary[setting].get(s, {}) for s in SIDES)]
            positions = range(len(shown))
            present = [side for side in SIDES if summary[setting].get(side)]
            width = 0.8 / max(len(present), 1)
            for index, side in enumerate(present):
                offset = (index - (len(present) - 1) / 2) * width
                values = [summary[setting][side].get(k, 0.0) for k, _ in shown]
                axis.bar([p + offset for p in positions], values, width=width, label=side)
            axis.set_xticks(list(positions), [label for _, label in shown], rotation=25, ha="right", fontsize=8)
            axis.set_ylabel(unit)
            if column == 1:
                axis.set_yscale("log")  # MiB, seconds and counts: a log axis shows each ratio alike
            axis.set_title(f"{setting}: {'time' if column == 0 else 'cost'}", fontsize=10)
            axis.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    """`python -m bench.report RESULT.json [PLOT.png]`: a finished run's tables as markdown,
    and its plot drawn again."""
    import json  # noqa: PLC0415
    import sys  # noqa: PLC0415

    result = json.loads(Path(sys.argv[1]).read_text())
    print(markdown(result["summary"]))
    if len(sys.argv) > 2:
        title = f"N={result['n']}, {result['drivers']} driver(s), median of {result['rounds_per_setting']} rounds; "
        plot(result["summary"], title + result["machine"], Path(sys.argv[2]))


if __name__ == "__main__":
    main()
