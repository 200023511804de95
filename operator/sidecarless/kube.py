"""The only module that talks to the Kubernetes API (Kopf's watch of DriverEndpoints aside).

Objects go in and out as plain dicts, the same shape Kopf hands to handlers, so the
planning functions see one representation. 404 and 409 become :class:`NotFound` and
:class:`Conflict` here and nowhere else, and every request passes one token bucket
(`--api-qps` / `--api-burst`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config
from prometheus_client import Counter

from sidecarless import faults, http2
from sidecarless.vocabulary import key_of

log = logging.getLogger(__name__)

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
LEASE = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
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


class Unreachable(KubeError):  # noqa: N818
    """No answer: the connection failed, broke or timed out (status 0). The request may or
    may not have reached the server, as with any lost answer."""


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


async def load_configuration(kubeconfig: str | None) -> k8s.Configuration:
    """In-cluster credentials when there are any, else the kubeconfig."""
    configuration = k8s.Configuration()
    if not kubeconfig:
        try:
            load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return configuration
        except ConfigException:
            pass
    await load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return configuration


REQUEST_TIMEOUT_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 30.0
# Only where HTTP/2 is not to be had: HTTP/1.1 holds a connection per watch and per request
# in flight. More requests than this wait their turn.
HTTP1_CONNECTIONS = 48

Opened = tuple[int, AsyncIterator[bytes]]  # an answer's status and its body as it arrives


class Transport:
    """The connection to the API server that every request and watch of a process shares.

    HTTP/2 (sidecarless/http2.py), as client-go speaks it: each watch and request is a
    stream on one TCP connection, opened again when it fails or the server retires it
    (kubernetes-asyncio's aiohttp session needed a connection per watch and per request in
    flight: 39 in `make bench` where the five sidecars hold 5). Where HTTP/2 is not to be had
    (a plain-http server such as `kubectl proxy`, a proxy URL in the kubeconfig, a server that
    picks HTTP/1.1 in TLS negotiation) an aiohttp pool of `HTTP1_CONNECTIONS` serves instead.
    kubernetes-asyncio is kept for what it does well: reading kubeconfigs and in-cluster
    credentials (the token is asked for at each request, so a rotated one is used at once).
    Every failure to get an answer is :class:`Unreachable`.
    """

    def __init__(self, configuration: k8s.Configuration, ssl_context: ssl.SSLContext) -> None:
        self.configuration = configuration
        self.http_version = ""  # what the last answer came in ("HTTP/2"), for logs and tests
        url = urlsplit(configuration.host or "")
        self._base = (configuration.host or "").rstrip("/")
        self._host = url.hostname or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._prefix = url.path.rstrip("/")  # a server URL with a path (behind a gateway)
        self._ssl_context = ssl_context
        self._http2_wanted = url.scheme == "https" and not configuration.proxy
        self._connection: http2.Connection | None = None
        self._connecting = asyncio.Lock()
        self._http1: aiohttp.ClientSession | None = None
        self._closed = False

    @classmethod
    async def of(cls, configuration: k8s.Configuration) -> Transport:
        # Reading the CA and client certificate is file I/O: off the event loop.
        return cls(configuration, await asyncio.to_thread(ssl_context, configuration))

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(
        self, method: str, path: str, *, query: list[tuple[str, str]], headers: dict[str, str], content: bytes | None
    ) -> tuple[int, bytes]:
        """A request and its whole answer, within `REQUEST_TIMEOUT_SECONDS`."""
        target, headers, what = await self._prepared(method, path, query, headers)
        response = await self._http2_request(method, target, headers, content, what)
        if response is None:
            async with self._http1_request(method, target, headers, content, read_timeout=REQUEST_TIMEOUT_SECONDS) as (
                status,
                chunks,
            ):
                return status, b"".join([chunk async for chunk in chunks])
        try:  # the common case without the streaming layers: most of a request's CPU is here
            async with response:
                body = await response.read(REQUEST_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as error:
            raise _unreachable(what, error) from error
        return response.status, body

    @contextlib.asynccontextmanager
    async def stream(
        self,
        path: str,
        *,
        query: list[tuple[str, str]],
        read_timeout: float,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> AsyncIterator[Opened]:
        """A request whose answer is read as it arrives (a watch); `read_timeout` bounds each
        wait for more. Leaving the block early cancels the rest of the answer."""
        target, headers, what = await self._prepared(method, path, query, headers or {"Accept": "application/json"})
        response = await self._http2_request(method, target, headers, content, what)
        if response is None:
            async with self._http1_request(method, target, headers, content, read_timeout=read_timeout) as opened:
                yield opened
            return
        async with response:
            yield response.status, _answered(response.chunks(read_timeout), what)

    async def _http2_request(
        self, method: str, target: str, headers: dict[str, str], content: bytes | None, what: str
    ) -> http2.Response | None:
        """The request's answer, as soon as its headers are in; None where the server turns
        out not to offer HTTP/2. A GET whose connection turns out lost before any answer (the
        API server restarted while it sat idle) is asked again once on a new connection, as
        Go's client does; a write is not (it may have been done: the caller decides, as for
        any `Unreachable`)."""
        for last_try in (method != "GET", True):
            connection = await self._http2(what)
            if connection is None:
                return None
            try:
                response = await connection.request(
                    method, target, list(headers.items()), content, timeout=REQUEST_TIMEOUT_SECONDS
                )
            except http2.ConnectionLost as error:
                if last_try:
                    raise _unreachable(what, error) from error
                log.info("%s: %s; asking again on a new connection", what, error)
                continue
            except (OSError, TimeoutError) as error:
                raise _unreachable(what, error) from error
            self.http_version = "HTTP/2"
            return response
        return None  # not reached: the last try returns or raises

    async def _prepared(
        self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str]
    ) -> tuple[str, dict[str, str], str]:
        """The request target, the headers with the credentials, and its name for errors."""
        target = self._prefix + path + ("?" + urlencode(query) if query else "")
        return target, await self._authorized(headers), f"{method} {path}"

    async def _http2(self, what: str) -> http2.Connection | None:
        """The connection new streams go on (opened when there is none that takes them), or
        None where HTTP/1.1 serves."""
        if not self._http2_wanted:
            return None
        if self._connection is not None and self._connection.usable:
            return self._connection
        async with self._connecting:
            if self._connection is not None and self._connection.usable:
                return self._connection
            if self._connection is not None:  # failed, its streams with it: what is left to release
                await self._connection.close()
                self._connection = None
            try:
                self._connection = await http2.Connection.open(
                    self._host,
                    self._port,
                    self._ssl_context,
                    server_hostname=self.configuration.tls_server_name or self._host,
                    timeout=CONNECT_TIMEOUT_SECONDS,
                )
            except http2.NotOffered:
                log.warning(
                    "%s does not offer HTTP/2: HTTP/1.1 with up to %d connections", self._base, HTTP1_CONNECTIONS
                )
                self._http2_wanted = False
                return None
            except (OSError, TimeoutError) as error:
                raise _unreachable(what, error) from error
            return self._connection

    @contextlib.asynccontextmanager
    async def _http1_request(
        self, method: str, target: str, headers: dict[str, str], content: bytes | None, *, read_timeout: float
    ) -> AsyncIterator[Opened]:
        what = f"{method} {target}"
        if self._http1 is None:
            context = await asyncio.to_thread(ssl_context, self.configuration)  # this one offers no h2
            self._http1 = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=HTTP1_CONNECTIONS, ssl=context))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=read_timeout)
        try:
            response = await self._http1.request(
                method,
                self._base + target.removeprefix(self._prefix),
                data=content,
                headers=headers,
                timeout=timeout,
                proxy=self.configuration.proxy,
                server_hostname=self.configuration.tls_server_name,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise _unreachable(what, error) from error
        self.http_version = f"HTTP/{response.version.major}.{response.version.minor}" if response.version else ""
        async with response:
            yield response.status, _answered(response.content.iter_any(), what)

    async def _authorized(self, headers: dict[str, str]) -> dict[str, str]:
        token = await self.configuration.get_api_key_with_prefix("BearerToken")
        return {**headers, "Authorization": token} if token else headers

    async def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        if self._http1 is not None:
            await self._http1.close()


def ssl_context(configuration: k8s.Configuration) -> ssl.SSLContext:
    """The CA to trust and the client certificate to show (file I/O: call it off the loop)."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.disable_strict_ssl_verification:
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


async def _answered(chunks: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    """The body; a connection lost or a read timed out on the way is `Unreachable`."""
    try:
        async for chunk in chunks:
            yield chunk
    except (OSError, TimeoutError, aiohttp.ClientError) as error:
        raise _unreachable(what, error) from error


def _unreachable(what: str, error: BaseException) -> Unreachable:
    return Unreachable(0, type(error).__name__, f"{what}: {error or 'no answer in time'}")


# Kopf's session: its DriverEndpoint watch and its handlers' patches, which come one at a time.
KOPF_CONNECTIONS = 2


async def kopf_session(configuration: k8s.Configuration) -> aiohttp.ClientSession:
    """Kopf's own HTTP/1.1 session, with a pool of `KOPF_CONNECTIONS` (Kopf's default has no
    limit: a burst of DriverEndpoint changes would open a connection per request in flight)."""
    token = await configuration.get_api_key_with_prefix("BearerToken")
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=KOPF_CONNECTIONS, ssl=await asyncio.to_thread(ssl_context, configuration)),
        headers={"Authorization": token} if token else {},
        proxy=configuration.proxy,
    )


async def connect(kubeconfig: str | None) -> Transport:
    """A transport to the API server with `load_configuration`'s credentials."""
    return await Transport.of(await load_configuration(kubeconfig))


class Kube:
    """Typed-by-Resource access to the API over one shared transport and rate limit."""

    def __init__(self, transport: Transport, *, qps: float = 50, burst: int = 100) -> None:
        self.transport = transport
        self._owns_transport = True
        self.bucket = TokenBucket(qps, burst)
        self.requests = 0  # every request made, for status and benchmarks
        # Told every object a create or patch returned (the stores keep our own writes).
        self.written: Callable[[Resource, Body], None] | None = None

    def with_budget(self, qps: float, burst: int) -> Kube:
        """The same connections and store updates, with a rate limit of its own."""
        other = Kube(self.transport, qps=qps, burst=burst)
        other.written = self.written
        other._owns_transport = False
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
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            status, raw = await self.transport.send(
                method,
                path,
                query=query or [],
                headers=headers,
                content=None if body is None else json.dumps(body).encode(),
            )
        except Unreachable:
            API_ERRORS.labels(method=method, code="0").inc()
            raise
        if 200 <= status < 300:
            return json.loads(raw) if raw else {}
        API_ERRORS.labels(method=method, code=str(status)).inc()
        raise _error(status, raw)

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
        path = resource.path(namespace=namespace)
        async with self.transport.stream(path, query=query, read_timeout=timeout + 30) as (status, chunks):
            if status >= 300:
                raise _error(status, b"".join([chunk async for chunk in chunks]))
            async for line in _lines(chunks):
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
        await faults.before_checked_write(resource.plural, key_of(namespace, name), patch)
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
        if self._owns_transport:
            await self.transport.close()


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """JSON lines of any length, however the chunks cut them."""
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
