"""Crash points for fault-injection tests: `SIDECARLESS_FAULT_POINTS=after-create-volume@team-a/,...`.

When the operator reaches a listed point for an object whose key contains the text after
`@` (or for any object, without `@`), it SIGKILLs itself there, as a node failure or an OOM
kill would. Unset (always, outside tests), a point costs one dict lookup.
"""

from __future__ import annotations

import logging
import os
import signal


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
        logging.getLogger("sidecarless.faults").critical(
            "fault point %s reached for %s: killing the operator", point, obj
        )
        os.kill(os.getpid(), signal.SIGKILL)
