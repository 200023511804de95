"""Every Kopf handler of the operator, and the only module that registers any.

Kopf runs the operator's lifecycle and the DriverEndpoint, our own resource (a daemon per
endpoint, its finalizer and deletion). Users' objects are not Kopf's: the informers of
:mod:`sidecarless.watches` list and watch them into the stores, and nothing but the
controllers writes to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from kopf._core.engines.peering import Identity  # not exported; a NewType of str

from csi_client import TLSConfig
from sidecarless import metrics_server, routing, watches
from sidecarless.attacher.controller import Attacher
from sidecarless.capacity.controller import CapacityTracker
from sidecarless.config import Settings as OperatorConfig
from sidecarless.context import Context
from sidecarless.endpoints.live import EndpointRegistry
from sidecarless.endpoints.status import build_status
from sidecarless.events import EventRecorder
from sidecarless.health_monitor import HealthMonitor
from sidecarless.informer import Informer, wait_synced
from sidecarless.kube import DRIVER_ENDPOINT, Kube, KubeError, connect, kopf_session, load_configuration
from sidecarless.leader import LeaderElector
from sidecarless.leaks import LeakReporter
from sidecarless.leases import Observations
from sidecarless.provisioner.controller import Provisioner
from sidecarless.resizer.controller import Resizer
from sidecarless.shards import HELD, SHARED, Shards, forget_served, sharded_holders
from sidecarless.snapshots.common_controller import SnapshotController
from sidecarless.snapshots.group_common_controller import GroupSnapshotController
from sidecarless.snapshots.group_sidecar_controller import GroupSnapshotter
from sidecarless.snapshots.sidecar_controller import Snapshotter
from sidecarless.store import Stores
from sidecarless.watches import Controllers

log = logging.getLogger("sidecarless")

registry = kopf.OperatorRegistry()

GROUP, VERSION, PLURAL = "sidecarless.io", "v1alpha1", "driverendpoints"
# How often the status is recomputed (probes follow spec.timeouts.probeInterval).
_MONITOR_TICK_SECONDS = 1.0
# A status whose only change is its counts is written at most this often (a burst of
# claims would otherwise write it every tick); any other change is written at once.
COUNTS_WRITE_SECONDS = 5.0
DELETION_RECHECK_SECONDS = 5.0  # a DriverEndpoint held by what it serves looks again this often
ANN_ALLOW_DELETION_IN_USE = "sidecarless.io/allow-deletion-in-use"
TLS_RETRY_SECONDS = 30.0  # an endpoint whose TLS Secret is missing looks for it again this often
SYNC_TIMEOUT_SECONDS = 60.0  # the leader's controllers wait this long at most for the first listings


# --- lifecycle -----------------------------------------------------------------------


@kopf.on.login(registry=registry)
async def login(memo: kopf.Memo, **_: Any) -> kopf.AiohttpSession:
    """Kopf and the controllers' client use one credential source: kubernetes-asyncio's loader."""
    configuration = await load_configuration(memo.settings.kubeconfig)
    return kopf.AiohttpSession(server=configuration.host or "", aiohttp_session=await kopf_session(configuration))


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    _configure_kopf(settings)
    config = memo.settings
    # One connection (HTTP/2) for every watch and request; Kopf's DriverEndpoint watch has its own.
    kube = Kube(await connect(config.kubeconfig), qps=config.api_qps, burst=config.api_burst)
    context = Context(
        settings=config,
        kube=kube,
        events=EventRecorder(kube, component="sidecarless", instance=config.identity),
        endpoints=EndpointRegistry(),
        stores=Stores(),
    )
    kube.written = context.stores.remember

    def budget() -> Context:
        """A controller's context: the shared budget, or (scope "controller") one of its own."""
        if config.api_qps_scope != "controller":
            return context
        return dataclasses.replace(context, kube=kube.with_budget(config.api_qps, config.api_burst))

    controllers = Controllers(
        context=context,
        provisioner=Provisioner(budget()),
        attacher=Attacher(budget()),
        resizer=Resizer(budget()),
        snapshotter=Snapshotter(budget()),
        group_snapshotter=GroupSnapshotter(budget()),
        snapshot_controller=SnapshotController(budget()) if config.snapshot_controller else None,
        group_controller=GroupSnapshotController(budget()) if config.snapshot_controller else None,
        leaks=LeakReporter(budget()),
        health=HealthMonitor(budget()),
        capacity=CapacityTracker(budget()),
    )
    context.endpoints.on_change = controllers.endpoint_changed
    # Every replica watches (a standby's stores are warm when it takes over); only the
    # leader's controllers work.
    memo.informers = watches.informers(controllers)
    for informer in memo.informers:
        informer.start()
    memo.context = context
    memo.controllers = controllers
    memo.leader = None
    memo.shards = None
    # Leases have their own rate limit, so a busy operator cannot starve the renewals; the
    # connection is shared, as client-go shares it, and HTTP/2 streams do not queue behind each other.
    lease_kube = kube.with_budget(10, 20)
    if config.sharding:
        shards = memo.shards = _shards(lease_kube, context, controllers, memo.informers)
        # An endpoint's work is its Lease holder's; the work of no endpoint, the shared Lease's.
        context.endpoints.holds = lambda name: shards.holds(name or SHARED)
        await _start_all(controllers, memo.informers)()  # every replica works: on what it holds
        shards.start()
    elif config.leader_election:
        observations = Observations()
        timing = config.lease_timing()
        leader = memo.leader = LeaderElector(
            lease_kube,
            config.namespace,
            config.identity,
            name=config.lease_name,
            timing=timing,
            on_started=_start_all(controllers, memo.informers),
            on_stopped=_stop_all(controllers),
            may_lead=lambda: sharded_holders(lease_kube, config.namespace, observations, timing),
        )
        context.endpoints.holds = lambda _name: leader.holds()
        leader.start()
    else:
        await _start_all(controllers, memo.informers)()


def _shards(kube: Kube, context: Context, controllers: Controllers, informers: list[Informer]) -> Shards:
    config = context.settings

    async def acquired(key: str) -> None:
        if key == SHARED:
            # The work of no endpoint was dropped here while another replica held it: look at everything.
            for informer in informers:
                await informer.resync_once()
        else:
            await controllers.endpoint_changed(key)

    async def lost(key: str, grace: float) -> None:
        endpoint = context.endpoints.get(key)
        if endpoint is not None:
            await endpoint.abandon(grace)

    return Shards(
        kube,
        config.namespace,
        config.identity,
        endpoints=context.endpoints.known,
        only=config.endpoint_names(),
        singletons=[SHARED],
        on_acquired=acquired,
        on_lost=lost,
        timing=config.lease_timing(),
        leader_lease=config.lease_name,
    )


def _start_all(controllers: Controllers, informers: list[Informer]) -> Callable[[], Awaitable[None]]:
    async def start() -> None:
        # Like client-go's WaitForCacheSync: a controller that started before the classes
        # were listed would take a claim's class for missing. Bounded, so that one kind the
        # API server cannot list (its failures are logged) does not stop all the others.
        unsynced = await wait_synced(informers, SYNC_TIMEOUT_SECONDS)
        if unsynced:
            log.warning("starting the controllers before listing %s (still trying)", ", ".join(unsynced))
        for controller in controllers.all():
            controller.start()

    return start


def _stop_all(controllers: Controllers) -> Callable[[], Awaitable[None]]:
    async def stop() -> None:
        for controller in controllers.all():
            await controller.stop()

    return stop


def _configure_kopf(settings: kopf.OperatorSettings) -> None:
    settings.posting.enabled = False  # Kopf must not post its log lines as Events on users' objects
    settings.persistence.finalizer = "sidecarless.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="sidecarless.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="sidecarless.io", key="last-handled-configuration"
    )
    settings.peering.standalone = True
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


@kopf.on.cleanup(registry=registry)
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("shards") is not None:
        await memo.shards.stop()  # stops the work of every Lease held, and hands them over
        await _stop_all(memo.controllers)()
    elif memo.get("leader") is not None:
        await memo.leader.stop()  # stops the controllers if leading, and hands the Lease over
    elif "controllers" in memo:
        await _stop_all(memo.controllers)()
    for informer in memo.get("informers") or []:
        await informer.stop()
    if "context" in memo:
        await memo.context.events.close()  # what the controllers recorded last is posted
        await memo.context.endpoints.close()
        await memo.context.kube.close()


# --- DriverEndpoint: our own resource --------------------------------------------------


def _served(name: str, memo: kopf.Memo, **_: Any) -> bool:
    """Only the DriverEndpoints this process serves (SIDECARLESS_ENDPOINTS): another operator,
    embedded in another driver's pod, serves the rest, finalizer and status included."""
    return bool(memo.settings.serves(name))


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, when=_served)
async def endpoint_deleted(name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Protected as Kubernetes protects a claim in use: while PVs, attachments or snapshot
    contents still need the endpoint it stays Terminating, serving them (their deletions
    need its driver), with a `Terminating` condition that says what holds it; it goes once
    none do, or at once with the annotation `sidecarless.io/allow-deletion-in-use: "true"`."""
    context: Context = memo.context
    if not all(informer.synced.is_set() for informer in memo.informers):
        # A new replica (a restart mid-deletion) must not take its empty stores for "nothing".
        raise kopf.TemporaryError("waiting for the first listings", delay=DELETION_RECHECK_SECONDS)
    held = _holding(context.stores, name, memo.controllers.provisioner.journal.in_flight(name))
    allowed = (body.get("metadata", {}).get("annotations") or {}).get(ANN_ALLOW_DELETION_IN_USE) == "true"
    if held is not None and not allowed:
        spec = _plain(body.get("spec") or {})
        if context.endpoints.applied(name) != spec:
            # Kopf starts no daemon for an object already being deleted: after a restart the
            # endpoint is configured here, or nothing would serve what holds it.
            with contextlib.suppress(TLSSecretMissing):
                await context.endpoints.apply(name, spec, await _tls_config(context.kube, spec))
        if context.endpoints.get(name) is not None:
            await context.endpoints.refresh(name)  # its daemon has stopped: probe here
        if context.endpoints.holds(name):  # a standby, or another shard's replica, writes no status
            status = _status(memo, name, body, terminating=held)
            try:
                await context.kube.patch(DRIVER_ENDPOINT, name, {"status": status}, subresource="status")
            except KubeError as error:
                log.warning("could not write the status of DriverEndpoint %s: %s", name, error)
        raise kopf.TemporaryError(held, delay=DELETION_RECHECK_SECONDS)
    if held is not None:
        log.warning("DriverEndpoint %s deleted while in use (%s): %s", name, ANN_ALLOW_DELETION_IN_USE, held)
    await context.endpoints.remove(name)


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, when=_served)
async def endpoint_event(type: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Every replica drops an endpoint once it is gone (the delete handler runs in one)."""
    if type == "DELETED":
        await memo.context.endpoints.remove(name)
        forget_served(name)
        memo.controllers.capacity.endpoint_changed(name)  # its capacity objects go with it


def _holding(stores: Stores, name: str, provisioning: int = 0) -> str | None:
    """What still needs endpoint `name`, in words; None: nothing."""
    counts = {**routing.served_by(stores, name), "provisioning": provisioning}
    if not any(counts.values()):
        return None
    held = ", ".join(
        f"{count} {what}"
        for what, count in (
            ("PersistentVolumes", counts["volumes"]),
            ("attached VolumeAttachments", counts["attachments"]),
            ("VolumeSnapshotContents", counts["snapshots"]),
            ("VolumeGroupSnapshotContents", counts["groupSnapshots"]),
            ("CreateVolume calls in flight", counts["provisioning"]),
        )
        if count
    )
    return (
        f"being deleted, and still needed by {held}: it serves them until none is left "
        f'(annotate it {ANN_ALLOW_DELETION_IN_USE}="true" to delete it now)'
    )


@kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=5.0, when=_served)
async def endpoint_monitor(name: str, body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any) -> None:
    """Probe the driver and keep the DriverEndpoint's status current."""
    context: Context = memo.context
    written: dict[str, Any] | None = None
    written_at = 0.0
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
                # Where the user looks: Ready=False, InvalidSpec, naming the Secret.
                context.endpoints.spec_errors[name] = (
                    f"spec.tls: {error} (looked for again every {TLS_RETRY_SECONDS:.0f} s)"
                )
        endpoint = context.endpoints.get(name)
        interval = endpoint.spec.probe_interval if endpoint else 10.0
        if endpoint is not None and time.monotonic() - last_probe >= interval:
            last_probe = time.monotonic()
            await context.endpoints.refresh(name)  # serving again: every controller looks again
        if endpoint is not None:  # the leader, or the Lease's holder (none once the endpoint is gone)
            HELD.labels(name).set(1 if context.endpoints.holds(name) else 0)
        status = _status(memo, name, body)
        comparable = {**status, "probe": {k: v for k, v in (status.get("probe") or {}).items() if k != "lastTime"}}
        # A standby replica (or, sharded, one that does not hold the endpoint) probes but does not write.
        if context.endpoints.holds(name) and _worth_writing(comparable, written, time.monotonic() - written_at):
            try:
                await context.kube.patch(DRIVER_ENDPOINT, name, {"status": status}, subresource="status")
                written, written_at = comparable, time.monotonic()
            except KubeError as error:
                log.warning("could not write the status of DriverEndpoint %s: %s", name, error)
        # Status is recomputed every tick (counts follow the stores) but written only when it changed.
        await stopped.wait(_MONITOR_TICK_SECONDS)
    # Stopped by a deletion (or the operator's exit): the endpoint stays live until the object
    # is gone (endpoint_event), so what still needs it is served meanwhile (endpoint_deleted).


def _status(memo: kopf.Memo, name: str, body: kopf.Body, *, terminating: str | None = None) -> dict[str, Any]:
    context: Context = memo.context
    endpoint = context.endpoints.get(name)
    return build_status(
        endpoint,
        spec_error=context.endpoints.spec_errors.get(name),
        generation=int(body.get("metadata", {}).get("generation") or 0),
        counts=routing.served_by(context.stores, name),
        previous=dict(body.get("status") or {}),
        attach_required=_attach_required(context.stores, endpoint.spec.driver_name if endpoint else ""),
        unreferenced=memo.controllers.leaks.findings.get(name),
        terminating=terminating,
        capacity=(memo.controllers.capacity.state(name), memo.controllers.capacity.objects.get(name, 0)),
        served_by=context.settings.identity,
    )


def _worth_writing(status: dict[str, Any], written: dict[str, Any] | None, since_written: float) -> bool:
    """A new status is written at once; one whose only change is its counts, at most every COUNTS_WRITE_SECONDS."""
    if written is None:
        return True
    if status == written:
        return False
    counts_only = {**status, "counts": None} == {**written, "counts": None}
    return not counts_only or since_written >= COUNTS_WRITE_SECONDS


def _attach_required(stores: Stores, driver: str) -> bool:
    csidriver = stores.drivers.get(driver)
    return bool(((csidriver or {}).get("spec") or {}).get("attachRequired", True))


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
            # Kopf's own guess asks the password database for the user's name, and a
            # container's user (runAsUser) need not be in it: that crashed at start.
            identity=Identity(settings.identity),
        )
    finally:
        if metrics is not None:
            await metrics.cleanup()
