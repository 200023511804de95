"""The API server misbehaving: restarted in the middle of a burst, and somebody else writing
to every object the operator works on, so that its resourceVersion-checked writes conflict."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import (
    PV,
    PVC,
    VOLUME_ATTACHMENT,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    VOLUME_SNAPSHOT_CONTENT,
    Kube,
    KubeError,
    Resource,
)
from tests.e2e.conftest import MOCK, claim, eventually, volume_attachment, volume_snapshot_class
from tests.e2e.test_provisioner import backend_volume_ids, bound_claim
from tests.e2e.test_snapshots import gone, ready_snapshot, volume_snapshot

pytestmark = pytest.mark.cluster

Routed = Callable[..., Awaitable[tuple[str, str]]]


async def no_volume_without_a_pv(kube: Kube, cluster: LocalCluster, before: set[str]) -> None:
    async def clean() -> bool:
        held = await backend_volume_ids(cluster.driver_addresses[MOCK]) - before
        handles = {v["spec"]["csi"]["volumeHandle"] for v in await kube.list(PV) if v["spec"].get("csi")}
        return not held - handles

    await eventually(clean, what="no volume without a PV", timeout=60)


async def test_api_server_restarted_during_a_burst(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Routed,
) -> None:
    if not cluster.owned:
        pytest.skip("the cluster was started elsewhere (KUBECONFIG): its API server is not ours to restart")
    operator = exclusive()
    before = await backend_volume_ids(cluster.driver_addresses[MOCK])
    _, class_name = await routed_class(reclaimPolicy="Delete")
    for i in range(20):
        await kube.create(PVC, claim(f"c{i}", class_name), namespace)
    # From this thread: a process dies with the thread that started it (PR_SET_PDEATHSIG),
    # and a worker thread's end would take the new API server with it.
    cluster.restart_apiserver(down_seconds=5)
    claims = [await bound_claim(kube, namespace, f"c{i}", timeout=120) for i in range(20)]
    # The watches came back: a claim made after the restart is provisioned too.
    await kube.create(PVC, claim("after", class_name), namespace)
    await bound_claim(kube, namespace, "after", timeout=60)
    assert operator.process is not None
    assert operator.process.popen is not None
    assert operator.process.popen.poll() is None, "the operator lived through it"
    assert len({c["spec"]["volumeName"] for c in claims}) == 20
    for name in [*(f"c{i}" for i in range(20)), "after"]:
        await kube.delete(PVC, name, namespace)
    for current in claims:
        await gone(kube, PV, current["spec"]["volumeName"])
    await no_volume_without_a_pv(kube, cluster, before)


async def scribble(kube: Kube, namespace: str, stop: asyncio.Event) -> int:
    """Touch every claim, PV, attachment, snapshot and content of the test, again and again:
    a label changes their resourceVersion, so the operator's checked writes conflict."""
    writes = 0
    while not stop.is_set():
        targets: list[tuple[Resource, str, str | None]] = [
            (PVC, c["metadata"]["name"], namespace) for c in await kube.list(PVC, namespace)
        ] + [(VOLUME_SNAPSHOT, s["metadata"]["name"], namespace) for s in await kube.list(VOLUME_SNAPSHOT, namespace)]
        targets += [
            (PV, v["metadata"]["name"], None)
            for v in await kube.list(PV)
            if (v["spec"].get("claimRef") or {}).get("namespace") == namespace
        ]
        targets += [
            (VOLUME_ATTACHMENT, a["metadata"]["name"], None)
            for a in await kube.list(VOLUME_ATTACHMENT)
            if a["metadata"]["name"].startswith(namespace)
        ]
        targets += [
            (VOLUME_SNAPSHOT_CONTENT, c["metadata"]["name"], None)
            for c in await kube.list(VOLUME_SNAPSHOT_CONTENT)
            if (c["spec"].get("volumeSnapshotRef") or {}).get("namespace") == namespace
        ]

        async def touch(resource: Resource, name: str, in_namespace: str | None, mark: str) -> int:
            with contextlib.suppress(KubeError):
                await kube.patch(resource, name, {"metadata": {"labels": {"scribble": mark}}}, in_namespace)
                return 1
            return 0

        # All at once: a round must stay shorter than the operator's delayed write, even on a busy machine.
        touched = await asyncio.gather(*(touch(*target, str(writes)) for target in targets))
        writes += sum(touched)
        await asyncio.sleep(0.01)
    return writes


async def test_every_object_changed_under_the_operator(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Routed,
    unique_name: Callable[[str], str],
) -> None:
    # Each object's first resourceVersion-checked write waits 3 s, longer than a round of the
    # scribbler, so that it conflicts whatever the machine's load: a race hoped for is not a test.
    operator = exclusive(SIDECARLESS_FAULT_CHECKED_WRITE_DELAY="3")
    before = await backend_volume_ids(cluster.driver_addresses[MOCK])
    endpoint, class_name = await routed_class(reclaimPolicy="Delete", allowVolumeExpansion=True)
    snapshot_class = unique_name("vsc")
    await kube.create(
        VOLUME_SNAPSHOT_CLASS,
        volume_snapshot_class(snapshot_class, endpoint=endpoint),
    )
    stop = asyncio.Event()
    scribbler = asyncio.create_task(scribble(kube, namespace, stop))
    try:
        for i in range(5):
            await kube.create(PVC, claim(f"c{i}", class_name), namespace)
        claims = [await bound_claim(kube, namespace, f"c{i}", timeout=90) for i in range(5)]
        attachment = f"{namespace}-va"
        await kube.create(VOLUME_ATTACHMENT, volume_attachment(attachment, MOCK, claims[0]["spec"]["volumeName"]))

        async def attached() -> bool:
            return bool(((await kube.get(VOLUME_ATTACHMENT, attachment)).get("status") or {}).get("attached"))

        await eventually(attached, what="attached", timeout=60)
        await kube.patch(PVC, "c1", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}, namespace)

        async def expanded() -> bool:
            current = await kube.get(PVC, "c1", namespace)
            return bool((current.get("status") or {}).get("capacity", {}).get("storage") == "2Gi")

        await eventually(expanded, what="expanded", timeout=60)
        await kube.create(
            VOLUME_SNAPSHOT, volume_snapshot("snap", claim_name="c2", class_name=snapshot_class), namespace
        )
        await ready_snapshot(kube, namespace, "snap")
        await kube.delete(VOLUME_SNAPSHOT, "snap", namespace)
        await gone(kube, VOLUME_SNAPSHOT, "snap", namespace)
        await kube.delete(VOLUME_ATTACHMENT, attachment)
        await gone(kube, VOLUME_ATTACHMENT, attachment)
        for i in range(5):
            await kube.delete(PVC, f"c{i}", namespace)
        for current in claims:
            await gone(kube, PV, current["spec"]["volumeName"])
    finally:
        stop.set()
        writes = await scribbler
        await kube.delete(VOLUME_SNAPSHOT_CLASS, snapshot_class)
    conflicts = sum(
        float(line.rsplit(" ", 1)[1])
        for line in operator.metrics().splitlines()
        if line.startswith("sidecarless_api_errors_total{") and 'code="409"' in line
    )
    print(f"\n{writes} writes by the scribbler; the operator's writes met {conflicts:.0f} conflicts")
    # How many writes the scribbler gets in depends on the machine's load (96 on a cold CI run
    # compiling beside it, several hundred idle); the conflicts are what the test is about.
    assert writes > 50, "the scribbler hardly ran"
    assert conflicts >= 5, "the delayed writes did not conflict: the test proves nothing"
    await no_volume_without_a_pv(kube, cluster, before)
