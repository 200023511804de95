"""Embedded mode: an operator that serves only its own driver's DriverEndpoint
(SIDECARLESS_ENDPOINTS) leaves the others alone: no finalizer, no status, no provisioning."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import DRIVER_ENDPOINT, PVC, Kube
from tests.e2e.conftest import MOCK, MOCK_NOATTACH, claim, wait_ready
from tests.e2e.test_provisioner import bound_claim

pytestmark = pytest.mark.cluster


async def test_an_embedded_operator_serves_only_its_endpoint(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
) -> None:
    ours = await make_endpoint(MOCK)
    theirs = await make_endpoint(MOCK_NOATTACH)
    exclusive(SIDECARLESS_ENDPOINTS=ours, SIDECARLESS_LEASE_NAME=f"sidecarless-{ours}")
    await wait_ready(kube, ours)
    await kube.create(PVC, claim("mine", await make_class(ours)), namespace)
    await kube.create(PVC, claim("other", await make_class(theirs, provisioner=MOCK_NOATTACH)), namespace)
    await bound_claim(kube, namespace, "mine")
    await asyncio.sleep(3)
    other = await kube.get(DRIVER_ENDPOINT, theirs)
    assert not other.get("status"), "another operator's endpoint: no status written"
    assert not other["metadata"].get("finalizers"), "nor a finalizer"
    assert (await kube.get(PVC, "other", namespace))["status"].get("phase") == "Pending"
