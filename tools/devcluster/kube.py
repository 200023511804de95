"""A small synchronous REST client for bootstrapping the local cluster.

The harness runs before any event loop exists (and in `make cluster`), so it talks to
the API server with the standard library; the operator and the tests use
kubernetes-asyncio.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

# Where each kind the harness creates lives in the API.
_COLLECTIONS: dict[tuple[str, str], str] = {
    ("v1", "Namespace"): "/api/v1/namespaces",
    ("v1", "Node"): "/api/v1/nodes",
    ("storage.k8s.io/v1", "CSINode"): "/apis/storage.k8s.io/v1/csinodes",
    ("storage.k8s.io/v1", "CSIDriver"): "/apis/storage.k8s.io/v1/csidrivers",
    ("storage.k8s.io/v1", "StorageClass"): "/apis/storage.k8s.io/v1/storageclasses",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
}


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


class KubeREST:
    def __init__(self, server: str, ca_file: str, cert_file: str | None = None, key_file: str | None = None) -> None:
        self.server = server.rstrip("/")
        self._context = ssl.create_default_context(cafile=ca_file)
        if cert_file and key_file:
            self._context.load_cert_chain(cert_file, key_file)

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30.0, content_type: str = "application/json"
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, context=self._context, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise KubeError(error.code, error.read().decode(errors="replace")[:500]) from error
        return json.loads(raw) if raw.startswith(b"{") else raw.decode()

    def get(self, path: str) -> Any:
        try:
            return self.request("GET", path)
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def create(self, obj: dict[str, Any], *, exist_ok: bool = True) -> Any:
        """POST the object to its collection; an existing object is fine unless `exist_ok` is false."""
        collection = _COLLECTIONS.get((obj["apiVersion"], obj["kind"]))
        if collection is None:
            raise ValueError(f"the harness does not know where {obj['apiVersion']} {obj['kind']} lives")
        try:
            return self.request("POST", collection, obj)
        except KubeError as error:
            if error.status == 409 and exist_ok:
                return None
            raise

    def healthy(self, path: str = "/readyz") -> bool:
        try:
            return bool(self.request("GET", path, timeout=2.0) == "ok")
        except (OSError, KubeError):
            return False
