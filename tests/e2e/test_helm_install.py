"""`helm install` of the chart into the local cluster, and `helm uninstall` keeping the CRD.

The session already installed the DriverEndpoint CRD (the other tests need it), so the
release adopts it, as helm does with objects that carry its ownership marks; uninstalling
must then leave it in place (crds.keep), or every later test would lose it."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from devcluster import LocalCluster, build
from sidecarless.kube import Kube, Resource

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "sidecarless"
CRD = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)
DEPLOYMENT = Resource("apps", "v1", "deployments", "Deployment", True)
CLUSTER_ROLE = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False)
CRD_NAME = "driverendpoints.sidecarless.io"


async def helm(cluster: LocalCluster, *args: str) -> str:
    argv = [str(build.ensure_helm()), "--kubeconfig", str(cluster.kubeconfig), *args]
    result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


async def test_helm_install_and_uninstall_keeps_the_crd(
    kube: Kube, cluster: LocalCluster, unique_name: Callable[[str], str], crds: None
) -> None:
    release, namespace = "sl", unique_name("helm")
    await kube.patch(
        CRD,
        CRD_NAME,
        {
            "metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace},
            }
        },
    )
    await helm(cluster, "install", release, str(CHART), "--namespace", namespace, "--create-namespace")
    try:
        deployment = await kube.get(DEPLOYMENT, f"{release}-sidecarless", namespace)
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == f"{release}-sidecarless"
        assert await kube.get_or_none(CLUSTER_ROLE, f"{release}-sidecarless") is not None
        crd = await kube.get(CRD, CRD_NAME)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        served = await kube.request("GET", "/apis/sidecarless.io/v1alpha1/driverendpoints")
        assert served["kind"] == "DriverEndpointList"
        assert release in await helm(cluster, "list", "--namespace", namespace, "--short")
    finally:
        await helm(cluster, "uninstall", release, "--namespace", namespace)
    assert await kube.get_or_none(DEPLOYMENT, f"{release}-sidecarless", namespace) is None
    assert await kube.get_or_none(CLUSTER_ROLE, f"{release}-sidecarless") is None
    assert await kube.get_or_none(CRD, CRD_NAME) is not None, "crds.keep leaves the CRD (and every DriverEndpoint)"
