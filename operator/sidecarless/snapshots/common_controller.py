"""snapshot-controller's half: VolumeSnapshots <-> VolumeSnapshotContents, cluster-wide.

It binds snapshots to contents (creating `snapcontent-<uid>` for dynamic ones), keeps the
finalizers on snapshots, contents and source PVCs, copies a content's status into its
snapshot, and deletes contents per their deletionPolicy. It calls no driver: the driver
half (:mod:`sidecarless.snapshots.sidecar_controller`) does. Like snapshot-controller it serves every
driver; turn it off (`SIDECARLESS_SNAPSHOT_CONTROLLER=false`) where the upstream
snapshot-controller runs.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from sidecarless import finalizers
from sidecarless.context import Context
from sidecarless.events import SNAPSHOT_CONTROLLER
from sidecarless.kube import PVC, VOLUME_SNAPSHOT, VOLUME_SNAPSHOT_CONTENT, Conflict, KubeError, NotFound
from sidecarless.metrics import SNAPSHOT_OPERATION_SECONDS
from sidecarless.snapshots import plan
from sidecarless.snapshots.group_plan import MEMBER_FINALIZER, group_of
from sidecarless.snapshots.plan import SnapshotError
from sidecarless.snapshots.sidecar_controller import snapshots_here
from sidecarless.vocabulary import ParameterError, key_of, now_rfc3339, object_key, ref_key
from sidecarless.workqueue import LOUD, Quiet, Requeue, WorkQueue

Body = dict[str, Any]

log = logging.getLogger("sidecarless.snapshots")

CONFLICT_RETRY_SECONDS = 0.5


class SnapshotController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.events = context.events.signed(SNAPSHOT_CONTROLLER)  # as snapshot-controller signs
        workers = context.settings.snapshot_workers
        self.snapshots: WorkQueue[str] = WorkQueue("volumesnapshots", self.sync_snapshot, workers=workers)
        self.contents: WorkQueue[str] = WorkQueue("volumesnapshotcontents", self.sync_content, workers=workers)

    def start(self) -> None:
        self.snapshots.start()
        self.contents.start()

    async def stop(self) -> None:
        await self.snapshots.stop()
        await self.contents.stop()

    # --- queueing ------------------------------------------------------------------

    def endpoint_changed(self, endpoint: str) -> None:
        # Any driver's snapshots may wait for a content its driver half could not cut yet.
        for snapshot in self.context.stores.snapshots.values():
            self.snapshots.add(object_key(snapshot))
        for content in self.context.stores.contents.values():
            self.contents.add(content["metadata"]["name"])

    def snapshot_deleted(self, snapshot: Body) -> None:
        """A snapshot gone from the API: its content may now lose its finalizer; its PVC too."""
        name = plan.bound_content_name(snapshot)
        if name:
            self.contents.add(name)
        claim = plan.source_claim(snapshot)
        if claim:
            self._requeue_snapshots_of(snapshot["metadata"]["namespace"], claim)

    def content_changed(self, content: Body, quiet: Quiet = LOUD) -> None:
        self.contents.add(content["metadata"]["name"], quiet=quiet.own)
        ref = (content.get("spec") or {}).get("volumeSnapshotRef") or {}
        if ref.get("name"):
            # Its status is what the snapshot copies: any change of it wakes the snapshot.
            self.snapshots.add(ref_key(ref), quiet=quiet.others)

    def claim_changed(self, claim: Body, *, quiet: bool = False) -> None:
        """A restore finished or a PVC changed: snapshots of (or restored into) it look again."""
        namespace = claim["metadata"]["namespace"]
        source = (claim.get("spec") or {}).get("dataSource") or {}
        if source.get("kind") == "VolumeSnapshot" and source.get("name"):
            self.snapshots.add(key_of(namespace, source["name"]), quiet=quiet)
        if plan.PVC_FINALIZER in (claim["metadata"].get("finalizers") or []):
            self._requeue_snapshots_of(namespace, claim["metadata"]["name"], quiet=quiet)

    def group_deleted(self, group: Body) -> None:
        """A VolumeGroupSnapshot gone: its members may be deleted now."""
        namespace, name = group["metadata"].get("namespace"), group["metadata"]["name"]
        for snapshot in self.context.stores.snapshots.values():
            if snapshot["metadata"].get("namespace") == namespace and group_of(snapshot) == name:
                self.snapshots.add(object_key(snapshot))

    def _requeue_snapshots_of(self, namespace: str, claim_name: str, *, quiet: bool = False) -> None:
        """The snapshots of one claim: one of them releases the claim's pvc-as-source-protection."""
        for snapshot in self.context.stores.snapshots.values():
            if snapshot["metadata"].get("namespace") == namespace and plan.source_claim(snapshot) == claim_name:
                self.snapshots.add(object_key(snapshot), quiet=quiet)

    # --- VolumeSnapshots -----------------------------------------------------------

    async def sync_snapshot(self, key: str) -> None:
        self.context.endpoints.check_here(None)  # the work of no endpoint: one replica does it
        snapshot = self.context.stores.snapshots.get(key)
        if snapshot is None:
            return
        await self._release_claim(snapshot)
        try:
            if snapshot["metadata"].get("deletionTimestamp"):
                await self._delete(snapshot)
                return
            plan.validate_source(snapshot)
            snapshot = await self._ensure_class(snapshot)
            content = self._content_of(snapshot)
            await self._add_finalizers(snapshot, content)
            snapshot = self.context.stores.snapshots.get(key) or snapshot  # with our finalizers' version
            if plan.is_ready(snapshot) and (snapshot.get("status") or {}).get("boundVolumeSnapshotContentName"):
                self._check_ready(snapshot, content)
            elif plan.is_dynamic(snapshot):
                await self._sync_dynamic(snapshot, content)
            else:
                await self._sync_preprovisioned(snapshot, content)
        except SnapshotError as error:
            await self._error(snapshot, error)
            raise Requeue(None, str(error)) from error
        except Conflict as error:
            raise Requeue(CONFLICT_RETRY_SECONDS, "snapshot changed; using its newer version") from error

    def _content_of(self, snapshot: Body) -> Body | None:
        name = plan.bound_content_name(snapshot)
        return self.context.stores.contents.get(name) if name else None

    async def _ensure_class(self, snapshot: Body) -> Body:
        """An explicit class must exist; a dynamic snapshot without one gets its driver's default class."""
        stores = self.context.stores
        class_name = (snapshot.get("spec") or {}).get("volumeSnapshotClassName")
        if class_name:
            if stores.snapshot_classes.get(class_name) is None:
                raise SnapshotError(
                    "GetSnapshotClassFailed",
                    "Failed to get snapshot class with error "
                    f'volumesnapshotclass.snapshot.storage.k8s.io "{class_name}" not found',
                )
            return snapshot
        if not plan.is_dynamic(snapshot) or group_of(snapshot):
            return snapshot  # pre-provisioned and group members need no class
        volume = self._source_volume(snapshot)
        driver = ((volume or {}).get("spec") or {}).get("csi", {}).get("driver")
        if not driver:
            raise SnapshotError(
                "SetDefaultSnapshotClassFailed",
                "Failed to set default snapshot class with error "
                f"snapshotting non-CSI volumes is not supported, snapshot:{object_key(snapshot)}",
            )
        default = plan.default_class(list(stores.snapshot_classes.values()), driver)
        meta = snapshot["metadata"]
        return await self.context.kube.patch(
            VOLUME_SNAPSHOT,
            meta["name"],
            {"spec": {"volumeSnapshotClassName": default["metadata"]["name"]}},
            meta["namespace"],
        )

    def _source_volume(self, snapshot: Body) -> Body | None:
        stores = self.context.stores
        claim = stores.claims.get(key_of(snapshot["metadata"]["namespace"], plan.source_claim(snapshot)))
        volume_name = ((claim or {}).get("spec") or {}).get("volumeName")
        return stores.volumes.get(volume_name) if volume_name else None

    async def _add_finalizers(self, snapshot: Body, content: Body | None) -> None:
        wanted = [plan.SOURCE_FINALIZER]
        if not group_of(snapshot) and self._bound_protection_wanted(snapshot, content):
            wanted.append(plan.BOUND_FINALIZER)
        await finalizers.add(self.context.kube, VOLUME_SNAPSHOT, snapshot, *wanted)

    def _bound_protection_wanted(self, snapshot: Body, content: Body | None) -> bool:
        """snapshot-controller adds bound-protection once the snapshot is bound to a content
        that deletes its snapshot. A dynamic snapshot whose class deletes gets it with the
        source finalizer, in the same write, before its content exists: the end state is
        the same, one write sooner (deletion removes it whether or not a content came)."""
        bound = (snapshot.get("status") or {}).get("boundVolumeSnapshotContentName")
        if bound:
            return content is not None and (content.get("spec") or {}).get("deletionPolicy") == "Delete"
        if content is not None or not plan.is_dynamic(snapshot):
            return False
        class_name = (snapshot.get("spec") or {}).get("volumeSnapshotClassName") or ""
        snapshot_class = self.context.stores.snapshot_classes.get(class_name)
        return snapshot_class is not None and snapshot_class.get("deletionPolicy", "Delete") == "Delete"

    def _check_ready(self, snapshot: Body, content: Body | None) -> None:
        if content is None:
            raise SnapshotError("SnapshotContentMissing", "VolumeSnapshotContent is missing")
        if not plan.bound_to(content, snapshot):
            raise SnapshotError(
                "SnapshotMisbound", "VolumeSnapshotContent is not bound to the VolumeSnapshot correctly"
            )

    async def _sync_dynamic(self, snapshot: Body, content: Body | None) -> None:
        if group_of(snapshot):
            # A group member: the group controller made and bound its content.
            if content is None:
                raise Requeue(None, f"detected group snapshot member {object_key(snapshot)} with no content, retrying")
            await self._copy_status(snapshot, content)
            return
        if content is not None:
            plan.check_content_binding(snapshot, content)
            if ((content.get("spec") or {}).get("source") or {}).get("snapshotHandle"):
                raise SnapshotError(
                    "SnapshotHandleSet",
                    f"Snapshot handle should not be set in content {object_key(snapshot)} for dynamic provisioning",
                )
            await self._copy_status_soon(snapshot, content)
            return
        content = await self._create_content(snapshot)
        await self.events.normal(
            snapshot,
            "CreatingSnapshot",
            f"Waiting for a snapshot {object_key(snapshot)} to be created by the CSI driver.",
        )
        await self._copy_status_soon(snapshot, content)

    async def _copy_status_soon(self, snapshot: Body, content: Body) -> None:
        """Copy the content's status now, or once the driver half has answered (the content's
        change brings the snapshot back) or has taken too long: plan.first_status_wait."""
        wait = plan.first_status_wait(snapshot, content)
        if wait > 0:
            self.snapshots.add_after(object_key(snapshot), wait)
            return
        await self._copy_status(snapshot, content)

    async def _create_content(self, snapshot: Body) -> Body:
        context = self.context
        stores = context.stores
        namespace = snapshot["metadata"]["namespace"]
        claim = stores.claims.get(key_of(namespace, plan.source_claim(snapshot)))
        plan.check_claim(snapshot, claim)
        assert claim is not None
        # The PVC finalizer goes on before anything else, as snapshot-controller does: the
        # claim cannot disappear between here and the driver's CreateSnapshot.
        await finalizers.add(context.kube, PVC, claim, plan.PVC_FINALIZER)
        volume_name = (claim.get("spec") or {}).get("volumeName") or ""
        volume = stores.volumes.get(volume_name) if volume_name else None
        plan.check_claim_and_volume(snapshot, claim, volume)
        assert volume is not None
        snapshot_class = stores.snapshot_classes.get((snapshot.get("spec") or {}).get("volumeSnapshotClassName") or "")
        if snapshot_class is None:
            raise SnapshotError(
                "SnapshotContentCreationFailed",
                "Failed to create snapshot content with error failed to get input parameters to create snapshot "
                f'{snapshot["metadata"]["name"]}: "failed to take snapshot {snapshot["metadata"]["name"]} '
                'without a snapshot class"',
            )
        volume_driver = volume["spec"]["csi"].get("driver")
        if snapshot_class.get("driver") != volume_driver:
            # snapshot-controller would hand the content to the class's driver, which knows
            # nothing of this volume; refuse it here, where the user looks.
            raise SnapshotError(
                "SnapshotContentCreationFailed",
                "Failed to create snapshot content with error "
                f"VolumeSnapshotClass {snapshot_class['metadata']['name']} "
                f"is for driver {snapshot_class.get('driver')}, but PVC {plan.source_claim(snapshot)} is a volume of "
                f"driver {volume_driver}",
            )
        name = plan.dynamic_content_name(snapshot)
        try:
            secret = plan.snapshotter_secret(snapshot_class.get("parameters") or {}, name, snapshot)
        except ParameterError as error:
            raise SnapshotError(
                "SnapshotContentCreationFailed",
                "Failed to create snapshot content with error failed to get input parameters to create snapshot "
                f'{snapshot["metadata"]["name"]}: "{error}"',
            ) from error
        body = plan.new_content(snapshot, volume, snapshot_class, secret)
        if plan.takes_snapshot_at_once(snapshot_class, secret) and snapshots_here(context, body):
            body = plan.new_content(snapshot, volume, snapshot_class, secret, being_created=True)
        try:
            return await context.kube.create(VOLUME_SNAPSHOT_CONTENT, body)
        except KubeError as error:
            if error.status == 409:
                return stores.contents.get(name) or body  # made by an earlier pass
            await self.events.warning(
                snapshot,
                "CreateSnapshotContentFailed",
                f"Error creating volume snapshot content object for snapshot {object_key(snapshot)}: {error}.",
            )
            raise Requeue(None, str(error)) from error

    async def _sync_preprovisioned(self, snapshot: Body, content: Body | None) -> None:
        if content is None:
            raise SnapshotError("SnapshotContentMissing", "VolumeSnapshotContent is missing")
        plan.check_content_binding(snapshot, content)
        spec = content.get("spec") or {}
        ref = spec.get("volumeSnapshotRef") or {}
        class_name = (snapshot.get("spec") or {}).get("volumeSnapshotClassName")
        if not ref.get("uid") or not spec.get("volumeSnapshotClassName"):
            patch: Body = {"spec": {"volumeSnapshotRef": {"uid": snapshot["metadata"]["uid"]}}}
            if class_name:
                patch["spec"]["volumeSnapshotClassName"] = class_name
            try:
                content = await self.context.kube.patch(VOLUME_SNAPSHOT_CONTENT, content["metadata"]["name"], patch)
            except KubeError as error:
                raise SnapshotError(
                    "SnapshotBindFailed", f"Snapshot failed to bind VolumeSnapshotContent, {error}"
                ) from error
        await self._copy_status(snapshot, content)

    async def _copy_status(self, snapshot: Body, content: Body) -> None:
        status, events = plan.snapshot_status(snapshot, content)
        group = group_of(snapshot)
        if group:
            status["volumeGroupSnapshotName"] = group
        operations = {"SnapshotCreated": "CreateSnapshot", "SnapshotReady": "CreateSnapshotAndReady"}
        for reason, message in events:
            await self.events.normal(snapshot, reason, message)
            SNAPSHOT_OPERATION_SECONDS.labels(
                driver_name=(content.get("spec") or {}).get("driver", ""),
                operation_name=operations[reason],
                operation_status="Success",
                snapshot_type="Dynamic" if plan.is_dynamic(snapshot) else "PreProvisioned",
            ).observe(plan.seconds_since(snapshot["metadata"].get("creationTimestamp", "")))
        meta = snapshot["metadata"]
        try:
            await self.context.kube.patch(
                VOLUME_SNAPSHOT,
                meta["name"],
                {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status},
                meta["namespace"],
                subresource="status",
            )
        except NotFound:
            return

    async def _error(self, snapshot: Body, error: SnapshotError) -> None:
        """snapshot-controller's updateSnapshotErrorStatusWithEvent: once per distinct message."""
        if ((snapshot.get("status") or {}).get("error") or {}).get("message") == str(error):
            return
        meta = snapshot["metadata"]
        ready_false = error.reason not in ("GetSnapshotClassFailed", "SetDefaultSnapshotClassFailed")
        with contextlib.suppress(NotFound, Conflict):
            await self.context.kube.patch(
                VOLUME_SNAPSHOT,
                meta["name"],
                {"status": plan.error_status(str(error), now_rfc3339(), ready_false=ready_false)},
                meta["namespace"],
                subresource="status",
            )
        await self.events.warning(snapshot, error.reason, str(error))

    # --- deletion ------------------------------------------------------------------

    async def _delete(self, snapshot: Body) -> None:
        context = self.context
        meta = snapshot["metadata"]
        content = self._content_of(snapshot)
        if content is not None and not plan.bound_to(content, snapshot):
            content = None
        held = {plan.SOURCE_FINALIZER, plan.BOUND_FINALIZER, MEMBER_FINALIZER} & set(meta.get("finalizers") or [])
        if not held:
            return
        group = group_of(snapshot)
        if group and context.stores.group_snapshots.get(key_of(meta["namespace"], group)) is not None:
            await self.events.warning(
                snapshot,
                "SnapshotDeletePending",
                f"deletion of the individual volume snapshot {object_key(snapshot)} is not allowed as it belongs to "
                f"group snapshot {meta['namespace']}/{group}. Deleting the group snapshot will trigger the deletion "
                "of all the individual volume snapshots that are part of the group.",
            )
            raise Requeue(None, f"{object_key(snapshot)} belongs to group snapshot {group}")
        if content is not None and plan.restoring_from(snapshot, list(context.stores.claims.values())):
            await self.events.warning(snapshot, "SnapshotDeletePending", "Snapshot is being used to restore a PVC")
            raise Requeue(None, f"snapshot {object_key(snapshot)} is in use (being used to restore a PVC)")
        delete_content = content is not None and (content.get("spec") or {}).get("deletionPolicy") == "Delete"
        told_by_snapshot = content is not None and self._driver_half_reads_snapshot(snapshot, content)
        if content is not None and not told_by_snapshot:
            await self._mark_being_deleted(content)
        if delete_content:
            assert content is not None
            if not content["metadata"].get("deletionTimestamp"):  # a second DELETE would change nothing
                await context.kube.delete(VOLUME_SNAPSHOT_CONTENT, content["metadata"]["name"])
        keep_bound = delete_content and not await self._stop_waiting_for_create(snapshot, content)
        if told_by_snapshot and not keep_bound:
            assert content is not None
            # The snapshot goes before its content after all: the annotation is all that will say so.
            await self._mark_being_deleted(content)
        if keep_bound and plan.BOUND_FINALIZER in held:
            # The content's deletion brings this snapshot back, and all its finalizers come off
            # then, in one write. snapshot-controller drops the source finalizer now and
            # bound-protection then: one write more for the same end.
            await self._release_claim(snapshot, skip_self=True)
            return
        remaining = [f for f in meta.get("finalizers") or [] if f not in (plan.SOURCE_FINALIZER, MEMBER_FINALIZER)]
        if not keep_bound:
            remaining = [f for f in remaining if f != plan.BOUND_FINALIZER]
        if remaining != list(meta.get("finalizers") or []):
            try:
                await context.kube.patch(
                    VOLUME_SNAPSHOT,
                    meta["name"],
                    {"metadata": {"finalizers": remaining, "resourceVersion": meta["resourceVersion"]}},
                    meta["namespace"],
                )
            except NotFound:
                return
        await self._release_claim(snapshot, skip_self=True)

    async def _stop_waiting_for_create(self, snapshot: Body, content: Body | None) -> bool:
        """Whether a snapshot whose content still waits for CreateSnapshot may go now.

        snapshot-controller keeps the VolumeSnapshot until its content is gone, and the
        content waits for CreateSnapshot to succeed or fail for good: a driver that never
        answers wedges both (external-snapshotter #1388). Here the VolumeSnapshot waits
        `snapshot_deletion_wait_seconds`, saying so in its status, then goes; the content
        stays, Terminating, finishes the call and deletes what it made, so nothing leaks.
        """
        if content is None or plan.ANN_BEING_CREATED not in (content["metadata"].get("annotations") or {}):
            return False
        waited = plan.seconds_since(snapshot["metadata"]["deletionTimestamp"])
        bound = self.context.settings.snapshot_deletion_wait_seconds
        name = content["metadata"]["name"]
        if waited < bound:
            await self._error(
                snapshot,
                SnapshotError(
                    "SnapshotDeletePending",
                    f"waiting up to {bound:.0f}s for the driver to answer CreateSnapshot of VolumeSnapshotContent "
                    f"{name} before deleting",
                ),
            )
            raise Requeue(max(0.5, min(5.0, bound - waited)), f"{name}: CreateSnapshot may still be running")
        await self.events.warning(
            snapshot,
            "SnapshotDeleteDeferred",
            f"the driver has not answered CreateSnapshot for {waited:.0f}s: the VolumeSnapshot goes now, and "
            f"VolumeSnapshotContent {name} stays until the driver answers, then deletes the snapshot it made",
        )
        return True

    def _driver_half_reads_snapshot(self, snapshot: Body, content: Body) -> bool:
        """Whether the being-deleted annotation, snapshot-controller's word to csi-snapshotter
        that the snapshot may go, can be left out: the driver half here reads the
        VolumeSnapshot's deletionTimestamp instead (plan.content_decision), and the
        VolumeSnapshot stays until its content is gone (bound-protection). A kept content
        (Retain) still gets it: there it is all that records the VolumeSnapshot's deletion."""
        return bool(
            (content.get("spec") or {}).get("deletionPolicy") == "Delete"
            and plan.BOUND_FINALIZER in (snapshot["metadata"].get("finalizers") or [])
            and not group_of(snapshot)
            and snapshots_here(self.context, content)
        )

    async def _mark_being_deleted(self, content: Body) -> None:
        if plan.ANN_BEING_DELETED in (content["metadata"].get("annotations") or {}):
            return
        with contextlib.suppress(NotFound):
            await self.context.kube.patch(
                VOLUME_SNAPSHOT_CONTENT,
                content["metadata"]["name"],
                {"metadata": {"annotations": {plan.ANN_BEING_DELETED: "yes"}}},
            )

    async def _release_claim(self, snapshot: Body, *, skip_self: bool = False) -> None:
        """Drop pvc-as-source-protection from the source claim once none of its snapshots is unready."""
        if not plan.is_dynamic(snapshot):
            return
        namespace = snapshot["metadata"]["namespace"]
        claim = self.context.stores.claims.get(key_of(namespace, plan.source_claim(snapshot)))
        if claim is None or not finalizers.has(claim, plan.PVC_FINALIZER):
            return
        others = [
            s
            for s in self.context.stores.snapshots.values()
            if not (skip_self and s["metadata"].get("uid") == snapshot["metadata"].get("uid"))
        ]
        if plan.claim_in_use(plan.source_claim(snapshot), namespace, others):
            return
        # By strategic merge patch: no read first, and no conflict with the claim's other writers.
        await finalizers.remove_last(
            self.context.kube, PVC, claim["metadata"]["name"], plan.PVC_FINALIZER, namespace, current=claim
        )

    # --- VolumeSnapshotContents ------------------------------------------------------

    async def sync_content(self, name: str) -> None:
        self.context.endpoints.check_here(None)
        content = self.context.stores.contents.get(name)
        if content is None:
            return
        spec = content.get("spec") or {}
        source = spec.get("source") or {}
        if bool(source.get("volumeHandle")) == bool(source.get("snapshotHandle")):
            await self.events.warning(
                content, "ContentValidationError", "Exactly one of VolumeHandle and SnapshotHandle should be specified"
            )
            return
        ref = spec.get("volumeSnapshotRef") or {}
        if not ref.get("uid"):
            return
        if not content["metadata"].get("deletionTimestamp"):
            await finalizers.add(self.context.kube, VOLUME_SNAPSHOT_CONTENT, content, plan.CONTENT_FINALIZER)
        snapshot = self.context.stores.snapshots.get(ref_key(ref))
        if snapshot is None or snapshot["metadata"].get("uid") != ref.get("uid"):
            return
        self.snapshots.add(object_key(snapshot))
        held = {plan.SOURCE_FINALIZER, plan.BOUND_FINALIZER} & set(snapshot["metadata"].get("finalizers") or [])
        deleting = bool(snapshot["metadata"].get("deletionTimestamp") and held)
        if deleting and not self._driver_half_reads_snapshot(snapshot, content):
            await self._mark_being_deleted(content)
