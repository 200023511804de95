"""StorageClass parameters, secret templates and quantities, as external-provisioner reads them."""

import pytest

from sidecarless.provisioner.parameters import SecretTemplate, TemplateContext, parse_class_parameters, resolve_secret
from sidecarless.vocabulary import ParameterError, SecretRef, format_quantity, parse_quantity

P = "csi.storage.k8s.io/"


def test_reserved_keys_are_split_from_driver_parameters() -> None:
    parsed = parse_class_parameters(
        {
            P + "fstype": "xfs",
            P + "provisioner-secret-name": "s",
            P + "provisioner-secret-namespace": "ns",
            "type": "fast",
            "csiProvisionerSecretName": "old",
            "csiProvisionerSecretNamespace": "oldns",
        }
    )
    assert parsed.fstype == "xfs"
    assert parsed.secrets["provisioner"] == SecretTemplate("s", "ns")
    # deprecated keys are honoured only as a fallback and still reach the driver
    assert parsed.driver_parameters == {
        "type": "fast",
        "csiProvisionerSecretName": "old",
        "csiProvisionerSecretNamespace": "oldns",
    }


def test_legacy_fstype_passes_through() -> None:
    parsed = parse_class_parameters({"fstype": "ext3"})
    assert parsed.fstype == "ext3"
    assert parsed.driver_parameters == {"fstype": "ext3"}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({P + "bogus": "x"}, 'unknown parameter key "csi.storage.k8s.io/bogus"'),
        ({P + "fstype": "xfs", "fstype": "ext4"}, "both"),
        ({P + "provisioner-secret-name": "s"}, "needs both a name and a namespace"),
        ({P + "node-stage-secret-namespace": "ns"}, "needs both a name and a namespace"),
    ],
)
def test_bad_parameters(parameters: dict[str, str], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_class_parameters(parameters)


@pytest.mark.parametrize(
    ("kind", "parameters", "expected"),
    [
        (
            "controller-publish",
            {"csiControllerPublishSecretName": "a", "csiControllerPublishSecretNamespace": "b"},
            ("a", "b"),
        ),
        ("node-expand", {P + "secret-name": "all", P + "secret-namespace": "x"}, ("all", "x")),
        (
            "controller-modify",
            {P + "controller-modify-secret-name": "m", P + "controller-modify-secret-namespace": "n"},
            ("m", "n"),
        ),
    ],
)
def test_secret_template_sources(kind: str, parameters: dict[str, str], expected: tuple[str, str]) -> None:
    assert parse_class_parameters(parameters).secrets[kind] == SecretTemplate(*expected)


CONTEXT = TemplateContext(pv_name="pvc-1", pvc_name="data", pvc_namespace="team", pvc_annotations={"owner": "alice"})


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (SecretTemplate("static", "kube-system"), SecretRef("static", "kube-system")),
        (SecretTemplate("${pvc.name}-creds", "${pvc.namespace}"), SecretRef("data-creds", "team")),
        (SecretTemplate("${pv.name}", "${pvc.namespace}"), SecretRef("pvc-1", "team")),
        (SecretTemplate("${pvc.annotations['owner']}", "ns"), SecretRef("alice", "ns")),
    ],
)
def test_templates_expand(template: SecretTemplate, expected: SecretRef) -> None:
    assert resolve_secret("provisioner", template, CONTEXT) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (SecretTemplate("${pvc.nonsense}", "ns"), r"unknown or unsupported token \$\{pvc.nonsense\}"),
        (SecretTemplate("x", "${pvc.name}"), r"unknown or unsupported token \$\{pvc.name\}"),
        (SecretTemplate("${pvc.annotations['missing']}", "ns"), "lacks"),
        (SecretTemplate("Bad_Name", "ns"), "not a valid object name"),
        (SecretTemplate("ok", "Bad.NS"), "not a valid namespace name"),
    ],
)
def test_bad_templates(template: SecretTemplate, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        resolve_secret("provisioner", template, CONTEXT)


def test_claim_tokens_need_a_claim() -> None:
    with pytest.raises(ParameterError, match="no claim"):
        resolve_secret("provisioner", SecretTemplate("${pvc.name}", "ns"), TemplateContext(pv_name="pvc-1"))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1Gi", 1 << 30),
        ("500M", 500 * 10**6),
        ("1.5Gi", 3 << 29),
        ("1", 1),
        ("0.1k", 100),
        ("1.001k", 1001),
        ("4Ei", 4 << 60),
    ],
)
def test_parse_quantity(text: str, size: int) -> None:
    assert parse_quantity(text) == size


@pytest.mark.parametrize("text", ["", "1 Gi", "1GB", "-1Gi", "Gi"])
def test_bad_quantity(text: str) -> None:
    with pytest.raises(ValueError, match="not a storage quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [(1 << 30, "1Gi"), (3 << 29, "1536Mi"), (1000, "1000"), (1 << 40, "1Ti"), (0, "0"), (1025, "1025")],
)
def test_format_quantity(size: int, text: str) -> None:
    assert format_quantity(size) == text
