"""The operator's HTTP/2 transport against a real kube-apiserver: many watches and a burst
of requests on one connection, a body larger than a stream's window, a watch given up, the
connection lost and opened again, and the HTTP/1.1 fallback.

httpx (httpcore) was tried first: with three idle watches open, a new request on the same
connection never got its answer read. The first test is that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import pytest

from bench.proc import connections_to
from devcluster import LocalCluster
from sidecarless import http2
from sidecarless.kube import CONFIGMAP, NAMESPACE, PV, Kube, Transport, Unreachable
from tests.cluster.test_harness import eventually

pytestmark = pytest.mark.cluster

Body = dict[str, Any]
WATCHES = 14  # as many as the operator's informers


def configmap(name: str, size: int = 10) -> Body:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"blob": "x" * size}}


@contextlib.asynccontextmanager
async def idle_watches(kube: Kube, count: int) -> AsyncIterator[list[list[str]]]:
    """`count` watches of PersistentVolumes (none change): what each saw, by event type."""
    version = (await kube.request("GET", PV.path()))["metadata"]["resourceVersion"]
    seen: list[list[str]] = [[] for _ in range(count)]

    async def follow(index: int) -> None:
        async for kind, _ in kube.watch(PV, version, timeout=120):
            seen[index].append(kind)

    tasks = [asyncio.create_task(follow(i)) for i in range(count)]
    await asyncio.sleep(0.5)
    try:
        yield seen
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_requests_are_answered_beside_idle_watches_on_one_connection(
    kube: Kube, cluster: LocalCluster, namespace: str
) -> None:
    port = int(urlparse(cluster.server).port or 443)
    harness = connections_to(os.getpid(), port)  # the test's own client's, opened by the fixtures
    async with idle_watches(kube, WATCHES):
        name = f"cm-{uuid.uuid4().hex[:6]}"
        async with asyncio.timeout(10):
            await kube.create(CONFIGMAP, configmap(name), namespace)
            await kube.patch(CONFIGMAP, name, {"data": {"more": "yes"}}, namespace)
            listed = await asyncio.gather(*(kube.list(CONFIGMAP, namespace) for _ in range(100)))
        assert all(name in {c["metadata"]["name"] for c in items} for items in listed)
        ours = connections_to(os.getpid(), port) - harness
        assert ours <= 1, f"the watches and 100 requests share one connection, not {ours}"
    assert kube.transport.http_version == "HTTP/2"


async def test_a_body_larger_than_a_streams_window_both_ways(kube: Kube, namespace: str) -> None:
    """1 MiB up (the server's 64 KiB initial window) and down, while a watch streams it too."""
    name = f"big-{uuid.uuid4().hex[:6]}"
    size = 1024 * 1024
    version = (await kube.request("GET", CONFIGMAP.path(namespace=namespace)))["metadata"]["resourceVersion"]
    watched: list[int] = []

    async def follow() -> None:
        async for kind, body in kube.watch(CONFIGMAP, version, namespace=namespace, timeout=60):
            if kind == "ADDED" and body["metadata"]["name"] == name:
                watched.append(len(body["data"]["blob"]))
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    created = await kube.create(CONFIGMAP, configmap(name, size), namespace)
    assert len(created["data"]["blob"]) == size
    assert len((await kube.get(CONFIGMAP, name, namespace))["data"]["blob"]) == size
    await asyncio.wait_for(follower, 10)
    assert watched == [size]


async def test_a_watch_given_up_leaves_the_connection_serving(kube: Kube, namespace: str) -> None:
    for _ in range(20):  # more than a stream's worth of cancelled watches in flight would show
        async with idle_watches(kube, 5):
            pass
    async with asyncio.timeout(10):
        assert await kube.list(CONFIGMAP, namespace) is not None
    connection = kube.transport._connection
    assert connection is not None
    await eventually(lambda: connection.open_streams == 0, what="the cancelled streams forgotten")


async def test_a_lost_connection_fails_its_streams_and_the_next_request_reconnects(kube: Kube) -> None:
    version = (await kube.request("GET", NAMESPACE.path()))["metadata"]["resourceVersion"]
    first = kube.transport._connection
    assert first is not None

    async def follow() -> None:
        async for _ in kube.watch(NAMESPACE, version, timeout=120):
            pass

    watches = [asyncio.create_task(follow()) for _ in range(3)]
    await asyncio.sleep(0.5)
    first._writer.transport.abort()  # as a reset from the network would
    outcomes = await asyncio.wait_for(asyncio.gather(*watches, return_exceptions=True), 10)
    assert all(isinstance(outcome, Unreachable) for outcome in outcomes), outcomes
    assert not first.usable
    assert await kube.list(NAMESPACE), "a new connection answers"
    assert kube.transport._connection is not first


async def test_a_get_on_a_connection_lost_unnoticed_is_asked_again_and_a_write_is_not(
    kube: Kube, namespace: str
) -> None:
    """The API server restarted while the connection sat idle: the next GET goes out on the
    dead connection before its reader has seen the loss, and is asked again on a new one."""
    await kube.list(NAMESPACE)
    first = kube.transport._connection
    assert first is not None
    first._writer.transport.abort()  # no await in between: nothing has read the loss yet
    assert await kube.list(NAMESPACE)
    second = kube.transport._connection
    assert second is not None
    assert second is not first
    second._writer.transport.abort()
    with pytest.raises(Unreachable):  # a write may have been done: the caller decides
        await kube.create(CONFIGMAP, configmap(f"cm-{uuid.uuid4().hex[:6]}"), namespace)
    assert await kube.list(CONFIGMAP, namespace) is not None


async def test_a_server_without_http2_is_spoken_to_over_http1(
    cluster: LocalCluster, kube: Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback path (a server or proxy that picks HTTP/1.1) works for requests and watches."""

    async def refuse(*_: Any, **__: Any) -> http2.Connection:
        raise http2.NotOffered("this server does not offer HTTP/2")

    monkeypatch.setattr(http2.Connection, "open", refuse)
    old = Kube(await Transport.of(kube.transport.configuration), qps=0)
    try:
        assert await old.list(NAMESPACE)
        assert old.transport.http_version == "HTTP/1.1"
        version = (await old.request("GET", NAMESPACE.path()))["metadata"]["resourceVersion"]
        kinds = [kind async for kind, _ in old.watch(NAMESPACE, version, timeout=1)]
        assert all(kind == "BOOKMARK" for kind in kinds)
    finally:
        await old.close()
