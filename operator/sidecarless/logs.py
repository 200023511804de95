"""Logging: one event per line, as text for people or JSON for machines.

Structured fields passed with `extra=` (the object, the endpoint, the CSI call and its
duration) become JSON keys, or `key=value` pairs in text.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items() if not isinstance(v, dict | list))
        return f"{text} {extras}" if extras else text


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Kopf's per-object loggers are chatty at INFO about things the operator logs itself.
    logging.getLogger("kopf").setLevel(max(logging.WARNING, root.level))
    # One line per kubelet probe of /healthz (Kopf's liveness server), every 10 s for ever.
    logging.getLogger("aiohttp.access").setLevel(max(logging.WARNING, root.level))
    # Every HTTP/2 frame and header (h2, hpack) at DEBUG: the operator's own debug lines drown.
    for chatty in ("h2", "hpack"):
        logging.getLogger(chatty).setLevel(max(logging.INFO, root.level))
