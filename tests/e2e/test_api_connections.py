"""How many TCP connections the operator holds to the API server while it works.

client-go multiplexes every watch and request of a process over one HTTP/2 connection; the
operator's transport does too (kube.py). Over HTTP/1.1 each of its 14 watches held a
connection of its own and a burst of requests opened more (39 in `make bench`), so a
regression to HTTP/1.1 or to a client per controller shows here as a count, not a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from urllib.parse import urlparse

import pytest

from bench.proc import connections_to
from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import KOPF_CONNECTIONS, PVC, Kube
from tests.e2e.conftest import claim
from tests.e2e.test_provisioner import bound_claim

pytestmark = pytest.mark.cluster

# Ours (every informer, controller, event and Lease request: kube.Transport) and Kopf's two
# (kube.KOPF_CONNECTIONS: its DriverEndpoint watch and its handlers' patches, on HTTP/1.1).
MOST_CONNECTIONS = 1 + KOPF_CONNECTIONS
CLAIMS = 30  # concurrent work: each claim is several requests in flight at once


async def test_watches_and_a_burst_of_requests_share_few_connections(
    kube: Kube,
    cluster: LocalCluster,
    operator: OperatorProcess,
    namespace: str,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
) -> None:
    assert operator.process is not None
    pid, port = operator.process.pid, int(urlparse(cluster.server).port or 443)
    _, class_name = await routed_class()
    seen: list[int] = []

    async def sample() -> None:
        while True:
            seen.append(connections_to(pid, port))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(*(kube.create(PVC, claim(f"c{i}", class_name), namespace) for i in range(CLAIMS)))
        await asyncio.gather(*(bound_claim(kube, namespace, f"c{i}", timeout=60) for i in range(CLAIMS)))
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    assert seen, "the sampler ran"
    assert min(seen) >= 1, "the sampler saw the operator's connections"
    assert max(seen) <= MOST_CONNECTIONS, f"connections to the API server over {len(seen)} samples: {sorted(set(seen))}"
    assert kube.transport.http_version == "HTTP/2", "the transport negotiated HTTP/2 with the API server"
