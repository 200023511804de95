"""Secrets reach the driver and nothing else: not the operator's log (at DEBUG), not an
Event, not a status, not an object, not a metric."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable

import pytest

from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import (
    DRIVER_ENDPOINT,
    EVENT,
    PV,
    PVC,
    SECRET,
    VOLUME_ATTACHMENT,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    VOLUME_SNAPSHOT_CONTENT,
    Kube,
)
from tests.e2e.conftest import MOCK, claim, eventually, volume_attachment, volume_snapshot_class, wait_ready
from tests.e2e.test_provisioner import bound_claim
from tests.e2e.test_snapshots import gone, ready_snapshot, volume_snapshot

pytestmark = pytest.mark.cluster


async def test_secret_values_appear_nowhere_but_at_the_driver(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
) -> None:
    operator = exclusive(SIDECARLESS_LOG_LEVEL="DEBUG")
    values = {key: f"s3cr3t-{key}-{uuid.uuid4().hex}" for key in ("password", "token")}
    await kube.create(
        SECRET,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        },
        namespace,
    )
    endpoint = await make_endpoint()
    await wait_ready(kube, endpoint)
    # One Secret for every kind (provisioner, publish, stage, expand, modify...), through
    # the fallback keys, and the snapshotter's.
    secret_parameters = {
        "csi.storage.k8s.io/secret-name": "creds",
        "csi.storage.k8s.io/secret-namespace": "${pvc.namespace}",
    }
    class_name = await make_class(
        endpoint, reclaimPolicy="Delete", allowVolumeExpansion=True, parameters=secret_parameters
    )
    snapshot_class = unique_name("vsc")
    await kube.create(
        VOLUME_SNAPSHOT_CLASS,
        volume_snapshot_class(
            snapshot_class,
            endpoint=endpoint,
            parameters={
                "csi.storage.k8s.io/snapshotter-secret-name": "creds",
                "csi.storage.k8s.io/snapshotter-secret-namespace": namespace,
            },
        ),
    )
    try:
        await kube.create(PVC, claim("data", class_name), namespace)
        volume_name = (await bound_claim(kube, namespace, "data"))["spec"]["volumeName"]
        attachment = unique_name("va")
        await kube.create(VOLUME_ATTACHMENT, volume_attachment(attachment, MOCK, volume_name))

        async def attached() -> bool:
            current = await kube.get(VOLUME_ATTACHMENT, attachment)
            return bool((current.get("status") or {}).get("attached"))

        await eventually(attached, what="attached")
        await kube.patch(PVC, "data", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}, namespace)

        async def expanded() -> bool:
            current = await kube.get(PV, volume_name)
            return bool(current["spec"]["capacity"]["storage"] == "2Gi")

        await eventually(expanded, what="expanded")
        await kube.create(
            VOLUME_SNAPSHOT, volume_snapshot("snap", claim_name="data", class_name=snapshot_class), namespace
        )
        await ready_snapshot(kube, namespace, "snap")

        # Everything the user, a dashboard or a log collector can see, before deletion.
        seen = [
            operator.metrics(),
            json.dumps(await kube.get(DRIVER_ENDPOINT, endpoint)),
            json.dumps(await kube.list(PVC, namespace)),
            json.dumps(await kube.list(PV)),
            json.dumps(await kube.list(VOLUME_ATTACHMENT)),
            json.dumps(await kube.list(VOLUME_SNAPSHOT, namespace)),
            json.dumps(await kube.list(VOLUME_SNAPSHOT_CONTENT)),
        ]
        await kube.delete(VOLUME_SNAPSHOT, "snap", namespace)
        await gone(kube, VOLUME_SNAPSHOT, "snap", namespace)
        await kube.delete(VOLUME_ATTACHMENT, attachment)
        await gone(kube, VOLUME_ATTACHMENT, attachment)
        await kube.delete(PVC, "data", namespace)
        await gone(kube, PV, volume_name)
    finally:
        await kube.delete(VOLUME_SNAPSHOT_CLASS, snapshot_class)

    # The driver did get them, in every call that takes secrets (its log shows the field;
    # csi-test strips the values as Sidecarless does).
    methods = ("CreateVolume", "ControllerPublishVolume", "ControllerExpandVolume", "CreateSnapshot", "DeleteVolume")
    for method in methods:
        requests = [c["Request"] for c in cluster.driver_calls(MOCK, method)]
        assert any(r.get("secrets") for r in requests), f"{method} was sent the secrets"

    seen += [
        operator.log_text(),
        json.dumps(await kube.list(EVENT, namespace)),
        json.dumps(await kube.list(EVENT, "default")),
    ]
    assert "DEBUG" in seen[-3], "the log was written at DEBUG"
    for value in values.values():
        for text in seen:
            assert value not in text
            assert base64.b64encode(value.encode()).decode() not in text
