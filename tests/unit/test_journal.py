"""The journal's batching: records group-committed, removals riding along or written late,
and a removal not yet written never taken for an orphan."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from csi_client import csi
from sidecarless.kube import Kube, NotFound, Resource
from sidecarless.provisioner import journal as journal_module
from sidecarless.provisioner.journal import JOURNAL_NAME, Entry, Journal

Body = dict[str, Any]


class ConfigMaps:
    """Stands in for the API server's ConfigMap endpoint: merge patches of `data`."""

    def __init__(self) -> None:
        self.data: dict[str, str] | None = None
        self.writes: list[dict[str, str | None]] = []

    async def patch(self, resource: Resource, name: str, patch: Body, namespace: str | None = None) -> Body:
        await asyncio.sleep(0.005)
        if self.data is None:
            raise NotFound(404, "NotFound", name)
        self.writes.append(dict(patch["data"]))
        for key, value in patch["data"].items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        return {}

    async def create(self, resource: Resource, body: Body, namespace: str | None = None) -> Body:
        await asyncio.sleep(0.005)
        self.writes.append(dict(body["data"]))
        self.data = dict(body["data"])
        return body

    async def get_or_none(self, resource: Resource, name: str, namespace: str | None = None) -> Body | None:
        if name != JOURNAL_NAME or self.data is None:
            return None  # no per-endpoint journal of an earlier version here
        return {"data": dict(self.data)}


def entry(i: int, endpoint: str = "fast") -> Entry:
    return Entry(f"pvc-{i}", endpoint, f"ns/c{i}", f"uid-{i}", csi.CreateVolumeRequest(name=f"pvc-{i}"), {}, None, 1)


def journal_on(api: ConfigMaps) -> Journal:
    fake: Kube = api  # type: ignore[assignment]
    return Journal(fake, "sidecarless")


async def test_a_burst_of_records_costs_few_writes() -> None:
    api = ConfigMaps()
    journal = journal_on(api)
    await asyncio.gather(*(journal.record(entry(i)) for i in range(50)))
    assert api.data is not None
    assert len(api.data) == 50
    assert len(api.writes) <= 3
    await journal.close()


async def test_removals_ride_with_the_next_record_or_go_late(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "REMOVAL_DELAY_SECONDS", 0.1)
    api = ConfigMaps()
    journal = journal_on(api)
    await journal.record(entry(1))
    journal.forget("pvc-1")
    await asyncio.sleep(0)
    assert len(api.writes) == 1, "a removal alone does not write at once"
    assert await journal.entries("fast") == [], "nor is its entry taken for an orphan meanwhile"
    await journal.record(entry(2))
    assert api.writes[-1] == {"pvc-1": None, "pvc-2": entry(2).encode()}
    journal.forget("pvc-2")
    await asyncio.sleep(0.3)
    assert api.data == {}
    assert len(api.writes) == 3
    await journal.close()


async def test_entries_are_each_endpoints_own() -> None:
    api = ConfigMaps()
    journal = journal_on(api)
    await journal.record(entry(1, "fast"))
    await journal.record(entry(2, "slow"))
    assert [e.volume_name for e in await journal.entries("slow")] == ["pvc-2"]
    assert journal.holds_claim("fast", "ns/c1")
    assert not journal.holds_claim("slow", "ns/c1")
    await journal.close()
