"""The words every controller uses: object keys, names, quantities, templates, secrets, time.

Pure and dependency-free: the bottom of the operator's layers (docs/architecture.md), so
that the attacher or the snapshotter need not import the provisioner to say "a parameter
is wrong" or "a Gi".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Body = dict[str, Any]

# A StorageClass (or a snapshot class) routed to a DriverEndpoint names it here.
ANN_ENDPOINT = "sidecarless.io/endpoint"


class ParameterError(ValueError):
    """Something in a user's object (a class parameter, a template, a field) that cannot be
    used; its message goes into the event or status the user reads."""


@dataclass(frozen=True)
class SecretRef:
    name: str
    namespace: str

    def as_ref(self) -> dict[str, str]:
        return {"name": self.name, "namespace": self.namespace}


# --- keys ------------------------------------------------------------------------------


def key_of(namespace: str | None, name: str) -> str:
    """The store and queue key of an object: `namespace/name`, or the name of a cluster-scoped one."""
    return f"{namespace}/{name}" if namespace else name


def object_key(body: Body) -> str:
    meta = body.get("metadata") or {}
    return key_of(meta.get("namespace"), str(meta["name"]))


def ref_key(ref: Body) -> str:
    """The key of the object a reference (`{namespace, name}`: a claimRef, a volumeSnapshotRef) names."""
    return key_of(ref.get("namespace"), str(ref.get("name")))


# --- names -----------------------------------------------------------------------------

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def valid_object_name(name: str) -> bool:
    """A DNS-1123 subdomain: what most Kubernetes objects (and DriverEndpoints) may be named."""
    return bool(_DNS1123_SUBDOMAIN.match(name))


def valid_namespace_name(name: str) -> bool:
    """A DNS-1123 label: what a namespace may be named."""
    return bool(_DNS1123_LABEL.match(name))


def shown(value: str, limit: int = 80) -> str:
    """A user's value quoted for a message, cut short: events keep 1,024 characters, and
    the end of the message says what is wrong."""
    return repr(value if len(value) <= limit else value[: limit - 20] + f"...({len(value)} characters)")


# --- templates -------------------------------------------------------------------------

# Go's os.Expand, which every sidecar resolves its templates with: ${anything but a brace},
# a shell special character or digit ($1, $*), or a name of letters, digits and underscores.
_TOKEN = re.compile(r"\$\{([^}]*)\}|\$([*#$@!?\-0-9]|[A-Za-z_][A-Za-z0-9_]*)")


class UnknownTokens(ValueError):  # noqa: N818 (it is the error; the caller words the message)
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        super().__init__(f"invalid tokens: {tokens}")


def expand(template: str, values: Mapping[str, str] | Callable[[str], str | None]) -> str:
    """`template` with its `${token}`s replaced from `values`; raise UnknownTokens naming those
    it has no value for, in order of appearance."""
    lookup = values if callable(values) else values.get
    unknown: list[str] = []

    def value(match: re.Match[str]) -> str:
        token = match.group(1) if match.group(1) is not None else match.group(2)
        found = lookup(token)
        if found is None:
            unknown.append(token)
            return ""
        return found

    result = _TOKEN.sub(value, template)
    if unknown:
        raise UnknownTokens(unknown)
    return result


# --- quantities ------------------------------------------------------------------------

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


# --- time ------------------------------------------------------------------------------


def _system_clock() -> datetime:
    return datetime.now(UTC)


# The wall clock of every time stamp the controllers write; tests that simulate time move it
# with their event loop's clock (tests/unit/fakeworld.py), so stamps change as they would.
wall_clock: Callable[[], datetime] = _system_clock


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339() -> str:
    """Now, as the API's time fields are written (whole seconds, UTC)."""
    return rfc3339(wall_clock())
