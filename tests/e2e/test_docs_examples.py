"""Every YAML example in the docs is a valid object for the local cluster: each ```yaml block
of docs/*.md and the README is sent with a server-side dry run (schema, CRD validation and
admission included, nothing stored)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecarless.kube import Kube

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
PLURALS = {
    "NetworkPolicy": "networkpolicies",
    "StorageClass": "storageclasses",
    "DriverEndpoint": "driverendpoints",
    "Deployment": "deployments",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "VolumeSnapshot": "volumesnapshots",
    "VolumeSnapshotClass": "volumesnapshotclasses",
    "ServiceAccount": "serviceaccounts",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
}
NAMESPACED = {
    "NetworkPolicy",
    "Deployment",
    "PersistentVolumeClaim",
    "VolumeSnapshot",
    "ServiceAccount",
    "Role",
    "RoleBinding",
}


def examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in DOCS:
        for number, block in enumerate(BLOCK.findall(path.read_text()), start=1):
            for document in yaml.safe_load_all(block):
                if document and "kind" in document:
                    found.append((f"{path.name}#{number} {document['kind']} {document['metadata']['name']}", document))
    return found


def test_the_docs_have_examples() -> None:
    assert len(examples()) >= 5


@pytest.mark.parametrize(("where", "document"), examples(), ids=[w for w, _ in examples()])
async def test_example_is_accepted_by_the_api_server(
    kube: Kube, crds: None, namespace: str, where: str, document: dict[str, Any]
) -> None:
    kind = document["kind"]
    assert kind in PLURALS, f"{where}: add {kind} to this test's table"
    version = document["apiVersion"]
    base = f"/apis/{version}" if "/" in version else f"/api/{version}"
    if kind in NAMESPACED:
        # Into this test's namespace: the dry run needs the namespace to exist.
        document = {**document, "metadata": {**document["metadata"], "namespace": namespace}}
        path = f"{base}/namespaces/{namespace}/{PLURALS[kind]}"
    else:
        path = f"{base}/{PLURALS[kind]}"
    await kube.request("POST", path, body=document, query=[("dryRun", "All")])
