"""The event recorder queues and returns at once; posters keep each object's order, aggregate
repeats, and drop (and count) what does not fit the queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecarless import events
from sidecarless.events import EventRecorder
from sidecarless.kube import Kube, Resource

Body = dict[str, Any]


class SlowApi:
    """Stands in for the API server's Event endpoint: answers after a delay, remembers calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Body]] = []

    async def create(self, resource: Resource, body: Body, namespace: str | None = None) -> Body:
        await asyncio.sleep(0.01)
        self.calls.append(("create", body["involvedObject"]["name"], body))
        return body

    async def patch(self, resource: Resource, name: str, patch: Any, namespace: str | None = None) -> Body:
        await asyncio.sleep(0.01)
        self.calls.append(("patch", name, patch))
        return {}


def claim(name: str) -> Body:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
    }


def recorder(api: SlowApi) -> EventRecorder:
    fake: Kube = api  # type: ignore[assignment]
    return EventRecorder(fake, component="sidecarless", instance="test")


async def test_recording_returns_before_posting_and_keeps_each_objects_order() -> None:
    api = SlowApi()
    recorder_ = recorder(api)
    for i in range(20):
        await recorder_.normal(claim(f"c{i % 4}"), "Step", f"step {i // 4}")
    assert api.calls == [], "nothing was posted while the caller ran"
    await recorder_.flush()
    assert len(api.calls) == 20
    for name in ("c0", "c1", "c2", "c3"):
        steps = [body["message"] for kind, n, body in api.calls if n == name]
        assert steps == [f"step {i}" for i in range(5)]
    await recorder_.close()


async def test_a_repeat_updates_the_first_event() -> None:
    api = SlowApi()
    recorder_ = recorder(api)
    for _ in range(3):
        await recorder_.warning(claim("c"), "ProvisioningFailed", "no")
    await recorder_.close()
    assert [kind for kind, _, _ in api.calls] == ["create", "patch", "patch"]
    assert api.calls[-1][2]["count"] == 3


async def test_events_beyond_the_queue_are_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_QUEUED", 5)
    api = SlowApi()
    recorder_ = recorder(api)
    before = events.EVENTS_DROPPED._value.get()
    for i in range(8):
        await recorder_.normal(claim(f"c{i}"), "Step", "x")
    assert events.EVENTS_DROPPED._value.get() - before == 3
    await recorder_.close()
    assert len(api.calls) == 5
