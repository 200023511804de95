"""StorageClass parameters as external-provisioner reads them: the reserved `csi.storage.k8s.io/` keys.

Pure functions: a parameters map in, a parsed :class:`ClassParameters` out, or a
:class:`ParameterError` whose message a user can act on (it goes into the
ProvisioningFailed event).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sidecarless.vocabulary import (
    ParameterError,
    SecretRef,
    UnknownTokens,
    expand,
    valid_namespace_name,
    valid_object_name,
)

PREFIX = "csi.storage.k8s.io/"
FSTYPE_KEY = PREFIX + "fstype"
LEGACY_FSTYPE_KEY = "fstype"

# The secret kinds a StorageClass can name, and the PV field each one ends up in.
SECRET_KINDS = (
    "provisioner",
    "controller-publish",
    "node-stage",
    "node-publish",
    "controller-expand",
    "node-expand",
    "controller-modify",
)
PV_SECRET_REF_FIELDS = {
    "controller-publish": "controllerPublishSecretRef",
    "node-stage": "nodeStageSecretRef",
    "node-publish": "nodePublishSecretRef",
    "controller-expand": "controllerExpandSecretRef",
    "node-expand": "nodeExpandSecretRef",
}
# Honoured, never stripped (so they still reach the driver), as external-provisioner does.
DEPRECATED_SECRET_KEYS = {
    "provisioner": ("csiProvisionerSecretName", "csiProvisionerSecretNamespace"),
    "controller-publish": ("csiControllerPublishSecretName", "csiControllerPublishSecretNamespace"),
    "node-stage": ("csiNodeStageSecretName", "csiNodeStageSecretNamespace"),
    "node-publish": ("csiNodePublishSecretName", "csiNodePublishSecretNamespace"),
}
FALLBACK_SECRET_KEYS = (PREFIX + "secret-name", PREFIX + "secret-namespace")
EXTRA_METADATA_KEYS = (PREFIX + "pvc/name", PREFIX + "pvc/namespace", PREFIX + "pv/name")
_RESERVED = {
    FSTYPE_KEY,
    *FALLBACK_SECRET_KEYS,
    *(f"{PREFIX}{kind}-secret-{part}" for kind in SECRET_KINDS for part in ("name", "namespace")),
}

_ANNOTATION_TOKEN = re.compile(r"^pvc\.annotations\['([^']+)'\]$")


@dataclass(frozen=True)
class SecretTemplate:
    name: str
    namespace: str


@dataclass(frozen=True)
class ClassParameters:
    fstype: str = ""
    secrets: dict[str, SecretTemplate] = field(default_factory=dict)  # by kind
    driver_parameters: dict[str, str] = field(default_factory=dict)  # what CreateVolume gets


def parse_class_parameters(parameters: dict[str, str]) -> ClassParameters:
    """Split a StorageClass's parameters into the reserved ones and those for the driver."""
    for key in parameters:
        if key.startswith(PREFIX) and key not in _RESERVED:
            raise ParameterError(f'found unknown parameter key "{key}" with reserved namespace {PREFIX}')
    if FSTYPE_KEY in parameters and LEGACY_FSTYPE_KEY in parameters:
        raise ParameterError(
            f"fstype is set both as {LEGACY_FSTYPE_KEY!r} and {FSTYPE_KEY!r}; keep only {FSTYPE_KEY!r}"
        )
    fstype = parameters.get(FSTYPE_KEY, parameters.get(LEGACY_FSTYPE_KEY, ""))
    secrets = {kind: template for kind in SECRET_KINDS if (template := _secret_template(kind, parameters))}
    driver_parameters = {k: v for k, v in parameters.items() if not k.startswith(PREFIX)}
    return ClassParameters(fstype=fstype, secrets=secrets, driver_parameters=driver_parameters)


def _secret_template(kind: str, parameters: dict[str, str]) -> SecretTemplate | None:
    candidates = [(f"{PREFIX}{kind}-secret-name", f"{PREFIX}{kind}-secret-namespace")]
    if kind in DEPRECATED_SECRET_KEYS:
        candidates.append(DEPRECATED_SECRET_KEYS[kind])
    candidates.append(FALLBACK_SECRET_KEYS)
    for name_key, namespace_key in candidates:
        has_name, has_namespace = name_key in parameters, namespace_key in parameters
        if has_name != has_namespace:
            given, missing = (name_key, namespace_key) if has_name else (namespace_key, name_key)
            raise ParameterError(f"{given} is set but {missing} is not: a secret needs both a name and a namespace")
        if has_name:
            return SecretTemplate(parameters[name_key], parameters[namespace_key])
    return None


@dataclass(frozen=True)
class TemplateContext:
    """What `${...}` tokens may refer to."""

    pv_name: str
    pvc_name: str = ""
    pvc_namespace: str = ""
    pvc_annotations: dict[str, str] = field(default_factory=dict)


def resolve_secret(kind: str, template: SecretTemplate, context: TemplateContext) -> SecretRef:
    """Expand a secret template; the namespace may use only ${pv.name} and ${pvc.namespace}."""
    namespace = _expand(template.namespace, context, allow_claim_details=False, what=f"{kind} secret namespace")
    name = _expand(template.name, context, allow_claim_details=True, what=f"{kind} secret name")
    if not valid_namespace_name(namespace):
        raise ParameterError(
            f"{kind} secret namespace {namespace!r} (from {template.namespace!r}) is not a valid namespace name"
        )
    if not valid_object_name(name):
        raise ParameterError(f"{kind} secret name {name!r} (from {template.name!r}) is not a valid object name")
    return SecretRef(name, namespace)


def _expand(template: str, context: TemplateContext, *, allow_claim_details: bool, what: str) -> str:
    values = {"pv.name": context.pv_name}
    if context.pvc_namespace:
        values["pvc.namespace"] = context.pvc_namespace
    if allow_claim_details:
        if context.pvc_name:
            values["pvc.name"] = context.pvc_name
        values |= {f"pvc.annotations['{k}']": v for k, v in context.pvc_annotations.items()}
    try:
        return expand(template, values)
    except UnknownTokens as unknown:
        raise ParameterError(_unknown_token_message(template, unknown.tokens[0], allow_claim_details, what)) from None


def _unknown_token_message(template: str, token: str, allow_claim_details: bool, what: str) -> str:
    if token == "pvc.namespace" or (allow_claim_details and token == "pvc.name"):
        return f"{what} uses ${{{token}}}, but there is no claim to take it from"
    annotation = _ANNOTATION_TOKEN.match(token)
    if allow_claim_details and annotation:
        return f"{what} template {template!r} refers to annotation {annotation.group(1)!r}, which the claim lacks"
    return f"{what} template {template!r} uses unknown or unsupported token ${{{token}}}"
