"""Live DriverEndpoints: one CSI connection per endpoint, what discovery and the probe learnt,
the concurrency limit of its calls, and the registry the controllers look endpoints up in."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from prometheus_client import Gauge

from csi_client import CSIClient, CSIError, DriverInfo, TLSConfig, discover, probe_ready
from csi_client.client import Rpc
from sidecarless import faults
from sidecarless.endpoints.spec import ACTIVE, EndpointSpec, SpecError, controller_state, parse_spec
from sidecarless.vocabulary import now_rfc3339
from sidecarless.workqueue import Backoff, Elsewhere, Requeue

Body = dict[str, Any]
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

log = logging.getLogger("sidecarless.endpoints")

ENDPOINT_READY = Gauge(
    "sidecarless_endpoint_ready", "1 while the DriverEndpoint is served (connected, probed ready), else 0", ["endpoint"]
)


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
        # Whether this replica serves the endpoint now (its Lease, when sharded or leader-elected):
        # set by the registry, asked before every piece of work and every CSI call.
        self.holds: Callable[[], bool] = _always
        self._calls: set[asyncio.Task[Any]] = set()  # CSI calls in flight, cancelled when the Lease goes

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
        """Whether the driver answers as it should (the probe): controllers may send it work."""
        return self.problem is None

    @property
    def here(self) -> bool:
        """Whether this replica serves the endpoint now (it holds its Lease)."""
        return self.holds()

    def check_here(self) -> None:
        """Raise Elsewhere unless this replica serves the endpoint now: its holder does the work."""
        if not self.holds():
            raise Elsewhere(f"DriverEndpoint {self.spec.name!r} is served by another replica")

    def controller_state(self, controller: str) -> str:
        return controller_state(self.spec, self.info, controller)

    def active(self, controller: str) -> bool:
        """For background work (reconciles, journal recovery), which skips rather than waits."""
        return self.here and self.serving and self.controller_state(controller) == ACTIVE

    def admits(self, controller: str, *states: str) -> str | None:
        """The one gate before a controller works on this endpoint: the controller's state,
        when it is one of `states` (Active unless told) and the endpoint serves. None: the
        controller has nothing to do here (switched off, or the driver lacks what it needs).
        Raises Requeue while the endpoint does not serve; it wakes the controllers
        (endpoint_changed) when it serves again; Elsewhere when another replica serves it."""
        self.check_here()
        state = self.controller_state(controller)
        if state not in (states or (ACTIVE,)):
            return None
        if not self.serving:
            raise Requeue(None, f"DriverEndpoint {self.spec.name!r} is not serving")
        return state

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
            self.probe_time = now_rfc3339()
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

    async def call(
        self,
        rpc: Rpc[Req, Resp],
        request: Req,
        *,
        operation: str,
        obj: str,
        fault_key: str | None = None,
        counts: str | None = None,
    ) -> Resp:
        """Every controller's one way to the driver: within this endpoint's concurrency limit,
        between the crash points of the operation (named ones for `fault_key`, and the
        counted steps), failures remembered for the status (`obj` names the object there),
        and a success counted under `counts` ("attaches", ...)."""
        self.check_here()
        async with self._slots:
            self.check_here()  # again: the wait for a slot may have outlived the Lease
            self.in_flight += 1
            try:
                faults.around_csi_call("before", operation, obj, fault_key)
                response = await self._abandonable(self.client.call(rpc, request))
                faults.around_csi_call("after", operation, obj, fault_key)
            except CSIError as error:
                self.note_failure(operation, obj, str(error))
                raise
            finally:
                self.in_flight -= 1
        if counts is not None:
            self.count(counts)
        return response

    async def _abandonable(self, call: Awaitable[Resp]) -> Resp:
        """The call as a task that :meth:`abandon` can cancel; its caller then gets Elsewhere."""
        task = asyncio.ensure_future(call)
        self._calls.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or current.cancelling() == 0):
                raise Elsewhere(f"DriverEndpoint {self.spec.name!r}: the Lease went during the call") from None
            raise
        finally:
            self._calls.discard(task)

    async def abandon(self, grace: float) -> None:
        """The Lease went: calls still in flight after `grace` seconds are cancelled (the driver
        may finish them; every CSI call is idempotent, and the next holder repeats what it must)."""
        calls = set(self._calls)
        if calls and grace > 0:
            await asyncio.wait(calls, timeout=grace)
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=1.0)

    def count(self, kind: str) -> None:
        self.operations[kind] = self.operations.get(kind, 0) + 1

    def note_failure(self, operation: str, obj: str, message: str) -> None:
        self.failures += 1
        self.last_error = LastError(operation, obj, message, now_rfc3339())

    async def close(self) -> None:
        await self.client.close()


def _always() -> bool:
    return True


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
        # Whether this replica serves an endpoint now (sharding, leader election): all, unless told.
        self.holds: Callable[[str], bool] = lambda _name: True

    def get(self, name: str | None) -> Endpoint | None:
        return self._endpoints.get(name) if name is not None else None

    def _holds(self, name: str) -> bool:
        return self.holds(name)  # looked up at each call: the holder is set after endpoints exist

    def check_here(self, name: str | None) -> None:
        """Raise Elsewhere unless this replica does the work of endpoint `name` now. None, or a
        name no DriverEndpoint has: the work of no endpoint (reporting objects routed to an
        endpoint that does not exist, the snapshot controller's half), which one replica does."""
        if not self.holds(name if name is not None and name in self.known() else ""):
            raise Elsewhere(f"DriverEndpoint {name!r} is served by another replica" if name else "another replica's")

    def known(self) -> set[str]:
        """Every DriverEndpoint seen, valid or not."""
        return {*self._endpoints, *self.spec_errors}

    def drivers(self) -> dict[str, str]:
        """The endpoints and the driver each serves, for the routing rules (routing.py)."""
        return {name: endpoint.spec.driver_name for name, endpoint in self._endpoints.items()}

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
            endpoint.holds = functools.partial(self._holds, name)
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
