"""The only module that talks to the Kubernetes API (Kopf's watch of DriverEndpoints aside).

Objects go in and out as plain dicts, the same shape Kopf hands to handlers, so the
planning functions see one representation. 404 and 409 become :class:`NotFound` and
:class:`Conflict` here and nowhere else, and every request passes one token bucket
(`--api-qps` / `--api-burst`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config
from prometheus_client import Counter

from sidecarless import faults
from sidecarless.vocabulary import key_of

Body = dict[str, Any]
Page = list[Body]

API_ERRORS = Counter(
    "sidecarless_api_errors_total",
    "Kubernetes API requests answered with an error (409: somebody else changed the object first)",
    ["method", "code"],
)  # (named here: inside Kube, `list` is a method)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, name: str = "", namespace: str | None = None, subresource: str = "") -> str:
        """The object's URL path. Names come from users' objects (an annotation naming a
        DriverEndpoint, a secret template): each is one escaped path segment, so no name,
        such as `../../api/v1/secrets`, can make a request reach another resource."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{_segment(namespace)}"
        path = f"{base}/{self.plural}"
        if name:
            path += f"/{_segment(name)}"
        if subresource:
            path += f"/{subresource}"
        return path


def _segment(text: str) -> str:
    # "." and ".." are segments of their own that a client or proxy may collapse.
    return quote(text, safe="") if text not in (".", "..") else text.replace(".", "%2E")


PVC = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True)
PV = Resource("", "v1", "persistentvolumes", "PersistentVolume", False)
SECRET = Resource("", "v1", "secrets", "Secret", True)
EVENT = Resource("", "v1", "events", "Event", True)
CONFIGMAP = Resource("", "v1", "configmaps", "ConfigMap", True)
NODE = Resource("", "v1", "nodes", "Node", False)
NAMESPACE = Resource("", "v1", "namespaces", "Namespace", False)
STORAGE_CLASS = Resource("storage.k8s.io", "v1", "storageclasses", "StorageClass", False)
CSI_NODE = Resource("storage.k8s.io", "v1", "csinodes", "CSINode", False)
CSI_DRIVER = Resource("storage.k8s.io", "v1", "csidrivers", "CSIDriver", False)
CSI_STORAGE_CAPACITY = Resource("storage.k8s.io", "v1", "csistoragecapacities", "CSIStorageCapacity", True)
VOLUME_ATTACHMENT = Resource("storage.k8s.io", "v1", "volumeattachments", "VolumeAttachment", False)
POD = Resource("", "v1", "pods", "Pod", True)
VOLUME_ATTRIBUTES_CLASS = Resource("storage.k8s.io", "v1", "volumeattributesclasses", "VolumeAttributesClass", False)
VOLUME_SNAPSHOT = Resource("snapshot.storage.k8s.io", "v1", "volumesnapshots", "VolumeSnapshot", True)
VOLUME_SNAPSHOT_CONTENT = Resource(
    "snapshot.storage.k8s.io", "v1", "volumesnapshotcontents", "VolumeSnapshotContent", False
)
VOLUME_SNAPSHOT_CLASS = Resource("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses", "VolumeSnapshotClass", False)
VOLUME_GROUP_SNAPSHOT = Resource(
    "groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshots", "VolumeGroupSnapshot", True
)
VOLUME_GROUP_SNAPSHOT_CONTENT = Resource(
    "groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshotcontents", "VolumeGroupSnapshotContent", False
)
VOLUME_GROUP_SNAPSHOT_CLASS = Resource(
    "groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshotclasses", "VolumeGroupSnapshotClass", False
)
DRIVER_ENDPOINT = Resource("sidecarless.io", "v1alpha1", "driverendpoints", "DriverEndpoint", False)


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"HTTP {status} {reason}: {message}")


class NotFound(KubeError):  # noqa: N818 - reads as what it is at the call sites
    pass


class Conflict(KubeError):  # noqa: N818
    pass


class Gone(KubeError):  # noqa: N818 - the API server's word for it
    """A watch's resourceVersion is older than etcd keeps (410): list again."""


class TokenBucket:
    """client-go's flowcontrol: `qps` tokens a second, at most `burst` saved up."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.qps <= 0:
            return  # unlimited
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.qps)
            self._updated = now
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.qps
                await asyncio.sleep(wait)
                self._updated = time.monotonic()
                self._tokens = 1
            self._tokens -= 1


async def load_configuration(kubeconfig: str | None, *, connections: int = 0) -> k8s.Configuration:
    """In-cluster credentials when there are any, else the kubeconfig."""
    configuration = k8s.Configuration()
    # HTTP/1.1 needs a connection per request in flight (Go's clients share one over HTTP/2);
    # 100 by default, which a burst of work fills. More requests than this wait their turn.
    configuration.connection_pool_maxsize = connections or API_CONNECTIONS
    if not kubeconfig:
        try:
            load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return configuration
        except ConfigException:
            pass
    await load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return configuration


async def api_client(kubeconfig: str | None, *, connections: int = 0) -> ApiClient:
    """A client of the API server with `load_configuration`'s credentials and connection pool."""
    return ApiClient(await load_configuration(kubeconfig, connections=connections))


API_CONNECTIONS = 24  # at most this many connections to the API server for requests (watches have their own)

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NETRC")


def _trust_env_only_if_set(api_client: ApiClient) -> None:
    """kubernetes-asyncio's session trusts the environment, so aiohttp looks for proxy
    variables and reads ~/.netrc (in a thread) before every request: about 4% of the
    operator's CPU in `make bench`. Keep that only where a proxy or netrc is configured."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES) or (Path.home() / ".netrc").exists():
        return
    session = api_client.rest_client.pool_manager
    session._trust_env = False  # aiohttp offers no setter; it is read at each request


class Kube:
    """Typed-by-Resource access to the API with one shared ApiClient and rate limit."""

    def __init__(
        self, api_client: ApiClient, *, qps: float = 50, burst: int = 100, watch_client: ApiClient | None = None
    ) -> None:
        self.api_client = api_client
        # Watches hold a connection for minutes: they get their own pool, not the requests'.
        self.watch_client = watch_client or api_client
        self._owns_clients = True
        _trust_env_only_if_set(api_client)
        self.bucket = TokenBucket(qps, burst)
        self.requests = 0  # every request made, for status and benchmarks
        # Told every object a create or patch returned (the stores keep our own writes).
        self.written: Callable[[Resource, Body], None] | None = None

    def with_budget(self, qps: float, burst: int) -> Kube:
        """The same connections and store updates, with a rate limit of its own."""
        other = Kube(self.api_client, qps=qps, burst=burst, watch_client=self.watch_client)
        other.written = self.written
        other._owns_clients = False
        return other

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Body:
        await self.bucket.acquire()
        self.requests += 1
        response = await self.api_client.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=60,
        )
        raw = await response.read()
        if 200 <= response.status < 300:
            return json.loads(raw) if raw else {}
        API_ERRORS.labels(method=method, code=str(response.status)).inc()
        raise _error(response.status, raw)

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> Body:
        return await self.request("GET", resource.path(name, namespace))

    async def get_or_none(self, resource: Resource, name: str, namespace: str | None = None) -> Body | None:
        try:
            return await self.get(resource, name, namespace)
        except NotFound:
            return None

    async def list(self, resource: Resource, namespace: str | None = None, *, label_selector: str = "") -> list[Body]:
        query = [("labelSelector", label_selector)] if label_selector else []
        listed = await self.request("GET", resource.path(namespace=namespace), query=query)
        items: list[Body] = listed.get("items", [])
        return items

    async def pages(self, resource: Resource, namespace: str | None = None, *, limit: int = 500) -> AsyncIterator[Page]:
        """List in pages of `limit`, so a large listing never sits in memory whole."""
        token = ""
        while True:
            query = [("limit", str(limit))] + ([("continue", token)] if token else [])
            listed = await self.request("GET", resource.path(namespace=namespace), query=query)
            yield listed.get("items", [])
            token = (listed.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    async def watch(
        self, resource: Resource, version: str, *, timeout: int = 300, namespace: str | None = None
    ) -> AsyncIterator[tuple[str, Body]]:
        """Changes after `version` as (type, object), bookmarks included, until the server ends
        the watch after `timeout` s. Raises :class:`Gone` when `version` is too old."""
        await self.bucket.acquire()
        self.requests += 1
        query = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout)),
        ]
        response = await self.watch_client.call_api(
            resource.path(namespace=namespace),
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout + 30,
        )
        async with response:
            if response.status >= 300:
                raise _error(response.status, await response.read())
            async for line in _lines(response.content.iter_any()):
                event = json.loads(line)
                kind, body = event.get("type", ""), event.get("object") or {}
                if kind == "ERROR":
                    raise _error(int(body.get("code") or 500), json.dumps(body).encode())
                yield kind, body

    async def create(self, resource: Resource, body: Body, namespace: str | None = None) -> Body:
        key = key_of(namespace, (body.get("metadata") or {}).get("name", ""))
        faults.api_write("before", "create", resource.plural, "", key)
        result = self._written(resource, await self.request("POST", resource.path(namespace=namespace), body=body))
        faults.api_write("after", "create", resource.plural, "", key)
        return result

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        subresource: str = "",
        content_type: str = MERGE_PATCH,
    ) -> Body:
        faults.api_write("before", "patch", resource.plural, subresource, key_of(namespace, name))
        result = await self.request(
            "PATCH", resource.path(name, namespace, subresource), body=patch, content_type=content_type
        )
        faults.api_write("after", "patch", resource.plural, subresource, key_of(namespace, name))
        return self._written(resource, result)

    def _written(self, resource: Resource, result: Body) -> Body:
        if self.written is not None and result.get("metadata"):
            self.written(resource, result)
        return result

    async def delete(
        self, resource: Resource, name: str, namespace: str | None = None, *, preconditions: Body | None = None
    ) -> Body | None:
        """Delete; an object that is already gone is fine. Returns the object as the API
        server left it (still there, being deleted, while finalizers hold it), or None."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": preconditions} if preconditions else None
        faults.api_write("before", "delete", resource.plural, "", key_of(namespace, name))
        try:
            result = await self.request("DELETE", resource.path(name, namespace), body=body)
        except NotFound:
            return None
        faults.api_write("after", "delete", resource.plural, "", key_of(namespace, name))
        return result if result.get("kind") == resource.kind else None  # not a Status

    async def secret_data(self, name: str, namespace: str) -> dict[str, bytes] | None:
        """A Secret's decoded `data` (None when the Secret does not exist): read live, never cached."""
        secret = await self.get_or_none(SECRET, name, namespace)
        if secret is None:
            return None
        return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}

    async def secret_strings(self, name: str, namespace: str) -> dict[str, str] | None:
        """A Secret's data as the `secrets` map a CSI request takes."""
        data = await self.secret_data(name, namespace)
        return None if data is None else {key: value.decode() for key, value in data.items()}

    async def close(self) -> None:
        if not self._owns_clients:
            return
        await self.api_client.close()
        if self.watch_client is not self.api_client:
            await self.watch_client.close()


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """JSON lines of any length (aiohttp's readline stops at 64 KiB; an object may be larger)."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:end], buffer[end + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _error(status: int, raw: bytes) -> KubeError:
    try:
        payload = json.loads(raw)
        reason, message = payload.get("reason", ""), payload.get("message", "")
    except (ValueError, AttributeError):
        reason, message = "", raw.decode(errors="replace")[:300]
    if status == 404:
        return NotFound(status, reason or "NotFound", message)
    if status == 410:
        return Gone(status, reason or "Gone", message)
    if status == 409:
        return Conflict(status, reason or "Conflict", message)
    return KubeError(status, reason, message)
