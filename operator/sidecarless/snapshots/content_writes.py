"""The writes csi-snapshotter makes on a (group) snapshot content, in one place for both kinds:
its status, one annotation at a time, and an error with its event."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from sidecarless.events import EventRecorder, Sources
from sidecarless.kube import Kube, NotFound, Resource
from sidecarless.vocabulary import now_rfc3339

Body = dict[str, Any]


@dataclass(frozen=True)
class ErrorEvents:
    """Event reason and message prefix for a failure before the content has a status, and after."""

    creation_reason: str  # SnapshotCreationFailed
    creation_prefix: str  # Failed to create snapshot
    check_reason: str  # SnapshotContentCheckandUpdateFailed
    check_prefix: str  # Failed to check and update snapshot content


class ContentWrites:
    def __init__(self, kube: Kube, events: EventRecorder, resource: Resource, errors: ErrorEvents) -> None:
        self.kube = kube
        self.events = events
        self.resource = resource
        self.errors = errors

    async def status(self, content: Body, status: Body) -> Body:
        """Merge `status` into the content's; return the content as written (or as given, if gone)."""
        try:
            return await self.kube.patch(
                self.resource, content["metadata"]["name"], {"status": status}, subresource="status"
            )
        except NotFound:
            return content

    async def annotate(self, content: Body, key: str, value: str | None) -> Body:
        """Set (or, with None, remove) one annotation, touching no other: the two halves of
        snapshotting never overwrite each other's annotations."""
        present = key in (content["metadata"].get("annotations") or {})
        if (value is None) != present:
            return content
        try:
            return await self.kube.patch(
                self.resource, content["metadata"]["name"], {"metadata": {"annotations": {key: value}}}
            )
        except NotFound:
            return content

    async def failed(self, content: Body, message: str) -> None:
        """csi-snapshotter's updateContentErrorStatusWithEvent: the error into the status and an
        event, once per distinct message."""
        status = content.get("status") or {}
        if (status.get("error") or {}).get("message") == message:
            return
        errors = self.errors
        reason, prefix = (
            (errors.check_reason, errors.check_prefix) if status else (errors.creation_reason, errors.creation_prefix)
        )
        with contextlib.suppress(NotFound):
            await self.kube.patch(
                self.resource,
                content["metadata"]["name"],
                {"status": {"readyToUse": False, "error": {"time": now_rfc3339(), "message": message}}},
                subresource="status",
            )
        driver = str((content.get("spec") or {}).get("driver") or "")
        await self.events.warning(content, reason, f"{prefix}: {message}", source=Sources.snapshotter(driver))
