"""The one driver-operation path every controller shares: routing rules, the gate, the secret
policy, the call (crash points, counts) and each key's retries on its endpoint's schedule."""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from csi_client import CSIClient, DriverInfo, csi
from sidecarless import faults, routing
from sidecarless import kube as k
from sidecarless.credentials import MISSING, credentials, volume_secret
from sidecarless.endpoints.spec import ACTIVE, NODE_ONLY, UNSUPPORTED, parse_spec
from sidecarless.store import Stores
from sidecarless.vocabulary import ParameterError, SecretRef
from sidecarless.workqueue import Requeue
from tests.unit.fakeworld import World, attachment, bound_pair, bound_volume_on_a_node, simulate, storage_class

Body = dict[str, Any]
DRIVERS = {"ep-a": "a.csi", "ep-b": "b.csi", "ep-b2": "b.csi"}


# --- routing -------------------------------------------------------------------------


def stores_with(*objects: tuple[str, Body]) -> Stores:
    stores = Stores()
    for kind, body in objects:
        stores.by_kind[kind].apply_event(None, body)
    return stores


def a_class(name: str, endpoint: str | None) -> Body:
    annotations = {"sidecarless.io/endpoint": endpoint} if endpoint else {}
    return {"metadata": {"name": name, "annotations": annotations}}


def a_volume(name: str, driver: str, class_name: str = "fast", handle: str = "") -> Body:
    return {
        "metadata": {"name": name},
        "spec": {"storageClassName": class_name, "csi": {"driver": driver, "volumeHandle": handle or f"h-{name}"}},
    }


def test_a_volume_routes_through_its_class_only_to_an_endpoint_of_its_driver() -> None:
    stores = stores_with(("StorageClass", a_class("fast", "ep-a")), ("StorageClass", a_class("plain", None)))
    assert routing.volume_endpoint(stores, DRIVERS, a_volume("pv", "a.csi")) == "ep-a"
    assert routing.volume_endpoint(stores, DRIVERS, a_volume("pv", "b.csi")) is None, "the endpoint serves another"
    assert routing.volume_endpoint(stores, DRIVERS, a_volume("pv", "a.csi", "plain")) is None, "the sidecars'"
    assert routing.volume_endpoint(stores, {}, a_volume("pv", "a.csi")) is None, "no such endpoint"


def test_a_volume_whose_class_is_gone_is_deleted_by_the_one_endpoint_of_its_driver() -> None:
    stores = stores_with(("StorageClass", a_class("fast", "ep-a")))
    assert routing.deleting_endpoint(stores, DRIVERS, a_volume("pv", "a.csi", "gone")) == "ep-a"
    assert routing.deleting_endpoint(stores, DRIVERS, a_volume("pv", "b.csi", "gone")) is None, "two serve b.csi"
    assert routing.deleting_endpoint(stores, DRIVERS, a_volume("pv", "a.csi")) == "ep-a"


def test_an_attachment_follows_its_volume_else_its_attachers_driver() -> None:
    stores = stores_with(("StorageClass", a_class("fast", "ep-a")), ("StorageClass", a_class("plain", None)))
    va = {"metadata": {"name": "va"}, "spec": {"attacher": "a.csi"}}
    assert routing.attachment_endpoint(stores, DRIVERS, va, a_volume("pv", "a.csi")) == "ep-a"
    assert routing.attachment_endpoint(stores, DRIVERS, va, None) == "ep-a", "PV not seen yet: by driver"
    assert routing.attachment_endpoint(stores, DRIVERS, va, a_volume("pv", "a.csi", "plain")) is None


def test_a_content_routes_by_its_class_else_its_source_volume() -> None:
    snapshot_class = {"metadata": {"name": "snaps", "annotations": {"sidecarless.io/endpoint": "ep-b"}}}
    stores = stores_with(
        ("StorageClass", a_class("fast", "ep-a")),
        ("VolumeSnapshotClass", snapshot_class),
        ("PersistentVolume", a_volume("pv", "a.csi", handle="h1")),
    )
    by_class = {"metadata": {"name": "c1"}, "spec": {"driver": "b.csi", "volumeSnapshotClassName": "snaps"}}
    by_volume = {"metadata": {"name": "c2"}, "spec": {"driver": "a.csi", "source": {"volumeHandle": "h1"}}}
    unknown = {"metadata": {"name": "c3"}, "spec": {"driver": "a.csi", "source": {"volumeHandle": "h9"}}}
    assert routing.content_endpoint(stores, DRIVERS, by_class) == "ep-b"
    assert routing.content_endpoint(stores, DRIVERS, by_volume) == "ep-a"
    assert routing.content_endpoint(stores, DRIVERS, unknown) is None
    assert routing.awaits_volume(stores, DRIVERS, "a.csi", "h9"), "served driver, PV not seen yet: retry"
    assert not routing.awaits_volume(stores, DRIVERS, "x.csi", "h9"), "a driver nobody here serves"
    assert routing.group_content_endpoint(stores, DRIVERS, None, ["h1"], "a.csi") == "ep-a"
    assert routing.group_content_endpoint(stores, DRIVERS, a_class("g", "ep-b"), ["h1"], "a.csi") is None


# --- the gate --------------------------------------------------------------------------


class Probed:
    """Just what `Endpoint.admits` reads: the spec, what discovery learnt, whether it serves."""

    def __init__(self, controller: set[str], *, serving: bool = True, **spec: Any) -> None:
        from sidecarless.endpoints.live import Endpoint  # noqa: PLC0415

        self.endpoint = Endpoint(
            parse_spec("ep", {"driverName": "a.csi", "address": "unix:///x.sock", **spec}),
            client=object(),  # type: ignore[arg-type]
        )
        self.endpoint.info = DriverInfo(
            name="a.csi",
            vendor_version="1",
            plugin=frozenset({"CONTROLLER_SERVICE"}),
            controller=frozenset(controller),
            node=frozenset({"EXPAND_VOLUME"}),
            group_controller=frozenset(),
        )
        self.endpoint.problem = None if serving else ("Unreachable", "down")


@pytest.mark.parametrize(
    ("controller", "offered", "states", "spec", "admitted"),
    [
        ("attacher", {"PUBLISH_UNPUBLISH_VOLUME"}, (), {}, ACTIVE),
        ("attacher", set(), (), {}, None),
        ("attacher", set(), (ACTIVE, UNSUPPORTED), {}, UNSUPPORTED),
        ("attacher", {"PUBLISH_UNPUBLISH_VOLUME"}, (), {"controllers": {"attacher": False}}, None),
        ("resizer", set(), (ACTIVE, NODE_ONLY), {}, NODE_ONLY),
        ("modifier", {"MODIFY_VOLUME"}, (), {"controllers": {"resizer": False}}, None),
        ("group-snapshotter", {"CREATE_DELETE_SNAPSHOT"}, (), {}, None),
    ],
)
def test_the_gate(controller: str, offered: set[str], states: tuple[str, ...], spec: Body, admitted: str) -> None:
    assert Probed(offered, **spec).endpoint.admits(controller, *states) == admitted


def test_the_gate_holds_work_while_the_endpoint_does_not_serve() -> None:
    endpoint = Probed({"PUBLISH_UNPUBLISH_VOLUME"}, serving=False).endpoint
    with pytest.raises(Requeue, match="not serving"):
        endpoint.admits("attacher")
    assert endpoint.admits("resizer") is None, "nothing to do there: no need to wait for it"


# --- the secret policy -----------------------------------------------------------------


class Secrets:
    def __init__(self, **known: dict[str, str]) -> None:
        self.known = known

    async def secret_strings(self, name: str, namespace: str) -> dict[str, str] | None:
        return self.known.get(f"{namespace}/{name}")


async def test_the_secret_policy() -> None:
    kube = Secrets(**{"ns/s": {"k": "v"}})
    assert await credentials(kube, None) == {}
    assert await credentials(kube, SecretRef("s", "ns")) == {"k": "v"}
    with pytest.raises(ParameterError, match=r"^error getting secret gone in namespace ns: not found$"):
        await credentials(kube, SecretRef("gone", "ns"))
    with pytest.raises(ParameterError, match=r"^no gone$"):
        await credentials(kube, SecretRef("gone", "ns"), "no {name}")
    assert MISSING.format(name="a", namespace="b") == "error getting secret a in namespace b: not found"
    volume = {"spec": {"csi": {"controllerPublishSecretRef": {"name": "s", "namespace": "ns"}}}}
    assert volume_secret(volume, "controllerPublishSecretRef") == SecretRef("s", "ns")
    assert volume_secret(volume, "controllerExpandSecretRef") is None


@pytest.mark.parametrize("secret_exists", [True, False])
async def test_a_publish_secret_goes_with_the_call_and_a_missing_one_is_the_attach_error(
    secret_exists: bool,
) -> None:
    world = World()
    try:
        await world.endpoint("ep")
        bound_volume_on_a_node(world)
        _, pv = bound_pair("data", "pv-1", controllerPublishSecretRef={"name": "publish", "namespace": "default"})
        world.api.objects["persistentvolumes"].clear()
        world.context.stores.volumes.apply_event("DELETED", pv)
        world.api.put(k.PV, pv)
        if secret_exists:
            secret = {"metadata": {"name": "publish", "namespace": "default"}}
            world.api.put(k.SECRET, {**secret, "data": {"token": base64.b64encode(b"s3cret").decode()}})
        world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
        await asyncio.sleep(0)
        try:
            await world.controllers.attacher.sync_attachment("va-1")
            outcome: Exception | None = None
        except Exception as error:  # what the work queue retries on
            outcome = error
        await asyncio.sleep(0)
        calls = world.driver().calls_of("ControllerPublishVolume")
        status = world.stored(k.VOLUME_ATTACHMENT, "va-1").get("status") or {}
        if secret_exists:
            assert outcome is None
            assert isinstance(calls[0].request, csi.ControllerPublishVolumeRequest)
            assert dict(calls[0].request.secrets) == {"token": "s3cret"}
            assert status.get("attached") is True
        else:
            # external-attacher saves the credentials error as the attachment's attachError.
            assert isinstance(outcome, Requeue)
            assert calls == []
            message = status["attachError"]["message"]
            assert message == "error getting secret publish in namespace default: not found"
    finally:
        await world.stop()


# --- the call --------------------------------------------------------------------------


async def test_the_call_counts_successes_and_passes_its_named_crash_points(monkeypatch: pytest.MonkeyPatch) -> None:
    reached: list[tuple[str, str]] = []
    monkeypatch.setattr(faults, "reached", lambda point, obj: reached.append((point, obj)))
    world = World()
    try:
        endpoint = await world.endpoint("ep")
        world.driver().answer(
            "ControllerPublishVolume", csi.ControllerPublishVolumeResponse(), grpc.StatusCode.INTERNAL
        )
        request = csi.ControllerPublishVolumeRequest(volume_id="v", node_id="n")
        rpc = CSIClient.controller_publish_volume
        await endpoint.call(
            rpc, request, operation="ControllerPublishVolume", obj="va", fault_key="va/pv", counts="attaches"
        )
        with pytest.raises(Exception, match="Internal"):
            await endpoint.call(
                rpc, request, operation="ControllerPublishVolume", obj="va", fault_key="va/pv", counts="attaches"
            )
        await endpoint.call(
            CSIClient.list_volumes, csi.ListVolumesRequest(), operation="ListVolumes", obj="", fault_key="x"
        )
        assert endpoint.operations == {"attaches": 1}, "only the success counts"
        assert endpoint.failures == 1
        assert endpoint.last_error is not None
        assert endpoint.last_error.object == "va"
        assert reached == [
            ("before-controller-publish", "va/pv"),
            ("after-controller-publish", "va/pv"),
            ("before-controller-publish", "va/pv"),  # no after- for a failed call
        ], "reads (ListVolumes) have no named points"
    finally:
        await world.stop()


# --- retries on the endpoint's own schedule ----------------------------------------------

SLOW_RETRY = {"initialDelay": "20s", "maxDelay": "20s"}  # at 0, ~20, ~40, ~60 s: at most 4 in a minute
# The default schedule (1 s doubling) fails at 0, 1, 3, 7, 15, 31 s: 6 in a minute.


async def failing_publish(world: World) -> str:
    world.driver().answer("ControllerPublishVolume", grpc.StatusCode.INTERNAL)
    bound_volume_on_a_node(world)
    world.api.put(k.VOLUME_ATTACHMENT, attachment("va-1", "pv-1"))
    return "ControllerPublishVolume"


async def failing_expansion(world: World) -> str:
    world.driver().answer("ControllerExpandVolume", grpc.StatusCode.INTERNAL)
    bound_volume_on_a_node(world)
    await world.settle()
    world.api.edit(k.PVC, "default/data", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}})
    return "ControllerExpandVolume"


async def failing_provisioning(world: World) -> str:
    world.driver().answer("CreateVolume", grpc.StatusCode.INTERNAL)
    world.api.put(k.STORAGE_CLASS, storage_class("fast"))
    claim, _ = bound_pair("data", "pv-1")
    claim["spec"].pop("volumeName")
    claim["status"] = {"phase": "Pending"}
    claim["metadata"]["annotations"] = {"volume.kubernetes.io/storage-provisioner": "fake.csi.example.com"}
    world.api.put(k.PVC, claim)
    return "CreateVolume"


async def failing_deletion(world: World) -> str:
    world.driver().answer("DeleteVolume", grpc.StatusCode.INTERNAL)
    world.api.put(k.STORAGE_CLASS, storage_class("fast"))
    _, pv = bound_pair("data", "pv-1")
    pv["metadata"]["finalizers"] = ["external-provisioner.volume.kubernetes.io/finalizer"]
    pv["status"] = {"phase": "Released"}
    world.api.put(k.PV, pv)
    return "DeleteVolume"


@pytest.mark.parametrize("scenario", [failing_publish, failing_expansion, failing_provisioning, failing_deletion])
@pytest.mark.parametrize("retry", [SLOW_RETRY, None], ids=["spec.retry", "default"])
def test_each_controller_retries_on_its_endpoints_schedule(
    scenario: Callable[[World], Awaitable[str]], retry: Body | None
) -> None:
    async def main() -> list[float]:
        world = World()
        try:
            if retry:
                await world.endpoint("ep", retry=retry)
            else:
                await world.endpoint("ep")
            world.start()
            operation = await scenario(world)
            await asyncio.sleep(61)
            return [c.at for c in world.driver().calls_of(operation)]
        finally:
            await world.stop()

    times = simulate(main)
    if retry:
        assert 3 <= len(times) <= 4, times
        assert all(later - earlier >= 17 for earlier, later in itertools.pairwise(times)), times
    else:
        assert len(times) >= 5, times


def test_what_an_endpoint_serves_is_what_holds_its_deletion() -> None:
    attached = {
        "metadata": {"name": "va"},
        "spec": {"attacher": "a.csi", "source": {"persistentVolumeName": "pv"}},
        "status": {"attached": True},
    }
    content = {
        "metadata": {"name": "c"},
        "spec": {"source": {"volumeHandle": "h-pv"}},
        "status": {"snapshotHandle": "s"},
    }
    group = {
        "metadata": {"name": "g"},
        "spec": {"source": {"volumeHandles": ["h-pv", "h-elsewhere"]}},
        "status": {"volumeGroupSnapshotHandle": "gs"},
    }
    group_of_a_class = {
        "metadata": {"name": "g2"},
        "spec": {"source": {"volumeHandles": ["h-elsewhere"]}, "volumeGroupSnapshotClassName": "groups"},
        "status": {"volumeGroupSnapshotHandle": "gs2"},
    }
    not_made_yet = {"metadata": {"name": "g3"}, "spec": {"source": {"volumeHandles": ["h-pv"]}}, "status": {}}
    stores = stores_with(
        ("StorageClass", a_class("fast", "ep-a")),
        ("PersistentVolume", a_volume("pv", "a.csi")),
        ("PersistentVolume", a_volume("other", "a.csi", "plain")),
        ("VolumeAttachment", attached),
        ("VolumeSnapshotContent", content),
        ("VolumeGroupSnapshotClass", a_class("groups", "ep-a")),
        ("VolumeGroupSnapshotContent", group),
        ("VolumeGroupSnapshotContent", group_of_a_class),
        ("VolumeGroupSnapshotContent", not_made_yet),
    )
    assert routing.served_by(stores, "ep-a") == {"volumes": 1, "attachments": 1, "snapshots": 1, "groupSnapshots": 2}
    assert routing.served_by(stores, "ep-b") == {"volumes": 0, "attachments": 0, "snapshots": 0, "groupSnapshots": 0}
