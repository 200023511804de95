"""The lazy stand-ins for kubernetes-asyncio's packages give every name that is used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import sys
import sidecarless.handlers  # the whole operator, Kopf included
loaded = sum(1 for m in sys.modules if m.startswith("kubernetes_asyncio.client.models."))
assert loaded < 20, f"{loaded} model modules imported: the lazy packages are not in use"
import kubernetes_asyncio
from kubernetes_asyncio.client import ApiClient, Configuration, V1ObjectMeta, V1OwnerReference
from kubernetes_asyncio.client.api_client import ApiClient as Same
from kubernetes_asyncio.config import load_kube_config, load_incluster_config
import kubernetes_asyncio.client.models as models
assert Same is ApiClient
assert models.V1PersistentVolumeClaim.__name__ == "V1PersistentVolumeClaim"
assert kubernetes_asyncio.client.CoreV1Api.__name__ == "CoreV1Api"
assert kubernetes_asyncio.watch.Watch.__name__ == "Watch"
assert kubernetes_asyncio.__version__
# ApiClient still turns JSON into model objects (it looks classes up in the models package).
client = object.__new__(ApiClient)  # no connection pool: that needs an event loop
meta = client._ApiClient__deserialize({"name": "x", "labels": {"a": "b"}}, "V1ObjectMeta")
assert meta.name == "x" and meta.labels == {"a": "b"}
print("ok")
"""


def test_names_resolve_and_models_load_only_when_used() -> None:
    # A fresh interpreter: this one may have imported kubernetes_asyncio for real already.
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": f"{REPO / 'operator'}:{REPO}", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
