"""What the chart's alert rules and Grafana dashboard query, read out of their files, for the
tests that check they name only what the operator exports (tests/tooling/test_alerts.py
against docs/reference.md, tests/e2e/test_monitoring.py against a running operator).

PromQL is not parsed in full: string literals, label matchers, ranges and grouping clauses are
cut out, and what is left that looks like a name and is not called like a function is a metric.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
FILES = REPO / "charts" / "sidecarless" / "files"
RULES = FILES / "prometheus-rules.yaml"
DASHBOARD = FILES / "grafana-dashboard.json"

# Series Prometheus writes itself for every target it scrapes: no process exports them.
PROMETHEUS_OWN = frozenset({"up"})
# Labels the scrape adds to every series (the ServiceMonitor's target labels), not the operator.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*\w+\s*\)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_expressions() -> dict[str, str]:
    """Every alert's expression, by alert name."""
    return {rule["alert"]: rule["expr"] for rule in alert_rules()}


def annotation_labels() -> dict[str, set[str]]:
    """The labels each alert's summary and description print (`{{ $labels.endpoint }}`), by alert."""
    return {
        rule["alert"]: set(re.findall(r"\$labels\.(\w+)", " ".join(rule["annotations"].values())))
        for rule in alert_rules()
    }


def dashboard_queries() -> dict[str, str]:
    """Every query of the dashboard, by where it is: its panels' targets and its variables'
    `label_values(selector, label)` (by the selector)."""
    board = json.loads(DASHBOARD.read_text())
    queries = {
        f"{panel['title']} {target['refId']}": target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
    }
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = _LABEL_VALUES.match(query.strip())
        assert match, f"variable {variable['name']}: only label_values(...) queries are read here, not {query!r}"
        queries[f"variable {variable['name']}"] = match.group(1)
    return queries


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects."""
    text = _VARIABLE.sub("", _STRING.sub('""', expr))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _NAME.findall(text) if name not in _KEYWORDS}


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, [(label, operator, value), ...]) for every selector with label matchers (values
    may name dashboard variables, `$job`)."""
    return [(metric, _MATCHER.findall(body)) for metric, body in _SELECTOR.findall(expr)]


def family(name: str, known: set[str] | frozenset[str]) -> str | None:
    """The name as `known` has it: itself, or a histogram's series (`_bucket`, `_count`,
    `_sum`) as the histogram's name; None if neither is known."""
    if name in known:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in known:
            return name.removesuffix(suffix)
    return None


def samples(scrape: str) -> list[tuple[str, dict[str, str]]]:
    """(name, labels) of every sample of a /metrics page in Prometheus' text format."""
    found = []
    for line in scrape.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = dict(_LABEL.findall(rest.rpartition("}")[0])) if rest else {}
            found.append((name.split()[0], labels))
    return found


def exported_names(scrape: str) -> set[str]:
    """Every metric name a /metrics page offers: its samples' names, and the names each family
    its `# TYPE` lines declare has in PromQL (a counter's `_total`, which some versions of
    prometheus_client leave out of the line; a histogram's `_bucket`, `_count` and `_sum`),
    with or without a sample yet: prometheus_client declares a labelled family before its
    first child."""
    names = {name for name, _ in samples(scrape)}
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
            elif kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in HISTOGRAM_SUFFIXES)
    return names


def every_query() -> dict[str, str]:
    """The alerts' and the dashboard's queries together, by where they are."""
    return {**{f"alert {k}": v for k, v in alert_expressions().items()}, **dashboard_queries()}
