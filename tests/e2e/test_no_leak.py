"""No leaked and no duplicated volume when the operator dies between CreateVolume and the PV.

The operator is SIGKILLed by its own fault point `after-create-volume`: the driver has
made the volume, no PV records it yet. external-provisioner leaks the volume here when
the claim is deleted before it restarts (its in-flight list lives in memory only).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from csi_client import CSIClient, csi
from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from devcluster.procs import wait_until
from sidecarless.kube import CONFIGMAP, PV, PVC, Kube
from sidecarless.provisioner.journal import JOURNAL_NAME, Entry, legacy_journal_name
from tests.e2e.conftest import MOCK, claim, eventually, killed, wait_ready
from tests.e2e.test_provisioner import failed_event

pytestmark = pytest.mark.cluster


async def backend_volumes_named(address: str, name: str) -> list[str]:
    """IDs of the backend volumes the mock made for CreateVolume name `name`."""
    async with CSIClient(address) as client:
        listed = await client.list_volumes(csi.ListVolumesRequest())
    return [e.volume.volume_id for e in listed.entries if e.volume.volume_context.get("name") == name]


@pytest.fixture
async def journal_cleanup(kube: Kube) -> AsyncIterator[list[str]]:
    """Endpoints whose per-endpoint (legacy) journal a test may have left."""
    names: list[str] = []
    yield names
    for name in names:
        await kube.delete(CONFIGMAP, legacy_journal_name(name), "default")


async def journal_data(kube: Kube) -> dict[str, str]:
    journal = await kube.get_or_none(CONFIGMAP, JOURNAL_NAME, "default")
    return dict((journal or {}).get("data") or {})


async def crash_after_create_volume(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
    journal_cleanup: list[str],
) -> tuple[OperatorProcess, dict[str, Any], str]:
    faulty = exclusive(SIDECARLESS_FAULT_POINTS=f"after-create-volume@{namespace}/")
    endpoint = await make_endpoint()
    journal_cleanup.append(endpoint)
    await wait_ready(kube, endpoint)
    class_name = await make_class(endpoint, reclaimPolicy="Delete")
    created = await kube.create(PVC, claim("data", class_name), namespace)
    volume_name = f"pvc-{created['metadata']['uid']}"
    wait_until("the operator killed at after-create-volume", killed(faulty), timeout=30, watch=[])
    assert faulty.process is not None
    assert faulty.process.popen is not None
    assert faulty.process.popen.returncode == -9
    assert "fault point after-create-volume reached" in faulty.log_text()
    assert await kube.get_or_none(PV, volume_name) is None, "the crash came before the PV"
    assert len(await backend_volumes_named(cluster.driver_addresses[MOCK], volume_name)) == 1
    journal = await journal_data(kube)
    assert volume_name in journal, "the intent was recorded before the call"
    assert Entry.decode(volume_name, journal[volume_name]).endpoint == endpoint
    return faulty, created, volume_name


async def test_claim_deleted_while_the_operator_is_down_leaves_no_volume(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
    journal_cleanup: list[str],
) -> None:
    _, _, volume_name = await crash_after_create_volume(
        kube, namespace, cluster, exclusive, make_endpoint, make_class, journal_cleanup
    )
    await kube.delete(PVC, "data", namespace)
    await eventually(lambda: _gone(kube, PVC, "data", namespace), what="claim deleted", timeout=30)

    exclusive()  # a healthy operator

    address = cluster.driver_addresses[MOCK]

    async def cleaned_up() -> bool:
        volumes = await backend_volumes_named(address, volume_name)
        return not volumes and await kube.get_or_none(PV, volume_name) is None

    await eventually(cleaned_up, what="the orphaned volume deleted from the backend", timeout=90)

    async def forgotten() -> bool:
        return volume_name not in await journal_data(kube)

    await eventually(forgotten, what="journal entry removed", timeout=30)


async def test_claim_kept_binds_to_the_one_volume_after_restart(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
    journal_cleanup: list[str],
) -> None:
    _, _, volume_name = await crash_after_create_volume(
        kube, namespace, cluster, exclusive, make_endpoint, make_class, journal_cleanup
    )
    exclusive()

    async def bound() -> bool:
        current = await kube.get(PVC, "data", namespace)
        return bool((current.get("status") or {}).get("phase") == "Bound")

    await eventually(bound, what="claim Bound after the restart", timeout=60)
    volumes = await backend_volumes_named(cluster.driver_addresses[MOCK], volume_name)
    assert len(volumes) == 1, "no duplicate volume in the backend"
    volume = await kube.get(PV, volume_name)
    assert volume["spec"]["csi"]["volumeHandle"] == volumes[0]

    async def forgotten() -> bool:
        return volume_name not in await journal_data(kube)

    await eventually(forgotten, what="journal entry removed", timeout=30)


async def test_an_entry_of_a_per_endpoint_journal_is_still_finished(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
    journal_cleanup: list[str],
) -> None:
    """Versions before the shared journal kept a ConfigMap per endpoint, whose entries do not
    name their endpoint: after an upgrade, such an entry is moved over and finished."""
    _, _, volume_name = await crash_after_create_volume(
        kube, namespace, cluster, exclusive, make_endpoint, make_class, journal_cleanup
    )
    endpoint = journal_cleanup[0]
    text = (await journal_data(kube))[volume_name]
    old_text = json.dumps({k: v for k, v in json.loads(text).items() if k != "endpoint"})
    legacy = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": legacy_journal_name(endpoint)}}
    await kube.create(CONFIGMAP, {**legacy, "data": {volume_name: old_text}}, "default")
    await kube.patch(CONFIGMAP, JOURNAL_NAME, {"data": {volume_name: None}}, "default")
    await kube.delete(PVC, "data", namespace)
    await eventually(lambda: _gone(kube, PVC, "data", namespace), what="claim deleted", timeout=30)

    exclusive()

    async def cleaned_up() -> bool:
        volumes = await backend_volumes_named(cluster.driver_addresses[MOCK], volume_name)
        return not volumes and await kube.get_or_none(PV, volume_name) is None

    await eventually(cleaned_up, what="the orphaned volume of the old journal deleted", timeout=90)
    assert await kube.get_or_none(CONFIGMAP, legacy_journal_name(endpoint), "default") is None


async def _gone(kube: Kube, resource: Any, name: str, namespace: str) -> bool:
    return await kube.get_or_none(resource, name, namespace) is None


async def test_journal_that_cannot_be_written_is_reported_and_nothing_is_created(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    exclusive(SIDECARLESS_NAMESPACE="no-such-namespace")
    _, class_name = await routed_class()
    created = await kube.create(PVC, claim("unjournaled", class_name), namespace)
    message = await failed_event(kube, namespace, "unjournaled", contains="could not record the provisioning intent")
    assert f"no-such-namespace/{JOURNAL_NAME} " in message
    assert not await backend_volumes_named(cluster.driver_addresses[MOCK], f"pvc-{created['metadata']['uid']}")
