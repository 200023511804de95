"""Cloning a claim: the checks a user sees, and the source's cloning-protection finalizer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sidecarless.kube import PV, PVC, Kube
from tests.e2e.conftest import claim, eventually, wait_ready
from tests.e2e.test_provisioner import bound_claim, failed_event

pytestmark = pytest.mark.cluster

PROTECTION = "provisioner.storage.kubernetes.io/cloning-protection"


def clone_of(name: str, source: str, class_name: str, size: str = "1Gi", **spec: Any) -> dict[str, Any]:
    body = claim(name, class_name, size, **spec)
    body["spec"]["dataSource"] = {"kind": "PersistentVolumeClaim", "name": source}
    return body


async def test_clone_and_protection_finalizer(
    kube: Kube,
    namespace: str,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class()
    await kube.create(PVC, claim("origin", class_name), namespace)
    origin = await bound_claim(kube, namespace, "origin")
    origin_volume = await kube.get(PV, origin["spec"]["volumeName"])

    await kube.create(PVC, clone_of("copy", "origin", class_name, "2Gi"), namespace)
    copy = await bound_claim(kube, namespace, "copy")
    volume = await kube.get(PV, copy["spec"]["volumeName"])
    assert volume["spec"]["csi"]["volumeHandle"] != origin_volume["spec"]["csi"]["volumeHandle"]
    assert volume["spec"]["capacity"] == {"storage": "2Gi"}

    # As external-provisioner: a living source keeps the finalizer; deleting it removes it
    # (no clone is pending any more), and the source goes.
    assert PROTECTION in (await kube.get(PVC, "origin", namespace))["metadata"]["finalizers"]
    await kube.delete(PVC, "origin", namespace)

    async def gone() -> bool:
        return await kube.get_or_none(PVC, "origin", namespace) is None

    await eventually(gone, what="the source deleted once its clone is bound", timeout=30)


async def test_clone_refusals(
    kube: Kube,
    namespace: str,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class()
    await kube.create(PVC, claim("big", class_name, "2Gi"), namespace)
    await bound_claim(kube, namespace, "big")

    await kube.create(PVC, clone_of("smaller", "big", class_name, "1Gi"), namespace)
    await failed_event(kube, namespace, "smaller", contains="at least the size of its source")

    await kube.create(PVC, clone_of("from-nothing", "no-such-claim", class_name), namespace)
    await failed_event(kube, namespace, "from-nothing", contains="no-such-claim not found")

    await kube.create(PVC, clone_of("as-block", "big", class_name, "2Gi", volumeMode="Block"), namespace)
    await failed_event(kube, namespace, "as-block", contains="same volume mode")
    current = await kube.get(PVC, "big", namespace)
    assert PROTECTION not in (current["metadata"].get("finalizers") or []), "refused clones never protect the source"


async def test_clone_of_another_drivers_volume_is_refused(
    kube: Kube,
    namespace: str,
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    other = await make_endpoint("mock-noattach.csi.sidecarless.dev")
    await wait_ready(kube, other)
    other_class = await make_class(other, provisioner="mock-noattach.csi.sidecarless.dev")
    await kube.create(PVC, claim("foreign", other_class), namespace)
    await bound_claim(kube, namespace, "foreign")
    _, class_name = await routed_class()
    await kube.create(PVC, clone_of("cross", "foreign", class_name), namespace)
    await failed_event(kube, namespace, "cross", contains="same driver")


async def test_source_is_protected_while_a_clone_is_pending(
    kube: Kube,
    namespace: str,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    _, class_name = await routed_class()
    await kube.create(PVC, claim("guarded", class_name), namespace)
    await bound_claim(kube, namespace, "guarded")
    # The driver refuses this size, so the clone stays pending after passing every clone check.
    await kube.create(PVC, clone_of("stuck", "guarded", class_name, "4Ei"), namespace)
    await failed_event(kube, namespace, "stuck", contains="code = OutOfRange")
    current = await kube.get(PVC, "guarded", namespace)
    assert PROTECTION in current["metadata"]["finalizers"]

    # Deleted while the clone is pending: the source stays (Terminating) until it is not.
    await kube.delete(PVC, "guarded", namespace)
    await asyncio.sleep(2)
    current = await kube.get(PVC, "guarded", namespace)
    assert current["metadata"].get("deletionTimestamp")
    assert PROTECTION in current["metadata"]["finalizers"]
    await kube.delete(PVC, "stuck", namespace)

    async def gone() -> bool:
        return await kube.get_or_none(PVC, "guarded", namespace) is None

    await eventually(gone, what="the source deleted once no clone is pending", timeout=30)
