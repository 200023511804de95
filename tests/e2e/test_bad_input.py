"""Malformed and hostile input, one row each: the user sees a clear Event, status or
condition, the operator does not crash, and the driver is left holding nothing.

Rows are grouped by what the user got wrong: the StorageClass (parameters, secret
templates, routing), the claim (selector, data sources, attributes class, size, names at
their limits, huge or unusual values), snapshots, DriverEndpoints and VolumeAttachments.
Other suites test more bad input where it belongs to a feature (docs/reliability.md lists
them); this table is the one place that shows them side by side.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.operator import OperatorProcess
from sidecarless.kube import (
    DRIVER_ENDPOINT,
    PV,
    PVC,
    VOLUME_ATTACHMENT,
    VOLUME_SNAPSHOT,
    VOLUME_SNAPSHOT_CLASS,
    Kube,
    KubeError,
)
from tests.e2e.conftest import (
    MOCK,
    attach_error,
    claim,
    condition,
    eventually,
    volume_attachment,
    volume_snapshot_class,
    wait_ready,
)
from tests.e2e.test_provisioner import backend_volume_ids, bound_claim, event_reasons
from tests.e2e.test_snapshots import snapshot_where, volume_snapshot

pytestmark = pytest.mark.cluster

SECRET_NAME = "csi.storage.k8s.io/provisioner-secret-name"
SECRET_NAMESPACE = "csi.storage.k8s.io/provisioner-secret-namespace"
BOUND = "<Bound>"  # the row expects the claim to be provisioned: odd, but valid input


@dataclass(frozen=True)
class ClaimCase:
    """A claim (and its class) that must end with a ProvisioningFailed event containing
    `expect` (`{namespace}` is filled in), or Bound when `expect` is BOUND."""

    id: str
    expect: str
    parameters: dict[str, str] = field(default_factory=dict)
    class_fields: dict[str, Any] = field(default_factory=dict)
    claim_spec: dict[str, Any] = field(default_factory=dict)
    claim_name: str = "bad"
    claim_annotations: dict[str, str] = field(default_factory=dict)
    endpoint: str | None = None  # the class's routing annotation; None: a Ready endpoint of the mock
    size: str = "1Gi"


LONG_NAME = "x" * 253  # the longest a claim's name may be
CLAIM_CASES = [
    ClaimCase(
        "unknown-reserved-parameter",
        'unknown parameter key "csi.storage.k8s.io/bogus"',
        parameters={"csi.storage.k8s.io/bogus": "x"},
    ),
    ClaimCase("secret-name-without-namespace", "is set but", parameters={SECRET_NAME: "creds"}),
    ClaimCase(
        "secret-template-unknown-token",
        "unknown or unsupported token ${pvc.nonsense}",
        parameters={SECRET_NAME: "${pvc.nonsense}", SECRET_NAMESPACE: "${pvc.namespace}"},
    ),
    ClaimCase(
        "secret-name-not-a-name",
        "is not a valid object name",
        parameters={SECRET_NAME: "Not_A_Name", SECRET_NAMESPACE: "default"},
    ),
    ClaimCase(
        "secret-namespace-traversal",
        "is not a valid namespace name",
        parameters={SECRET_NAME: "creds", SECRET_NAMESPACE: "../kube-system"},
    ),
    ClaimCase(
        "secret-missing",
        "failed to get secret {namespace}/creds-bad",
        parameters={SECRET_NAME: "creds-${pvc.name}", SECRET_NAMESPACE: "${pvc.namespace}"},
    ),
    ClaimCase("endpoint-missing", "which does not exist", endpoint="no-such-endpoint"),
    ClaimCase("endpoint-name-traversal", "not a valid DriverEndpoint name", endpoint="../../api/v1/secrets"),
    ClaimCase("endpoint-name-huge", "not a valid DriverEndpoint name", endpoint="e" * 5000),
    ClaimCase("class-for-another-driver", "serves driver", class_fields={"provisioner": "other.csi.example"}),
    ClaimCase(
        "claim-selector", "claim Selector is not supported", claim_spec={"selector": {"matchLabels": {"tier": "gold"}}}
    ),
    ClaimCase(
        "clone-source-missing",
        "source PVC {namespace}/nothing not found",
        claim_spec={"dataSource": {"kind": "PersistentVolumeClaim", "name": "nothing"}},
    ),
    ClaimCase(
        "snapshot-source-missing",
        "error getting snapshot nothing from api server: not found",
        claim_spec={"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "nothing"}},
    ),
    ClaimCase(
        "data-source-unknown-kind",
        "is not supported",
        claim_spec={"dataSourceRef": {"apiGroup": "example.com", "kind": "Widget", "name": "w"}},
    ),
    ClaimCase(
        "attributes-class-missing",
        'volumeattributesclass.storage.k8s.io "no-such-vac" not found',
        claim_spec={"volumeAttributesClassName": "no-such-vac"},
    ),
    ClaimCase("size-beyond-the-driver", "code = OutOfRange", size="4Ei"),
    ClaimCase("name-at-the-length-limit", BOUND, claim_name=LONG_NAME),
    ClaimCase("parameter-of-100-KiB", BOUND, parameters={"label": "v" * 100 * 1024}),
    ClaimCase("parameters-512-keys", BOUND, parameters={f"key{i}": str(i) for i in range(512)}),  # the API's most
    ClaimCase("parameter-control-and-bidi-characters", BOUND, parameters={"label": "a\u0000b\u202ec\ufeff\U0001f4be"}),
    ClaimCase("claim-annotation-of-200-KiB", BOUND, claim_annotations={"example.com/blob": "b" * 200 * 1024}),
    ClaimCase("mount-options-odd", BOUND, class_fields={"mountOptions": ["", "a=b,c", "x" * 1000]}),
    ClaimCase("one-byte", BOUND, size="1"),
]


async def event_saying(kube: Kube, namespace: str, name: str, text: str) -> str:
    """An event on `name` whose message contains `text` (ours, or kube-controller-manager's)."""

    async def find() -> str | None:
        messages = [m for ms in (await event_reasons(kube, namespace, name)).values() for m in ms]
        return next((m for m in messages if text in m), None)

    try:
        message: str = await eventually(find, what=f"an event saying {text!r}", timeout=30)
    except AssertionError as error:
        raise AssertionError(f"{error}; events on {name}: {await event_reasons(kube, namespace, name)}") from None
    return message


@pytest.fixture
async def baseline(cluster: LocalCluster) -> set[str]:
    """The mock's volumes before a row; afterwards it must hold no more than its PVs name."""
    return await backend_volume_ids(cluster.driver_addresses[MOCK])


async def nothing_leaked(kube: Kube, cluster: LocalCluster, before: set[str]) -> None:
    async def clean() -> bool:
        held = await backend_volume_ids(cluster.driver_addresses[MOCK]) - before
        handles = {
            v["spec"]["csi"]["volumeHandle"]
            for v in await kube.list(PV)
            if (v["spec"].get("csi") or {}).get("driver") == MOCK
        }
        return not (held - handles)

    await eventually(clean, what="no volume without a PV on the driver", timeout=30)


def still_running(operator: OperatorProcess) -> None:
    assert operator.process is not None
    assert operator.process.popen is not None
    assert operator.process.popen.poll() is None, "the operator died"
    assert operator.healthy(), "the operator is not healthy"


@pytest.mark.parametrize("case", CLAIM_CASES, ids=lambda c: c.id)
async def test_bad_claim_or_class(
    case: ClaimCase,
    kube: Kube,
    namespace: str,
    cluster: LocalCluster,
    operator: OperatorProcess,
    make_endpoint: Callable[..., Awaitable[str]],
    make_class: Callable[..., Awaitable[str]],
    baseline: set[str],
) -> None:
    endpoint = case.endpoint
    if endpoint is None:
        endpoint = await make_endpoint()
        await wait_ready(kube, endpoint)
    fields = {"reclaimPolicy": "Delete", **case.class_fields}
    provisioner = fields.pop("provisioner", MOCK)
    class_name = await make_class(endpoint, provisioner=provisioner, parameters=case.parameters, **fields)
    body = claim(case.claim_name, class_name, case.size, **case.claim_spec)
    body["metadata"]["annotations"] = case.claim_annotations
    await kube.create(PVC, body, namespace)
    if case.expect == BOUND:
        await bound_claim(kube, namespace, case.claim_name)
    else:
        await event_saying(kube, namespace, case.claim_name, case.expect.replace("{namespace}", namespace))
        assert (await kube.get(PVC, case.claim_name, namespace)).get("status", {}).get("phase") == "Pending"
    await kube.delete(PVC, case.claim_name, namespace)
    still_running(operator)
    await nothing_leaked(kube, cluster, baseline)


# --- snapshots --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "parameters", "expect"),
    [
        ("snapshot-class-unknown-reserved-parameter", {"csi.storage.k8s.io/bogus": "x"}, "bogus"),
        (
            "snapshot-class-secret-template-unknown-token",
            {
                "csi.storage.k8s.io/snapshotter-secret-name": "${volumesnapshot.nonsense}",
                "csi.storage.k8s.io/snapshotter-secret-namespace": "default",
            },
            "${volumesnapshot.nonsense}",
        ),
        (
            "snapshot-class-secret-missing",
            {
                "csi.storage.k8s.io/snapshotter-secret-name": "no-such-secret",
                "csi.storage.k8s.io/snapshotter-secret-namespace": "default",
            },
            "cannot get credentials for snapshot content",  # csi-snapshotter's words; the log names the Secret
        ),
    ],
)
async def test_bad_snapshot_class(
    case: str,
    parameters: dict[str, str],
    expect: str,
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
    unique_name: Callable[[str], str],
) -> None:
    _, class_name = await routed_class()
    await kube.create(PVC, claim("data", class_name), namespace)
    await bound_claim(kube, namespace, "data")
    snapshot_class = unique_name("vsc")
    await kube.create(
        VOLUME_SNAPSHOT_CLASS,
        volume_snapshot_class(snapshot_class, parameters=parameters),
    )
    try:
        body = volume_snapshot("bad", claim_name="data", class_name=snapshot_class)
        await kube.create(VOLUME_SNAPSHOT, body, namespace)
        failed = await snapshot_where(
            kube, namespace, "bad", lambda s: bool((s.get("status") or {}).get("error")), f"{case}: an error"
        )
        assert expect in failed["status"]["error"]["message"]
        assert failed["status"]["readyToUse"] is False
        await kube.delete(VOLUME_SNAPSHOT, "bad", namespace)
    finally:
        await kube.delete(VOLUME_SNAPSHOT_CLASS, snapshot_class)
    still_running(operator)


async def test_snapshot_of_a_claim_not_bound(
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    make_class: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
) -> None:
    class_name = await make_class("no-such-endpoint")  # never provisioned: stays Pending
    await kube.create(PVC, claim("pending", class_name), namespace)
    snapshot_class = unique_name("vsc")
    await kube.create(
        VOLUME_SNAPSHOT_CLASS,
        volume_snapshot_class(snapshot_class),
    )
    try:
        await kube.create(
            VOLUME_SNAPSHOT, volume_snapshot("early", claim_name="pending", class_name=snapshot_class), namespace
        )
        failed = await snapshot_where(
            kube, namespace, "early", lambda s: bool((s.get("status") or {}).get("error")), "an error on the snapshot"
        )
        assert "the PVC pending is not yet bound to a PV" in failed["status"]["error"]["message"]
        await kube.delete(VOLUME_SNAPSHOT, "early", namespace)
    finally:
        await kube.delete(VOLUME_SNAPSHOT_CLASS, snapshot_class)
    still_running(operator)


# --- DriverEndpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "spec", "refusal"),
    [
        ("driver-name-not-a-csi-name", {"driverName": "not a name!", "address": "unix:///x.sock"}, "driverName"),
        ("address-of-another-scheme", {"driverName": MOCK, "address": "http://169.254.169.254/"}, "address must be"),
        ("address-too-long", {"driverName": MOCK, "address": "unix:///" + "a" * 600}, "address"),
        (
            "probe-interval-not-a-duration",
            {"driverName": MOCK, "address": "unix:///x.sock", "timeouts": {"probeInterval": "soon"}},
            "probeInterval",
        ),
    ],
)
async def test_endpoint_refused_at_admission(
    case: str, spec: dict[str, Any], refusal: str, kube: Kube, unique_name: Callable[[str], str]
) -> None:
    body = {
        "apiVersion": "sidecarless.io/v1alpha1",
        "kind": "DriverEndpoint",
        "metadata": {"name": unique_name("ep")},
        "spec": spec,
    }
    with pytest.raises(KubeError) as refused:
        await kube.create(DRIVER_ENDPOINT, body)
    assert refused.value.status == 422
    assert refusal in refused.value.message


async def test_endpoint_whose_tls_secret_is_missing(
    kube: Kube, operator: OperatorProcess, make_endpoint: Callable[..., Awaitable[str]]
) -> None:
    name = await make_endpoint(tls={"secretName": "no-such-tls", "secretNamespace": "default"})
    endpoint = await wait_ready(kube, name, status="False", reason="InvalidSpec")
    assert "TLS secret default/no-such-tls not found" in condition(endpoint, "Ready")["message"]
    still_running(operator)


async def test_endpoint_whose_socket_is_missing(
    kube: Kube, operator: OperatorProcess, make_endpoint: Callable[..., Awaitable[str]]
) -> None:
    name = await make_endpoint(address="unix:///tmp/slc-no-such-driver.sock")
    endpoint = await wait_ready(kube, name, status="False", reason="Unreachable")
    assert condition(endpoint, "Connected")["status"] == "False"
    still_running(operator)


# --- VolumeAttachments ---------------------------------------------------------------------------


async def attach_error_of(kube: Kube, operator: OperatorProcess, attachment: dict[str, Any]) -> str:
    """Create the VolumeAttachment, return the attachError message it gets, delete it."""
    name = attachment["metadata"]["name"]
    await kube.create(VOLUME_ATTACHMENT, attachment)
    try:
        message: str = (await attach_error(kube, name))["message"]
    finally:
        await kube.delete(VOLUME_ATTACHMENT, name)
    still_running(operator)
    return message


async def test_attachment_of_a_volume_that_does_not_exist(
    kube: Kube,
    operator: OperatorProcess,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
    unique_name: Callable[[str], str],
) -> None:
    await routed_class()
    # A PV that does not exist has no endpoint to route through: the attacher of the one
    # endpoint serving the driver reports it.
    attachment = volume_attachment(unique_name("va"), MOCK, "pvc-does-not-exist")
    assert "pvc-does-not-exist not found" in await attach_error_of(kube, operator, attachment)


async def test_attachment_to_a_node_without_the_driver(
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
    unique_name: Callable[[str], str],
) -> None:
    _, class_name = await routed_class()
    await kube.create(PVC, claim("data", class_name), namespace)
    volume_name = (await bound_claim(kube, namespace, "data"))["spec"]["volumeName"]
    attachment = volume_attachment(unique_name("va"), MOCK, volume_name, node="no-such-node")
    assert "no-such-node" in await attach_error_of(kube, operator, attachment)


async def test_attachment_with_an_inline_volume(
    kube: Kube,
    operator: OperatorProcess,
    routed_class: Callable[..., Awaitable[tuple[str, str]]],
    unique_name: Callable[[str], str],
) -> None:
    await routed_class()
    body = volume_attachment(unique_name("va"), MOCK, "")
    body["spec"]["source"] = {
        "inlineVolumeSpec": {
            "csi": {"driver": MOCK, "volumeHandle": "h"},
            "accessModes": ["ReadWriteOnce"],
        }
    }
    assert "inline volumes" in await attach_error_of(kube, operator, body)


async def test_shrinking_a_claim_is_refused_at_admission(
    kube: Kube, namespace: str, routed_class: Callable[..., Awaitable[tuple[str, str]]]
) -> None:
    _, class_name = await routed_class(allowVolumeExpansion=True)
    await kube.create(PVC, claim("data", class_name, "2Gi"), namespace)
    await bound_claim(kube, namespace, "data")
    with pytest.raises(KubeError) as refused:
        await kube.patch(PVC, "data", {"spec": {"resources": {"requests": {"storage": "1Gi"}}}}, namespace)
    assert refused.value.status == 422
    assert "less than previous value" in refused.value.message or "Forbidden" in refused.value.message
