"""What each watch event of a user's object does: update its store, queue keys for controllers.

An event that changes nothing but its object's status adds that object's keys quietly
(:meth:`sidecarless.workqueue.WorkQueue.add`): the echo of a failure's own error write does
not re-run the failed sync at once. Keys woken through an object (a content's snapshot)
are added as before: their own object did not tell them.

These objects are watched by :mod:`sidecarless.informer`, not by Kopf, so nothing is ever
written onto them but what the controllers write. Every function here is synchronous and
cheap: the work happens in the controllers' queues.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sidecarless import kube as k
from sidecarless.attacher.controller import Attacher
from sidecarless.capacity.controller import CapacityTracker
from sidecarless.context import Context
from sidecarless.health_monitor import HealthMonitor
from sidecarless.informer import RESYNC, Informer
from sidecarless.leaks import LeakReporter
from sidecarless.provisioner import sources
from sidecarless.provisioner.controller import Provisioner
from sidecarless.resizer.controller import Resizer
from sidecarless.routing import endpoint_of_class
from sidecarless.snapshots import plan as snapshot_plan
from sidecarless.snapshots.common_controller import SnapshotController
from sidecarless.snapshots.group_common_controller import GroupSnapshotController
from sidecarless.snapshots.group_sidecar_controller import GroupSnapshotter
from sidecarless.snapshots.sidecar_controller import Snapshotter
from sidecarless.store import Store
from sidecarless.vocabulary import key_of, object_key
from sidecarless.workqueue import LOUD, Quiet

Body = dict[str, Any]
DELETED = "DELETED"


@runtime_checkable
class Controller(Protocol):
    """What the lifecycle asks of every controller; the one list below holds them all, so
    none can be forgotten when the controllers start, stop or hear of an endpoint."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def endpoint_changed(self, endpoint: str) -> None:
        """A DriverEndpoint was (re)configured or serves again: look at its objects now, not
        after the backoff they built up meanwhile."""


@dataclass
class Controllers:
    context: Context
    provisioner: Provisioner
    attacher: Attacher
    resizer: Resizer
    snapshotter: Snapshotter
    group_snapshotter: GroupSnapshotter
    snapshot_controller: SnapshotController | None  # None beside an upstream snapshot-controller
    group_controller: GroupSnapshotController | None
    leaks: LeakReporter
    health: HealthMonitor
    capacity: CapacityTracker

    def all(self) -> list[Controller]:
        every: tuple[Controller | None, ...] = (
            self.leaks,
            self.health,
            self.capacity,
            self.provisioner,
            self.attacher,
            self.resizer,
            self.snapshotter,
            self.snapshot_controller,
            self.group_snapshotter,
            self.group_controller,
        )
        return [c for c in every if c is not None]

    async def endpoint_changed(self, endpoint: str) -> None:
        """The one fan-out (EndpointRegistry.on_change): every controller looks again."""
        for controller in self.all():
            controller.endpoint_changed(endpoint)


def claim_event(c: Controllers, kind: str | None, claim: Body, quiet: Quiet = LOUD) -> None:
    key = c.context.stores.claims.apply_event(kind, claim)
    if c.snapshot_controller is not None:
        c.snapshot_controller.claim_changed(claim, quiet=quiet.others)
    if kind != DELETED:
        c.provisioner.claims.add(key, quiet=quiet.own)
        c.resizer.claim_changed(claim, quiet=quiet.own)
        return
    c.resizer.claim_deleted(key)
    namespace = claim["metadata"]["namespace"]
    # A deleted clone may free its source of the cloning-protection finalizer.
    source = sources.data_source(claim)
    if source is not None and sources.is_clone(source):
        c.provisioner.claims.add(key_of(namespace, source.name))
    if source is not None and sources.is_snapshot(source):
        c.provisioner.snapshot_sources.add(key_of(namespace, source.name))
    # A claim deleted mid-provisioning leaves a journal entry to finish. Only such a claim
    # starts a recovery (a read of the journal): not every deletion of a bound claim.
    class_name = (claim.get("spec") or {}).get("storageClassName") or ""
    endpoint_name = endpoint_of_class(c.context.stores.classes.get(class_name))
    if endpoint_name and c.provisioner.journal_holds(endpoint_name, key):
        c.provisioner.recoveries.add(endpoint_name)


def volume_event(c: Controllers, kind: str | None, volume: Body, quiet: Quiet = LOUD) -> None:
    key = c.context.stores.volumes.apply_event(kind, volume)
    if kind in ("ADDED", DELETED):
        c.capacity.topology_changed()  # a volume made or gone: the capacity left changed
    if kind != DELETED:
        c.provisioner.volumes.add(key, quiet=quiet.own)
        c.attacher.volumes.add(key, quiet=quiet.own)
        c.resizer.volume_changed(volume, quiet=quiet.others)


def class_event(c: Controllers, kind: str | None, storage_class: Body, quiet: Quiet = LOUD) -> None:
    key = c.context.stores.classes.apply_event(kind, storage_class)
    if not quiet.own:
        c.capacity.topology_changed()
    if kind != DELETED and endpoint_of_class(storage_class):
        for claim in c.provisioner.claims_of_class(key):
            c.provisioner.claims.add(claim, quiet=quiet.others)


def topology_event(store_of: StoreOf) -> Handler:
    """A CSIDriver, Node or CSINode: the capacity tracker looks again when more than its status
    changed (a Node's heartbeat changes nothing the projected store keeps)."""

    def handle(c: Controllers, kind: str | None, body: Body, quiet: Quiet = LOUD) -> None:
        store_of(c).apply_event(kind, body)
        if not quiet.own:
            c.capacity.topology_changed()

    return handle


def attachment_event(c: Controllers, kind: str | None, attachment: Body, quiet: Quiet = LOUD) -> None:
    c.context.stores.attachments.apply_event(kind, attachment)
    if kind != DELETED:
        c.attacher.enqueue(attachment, quiet=quiet.own)
        return
    # A released volume's deletion, and the attacher's PV finalizer, wait for attachments to go.
    volume = ((attachment.get("spec") or {}).get("source") or {}).get("persistentVolumeName")
    if volume:
        c.provisioner.volumes.add(volume)
        c.attacher.volumes.add(volume)


def attributes_class_event(c: Controllers, kind: str | None, attributes_class: Body, quiet: Quiet = LOUD) -> None:
    key = c.context.stores.attribute_classes.apply_event(kind, attributes_class)
    if kind == DELETED:
        return
    # Claims waiting (Pending) for this class, or for provisioning with it, go again.
    for claim in c.context.stores.claims.values():
        if (claim.get("spec") or {}).get("volumeAttributesClassName") == key:
            c.resizer.claim_changed(claim, quiet=quiet.others)
            c.provisioner.claims.add(object_key(claim), quiet=quiet.others)


def snapshot_event(c: Controllers, kind: str | None, snapshot: Body, quiet: Quiet = LOUD) -> None:
    key = c.context.stores.snapshots.apply_event(kind, snapshot)
    if (snapshot.get("status") or {}).get("readyToUse"):
        # Claims waiting to be restored from it need not wait for their backoff.
        for claim in c.provisioner.restores_of(key):
            c.provisioner.claims.add(claim, quiet=quiet.others)
    meta = snapshot["metadata"]
    if meta.get("deletionTimestamp") and sources.SNAPSHOT_PROTECTION_FINALIZER in (meta.get("finalizers") or []):
        # A restore source being deleted: free it now if no claim is still restored from it.
        c.provisioner.snapshot_sources.add(key, quiet=quiet.others)
    content = snapshot_plan.bound_content_name(snapshot)
    if meta.get("deletionTimestamp") and content:
        # The driver half reads this deletion from the snapshot itself (snapshots.plan.content_decision).
        c.snapshotter.contents.add(content, quiet=quiet.others)
    if c.snapshot_controller is None:
        return
    if kind == DELETED:
        c.snapshot_controller.snapshot_deleted(snapshot)
    else:
        c.snapshot_controller.snapshots.add(key, quiet=quiet.own)


def content_event(c: Controllers, kind: str | None, content: Body, quiet: Quiet = LOUD) -> None:
    key = c.context.stores.contents.apply_event(kind, content)
    if c.snapshot_controller is not None:
        c.snapshot_controller.content_changed(content, quiet)
    if kind != DELETED:
        c.snapshotter.contents.add(key, quiet=quiet.own)


def snapshot_class_event(c: Controllers, kind: str | None, snapshot_class: Body, quiet: Quiet = LOUD) -> None:
    c.context.stores.snapshot_classes.apply_event(kind, snapshot_class)
    if kind != DELETED:
        c.snapshotter.requeue_all(quiet=quiet.others)


def group_snapshot_event(c: Controllers, kind: str | None, group: Body, quiet: Quiet = LOUD) -> None:
    key = c.context.stores.group_snapshots.apply_event(kind, group)
    if kind != DELETED and c.group_controller is not None:
        c.group_controller.groups.add(key, quiet=quiet.own)
    if kind == DELETED and c.snapshot_controller is not None:
        c.snapshot_controller.group_deleted(group)  # its members may go now


def group_content_event(c: Controllers, kind: str | None, content: Body, quiet: Quiet = LOUD) -> None:
    key = c.context.stores.group_contents.apply_event(kind, content)
    if c.group_controller is not None:
        c.group_controller.content_changed(content, quiet=quiet.others)
    if kind != DELETED:
        c.group_snapshotter.contents.add(key, quiet=quiet.own)


# (controllers, event type, object, how quietly it adds keys)
Handler = Callable[[Controllers, str | None, Body, Quiet], None]
StoreOf = Callable[[Controllers], Store]


def _drivers(c: Controllers) -> Store:
    return c.context.stores.drivers


def _nodes(c: Controllers) -> Store:
    return c.context.stores.nodes


def _csinodes(c: Controllers) -> Store:
    return c.context.stores.csinodes


# Each watched kind, its store, and what else its events do (None: only the store; the
# controllers look these up). Classes come first: claims are looked at through them.
WATCHED: list[tuple[k.Resource, StoreOf, Handler | None]] = [
    (k.STORAGE_CLASS, lambda c: c.context.stores.classes, class_event),
    (k.CSI_DRIVER, _drivers, topology_event(_drivers)),
    (k.NODE, _nodes, topology_event(_nodes)),
    (k.CSI_NODE, _csinodes, topology_event(_csinodes)),
    (k.VOLUME_ATTRIBUTES_CLASS, lambda c: c.context.stores.attribute_classes, attributes_class_event),
    (k.VOLUME_SNAPSHOT_CLASS, lambda c: c.context.stores.snapshot_classes, snapshot_class_event),
    (k.VOLUME_GROUP_SNAPSHOT_CLASS, lambda c: c.context.stores.group_classes, None),
    (k.PV, lambda c: c.context.stores.volumes, volume_event),
    (k.PVC, lambda c: c.context.stores.claims, claim_event),
    (k.VOLUME_ATTACHMENT, lambda c: c.context.stores.attachments, attachment_event),
    (k.VOLUME_SNAPSHOT_CONTENT, lambda c: c.context.stores.contents, content_event),
    (k.VOLUME_SNAPSHOT, lambda c: c.context.stores.snapshots, snapshot_event),
    (k.VOLUME_GROUP_SNAPSHOT_CONTENT, lambda c: c.context.stores.group_contents, group_content_event),
    (k.VOLUME_GROUP_SNAPSHOT, lambda c: c.context.stores.group_snapshots, group_snapshot_event),
]


def informers(c: Controllers) -> list[Informer]:
    """An informer for each watched kind, resyncing every `resync_seconds`."""
    return [
        Informer(
            c.context.kube,
            resource,
            store_of(c),
            _on_event(c, store_of(c), handler),
            resync=c.context.settings.resync_seconds,
        )
        for resource, store_of, handler in WATCHED
    ]


def _on_event(c: Controllers, store: Store, handler: Handler | None) -> Callable[[str | None, Body], None]:
    def on_event(kind: str | None, body: Body) -> None:
        if handler is None:
            store.apply_event(kind, body)
            return
        if kind == RESYNC:
            handler(c, kind, body, Quiet(own=True, others=True))  # nothing changed at all
            return
        # Before the store takes it: an event that changes nothing but the status (a
        # failure's own error write, above all) must not cut that key's backoff short.
        handler(c, kind, body, Quiet(own=store.unchanged_but_status(kind, body)))

    return on_event
