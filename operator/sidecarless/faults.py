"""Crash points for fault-injection tests: `SIDECARLESS_FAULT_POINTS=after-create-volume,...`.

When the operator reaches a named point that is listed, it SIGKILLs itself there, as a
node failure or an OOM kill would. Unset (always, outside tests), a point costs one set
lookup.
"""

from __future__ import annotations

import logging
import os
import signal

_POINTS = frozenset(p.strip() for p in os.environ.get("SIDECARLESS_FAULT_POINTS", "").split(",") if p.strip())


def reached(point: str) -> None:
    if point in _POINTS:
        logging.getLogger("sidecarless.faults").critical("fault point %s reached: killing the operator", point)
        os.kill(os.getpid(), signal.SIGKILL)
