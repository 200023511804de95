"""StorageClass parameters as external-provisioner reads them: the reserved `csi.storage.k8s.io/` keys.

Pure functions: a parameters map in, a parsed :class:`ClassParameters` out, or a
:class:`ParameterError` whose message a user can act on (it goes into the
ProvisioningFailed event).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def valid_object_name(name: str) -> bool:
    """A DNS-1123 subdomain: what most Kubernetes objects (and DriverEndpoints) may be named."""
    return bool(_DNS1123_SUBDOMAIN.match(name))


def shown(value: str, limit: int = 80) -> str:
    """A user's value quoted for a message, cut short: events keep 1,024 characters, and
    the end of the message says what is wrong."""
    return repr(value if len(value) <= limit else value[: limit - 20] + f"...({len(value)} characters)")


_TOKEN = re.compile(r"\$\{([^}]*)\}")
_ANNOTATION_TOKEN = re.compile(r"^pvc\.annotations\['([^']+)'\]$")


class ParameterError(ValueError):
    """A StorageClass parameter (or a template in one) that cannot be used."""


@dataclass(frozen=True)
class SecretTemplate:
    name: str
    namespace: str


@dataclass(frozen=True)
class SecretRef:
    name: str
    namespace: str

    def as_ref(self) -> dict[str, str]:
        return {"name": self.name, "namespace": self.namespace}


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
    if not _DNS1123_LABEL.match(namespace):
        raise ParameterError(
            f"{kind} secret namespace {namespace!r} (from {template.namespace!r}) is not a valid namespace name"
        )
    if not _DNS1123_SUBDOMAIN.match(name):
        raise ParameterError(f"{kind} secret name {name!r} (from {template.name!r}) is not a valid object name")
    return SecretRef(name, namespace)


def _expand(template: str, context: TemplateContext, *, allow_claim_details: bool, what: str) -> str:
    def value(match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "pv.name":
            return context.pv_name
        if token == "pvc.namespace":
            return _claim_value(context.pvc_namespace, token, what)
        if allow_claim_details and token == "pvc.name":
            return _claim_value(context.pvc_name, token, what)
        annotation = _ANNOTATION_TOKEN.match(token)
        if allow_claim_details and annotation:
            key = annotation.group(1)
            if key not in context.pvc_annotations:
                raise ParameterError(
                    f"{what} template {template!r} refers to annotation {key!r}, which the claim lacks"
                )
            return context.pvc_annotations[key]
        raise ParameterError(f"{what} template {template!r} uses unknown or unsupported token ${{{token}}}")

    return _TOKEN.sub(value, template)


def _claim_value(value: str, token: str, what: str) -> str:
    if not value:
        raise ParameterError(f"{what} uses ${{{token}}}, but there is no claim to take it from")
    return value


# --- quantities ----------------------------------------------------------------------

_BINARY_SUFFIXES = (
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
)
_SUFFIXES = {
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "": 1,
}  # fmt: skip
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|)$")


def parse_quantity(text: str) -> int:
    """Bytes in a Kubernetes quantity ("1Gi", "500M", "1.5Gi"), rounded up as the API server does."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a storage quantity")
    number, suffix = match.groups()
    whole, _, fraction = number.partition(".")
    scale = _SUFFIXES[suffix]
    value = int(whole) * scale
    if fraction:
        value += -(-int(fraction) * scale // 10 ** len(fraction))  # ceil
    return value


def format_quantity(size: int) -> str:
    """A byte count as Kubernetes prints a BinarySI quantity: the largest exact binary suffix."""
    for suffix, unit in _BINARY_SUFFIXES:
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)
