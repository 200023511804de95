"""The chart's monitoring: its alert rules and Grafana dashboard query what a running operator
exports (every metric they name is on its /metrics, every label they select on or print is on
its series, and the series the alerts join are there with the values a healthy operator has),
and its ServiceMonitor, PrometheusRule and dashboard ConfigMap are objects the API server
accepts with Prometheus Operator's CRDs, field by field. tests/tooling/test_alerts.py checks
the same names against docs/reference.md without a cluster."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable, Iterator

import pytest
import yaml

from devcluster import LocalCluster, build
from devcluster.operator import REPO, OperatorProcess
from tests import monitoring
from tests.e2e.conftest import MOCK, eventually

pytestmark = pytest.mark.cluster

MONITORING_PLURALS = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}


async def test_the_alerts_and_the_dashboard_query_what_the_operator_exports(
    exclusive: Callable[..., OperatorProcess],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
    unique_name: Callable[[str], str],
) -> None:
    # With leader election, as the chart runs it: the leader gauge is one the alerts read.
    lease = unique_name("lease")
    operator = exclusive(SIDECARLESS_LEADER_ELECTION="true", SIDECARLESS_LEASE_NAME=lease)

    async def leading() -> bool:
        return f'leader_election_master_status{{name="{lease}"}} 1.0' in operator.metrics()

    await eventually(leading, what=f"the operator leading with Lease {lease}", timeout=30)
    endpoint, _ = await routed_class(MOCK)  # Ready: probed, so its CSI calls are counted

    scrape = operator.metrics()
    exported = monitoring.exported_names(scrape)
    series = monitoring.samples(scrape)

    missing = [
        f"{where}: {name}"
        for where, query in monitoring.every_query().items()
        for name in sorted(monitoring.metric_names(query) - monitoring.PROMETHEUS_OWN)
        if name not in exported
    ]
    assert missing == []

    def labelled(metric: str, wanted: dict[str, str | None]) -> bool:
        """Some sample of `metric` has each label (with that value, unless None)."""
        return any(
            name == metric
            and all(label in labels and value in (None, labels[label]) for label, value in wanted.items())
            for name, labels in series
        )

    unselected = []
    for where, query in monitoring.every_query().items():
        for metric, matchers in monitoring.selectors(query):
            wanted: dict[str, str | None] = {
                label: value if op == "=" else None
                for label, op, value in matchers
                if label not in monitoring.TARGET_LABELS and "$" not in value
            }
            if wanted and not labelled(metric, wanted):
                unselected.append(f"{where}: no series {metric}{wanted}")
    assert unselected == [], "selectors that match nothing a running operator exports"

    expressions = monitoring.alert_expressions()
    for alert, printed in monitoring.annotation_labels().items():
        names = monitoring.metric_names(expressions[alert]) - monitoring.PROMETHEUS_OWN
        for label in printed - monitoring.TARGET_LABELS:
            assert any(labelled(name, {label: None}) for name in names), f"{alert} prints {label}, which {names} lack"

    # What the alerts read on a healthy leader (its gauge is 1, above): the endpoint Ready, and
    # its attacher backlog in both lanes.
    assert f'sidecarless_endpoint_ready{{endpoint="{endpoint}"}} 1.0' in scrape
    assert labelled("sidecarless_attacher_backlog_oldest_seconds", {"endpoint": endpoint, "lane": "attach"})
    assert labelled("sidecarless_attacher_backlog_oldest_seconds", {"endpoint": endpoint, "lane": "detach"})


@pytest.fixture
def monitoring_crds(cluster: LocalCluster) -> Iterator[None]:
    """Prometheus Operator's ServiceMonitor and PrometheusRule CRDs, removed afterwards (unless
    they were there before)."""
    crds = [yaml.safe_load(path.read_text()) for path in build.prometheus_operator_crd_files()]
    created = [crd["metadata"]["name"] for crd in crds if cluster.rest.create(crd) is not None]
    cluster.wait_crds_served(crds)
    yield
    for name in created:
        cluster.rest.request("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")


def test_the_monitoring_objects_are_valid_for_prometheus_operator(
    cluster: LocalCluster, namespace: str, monitoring_crds: None
) -> None:
    """A server-side dry run with strict field validation: an unknown or misplaced field (say
    `honorLabel`) is refused, not dropped."""
    enabled = ["serviceMonitor", "prometheusRule", "grafanaDashboard"]
    argv = [str(build.ensure_helm()), "template", "sl", str(REPO / "charts" / "sidecarless"), "--namespace", namespace]
    argv += [f"--set=metrics.{value}.enabled=true" for value in enabled]
    rendered = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in {*MONITORING_PLURALS, "ConfigMap"}]
    assert sorted(d["kind"] for d in documents) == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
    for document in documents:
        kind = document["kind"]
        base = "/api/v1" if kind == "ConfigMap" else f"/apis/{document['apiVersion']}"
        collection = f"{base}/namespaces/{namespace}/{MONITORING_PLURALS.get(kind, 'configmaps')}"
        accepted = cluster.rest.request("POST", f"{collection}?dryRun=All&fieldValidation=Strict", document)
        content = "data" if kind == "ConfigMap" else "spec"
        assert accepted[content] == document[content], f"the API server changed the {kind}"
