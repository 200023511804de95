"""A fake world for controller tests: a fake API server and a scripted CSI driver, no I/O.

external-attacher's `csi_handler_test.go` drives `syncVA` on fake clientsets; this does the
same for every controller here, through the two seams the operator already has:

- :class:`FakeKube` is a :class:`~sidecarless.kube.Kube` whose `request` (the one API
  chokepoint) is answered from memory: merge patches, resourceVersion preconditions (409),
  finalizers holding a deletion, status subresources. Every write is recorded, and its watch
  event is delivered soon after the answer (as a real watch usually is) to the same
  functions the informers call, so the stores and queues see what they would see.
- :class:`FakeDriver` is a :class:`~csi_client.CSIClient` whose `call` answers from a script
  (a response, a gRPC code, or a function) and logs every call.

:class:`World` builds the operator's controllers on both, as `handlers.startup` does.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import selectors
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from csi_client import CSIClient, TLSConfig, csi
from csi_client.client import Rpc
from csi_client.errors import error_for
from sidecarless import kube as k
from sidecarless import vocabulary, watches
from sidecarless.attacher.controller import Attacher
from sidecarless.capacity.controller import CapacityTracker
from sidecarless.config import Settings
from sidecarless.context import Context
from sidecarless.endpoints.live import Endpoint, EndpointRegistry
from sidecarless.endpoints.spec import EndpointSpec
from sidecarless.events import EventRecorder
from sidecarless.health_monitor import HealthMonitor
from sidecarless.leaks import LeakReporter
from sidecarless.provisioner.controller import Provisioner
from sidecarless.resizer.controller import Resizer
from sidecarless.snapshots.common_controller import SnapshotController
from sidecarless.snapshots.group_common_controller import GroupSnapshotController
from sidecarless.snapshots.group_sidecar_controller import GroupSnapshotter
from sidecarless.snapshots.sidecar_controller import Snapshotter
from sidecarless.store import Stores
from sidecarless.workqueue import WorkQueue

Body = dict[str, Any]
T = TypeVar("T")

_RESOURCES = {
    r.plural: r
    for r in vars(k).values()
    if isinstance(r, k.Resource)  # every kind kube.py names
}
# Kinds whose status is a subresource: a write to the object leaves the status alone, and
# a write to /status leaves everything else alone.
_STATUS_SUBRESOURCE = {
    "persistentvolumeclaims",
    "persistentvolumes",
    "volumeattachments",
    "volumesnapshots",
    "volumesnapshotcontents",
    "volumegroupsnapshots",
    "volumegroupsnapshotcontents",
    "driverendpoints",
}


@dataclass(frozen=True)
class Write:
    method: str  # POST, PATCH, DELETE
    plural: str
    key: str  # namespace/name or name
    subresource: str
    body: Any


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, plus the one strategic-merge directive the operator sends."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [item for item in result.get(name) or [] if item not in value]
        elif value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _parse(path: str) -> tuple[k.Resource, str | None, str, str]:
    """(resource, namespace, name, subresource) of an API path."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = _RESOURCES[rest[0]]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    return resource, namespace, name, subresource


def _key(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _selects(selector: str, body: Body) -> bool:
    """A label selector of `key`, `key=value` and `key!=value` terms, comma-separated."""
    labels = body["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKube(k.Kube):
    """An API server in memory behind :meth:`Kube.request`."""

    def __init__(self) -> None:
        # Not Kube.__init__: there is no transport and no rate limit to build.
        self.transport = None  # type: ignore[assignment]
        self._owns_transport = False
        self.bucket = k.TokenBucket(0, 1)
        self.requests = 0
        self.written = None
        self.objects: dict[str, dict[str, Body]] = {}  # plural -> key -> object
        self.writes: list[Write] = []
        self.watchers: dict[str, Callable[[str | None, Body], None]] = {}
        # Scripted failures: (method, plural) -> statuses to answer with, one per request.
        self.failures: dict[tuple[str, str], list[int]] = {}
        self._versions = itertools.count(1)

    # --- what tests use ------------------------------------------------------------

    def with_budget(self, qps: float, burst: int) -> k.Kube:
        """The same API: budgets are real-time rate limits, which simulated time need not model."""
        return self

    def fail_next(self, method: str, plural: str, status: int, times: int = 1) -> None:
        """Answer the next `times` requests of `method` on `plural` with HTTP `status` (409: a conflict)."""
        self.failures.setdefault((method, plural), []).extend([status] * times)

    def get_object(self, resource: k.Resource, key: str) -> Body | None:
        found = self.objects.get(resource.plural, {}).get(key)
        return copy.deepcopy(found) if found is not None else None

    def put(self, resource: k.Resource, body: Body) -> Body:
        """Create an object as a user would (not recorded as the operator's write)."""
        return self._create(resource, body, (body.get("metadata") or {}).get("namespace"))

    def edit(self, resource: k.Resource, key: str, patch: Body) -> Body:
        """Change an object as a user or another controller would (not recorded as ours)."""
        namespace, _, name = key.rpartition("/")
        return self._patch(resource, namespace or None, name, "", patch, user=True)

    def writes_to(self, plural: str, subresource: str | None = None) -> list[Write]:
        return [w for w in self.writes if w.plural == plural and (subresource is None or w.subresource == subresource)]

    def events(self, name: str | None = None) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events posted, optionally about the object `name`."""
        return [
            (e["type"], e["reason"], e["message"])
            for e in self.objects.get("events", {}).values()
            if name is None or e["involvedObject"]["name"] == name
        ]

    def event_sources(self, name: str) -> dict[str, str]:
        """reason -> source.component of the Events posted about the object `name`."""
        return {
            e["reason"]: e["source"]["component"]
            for e in self.objects.get("events", {}).values()
            if e["involvedObject"]["name"] == name
        }

    # --- the chokepoint ------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Body:
        self.requests += 1
        resource, namespace, name, subresource = _parse(path)
        scripted = self.failures.get((method, resource.plural))
        if scripted:
            status = scripted.pop(0)
            raise k._error(status, b'{"reason": "Scripted", "message": "scripted failure"}')
        if method == "GET" and not name:
            selector = dict(query or []).get("labelSelector", "")
            items = [
                copy.deepcopy(o)
                for o in self.objects.get(resource.plural, {}).values()
                if (namespace is None or o["metadata"].get("namespace") == namespace) and _selects(selector, o)
            ]
            return {"items": items, "metadata": {"resourceVersion": str(next(self._versions))}}
        if method == "GET":
            found = self.get_object(resource, _key(namespace, name))
            if found is None:
                raise k._error(404, b'{"reason": "NotFound", "message": "not found"}')
            return found
        if method == "POST":
            meta = body.get("metadata") or {}
            if not meta.get("name") and meta.get("generateName"):  # as the API server names it
                body = {**body, "metadata": {**meta, "name": meta["generateName"] + uuid.uuid4().hex[:5]}}
            self.writes.append(Write(method, resource.plural, _key(namespace, body["metadata"]["name"]), "", body))
            return self._create(resource, body, namespace)
        if method == "PATCH":
            self.writes.append(Write(method, resource.plural, _key(namespace, name), subresource, body))
            return self._patch(resource, namespace, name, subresource, body)
        if method == "DELETE":
            self.writes.append(Write(method, resource.plural, _key(namespace, name), "", body))
            return self._delete(resource, namespace, name, body)
        raise AssertionError(f"the fake API has no {method}")

    async def watch(
        self, resource: k.Resource, version: str, *, timeout: int = 300, namespace: str | None = None
    ) -> AsyncIterator[tuple[str, Body]]:
        """A watch that brings nothing: this API hands its events to `watchers` directly."""
        await asyncio.sleep(timeout)
        nothing: list[tuple[str, Body]] = []
        for event in nothing:  # an async generator, as Kube.watch is, that yields nothing
            yield event

    # --- the API server's rules ----------------------------------------------------

    def _create(self, resource: k.Resource, body: Body, namespace: str | None) -> Body:
        stored = copy.deepcopy(body)
        meta = stored.setdefault("metadata", {})
        if resource.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        key = _key(meta.get("namespace"), meta["name"])
        kind = self.objects.setdefault(resource.plural, {})
        if key in kind:
            raise k._error(409, b'{"reason": "AlreadyExists", "message": "already exists"}')
        stored.setdefault("apiVersion", resource.api_version)
        stored.setdefault("kind", resource.kind)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["generation"] = 1
        meta["resourceVersion"] = str(next(self._versions))
        kind[key] = stored
        self._emit(resource, "ADDED", stored)
        return copy.deepcopy(stored)

    def _patch(
        self, resource: k.Resource, namespace: str | None, name: str, subresource: str, patch: Any, user: bool = False
    ) -> Body:
        key = _key(namespace, name)
        current = self.objects.get(resource.plural, {}).get(key)
        if current is None:
            raise k._error(404, b'{"reason": "NotFound", "message": "not found"}')
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            raise k._error(409, b'{"reason": "Conflict", "message": "the object has been modified"}')
        has_status = resource.plural in _STATUS_SUBRESOURCE
        if subresource == "status":
            patch = {"status": patch.get("status")}
        elif has_status and not user:
            patch = {key_: value for key_, value in patch.items() if key_ != "status"}
        updated = merge_patch(current, patch)
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if updated == current:
            return copy.deepcopy(current)  # a no-op: no new version, no event
        if updated.get("spec") != current.get("spec"):
            updated["metadata"]["generation"] = int(current["metadata"].get("generation") or 0) + 1
        updated["metadata"]["resourceVersion"] = str(next(self._versions))
        if updated["metadata"].get("deletionTimestamp") and not updated["metadata"].get("finalizers"):
            del self.objects[resource.plural][key]
            self._emit(resource, "DELETED", updated)
            return copy.deepcopy(updated)
        self.objects[resource.plural][key] = updated
        self._emit(resource, "MODIFIED", updated)
        return copy.deepcopy(updated)

    def _delete(self, resource: k.Resource, namespace: str | None, name: str, options: Body | None) -> Body:
        key = _key(namespace, name)
        current = self.objects.get(resource.plural, {}).get(key)
        if current is None:
            raise k._error(404, b'{"reason": "NotFound", "message": "not found"}')
        preconditions = (options or {}).get("preconditions") or {}
        for field_ in ("uid", "resourceVersion"):
            if preconditions.get(field_) is not None and preconditions[field_] != current["metadata"][field_]:
                raise k._error(409, b'{"reason": "Conflict", "message": "precondition failed"}')
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                current["metadata"]["deletionTimestamp"] = _now()
                current["metadata"]["generation"] = int(current["metadata"].get("generation") or 0) + 1
                current["metadata"]["resourceVersion"] = str(next(self._versions))
                self._emit(resource, "MODIFIED", current)
            return copy.deepcopy(current)
        del self.objects[resource.plural][key]
        self._emit(resource, "DELETED", current)
        return {"kind": "Status", "status": "Success"}

    def _emit(self, resource: k.Resource, kind: str, body: Body) -> None:
        watcher = self.watchers.get(resource.plural)
        if watcher is None:
            return
        event = copy.deepcopy(body)
        try:
            # Soon after the answer, as a watch usually brings it.
            asyncio.get_running_loop().call_soon(watcher, kind, event)
        except RuntimeError:  # no loop yet: a test setting the scene
            watcher(kind, event)


# --- simulated time ----------------------------------------------------------------


class _SkippingSelector(selectors.DefaultSelector):
    """Never waits: when nothing is ready, the loop's clock jumps to its next timer."""

    loop: SimulatedLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if not ready and timeout and self.loop is not None:
            self.loop.now += timeout
        return ready


class SimulatedLoop(asyncio.SelectorEventLoop):
    """An event loop whose time passes only while nothing is ready to run, as Kopf's looptime
    does: minutes of backoff take milliseconds, and the schedule is exact."""

    def __init__(self) -> None:
        self.now = 0.0
        selector = _SkippingSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self.now


SIMULATION_START = datetime(2026, 1, 1, tzinfo=UTC)


def simulate(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `main` on a :class:`SimulatedLoop`; the stamps the controllers write follow its clock."""
    loop = SimulatedLoop()
    real_clock = vocabulary.wall_clock
    vocabulary.wall_clock = lambda: SIMULATION_START + timedelta(seconds=loop.time())
    try:
        return loop.run_until_complete(main())
    finally:
        vocabulary.wall_clock = real_clock
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# --- the driver --------------------------------------------------------------------

# A response, a gRPC code to fail with, or a function of the request.
Answer: TypeAlias = Message | grpc.StatusCode | Callable[[Any], Message]


@dataclass
class Call:
    method: str
    request: Message
    at: float  # the loop's time


@dataclass
class FakeDriver(CSIClient):
    """A CSI driver answering from a script; `calls` logs every call (the driver's own log)."""

    name: str = "fake.csi.example.com"
    controller: frozenset[str] = frozenset(
        {"CREATE_DELETE_VOLUME", "PUBLISH_UNPUBLISH_VOLUME", "EXPAND_VOLUME", "CREATE_DELETE_SNAPSHOT"}
    )
    group_controller: frozenset[str] = frozenset()
    # method name -> answers: the first is used and dropped while more than one remain.
    script: dict[str, list[Answer]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)  # the deadline of each call
    hold: asyncio.Event | None = None  # while set to an unset Event, calls (but probes) wait for it

    def __post_init__(self) -> None:
        CSIClient.__init__(self, "unix:///fake/csi.sock", driver_name=self.name)

    def answer(self, method: str, *answers: Answer) -> None:
        """Script `method`: each call takes the next answer; the last one repeats."""
        self.script[method] = list(answers)

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def call(self, rpc: Rpc[Any, Any], request: Any, *, timeout: float | None = None) -> Any:
        loop = asyncio.get_running_loop()
        self.calls.append(Call(rpc.method, request, loop.time()))
        self.timeouts.append(self.timeout if timeout is None else timeout)
        await asyncio.sleep(0)  # a real call yields to the loop
        if self.hold is not None and rpc.service != "Identity":
            await self.hold.wait()
        answers = self.script.get(rpc.method)
        answer: Answer | None = None
        if answers:
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer is None:
            return self._default(rpc)
        if isinstance(answer, grpc.StatusCode):
            raise error_for(rpc.method, rpc.operation, answer, f"scripted {answer.name}")
        if callable(answer):
            return answer(request)
        return answer

    def _default(self, rpc: Rpc[Any, Any]) -> Any:
        caps = csi.ControllerServiceCapability.RPC.Type
        if rpc.method == "GetPluginInfo":
            return csi.GetPluginInfoResponse(name=self.name, vendor_version="0.0.0")
        if rpc.method == "GetPluginCapabilities":
            services = [csi.PluginCapability.Service.CONTROLLER_SERVICE]
            if self.group_controller:
                services.append(csi.PluginCapability.Service.GROUP_CONTROLLER_SERVICE)
            return csi.GetPluginCapabilitiesResponse(
                capabilities=[csi.PluginCapability(service=csi.PluginCapability.Service(type=s)) for s in services]
            )
        if rpc.method == "ControllerGetCapabilities":
            return csi.ControllerGetCapabilitiesResponse(
                capabilities=[
                    csi.ControllerServiceCapability(rpc=csi.ControllerServiceCapability.RPC(type=caps.Value(c)))
                    for c in sorted(self.controller)
                ]
            )
        if rpc.method == "GroupControllerGetCapabilities":
            group = csi.GroupControllerServiceCapability.RPC.Type
            return csi.GroupControllerGetCapabilitiesResponse(
                capabilities=[
                    csi.GroupControllerServiceCapability(
                        rpc=csi.GroupControllerServiceCapability.RPC(type=group.Value(c))
                    )
                    for c in sorted(self.group_controller)
                ]
            )
        if rpc.method == "NodeGetCapabilities":
            raise error_for(rpc.method, rpc.operation, grpc.StatusCode.UNIMPLEMENTED, "no node service here")
        if rpc.method == "Probe":
            response = csi.ProbeResponse()
            response.ready.value = True
            return response
        return rpc.response()


# --- the world ---------------------------------------------------------------------


class World:
    """The operator's controllers on a :class:`FakeKube` and :class:`FakeDriver` s."""

    def __init__(self, *, informers: bool = False, **settings: Any) -> None:
        self.settings = Settings(
            **{"namespace": "sidecarless-system", "identity": "fakeworld", "leader_election": False, **settings}
        )
        self.api = FakeKube()
        self.drivers: dict[str, FakeDriver] = {}  # by DriverEndpoint name
        stores = Stores()
        self.api.written = stores.remember
        self.context = Context(
            settings=self.settings,
            kube=self.api,
            events=EventRecorder(self.api, component="sidecarless", instance="fakeworld"),
            endpoints=EndpointRegistry(connect=self._connect),
            stores=stores,
        )
        self.controllers = watches.Controllers(
            context=self.context,
            provisioner=Provisioner(self.context),
            attacher=Attacher(self.context),
            resizer=Resizer(self.context),
            snapshotter=Snapshotter(self.context),
            group_snapshotter=GroupSnapshotter(self.context),
            snapshot_controller=SnapshotController(self.context) if self.settings.snapshot_controller else None,
            group_controller=GroupSnapshotController(self.context) if self.settings.snapshot_controller else None,
            leaks=LeakReporter(self.context),
            health=HealthMonitor(self.context),
            capacity=CapacityTracker(self.context),
        )
        self.context.endpoints.on_change = self.controllers.endpoint_changed  # as handlers.startup does
        # The informers' own event functions, fed by the fake API instead of a watch.
        self.informers = watches.informers(self.controllers)
        for informer in self.informers:
            self.api.watchers[informer.resource.plural] = informer.on_event
        self._run_informers = informers  # list (and resync) as in a cluster; events come as above
        self._pending_driver: FakeDriver | None = None

    def _connect(self, spec: EndpointSpec, tls: TLSConfig | None) -> Endpoint:
        driver = self._pending_driver or self.drivers.get(spec.name) or FakeDriver(name=spec.driver_name)
        self._pending_driver = None
        driver.timeout = spec.operation_timeout
        self.drivers[spec.name] = driver
        return Endpoint(spec, tls, client=driver)

    async def endpoint(self, name: str, driver: FakeDriver | None = None, **spec: Any) -> Endpoint:
        """Configure the DriverEndpoint `name` as its Kopf daemon would; `spec` overrides the defaults."""
        self._pending_driver = driver
        driver_name = driver.name if driver is not None else "fake.csi.example.com"
        full = {"driverName": driver_name, "address": "unix:///fake/csi.sock", **spec}
        endpoint = await self.context.endpoints.apply(name, full)
        assert endpoint is not None, self.context.endpoints.spec_errors.get(name)
        return endpoint

    def driver(self, endpoint: str = "ep") -> FakeDriver:
        return self.drivers[endpoint]

    def start(self) -> None:
        if self._run_informers:
            for informer in self.informers:
                informer.start()
        for controller in self.controllers.all():
            controller.start()

    async def stop(self) -> None:
        for controller in self.controllers.all():
            await controller.stop()
        for informer in self.informers:
            await informer.stop()
        await self.context.events.close()
        await self.context.endpoints.close()

    async def settle(self, timeout: float = 5.0) -> None:
        """Until every queue is idle and every delivered event handled (pending retries aside)."""
        async with asyncio.timeout(timeout):
            quiet_rounds = 0
            while quiet_rounds < 3:
                await asyncio.sleep(0.005)
                quiet_rounds = quiet_rounds + 1 if all(q.idle for q in self.queues()) else 0

    def queues(self) -> Iterator[WorkQueue[Any]]:
        for controller in self.controllers.all():
            for value in vars(controller).values():
                if isinstance(value, WorkQueue):
                    yield value

    def stored(self, resource: k.Resource, key: str) -> Body:
        found = self.api.get_object(resource, key)
        assert found is not None, f"{resource.kind} {key} does not exist"
        return found


# --- objects -----------------------------------------------------------------------


def storage_class(name: str, endpoint: str = "ep", driver: str = "fake.csi.example.com", **extra: Any) -> Body:
    return {
        "metadata": {"name": name, "annotations": {"sidecarless.io/endpoint": endpoint}},
        "provisioner": driver,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
        **extra,
    }


def bound_pair(
    claim: str,
    volume: str,
    *,
    namespace: str = "default",
    size: str = "1Gi",
    class_name: str = "fast",
    **csi_extra: Any,
) -> tuple[Body, Body]:
    """A Bound claim and its PV, as kube-controller-manager leaves them after provisioning."""
    claim_uid = str(uuid.uuid4())
    pvc = {
        "metadata": {"name": claim, "namespace": namespace, "uid": claim_uid},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            "storageClassName": class_name,
            "volumeName": volume,
        },
        "status": {"phase": "Bound", "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"]},
    }
    pv = {
        "metadata": {"name": volume, "annotations": {"pv.kubernetes.io/provisioned-by": "fake.csi.example.com"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": class_name,
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim, "uid": claim_uid},
            "csi": {"driver": "fake.csi.example.com", "volumeHandle": f"handle-{volume}", **csi_extra},
            "volumeMode": "Filesystem",
        },
        "status": {"phase": "Bound"},
    }
    return pvc, pv


def attachment(name: str, volume: str, node: str = "node-1", driver: str = "fake.csi.example.com") -> Body:
    return {
        "metadata": {"name": name},
        "spec": {"attacher": driver, "nodeName": node, "source": {"persistentVolumeName": volume}},
    }


def csinode(node: str, driver: str = "fake.csi.example.com") -> Body:
    return {"metadata": {"name": node}, "spec": {"drivers": [{"name": driver, "nodeID": f"id-{node}"}]}}


def bound_volume_on_a_node(world: World) -> None:
    """A class, a Bound claim with its PV, and node-1's CSINode: what an attachment needs."""
    world.api.put(k.STORAGE_CLASS, storage_class("fast"))
    pvc, pv = bound_pair("data", "pv-1")
    world.api.put(k.PVC, pvc)
    world.api.put(k.PV, pv)
    world.api.put(k.CSI_NODE, csinode("node-1"))
