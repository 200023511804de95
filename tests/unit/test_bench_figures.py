"""The benchmark's arithmetic: audit-log counting, percentiles, medians and ratios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report
from bench.audit import AuditLog
from bench.workload import percentile


def _event(audit_id: str, user: str, verb: str, stage: str, resource: str = "persistentvolumes") -> str:
    return json.dumps(
        {
            "auditID": audit_id,
            "stage": stage,
            "verb": verb,
            "user": {"username": user},
            "objectRef": {"resource": resource},
            "requestURI": f"/api/v1/{resource}",
        }
    )


def test_audit_counts_requests_and_open_watches_per_user(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = [
        _event("1", "a", "create", "ResponseComplete"),
        _event("2", "a", "watch", "ResponseStarted"),
        _event("3", "a", "watch", "ResponseStarted", "persistentvolumeclaims"),
        _event("4", "b", "get", "ResponseComplete"),
    ]
    path.write_text("\n".join(lines) + "\n")
    audit = AuditLog(path)
    counts = audit.advance()
    assert counts["a"].total == 3
    assert counts["a"].by_kind["watch persistentvolumes"] == 1
    assert counts["b"].total == 1
    assert audit.watches_held("a") == 2

    # A watch that ends is not a second request, and no longer held.
    with path.open("a") as log:
        log.write(_event("2", "a", "watch", "ResponseComplete") + "\n")
        log.write(_event("5", "a", "patch", "ResponseComplete"))  # no newline yet: still being written
    counts = audit.advance()
    assert "a" not in counts
    assert audit.watches_held("a") == 1
    with path.open("a") as log:
        log.write("\n")
    assert audit.advance()["a"].by_kind == {"patch persistentvolumes": 1}


def test_audit_skips_what_came_before(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text(_event("1", "a", "create", "ResponseComplete") + "\n")
    audit = AuditLog(path)
    audit.skip_to_end()
    assert audit.advance() == {}


def test_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5
    assert percentile(values, 99) == 99.01
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) == 0.0


def _round(setting: str, side: str, bound: float, rss: float) -> dict[str, Any]:
    return {"setting": setting, "side": side, "phases": {"provision": {"seconds": bound}}, "peak_rss_mib": rss}


def test_medians_and_ratios() -> None:
    rounds = [
        _round("qps100", "sidecars", 10, 300),
        _round("qps100", "sidecars", 30, 320),
        _round("qps100", "sidecars", 20, 310),
        _round("qps100", "sidecarless", 5, 100),
        _round("qps100", "sidecarless", 50, 90),
        _round("qps100", "sidecarless", 6, 95),
    ]
    summary = report.summarize(rounds)
    assert summary["qps100"]["sidecars"] == {"provision.seconds": 20, "peak_rss_mib": 310}
    assert summary["qps100"]["sidecarless"] == {"provision.seconds": 6, "peak_rss_mib": 95}
    assert report.ratios(summary) == {"qps100": {"provision.seconds": 0.3, "peak_rss_mib": 0.306}}
    printed = report.table(summary, 3)
    assert "all PVCs Bound, s" in printed
    assert "0.30" in printed


def test_the_sharded_side_gets_its_column_and_its_ratio_to_one_process() -> None:
    rounds = [
        _round("qps100", "sidecars", 20, 300),
        _round("qps100", "sidecarless", 10, 100),
        _round("qps100", "sharded", 12, 250),
    ]
    summary = report.summarize(rounds)
    header, rows = report._rows(summary["qps100"])
    assert header == ["sidecars", "sidecarless", "ratio", "sharded", "sh/1"]
    assert dict(rows)["all PVCs Bound, s"] == ["20.00", "10.00", "0.50", "12.00", "1.20"]
    assert dict(rows)["peak RSS MiB (sum of processes)"] == ["300", "100", "0.33", "250", "2.50"]
    assert "| | sidecars | Sidecarless | ratio | sharded | sharded / one |" in report.markdown(summary)
    # Without it, the table is as it was.
    assert report._rows(report.summarize(rounds[:2])["qps100"])[0] == ["sidecars", "sidecarless", "ratio"]


def test_nested_phase_figures() -> None:
    figures = {"phases": {"snapshot": {"shared_cpu_seconds": {"kube-apiserver": 2.5}, "machine_busy": 0.9}}}
    assert report.figure(figures, "snapshot.shared_cpu_seconds.kube-apiserver") == 2.5
    assert report.figure(figures, "snapshot.machine_busy") == 0.9
    assert report.figure(figures, "snapshot.shared_cpu_seconds.etcd") is None
    assert report.figure(figures, "provision.machine_busy") is None


def test_plot_writes_a_png(tmp_path: Path) -> None:
    summary = report.summarize([_round("defaults", "sidecars", 10, 300), _round("defaults", "sidecarless", 5, 90)])
    path = tmp_path / "plot.png"
    report.plot(summary, "test", path)
    assert path.read_bytes().startswith(b"\x89PNG")
