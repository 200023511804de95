"""DriverEndpoints: one CSI connection per endpoint, its discovery, probe and status.

`parse_spec` and `build_status` are pure; :class:`Endpoint` holds the live connection
and what was learnt from the driver; :class:`EndpointRegistry` maps names to endpoints
for the controllers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message
from prometheus_client import Gauge

from csi_client import AddressError, CSIClient, CSIError, DriverInfo, TLSConfig, discover, parse_address, probe_ready
from csi_client.client import Rpc
from sidecarless import faults
from sidecarless.provisioner.plan import ProvisionerSettings
from sidecarless.workqueue import Backoff

Body = dict[str, Any]
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

log = logging.getLogger("sidecarless.endpoints")

ENDPOINT_READY = Gauge(
    "sidecarless_endpoint_ready", "1 while the DriverEndpoint is served (connected, probed ready), else 0", ["endpoint"]
)

# The switches of spec.controllers; the modifier (VolumeAttributesClass) goes with the
# resizer, as both are external-resizer's, and group snapshots with the snapshotter, as
# both are csi-snapshotter's.
SWITCHES = ("provisioner", "attacher", "resizer", "snapshotter")
CONTROLLERS = ("provisioner", "attacher", "resizer", "modifier", "snapshotter")
_SWITCH_OF = {"modifier": "resizer", "group-snapshotter": "snapshotter"}
# The capability each controller needs from the driver to do real work.
REQUIRED_CAPABILITY = {
    "provisioner": "CREATE_DELETE_VOLUME",
    "attacher": "PUBLISH_UNPUBLISH_VOLUME",
    "resizer": "EXPAND_VOLUME",
    "modifier": "MODIFY_VOLUME",
    "snapshotter": "CREATE_DELETE_SNAPSHOT",
}
ACTIVE, DISABLED, UNSUPPORTED = "Active", "Disabled", "Unsupported"
NOT_REQUIRED = "NotRequired"  # the attacher, when the CSIDriver says attachRequired: false
# The resizer, for a driver that expands only on the node: kubelet does the work, the
# resizer just records the new size (external-resizer's "trivial resizer").
NODE_ONLY = "NodeOnly"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class SpecError(ValueError):
    """A DriverEndpoint spec the operator cannot use; shown as Ready=False, reason InvalidSpec."""


def parse_duration(text: str, what: str) -> float:
    """Seconds in a Go-style duration ("1m30s", "500ms")."""
    if not text or _DURATION_PART.sub("", text) != "":
        raise SpecError(f"{what} {text!r} is not a duration such as 30s, 5m or 1h30m")
    return sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text))


@dataclass(frozen=True)
class TLSSecretRef:
    name: str
    namespace: str
    server_name: str = ""


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    driver_name: str
    address: str
    tls: TLSSecretRef | None = None
    controllers: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(SWITCHES, True))
    provisioner: ProvisionerSettings = field(default_factory=ProvisionerSettings)
    extra_modify_metadata: bool = False  # external-resizer's --extra-modify-metadata
    operation_timeout: float = 60.0
    probe_timeout: float = 5.0
    probe_interval: float = 10.0
    retry_initial: float = 1.0
    retry_max: float = 300.0
    max_in_flight: int = 50

    @property
    def connection_key(self) -> tuple[str, TLSSecretRef | None]:
        """What, when changed, needs a new connection."""
        return (self.address, self.tls)


def parse_spec(name: str, spec: Body) -> EndpointSpec:
    """A DriverEndpoint's spec as an :class:`EndpointSpec`; raise SpecError with a reason a person can act on."""
    driver_name = str(spec.get("driverName") or "")
    if not driver_name:
        raise SpecError("spec.driverName is empty")
    address = str(spec.get("address") or "")
    try:
        endpoint = parse_address(address)
    except AddressError as error:
        raise SpecError(f"spec.address: {error}") from error
    tls = None
    if spec.get("tls"):
        if endpoint.transport.value != "tcp":
            raise SpecError("spec.tls is for dns:/// addresses; a unix socket needs no TLS")
        tls = TLSSecretRef(spec["tls"]["secretName"], spec["tls"]["secretNamespace"], spec["tls"].get("serverName", ""))
    controllers = {c: bool((spec.get("controllers") or {}).get(c, True)) for c in SWITCHES}
    p = spec.get("provisioner") or {}
    provisioner = ProvisionerSettings(
        volume_name_prefix=p.get("volumeNamePrefix", "pvc"),
        volume_name_uuid_length=int(p.get("volumeNameUUIDLength", -1)),
        default_fstype=p.get("defaultFSType", ""),
        extra_create_metadata=bool(p.get("extraCreateMetadata", False)),
        strict_topology=bool(p.get("strictTopology", False)),
        immediate_topology=bool(p.get("immediateTopology", True)),
        controller_publish_readonly=bool(p.get("controllerPublishReadOnly", False)),
    )
    timeouts, retry = spec.get("timeouts") or {}, spec.get("retry") or {}
    parsed = EndpointSpec(
        name=name,
        driver_name=driver_name,
        address=address,
        tls=tls,
        controllers=controllers,
        provisioner=provisioner,
        extra_modify_metadata=bool((spec.get("resizer") or {}).get("extraModifyMetadata", False)),
        operation_timeout=parse_duration(timeouts.get("operation", "60s"), "spec.timeouts.operation"),
        probe_timeout=parse_duration(timeouts.get("probe", "5s"), "spec.timeouts.probe"),
        probe_interval=parse_duration(timeouts.get("probeInterval", "10s"), "spec.timeouts.probeInterval"),
        retry_initial=parse_duration(retry.get("initialDelay", "1s"), "spec.retry.initialDelay"),
        retry_max=parse_duration(retry.get("maxDelay", "5m"), "spec.retry.maxDelay"),
        max_in_flight=int(spec.get("maxInFlight", 50)),
    )
    if parsed.retry_initial > parsed.retry_max:
        raise SpecError("spec.retry.initialDelay is longer than spec.retry.maxDelay")
    if parsed.operation_timeout <= 0 or parsed.probe_timeout <= 0:
        raise SpecError("timeouts must be longer than zero")
    return parsed


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass
class LastError:
    operation: str
    object: str
    message: str
    time: str


NOT_PROBED_YET = ("Connecting", "not probed yet")


class Slots:
    """At most `size` holders at once, first come first served; the size may change while
    slots are held (spec.maxInFlight edited live): waiters go as soon as the new size allows."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def resize(self, size: int) -> None:
        self.size = size
        self._wake()

    async def __aenter__(self) -> None:
        if self.held < self.size and not self._waiters:
            self.held += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted, then cancelled before it could be used
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        self.held -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += 1
                waiter.set_result(None)


class Endpoint:
    """A live connection to one driver, with what discovery and the last probe learnt."""

    def __init__(self, spec: EndpointSpec, tls: TLSConfig | None = None, *, client: CSIClient | None = None) -> None:
        self.spec = spec
        # `client`: tests hand in a scripted driver here (tests/unit/fakeworld.py).
        self.client = client or CSIClient(
            spec.address, timeout=spec.operation_timeout, tls=tls, driver_name=spec.driver_name
        )
        self.info: DriverInfo | None = None
        self.connected = False
        self.probe_ready = False
        self.problem: tuple[str, str] | None = NOT_PROBED_YET  # (reason, message)
        self.probe_time: str | None = None
        self.probe_latency_ms = 0
        self.in_flight = 0
        self.failures = 0
        self.operations: dict[str, int] = {}  # completed operations by kind ("attaches", "detaches")
        self.last_error: LastError | None = None
        self._slots = Slots(spec.max_in_flight)

    def reconfigure(self, spec: EndpointSpec) -> None:
        """Take a spec whose connection is the same: its timeout and limit apply from the next call."""
        self.spec = spec
        self.client.timeout = spec.operation_timeout
        self._slots.resize(spec.max_in_flight)

    @property
    def backoff(self) -> Backoff:
        """The per-object retry schedule of `spec.retry`."""
        return Backoff(initial=self.spec.retry_initial, maximum=self.spec.retry_max)

    @property
    def starting(self) -> bool:
        """Not probed even once yet (the first probe comes within a second or so)."""
        return self.problem == NOT_PROBED_YET

    @property
    def serving(self) -> bool:
        """Whether controllers may send this endpoint work."""
        return self.problem is None

    def switched_on(self, controller: str) -> bool:
        """spec.controllers' switch for `controller` (the modifier and group snapshots follow
        the resizer's and the snapshotter's)."""
        return self.spec.controllers.get(_SWITCH_OF.get(controller, controller), True)

    def controller_state(self, controller: str) -> str:
        if not self.switched_on(controller):
            return DISABLED
        if self.info is not None and REQUIRED_CAPABILITY[controller] not in self.info.controller:
            if controller == "resizer" and _expands_on_node(self.info):
                return NODE_ONLY
            return UNSUPPORTED
        return ACTIVE

    def active(self, controller: str) -> bool:
        return self.serving and self.controller_state(controller) == ACTIVE

    async def refresh(self) -> None:
        """Discover (once connected) and probe; record any problem as (reason, message)."""
        started = time.monotonic()
        try:
            if self.info is None:
                self.info = await discover(self.client)
            ready = await probe_ready(self.client, timeout=self.spec.probe_timeout)
        except CSIError as error:
            self.connected = False
            self.probe_ready = False
            self.info = None  # rediscover after a reconnection: the driver may have changed
            self.problem = ("Unreachable", f"{self.spec.address}: {error}")
            ENDPOINT_READY.labels(self.spec.name).set(0)
            return
        finally:
            self.probe_time = _now()
            self.probe_latency_ms = int((time.monotonic() - started) * 1000)
        self.connected = True
        self.probe_ready = ready
        self.problem = self._check(ready)
        ENDPOINT_READY.labels(self.spec.name).set(1 if self.serving else 0)

    def _check(self, ready: bool) -> tuple[str, str] | None:
        assert self.info is not None
        if self.info.name != self.spec.driver_name:
            return (
                "DriverNameMismatch",
                f"the driver at {self.spec.address} says its name is {self.info.name!r}, "
                f"but spec.driverName is {self.spec.driver_name!r}",
            )
        if not self.info.has_controller_service:
            return ("NoControllerService", f"driver {self.info.name} does not offer the CSI Controller service")
        if not ready:
            return ("ProbeNotReady", f"driver {self.info.name} answers Probe with ready=false")
        return None

    async def call(self, rpc: Rpc[Req, Resp], request: Req, *, operation: str, obj: str) -> Resp:
        """A CSI call within this endpoint's concurrency limit; failures are remembered for the status."""
        async with self._slots:
            self.in_flight += 1
            try:
                faults.csi_call("before", operation, obj)
                response = await self.client.call(rpc, request)
                faults.csi_call("after", operation, obj)
                return response
            except CSIError as error:
                self.note_failure(operation, obj, str(error))
                raise
            finally:
                self.in_flight -= 1

    def count(self, kind: str) -> None:
        self.operations[kind] = self.operations.get(kind, 0) + 1

    def note_failure(self, operation: str, obj: str, message: str) -> None:
        self.failures += 1
        self.last_error = LastError(operation, obj, message, _now())

    async def close(self) -> None:
        await self.client.close()


def _expands_on_node(info: DriverInfo) -> bool:
    """The Node service expands volumes (or, with no Node service on this connection, the
    plugin says it supports expansion at all)."""
    if info.node:
        return "EXPAND_VOLUME" in info.node
    return bool({"VOLUME_EXPANSION_ONLINE", "VOLUME_EXPANSION_OFFLINE"} & info.plugin)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions_for(endpoint: Endpoint | None, spec_error: str | None) -> list[Condition]:
    """Connected, Ready and Degraded, each with a reason and a message a person can act on."""
    if spec_error is not None or endpoint is None:
        reason, message = ("InvalidSpec", spec_error) if spec_error else ("Configuring", "not configured yet")
        return [
            Condition("Connected", False, reason, message),
            Condition("Ready", False, reason, message),
            Condition("Degraded", False, reason, message),
        ]
    connected = (
        Condition("Connected", True, "Connected", f"connected to {endpoint.spec.address}")
        if endpoint.connected
        else Condition("Connected", False, *(endpoint.problem or ("Unreachable", "")))
    )
    if endpoint.problem is None:
        ready = Condition("Ready", True, "Probed", f"driver {endpoint.spec.driver_name} is ready")
    else:
        ready = Condition("Ready", False, *endpoint.problem)
    if endpoint.last_error is not None and endpoint.serving:
        error = endpoint.last_error
        degraded = Condition(
            "Degraded", True, "OperationsFailing", f"last failure: {error.operation} {error.object}: {error.message}"
        )
    else:
        degraded = Condition("Degraded", False, "AsExpected", "no failed operations")
    return [connected, ready, degraded]


class HasStatus(Protocol):
    def status(self) -> Body: ...


def build_status(
    endpoint: Endpoint | None,
    *,
    spec_error: str | None,
    generation: int,
    counts: dict[str, int],
    previous: Body,
    attach_required: bool = True,
    unreferenced: HasStatus | None = None,
) -> Body:
    """The DriverEndpoint's status; lastTransitionTime moves only when a condition's status does."""
    before = {c.get("type"): c for c in previous.get("conditions") or []}
    conditions = []
    for condition in conditions_for(endpoint, spec_error):
        status = "True" if condition.status else "False"
        old = before.get(condition.type) or {}
        conditions.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == status else _now(),
            }
        )
    status_body: Body = {"observedGeneration": generation, "conditions": conditions, "counts": counts}
    if endpoint is None:
        return status_body
    status_body["controllers"] = {c: endpoint.controller_state(c) for c in CONTROLLERS}
    if not attach_required:
        status_body["controllers"]["attacher"] = NOT_REQUIRED
    status_body["counts"] = {
        **counts,
        **endpoint.operations,
        "operationsInFlight": endpoint.in_flight,
        "failures": endpoint.failures,
    }
    if endpoint.info is not None:
        status_body["driver"] = {"name": endpoint.info.name, "vendorVersion": endpoint.info.vendor_version}
        status_body["capabilities"] = {
            "plugin": sorted(endpoint.info.plugin),
            "controller": sorted(endpoint.info.controller),
            "groupController": sorted(endpoint.info.group_controller),
            "node": sorted(endpoint.info.node),
        }
    if endpoint.probe_time is not None:
        status_body["probe"] = {
            "lastTime": endpoint.probe_time,
            "ready": endpoint.probe_ready,
            "latencyMillis": endpoint.probe_latency_ms,
        }
    if unreferenced is not None:
        status_body["unreferenced"] = unreferenced.status()
    if endpoint.last_error is not None:
        error = endpoint.last_error
        status_body["lastError"] = {
            "operation": error.operation,
            "object": error.object,
            "message": error.message,
            "time": error.time,
        }
    return status_body


class EndpointRegistry:
    """Endpoints by DriverEndpoint name, for the controllers; reconnects when an address changes."""

    def __init__(
        self,
        on_change: Callable[[str], Awaitable[None]] | None = None,
        *,
        connect: Callable[[EndpointSpec, TLSConfig | None], Endpoint] = Endpoint,
    ) -> None:
        self._connect = connect  # tests connect to a scripted driver instead
        self._endpoints: dict[str, Endpoint] = {}
        self.spec_errors: dict[str, str] = {}
        self._applied: dict[str, Body] = {}  # the spec each endpoint was last configured from
        # Called after an endpoint is (re)configured, so controllers look at its objects again.
        self.on_change = on_change

    def get(self, name: str) -> Endpoint | None:
        return self._endpoints.get(name)

    def all(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def names(self) -> list[str]:
        return sorted({*self._endpoints, *self.spec_errors})

    def applied(self, name: str) -> Body | None:
        """The spec `name` was last configured from (valid or not); None: never."""
        return self._applied.get(name)

    async def apply(self, name: str, spec: Body, tls: TLSConfig | None = None) -> Endpoint | None:
        self._applied[name] = spec
        try:
            parsed = parse_spec(name, spec)
        except SpecError as error:
            self.spec_errors[name] = str(error)
            await self._drop(name)
            return None
        self.spec_errors.pop(name, None)
        current = self._endpoints.get(name)
        if current is not None and current.spec.connection_key == parsed.connection_key:
            current.reconfigure(parsed)
            endpoint = current
        else:
            await self._drop(name)
            endpoint = self._endpoints[name] = self._connect(parsed, tls)
        await endpoint.refresh()
        if self.on_change is not None:
            await self.on_change(name)
        return endpoint

    async def refresh(self, name: str) -> None:
        """Probe `name`'s driver. One that serves again tells the controllers (on_change), whose
        keys would otherwise wait out the backoff they built up while it was away."""
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            return
        was_serving = endpoint.serving
        await endpoint.refresh()
        if endpoint.serving and not was_serving and self.on_change is not None:
            await self.on_change(name)

    async def remove(self, name: str) -> None:
        self.spec_errors.pop(name, None)
        self._applied.pop(name, None)
        await self._drop(name)

    async def _drop(self, name: str) -> None:
        old = self._endpoints.pop(name, None)
        if old is not None:
            await old.close()
            with contextlib.suppress(KeyError):
                ENDPOINT_READY.remove(name)

    async def close(self) -> None:
        for name in list(self._endpoints):
            await self._drop(name)
