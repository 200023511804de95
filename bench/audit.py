"""Counting each client's API requests and open watches from kube-apiserver's audit log.

The local cluster writes one JSON line per request (stage ResponseComplete) and two per
watch (ResponseStarted when it opens, ResponseComplete when it ends); see AUDIT_POLICY in
devcluster.cluster. Each side of a benchmark authenticates as its own user, so the user
name says whose request it was.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Requests:
    """One user's requests over a stretch of the log."""

    total: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)  # "verb resource", e.g. "create persistentvolumes"

    def as_dict(self) -> dict[str, object]:
        return {"total": self.total, "by_kind": dict(self.by_kind.most_common())}


class AuditLog:
    """Reads the log forward; each :meth:`advance` counts what was written since the last one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.open_watches: dict[str, set[str]] = {}  # user -> audit IDs of watches still open

    def skip_to_end(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def advance(self) -> dict[str, Requests]:
        counts: dict[str, Requests] = {}
        for event in self._new_events():
            user = event.get("user", {}).get("username", "")
            verb, stage = event.get("verb", ""), event.get("stage", "")
            resource = (event.get("objectRef") or {}).get("resource", event.get("requestURI", "").split("?")[0])
            watches = self.open_watches.setdefault(user, set())
            if verb == "watch" and stage == "ResponseStarted":
                watches.add(event["auditID"])
            elif verb == "watch" and event["auditID"] in watches:
                watches.discard(event["auditID"])  # it ended: counted when it opened
                continue
            elif stage not in ("ResponseComplete", "Panic"):
                continue
            tally = counts.setdefault(user, Requests())
            tally.total += 1
            tally.by_kind[f"{verb} {resource}"] += 1
        return counts

    def watches_held(self, user: str) -> int:
        return len(self.open_watches.get(user, ()))

    def _new_events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written stays for the next call
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]
