"""The provisioner: claims -> CreateVolume -> PVs, and released PVs -> DeleteVolume.

Kopf watch events only update the stores and queue keys; the two work queues (claims
and volumes) do the work with per-key backoff, so nothing Kopf-specific is ever
written onto a claim or a volume.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any, NoReturn

import grpc

from csi_client import CSIError, InfeasibleError, MaybeInProgressError, csi
from csi_client.client import CSIClient
from sidecarless import faults, finalizers, routing
from sidecarless.context import Context
from sidecarless.credentials import credentials
from sidecarless.endpoints.live import Endpoint
from sidecarless.events import SignedEvents
from sidecarless.kube import DRIVER_ENDPOINT, PV, PVC, VOLUME_SNAPSHOT, Conflict, KubeError, NotFound
from sidecarless.metrics import (
    DELETE_DURATION,
    DELETE_FAILED,
    DELETE_TOTAL,
    PROVISION_DURATION,
    PROVISION_FAILED,
    PROVISION_TOTAL,
)
from sidecarless.periodic import Periodic
from sidecarless.provisioner import plan, sources, topology
from sidecarless.provisioner.journal import Entry, Journal
from sidecarless.vocabulary import ParameterError, SecretRef, key_of, object_key, shown, valid_object_name
from sidecarless.workqueue import Backoff, Requeue, WorkQueue

Body = dict[str, Any]

log = logging.getLogger("sidecarless.provisioner")

RECENT_MEMORY = 10_000  # how many finished provisions and deletions are remembered
STARTING_RETRY_SECONDS = 0.5  # a claim for an endpoint not set up or probed yet looks again this soon
JOURNAL_RESYNC_SECONDS = 60.0  # how often every journal is checked for orphaned entries
SWEEP_SECONDS = 60.0  # how often sources carrying a protection finalizer are looked at again
INFEASIBLE_RETRY_SECONDS = 300.0  # external-provisioner pauses an infeasible claim for 5 minutes
MISROUTED_RETRY_SECONDS = 60.0  # a configuration problem: the fix will re-queue the claim anyway
_MISSING_SECRET = "failed to get secret {namespace}/{name}: not found"  # external-provisioner's words


def _remember(memory: OrderedDict[str, None], uid: str) -> None:
    memory[uid] = None
    while len(memory) > RECENT_MEMORY:
        memory.popitem(last=False)


class Provisioner:
    def __init__(self, context: Context) -> None:
        self.context = context
        settings = context.settings
        self.claims: WorkQueue[str] = WorkQueue(
            "claims", self.sync_claim, workers=settings.provisioner_workers, backoff_of=self._claim_backoff
        )
        self.volumes: WorkQueue[str] = WorkQueue(
            "volumes", self.sync_volume, workers=settings.volume_workers, backoff_of=self._volume_backoff
        )
        # Keyed by endpoint name: finish what the journal says may have been created.
        self.recoveries: WorkQueue[str] = WorkQueue("journal-recovery", self.recover, workers=2)
        # Keyed by VolumeSnapshot (namespace/name): restores from it may be over.
        self.snapshot_sources: WorkQueue[str] = WorkQueue("snapshot-sources", self.release_snapshot_source, workers=2)
        self.journal = Journal(context.kube, context.settings.namespace)
        self._identities: dict[str, str] = {}
        # UIDs of PVs whose deletion finished; the store may still show them for a moment
        # (update events arrive before the DELETED one), and they must not be deleted twice.
        self._deleted: OrderedDict[str, None] = OrderedDict()
        # UIDs of claims whose PV this process created, until the store shows the PV.
        self._provisioned: OrderedDict[str, None] = OrderedDict()
        self._resync = Periodic("journal-resync", JOURNAL_RESYNC_SECONDS, self._recover_all)
        self._sweeper = Periodic("source-protection-sweep", SWEEP_SECONDS, self._sweep)

    def start(self) -> None:
        self.claims.start()
        self.volumes.start()
        self.recoveries.start()
        self.snapshot_sources.start()
        self._resync.start()
        self._sweeper.start()

    async def stop(self) -> None:
        for periodic in (self._resync, self._sweeper):
            await periodic.stop()
        for queue in (self.claims, self.volumes, self.recoveries, self.snapshot_sources):
            await queue.stop()
        await self.journal.close()

    def journal_holds(self, endpoint_name: str, claim: str) -> bool:
        return self.journal.holds_claim(endpoint_name, claim)

    async def _recover_all(self) -> None:
        for name in self.context.endpoints.names():
            self.recoveries.add(name)

    async def _sweep(self) -> None:
        self.sweep_source_protection()

    def sweep_source_protection(self) -> None:
        """Look again at every source that carries a protection finalizer of ours. The one whose
        last clone or restore went while no operator ran (its DELETED event never came) is
        released here instead of staying stuck Terminating (external-provisioner #1507, whose
        v6.3 sweeps the same way). Quiet: a source waiting for a retry keeps its backoff."""
        stores = self.context.stores
        for snapshot in stores.snapshots.values():
            if sources.SNAPSHOT_PROTECTION_FINALIZER in (snapshot["metadata"].get("finalizers") or []):
                self.snapshot_sources.add(object_key(snapshot), quiet=True)
        for claim in stores.claims.values():
            meta = claim["metadata"]
            if meta.get("deletionTimestamp") and sources.CLONE_PROTECTION_FINALIZER in (meta.get("finalizers") or []):
                self.claims.add(object_key(claim), quiet=True)

    # --- routing -------------------------------------------------------------------

    def claims_of_class(self, class_name: str) -> list[str]:
        return [
            object_key(c)
            for c in self.context.stores.claims.values()
            if (c.get("spec") or {}).get("storageClassName") == class_name
        ]

    def restores_of(self, snapshot_key: str) -> list[str]:
        """Keys of the claims still waiting to be restored from the VolumeSnapshot `namespace/name`."""
        claims = list(self.context.stores.claims.values())
        return [object_key(c) for c in sources.pending_uses_of(snapshot_key, claims, snapshot=True)]

    def endpoint_changed(self, endpoint_name: str) -> None:
        """Look again at everything an endpoint serves (it was created, changed or recovered)."""
        self.recoveries.add(endpoint_name)
        stores = self.context.stores
        for storage_class in stores.classes.values():
            if routing.endpoint_of_class(storage_class) == endpoint_name:
                for key in self.claims_of_class(storage_class["metadata"]["name"]):
                    self.claims.add(key)
        for volume in stores.volumes.values():
            if self._volume_endpoint_name(volume) == endpoint_name:
                self.volumes.add(volume["metadata"]["name"])

    def _volume_endpoint_name(self, volume: Body) -> str | None:
        return routing.deleting_endpoint(self.context.stores, self.context.endpoints.drivers(), volume)

    def _claim_backoff(self, key: str) -> Backoff | None:
        stores = self.context.stores
        claim = stores.claims.get(key)
        class_name = ((claim or {}).get("spec") or {}).get("storageClassName") or ""
        endpoint = self.context.endpoints.get(routing.endpoint_of_class(stores.classes.get(class_name)))
        return endpoint.backoff if endpoint is not None else None

    def _volume_backoff(self, name: str) -> Backoff | None:
        volume = self.context.stores.volumes.get(name)
        endpoint = self.context.endpoints.get(self._volume_endpoint_name(volume)) if volume is not None else None
        return endpoint.backoff if endpoint is not None else None

    def _identity(self, driver: str) -> str:
        if driver not in self._identities:
            self._identities[driver] = plan.provisioner_identity(driver)
        return self._identities[driver]

    # --- claims --------------------------------------------------------------------

    async def sync_claim(self, key: str) -> None:
        context = self.context
        claim = context.stores.claims.get(key)
        if claim is None:
            return
        class_name = (claim.get("spec") or {}).get("storageClassName") or ""
        storage_class = context.stores.classes.get(class_name)
        endpoint_name = routing.endpoint_of_class(storage_class)
        context.endpoints.check_here(endpoint_name)
        await self._release_clone_sources(key, claim)
        if storage_class is None or endpoint_name is None:
            return  # not routed to Sidecarless: the sidecars (or nobody) handle it
        if not context.settings.serves(endpoint_name):
            return  # another operator's (SIDECARLESS_ENDPOINTS)
        endpoint = await self._endpoint_for_claim(claim, storage_class, endpoint_name)
        decision = plan.claim_decision(claim, storage_class, endpoint.spec.driver_name)
        if isinstance(decision, plan.Skip):
            log.debug("claim %s: %s", key, decision.reason)
            return
        if isinstance(decision, plan.Refuse):
            await self._provisioning_failed(claim, class_name, decision.message)
            raise Requeue(INFEASIBLE_RETRY_SECONDS, decision.message)
        if endpoint.admits("provisioner") is None:
            message = (
                f"DriverEndpoint {endpoint_name!r} cannot provision: provisioner is "
                f"{endpoint.controller_state('provisioner')}"
            )
            await self._provisioning_failed(claim, class_name, message)
            raise Requeue(MISROUTED_RETRY_SECONDS, message)
        await self._provision(claim, storage_class, endpoint)

    async def _endpoint_for_claim(self, claim: Body, storage_class: Body, endpoint_name: str) -> Endpoint:
        """The serving endpoint for a claim, or an event saying why there is none (and a retry)."""
        context = self.context
        class_name = storage_class["metadata"]["name"]
        endpoint = context.endpoints.get(endpoint_name)
        wants_driver = storage_class.get("provisioner")
        if endpoint is None and not valid_object_name(endpoint_name):
            message = f"StorageClass {class_name!r} routes to {shown(endpoint_name)}, not a valid DriverEndpoint name"
            await self._misrouted(claim, storage_class, message)
        if endpoint is None:
            spec_error = context.endpoints.spec_errors.get(endpoint_name)
            if not spec_error and await context.kube.get_or_none(DRIVER_ENDPOINT, endpoint_name) is not None:
                # It exists, and its handler has not set it up yet (at start, or just created):
                # a sidecar would not be running yet either. Wait, say nothing.
                raise Requeue(STARTING_RETRY_SECONDS, f"DriverEndpoint {endpoint_name!r} not set up yet")
            message = f"StorageClass {class_name!r} routes to DriverEndpoint {endpoint_name!r}, which " + (
                f"is invalid: {spec_error}" if spec_error else "does not exist"
            )
            await self._misrouted(claim, storage_class, message)
        elif wants_driver != endpoint.spec.driver_name:
            message = (
                f"StorageClass {class_name!r} has provisioner {wants_driver!r}, but its DriverEndpoint "
                f"{endpoint_name!r} serves driver {endpoint.spec.driver_name!r}"
            )
            await self._misrouted(claim, storage_class, message)
        elif endpoint.starting:
            # The sidecars' provisioner would not be running yet either: wait, say nothing.
            raise Requeue(STARTING_RETRY_SECONDS, f"DriverEndpoint {endpoint_name!r} not probed yet")
        elif not endpoint.serving:
            reason, detail = endpoint.problem or ("", "")
            message = f"DriverEndpoint {endpoint_name!r} is not ready ({reason}): {detail}"
            await self._provisioning_failed(claim, class_name, message)
            raise Requeue(None, message)
        assert endpoint is not None
        return endpoint

    async def _misrouted(self, claim: Body, storage_class: Body, message: str) -> None:
        annotations = claim.get("metadata", {}).get("annotations") or {}
        wanted = annotations.get(plan.ANN_STORAGE_PROVISIONER) or annotations.get(plan.ANN_STORAGE_PROVISIONER_BETA)
        if wanted != storage_class.get("provisioner"):
            raise Requeue(MISROUTED_RETRY_SECONDS, "claim not yet marked for its provisioner")
        await self._provisioning_failed(claim, storage_class["metadata"]["name"], message)
        await self._events(storage_class).warning(storage_class, "ProvisioningFailed", message)
        raise Requeue(MISROUTED_RETRY_SECONDS, message)

    def _events(self, storage_class: Body | None, driver: str = "") -> SignedEvents:
        """Events signed as external-provisioner for the class's driver (or `driver`) signs them."""
        events = self.context.events
        return events.signed(events.sources.provisioner(driver or str((storage_class or {}).get("provisioner") or "")))

    async def _provisioning_failed(self, claim: Body, class_name: str, message: str) -> None:
        await self._events(self.context.stores.classes.get(class_name)).warning(
            claim, "ProvisioningFailed", f"failed to provision volume with StorageClass {class_name!r}: {message}"
        )

    async def _fail(self, claim: Body, class_name: str, message: str, delay: float | None = None) -> NoReturn:
        """Count the failure, tell the user on the claim, and retry after `delay` (None: backoff)."""
        PROVISION_FAILED.labels(**{"class": class_name, "source": ""}).inc()
        await self._provisioning_failed(claim, class_name, message)
        raise Requeue(delay, message)

    async def _provision(self, claim: Body, storage_class: Body, endpoint: Endpoint) -> None:
        meta = claim["metadata"]
        key = key_of(meta["namespace"], meta["name"])
        class_name = storage_class["metadata"]["name"]
        assert endpoint.info is not None
        driver = plan.DriverFacts(
            endpoint.spec.driver_name, endpoint.info.controller, self._identity(endpoint.spec.driver_name)
        )
        started = time.monotonic()
        provision = await self._plan(claim, storage_class, endpoint, driver)
        if provision.volume_name in self.context.stores.volumes or meta["uid"] in self._provisioned:
            return  # the PV exists; kube-controller-manager binds it
        request = await self._request_with_secrets(provision)
        if isinstance(request, str):
            await self._fail(claim, class_name, request)
        await self._events(storage_class).normal(
            claim, "Provisioning", f'External provisioner is provisioning volume for claim "{key}"'
        )
        await self._protect_source(claim)
        journal = self.journal
        try:
            await journal.record(Entry.from_plan(provision, endpoint.spec.name, key, meta["uid"]))
        except KubeError as error:
            await self._fail(
                claim,
                class_name,
                f"could not record the provisioning intent in ConfigMap {journal.namespace}/{journal.name} "
                f"(nothing was created): {error}",
            )
        faults.reached("after-journal-record", key)
        try:
            response = await endpoint.call(
                CSIClient.create_volume, request, operation="CreateVolume", obj=key, fault_key=key
            )
        except CSIError as error:
            if not isinstance(error, MaybeInProgressError):
                journal.forget(provision.volume_name)  # the driver created nothing
            selected_node = (meta.get("annotations") or {}).get(plan.ANN_SELECTED_NODE)
            has_topology = provision.request.HasField("accessibility_requirements")
            if error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and selected_node and has_topology:
                await self._reschedule(claim)  # let the scheduler try another node
            delay = INFEASIBLE_RETRY_SECONDS if isinstance(error, InfeasibleError) else None
            await self._fail(claim, class_name, error.status_text, delay)
        try:
            volume = plan.pv_from_response(provision, response.volume, driver.identity)
        except plan.CapacityTooSmall as error:
            await self._delete_backend_volume(endpoint, response.volume.volume_id, provision.provisioner_secret, key)
            journal.forget(provision.volume_name)
            await self._fail(claim, class_name, str(error))
        await self._save_volume(volume)
        _remember(self._provisioned, meta["uid"])
        faults.reached("after-save-volume", key)
        journal.forget(provision.volume_name)
        labels = {"class": class_name, "source": ""}
        PROVISION_TOTAL.labels(**labels).inc()
        PROVISION_DURATION.labels(**labels).observe(time.monotonic() - started)
        await self._events(storage_class).normal(
            claim, "ProvisioningSucceeded", f"Successfully provisioned volume {provision.volume_name}"
        )

    async def _plan(
        self, claim: Body, storage_class: Body, endpoint: Endpoint, driver: plan.DriverFacts
    ) -> plan.ProvisionPlan:
        class_name = storage_class["metadata"]["name"]
        try:
            return plan.plan_provision(
                claim,
                storage_class,
                endpoint_name=endpoint.spec.name,
                driver=driver,
                settings=endpoint.spec.provisioner,
                accessibility=self._accessibility(claim, storage_class, endpoint),
                content_source=self._content_source(claim, driver),
                attributes_class=self.context.stores.attribute_classes.get(
                    (claim.get("spec") or {}).get("volumeAttributesClassName") or ""
                ),
            )
        except topology.TopologyError as error:
            if error.reschedule:
                await self._reschedule(claim)
            await self._fail(claim, class_name, str(error))
        except ParameterError as error:
            await self._fail(claim, class_name, str(error))

    def _content_source(self, claim: Body, driver: plan.DriverFacts) -> csi.VolumeContentSource | None:
        source = sources.data_source(claim)
        if source is None:
            return None
        stores = self.context.stores
        namespace = claim["metadata"]["namespace"]
        if sources.is_snapshot(source):
            snapshot = stores.snapshots.get(key_of(namespace, source.name))
            content_name = ((snapshot or {}).get("status") or {}).get("boundVolumeSnapshotContentName") or ""
            return sources.snapshot_source(
                claim, snapshot, stores.contents.get(content_name), driver.name, driver.controller_capabilities
            )
        if not sources.is_clone(source):
            raise ParameterError(f"data source {source.kind} {source.name!r} is not supported")
        source_claim = stores.claims.get(key_of(claim["metadata"]["namespace"], source.name))
        volume_name = ((source_claim or {}).get("spec") or {}).get("volumeName") or ""
        return sources.clone_source(
            claim, source_claim, stores.volumes.get(volume_name), driver.name, driver.controller_capabilities
        )

    async def _protect_source(self, claim: Body) -> None:
        """Put the protection finalizer on the source claim (clone) or VolumeSnapshot (restore)
        before CreateVolume, so the source cannot go while the volume is made from it."""
        source = sources.data_source(claim)
        namespace = claim["metadata"]["namespace"]
        if sources.is_clone(source):
            assert source is not None
            current = await self.context.kube.get(PVC, source.name, namespace)
            await finalizers.add(self.context.kube, PVC, current, sources.CLONE_PROTECTION_FINALIZER)
        elif sources.is_snapshot(source):
            assert source is not None
            current = await self.context.kube.get(VOLUME_SNAPSHOT, source.name, namespace)
            await finalizers.add(self.context.kube, VOLUME_SNAPSHOT, current, sources.SNAPSHOT_PROTECTION_FINALIZER)

    async def _release_clone_sources(self, key: str, claim: Body) -> None:
        """A bound or deleted clone (or restore) may free its source; a protected source checks itself."""
        meta, spec = claim["metadata"], claim.get("spec") or {}
        source = sources.data_source(claim)
        done = spec.get("volumeName") or meta.get("deletionTimestamp")
        if source is not None and done and sources.is_clone(source):
            await self.release_clone_source(key_of(meta["namespace"], source.name))
        if source is not None and done and sources.is_snapshot(source):
            self.snapshot_sources.add(key_of(meta["namespace"], source.name))
        if sources.CLONE_PROTECTION_FINALIZER in (meta.get("finalizers") or []):
            await self.release_clone_source(key)

    async def release_clone_source(self, source_key: str) -> None:
        """Drop the cloning-protection finalizer of a source being deleted once no pending
        clone of it remains. As external-provisioner: a living source keeps it."""
        source = self.context.stores.claims.get(source_key)
        if source is None or not source["metadata"].get("deletionTimestamp"):
            return
        if sources.pending_uses_of(source_key, list(self.context.stores.claims.values())):
            return
        namespace, name = source_key.split("/", 1)
        current = await self.context.kube.get_or_none(PVC, name, namespace)
        if current is not None:
            await finalizers.remove(self.context.kube, PVC, current, sources.CLONE_PROTECTION_FINALIZER)

    async def release_snapshot_source(self, snapshot_key: str) -> None:
        """Drop the restore-protection finalizer once no claim is still being restored from the snapshot."""
        self.context.endpoints.check_here(None)
        if sources.pending_uses_of(snapshot_key, list(self.context.stores.claims.values()), snapshot=True):
            return
        namespace, name = snapshot_key.split("/", 1)
        with contextlib.suppress(NotFound):
            await finalizers.remove_fresh(
                self.context.kube, VOLUME_SNAPSHOT, name, sources.SNAPSHOT_PROTECTION_FINALIZER, namespace
            )

    def _accessibility(self, claim: Body, storage_class: Body, endpoint: Endpoint) -> csi.TopologyRequirement | None:
        assert endpoint.info is not None
        if "VOLUME_ACCESSIBILITY_CONSTRAINTS" not in endpoint.info.plugin:
            return None
        stores = self.context.stores
        nodes = topology.node_topologies(
            endpoint.spec.driver_name,
            list(stores.csinodes.values()),
            {n["metadata"]["name"]: n for n in stores.nodes.values()},
        )
        settings = endpoint.spec.provisioner
        return topology.requirements(
            claim_name=claim["metadata"]["name"],
            selected_node=(claim["metadata"].get("annotations") or {}).get(plan.ANN_SELECTED_NODE),
            allowed_topologies=list(storage_class.get("allowedTopologies") or []),
            nodes=nodes,
            strict=settings.strict_topology,
            immediate_topology=settings.immediate_topology,
        )

    async def _reschedule(self, claim: Body) -> None:
        """Remove the scheduler's node choice, as external-provisioner does, so it picks again."""
        meta = claim["metadata"]
        patch = {"metadata": {"annotations": {plan.ANN_SELECTED_NODE: None}}}
        with contextlib.suppress(NotFound):
            await self.context.kube.patch(PVC, meta["name"], patch, meta["namespace"])

    async def _request_with_secrets(self, provision: plan.ProvisionPlan) -> csi.CreateVolumeRequest | str:
        """The CreateVolume request with its provisioner secret filled in, or why that failed."""
        request = csi.CreateVolumeRequest()
        request.CopyFrom(provision.request)
        try:
            request.secrets.update(await credentials(self.context.kube, provision.provisioner_secret, _MISSING_SECRET))
        except ParameterError as error:
            return str(error)
        return request

    async def _save_volume(self, volume: Body) -> None:
        """Create the PV; one that already exists (a retry after a crash) is fine."""
        try:
            await self.context.kube.create(PV, volume)
        except Conflict:
            log.info("PV %s already exists", volume["metadata"]["name"])

    async def _delete_backend_volume(
        self, endpoint: Endpoint, volume_id: str, secret: SecretRef | None, obj: str
    ) -> None:
        request = csi.DeleteVolumeRequest(volume_id=volume_id)
        try:
            request.secrets.update(await credentials(self.context.kube, secret, "secret {namespace}/{name} not found"))
        except ParameterError as error:
            # external-provisioner (handleSecretsForDeletion, v6.3.0 and v6.4.0) goes on without it, as
            # "the secret may have already been deleted": the same call goes out here, and
            # a driver that needs it answers with an error the PV's event shows.
            log.error("failed to get credentials for volume %s: %s; deleting without them", obj, error)
        await endpoint.call(CSIClient.delete_volume, request, operation="DeleteVolume", obj=obj, fault_key=obj)

    # --- the journal -----------------------------------------------------------------

    async def recover(self, endpoint_name: str) -> None:
        """Finish every journaled CreateVolume whose claim is gone; drop entries whose PV exists.

        An entry whose claim still exists is left to the claim's own (idempotent) retry.
        An orphan is created again under the same name, which returns the volume the
        driver already has (or makes one), and gets a PV whose claimRef names the dead
        claim: kube-controller-manager marks it Released and its reclaim policy applies,
        exactly as external-provisioner intends for this case, but across restarts.
        """
        context = self.context
        journal = self.journal
        context.endpoints.check_here(endpoint_name)  # the journal's entries of an endpoint are its holder's
        entries = await journal.entries(endpoint_name)
        if not entries:
            return
        endpoint = context.endpoints.get(endpoint_name)
        if endpoint is None or not endpoint.active("provisioner"):
            raise Requeue(None, f"DriverEndpoint {endpoint_name!r} cannot finish its journal yet")
        failed = 0
        for entry in entries:
            if await context.kube.get_or_none(PV, entry.volume_name) is not None:
                journal.forget(entry.volume_name)
                continue
            namespace, name = entry.claim.split("/", 1)
            claim = await context.kube.get_or_none(PVC, name, namespace)
            if claim is not None and claim["metadata"]["uid"] == entry.claim_uid:
                self.claims.add(entry.claim)
                continue
            try:
                await self._finish_orphan(endpoint, entry)
            except CSIError as error:
                failed += 1
                log.warning(
                    "journal: volume %s of deleted claim %s not finished yet: %s", entry.volume_name, entry.claim, error
                )
        if failed:
            raise Requeue(None, f"{failed} journaled volumes of deleted claims not finished yet")

    async def _finish_orphan(self, endpoint: Endpoint, entry: Entry) -> None:
        request = csi.CreateVolumeRequest()
        request.CopyFrom(entry.request)
        try:
            request.secrets.update(await credentials(self.context.kube, entry.provisioner_secret, _MISSING_SECRET))
        except ParameterError as error:
            # Its namespace (and a ${pvc.namespace} Secret with it) may be gone with the claim:
            # the call goes out without it, rather than never (and the volume then leaking).
            log.warning(
                "journal: volume %s of deleted claim %s: %s; finishing without it",
                entry.volume_name,
                entry.claim,
                error,
            )
        log.info("journal: finishing volume %s of deleted claim %s", entry.volume_name, entry.claim)
        response = await endpoint.call(CSIClient.create_volume, request, operation="CreateVolume", obj=entry.claim)
        volume = plan.pv_from_response(entry.to_plan(), response.volume, self._identity(endpoint.spec.driver_name))
        await self._save_volume(volume)
        self.journal.forget(entry.volume_name)

    # --- volumes -------------------------------------------------------------------

    async def sync_volume(self, name: str) -> None:
        context = self.context
        volume = context.stores.volumes.get(name)
        if volume is None:
            return
        endpoint_name = self._volume_endpoint_name(volume)
        if endpoint_name is None or not context.settings.serves(endpoint_name):
            return  # the sidecars', or another operator's (SIDECARLESS_ENDPOINTS)
        context.endpoints.check_here(endpoint_name)
        endpoint = context.endpoints.get(endpoint_name)
        if endpoint is None:
            driver = str(((volume.get("spec") or {}).get("csi") or {}).get("driver") or "")
            spec_error = context.endpoints.spec_errors.get(endpoint_name)
            if not spec_error and await context.kube.get_or_none(DRIVER_ENDPOINT, endpoint_name) is not None:
                raise Requeue(STARTING_RETRY_SECONDS, f"DriverEndpoint {endpoint_name!r} not set up yet")
            message = f"DriverEndpoint {endpoint_name!r} " + (
                f"is invalid: {spec_error}" if spec_error else "does not exist"
            )
            if isinstance(plan.volume_decision(volume, driver), plan.DeleteVolume):
                # Released, and nothing can delete it: say which endpoint it waits for.
                await self._events(None, driver).warning(
                    volume, "WaitingForDriverEndpoint", f"{message}: the volume is deleted once it is back"
                )
            raise Requeue(None, message)
        if not endpoint.serving:
            raise Requeue(None, f"DriverEndpoint {endpoint_name!r} is not serving")
        if volume["metadata"].get("uid") in self._deleted:
            return
        decision = plan.volume_decision(volume, endpoint.spec.driver_name)
        if isinstance(decision, plan.Skip):
            return
        if isinstance(decision, plan.AddFinalizer):
            await finalizers.add(context.kube, PV, volume, plan.PV_FINALIZER)
        elif isinstance(decision, plan.RemoveFinalizer):
            await finalizers.remove(context.kube, PV, volume, plan.PV_FINALIZER)
        elif endpoint.admits("provisioner") is not None:
            await self._delete(volume, endpoint)

    async def _delete(self, volume: Body, endpoint: Endpoint) -> None:
        context = self.context
        name = volume["metadata"]["name"]
        class_name = (volume.get("spec") or {}).get("storageClassName") or ""
        attached = [
            a
            for a in context.stores.attachments.values()
            if ((a.get("spec") or {}).get("source") or {}).get("persistentVolumeName") == name
        ]
        if attached:
            message = f"persistentvolume {name} is still attached to node {attached[0]['spec'].get('nodeName', '')}"
            await self._events(None, endpoint.spec.driver_name).warning(volume, "VolumeFailedDelete", message)
            raise Requeue(None, message)
        started = time.monotonic()
        annotations = volume["metadata"].get("annotations") or {}
        secret = None
        if annotations.get(plan.ANN_DELETION_SECRET_NAME):
            secret = SecretRef(
                annotations[plan.ANN_DELETION_SECRET_NAME], annotations[plan.ANN_DELETION_SECRET_NAMESPACE]
            )
        try:
            await self._delete_backend_volume(endpoint, volume["spec"]["csi"]["volumeHandle"], secret, name)
        except CSIError as error:
            DELETE_FAILED.labels(**{"class": class_name}).inc()
            await self._events(None, endpoint.spec.driver_name).warning(volume, "VolumeFailedDelete", error.status_text)
            raise Requeue(None, str(error)) from error
        # Delete the PV first, then drop our finalizer: a failure in between leaves a PV
        # that is being deleted and still carries the finalizer, which this same path
        # finishes on the next pass (DeleteVolume of a missing volume is OK).
        being_deleted = await context.kube.delete(PV, name, preconditions={"uid": volume["metadata"]["uid"]})
        await finalizers.remove_last(context.kube, PV, name, plan.PV_FINALIZER, current=being_deleted)
        _remember(self._deleted, volume["metadata"]["uid"])
        DELETE_TOTAL.labels(**{"class": class_name}).inc()
        DELETE_DURATION.labels(**{"class": class_name}).observe(time.monotonic() - started)
