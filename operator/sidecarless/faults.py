"""Crash points for fault-injection tests. Unset (always, outside tests), a point costs a lookup.

Two ways to die, as a node failure or an OOM kill would (SIGKILL, nothing flushed):

- Named points: `SIDECARLESS_FAULT_POINTS=after-create-volume@team-a/,...`. When the
  operator reaches a listed point for an object whose key contains the text after `@` (or
  for any object, without `@`), it kills itself there.
- Steps: before and after every CSI call of an operation and every API write (create,
  patch, delete; Events, DriverEndpoint status and Leases aside, which are bookkeeping),
  numbered from 1 as the process reaches them. `SIDECARLESS_FAULT_AT=N` kills the process
  at step N; `SIDECARLESS_FAULT_TRACE=1` logs every step. The crash-anywhere suite runs an
  operation once to count its steps, then once per step killed there.

And one way to lose a race on purpose: `SIDECARLESS_FAULT_CHECKED_WRITE_DELAY=seconds` waits
that long before each object's first patch that carries its resourceVersion, so that a test
writing to the same objects meanwhile makes that write conflict every time. Only the first:
delaying the retries too would let a busy enough writer starve the operator for ever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

log = logging.getLogger("sidecarless.faults")

# Writes that are not steps of an operation: their timing follows clocks, not the operation.
UNCOUNTED_RESOURCES = frozenset({"events", "driverendpoints", "leases"})
# The CSI calls that change the backend (reads, such as the attacher's periodic ListVolumes, are not steps).
CSI_WRITES = frozenset(
    {
        "CreateVolume",
        "DeleteVolume",
        "ControllerPublishVolume",
        "ControllerUnpublishVolume",
        "ControllerExpandVolume",
        "ControllerModifyVolume",
        "CreateSnapshot",
        "DeleteSnapshot",
        "CreateVolumeGroupSnapshot",
        "DeleteVolumeGroupSnapshot",
    }
)


def _parse(raw: str) -> dict[str, tuple[str, ...]]:
    points: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        point, _, match = item.partition("@")
        points[point] = (*points.get(point, ()), match)
    return points


_POINTS = _parse(os.environ.get("SIDECARLESS_FAULT_POINTS", ""))


def reached(point: str, obj: str) -> None:
    """Die here if `point` is listed for `obj` (a key such as `namespace/name` or `va-name/pv-name`)."""
    matches = _POINTS.get(point)
    if matches is not None and any(match in obj for match in matches):
        _die(f"fault point {point} reached for {obj}")


class Steps:
    def __init__(self, kill_at: int, trace: bool) -> None:
        self.kill_at = kill_at
        self.trace = trace
        self.count = 0

    @property
    def enabled(self) -> bool:
        return self.kill_at > 0 or self.trace

    def step(self, point: str, obj: str) -> None:
        self.count += 1
        if self.trace:
            log.warning("fault step %d: %s %s", self.count, point, obj)
        if self.count == self.kill_at:
            _die(f"fault step {self.count} ({point} {obj}) reached")


STEPS = Steps(int(os.environ.get("SIDECARLESS_FAULT_AT") or 0), bool(os.environ.get("SIDECARLESS_FAULT_TRACE")))


# The named points around CSI calls: `before-<name>` and `after-<name>`.
NAMED_CSI_POINTS = {
    "CreateVolume": "create-volume",
    "DeleteVolume": "delete-volume",
    "ControllerPublishVolume": "controller-publish",
    "ControllerUnpublishVolume": "controller-unpublish",
    "ControllerExpandVolume": "controller-expand",
    "ControllerModifyVolume": "controller-modify",
    "CreateSnapshot": "create-snapshot",
    "DeleteSnapshot": "delete-snapshot",
    "CreateVolumeGroupSnapshot": "create-group-snapshot",
    "DeleteVolumeGroupSnapshot": "delete-group-snapshot",
}


def around_csi_call(when: str, operation: str, obj: str, fault_key: str | None) -> None:
    """Before or after a CSI call: a step if the call changes the backend, and the named
    point `<when>-<operation>` for `fault_key` (None: the call has no named points)."""
    if STEPS.enabled and operation in CSI_WRITES:
        STEPS.step(f"{when} {operation}", obj)
    if fault_key is not None and operation in NAMED_CSI_POINTS:
        reached(f"{when}-{NAMED_CSI_POINTS[operation]}", fault_key)


def api_write(when: str, verb: str, plural: str, subresource: str, obj: str) -> None:
    if STEPS.enabled and plural not in UNCOUNTED_RESOURCES:
        STEPS.step(f"{when} {verb} {plural}{'/' + subresource if subresource else ''}", obj)


_CHECKED_WRITE_DELAY = float(os.environ.get("SIDECARLESS_FAULT_CHECKED_WRITE_DELAY") or 0)
_delayed: set[tuple[str, str]] = set()


async def before_checked_write(plural: str, obj: str, patch: Any) -> None:
    """Wait before the first patch of `obj` that names a resourceVersion, if the test asked."""
    if not _CHECKED_WRITE_DELAY or plural in UNCOUNTED_RESOURCES or not isinstance(patch, dict):
        return
    if (patch.get("metadata") or {}).get("resourceVersion") and (plural, obj) not in _delayed:
        _delayed.add((plural, obj))
        await asyncio.sleep(_CHECKED_WRITE_DELAY)


def _die(why: str) -> None:
    logging.getLogger("sidecarless.faults").critical("%s: killing the operator", why)
    os.kill(os.getpid(), signal.SIGKILL)
