"""Every Kopf handler of the operator, and the only module that registers any.

Users' objects (PVCs, PVs, StorageClasses, VolumeAttachments, CSIDrivers) get only
`on.event` handlers: Kopf then writes nothing onto them (no finalizer, no progress or
diff-base annotations, no status); each handler updates a store and queues a key for a
controller's work queue. Only the DriverEndpoint, our own resource, gets Kopf's usual
change handlers, finalizer and a daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf
from kubernetes_asyncio.client.api_client import ApiClient

from csi_client import TLSConfig
from sidecarless import metrics_server
from sidecarless.attacher.controller import Attacher
from sidecarless.config import Settings as OperatorConfig
from sidecarless.context import Context, Stores
from sidecarless.endpoints import EndpointRegistry, build_status
from sidecarless.events import EventRecorder
from sidecarless.kube import DRIVER_ENDPOINT, Kube, KubeError, load_configuration
from sidecarless.leader import LeaderElector
from sidecarless.provisioner import sources
from sidecarless.provisioner.controller import Provisioner
from sidecarless.provisioner.plan import ANN_ENDPOINT
from sidecarless.resizer.controller import Resizer
from sidecarless.routing import endpoint_of_class, endpoint_of_volume
from sidecarless.snapshots.common import SnapshotController
from sidecarless.snapshots.driver import Snapshotter
from sidecarless.snapshots.groups import GroupSnapshotController, GroupSnapshotter

log = logging.getLogger("sidecarless")

registry = kopf.OperatorRegistry()

GROUP, VERSION, PLURAL = "sidecarless.io", "v1alpha1", "driverendpoints"
# How often the status is recomputed (probes follow spec.timeouts.probeInterval).
_MONITOR_TICK_SECONDS = 1.0
TLS_RETRY_SECONDS = 30.0  # an endpoint whose TLS Secret is missing looks for it again this often


# --- lifecycle -----------------------------------------------------------------------


@kopf.on.login(registry=registry)
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Kopf and the controllers' client use one credential source: kubernetes-asyncio's loader."""
    configuration = await load_configuration(memo.settings.kubeconfig)
    token = (configuration.api_key or {}).get("BearerToken") or (configuration.api_key or {}).get("authorization")
    return kopf.ConnectionInfo(
        server=configuration.host or "",
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        scheme="Bearer" if token else None,
        token=token.removeprefix("Bearer ").strip() if token else None,
    )


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    _configure_kopf(settings)
    config = memo.settings
    kube = Kube(ApiClient(await load_configuration(config.kubeconfig)), qps=config.api_qps, burst=config.api_burst)
    context = Context(
        settings=config,
        kube=kube,
        events=EventRecorder(kube, component="sidecarless", instance=config.identity),
        endpoints=EndpointRegistry(),
        stores=Stores(),
    )
    kube.written = context.stores.remember
    provisioner = Provisioner(context)
    attacher = Attacher(context)
    resizer = Resizer(context)
    snapshotter = Snapshotter(context)
    snapshot_controller = SnapshotController(context) if config.snapshot_controller else None
    group_snapshotter = GroupSnapshotter(context)
    group_controller = GroupSnapshotController(context) if config.snapshot_controller else None
    context.endpoints.on_change = _requeue_endpoint(provisioner, attacher, resizer, snapshotter)
    every = (provisioner, attacher, resizer, snapshotter, snapshot_controller, group_snapshotter, group_controller)
    controllers = [c for c in every if c is not None]
    memo.controllers = controllers
    memo.leader = None
    if config.leader_election:
        # Its own client and rate limit: a busy operator must not starve the renewals.
        lease_kube = Kube(ApiClient(await load_configuration(config.kubeconfig)), qps=10, burst=20)
        memo.leader = LeaderElector(
            lease_kube,
            config.namespace,
            config.identity,
            name=config.lease_name,
            on_started=_start_all(controllers),
            on_stopped=_stop_all(controllers),
        )
        memo.leader.start()
    else:
        await _start_all(controllers)()
    memo.group_snapshotter = group_snapshotter
    memo.group_controller = group_controller
    memo.context = context
    memo.provisioner = provisioner
    memo.attacher = attacher
    memo.resizer = resizer
    memo.snapshotter = snapshotter
    memo.snapshot_controller = snapshot_controller


def _start_all(controllers: list[Any]) -> Any:
    async def start() -> None:
        for controller in controllers:
            controller.start()

    return start


def _stop_all(controllers: list[Any]) -> Any:
    async def stop() -> None:
        for controller in controllers:
            await controller.stop()

    return stop


def _requeue_endpoint(provisioner: Provisioner, attacher: Attacher, resizer: Resizer, snapshotter: Snapshotter) -> Any:
    async def requeue(name: str) -> None:
        provisioner.requeue_endpoint(name)
        attacher.requeue_all()
        resizer.requeue_all()
        snapshotter.requeue_all()

    return requeue


class DriverEndpointsOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf builds a diff-base (a deep copy of the object's essence) for every event of every
    watched object, but only DriverEndpoints have change handlers that read one: skipping the
    others saved about 5% of the operator's CPU in `make bench`."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") != "DriverEndpoint":
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") != "DriverEndpoint":
            return None
        return super().fetch(body=body)


def _configure_kopf(settings: kopf.OperatorSettings) -> None:
    settings.posting.enabled = False  # Kopf must not post its log lines as Events on users' objects
    settings.persistence.finalizer = "sidecarless.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="sidecarless.io")
    settings.persistence.diffbase_storage = DriverEndpointsOnlyDiffBase(
        prefix="sidecarless.io", key="last-handled-configuration"
    )
    settings.peering.standalone = True
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


@kopf.on.cleanup(registry=registry)
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("leader") is not None:
        await memo.leader.stop()  # stops the controllers if leading, and hands the Lease over
        await memo.leader.kube.close()
    else:
        await _stop_all(memo.get("controllers") or [])()
    if "context" in memo:
        await memo.context.endpoints.close()
        await memo.context.kube.close()


# --- users' objects: watch only ------------------------------------------------------


@kopf.on.event("", "v1", "persistentvolumeclaims", registry=registry)
async def claim_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    key = memo.context.stores.claims.apply_event(event["type"], event["object"])
    if memo.snapshot_controller is not None:
        memo.snapshot_controller.claim_changed(event["object"])
    if event["type"] != "DELETED":
        memo.provisioner.claims.add(key)
        memo.resizer.claim_changed(event["object"])
        return
    memo.resizer.claim_deleted(key)
    # A deleted clone may free its source of the cloning-protection finalizer.
    source = sources.data_source(dict(event["object"]))
    if source is not None and sources.is_clone(source):
        memo.provisioner.claims.add(f"{event['object']['metadata']['namespace']}/{source.name}")
    if source is not None and sources.is_snapshot(source):
        memo.provisioner.snapshot_sources.add(f"{event['object']['metadata']['namespace']}/{source.name}")
    # A claim deleted mid-provisioning leaves a journal entry to finish. Only such a claim
    # starts a recovery (a read of the journal): not every deletion of a bound claim.
    class_name = (event["object"].get("spec") or {}).get("storageClassName") or ""
    endpoint_name = endpoint_of_class(memo.context.stores.classes.get(class_name))
    if endpoint_name and memo.provisioner.journal_holds(endpoint_name, key):
        memo.provisioner.recoveries.add(endpoint_name)


@kopf.on.event("", "v1", "persistentvolumes", registry=registry)
async def volume_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    key = memo.context.stores.volumes.apply_event(event["type"], event["object"])
    if event["type"] != "DELETED":
        memo.provisioner.volumes.add(key)
        memo.attacher.volumes.add(key)
        memo.resizer.volume_changed(event["object"])


@kopf.on.event("storage.k8s.io", "v1", "storageclasses", registry=registry)
async def class_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    key = memo.context.stores.classes.apply_event(event["type"], event["object"])
    if event["type"] != "DELETED" and endpoint_of_class(dict(event["object"])):
        for claim in memo.provisioner.claims_of_class(key):
            memo.provisioner.claims.add(claim)


@kopf.on.event("storage.k8s.io", "v1", "volumeattachments", registry=registry)
async def attachment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.context.stores.attachments.apply_event(event["type"], event["object"])
    if event["type"] != "DELETED":
        memo.attacher.enqueue(event["object"])
        return
    # A released volume's deletion, and the attacher's PV finalizer, wait for attachments to go.
    volume = ((event["object"].get("spec") or {}).get("source") or {}).get("persistentVolumeName")
    if volume:
        memo.provisioner.volumes.add(volume)
        memo.attacher.volumes.add(volume)


@kopf.on.event("", "v1", "nodes", registry=registry)
async def node_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.context.stores.nodes.apply_event(event["type"], event["object"])


@kopf.on.event("storage.k8s.io", "v1", "csinodes", registry=registry)
async def csinode_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.context.stores.csinodes.apply_event(event["type"], event["object"])


@kopf.on.event("storage.k8s.io", "v1", "volumeattributesclasses", registry=registry)
async def attributes_class_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    key = memo.context.stores.attribute_classes.apply_event(event["type"], event["object"])
    if event["type"] == "DELETED":
        return
    # Claims waiting (Pending) for this class, or for provisioning with it, go again.
    for claim in memo.context.stores.claims.values():
        if (claim.get("spec") or {}).get("volumeAttributesClassName") == key:
            memo.resizer.claim_changed(claim)
            memo.provisioner.claims.add(f"{claim['metadata']['namespace']}/{claim['metadata']['name']}")


@kopf.on.event("snapshot.storage.k8s.io", "v1", "volumesnapshots", registry=registry)
async def snapshot_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    key = memo.context.stores.snapshots.apply_event(event["type"], event["object"])
    if (event["object"].get("status") or {}).get("readyToUse"):
        # Claims waiting to be restored from it need not wait for their backoff.
        for claim in memo.provisioner.restores_of(key):
            memo.provisioner.claims.add(claim)
    controller: SnapshotController | None = memo.snapshot_controller
    if controller is None:
        return
    if event["type"] == "DELETED":
        controller.snapshot_deleted(dict(event["object"]))
    else:
        controller.snapshots.add(key)


@kopf.on.event("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents", registry=registry)
async def content_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    key = memo.context.stores.contents.apply_event(event["type"], event["object"])
    if memo.snapshot_controller is not None:
        memo.snapshot_controller.content_changed(dict(event["object"]))
    if event["type"] != "DELETED":
        memo.snapshotter.contents.add(key)


@kopf.on.event("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses", registry=registry)
async def snapshot_class_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.context.stores.snapshot_classes.apply_event(event["type"], event["object"])
    if event["type"] != "DELETED":
        memo.snapshotter.requeue_all()


@kopf.on.event("groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshots", registry=registry)
async def group_snapshot_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    key = memo.context.stores.group_snapshots.apply_event(event["type"], event["object"])
    if event["type"] != "DELETED" and memo.group_controller is not None:
        memo.group_controller.groups.add(key)
    if event["type"] == "DELETED" and memo.snapshot_controller is not None:
        memo.snapshot_controller.group_deleted(dict(event["object"]))  # its members may go now


@kopf.on.event("groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshotcontents", registry=registry)
async def group_content_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    key = memo.context.stores.group_contents.apply_event(event["type"], event["object"])
    if memo.group_controller is not None:
        memo.group_controller.content_changed(dict(event["object"]))
    if event["type"] != "DELETED":
        memo.group_snapshotter.contents.add(key)


@kopf.on.event("groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshotclasses", registry=registry)
async def group_class_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.context.stores.group_classes.apply_event(event["type"], event["object"])


@kopf.on.event("storage.k8s.io", "v1", "csidrivers", registry=registry)
async def csidriver_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.context.stores.drivers.apply_event(event["type"], event["object"])


# --- DriverEndpoint: our own resource --------------------------------------------------


def _served(name: str, memo: kopf.Memo, **_: Any) -> bool:
    """Only the DriverEndpoints this process serves (SIDECARLESS_ENDPOINTS): another operator,
    embedded in another driver's pod, serves the rest, finalizer and status included."""
    return bool(memo.settings.serves(name))


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, when=_served)
async def endpoint_deleted(name: str, memo: kopf.Memo, **_: Any) -> None:
    await memo.context.endpoints.remove(name)


@kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=5.0, when=_served)
async def endpoint_monitor(name: str, body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any) -> None:
    """Probe the driver and keep the DriverEndpoint's status current."""
    context: Context = memo.context
    written: dict[str, Any] | None = None
    last_probe = 0.0
    retry_at = 0.0
    while not stopped:
        # Every replica configures its own connection from the spec it sees. Kopf's create and
        # update handlers run once for all replicas (they record what was handled on the
        # object), so a standby would never learn an endpoint created or changed while it
        # was standing by; a daemon runs in each replica, and `body` follows every change.
        spec = _plain(body.get("spec") or {})
        if context.endpoints.applied(name) != spec and time.monotonic() >= retry_at:
            try:
                await context.endpoints.apply(name, spec, await _tls_config(context.kube, spec))
            except TLSSecretMissing as error:
                log.warning("DriverEndpoint %s: %s; trying again in %.0f s", name, error, TLS_RETRY_SECONDS)
                retry_at = time.monotonic() + TLS_RETRY_SECONDS
        endpoint = context.endpoints.get(name)
        interval = endpoint.spec.probe_interval if endpoint else 10.0
        if endpoint is not None and time.monotonic() - last_probe >= interval:
            last_probe = time.monotonic()
            was_serving = endpoint.serving
            await endpoint.refresh()
            if endpoint.serving and not was_serving:
                memo.provisioner.requeue_endpoint(name)
        status = build_status(
            endpoint,
            spec_error=context.endpoints.spec_errors.get(name),
            generation=int(body.get("metadata", {}).get("generation") or 0),
            counts=_counts(context.stores, name),
            previous=dict(body.get("status") or {}),
            attach_required=_attach_required(context.stores, endpoint.spec.driver_name if endpoint else ""),
        )
        comparable = {**status, "probe": {k: v for k, v in (status.get("probe") or {}).items() if k != "lastTime"}}
        leading = memo.leader is None or memo.leader.leading  # a standby replica probes but does not write
        if leading and comparable != written:
            try:
                await context.kube.patch(DRIVER_ENDPOINT, name, {"status": status}, subresource="status")
                written = comparable
            except KubeError as error:
                log.warning("could not write the status of DriverEndpoint %s: %s", name, error)
        # Status is recomputed every tick (counts follow the stores) but written only when it changed.
        await stopped.wait(_MONITOR_TICK_SECONDS)
    if body.get("metadata", {}).get("deletionTimestamp"):
        await context.endpoints.remove(name)  # every replica; the on.delete handler runs in one


def _attach_required(stores: Stores, driver: str) -> bool:
    csidriver = stores.drivers.get(driver)
    return bool(((csidriver or {}).get("spec") or {}).get("attachRequired", True))


def _counts(stores: Stores, endpoint_name: str) -> dict[str, int]:
    """Volumes the endpoint serves (through their class), how many of them are attached, and its snapshots."""
    volumes = {
        v["metadata"]["name"]: ((v.get("spec") or {}).get("csi") or {}).get("volumeHandle")
        for v in stores.volumes.values()
        if endpoint_of_volume(v, stores.classes.get((v.get("spec") or {}).get("storageClassName") or ""))
        == endpoint_name
    }
    attachments = sum(
        1
        for a in stores.attachments.values()
        if ((a.get("spec") or {}).get("source") or {}).get("persistentVolumeName") in volumes
        and (a.get("status") or {}).get("attached")
    )
    handles = set(volumes.values())
    routed_classes = {
        c["metadata"]["name"]
        for c in stores.snapshot_classes.values()
        if (c["metadata"].get("annotations") or {}).get(ANN_ENDPOINT) == endpoint_name
    }
    snapshots = sum(
        1
        for c in stores.contents.values()
        if (c.get("status") or {}).get("snapshotHandle")
        and (
            ((c.get("spec") or {}).get("source") or {}).get("volumeHandle") in handles
            or (c.get("spec") or {}).get("volumeSnapshotClassName") in routed_classes
        )
    )
    return {"volumes": len(volumes), "attachments": attachments, "snapshots": snapshots}


class TLSSecretMissing(Exception):  # noqa: N818 - reads as what it is at the call site
    pass


async def _tls_config(kube: Kube, spec: dict[str, Any]) -> TLSConfig | None:
    tls = spec.get("tls")
    if not tls:
        return None
    data = await kube.secret_data(tls["secretName"], tls["secretNamespace"])
    if data is None:
        raise TLSSecretMissing(f"TLS secret {tls['secretNamespace']}/{tls['secretName']} not found")
    return TLSConfig(
        root_certificates=data.get("ca.crt"),
        private_key=data.get("tls.key"),
        certificate_chain=data.get("tls.crt"),
        server_name=tls.get("serverName") or None,
    )


def _plain(value: Any) -> Any:
    """Kopf's read-only mappings as plain dicts and lists."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def run(
    settings: OperatorConfig, *, stop_flag: asyncio.Event | None = None, ready_flag: asyncio.Event | None = None
) -> None:
    """Run the operator until `stop_flag` is set (or forever)."""
    liveness = f"http://{settings.listen_address}:{settings.health_port}/healthz" if settings.health_port else None
    metrics = (
        await metrics_server.start(settings.listen_address, settings.metrics_port) if settings.metrics_port else None
    )
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=True,
            memo=kopf.Memo(settings=settings),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            liveness_endpoint=liveness,
        )
    finally:
        if metrics is not None:
            await metrics.cleanup()
