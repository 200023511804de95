"""Volume group snapshots, snapshot-controller's half: VolumeGroupSnapshots, their content
and member snapshots. The driver half (CreateVolumeGroupSnapshot / DeleteVolumeGroupSnapshot)
is :mod:`sidecarless.snapshots.group_sidecar_controller`.

A group snapshot of a driver whose DriverEndpoint lacks CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT
is refused at once with `GroupSnapshotNotSupported` in its status and events, instead of a
content that the driver fails forever (what the upstream pair does).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from sidecarless import finalizers
from sidecarless.context import Context
from sidecarless.events import SNAPSHOT_CONTROLLER
from sidecarless.kube import (
    VOLUME_GROUP_SNAPSHOT,
    VOLUME_GROUP_SNAPSHOT_CONTENT,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CONTENT,
    Conflict,
    KubeError,
    NotFound,
)
from sidecarless.snapshots import group_plan as gplan
from sidecarless.snapshots import plan
from sidecarless.snapshots.group_sidecar_controller import endpoint_for
from sidecarless.snapshots.plan import SnapshotError
from sidecarless.vocabulary import ParameterError, key_of, now_rfc3339, object_key, ref_key
from sidecarless.workqueue import Requeue, WorkQueue

Body = dict[str, Any]

log = logging.getLogger("sidecarless.groupsnapshots")

CONFLICT_RETRY_SECONDS = 0.5


class GroupSnapshotController:
    """snapshot-controller's half for VolumeGroupSnapshots."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.events = context.events.signed(SNAPSHOT_CONTROLLER)  # as snapshot-controller signs
        self.groups: WorkQueue[str] = WorkQueue("volumegroupsnapshots", self.sync_group, workers=4)

    def start(self) -> None:
        self.groups.start()

    async def stop(self) -> None:
        await self.groups.stop()

    def endpoint_changed(self, endpoint: str) -> None:
        for group in self.context.stores.group_snapshots.values():
            self.groups.add(object_key(group))

    def content_changed(self, content: Body, *, quiet: bool = False) -> None:
        ref = (content.get("spec") or {}).get("volumeGroupSnapshotRef") or {}
        if ref.get("name"):
            self.groups.add(ref_key(ref), quiet=quiet)

    async def sync_group(self, key: str) -> None:
        self.context.endpoints.check_here(None)  # the work of no endpoint: one replica does it
        group = self.context.stores.group_snapshots.get(key)
        if group is None:
            return
        try:
            if group["metadata"].get("deletionTimestamp"):
                await self._delete(group)
                return
            gplan.validate_source(group)
            if gplan.selector(group) is None:
                raise SnapshotError(
                    "GroupSnapshotContentMissing", "pre-provisioned VolumeGroupSnapshots are not supported yet"
                )
            group = await self._ensure_class(group)
            content = self.context.stores.group_contents.get(gplan.content_name(group))
            if content is not None and not content["metadata"].get("deletionTimestamp"):
                kube = self.context.kube
                await finalizers.add(kube, VOLUME_GROUP_SNAPSHOT_CONTENT, content, gplan.GROUP_CONTENT_FINALIZER)
                if (group.get("status") or {}).get("boundVolumeGroupSnapshotContentName"):
                    await finalizers.add(kube, VOLUME_GROUP_SNAPSHOT, group, gplan.GROUP_FINALIZER)
            if content is None:
                content = await self._create_content(group)
            else:
                await self._create_members(group, content)
            await self._copy_status(group, content)
        except SnapshotError as error:
            await self._error(group, error)
            raise Requeue(None, str(error)) from error
        except Conflict as error:
            raise Requeue(CONFLICT_RETRY_SECONDS, "changed meanwhile") from error

    async def _ensure_class(self, group: Body) -> Body:
        stores = self.context.stores
        class_name = (group.get("spec") or {}).get("volumeGroupSnapshotClassName")
        if class_name:
            if stores.group_classes.get(class_name) is None:
                raise SnapshotError(
                    "GetGroupSnapshotClassFailed",
                    "failed to get group snapshot class with error "
                    f'volumegroupsnapshotclass.groupsnapshot.storage.k8s.io "{class_name}" not found',
                )
            return group
        claims = gplan.selected_claims(group, list(stores.claims.values()))
        volume = stores.volumes.get((claims[0].get("spec") or {}).get("volumeName") or "")
        driver = ((volume or {}).get("spec") or {}).get("csi", {}).get("driver")
        defaults = [
            c
            for c in stores.group_classes.values()
            if (c["metadata"].get("annotations") or {}).get(gplan.ANN_DEFAULT_GROUP_CLASS) == "true"
            and c.get("driver") == driver
        ]
        if len(defaults) != 1:
            problem = (
                "cannot find default group snapshot class"
                if not defaults
                else f"{len(defaults)} default snapshot classes were found"
            )
            raise SnapshotError(
                "SetDefaultGroupSnapshotClassFailed", f"Failed to set default group snapshot class with error {problem}"
            )
        meta = group["metadata"]
        return await self.context.kube.patch(
            VOLUME_GROUP_SNAPSHOT,
            meta["name"],
            {"spec": {"volumeGroupSnapshotClassName": defaults[0]["metadata"]["name"]}},
            meta["namespace"],
        )

    async def _create_content(self, group: Body) -> Body:
        context, stores = self.context, self.context.stores
        group_class = stores.group_classes.get(group["spec"]["volumeGroupSnapshotClassName"])
        assert group_class is not None  # _ensure_class checked it
        driver = str(group_class.get("driver") or "")
        claims = gplan.selected_claims(group, list(stores.claims.values()))
        volumes = {v["metadata"]["name"]: v for v in stores.volumes.values()}
        handles = gplan.volume_handles(group, claims, volumes, driver)
        endpoint = endpoint_for(context, group_class, handles, driver)
        if (
            endpoint is not None
            and endpoint.info is not None
            and gplan.CAPABILITY not in endpoint.info.group_controller
        ):
            raise SnapshotError(
                "GroupSnapshotNotSupported",
                f"driver {driver} cannot take group snapshots: DriverEndpoint {endpoint.spec.name} does not advertise "
                f"{gplan.CAPABILITY}",
            )
        name = gplan.content_name(group)
        try:
            namespace_values = {
                "volumegroupsnapshotcontent.name": name,
                "volumegroupsnapshot.namespace": group["metadata"]["namespace"],
            }
            name_values = {**namespace_values, "volumegroupsnapshot.name": group["metadata"]["name"]}
            secret = plan.secret_from_templates(
                group_class.get("parameters") or {},
                gplan.GROUP_SECRET_KEYS,
                namespace_values,
                name_values,
                "GroupSnapshotter",
            )
        except ParameterError as error:
            raise SnapshotError(
                "GroupSnapshotContentCreationFailed",
                f"failed to create group snapshot content with error failed to get input parameters to create group "
                f'snapshot {group["metadata"]["name"]}: "{error}"',
            ) from error
        body = gplan.new_content(group, handles, group_class, secret)
        try:
            created = await context.kube.create(VOLUME_GROUP_SNAPSHOT_CONTENT, body)
        except KubeError as error:
            if error.status != 409:
                raise
            created = stores.group_contents.get(name) or body
        await self.events.normal(
            group,
            "CreatingGroupSnapshot",
            f"Waiting for a group snapshot {object_key(group)} to be created by the CSI driver.",
        )
        return created

    async def _create_members(self, group: Body, content: Body) -> None:
        """Once the driver has cut the group: one VolumeSnapshot and content per volume, bound."""
        status = content.get("status") or {}
        if not status.get("volumeGroupSnapshotHandle") or not status.get("volumeSnapshotInfoList"):
            return
        kube, stores = self.context.kube, self.context.stores
        by_handle = {
            str(((v.get("spec") or {}).get("csi") or {}).get("volumeHandle")): v for v in stores.volumes.values()
        }
        for snapshot_body, content_body, content_status in gplan.members(group, content, by_handle):
            namespace = snapshot_body["metadata"]["namespace"]
            member_content = stores.contents.get(content_body["metadata"]["name"]) or await _create_or_get(
                kube, VOLUME_SNAPSHOT_CONTENT, content_body
            )
            member = stores.snapshots.get(key_of(namespace, snapshot_body["metadata"]["name"])) or await _create_or_get(
                kube, VOLUME_SNAPSHOT, snapshot_body, namespace
            )
            uid = member["metadata"]["uid"]
            if ((member_content.get("spec") or {}).get("volumeSnapshotRef") or {}).get("uid") != uid:
                await kube.patch(
                    VOLUME_SNAPSHOT_CONTENT,
                    member_content["metadata"]["name"],
                    {"spec": {"volumeSnapshotRef": {"uid": uid}}},
                )
            if not (member.get("status") or {}).get("boundVolumeSnapshotContentName"):
                await kube.patch(
                    VOLUME_SNAPSHOT,
                    member["metadata"]["name"],
                    {"status": {"boundVolumeSnapshotContentName": member_content["metadata"]["name"]}},
                    namespace,
                    subresource="status",
                )
            if not (member_content.get("status") or {}).get("snapshotHandle"):
                await kube.patch(
                    VOLUME_SNAPSHOT_CONTENT,
                    member_content["metadata"]["name"],
                    {"status": content_status},
                    subresource="status",
                )

    async def _copy_status(self, group: Body, content: Body) -> None:
        status, events = gplan.group_status(group, content)
        for reason, message in events:
            await self.events.normal(group, reason, message)
        meta = group["metadata"]
        with contextlib.suppress(NotFound):
            await self.context.kube.patch(
                VOLUME_GROUP_SNAPSHOT,
                meta["name"],
                {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status},
                meta["namespace"],
                subresource="status",
            )

    async def _error(self, group: Body, error: SnapshotError) -> None:
        if ((group.get("status") or {}).get("error") or {}).get("message") == str(error):
            return
        meta = group["metadata"]
        status: Body = {"error": {"time": now_rfc3339(), "message": str(error)}}
        if not error.reason.endswith("ClassFailed"):
            status["readyToUse"] = False
        with contextlib.suppress(NotFound, Conflict):
            await self.context.kube.patch(
                VOLUME_GROUP_SNAPSHOT, meta["name"], {"status": status}, meta["namespace"], subresource="status"
            )
        await self.events.warning(group, error.reason, str(error))

    async def _delete(self, group: Body) -> None:
        context = self.context
        meta = group["metadata"]
        if gplan.GROUP_FINALIZER not in (meta.get("finalizers") or []):
            return
        content = context.stores.group_contents.get(
            (group.get("status") or {}).get("boundVolumeGroupSnapshotContentName") or ""
        )
        delete_content = content is not None and (content.get("spec") or {}).get("deletionPolicy") == "Delete"
        if content is not None:
            if gplan.ANN_GROUP_BEING_DELETED not in (content["metadata"].get("annotations") or {}):
                await context.kube.patch(
                    VOLUME_GROUP_SNAPSHOT_CONTENT,
                    content["metadata"]["name"],
                    {"metadata": {"annotations": {gplan.ANN_GROUP_BEING_DELETED: "yes"}}},
                )
            if delete_content:
                await context.kube.delete(VOLUME_GROUP_SNAPSHOT_CONTENT, content["metadata"]["name"])
        for member in context.stores.snapshots.values():
            if member["metadata"].get("namespace") == meta["namespace"] and gplan.group_of(member) == meta["name"]:
                await context.kube.delete(VOLUME_SNAPSHOT, member["metadata"]["name"], meta["namespace"])
        if not delete_content:  # (Delete: once the content is gone, its DELETED event brings us back)
            await finalizers.remove(context.kube, VOLUME_GROUP_SNAPSHOT, group, gplan.GROUP_FINALIZER)


async def _create_or_get(kube: Any, resource: Any, body: Body, namespace: str | None = None) -> Body:
    try:
        created: Body = await kube.create(resource, body, namespace)
        return created
    except KubeError as error:
        if error.status != 409:
            raise
        existing: Body = await kube.get(resource, body["metadata"]["name"], namespace)
        return existing
