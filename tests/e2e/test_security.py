"""The operator as the chart runs it: read-only filesystems, user 65532, no capabilities
(devcluster/sandbox.py; there is no container engine here). Through a whole volume life it
writes no file and needs no privilege, and secrets reach the driver and nothing else: not
the operator's log (at DEBUG), not an Event, not a status, not an object, not a metric."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from devcluster.sandbox import USER, is_runtime_mount
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


def assert_confined(pid: int) -> None:
    """The process really runs as the chart's securityContext says, so the test can fail."""
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    assert status["CapEff"].strip() == status["CapBnd"].strip() == "0000000000000000", "no capabilities"
    assert status["NoNewPrivs"].strip() == "1", "allowPrivilegeEscalation: false"
    assert Path(f"/proc/{pid}/uid_map").read_text().split()[0] == str(USER), "runs as user 65532"
    writable = [
        line.split()[4]
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if "ro" not in line.split()[5].split(",") and not is_runtime_mount(line.split()[4])
    ]
    assert writable == [], "every filesystem is read-only"


async def test_confined_operator_writes_no_file_and_shows_no_secret(
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    exclusive: Callable[..., OperatorProcess],
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
) -> None:
    operator = exclusive(sandboxed=True, SIDECARLESS_LOG_LEVEL="DEBUG")
    assert operator.process is not None
    assert_confined(operator.process.pid)
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
    for refusal in ("Read-only file system", "Permission denied", "Operation not permitted", "Traceback"):
        assert refusal not in seen[-3]
    for value in values.values():
        for text in seen:
            assert value not in text
            assert base64.b64encode(value.encode()).decode() not in text
