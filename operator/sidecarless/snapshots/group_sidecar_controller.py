"""Volume group snapshots, csi-snapshotter's half: VolumeGroupSnapshotContents ->
CreateVolumeGroupSnapshot / DeleteVolumeGroupSnapshot, for drivers that advertise
CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT.
"""

from __future__ import annotations

import logging
from typing import Any

from csi_client import CSIClient, CSIError, FinalError, csi
from sidecarless import finalizers, routing
from sidecarless.context import Context
from sidecarless.credentials import credentials
from sidecarless.endpoints.live import Endpoint
from sidecarless.events import Sources
from sidecarless.kube import (
    VOLUME_GROUP_SNAPSHOT_CONTENT,
)
from sidecarless.snapshots import group_plan as gplan
from sidecarless.snapshots import plan
from sidecarless.snapshots.content_writes import ContentWrites, ErrorEvents
from sidecarless.vocabulary import ParameterError, SecretRef
from sidecarless.workqueue import Backoff, Requeue, WorkQueue

Body = dict[str, Any]

log = logging.getLogger("sidecarless.groupsnapshots")

CONFLICT_RETRY_SECONDS = 0.5


def endpoint_for(context: Context, group_class: Body | None, handles: list[str], driver: str) -> Endpoint | None:
    """The endpoint serving a group snapshot (routing.group_content_endpoint)."""
    return context.endpoints.get(
        routing.group_content_endpoint(context.stores, context.endpoints.drivers(), group_class, handles, driver)
    )


def _routing_of(content: Body) -> tuple[Body, list[str], str]:
    """A group content's class name, volume handles and driver: what routes it."""
    spec = content.get("spec") or {}
    handles = list((spec.get("source") or {}).get("volumeHandles") or [])
    return spec, handles, str(spec.get("driver") or "")


class GroupSnapshotter:
    """csi-snapshotter's half for VolumeGroupSnapshotContents."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.contents: WorkQueue[str] = WorkQueue(
            "groupsnapshotter", self.sync_content, workers=4, backoff_of=self._backoff_of
        )
        self.writes = ContentWrites(
            context.kube,
            context.events,
            VOLUME_GROUP_SNAPSHOT_CONTENT,
            ErrorEvents(
                "GroupSnapshotCreationFailed",
                "Failed to create group snapshot",
                "GroupSnapshotContentCheckandUpdateFailed",
                "Failed to check and update group snapshot content",
            ),
        )

    def start(self) -> None:
        self.contents.start()

    async def stop(self) -> None:
        await self.contents.stop()

    def endpoint_changed(self, endpoint: str) -> None:
        for content in self.context.stores.group_contents.values():
            self.contents.add(content["metadata"]["name"])

    def _endpoint_of(self, content: Body) -> Endpoint | None:
        spec, handles, driver = _routing_of(content)
        group_class = self.context.stores.group_classes.get(spec.get("volumeGroupSnapshotClassName") or "")
        return endpoint_for(self.context, group_class, handles, driver)

    def _backoff_of(self, name: str) -> Backoff | None:
        content = self.context.stores.group_contents.get(name)
        endpoint = self._endpoint_of(content) if content is not None else None
        return endpoint.backoff if endpoint is not None else None

    async def sync_content(self, name: str) -> None:
        context = self.context
        content = context.stores.group_contents.get(name)
        if content is None:
            return
        spec, handles, driver = _routing_of(content)
        meta = content["metadata"]
        group_class = context.stores.group_classes.get(spec.get("volumeGroupSnapshotClassName") or "")
        endpoint = endpoint_for(context, group_class, handles, driver)
        drivers = context.endpoints.drivers()
        if endpoint is None and handles and routing.awaits_volume(context.stores, drivers, driver, handles[0]):
            raise Requeue(None, f"the volumes of {name} are not known yet")
        # Switched off (spec.controllers.snapshotter: false: a csi-snapshotter beside it
        # serves the driver), or a driver without group snapshots: not ours to do.
        if endpoint is None or endpoint.admits("group-snapshotter") is None:
            return
        annotations = meta.get("annotations") or {}
        status = content.get("status") or {}
        if (
            meta.get("deletionTimestamp")
            and gplan.ANN_GROUP_BEING_DELETED in annotations
            and (gplan.ANN_GROUP_BEING_CREATED not in annotations)
        ):
            await self._delete(content, endpoint)
        elif status.get("readyToUse") is True:
            await self.writes.annotate(content, gplan.ANN_GROUP_BEING_CREATED, None)
        elif handles:
            await self._create(content, endpoint, group_class)

    async def _create(self, content: Body, endpoint: Endpoint, group_class: Body | None) -> None:
        name = content["metadata"]["name"]
        try:
            if group_class is None:
                raise ParameterError(f"failed to take group snapshot {name} without a group snapshot class")
            request = gplan.create_request(content, plan.driver_parameters(group_class.get("parameters") or {}))
            request.secrets.update(await self._secrets(content))
        except ParameterError as error:
            await self.writes.failed(
                content,
                f"failed to get input parameters to create group snapshot for group snapshot content {name}: {error}",
            )
            raise Requeue(None, str(error)) from error
        content = await self.writes.annotate(content, gplan.ANN_GROUP_BEING_CREATED, "yes")
        try:
            response = await endpoint.call(
                CSIClient.create_volume_group_snapshot,
                request,
                operation="CreateVolumeGroupSnapshot",
                obj=name,
                fault_key=name,
                counts="groupSnapshotCreations",
            )
        except CSIError as error:
            if isinstance(error, FinalError):
                content = await self.writes.annotate(content, gplan.ANN_GROUP_BEING_CREATED, None)
            await self.writes.failed(
                content,
                f"failed to take group snapshot of the volumes {list(request.source_volume_ids)}: "
                f'"{error.status_text}"',
            )
            raise Requeue(None, str(error)) from error
        content = await self.writes.status(
            content, gplan.content_status(response.group_snapshot, content.get("status") or {})
        )
        await self.writes.annotate(content, gplan.ANN_GROUP_BEING_CREATED, None)
        if not response.group_snapshot.ready_to_use:
            raise Requeue(None, f"group snapshot {response.group_snapshot.group_snapshot_id} is not ready yet")

    async def _delete(self, content: Body, endpoint: Endpoint) -> None:
        status = content.get("status") or {}
        name = content["metadata"]["name"]
        if (content.get("spec") or {}).get("deletionPolicy") == "Delete" and status.get("volumeGroupSnapshotHandle"):
            request = csi.DeleteVolumeGroupSnapshotRequest(
                group_snapshot_id=status["volumeGroupSnapshotHandle"],
                snapshot_ids=[i["snapshotHandle"] for i in status.get("volumeSnapshotInfoList") or []],
            )
            try:
                request.secrets.update(await self._secrets(content))
                await endpoint.call(
                    CSIClient.delete_volume_group_snapshot,
                    request,
                    operation="DeleteVolumeGroupSnapshot",
                    obj=name,
                    fault_key=name,
                )
            except (CSIError, ParameterError) as error:
                await self.context.events.warning(
                    content,
                    "GroupSnapshotDeleteError",
                    "Failed to delete group snapshot",
                    source=Sources.snapshotter(endpoint.spec.driver_name),
                )
                raise Requeue(None, str(error)) from error
            await self.writes.status(
                content, {"volumeGroupSnapshotHandle": None, "readyToUse": None, "creationTime": None, "error": None}
            )
        await finalizers.remove_fresh(
            self.context.kube, VOLUME_GROUP_SNAPSHOT_CONTENT, name, gplan.GROUP_CONTENT_FINALIZER
        )

    async def _secrets(self, content: Body) -> dict[str, str]:
        annotations = content["metadata"].get("annotations") or {}
        name, namespace = (
            annotations.get(gplan.ANN_GROUP_SECRET_NAME),
            annotations.get(gplan.ANN_GROUP_SECRET_NAMESPACE),
        )
        ref = SecretRef(name, namespace) if name and namespace else None
        return await credentials(
            self.context.kube, ref, f'cannot get credentials for group snapshot content "{content["metadata"]["name"]}"'
        )
