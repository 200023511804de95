"""The resizer: bigger claims -> ControllerExpandVolume, and VolumeAttributesClass changes
-> ControllerModifyVolume (external-resizer's two controllers, in two queues).

It holds no Pods in memory (external-resizer's cluster-wide Pod informer runs out of memory
in large clusters, #211): only when a driver answers FAILED_PRECONDITION ("in use, expand
offline") does it list the Pods of that one claim's namespace, page by page, before retrying.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from csi_client import CSIClient, CSIError, FinalError, InfeasibleError, MaybeInProgressError
from sidecarless import routing
from sidecarless.context import Context
from sidecarless.credentials import credentials, volume_secret
from sidecarless.endpoints.live import Endpoint
from sidecarless.endpoints.spec import ACTIVE, NODE_ONLY
from sidecarless.events import SignedEvents
from sidecarless.kube import POD, PV, PVC, Conflict, NotFound
from sidecarless.resizer import expand, modify
from sidecarless.vocabulary import ParameterError, now_rfc3339, object_key, ref_key
from sidecarless.workqueue import Backoff, Requeue, WorkQueue

Body = dict[str, Any]

log = logging.getLogger("sidecarless.resizer")

INFEASIBLE_RETRY_SECONDS = 300.0  # external-resizer's slow set: an infeasible size is retried this rarely
CONFLICT_RETRY_SECONDS = 0.5  # the claim changed under us: its newer version is on its way
IN_USE_PAGE = 100  # Pods per page of the in-use check: bounds its memory, whatever the namespace holds


class Resizer:
    def __init__(self, context: Context) -> None:
        self.context = context
        workers = context.settings.resizer_workers
        self.expansions: WorkQueue[str] = WorkQueue(
            "expansions", self.sync_expansion, workers=workers, backoff_of=self._backoff_of
        )
        self.modifications: WorkQueue[str] = WorkQueue(
            "modifications", self.sync_modification, workers=workers, backoff_of=self._backoff_of
        )
        # Claims (namespace/name) whose last ControllerExpandVolume ended in a final error:
        # the driver is surely not working on it any more, so a new size may be asked for.
        self._final_errors: set[str] = set()
        self._in_use_errors: set[str] = set()  # claims whose driver said FAILED_PRECONDITION
        # Infeasible expansions and modifications: key -> monotonic time of the next try.
        self._slow: dict[tuple[str, str], float] = {}
        # Claims whose modification failed with a final error in this process; any other
        # InProgress modification is "uncertain" and continues to its recorded target.
        self._modify_certain: set[str] = set()

    def start(self) -> None:
        self.expansions.start()
        self.modifications.start()

    async def stop(self) -> None:
        await self.expansions.stop()
        await self.modifications.stop()

    # --- queueing ------------------------------------------------------------------

    def claim_changed(self, claim: Body, *, quiet: bool = False) -> None:
        if (claim.get("status") or {}).get("phase") != "Bound":
            return
        key = object_key(claim)
        self.expansions.add(key, quiet=quiet)
        if modify.wants_modification(claim):
            self.modifications.add(key, quiet=quiet)

    def claim_deleted(self, key: str) -> None:
        self._final_errors.discard(key)
        self._in_use_errors.discard(key)
        self._modify_certain.discard(key)
        for kind in ("expand", "modify"):
            self._slow.pop((kind, key), None)

    def volume_changed(self, volume: Body, *, quiet: bool = False) -> None:
        """A PV's change can finish a claim's business (its pre-resize annotation to drop)."""
        ref = (volume.get("spec") or {}).get("claimRef") or {}
        claim = self.context.stores.claims.get(ref_key(ref))
        if claim is not None:
            self.claim_changed(claim, quiet=quiet)

    def endpoint_changed(self, endpoint: str) -> None:
        for claim in self.context.stores.claims.values():
            self.claim_changed(claim)

    # --- routing -------------------------------------------------------------------

    def _endpoint(self, volume: Body) -> Endpoint | None:
        context = self.context
        return context.endpoints.get(routing.volume_endpoint(context.stores, context.endpoints.drivers(), volume))

    def _events(self, endpoint: Endpoint) -> SignedEvents:
        """Events signed as external-resizer for the endpoint's driver signs them."""
        return self.context.events.signed(self.context.events.sources.resizer(endpoint.spec.driver_name))

    def _backoff_of(self, key: str) -> Backoff | None:
        claim = self.context.stores.claims.get(key)
        volume = self.context.stores.volumes.get(((claim or {}).get("spec") or {}).get("volumeName") or "")
        endpoint = self._endpoint(volume) if volume is not None else None
        return endpoint.backoff if endpoint is not None else None

    def _claim_and_volume(self, key: str) -> tuple[Body, Body, Endpoint] | None:
        stores = self.context.stores
        claim = stores.claims.get(key)
        if claim is None:
            self.claim_deleted(key)
            return None
        volume_name = (claim.get("spec") or {}).get("volumeName")
        if not volume_name:
            return None
        volume = stores.volumes.get(volume_name)
        if volume is None:
            raise Requeue(None, f"PV {volume_name} of claim {key} not seen yet")
        endpoint = self._endpoint(volume)
        if endpoint is None or not expand.bound_to(claim, volume):
            return None
        endpoint.check_here()
        return claim, volume, endpoint

    # --- expansion -----------------------------------------------------------------

    async def sync_expansion(self, key: str) -> None:
        found = self._claim_and_volume(key)
        if found is None:
            return
        claim, volume, endpoint = found
        annotations = (volume.get("metadata") or {}).get("annotations") or {}
        if expand.ANN_PRE_RESIZE_CAPACITY in annotations and expand.node_expansion_complete(claim, volume):
            volume = await self.context.kube.patch(PV, volume["metadata"]["name"], expand.pre_resize_cleanup_patch())
        if not expand.needs_resize(claim):
            return
        state = endpoint.admits("resizer", ACTIVE, NODE_ONLY)
        if state is None:
            return
        plan = expand.plan_expansion(
            claim, volume, final_error=key in self._final_errors, controller_expansion=state == ACTIVE
        )
        if plan is None:
            return
        if not plan.update_status:
            remaining = self._slow_remaining("expand", key)
            if remaining > 0:
                raise Requeue(remaining, f"expansion of {key} was infeasible; trying again in {remaining:.0f}s")
        await self._expand(key, claim, volume, endpoint, plan, state=state)

    async def _expand(
        self, key: str, claim: Body, volume: Body, endpoint: Endpoint, plan: expand.ExpansionPlan, *, state: str
    ) -> None:
        context = self.context
        driver = endpoint.spec.driver_name
        volume_name = volume["metadata"]["name"]
        try:
            claim = await self._patch_claim(claim, expand.in_progress_patch(claim, plan, now_rfc3339()))
        except Conflict as error:
            raise Requeue(CONFLICT_RETRY_SECONDS, "claim changed; using its newer version") from error
        except NotFound:
            return  # the claim is gone
        if key in self._in_use_errors and await self._in_use(claim):
            message = (
                f"Unable to expand {key} because CSI driver {driver} only supports offline expansion "
                "and volume is currently in-use"
            )
            await self._events(endpoint).warning(claim, "VolumeResizeFailed", message)
            raise Requeue(None, message)
        await self._events(endpoint).normal(claim, "Resizing", f"External resizer is resizing volume {volume_name}")
        self._in_use_errors.discard(key)
        if state == NODE_ONLY:
            new_size, fs_resize_required = plan.size, True  # kubelet's NodeExpandVolume does it all
        else:
            assert endpoint.info is not None
            try:
                request = expand.expand_request(volume, plan.size, endpoint.info.controller)
                request.secrets.update(
                    await credentials(context.kube, volume_secret(volume, "controllerExpandSecretRef"))
                )
            except ParameterError as error:
                await self._events(endpoint).warning(claim, "VolumeResizeFailed", str(error))
                raise Requeue(None, str(error)) from error
            try:
                response = await endpoint.call(
                    CSIClient.controller_expand_volume,
                    request,
                    operation="ControllerExpandVolume",
                    obj=key,
                    fault_key=key,
                    counts="expansions",
                )
            except CSIError as error:
                await self._expansion_failed(key, claim, volume_name, endpoint, error)
                raise Requeue(None, str(error)) from error
            new_size = response.capacity_bytes or plan.size
            fs_resize_required = response.node_expansion_required
        self._final_errors.discard(key)
        self._slow.pop(("expand", key), None)
        await context.kube.patch(
            PV,
            volume_name,
            expand.volume_capacity_patch(volume, claim, new_size, fs_resize_required=fs_resize_required),
        )
        if fs_resize_required:
            await self._patch_claim(claim, expand.node_pending_patch(claim, now_rfc3339()))
            await self._events(endpoint).normal(
                claim, "FileSystemResizeRequired", "Require file system resize of volume on node"
            )
        else:
            await self._patch_claim(claim, expand.finished_patch(claim, new_size))
            await self._events(endpoint).normal(claim, "VolumeResizeSuccessful", "Resize volume succeeded")

    async def _expansion_failed(
        self, key: str, claim: Body, volume_name: str, endpoint: Endpoint, error: CSIError
    ) -> None:
        driver = endpoint.spec.driver_name
        if error.code_name == "FailedPrecondition":
            self._in_use_errors.add(key)
        if isinstance(error, FinalError):
            self._final_errors.add(key)
            infeasible = isinstance(error, InfeasibleError)
            if infeasible:
                self._slow[("expand", key)] = time.monotonic() + INFEASIBLE_RETRY_SECONDS
            else:
                self._slow.pop(("expand", key), None)
            with contextlib.suppress(NotFound):
                await self._patch_claim(
                    claim, expand.failed_patch(claim, error.status_text, infeasible=infeasible, now=now_rfc3339())
                )
        else:
            self._final_errors.discard(key)
            self._slow.pop(("expand", key), None)
        await self._events(endpoint).warning(
            claim,
            "VolumeResizeFailed",
            f'resize volume "{volume_name}" by resizer "{driver}" failed: {error.status_text}',  # Go's %q
        )

    async def _in_use(self, claim: Body) -> bool:
        """Whether a Pod that has not terminated mounts the claim: asked only after FAILED_PRECONDITION."""
        namespace, name = claim["metadata"]["namespace"], claim["metadata"]["name"]
        async for page in self.context.kube.pages(POD, namespace, limit=IN_USE_PAGE):
            for pod in page:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                for volume in (pod.get("spec") or {}).get("volumes") or []:
                    if (volume.get("persistentVolumeClaim") or {}).get("claimName") == name:
                        return True
        return False

    # --- modification --------------------------------------------------------------

    async def sync_modification(self, key: str) -> None:
        found = self._claim_and_volume(key)
        if found is None:
            return
        claim, volume, endpoint = found
        if endpoint.admits("modifier") is None:
            return
        if modify.infeasible_for_current_spec(claim):
            remaining = self._slow_remaining("modify", key)
            if remaining > 0:
                raise Requeue(remaining, f"modification of {key} was infeasible; trying again in {remaining:.0f}s")
            self._slow[("modify", key)] = time.monotonic() + INFEASIBLE_RETRY_SECONDS
        else:
            self._slow.pop(("modify", key), None)
        status = modify.modify_status(claim) or {}
        uncertain = status.get("status") == modify.IN_PROGRESS and key not in self._modify_certain
        decision = modify.modify_decision(claim, uncertain=uncertain)
        try:
            if isinstance(decision, modify.RollBack):
                await self._events(endpoint).normal(claim, "VolumeModifyCanceled", "Cancelled modify.")
                await self._patch_claim(claim, modify.rolled_back_patch(claim))
            elif isinstance(decision, modify.ModifyTo):
                await self._modify(key, claim, volume, endpoint, decision)
        except Conflict as error:
            raise Requeue(CONFLICT_RETRY_SECONDS, "claim changed; using its newer version") from error
        except NotFound:
            return  # the claim is gone

    async def _modify(self, key: str, claim: Body, volume: Body, endpoint: Endpoint, decision: modify.ModifyTo) -> None:
        context = self.context
        attributes_class = context.stores.attribute_classes.get(decision.class_name)
        if attributes_class is None:
            await self._events(endpoint).warning(
                claim, "VolumeModifyFailed", f'VAC "{decision.class_name}" does not exist.'
            )
            if decision.start:
                await self._patch_claim(claim, modify.status_patch(claim, modify.PENDING, now_rfc3339()))
            raise Requeue(None, f"VolumeAttributesClass {decision.class_name} not found")
        if decision.start:
            claim = await self._patch_claim(claim, modify.status_patch(claim, modify.IN_PROGRESS, now_rfc3339()))
            await self._events(endpoint).normal(
                claim,
                "VolumeModify",
                f"external resizer is modifying volume {claim['metadata']['name']} with vac {decision.class_name}",
            )
        request = modify.request(
            volume,
            modify.mutable_parameters(
                attributes_class, claim, volume["metadata"]["name"], extra_metadata=endpoint.spec.extra_modify_metadata
            ),
        )
        try:
            request.secrets.update(await credentials(context.kube, modify.secret_ref(volume)))
        except ParameterError as error:
            await self._events(endpoint).warning(claim, "VolumeModifyFailed", str(error))
            raise Requeue(None, str(error)) from error
        try:
            await endpoint.call(
                CSIClient.controller_modify_volume,
                request,
                operation="ControllerModifyVolume",
                obj=key,
                fault_key=key,
                counts="modifications",
            )
        except CSIError as error:
            await self._modification_failed(key, claim, decision.class_name, error, endpoint)
            raise Requeue(None, str(error)) from error
        self._modify_certain.discard(key)
        target = str((modify.modify_status(claim) or {}).get("targetVolumeAttributesClassName") or decision.class_name)
        await context.kube.patch(PV, volume["metadata"]["name"], modify.volume_patch(target))
        await self._patch_claim(claim, modify.completed_patch(claim, target))
        await self._events(endpoint).normal(
            claim,
            "VolumeModifySuccessful",
            f"external resizer modified volume {claim['metadata']['name']} with vac {target} successfully",
        )

    async def _modification_failed(
        self, key: str, claim: Body, class_name: str, error: CSIError, endpoint: Endpoint
    ) -> None:
        message = error.status_text
        state = modify.IN_PROGRESS
        if isinstance(error, MaybeInProgressError):
            self._modify_certain.discard(key)
            message += f". Still modifying to VAC {class_name}"
        else:
            self._modify_certain.add(key)
            if error.code_name == "InvalidArgument":
                state = modify.INFEASIBLE
                self._slow[("modify", key)] = time.monotonic() + INFEASIBLE_RETRY_SECONDS
        patch = modify.status_patch(
            claim,
            state,
            now_rfc3339(),
            error=(error.code_name, error.message),
            final=not isinstance(error, MaybeInProgressError),
        )
        with contextlib.suppress(NotFound, Conflict):
            await self._patch_claim(claim, patch)
        await self._events(endpoint).warning(claim, "VolumeModifyFailed", message)

    # --- helpers -------------------------------------------------------------------

    async def _patch_claim(self, claim: Body, patch: Body) -> Body:
        meta = claim["metadata"]
        return await self.context.kube.patch(PVC, meta["name"], patch, meta["namespace"], subresource="status")

    def _slow_remaining(self, kind: str, key: str) -> float:
        until = self._slow.get((kind, key))
        return max(0.0, until - time.monotonic()) if until is not None else 0.0
