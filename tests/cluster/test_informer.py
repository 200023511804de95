"""The informer against a real kube-apiserver: a kind served late, an expired watch, ghosts.

Each test defines its own cluster-scoped custom resource, so what the informer sees is
only what the test made; the API server's watch cache for a CRD starts when the CRD is
created, so a watch from resourceVersion 1 is answered 410 Gone, as after etcd compaction.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecarless.informer import Informer, wait_synced
from sidecarless.kube import Gone, Kube, KubeError, NotFound, Resource
from sidecarless.store import Store
from tests.cluster.test_harness import eventually

pytestmark = pytest.mark.cluster

Body = dict[str, Any]
CRD = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)


@pytest.fixture
def widgets() -> Resource:
    group = f"w{uuid.uuid4().hex[:8]}.informer.sidecarless.dev"
    return Resource(group, "v1", "widgets", "Widget", False)


def crd(resource: Resource) -> Body:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.plural}.{resource.group}"},
        "spec": {
            "group": resource.group,
            "scope": "Cluster",
            "names": {"plural": resource.plural, "singular": "widget", "kind": resource.kind},
            "versions": [
                {
                    "name": resource.version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


@pytest.fixture
async def served(kube: Kube, widgets: Resource) -> AsyncIterator[Resource]:
    """The widgets' CRD, installed and served."""
    await install(kube, widgets)
    yield widgets
    await kube.delete(CRD, f"{widgets.plural}.{widgets.group}")


async def install(kube: Kube, resource: Resource) -> None:
    await kube.create(CRD, crd(resource))

    async def listable() -> bool:
        try:
            await kube.list(resource)
        except NotFound:
            return False
        except KubeError as error:
            if error.status == 429:  # "storage is (re)initializing": its watch cache is starting
                return False
            raise
        return True

    await eventually(listable, what=f"{resource.plural} served")


async def make(kube: Kube, resource: Resource, name: str) -> Body:
    return await kube.create(
        resource, {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": {"name": name}}
    )


class Recorder:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.events: list[tuple[str | None, str]] = []

    def __call__(self, kind: str | None, body: Body) -> None:
        self.store.apply_event(kind, body)
        self.events.append((kind, body["metadata"]["name"]))

    def names(self) -> set[str]:
        return {body["metadata"]["name"] for body in self.store.values()}


async def test_a_kind_installed_later_is_watched_once_it_is_served(kube: Kube, widgets: Resource) -> None:
    recorder = Recorder(Store(widgets.kind))
    informer = Informer(kube, widgets, recorder.store, recorder, absent_retry=0.5)
    informer.start()
    try:
        # Not served: synced at once (nothing to wait for), so the controllers are not held back.
        assert await wait_synced([informer], 10) == []
        await install(kube, widgets)
        await make(kube, widgets, "first")
        await eventually(lambda: recorder.names() == {"first"}, what="the widget listed")
        await make(kube, widgets, "second")
        await kube.delete(widgets, "first")
        await eventually(lambda: recorder.names() == {"second"}, what="the changes watched")
        assert ("DELETED", "first") in recorder.events
    finally:
        await informer.stop()
        await kube.delete(CRD, f"{widgets.plural}.{widgets.group}")


async def test_an_expired_watch_lists_again_and_drops_what_vanished(kube: Kube, served: Resource) -> None:
    await make(kube, served, "kept")
    await make(kube, served, "doomed")
    recorder = Recorder(Store(served.kind))
    informer = Informer(kube, served, recorder.store, recorder)
    informer.start()
    await wait_synced([informer], 10)
    assert recorder.names() == {"kept", "doomed"}
    await informer.stop()

    # While nobody watched: one deleted, one created; and the version to resume from expired.
    await kube.delete(served, "doomed")
    await make(kube, served, "new")
    with pytest.raises(Gone):
        async for _ in kube.watch(served, "1", timeout=5):
            pass
    informer.version = "1"
    informer.start()
    try:
        await eventually(lambda: recorder.names() == {"kept", "new"}, what="the listing after 410 Gone")
        assert ("DELETED", "doomed") in recorder.events
        await make(kube, served, "later")  # and it watches again after listing
        await eventually(lambda: "later" in recorder.names(), what="the watch resumed")
    finally:
        await informer.stop()


async def test_a_failing_handler_does_not_end_the_watch(kube: Kube, served: Resource) -> None:
    store = Store(served.kind)
    seen: list[str] = []

    def fragile(kind: str | None, body: Body) -> None:
        store.apply_event(kind, body)
        seen.append(body["metadata"]["name"])
        if body["metadata"]["name"] == "poison":
            raise RuntimeError("a bug in a handler")

    informer = Informer(kube, served, store, fragile)
    informer.start()
    try:
        await wait_synced([informer], 10)
        await make(kube, served, "poison")
        await make(kube, served, "after")
        await eventually(lambda: "after" in seen, what="the event after the failing one")
        await asyncio.sleep(0.2)
        assert seen.count("poison") == 1
    finally:
        await informer.stop()
