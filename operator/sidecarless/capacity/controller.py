"""Storage capacity tracking (external-provisioner's --enable-capacity), per DriverEndpoint.

For an endpoint whose driver has GET_CAPACITY and whose CSIDriver says `storageCapacity:
true` (without it the scheduler ignores the objects), with `spec.controllers.capacity` on:
one CSIStorageCapacity per (WaitForFirstConsumer class of the driver, topology segment) in
the operator's namespace, with GetCapacity's answer (capacity/plan.py has the rules). Looked
at every `capacity_poll_seconds` (60 s, --capacity-poll-interval), when a class, a Node or a
CSINode changes, and when the endpoint changes; objects of classes and segments that went,
or of an endpoint that stopped tracking, are deleted. Its writes go through a client budget
of their own (`capacity_api_qps` 1, `capacity_api_burst` 5, external-provisioner's
--kube-api-capacity-qps/-burst), so capacity never crowds out provisioning.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from csi_client import CSIClient, CSIError
from sidecarless import routing
from sidecarless.capacity import plan
from sidecarless.context import Context
from sidecarless.endpoints.spec import ACTIVE
from sidecarless.kube import CSI_STORAGE_CAPACITY, POD, NotFound
from sidecarless.periodic import Periodic
from sidecarless.workqueue import Backoff, Requeue, WorkQueue

Body = dict[str, Any]

log = logging.getLogger("sidecarless.capacity")

NOT_REQUIRED = "NotRequired"  # the CSIDriver does not ask for capacity (storageCapacity false)


class CapacityTracker:
    def __init__(self, context: Context) -> None:
        self.context = context
        settings = context.settings
        self.kube = context.kube.with_budget(settings.capacity_api_qps, settings.capacity_api_burst)
        self.queue: WorkQueue[str] = WorkQueue("capacity", self.sync, workers=1, backoff_of=self._backoff_of)
        self.objects: dict[str, int] = {}  # endpoint -> how many objects it keeps (its status)
        self._drivers: dict[str, str] = {}  # endpoint -> the driver it last kept objects for
        self._cleared: set[str] = set()  # endpoints not tracking whose leftover objects are gone
        self._poller = Periodic("capacity-poll", settings.capacity_poll_seconds, self._poll)
        self._owner: Body | None = None
        self._owner_known = False

    def start(self) -> None:
        self.queue.start()
        self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()
        await self.queue.stop()

    def endpoint_changed(self, endpoint: str) -> None:
        self.queue.add(endpoint)

    def topology_changed(self) -> None:
        """A class, Node or CSINode changed: every endpoint looks again (quietly: backoffs stand)."""
        for name in {*self.context.endpoints.names(), *self._drivers}:
            self.queue.add(name, quiet=True)

    def state(self, endpoint_name: str) -> str:
        """`status.controllers.capacity`."""
        endpoint = self.context.endpoints.get(endpoint_name)
        if endpoint is None:
            return "Disabled"
        state = endpoint.controller_state("capacity")
        if state == ACTIVE and not self._wanted_by_csidriver(endpoint.spec.driver_name):
            return NOT_REQUIRED
        return state

    async def _poll(self) -> None:
        for name in {*self.context.endpoints.names(), *self._drivers}:  # and endpoints gone since
            self.queue.add(name, quiet=True)

    def _backoff_of(self, name: str) -> Backoff | None:
        endpoint = self.context.endpoints.get(name)
        return endpoint.backoff if endpoint is not None else None

    def _wanted_by_csidriver(self, driver: str) -> bool:
        csidriver = self.context.stores.drivers.get(driver)
        return bool(((csidriver or {}).get("spec") or {}).get("storageCapacity"))

    async def sync(self, name: str) -> None:
        self.context.endpoints.check_here(name)  # an endpoint gone: the replica doing no endpoint's work clears it
        endpoint = self.context.endpoints.get(name)
        tracking = endpoint is not None and self.state(name) == ACTIVE
        driver = endpoint.spec.driver_name if endpoint is not None else self._drivers.get(name)
        if driver is None or (not tracking and name in self._cleared):
            return
        stores = self.context.stores
        # The driver's objects, of this endpoint's classes, or of classes gone: another endpoint
        # of the same driver keeps its own classes' objects.
        mine = {c["metadata"]["name"] for c in stores.classes.values() if routing.endpoint_of_class(c) == name}
        existing = [
            c
            for c in await self.kube.list(
                CSI_STORAGE_CAPACITY,
                self.context.settings.namespace,
                label_selector=",".join(f"{k}={v}" for k, v in plan.labels(driver).items()),
            )
            if c.get("storageClassName") in mine or str(c.get("storageClassName")) not in stores.classes
        ]
        if not tracking or endpoint is None:
            await self._delete(existing)  # the endpoint or its tracking went: so do its objects
            self._drivers.pop(name, None)
            self.objects.pop(name, None)
            self._cleared.add(name)  # once: what it made from now on, it makes while tracking
            return
        self._cleared.discard(name)
        if not endpoint.serving:
            raise Requeue(None, f"DriverEndpoint {name!r} is not serving")
        self._drivers[name] = driver
        labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in stores.nodes.values()}
        segments = plan.segments(driver, stores.csinodes.values(), labels)
        classes = {n: c for n, c in ((c["metadata"]["name"], c) for c in stores.classes.values()) if n in mine}
        wanted = plan.wanted(
            driver, classes.values(), segments, immediate=self.context.settings.capacity_for_immediate_binding
        )
        found = plan.reconcile(wanted, existing)
        await self._delete(found.stale)
        owner = await self._owner_reference()
        namespace = self.context.settings.namespace
        kept = failed = 0
        for item in sorted(wanted):
            try:
                response = await endpoint.call(
                    CSIClient.get_capacity,
                    plan.request(classes[item.class_name], item.segment),
                    operation="GetCapacity",
                    obj=item.class_name,
                )
            except CSIError as error:
                log.warning("capacity of class %s in %s: %s", item.class_name, dict(item.segment), error)
                failed += 1
                kept += item in found.adopted  # an object there keeps its last values
                continue
            values = plan.capacity_values(response)
            current = found.adopted.get(item)
            if current is None:
                await self.kube.create(CSI_STORAGE_CAPACITY, plan.new_object(driver, item, values, owner), namespace)
            elif plan.needs_update(current, values, owner):
                patch = {**values, "metadata": {"ownerReferences": [owner]}} if owner else values
                await self.kube.patch(CSI_STORAGE_CAPACITY, current["metadata"]["name"], patch, namespace)
            kept += 1
        self.objects[name] = kept
        if failed:
            raise Requeue(None, f"GetCapacity failed for {failed} of {len(wanted)} classes and segments")

    async def _owner_reference(self) -> Body | None:
        """The controller owner of this operator's Pod: external-provisioner's default
        --capacity-ownerref-level 1 (the ReplicaSet of its Deployment), so the objects go with
        the installation. None where the operator does not run in a Pod."""
        if not self._owner_known:
            settings = self.context.settings
            pod = await self.kube.get_or_none(POD, settings.identity, settings.namespace) if settings.identity else None
            refs = [r for r in ((pod or {}).get("metadata") or {}).get("ownerReferences") or [] if r.get("controller")]
            if refs:
                ref = refs[0]
                self._owner = {
                    "apiVersion": ref["apiVersion"],
                    "kind": ref["kind"],
                    "name": ref["name"],
                    "uid": ref["uid"],
                    "controller": True,
                }
            self._owner_known = True
        return self._owner

    async def _delete(self, capacities: list[Body]) -> None:
        for capacity in capacities:
            with contextlib.suppress(NotFound):
                namespace = capacity["metadata"].get("namespace") or self.context.settings.namespace
                await self.kube.delete(CSI_STORAGE_CAPACITY, capacity["metadata"]["name"], namespace)
