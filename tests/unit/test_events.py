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


async def test_events_are_signed_as_the_sidecar_that_would_post_them() -> None:
    api = SlowApi()
    recorder_ = recorder(api)
    resizer = recorder_.signed(events.Sources.resizer("a.csi"))
    await resizer.warning(claim("c"), "VolumeResizeFailed", "no")
    await resizer.warning(claim("c"), "VolumeResizeFailed", "no")
    await recorder_.warning(claim("c"), "VolumeResizeFailed", "no")  # the same, signed by Sidecarless itself
    await recorder_.close()
    created = [body for kind, _, body in api.calls if kind == "create"]
    assert [e["source"] for e in created] == [
        {"component": "external-resizer a.csi"},  # no host, as client-go's recorder in a sidecar
        {"component": "sidecarless", "host": "test"},
    ], "a repeat is one Event per signature"
    assert created[0]["reportingComponent"] == "external-resizer a.csi"
    assert created[0]["reportingInstance"] == "sidecarless/test", "who really posted it stays visible"
    assert [kind for kind, _, _ in api.calls].count("patch") == 1


def test_the_sidecars_components() -> None:
    sources = EventRecorder(None, component="sidecarless", instance="pod-1").sources  # type: ignore[arg-type]
    assert sources.provisioner("a.csi").startswith("a.csi_pod-1_")  # <driver>_<host>_<uuid>
    assert len(sources.provisioner("a.csi")) == len("a.csi_pod-1_") + 36
    assert events.Sources.resizer("a.csi") == "external-resizer a.csi"
    assert events.Sources.snapshotter("a.csi") == "csi-snapshotter a.csi"
    assert events.SNAPSHOT_CONTROLLER == "snapshot-controller"


def test_ten_different_messages_of_one_reason_combine_into_one() -> None:
    similar = events.SimilarEvents()
    key = ("uid", "external-resizer a.csi", "Warning", "VolumeResizeFailed")
    said = [similar.message(key, f"failed {i}", now=float(i)) for i in range(12)]
    assert said[:9] == [(f"failed {i}", False) for i in range(9)]
    assert said[9:] == [(f"(combined from similar events): failed {i}", True) for i in (9, 10, 11)]
    assert similar.message(key, "failed 0", now=12.0) == ("failed 0", False), "one of the nine known: itself"
    assert similar.message(key, "failed 99", now=12.0)[1], "a tenth new one: combined"
    assert similar.message(key, "later", now=12.0 + 601) == ("later", False), "after 10 quiet minutes: anew"
    assert similar.message(("other",), "failed 0", now=13.0) == ("failed 0", False)


def test_the_spam_filter_lets_25_through_then_one_every_5_minutes() -> None:
    spam = events.SpamFilter()
    key = ("uid", "snapshot-controller", "Warning")
    assert [spam.allow(key, now=0.0) for _ in range(26)] == [True] * 25 + [False]
    assert not spam.allow(key, now=299.0)
    assert spam.allow(key, now=301.0)
    assert not spam.allow(key, now=302.0)
    assert spam.allow(("another object",), now=302.0), "per object and component"


async def test_repeats_held_back_by_the_spam_filter_still_count() -> None:
    api = SlowApi()
    recorder_ = recorder(api)
    before = events.EVENTS_THROTTLED._value.get()
    for _ in range(30):
        await recorder_.warning(claim("c"), "ProvisioningFailed", "no")
    await recorder_.close()
    assert events.EVENTS_THROTTLED._value.get() - before == 5
    assert [kind for kind, _, _ in api.calls] == ["create"] + ["patch"] * 24
    assert api.calls[-1][2]["count"] == 25


async def test_a_first_occurrence_held_back_still_counts() -> None:
    clock = [1000.0]
    api = SlowApi()
    recorder_ = recorder(api)
    recorder_.clock = lambda: clock[0]
    for _ in range(25):  # the object's whole burst
        await recorder_.warning(claim("c"), "ProvisioningFailed", "no")
    await recorder_.flush()
    for _ in range(2):
        await recorder_.warning(claim("c"), "VolumeResizeFailed", "full")  # held back
    await recorder_.flush()
    clock[0] += 301  # one token back
    await recorder_.warning(claim("c"), "VolumeResizeFailed", "full")
    await recorder_.close()
    resize = [body for kind, _, body in api.calls if kind == "create" and body["reason"] == "VolumeResizeFailed"]
    assert len(resize) == 1
    assert resize[0]["count"] == 3, "the two held back are counted in the one posted"
