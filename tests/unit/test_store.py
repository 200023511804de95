"""The store: watch events, our own writes, and which of two copies is newer."""

from __future__ import annotations

from typing import Any

from sidecarless.kube import PV, PVC
from sidecarless.store import Store, Stores


def claim(version: str, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "data", "namespace": "ns", "resourceVersion": version, "managedFields": [{}], **meta}}


def test_events_and_writes_keep_the_newest_copy() -> None:
    store = Store("PersistentVolumeClaim")
    store.apply_event(None, claim("10"))
    store.remember(claim("12", finalizers=["ours"]))
    assert store.get("ns/data") == {
        "metadata": {"name": "data", "namespace": "ns", "resourceVersion": "12", "finalizers": ["ours"]}
    }
    # The watch is behind our write: its older copy must not replace the one we wrote.
    store.apply_event("MODIFIED", claim("11"))
    assert store.get("ns/data")["metadata"]["resourceVersion"] == "12"  # type: ignore[index]
    store.apply_event("MODIFIED", claim("13"))
    assert store.get("ns/data")["metadata"]["resourceVersion"] == "13"  # type: ignore[index]
    # A late answer to an earlier write does not go back in time either.
    store.remember(claim("12"))
    assert store.get("ns/data")["metadata"]["resourceVersion"] == "13"  # type: ignore[index]


def test_a_write_never_brings_back_what_the_watch_deleted_or_never_showed() -> None:
    store = Store("PersistentVolumeClaim")
    store.remember(claim("5"))
    assert "ns/data" not in store
    store.apply_event(None, claim("5"))
    store.apply_event("DELETED", claim("7"))
    store.remember(claim("6"))
    assert "ns/data" not in store


def test_removing_the_last_finalizer_of_a_deleted_object_forgets_it() -> None:
    store = Store("PersistentVolumeClaim")
    store.apply_event(None, claim("5", deletionTimestamp="2026-01-01T00:00:00Z", finalizers=["ours"]))
    store.remember(claim("6", deletionTimestamp="2026-01-01T00:00:00Z", finalizers=[]))
    assert "ns/data" not in store


def test_non_integer_versions_are_taken_as_newer() -> None:
    store = Store("PersistentVolumeClaim")
    store.apply_event(None, claim("10"))
    store.apply_event("MODIFIED", claim("opaque"))
    assert store.get("ns/data")["metadata"]["resourceVersion"] == "opaque"  # type: ignore[index]


def test_stores_route_a_write_to_the_store_of_its_kind() -> None:
    stores = Stores()
    stores.claims.apply_event(None, claim("1"))
    stores.remember(PVC, claim("2"))
    stores.remember(PV, {"metadata": {"name": "pv", "resourceVersion": "3"}})
    assert stores.claims.get("ns/data")["metadata"]["resourceVersion"] == "2"  # type: ignore[index]
    assert "pv" not in stores.volumes


def test_an_event_changing_only_the_status_is_told_apart() -> None:
    store = Store("PersistentVolumeClaim")
    assert not store.unchanged_but_status("ADDED", claim("1"))  # nothing held yet
    store.apply_event("ADDED", claim("1"))
    with_status = {**claim("2"), "status": {"phase": "Bound"}}
    assert store.unchanged_but_status("MODIFIED", with_status)
    assert not store.unchanged_but_status("MODIFIED", claim("2", finalizers=["someone's"]))
    assert not store.unchanged_but_status("MODIFIED", claim("2", deletionTimestamp="2026-01-01T00:00:00Z"))
    assert not store.unchanged_but_status("MODIFIED", {**claim("2"), "spec": {"volumeName": "pv"}})
    assert not store.unchanged_but_status("DELETED", claim("2"))
    # Our own write, remembered before its watch event: the event brings nothing new.
    store.remember(claim("3", finalizers=["ours"]))
    assert store.unchanged_but_status("MODIFIED", claim("3", finalizers=["ours"]))
    assert store.unchanged_but_status("MODIFIED", claim("2"))  # older than the copy held
