"""csi-snapshotter's half: VolumeSnapshotContents -> CreateSnapshot / ListSnapshots / DeleteSnapshot.

A content routes to a DriverEndpoint through its VolumeSnapshotClass's
`sidecarless.io/endpoint` annotation, else through its source PV (dynamic contents), and
must name that endpoint's driver. `snapshot.storage.kubernetes.io/volumesnapshot-being-created`
goes on before CreateSnapshot (or with the content, where the snapshot half here made it:
plan.takes_snapshot_at_once) and comes off after success or a final error, so a content
deleted meanwhile waits for the call instead of leaking the snapshot.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from csi_client import CSIClient, CSIError, FinalError, csi
from sidecarless import finalizers, routing
from sidecarless.context import Context
from sidecarless.credentials import credentials
from sidecarless.endpoints.live import Endpoint
from sidecarless.endpoints.spec import ACTIVE
from sidecarless.events import Sources
from sidecarless.kube import VOLUME_SNAPSHOT_CONTENT
from sidecarless.snapshots import plan
from sidecarless.snapshots.content_writes import ContentWrites, ErrorEvents
from sidecarless.vocabulary import ParameterError, SecretRef, ref_key
from sidecarless.workqueue import Backoff, Requeue, WorkQueue

Body = dict[str, Any]

log = logging.getLogger("sidecarless.snapshotter")


def endpoint_of(context: Context, content: Body) -> Endpoint | None:
    """The endpoint serving a content (routing.content_endpoint); None: not Sidecarless' content."""
    return context.endpoints.get(routing.content_endpoint(context.stores, context.endpoints.drivers(), content))


def snapshots_here(context: Context, content: Body) -> bool:
    """Whether this process's driver half takes the snapshot of `content` (else nobody, or a
    csi-snapshotter beside it)."""
    endpoint = endpoint_of(context, content)
    return endpoint is not None and endpoint.controller_state("snapshotter") == ACTIVE


class Snapshotter:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.contents: WorkQueue[str] = WorkQueue(
            "snapshotter", self.sync_content, workers=context.settings.snapshot_workers, backoff_of=self._backoff_of
        )
        self.writes = ContentWrites(
            context.kube,
            context.events,
            VOLUME_SNAPSHOT_CONTENT,
            ErrorEvents(
                "SnapshotCreationFailed",
                "Failed to create snapshot",
                "SnapshotContentCheckandUpdateFailed",
                "Failed to check and update snapshot content",
            ),
        )

    def start(self) -> None:
        self.contents.start()

    async def stop(self) -> None:
        await self.contents.stop()

    def requeue_all(self, *, quiet: bool = False) -> None:
        for content in self.context.stores.contents.values():
            self.contents.add(content["metadata"]["name"], quiet=quiet)

    def endpoint_changed(self, endpoint: str) -> None:
        self.requeue_all()

    def _backoff_of(self, name: str) -> Backoff | None:
        content = self.context.stores.contents.get(name)
        endpoint = endpoint_of(self.context, content) if content is not None else None
        return endpoint.backoff if endpoint is not None else None

    # --- sync ----------------------------------------------------------------------

    async def sync_content(self, name: str) -> None:
        context = self.context
        content = context.stores.contents.get(name)
        if content is None:
            return
        endpoint = endpoint_of(context, content)
        spec = content.get("spec") or {}
        if endpoint is None and routing.awaits_volume(
            context.stores,
            context.endpoints.drivers(),
            str(spec.get("driver") or ""),
            str((spec.get("source") or {}).get("volumeHandle") or ""),
        ):
            raise Requeue(None, f"the source volume of {name} is not known yet")
        if endpoint is None or endpoint.admits("snapshotter") is None:
            return
        decision = plan.content_decision(content, snapshot_deleted=self._snapshot_deleted(content))
        if isinstance(decision, plan.Delete):
            await self._delete(content, endpoint, decision)
        elif isinstance(decision, plan.Create):
            await self._create(content, endpoint)
        elif isinstance(decision, plan.Check):
            await self._check(content, endpoint)
        else:
            await self.writes.annotate(content, plan.ANN_BEING_CREATED, None)

    def _snapshot_deleted(self, content: Body) -> bool:
        """Whether the VolumeSnapshot bound to `content` is being deleted."""
        ref = (content.get("spec") or {}).get("volumeSnapshotRef") or {}
        snapshot = self.context.stores.snapshots.get(ref_key(ref))
        return (
            snapshot is not None
            and plan.bound_to(content, snapshot)
            and bool(snapshot["metadata"].get("deletionTimestamp"))
        )

    async def _create(self, content: Body, endpoint: Endpoint) -> None:
        context = self.context
        name = content["metadata"]["name"]
        snapshot_class = context.stores.snapshot_classes.get(
            (content.get("spec") or {}).get("volumeSnapshotClassName") or ""
        )
        try:
            if snapshot_class is None:
                raise ParameterError(f"failed to take snapshot {name} without a snapshot class")
            secrets = await self._secrets(content)
            parameters = plan.driver_parameters(snapshot_class.get("parameters") or {})
            request = plan.create_request(
                content, parameters, extra_metadata=endpoint.spec.provisioner.extra_create_metadata
            )
        except ParameterError as error:
            # Nothing was asked of the driver in this pass: unlike csi-snapshotter, no
            # being-created annotation is set to block deletion. One that is there stays: an
            # earlier pass may have made the call (or the class changed after the content
            # was made with it, which plan.takes_snapshot_at_once could not foresee).
            await self.writes.failed(
                content, f"failed to get input parameters to create snapshot for content {name}: {error}"
            )
            raise Requeue(None, str(error)) from error
        request.secrets.update(secrets)
        content = await self.writes.annotate(content, plan.ANN_BEING_CREATED, "yes")
        ref = content["spec"].get("volumeSnapshotRef") or {}
        try:
            response = await endpoint.call(
                CSIClient.create_snapshot,
                request,
                operation="CreateSnapshot",
                obj=name,
                fault_key=f"{name}/{ref.get('namespace')}/{ref.get('name')}",
                counts="snapshotCreations",
            )
        except CSIError as error:
            if isinstance(error, FinalError):
                content = await self.writes.annotate(content, plan.ANN_BEING_CREATED, None)
            volume_id = content["spec"]["source"]["volumeHandle"]
            message = f'failed to take snapshot of the volume {volume_id}: "{error.status_text}"'
            if content["metadata"].get("deletionTimestamp") and not isinstance(error, FinalError):
                message += "; the content is being deleted and waits for this call to end, then deletes what it made"
            await self.writes.failed(content, message)
            raise Requeue(None, str(error)) from error
        content = await self.writes.status(content, plan.content_status(response.snapshot, content.get("status") or {}))
        await self.writes.annotate(content, plan.ANN_BEING_CREATED, None)
        if not response.snapshot.ready_to_use:
            raise Requeue(None, f"snapshot {response.snapshot.snapshot_id} is not ready yet")

    async def _check(self, content: Body, endpoint: Endpoint) -> None:
        """A pre-provisioned content: ask ListSnapshots about its handle (ready, if the driver cannot list)."""
        assert endpoint.info is not None
        spec, old = content.get("spec") or {}, content.get("status") or {}
        handle = str(old.get("snapshotHandle") or (spec.get("source") or {}).get("snapshotHandle"))
        name = content["metadata"]["name"]
        if "LIST_SNAPSHOTS" not in endpoint.info.controller:
            now = int(datetime.now(UTC).timestamp() * 1e9)
            await self.writes.status(
                content, {"snapshotHandle": handle, "readyToUse": True, "creationTime": old.get("creationTime") or now}
            )
            return
        request = csi.ListSnapshotsRequest(snapshot_id=handle)
        try:
            snapshot_class = self.context.stores.snapshot_classes.get(spec.get("volumeSnapshotClassName") or "")
            ref = plan.list_secret((snapshot_class or {}).get("parameters") or {}, name)
            request.secrets.update(await self._credentials(ref, name))
        except ParameterError as error:
            await self.writes.failed(content, f"failed to get secret reference for snapshot content {name}: {error}")
            raise Requeue(None, str(error)) from error
        try:
            listed = await endpoint.call(CSIClient.list_snapshots, request, operation="ListSnapshots", obj=name)
        except CSIError as error:
            await self.writes.failed(content, f'failed to list snapshot for content {name}: "{error.status_text}"')
            raise Requeue(None, str(error)) from error
        if not listed.entries:
            await self.writes.failed(content, f"can not find snapshot for snapshotID {handle}")
            raise Requeue(None, f"snapshot {handle} not found")
        snapshot = listed.entries[0].snapshot
        await self.writes.status(content, plan.content_status(snapshot, old, handle=handle))
        if not snapshot.ready_to_use:
            raise Requeue(None, f"snapshot {handle} is not ready yet")

    async def _delete(self, content: Body, endpoint: Endpoint, decision: plan.Delete) -> None:
        context = self.context
        name = content["metadata"]["name"]
        if decision.call:
            try:
                secrets = await self._secrets(content)
            except ParameterError as error:
                await context.events.warning(
                    content,
                    "SnapshotDeleteError",
                    "Failed to get snapshot credentials",
                    source=Sources.snapshotter(endpoint.spec.driver_name),
                )
                raise Requeue(None, str(error)) from error
            request = csi.DeleteSnapshotRequest(snapshot_id=content["status"]["snapshotHandle"], secrets=secrets)
            try:
                await endpoint.call(
                    CSIClient.delete_snapshot,
                    request,
                    operation="DeleteSnapshot",
                    obj=name,
                    fault_key=name,
                    counts="snapshotDeletions",
                )
            except CSIError as error:
                await context.events.warning(
                    content,
                    "SnapshotDeleteError",
                    "Failed to delete snapshot",
                    source=Sources.snapshotter(endpoint.spec.driver_name),
                )
                raise Requeue(None, f"failed to delete snapshot content {name}: {error}") from error
            if set(content["metadata"].get("finalizers") or []) - {plan.CONTENT_FINALIZER}:
                # csi-snapshotter clears the status, so a content that stays says its snapshot
                # is gone. Where our finalizer is the last, the content goes with it; a crash
                # before that calls DeleteSnapshot again, which answers OK for what is gone.
                content = await self.writes.status(
                    content, {"snapshotHandle": None, "readyToUse": None, "creationTime": None, "restoreSize": None}
                )
        await finalizers.remove_last(
            context.kube, VOLUME_SNAPSHOT_CONTENT, name, plan.CONTENT_FINALIZER, current=content
        )

    # --- writing -------------------------------------------------------------------

    async def _secrets(self, content: Body) -> dict[str, str]:
        return await self._credentials(plan.deletion_secret(content), content["metadata"]["name"])

    async def _credentials(self, ref: SecretRef | None, content_name: str) -> dict[str, str]:
        # csi-snapshotter's words for a missing Secret name the content, not the Secret.
        return await credentials(
            self.context.kube, ref, f'cannot get credentials for snapshot content "{content_name}"'
        )
