"""List-and-watch of the users' objects into the stores: client-go's reflector, in asyncio.

Kopf watched these objects through `on.event` handlers until `make bench` profiled it: a
third of the operator's busy CPU went into Kopf's per-event machinery (memories, body
views, cause detection) for handlers that only update a store and queue a key. An
:class:`Informer` lists once, then watches from the listing's resourceVersion, and hands
each event to one plain function. Kopf keeps what it is good at: the DriverEndpoint, its
daemon, and the operator's lifecycle.

- A watch that ends (the server's timeout) resumes from the last resourceVersion seen,
  kept current by bookmarks.
- 410 Gone (the version was compacted away) lists again; objects that vanished meanwhile
  are handed on as DELETED, so no store keeps a ghost.
- A kind the API server does not serve (the snapshot CRDs are optional) is looked for
  again every `absent_retry` seconds, and says so once in the log.
- Other failures back off from 1 s to 30 s and are logged; the informer never gives up.
- Every `resync` seconds (+-10 %, so the kinds do not all resync at once) every object the
  store holds is handed on again as a RESYNC event, as client-go's resync period does: a
  controller looks again at what it dropped or what changed without an event of its own
  (a Secret, a driver's mind). Resyncs add keys quietly: they never cut a backoff short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from sidecarless.kube import Gone, Kube, NotFound, Resource
from sidecarless.store import Store
from sidecarless.vocabulary import object_key

Body = dict[str, Any]
# (event type: ADDED, MODIFIED, DELETED, RESYNC; or None for an object of the initial listing, as Kopf did)
OnEvent = Callable[[str | None, Body], None]
RESYNC = "RESYNC"  # an object the store already holds, handed on again (nothing changed)
RESYNC_JITTER = 0.1
RESYNC_BATCH = 500  # objects handed on between two yields to the event loop

log = logging.getLogger("sidecarless.informer")

WATCH_SECONDS = 300  # the API server ends each watch after this; the informer resumes it
LIST_PAGE = 500


class Informer:
    """One kind, listed then watched, each event handed to `on_event` after nothing else."""

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        store: Store,
        on_event: OnEvent,
        *,
        absent_retry: float = 30.0,
        resync: float = 0.0,
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.store = store
        self.on_event = on_event
        self.absent_retry = absent_retry
        self.resync = resync  # seconds; 0: never
        self.synced = asyncio.Event()  # set after the first listing (or on learning the kind is not served)
        # Where the watch resumes: the last resourceVersion seen (None: list first). A stopped
        # informer started again resumes from here, or lists again if it has expired.
        self.version: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer-{self.resource.plural}")
        if self.resync > 0:
            self._resync_task = asyncio.create_task(self._resync_periodically(), name=f"resync-{self.resource.plural}")

    async def stop(self) -> None:
        for task in (self._task, self._resync_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._resync_task = None

    async def _resync_periodically(self) -> None:
        await self.synced.wait()
        while True:
            await asyncio.sleep(self.resync * random.uniform(1 - RESYNC_JITTER, 1 + RESYNC_JITTER))
            await self.resync_once()

    async def resync_once(self) -> None:
        """Hand every object the store holds on again (RESYNC)."""
        for count, body in enumerate(self.store.values(), 1):
            self._deliver(RESYNC, body)
            if count % RESYNC_BATCH == 0:
                await asyncio.sleep(0)  # a large store must not hold the loop for long

    async def _run(self) -> None:
        failures = 0
        absent_logged = False
        while True:
            try:
                if self.version is None:
                    self.version = await self._list()
                    absent_logged = False
                await self._watch()
                failures = 0
            except Gone:
                log.info("watch of %s expired (410 Gone): listing again", self.resource.plural)
                self.version = None
            except NotFound:
                # Not served (yet): its CRD may be installed later.
                if not absent_logged:
                    log.info(
                        "%s are not served by the API server; looking again every %.0f s",
                        self.resource.plural,
                        self.absent_retry,
                    )
                    absent_logged = True
                self._vanish(set())  # nothing of a kind that is not served
                self.synced.set()
                self.version = None
                await asyncio.sleep(self.absent_retry)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a watch must outlive any failure
                failures += 1
                delay = min(30.0, 2.0 ** (failures - 1)) * random.uniform(0.9, 1.1)
                log.warning("watch of %s failed (%s); again in %.1f s", self.resource.plural, error, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        """List every object (in pages), hand each on, and drop those no longer there."""
        seen: set[str] = set()
        version = ""
        token = ""
        while True:
            query = [("limit", str(LIST_PAGE))] + ([("continue", token)] if token else [])
            listed = await self.kube.request("GET", self.resource.path(), query=query)
            for item in listed.get("items") or []:
                item.setdefault("apiVersion", self.resource.api_version)
                item.setdefault("kind", self.resource.kind)
                seen.add(object_key(item))
                self._deliver(None, item)
            meta = listed.get("metadata") or {}
            version = meta.get("resourceVersion") or version
            token = meta.get("continue") or ""
            if not token:
                break
        self._vanish(seen)
        self.synced.set()
        return version

    def _vanish(self, present: set[str]) -> None:
        """Objects the store holds but a fresh listing lacks were deleted while unwatched."""
        for body in self.store.values():
            if object_key(body) not in present:
                self._deliver("DELETED", body)

    async def _watch(self) -> None:
        """Follow changes from `self.version` until the server ends the watch."""
        async for kind, body in self.kube.watch(self.resource, self.version or "", timeout=WATCH_SECONDS):
            self.version = (body.get("metadata") or {}).get("resourceVersion") or self.version
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._deliver(kind, body)

    def _deliver(self, kind: str | None, body: Body) -> None:
        try:
            self.on_event(kind, body)
        except Exception:
            # A bug in one handler must not end the watch (the next event may be handled).
            log.exception("handling %s %s %s failed", kind or "LISTED", self.resource.kind, object_key(body))


async def wait_synced(informers: Iterable[Informer], timeout: float) -> list[str]:
    """Wait until every informer has listed once; return the kinds still not synced at `timeout`."""
    pending = [i for i in informers if not i.synced.is_set()]
    if pending:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in pending)), timeout)
    return [i.resource.plural for i in pending if not i.synced.is_set()]
