"""docs/reference.md names every event reason and metric the operator's code uses."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CODE = [*(REPO / "operator" / "sidecarless").rglob("*.py"), *(REPO / "csi_client").glob("*.py")]
REFERENCE = (REPO / "docs" / "reference.md").read_text()

# events.warning(obj, "Reason", ...), and the same on a controller's signed view
_EVENT = re.compile(r"\.(?:warning|normal)\(\s*[a-z_.]+,\s*\"([A-Za-z]+)\"")
_ERROR = re.compile(r"SnapshotError\(\s*\"([A-Za-z]+)\"")
_EVENT_TABLE = re.compile(r"events\.append\(\(\"([A-Za-z]+)\"")  # (reason, message) pairs posted later
_METRIC = re.compile(r"(?:Counter|Histogram|Gauge|GaugeMetricFamily)\(\s*\"([a-z_]+)\"")


def _found(pattern: re.Pattern[str]) -> set[str]:
    return {name for path in CODE for name in pattern.findall(path.read_text())}


def test_every_event_reason_is_documented() -> None:
    reasons = _found(_EVENT) | _found(_ERROR) | _found(_EVENT_TABLE)
    assert len(reasons) > 30
    assert sorted(r for r in reasons if f"`{r}`" not in REFERENCE) == []


def test_every_metric_is_documented() -> None:
    metrics = _found(_METRIC)
    assert len(metrics) > 8
    missing = [m for m in metrics if f"`{m}`" not in REFERENCE]
    assert sorted(missing) == []
