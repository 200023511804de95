"""Adding and removing the sidecars' finalizers, the one way every controller does it.

The patch carries the object's resourceVersion, so a finalizer list is never replaced on
top of somebody else's change; a conflict re-queues the key to look again shortly.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sidecarless.kube import Conflict, Kube, NotFound, Resource
from sidecarless.workqueue import Requeue

Body = dict[str, Any]

CONFLICT_RETRY_SECONDS = 0.5
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# API groups of kinds compiled into the API server, which take strategic merge patches.
BUILT_IN_GROUPS = frozenset({"", "storage.k8s.io"})


def has(obj: Body, finalizer: str) -> bool:
    return finalizer in (obj.get("metadata", {}).get("finalizers") or [])


async def add(kube: Kube, resource: Resource, obj: Body, finalizer: str, *more: str) -> Body | None:
    """Add the finalizers `obj` lacks, in one write; return the patched object (None: unchanged or gone)."""
    missing = [f for f in dict.fromkeys((finalizer, *more)) if not has(obj, f)]
    if not missing:
        return None
    return await _set(kube, resource, obj, [*(obj["metadata"].get("finalizers") or []), *missing])


async def remove(kube: Kube, resource: Resource, obj: Body, finalizer: str) -> Body | None:
    """Remove `finalizer` from `obj` if it is there; return the patched object (None: unchanged or gone)."""
    if not has(obj, finalizer):
        return None
    return await _set(kube, resource, obj, [f for f in obj["metadata"]["finalizers"] if f != finalizer])


async def remove_last(
    kube: Kube, resource: Resource, name: str, finalizer: str, namespace: str | None = None, *, current: Body | None
) -> None:
    """Remove `finalizer` as the last step of a deletion (or from a claim others keep writing to).

    Built-in kinds (PVs, VolumeAttachments) take a strategic merge patch that deletes just
    this entry from the list: no resourceVersion, so nobody else's change can make it
    conflict (kube-controller-manager drops its pv-protection finalizer at the same
    moment, and each such conflict cost a read and a retry: 860 of 1,000 deletions at
    100 QPS in `make bench`). Custom resources cannot take one: from `current` when we
    hold a copy that should be current (the answer to our last write or DELETE: no read
    needed), else, or when it changed meanwhile, from a fresh read."""
    if current is not None and not has(current, finalizer):
        return
    if resource.group in BUILT_IN_GROUPS:
        with contextlib.suppress(NotFound):
            await kube.patch(
                resource,
                name,
                {"metadata": {"$deleteFromPrimitiveList/finalizers": [finalizer]}},
                namespace,
                content_type=STRATEGIC_MERGE_PATCH,
            )
        return
    if current is not None:
        try:
            await remove(kube, resource, current, finalizer)
            return
        except Requeue:
            pass
    await remove_fresh(kube, resource, name, finalizer, namespace)


async def remove_fresh(
    kube: Kube, resource: Resource, name: str, finalizer: str, namespace: str | None = None, *, attempts: int = 5
) -> None:
    """Remove `finalizer` from the current object, re-reading it after each conflict.

    For the last step of a deletion: others (kube-controller-manager, for one) update an
    object that is being deleted, and a finalizer left behind on a conflict leaves it stuck
    (lib-external-provisioner #87, external-provisioner #1217).
    """
    for _ in range(attempts):
        current = await kube.get_or_none(resource, name, namespace)
        if current is None:
            return
        try:
            await remove(kube, resource, current, finalizer)
            return
        except Requeue:
            continue
    raise Requeue(CONFLICT_RETRY_SECONDS, f"{resource.kind} {name} kept changing while {finalizer} was removed")


async def _set(kube: Kube, resource: Resource, obj: Body, finalizers: list[str]) -> Body | None:
    meta = obj["metadata"]
    patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
    try:
        return await kube.patch(resource, meta["name"], patch, meta.get("namespace"))
    except NotFound:
        return None
    except Conflict as error:
        raise Requeue(CONFLICT_RETRY_SECONDS, f"{resource.kind} {meta['name']} changed meanwhile") from error
