"""The chart's alert rules and Grafana dashboard (charts/sidecarless/files/): the rules pass
`promtool check rules` and their unit tests (`promtool test rules` with
prometheus-rules.test.yaml beside this file), the dashboard's queries are PromQL promtool
accepts, and both name only metrics and labels docs/reference.md gives the operator.
tests/e2e/test_monitoring.py checks the same names against a running operator's /metrics."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from devcluster import build
from tests import monitoring

RULE_TESTS = Path(__file__).with_name("prometheus-rules.test.yaml")
REFERENCE = monitoring.REPO / "docs" / "reference.md"
# What the dashboard's variables stand for when its queries are checked as PromQL.
VARIABLES = {"$__rate_interval": "5m", "$job": "sidecarless", "$namespace": ".*"}


@pytest.fixture(scope="module")
def promtool() -> Path:
    return build.ensure_promtool()  # a failed build fails these tests: the rules would go unchecked


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, timeout=120)


def documented_metrics() -> dict[str, set[str]]:
    """Each metric of docs/reference.md's table of the operator's metrics, with its labels."""
    section = REFERENCE.read_text().split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, set[str]] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            names, labels = line.split("|")[1:3]
            for name in re.findall(r"`([a-z_:]+)`", names):
                documented[name] = set(re.findall(r"`(\w+)`", labels))
    return documented


def test_promtool_checks_the_rules(promtool: Path) -> None:
    result = run(promtool, "check", "rules", monitoring.RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(monitoring.alert_rules())} rules found" in result.stdout


def test_the_rules_unit_tests_pass(promtool: Path) -> None:
    result = run(promtool, "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in monitoring.alert_rules():
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == rule["alert"]]
        assert [] in expected, f"{rule['alert']}: no case where it stays quiet"
        assert any(expected), f"{rule['alert']}: no case where it fires"


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    rules = monitoring.alert_rules()
    assert len(rules) >= 5
    for rule in rules:
        assert rule["alert"].startswith("Sidecarless"), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        assert re.fullmatch(r"[0-9]+m", rule["for"]), rule["alert"]


def test_the_dashboard_queries_are_promql(promtool: Path, tmp_path: Path) -> None:
    """Each query as a recording rule, its variables filled in, so that promtool parses it."""
    rules = []
    for number, query in enumerate(monitoring.dashboard_queries().values()):
        filled = query
        for variable, value in VARIABLES.items():
            filled = filled.replace(variable, value)
        assert "$" not in filled, f"a dashboard variable the test does not know: {query}"
        rules.append({"record": f"dashboard:query_{number}", "expr": filled})
    checked = tmp_path / "dashboard-queries.yaml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", checked)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rules) > 20


def test_every_metric_queried_is_a_documented_metric_of_the_operator() -> None:
    documented = set(documented_metrics())
    assert len(documented) > 15
    queried = {name for query in monitoring.every_query().values() for name in monitoring.metric_names(query)}
    assert {"sidecarless_endpoint_ready", "csi_sidecar_operations_seconds_count", "up"} <= queried
    unknown = sorted(n for n in queried - monitoring.PROMETHEUS_OWN if monitoring.family(n, documented) is None)
    assert unknown == []


def test_every_label_selected_on_is_documented_for_its_metric() -> None:
    documented = documented_metrics()
    wrong = []
    for where, query in monitoring.every_query().items():
        for metric, matchers in monitoring.selectors(query):
            name = monitoring.family(metric, set(documented))
            labels = documented.get(name or "", set()) | monitoring.TARGET_LABELS
            wrong += [f"{where}: {metric} has no label {label}" for label, _, _ in matchers if label not in labels]
    assert wrong == []


def test_every_label_an_alert_prints_is_documented_for_its_metrics() -> None:
    documented = documented_metrics()
    expressions = monitoring.alert_expressions()
    for alert, printed in monitoring.annotation_labels().items():
        names = monitoring.metric_names(expressions[alert])
        labels = set(monitoring.TARGET_LABELS)
        for name in names:
            labels |= documented.get(monitoring.family(name, set(documented)) or "", set())
        assert printed <= labels, f"{alert} prints labels {sorted(printed - labels)} that {sorted(names)} lack"


def test_the_dashboard_shows_every_metric_of_the_operator() -> None:
    queried = {
        monitoring.family(name, set(documented_metrics()))
        for query in monitoring.dashboard_queries().values()
        for name in monitoring.metric_names(query)
    }
    assert sorted(set(documented_metrics()) - queried) == []
