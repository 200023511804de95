"""The attacher: VolumeAttachments -> ControllerPublish / ControllerUnpublish.

Attaches and detaches run in separate lanes (queues), so a burst of detaches cannot
starve attaches (external-attacher #761); each lane exports its depth and oldest-key age.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from csi_client import CSIClient, CSIError, csi
from sidecarless import finalizers, routing
from sidecarless.attacher import plan
from sidecarless.capabilities import publish_capability
from sidecarless.context import Context
from sidecarless.credentials import credentials, volume_secret
from sidecarless.endpoints.live import Endpoint
from sidecarless.endpoints.spec import ACTIVE, UNSUPPORTED
from sidecarless.kube import PV, VOLUME_ATTACHMENT, NotFound
from sidecarless.periodic import Periodic
from sidecarless.vocabulary import ParameterError, now_rfc3339
from sidecarless.workqueue import Backoff, Requeue, WorkQueue

Body = dict[str, Any]

log = logging.getLogger("sidecarless.attacher")


class BacklogCollector(Collector):
    """`sidecarless_attacher_backlog{endpoint,lane}` and `..._oldest_seconds`, computed at scrape time
    from what the watches have seen, so the backlog shows even when no worker is free."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "sidecarless_attacher_backlog",
            "VolumeAttachments waiting, per endpoint and lane",
            labels=["endpoint", "lane"],
        )
        oldest = GaugeMetricFamily(
            "sidecarless_attacher_backlog_oldest_seconds",
            "How long the oldest waiting VolumeAttachment has waited, per endpoint and lane",
            labels=["endpoint", "lane"],
        )
        attachments = list(self.context.stores.attachments.values())
        now = datetime.now(UTC)
        for endpoint in self.context.endpoints.all():
            if not endpoint.here:
                continue  # its holder exports it
            for lane, (count, age) in plan.backlog(attachments, endpoint.spec.driver_name, now).items():
                waiting.add_metric([endpoint.spec.name, lane], count)
                oldest.add_metric([endpoint.spec.name, lane], age)
        yield waiting
        yield oldest


class Attacher:
    def __init__(self, context: Context) -> None:
        self.context = context
        workers = context.settings.attacher_workers
        self.attaches: WorkQueue[str] = WorkQueue(
            "attach", self.sync_attachment, workers=workers, backoff_of=self._backoff_of
        )
        self.detaches: WorkQueue[str] = WorkQueue(
            "detach", self.sync_attachment, workers=workers, backoff_of=self._backoff_of
        )
        self.volumes: WorkQueue[str] = WorkQueue("attacher-volumes", self.sync_volume, workers=5)
        self._forced: set[str] = set()  # VAs to publish again although marked attached
        self._reconciler = Periodic(
            "attacher-reconcile", context.settings.attacher_reconcile_seconds, self._reconcile_all
        )
        self._collector: BacklogCollector | None = None

    def start(self) -> None:
        for queue in (self.attaches, self.detaches, self.volumes):
            queue.start()
        self._collector = BacklogCollector(self.context)
        REGISTRY.register(self._collector)
        self._reconciler.start()

    async def stop(self) -> None:
        await self._reconciler.stop()
        for queue in (self.attaches, self.detaches, self.volumes):
            await queue.stop()
        if self._collector is not None:
            REGISTRY.unregister(self._collector)
            self._collector = None

    # --- ListVolumes reconcile -------------------------------------------------------

    async def _reconcile_all(self) -> None:
        for endpoint in self.context.endpoints.all():
            try:
                await self.reconcile(endpoint)
            except CSIError as error:
                log.warning("attacher: ListVolumes of %s failed: %s", endpoint.spec.name, error)

    async def reconcile(self, endpoint: Endpoint) -> None:
        """external-attacher's --reconcile-sync: re-publish attached volumes the driver lost.

        It only re-queues; it never flips a VolumeAttachment's status by itself (#215).
        """
        needed = {"LIST_VOLUMES", "LIST_VOLUMES_PUBLISHED_NODES"}
        if not endpoint.active("attacher") or endpoint.info is None or not needed <= endpoint.info.controller:
            return
        published: dict[str, set[str]] = {}
        token = ""
        while True:
            page = await endpoint.call(
                CSIClient.list_volumes, csi.ListVolumesRequest(starting_token=token), operation="ListVolumes", obj=""
            )
            for entry in page.entries:
                published[entry.volume.volume_id] = set(entry.status.published_node_ids)
            token = page.next_token
            if not token:
                break
        stores = self.context.stores
        mine = []
        node_ids: dict[str, str] = {}
        volume_ids: dict[str, str] = {}
        for attachment in stores.attachments.values():
            if (attachment.get("spec") or {}).get("attacher") != endpoint.spec.driver_name:
                continue
            source = (attachment.get("spec") or {}).get("source") or {}
            volume = stores.volumes.get(source.get("persistentVolumeName") or "")
            if volume is None or self._endpoint(attachment, volume) is not endpoint:
                continue
            annotations = attachment["metadata"].get("annotations") or {}
            node_ids[attachment["metadata"]["name"]] = annotations.get(plan.ANN_NODE_ID, "")
            volume_ids[attachment["metadata"]["name"]] = volume["spec"]["csi"]["volumeHandle"]
            mine.append(attachment)
        for name in plan.lost_attachments(mine, published, node_ids, volume_ids):
            log.warning("attacher: the driver no longer lists VolumeAttachment %s as published; publishing again", name)
            self._forced.add(name)
            self.attaches.add(name)

    def enqueue(self, attachment: Body, *, quiet: bool = False) -> None:
        lane = self.detaches if attachment["metadata"].get("deletionTimestamp") else self.attaches
        lane.add(attachment["metadata"]["name"], quiet=quiet)

    def endpoint_changed(self, endpoint: str) -> None:
        for attachment in self.context.stores.attachments.values():
            self.enqueue(attachment)

    # --- routing -------------------------------------------------------------------

    def _endpoint(self, attachment: Body, volume: Body | None) -> Endpoint | None:
        context = self.context
        return context.endpoints.get(
            routing.attachment_endpoint(context.stores, context.endpoints.drivers(), attachment, volume)
        )

    def _routed(self, name: str) -> tuple[Body, Body | None, Endpoint] | None:
        """VolumeAttachment `name`, its PV (if seen) and the endpoint serving it; None: not ours."""
        stores = self.context.stores
        attachment = stores.attachments.get(name)
        if attachment is None:
            return None
        volume_name = ((attachment.get("spec") or {}).get("source") or {}).get("persistentVolumeName")
        volume = stores.volumes.get(volume_name) if volume_name else None
        endpoint = self._endpoint(attachment, volume)
        return (attachment, volume, endpoint) if endpoint is not None else None

    def _backoff_of(self, name: str) -> Backoff | None:
        routed = self._routed(name)
        return routed[2].backoff if routed is not None else None

    # --- attachments ---------------------------------------------------------------

    async def sync_attachment(self, name: str) -> None:
        routed = self._routed(name)
        if routed is None:
            return
        attachment, volume, endpoint = routed
        state = endpoint.admits("attacher", ACTIVE, UNSUPPORTED)
        decision = plan.attachment_decision(attachment, endpoint.spec.driver_name, forced=name in self._forced)
        if state is None or isinstance(decision, plan.Nothing):
            return
        source = (attachment.get("spec") or {}).get("source") or {}
        if state == UNSUPPORTED:
            # external-attacher's trivial handler: a driver without ControllerPublish is
            # attached as soon as asked.
            if isinstance(decision, plan.Attach):
                await self._set_status(attachment, {"attached": True})
            return
        if source.get("inlineVolumeSpec"):
            await self._attach_error(
                attachment, "inline volumes (spec.source.inlineVolumeSpec) are not supported", None
            )
            return
        if isinstance(decision, plan.Attach):
            await self._attach(attachment, volume, endpoint)
        else:
            await self._detach(attachment, volume, endpoint)

    async def _attach(self, attachment: Body, volume: Body | None, endpoint: Endpoint) -> None:
        context = self.context
        driver = endpoint.spec.driver_name
        volume_name = attachment["spec"]["source"]["persistentVolumeName"]
        if volume is None:
            await self._attach_error(attachment, f"persistentvolume {volume_name} not found", None)
            raise Requeue(None, "PV not found")
        if volume["metadata"].get("deletionTimestamp"):
            await self._attach_error(attachment, f"PersistentVolume {volume_name} is marked for deletion", None)
            raise Requeue(None, "PV is being deleted")
        assert endpoint.info is not None
        try:
            node = plan.node_id(attachment, context.stores.csinodes.get(attachment["spec"]["nodeName"]), driver)
            capability = publish_capability(volume, endpoint.spec.provisioner.default_fstype, endpoint.info.controller)
            secrets = await credentials(context.kube, volume_secret(volume, "controllerPublishSecretRef"))
        except ParameterError as error:
            await self._attach_error(attachment, str(error), None)
            raise Requeue(None, str(error)) from error
        finalizer = plan.finalizer(driver)
        await finalizers.add(context.kube, PV, volume, finalizer)
        meta = attachment["metadata"]
        if not finalizers.has(attachment, finalizer) or (meta.get("annotations") or {}).get(plan.ANN_NODE_ID) != node:
            # The finalizer and the node ID go on before the call, so a detach after a
            # crash knows what to unpublish.
            attachment = await context.kube.patch(
                VOLUME_ATTACHMENT,
                meta["name"],
                {
                    "metadata": {
                        "finalizers": sorted({*(meta.get("finalizers") or []), finalizer}),
                        "annotations": {plan.ANN_NODE_ID: node},
                        "resourceVersion": meta["resourceVersion"],
                    }
                },
            )
        request = plan.publish_request(volume, node, capability, endpoint.info.controller)
        request.secrets.update(secrets)
        try:
            response = await endpoint.call(
                CSIClient.controller_publish_volume,
                request,
                operation="ControllerPublishVolume",
                obj=meta["name"],
                fault_key=f"{meta['name']}/{volume_name}",
                counts="attaches",
            )
        except CSIError as error:
            await self._attach_error(attachment, error.status_text, error.code)
            raise Requeue(None, str(error)) from error
        self._forced.discard(meta["name"])
        await self._set_status(
            attachment,
            {"attached": True, "attachmentMetadata": dict(response.publish_context) or None, "attachError": None},
        )

    async def _detach(self, attachment: Body, volume: Body | None, endpoint: Endpoint) -> None:
        context = self.context
        driver = endpoint.spec.driver_name
        meta = attachment["metadata"]
        if volume is None:
            await self._detach_error(
                attachment, f"persistentvolume {meta['name']} not found: cannot find its volume ID"
            )
            raise Requeue(None, "PV not found")
        try:
            node = plan.node_id(attachment, context.stores.csinodes.get(attachment["spec"]["nodeName"]), driver)
            secrets = await credentials(context.kube, volume_secret(volume, "controllerPublishSecretRef"))
        except ParameterError as error:
            await self._detach_error(attachment, str(error))
            raise Requeue(None, str(error)) from error
        request = csi.ControllerUnpublishVolumeRequest(
            volume_id=volume["spec"]["csi"]["volumeHandle"], node_id=node, secrets=secrets
        )
        try:
            await endpoint.call(
                CSIClient.controller_unpublish_volume,
                request,
                operation="ControllerUnpublishVolume",
                obj=meta["name"],
                fault_key=f"{meta['name']}/{volume['metadata']['name']}",
                counts="detaches",
            )
        except CSIError as error:
            await self._detach_error(attachment, error.status_text, error.code)
            raise Requeue(None, str(error)) from error
        # Finalizer first, then attached=false: the reverse order lets a second worker see
        # attached=false with the finalizer still on and unpublish again (external-attacher #587).
        updated = await finalizers.remove(context.kube, VOLUME_ATTACHMENT, attachment, plan.finalizer(driver))
        gone = (
            updated is not None
            and updated["metadata"].get("deletionTimestamp")
            and not updated["metadata"].get("finalizers")
        )
        if updated is not None and not gone:  # a deleted one has no status left to write (a sure 404)
            await self._set_status(updated, {"attached": False, "detachError": None})
        self.volumes.add(volume["metadata"]["name"])

    # --- the PV finalizer ----------------------------------------------------------

    async def sync_volume(self, name: str) -> None:
        """Remove external-attacher's finalizer from a PV being deleted that no VolumeAttachment
        uses any more. As external-attacher, not before: the PV keeps it while it lives."""
        volume = self.context.stores.volumes.get(name)
        if volume is None or not volume["metadata"].get("deletionTimestamp"):
            return
        self.context.endpoints.check_here(routing.volume_route(self.context.stores, volume))
        driver = ((volume.get("spec") or {}).get("csi") or {}).get("driver", "")
        if not finalizers.has(volume, plan.finalizer(driver)):
            return
        if plan.references(list(self.context.stores.attachments.values()), name):
            return
        await finalizers.remove(self.context.kube, PV, volume, plan.finalizer(driver))

    # --- writing -------------------------------------------------------------------

    async def _set_status(self, attachment: Body, status: Body) -> None:
        with contextlib.suppress(NotFound):
            await self.context.kube.patch(
                VOLUME_ATTACHMENT, attachment["metadata"]["name"], {"status": status}, subresource="status"
            )

    async def _attach_error(self, attachment: Body, message: str, code: Any) -> None:
        await self._set_status(attachment, {"attachError": plan.volume_error(message, code, now_rfc3339())})

    async def _detach_error(self, attachment: Body, message: str, code: Any = None) -> None:
        await self._set_status(attachment, {"detachError": plan.volume_error(message, code, now_rfc3339())})
