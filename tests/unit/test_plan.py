"""Provisioning plans: which claims to provision, the CreateVolume request and the PV."""

from typing import Any

import pytest

from csi_client import csi
from sidecarless import capabilities
from sidecarless.endpoints.spec import ProvisionerSettings
from sidecarless.provisioner import plan
from sidecarless.vocabulary import ParameterError

DRIVER = "mock.csi.test"
FACTS = plan.DriverFacts(DRIVER, frozenset({"CREATE_DELETE_VOLUME"}), "123-4567-" + DRIVER)
MODE = csi.VolumeCapability.AccessMode.Mode


def a_claim(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "data",
            "namespace": "team",
            "uid": "0b6a4d5e-aaaa-bbbb-cccc-123456789abc",
            "resourceVersion": "42",
            "annotations": {plan.ANN_STORAGE_PROVISIONER: DRIVER},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "2Gi"}},
            "storageClassName": "fast",
            **spec,
        },
    }


def a_class(**fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": "fast"}, "provisioner": DRIVER, **fields}


@pytest.mark.parametrize(
    ("claim", "storage_class", "expected"),
    [
        (a_claim(), a_class(), plan.Provision()),
        (a_claim(volumeName="pv-1"), a_class(), plan.Skip("claim is already bound or pre-bound to a volume")),
        (a_claim(selector={"matchLabels": {"a": "b"}}), a_class(), plan.Refuse("claim Selector is not supported")),
        (a_claim(), None, plan.Skip("storage class not found")),
        (
            a_claim(),
            a_class(volumeBindingMode="WaitForFirstConsumer"),
            plan.Skip("waiting for a node to be selected (WaitForFirstConsumer)"),
        ),
    ],
)
def test_claim_decision(claim: dict[str, Any], storage_class: dict[str, Any] | None, expected: object) -> None:
    assert plan.claim_decision(claim, storage_class, DRIVER) == expected


def test_claim_for_another_provisioner_is_skipped() -> None:
    claim = a_claim()
    claim["metadata"]["annotations"] = {plan.ANN_STORAGE_PROVISIONER_BETA: "other"}
    assert isinstance(plan.claim_decision(claim, a_class(), DRIVER), plan.Skip)


def test_selected_node_unblocks_wait_for_first_consumer() -> None:
    claim = a_claim()
    claim["metadata"]["annotations"][plan.ANN_SELECTED_NODE] = "node-1"
    assert plan.claim_decision(claim, a_class(volumeBindingMode="WaitForFirstConsumer"), DRIVER) == plan.Provision()


def test_deleting_claim_is_skipped() -> None:
    claim = a_claim()
    claim["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert isinstance(plan.claim_decision(claim, a_class(), DRIVER), plan.Skip)


@pytest.mark.parametrize(
    ("mode", "offered", "expected"),
    [
        ("ReadWriteOnce", frozenset(), MODE.SINGLE_NODE_WRITER),
        ("ReadWriteOnce", frozenset({"SINGLE_NODE_MULTI_WRITER"}), MODE.SINGLE_NODE_MULTI_WRITER),
        ("ReadWriteOncePod", frozenset(), MODE.SINGLE_NODE_WRITER),
        ("ReadWriteOncePod", frozenset({"SINGLE_NODE_MULTI_WRITER"}), MODE.SINGLE_NODE_SINGLE_WRITER),
        ("ReadOnlyMany", frozenset(), MODE.MULTI_NODE_READER_ONLY),
        ("ReadWriteMany", frozenset(), MODE.MULTI_NODE_MULTI_WRITER),
    ],
)
def test_access_modes(mode: str, offered: frozenset[str], expected: int) -> None:
    assert capabilities.access_mode(mode, offered) == expected


def test_unknown_access_and_volume_modes_are_refused() -> None:
    with pytest.raises(ParameterError, match="unsupported access mode"):
        capabilities.access_mode("ReadWriteSometimes", frozenset())
    with pytest.raises(ParameterError, match="unsupported volume mode"):
        plan.volume_capabilities(["ReadWriteOnce"], "Tape", "", [], frozenset())
    with pytest.raises(ParameterError, match="no access modes"):
        plan.volume_capabilities([], "Filesystem", "", [], frozenset())


def test_volume_names() -> None:
    uid = "0b6a4d5e-aaaa-bbbb-cccc-123456789abc"
    assert plan.volume_name(uid, ProvisionerSettings()) == f"pvc-{uid}"
    short = ProvisionerSettings(volume_name_prefix="vol", volume_name_uuid_length=8)
    assert plan.volume_name(uid, short) == "vol-0b6a4d5e"


def test_request_and_pv_for_a_filesystem_claim() -> None:
    storage_class = a_class(
        reclaimPolicy="Delete",
        mountOptions=["noatime"],
        parameters={
            "type": "fast",
            "csi.storage.k8s.io/fstype": "xfs",
            "csi.storage.k8s.io/provisioner-secret-name": "p-${pvc.name}",
            "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}",
            "csi.storage.k8s.io/node-stage-secret-name": "stage",
            "csi.storage.k8s.io/node-stage-secret-namespace": "ops",
        },
    )
    settings = ProvisionerSettings(extra_create_metadata=True)
    planned = plan.plan_provision(a_claim(), storage_class, endpoint_name="ep", driver=FACTS, settings=settings)
    name = "pvc-0b6a4d5e-aaaa-bbbb-cccc-123456789abc"
    request = planned.request
    assert request.name == name
    assert request.capacity_range.required_bytes == 2 << 30
    assert dict(request.parameters) == {
        "type": "fast",
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "team",
        "csi.storage.k8s.io/pv/name": name,
    }
    assert not request.secrets, "secrets are added only at call time"
    (capability,) = request.volume_capabilities
    assert capability.mount.fs_type == "xfs"
    assert list(capability.mount.mount_flags) == ["noatime"]
    assert planned.provisioner_secret is not None
    assert planned.provisioner_secret.as_ref() == {"name": "p-data", "namespace": "team"}

    volume = csi.Volume(volume_id="vol-7", capacity_bytes=3 << 30, volume_context={"k": "v"})
    volume.accessible_topology.add().segments.update({"zone": "a", "rack": "1"})
    pv = plan.pv_from_response(planned, volume, FACTS.identity)
    assert pv["metadata"] == {
        "name": name,
        "annotations": {
            plan.ANN_PROVISIONED_BY: DRIVER,
            plan.ANN_DELETION_SECRET_NAME: "p-data",
            plan.ANN_DELETION_SECRET_NAMESPACE: "team",
        },
        "finalizers": [plan.PV_FINALIZER],
    }
    spec = pv["spec"]
    assert spec["capacity"] == {"storage": "3Gi"}
    assert spec["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "name": "data",
        "namespace": "team",
        "uid": "0b6a4d5e-aaaa-bbbb-cccc-123456789abc",
        "resourceVersion": "42",
    }
    assert spec["csi"] == {
        "driver": DRIVER,
        "fsType": "xfs",
        "volumeHandle": "vol-7",
        "volumeAttributes": {"k": "v", plan.PROVISIONER_IDENTITY_KEY: FACTS.identity},
        "nodeStageSecretRef": {"name": "stage", "namespace": "ops"},
    }
    assert spec["nodeAffinity"] == {
        "required": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "rack", "operator": "In", "values": ["1"]},
                        {"key": "zone", "operator": "In", "values": ["a"]},
                    ]
                }
            ]
        }
    }
    assert spec["mountOptions"] == ["noatime"]
    assert planned.pv_template["spec"].get("capacity") is None, "the template itself is not changed"


def test_block_claims_have_no_fstype_and_retain_has_no_finalizer() -> None:
    planned = plan.plan_provision(
        a_claim(volumeMode="Block"),
        a_class(reclaimPolicy="Retain", parameters={"csi.storage.k8s.io/fstype": "ext4"}),
        endpoint_name="ep",
        driver=FACTS,
        settings=ProvisionerSettings(default_fstype="ext4"),
    )
    assert planned.request.volume_capabilities[0].HasField("block")
    pv = plan.pv_from_response(planned, csi.Volume(volume_id="v", capacity_bytes=0), "id")
    assert "fsType" not in pv["spec"]["csi"]
    assert "finalizers" not in pv["metadata"]
    assert pv["spec"]["capacity"] == {"storage": "2Gi"}, "capacity 0 means the request"


def test_default_fstype_and_readonly_publish() -> None:
    planned = plan.plan_provision(
        a_claim(accessModes=["ReadOnlyMany"]),
        a_class(),
        endpoint_name="ep",
        driver=FACTS,
        settings=ProvisionerSettings(default_fstype="ext4", controller_publish_readonly=True),
    )
    assert planned.request.volume_capabilities[0].mount.fs_type == "ext4"
    assert planned.pv_template["spec"]["csi"]["readOnly"] is True


def test_smaller_volume_than_requested_is_refused() -> None:
    planned = plan.plan_provision(
        a_claim(), a_class(), endpoint_name="ep", driver=FACTS, settings=ProvisionerSettings()
    )
    with pytest.raises(plan.CapacityTooSmall, match="less than requested"):
        plan.pv_from_response(planned, csi.Volume(volume_id="v", capacity_bytes=1 << 30), "id")


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        (a_claim(resources={}), "requests no storage size"),
        (a_claim(resources={"requests": {"storage": "lots"}}), "not a storage quantity"),
    ],
)
def test_bad_claims(claim: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        plan.plan_provision(claim, a_class(), endpoint_name="ep", driver=FACTS, settings=ProvisionerSettings())


def a_volume(
    phase: str, reclaim: str = "Delete", finalizers: tuple[str, ...] = (plan.PV_FINALIZER,), **meta: Any
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "pvc-1",
            "annotations": {plan.ANN_PROVISIONED_BY: DRIVER},
            "finalizers": list(finalizers),
            **meta,
        },
        "spec": {"persistentVolumeReclaimPolicy": reclaim, "csi": {"driver": DRIVER, "volumeHandle": "v"}},
        "status": {"phase": phase},
    }


@pytest.mark.parametrize(
    ("volume", "expected"),
    [
        (a_volume("Released"), plan.DeleteVolume),
        (a_volume("Released", deletionTimestamp="now"), plan.DeleteVolume),
        (a_volume("Released", finalizers=(), deletionTimestamp="now"), plan.Skip),
        (a_volume("Bound"), plan.Skip),
        (a_volume("Bound", finalizers=()), plan.AddFinalizer),
        (a_volume("Released", reclaim="Retain"), plan.RemoveFinalizer),
        (a_volume("Released", reclaim="Retain", finalizers=()), plan.Skip),
    ],
)
def test_volume_decision(volume: dict[str, Any], expected: type) -> None:
    assert isinstance(plan.volume_decision(volume, DRIVER), expected)


def test_volumes_of_other_drivers_or_provisioners_are_not_deleted() -> None:
    other_driver = a_volume("Released")
    other_driver["spec"]["csi"]["driver"] = "other"
    assert isinstance(plan.volume_decision(other_driver, DRIVER), plan.Skip)
    static = a_volume("Released")
    static["metadata"]["annotations"] = {}
    assert isinstance(plan.volume_decision(static, DRIVER), plan.Skip), "static volumes are never deleted"
